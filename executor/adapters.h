/* adapters.h -- the executor's LoRA adapter store: memory copies and checkpoints.
 *
 * Adapters live in memory by id (an LRU of at most CEL_ADAPTERS_MAX_LOADED) and
 * on disk under <state>/adapters/<id>/ as checkpoints that any executor of the
 * worker, or this one after a restart, loads when a job names an adapter it does
 * not hold. Every access re-reads the name of its current checkpoint, so a copy made
 * stale by another executor's step (or delete) is reloaded (or dropped): the store
 * is correct whichever executor gets a job; only accumulated gradients are local.
 *
 * Checkpoint layout (adapters_file.c: the file's layout, and the write order
 * that makes a step atomic):
 *   <state>/adapters/<id>/checkpoint         the current checkpoint, "ckpt-<step>-<nonce>",
 *                                            and room for the next; it holds the files
 *                                            meta.json (step, last_task_id, last_result,
 *                                                       recent_steps, owner, created,
 *                                                       pending_grads, ...)
 *                                            adapter_model.safetensors
 *                                            adapter_config.json   (PEFT's layout)
 *                                            optimizer.safetensors (AdamW moments)
 *                                            gradients.safetensors (only when a warm
 *                                                       shutdown handed gradients back)
 *   (a store from before the file: <id>/current naming <id>/ckpt-<step>-<nonce>/ of
 *   those files; read as it is, moved into the file by the adapter's next step)
 *   <state>/adapters/<id>/lock               flock'ed by the process holding its gradients
 *   <state>/adapters/<id>/grads.json         who holds how many forward_backward calls
 * Many workers, on one machine or many (issue 15), may share the state
 * directory: see adapters_hold.c and the
 * README's "Shared state directory" for what the store must guarantee.
 *   <state>/exports/<id>-step<N>/           lora.save's PEFT folders
 * Ids are "lora_" + 16 lowercase hex digits, checked before any path is built.
 * Limits (issue 12): adapters and checkpoint bytes per owner on disk, checked
 * under a lock every executor of the state directory shares; lora.load reads
 * a user's folder only through a directory fd, file by file without following
 * links or blocking, each file fstat'ed regular and no larger than an adapter
 * of its rank can be, copied to a private staging folder and loaded from
 * there; adapters with accumulated gradients are never evicted from memory.
 * Runs in executor processes only: blocking file I/O and fsync, one thread.
 */
#ifndef CEL_ADAPTERS_H
#define CEL_ADAPTERS_H

#include <jansson.h>

#include "../model/model.h"
#include "../common/err.h"

#define CEL_ADAPTERS_ID_LEN     21        /* "lora_" + 16 hex */
#define CEL_ADAPTERS_MAX_LOADED 64        /* adapters kept in one executor's memory */
#define CEL_ADAPTERS_MAX_LIST   10000     /* adapters lora.list reports */
#define CEL_ADAPTERS_MAX_META   (1 << 20) /* bytes of a meta.json */
#define CEL_ADAPTERS_MAX_ROOTS  16        /* --import-root directories */
#define CEL_ADAPTERS_PATH_MAX   4096
#define CEL_ADAPTERS_MAX_RECENT 32 /* steps whose task id and result meta.json keeps */
#define CEL_ADAPTERS_TASK_ID_MAX 255 /* longest task id a gradients marker names */

typedef struct cel_adapters cel_adapters_t;
typedef struct cel_adapter cel_adapter_t;

/* What the store enforces (cel_adapters_set_limits); zero fields: no limit. */
typedef struct cel_adapters_limits {
    long max_per_owner;            /* adapters one owner (or "no owner") may have */
    long long max_bytes_per_owner; /* their checkpoints and lora.save exports, in bytes */
    int max_rank;                  /* lora.load refuses a larger r */
    double max_alpha;              /* and a larger lora_alpha */
    /* floats one target module's LoRA holds (A and B, every layer) per unit of rank,
     * in CEL_LORA_* bit order: what bounds the size of an imported file */
    unsigned long long floats_per_rank[7];
} cel_adapters_limits_t;

/* Opens the store on state_dir (created if missing, with adapters/ and exports/
 * inside) for model m (borrowed; outlives the store). base_model names the model
 * in exported adapter_config.json files. roots: n_roots extra directories
 * lora.load may read from (must exist). OUT: *out (cel_adapters_free). */
int cel_adapters_open(cel_model_t *m, const char *state_dir, const char *base_model,
                      const char *const *roots, int n_roots, cel_adapters_t **out, cel_err_t *err);

