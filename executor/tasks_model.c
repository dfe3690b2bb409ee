/* tasks_model.c -- the model.* and lora.* tasks: scoring and LoRA training/sampling.
 *
 * The executor binds each task's arguments to the signature below and checks
 * them against the task table (protocol/tasks.c, executor/call.c) before a
 * function here runs; these check what only a running executor knows (the
 * vocabulary, --max-input-tokens, the model's context, the adapters) and answer
 * a SUCCESS result or a FAILURE the client can read (ValueError for bad values
 * and unknown adapters, PermissionError for lora.load paths outside the allowed
 * folders, OSError for checkpoint I/O).
 *   model.score(text, adapter_id=None)
 *   lora.create(rank=8, alpha=16, target_modules=None, seed=None, owner=None)
 *   lora.forward_backward(adapter_id, data, loss_fn="cross_entropy")
 *   lora.optim_step(adapter_id, adam_params=None)
 *   lora.sample(adapter_id, prompts, sampling_params=None)
 *   lora.save(adapter_id)      lora.load(path, owner=None)
 *   lora.info(adapter_id)      lora.list(owner=None)      lora.delete(adapter_id)
 * target_modules=None means all seven Llama projections (PEFT's "all-linear"):
 * on small models it learns much faster than PEFT's q_proj,v_proj default.
 * Gradients accumulate in the executor's memory copy of the adapter; optim_step
 * checkpoints through executor/adapters.c before it returns.
 * Executor processes only; blocking; one task at a time.
 */
#include "tasks_model.h"

#include <errno.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "../model/model.h"
#include "../model/tokenizer.h"
#include "adapters.h"
#include "../common/log.h"

/* Limits besides the task table's (protocol/tasks.h) and --max-input-tokens. */
#define MT_MAX_TOTAL_TOKENS (256 * 1024) /* tokens in one forward_backward, all examples */
#define MT_BATCH_TOKENS 4096             /* B*T of one forward/backward pass */
#define MT_MAX_BATCH 32                  /* sequences in one pass */
#define MT_MAX_ROLE_BYTES 16             /* bytes of a chat role (the table's choices) */

/* ---- process-wide state ---- */

static struct {
    cel_model_t *model;
    cel_tokenizer_t *tok;
    cel_adapters_t *store;
    char model_dir[CEL_ADAPTERS_PATH_MAX];
    char temp_state[64];        /* non-empty: private state dir to remove at close */
    int max_input;
    int32_t im_start, im_end;   /* ChatML tokens, or -1 */
    int32_t eos;                /* appended to text examples, or -1 */
    const char *task_id;        /* of the running task */
    int (*progress)(void *, long, long);
    void *progress_priv;
} g = {.im_start = -1, .im_end = -1, .eos = -1};

static void rm_private_state(void);

