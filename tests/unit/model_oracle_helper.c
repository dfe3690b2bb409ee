/* model_oracle_helper.c -- drives the model engine for tests/integration/test_model_oracle.py.
 *
 * Usage: model_oracle_helper SPEC.json
 * The spec (written by the pytest) names a model folder, an adapter (loaded
 * from a PEFT folder, or none for full-parameter training), batches, AdamW
 * settings, a step count, texts to score and prompts to sample. Outputs land
 * in spec.out: forward.safetensors (logits/logprobs of every batch before any
 * step), grads.safetensors (gradients accumulated over all batches at step 1),
 * final/ (adapter or model after the steps) and result.json (losses, grad
 * norms, scores, sampled tokens, the device). Spec key "device" (default
 * "cpu") runs everything on that device (cel_model_set_device), key
 * "precision" ("fp32" default, "bf16") sets cel_model_set_precision; with
 * "compare_batched": true the helper also gives each batch its own fresh
 * adapter, runs them one at a time and then packed into one pass
 * (cel_model_run_jobs), and writes batched.json: {"ok", "tolerance",
 * "max_abs_diff": {loss, logprobs, grads, weights}} (diffs relative to
 * max(1, the tensor's largest value)). Not part of the library; exits 1 on
 * error.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "../../model/internal.h"
#include "../../model/model.h"
#include "../../model/safetensors.h"

static int die(const char *what, const cel_err_t *err) {
    fprintf(stderr, "model_oracle_helper: %s: %s (%s)\n", what, err ? err->msg : "",
            err ? cel_err_name(err->code) : "");
    exit(1);
}

static int32_t *int_array(json_t *a, size_t want) {
    if (!json_is_array(a) || json_array_size(a) != want) return NULL;
    int32_t *x = malloc(want * sizeof(int32_t) + 1);
    for (size_t i = 0; i < want; i++) x[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return x;
}

static float *float_array(json_t *a, size_t want) {
    if (!json_is_array(a) || json_array_size(a) != want) return NULL;
    float *x = malloc(want * sizeof(float) + 1);
    for (size_t i = 0; i < want; i++) x[i] = (float)json_number_value(json_array_get(a, i));
    return x;
}

/* The larger of acc and d; a NaN sticks (a comparison alone would skip it, and a NaN
 * result would pass every tolerance). */
static double worse(double acc, double d) { return d > acc || d != d ? d : acc; }

/* Largest |a-b| over n, divided by max(1, max|a|); NaN when any difference is NaN. */
static double rel_diff(const float *a, const float *b, size_t n) {
    double worst = 0, scale = 1;
    for (size_t i = 0; i < n; i++) {
        worst = worse(worst, fabs((double)a[i] - b[i]));
        scale = fabs(a[i]) > scale ? fabs(a[i]) : scale;
    }
    return worst / scale;
}

/* JSON has no NaN: a non-finite difference is written as 1e308 (and is never ok). */
static double json_num(double x) { return isfinite(x) ? x : 1e308; }

static float *copy_block(cel_lora_t *l, const float *block) {
    cel_err_t err;
    if (cel_device_lora_sync(l, &err) != CEL_OK) die("sync", &err);
    float *x = malloc(l->n * sizeof(float));
    memcpy(x, block, l->n * sizeof(float));
    return x;
}

/* The "compare_batched" check: nb fresh adapters, one per batch, alone then
 * packed; writes out/batched.json. */
