/* test_model_jobs.c -- packed multi-adapter passes (cel_model_run_jobs) equal one-at-a-time runs.
 *
 * Three adapters of different ranks and targets, batches of different shapes
 * (padding, per-token weights): the packed forward_backward gives each job
 * the loss, log-probs and LoRA gradients it gets alone, and the weights after
 * an AdamW step match; an adapter in two jobs gets both gradients; a bad job
 * is refused alone while the others run; a base-model job cannot join a
 * backward pass; a workspace grown by bigger passes (one mapping, grown in
 * place) gives what a fresh model's gives. On the CPU; with CELERIAC_TEST_DEVICE=cuda (a GPU machine)
 * the same checks run on the GPU within bf16 tolerances.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../../model/internal.h"
#include "../../model/model.h"
#include "tiny_model.h"

#define NJ 4

/* Tolerances: fp32 summation order on the CPU, bf16 on a GPU. */
static double tol_rel(void) {
    const char *d = getenv("CELERIAC_TEST_DEVICE");
    return d && strncmp(d, "cuda", 4) == 0 ? 2e-2 : 2e-5;
}

/* The tiny model with its weights scaled by 20 and its norm weights 1, on
 * CELERIAC_TEST_DEVICE when set. */
static cel_model_t *make_model(void) {
    cel_model_t *m = tiny_model_new();
    cel_err_t err;
    for (size_t i = 0; i < m->n; i++) m->w[i] *= 20.0f;
    for (size_t i = 0; i < (size_t)m->cfg.L * m->cfg.C; i++) m->p.ln1[i] = m->p.ln2[i] = 1.0f;
    for (int i = 0; i < m->cfg.C; i++) m->p.lnf[i] = 1.0f;
    const char *dev = getenv("CELERIAC_TEST_DEVICE");
    if (dev && *dev) {
        char chosen[256];
        if (cel_model_set_device(m, dev, chosen, sizeof(chosen), &err) != CEL_OK)
            fail_msg("device %s: %s", dev, err.msg);
    }
    return m;
}

static cel_lora_t *make_lora(cel_model_t *m, int rank, unsigned targets, uint64_t seed) {
    cel_lora_config_t lc = { .rank = rank, .alpha = 2.0f * rank, .targets = targets, .seed = seed };
    cel_lora_t *l;
    cel_err_t err;
    if (cel_lora_new(m, &lc, &l, &err) != CEL_OK) fail_msg("lora: %s", err.msg);
    /* B = 0 at init would hide every B-dependent path: give B values */
    for (size_t i = 0; i < l->n; i++) l->w[i] += 0.05f * (float)sin((double)i * 0.37 + seed);
    return l;
}

typedef struct data {
    int B, T;
    int32_t tok[64], tgt[64], lens[4];
    float w[64];
} data_t;

static void make_data(data_t *d, int B, int T, uint64_t seed) {
    d->B = B, d->T = T;
    uint64_t s = seed * 2654435761u + 1;
    for (int i = 0; i < B * T; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        d->tok[i] = (int32_t)((s >> 33) % 67);
        d->tgt[i] = (int32_t)((s >> 13) % 67);
        d->w[i] = (i % 5 == 0) ? 0.0f : 0.5f + (float)((s >> 40) % 100) / 100.0f;
    }
    for (int b = 0; b < B; b++) d->lens[b] = T - (b % 2) * (T / 3);
}

static cel_batch_t batch_of(const data_t *d) {
    cel_batch_t b = {
        .B = d->B, .T = d->T, .tokens = d->tok, .targets = d->tgt, .weights = d->w, .lens = d->lens
    };
    return b;
}

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Asserts |a - b| <= tol * max(1, max|a|) elementwise. */
static void assert_close(const char *what, const float *a, const float *b, size_t n) {
    double scale = max_abs(a, n), worst = 0;
    if (scale < 1) scale = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        worst = d > worst || d != d ? d : worst; /* a NaN sticks and fails */
    }
    if (!(worst <= tol_rel() * scale)) fail_msg("%s: max diff %g (scale %g)", what, worst, scale);
}

/* The adapter's current gradients, synced from the device when needed. */
static float *grads_of(cel_lora_t *l) {
    cel_err_t err;
    if (cel_device_lora_sync(l, &err) != CEL_OK) fail_msg("sync: %s", err.msg);
    float *g = malloc(l->n * sizeof(float));
    memcpy(g, l->g, l->n * sizeof(float));
    return g;
}

static float *weights_of(cel_lora_t *l) {
    cel_err_t err;
    if (cel_device_lora_sync(l, &err) != CEL_OK) fail_msg("sync: %s", err.msg);
    float *w = malloc(l->n * sizeof(float));
    memcpy(w, l->w, l->n * sizeof(float));
    return w;
}

