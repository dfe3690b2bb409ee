/* train.c -- forward passes: model.score and lora.forward_backward, packed, and lora.optim_step.
 *
 * score and forward_backward are prepared (examples built and checked against
 * what only the executor knows: vocabulary, --max-input-tokens, a total token
 * cap) and then run as packed passes: the base model runs once over the rows of
 * every waiting task, each row with its own adapter (cel_model_run_jobs), and
 * each task gets the result it gets alone. A task run alone is a pack of one.
 * Gradients accumulate in the executor's memory copy of the adapter;
 * lora.optim_step applies them and checkpoints through executor/adapters.c
 * before it returns.
 * Executor processes only; blocking; one task (or one pack) at a time.
 */
#include "lm_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../protocol/protocol.h"

/* Limits besides the task table's (protocol/tasks.h) and --max-input-tokens. */
#define MT_MAX_TOTAL_TOKENS (256 * 1024) /* tokens in one forward_backward, all examples */
#define MT_MAX_BATCH        32           /* sequences in one pass */

static cel_lm_state_t *const g = &cel_lm_state;

/* ---- model.score, and the pending task of a packed pass ---- */

/* A model task prepared for a packed pass (see lm.h): forward_backward
 * keeps its checked examples and packs them a chunk at a time; score is one
 * forward job. rc is CEL_OK while it runs, else the call already has its
 * result (an exception, or CEL_ENOMEM). */
enum { PK_SCORE, PK_FB };
struct cel_lm_pending {
    cel_call_t *call;
    int kind, rc, done;
    /* score */
    int32_t *ids;
    size_t nids;
    float *lp;
    cel_lora_t *lora;
    /* forward_backward */
    const char *task_id; /* borrowed from the executor until the result is sent */
    cel_adapter_t *a;
    struct example *ex;
    size_t n, next;
    double wsum, loss_sum;
    long trained;
    int32_t *tok, *tgt, *lens; /* this round's chunk */
    float *w;
    size_t chunk_end;
    double prep_ms, pass_ms; /* CELERIAC_PHASE_TIMES: building the examples; the passes */
};

/* model.score(text, adapter_id=None) */
static int prepare_score(cel_call_t *call, cel_lm_pending_t *p) {
    json_t **v = call->argv;
    int rc = cel_lm_lora(call, v[1], &p->lora);
    if (rc == CEL_OK) rc = cel_lm_encode(call, v[0], 1, "text", &p->ids, &p->nids);
    if (rc == CEL_OK && p->nids < 2)
        rc = cel_call_fail(call, "ValueError", "text has no token to score (it is empty)");
    if (rc == CEL_OK && p->nids > (size_t)g->max_input)
        rc = cel_call_fail(call, "ValueError",
                           "text is %zu tokens; the limit is %d (--max-input-tokens)", p->nids,
                           g->max_input);
    p->lp = rc == CEL_OK ? malloc((p->nids - 1) * sizeof(float)) : NULL;
    if (rc == CEL_OK && !p->lp) rc = CEL_ENOMEM;
    return rc;
}

/* The score task's result from its log-probs. */
static int finish_score(cel_lm_pending_t *p, double loss) {
    int n = (int)p->nids - 1;
    json_t *tl = json_array();
    for (int i = 0; tl && i < n; i++)
        if (json_array_append_new(tl, cel_json_float(p->lp[i]))) {
            json_decref(tl);
            tl = NULL;
        }
    return cel_call_succeed(
        p->call, tl ? json_pack("{s:i, s:o, s:o, s:o, s:o}", "tokens", n, "logprob",
                                cel_json_float(-loss), "mean_logprob", cel_json_float(-loss / n),
                                "perplexity", cel_json_float(exp(loss / n)), "token_logprobs", tl)
                    : NULL);
}

/* model.score and lora.forward_backward run alone: a pack of one. */
int cel_lm_run_alone(cel_call_t *call) {
    cel_lm_pending_t *p = NULL;
    int rc = cel_lm_prepare(call, &p);
    if (rc == CEL_OK && p) rc = cel_lm_run(&p, 1, CEL_LM_BATCH_TOKENS);
    cel_lm_pending_free(p);
    return rc;
}

/* ---- lora.forward_backward ---- */