int cel_tasks_model_open(const cel_tasks_model_opts_t *o, cel_err_t *err) {
    cel_model_set_threads(o->threads);
    if (!realpath(o->model_dir, g.model_dir))
        return cel_err_set(err, CEL_ENOTFOUND, "model directory %s: %s", o->model_dir,
                           strerror(errno));
    char path[CEL_ADAPTERS_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/tokenizer.json", g.model_dir);
    int rc = cel_tokenizer_load(path, &g.tok, err);
    if (rc == CEL_OK) rc = cel_model_load(g.model_dir, &g.model, err);
    char chosen[256] = "";
    if (rc == CEL_OK)
        rc = cel_model_set_device(g.model, o->device ? o->device : "auto", chosen,
                                  sizeof(chosen), err);
    if (rc == CEL_OK && o->device_chosen) snprintf(o->device_chosen, 256, "%s", chosen);
    if (rc == CEL_OK) cel_model_set_gpu_budget(g.model, (size_t)o->gpu_adapter_mb << 20);
    if (rc == CEL_OK && cel_tokenizer_vocab_size(g.tok) > (size_t)cel_model_vocab_size(g.model))
        rc = cel_err_set(err, CEL_EINVAL, "%s: tokenizer has %zu ids, the model only %d",
                         g.model_dir, cel_tokenizer_vocab_size(g.tok),
                         cel_model_vocab_size(g.model));
    if (rc == CEL_OK) {
        /* config.json's special ids win over the tokenizer's guesses (as celeriac-lm) */
        int32_t eos[8];
        int neos = cel_model_eos(g.model, eos, 8);
        if (cel_model_bos(g.model) >= 0)
            rc = cel_tokenizer_set_bos(g.tok, cel_model_bos(g.model), err);
        if (rc == CEL_OK && neos > 0) rc = cel_tokenizer_set_eos(g.tok, eos[0], err);
        g.eos = cel_tokenizer_eos(g.tok);
        g.im_start = cel_tokenizer_find(g.tok, "<|im_start|>");
        g.im_end = cel_tokenizer_find(g.tok, "<|im_end|>");
    }
    if (rc == CEL_OK) {
        int maxT = cel_model_max_seq(g.model);
        g.max_input = o->max_input_tokens > 0 ? o->max_input_tokens : CEL_TASKS_MODEL_DEFAULT_INPUT;
        if (g.max_input > maxT) {
            if (o->max_input_tokens > 0)
                cel_warn("--max-input-tokens %d is past the model's %d positions; using %d",
                         o->max_input_tokens, maxT, maxT);
            g.max_input = maxT;
        }
    }
    const char *state = o->state_dir;
    if (rc == CEL_OK && !state) {
        snprintf(g.temp_state, sizeof(g.temp_state), "/tmp/celeriac-state-XXXXXX");
        if (!mkdtemp(g.temp_state)) {
            rc = cel_err_set(err, CEL_EIO, "cannot make a temp state dir: %s", strerror(errno));
            g.temp_state[0] = '\0';
        } else {
            state = g.temp_state;
            cel_warn("No --state-dir: adapters live in %s and will not survive a restart",
                     state);
        }
    }
    if (rc == CEL_OK)
        rc = cel_adapters_open(g.model, state, g.model_dir, o->import_roots, o->n_import_roots,
                               &g.store, err);
    if (rc != CEL_OK) {
        cel_tasks_model_close();
        return rc;
    }
    g.progress = o->progress;
    g.progress_priv = o->progress_priv;
    cel_info("Model %s: %llu parameters, vocab %d, %d positions; state in %s", g.model_dir,
             (unsigned long long)cel_model_param_count(g.model), cel_model_vocab_size(g.model),
             cel_model_max_seq(g.model), cel_adapters_state_dir(g.store));
    return CEL_OK;
}

void cel_tasks_model_close(void) {
    cel_adapters_free(g.store);
    cel_model_free(g.model);
    cel_tokenizer_free(g.tok);
    g.store = NULL;
    g.model = NULL;
    g.tok = NULL;
    rm_private_state();
}

void cel_tasks_model_begin(const char *task_id) { g.task_id = task_id; }

/* ---- helpers: raising, values ---- */

#define fail cel_call_fail
#define finish cel_call_finish
#define succeed cel_call_succeed

/* A short repr of v for messages (static buffer: one use per message). */
static const char *short_repr(json_t *v) {
    static char buf[CEL_CALL_REPR_MAX + 8];
    return cel_call_repr(v, buf, sizeof(buf));
}

static double num(const json_t *v) { return json_number_value(v); }

int cel_tasks_model_ready(void) { return g.model && g.store; }

/* Finds adapter_id (a str, as bound) in the store; raises ValueError for unknown ids. */
static int get_adapter(cel_call_t *call, json_t *id, cel_adapter_t **out) {
    *out = NULL;
    int rc;
    cel_err_t err;
    cel_err_clear(&err);
    rc = cel_adapters_get(g.store, json_string_value(id), out, &err);
    if (rc == CEL_OK) return CEL_OK;
    if (rc == CEL_ENOMEM) return rc;
    if (rc == CEL_ENOTFOUND) return fail(call, "ValueError", "unknown adapter %s", short_repr(id));
    return fail(call, "OSError", "adapter %s: cannot read its checkpoint: %s",
                json_string_value(id), err.msg);
}

/* Optional adapter: None is the base model. */
static int get_lora(cel_call_t *call, json_t *id, cel_lora_t **out) {
    *out = NULL;
    if (json_is_null(id)) return CEL_OK;
    cel_adapter_t *a;
    int rc = get_adapter(call, id, &a);
    if (rc == CEL_OK) *out = cel_adapters_lora(a);
    return rc;
}

/* The owner (None, or a str the table bounded): a C string, so no NUL inside. */
static int check_owner(cel_call_t *call, json_t *owner) {
    if (json_is_null(owner) || strlen(json_string_value(owner)) == json_string_length(owner))
        return CEL_OK;
    return fail(call, "ValueError", "owner must not contain NUL");
}

/* Encodes a str value (its length bounded by the table). OUT: *ids (malloc'd), *n. */
static int encode(cel_call_t *call, json_t *s, int add_bos, const char *what, int32_t **ids,
                  size_t *n) {
    *ids = NULL;
    *n = 0;
    size_t len = json_string_length(s);
    cel_err_t err;
    int rc = cel_tokenizer_encode(g.tok, json_string_value(s), len, add_bos, ids, n, &err);
    if (rc == CEL_ENOMEM) return rc;
    if (rc != CEL_OK) return fail(call, "ValueError", "%s cannot be tokenized: %s", what, err.msg);
    return CEL_OK;
}

static void progress(long done, long total) {
    if (g.progress) g.progress(g.progress_priv, done, total);
}

#define soft_limit_hit cel_call_soft_limit_hit
#define raise_soft_limit cel_call_raise_soft_limit

/* A model error as the task's exception (limits and shapes are the caller's). */
static int model_error(cel_call_t *call, int rc, const cel_err_t *err) {
    if (rc == CEL_ENOMEM) return rc;
    return fail(call, rc == CEL_EIO ? "OSError" : "ValueError", "%s", err->msg);
}

static uint64_t random_seed(void) {
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s))
        s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return s;
}

