/* test_model_ops.c -- unit tests for the model/cpu ops: finite-difference gradients, BLAS twins.
 *
 * Every op's backward is checked against central differences of its forward,
 * all in fp32 (no double versions of the ops): the scalar is sum(out * R) for a
 * fixed random R (accumulated in double), the step is h = 1e-2 (the real step
 * (x+h)-(x-h) as stored in fp32 is used), and the check is norm-wise:
 * max|analytic - numeric| <= 2e-3 * max(1, max|numeric|). The sgemm versions
 * are compared with their plain-loop _ref twins (1e-5 relative), weight
 * gradients are checked to accumulate, and AdamW against the torch formula
 * evaluated in double (1e-6 relative).
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <cblas.h>
#undef I /* OpenBLAS pulls in <complex.h> */

#include "../../model/config.h"
#include "../../model/cpu/ops.h"
#include "../../model/cpu/simd.h"

#define FD_H   1e-2f
#define FD_TOL 2e-3

static uint64_t rng_state = 88172645463325252ull;

static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) / 8388608.0 - 1.0);
}

static float *rnd(size_t n, float scale) {
    float *x = malloc(n * sizeof(float));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = scale * frand();
    return x;
}

static float *zeros(size_t n) {
    float *x = calloc(n, sizeof(float));
    assert_non_null(x);
    return x;
}

