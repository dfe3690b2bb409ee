/* lm.c -- the model task family: the executor's model, tokenizer and adapter store.
 *
 * The model tasks, run by the executor on its model (train.c, sample.c,
 * admin.c hold the functions; this file their shared state and helpers):
 *   model.score(text, adapter_id=None)
 *   lora.create(rank=8, alpha=16, target_modules=None, seed=None, owner=None)
 *   lora.forward_backward(adapter_id, data, loss_fn="cross_entropy")
 *   lora.optim_step(adapter_id, adam_params=None)
 *   lora.sample(adapter_id, prompts, sampling_params=None)
 *   lora.save(adapter_id)      lora.load(path, owner=None)
 *   lora.info(adapter_id)      lora.list(owner=None)      lora.delete(adapter_id)
 * The executor binds each task's arguments to these signatures and checks them
 * against the task table (protocol/tasks.c, executor/call.c) before a function
 * runs; the functions check what only a running executor knows (the
 * vocabulary, --max-input-tokens, the model's context, the adapters) and answer
 * a SUCCESS result or a FAILURE the client can read (ValueError for bad values
 * and unknown adapters, PermissionError for lora.load paths outside the allowed
 * folders, OSError for checkpoint I/O). The base model and tokenizer are loaded
 * once by cel_lm_open, before the executor reports ready.
 * Executor processes only; blocking; one task at a time.
 */
#include "lm_internal.h"

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../model/config.h"
#include "../protocol/tasks.h"

cel_lm_state_t cel_lm_state = { .im_start = -1, .im_end = -1, .eos = -1 };

static cel_lm_state_t *const g = &cel_lm_state;

static void rm_private_state(void);

/* ---- open, close ---- */

/* The store's limits: the owner quotas, the task table's rank and alpha, and
 * from config.json how many floats a LoRA of rank 1 holds per target module
 * (A: r x in and B: out x r, every layer), which bounds an imported file. */