/* ---- model.score ---- */

/* A model task prepared for a packed pass (see tasks_model.h): forward_backward
 * keeps its checked examples and packs them a chunk at a time; score is one
 * forward job. rc is CEL_OK while it runs, else the call already has its
 * result (an exception, or CEL_ENOMEM). */
enum { PK_SCORE, PK_FB };
struct cel_tasks_model_pending {
    cel_call_t *call;
    int kind, rc, done;
    /* score */
    int32_t *ids;
    size_t nids;
    float *lp;
    cel_lora_t *lora;
    /* forward_backward */
    cel_adapter_t *a;
    struct example *ex;
    size_t n, next;
    double wsum, loss_sum;
    long trained;
    int32_t *tok, *tgt, *lens; /* this round's chunk */
    float *w;
    size_t chunk_end;
};

/* model.score(text, adapter_id=None) */
static int prepare_score(cel_call_t *call, cel_tasks_model_pending_t *p) {
    json_t **v = call->argv;
    int rc = get_lora(call, v[1], &p->lora);
    if (rc == CEL_OK) rc = encode(call, v[0], 1, "text", &p->ids, &p->nids);
    if (rc == CEL_OK && p->nids < 2)
        rc = fail(call, "ValueError", "text has no token to score (it is empty)");
    if (rc == CEL_OK && p->nids > (size_t)g.max_input)
        rc = fail(call, "ValueError", "text is %zu tokens; the limit is %d (--max-input-tokens)",
                  p->nids, g.max_input);
    p->lp = rc == CEL_OK ? malloc((p->nids - 1) * sizeof(float)) : NULL;
    if (rc == CEL_OK && !p->lp) rc = CEL_ENOMEM;
    return rc;
}

/* The score task's result from its log-probs. */
static int finish_score(cel_tasks_model_pending_t *p, double loss) {
    int n = (int)p->nids - 1;
    json_t *tl = json_array();
    for (int i = 0; tl && i < n; i++)
        if (json_array_append_new(tl, json_real(p->lp[i]))) {
            json_decref(tl);
            tl = NULL;
        }
    return succeed(p->call, tl ? json_pack("{s:i, s:f, s:f, s:f, s:o}", "tokens", n, "logprob",
                                           -loss, "mean_logprob", -loss / n, "perplexity",
                                           exp(loss / n), "token_logprobs", tl)
                               : NULL);
}

/* model.score and lora.forward_backward run alone: a pack of one. */
static int run_alone(cel_call_t *call) {
    cel_tasks_model_pending_t *p = NULL;
    int rc = cel_tasks_model_prepare(call, &p);
    if (rc == CEL_OK && p) rc = cel_tasks_model_run(&p, 1, MT_BATCH_TOKENS);
    cel_tasks_model_pending_free(p);
    return rc;
}

/* ---- lora.create ---- */

/* Parses target_modules: None (all seven), or a list of the table's names. */
static int parse_targets(cel_call_t *call, json_t *v, unsigned *out) {
    *out = CEL_LORA_ALL;
    if (json_is_null(v)) return CEL_OK;
    char csv[512] = "";
    size_t used = 0, i;
    json_t *e;
    json_array_foreach(v, i, e) {
        used += (size_t)snprintf(csv + used, sizeof(csv) - used, "%s%s", i ? "," : "",
                                 json_string_value(e));
        if (used >= sizeof(csv)) return fail(call, "ValueError", "target_modules is too long");
    }
    cel_err_t err;
    if (cel_lora_parse_targets(csv, out, &err) != CEL_OK)
        return fail(call, "ValueError", "%s", err.msg);
    return CEL_OK;
}

/* lora.create's result for a. */
static json_t *created_result(cel_adapter_t *a) {
    json_t *d = cel_adapters_describe(a);
    if (!d) return NULL;
    json_object_del(d, "owner");
    json_object_del(d, "created");
    return d;
}

/* lora.create(rank=8, alpha=16, target_modules=None, seed=None, owner=None) */
static int t_create(cel_call_t *call) {
    json_t **v = call->argv;
    cel_lora_config_t cfg = {.rank = (int)json_integer_value(v[0]), .alpha = (float)num(v[1])};
    int rc = parse_targets(call, v[2], &cfg.targets);
    cfg.seed = json_is_null(v[3]) ? random_seed() : (uint64_t)json_integer_value(v[3]);
    if (rc == CEL_OK) rc = check_owner(call, v[4]);
    cel_adapter_t *a = NULL;
    cel_err_t err;
    if (rc == CEL_OK &&
        (rc = cel_adapters_create(g.store, &cfg, json_string_value(v[4]), &a, &err)) != CEL_OK)
        rc = rc == CEL_ENOMEM ? rc : fail(call, "OSError", "cannot create the adapter: %s",
                                          err.msg);
    if (rc == CEL_OK) {
        cel_info("Created adapter %s (rank %d, alpha %g)", cel_adapters_id(a), cfg.rank,
                 cfg.alpha);
        rc = succeed(call, created_result(a));
    }
    return finish(rc);
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
    int rc = cel_tokenizer_encode(g.tok, text, len, 0, &ids, &n, &err);
    if (rc == CEL_ENOMEM) return rc;
    if (rc != CEL_OK) return fail(call, "ValueError", "text cannot be tokenized: %s", err.msg);
    rc = seq_push(s, ids, n, w);
    free(ids);
    return rc;
}

