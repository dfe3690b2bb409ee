/* adapters_internal.h -- what adapters.c and adapters_hold.c share (internal).
 *
 * The store and adapter structs, and the file helpers both files use: atomic
 * writes, bounded reads, the current checkpoint's name and the checkpoint writers.
 * Executor processes only.
 */
#ifndef CEL_ADAPTERS_INTERNAL_H
#define CEL_ADAPTERS_INTERNAL_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>

#include "adapters.h"

#define CKPT_NAME_MAX 64                            /* "ckpt-<step>-<nonce>" */
#define STATE_MAX     (CEL_ADAPTERS_PATH_MAX - 512) /* the state dir's path: room for the rest */

/* A log entry's first file written ahead (cel_ckpt_file_prewrite): where, and
 * its entry hash and length, to know it when the step's entry is the same. */
typedef struct cel_ckpt_pre {
    int valid;
    uint64_t seq; /* the current record then */
    uint32_t nlog;
    uint64_t hash, len;
} cel_ckpt_pre_t;

struct cel_adapter {
    char id[CEL_ADAPTERS_ID_LEN + 1];
    cel_lora_t *lora;
    char ckpt[CKPT_NAME_MAX]; /* the checkpoint this copy equals (plus grads) */
    int has_grads;
    char *owner;             /* NULL: none */
    char created[32];        /* ISO-8601 UTC */
    json_t *recent;          /* [{"task_id", "step", "result"}], the last steps, oldest first */
    unsigned long long used; /* LRU clock */
    /* many workers (issue 15) */
    int hold_fd;    /* flock'ed <id>/lock while this process holds the gradients, else -1 */
    int marker_fd;  /* <id>/grads.json open for rewriting in place while held, else -1 */
    int grad_count; /* forward_backward calls in the gradients (with has_grads) */
    int ckpt_grads; /* forward_backward calls in the loaded checkpoint's gradients (handback) */
    char last_fb[CEL_ADAPTERS_TASK_ID_MAX + 1]; /* task id of the latest call noted, or "" */
    struct cel_ckpt_pre pre; /* the gradients written ahead (cel_adapters_prewrite) */
    int pruned;              /* prune ran since this copy was made (logged steps skip it) */
};

struct cel_adapters {
    cel_model_t *m;
    char state[STATE_MAX];
    char adir[STATE_MAX + 16]; /* <state>/adapters */
    char edir[STATE_MAX + 16]; /* <state>/exports */
    char base[CEL_ADAPTERS_PATH_MAX];
    char roots[CEL_ADAPTERS_MAX_ROOTS][PATH_MAX];
    int n_roots;
    cel_adapter_t *loaded[CEL_ADAPTERS_MAX_LOADED];
    int n_loaded;
    unsigned long long clock;
    cel_adapters_limits_t lim;
    long evictions; /* LRU drops from memory (the worker's metrics) */
    long ahead_used; /* logged steps whose gradient had been written ahead (tests) */
    char node[256]; /* the worker's node name (markers, messages) */
};

/* The "<node>" temp names carry besides the pid (issue 15: several machines
 * share the state directory, so a pid alone is not unique); set by
 * cel_adapters_set_node. */
extern char cel_adapters_tmp_tag[300];

/* Writes len bytes to dir/name atomically: temp file, fsync (unless nosync),
 * rename, fsync of dir. */
int cel_adapters_write_file(const char *dir, const char *name, const char *data, size_t len,
                            int nosync, cel_err_t *err);

/* Reads a file of at most max bytes. OUT: *buf (malloc'd, NUL-terminated), *len.
 * CEL_ENOTFOUND when it does not exist. */
int cel_adapters_read_file(const char *path, size_t max, char **buf, size_t *len, cel_err_t *err);

/* The name of adapter id's current checkpoint (its checkpoint file's, or the
 * `current` of a store from before the file). OUT: name (CKPT_NAME_MAX).
 * CEL_ENOTFOUND: no adapter. */
int cel_adapters_read_current(cel_adapters_t *s, const char *id, char *name, cel_err_t *err);

/* Steps 1-5 of adapters.c's file comment for a (in memory); with_grads: the
 * gradients too (a warm shutdown's hand-over). On success a->ckpt is the new name. */
int cel_adapters_write_ckpt(cel_adapters_t *s, cel_adapter_t *a, const char *task, json_t *result,
                            int with_grads, cel_err_t *err);

/* ---- the checkpoint file (adapters_file.c) ---- */

#define CKPT_FILE "checkpoint" /* <state>/adapters/<id>/checkpoint */

/* Where a checkpoint write's time went (ms): the archive (or log entry)
 * written and synced, the record switched; whole: a new file was written (no
 * in-place room); logged: the step went into the log. */
typedef struct cel_ckpt_times {
    double sync, sw;
    int whole, logged;
} cel_ckpt_times_t;

/* The step log of a checkpoint (adapters_file.c): the entries to replay, in
 * order, over the slot's archive (each step.json, applied.safetensors and the
 * meta.json after the step). */
#define CKPT_LOG_MAX 32
typedef struct cel_ckpt_log {
    int n;
    cel_lora_image_t e[CKPT_LOG_MAX];
} cel_ckpt_log_t;

void cel_ckpt_log_free(cel_ckpt_log_t *log);

/* Reads the current checkpoint of the file in the adapter directory dir: its
 * name (CKPT_NAME_MAX, may be NULL), its archive's bytes (may be NULL) and,
 * with img, its files: with stop_after, those of the newest archive (the last
 * log entry's, or the slot's) up to and including that file (the metadata
 * alone); without, the slot's and, in log (needed when there are any), the
 * logged steps to replay over them. CEL_ENOTFOUND: no file; CEL_ESTATE: want
 * (unless NULL) is no longer the current one; CEL_EPROTO: no valid record, or
 * a damaged archive or log. */
int cel_ckpt_file_read(const char *dir, const char *want, const char *stop_after, char *name,
                       cel_lora_image_t *img, cel_ckpt_log_t *log, long long *bytes,
                       cel_err_t *err);

/* Makes a checkpoint named name the current one of the file in dir: entry
 * (may be NULL: a step's log entry, see cel_lora_applied_image) appended to
 * the log when there is room, else img's files in place when they fit (see
 * adapters_file.c), else as a new file. pre (may be NULL): the entry's first
 * file as written ahead; when it is still the next entry's and the same, it is
 * not written again. expect: the name the current record must carry ("" for a
 * new file); CEL_ESTATE otherwise. t may be NULL. img may be NULL: then
 * CEL_ELIMIT, with nothing written, when entry cannot be logged. */
int cel_ckpt_file_write(const char *dir, const char *expect, const char *name,
                        const cel_lora_image_t *img, const cel_lora_image_t *entry,
                        const cel_ckpt_pre_t *pre, cel_ckpt_times_t *t, cel_err_t *err);

/* Writes part's first file where the next log entry of the file in dir goes
 * and starts its writeback (sync_file_range), so that the step's flush finds
 * it on its way (a forward_backward's gradient, before its optim_step). No
 * record changes: a crash leaves it unnamed. OUT: *pre. CEL_ESTATE: the
 * current record does not carry expect; CEL_ELIMIT: no log room. */
int cel_ckpt_file_prewrite(const char *dir, const char *expect, const cel_lora_image_t *part,
                           cel_ckpt_pre_t *pre, cel_err_t *err);

#endif