/* One training sequence: len input slots with their targets and weights. */
typedef struct example {
    int32_t *in, *tgt;
    float *w;
    int len;
} example_t;

static void examples_free(example_t *ex, size_t n) {
    for (size_t i = 0; ex && i < n; i++) {
        free(ex[i].in);
        free(ex[i].tgt);
        free(ex[i].w);
    }
    free(ex);
}

/* A growing token sequence with a loss weight per token (w[i]: weight of
 * predicting ids[i] from ids[<i]). */
typedef struct seqbuf {
    int32_t *ids;
    float *w;
    size_t n, cap;
} seqbuf_t;

static int seq_push(seqbuf_t *s, const int32_t *ids, size_t n, float w) {
    if (s->n + n > s->cap) {
        size_t cap = s->cap ? s->cap : 64;
        while (cap < s->n + n) cap *= 2;
        int32_t *ni = realloc(s->ids, cap * sizeof(int32_t));
        if (!ni) return CEL_ENOMEM;
        s->ids = ni;
        float *nw = realloc(s->w, cap * sizeof(float));
        if (!nw) return CEL_ENOMEM;
        s->w = nw;
        s->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        s->ids[s->n + i] = ids[i];
        s->w[s->n + i] = w;
    }
    s->n += n;
    return CEL_OK;
}

/* Appends the encoding of text (a C string) to s with weight w. */
static int seq_text(cel_call_t *call, seqbuf_t *s, const char *text, size_t len, float w) {
    int32_t *ids;
    size_t n;
    cel_err_t err;
    int rc = cel_tokenizer_encode(g->tok, text, len, 0, &ids, &n, &err);
    if (rc == CEL_ENOMEM) return rc;
    if (rc != CEL_OK)
        return cel_call_fail(call, "ValueError", "text cannot be tokenized: %s", err.msg);
    rc = seq_push(s, ids, n, w);
    free(ids);
    return rc;
}

/* Builds a chat example: ChatML (<|im_start|>role\ncontent<|im_end|>\n) when the
 * tokenizer has those tokens, else "role: content\n" lines; weight 1 on each
 * assistant turn's content and end marker, 0 elsewhere. */
static int build_chat(cel_call_t *call, size_t idx, json_t *msgs, seqbuf_t *s) {
    size_t nm = json_array_size(msgs);
    int chatml = g->im_start >= 0 && g->im_end >= 0, rc = CEL_OK;
    int32_t bos = cel_tokenizer_bos(g->tok);
    if (bos >= 0 && (rc = seq_push(s, &bos, 1, 0)) != CEL_OK) return rc;
    for (size_t i = 0; i < nm && rc == CEL_OK; i++) {
        json_t *m = json_array_get(msgs, i); /* {role: one of the table's, content: str} */
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        size_t cl = json_string_length(content);
        float w = strcmp(json_string_value(role), "assistant") == 0 ? 1.0f : 0.0f;
        char head[64]; /* the role and its separator, tokenized together */
        int hl = snprintf(head, sizeof(head), chatml ? "%s\n" : "%s: ", json_string_value(role));
        if (hl < 0 || (size_t)hl >= sizeof(head)) /* the table's roles are short */
            return cel_call_fail(call, "ValueError", "example %zu, message %zu: role is too long",
                                 idx, i);
        if (chatml) rc = seq_push(s, &g->im_start, 1, 0);
        if (rc == CEL_OK) rc = seq_text(call, s, head, (size_t)hl, 0);
        if (rc == CEL_OK) rc = seq_text(call, s, json_string_value(content), cl, w);
        if (rc == CEL_OK && chatml) rc = seq_push(s, &g->im_end, 1, w);
        if (rc == CEL_OK) rc = seq_text(call, s, "\n", 1, chatml ? 0 : w);
    }
    return rc;
}

/* Checks a list of ints (as bound: int32 >= 0) against the vocabulary.
 * OUT: *ids (malloc'd). */