static double dot(const float *a, const float *b, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

typedef double (*loss_fn)(void *ctx);

/* Compares analytic[0..n) with central differences of f over x[0..n). */
static void fd_check(const char *name, float *x, size_t n, const float *analytic, loss_fn f,
                     void *ctx) {
    double maxerr = 0, maxref = 0;
    size_t worst = 0;
    double worst_num = NAN;
    for (size_t i = 0; i < n; i++) {
        float save = x[i];
        float xp = save + FD_H, xm = save - FD_H;
        x[i] = xp;
        double lp = f(ctx);
        x[i] = xm;
        double lm = f(ctx);
        x[i] = save;
        double num = (lp - lm) / ((double)xp - xm);
        double err = fabs(num - analytic[i]);
        if (err > maxerr || isnan(worst_num)) {
            maxerr = err;
            worst = i;
            worst_num = num;
        }
        if (fabs(num) > maxref) maxref = fabs(num);
    }
    double bound = FD_TOL * (maxref > 1 ? maxref : 1);
    printf("  fd %-22s n=%-5zu max|num|=%-9.3g worst err %.3g at %zu (analytic %.6g, numeric "
           "%.6g), bound %.3g\n",
           name, n, maxref, maxerr, worst, analytic[worst], worst_num, bound);
    if (maxerr > bound) fail_msg("%s: gradient check failed", name);
}

/* max|a-b| <= tol * max(1, max|b|) */
static void close_enough(const char *name, const float *a, const float *b, size_t n, double tol) {
    double maxerr = 0, maxref = 0;
    for (size_t i = 0; i < n; i++) {
        maxerr = fmax(maxerr, fabs((double)a[i] - b[i]));
        maxref = fmax(maxref, fabs((double)b[i]));
    }
    printf("  twin %-20s max err %.3g (max |ref| %.3g)\n", name, maxerr, maxref);
    if (maxerr > tol * (maxref > 1 ? maxref : 1)) fail_msg("%s: mismatch %.3g", name, maxerr);
}

/* ---- rmsnorm ---- */
typedef struct {
    int N, C;
    float *out, *rstd, *inp, *w, *R;
} rms_ctx;

static double rms_loss(void *p) {
    rms_ctx *c = p;
    cel_cpu_rmsnorm_forward(c->out, c->rstd, c->inp, c->w, c->N, c->C, 1e-5f);
    return dot(c->out, c->R, (size_t)c->N * c->C);
}

static void test_rmsnorm(void **state) {
    (void)state;
    rms_ctx c = { .N = 3, .C = 8 };
    size_t n = (size_t)c.N * c.C;
    c.out = zeros(n), c.rstd = zeros(c.N), c.inp = rnd(n, 1), c.w = rnd(c.C, 1), c.R = rnd(n, 1);
    float *dinp = zeros(n), *dw = zeros(c.C);
    rms_loss(&c);
    cel_cpu_rmsnorm_backward(dinp, dw, c.R, c.inp, c.w, c.rstd, c.N, c.C);
    fd_check("rmsnorm dinp", c.inp, n, dinp, rms_loss, &c);
    fd_check("rmsnorm dweight", c.w, c.C, dw, rms_loss, &c);
    /* weight grads accumulate, activation grads too (documented +=) */
    float *dw2 = zeros(c.C), *dinp2 = zeros(n);
    memcpy(dw2, dw, c.C * sizeof(float));
    memcpy(dinp2, dinp, n * sizeof(float));
    rms_loss(&c);
    cel_cpu_rmsnorm_backward(dinp2, dw2, c.R, c.inp, c.w, c.rstd, c.N, c.C);
    for (int i = 0; i < c.C; i++) assert_float_equal(dw2[i], 2 * dw[i], 1e-5);
    for (size_t i = 0; i < n; i++) assert_float_equal(dinp2[i], 2 * dinp[i], 1e-5);
    free(c.out), free(c.rstd), free(c.inp), free(c.w), free(c.R), free(dinp), free(dw);
    free(dw2), free(dinp2);
}

/* ---- matmul ---- */
typedef struct {
    int N, IC, OC, ref;
    float *out, *inp, *w, *R;
} mm_ctx;

static double mm_loss(void *p) {
    mm_ctx *c = p;
    if (c->ref) cel_cpu_matmul_forward_ref(c->out, c->inp, c->w, c->N, c->IC, c->OC);
    else cel_cpu_matmul_forward(c->out, c->inp, c->w, c->N, c->IC, c->OC);
    return dot(c->out, c->R, (size_t)c->N * c->OC);
}

static void test_matmul(void **state) {
    (void)state;
    mm_ctx c = { .N = 5, .IC = 7, .OC = 6 };
    size_t ni = (size_t)c.N * c.IC, no = (size_t)c.N * c.OC, nw = (size_t)c.OC * c.IC;
    c.out = zeros(no), c.inp = rnd(ni, 1), c.w = rnd(nw, 1), c.R = rnd(no, 1);
    for (c.ref = 0; c.ref < 2; c.ref++) {
        float *dinp = zeros(ni), *dw = zeros(nw);
        if (c.ref) cel_cpu_matmul_backward_ref(dinp, dw, c.R, c.inp, c.w, c.N, c.IC, c.OC);
        else cel_cpu_matmul_backward(dinp, dw, c.R, c.inp, c.w, c.N, c.IC, c.OC);
        fd_check(c.ref ? "matmul_ref dinp" : "matmul dinp", c.inp, ni, dinp, mm_loss, &c);
        fd_check(c.ref ? "matmul_ref dweight" : "matmul dweight", c.w, nw, dw, mm_loss, &c);
        free(dinp), free(dw);
    }
    free(c.out), free(c.inp), free(c.w), free(c.R);
}

static void test_matmul_twins(void **state) {
    (void)state;
    int N = 37, IC = 53, OC = 29; /* odd sizes past the BLAS kernels' blocking */
    size_t ni = (size_t)N * IC, no = (size_t)N * OC, nw = (size_t)OC * IC;
    float *inp = rnd(ni, 1), *w = rnd(nw, 1), *dout = rnd(no, 1);
    float *o1 = zeros(no), *o2 = zeros(no);
    cel_cpu_matmul_forward(o1, inp, w, N, IC, OC);
    cel_cpu_matmul_forward_ref(o2, inp, w, N, IC, OC);
    close_enough("matmul forward", o1, o2, no, 1e-5);
    float *di1 = rnd(ni, 1), *di2 = malloc(ni * sizeof(float)), *dw1 = rnd(nw, 1),
          *dw2 = malloc(nw * sizeof(float));
    memcpy(di2, di1, ni * sizeof(float)); /* both accumulate onto the same start */
    memcpy(dw2, dw1, nw * sizeof(float));
    cel_cpu_matmul_backward(di1, dw1, dout, inp, w, N, IC, OC);
    cel_cpu_matmul_backward_ref(di2, dw2, dout, inp, w, N, IC, OC);
    close_enough("matmul backward dinp", di1, di2, ni, 1e-5);
    close_enough("matmul backward dw", dw1, dw2, nw, 1e-5);
    /* NULL skips */
    cel_cpu_matmul_backward(NULL, NULL, dout, inp, w, N, IC, OC);
    free(inp), free(w), free(dout), free(o1), free(o2), free(di1), free(di2), free(dw1), free(dw2);
}

/* ---- lora ---- */
typedef struct {
    int N, IC, OC, R;
    float s;
    float *out, *u, *inp, *A, *B, *Rr;
} lora_ctx;

static double lora_loss(void *p) {
    lora_ctx *c = p;
    memset(c->out, 0, (size_t)c->N * c->OC * sizeof(float));
    cel_cpu_lora_forward(c->out, c->u, c->inp, c->A, c->B, c->s, c->N, c->IC, c->OC, c->R);
    return dot(c->out, c->Rr, (size_t)c->N * c->OC);
}

static void test_lora(void **state) {
    (void)state;
    lora_ctx c = { .N = 4, .IC = 6, .OC = 5, .R = 3, .s = 2.5f };
    size_t ni = (size_t)c.N * c.IC, no = (size_t)c.N * c.OC;
    c.out = zeros(no), c.u = zeros((size_t)c.N * c.R), c.inp = rnd(ni, 1),
    c.A = rnd((size_t)c.R * c.IC, 1), c.B = rnd((size_t)c.OC * c.R, 1), c.Rr = rnd(no, 1);
    float *dinp = zeros(ni), *dA = zeros((size_t)c.R * c.IC), *dB = zeros((size_t)c.OC * c.R),
          *du = zeros((size_t)c.N * c.R);
    lora_loss(&c);
    cel_cpu_lora_backward(dinp, dA, dB, du, c.Rr, c.inp, c.u, c.A, c.B, c.s, c.N, c.IC, c.OC, c.R);
    fd_check("lora dinp", c.inp, ni, dinp, lora_loss, &c);
    fd_check("lora dA", c.A, (size_t)c.R * c.IC, dA, lora_loss, &c);
    fd_check("lora dB", c.B, (size_t)c.OC * c.R, dB, lora_loss, &c);
    /* forward adds onto out: base output kept */
    float *base = rnd(no, 1), *o = malloc(no * sizeof(float));
    memcpy(o, base, no * sizeof(float));
    cel_cpu_lora_forward(o, c.u, c.inp, c.A, c.B, c.s, c.N, c.IC, c.OC, c.R);
    lora_loss(&c);
    for (size_t i = 0; i < no; i++) assert_float_equal(o[i], base[i] + c.out[i], 1e-5);
    free(c.out), free(c.u), free(c.inp), free(c.A), free(c.B), free(c.Rr), free(dinp), free(dA);
    free(dB), free(du), free(base), free(o);
}

/* ---- rope ---- */
typedef struct {
    int N, NHX, HS;
    float *out, *inp, *R, *cs, *sn;
    int32_t *pos;
} rope_ctx;

static double rope_loss(void *p) {
    rope_ctx *c = p;
    cel_cpu_rope_forward(c->out, c->inp, c->pos, c->cs, c->sn, c->N, c->NHX, c->HS);
    return dot(c->out, c->R, (size_t)c->N * c->NHX * c->HS);
}

static void test_rope(void **state) {
    (void)state;
    rope_ctx c = { .N = 4, .NHX = 2, .HS = 8 };
    int maxT = 16;
    size_t n = (size_t)c.N * c.NHX * c.HS;
    c.cs = zeros((size_t)maxT * c.HS / 2), c.sn = zeros((size_t)maxT * c.HS / 2);
    cel_cpu_rope_init(c.cs, c.sn, maxT, c.HS, 10000.0f, CEL_ROPE_PLAIN, 1, 1, 4, 8192);
    int32_t pos[4] = { 0, 3, 7, 15 };
    c.pos = pos;
    c.out = zeros(n), c.inp = rnd(n, 1), c.R = rnd(n, 1);
    float *dinp = zeros(n);
    cel_cpu_rope_backward(dinp, c.R, c.pos, c.cs, c.sn, c.N, c.NHX, c.HS);
    fd_check("rope dinp", c.inp, n, dinp, rope_loss, &c);
    /* position 0 is the identity; in-place forward equals out-of-place */
    rope_loss(&c);
    for (int i = 0; i < c.NHX * c.HS; i++) assert_float_equal(c.out[i], c.inp[i], 0);
    float *copy = malloc(n * sizeof(float));
    memcpy(copy, c.inp, n * sizeof(float));
    cel_cpu_rope_forward(copy, copy, c.pos, c.cs, c.sn, c.N, c.NHX, c.HS);
    assert_memory_equal(copy, c.out, n * sizeof(float));
    /* the llama3 and linear variants give finite, distinct tables */
    float *c3 = zeros((size_t)maxT * c.HS / 2), *s3 = zeros((size_t)maxT * c.HS / 2);
    cel_cpu_rope_init(c3, s3, maxT, c.HS, 500000.0f, CEL_ROPE_LLAMA3, 8, 1, 4, 8);
    for (int i = 0; i < maxT * c.HS / 2; i++) assert_true(isfinite(c3[i]) && isfinite(s3[i]));
    free(c.cs), free(c.sn), free(c.out), free(c.inp), free(c.R), free(dinp), free(copy);
    free(c3), free(s3);
}

/* ---- attention ---- */
typedef struct {
    int B, T, NH, NKV, HS;
    float *out, *lse, *scratch, *q, *k, *v, *R;
} att_ctx;

static double att_loss(void *p) {
    att_ctx *c = p;
    cel_cpu_attention_forward(c->out, c->lse, c->scratch, c->q, c->k, c->v, c->B, c->T, c->NH,
                              c->NKV, c->HS);
    return dot(c->out, c->R, (size_t)c->B * c->T * c->NH * c->HS);
}

static void test_attention(void **state) {
    (void)state;
    att_ctx c = { .B = 2, .T = 5, .NH = 4, .NKV = 2, .HS = 4 };
    size_t nq = (size_t)c.B * c.T * c.NH * c.HS, nk = (size_t)c.B * c.T * c.NKV * c.HS;
    c.out = zeros(nq), c.lse = zeros((size_t)c.B * c.NH * c.T),
    c.scratch = zeros(2 * (size_t)c.T * c.T);
    c.q = rnd(nq, 1.5f), c.k = rnd(nk, 1.5f), c.v = rnd(nk, 1), c.R = rnd(nq, 1);
    float *dq = zeros(nq), *dk = rnd(nk, 1), *dv = rnd(nk, 1); /* dk, dv are = not += */
    att_loss(&c);
    cel_cpu_attention_backward(dq, dk, dv, c.scratch, c.R, c.lse, c.q, c.k, c.v, c.B, c.T, c.NH,
                               c.NKV, c.HS);
    fd_check("attention dq", c.q, nq, dq, att_loss, &c);
    fd_check("attention dk", c.k, nk, dk, att_loss, &c);
    fd_check("attention dv", c.v, nk, dv, att_loss, &c);
    /* causality: the first row of each sequence is v of position 0 for its kv head */
    att_loss(&c);
    for (int h = 0; h < c.NH; h++)
        for (int d = 0; d < c.HS; d++)
            assert_float_equal(c.out[h * c.HS + d], c.v[(h / 2) * c.HS + d], 1e-6);
    /* the cached path gives the same rows: batch 1, prefix of 3 then 2 more rows */
    int QD = c.NH * c.HS, KD = c.NKV * c.HS;
    float *oc = zeros((size_t)c.T * QD), *sc = zeros((size_t)c.T * c.T);
    const float *q1 = c.q + (size_t)c.T * QD, *k1 = c.k + (size_t)c.T * KD,
                *v1 = c.v + (size_t)c.T * KD;
    cel_cpu_attention_cached(oc, sc, q1, k1, v1, 3, 0, c.NH, c.NKV, c.HS);
    cel_cpu_attention_cached(oc + 3 * QD, sc, q1 + 3 * QD, k1, v1, 2, 3, c.NH, c.NKV, c.HS);
    close_enough("attention cached", oc, c.out + (size_t)c.T * QD, (size_t)c.T * QD, 1e-5);
    free(c.out), free(c.lse), free(c.scratch), free(c.q), free(c.k), free(c.v), free(c.R);
    free(dq), free(dk), free(dv), free(oc), free(sc);
}

/* Plain-loop causal attention of one sequence (T rows, q/k/v rows of ldq/ldk) into out. */
static void att_naive(float *out, const float *q, const float *k, const float *v, int T, int NH,
                      int NKV, int HS) {
    int ldq = NH * HS, ldk = NKV * HS, g = NH / NKV;
    double *s = malloc((size_t)T * sizeof(double));
    assert_non_null(s);
    for (int h = 0; h < NH; h++)
        for (int i = 0; i < T; i++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j <= i; j++) {
                double d = 0;
                for (int e = 0; e < HS; e++)
                    d += (double)q[(size_t)i * ldq + h * HS + e] *
                         k[(size_t)j * ldk + h / g * HS + e];
                s[j] = d / sqrt((double)HS);
                mx = s[j] > mx ? s[j] : mx;
            }
            for (int j = 0; j <= i; j++) sum += (s[j] = exp(s[j] - mx));
            for (int e = 0; e < HS; e++) {
                double o = 0;
                for (int j = 0; j <= i; j++) o += s[j] / sum * v[(size_t)j * ldk + h / g * HS + e];
                out[(size_t)i * ldq + h * HS + e] = (float)o;
            }
        }
    free(s);
}

