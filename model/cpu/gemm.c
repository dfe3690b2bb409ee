/* gemm.c -- fp32 matrix products with a weight for CPUs with AVX-512F (issue 17).
 *
 * Debian's OpenBLAS (0.3.21) runs its Haswell (AVX2) sgemm kernel on the
 * AVX-512 cores it does not know (this Zen 5 among them), half their FMA
 * width: ~90 GFLOP/s a core here, where an AVX-512 kernel gets 170-190. The
 * model's products with a weight -- the linear layers' x W^T, dout W and
 * (full training) dout^T x, the head's -- go through this file when the CPU
 * has AVX-512F and a product has at least GEMM_MIN_ROWS rows; fewer rows
 * (sampling's one-row steps) split W's rows into blocks that OpenBLAS
 * multiplies on par.c's threads, one OpenBLAS thread each (with this file in
 * use, cel_model_set_threads keeps OpenBLAS on one thread).
 *
 * The weight side is packed per call into panels of 32 output columns, for
 * each k the 32 columns side by side (x W^T: a transpose of 32 rows of W, in
 * 16 x 16 register blocks; dout W and dout^T x: a copy of 32-float strips
 * of the rows), zero past the last column. The kernel computes 8 rows x 32
 * columns in registers (16 accumulators, two panel loads and eight broadcasts
 * of A per k; A read along its columns for dout^T), K in chunks of 128 added
 * up on the side, and stores them once (or adds them to C), so there is no
 * separate zeroing pass over C. Work items are (panel group, block of rows),
 * spread over par.c's threads; a thread packs a group once for its
 * consecutive items; a product whose panels would take more than 64 MiB (K
 * past 256k) or that finds no memory for them is computed by OpenBLAS, block
 * by block. Every element of C is one kernel's sum over k in order,
 * whichever thread and whatever rows around it, so results are the same at
 * any thread count and for a row whatever batch it is in (they differ from
 * OpenBLAS's in the last bits: another order of the sums).
 * CELERIAC_CPU_GEMM=openblas in the environment turns this file off.
 */
#include "ops.h"

#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#undef I

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define GEMM_X86    1
#define GEMM_TARGET __attribute__((target("avx512f"), optimize("O3")))
#else
#define GEMM_X86 0
#endif

#define NR            32  /* columns per panel */
#define MR            8   /* rows per kernel call */
#define MB            256 /* rows per work item */
#define NG            2   /* panels per work item */
#define KC            128 /* k per chunk of a sum (see tile) */
#define GEMM_MIN_ROWS 8
#define PANELS_MAX    ((size_t)64 << 20) /* bytes of panels a thread holds at most (K < 256k) */

static int gemm_on = -1; /* -1: not decided yet (threads may decide at once: the same answer) */

int cel_cpu_gemm_supported(void) {
    int on = __atomic_load_n(&gemm_on, __ATOMIC_RELAXED);
    if (on < 0) {
        const char *e = getenv("CELERIAC_CPU_GEMM");
        on = 0;
#if GEMM_X86
        __builtin_cpu_init();
        on = __builtin_cpu_supports("avx512f") && !(e && strcmp(e, "openblas") == 0);
#endif
        (void)e;
        __atomic_store_n(&gemm_on, on, __ATOMIC_RELAXED);
    }
    return on;
}

int cel_cpu_gemm_use(int M) { return M >= GEMM_MIN_ROWS && cel_cpu_gemm_supported(); }

#if GEMM_X86
typedef struct gemm_job {
    float *C;
    const float *A, *B;
    int ldc, lda, ldb, M, N, K;
    int wt;        /* 1: B is W (N rows of K), C = A W^T; 0: B is (K rows of N), C += A B */
    int at;        /* A is stored transposed: (K rows of M), C += A^T B (a weight's gradient) */
    int nrb, ngrp; /* row blocks, panel groups */
    int failed;    /* an item found no memory for its panels: computed by OpenBLAS */
} gemm_job_t;

