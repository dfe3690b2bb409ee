/* residual.cu -- the residual add on the GPU.
 *
 * out = a + b in fp32, elementwise; out may alias a or b (each element is read
 * before it is written, by the same thread). The backward is folded into the
 * engine's running d(residual), as on the CPU. Mirrors cel_cpu_residual_forward.
 */
#include "ops.h"

#include "common.h"

static __global__ void residual_forward_kernel(float *out, const float *a, const float *b,
                                               size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x)
        out[i] = a[i] + b[i];
}

/* out = a + b over n floats; out may alias a or b. */
void cel_cuda_residual_forward(float *out, const float *a, const float *b, size_t n,
                               cudaStream_t st) {
    if (n == 0) return;
    residual_forward_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(out, a, b,
                                                                                         n);
}
