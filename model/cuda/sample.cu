/* sample.cu -- picks the next token of each sequence from its logits row, on the GPU.
 *
 * The rule is ops.h's (model/sampler.c's choose() with the walk in token-id order): argmax at
 * temperature 0; else x = logits / temperature, keep the top_k largest x (ties to the lower id),
 * then the smallest largest-first prefix of those whose softmax mass reaches top_p, and walk
 * the kept tokens in id order until the cumulative exp(x - max) passes u * (kept total).
 *
 * One block per row; nothing is sorted. A kept set is always "key > kap, or key == kap and
 * id <= idc" for an order-preserving integer key of x, so each filter is a radix select (four
 * 8-bit passes of a shared histogram) for kap, then, when a tie group is cut, a scan for the
 * id of its n-th member. Weights are exp(x - max) in fixed point (units of 2^-43, so a row of
 * 2^20 ones fits in 64 bits): integer sums are exact and order-free, so results never depend
 * on thread timing, and a token whose weight rounds to 0 (exp(x - max) < 2^-44) is never
 * drawn. u comes from the host, one per row.
 */
#include "ops.h"

#include <limits.h>
#include <math.h>

#define FULL_MASK 0xffffffffu
#define SAMPLE_NT 512 /* threads per block */
#define SAMPLE_NW (SAMPLE_NT / 32)
#define FIX_ONE   0x1p43f /* fixed-point weight of exp(0) */

typedef unsigned long long u64;

/* Per-block scratch shared by the helpers below. */
struct sample_smem {
    u64 hist[256];
    u64 red[SAMPLE_NW];
    float redf[SAMPLE_NW];
    int redi[SAMPLE_NW];
    unsigned bin;
    u64 above;
    int found;
};

/* x -> unsigned key with the same order; -0 and +0 are one value, so one key. */
static __device__ __forceinline__ unsigned fkey(float x) {
    if (x == 0.0f) x = 0.0f;
    unsigned b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

static __device__ __forceinline__ float kfloat(unsigned key) {
    return __uint_as_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

/* exp(x - mx) in units of 2^-43; 0 for NaN or underflow. */
static __device__ __forceinline__ u64 wfix(float x, float mx) {
    float e = expf(x - mx);
    if (!(e > 0.0f)) return 0;
    if (e > 1.0f) e = 1.0f;
    return (u64)__float2ull_rn(e * FIX_ONE);
}

static __device__ __forceinline__ int kept(unsigned key, int i, unsigned kap, int idc) {
    return key > kap || (key == kap && i <= idc);
}

/* Block-wide reductions. Each starts with a barrier so the scratch is free to reuse, and every
 * thread folds the per-warp partials in the same order, so all threads get the same result. */
static __device__ u64 block_sum_u64(u64 v, sample_smem *sm) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sm->red[threadIdx.x >> 5] = v;
    __syncthreads();
    u64 t = 0;
    for (int i = 0; i < SAMPLE_NW; i++) t += sm->red[i];
    return t;
}

static __device__ float block_max_f(float v, sample_smem *sm) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sm->redf[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < SAMPLE_NW; i++) t = fmaxf(t, sm->redf[i]);
    return t;
}

/* Min (want_max 0) or max (want_max 1) of an int. */
static __device__ int block_minmax_i(int v, int want_max, sample_smem *sm) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        int t = __shfl_xor_sync(FULL_MASK, v, o);
        v = want_max ? max(v, t) : min(v, t);
    }
    __syncthreads();
    if ((threadIdx.x & 31) == 0) sm->redi[threadIdx.x >> 5] = v;
    __syncthreads();
    int t = sm->redi[0];
    for (int i = 1; i < SAMPLE_NW; i++) t = want_max ? max(t, sm->redi[i]) : min(t, sm->redi[i]);
    return t;
}

/* Exclusive prefix sum of one value per thread in thread order; *total gets the sum. */
static __device__ u64 block_excl_scan_u64(u64 v, u64 *total, sample_smem *sm) {
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    u64 incl = v;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        u64 t = __shfl_up_sync(FULL_MASK, incl, o);
        if (lane >= o) incl += t;
    }
    __syncthreads();
    if (lane == 31) sm->red[w] = incl;
    __syncthreads();
    u64 base = 0, tot = 0;
    for (int i = 0; i < SAMPLE_NW; i++) {
        if (i < w) base += sm->red[i];
        tot += sm->red[i];
    }
    *total = tot;
    return base + incl - v;
}

