/* test_cuda_ops.cu -- checks each CUDA op of model/cuda/ against its CPU twin in model/cpu/.
 *
 * For every op (casts, GEMM, matmul, LoRA, embedding, RMSNorm, RoPE, SwiGLU,
 * residual, cross-entropy, AdamW) it draws deterministic random inputs at two
 * sizes (a small one with no dimension a multiple of 32, and a moderately
 * large one, smaller under tests/cuda-emu's CPU emulation), runs the CPU op and the CUDA op and compares with a stated
 * tolerance: |got - ref| <= atol + rtol |ref| per element, atol a multiple of
 * max |ref|. Inputs the CUDA op reads as bf16 are rounded to bf16 for the CPU
 * too, so bf16 paths differ only by accumulation order and the final bf16
 * rounding. Prints one line per check and "N passed, N failed"; exits 1 on any
 * failure (a CUDA error counts as one). With no CUDA device it prints a skip
 * line and exits 0. Attention and sampling have their own test. Also: a GEMM
 * cuBLAS refuses reaches the engine's check as an error. CELERIAC_GPU_TEST_ONLY
 * runs only the cases whose name contains its value.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vector>

extern "C" {
#include "../../model/config.h"
#include "../../model/cpu/ops.h"
}
#include "../../model/cuda/engine.h"
#include "../../model/cuda/ops.h"

typedef std::vector<float> fvec;

/* Two tolerances recur. A GEMM with fp32 output differs from OpenBLAS only in
 * summation order: a few fp32 ulps of the largest partial sums. A bf16 output
 * compared with the CPU's fp32 value is off by at most half a bf16 ulp,
 * 2^-8 |x|, plus whatever the fp32 values differed by. */
#define GEMM_AREL 5e-5
#define GEMM_RTOL 1e-5
#define BF16_RTOL 4e-3

typedef struct sizes {
    const char *tag;
    int N, C, OC, I, R; /* rows, hidden (= IC), a linear's OC, MLP width, LoRA rank */
    int NHX, HS, maxT;  /* RoPE heads per row, head size, table length */
    int Vemb;           /* embedding table rows */
    int ce_rows, V;     /* cross-entropy chunk */
    size_t nadam;       /* AdamW parameter count */
    int rope_kind;
} sizes_t;

static const sizes_t SMALL = { "small", 37, 200,  301, 523,  5,     3,
                               50,      64, 1003, 37,  1003, 10007, CEL_ROPE_PLAIN };
#ifndef CEL_CUDA_EMU
static const sizes_t LARGE = { "large", 517,  2048,  1531, 5504,   16,      40,
                               128,     4096, 32003, 133,  128256, 3000017, CEL_ROPE_LLAMA3 };
#else
/* tests/cuda-emu runs every thread on the CPU: still many blocks and tiles, fewer elements */
static const sizes_t LARGE = { "large", 133,  520,   391, 1100,  16,     10,
                               128,     1024, 32003, 19,  50257, 300017, CEL_ROPE_LLAMA3 };
#endif

static int g_passed, g_failed;
static char g_err[256]; /* the first CUDA error since the current case began */
static cudaStream_t g_st;
static cublasHandle_t g_blas;

/* ---- CUDA bookkeeping: errors are recorded, never fatal ---- */

static bool ck(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return true;
    if (!g_err[0]) snprintf(g_err, sizeof g_err, "%s: %s", what, cudaGetErrorString(e));
    return false;
}

#define MAX_DBUF 32
static void *g_dbuf[MAX_DBUF];
static int g_ndbuf;

