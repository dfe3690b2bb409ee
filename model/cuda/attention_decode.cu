/* attention_decode.cu -- one-token attention over a KV cache, and appending to the cache.
 *
 * The GPU twin of model/cpu/attention.c's cel_cpu_attention_cached for n = 1 row per sequence,
 * batched over sequences that sit at different positions in different cache slots. A block per
 * (head, sequence): each warp walks every NW-th group of 4 keys with its own online softmax
 * (lanes split the head dims, so cache rows are read coalesced), then the warps' partial
 * (max, sum, output) merge in shared memory. fp32 throughout; the output is rounded to bf16.
 * No split over the keys: a long cache with few sequences leaves SMs idle, which is acceptable
 * for the sizes the engine serves. cel_cuda_kv_append is the plain row copy into the cache.
 */
#include "ops.h"

#include <math.h>

#define FULL_MASK 0xffffffffu
#define DEC_NW    8 /* warps per block */
#define DEC_G     4 /* keys per warp step */
#define DEC_MAXHS 256

/* Grid (NH, S), DEC_NW warps. HSC is the head size when compiled in, 0 for any even HS <= 256
 * (lanes then cover NC = 8 chunks of 32 dims, guarded by d < HS). */
template <int HSC>
static __global__ void __launch_bounds__(DEC_NW * 32)
    attn_decode_kernel(cel_bf16_t *out, const float *q, const float *kc, const float *vc,
                       const int32_t *slot, const int32_t *pos, int Tmax, int NH, int NKV, int hs,
                       float scale) {
    constexpr int NC = HSC ? (HSC + 31) / 32 : DEC_MAXHS / 32;
    const int HS = HSC ? HSC : hs;
    __shared__ float qs[DEC_MAXHS];
    __shared__ float wm[DEC_NW], wl[DEC_NW];
    __shared__ float wo[DEC_NW * DEC_MAXHS];

    int h = blockIdx.x, s = blockIdx.y, g = h / (NH / NKV);
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    size_t KD = (size_t)NKV * HS;
    const float *kb = kc + (size_t)slot[s] * Tmax * KD + (size_t)g * HS;
    const float *vb = vc + (size_t)slot[s] * Tmax * KD + (size_t)g * HS;
    const float *qr = q + ((size_t)s * NH + h) * HS;
    int npos = pos[s] + 1; /* keys 0 .. pos[s], the new row's included */
    for (int d = tid; d < HS; d += DEC_NW * 32) qs[d] = qr[d];
    __syncthreads();

    float m = -INFINITY, l = 0.0f, o[NC];
#pragma unroll
    for (int c = 0; c < NC; c++) o[c] = 0.0f;
    for (int j0 = w * DEC_G; j0 < npos; j0 += DEC_NW * DEC_G) {
        float sc[DEC_G];
#pragma unroll
        for (int u = 0; u < DEC_G; u++) {
            int j = j0 + u;
            float a = 0.0f;
            if (j < npos) {
                const float *kr = kb + (size_t)j * KD;
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    int d = lane + 32 * c;
                    if (HSC || d < HS) a = fmaf(qs[d], kr[d], a);
                }
            }
            sc[u] = a;
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
#pragma unroll
            for (int u = 0; u < DEC_G; u++) sc[u] += __shfl_xor_sync(FULL_MASK, sc[u], off);
        /* the butterfly leaves the same sums in every lane, so m and l stay warp-uniform */
        float mt = -INFINITY;
#pragma unroll
        for (int u = 0; u < DEC_G; u++) {
            sc[u] = j0 + u < npos ? sc[u] * scale : -INFINITY;
            mt = fmaxf(mt, sc[u]);
        }
        float mn = fmaxf(m, mt); /* finite: key j0 < npos is real */
        float alpha = expf(m - mn);
        l *= alpha;
#pragma unroll
        for (int c = 0; c < NC; c++) o[c] *= alpha;
#pragma unroll
        for (int u = 0; u < DEC_G; u++) {
            int j = j0 + u;
            if (j >= npos) break;
            float p = expf(sc[u] - mn);
            l += p;
            const float *vr = vb + (size_t)j * KD;
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int d = lane + 32 * c;
                if (HSC || d < HS) o[c] = fmaf(p, vr[d], o[c]);
            }
        }
        m = mn;
    }