static void compare_batched(cel_model_t *m, cel_batch_t *b, size_t nb, const cel_adamw_t *opt,
                            double tol, const char *out) {
    cel_err_t err;
    cel_lora_t **l = calloc(nb, sizeof(*l));
    cel_model_job_t *jobs = calloc(nb, sizeof(*jobs));
    double d_loss = 0, d_lp = 0, d_g = 0, d_w = 0;
    for (size_t i = 0; i < nb; i++) {
        cel_lora_config_t lc = {
            .rank = 2 + 2 * (int)(i % 3), .alpha = 8, .targets = CEL_LORA_ALL, .seed = 50 + i
        };
        if (cel_lora_new(m, &lc, &l[i], &err) != CEL_OK) die("lora_new", &err);
        for (size_t k = 0; k < l[i]->n; k++) l[i]->w[k] += 0.03f * (float)sin(0.7 * k + i);
    }
    /* Each adapter alone (keeping its results), then all packed in one pass. */
    float **lp_a = calloc(nb, sizeof(float *)), **lp_p = calloc(nb, sizeof(float *));
    float **g_a = calloc(nb, sizeof(float *)), **w0 = calloc(nb, sizeof(float *));
    double *loss_a = calloc(nb, sizeof(double));
    for (size_t i = 0; i < nb; i++) {
        size_t n = (size_t)b[i].B * b[i].T;
        lp_a[i] = malloc(n * sizeof(float));
        lp_p[i] = malloc(n * sizeof(float));
        if (cel_model_forward_backward(m, l[i], &b[i], lp_a[i], &loss_a[i], &err) != CEL_OK)
            die("alone", &err);
        g_a[i] = copy_block(l[i], l[i]->g);
        w0[i] = copy_block(l[i], l[i]->w);
        cel_lora_zero_grad(l[i]);
        jobs[i] = (cel_model_job_t){ .lora = l[i], .batch = b[i], .logprobs = lp_p[i] };
    }
    if (cel_model_run_jobs(m, jobs, (int)nb, 1, &err) != CEL_OK) die("run_jobs", &err);
    for (size_t i = 0; i < nb; i++) {
        if (jobs[i].rc != CEL_OK) die("packed job", &jobs[i].err);
        size_t n = (size_t)b[i].B * b[i].T;
        double sl = fabs(loss_a[i]) > 1 ? fabs(loss_a[i]) : 1;
        double dl = fabs(jobs[i].loss - loss_a[i]) / sl;
        d_loss = worse(d_loss, dl);
        double dp = rel_diff(lp_a[i], lp_p[i], n);
        d_lp = worse(d_lp, dp);
        float *g_p = copy_block(l[i], l[i]->g);
        double dg = rel_diff(g_a[i], g_p, l[i]->n);
        d_g = worse(d_g, dg);
        /* a step from the packed grads (on the device) vs from the lone ones (host) */
        if (cel_lora_step(l[i], opt, NULL, &err) != CEL_OK) die("step", &err);
        float *w_p = copy_block(l[i], l[i]->w);
        cel_device_lora_evict(l[i], 1, NULL);
        memcpy(l[i]->w, w0[i], l[i]->n * sizeof(float));
        memcpy(l[i]->g, g_a[i], l[i]->n * sizeof(float));
        memset(l[i]->m, 0, l[i]->n * sizeof(float));
        memset(l[i]->v, 0, l[i]->n * sizeof(float));
        l[i]->step = 0;
        if (cel_lora_step(l[i], opt, NULL, &err) != CEL_OK) die("step", &err);
        double dw = rel_diff(l[i]->w, w_p, l[i]->n);
        d_w = worse(d_w, dw);
        free(g_p);
        free(w_p);
        free(lp_a[i]);
        free(lp_p[i]);
        free(g_a[i]);
        free(w0[i]);
        cel_lora_free(l[i]);
    }
    int ok = d_loss <= tol && d_lp <= tol && d_g <= tol && d_w <= tol;
    json_t *o = json_pack("{s:b, s:f, s:{s:f, s:f, s:f, s:f}}", "ok", ok, "tolerance", tol,
                          "max_abs_diff", "loss", json_num(d_loss), "logprobs", json_num(d_lp),
                          "grads", json_num(d_g), "weights", json_num(d_w));
    char path[4096];
    snprintf(path, sizeof(path), "%s/batched.json", out);
    json_dump_file(o, path, JSON_INDENT(1));
    json_decref(o);
    free(lp_a), free(lp_p), free(g_a), free(w0), free(loss_a), free(l), free(jobs);
}