/* r[i] <- column i of the 16 x 16 block in r (rows in, columns out). */
GEMM_TARGET static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {
        r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 4; j++) {
            t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
            t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xDD);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
        r[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xDD);
    }
}

/* Panel of output columns [n0, n0 + 32): P[k * 32 + c] = column n0 + c's k-th weight. */
GEMM_TARGET static void pack_panel(float *P, const gemm_job_t *j, int n0) {
    int K = j->K, nc = j->N - n0 < NR ? j->N - n0 : NR;
    if (!j->wt) { /* rows of B: 32 floats of row k from column n0 */
        __mmask16 m0 = nc >= 16 ? 0xffff : (__mmask16)((1u << nc) - 1);
        __mmask16 m1 = nc >= 32 ? 0xffff : nc <= 16 ? 0 : (__mmask16)((1u << (nc - 16)) - 1);
        for (int k = 0; k < K; k++) {
            const float *b = j->B + (size_t)k * j->ldb + n0;
            _mm512_store_ps(P + (size_t)k * NR, _mm512_maskz_loadu_ps(m0, b));
            _mm512_store_ps(P + (size_t)k * NR + 16, _mm512_maskz_loadu_ps(m1, b + 16));
        }
        return;
    }
    for (int h = 0; h < 2; h++) { /* W's rows n0 + 16h .. + 16, transposed */
        int c0 = 16 * h, cn = nc - c0 < 16 ? nc - c0 : 16;
        int k = 0;
        if (cn == 16)
            for (; k + 16 <= K; k += 16) {
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = _mm512_loadu_ps(j->B + (size_t)(n0 + c0 + i) * j->ldb + k);
                transpose16(r);
                for (int i = 0; i < 16; i++) _mm512_store_ps(P + (size_t)(k + i) * NR + c0, r[i]);
            }
        for (; k < K; k++)
            for (int c = 0; c < 16; c++)
                P[(size_t)k * NR + c0 + c] =
                    c < cn ? j->B[(size_t)(n0 + c0 + c) * j->ldb + k] : 0.0f;
    }
}

/* C[mr rows][nv columns] (+)= A[mr rows][K] x P (one panel); mr a constant once inlined.
 * The sum over k runs in chunks of KC, each from zero in registers, added to
 * the running total in memory: a chain of K fp32 additions loses ~sqrt(K/KC)
 * times more than this (OpenBLAS's K blocks do the same). */
GEMM_TARGET static inline __attribute__((always_inline)) void
tile(float *C, int ldc, const float *A, int lda, const float *P, int K, int nv, int acc,
     const int mr, const int at) {
    __m512 c0[MR], c1[MR];
    float tot[MR][NR] __attribute__((aligned(64)));
    for (int k0 = 0; k0 < K || k0 == 0; k0 += KC) {
        int k1 = K - k0 < KC ? K : k0 + KC;
        for (int r = 0; r < mr; r++) c0[r] = c1[r] = _mm512_setzero_ps();
        for (int k = k0; k < k1; k++) {
            __m512 b0 = _mm512_load_ps(P + (size_t)k * NR),
                   b1 = _mm512_load_ps(P + (size_t)k * NR + 16);
            for (int r = 0; r < mr; r++) {
                __m512 x = _mm512_set1_ps(at ? A[(size_t)k * lda + r] : A[(size_t)r * lda + k]);
                c0[r] = _mm512_fmadd_ps(x, b0, c0[r]);
                c1[r] = _mm512_fmadd_ps(x, b1, c1[r]);
            }
        }
        for (int r = 0; r < mr; r++) {
            if (k0 > 0) {
                c0[r] = _mm512_add_ps(_mm512_load_ps(tot[r]), c0[r]);
                c1[r] = _mm512_add_ps(_mm512_load_ps(tot[r] + 16), c1[r]);
            }
            _mm512_store_ps(tot[r], c0[r]);
            _mm512_store_ps(tot[r] + 16, c1[r]);
        }
    }
    __mmask16 m0 = nv >= 16 ? 0xffff : (__mmask16)((1u << nv) - 1);
    __mmask16 m1 = nv >= 32 ? 0xffff : nv <= 16 ? 0 : (__mmask16)((1u << (nv - 16)) - 1);
    for (int r = 0; r < mr; r++) {
        float *o = C + (size_t)r * ldc;
        __m512 v0 = _mm512_load_ps(tot[r]), v1 = _mm512_load_ps(tot[r] + 16);
        if (acc) {
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, o), v0);
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, o + 16), v1);
        }
        _mm512_mask_storeu_ps(o, m0, v0);
        _mm512_mask_storeu_ps(o + 16, m1, v1);
    }
}