static int int_list(cel_call_t *call, size_t idx, json_t *v, const char *key, int32_t **ids) {
    *ids = NULL;
    size_t n = json_array_size(v);
    int32_t *a = malloc((n ? n : 1) * sizeof(int32_t));
    if (!a) return CEL_ENOMEM;
    int V = cel_model_vocab_size(g->model);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (json_integer_value(e) >= V) {
            free(a);
            return cel_call_fail(call, "ValueError",
                                 "example %zu: %s[%zu] = %lld is not a token id "
                                 "(0 <= id < %d)",
                                 idx, key, i, (long long)json_integer_value(e), V);
        }
        a[i] = (int32_t)json_integer_value(e);
    }
    *ids = a;
    return CEL_OK;
}

/* A datum {"tokens", "target_tokens", "weights"} as bound (weights None: all 1). */
static int build_datum(cel_call_t *call, size_t idx, json_t *d, example_t *ex) {
    json_t *t = json_object_get(d, "tokens"), *tt = json_object_get(d, "target_tokens");
    json_t *w = json_object_get(d, "weights");
    if (json_is_null(w)) w = NULL;
    size_t n = json_array_size(t);
    if (n > (size_t)g->max_input)
        return cel_call_fail(call, "ValueError",
                             "example %zu is %zu tokens; a datum needs 1 to %d "
                             "(--max-input-tokens)",
                             idx, n, g->max_input);
    int rc = int_list(call, idx, t, "tokens", &ex->in);
    if (rc == CEL_OK) rc = int_list(call, idx, tt, "target_tokens", &ex->tgt);
    if (rc == CEL_OK && json_array_size(tt) != n)
        rc = cel_call_fail(call, "ValueError", "example %zu: target_tokens has %zu ids, tokens %zu",
                           idx, json_array_size(tt), n);
    if (rc == CEL_OK && w && json_array_size(w) != n)
        rc = cel_call_fail(call, "ValueError", "example %zu: weights has %zu values, tokens %zu",
                           idx, json_array_size(w), n);
    if (rc == CEL_OK && !(ex->w = malloc(n * sizeof(float)))) rc = CEL_ENOMEM;
    for (size_t i = 0; rc == CEL_OK && i < n; i++) /* finite and >= 0, as bound */
        ex->w[i] = w ? (float)json_number_value(json_array_get(w, i)) : 1.0f;
    ex->len = (int)n;
    return rc;
}

/* One example of data as bound (one of the table's forms): {"text"}, a chat
 * list, {"messages": chat}, or a datum. */
static int build_example(cel_call_t *call, size_t idx, json_t *d, example_t *ex) {
    seqbuf_t s = { 0 };
    int rc = CEL_OK;
    json_t *text = json_object_get(d, "text");
    if (json_object_get(d, "tokens")) return build_datum(call, idx, d, ex);
    if (text) {
        /* bos + text + eos, loss on every next token (as celeriac-lm train) */
        int32_t bos = cel_tokenizer_bos(g->tok);
        if (bos >= 0) rc = seq_push(&s, &bos, 1, 0);
        if (rc == CEL_OK)
            rc = seq_text(call, &s, json_string_value(text), json_string_length(text), 1);
        if (rc == CEL_OK && g->eos >= 0) rc = seq_push(&s, &g->eos, 1, 1);
    } else {
        rc = build_chat(call, idx, json_is_array(d) ? d : json_object_get(d, "messages"), &s);
    }
    if (rc == CEL_OK && s.n < 2)
        rc = cel_call_fail(call, "ValueError", "example %zu has no token to predict (it is empty)",
                           idx);
    if (rc == CEL_OK && s.n > (size_t)g->max_input)
        rc = cel_call_fail(call, "ValueError",
                           "example %zu is %zu tokens; the limit is %d "
                           "(--max-input-tokens)",
                           idx, s.n, g->max_input);
    if (rc == CEL_OK) {
        size_t n = s.n - 1;
        ex->in = malloc(n * sizeof(int32_t));
        ex->tgt = malloc(n * sizeof(int32_t));
        ex->w = malloc(n * sizeof(float));
        if (!ex->in || !ex->tgt || !ex->w) rc = CEL_ENOMEM;
        for (size_t i = 0; rc == CEL_OK && i < n; i++) {
            ex->in[i] = s.ids[i];
            ex->tgt[i] = s.ids[i + 1];
            ex->w[i] = s.w[i + 1];
        }
        ex->len = (int)n;
    }
    free(s.ids);
    free(s.w);
    return rc;
}