static void *dalloc(size_t bytes) {
    void *p = NULL;
    if (g_err[0]) return NULL;
    if (g_ndbuf == MAX_DBUF) {
        snprintf(g_err, sizeof g_err, "test bug: more than %d device buffers", MAX_DBUF);
        return NULL;
    }
    if (!ck(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc")) return NULL;
    g_dbuf[g_ndbuf++] = p;
    return p;
}

static void dfree_all(void) {
    for (int i = 0; i < g_ndbuf; i++) cudaFree(g_dbuf[i]);
    g_ndbuf = 0;
}

/* Starts a case: forgets the last case's error (a sticky one will recur). */
static void case_begin(void) {
    cudaGetLastError();
    g_err[0] = '\0';
}

/* After an op: a launch error now, an execution error at the syncs. */
static void launched(const char *what) { ck(cudaGetLastError(), what); }

static void sync_all(const char *what) {
    ck(cudaGetLastError(), what);
    ck(cudaStreamSynchronize(g_st), what);
    ck(cudaDeviceSynchronize(), what);
}

/* ---- host data ---- */

static uint64_t g_rng = 0x243F6A8885A308D3ull;

static uint64_t rng_next(void) { /* splitmix64 */
    uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static float urand(float lo, float hi) {
    return lo + (hi - lo) * (float)((double)(rng_next() >> 40) / 16777216.0);
}

static int irand(int n) { return (int)(rng_next() % (uint64_t)n); }

static fvec rand_vec(size_t n, float lo, float hi) {
    fvec v(n);
    for (size_t i = 0; i < n; i++) v[i] = urand(lo, hi);
    return v;
}

/* fp32 -> bf16 bits, round to nearest even (NaN stays NaN), as torch does. */
static uint16_t bf16_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float bf16_float(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float round_bf16(float f) { return bf16_float(bf16_bits(f)); }

static fvec to_bf16(fvec v) {
    for (size_t i = 0; i < v.size(); i++) v[i] = round_bf16(v[i]);
    return v;
}

static float *up_f32(const fvec &h) {
    float *d = (float *)dalloc(h.size() * sizeof(float));
    if (d) ck(cudaMemcpy(d, h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice), "H2D");
    return d;
}

/* h holds bf16-representable values (or anything: it is rounded). */
static cel_bf16_t *up_bf16(const fvec &h) {
    std::vector<uint16_t> b(h.size());
    for (size_t i = 0; i < h.size(); i++) b[i] = bf16_bits(h[i]);
    cel_bf16_t *d = (cel_bf16_t *)dalloc(b.size() * sizeof(uint16_t));
    if (d) ck(cudaMemcpy(d, b.data(), b.size() * sizeof(uint16_t), cudaMemcpyHostToDevice), "H2D");
    return d;
}

static int32_t *up_i32(const std::vector<int32_t> &h) {
    int32_t *d = (int32_t *)dalloc(h.size() * sizeof(int32_t));
    if (d) ck(cudaMemcpy(d, h.data(), h.size() * sizeof(int32_t), cudaMemcpyHostToDevice), "H2D");
    return d;
}

static fvec down_f32(const float *d, size_t n) {
    fvec h(n, NAN);
    if (d && !g_err[0])
        ck(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost), "D2H");
    return h;
}

static fvec down_bf16(const cel_bf16_t *d, size_t n) {
    std::vector<uint16_t> b(n, 0x7fc0);
    if (d && !g_err[0])
        ck(cudaMemcpy(b.data(), d, n * sizeof(uint16_t), cudaMemcpyDeviceToHost), "D2H");
    fvec h(n);
    for (size_t i = 0; i < n; i++) h[i] = bf16_float(b[i]);
    return h;
}

/* ---- comparison ---- */

/* Passes when |got - ref| <= arel * max|ref| + rtol * |ref| everywhere (equal
 * values, infinities included, always pass); a pending CUDA error fails. */
static void check(const char *op, const sizes_t &s, const fvec &got, const fvec &ref, double arel,
                  double rtol) {
    char name[96];
    snprintf(name, sizeof name, "%s [%s]", op, s.tag);
    if (g_err[0]) {
        printf("FAIL %-40s cuda error: %s\n", name, g_err);
        g_failed++;
        return;
    }
    if (got.size() != ref.size()) {
        printf("FAIL %-40s size %zu != %zu\n", name, got.size(), ref.size());
        g_failed++;
        return;
    }
    double maxref = 0.0;
    for (size_t i = 0; i < ref.size(); i++)
        if (isfinite(ref[i]) && fabs(ref[i]) > maxref) maxref = fabs(ref[i]);
    double atol = arel * maxref, maxerr = 0.0, worst_excess = -1.0;
    size_t bad = 0, nans = 0, worst = 0;
    for (size_t i = 0; i < ref.size(); i++) {
        if (got[i] == ref[i]) continue;
        double d = fabs((double)got[i] - (double)ref[i]);
        double tol = atol + rtol * fabs((double)ref[i]);
        if (isnan(d)) {
            nans++;
            if (worst_excess < INFINITY) worst = i;
            worst_excess = INFINITY;
        } else if (d > maxerr) {
            maxerr = d;
        }
        if (!(d <= tol)) {
            bad++;
            if (!isnan(d) && d - tol > worst_excess) worst_excess = d - tol, worst = i;
        }
    }
    if (bad == 0) {
        printf("ok   %-40s max_abs_err=%.3g tol=%.3g+%.3g*|ref| (max|ref|=%.3g)\n", name, maxerr,
               atol, rtol, maxref);
        g_passed++;
    } else {
        printf("FAIL %-40s max_abs_err=%.3g tol=%.3g+%.3g*|ref| (max|ref|=%.3g): %zu of %zu "
               "off, %zu nan; worst [%zu] got %.9g ref %.9g\n",
               name, maxerr, atol, rtol, maxref, bad, ref.size(), nans, worst, got[worst],
               ref[worst]);
        g_failed++;
    }
}

static void check_scalar(const char *op, const sizes_t &s, double got, double ref, double rtol) {
    char name[96];
    snprintf(name, sizeof name, "%s [%s]", op, s.tag);
    double d = fabs(got - ref), tol = rtol * fabs(ref);
    if (g_err[0]) {
        printf("FAIL %-40s cuda error: %s\n", name, g_err);
        g_failed++;
    } else if (d <= tol) {
        printf("ok   %-40s max_abs_err=%.3g tol=%.3g*|ref| (ref=%.17g)\n", name, d, rtol, ref);
        g_passed++;
    } else {
        printf("FAIL %-40s got %.17g ref %.17g abs_err=%.3g tol=%.3g\n", name, got, ref, d, tol);
        g_failed++;
    }
}

/* ---- the cases ---- */

static void test_cast(const sizes_t &s) {
    case_begin();
    size_t n = (size_t)s.N * s.C + 7;
    fvec x = rand_vec(n, -3.0f, 3.0f);
    /* Exact ties (low half 0x8000, both parities), overflow to inf, zeros,
     * infinities and a subnormal. */
    for (int i = 0; i < 16; i++) {
        uint32_t u = ((uint32_t)(0x3f00 + i) << 16) | 0x8000u;
        memcpy(&x[i], &u, 4);
    }
    const float special[] = { 3.4028235e38f, -3.4028235e38f, 0.0f,   -0.0f,
                              INFINITY,      -INFINITY,      1e-40f, 1.0f + 1.0f / 512.0f };
    for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) x[16 + i] = special[i];
    fvec xb = to_bf16(rand_vec(n, -100.0f, 100.0f));
    float scale = 0.37f;

    float *dx = up_f32(x);
    cel_bf16_t *dxb = up_bf16(xb);
    cel_bf16_t *d16 = (cel_bf16_t *)dalloc(n * sizeof(uint16_t));
    cel_bf16_t *ds16 = (cel_bf16_t *)dalloc(n * sizeof(uint16_t));
    float *d32 = (float *)dalloc(n * sizeof(float));
    if (!g_err[0]) {
        cel_cuda_cast_f32_bf16(d16, dx, n, g_st);
        launched("cel_cuda_cast_f32_bf16");
        cel_cuda_cast_bf16_f32(d32, dxb, n, g_st);
        launched("cel_cuda_cast_bf16_f32");
        cel_cuda_scale_cast_bf16(ds16, dx, scale, n, g_st);
        launched("cel_cuda_scale_cast_bf16");
    }
    sync_all("cast");
    fvec ref(n), sref(n);
    for (size_t i = 0; i < n; i++) {
        ref[i] = round_bf16(x[i]);
        sref[i] = round_bf16(scale * x[i]);
    }
    check("cast_f32_bf16", s, down_bf16(d16, n), ref, 0.0, 0.0);
    check("cast_bf16_f32", s, down_f32(d32, n), xb, 0.0, 0.0);
    check("scale_cast_bf16", s, down_bf16(ds16, n), sref, 0.0, 0.0);
    dfree_all();
}

/* cel_cuda_gemm itself, against a double loop: every transpose pair, both
 * output types, alpha and beta not 1, leading dimensions past the width (the
 * padding must stay untouched). */
static void test_gemm_case(const sizes_t &s, int ta, int tb, int bf16_out) {
    case_begin();
    int M = 37, N = 29, K = 45;
    int arows = ta ? K : M, acols = ta ? M : K, brows = tb ? N : K, bcols = tb ? K : N;
    int lda = acols + 3, ldb = bcols + 5, ldc = N + 2;
    float alpha = 0.75f, beta = -0.5f;
    fvec A = to_bf16(rand_vec((size_t)arows * lda, -1.0f, 1.0f));
    fvec B = to_bf16(rand_vec((size_t)brows * ldb, -1.0f, 1.0f));
    fvec C0 = rand_vec((size_t)M * ldc, -1.0f, 1.0f);
    if (bf16_out) C0 = to_bf16(C0);
    fvec ref = C0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += a * b;
            }
            ref[(size_t)i * ldc + j] = (float)(alpha * acc + beta * C0[(size_t)i * ldc + j]);
        }
    cel_bf16_t *dA = up_bf16(A), *dB = up_bf16(B);
    float *dC = bf16_out ? NULL : up_f32(C0);
    cel_bf16_t *dC16 = bf16_out ? up_bf16(C0) : NULL;
    if (!g_err[0]) {
        cel_cuda_gemm(g_blas, ta, tb, M, N, K, alpha, dA, lda, dB, ldb, beta, dC, dC16, ldc);
        launched("cel_cuda_gemm");
    }
    sync_all("gemm");
    char op[64];
    snprintf(op, sizeof op, "gemm ta=%d tb=%d %s", ta, tb, bf16_out ? "bf16" : "fp32");
    if (bf16_out) check(op, s, down_bf16(dC16, C0.size()), ref, 1e-5, BF16_RTOL);
    else check(op, s, down_f32(dC, C0.size()), ref, 1e-5, 1e-5);
    dfree_all();
}