/* Builds a chat example: ChatML (<|im_start|>role\ncontent<|im_end|>\n) when the
 * tokenizer has those tokens, else "role: content\n" lines; weight 1 on each
 * assistant turn's content and end marker, 0 elsewhere. */
static int build_chat(cel_call_t *call, size_t idx, json_t *msgs, seqbuf_t *s) {
    size_t nm = json_array_size(msgs);
    int chatml = g.im_start >= 0 && g.im_end >= 0, rc = CEL_OK;
    int32_t bos = cel_tokenizer_bos(g.tok);
    if (bos >= 0 && (rc = seq_push(s, &bos, 1, 0)) != CEL_OK) return rc;
    for (size_t i = 0; i < nm && rc == CEL_OK; i++) {
        json_t *m = json_array_get(msgs, i); /* {role: one of the table's, content: str} */
        json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
        size_t cl = json_string_length(content);
        float w = strcmp(json_string_value(role), "assistant") == 0 ? 1.0f : 0.0f;
        char head[MT_MAX_ROLE_BYTES + 4];
        int hl = snprintf(head, sizeof(head), chatml ? "%s\n" : "%s: ", json_string_value(role));
        if (chatml) rc = seq_push(s, &g.im_start, 1, 0);
        if (rc == CEL_OK) rc = seq_text(call, s, head, (size_t)hl, 0);
        if (rc == CEL_OK) rc = seq_text(call, s, json_string_value(content), cl, w);
        if (rc == CEL_OK && chatml) rc = seq_push(s, &g.im_end, 1, w);
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
    int V = cel_model_vocab_size(g.model);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (json_integer_value(e) >= V) {
            free(a);
            return fail(call, "ValueError", "example %zu: %s[%zu] = %lld is not a token id "
                        "(0 <= id < %d)", idx, key, i, (long long)json_integer_value(e), V);
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
    if (n > (size_t)g.max_input)
        return fail(call, "ValueError", "example %zu is %zu tokens; a datum needs 1 to %d "
                    "(--max-input-tokens)", idx, n, g.max_input);
    int rc = int_list(call, idx, t, "tokens", &ex->in);
    if (rc == CEL_OK) rc = int_list(call, idx, tt, "target_tokens", &ex->tgt);
    if (rc == CEL_OK && json_array_size(tt) != n)
        rc = fail(call, "ValueError", "example %zu: target_tokens has %zu ids, tokens %zu", idx,
                  json_array_size(tt), n);
    if (rc == CEL_OK && w && json_array_size(w) != n)
        rc = fail(call, "ValueError", "example %zu: weights has %zu values, tokens %zu", idx,
                  json_array_size(w), n);
    if (rc == CEL_OK && !(ex->w = malloc(n * sizeof(float)))) rc = CEL_ENOMEM;
    for (size_t i = 0; rc == CEL_OK && i < n; i++) /* finite and >= 0, as bound */
        ex->w[i] = w ? (float)num(json_array_get(w, i)) : 1.0f;
    ex->len = (int)n;
    return rc;
}

/* One example of data as bound (one of the table's forms): {"text"}, a chat
 * list, {"messages": chat}, or a datum. */
static int build_example(cel_call_t *call, size_t idx, json_t *d, example_t *ex) {
    seqbuf_t s = {0};
    int rc = CEL_OK;
    json_t *text = json_object_get(d, "text");
    if (json_object_get(d, "tokens")) return build_datum(call, idx, d, ex);
    if (text) {
        /* bos + text + eos, loss on every next token (as celeriac-lm train) */
        int32_t bos = cel_tokenizer_bos(g.tok);
        if (bos >= 0) rc = seq_push(&s, &bos, 1, 0);
        if (rc == CEL_OK)
            rc = seq_text(call, &s, json_string_value(text), json_string_length(text), 1);
        if (rc == CEL_OK && g.eos >= 0) rc = seq_push(&s, &g.eos, 1, 1);
    } else {
        rc = build_chat(call, idx, json_is_array(d) ? d : json_object_get(d, "messages"), &s);
    }
    if (rc == CEL_OK && s.n < 2)
        rc = fail(call, "ValueError", "example %zu has no token to predict (it is empty)", idx);
    if (rc == CEL_OK && s.n > (size_t)g.max_input)
        rc = fail(call, "ValueError", "example %zu is %zu tokens; the limit is %d "
                  "(--max-input-tokens)", idx, s.n, g.max_input);
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

/* Runs forward+backward over examples in batches of similar cost. OUT: sums of
 * weighted loss and of weights. On failure the adapter's gradients are dropped. */
/* Builds p's next chunk of examples into its batch arrays (examples while the
 * padded chunk fits MT_BATCH_TOKENS and MT_MAX_BATCH; an example longer than
 * that runs alone from its own arrays). OUT: *batch. */
static void next_chunk(cel_tasks_model_pending_t *p, cel_batch_t *batch) {
    example_t *ex = p->ex;
    size_t i = p->next, j = i;
    int T = 0;
    while (j < p->n && j - i < MT_MAX_BATCH) {
        int nt = ex[j].len > T ? ex[j].len : T;
        if (j > i && (size_t)nt * (j - i + 1) > MT_BATCH_TOKENS) break;
        T = nt;
        j++;
    }
    int B = (int)(j - i);
    int32_t *bt = p->tok, *bg = p->tgt;
    float *bw = p->w;
    if ((size_t)B * T > MT_BATCH_TOKENS) {
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
    *batch = (cel_batch_t){.B = B, .T = T, .tokens = bt, .targets = bg, .weights = bw,
                           .lens = p->lens};
    p->chunk_end = j;
}

/* lora.forward_backward(adapter_id, data, loss_fn="cross_entropy"): loss_fn is
 * the table's one choice, data its examples. */
static int prepare_fb(cel_call_t *call, cel_tasks_model_pending_t *p) {
    json_t **v = call->argv;
    size_t n = json_array_size(v[1]);
    int rc = get_adapter(call, v[0], &p->a);
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
            rc = fail(call, "ValueError", "data is more than %d tokens in all; split it over "
                      "several forward_backward calls", MT_MAX_TOTAL_TOKENS);
    }
    if (rc == CEL_OK && !(p->wsum > 0))
        rc = fail(call, "ValueError", "no token of data has a positive loss weight (a chat "
                  "needs an assistant message)");
    if (rc == CEL_OK) {
        p->tok = malloc(MT_BATCH_TOKENS * sizeof(int32_t));
        p->tgt = malloc(MT_BATCH_TOKENS * sizeof(int32_t));
        p->w = malloc(MT_BATCH_TOKENS * sizeof(float));
        p->lens = malloc(MT_MAX_BATCH * sizeof(int32_t));
        if (!p->tok || !p->tgt || !p->w || !p->lens) rc = CEL_ENOMEM;
    }
    return rc;
}

/* A forward_backward task failed after some passes: half-accumulated
 * gradients would make the next step wrong, so they all go. */
static void fb_abort(cel_tasks_model_pending_t *p) {
    cel_lora_zero_grad(cel_adapters_lora(p->a));
    cel_adapters_set_grads(p->a, 0);
}

int cel_tasks_model_prepare(cel_call_t *call, cel_tasks_model_pending_t **out) {
    *out = NULL;
    cel_tasks_model_pending_t *p = calloc(1, sizeof(*p));
    if (!p) return CEL_ENOMEM;
    p->call = call;
    p->kind = strcmp(call->name, "model.score") == 0 ? PK_SCORE : PK_FB;
    int rc = p->kind == PK_SCORE ? prepare_score(call, p) : prepare_fb(call, p);
    if (rc != CEL_OK) {
        cel_tasks_model_pending_free(p);
        return finish(rc);
    }
    *out = p;
    return CEL_OK;
}

/* Adds p's next job to the pass being built if the padded pass stays within
 * max_tokens (the first job always fits). *B, *T: the pass so far. */
static int add_job(cel_tasks_model_pending_t *p, cel_model_job_t *job, int *B, int *T,
                   long max_tokens) {
    cel_batch_t b;
    if (p->kind == PK_SCORE) {
        b = (cel_batch_t){.B = 1, .T = (int)p->nids - 1, .tokens = p->ids,
                          .targets = p->ids + 1};
    } else {
        next_chunk(p, &b);
    }
    int nb = *B + b.B, nt = b.T > *T ? b.T : *T;
    if (*B > 0 && (long)nb * nt > max_tokens) return 0;
    *B = nb, *T = nt;
    *job = (cel_model_job_t){.lora = p->kind == PK_SCORE ? p->lora : cel_adapters_lora(p->a),
                             .batch = b, .logprobs = p->kind == PK_SCORE ? p->lp : NULL};
    return 1;
}

/* One packed pass over the jobs of kind `kind` that fit; returns how many ran. */
static int run_round(cel_tasks_model_pending_t **ps, int n, int kind, long max_tokens,
                     cel_model_job_t *jobs, int *who) {
    int k = 0, B = 0, T = 0;
    for (int i = 0; i < n; i++) {
        cel_tasks_model_pending_t *p = ps[i];
        if (p->kind != kind || p->rc != CEL_OK || p->done) continue;
        if (soft_limit_hit(p->call)) {
            p->rc = raise_soft_limit(p->call);
            if (p->kind == PK_FB) fb_abort(p);
            continue;
        }
        if (!add_job(p, &jobs[k], &B, &T, max_tokens)) continue;
        who[k++] = i;
    }
    if (k == 0) return 0;
    cel_err_t err;
    cel_err_clear(&err);
    int rc = cel_model_run_jobs(g.model, jobs, k, kind == PK_FB, &err);
    (void)rc; /* a failed pass gives every job its error */
    for (int j = 0; j < k; j++) {
        cel_tasks_model_pending_t *p = ps[who[j]];
        if (jobs[j].rc != CEL_OK) {
            p->rc = model_error(p->call, jobs[j].rc, &jobs[j].err);
            if (p->kind == PK_FB) fb_abort(p);
            continue;
        }
        if (p->kind == PK_SCORE) {
            p->done = 1;
            p->rc = finish_score(p, jobs[j].loss);
            continue;
        }
        cel_adapters_set_grads(p->a, 1);
        p->loss_sum += jobs[j].loss;
        p->next = p->chunk_end;
        if (n == 1) progress((long)p->next, (long)p->n);
        if (p->next == p->n) {
            p->done = 1;
            p->rc = succeed(p->call, json_pack("{s:f, s:I, s:I}", "loss", p->loss_sum / p->wsum,
                                               "tokens", (json_int_t)p->trained, "examples",
                                               (json_int_t)p->n));
        }
    }
    return k;
}

int cel_tasks_model_run(cel_tasks_model_pending_t **ps, int n, long max_tokens) {
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
           run_round(ps, n, PK_SCORE, max_tokens, jobs, who) > 0)
        ;
    free(jobs);
    free(who);
    int rc = CEL_OK;
    for (int i = 0; i < n; i++) {
        int r = finish(ps[i]->rc);
        if (r != CEL_OK) rc = r; /* out of memory */
    }
    return rc;
}

void cel_tasks_model_pending_free(cel_tasks_model_pending_t *p) {
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
    *o = (cel_adamw_t){.lr = (float)num(json_object_get(p, "learning_rate")),
                       .beta1 = (float)num(json_object_get(p, "beta1")),
                       .beta2 = (float)num(json_object_get(p, "beta2")),
                       .eps = (float)num(json_object_get(p, "eps")),
                       .weight_decay = (float)num(json_object_get(p, "weight_decay")),
                       .grad_clip = (float)num(json_object_get(p, "grad_clip_norm"))};
}

/* lora.optim_step(adapter_id, adam_params=None) */
static int t_optim_step(cel_call_t *call) {
    json_t **v = call->argv;
    cel_adamw_t opt;
    parse_adam(v[1], &opt);
    cel_adapter_t *a = NULL;
    int rc = get_adapter(call, v[0], &a);
    if (rc != CEL_OK) return finish(rc);
    const char *id = cel_adapters_id(a);
    int done_step = 0;
    json_t *done = cel_adapters_step_result(a, g.task_id, &done_step);
    if (done) {
        /* a redelivered message whose step is already in the checkpoint */
        cel_info("Task %s already made step %d of adapter %s; returning its result", g.task_id,
                 done_step, id);
        return finish(succeed(call, json_deep_copy(done)));
    }
    if (!cel_adapters_has_grads(a))
        return finish(fail(call, "ValueError", "adapter %s has no accumulated gradients: run "
                           "lora.forward_backward before lora.optim_step (gradients are kept "
                           "in executor memory only, and are lost when the executor restarts)",
                           id));
    float norm = 0;
    cel_err_t err;
    rc = cel_lora_step(cel_adapters_lora(a), &opt, &norm, &err);
    if (rc != CEL_OK) return finish(model_error(call, rc, &err));
    cel_adapters_set_grads(a, 0);
    int step = cel_lora_step_count(cel_adapters_lora(a));
    json_t *res = json_pack("{s:i, s:f}", "step", step, "grad_norm",
                            isfinite(norm) ? (double)norm : -1.0);
    if (!res) return CEL_ENOMEM;
    rc = cel_adapters_commit(g.store, a, g.task_id, res, &err);
    if (rc != CEL_OK) {
        json_decref(res);
        if (rc == CEL_ENOMEM) return rc;
        return finish(fail(call, "OSError", "adapter %s: step %d not applied: its checkpoint "
                           "could not be written: %s", id, step, err.msg));
    }
    cel_debug("Adapter %s step %d (grad norm %g) checkpointed", id, step, norm);
    return succeed(call, res);
}

/* ---- lora.sample ---- */

typedef struct sample_req {
    cel_sample_params_t p;
    json_t *stops; /* array of str, or null (borrowed) */
} sample_req_t;

/* sampling_params as bound: every key present, each in the table's range. */
static void parse_sampling(json_t *p, sample_req_t *r) {
    memset(r, 0, sizeof(*r));
    json_t *seed = json_object_get(p, "seed");
    r->p.max_tokens = (int)json_integer_value(json_object_get(p, "max_tokens"));
    r->p.temperature = (float)num(json_object_get(p, "temperature"));
    r->p.top_p = (float)num(json_object_get(p, "top_p"));
    r->p.top_k = (int)json_integer_value(json_object_get(p, "top_k"));
    r->p.seed = json_is_null(seed) ? random_seed() : (uint64_t)json_integer_value(seed);
    r->stops = json_object_get(p, "stop");
}

/* One sequence's generated ids and its decoded (and stop-cut) text. */
typedef struct gen {
    int32_t *ids;
    size_t n;
    char *text;
    size_t len;
} gen_t;

/* Decodes q; cuts its text at the earliest stop string. Returns 1 on a stop. */
static int decode_cut(gen_t *q, json_t *stops, int *rc, cel_err_t *err) {
    free(q->text);
    q->text = NULL;
    *rc = cel_tokenizer_decode(g.tok, q->ids, q->n, &q->text, &q->len, err);
    if (*rc != CEL_OK) return 0;
    size_t cut = q->len, i;
    json_t *s;
    json_array_foreach(stops, i, s) {
        const char *hit = memmem(q->text, q->len, json_string_value(s), json_string_length(s));
        if (hit && (size_t)(hit - q->text) < cut) cut = (size_t)(hit - q->text);
    }
    if (cut == q->len) return 0;
    q->len = cut;
    q->text[cut] = '\0';
    return 1;
}

static int run_sampler(cel_call_t *call, cel_lora_t *lora, int np, int32_t **pids,
                       int32_t *lens, sample_req_t *r, gen_t *gens) {
    cel_sampler_t *s = NULL;
    cel_err_t err;
    int32_t *out = malloc((size_t)np * sizeof(int32_t));
    if (!out) return CEL_ENOMEM;
    int rc = cel_sampler_new(g.model, lora, np, (const int32_t *const *)pids, lens, &r->p, &s,
                             &err);
    if (rc != CEL_OK) rc = model_error(call, rc, &err);
    int nstops = (int)json_array_size(r->stops);
    for (long step = 0; rc == CEL_OK;) {
        if (soft_limit_hit(call)) {
            rc = raise_soft_limit(call);
            break;
        }
        int live = cel_sampler_step(s, out, &err);
        if (live < 0) {
            rc = model_error(call, live, &err);
            break;
        }
        for (int i = 0; i < np && rc == CEL_OK; i++) {
            if (out[i] < 0 || cel_sampler_status(s, i) == 1) continue; /* done, or a stop id */
            gen_t *q = &gens[i];
            if (q->n < (size_t)r->p.max_tokens) q->ids[q->n++] = out[i];
            if (nstops && decode_cut(q, r->stops, &rc, &err) && cel_sampler_status(s, i) == 0) {
                cel_sampler_stop(s, i);
                live--;
            }
            if (rc != CEL_OK) rc = model_error(call, rc, &err);
        }
        progress(++step, r->p.max_tokens);
        if (live <= 0) break;
    }
    for (int i = 0; rc == CEL_OK && i < np; i++)
        if (!gens[i].text || !nstops) {
            decode_cut(&gens[i], r->stops, &rc, &err);
            if (rc != CEL_OK) rc = model_error(call, rc, &err);
        }
    cel_sampler_free(s);
    free(out);
    return rc;
}

/* lora.sample(adapter_id, prompts, sampling_params=None): adapter_id None is
 * the base model; prompts a list of str (a bare str was made one). */
static int t_sample(cel_call_t *call) {
    json_t **v = call->argv;
    sample_req_t r;
    parse_sampling(v[2], &r);
    json_t *prompts = v[1];
    int np = (int)json_array_size(prompts);
    cel_lora_t *lora = NULL;
    int rc = get_lora(call, v[0], &lora);
    int32_t **pids = rc == CEL_OK ? calloc((size_t)np, sizeof(*pids)) : NULL;
    int32_t *lens = rc == CEL_OK ? calloc((size_t)np, sizeof(*lens)) : NULL;
    gen_t *gens = rc == CEL_OK ? calloc((size_t)np, sizeof(*gens)) : NULL;
    if (rc == CEL_OK && (!pids || !lens || !gens)) rc = CEL_ENOMEM;
    int maxT = g.model ? cel_model_max_seq(g.model) : 0;
    for (int i = 0; rc == CEL_OK && i < np; i++) {
        json_t *p = json_array_get(prompts, (size_t)i);
        size_t n;
        rc = encode(call, p, 1, "prompt", &pids[i], &n);
        if (rc == CEL_OK && n == 0)
            rc = fail(call, "ValueError", "prompts[%d] is empty and the model has no bos", i);
        if (rc == CEL_OK && n > (size_t)g.max_input)
            rc = fail(call, "ValueError", "prompts[%d] is %zu tokens; the limit is %d "
                      "(--max-input-tokens)", i, n, g.max_input);
        if (rc == CEL_OK && n + (size_t)r.p.max_tokens > (size_t)maxT)
            rc = fail(call, "ValueError", "prompts[%d] (%zu tokens) + max_tokens %d passes the "
                      "model's %d positions", i, n, r.p.max_tokens, maxT);
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
        rc = succeed(call, list ? json_pack("{s:o}", "samples", list) : NULL);
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
    return finish(rc);
}

/* ---- lora.save, load, info, list, delete ---- */

/* lora.save(adapter_id) */
static int t_save(cel_call_t *call) {
    json_t **v = call->argv;
    cel_adapter_t *a = NULL;
    int rc = get_adapter(call, v[0], &a);
    char path[CEL_ADAPTERS_PATH_MAX];
    cel_err_t err;
    if (rc == CEL_OK && (rc = cel_adapters_export(g.store, a, path, &err)) != CEL_OK)
        rc = rc == CEL_ENOMEM ? rc : fail(call, "OSError", "cannot save adapter %s: %s",
                                          cel_adapters_id(a), err.msg);
    if (rc == CEL_OK) rc = succeed(call, json_string(path));
    return finish(rc);
}

/* lora.load(path, owner=None) */
static int t_load(cel_call_t *call) {
    json_t **v = call->argv;
    int rc = CEL_OK;
    if (strlen(json_string_value(v[0])) != json_string_length(v[0]))
        rc = fail(call, "ValueError", "path must not contain NUL");
    if (rc == CEL_OK) rc = check_owner(call, v[1]);
    cel_adapter_t *a = NULL;
    cel_err_t err;
    if (rc == CEL_OK) {
        rc = cel_adapters_import(g.store, json_string_value(v[0]), json_string_value(v[1]), &a,
                                 &err);
        if (rc == CEL_ESTATE)
            rc = fail(call, "PermissionError", "path %s %s", short_repr(v[0]), err.msg);
        else if (rc == CEL_EIO)
            rc = fail(call, "OSError", "path %s: %s", short_repr(v[0]), err.msg);
        else if (rc != CEL_OK && rc != CEL_ENOMEM)
            rc = fail(call, "ValueError", "path %s %s", short_repr(v[0]), err.msg);
    }
    if (rc == CEL_OK) {
        cel_info("Loaded adapter %s from %s", cel_adapters_id(a), json_string_value(v[0]));
        rc = succeed(call, created_result(a));
    }
    return finish(rc);
}

/* lora.info(adapter_id) */
static int t_info(cel_call_t *call) {
    json_t **v = call->argv;
    json_t *info = NULL;
    cel_err_t err;
    int rc;
    if ((rc = cel_adapters_info(g.store, json_string_value(v[0]), &info, &err))) {
        if (rc == CEL_ENOTFOUND) rc = fail(call, "ValueError", "unknown adapter %s",
                                           short_repr(v[0]));
        else if (rc != CEL_ENOMEM) rc = fail(call, "OSError", "adapter %s: %s",
                                             json_string_value(v[0]), err.msg);
    }
    if (rc == CEL_OK) rc = succeed(call, info);
    return finish(rc);
}

/* lora.list(owner=None) */
static int t_list(cel_call_t *call) {
    json_t **v = call->argv;
    json_t *list = NULL;
    cel_err_t err;
    int rc;
    if ((rc = cel_adapters_list(g.store, json_string_value(v[0]), &list, &err)))
        rc = rc == CEL_ENOMEM ? rc : fail(call, "OSError", "%s", err.msg);
    if (rc == CEL_OK) rc = succeed(call, list);
    return finish(rc);
}

/* lora.delete(adapter_id) */
static int t_delete(cel_call_t *call) {
    json_t **v = call->argv;
    cel_err_t err;
    int rc;
    if ((rc = cel_adapters_delete(g.store, json_string_value(v[0]), &err))) {
        if (rc == CEL_ENOTFOUND) rc = fail(call, "ValueError", "unknown adapter %s",
                                           short_repr(v[0]));
        else if (rc != CEL_ENOMEM) rc = fail(call, "OSError", "cannot delete %s: %s",
                                             json_string_value(v[0]), err.msg);
    }
    if (rc == CEL_OK) {
        cel_info("Deleted adapter %s", json_string_value(v[0]));
        rc = succeed(call, json_pack("{s:O}", "deleted", v[0]));
    }
    return finish(rc);
}

/* ---- the table ---- */

static const struct {
    const char *name;
    cel_call_fn fn;
} model_tasks[] = {
    {"lora.create", t_create},   {"lora.delete", t_delete},
    {"lora.forward_backward", run_alone},
    {"lora.info", t_info},       {"lora.list", t_list},       {"lora.load", t_load},
    {"lora.optim_step", t_optim_step},
    {"lora.sample", t_sample},   {"lora.save", t_save},       {"model.score", run_alone},
};

cel_call_fn cel_tasks_model_find(const char *name) {
    for (size_t i = 0; name && i < sizeof(model_tasks) / sizeof(model_tasks[0]); i++)
        if (strcmp(model_tasks[i].name, name) == 0) return model_tasks[i].fn;
    return NULL;
}

/* ---- private state dir removal ---- */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)ftw;
    if (flag == FTW_DP) rmdir(path);
    else unlink(path);
    return 0;
}

static void rm_private_state(void) {
    if (!g.temp_state[0]) return;
    nftw(g.temp_state, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    g.temp_state[0] = '\0';
}
