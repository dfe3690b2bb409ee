/* rope.cu -- rotary position embedding on the GPU, HF Llama's rotate_half convention.
 *
 * For frequency i < HS/2 the pair (x[i], x[i+HS/2]) of each head is rotated by
 * the angle of position pos[n]: out[i] = x[i] cos - x[i+h] sin, out[i+h] =
 * x[i+h] cos + x[i] sin, with the (maxT, HS/2) cos/sin tables that
 * cel_cpu_rope_init builds, copied to the device. One thread per pair, which
 * reads both elements before writing either, so in-place is safe. Mirrors
 * model/cpu/rope.c.
 */
#include "ops.h"

#include "common.h"

/* pairs = N*NHX*h; pair index = (n*NHX + head)*h + i. sign = +1 rotates
 * forward, -1 applies the inverse rotation (the transpose). */
static __global__ void rope_kernel(float *out, const float *inp, const int32_t *pos,
                                   const float *cos_t, const float *sin_t, int NHX, int HS,
                                   float sign, size_t pairs) {
    int h = HS / 2;
    for (size_t p = blockIdx.x * (size_t)blockDim.x + threadIdx.x; p < pairs;
         p += (size_t)blockDim.x * gridDim.x) {
        size_t i = p % (size_t)h, head_row = p / (size_t)h; /* head_row = n*NHX + head */
        size_t n = head_row / (size_t)NHX;
        size_t t = (size_t)pos[n] * h + i;
        float c = cos_t[t], s = sign * sin_t[t];
        const float *x = inp + head_row * HS;
        float *o = out + head_row * HS;
        float x1 = x[i], x2 = x[i + h];
        o[i] = x1 * c - x2 * s;
        o[i + h] = x2 * c + x1 * s;
    }
}

static void rope_launch(float *out, const float *inp, const int32_t *pos, const float *cos_t,
                        const float *sin_t, int N, int NHX, int HS, float sign, cudaStream_t st) {
    size_t pairs = (size_t)N * (size_t)NHX * (size_t)(HS / 2);
    if (pairs == 0) return;
    rope_kernel<<<grid_size(pairs, CEL_CUDA_THREADS), CEL_CUDA_THREADS, 0, st>>>(
        out, inp, pos, cos_t, sin_t, NHX, HS, sign, pairs);
}

/* Rotates every head of row n by position pos[n]; out may equal inp. */
void cel_cuda_rope_forward(float *out /* (N,NHX,HS) */, const float *inp /* (N,NHX,HS) */,
                           const int32_t *pos /* (N) */, const float *cos_t /* (maxT,HS/2) */,
                           const float *sin_t /* (maxT,HS/2) */, int N, int NHX, int HS,
                           cudaStream_t st) {
    rope_launch(out, inp, pos, cos_t, sin_t, N, NHX, HS, 1.0f, st);
}

/* dinp = the inverse rotation of dout (=): dinp[i] = d1 cos + d2 sin,
 * dinp[i+h] = d2 cos - d1 sin. dinp may equal dout. */
void cel_cuda_rope_backward(float *dinp /* (N,NHX,HS) = */, const float *dout,
                            const int32_t *pos /* (N) */, const float *cos_t, const float *sin_t,
                            int N, int NHX, int HS, cudaStream_t st) {
    rope_launch(dinp, dout, pos, cos_t, sin_t, N, NHX, HS, -1.0f, st);
}