static void test_matmul(const sizes_t &s) {
    case_begin();
    int N = s.N, IC = s.C, OC = s.OC;
    /* small: beta 0.5 and beta_dinp 1; large: beta 0 over NaN (C must not be read) */
    int small = s.N < 100;
    float beta = small ? 0.5f : 0.0f, beta_dinp = small ? 1.0f : 0.0f;
    fvec inp = to_bf16(rand_vec((size_t)N * IC, -1.0f, 1.0f));
    fvec W = to_bf16(rand_vec((size_t)OC * IC, -1.0f, 1.0f));
    fvec dout = to_bf16(rand_vec((size_t)N * OC, -1.0f, 1.0f));
    fvec out0 = small ? rand_vec((size_t)N * OC, -1.0f, 1.0f) : fvec((size_t)N * OC, NAN);
    fvec dinp0 = small ? rand_vec((size_t)N * IC, -1.0f, 1.0f) : fvec((size_t)N * IC, NAN);
    fvec dW0 = rand_vec((size_t)OC * IC, -1.0f, 1.0f);

    cel_bf16_t *d_inp = up_bf16(inp), *d_W = up_bf16(W), *d_dout = up_bf16(dout);
    float *d_out = up_f32(out0), *d_dinp = up_f32(dinp0), *d_dW = up_f32(dW0);
    if (!g_err[0]) {
        cel_cuda_matmul_forward(g_blas, d_out, d_inp, d_W, N, IC, OC, beta);
        launched("cel_cuda_matmul_forward");
        cel_cuda_matmul_backward(g_blas, d_dinp, beta_dinp, d_dW, d_dout, d_inp, d_W, N, IC, OC);
        launched("cel_cuda_matmul_backward");
    }
    sync_all("matmul");
    fvec out_ref((size_t)N * OC);
    cel_cpu_matmul_forward(out_ref.data(), inp.data(), W.data(), N, IC, OC);
    if (beta != 0.0f)
        for (size_t i = 0; i < out_ref.size(); i++) out_ref[i] += beta * out0[i];
    fvec dinp_ref = small ? dinp0 : fvec((size_t)N * IC, 0.0f), dW_ref = dW0;
    cel_cpu_matmul_backward(dinp_ref.data(), dW_ref.data(), dout.data(), inp.data(), W.data(), N,
                            IC, OC);
    check("matmul_forward out", s, down_f32(d_out, out_ref.size()), out_ref, GEMM_AREL, GEMM_RTOL);
    check("matmul_backward dinp", s, down_f32(d_dinp, dinp_ref.size()), dinp_ref, GEMM_AREL,
          GEMM_RTOL);
    check("matmul_backward dweight", s, down_f32(d_dW, dW_ref.size()), dW_ref, GEMM_AREL,
          GEMM_RTOL);

    if (small) { /* the NULL paths: dweight only, then dinp only */
        if (!g_err[0]) {
            cel_cuda_matmul_backward(g_blas, NULL, 0.0f, d_dW, d_dout, d_inp, d_W, N, IC, OC);
            launched("cel_cuda_matmul_backward dinp=NULL");
            cel_cuda_matmul_backward(g_blas, d_dinp, 1.0f, NULL, d_dout, d_inp, d_W, N, IC, OC);
            launched("cel_cuda_matmul_backward dweight=NULL");
        }
        sync_all("matmul NULL paths");
        cel_cpu_matmul_backward(dinp_ref.data(), dW_ref.data(), dout.data(), inp.data(), W.data(),
                                N, IC, OC);
        check("matmul_backward dinp=NULL: dweight", s, down_f32(d_dW, dW_ref.size()), dW_ref,
              GEMM_AREL, GEMM_RTOL);
        check("matmul_backward dweight=NULL: dinp", s, down_f32(d_dinp, dinp_ref.size()), dinp_ref,
              GEMM_AREL, GEMM_RTOL);
    }
    dfree_all();
}

