/* embedding.cu -- token embedding lookup (nn.Embedding) on the GPU, forward only.
 *
 * Reads the bf16 table and writes the fp32 residual stream. No backward: the
 * base embedding is frozen under LoRA. Token ids are validated by the caller
 * before they reach the device. Mirrors cel_cpu_embedding_forward.
 */
#include "ops.h"

#include "common.h"

/* One thread per output element: consecutive threads read consecutive c of
 * the same table row, so both the gather and the store coalesce. */
static __global__ void embedding_forward_kernel(float *out, const int32_t *tokens,
                                                const cel_bf16_t *wte, int C, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
         i += (size_t)blockDim.x * gridDim.x) {
        size_t n = i / (size_t)C, c = i % (size_t)C;
        out[i] = __bfloat162float(wte[(size_t)tokens[n] * C + c]);
    }
}

/* out[n] (C) = wte[tokens[n]] (C), converted to fp32. */
void cel_cuda_embedding_forward(float *out /* (N,C) */, const int32_t *tokens /* (N) */,
                                const cel_bf16_t *wte /* (V,C) */, int N, int C, cudaStream_t st) {
    size_t total = (size_t)N * (size_t)C;
    if (N <= 0 || C <= 0) return;
    embedding_forward_kernel<<<grid_size(total, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(
        out, tokens, wte, C, total);
}
