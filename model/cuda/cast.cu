/* cast.cu -- fp32 <-> bf16 casts on the GPU, and the scaled cast of a gradient for a GEMM.
 *
 * Elementwise grid-stride kernels enqueued on the caller's stream; bf16
 * rounding is round-to-nearest-even, as torch's .to(torch.bfloat16). No
 * allocation, no sync. Mirrors no CPU op (the CPU engine is fp32 throughout).
 */
#include "ops.h"

#include "common.h"

static __global__ void cast_f32_bf16_kernel(cel_bf16_t *out, const float *inp, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        out[i] = __float2bfloat16_rn(inp[i]);
}

static __global__ void cast_bf16_f32_kernel(float *out, const cel_bf16_t *inp, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        out[i] = __bfloat162float(inp[i]);
}

static __global__ void scale_cast_bf16_kernel(cel_bf16_t *out, const float *inp, float scale,
                                              size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        out[i] = __float2bfloat16_rn(scale * inp[i]);
}

/* out[i] = bf16(inp[i]), round to nearest even. */
void cel_cuda_cast_f32_bf16(cel_bf16_t *out, const float *inp, size_t n, cudaStream_t st) {
    if (n == 0) return;
    cast_f32_bf16_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(out, inp, n);
}

/* out[i] = (float)inp[i] (exact). */
void cel_cuda_cast_bf16_f32(float *out, const cel_bf16_t *inp, size_t n, cudaStream_t st) {
    if (n == 0) return;
    cast_bf16_f32_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(out, inp, n);
}

/* out[i] = bf16(scale * inp[i]): the product in fp32, then one rounding. */
void cel_cuda_scale_cast_bf16(cel_bf16_t *out, const float *inp, float scale, size_t n,
                              cudaStream_t st) {
    if (n == 0) return;
    scale_cast_bf16_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(out, inp,
                                                                                        scale, n);
}