static void test_lora(const sizes_t &s) {
    case_begin();
    int N = s.N, IC = s.C, OC = s.OC, R = s.R;
    float scaling = 2.0f;
    fvec inp = to_bf16(rand_vec((size_t)N * IC, -1.0f, 1.0f));
    fvec A = to_bf16(rand_vec((size_t)R * IC, -0.5f, 0.5f));
    fvec Bw = to_bf16(rand_vec((size_t)OC * R, -0.5f, 0.5f));
    fvec out0 = rand_vec((size_t)N * OC, -1.0f, 1.0f);
    fvec dout = to_bf16(rand_vec((size_t)N * OC, -1.0f, 1.0f));
    fvec dinp0 = rand_vec((size_t)N * IC, -1.0f, 1.0f);
    fvec dA0 = rand_vec((size_t)R * IC, -1.0f, 1.0f), dB0 = rand_vec((size_t)OC * R, -1.0f, 1.0f);
    fvec nan_nr((size_t)N * R, NAN); /* u and du are written with beta 0 */

    cel_bf16_t *d_inp = up_bf16(inp), *d_A = up_bf16(A), *d_B = up_bf16(Bw);
    cel_bf16_t *d_dout = up_bf16(dout), *d_u = up_bf16(nan_nr), *d_du = up_bf16(nan_nr);
    float *d_out = up_f32(out0), *d_dinp = up_f32(dinp0), *d_dA = up_f32(dA0), *d_dB = up_f32(dB0);
    if (!g_err[0]) {
        cel_cuda_lora_forward(g_blas, d_out, d_u, d_inp, d_A, d_B, scaling, N, IC, OC, R);
        launched("cel_cuda_lora_forward");
        cel_cuda_lora_backward(g_blas, d_dinp, d_dA, d_dB, d_du, d_dout, d_inp, d_u, d_A, d_B,
                               scaling, N, IC, OC, R);
        launched("cel_cuda_lora_backward");
    }
    sync_all("lora");
    fvec u = down_bf16(d_u, (size_t)N * R), du = down_bf16(d_du, (size_t)N * R);

    /* u against the CPU's fp32 u */
    fvec scratch((size_t)N * OC, 0.0f), u_ref((size_t)N * R);
    cel_cpu_lora_forward(scratch.data(), u_ref.data(), inp.data(), A.data(), Bw.data(), scaling, N,
                         IC, OC, R);
    check("lora_forward u", s, u, u_ref, 1e-5, BF16_RTOL);
    /* out from the GPU's own bf16 u, so only summation order differs */
    fvec out_ref((size_t)N * OC);
    cel_cpu_matmul_forward(out_ref.data(), u.data(), Bw.data(), N, R, OC);
    for (size_t i = 0; i < out_ref.size(); i++) out_ref[i] = out0[i] + scaling * out_ref[i];
    check("lora_forward out", s, down_f32(d_out, out_ref.size()), out_ref, GEMM_AREL, GEMM_RTOL);

    /* dB and du from the CPU op (given the same bf16 u); dA and dinp from the
     * GPU's bf16 du, which is what the GPU multiplies by. */
    fvec dinp_cpu = dinp0, dA_cpu = dA0, dB_ref = dB0, du_ref((size_t)N * R);
    cel_cpu_lora_backward(dinp_cpu.data(), dA_cpu.data(), dB_ref.data(), du_ref.data(), dout.data(),
                          inp.data(), u.data(), A.data(), Bw.data(), scaling, N, IC, OC, R);
    check("lora_backward du", s, du, du_ref, 1e-5, BF16_RTOL);
    check("lora_backward dB", s, down_f32(d_dB, dB_ref.size()), dB_ref, GEMM_AREL, GEMM_RTOL);
    fvec dinp_ref = dinp0, dA_ref = dA0;
    cel_cpu_matmul_backward(dinp_ref.data(), dA_ref.data(), du.data(), inp.data(), A.data(), N, IC,
                            R);
    check("lora_backward dA", s, down_f32(d_dA, dA_ref.size()), dA_ref, GEMM_AREL, GEMM_RTOL);
    check("lora_backward dinp", s, down_f32(d_dinp, dinp_ref.size()), dinp_ref, GEMM_AREL,
          GEMM_RTOL);
    dfree_all();
}

