/* lm_internal.h -- what the files of the model task family share (internal).
 *
 * lm.c (state, open/close, these helpers, name -> function), train.c (score,
 * forward_backward, packing, optim_step), sample.c (lora.sample) and admin.c
 * (create, save, load, info, list, delete). The task functions are
 * cel_call_fn's: they read the call's bound arguments (executor/call.h) and
 * set its outcome. Helpers that check or look something up raise through the
 * call and return CEL_ETYPE ("the call holds an exception") or CEL_ENOMEM, as
 * cel_call_fail does. Executor processes only, one task at a time.
 */
#ifndef CEL_LM_INTERNAL_H
#define CEL_LM_INTERNAL_H

#include <stdint.h>

#include <jansson.h>

#include "../model/model.h"
#include "../model/tokenizer.h"
#include "adapters.h"
#include "call.h"
#include "lm.h"

#define CEL_LM_BATCH_TOKENS 4096 /* B*T of one forward/backward pass of a task run alone */

/* The family's process-wide state (lm.c owns it; tasks read it). */
typedef struct cel_lm_state {
    cel_model_t *model;
    cel_tokenizer_t *tok;
    cel_adapters_t *store;
    char model_dir[CEL_ADAPTERS_PATH_MAX];
    char temp_state[1100];    /* non-empty: private state dir to remove at close */
    int max_input;            /* --max-input-tokens (<= the model's positions) */
    int32_t im_start, im_end; /* ChatML tokens, or -1 */
    int32_t eos;              /* appended to text examples, or -1 */
    const char *task_id;      /* of the running task (cel_lm_begin) */
    int (*progress)(void *, long, long);
    void *progress_priv;
    /* adapters whose forward_backward answered since the executor was last idle:
     * their gradients are written ahead then (cel_lm_idle) */
    char ahead[4][CEL_ADAPTERS_ID_LEN + 1];
    int n_ahead;
} cel_lm_state_t;

extern cel_lm_state_t cel_lm_state;

/* A short repr of v for messages (static buffer: one use per message). */
const char *cel_lm_repr(json_t *v);

/* The adapter named by id (a str, as bound) from the store; ValueError for an
 * unknown id, OSError for an unreadable checkpoint. OUT: *out, borrowed from the
 * store (see cel_adapters_get). */
int cel_lm_adapter(cel_call_t *call, json_t *id, cel_adapter_t **out);

/* Makes this process the holder of *a's gradients (cel_adapters_hold), taking
 * the adapter again by id when it changed on disk meanwhile (*a replaced).
 * redo_task: the forward_backward task about to run (NULL for other tasks).
 * Raises AdapterBusy (celeriac.exceptions) when another live worker process
 * holds them, AdapterStateLost when they died with their holder (reported
 * once; the hold is let go), ValueError for a deleted adapter, OSError. */
int cel_lm_hold(cel_call_t *call, json_t *id, cel_adapter_t **a, const char *redo_task);

/* An optional adapter's LoRA weights: id None is the base model (*out NULL). */
int cel_lm_lora(cel_call_t *call, json_t *id, cel_lora_t **out);

/* The owner (None, or a str the table bounded) must hold no NUL: it is a C string. */
int cel_lm_owner(cel_call_t *call, json_t *owner);

/* Encodes the str s (its length bounded by the table); what names it in a
 * message. OUT: *ids (malloc'd), *n. */
int cel_lm_encode(cel_call_t *call, json_t *s, int add_bos, const char *what, int32_t **ids,
                  size_t *n);

/* Tells the executor how far a long task is (rate-limited there). */
void cel_lm_progress(long done, long total);

/* A model error (rc, err) as the call's exception: OSError for I/O, ValueError else. */
int cel_lm_model_error(cel_call_t *call, int rc, const cel_err_t *err);

/* An adapter store error (rc, err) of an operation `what` as the call's
 * exception: ValueError for a quota (CEL_ELIMIT), RuntimeError when the
 * executor's memory is full of others' gradients (CEL_EAGAIN), OSError else. */
int cel_lm_store_error(cel_call_t *call, int rc, const char *what, const cel_err_t *err);

/* A seed for a request that gave none. */
uint64_t cel_lm_random_seed(void);

/* The task functions (cel_call_fn). model.score and lora.forward_backward run
 * as a packed pass of one (cel_lm_run_alone). */
int cel_lm_run_alone(cel_call_t *call);
int cel_lm_optim_step(cel_call_t *call);
int cel_lm_sample(cel_call_t *call);
int cel_lm_create(cel_call_t *call);
int cel_lm_save(cel_call_t *call);
int cel_lm_load(cel_call_t *call);
int cel_lm_info(cel_call_t *call);
int cel_lm_list(cel_call_t *call);
int cel_lm_delete(cel_call_t *call);

#endif
