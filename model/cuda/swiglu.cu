/* swiglu.cu -- the SwiGLU gate of the Llama MLP, silu(gate) * up, on the GPU.
 *
 * Elementwise over N*I. The forward rounds its output to bf16 (it feeds the
 * down projection's GEMM); the backward reads the fp32 gate and up and writes
 * fp32 gradients. Same formulas, in the same order, as model/cpu/swiglu.c.
 */
#include "ops.h"

#include "common.h"

static __global__ void swiglu_forward_kernel(cel_bf16_t *out, const float *gate, const float *up,
                                             size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        float g = gate[i];
        out[i] = __float2bfloat16_rn(g / (1.0f + expf(-g)) * up[i]);
    }
}

static __global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout,
                                              const float *gate, const float *up, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)blockDim.x * gridDim.x) {
        float g = gate[i], s = 1.0f / (1.0f + expf(-g)), d = dout[i];
        float u = up[i]; /* read before any write: dup may alias up */
        dup[i] = d * g * s;
        dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
    }
}

/* out = bf16(silu(gate) * up) over n = N*I elements. */
void cel_cuda_swiglu_forward(cel_bf16_t *out /* (N,I) */, const float *gate /* (N,I) */,
                             const float *up /* (N,I) */, size_t n, cudaStream_t st) {
    if (n == 0) return;
    swiglu_forward_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(out, gate,
                                                                                       up, n);
}

/* dgate = dout * up * silu'(gate), dup = dout * silu(gate) (both =). */
void cel_cuda_swiglu_backward(float *dgate /* (N,I) = */, float *dup /* (N,I) = */,
                              const float *dout /* (N,I) */, const float *gate, const float *up,
                              size_t n, cudaStream_t st) {
    if (n == 0) return;
    swiglu_backward_kernel<<<grid_size(n, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(
        dgate, dup, dout, gate, up, n);
}
