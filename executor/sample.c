/* sample.c -- the lora.sample task: continues prompts with or without an adapter.
 *
 * The prompts are encoded (bos first), checked against --max-input-tokens and
 * the model's positions, and sampled together by the model's sampler
 * (cel_sampler_*), which cuts each text at its first stop string. The soft time
 * limit is checked between steps; progress goes out once per step.
 * Executor processes only; blocking; one task at a time.
 */
#include "lm_internal.h"

#include <stdlib.h>
#include <string.h>

static cel_lm_state_t *const g = &cel_lm_state;

typedef struct sample_req {
    cel_sample_params_t p;
    const char *stop[CEL_TASKS_MAX_STOPS]; /* borrowed from the bound sampling_params */
    size_t stop_len[CEL_TASKS_MAX_STOPS];
    int nstops;
} sample_req_t;

/* sampling_params as bound: every key present, each in the table's range. */
static void parse_sampling(json_t *p, sample_req_t *r) {
    memset(r, 0, sizeof(*r));
    json_t *seed = json_object_get(p, "seed");
    r->p.max_tokens = (int)json_integer_value(json_object_get(p, "max_tokens"));
    r->p.temperature = (float)json_number_value(json_object_get(p, "temperature"));
    r->p.top_p = (float)json_number_value(json_object_get(p, "top_p"));
    r->p.top_k = (int)json_integer_value(json_object_get(p, "top_k"));
    r->p.seed = json_is_null(seed) ? cel_lm_random_seed() : (uint64_t)json_integer_value(seed);
    json_t *stops = json_object_get(p, "stop"), *st; /* null, or at most the table's max */
    size_t i;
    json_array_foreach(stops, i, st) {
        if (i == CEL_TASKS_MAX_STOPS) break;
        r->stop[i] = json_string_value(st);
        r->stop_len[i] = json_string_length(st);
        r->nstops = (int)i + 1;
    }
}

/* One sequence's generated ids and its decoded (and stop-cut) text. */
typedef struct gen {
    int32_t *ids;
    size_t n;
    char *text;
    size_t len;
} gen_t;

/* Decodes q; cuts its text at the earliest stop string. Returns 1 on a stop. */
static int decode_cut(gen_t *q, const sample_req_t *r, int *rc, cel_err_t *err) {
    free(q->text);
    q->text = NULL;
    *rc = cel_tokenizer_decode(g->tok, q->ids, q->n, &q->text, &q->len, err);
    if (*rc != CEL_OK) return 0;
    return cel_sampler_cut_stops(q->text, &q->len, r->stop, r->stop_len, r->nstops);
}

static int run_sampler(cel_call_t *call, cel_lora_t *lora, int np, int32_t **pids, int32_t *lens,
                       sample_req_t *r, gen_t *gens) {
    cel_sampler_t *s = NULL;
    cel_err_t err;
    int32_t *out = malloc((size_t)np * sizeof(int32_t));
    if (!out) return CEL_ENOMEM;
    int rc =
        cel_sampler_new(g->model, lora, np, (const int32_t *const *)pids, lens, &r->p, &s, &err);
    if (rc != CEL_OK) rc = cel_lm_model_error(call, rc, &err);
    int nstops = r->nstops;
    for (long step = 0; rc == CEL_OK;) {
        if (cel_call_soft_limit_hit(call)) {
            rc = cel_call_raise_soft_limit(call);
            break;
        }
        int live = cel_sampler_step(s, out, &err);
        if (live < 0) {
            rc = cel_lm_model_error(call, live, &err);
            break;
        }
        for (int i = 0; i < np && rc == CEL_OK; i++) {
            if (out[i] < 0 || cel_sampler_status(s, i) == 1) continue; /* done, or a stop id */
            gen_t *q = &gens[i];
            if (q->n < (size_t)r->p.max_tokens) q->ids[q->n++] = out[i];
            if (nstops && decode_cut(q, r, &rc, &err) && cel_sampler_status(s, i) == 0) {
                cel_sampler_stop(s, i);
                live--;
            }
            if (rc != CEL_OK) rc = cel_lm_model_error(call, rc, &err);
        }
        cel_lm_progress(++step, r->p.max_tokens);
        if (live <= 0) break;
    }
    for (int i = 0; rc == CEL_OK && i < np; i++)
        if (!gens[i].text || !nstops) {
            decode_cut(&gens[i], r, &rc, &err);
            if (rc != CEL_OK) rc = cel_lm_model_error(call, rc, &err);
        }
    cel_sampler_free(s);
    free(out);
    return rc;
}

/* lora.sample(adapter_id, prompts, sampling_params=None): adapter_id None is
 * the base model; prompts a list of str (a bare str was made one). */
int cel_lm_sample(cel_call_t *call) {
    json_t **v = call->argv;
    sample_req_t r;
    parse_sampling(v[2], &r);
    json_t *prompts = v[1];
    int np = (int)json_array_size(prompts);
    cel_lora_t *lora = NULL;
    int rc = cel_lm_lora(call, v[0], &lora);
    int32_t **pids = rc == CEL_OK ? calloc((size_t)np, sizeof(*pids)) : NULL;
    int32_t *lens = rc == CEL_OK ? calloc((size_t)np, sizeof(*lens)) : NULL;
    gen_t *gens = rc == CEL_OK ? calloc((size_t)np, sizeof(*gens)) : NULL;
    if (rc == CEL_OK && (!pids || !lens || !gens)) rc = CEL_ENOMEM;
    int maxT = g->model ? cel_model_max_seq(g->model) : 0;
    for (int i = 0; rc == CEL_OK && i < np; i++) {
        json_t *p = json_array_get(prompts, (size_t)i);
        size_t n;
        rc = cel_lm_encode(call, p, 1, "prompt", &pids[i], &n);
        if (rc == CEL_OK && n == 0)
            rc = cel_call_fail(call, "ValueError", "prompts[%d] is empty and the model has no bos",
                               i);
        if (rc == CEL_OK && n > (size_t)g->max_input)
            rc = cel_call_fail(call, "ValueError",
                               "prompts[%d] is %zu tokens; the limit is %d "
                               "(--max-input-tokens)",
                               i, n, g->max_input);
        if (rc == CEL_OK && n + (size_t)r.p.max_tokens > (size_t)maxT)
            rc = cel_call_fail(call, "ValueError",
                               "prompts[%d] (%zu tokens) + max_tokens %d passes the "
                               "model's %d positions",
                               i, n, r.p.max_tokens, maxT);
        lens[i] = (int32_t)n;
        if (rc == CEL_OK && !(gens[i].ids = malloc((size_t)r.p.max_tokens * sizeof(int32_t))))
            rc = CEL_ENOMEM;
    }
    if (rc == CEL_OK) rc = run_sampler(call, lora, np, pids, lens, &r, gens);
    if (rc == CEL_OK) {
        json_t *list = json_array();
        for (int i = 0; list && i < np; i++)
            if (json_array_append_new(list, json_stringn_nocheck(gens[i].text, gens[i].len))) {
                json_decref(list);
                list = NULL;
            }
        rc = cel_call_succeed(call, list ? json_pack("{s:o}", "samples", list) : NULL);
    }
    for (int i = 0; i < np; i++) {
        if (pids) free(pids[i]);
        if (gens) {
            free(gens[i].ids);
            free(gens[i].text);
        }
    }
    free(pids);
    free(lens);
    free(gens);
    return cel_call_finish(rc);
}