static float getf(json_t *o, const char *k, float dflt) {
    json_t *v = json_object_get(o, k);
    return v ? (float)json_number_value(v) : dflt;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: model_oracle_helper SPEC.json\n");
        return 2;
    }
    json_error_t je;
    json_t *spec = json_load_file(argv[1], 0, &je);
    if (!spec) {
        fprintf(stderr, "spec: %s\n", je.text);
        return 1;
    }
    cel_err_t err = { 0 };
    const char *out = json_string_value(json_object_get(spec, "out"));
    json_t *th = json_object_get(spec, "threads");
    if (th) cel_model_set_threads((int)json_integer_value(th));
    cel_model_t *m;
    if (cel_model_load(json_string_value(json_object_get(spec, "model")), &m, &err) != CEL_OK)
        die("load model", &err);
    const char *device = json_string_value(json_object_get(spec, "device"));
    char chosen[256] = "cpu";
    if (device && cel_model_set_device(m, device, chosen, sizeof(chosen), &err) != CEL_OK)
        die("device", &err);
    const char *precision = json_string_value(json_object_get(spec, "precision"));
    if (precision && cel_model_set_precision(m, precision, &err) != CEL_OK) die("precision", &err);
    cel_lora_t *lora = NULL;
    json_t *jl = json_object_get(spec, "lora");
    if (jl) {
        if (cel_lora_load(m, json_string_value(json_object_get(jl, "load")), &lora, &err))
            die("load adapter", &err);
    } else if (cel_model_train_full(m, &err) != CEL_OK) {
        die("train_full", &err);
    }
    /* batches */
    json_t *jb = json_object_get(spec, "batches");
    size_t nb = json_array_size(jb);
    cel_batch_t *b = calloc(nb, sizeof(*b));
    for (size_t i = 0; i < nb; i++) {
        json_t *o = json_array_get(jb, i);
        b[i].B = (int)json_integer_value(json_object_get(o, "B"));
        b[i].T = (int)json_integer_value(json_object_get(o, "T"));
        size_t n = (size_t)b[i].B * b[i].T;
        b[i].tokens = int_array(json_object_get(o, "tokens"), n);
        b[i].targets = int_array(json_object_get(o, "targets"), n);
        b[i].weights = float_array(json_object_get(o, "weights"), n);
        b[i].lens = int_array(json_object_get(o, "lens"), b[i].B);
    }
    int V = cel_model_vocab_size(m);
    json_t *res = json_object();
    /* forward of every batch before any step */
    {
        cel_st_entry_t *e = calloc(2 * nb, sizeof(*e));
        char(*names)[32] = calloc(2 * nb, 32);
        json_t *losses = json_array();
        for (size_t i = 0; i < nb; i++) {
            size_t n = (size_t)b[i].B * b[i].T;
            float *logits = malloc(n * V * sizeof(float)), *lp = malloc(n * sizeof(float));
            double loss;
            if (cel_model_forward(m, lora, &b[i], logits, lp, &loss, &err) != CEL_OK)
                die("forward", &err);
            json_array_append_new(losses, json_real(loss));
            snprintf(names[2 * i], 32, "logits_%zu", i);
            snprintf(names[2 * i + 1], 32, "logprobs_%zu", i);
            e[2 * i] = (cel_st_entry_t){
                .name = names[2 * i], .ndim = 3, .shape = { b[i].B, b[i].T, V }, .data = logits
            };
            e[2 * i + 1] = (cel_st_entry_t){
                .name = names[2 * i + 1], .ndim = 2, .shape = { b[i].B, b[i].T }, .data = lp
            };
        }
        char path[4096];
        snprintf(path, sizeof(path), "%s/forward.safetensors", out);
        if (cel_safetensors_write(path, e, 2 * nb, NULL, 0, 0, &err)) die("write forward", &err);
        for (size_t i = 0; i < 2 * nb; i++) free((void *)e[i].data);
        free(e);
        free(names);
        json_object_set_new(res, "forward_loss", losses);
    }
    /* training steps: forward_backward over all batches, then AdamW */
    json_t *ja = json_object_get(spec, "adamw");
    cel_adamw_t opt = cel_model_adamw_defaults();
    opt.lr = getf(ja, "lr", opt.lr);
    opt.beta1 = getf(ja, "beta1", opt.beta1);
    opt.beta2 = getf(ja, "beta2", opt.beta2);
    opt.eps = getf(ja, "eps", opt.eps);
    opt.weight_decay = getf(ja, "weight_decay", opt.weight_decay);
    opt.grad_clip = getf(ja, "grad_clip", 0);
    int steps = (int)json_integer_value(json_object_get(spec, "steps"));
    json_t *losses = json_array(), *norms = json_array();
    for (int s = 0; s < steps; s++) {
        double total = 0;
        for (size_t i = 0; i < nb; i++) {
            double loss;
            if (cel_model_forward_backward(m, lora, &b[i], NULL, &loss, &err) != CEL_OK)
                die("forward_backward", &err);
            total += loss;
        }
        json_array_append_new(losses, json_real(total));
        if (s == 0) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/grads.safetensors", out);
            int rc = lora ? cel_lora_write(lora, path, CEL_BLOCK_GRADS, NULL, NULL, 0, &err)
                          : cel_model_write(m, path, CEL_BLOCK_GRADS, &err);
            if (rc != CEL_OK) die("write grads", &err);
        }
        float gn;
        int rc = lora ? cel_lora_step(lora, &opt, &gn, &err) : cel_model_step(m, &opt, &gn, &err);
        if (rc != CEL_OK) die("step", &err);
        json_array_append_new(norms, json_real(gn));
    }
    json_object_set_new(res, "loss", losses);
    json_object_set_new(res, "grad_norm", norms);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/final", out);
    mkdir(dir, 0755);
    const char *meta[] = { "last_task", "task-123" };
    int rc = lora ? cel_lora_save(lora, dir, "oracle-base", meta, 1, &err)
                  : cel_model_save(m, dir, &err);
    if (rc != CEL_OK) die("save", &err);
    /* scoring */
    json_t *jsc = json_object_get(spec, "score"), *scores = json_array();
    for (size_t i = 0; i < json_array_size(jsc); i++) {
        json_t *t = json_array_get(jsc, i);
        int n = (int)json_array_size(t);
        int32_t *ids = int_array(t, n);
        float *tl = malloc(n * sizeof(float));
        cel_score_t sc;
        if (cel_model_score(m, lora, ids, n, tl, &sc, &err) != CEL_OK) die("score", &err);
        json_t *arr = json_array();
        for (int k = 0; k < n - 1; k++) json_array_append_new(arr, json_real(tl[k]));
        json_array_append_new(scores, json_pack("{s:f, s:f, s:f, s:o}", "logprob", sc.logprob,
                                                "mean_logprob", sc.mean_logprob, "perplexity",
                                                sc.perplexity, "token_logprobs", arr));
        free(ids);
        free(tl);
    }
    json_object_set_new(res, "score", scores);
    /* sampling */
    json_t *jsm = json_object_get(spec, "sample");
    if (jsm) {
        json_t *pr = json_object_get(jsm, "prompts");
        int np = (int)json_array_size(pr);
        int32_t **prompts = calloc(np, sizeof(*prompts));
        int32_t *lens = calloc(np, sizeof(int32_t));
        for (int i = 0; i < np; i++) {
            lens[i] = (int)json_array_size(json_array_get(pr, i));
            prompts[i] = int_array(json_array_get(pr, i), lens[i]);
        }
        cel_sample_params_t sp = { .max_tokens =
                                       (int)json_integer_value(json_object_get(jsm, "max_tokens")),
                                   .temperature = getf(jsm, "temperature", 0),
                                   .top_k = (int)json_integer_value(json_object_get(jsm, "top_k")),
                                   .top_p = getf(jsm, "top_p", 1),
                                   .seed =
                                       (uint64_t)json_integer_value(json_object_get(jsm, "seed")),
                                   .stop_ids = (const int32_t[]){ -1 },
                                   .n_stop_ids = 1 };
        cel_sampler_t *smp;
        if (cel_sampler_new(m, lora, np, (const int32_t *const *)prompts, lens, &sp, &smp, &err))
            die("sampler", &err);
        json_t *outs = json_array();
        for (int i = 0; i < np; i++) json_array_append_new(outs, json_array());
        int32_t *toks = malloc(np * sizeof(int32_t));
        int live;
        do {
            live = cel_sampler_step(smp, toks, &err);
            if (live < 0) die("sample step", &err);
            for (int i = 0; i < np; i++)
                if (toks[i] >= 0)
                    json_array_append_new(json_array_get(outs, i), json_integer(toks[i]));
        } while (live > 0);
        json_object_set_new(res, "sample", outs);
        cel_sampler_free(smp);
        free(toks);
        for (int i = 0; i < np; i++) free(prompts[i]);
        free(prompts);
        free(lens);
    }
    if (json_is_true(json_object_get(spec, "compare_batched")) && lora)
        compare_batched(m, b, nb, &opt, cel_model_on_gpu(m) ? 3e-2 : 1e-4, out);
    json_object_set_new(res, "device", json_string(chosen));
    char path[4096];
    snprintf(path, sizeof(path), "%s/result.json", out);
    json_dump_file(res, path, JSON_INDENT(1));
    json_decref(res);
    for (size_t i = 0; i < nb; i++) {
        free((void *)b[i].tokens);
        free((void *)b[i].targets);
        free((void *)b[i].weights);
        free((void *)b[i].lens);
    }
    free(b);
    cel_lora_free(lora);
    cel_model_free(m);
    json_decref(spec);
    return 0;
}
