/* rmsnorm.cu -- RMSNorm as HF's LlamaRMSNorm on the GPU, forward and backward.
 *
 * One block per row. rstd = 1/sqrt(mean(x^2) + eps) in fp32 (saved per row);
 * out = bf16(weight * (x * rstd)), normalised and weighted in fp32 and rounded
 * once, since out feeds the next projections' GEMMs. Backward adds into the
 * fp32 dinp and computes no weight gradient (the base is frozen). Same
 * formulas, in the same order, as model/cpu/rmsnorm.c; only the order of the
 * row sums differs.
 */
#include "ops.h"

#include "common.h"

static __global__ void rmsnorm_forward_kernel(cel_bf16_t *out, float *rstd, const float *inp,
                                              const cel_bf16_t *weight, int C, float eps) {
    size_t row = blockIdx.x;
    const float *x = inp + row * C;
    cel_bf16_t *o = out + row * C;
    float ss = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x) ss += x[c] * x[c];
    ss = block_sum(ss);
    float r = 1.0f / sqrtf(ss / C + eps);
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        o[c] = __float2bfloat16_rn(__bfloat162float(weight[c]) * (x[c] * r));
    if (threadIdx.x == 0) rstd[row] = r;
}

/* dx = r (d w - xhat mean(d w xhat)), xhat = x r. */
static __global__ void rmsnorm_backward_kernel(float *dinp, const float *dout, const float *inp,
                                               const cel_bf16_t *weight, const float *rstd, int C) {
    size_t row = blockIdx.x;
    const float *x = inp + row * C, *d = dout + row * C;
    float *dx = dinp + row * C;
    float r = rstd[row];
    float dot = 0.0f;
    for (int c = threadIdx.x; c < C; c += blockDim.x)
        dot += d[c] * __bfloat162float(weight[c]) * x[c] * r;
    dot = block_sum(dot) / C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float xhat = x[c] * r;
        dx[c] += r * (d[c] * __bfloat162float(weight[c]) - xhat * dot);
    }
}

/* out = bf16(weight * x * rstd) per row; rstd saved. */
void cel_cuda_rmsnorm_forward(cel_bf16_t *out /* (N,C) */, float *rstd /* (N) saved */,
                              const float *inp /* (N,C) */, const cel_bf16_t *weight /* (C) */,
                              int N, int C, float eps, cudaStream_t st) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_forward_kernel<<<N, CEL_CUDA_ROW_THREADS, 0, st>>>(out, rstd, inp, weight, C, eps);
}

/* dinp += the input gradient; reads the forward's rstd. */
void cel_cuda_rmsnorm_backward(float *dinp /* (N,C) += */, const float *dout /* (N,C) */,
                               const float *inp /* (N,C) */, const cel_bf16_t *weight /* (C) */,
                               const float *rstd /* (N) */, int N, int C, cudaStream_t st) {
    if (N <= 0 || C <= 0) return;
    rmsnorm_backward_kernel<<<N, CEL_CUDA_ROW_THREADS, 0, st>>>(dinp, dout, inp, weight, rstd, C);
}