/* Radix select. Over the tokens of the set (all when mode 0; kept(kap_in, idc_in) when mode
 * 1), with weight 1 (mode 0) or wfix (mode 1), finds the largest key K such that the weight of
 * {key >= K} reaches target (>= 1). *above gets the weight of {key > K}, *eq that of
 * {key == K}. A target above the set's weight (never, for the callers' targets) gives a
 * meaningless key in bin 0 but no fault. */
static __device__ unsigned radix_select(const float *lg, int V, float temp, float mx, int mode,
                                        unsigned kap_in, int idc_in, u64 target, u64 *above,
                                        u64 *eq, sample_smem *sm) {
    int tid = threadIdx.x, lane = tid & 31;
    unsigned prefix = 0, mask = 0;
    u64 acc = 0; /* weight of keys above the current prefix's range */
    for (int shift = 24; shift >= 0; shift -= 8) {
        __syncthreads(); /* the last pass's readers of hist, bin, above done */
        for (int b = tid; b < 256; b += SAMPLE_NT) sm->hist[b] = 0;
        __syncthreads();
        for (int i = tid; i < V; i += SAMPLE_NT) {
            float x = lg[i] / temp;
            unsigned key = fkey(x);
            if ((key & mask) != prefix) continue;
            u64 wt = 1;
            if (mode) {
                if (!kept(key, i, kap_in, idc_in)) continue;
                wt = wfix(x, mx);
                if (!wt) continue;
            }
            atomicAdd(&sm->hist[(key >> shift) & 255u], wt);
        }
        __syncthreads();
        if (tid < 32) {
            /* lane l holds bins 255-8l .. 248-8l, so a scan over lanes runs from the top */
            u64 loc[8], sum = 0;
#pragma unroll
            for (int j = 0; j < 8; j++) sum += loc[j] = sm->hist[255 - lane * 8 - j];
            u64 incl = sum;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                u64 t = __shfl_up_sync(FULL_MASK, incl, o);
                if (lane >= o) incl += t;
            }
            unsigned ball = __ballot_sync(FULL_MASK, acc + incl >= target);
            int first = ball ? __ffs(ball) - 1 : 31;
            if (lane == first) {
                u64 c = acc + incl - sum;
                int j = 0;
                for (; j < 7; j++) {
                    if (c + loc[j] >= target) break;
                    c += loc[j];
                }
                sm->bin = 255u - (unsigned)(lane * 8 + j);
                sm->above = c;
            }
        }
        __syncthreads();
        unsigned bin = sm->bin;
        acc = sm->above;
        prefix |= bin << shift;
        mask |= 0xffu << shift;
        if (shift == 0) *eq = sm->hist[bin];
    }
    *above = acc;
    return prefix;
}

/* Id of the n-th token (n >= 1, in id order) whose key is kap; V-1 if there are fewer. */
static __device__ int find_nth(const float *lg, int V, float temp, unsigned kap, u64 n,
                               sample_smem *sm) {
    int tid = threadIdx.x, lane = tid & 31, w = tid >> 5;
    u64 base = 0;
    for (int c0 = 0; c0 < V; c0 += SAMPLE_NT) {
        int i = c0 + tid;
        int f = i < V && fkey(lg[i] / temp) == kap;
        unsigned ball = __ballot_sync(FULL_MASK, f);
        __syncthreads();
        if (lane == 0) sm->redi[w] = __popc(ball);
        __syncthreads();
        u64 before = base, tot = 0;
        for (int j = 0; j < SAMPLE_NW; j++) {
            if (j < w) before += (u64)sm->redi[j];
            tot += (u64)sm->redi[j];
        }
        if (base + tot >= n) { /* the same for every thread */
            u64 rank = before + (u64)__popc(ball & ((1u << lane) - 1u)) + 1;
            if (f && rank == n) sm->found = i;
            __syncthreads();
            return sm->found;
        }
        base += tot;
    }
    return V - 1;
}

