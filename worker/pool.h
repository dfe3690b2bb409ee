/* pool.h -- the executor pool: spawned celeriac-executor processes, one task each.
 *
 * Executors are started with uv_spawn (fork+exec, never a bare fork) and talk
 * over a socketpair on their fd 3 in frames (frame.h). The pool enforces hard
 * time limits (SIGKILL), forwards soft ones (SIGUSR1), replaces executors that
 * die or reach --max-tasks-per-child, and reports a task whose executor died.
 * Main process, libuv loop.
 */
#ifndef CEL_POOL_H
#define CEL_POOL_H

#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "../protocol/frame.h"
#include "options.h"

typedef struct cel_pool cel_pool_t;

enum { CEL_POOL_LOST = 1, CEL_POOL_TIMEOUT = 2 };

typedef struct cel_pool_cbs {
    /* The result frame of job (borrowed for the call). */
    void (*on_result)(void *priv, void *job, const cel_frame_result_t *res);
    /* A progress frame of job, while it runs (borrowed for the call). */
    void (*on_progress)(void *priv, void *job, const cel_frame_progress_t *prog);
    /* The executor running job died: why is CEL_POOL_LOST (exitcode or signum
     * tell how) or CEL_POOL_TIMEOUT (we killed it at the hard limit). */
    void (*on_lost)(void *priv, void *job, int why, int exitcode, int signum);
    /* A job written to an executor that died before starting it: it never
     * ran; the consumer queues it again (at the front). */
    void (*on_requeue)(void *priv, void *job);
    /* An executor became free, or has room for another task. */
    void (*on_idle)(void *priv);
    /* The executor of every slot has exited before it was ready with
     * CEL_EXEC_EXIT_PROTO or CEL_EXEC_EXIT_MODEL (their logs say why) and no
     * executor of this pool has ever been ready: a setting no restart mends
     * (a wrong --model, a device that is not there). Called once, with the
     * last one's slot and status; no slot is refilled after it. While some
     * executor may still start, failed ones are restarted after a second. */
    void (*on_cannot_start)(void *priv, int slot, int exitcode);
} cel_pool_cbs_t;

/* Creates the pool and spawns cfg->concurrency executors. */
cel_pool_t *cel_pool_new(uv_loop_t *loop, const cel_options_t *cfg, const cel_pool_cbs_t *cbs,
                         void *priv);

/* 1 when cel_pool_run would accept a task now (an idle executor, or one
 * whose recent tasks were so short that it takes a few queued ahead). */
int cel_pool_can_run(const cel_pool_t *p);

/* Number of executors running a task. */
int cel_pool_busy(const cel_pool_t *p);

/* What the first ready executor said its model runs on ("cpu", "cuda:0 (H200,
 * ...)"); "" before one is ready. Borrowed until the pool changes. */
const char *cel_pool_device(const cel_pool_t *p);

/* Adapters the executors hold in memory, as their last model results said. */
long cel_pool_adapters(const cel_pool_t *p);

/* Sends a run frame (payload borrowed: cel_frame_run_encode's) for job to an idle
 * executor (or queues it on a fast one, see cel_pool_can_run) and arms its
 * time limits (0 = none) for when it starts. pid_out and slot_out (may be NULL)
 * get the executor's pid and slot. Returns CEL_OK, CEL_ESTATE when no executor
 * can take it, CEL_EIO. */
int cel_pool_run(cel_pool_t *p, void *job, const uint8_t *payload, size_t len, double hard_limit,
                 double soft_limit, int *pid_out, int *slot_out);

/* Number of executor slots (the concurrency). */
int cel_pool_slots(const cel_pool_t *p);

/* 1 when the executor in slot is ready and running nothing, or, when it packs
 * tasks (--batch-max-tasks > 1), when it has room for one more. */
int cel_pool_slot_idle(const cel_pool_t *p, int slot);

/* Like cel_pool_run, on the executor of one slot, which must be idle (jobs
 * bound to an adapter are never queued behind another task). CEL_ESTATE when
 * it is not. */
int cel_pool_run_on(cel_pool_t *p, int slot, void *job, const uint8_t *payload, size_t len,
                    double hard_limit, double soft_limit, int *pid_out);

/* Kills the executor running job with signal signum (revoke --terminate later;
 * on_lost then reports it). Returns CEL_ENOTFOUND if job is not running. */
int cel_pool_terminate(cel_pool_t *p, void *job, int signum);

/* Pids of the live executors, up to max; returns how many. */
int cel_pool_pids(const cel_pool_t *p, int *pids, int max);

/* 1 when slot is in use and its executor holds no task (idle, starting, or
 * being replaced): the autoscaler may retire it without waiting. */
int cel_pool_slot_unused(const cel_pool_t *p, int slot);

/* Sets the number of executors to n (0..CEL_MAX_CONCURRENCY; 0 only under
 * --autoscale with MIN 0): new slots get
 * an executor now; removed ones end when idle (busy ones after their task).
 * CEL_EINVAL when out of range, CEL_ESTATE when closing. */
int cel_pool_resize(cel_pool_t *p, int n);

/* Replaces every executor: idle ones now, busy ones after their task. */
void cel_pool_restart(cel_pool_t *p);

/* Tasks the executor in slot has finished (0 when none). */
int cel_pool_tasks_written(const cel_pool_t *p, int slot);

/* Warm close: idle executors get EOF and exit; busy ones finish first (their
 * results are still reported). on_closed runs when every process and handle is
 * gone; p is freed then. With kill set, executors get SIGKILL at once. */
void cel_pool_close(cel_pool_t *p, int kill, void (*on_closed)(void *), void *priv);

#endif