#pragma unroll
    for (int c = 0; c < NC; c++) {
        int d = lane + 32 * c;
        if (HSC || d < HS) wo[w * HS + d] = o[c];
    }
    if (lane == 0) wm[w] = m, wl[w] = l;
    __syncthreads();
    /* merge: warps that saw no key have m = -inf, l = 0 and weigh nothing */
    float M = -INFINITY;
    for (int i = 0; i < DEC_NW; i++) M = fmaxf(M, wm[i]);
    for (int d = tid; d < HS; d += DEC_NW * 32) {
        float L = 0.0f, O = 0.0f;
        for (int i = 0; i < DEC_NW; i++) {
            float f = wm[i] == -INFINITY ? 0.0f : expf(wm[i] - M);
            L += wl[i] * f;
            O += wo[i * HS + d] * f;
        }
        out[((size_t)s * NH + h) * HS + d] = __float2bfloat16(O / L);
    }
}

/* One block per (head, sequence); pos[s] < Tmax and slot[s] inside the cache are the caller's
 * to check, as are HS even and <= 256 and NH % NKV == 0. */
void cel_cuda_attention_decode(cel_bf16_t *out /* (S,NH*HS) */, const float *q /* (S,NH*HS) */,
                               const float *kc, const float *vc, const int32_t *slot /* (S) */,
                               const int32_t *pos /* (S) */, int S, int Tmax, int NH, int NKV,
                               int HS, cudaStream_t st) {
    if (S < 1 || NH < 1) return;
    dim3 grid(NH, S);
    float scale = 1.0f / sqrtf((float)HS);
    if (HS == 64)
        attn_decode_kernel<64>
            <<<grid, DEC_NW * 32, 0, st>>>(out, q, kc, vc, slot, pos, Tmax, NH, NKV, HS, scale);
    else if (HS == 128)
        attn_decode_kernel<128>
            <<<grid, DEC_NW * 32, 0, st>>>(out, q, kc, vc, slot, pos, Tmax, NH, NKV, HS, scale);
    else
        attn_decode_kernel<0>
            <<<grid, DEC_NW * 32, 0, st>>>(out, q, kc, vc, slot, pos, Tmax, NH, NKV, HS, scale);
}

/* Grid-stride copy of S rows of KD floats (k and v) to cache row (slot[s], pos[s]). */
static __global__ void kv_append_kernel(float *kc, float *vc, const float *k, const float *v,
                                        const int32_t *slot, const int32_t *pos, int S, int Tmax,
                                        int KD) {
    size_t n = (size_t)S * KD;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t s = i / KD, d = i - s * KD;
        size_t dst = ((size_t)slot[s] * Tmax + pos[s]) * KD + d;
        kc[dst] = k[i];
        vc[dst] = v[i];
    }
}

/* Copies the S new rows' k, v (S,KD) into the cache at (slot[s], pos[s]); rows of distinct
 * sequences must not share a (slot, pos). */
void cel_cuda_kv_append(float *kc, float *vc, const float *k, const float *v,
                        const int32_t *slot /* (S) */, const int32_t *pos /* (S) */, int S,
                        int Tmax, int KD, cudaStream_t st) {
    if (S < 1 || KD < 1) return;
    size_t n = (size_t)S * KD;
    size_t blocks = (n + 255) / 256;
    if (blocks > 4096) blocks = 4096;
    kv_append_kernel<<<(unsigned)blocks, 256, 0, st>>>(kc, vc, k, v, slot, pos, S, Tmax, KD);
}
