/* attention.cu -- causal grouped-query attention on the GPU, forward and backward, flash-style.
 *
 * CUDA twin of model/cpu/attention.c: out_h = softmax(q_h k_g^T / sqrt(HS) + causal mask) v_g
 * with g = h / (NH/NKV). Nothing (T,T) ever exists: the forward walks key tiles with an online
 * softmax and saves only the row log-sum-exp; the backward recomputes P = exp(S - lse) tile by
 * tile (FlashAttention-2). All arithmetic is fp32 on CUDA cores; only `out` is bf16.
 *
 * Work split. Forward: a block per (query tile, head, batch); each warp owns R query rows, a
 * lane owns one key of the 32-key tile for the scores and 1/32 of the head dims for the output.
 * Backward: one kernel per (key tile, kv head, batch) loops over the group's query heads and
 * query tiles and writes dK, dV once (lanes = queries for P^T, lanes = dims for the sums); a
 * second kernel per (query tile, head, batch) recomputes P and dS and writes dQ. No atomics:
 * results are bitwise deterministic. D = rowsum(dO * O) is recomputed per tile from the bf16
 * out (ops.h gives the op no scratch to precompute it into).
 *
 * HS 64 and 128 are compiled for exactly; any other even HS <= 256 takes a generic path.
 * Shared-memory tiles above 48 KB opt in with cudaFuncSetAttribute (HS 128 and generic).
 */
#include "ops.h"

#include <math.h>

#define FULL_MASK    0xffffffffu
#define SMEM_DEFAULT (48 * 1024)

/* Butterfly reductions: every lane ends with the same bits (float + is commutative). */
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

/* VEC consecutive floats from shared memory (p aligned to VEC floats). */
template <int VEC> static __device__ __forceinline__ void load_vec(float *r, const float *p) {
    if constexpr (VEC == 4) {
        float4 t = *reinterpret_cast<const float4 *>(p);
        r[0] = t.x, r[1] = t.y, r[2] = t.z, r[3] = t.w;
    } else {
        float2 t = *reinterpret_cast<const float2 *>(p);
        r[0] = t.x, r[1] = t.y;
    }
}

/* Compile-time head size (0: runtime), lane chunks of 32 dims, and the vector width of the
 * broadcast shared-memory reads (HS is even, so 2 always works). */
#define HS_OF(HSC, hs) ((HSC) ? (HSC) : (hs))
#define NC_OF(HSC)     ((HSC) ? ((HSC) + 31) / 32 : 8)
#define VEC_OF(HSC)    (((HSC) && (HSC) % 4 == 0) ? 4 : 2)

/* Forward: grid (ceil(T/BR), NH, B), W warps, BR = R*W query rows per block, 32-key tiles.
 * Shared: Qs (BR,HS), Ps (W,R,32), Ks (32,HS+1) (lane = key reads a row: padded against bank
 * conflicts), Vs (32,HS). */