typedef struct {
    att_ctx a;
    const int32_t *lens;
} attl_ctx;

static double attl_loss(void *p) {
    attl_ctx *c = p;
    att_ctx *a = &c->a;
    cel_cpu_attention_forward_lens(a->out, a->lse, a->scratch, a->q, a->k, a->v, c->lens, a->B,
                                   a->T, a->NH, a->NKV, a->HS);
    return dot(a->out, a->R, (size_t)a->B * a->T * a->NH * a->HS);
}

/* Several query blocks (T past the block size) and padded rows: each valid row
 * equals plain-loop attention of its sequence alone, padded rows are 0 and
 * cost nothing, and the gradients pass finite differences. */
static void test_attention_blocks_lens(void **state) {
    (void)state;
    attl_ctx c = { .a = { .B = 3, .T = 70, .NH = 2, .NKV = 1, .HS = 4 } };
    att_ctx *a = &c.a;
    int32_t lens[3] = { 70, 33, 1 };
    c.lens = lens;
    int QD = a->NH * a->HS, KD = a->NKV * a->HS;
    size_t nq = (size_t)a->B * a->T * QD, nk = (size_t)a->B * a->T * KD;
    a->out = rnd(nq, 1), a->lse = rnd((size_t)a->B * a->NH * a->T, 1);
    a->scratch = zeros(2 * (size_t)a->T * a->T);
    a->q = rnd(nq, 1.5f), a->k = rnd(nk, 1.5f), a->v = rnd(nk, 1), a->R = rnd(nq, 1);
    float *want = zeros((size_t)a->T * QD);
    attl_loss(&c);
    for (int b = 0; b < a->B; b++) {
        const float *ob = a->out + (size_t)b * a->T * QD;
        att_naive(want, a->q + (size_t)b * a->T * QD, a->k + (size_t)b * a->T * KD,
                  a->v + (size_t)b * a->T * KD, lens[b], a->NH, a->NKV, a->HS);
        close_enough("attention blocks", ob, want, (size_t)lens[b] * QD, 1e-5);
        for (size_t i = (size_t)lens[b] * QD; i < (size_t)a->T * QD; i++)
            assert_true(ob[i] == 0.0f);
    }
    float *dq = rnd(nq, 1), *dk = rnd(nk, 1), *dv = rnd(nk, 1); /* all = not += */
    cel_cpu_attention_backward_lens(dq, dk, dv, a->scratch, a->R, a->lse, a->q, a->k, a->v, lens,
                                    a->B, a->T, a->NH, a->NKV, a->HS);
    fd_check("attention blocks dq", a->q, nq, dq, attl_loss, &c);
    fd_check("attention blocks dk", a->k, nk, dk, attl_loss, &c);
    fd_check("attention blocks dv", a->v, nk, dv, attl_loss, &c);
    free(a->out), free(a->lse), free(a->scratch), free(a->q), free(a->k), free(a->v), free(a->R);
    free(want), free(dq), free(dk), free(dv);
}