static void test_embedding(const sizes_t &s) {
    case_begin();
    int N = s.N, C = s.C, V = s.Vemb;
    fvec wte = to_bf16(rand_vec((size_t)V * C, -1.0f, 1.0f));
    std::vector<int32_t> tok(N);
    for (int n = 0; n < N; n++) tok[n] = irand(V);
    tok[0] = 0;
    tok[N - 1] = V - 1;
    cel_bf16_t *d_wte = up_bf16(wte);
    int32_t *d_tok = up_i32(tok);
    float *d_out = (float *)dalloc((size_t)N * C * sizeof(float));
    if (!g_err[0]) {
        cel_cuda_embedding_forward(d_out, d_tok, d_wte, N, C, g_st);
        launched("cel_cuda_embedding_forward");
    }
    sync_all("embedding");
    fvec ref((size_t)N * C);
    cel_cpu_embedding_forward(ref.data(), tok.data(), wte.data(), N, C);
    check("embedding_forward", s, down_f32(d_out, ref.size()), ref, 0.0, 0.0);
    dfree_all();
}

static void test_rmsnorm(const sizes_t &s) {
    case_begin();
    int N = s.N, C = s.C;
    float eps = 1e-5f;
    fvec inp = rand_vec((size_t)N * C, -2.0f, 2.0f);
    fvec w = to_bf16(rand_vec(C, 0.5f, 1.5f));
    fvec dout = rand_vec((size_t)N * C, -1.0f, 1.0f), dinp0 = rand_vec((size_t)N * C, -1.0f, 1.0f);
    fvec out_ref((size_t)N * C), rstd_ref(N);
    cel_cpu_rmsnorm_forward(out_ref.data(), rstd_ref.data(), inp.data(), w.data(), N, C, eps);

    float *d_inp = up_f32(inp), *d_dout = up_f32(dout), *d_dinp = up_f32(dinp0);
    float *d_rstd = (float *)dalloc((size_t)N * sizeof(float));
    float *d_rstd_cpu = up_f32(rstd_ref); /* backward reads the CPU's rstd: one op at a time */
    cel_bf16_t *d_w = up_bf16(w), *d_out = (cel_bf16_t *)dalloc((size_t)N * C * 2);
    if (!g_err[0]) {
        cel_cuda_rmsnorm_forward(d_out, d_rstd, d_inp, d_w, N, C, eps, g_st);
        launched("cel_cuda_rmsnorm_forward");
        cel_cuda_rmsnorm_backward(d_dinp, d_dout, d_inp, d_w, d_rstd_cpu, N, C, g_st);
        launched("cel_cuda_rmsnorm_backward");
    }
    sync_all("rmsnorm");
    check("rmsnorm_forward rstd", s, down_f32(d_rstd, N), rstd_ref, 0.0, 2e-5);
    check("rmsnorm_forward out", s, down_bf16(d_out, out_ref.size()), out_ref, 1e-5, BF16_RTOL);
    fvec dinp_ref = dinp0;
    cel_cpu_rmsnorm_backward(dinp_ref.data(), NULL, dout.data(), inp.data(), w.data(),
                             rstd_ref.data(), N, C);
    check("rmsnorm_backward dinp", s, down_f32(d_dinp, dinp_ref.size()), dinp_ref, 1e-5, 1e-5);
    dfree_all();
}

