/* bf16.c -- matrix products with bf16 inputs and fp32 accumulation on CPUs with AVX512-BF16.
 *
 * The optional bf16 compute of the CPU backend (cel_model_set_precision):
 * frozen weights are packed once into bf16 panels, activations are rounded
 * to bf16 (round to nearest even) block by block, and VDPBF16PS multiplies
 * pairs along K and adds into fp32 accumulators -- as the GPU backend's bf16
 * GEMMs do. Only products with a frozen weight on one side use it: the
 * linear layers' forward (x W^T) and input gradient (dout W), and the head.
 *
 * Panel layout: 32 output columns per panel, K in pairs; panel j holds, for
 * each pair kk, 32 columns x (B[2kk][n], B[2kk+1][n]) = 64 bf16 (two zmm),
 * zero past K and past the last column. The kernel computes 8 rows x 32
 * columns over the whole K; rows are taken 64 at a time (their bf16 copy
 * stays in L2), panels are split into groups, and (row block, panel group)
 * items are spread over par.c's threads.
 */
#include "ops.h"

#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define BF16_X86    1
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))
#else
#define BF16_X86 0
#endif

#define BF16_NR 32 /* columns per panel */
#define BF16_MR 8  /* rows per kernel call */
#define BF16_MB 64 /* rows per block */
#define BF16_NG 8  /* panels per work item */

int cel_cpu_bf16_supported(void) {
#if BF16_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

/* fp32 -> bf16, round to nearest even (NaN kept quiet). */
static uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

int cel_cpu_bf16_pack(cel_cpu_bf16w_t *w, const float *src, int ld, int K, int Nc, int trans) {
    memset(w, 0, sizeof(*w));
    int kp = (K + 1) / 2, np = (Nc + BF16_NR - 1) / BF16_NR;
    size_t n = (size_t)np * kp * BF16_NR * 2;
    uint16_t *p = calloc(n, sizeof(uint16_t));
    if (!p) return -1;
    for (int j = 0; j < np; j++)
        for (int kk = 0; kk < kp; kk++) {
            uint16_t *o = p + ((size_t)j * kp + kk) * BF16_NR * 2;
            for (int c = 0; c < BF16_NR; c++) {
                int col = j * BF16_NR + c;
                if (col >= Nc) break;
                for (int e = 0; e < 2; e++) {
                    int k = 2 * kk + e;
                    if (k >= K) break;
                    float v = trans ? src[(size_t)col * ld + k] : src[(size_t)k * ld + col];
                    o[2 * c + e] = to_bf16(v);
                }
            }
        }
    *w = (cel_cpu_bf16w_t){ .p = p, .K = K, .Nc = Nc, .kp = kp, .np = np };
    return 0;
}

void cel_cpu_bf16_free(cel_cpu_bf16w_t *w) {
    if (!w) return;
    free(w->p);
    memset(w, 0, sizeof(*w));
}

#if BF16_X86
typedef struct gemm_job {
    float *C;
    const float *A;
    int ldc, lda, M, accumulate, ngroups;
    const cel_cpu_bf16w_t *w;
} gemm_job_t;

/* Rows [r0, r0 + mr) of A as bf16 pairs into buf (BF16_MB rows of 2*kp), zero-padded. */
BF16_TARGET static void convert_rows(uint16_t *buf, const float *A, int lda, int r0, int mr, int K,
                                     int kp) {
    int K2 = 2 * kp;
    for (int r = 0; r < BF16_MB; r++) {
        uint16_t *o = buf + (size_t)r * K2;
        if (r >= mr) {
            memset(o, 0, (size_t)K2 * sizeof(uint16_t));
            continue;
        }
        const float *a = A + (size_t)(r0 + r) * lda;
        int k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(a + k));
            _mm512_storeu_si512((void *)(o + k), (__m512i)v);
        }
        for (; k < K; k++) o[k] = to_bf16(a[k]);
        for (; k < K2; k++) o[k] = 0;
    }
}