/* Sets the limits the store enforces from now on (lim copied). */
void cel_adapters_set_limits(cel_adapters_t *s, const cel_adapters_limits_t *lim);

/* Frees the memory copies (unsaved gradients are lost); NULL is a no-op. */
void cel_adapters_free(cel_adapters_t *s);

/* The resolved (realpath) state directory. */
const char *cel_adapters_state_dir(const cel_adapters_t *s);

/* Adapters in memory now, and how many the LRU dropped from memory since open
 * (for the worker's metrics). */
int cel_adapters_loaded(const cel_adapters_t *s);
long cel_adapters_evictions(const cel_adapters_t *s);

/* 1 when id has the form lora_[0-9a-f]{16}, else 0. NULL gives 0. */
int cel_adapters_valid_id(const char *id);

/* Creates an adapter from cfg (seed included) owned by owner (may be NULL), writes
 * its step-0 checkpoint and keeps it in memory. CEL_ELIMIT: the owner's quota
 * (count or bytes) is used up; CEL_EAGAIN: every adapter in memory has
 * accumulated gradients (nothing is evicted then). OUT: *out, borrowed from the store until
 * the next call that may evict (get/create/import). */
int cel_adapters_create(cel_adapters_t *s, const cel_lora_config_t *cfg, const char *owner,
                        cel_adapter_t **out, cel_err_t *err);

/* The adapter id, in memory and in sync with its current checkpoint (loaded or
 * reloaded as needed). CEL_ENOTFOUND: no such adapter (or a malformed id);
 * CEL_EIO/CEL_EPROTO: its checkpoint could not be read; CEL_EAGAIN: it must be
 * loaded but every adapter in memory has accumulated gradients. OUT: *out,
 * borrowed as for create. */
int cel_adapters_get(cel_adapters_t *s, const char *id, cel_adapter_t **out, cel_err_t *err);

/* Writes a new checkpoint of a (its weights, AdamW state and step now) recording
 * task_id (may be NULL) and result (borrowed, may be NULL) as the outcome of the
 * step, and switches to it atomically (adapters_file.c).
 * On failure the old checkpoint stays current and a is dropped from memory, so
 * the next get reloads the last good state. */
int cel_adapters_commit(cel_adapters_t *s, cel_adapter_t *a, const char *task_id, json_t *result,
                        cel_err_t *err);

/* Drops a's memory copy (its gradients too); the checkpoint stays. */
void cel_adapters_evict(cel_adapters_t *s, cel_adapter_t *a);

/* Removes the adapter's memory copy and its checkpoints. CEL_ENOTFOUND when there
 * is no such adapter. */
int cel_adapters_delete(cel_adapters_t *s, const char *id, cel_err_t *err);

/* Writes a's weights as a PEFT folder <state>/exports/<id>-step<N>/ (kept if it
 * already exists). CEL_ELIMIT when it would pass the owner's byte quota. OUT:
 * path (CEL_ADAPTERS_PATH_MAX bytes). */
int cel_adapters_export(cel_adapters_t *s, cel_adapter_t *a, char *path, cel_err_t *err);

/* Imports the PEFT folder at path as a new adapter owned by owner (may be NULL),
 * keeping the step of its optimizer.safetensors when present. A relative path is
 * taken from the state directory. The folder and every file read must resolve
 * (after symlinks) inside the state directory or an import root. Errors:
 * CEL_ESTATE the path leaves them (PermissionError for the client), CEL_ENOTFOUND
 * it does not exist, CEL_ELIMIT/CEL_EAGAIN as for create, others a folder
 * that is not a loadable adapter (a file that is a link, a FIFO, a directory
 * or larger than its adapter can be; a rank or alpha past the limits;
 * non-finite weights). OUT: *out as for create. */
int cel_adapters_import(cel_adapters_t *s, const char *path, const char *owner, cel_adapter_t **out,
                        cel_err_t *err);

/* The info dict of the adapter id read from its checkpoint (no weights loaded):
 * {"adapter_id","rank","alpha","target_modules","step","owner","created"}.
 * CEL_ENOTFOUND when there is none. OUT: *out (new reference). */
int cel_adapters_info(cel_adapters_t *s, const char *id, json_t **out, cel_err_t *err);

/* Info dicts of every adapter (owner NULL) or of owner's, sorted by id, at most
 * CEL_ADAPTERS_MAX_LIST. OUT: *out (new reference). */
int cel_adapters_list(cel_adapters_t *s, const char *owner, json_t **out, cel_err_t *err);

