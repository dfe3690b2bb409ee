/* common.h -- device helpers shared by the CUDA op files (internal to model/cuda/).
 *
 * Warp and block reductions (sum, max) and the launch-size helper for
 * grid-stride loops. Everything here is static inline or __device__ and
 * allocates nothing; block reductions need blockDim.x a multiple of 32 (at
 * most 1024) and every thread of the block to call them (they sync).
 */
#ifndef CEL_CUDA_COMMON_H
#define CEL_CUDA_COMMON_H

#include <math.h>
#include <stddef.h>

#include <cuda_runtime.h>

/* Threads per block for elementwise (grid-stride) kernels. */
#define CEL_CUDA_THREADS     256
/* Threads per block for one-block-per-row kernels. */
#define CEL_CUDA_ROW_THREADS 256
/* Grid-stride kernels never launch more blocks than this; they loop instead. */
#define CEL_CUDA_MAX_BLOCKS  4096

/* Blocks for a grid-stride loop over n items at `threads` per block (n > 0). */
static inline unsigned int grid_size(size_t n, int threads) {
    size_t g = (n + (size_t)threads - 1) / (size_t)threads;
    if (g > CEL_CUDA_MAX_BLOCKS) g = CEL_CUDA_MAX_BLOCKS;
    return g ? (unsigned int)g : 1u;
}

template <typename T> static __device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum of v over the block, returned to every thread. The leading sync makes
 * back-to-back calls safe: nobody overwrites `part` while another warp reads it. */
template <typename T> static __device__ __forceinline__ T block_sum(T v) {
    __shared__ T part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < nwarps ? part[lane] : (T)0;
    return warp_sum(v);
}

/* Max of v over the block, returned to every thread (-inf for an all -inf block). */
static __device__ __forceinline__ float block_max(float v) {
    __shared__ float part[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < nwarps ? part[lane] : -INFINITY;
    return warp_max(v);
}

#endif