/* ---- swiglu ---- */
typedef struct {
    int N, I;
    float *out, *g, *u, *R;
} sw_ctx;

static double sw_loss(void *p) {
    sw_ctx *c = p;
    cel_cpu_swiglu_forward(c->out, c->g, c->u, c->N, c->I);
    return dot(c->out, c->R, (size_t)c->N * c->I);
}

static void test_swiglu(void **state) {
    (void)state;
    sw_ctx c = { .N = 3, .I = 7 };
    size_t n = (size_t)c.N * c.I;
    c.out = zeros(n), c.g = rnd(n, 3), c.u = rnd(n, 1), c.R = rnd(n, 1);
    float *dg = zeros(n), *du = zeros(n);
    cel_cpu_swiglu_backward(dg, du, c.R, c.g, c.u, c.N, c.I);
    fd_check("swiglu dgate", c.g, n, dg, sw_loss, &c);
    fd_check("swiglu dup", c.u, n, du, sw_loss, &c);
    free(c.out), free(c.g), free(c.u), free(c.R), free(dg), free(du);
}

/* ---- embedding, residual ---- */
typedef struct {
    int N, C;
    int32_t *tok;
    float *out, *wte, *R;
} emb_ctx;

static double emb_loss(void *p) {
    emb_ctx *c = p;
    cel_cpu_embedding_forward(c->out, c->tok, c->wte, c->N, c->C);
    return dot(c->out, c->R, (size_t)c->N * c->C);
}

static void test_embedding_residual(void **state) {
    (void)state;
    int32_t tok[5] = { 3, 0, 3, 6, 1 };
    emb_ctx c = { .N = 5, .C = 4, .tok = tok };
    int V = 7;
    c.out = zeros(20), c.wte = rnd((size_t)V * c.C, 1), c.R = rnd(20, 1);
    float *dw = zeros((size_t)V * c.C);
    cel_cpu_embedding_backward(dw, c.R, tok, c.N, c.C);
    fd_check("embedding dwte", c.wte, (size_t)V * c.C, dw, emb_loss, &c);
    float a[3] = { 1, 2, 3 }, b[3] = { 10, 20, 30 }, o[3], da[3] = { 1, 1, 1 }, db[3] = { 0 },
          d[3] = { 1, 2, 3 };
    cel_cpu_residual_forward(o, a, b, 3);
    assert_float_equal(o[2], 33, 0);
    cel_cpu_residual_backward(da, db, d, 3);
    assert_float_equal(da[1], 3, 0);
    assert_float_equal(db[2], 3, 0);
    free(c.out), free(c.wte), free(c.R), free(dw);
}

/* ---- cross-entropy ---- */
typedef struct {
    int N, V;
    int32_t *tgt;
    float *w, *logp, *lse, *logits;
} ce_ctx;

static double ce_loss(void *p) {
    ce_ctx *c = p;
    return cel_cpu_crossentropy_forward(c->logp, c->lse, c->logits, c->tgt, c->w, c->N, c->V);
}

static void test_crossentropy(void **state) {
    (void)state;
    int32_t tgt[4] = { 2, 0, 5, 5 };
    float w[4] = { 1.0f, 0.0f, 2.5f, 0.3f };
    ce_ctx c = { .N = 4, .V = 6, .tgt = tgt, .w = w };
    size_t n = (size_t)c.N * c.V;
    c.logp = zeros(c.N), c.lse = zeros(c.N), c.logits = rnd(n, 3);
    float *d = zeros(n);
    ce_loss(&c);
    cel_cpu_crossentropy_backward(d, c.logits, c.lse, tgt, w, 1.0f, c.N, c.V);
    fd_check("crossentropy dlogits", c.logits, n, d, ce_loss, &c);
    /* zero-weight rows get zero gradient but still a log-prob; rows sum to 0 */
    for (int i = 0; i < c.V; i++) assert_float_equal(d[c.V + i], 0, 0);
    assert_true(c.logp[1] < 0);
    double s = 0;
    for (int i = 0; i < c.V; i++) s += d[i];
    assert_float_equal(s, 0, 1e-6);
    /* unweighted loss equals -sum logp; in-place backward equals out-of-place */
    double l = cel_cpu_crossentropy_forward(c.logp, c.lse, c.logits, tgt, NULL, c.N, c.V);
    assert_float_equal(l, -(c.logp[0] + c.logp[1] + c.logp[2] + c.logp[3]), 1e-5);
    float *inplace = malloc(n * sizeof(float));
    memcpy(inplace, c.logits, n * sizeof(float));
    cel_cpu_crossentropy_forward(c.logp, c.lse, inplace, tgt, w, c.N, c.V);
    cel_cpu_crossentropy_backward(inplace, inplace, c.lse, tgt, w, 1.0f, c.N, c.V);
    assert_memory_equal(inplace, d, n * sizeof(float));
    free(c.logp), free(c.lse), free(c.logits), free(d), free(inplace);
}