template <int HSC, int R, int W>
static __global__ void __launch_bounds__(W * 32)
    attn_fwd_kernel(cel_bf16_t *out, float *lse, const float *q, const float *k, const float *v,
                    int T, int NH, int NKV, int hs, float scale) {
    constexpr int NC = NC_OF(HSC), VEC = VEC_OF(HSC), BR = R * W, NT = W * 32;
    const int HS = HS_OF(HSC, hs);
    extern __shared__ float4 smem4[];
    float *Qs = reinterpret_cast<float *>(smem4);
    float *Ps = Qs + BR * HS;
    float *Ks = Ps + BR * 32;
    float *Vs = Ks + 32 * (HS + 1);

    int q0 = (gridDim.x - 1 - blockIdx.x) * BR; /* longest rows first */
    int h = blockIdx.y, b = blockIdx.z, g = h / (NH / NKV);
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    size_t ldq = (size_t)NH * HS, ldk = (size_t)NKV * HS;
    const float *qb = q + (size_t)b * T * ldq + (size_t)h * HS;
    const float *kb = k + (size_t)b * T * ldk + (size_t)g * HS;
    const float *vb = v + (size_t)b * T * ldk + (size_t)g * HS;

    for (int e = tid; e < BR * HS; e += NT) {
        int r = e / HS, d = e - r * HS, t = q0 + r;
        Qs[e] = t < T ? qb[(size_t)t * ldq + d] : 0.0f;
    }
    float m[R], l[R], o[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++) {
        m[r] = -INFINITY, l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) o[r][c] = 0.0f;
    }
    int row0 = q0 + w * R; /* this warp's rows: row0 .. row0+R-1 */
    float *Pw = Ps + w * R * 32;
    const float *Qw = Qs + w * R * HS;
    int kend = min(T, q0 + BR);
    for (int k0 = 0; k0 < kend; k0 += 32) {
        __syncthreads(); /* Q loaded; the last tile's readers done */
        for (int e = tid; e < 32 * HS; e += NT) {
            int j = e / HS, d = e - j * HS, t = k0 + j;
            Ks[j * (HS + 1) + d] = t < T ? kb[(size_t)t * ldk + d] : 0.0f;
            Vs[e] = t < T ? vb[(size_t)t * ldk + d] : 0.0f;
        }
        __syncthreads();
        if (k0 > row0 + R - 1) continue; /* every key after every row of this warp */

        float s[R];
#pragma unroll
        for (int r = 0; r < R; r++) s[r] = 0.0f;
        const float *kr = Ks + lane * (HS + 1);
#pragma unroll 4
        for (int d = 0; d < HS; d += VEC) {
            float kk[VEC];
#pragma unroll
            for (int t = 0; t < VEC; t++) kk[t] = kr[d + t];
#pragma unroll
            for (int r = 0; r < R; r++) {
                float qq[VEC];
                load_vec<VEC>(qq, Qw + r * HS + d);
#pragma unroll
                for (int t = 0; t < VEC; t++) s[r] = fmaf(qq[t], kk[t], s[r]);
            }
        }
        int key = k0 + lane;
#pragma unroll
        for (int r = 0; r < R; r++) {
            int row = row0 + r;
            float sc = (key <= row && key < T) ? s[r] * scale : -INFINITY;
            float mn = fmaxf(m[r], warp_max(sc));
            float mu = mn == -INFINITY ? 0.0f : mn; /* no key yet: keep exp() away from NaN */
            float alpha = expf(m[r] - mu), p = expf(sc - mu);
            l[r] = l[r] * alpha + p; /* per-lane partial, summed over the warp at the end */
            m[r] = mn;
#pragma unroll
            for (int c = 0; c < NC; c++) o[r][c] *= alpha;
            Pw[r * 32 + lane] = p;
        }
        __syncwarp();
#pragma unroll 2
        for (int j = 0; j < 32; j += 4) {
            float4 pp[R];
#pragma unroll
            for (int r = 0; r < R; r++) pp[r] = *reinterpret_cast<const float4 *>(Pw + r * 32 + j);
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int d = lane + 32 * c;
                if (!HSC && d >= HS) break;
                const float *vr = Vs + j * HS + d;
                float v0 = vr[0], v1 = vr[HS], v2 = vr[2 * HS], v3 = vr[3 * HS];
#pragma unroll
                for (int r = 0; r < R; r++)
                    o[r][c] += pp[r].x * v0 + pp[r].y * v1 + pp[r].z * v2 + pp[r].w * v3;
            }
        }
        __syncwarp(); /* Pw is rewritten by the next tile */
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        float lt = warp_sum(l[r]);
        int row = row0 + r;
        if (row >= T) continue;
        float inv = 1.0f / lt;
        cel_bf16_t *orow = out + ((size_t)b * T + row) * ldq + (size_t)h * HS;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (HSC || d < HS) orow[d] = __float2bfloat16(o[r][c] * inv);
        }
        if (lane == 0) lse[((size_t)b * NH + h) * T + row] = m[r] + logf(lt);
    }
}

/* dK, dV: grid (ceil(T/BC), NKV, B), W warps, BC = R*W keys per block (R per warp), 32-query
 * tiles. Shared: Ks, Vs (BC,HS) read as warp broadcasts; Ps (W,R,32) holds P^T then dS^T;
 * Qs, dOs (32,HS+1) (lane = query reads a row: padded); Ls, Ds (32) lse and D of the tile. */
