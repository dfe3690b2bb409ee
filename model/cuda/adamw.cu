/* adamw.cu -- the AdamW update on the GPU, as torch.optim.AdamW's single-tensor path.
 *
 * p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps). The step scalars are
 * formed on the host in double and applied in fp32, exactly as
 * model/cpu/adamw.c does; the kernel uses explicitly rounded multiplies and
 * adds (no FMA contraction) so each element follows the CPU's rounding steps.
 * Also the global-norm helpers: a sum of squares into a device double and the
 * clipping scale.
 */
#include "ops.h"

#include <math.h>

#include "common.h"

static __global__ void adamw_kernel(float *params, float *m, float *v, const float *grads, size_t n,
                                    float decay, float beta1, float beta2, float omb1, float omb2,
                                    float eps, float step_size, float bc2_sqrt) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        float g = grads[i];
        float p = __fmul_rn(params[i], decay);
        float mi = __fadd_rn(__fmul_rn(m[i], beta1), __fmul_rn(g, omb1));
        float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(omb2, __fmul_rn(g, g)));
        float denom = __fadd_rn(__fdiv_rn(sqrtf(vi), bc2_sqrt), eps);
        params[i] = __fsub_rn(p, __fmul_rn(step_size, __fdiv_rn(mi, denom)));
        m[i] = mi;
        v[i] = vi;
    }
}

static __global__ void sumsq_kernel(double *out, const float *g, size_t n) {
    double s = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        s += (double)g[i] * g[i];
    s = block_sum(s);
    if (threadIdx.x == 0) atomicAdd(out, s);
}

static __global__ void scale_kernel(float *g, size_t n, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        g[i] *= scale;
}

/* One AdamW step (step counts from 1) over n fp32 parameters, m and v in place. */
void cel_cuda_adamw_update(float *params, float *m, float *v, const float *grads, size_t n,
                           float lr, float beta1, float beta2, float eps, float weight_decay,
                           int step, cudaStream_t st) {
    if (n == 0) return;
    float decay = (float)(1.0 - (double)lr * weight_decay);
    float omb1 = (float)(1.0 - beta1), omb2 = (float)(1.0 - beta2);
    /* in double, as the C twin: C++'s pow(float, int) overload would run in float */
    double bc1 = 1.0 - pow((double)beta1, (double)step);
    double bc2 = 1.0 - pow((double)beta2, (double)step);
    float step_size = (float)(lr / bc1);
    float bc2_sqrt = (float)sqrt(bc2);
    adamw_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(
        params, m, v, grads, n, decay, beta1, beta2, omb1, omb2, eps, step_size, bc2_sqrt);
}

/* *out (device double) += sum of g^2: per-block partials in double, one
 * atomicAdd per block. The caller zeroes *out before the first tensor. */
void cel_cuda_adamw_sumsq(double *out, const float *g, size_t n, cudaStream_t st) {
    if (n == 0) return;
    sumsq_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(out, g, n);
}

/* g *= scale over n floats (gradient clipping). */
void cel_cuda_adamw_scale(float *g, size_t n, float scale, cudaStream_t st) {
    if (n == 0) return;
    scale_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(g, n, scale);
}