static void test_rope(const sizes_t &s) {
    case_begin();
    int N = s.N, NHX = s.NHX, HS = s.HS, maxT = s.maxT, h = HS / 2;
    size_t n = (size_t)N * NHX * HS;
    fvec cos_t((size_t)maxT * h), sin_t((size_t)maxT * h);
    float theta = s.rope_kind == CEL_ROPE_LLAMA3 ? 500000.0f : 10000.0f;
    cel_cpu_rope_init(cos_t.data(), sin_t.data(), maxT, HS, theta, s.rope_kind, 8.0f, 1.0f, 4.0f,
                      8192);
    std::vector<int32_t> pos(N);
    for (int i = 0; i < N; i++) pos[i] = irand(maxT);
    pos[0] = 0;
    pos[N - 1] = maxT - 1;
    fvec inp = rand_vec(n, -1.0f, 1.0f), dout = rand_vec(n, -1.0f, 1.0f);

    float *d_cos = up_f32(cos_t), *d_sin = up_f32(sin_t), *d_inp = up_f32(inp);
    float *d_d = up_f32(dout), *d_out = (float *)dalloc(n * sizeof(float));
    int32_t *d_pos = up_i32(pos);
    if (!g_err[0]) {
        /* forward out of place, backward in place */
        cel_cuda_rope_forward(d_out, d_inp, d_pos, d_cos, d_sin, N, NHX, HS, g_st);
        launched("cel_cuda_rope_forward");
        cel_cuda_rope_backward(d_d, d_d, d_pos, d_cos, d_sin, N, NHX, HS, g_st);
        launched("cel_cuda_rope_backward");
        /* forward in place */
        cel_cuda_rope_forward(d_inp, d_inp, d_pos, d_cos, d_sin, N, NHX, HS, g_st);
        launched("cel_cuda_rope_forward in place");
    }
    sync_all("rope");
    fvec out_ref(n), din_ref(n);
    cel_cpu_rope_forward(out_ref.data(), inp.data(), pos.data(), cos_t.data(), sin_t.data(), N, NHX,
                         HS);
    cel_cpu_rope_backward(din_ref.data(), dout.data(), pos.data(), cos_t.data(), sin_t.data(), N,
                          NHX, HS);
    check("rope_forward", s, down_f32(d_out, n), out_ref, 1e-6, 1e-6);
    check("rope_forward in place", s, down_f32(d_inp, n), out_ref, 1e-6, 1e-6);
    check("rope_backward in place", s, down_f32(d_d, n), din_ref, 1e-6, 1e-6);
    dfree_all();
}

static void test_swiglu(const sizes_t &s) {
    case_begin();
    int N = s.N, I = s.I;
    size_t n = (size_t)N * I;
    fvec gate = rand_vec(n, -8.0f, 8.0f), up = rand_vec(n, -2.0f, 2.0f);
    fvec dout = rand_vec(n, -1.0f, 1.0f);
    float *d_gate = up_f32(gate), *d_up = up_f32(up), *d_dout = up_f32(dout);
    float *d_dgate = (float *)dalloc(n * sizeof(float));
    float *d_dup = (float *)dalloc(n * sizeof(float));
    cel_bf16_t *d_out = (cel_bf16_t *)dalloc(n * sizeof(cel_bf16_t));
    if (!g_err[0]) {
        cel_cuda_swiglu_forward(d_out, d_gate, d_up, n, g_st);
        launched("cel_cuda_swiglu_forward");
        cel_cuda_swiglu_backward(d_dgate, d_dup, d_dout, d_gate, d_up, n, g_st);
        launched("cel_cuda_swiglu_backward");
    }
    sync_all("swiglu");
    fvec out_ref(n), dgate_ref(n), dup_ref(n);
    cel_cpu_swiglu_forward(out_ref.data(), gate.data(), up.data(), N, I);
    cel_cpu_swiglu_backward(dgate_ref.data(), dup_ref.data(), dout.data(), gate.data(), up.data(),
                            N, I);
    check("swiglu_forward", s, down_bf16(d_out, n), out_ref, 1e-6, BF16_RTOL);
    check("swiglu_backward dgate", s, down_f32(d_dgate, n), dgate_ref, 5e-6, 1e-5);
    check("swiglu_backward dup", s, down_f32(d_dup, n), dup_ref, 5e-6, 1e-5);
    dfree_all();
}

static void test_residual(const sizes_t &s) {
    case_begin();
    size_t n = (size_t)s.N * s.C + 3;
    fvec a = rand_vec(n, -1.0f, 1.0f), b = rand_vec(n, -1.0f, 1.0f);
    float *d_a = up_f32(a), *d_b = up_f32(b), *d_out = (float *)dalloc(n * sizeof(float));
    if (!g_err[0]) {
        cel_cuda_residual_forward(d_out, d_a, d_b, n, g_st);
        launched("cel_cuda_residual_forward");
        cel_cuda_residual_forward(d_a, d_a, d_b, n, g_st);
        launched("cel_cuda_residual_forward in place");
    }
    sync_all("residual");
    fvec ref(n);
    cel_cpu_residual_forward(ref.data(), a.data(), b.data(), n);
    check("residual_forward", s, down_f32(d_out, n), ref, 0.0, 0.0);
    check("residual_forward out=a", s, down_f32(d_a, n), ref, 0.0, 0.0);
    dfree_all();
}