#define TILE_CASES(AT)                                          \
    switch (mr) {                                               \
    case 8: tile(C, ldc, A, lda, P, K, nv, acc, 8, AT); break;  \
    case 7: tile(C, ldc, A, lda, P, K, nv, acc, 7, AT); break;  \
    case 6: tile(C, ldc, A, lda, P, K, nv, acc, 6, AT); break;  \
    case 5: tile(C, ldc, A, lda, P, K, nv, acc, 5, AT); break;  \
    case 4: tile(C, ldc, A, lda, P, K, nv, acc, 4, AT); break;  \
    case 3: tile(C, ldc, A, lda, P, K, nv, acc, 3, AT); break;  \
    case 2: tile(C, ldc, A, lda, P, K, nv, acc, 2, AT); break;  \
    default: tile(C, ldc, A, lda, P, K, nv, acc, 1, AT); break; \
    }

/* A: the tile's first row (at: its first column of the transposed A). */
GEMM_TARGET static void tile_rows(float *C, int ldc, const float *A, int lda, const float *P, int K,
                                  int nv, int acc, int mr, int at) {
    if (at) TILE_CASES(1)
    else TILE_CASES(0)
}
#undef TILE_CASES

/* Each thread's panels (NG of them), grown as needed; freed at thread exit by no one:
 * the pool's threads live as long as the process. */
static _Thread_local float *tbuf;
static _Thread_local size_t tcap;

/* The rows [r0, r1) x columns [n0, n1) block by OpenBLAS (no memory for panels). */
static void block_openblas(const gemm_job_t *j, int r0, int r1, int n0, int n1) {
    float *C = j->C + (size_t)r0 * j->ldc + n0;
    const float *A = j->A + (j->at ? (size_t)r0 : (size_t)r0 * j->lda);
    if (j->at)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r1 - r0, n1 - n0, j->K, 1.0f, A,
                    j->lda, j->B + n0, j->ldb, 1.0f, C, j->ldc);
    else if (j->wt)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, r1 - r0, n1 - n0, j->K, 1.0f, A,
                    j->lda, j->B + (size_t)n0 * j->ldb, j->ldb, 0.0f, C, j->ldc);
    else
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, r1 - r0, n1 - n0, j->K, 1.0f, A,
                    j->lda, j->B + n0, j->ldb, 1.0f, C, j->ldc);
}

