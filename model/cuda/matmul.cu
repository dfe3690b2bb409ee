/* matmul.cu -- row-major GEMM on cuBLAS and the bias-free linear layer built on it.
 *
 * cel_cuda_gemm is the one place that talks to cublasGemmEx: bf16 inputs,
 * fp32 accumulation (CUBLAS_COMPUTE_32F), fp32 or bf16 output. cuBLAS is
 * column-major, and a row-major (r,c) matrix with row stride ld is the
 * column-major (c,r) matrix with the same ld, so row-major C = op(A) op(B) is
 * computed as column-major C^T = op(B)^T op(A)^T: the operands swap, each
 * keeps its own transpose flag. alpha and beta are host floats, so the handle
 * must be in CUBLAS_POINTER_MODE_HOST (the default). Mirrors model/cpu/matmul.c.
 */
#include "ops.h"

#include <stdio.h>

#include <library_types.h>

/* The first refused GEMM since cel_cuda_gemm_take_error last ran (one host
 * thread drives a model; thread_local keeps two models' threads apart). */
static thread_local cublasStatus_t gemm_status = CUBLAS_STATUS_SUCCESS;
static thread_local char gemm_call[160];

/* Row-major C (M,N) = alpha op(A) op(B) + beta C. See ops.h for shapes. The op
 * cannot fail by contract (callers validate sizes), but a status cuBLAS returns
 * is kept for cel_cuda_gemm_take_error, so a refused GEMM becomes the
 * engine's error at its next check instead of wrong numbers. */
void cel_cuda_gemm(cublasHandle_t h, int ta, int tb, int M, int N, int K, float alpha,
                   const cel_bf16_t *A, int lda, const cel_bf16_t *B, int ldb, float beta, float *c,
                   cel_bf16_t *c_bf16, int ldc) {
    if (M <= 0 || N <= 0) return;
    void *C = c ? (void *)c : (void *)c_bf16;
    cudaDataType_t ctype = c ? CUDA_R_32F : CUDA_R_16BF;
    /* column-major: C^T (N,M) = op(B)^T (N,K) @ op(A)^T (K,M) */
    cublasStatus_t s =
        cublasGemmEx(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                     &alpha, B, CUDA_R_16BF, ldb, A, CUDA_R_16BF, lda, &beta, C, ctype, ldc,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != CUBLAS_STATUS_SUCCESS && gemm_status == CUBLAS_STATUS_SUCCESS) {
        gemm_status = s;
        snprintf(gemm_call, sizeof(gemm_call),
                 "GEMM ta=%d tb=%d M=%d N=%d K=%d lda=%d ldb=%d "
                 "ldc=%d (%s C)",
                 ta, tb, M, N, K, lda, ldb, ldc, c ? "fp32" : "bf16");
    }
}

cublasStatus_t cel_cuda_gemm_take_error(char *what, size_t len) {
    cublasStatus_t s = gemm_status;
    if (what && len) snprintf(what, len, "%s", s == CUBLAS_STATUS_SUCCESS ? "" : gemm_call);
    gemm_status = CUBLAS_STATUS_SUCCESS;
    return s;
}

/* out (N,OC) = inp (N,IC) @ weight (OC,IC)^T + beta * out. */
void cel_cuda_matmul_forward(cublasHandle_t h, float *out /* (N,OC) */,
                             const cel_bf16_t *inp /* (N,IC) */,
                             const cel_bf16_t *weight /* (OC,IC) */, int N, int IC, int OC,
                             float beta) {
    cel_cuda_gemm(h, 0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, beta, out, NULL, OC);
}

/* dinp (N,IC) = dout @ weight + beta_dinp * dinp; dweight (OC,IC) += dout^T @ inp.
 * Either output may be NULL to skip it. */
void cel_cuda_matmul_backward(cublasHandle_t h, float *dinp /* (N,IC) or NULL */, float beta_dinp,
                              float *dweight /* (OC,IC) += or NULL */,
                              const cel_bf16_t *dout /* (N,OC) */,
                              const cel_bf16_t *inp /* (N,IC) */,
                              const cel_bf16_t *weight /* (OC,IC) */, int N, int IC, int OC) {
    if (dinp)
        cel_cuda_gemm(h, 0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, beta_dinp, dinp, NULL, IC);
    if (dweight)
        cel_cuda_gemm(h, 1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, NULL, IC);
}