static void store_limits(const cel_lm_opts_t *o) {
    cel_adapters_limits_t lim = { .max_per_owner = o->max_adapters_per_owner,
                                  .max_bytes_per_owner = o->max_bytes_per_owner,
                                  .max_rank = CEL_TASKS_MAX_RANK,
                                  .max_alpha = CEL_TASKS_MAX_ALPHA };
    char path[CEL_ADAPTERS_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/config.json", g->model_dir);
    cel_config_t c;
    if (cel_config_load(path, &c, NULL) == CEL_OK) {
        unsigned long long L = (unsigned long long)c.L, C = (unsigned long long)c.C;
        unsigned long long q = (unsigned long long)c.NH * (unsigned long long)c.HS;
        unsigned long long kv = (unsigned long long)c.NKV * (unsigned long long)c.HS;
        unsigned long long I = (unsigned long long)c.I;
        unsigned long long per[7] = { C + q, C + kv, C + kv, q + C, C + I, C + I, I + C };
        for (int i = 0; i < 7; i++) lim.floats_per_rank[i] = L * per[i];
    }
    cel_adapters_set_limits(g->store, &lim);
}

int cel_lm_open(const cel_lm_opts_t *o, cel_err_t *err) {
    cel_model_set_threads(o->threads);
    if (!realpath(o->model_dir, g->model_dir))
        return cel_err_set(err, CEL_ENOTFOUND, "model directory %s: %s", o->model_dir,
                           strerror(errno));
    char path[CEL_ADAPTERS_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/tokenizer.json", g->model_dir);
    int rc = cel_tokenizer_load(path, &g->tok, err);
    if (rc == CEL_OK) rc = cel_model_load(g->model_dir, &g->model, err);
    char chosen[256] = "";
    if (rc == CEL_OK)
        rc = cel_model_set_device(g->model, o->device ? o->device : "auto", chosen, sizeof(chosen),
                                  err);
    /* --precision bf16 is for the CPU's passes; on a GPU the products are bf16 already */
    if (rc == CEL_OK && o->precision && strcmp(o->precision, "fp32") &&
        !cel_model_on_gpu(g->model)) {
        rc = cel_model_set_precision(g->model, o->precision, err);
        if (rc == CEL_OK)
            snprintf(chosen + strlen(chosen), sizeof(chosen) - strlen(chosen), ", precision %s",
                     o->precision);
    }
    if (rc == CEL_OK && o->device_chosen) snprintf(o->device_chosen, 256, "%s", chosen);
    if (rc == CEL_OK) cel_model_set_gpu_budget(g->model, (size_t)o->gpu_adapter_mb << 20);
    if (rc == CEL_OK && cel_tokenizer_vocab_size(g->tok) > (size_t)cel_model_vocab_size(g->model))
        rc = cel_err_set(err, CEL_EINVAL, "%s: tokenizer has %zu ids, the model only %d",
                         g->model_dir, cel_tokenizer_vocab_size(g->tok),
                         cel_model_vocab_size(g->model));
    if (rc == CEL_OK) {
        /* config.json's special ids win over the tokenizer's guesses (as celeriac-lm) */
        int32_t eos[8];
        int neos = cel_model_eos(g->model, eos, 8);
        if (cel_model_bos(g->model) >= 0)
            rc = cel_tokenizer_set_bos(g->tok, cel_model_bos(g->model), err);
        if (rc == CEL_OK && neos > 0) rc = cel_tokenizer_set_eos(g->tok, eos[0], err);
        g->eos = cel_tokenizer_eos(g->tok);
        g->im_start = cel_tokenizer_find(g->tok, "<|im_start|>");
        g->im_end = cel_tokenizer_find(g->tok, "<|im_end|>");
    }
    if (rc == CEL_OK) {
        int maxT = cel_model_max_seq(g->model);
        g->max_input = o->max_input_tokens > 0 ? o->max_input_tokens : CEL_LM_DEFAULT_INPUT;
        if (g->max_input > maxT) {
            if (o->max_input_tokens > 0)
                cel_warn("--max-input-tokens %d is past the model's %d positions; using %d",
                         o->max_input_tokens, maxT, maxT);
            g->max_input = maxT;
        }
    }
    const char *state = o->state_dir;
    if (rc == CEL_OK && !state && o->private_parent) {
        /* the main process's private folder: it removes ours if we are killed */
        snprintf(g->temp_state, sizeof(g->temp_state), "%s/executor-%d", o->private_parent,
                 (int)getpid());
        if (mkdir(g->temp_state, 0700) != 0) {
            rc = cel_err_set(err, CEL_EIO, "cannot make %s: %s", g->temp_state, strerror(errno));
            g->temp_state[0] = '\0';
        } else {
            state = g->temp_state;
            cel_warn("No --state-dir: adapters live in %s and will not survive a restart", state);
        }
    } else if (rc == CEL_OK && !state) {
        snprintf(g->temp_state, sizeof(g->temp_state), "/tmp/celeriac-state-XXXXXX");
        if (!mkdtemp(g->temp_state)) {
            rc = cel_err_set(err, CEL_EIO, "cannot make a temp state dir: %s", strerror(errno));
            g->temp_state[0] = '\0';
        } else {
            state = g->temp_state;
            cel_warn("No --state-dir: adapters live in %s and will not survive a restart", state);
        }
    }
    if (rc == CEL_OK)
        rc = cel_adapters_open(g->model, state, g->model_dir, o->import_roots, o->n_import_roots,
                               &g->store, err);
    if (rc == CEL_OK) store_limits(o);
    if (rc == CEL_OK) cel_adapters_set_node(g->store, o->node);
    if (rc != CEL_OK) {
        cel_lm_close();
        return rc;
    }
    g->progress = o->progress;
    g->progress_priv = o->progress_priv;
    cel_info("Model %s: %llu parameters, vocab %d, %d positions; state in %s", g->model_dir,
             (unsigned long long)cel_model_param_count(g->model), cel_model_vocab_size(g->model),
             cel_model_max_seq(g->model), cel_adapters_state_dir(g->store));
    return CEL_OK;
}

void cel_lm_close(void) {
    cel_adapters_free(g->store);
    cel_model_free(g->model);
    cel_tokenizer_free(g->tok);
    g->store = NULL;
    g->model = NULL;
    g->tok = NULL;
    rm_private_state();
}

void cel_lm_begin(const char *task_id) { g->task_id = task_id; }

int cel_lm_idle_work(void) { return g->n_ahead > 0; }

void cel_lm_idle(void) {
    for (int i = 0; i < g->n_ahead && g->store; i++) cel_adapters_prewrite(g->store, g->ahead[i]);
    g->n_ahead = 0;
}

int cel_lm_handback(void) { return g->store ? cel_adapters_handback(g->store) : 0; }

void cel_lm_stats(cel_lm_stats_t *out) {
    memset(out, 0, sizeof(*out));
    if (!g->model || !g->store) return;
    cel_device_stats_t ds;
    cel_model_device_stats(g->model, &ds);
    out->adapters = cel_adapters_loaded(g->store);
    out->adapters_gpu = ds.resident;
    out->evictions = cel_adapters_evictions(g->store);
    out->evictions_gpu = ds.evictions;
    out->gpu_used = (double)ds.mem_used;
    out->gpu_total = (double)ds.mem_total;
}

int cel_lm_ready(void) { return g->model && g->store; }

/* ---- helpers of the task functions ---- */

const char *cel_lm_repr(json_t *v) {
    static char buf[CEL_CALL_REPR_MAX + 8];
    return cel_call_repr(v, buf, sizeof(buf));
}

int cel_lm_adapter(cel_call_t *call, json_t *id, cel_adapter_t **out) {
    cel_err_t err;
    cel_err_clear(&err);
    int rc = cel_adapters_get(g->store, json_string_value(id), out, &err);
    if (rc == CEL_OK || rc == CEL_ENOMEM) return rc;
    if (rc == CEL_ENOTFOUND)
        return cel_call_fail(call, "ValueError", "unknown adapter %s", cel_lm_repr(id));
    if (rc == CEL_EAGAIN) return cel_lm_store_error(call, rc, "cannot load the adapter", &err);
    return cel_call_fail(call, "OSError", "adapter %s: cannot read its checkpoint: %s",
                         json_string_value(id), err.msg);
}

/* Raises type (module celeriac.exceptions: the client builds a class of that
 * name) with msg. */
static int fail_custom(cel_call_t *call, const char *type, const char *msg) {
    json_t *args = json_pack("[s]", msg);
    if (!args) return CEL_ENOMEM;
    int rc = cel_call_raise(call, type, "celeriac.exceptions", args, msg);
    return rc ? rc : CEL_ETYPE;
}

int cel_lm_hold(cel_call_t *call, json_t *id, cel_adapter_t **a, const char *redo_task) {
    cel_adapters_lost_t lost;
    cel_err_t err;
    int rc = cel_adapters_hold(g->store, *a, redo_task, &lost, &err);
    if (rc == CEL_EAGAIN) { /* a new checkpoint since the copy was loaded: take that */
        if ((rc = cel_lm_adapter(call, id, a)) != CEL_OK) return rc;
        rc = cel_adapters_hold(g->store, *a, redo_task, &lost, &err);
    }
    if (rc == CEL_OK && lost.count > 0) {
        cel_adapters_release(g->store, *a);
        char msg[1024];
        snprintf(msg, sizeof(msg),
                 "adapter %s: gradients from %d forward_backward call(s) since step %d were lost "
                 "with node %s; run forward_backward again",
                 cel_adapters_id(*a), lost.count, lost.step, lost.node);
        return fail_custom(call, "AdapterStateLost", msg);
    }
    if (rc == CEL_OK || rc == CEL_ENOMEM) return rc;
    if (rc == CEL_ESTATE) return fail_custom(call, "AdapterBusy", err.msg);
    if (rc == CEL_ENOTFOUND)
        return cel_call_fail(call, "ValueError", "unknown adapter %s", cel_lm_repr(id));
    if (rc == CEL_EAGAIN)
        return cel_call_fail(call, "RuntimeError", "%s (it keeps changing: retry)", err.msg);
    return cel_call_fail(call, "OSError", "adapter %s: %s", json_string_value(id), err.msg);
}

int cel_lm_store_error(cel_call_t *call, int rc, const char *what, const cel_err_t *err) {
    if (rc == CEL_EAGAIN) /* other users' gradients fill this executor: not the caller's fault */
        return cel_call_fail(call, "RuntimeError", "%s: %s", what, err->msg);
    if (rc == CEL_ELIMIT) return cel_call_fail(call, "ValueError", "%s: %s", what, err->msg);
    return cel_call_fail(call, "OSError", "%s: %s", what, err->msg);
}

int cel_lm_lora(cel_call_t *call, json_t *id, cel_lora_t **out) {
    *out = NULL;
    if (json_is_null(id)) return CEL_OK;
    cel_adapter_t *a;
    int rc = cel_lm_adapter(call, id, &a);
    if (rc == CEL_OK) *out = cel_adapters_lora(a);
    return rc;
}

int cel_lm_owner(cel_call_t *call, json_t *owner) {
    if (json_is_null(owner) || strlen(json_string_value(owner)) == json_string_length(owner))
        return CEL_OK;
    return cel_call_fail(call, "ValueError", "owner must not contain NUL");
}

int cel_lm_encode(cel_call_t *call, json_t *s, int add_bos, const char *what, int32_t **ids,
                  size_t *n) {
    *ids = NULL;
    *n = 0;
    cel_err_t err;
    int rc = cel_tokenizer_encode(g->tok, json_string_value(s), json_string_length(s), add_bos, ids,
                                  n, &err);
    if (rc == CEL_OK || rc == CEL_ENOMEM) return rc;
    return cel_call_fail(call, "ValueError", "%s cannot be tokenized: %s", what, err.msg);
}

void cel_lm_progress(long done, long total) {
    if (g->progress) g->progress(g->progress_priv, done, total);
}

int cel_lm_model_error(cel_call_t *call, int rc, const cel_err_t *err) {
    if (rc == CEL_ENOMEM) return rc;
    return cel_call_fail(call, rc == CEL_EIO ? "OSError" : "ValueError", "%s", err->msg);
}

uint64_t cel_lm_random_seed(void) {
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), 0) != (ssize_t)sizeof(s))
        s = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    return s;
}

/* ---- the functions of the tasks ---- */

static const struct {
    const char *name;
    cel_call_fn fn;
} lm_tasks[] = {
    { "lora.create", cel_lm_create },
    { "lora.delete", cel_lm_delete },
    { "lora.forward_backward", cel_lm_run_alone },
    { "lora.info", cel_lm_info },
    { "lora.list", cel_lm_list },
    { "lora.load", cel_lm_load },
    { "lora.optim_step", cel_lm_optim_step },
    { "lora.sample", cel_lm_sample },
    { "lora.save", cel_lm_save },
    { "model.score", cel_lm_run_alone },
};

cel_call_fn cel_lm_find(const char *name) {
    for (size_t i = 0; name && i < sizeof(lm_tasks) / sizeof(lm_tasks[0]); i++)
        if (strcmp(lm_tasks[i].name, name) == 0) return lm_tasks[i].fn;
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
    if (!g->temp_state[0]) return;
    nftw(g->temp_state, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    g->temp_state[0] = '\0';
}