GEMM_TARGET static void gemm_items(void *ctx, int i0, int i1) {
    gemm_job_t *j = ctx;
    size_t need = (size_t)NG * NR * (size_t)(j->K > 0 ? j->K : 1);
    if (need > tcap) {
        free(tbuf);
        tbuf = need * sizeof(float) <= PANELS_MAX ? aligned_alloc(64, need * sizeof(float)) : NULL;
        tcap = tbuf ? need : 0;
    }
    int packed = -1; /* the group in tbuf */
    for (int it = i0; it < i1; it++) {
        int g = it / j->nrb, rb = it % j->nrb;
        int p0 = g * NG, p1 = p0 + NG, np = (j->N + NR - 1) / NR;
        if (p1 > np) p1 = np;
        int r0 = rb * MB, r1 = r0 + MB < j->M ? r0 + MB : j->M;
        if (!tbuf) {
            block_openblas(j, r0, r1, p0 * NR, p1 * NR < j->N ? p1 * NR : j->N);
            __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
            continue;
        }
        if (packed != g) {
            for (int p = p0; p < p1; p++)
                pack_panel(tbuf + (size_t)(p - p0) * NR * j->K, j, p * NR);
            packed = g;
        }
        for (int r = r0; r < r1; r += MR)
            for (int p = p0; p < p1; p++) {
                int nv = j->N - p * NR;
                tile_rows(j->C + (size_t)r * j->ldc + p * NR, j->ldc,
                          j->A + (j->at ? (size_t)r : (size_t)r * j->lda), j->lda,
                          tbuf + (size_t)(p - p0) * NR * j->K, j->K, nv < NR ? nv : NR, !j->wt,
                          r1 - r < MR ? r1 - r : MR, j->at);
            }
    }
}

static void gemm_run(gemm_job_t *j) {
    j->nrb = (j->M + MB - 1) / MB;
    j->ngrp = ((j->N + NR - 1) / NR + NG - 1) / NG;
    cel_cpu_par_for(j->nrb * j->ngrp, 1, gemm_items, j);
}
#endif

static int gemm_call(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                     int N, int K, int wt, int at) {
#if GEMM_X86
    if (M <= 0 || N <= 0) return 0;
    gemm_job_t j = { .C = C,
                     .A = A,
                     .B = B,
                     .ldc = ldc,
                     .lda = lda,
                     .ldb = ldb,
                     .M = M,
                     .N = N,
                     .K = K,
                     .wt = wt,
                     .at = at };
    gemm_run(&j);
    return j.failed;
#else
    (void)C, (void)ldc, (void)A, (void)lda, (void)B, (void)ldb, (void)M, (void)N, (void)K;
    (void)wt, (void)at;
    abort(); /* cel_cpu_gemm_supported() said no */
#endif
}

int cel_cpu_gemm_wt(float *C, int ldc, const float *A, int lda, const float *W, int ldw, int M,
                    int N, int K) {
    return gemm_call(C, ldc, A, lda, W, ldw, M, N, K, 1, 0);
}

int cel_cpu_gemm_acc(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                     int N, int K) {
    return gemm_call(C, ldc, A, lda, B, ldb, M, N, K, 0, 0);
}

int cel_cpu_gemm_acc_at(float *C, int ldc, const float *A, int lda, const float *B, int ldb, int M,
                        int N, int K) {
    return gemm_call(C, ldc, A, lda, B, ldb, M, N, K, 0, 1);
}

/* A few rows x W^T: the weight is read once, so no panels; each of par.c's
 * threads runs OpenBLAS (one thread) over blocks of SMALL_NB of W's rows. The
 * blocks do not depend on the thread count, so neither do the results. */
#define SMALL_NB 64

typedef struct small_job {
    float *C;
    const float *A, *W;
    int ldc, lda, ldw, M, N, K;
} small_job_t;

static void small_items(void *ctx, int i0, int i1) {
    const small_job_t *j = ctx;
    for (int b = i0; b < i1; b++) {
        int n0 = b * SMALL_NB, nb = j->N - n0 < SMALL_NB ? j->N - n0 : SMALL_NB;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->M, nb, j->K, 1.0f, j->A, j->lda,
                    j->W + (size_t)n0 * j->ldw, j->ldw, 0.0f, j->C + n0, j->ldc);
    }
}

void cel_cpu_gemm_wt_small(float *C, int ldc, const float *A, int lda, const float *W, int ldw,
                           int M, int N, int K) {
    if (M <= 0 || N <= 0) return;
    small_job_t j = { C, A, W, ldc, lda, ldw, M, N, K };
    cel_cpu_par_for((N + SMALL_NB - 1) / SMALL_NB, 1, small_items, &j);
}