static void test_crossentropy(const sizes_t &s) {
    case_begin();
    int n = s.ce_rows, V = s.V;
    float dloss = 0.7f;
    fvec logits = rand_vec((size_t)n * V, -4.0f, 4.0f), w(n);
    std::vector<int32_t> tgt(n);
    for (int r = 0; r < n; r++) {
        tgt[r] = irand(V);
        if (r % 2 == 0) logits[(size_t)r * V + tgt[r]] += 8.0f; /* a confident row */
        w[r] = r % 5 == 3 ? 0.0f : urand(0.0f, 2.0f);
    }
    tgt[0] = 0;
    tgt[n - 1] = V - 1;
    float *d_logits = up_f32(logits), *d_w = up_f32(w);
    float *d_logp = (float *)dalloc((size_t)n * 4), *d_logp2 = (float *)dalloc((size_t)n * 4);
    float *d_logp3 = (float *)dalloc((size_t)n * 4);
    int32_t *d_tgt = up_i32(tgt);
    cel_bf16_t *d_dl = (cel_bf16_t *)dalloc((size_t)n * V * 2);
    cel_bf16_t *d_dl3 = (cel_bf16_t *)dalloc((size_t)n * V * 2);
    if (!g_err[0]) {
        cel_cuda_crossentropy_forward_backward(d_logp, d_dl, d_logits, d_tgt, d_w, dloss, n, V,
                                               g_st);
        launched("cel_cuda_crossentropy_forward_backward");
        cel_cuda_crossentropy_forward_backward(d_logp2, NULL, d_logits, d_tgt, NULL, dloss, n, V,
                                               g_st);
        launched("cel_cuda_crossentropy_forward_backward no dlogits");
        cel_cuda_crossentropy_forward_backward(d_logp3, d_dl3, d_logits, d_tgt, NULL, dloss, n, V,
                                               g_st);
        launched("cel_cuda_crossentropy_forward_backward no weights");
    }
    sync_all("crossentropy");
    fvec logp_ref(n), lse(n), dl_ref((size_t)n * V), dl3_ref((size_t)n * V);
    cel_cpu_crossentropy_forward(logp_ref.data(), lse.data(), logits.data(), tgt.data(), w.data(),
                                 n, V);
    cel_cpu_crossentropy_backward(dl_ref.data(), logits.data(), lse.data(), tgt.data(), w.data(),
                                  dloss, n, V);
    cel_cpu_crossentropy_backward(dl3_ref.data(), logits.data(), lse.data(), tgt.data(), NULL,
                                  dloss, n, V);
    check("crossentropy logp", s, down_f32(d_logp, n), logp_ref, 2e-6, 2e-6);
    check("crossentropy dlogits", s, down_bf16(d_dl, dl_ref.size()), dl_ref, 1e-5, BF16_RTOL);
    check("crossentropy logp (no dlogits)", s, down_f32(d_logp2, n), logp_ref, 2e-6, 2e-6);
    check("crossentropy logp (weights NULL)", s, down_f32(d_logp3, n), logp_ref, 2e-6, 2e-6);
    check("crossentropy dlogits (weights NULL)", s, down_bf16(d_dl3, dl3_ref.size()), dl3_ref, 1e-5,
          BF16_RTOL);
    dfree_all();
}

static void test_adamw(const sizes_t &s) {
    case_begin();
    size_t n = s.nadam;
    float lr = 1e-3f, b1 = 0.9f, b2 = 0.999f, eps = 1e-8f, wd = 0.01f;
    fvec p = rand_vec(n, -1.0f, 1.0f), m = rand_vec(n, -0.1f, 0.1f), v = rand_vec(n, 0.0f, 0.01f);
    fvec g1 = rand_vec(n, -1.0f, 1.0f), g2 = rand_vec(n, -0.01f, 0.01f);
    for (size_t i = 0; i < n; i += 97) g1[i] = 0.0f;
    float *d_p = up_f32(p), *d_m = up_f32(m), *d_v = up_f32(v);
    float *d_g1 = up_f32(g1), *d_g2 = up_f32(g2);
    double *d_ss = (double *)dalloc(sizeof(double));
    double ss0 = 1.25, ss = NAN;
    if (d_ss) ck(cudaMemcpy(d_ss, &ss0, sizeof ss0, cudaMemcpyHostToDevice), "H2D");
    if (!g_err[0]) {
        cel_cuda_adamw_update(d_p, d_m, d_v, d_g1, n, lr, b1, b2, eps, wd, 1, g_st);
        launched("cel_cuda_adamw_update step 1");
        cel_cuda_adamw_update(d_p, d_m, d_v, d_g2, n, lr, b1, b2, eps, wd, 7, g_st);
        launched("cel_cuda_adamw_update step 7");
        cel_cuda_adamw_sumsq(d_ss, d_g1, n, g_st);
        launched("cel_cuda_adamw_sumsq");
        cel_cuda_adamw_sumsq(d_ss, d_g2, n, g_st);
        launched("cel_cuda_adamw_sumsq 2");
        cel_cuda_adamw_scale(d_g1, n, 0.3f, g_st);
        launched("cel_cuda_adamw_scale");
    }
    sync_all("adamw");
    if (d_ss && !g_err[0]) ck(cudaMemcpy(&ss, d_ss, sizeof ss, cudaMemcpyDeviceToHost), "D2H");
    fvec pr = p, mr = m, vr = v, g1s = g1;
    cel_cpu_adamw_update(pr.data(), mr.data(), vr.data(), g1.data(), n, lr, b1, b2, eps, wd, 1);
    cel_cpu_adamw_update(pr.data(), mr.data(), vr.data(), g2.data(), n, lr, b1, b2, eps, wd, 7);
    double ss_ref = ss0 + cel_cpu_adamw_sumsq(g1.data(), n) + cel_cpu_adamw_sumsq(g2.data(), n);
    cel_cpu_adamw_scale(g1s.data(), n, 0.3f);
    check("adamw_update params", s, down_f32(d_p, n), pr, 1e-7, 1e-6);
    check("adamw_update m", s, down_f32(d_m, n), mr, 1e-7, 1e-6);
    check("adamw_update v", s, down_f32(d_v, n), vr, 1e-7, 1e-6);
    check_scalar("adamw_sumsq", s, ss, ss_ref, 1e-10);
    check("adamw_scale", s, down_f32(d_g1, n), g1s, 0.0, 0.0);
    dfree_all();
}