/* ---- AdamW against torch's formula in double ---- */
static void test_adamw(void **state) {
    (void)state;
    size_t n = 50;
    float *p = rnd(n, 1), *m = zeros(n), *v = zeros(n);
    double *pd = malloc(n * sizeof(double)), *md = calloc(n, sizeof(double)),
           *vd = calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) pd[i] = p[i];
    float lr = 3e-3f, b1 = 0.9f, b2 = 0.95f, eps = 1e-8f, wd = 0.1f;
    for (int step = 1; step <= 3; step++) {
        float *g = rnd(n, 1);
        cel_cpu_adamw_update(p, m, v, g, n, lr, b1, b2, eps, wd, step);
        for (size_t i = 0; i < n; i++) {
            pd[i] *= 1 - (double)lr * wd;
            md[i] = b1 * md[i] + (1 - (double)b1) * g[i];
            vd[i] = b2 * vd[i] + (1 - (double)b2) * g[i] * g[i];
            double bc1 = 1 - pow(b1, step), bc2 = 1 - pow(b2, step);
            pd[i] -= lr / bc1 * md[i] / (sqrt(vd[i]) / sqrt(bc2) + eps);
        }
        free(g);
    }
    for (size_t i = 0; i < n; i++) {
        assert_true(fabs(p[i] - pd[i]) <= 1e-6 * fmax(1, fabs(pd[i])));
        assert_true(fabs(m[i] - md[i]) <= 1e-6);
        assert_true(fabs(v[i] - vd[i]) <= 1e-6);
    }
    float g2[3] = { 3, 4, 0 };
    assert_float_equal(cel_cpu_adamw_sumsq(g2, 3), 25, 0);
    cel_cpu_adamw_scale(g2, 3, 0.5f);
    assert_float_equal(g2[1], 2, 0);
    free(p), free(m), free(v), free(pd), free(md), free(vd);
}

/* The update (16 parameters at a time with AVX-512F) gives the plain loop's
 * bits: lengths around 16, zero and huge gradients, decay and eps of all
 * kinds, steps 1..4 and a far one. */
static void test_adamw_wide(void **state) {
    (void)state;
    static const size_t lens[] = { 1, 15, 16, 17, 33, 1000, 100003 };
    static const float hp[][5] = { { 1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f },
                                   { 3e-2f, 0.5f, 0.95f, 1e-3f, 0.0f },
                                   { 1.0f, 0.0f, 0.0f, 0.0f, 0.5f } };
    for (size_t l = 0; l < sizeof(lens) / sizeof(lens[0]); l++) {
        size_t n = lens[l];
        for (size_t h = 0; h < sizeof(hp) / sizeof(hp[0]); h++) {
            float *p[2], *m[2], *v[2];
            float *init = rnd(n, 2);
            for (int w = 0; w < 2; w++) {
                p[w] = malloc(n * sizeof(float));
                assert_non_null(p[w]);
                memcpy(p[w], init, n * sizeof(float));
                m[w] = zeros(n), v[w] = zeros(n);
            }
            for (int step = 1; step <= 5; step++) {
                float *g = rnd(n, step == 3 ? 1e4f : 1.0f);
                for (size_t i = 0; i < n; i += 7) g[i] = 0.0f;
                if (n > 2) g[1] = 1e-30f, g[2] = -3e30f;
                int t = step == 5 ? 100000 : step;
                cel_cpu_adamw_update(p[0], m[0], v[0], g, n, hp[h][0], hp[h][1], hp[h][2],
                                     hp[h][3], hp[h][4], t);
                cel_cpu_adamw_update_ref(p[1], m[1], v[1], g, n, hp[h][0], hp[h][1], hp[h][2],
                                         hp[h][3], hp[h][4], t);
                free(g);
            }
            assert_memory_equal(p[0], p[1], n * sizeof(float));
            assert_memory_equal(m[0], m[1], n * sizeof(float));
            assert_memory_equal(v[0], v[1], n * sizeof(float));
            for (int w = 0; w < 2; w++) free(p[w]), free(m[w]), free(v[w]);
            free(init);
        }
    }
}

/* ---- the vectorisable expf and the thread pool ---- */

static void test_expf(void **state) {
    (void)state;
    double worst = 0;
    for (int i = 0; i <= 400000; i++) {
        float x = -87.3f + (88.0f + 87.3f) * (float)i / 400000.0f;
        double want = exp((double)x), got = cel_cpu_expf(x);
        worst = fmax(worst, fabs(got - want) / want);
    }
    printf("  expf max rel err %.3g over [-87.3, 88]\n", worst);
    assert_true(worst < 2e-7);
    assert_true(cel_cpu_expf(0.0f) == 1.0f);
    /* clamped outside the range: finite, tiny below, exp(88) above */
    assert_true(cel_cpu_expf(-1000.0f) > 0.0f && cel_cpu_expf(-1000.0f) < 1.3e-38f);
    assert_true(isfinite(cel_cpu_expf(1000.0f)) && cel_cpu_expf(1000.0f) > 1.6e38f);
    assert_true(cel_cpu_expf(-INFINITY) < 1.3e-38f);
}

static int *par_hits;
static void par_mark(void *ctx, int i0, int i1) {
    (void)ctx;
    for (int i = i0; i < i1; i++) __atomic_add_fetch(&par_hits[i], 1, __ATOMIC_RELAXED);
}

/* Each index once, whatever the thread count, grain and size; then every
 * threaded op gives bit-identical results with 1 and with 3 threads (each row
 * or element is computed the same way by whichever thread takes it). */