static void test_packed_equals_alone(void **state) {
    (void)state;
    cel_err_t err;
    cel_model_t *m = make_model();
    cel_lora_t *l[NJ];
    int ranks[NJ] = { 4, 8, 2, 4 };
    unsigned tg[NJ] = { CEL_LORA_ALL, CEL_LORA_Q | CEL_LORA_V | CEL_LORA_DOWN, CEL_LORA_ALL,
                        CEL_LORA_O | CEL_LORA_UP | CEL_LORA_GATE | CEL_LORA_K };
    data_t d[NJ];
    int shapes[NJ][2] = { { 2, 9 }, { 1, 14 }, { 3, 5 }, { 2, 11 } };
    for (int j = 0; j < NJ; j++) {
        l[j] = make_lora(m, ranks[j], tg[j], 100 + j);
        make_data(&d[j], shapes[j][0], shapes[j][1], 10 + j);
    }
    /* alone */
    double loss_alone[NJ];
    float lp_alone[NJ][64], lp_packed[NJ][64];
    float *g_alone[NJ], *w_alone[NJ];
    cel_adamw_t opt = cel_model_adamw_defaults();
    opt.lr = 1e-2f;
    for (int j = 0; j < NJ; j++) {
        cel_batch_t b = batch_of(&d[j]);
        if (cel_model_forward_backward(m, l[j], &b, lp_alone[j], &loss_alone[j], &err) != CEL_OK)
            fail_msg("alone %d: %s", j, err.msg);
        g_alone[j] = grads_of(l[j]);
        cel_lora_zero_grad(l[j]);
    }
    /* packed */
    cel_model_job_t jobs[NJ];
    memset(jobs, 0, sizeof(jobs));
    for (int j = 0; j < NJ; j++) {
        jobs[j].lora = l[j];
        jobs[j].batch = batch_of(&d[j]);
        jobs[j].logprobs = lp_packed[j];
    }
    assert_int_equal(cel_model_run_jobs(m, jobs, NJ, 1, &err), CEL_OK);
    for (int j = 0; j < NJ; j++) {
        assert_int_equal(jobs[j].rc, CEL_OK);
        double scale = fabs(loss_alone[j]) > 1 ? fabs(loss_alone[j]) : 1;
        if (!(fabs(jobs[j].loss - loss_alone[j]) <= tol_rel() * scale))
            fail_msg("job %d loss %.9g alone %.9g", j, jobs[j].loss, loss_alone[j]);
        assert_close("logprobs", lp_alone[j], lp_packed[j], (size_t)d[j].B * d[j].T);
        float *g = grads_of(l[j]);
        assert_close("grads", g_alone[j], g, l[j]->n);
        free(g);
    }
    /* one AdamW step from the packed gradients equals one from the lone ones */
    for (int j = 0; j < NJ; j++) {
        float *w0 = weights_of(l[j]);
        assert_int_equal(cel_lora_step(l[j], &opt, NULL, &err), CEL_OK);
        float *w_packed = weights_of(l[j]);
        /* replay on the host: same start, lone gradients */
        cel_lora_t *twin = make_lora(m, ranks[j], tg[j], 100 + j);
        cel_device_lora_evict(twin, 0, NULL);
        memcpy(twin->w, w0, twin->n * sizeof(float));
        memcpy(twin->g, g_alone[j], twin->n * sizeof(float));
        assert_int_equal(cel_lora_step(twin, &opt, NULL, &err), CEL_OK);
        w_alone[j] = weights_of(twin);
        assert_close("weights after a step", w_alone[j], w_packed, twin->n);
        cel_lora_free(twin);
        free(w0);
        free(w_packed);
        free(w_alone[j]);
        free(g_alone[j]);
    }
    for (int j = 0; j < NJ; j++) cel_lora_free(l[j]);
    cel_model_free(m);
}

