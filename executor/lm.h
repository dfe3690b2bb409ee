/* lm.h -- the executor's model tasks (model.*, lora.*): what executor.c uses.
 *
 * model.score, lora.create, lora.forward_backward, lora.optim_step, lora.sample,
 * lora.save, lora.load, lora.info, lora.list, lora.delete: their signatures
 * and limits are in the task table (protocol/tasks.h), their results a
 * contract with the front end (see lm.c and the files it names). The family
 * holds process-wide state: the base model and tokenizer, loaded once by
 * cel_lm_open before the executor reports ready, and the adapter store
 * (executor/adapters.h). Executor processes only, one task at a time.
 */
#ifndef CEL_LM_H
#define CEL_LM_H

#include "../common/err.h"
#include "call.h"

#define CEL_LM_DEFAULT_INPUT 1024 /* --max-input-tokens default (<= max_seq) */
#define CEL_LM_MAX_ROOTS     16   /* --import-root options */

typedef struct cel_lm_opts {
    const char *model_dir;           /* Hugging Face folder: config.json, weights, tokenizer */
    const char *state_dir;           /* NULL: a private temp dir, removed at close */
    const char *private_parent;      /* where that private dir goes (<it>/executor-<pid>);
                                      * NULL: /tmp/celeriac-state-XXXXXX */
    const char *const *import_roots; /* extra folders lora.load may read */
    int n_import_roots;
    int max_input_tokens;  /* tokens of one text/example/prompt; 0: default */
    int threads;           /* OpenBLAS threads; <= 0 keeps OpenBLAS's */
    const char *device;    /* cel_model_set_device spec; NULL = auto */
    const char *precision; /* "bf16": cel_model_set_precision for CPU passes; NULL = fp32 */
    long gpu_adapter_mb;   /* cel_model_set_gpu_budget in MiB; 0 = no limit */
    char *device_chosen;   /* OUT (may be NULL): what was chosen, 256 bytes */
    /* Called now and then by long tasks with how far they are; the callee rate-limits
     * and sends a progress frame. May be NULL. Returns CEL_OK or a channel error
     * (ignored: progress is best effort). */
    int (*progress)(void *priv, long done, long total);
    void *progress_priv;
    long max_adapters_per_owner; /* the store's quotas (0: none), see adapters.h */
    long long max_bytes_per_owner;
    const char *node; /* the worker's node name (issue 15); NULL: "celeriac" */
} cel_lm_opts_t;

/* Loads the model and tokenizer and opens the adapter store. Errors name the
 * file or option at fault. Call once; cel_lm_close undoes it. */
int cel_lm_open(const cel_lm_opts_t *opts, cel_err_t *err);

/* Frees everything (a private temp state dir is removed). Safe without open. */
void cel_lm_close(void);

/* Warm shutdown (issue 15): checkpoints, with their gradients, the adapters
 * this executor holds gradients of, so whichever worker takes them next goes
 * on with no error. Returns how many. Safe without open. */
int cel_lm_handback(void);

/* The function of the task name, or NULL. Works before open (for the start-up
 * check of the task table). */
cel_call_fn cel_lm_find(const char *name);

/* 1 once cel_lm_open succeeded (the tasks with needs_model may run). */
int cel_lm_ready(void);

/* ---- packing model tasks (a batching executor) ----
 * lora.forward_backward and model.score can be prepared (arguments checked,
 * examples built) and then run together: their passes are packed so the base
 * model runs once over every task's rows, each with its own adapter
 * (cel_model_run_jobs). Each task gets the result it gets alone. */
typedef struct cel_lm_pending cel_lm_pending_t;

/* Prepares a bound call of a batchable task (the task table says which): checks
 * what the table cannot (adapter, vocabulary, lengths) and builds its examples
 * (call and its bound values stay alive until the pending is freed). OUT: *out
 * to run, or NULL when the call already has its result (a raised exception).
 * Returns CEL_OK or CEL_ENOMEM. */
int cel_lm_prepare(cel_call_t *call, cel_lm_pending_t **out);

/* Runs n prepared tasks in packed passes of at most max_tokens padded tokens,
 * until each has its result in its call. Returns CEL_OK or CEL_ENOMEM. */
int cel_lm_run(cel_lm_pending_t **ps, int n, long max_tokens);

void cel_lm_pending_free(cel_lm_pending_t *p);

/* What the executor reports about its model with results, for the worker's
 * metrics (frame.h's "stats"). Zero before open. */
typedef struct cel_lm_stats {
    int adapters;       /* adapters in memory */
    int adapters_gpu;   /* of them with a GPU copy */
    long evictions;     /* dropped from memory by the LRU since open */
    long evictions_gpu; /* moved from the GPU to host memory since open */
    double gpu_used;    /* GPU bytes the model holds (0 on the CPU) */
    double gpu_total;   /* the GPU's memory (0 on the CPU) */
} cel_lm_stats_t;

void cel_lm_stats(cel_lm_stats_t *out);

/* Tells the family the id of the task about to run (borrowed for the run): the
 * id recorded with an optimizer step and named by progress frames. */
void cel_lm_begin(const char *task_id);

/* Work for an idle executor, once its results are sent and no frame waits:
 * the gradients of the forward_backward calls that just answered are
 * written ahead into their adapters' checkpoints (cel_adapters_prewrite). */
void cel_lm_idle(void);

/* 1 when cel_lm_idle has something to do. */
int cel_lm_idle_work(void);

#endif