/* A GEMM cuBLAS refuses (lda < K: A is (M,K) row-major) is not silent: the
 * status waits in cel_cuda_gemm_take_error, and the engine's check makes it an
 * error (a regression test: the status used to be dropped). */
static void test_gemm_refused(void) {
    const sizes_t s = { "refused", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, CEL_ROPE_PLAIN };
    case_begin();
    int M = 4, N = 4, K = 8;
    cel_bf16_t *dA = up_bf16(fvec((size_t)M * K, 1.0f)), *dB = up_bf16(fvec((size_t)K * N, 1.0f));
    float *dC = up_f32(fvec((size_t)M * N, 0.0f));
    char what[160] = "";
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS, st2 = CUBLAS_STATUS_SUCCESS;
    int rc = CEL_OK;
    cel_err_t err;
    cel_err_clear(&err);
    if (!g_err[0]) {
        (void)cel_cuda_gemm_take_error(NULL, 0);
        cel_cuda_gemm(g_blas, 0, 0, M, N, K, 1.0f, dA, K - 1, dB, N, 0.0f, dC, NULL, N);
        st = cel_cuda_gemm_take_error(what, sizeof what);
        st2 = cel_cuda_gemm_take_error(NULL, 0);
        cel_cuda_gemm(g_blas, 0, 0, M, N, K, 1.0f, dA, K - 1, dB, N, 0.0f, dC, NULL, N);
        cel_gpu_t g;
        memset(&g, 0, sizeof g);
        g.st = g_st;
        rc = cel_gpu_check(&g, "a test pass", &err);
    }
    sync_all("gemm refused");
    bool ok = st == CUBLAS_STATUS_INVALID_VALUE && st2 == CUBLAS_STATUS_SUCCESS &&
              strstr(what, "lda=7") && rc == CEL_EIO &&
              strstr(err.msg, "cuBLAS error in a test pass");
    if (g_err[0] || !ok) {
        printf("FAIL %-40s status %d then %d (%s); check rc %d: %s %s\n", "gemm refused [lda < K]",
               (int)st, (int)st2, what, rc, err.msg, g_err);
        g_failed++;
    } else {
        printf("ok   %-40s %s\n", "gemm refused [lda < K]", err.msg);
        g_passed++;
    }
    (void)s;
    dfree_all();
}

/* CELERIAC_GPU_TEST_ONLY=name: only the cases whose name contains it (tests/cuda-emu's
 * planted-bug test runs one op at a time). */
static bool wanted(const char *name) {
    const char *only = getenv("CELERIAC_GPU_TEST_ONLY");
    return !only || !*only || strstr(name, only);
}

static void run_all(const sizes_t &s) {
    if (wanted("cast")) test_cast(s);
    if (wanted("matmul")) test_matmul(s);
    if (wanted("lora")) test_lora(s);
    if (wanted("embedding")) test_embedding(s);
    if (wanted("rmsnorm")) test_rmsnorm(s);
    if (wanted("rope")) test_rope(s);
    if (wanted("swiglu")) test_swiglu(s);
    if (wanted("residual")) test_residual(s);
    if (wanted("crossentropy")) test_crossentropy(s);
    if (wanted("adamw")) test_adamw(s);
}

int main(void) {
    int ndev = 0;
    cudaError_t e = cudaGetDeviceCount(&ndev);
    if (e != cudaSuccess || ndev == 0) {
        printf("skipped: no CUDA device (%s)\n",
               cudaGetErrorString(e != cudaSuccess ? e : cudaErrorNoDevice));
        printf("0 passed, 0 failed\n");
        return 0;
    }
    case_begin();
    if (!ck(cudaStreamCreate(&g_st), "cudaStreamCreate")) {
        printf("FAIL setup  %s\n0 passed, 1 failed\n", g_err);
        return 1;
    }
    cublasStatus_t bs = cublasCreate(&g_blas);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cublasSetStream(g_blas, g_st);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        printf("FAIL setup  cublas: %s\n0 passed, 1 failed\n", cublasGetStatusString(bs));
        cudaStreamDestroy(g_st);
        return 1;
    }
    for (int ta = 0; ta < 2 && wanted("gemm"); ta++)
        for (int tb = 0; tb < 2; tb++)
            for (int bf = 0; bf < 2; bf++) test_gemm_case(SMALL, ta, tb, bf);
    if (wanted("gemm")) test_gemm_refused();
    run_all(SMALL);
    run_all(LARGE);
    cublasDestroy(g_blas);
    cudaStreamDestroy(g_st);
    printf("%d passed, %d failed\n", g_passed, g_failed);
    return g_failed ? 1 : 0;
}