/* Accessors of an adapter in memory (borrowed). */
const char *cel_adapters_id(const cel_adapter_t *a);
cel_lora_t *cel_adapters_lora(cel_adapter_t *a);
/* The info dict as cel_adapters_info gives it (new reference or NULL on ENOMEM). */
json_t *cel_adapters_describe(const cel_adapter_t *a);
/* Whether forward_backward accumulated gradients since the last step or load. */
int cel_adapters_has_grads(const cel_adapter_t *a);
/* How many forward_backward calls they hold (0 without). */
int cel_adapters_grad_count(const cel_adapter_t *a);
/* The result recorded for the step task_id made, if it is one of the adapter's last
 * CEL_ADAPTERS_MAX_RECENT steps (borrowed), else NULL. OUT: *step (may be NULL). */
json_t *cel_adapters_step_result(const cel_adapter_t *a, const char *task_id, int *step);

/* ---- many workers (issue 15): the shared state directory ----
 * See adapters_hold.c: one process at a time
 * holds an adapter's gradients, under an flock on <id>/lock, and only it
 * writes the adapter's checkpoints; <id>/grads.json says who holds how many. */

/* Gradients that died with the process that held them (cel_adapters_hold). */
typedef struct cel_adapters_lost {
    char node[256]; /* the node that held them */
    long pid;
    int count; /* forward_backward calls */
    int step;  /* the adapter's step they followed */
} cel_adapters_lost_t;

/* The node name the store writes into markers and temp file names (the
 * worker's -n); call once after open. */
void cel_adapters_set_node(cel_adapters_t *s, const char *node);
const char *cel_adapters_node(const cel_adapters_t *s);

/* Makes this process the holder of a's gradients (a no-op when it is): takes
 * the adapter's lock without waiting and reads its marker. CEL_OK: held; a has
 * the gradients a warm shutdown handed over in its checkpoint, if any; when
 * lost->count > 0, gradients of that many calls died with lost->node: they are
 * reported now, once (a has none). redo_task (NULL: none) is the task id of
 * the forward_backward about to run: when the only gradients that died are
 * that very task's (its holder died after noting them and before the message
 * was acked, so the broker delivers it again), nothing is lost: the call runs
 * again and makes them anew. CEL_ESTATE: another live process holds them (err
 * names its node). CEL_EAGAIN: the checkpoint moved on since a was loaded (get it
 * again). CEL_ENOTFOUND: deleted; CEL_EIO. */
int cel_adapters_hold(cel_adapters_t *s, cel_adapter_t *a, const char *redo_task,
                      cel_adapters_lost_t *lost, cel_err_t *err);

/* Drops a's gradients and, when held, the lock (after a failed or refused
 * step, or a forward_backward that failed midway). */
void cel_adapters_release(cel_adapters_t *s, cel_adapter_t *a);

/* Drops a's gradients and lets go of the lock but keeps the marker, so the next
 * holder (this process or another) reports them lost once (AdapterStateLost):
 * for a forward_backward that failed midway after earlier calls succeeded. */
void cel_adapters_forfeit(cel_adapters_t *s, cel_adapter_t *a);

/* After a forward_backward of adapter id (loaded, held, in this process)
 * has answered: writes its accumulated gradients ahead into the checkpoint's
 * next log entry, so that the optim_step's commit finds them on their way to
 * the disk (a hint: anything amiss, and the commit writes them itself). */
void cel_adapters_prewrite(cel_adapters_t *s, const char *id);

/* Records one more forward_backward call, task task_id (NULL: unknown), in
 * a's gradients (a held): marks it in memory and in its marker. The gradients
 * stay even when the marker cannot be written (the error says why; a loss
 * would then go unnamed). */
int cel_adapters_note_grads(cel_adapters_t *s, cel_adapter_t *a, const char *task_id,
                            cel_err_t *err);

/* Warm shutdown: writes a checkpoint with its gradients of every adapter this
 * process holds gradients of and lets go of them, so the next holder goes on
 * with no error. Returns how many were handed back (failures are logged and
 * leave their marker: the next holder reports them lost). */
int cel_adapters_handback(cel_adapters_t *s);

/* Phase timing for bench/users.py: true when CELERIAC_PHASE_TIMES is set (and
 * not "0"); then each checkpoint, forward_backward marker and optim_step logs
 * its phases at info level ("Phase times ... name=ms ..."). A monotonic clock
 * in milliseconds. */
int cel_adapters_phase_times(void);
double cel_adapters_now_ms(void);

/* Waits until the checkpoints replaced so far are removed (prune runs in the
 * background; cel_adapters_free waits too). */
void cel_adapters_settle(void);

#endif