static void test_par(void **state) {
    (void)state;
    int sizes[] = { 0, 1, 7, 100, 4097, 100003 };
    par_hits = calloc(100003, sizeof(int));
    assert_non_null(par_hits);
    for (int nt = 1; nt <= 4; nt++) {
        cel_cpu_par_set_threads(nt);
        assert_int_equal(cel_cpu_par_threads(), nt);
        for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++)
            for (int grain = 1; grain <= 1000; grain *= 10)
                for (int rep = 0; rep < 20; rep++) {
                    memset(par_hits, 0, 100003 * sizeof(int));
                    cel_cpu_par_for(sizes[s], grain, par_mark, NULL);
                    for (int i = 0; i < sizes[s]; i++) assert_int_equal(par_hits[i], 1);
                }
    }
    free(par_hits);

    int N = 300, C = 96, I = 200, V = 333, HS = 8, maxT = N;
    float *x = rnd((size_t)N * C, 2), *w = rnd(C, 1), *g = rnd((size_t)N * I, 4),
          *u = rnd((size_t)N * I, 1), *lg = rnd((size_t)N * V, 5), *d = rnd((size_t)N * I, 1);
    float *cs = zeros((size_t)maxT * HS / 2), *sn = zeros((size_t)maxT * HS / 2);
    int32_t *tgt = malloc(N * sizeof(int32_t)), *pos = malloc(N * sizeof(int32_t));
    assert_non_null(tgt);
    assert_non_null(pos);
    for (int i = 0; i < N; i++) tgt[i] = (i * 7) % V, pos[i] = i;
    cel_cpu_rope_init(cs, sn, maxT, HS, 10000.0f, CEL_ROPE_PLAIN, 1, 1, 4, 8);
    float *out[2][9];
    double loss[2];
    for (int r = 0; r < 2; r++) {
        cel_cpu_par_set_threads(r ? 3 : 1);
        for (int k = 0; k < 9; k++) out[r][k] = zeros((size_t)N * (V > I ? V : I));
        cel_cpu_rmsnorm_forward(out[r][0], out[r][1], x, w, N, C, 1e-5f);
        cel_cpu_rmsnorm_backward(out[r][2], NULL, out[r][0], x, w, out[r][1], N, C);
        cel_cpu_swiglu_forward(out[r][3], g, u, N, I);
        cel_cpu_swiglu_backward(out[r][4], out[r][5], d, g, u, N, I);
        cel_cpu_residual_forward(out[r][6], out[r][3], out[r][4], (size_t)N * I);
        cel_cpu_rope_forward(out[r][7], x, pos, cs, sn, N, C / HS, HS);
        cel_cpu_rope_backward(out[r][7], out[r][7], pos, cs, sn, N, C / HS, HS);
        loss[r] = cel_cpu_crossentropy_forward(out[r][1], out[r][0], lg, tgt, NULL, N, V);
        cel_cpu_crossentropy_backward(out[r][8], lg, out[r][0], tgt, NULL, 0.5f, N, V);
    }
    for (int k = 0; k < 9; k++)
        assert_memory_equal(out[0][k], out[1][k], (size_t)N * (V > I ? V : I) * sizeof(float));
    assert_true(loss[0] == loss[1]);
    for (int r = 0; r < 2; r++)
        for (int k = 0; k < 9; k++) free(out[r][k]);
    free(x), free(w), free(g), free(u), free(lg), free(d), free(cs), free(sn), free(tgt), free(pos);
    cel_cpu_par_set_threads(2);
}

/* Attention splits (b, head) across the threads, each with its own scratch:
 * forward and backward (GQA, padded rows) are bit-identical with 1, 2 and 3
 * threads, and OpenBLAS's thread count is back where it was after. */
static void test_attention_threads(void **state) {
    (void)state;
    int B = 3, T = 75, NH = 4, NKV = 2, HS = 8, QD = NH * HS, KD = NKV * HS;
    int32_t lens[3] = { 75, 40, 3 };
    size_t nq = (size_t)B * T * QD, nk = (size_t)B * T * KD, nl = (size_t)B * NH * T;
    float *q = rnd(nq, 1.5f), *k = rnd(nk, 1.5f), *v = rnd(nk, 1), *dout = rnd(nq, 1);
    float *scratch = zeros(2 * (size_t)T * T), *res[3][5];
    int blas = openblas_get_num_threads();
    for (int r = 0; r < 3; r++) {
        cel_cpu_par_set_threads(r + 1);
        res[r][0] = rnd(nq, 1), res[r][1] = rnd(nl, 1); /* out, lse: = not += */
        res[r][2] = rnd(nq, 1), res[r][3] = rnd(nk, 1), res[r][4] = rnd(nk, 1);
        cel_cpu_attention_forward_lens(res[r][0], res[r][1], scratch, q, k, v, lens, B, T, NH, NKV,
                                       HS);
        cel_cpu_attention_backward_lens(res[r][2], res[r][3], res[r][4], scratch, dout, res[r][1],
                                        q, k, v, lens, B, T, NH, NKV, HS);
        assert_int_equal(openblas_get_num_threads(), blas);
    }
    size_t sz[5] = { nq, nl, nq, nk, nk };
    for (int r = 1; r < 3; r++)
        for (int i = 0; i < 5; i++) assert_memory_equal(res[0][i], res[r][i], sz[i] * sizeof(float));
    for (int r = 0; r < 3; r++)
        for (int i = 0; i < 5; i++) free(res[r][i]);
    free(q), free(k), free(v), free(dout), free(scratch);
    cel_cpu_par_set_threads(2);
}

/* Two threads (two models) running attention at once: one checks its results
 * against a lone run each time while the other's sequences grow, so that it
 * keeps asking for bigger worker scratch meanwhile (a smoke test: a race on
 * the buffers is a narrow window, not hit every run). */
typedef struct {
    int T, iters, grow;
    float *q, *k, *v, *dout, *scratch, *res[2][5];
} att2_t;

#define ATT2_B  2
#define ATT2_NH 4
#define ATT2_KV 2
#define ATT2_HS 8

static void att2_sizes(int T, size_t sz[5]) {
    size_t nq = (size_t)ATT2_B * T * ATT2_NH * ATT2_HS, nk = (size_t)ATT2_B * T * ATT2_KV * ATT2_HS;
    sz[0] = nq, sz[1] = (size_t)ATT2_B * ATT2_NH * T, sz[2] = nq, sz[3] = nk, sz[4] = nk;
}

