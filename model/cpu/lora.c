/* lora.c -- a LoRA branch on a linear layer, forward and backward.
 *
 * As PEFT's lora.Linear with dropout 0 and fan_in_fan_out false:
 * out += scaling * (inp @ A^T) @ B^T, A (R,IC), B (OC,R). The forward saves the
 * (N,R) product u = inp @ A^T, which backward needs for dB. All via sgemm.
 */
#include "ops.h"

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h>; we use I for the MLP width */

void cel_cpu_lora_forward(float *out /* (N,OC) += */, float *u /* (N,R) saved */,
                          const float *inp /* (N,IC) */, const float *A /* (R,IC) */,
                          const float *Bw /* (OC,R) */, float scaling, int N, int IC, int OC,
                          int R) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, R, IC, 1.0f, inp, IC, A, IC, 0.0f, u,
                R);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, R, scaling, u, R, Bw, R, 1.0f, out,
                OC);
}

void cel_cpu_lora_backward(float *dinp /* (N,IC) += or NULL */, float *dA /* (R,IC) += */,
                           float *dB /* (OC,R) += */, float *du /* (N,R) scratch */,
                           const float *dout /* (N,OC) */, const float *inp /* (N,IC) */,
                           const float *u /* (N,R) */, const float *A /* (R,IC) */,
                           const float *Bw /* (OC,R) */, float scaling, int N, int IC, int OC,
                           int R) {
    /* dB += s dout^T u */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, R, N, scaling, dout, OC, u, R, 1.0f,
                dB, R);
    /* du = s dout B */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, R, OC, scaling, dout, OC, Bw, R, 0.0f,
                du, R);
    /* dA += du^T inp */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, R, IC, N, 1.0f, du, R, inp, IC, 1.0f, dA,
                IC);
    /* dinp += du A */
    if (dinp)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, IC, R, 1.0f, du, R, A, IC, 1.0f,
                    dinp, IC);
}