/* Grid (S), SAMPLE_NT threads: out[row] for one row of logits. */
static __global__ void __launch_bounds__(SAMPLE_NT)
    sample_kernel(int32_t *out, const float *logits, const float *u, float temp, int top_k,
                  float top_p, int V) {
    __shared__ sample_smem sm;
    int tid = threadIdx.x, row = blockIdx.x;
    const float *lg = logits + (size_t)row * V;

    if (temp <= 0.0f) { /* argmax, lowest id on ties; NaN counts as -inf */
        float bv = -INFINITY;
        int bi = INT_MAX;
        for (int i = tid; i < V; i += SAMPLE_NT) {
            float x = lg[i];
            if (x != x) x = -INFINITY;
            if (x > bv || (x == bv && i < bi)) bv = x, bi = i;
        }
        float best = block_max_f(bv, &sm);
        int id = block_minmax_i(bv == best ? bi : INT_MAX, 0, &sm);
        if (tid == 0) out[row] = id < V ? id : 0;
        return;
    }

    float mx = -INFINITY;
    for (int i = tid; i < V; i += SAMPLE_NT) mx = fmaxf(mx, lg[i] / temp);
    mx = block_max_f(mx, &sm);

    unsigned kap = 0; /* kept: key > kap, or key == kap and id <= idc (0, V-1: all) */
    int idc = V - 1;
    u64 above, eq;
    if (top_k > 0 && top_k < V) {
        kap = radix_select(lg, V, temp, mx, 0, 0, V - 1, (u64)top_k, &above, &eq, &sm);
        u64 n = (u64)top_k - above; /* ties at kap to keep, lowest ids first */
        idc = n >= eq ? V - 1 : find_nth(lg, V, temp, kap, n, &sm);
    }
    if (top_p < 1.0f) {
        u64 mine = 0;
        for (int i = tid; i < V; i += SAMPLE_NT) {
            float x = lg[i] / temp;
            if (kept(fkey(x), i, kap, idc)) mine += wfix(x, mx);
        }
        u64 total = block_sum_u64(mine, &sm);
        if (total > 0) {
            double tg = ceil((double)top_p * (double)total);
            u64 target = tg < 1.0 ? 1 : tg >= (double)total ? total : (u64)tg;
            unsigned kp = radix_select(lg, V, temp, mx, 1, kap, idc, target, &above, &eq, &sm);
            u64 wk = wfix(kfloat(kp), mx); /* every token with key kp weighs exactly this */
            u64 cnt = wk ? eq / wk : 1, n = wk ? (target - above + wk - 1) / wk : 1;
            if (n < 1) n = 1;
            if (n >= cnt) idc = kp == kap ? idc : V - 1;
            else idc = find_nth(lg, V, temp, kp, n, &sm);
            kap = kp;
        }
    }

    /* walk in id order: thread t owns ids [t*seg, t*seg+seg), an exact scan gives its base */
    int seg = (V + SAMPLE_NT - 1) / SAMPLE_NT, lo = tid * seg, hi = min(V, lo + seg);
    u64 mine = 0;
    int last = -1;
    for (int i = lo; i < hi; i++) {
        float x = lg[i] / temp;
        if (kept(fkey(x), i, kap, idc)) mine += wfix(x, mx), last = i;
    }
    u64 total;
    u64 cum = block_excl_scan_u64(mine, &total, &sm);
    double r = (double)u[row] * (double)total;
    int cand = INT_MAX;
    for (int i = lo; i < hi; i++) {
        float x = lg[i] / temp;
        if (!kept(fkey(x), i, kap, idc)) continue;
        cum += wfix(x, mx);
        if ((double)cum > r) {
            cand = i;
            break;
        }
    }
    cand = block_minmax_i(cand, 0, &sm);
    last = block_minmax_i(last, 1, &sm);
    if (tid == 0) out[row] = cand < V ? cand : last >= 0 ? last : 0;
}

/* One block per row; u[s] in [0, 1). Sizes (V <= 2^20, S >= 1) are the caller's to check. */
void cel_cuda_sample(int32_t *out /* (S) */, const float *logits /* (S,V) */,
                     const float *u /* (S) */, float temperature, int top_k, float top_p, int S,
                     int V, cudaStream_t st) {
    if (S < 1 || V < 1) return;
    sample_kernel<<<S, SAMPLE_NT, 0, st>>>(out, logits, u, temperature, top_k, top_p, V);
}