template <int HSC, int R, int W>
static __global__ void __launch_bounds__(W * 32)
    attn_bwd_dkdv_kernel(float *dk, float *dv, const float *dout, const cel_bf16_t *out,
                         const float *lse, const float *q, const float *k, const float *v, int T,
                         int NH, int NKV, int hs, float scale) {
    constexpr int NC = NC_OF(HSC), VEC = VEC_OF(HSC), BC = R * W, NT = W * 32;
    const int HS = HS_OF(HSC, hs);
    extern __shared__ float4 smem4[];
    float *Ks = reinterpret_cast<float *>(smem4);
    float *Vs = Ks + BC * HS;
    float *Ps = Vs + BC * HS;
    float *Qs = Ps + BC * 32;
    float *dOs = Qs + 32 * (HS + 1);
    float *Ls = dOs + 32 * (HS + 1);
    float *Ds = Ls + 32;

    int k0 = blockIdx.x * BC; /* key tile 0 has the most queries: scheduled first */
    int g = blockIdx.y, b = blockIdx.z, group = NH / NKV;
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    size_t ldq = (size_t)NH * HS, ldk = (size_t)NKV * HS;
    const float *kb = k + (size_t)b * T * ldk + (size_t)g * HS;
    const float *vb = v + (size_t)b * T * ldk + (size_t)g * HS;
    for (int e = tid; e < BC * HS; e += NT) {
        int j = e / HS, d = e - j * HS, t = k0 + j;
        Ks[e] = t < T ? kb[(size_t)t * ldk + d] : 0.0f;
        Vs[e] = t < T ? vb[(size_t)t * ldk + d] : 0.0f;
    }
    float gk[R][NC], gv[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++)
#pragma unroll
        for (int c = 0; c < NC; c++) gk[r][c] = 0.0f, gv[r][c] = 0.0f;
    int key0 = k0 + w * R; /* this warp's keys: key0 .. key0+R-1 */
    float *Pw = Ps + w * R * 32;
    const float *Kw = Ks + w * R * HS, *Vw = Vs + w * R * HS;

    for (int hh = 0; hh < group; hh++) {
        int h = g * group + hh;
        size_t qoff = (size_t)b * T * ldq + (size_t)h * HS;
        const float *qb = q + qoff, *dob = dout + qoff;
        const cel_bf16_t *ob = out + qoff;
        const float *lb = lse + ((size_t)b * NH + h) * T;
        for (int q0 = (k0 / 32) * 32; q0 < T; q0 += 32) {
            __syncthreads(); /* K, V loaded; the last tile's readers done */
            for (int e = tid; e < 32 * HS; e += NT) {
                int i = e / HS, d = e - i * HS, t = q0 + i;
                size_t src = (size_t)t * ldq + d;
                Qs[i * (HS + 1) + d] = t < T ? qb[src] : 0.0f;
                dOs[i * (HS + 1) + d] = t < T ? dob[src] : 0.0f;
            }
            if (tid < 32) Ls[tid] = q0 + tid < T ? lb[q0 + tid] : 0.0f;
            __syncthreads();
            for (int i = w; i < 32; i += W) { /* D = rowsum(dO * O) */
                int t = q0 + i;
                float acc = 0.0f;
                if (t < T)
                    for (int d = lane; d < HS; d += 32)
                        acc += dOs[i * (HS + 1) + d] * __bfloat162float(ob[(size_t)t * ldq + d]);
                acc = warp_sum(acc);
                if (lane == 0) Ds[i] = acc;
            }
            __syncthreads();
            if (key0 > q0 + 31) continue; /* every key of this warp after every query */

            /* lane = query qi: S^T and dP^T for the warp's R keys */
            float st[R], dpt[R];
#pragma unroll
            for (int r = 0; r < R; r++) st[r] = 0.0f, dpt[r] = 0.0f;
            const float *qr = Qs + lane * (HS + 1), *dor = dOs + lane * (HS + 1);
#pragma unroll 2
            for (int d = 0; d < HS; d += VEC) {
                float qq[VEC], oo[VEC];
#pragma unroll
                for (int t = 0; t < VEC; t++) qq[t] = qr[d + t], oo[t] = dor[d + t];
#pragma unroll
                for (int r = 0; r < R; r++) {
                    float kk[VEC], vv[VEC];
                    load_vec<VEC>(kk, Kw + r * HS + d);
                    load_vec<VEC>(vv, Vw + r * HS + d);
#pragma unroll
                    for (int t = 0; t < VEC; t++) {
                        st[r] = fmaf(kk[t], qq[t], st[r]);
                        dpt[r] = fmaf(vv[t], oo[t], dpt[r]);
                    }
                }
            }
            int qi = q0 + lane;
            float Li = Ls[lane], Di = Ds[lane], p[R];
#pragma unroll
            for (int r = 0; r < R; r++) {
                p[r] = (key0 + r <= qi && qi < T) ? expf(st[r] * scale - Li) : 0.0f;
                Pw[r * 32 + lane] = p[r];
            }
            __syncwarp();
            /* dV += P^T dO (lane = dim) */
#pragma unroll 2
            for (int j = 0; j < 32; j += 4) {
                float4 pp[R];
#pragma unroll
                for (int r = 0; r < R; r++)
                    pp[r] = *reinterpret_cast<const float4 *>(Pw + r * 32 + j);
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    int d = lane + 32 * c;
                    if (!HSC && d >= HS) break;
                    const float *x = dOs + j * (HS + 1) + d;
                    float x0 = x[0], x1 = x[HS + 1], x2 = x[2 * (HS + 1)], x3 = x[3 * (HS + 1)];
#pragma unroll
                    for (int r = 0; r < R; r++)
                        gv[r][c] += pp[r].x * x0 + pp[r].y * x1 + pp[r].z * x2 + pp[r].w * x3;
                }
            }
            __syncwarp();
#pragma unroll
            for (int r = 0; r < R; r++) Pw[r * 32 + lane] = p[r] * (dpt[r] - Di); /* dS^T */
            __syncwarp();
            /* dK += dS^T Q (scaled at the end) */
#pragma unroll 2
            for (int j = 0; j < 32; j += 4) {
                float4 pp[R];
#pragma unroll
                for (int r = 0; r < R; r++)
                    pp[r] = *reinterpret_cast<const float4 *>(Pw + r * 32 + j);
#pragma unroll
                for (int c = 0; c < NC; c++) {
                    int d = lane + 32 * c;
                    if (!HSC && d >= HS) break;
                    const float *x = Qs + j * (HS + 1) + d;
                    float x0 = x[0], x1 = x[HS + 1], x2 = x[2 * (HS + 1)], x3 = x[3 * (HS + 1)];
#pragma unroll
                    for (int r = 0; r < R; r++)
                        gk[r][c] += pp[r].x * x0 + pp[r].y * x1 + pp[r].z * x2 + pp[r].w * x3;
                }
            }
            __syncwarp();
        }
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        int t = key0 + r;
        if (t >= T) continue;
        size_t o = ((size_t)b * T + t) * ldk + (size_t)g * HS;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (!HSC && d >= HS) break;
            dk[o + d] = gk[r][c] * scale;
            dv[o + d] = gv[r][c];
        }
    }
}