/* Builds p's next chunk of examples into its batch arrays (examples while the
 * padded chunk fits CEL_LM_BATCH_TOKENS and MT_MAX_BATCH; an example longer than
 * that runs alone from its own arrays). OUT: *batch. */
static void next_chunk(cel_lm_pending_t *p, cel_batch_t *batch) {
    example_t *ex = p->ex;
    size_t i = p->next, j = i;
    int T = 0;
    while (j < p->n && j - i < MT_MAX_BATCH) {
        int nt = ex[j].len > T ? ex[j].len : T;
        if (j > i && (size_t)nt * (j - i + 1) > CEL_LM_BATCH_TOKENS) break;
        T = nt;
        j++;
    }
    int B = (int)(j - i);
    int32_t *bt = p->tok, *bg = p->tgt;
    float *bw = p->w;
    if ((size_t)B * T > CEL_LM_BATCH_TOKENS) {
        bt = ex[i].in, bg = ex[i].tgt, bw = ex[i].w;
    } else {
        for (int b = 0; b < B; b++) {
            const example_t *e = &ex[i + (size_t)b];
            memcpy(bt + (size_t)b * T, e->in, (size_t)e->len * sizeof(int32_t));
            memcpy(bg + (size_t)b * T, e->tgt, (size_t)e->len * sizeof(int32_t));
            memcpy(bw + (size_t)b * T, e->w, (size_t)e->len * sizeof(float));
            for (int t = e->len; t < T; t++) {
                bt[(size_t)b * T + t] = 0;
                bg[(size_t)b * T + t] = 0;
                bw[(size_t)b * T + t] = 0;
            }
        }
    }
    for (int b = 0; b < B; b++) p->lens[b] = ex[i + (size_t)b].len;
    *batch = (cel_batch_t){
        .B = B, .T = T, .tokens = bt, .targets = bg, .weights = bw, .lens = p->lens
    };
    p->chunk_end = j;
}

/* lora.forward_backward(adapter_id, data, loss_fn="cross_entropy"): loss_fn is
 * the table's one choice, data its examples. */
static int prepare_fb(cel_call_t *call, cel_lm_pending_t *p) {
    json_t **v = call->argv;
    size_t n = json_array_size(v[1]);
    int rc = cel_lm_adapter(call, v[0], &p->a);
    p->ex = rc == CEL_OK ? calloc(n, sizeof(*p->ex)) : NULL;
    if (rc == CEL_OK && !p->ex) rc = CEL_ENOMEM;
    p->n = p->ex ? n : 0;
    /* everything is checked before the first pass, so a bad example changes nothing */
    size_t total = 0;
    for (size_t i = 0; rc == CEL_OK && i < n; i++) {
        rc = build_example(call, i, json_array_get(v[1], i), &p->ex[i]);
        if (rc != CEL_OK) break;
        total += (size_t)p->ex[i].len;
        for (int t = 0; t < p->ex[i].len; t++) {
            p->wsum += p->ex[i].w[t];
            p->trained += p->ex[i].w[t] > 0;
        }
        if (total > MT_MAX_TOTAL_TOKENS)
            rc = cel_call_fail(call, "ValueError",
                               "data is more than %d tokens in all; split it over "
                               "several forward_backward calls",
                               MT_MAX_TOTAL_TOKENS);
    }
    if (rc == CEL_OK && !(p->wsum > 0))
        rc = cel_call_fail(call, "ValueError",
                           "no token of data has a positive loss weight (a chat "
                           "needs an assistant message)");
    /* this process becomes (or stays) the holder of the adapter's gradients: only
     * for data that will run, so a refused call leaves no idle hold behind */
    p->task_id = g->task_id;
    if (rc == CEL_OK) rc = cel_lm_hold(call, v[0], &p->a, p->task_id);
    if (rc == CEL_OK) {
        p->tok = malloc(CEL_LM_BATCH_TOKENS * sizeof(int32_t));
        p->tgt = malloc(CEL_LM_BATCH_TOKENS * sizeof(int32_t));
        p->w = malloc(CEL_LM_BATCH_TOKENS * sizeof(float));
        p->lens = malloc(MT_MAX_BATCH * sizeof(int32_t));
        if (!p->tok || !p->tgt || !p->w || !p->lens) rc = CEL_ENOMEM;
    }
    return rc;
}