static void att2_run(att2_t *a, int T, int r) {
    int32_t lens[ATT2_B] = { T, T / 2 + 1 };
    cel_cpu_attention_forward_lens(a->res[r][0], a->res[r][1], a->scratch, a->q, a->k, a->v, lens,
                                   ATT2_B, T, ATT2_NH, ATT2_KV, ATT2_HS);
    cel_cpu_attention_backward_lens(a->res[r][2], a->res[r][3], a->res[r][4], a->scratch, a->dout,
                                    a->res[r][1], a->q, a->k, a->v, lens, ATT2_B, T, ATT2_NH,
                                    ATT2_KV, ATT2_HS);
}

static void *att2_thread(void *p) {
    att2_t *a = p;
    size_t sz[5];
    att2_sizes(a->T, sz);
    for (int i = 0; i < a->iters; i++) {
        att2_run(a, a->grow ? a->T - a->iters + 1 + i : a->T, 1);
        if (!a->grow)
            for (int x = 0; x < 5; x++)
                if (memcmp(a->res[0][x], a->res[1][x], sz[x] * sizeof(float)) != 0) return a;
    }
    return NULL;
}

static void test_attention_two_callers(void **state) {
    (void)state;
    att2_t a[2] = { { .T = 40, .iters = 200 }, { .T = 340, .iters = 40, .grow = 1 } };
    for (int x = 0; x < 2; x++) {
        size_t sz[5];
        att2_sizes(a[x].T, sz);
        a[x].q = rnd(sz[0], 1.5f), a[x].k = rnd(sz[3], 1.5f), a[x].v = rnd(sz[3], 1);
        a[x].dout = rnd(sz[0], 1), a[x].scratch = zeros(2 * (size_t)a[x].T * a[x].T);
        for (int r = 0; r < 2; r++)
            for (int i = 0; i < 5; i++) a[x].res[r][i] = zeros(sz[i]);
    }
    cel_cpu_par_set_threads(1);
    att2_run(&a[0], a[0].T, 0); /* alone */
    cel_cpu_par_set_threads(2);
    pthread_t t[2];
    void *bad[2];
    for (int x = 0; x < 2; x++) assert_int_equal(pthread_create(&t[x], NULL, att2_thread, &a[x]), 0);
    for (int x = 0; x < 2; x++) pthread_join(t[x], &bad[x]);
    assert_null(bad[0]);
    for (int x = 0; x < 2; x++) {
        for (int r = 0; r < 2; r++)
            for (int i = 0; i < 5; i++) free(a[x].res[r][i]);
        free(a[x].q), free(a[x].k), free(a[x].v), free(a[x].dout), free(a[x].scratch);
    }
}

/* ---- bf16 products ---- */

static float bf16_round(float f) { /* round to nearest even, as the engine does */
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7fffu + ((u >> 16) & 1u);
    u &= 0xffff0000u;
    memcpy(&f, &u, 4);
    return f;
}

/* Against a double product of the bf16-rounded inputs: odd K, partial panels,
 * a row count past the 64-row blocks, both packings, = and +=. */
static void test_bf16_gemm(void **state) {
    (void)state;
    if (!cel_cpu_bf16_supported()) {
        printf("  no AVX512-BF16 here: skipped\n");
        skip();
    }
    int M = 70, K = 67, Nc = 45;
    float *A = rnd((size_t)M * K, 1), *W = rnd((size_t)Nc * K, 1), *C0 = rnd((size_t)M * Nc, 1);
    for (int trans = 0; trans <= 1; trans++)
        for (int acc = 0; acc <= 1; acc++) {
            cel_cpu_bf16w_t w;
            /* trans: B = W^T with W (Nc, K); else B = W viewed as (K, Nc) */
            assert_int_equal(cel_cpu_bf16_pack(&w, W, trans ? K : Nc, K, Nc, trans), 0);
            float *C = malloc((size_t)M * Nc * sizeof(float));
            assert_non_null(C);
            memcpy(C, C0, (size_t)M * Nc * sizeof(float));
            cel_cpu_par_set_threads(2);
            cel_cpu_bf16_gemm(C, Nc, A, K, M, &w, acc);
            double worst = 0;
            for (int m = 0; m < M; m++)
                for (int n = 0; n < Nc; n++) {
                    double ref = acc ? C0[(size_t)m * Nc + n] : 0, mag = 0;
                    for (int k = 0; k < K; k++) {
                        float b = trans ? W[(size_t)n * K + k] : W[(size_t)k * Nc + n];
                        double t = (double)bf16_round(A[(size_t)m * K + k]) * bf16_round(b);
                        ref += t;
                        mag += fabs(t);
                    }
                    worst = fmax(worst, fabs(C[(size_t)m * Nc + n] - ref) / (mag + 1));
                }
            printf("  bf16 gemm trans=%d acc=%d: max err %.3g x (sum |terms| + 1)\n", trans, acc,
                   worst);
            assert_true(worst < 1e-5);
            free(C);
            cel_cpu_bf16_free(&w);
        }
    free(A), free(W), free(C0);
}

/* gemm.c (CPUs with AVX-512F) against double-precision loops: columns not a
 * multiple of 32 or 16, K not a multiple of 16 (the transposes' tail), rows
 * not a multiple of 8 and past one work item's 256, K past one chunk of the
 * sum (128) with a tail, strided operands whose
 * padding must stay untouched; A^T B (a weight's gradient) giving A B's bits
 * from a transposed copy; the few-rows path (OpenBLAS over blocks of W); the
 * same bits at 1, 2 and 3 threads, and a row's result the same whatever rows
 * it is computed with. */