static void test_same_adapter_twice_and_refusals(void **state) {
    (void)state;
    cel_err_t err;
    cel_model_t *m = make_model();
    cel_lora_t *l = make_lora(m, 4, CEL_LORA_ALL, 3);
    data_t a, b;
    make_data(&a, 2, 8, 1);
    make_data(&b, 1, 12, 2);
    cel_batch_t ba = batch_of(&a), bb = batch_of(&b);
    /* alone, accumulated */
    assert_int_equal(cel_model_forward_backward(m, l, &ba, NULL, NULL, &err), CEL_OK);
    assert_int_equal(cel_model_forward_backward(m, l, &bb, NULL, NULL, &err), CEL_OK);
    float *g_acc = grads_of(l);
    cel_lora_zero_grad(l);
    /* packed: the same adapter in two jobs, plus a bad job and a base job */
    data_t bad;
    make_data(&bad, 1, 4, 3);
    bad.tok[2] = 999; /* outside the vocabulary */
    cel_model_job_t jobs[4];
    memset(jobs, 0, sizeof(jobs));
    jobs[0] = (cel_model_job_t){ .lora = l, .batch = ba };
    jobs[1] = (cel_model_job_t){ .lora = l, .batch = batch_of(&bad) };
    jobs[2] = (cel_model_job_t){ .lora = NULL, .batch = ba };
    jobs[3] = (cel_model_job_t){ .lora = l, .batch = bb };
    assert_int_equal(cel_model_run_jobs(m, jobs, 4, 1, &err), CEL_OK);
    assert_int_equal(jobs[0].rc, CEL_OK);
    assert_int_equal(jobs[1].rc, CEL_EINVAL);
    assert_non_null(strstr(jobs[1].err.msg, "vocabulary"));
    assert_int_not_equal(jobs[2].rc, CEL_OK); /* base job in a backward pass */
    assert_int_equal(jobs[3].rc, CEL_OK);
    float *g = grads_of(l);
    assert_close("accumulated grads", g_acc, g, l->n);
    free(g);
    free(g_acc);
    /* a forward-only pass may mix the base model with adapters */
    jobs[1].batch = bb;
    assert_int_equal(cel_model_run_jobs(m, jobs, 4, 0, &err), CEL_OK);
    for (int j = 0; j < 4; j++) assert_int_equal(jobs[j].rc, CEL_OK);
    double base_alone;
    assert_int_equal(cel_model_forward(m, NULL, &ba, NULL, NULL, &base_alone, &err), CEL_OK);
    assert_true(fabs(base_alone - jobs[2].loss) <= tol_rel() * fabs(base_alone) + 1e-9);
    cel_lora_free(l);
    cel_model_free(m);
}

/* One pass of a job of shape (B, T) from seed; log-probs into lp. */
static double run_one(cel_model_t *m, cel_lora_t *l, int B, int T, uint64_t seed, int backward,
                      float *lp) {
    data_t d;
    make_data(&d, B, T, seed);
    cel_model_job_t job = { .lora = l, .batch = batch_of(&d), .logprobs = lp };
    cel_err_t err;
    if (cel_model_run_jobs(m, &job, 1, backward, &err) != CEL_OK || job.rc != CEL_OK)
        fail_msg("pass %dx%d: %s", B, T, job.err.msg);
    return job.loss;
}

static void test_grown_workspace_equals_fresh(void **state) {
    (void)state;
    cel_model_t *grown = make_model(), *fresh = make_model();
    cel_lora_t *lg = make_lora(grown, 4, CEL_LORA_ALL, 7), *lf = make_lora(fresh, 4, CEL_LORA_ALL, 7);
    float lp_g[64], lp_f[64];
    /* grow it: a forward pass (one layer's activations stored), a longer one,
     * then training (every layer's), leaving its gradients zeroed */
    run_one(grown, lg, 1, 6, 1, 0, lp_g);
    size_t first = grown->ws.mem_bytes;
    run_one(grown, lg, 2, 13, 2, 0, lp_g);
    run_one(grown, lg, 4, 16, 3, 1, lp_g);
    assert_true(grown->ws.mem_bytes > first);
    cel_lora_zero_grad(lg);
    /* a smaller pass of each kind on the grown workspace, and on a fresh one */
    double a = run_one(grown, lg, 3, 9, 4, 1, lp_g);
    double b = run_one(fresh, lf, 3, 9, 4, 1, lp_f);
    assert_true(fabs(a - b) <= tol_rel() * (fabs(b) > 1 ? fabs(b) : 1));
    assert_close("logprobs, training", lp_f, lp_g, 27);
    float *gg = grads_of(lg), *gf = grads_of(lf);
    assert_close("grads", gf, gg, lf->n);
    free(gg);
    free(gf);
    run_one(grown, lg, 2, 5, 5, 0, lp_g);
    run_one(fresh, lf, 2, 5, 5, 0, lp_f);
    assert_close("logprobs, scoring", lp_f, lp_g, 10);
    cel_lora_free(lg);
    cel_lora_free(lf);
    cel_model_free(grown);
    cel_model_free(fresh);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grown_workspace_equals_fresh),
        cmocka_unit_test(test_packed_equals_alone),
        cmocka_unit_test(test_same_adapter_twice_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