/* C[8 rows][32 cols] (+)= A8 (8 bf16 rows of 2*kp) x panel; rows < mr, columns < nv stored. */
BF16_TARGET static void kernel(float *C, int ldc, const uint16_t *A8, int K2, const uint16_t *panel,
                               int kp, int mr, int nv, int accumulate) {
    __m512 c[BF16_MR][2];
    for (int r = 0; r < BF16_MR; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
    const int32_t *a = (const int32_t *)A8;
    int ka = K2 / 2; /* int32 pairs per A row */
    for (int kk = 0; kk < kp; kk++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(panel + (size_t)kk * 64));
        __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(panel + (size_t)kk * 64 + 32));
#define ROW(r)                                                    \
    do {                                                          \
        __m512bh x = (__m512bh)_mm512_set1_epi32(a[(r)*ka + kk]); \
        c[r][0] = _mm512_dpbf16_ps(c[r][0], x, b0);               \
        c[r][1] = _mm512_dpbf16_ps(c[r][1], x, b1);               \
    } while (0)
        ROW(0);
        ROW(1);
        ROW(2);
        ROW(3);
        ROW(4);
        ROW(5);
        ROW(6);
        ROW(7);
#undef ROW
    }
    __mmask16 m0 = nv >= 16 ? 0xffff : (__mmask16)((1u << nv) - 1);
    __mmask16 m1 = nv >= 32 ? 0xffff : nv <= 16 ? 0 : (__mmask16)((1u << (nv - 16)) - 1);
    for (int r = 0; r < mr; r++) {
        float *o = C + (size_t)r * ldc;
        __m512 v0 = c[r][0], v1 = c[r][1];
        if (accumulate) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, o));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, o + 16));
        }
        _mm512_mask_storeu_ps(o, m0, v0);
        _mm512_mask_storeu_ps(o + 16, m1, v1);
    }
}

static _Thread_local uint16_t *tbuf;
static _Thread_local size_t tcap;

BF16_TARGET static void gemm_items(void *ctx, int i0, int i1) {
    const gemm_job_t *j = ctx;
    const cel_cpu_bf16w_t *w = j->w;
    int K2 = 2 * w->kp;
    size_t need = (size_t)BF16_MB * K2;
    if (need > tcap) {
        uint16_t *nb = realloc(tbuf, need * sizeof(uint16_t));
        if (!nb) abort(); /* callers size nothing past what the workspace holds */
        tbuf = nb;
        tcap = need;
    }
    int last_rb = -1;
    for (int it = i0; it < i1; it++) {
        int rb = it / j->ngroups, g = it % j->ngroups;
        int r0 = rb * BF16_MB, mb = j->M - r0 < BF16_MB ? j->M - r0 : BF16_MB;
        if (rb != last_rb) {
            convert_rows(tbuf, j->A, j->lda, r0, mb, w->K, w->kp);
            last_rb = rb;
        }
        int p0 = g * BF16_NG, p1 = p0 + BF16_NG < w->np ? p0 + BF16_NG : w->np;
        for (int r = 0; r < mb; r += BF16_MR)
            for (int p = p0; p < p1; p++) {
                int nv = w->Nc - p * BF16_NR;
                kernel(j->C + (size_t)(r0 + r) * j->ldc + p * BF16_NR, j->ldc,
                       tbuf + (size_t)r * K2, K2, w->p + (size_t)p * w->kp * 64, w->kp,
                       mb - r < BF16_MR ? mb - r : BF16_MR, nv < BF16_NR ? nv : BF16_NR,
                       j->accumulate);
            }
    }
}
#endif

void cel_cpu_bf16_gemm(float *C, int ldc, const float *A, int lda, int M, const cel_cpu_bf16w_t *w,
                       int accumulate) {
#if BF16_X86
    if (M <= 0) return;
    int ngroups = (w->np + BF16_NG - 1) / BF16_NG, nrb = (M + BF16_MB - 1) / BF16_MB;
    gemm_job_t j = { C, A, ldc, lda, M, accumulate, ngroups, w };
    cel_cpu_par_for(nrb * ngroups, 1, gemm_items, &j);
#else
    (void)C, (void)ldc, (void)A, (void)lda, (void)M, (void)w, (void)accumulate;
    abort(); /* cel_cpu_bf16_supported() said no */
#endif
}