/* A forward_backward task failed after some passes: half-accumulated
 * gradients would make the next step wrong, so they all go (and with them the
 * hold on the adapter). Those of earlier calls that succeeded are not dropped
 * silently: the next call that needs them reports them lost. */
static void fb_abort(cel_lm_pending_t *p) {
    if (cel_adapters_grad_count(p->a) > 0) cel_adapters_forfeit(g->store, p->a);
    else cel_adapters_release(g->store, p->a);
}

int cel_lm_prepare(cel_call_t *call, cel_lm_pending_t **out) {
    *out = NULL;
    cel_lm_pending_t *p = calloc(1, sizeof(*p));
    if (!p) return CEL_ENOMEM;
    p->call = call;
    double t0 = cel_adapters_now_ms();
    int rc;
    if (strcmp(call->name, "model.score") == 0) {
        p->kind = PK_SCORE;
        rc = prepare_score(call, p);
    } else if (strcmp(call->name, "lora.forward_backward") == 0) {
        p->kind = PK_FB;
        rc = prepare_fb(call, p);
    } else { /* a table entry marked batchable that this file cannot pack */
        rc = cel_call_fail(call, "NotImplementedError", "task %s cannot be packed", call->name);
    }
    if (rc != CEL_OK) {
        cel_lm_pending_free(p);
        return cel_call_finish(rc);
    }
    p->prep_ms = cel_adapters_now_ms() - t0;
    *out = p;
    return CEL_OK;
}

/* Queues adapter id's gradients to be written ahead when the executor is next
 * idle (cel_lm_idle), once this result is on its way. */
static void write_ahead_later(const char *id) {
    for (int i = 0; i < g->n_ahead; i++)
        if (strcmp(g->ahead[i], id) == 0) return;
    if (g->n_ahead == (int)(sizeof(g->ahead) / sizeof(g->ahead[0]))) return; /* a hint only */
    snprintf(g->ahead[g->n_ahead++], sizeof(g->ahead[0]), "%s", id);
}

/* Adds p's next job to the pass being built if the padded pass stays within
 * max_tokens (the first job always fits). *B, *T: the pass so far. */
static int add_job(cel_lm_pending_t *p, cel_model_job_t *job, int *B, int *T, long max_tokens) {
    cel_batch_t b;
    if (p->kind == PK_SCORE) {
        b = (cel_batch_t){ .B = 1, .T = (int)p->nids - 1, .tokens = p->ids, .targets = p->ids + 1 };
    } else {
        next_chunk(p, &b);
    }
    int nb = *B + b.B, nt = b.T > *T ? b.T : *T;
    if (*B > 0 && (long)nb * nt > max_tokens) return 0;
    *B = nb, *T = nt;
    *job = (cel_model_job_t){ .lora = p->kind == PK_SCORE ? p->lora : cel_adapters_lora(p->a),
                              .batch = b,
                              .logprobs = p->kind == PK_SCORE ? p->lp : NULL };
    return 1;
}

