/* lora.cu -- the LoRA branch of a linear layer on cuBLAS, forward and backward.
 *
 * As PEFT's lora.Linear with dropout 0 and fan_in_fan_out false:
 * out += scaling * (inp @ A^T) @ B^T, A (R,IC), B (OC,R), every product a bf16
 * GEMM with fp32 accumulation (cel_cuda_gemm). The fp32 LoRA weights live
 * with the engine; these ops read its bf16 shadows A16/B16 and accumulate
 * into fp32 gradients. Forward saves u = inp @ A^T in bf16 (what autocast
 * would feed the second GEMM). Mirrors model/cpu/lora.c, except that u and du
 * are rounded to bf16 before they feed the next GEMM.
 */
#include "ops.h"

/* u (N,R) = bf16(inp @ A^T); out (N,OC) += scaling * u @ B^T. */
void cel_cuda_lora_forward(cublasHandle_t h, float *out /* (N,OC) += */,
                           cel_bf16_t *u /* (N,R) saved */, const cel_bf16_t *inp /* (N,IC) */,
                           const cel_bf16_t *A16 /* (R,IC) */, const cel_bf16_t *B16 /* (OC,R) */,
                           float scaling, int N, int IC, int OC, int R) {
    cel_cuda_gemm(h, 0, 1, N, R, IC, 1.0f, inp, IC, A16, IC, 0.0f, NULL, u, R);
    cel_cuda_gemm(h, 0, 1, N, OC, R, scaling, u, R, B16, R, 1.0f, out, NULL, OC);
}

/* du = bf16(scaling * dout @ B); dA += du^T @ inp; dB += scaling * dout^T @ u;
 * dinp += du @ A when dinp is not NULL. */
void cel_cuda_lora_backward(cublasHandle_t h, float *dinp /* (N,IC) += or NULL */,
                            float *dA /* (R,IC) += */, float *dB /* (OC,R) += */,
                            cel_bf16_t *du /* (N,R) scratch */, const cel_bf16_t *dout /* (N,OC) */,
                            const cel_bf16_t *inp /* (N,IC) */, const cel_bf16_t *u /* (N,R) */,
                            const cel_bf16_t *A16 /* (R,IC) */, const cel_bf16_t *B16 /* (OC,R) */,
                            float scaling, int N, int IC, int OC, int R) {
    /* dB (OC,R) += s dout^T (OC,N) @ u (N,R) */
    cel_cuda_gemm(h, 1, 0, OC, R, N, scaling, dout, OC, u, R, 1.0f, dB, NULL, R);
    /* du (N,R) = s dout (N,OC) @ B (OC,R) */
    cel_cuda_gemm(h, 0, 0, N, R, OC, scaling, dout, OC, B16, R, 0.0f, NULL, du, R);
    /* dA (R,IC) += du^T (R,N) @ inp (N,IC) */
    cel_cuda_gemm(h, 1, 0, R, IC, N, 1.0f, du, R, inp, IC, 1.0f, dA, NULL, IC);
    /* dinp (N,IC) += du (N,R) @ A (R,IC) */
    if (dinp) cel_cuda_gemm(h, 0, 0, N, IC, R, 1.0f, du, R, A16, IC, 1.0f, dinp, NULL, IC);
}