static void test_gemm(void **state) {
    (void)state;
    if (!cel_cpu_gemm_supported()) {
        printf("  no AVX-512F: gemm.c not used here\n");
        skip();
    }
    assert_false(cel_cpu_gemm_use(7)); /* a few rows (sampling): OpenBLAS */
    assert_true(cel_cpu_gemm_use(8));
    static const int shapes[][3] = { { 8, 32, 16 },  { 37, 29, 53 }, { 300, 77, 40 }, { 9, 48, 1 },
                                     { 520, 33, 130 }, { 64, 7, 17 },  { 16, 100, 0 },
                                     { 40, 45, 300 } };
    const float PAD = 12345.0f;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
        int lda = K + 3, ldw = K + 5, ldb = N + 4, ldc = N + 2;
        float *A = rnd((size_t)M * lda + 1, 1), *W = rnd((size_t)N * ldw + 1, 1);
        float *B = rnd((size_t)K * ldb + 1, 1), *C0 = rnd((size_t)M * ldc, 1);
        int ldt = M + 6; /* A transposed: (K, M) */
        float *At = rnd((size_t)K * ldt + 1, 1);
        for (int i = 0; i < M; i++)
            for (int k = 0; k < K; k++) At[(size_t)k * ldt + i] = A[(size_t)i * lda + k];
        float *res[3][4];
        for (int t = 0; t < 3; t++) {
            cel_cpu_par_set_threads(t + 1);
            for (int v = 0; v < 4; v++) {
                res[t][v] = malloc((size_t)M * ldc * sizeof(float));
                assert_non_null(res[t][v]);
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < ldc; j++)
                        res[t][v][(size_t)i * ldc + j] = j < N ? C0[(size_t)i * ldc + j] : PAD;
            }
            assert_int_equal(cel_cpu_gemm_wt(res[t][0], ldc, A, lda, W, ldw, M, N, K), 0);
            assert_int_equal(cel_cpu_gemm_acc(res[t][1], ldc, A, lda, B, ldb, M, N, K), 0);
            assert_int_equal(cel_cpu_gemm_acc_at(res[t][2], ldc, At, ldt, B, ldb, M, N, K), 0);
            cel_cpu_gemm_wt_small(res[t][3], ldc, A, lda, W, ldw, M, N, K);
        }
        double worst = 0;
        for (int i = 0; i < M; i++)
            for (int j = 0; j < ldc; j++) {
                size_t at = (size_t)i * ldc + j;
                if (j >= N) { /* padding columns */
                    for (int v = 0; v < 4; v++) assert_true(res[0][v][at] == PAD);
                    continue;
                }
                double wt = 0, acc = C0[at];
                for (int k = 0; k < K; k++) {
                    wt += (double)A[(size_t)i * lda + k] * W[(size_t)j * ldw + k];
                    acc += (double)A[(size_t)i * lda + k] * B[(size_t)k * ldb + j];
                }
                worst = fmax(worst, fabs(res[0][0][at] - wt) / (1 + fabs(wt)));
                worst = fmax(worst, fabs(res[0][1][at] - acc) / (1 + fabs(acc)));
                /* A^T B from the transposed copy: the same sums, the same bits */
                assert_true(res[0][2][at] == res[0][1][at]);
                worst = fmax(worst, fabs(res[0][3][at] - wt) / (1 + fabs(wt)));
            }
        printf("  gemm M=%d N=%d K=%d: worst relative error %.3g\n", M, N, K, worst);
        assert_true(worst < 1e-5);
        for (int t = 1; t < 3; t++)
            for (int v = 0; v < 4; v++)
                assert_memory_equal(res[0][v], res[t][v], (size_t)M * ldc * sizeof(float));
        /* the last 8 rows alone give the bits they got among all M */
        float *alone = malloc((size_t)8 * ldc * sizeof(float));
        assert_non_null(alone);
        const float *A8 = A + (size_t)(M - 8) * lda;
        cel_cpu_gemm_wt(alone, ldc, A8, lda, W, ldw, 8, N, K);
        for (int i = 0; i < 8; i++)
            assert_memory_equal(alone + (size_t)i * ldc, res[0][0] + (size_t)(M - 8 + i) * ldc,
                                (size_t)N * sizeof(float));
        free(alone);
        for (int t = 0; t < 3; t++)
            for (int v = 0; v < 4; v++) free(res[t][v]);
        free(A), free(W), free(B), free(C0), free(At);
    }
    cel_cpu_par_set_threads(2);
}

/* A K whose panels a thread may not hold (past 64 MiB): every block goes to
 * OpenBLAS, the products say so, and the results are still the products. */
static void test_gemm_fallback(void **state) {
    (void)state;
    if (!cel_cpu_gemm_supported()) skip();
    int M = 9, N = 40, K = 270000;
    float *A = rnd((size_t)M * K, 1), *W = rnd((size_t)N * K, 1), *B = rnd((size_t)K * N, 1);
    float *At = malloc((size_t)K * M * sizeof(float));
    assert_non_null(At);
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) At[(size_t)k * M + i] = A[(size_t)i * K + k];
    float *C[3];
    for (int v = 0; v < 3; v++) C[v] = zeros((size_t)M * N);
    assert_int_equal(cel_cpu_gemm_wt(C[0], N, A, K, W, K, M, N, K), 1);
    assert_int_equal(cel_cpu_gemm_acc(C[1], N, A, K, B, N, M, N, K), 1);
    assert_int_equal(cel_cpu_gemm_acc_at(C[2], N, At, M, B, N, M, N, K), 1);
    double worst = 0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double wt = 0, ab = 0;
            for (int k = 0; k < K; k++) {
                wt += (double)A[(size_t)i * K + k] * W[(size_t)j * K + k];
                ab += (double)A[(size_t)i * K + k] * B[(size_t)k * N + j];
            }
            worst = fmax(worst, fabs(C[0][(size_t)i * N + j] - wt) / (1 + fabs(wt)));
            worst = fmax(worst, fabs(C[1][(size_t)i * N + j] - ab) / (1 + fabs(ab)));
            worst = fmax(worst, fabs(C[2][(size_t)i * N + j] - ab) / (1 + fabs(ab)));
        }
    printf("  gemm fallback K=%d: worst relative error %.3g\n", K, worst);
    assert_true(worst < 5e-4); /* 270k terms summed in fp32 by OpenBLAS: ~5e-5 here */
    /* and a product that fits again uses the kernel */
    float *c = zeros(8 * 32);
    assert_int_equal(cel_cpu_gemm_wt(c, 32, A, K, W, K, 8, 32, 1000), 0);
    free(c);
    for (int v = 0; v < 3; v++) free(C[v]);
    free(A), free(W), free(B), free(At);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_matmul_twins),
        cmocka_unit_test(test_lora),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_blocks_lens),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_embedding_residual),
        cmocka_unit_test(test_crossentropy),
        cmocka_unit_test(test_adamw),
        cmocka_unit_test(test_adamw_wide),
        cmocka_unit_test(test_expf),
        cmocka_unit_test(test_par),
        cmocka_unit_test(test_attention_threads),
        cmocka_unit_test(test_attention_two_callers),
        cmocka_unit_test(test_bf16_gemm),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_fallback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