/* One packed pass over the jobs of kind `kind` that fit; returns how many ran. */
static int run_round(cel_lm_pending_t **ps, int n, int kind, long max_tokens, cel_model_job_t *jobs,
                     int *who) {
    int k = 0, B = 0, T = 0;
    for (int i = 0; i < n; i++) {
        cel_lm_pending_t *p = ps[i];
        if (p->kind != kind || p->rc != CEL_OK || p->done) continue;
        if (cel_call_soft_limit_hit(p->call)) {
            p->rc = cel_call_raise_soft_limit(p->call);
            if (p->kind == PK_FB) fb_abort(p);
            continue;
        }
        if (!add_job(p, &jobs[k], &B, &T, max_tokens)) continue;
        who[k++] = i;
    }
    if (k == 0) return 0;
    cel_err_t err;
    cel_err_clear(&err);
    double t0 = cel_adapters_now_ms();
    int rc = cel_model_run_jobs(g->model, jobs, k, kind == PK_FB, &err);
    (void)rc; /* a failed pass gives every job its error */
    double pass_ms = cel_adapters_now_ms() - t0;
    for (int j = 0; j < k; j++) ps[who[j]]->pass_ms += pass_ms; /* a shared pass counts for each */
    for (int j = 0; j < k; j++) {
        cel_lm_pending_t *p = ps[who[j]];
        if (jobs[j].rc != CEL_OK) {
            p->rc = cel_lm_model_error(p->call, jobs[j].rc, &jobs[j].err);
            if (p->kind == PK_FB) fb_abort(p);
            continue;
        }
        if (p->kind == PK_SCORE) {
            p->done = 1;
            p->rc = finish_score(p, jobs[j].loss);
            continue;
        }
        p->loss_sum += jobs[j].loss;
        p->next = p->chunk_end;
        if (n == 1) cel_lm_progress((long)p->next, (long)p->n);
        if (p->next == p->n) {
            p->done = 1;
            if (cel_adapters_phase_times())
                cel_info("Phase times adapter %s forward_backward pass: prepare=%.3f pass=%.3f",
                         cel_adapters_id(p->a), p->prep_ms, p->pass_ms);
            cel_err_t merr;
            if (cel_adapters_note_grads(g->store, p->a, p->task_id, &merr) != CEL_OK)
                cel_warn("Adapter %s: cannot write its gradients marker (a loss of them would "
                         "go unnamed): %s",
                         cel_adapters_id(p->a), merr.msg);
            write_ahead_later(cel_adapters_id(p->a));
            p->rc = cel_call_succeed(p->call,
                                     json_pack("{s:o, s:I, s:I, s:s}", "loss",
                                               cel_json_float(p->loss_sum / p->wsum), "tokens",
                                               (json_int_t)p->trained, "examples", (json_int_t)p->n,
                                               "node", cel_adapters_node(g->store)));
        }
    }
    return k;
}

int cel_lm_run(cel_lm_pending_t **ps, int n, long max_tokens) {
    cel_model_job_t *jobs = calloc(n, sizeof(*jobs));
    int *who = calloc(n, sizeof(int));
    if (!jobs || !who) {
        free(jobs);
        free(who);
        return CEL_ENOMEM;
    }
    /* rounds until every task is done or failed: training chunks pack with
     * training chunks, scores with scores */
    while (run_round(ps, n, PK_FB, max_tokens, jobs, who) +
               run_round(ps, n, PK_SCORE, max_tokens, jobs, who) >
           0)
        ;
    free(jobs);
    free(who);
    int rc = CEL_OK;
    for (int i = 0; i < n; i++) {
        int r = cel_call_finish(ps[i]->rc);
        if (r != CEL_OK) rc = r; /* out of memory */
    }
    return rc;
}

void cel_lm_pending_free(cel_lm_pending_t *p) {
    if (!p) return;
    free(p->ids);
    free(p->lp);
    examples_free(p->ex, p->n);
    free(p->tok);
    free(p->tgt);
    free(p->w);
    free(p->lens);
    free(p);
}

/* ---- lora.optim_step ---- */

/* adam_params as bound: every key present, each in the table's range. */
static void parse_adam(json_t *p, cel_adamw_t *o) {
    *o =
        (cel_adamw_t){ .lr = (float)json_number_value(json_object_get(p, "learning_rate")),
                       .beta1 = (float)json_number_value(json_object_get(p, "beta1")),
                       .beta2 = (float)json_number_value(json_object_get(p, "beta2")),
                       .eps = (float)json_number_value(json_object_get(p, "eps")),
                       .weight_decay = (float)json_number_value(json_object_get(p, "weight_decay")),
                       .grad_clip =
                           (float)json_number_value(json_object_get(p, "grad_clip_norm")) };
}