/* dQ: grid (ceil(T/BR), NH, B), W warps, BR = R*W query rows, 32-key tiles. Shared: Qs, dOs
 * (BR,HS) broadcast; Ps (W,R,32) holds dS; Ks, Vs (32,HS+1) (lane = key reads a row). */
template <int HSC, int R, int W>
static __global__ void __launch_bounds__(W * 32)
    attn_bwd_dq_kernel(float *dq, const float *dout, const cel_bf16_t *out, const float *lse,
                       const float *q, const float *k, const float *v, int T, int NH, int NKV,
                       int hs, float scale) {
    constexpr int NC = NC_OF(HSC), VEC = VEC_OF(HSC), BR = R * W, NT = W * 32;
    const int HS = HS_OF(HSC, hs);
    extern __shared__ float4 smem4[];
    float *Qs = reinterpret_cast<float *>(smem4);
    float *dOs = Qs + BR * HS;
    float *Ps = dOs + BR * HS;
    float *Ks = Ps + BR * 32;
    float *Vs = Ks + 32 * (HS + 1);

    int q0 = (gridDim.x - 1 - blockIdx.x) * BR;
    int h = blockIdx.y, b = blockIdx.z, g = h / (NH / NKV);
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    size_t ldq = (size_t)NH * HS, ldk = (size_t)NKV * HS;
    size_t qoff = (size_t)b * T * ldq + (size_t)h * HS;
    const float *qb = q + qoff, *dob = dout + qoff;
    const cel_bf16_t *ob = out + qoff;
    const float *lb = lse + ((size_t)b * NH + h) * T;
    const float *kb = k + (size_t)b * T * ldk + (size_t)g * HS;
    const float *vb = v + (size_t)b * T * ldk + (size_t)g * HS;

    for (int e = tid; e < BR * HS; e += NT) {
        int r = e / HS, d = e - r * HS, t = q0 + r;
        Qs[e] = t < T ? qb[(size_t)t * ldq + d] : 0.0f;
        dOs[e] = t < T ? dob[(size_t)t * ldq + d] : 0.0f;
    }
    __syncthreads();
    int row0 = q0 + w * R;
    float *Pw = Ps + w * R * 32;
    const float *Qw = Qs + w * R * HS, *dOw = dOs + w * R * HS;
    float Lr[R], Dr[R], acc[R][NC];
#pragma unroll
    for (int r = 0; r < R; r++) {
        int row = row0 + r;
        float a = 0.0f;
        if (row < T)
            for (int d = lane; d < HS; d += 32)
                a += dOw[r * HS + d] * __bfloat162float(ob[(size_t)row * ldq + d]);
        Dr[r] = warp_sum(a);
        Lr[r] = row < T ? lb[row] : 0.0f;
#pragma unroll
        for (int c = 0; c < NC; c++) acc[r][c] = 0.0f;
    }
    int kend = min(T, q0 + BR);
    for (int k0 = 0; k0 < kend; k0 += 32) {
        __syncthreads(); /* the last tile's readers done */
        for (int e = tid; e < 32 * HS; e += NT) {
            int j = e / HS, d = e - j * HS, t = k0 + j;
            Ks[j * (HS + 1) + d] = t < T ? kb[(size_t)t * ldk + d] : 0.0f;
            Vs[j * (HS + 1) + d] = t < T ? vb[(size_t)t * ldk + d] : 0.0f;
        }
        __syncthreads();
        if (k0 > row0 + R - 1) continue;

        /* lane = key: S and dP for the warp's R rows */
        float s[R], dp[R];
#pragma unroll
        for (int r = 0; r < R; r++) s[r] = 0.0f, dp[r] = 0.0f;
        const float *kr = Ks + lane * (HS + 1), *vr = Vs + lane * (HS + 1);
#pragma unroll 2
        for (int d = 0; d < HS; d += VEC) {
            float kk[VEC], vv[VEC];
#pragma unroll
            for (int t = 0; t < VEC; t++) kk[t] = kr[d + t], vv[t] = vr[d + t];
#pragma unroll
            for (int r = 0; r < R; r++) {
                float qq[VEC], oo[VEC];
                load_vec<VEC>(qq, Qw + r * HS + d);
                load_vec<VEC>(oo, dOw + r * HS + d);
#pragma unroll
                for (int t = 0; t < VEC; t++) {
                    s[r] = fmaf(qq[t], kk[t], s[r]);
                    dp[r] = fmaf(oo[t], vv[t], dp[r]);
                }
            }
        }
        int key = k0 + lane;
#pragma unroll
        for (int r = 0; r < R; r++) {
            int row = row0 + r;
            float p = (key <= row && row < T) ? expf(s[r] * scale - Lr[r]) : 0.0f;
            Pw[r * 32 + lane] = p * (dp[r] - Dr[r]);
        }
        __syncwarp();
        /* dQ += dS K (lane = dim; scaled at the end) */
#pragma unroll 2
        for (int j = 0; j < 32; j += 4) {
            float4 pp[R];
#pragma unroll
            for (int r = 0; r < R; r++) pp[r] = *reinterpret_cast<const float4 *>(Pw + r * 32 + j);
#pragma unroll
            for (int c = 0; c < NC; c++) {
                int d = lane + 32 * c;
                if (!HSC && d >= HS) break;
                const float *x = Ks + j * (HS + 1) + d;
                float x0 = x[0], x1 = x[HS + 1], x2 = x[2 * (HS + 1)], x3 = x[3 * (HS + 1)];
#pragma unroll
                for (int r = 0; r < R; r++)
                    acc[r][c] += pp[r].x * x0 + pp[r].y * x1 + pp[r].z * x2 + pp[r].w * x3;
            }
        }
        __syncwarp();
    }
#pragma unroll
    for (int r = 0; r < R; r++) {
        int row = row0 + r;
        if (row >= T) continue;
        float *drow = dq + ((size_t)b * T + row) * ldq + (size_t)h * HS;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int d = lane + 32 * c;
            if (!HSC && d >= HS) break;
            drow[d] = acc[r][c] * scale;
        }
    }
}