/* lora.optim_step(adapter_id, adam_params=None) */
int cel_lm_optim_step(cel_call_t *call) {
    json_t **v = call->argv;
    cel_adamw_t opt;
    parse_adam(v[1], &opt);
    cel_adapter_t *a = NULL;
    double t0 = cel_adapters_now_ms();
    int rc = cel_lm_adapter(call, v[0], &a);
    if (rc != CEL_OK) return cel_call_finish(rc);
    double t1 = cel_adapters_now_ms();
    const char *id = cel_adapters_id(a);
    int done_step = 0;
    json_t *done = cel_adapters_step_result(a, g->task_id, &done_step);
    if (done) {
        /* a redelivered message whose step is already in the checkpoint (written
         * by this worker or any other on the state directory) */
        cel_info("Task %s already made step %d of adapter %s; returning its result", g->task_id,
                 done_step, id);
        return cel_call_finish(cel_call_succeed(call, json_deep_copy(done)));
    }
    if (!cel_adapters_has_grads(a)) {
        /* held elsewhere, lost with a dead holder, or handed over by checkpoint */
        if ((rc = cel_lm_hold(call, v[0], &a, NULL)) != CEL_OK) return cel_call_finish(rc);
        id = cel_adapters_id(a);
        if ((done = cel_adapters_step_result(a, g->task_id, &done_step))) {
            cel_adapters_release(g->store, a); /* (a copy just loaded again) */
            return cel_call_finish(cel_call_succeed(call, json_deep_copy(done)));
        }
    }
    if (!cel_adapters_has_grads(a)) {
        cel_adapters_release(g->store, a);
        return cel_call_finish(
            cel_call_fail(call, "ValueError",
                          "adapter %s has no accumulated gradients: run "
                          "lora.forward_backward before lora.optim_step (gradients are kept "
                          "in executor memory only, and are lost when the executor restarts)",
                          id));
    }
    float norm = 0;
    cel_err_t err;
    double t2 = cel_adapters_now_ms();
    rc = cel_lora_step(cel_adapters_lora(a), &opt, &norm, &err);
    double t3 = cel_adapters_now_ms();
    if (rc != CEL_OK && !isfinite(norm)) {
        /* nothing was applied; the gradients that overflowed are of no use: dropped */
        cel_adapters_release(g->store, a);
        cel_warn("Adapter %s: gradient norm is %g; step refused, gradients dropped", id, norm);
        return cel_call_finish(cel_call_fail(
            call, "ValueError",
            "adapter %s: the gradient norm is %s, so the step was not applied (the adapter is "
            "unchanged at step %d) and the accumulated gradients were dropped; run "
            "lora.forward_backward again (smaller loss weights or learning rate)",
            id, isnan(norm) ? "nan" : "inf", cel_lora_step_count(cel_adapters_lora(a))));
    }
    if (rc != CEL_OK) return cel_call_finish(cel_lm_model_error(call, rc, &err));
    int step = cel_lora_step_count(cel_adapters_lora(a));
    json_t *res = json_pack("{s:i, s:f, s:s}", "step", step, "grad_norm", (double)norm, "node",
                            cel_adapters_node(g->store));
    if (!res) return CEL_ENOMEM;
    char aid[CEL_ADAPTERS_ID_LEN + 1];
    snprintf(aid, sizeof(aid), "%s", id);
    rc = cel_adapters_commit(g->store, a, g->task_id, res, &err); /* a is gone on failure */
    if (rc == CEL_ESTATE || rc == CEL_ENOTFOUND) {
        /* another worker took the adapter over while this step ran: its checkpoint
         * stands; if it made this very step (the same message), say so */
        json_decref(res);
        cel_adapter_t *now = NULL;
        cel_err_t e2;
        json_t *theirs = cel_adapters_get(g->store, aid, &now, &e2) == CEL_OK
                             ? cel_adapters_step_result(now, g->task_id, NULL)
                             : NULL;
        if (theirs) return cel_call_finish(cel_call_succeed(call, json_deep_copy(theirs)));
        return cel_call_finish(
            cel_call_fail(call, "RuntimeError", "adapter %s: step not applied: %s", aid, err.msg));
    }
    if (rc != CEL_OK) {
        json_decref(res);
        if (rc == CEL_ENOMEM) return rc;
        return cel_call_finish(cel_call_fail(call, "OSError",
                                             "adapter %s: step %d not applied: its checkpoint "
                                             "could not be written: %s",
                                             aid, step, err.msg));
    }
    cel_debug("Adapter %s step %d (grad norm %g) checkpointed", aid, step, norm);
    if (cel_adapters_phase_times())
        cel_info("Phase times adapter %s optim_step %d: lookup=%.3f hold=%.3f adamw=%.3f "
                 "commit=%.3f",
                 aid, step, t1 - t0, t2 - t1, t3 - t2, cel_adapters_now_ms() - t3);
    return cel_call_succeed(call, res);
}