/* Raises a kernel's dynamic shared-memory cap when a tile needs more than the default 48 KB.
 * A failure here makes the launch fail, which the engine's next check reports. */
template <typename K> static void smem_opt_in(K kernel, size_t bytes) {
    if (bytes > SMEM_DEFAULT)
        (void)cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

template <int HSC, int R, int W>
static void launch_forward(cel_bf16_t *out, float *lse, const float *q, const float *k,
                           const float *v, int B, int T, int NH, int NKV, int HS, cudaStream_t st) {
    constexpr int BR = R * W;
    size_t smem = ((size_t)BR * HS + BR * 32 + 32 * (HS + 1) + 32 * HS) * sizeof(float);
    smem_opt_in(attn_fwd_kernel<HSC, R, W>, smem);
    dim3 grid((T + BR - 1) / BR, NH, B);
    attn_fwd_kernel<HSC, R, W>
        <<<grid, W * 32, smem, st>>>(out, lse, q, k, v, T, NH, NKV, HS, 1.0f / sqrtf((float)HS));
}

/* Tiles per head size: HS 64 stays under 48 KB of shared memory everywhere; HS 128 opts in
 * (74 KB forward, 70 KB backward); the generic path (HS <= 256) stays under 99 KB, the
 * smallest opt-in limit of sm_80 and later. */
void cel_cuda_attention_forward(cel_bf16_t *out /* (B,T,NH*HS) */, float *lse /* (B,NH,T) saved */,
                                const float *q /* (B,T,NH*HS) */, const float *k /* (B,T,NKV*HS) */,
                                const float *v /* (B,T,NKV*HS) */, int B, int T, int NH, int NKV,
                                int HS, cudaStream_t st) {
    if (B < 1 || T < 1 || NH < 1) return;
    if (HS == 64) launch_forward<64, 8, 8>(out, lse, q, k, v, B, T, NH, NKV, HS, st);
    else if (HS == 128) launch_forward<128, 8, 8>(out, lse, q, k, v, B, T, NH, NKV, HS, st);
    else launch_forward<0, 4, 4>(out, lse, q, k, v, B, T, NH, NKV, HS, st);
}

template <int HSC, int RK, int WK, int RQ, int WQ>
static void launch_backward(float *dq, float *dk, float *dv, const float *dout,
                            const cel_bf16_t *out, const float *lse, const float *q, const float *k,
                            const float *v, int B, int T, int NH, int NKV, int HS,
                            cudaStream_t st) {
    float scale = 1.0f / sqrtf((float)HS);
    constexpr int BC = RK * WK, BR = RQ * WQ;
    size_t smem_kv = ((size_t)2 * BC * HS + BC * 32 + 2 * 32 * (HS + 1) + 64) * sizeof(float);
    smem_opt_in(attn_bwd_dkdv_kernel<HSC, RK, WK>, smem_kv);
    dim3 grid_kv((T + BC - 1) / BC, NKV, B);
    attn_bwd_dkdv_kernel<HSC, RK, WK>
        <<<grid_kv, WK * 32, smem_kv, st>>>(dk, dv, dout, out, lse, q, k, v, T, NH, NKV, HS, scale);
    size_t smem_q = ((size_t)2 * BR * HS + BR * 32 + 2 * 32 * (HS + 1)) * sizeof(float);
    smem_opt_in(attn_bwd_dq_kernel<HSC, RQ, WQ>, smem_q);
    dim3 grid_q((T + BR - 1) / BR, NH, B);
    attn_bwd_dq_kernel<HSC, RQ, WQ>
        <<<grid_q, WQ * 32, smem_q, st>>>(dq, dout, out, lse, q, k, v, T, NH, NKV, HS, scale);
}

/* Two launches on st: dK/dV per key tile (looping over the group's query heads), then dQ per
 * query tile. Every element of dq, dk, dv is written exactly once (=), without atomics. */
void cel_cuda_attention_backward(float *dq /* (B,T,NH*HS) = */, float *dk /* (B,T,NKV*HS) = */,
                                 float *dv /* (B,T,NKV*HS) = */,
                                 const float *dout /* (B,T,NH*HS) */,
                                 const cel_bf16_t *out /* (B,T,NH*HS) */,
                                 const float *lse /* (B,NH,T) */, const float *q, const float *k,
                                 const float *v, int B, int T, int NH, int NKV, int HS,
                                 cudaStream_t st) {
    if (B < 1 || T < 1 || NH < 1) return;
    if (HS == 64)
        launch_backward<64, 8, 4, 8, 4>(dq, dk, dv, dout, out, lse, q, k, v, B, T, NH, NKV, HS, st);
    else if (HS == 128)
        launch_backward<128, 8, 4, 8, 4>(dq, dk, dv, dout, out, lse, q, k, v, B, T, NH, NKV, HS,
                                         st);
    else launch_backward<0, 2, 4, 2, 4>(dq, dk, dv, dout, out, lse, q, k, v, B, T, NH, NKV, HS, st);
}
