/* pool.c -- spawned executor processes: start, feed, time-limit, reap, replace.
 *
 * Each executor is a heap object with four libuv handles (process, channel,
 * hard and soft timers); it is freed only after all four close callbacks ran.
 * A slot keeps pointing at its current executor; when one dies the slot gets
 * a new one (after a short delay if it died before it ever became ready, so a
 * broken executor binary cannot spin the loop); when the executor of every
 * slot has exited for a setting (status 2 or 3, before its ready frame) and
 * none ever started, the consumer is told once and nothing is refilled: the
 * worker stops instead of restarting them for good. Run frames are not written
 * one by one: each executor gathers the frames of one loop turn in its out
 * buffer and writes them with one write at the end of the loop turn (a
 * check handle right after the poll phase that gathered them, or an idle
 * handle at the start of the next turn for frames queued after the check
 * phase), so a batch of tasks costs one syscall and one wake-up of the
 * executor, and the frames go out before the Redis commands of the same turn
 * (redis.c writes those in the prepare phase, just before the loop waits):
 * an adapter's next task starts while the last one's result is being stored.
 * Main process only.
 */
#include "pool.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../protocol/protocol.h"
#include "../protocol/frame.h"
#include "../common/log.h"
#include "metrics.h"
#include "private_state.h"

#define READ_CHUNK  (64 * 1024)
/* Pipelining: an executor whose recent tasks were short gets up to PIPE_MAX
 * tasks written ahead, so it never waits a round trip for the next one. Tasks
 * still run one at a time; those queued behind a task that dies were never
 * started and go back to the consumer. */
#define PIPE_FAST   4
#define PIPE_MAX    CEL_MAX_BATCH_TASKS /* batching executors take up to --batch-max-tasks */
#define PIPE_FAST_S 0.002               /* mean runtime under which an executor is pipelined */
#define OUT_KEEP    (64 * 1024)         /* out buffer kept between turns up to this size */

enum { EX_STARTING, EX_IDLE, EX_BUSY, EX_DYING };

typedef struct executor {
    cel_pool_t *pool;
    int slot;
    int pid;
    int state;
    uv_process_t proc;
    uv_pipe_t chan;
    uv_timer_t hard;
    uv_timer_t soft;
    int handles_open;
    int exited, exitcode, termsig;
    int timed_out;
    int was_ready;
    char device[96]; /* what its ready frame named ("cpu", "cuda:0 (...)") */
    long adapters;   /* adapters in its memory, as its last model result said */
    int tasks_done;
    int restart;                               /* pool_restart: replace it after its task */
    double mean_runtime;                       /* moving average of recent task runtimes */
    void *jobs[PIPE_MAX];                      /* jobs[0] runs, the rest are written and waiting */
    double hard_s[PIPE_MAX], soft_s[PIPE_MAX]; /* their limits */
    int njobs;
    cel_frame_reader_t *reader;
    uint8_t *out; /* run frames of this loop turn, not yet written */
    size_t out_len, out_cap;
    char buf[READ_CHUNK];
} executor_t;

struct cel_pool {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_pool_cbs_t cbs;
    void *priv;
    executor_t **slots;
    uv_timer_t *respawn; /* one per slot, CEL_MAX_CONCURRENCY of each */
    uv_check_t flusher;  /* these two run while some executor's out buffer holds frames */
    uv_idle_t flusher_idle;
    int n;   /* slots in use (the concurrency) */
    int top; /* slots that may still hold an executor (>= n after a shrink) */
    int closing;
    int kill_on_close;
    int live;                                        /* executor objects not yet freed */
    int ever_ready;                                  /* some executor has sent its ready frame */
    int cannot_start;                                /* on_cannot_start was called */
    unsigned char start_failed[CEL_MAX_CONCURRENCY]; /* slots whose executor could not start */
    int timers_open;
    void (*on_closed)(void *);
    void *closed_priv;
};

static void spawn(cel_pool_t *p, int slot);
static void executor_shutdown(executor_t *e);
static void start_timers(executor_t *e);
static void on_hard_timeout(uv_timer_t *t);

static void maybe_closed(cel_pool_t *p) {
    if (!p->closing || p->live > 0 || p->timers_open > 0) return;
    void (*cb)(void *) = p->on_closed;
    void *cp = p->closed_priv;
    free(p->slots);
    free(p->respawn);
    free(p);
    if (cb) cb(cp);
}

typedef struct write_req {
    uv_write_t req;
    uint8_t *data; /* the frames it writes, owned */
} write_req_t;

static void on_written(uv_write_t *req, int status) {
    write_req_t *w = (write_req_t *)req;
    if (status < 0 && status != UV_ECANCELED)
        cel_error("writing to an executor failed: %s", uv_strerror(status));
    free(w->data);
    free(w);
}

/* Writes e's gathered frames: at once when the channel takes them, else the
 * rest through a queued write that owns them (the executor then reads what
 * is there, and a dead one is reaped as usual: its jobs are reported). */
static void flush_out(executor_t *e) {
    if (!e->out_len) return;
    size_t done = 0;
    if (e->state != EX_DYING && !uv_is_closing((uv_handle_t *)&e->chan)) {
        uv_buf_t b = uv_buf_init((char *)e->out, (unsigned)e->out_len);
        int n = uv_try_write((uv_stream_t *)&e->chan, &b, 1);
        if (n > 0) done = (size_t)n;
        if (done < e->out_len) {
            write_req_t *w = malloc(sizeof(*w));
            uint8_t *rest = w ? malloc(e->out_len - done) : NULL;
            if (rest) {
                memcpy(rest, e->out + done, e->out_len - done);
                w->data = rest;
                b = uv_buf_init((char *)rest, (unsigned)(e->out_len - done));
                if (uv_write(&w->req, (uv_stream_t *)&e->chan, &b, 1, on_written) != 0) {
                    free(rest);
                    free(w);
                    rest = NULL;
                }
            } else {
                free(w);
            }
            if (!rest) {
                cel_error("executor %d: cannot write its tasks; replacing it", e->slot + 1);
                uv_process_kill(&e->proc, SIGKILL);
            }
        }
    }
    e->out_len = 0;
    if (e->out_cap > OUT_KEEP) {
        free(e->out);
        e->out = NULL;
        e->out_cap = 0;
    }
}

static void flush_all(cel_pool_t *p) {
    uv_check_stop(&p->flusher);
    uv_idle_stop(&p->flusher_idle);
    for (int i = 0; i < p->top; i++)
        if (p->slots[i]) flush_out(p->slots[i]);
}

static void on_flush(uv_check_t *h) { flush_all(h->data); }
static void on_flush_idle(uv_idle_t *h) { flush_all(h->data); }

static void on_respawn_timer(uv_timer_t *t) {
    cel_pool_t *p = t->data;
    int slot = (int)(t - p->respawn);
    if (!p->closing && !p->slots[slot] && slot < p->n) spawn(p, slot);
}

/* Last handle of an executor closed: report its task, free it, refill the slot. */
static void on_handle_closed(uv_handle_t *h) {
    executor_t *e = h->data;
    if (--e->handles_open > 0) return;
    cel_pool_t *p = e->pool;
    void *job = e->njobs ? e->jobs[0] : NULL;
    void *queued[PIPE_MAX];
    int nqueued = e->njobs > 1 ? e->njobs - 1 : 0;
    for (int i = 0; i < nqueued; i++) queued[i] = e->jobs[i + 1];
    int why = e->timed_out ? CEL_POOL_TIMEOUT : CEL_POOL_LOST;
    int exitcode = e->exitcode, termsig = e->termsig, slot = e->slot, was_ready = e->was_ready;
    if (p->slots[slot] == e) p->slots[slot] = NULL;
    cel_frame_reader_free(e->reader);
    free(e->out);
    free(e);
    p->live--;
    /* Queued jobs never started: hand them back, last first, so the consumer
     * can put them at the front of its queue in their order. */
    for (int i = nqueued - 1; i >= 0; i--)
        if (p->cbs.on_requeue) p->cbs.on_requeue(p->priv, queued[i]);
    if (job && p->cbs.on_lost) p->cbs.on_lost(p->priv, job, why, exitcode, termsig);
    if (!p->closing && !was_ready && !p->ever_ready && !termsig && slot < p->n &&
        (exitcode == CEL_EXEC_EXIT_PROTO || exitcode == CEL_EXEC_EXIT_MODEL))
        p->start_failed[slot] = 1;
    int all_failed = !p->ever_ready && p->n > 0;
    for (int i = 0; i < p->n && all_failed; i++) all_failed = p->start_failed[i];
    if (!p->closing && all_failed) {
        /* every slot's executor met a setting no restart mends, and none ever
         * started (another still loading may yet start: then this rule is off):
         * said once, and nothing is refilled (the consumer stops the worker) */
        for (int i = 0; i < p->n; i++) uv_timer_stop(&p->respawn[i]);
        if (!p->cannot_start && p->cbs.on_cannot_start) {
            p->cannot_start = 1;
            p->cbs.on_cannot_start(p->priv, slot, exitcode);
        }
    } else if (!p->closing && slot < p->n) {
        /* A child that never became ready is broken: do not spin on it. */
        uv_timer_start(&p->respawn[slot], on_respawn_timer, was_ready ? 0 : 1000, 0);
    }
    maybe_closed(p);
}

static void close_executor_handles(executor_t *e) {
    if (e->state == EX_DYING) return;
    e->state = EX_DYING;
    uv_timer_stop(&e->hard);
    uv_timer_stop(&e->soft);
    uv_close((uv_handle_t *)&e->hard, on_handle_closed);
    uv_close((uv_handle_t *)&e->soft, on_handle_closed);
    if (!uv_is_closing((uv_handle_t *)&e->chan))
        uv_close((uv_handle_t *)&e->chan, on_handle_closed);
}

static void on_executor_exit(uv_process_t *proc, int64_t status, int termsig) {
    executor_t *e = proc->data;
    e->exited = 1;
    e->exitcode = (int)status;
    e->termsig = termsig;
    if (e->njobs && !e->timed_out)
        cel_error("Process 'Executor-%d' pid:%d exited with '%s %d'", e->slot + 1, e->pid,
                  termsig ? "signal" : "exitcode", termsig ? termsig : (int)status);
    else
        cel_debug("executor %d (pid %d) exited (status %d, signal %d)", e->slot + 1, e->pid,
                  (int)status, termsig);
    /* its private adapters folder, which only a clean exit removes itself */
    cel_private_state_drop(e->pool->cfg->private_state, e->pid);
    close_executor_handles(e);
    uv_close((uv_handle_t *)&e->proc, on_handle_closed);
}

/* A frame the executor should not have sent: it is replaced (its task, if
 * any, is reported lost). */
static void malformed(executor_t *e, const char *why) {
    cel_error("executor %d sent a malformed frame (%s); replacing it", e->slot + 1, why);
    uv_process_kill(&e->proc, SIGKILL);
}

static void on_ready_frame(executor_t *e, const uint8_t *payload, size_t len) {
    cel_pool_t *p = e->pool;
    cel_frame_ready_t rd;
    cel_err_t err;
    if (cel_frame_ready_decode(payload, len, &rd, &err) != CEL_OK) {
        malformed(e, err.msg);
        return;
    }
    if (!e->was_ready)
        cel_info("executor %d (pid %d): model on %s", e->slot + 1, e->pid, rd.device);
    snprintf(e->device, sizeof(e->device), "%s", rd.device ? rd.device : "");
    cel_frame_ready_clear(&rd);
    e->was_ready = 1;
    p->ever_ready = 1;
    cel_metrics_executor_ready(e->slot);
    if (e->state == EX_STARTING) {
        e->state = EX_IDLE;
        if (p->closing || e->slot >= p->n) executor_shutdown(e);
        else if (p->cbs.on_idle) p->cbs.on_idle(p->priv);
    }
}

static void on_result_frame(executor_t *e, const uint8_t *payload, size_t len) {
    cel_pool_t *p = e->pool;
    cel_frame_result_t res;
    cel_err_t err;
    if (cel_frame_result_decode(payload, len, &res, &err) != CEL_OK) {
        malformed(e, err.msg);
        return;
    }
    cel_metrics_executor_result(e->slot, &res);
    if (res.stats.present && res.stats.adapters >= 0) e->adapters = res.stats.adapters;
    void *job = e->jobs[0];
    e->njobs--;
    memmove(e->jobs, e->jobs + 1, sizeof(e->jobs[0]) * (size_t)e->njobs);
    memmove(e->hard_s, e->hard_s + 1, sizeof(e->hard_s[0]) * (size_t)e->njobs);
    memmove(e->soft_s, e->soft_s + 1, sizeof(e->soft_s[0]) * (size_t)e->njobs);
    uv_timer_stop(&e->hard);
    uv_timer_stop(&e->soft);
    e->tasks_done++;
    e->mean_runtime = e->tasks_done == 1 ? res.runtime : 0.8 * e->mean_runtime + 0.2 * res.runtime;
    if (e->njobs) start_timers(e); /* the next queued task starts now */
    else e->state = EX_IDLE;
    if (p->cbs.on_result) p->cbs.on_result(p->priv, job, &res);
    cel_frame_result_clear(&res);
    if (e->njobs) {
        if (p->cbs.on_idle) p->cbs.on_idle(p->priv); /* room in its pipe */
    } else if (p->closing || e->slot >= p->n || e->restart) {
        executor_shutdown(e); /* closing, shrunk away or restarted */
    } else if (p->cfg->max_tasks_per_child && e->tasks_done >= p->cfg->max_tasks_per_child) {
        if (!p->closing)
            cel_info("executor %d (pid %d) reached --max-tasks-per-child %d; replacing it",
                     e->slot + 1, e->pid, p->cfg->max_tasks_per_child);
        executor_shutdown(e);
    } else if (p->cbs.on_idle) {
        p->cbs.on_idle(p->priv);
    }
}

static void on_progress_frame(executor_t *e, const uint8_t *payload, size_t len) {
    cel_pool_t *p = e->pool;
    cel_frame_progress_t prog;
    cel_err_t err;
    if (cel_frame_progress_decode(payload, len, &prog, &err) != CEL_OK) {
        malformed(e, err.msg);
        return;
    }
    if (p->cbs.on_progress) p->cbs.on_progress(p->priv, e->jobs[0], &prog);
    cel_frame_progress_clear(&prog);
}

static void handle_frame(executor_t *e, const uint8_t *payload, size_t len) {
    cel_err_t err;
    int op = cel_frame_op(payload, len, &err);
    if (op == CEL_FRAME_READY) {
        on_ready_frame(e, payload, len);
    } else if (op == CEL_FRAME_RESULT && e->state == EX_BUSY) {
        on_result_frame(e, payload, len);
    } else if (op == CEL_FRAME_PROGRESS && e->state == EX_BUSY) {
        on_progress_frame(e, payload, len);
    } else if (op > 0 || op == CEL_ENOTFOUND) {
        static const char *const names[] = { "", "ready", "run", "result", "progress" };
        cel_warn("executor %d sent an unexpected '%s' frame; ignored", e->slot + 1,
                 op > 0 ? names[op] : err.msg);
    } else {
        malformed(e, err.msg);
    }
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
    executor_t *e = h->data;
    buf->base = e->buf;
    buf->len = sizeof(e->buf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    executor_t *e = s->data;
    if (nread < 0) {
        /* EOF or error: the process is exiting or dead; its exit reaps it. */
        uv_read_stop(s);
        if (!e->exited && nread != UV_EOF)
            cel_error("executor %d channel: %s", e->slot + 1, uv_strerror((int)nread));
        if (!e->exited) uv_process_kill(&e->proc, SIGKILL);
        return;
    }
    if (nread == 0) return;
    if (cel_frame_reader_feed(e->reader, buf->base, (size_t)nread) != CEL_OK) {
        cel_error("executor %d: out of memory reading its frames", e->slot + 1);
        uv_process_kill(&e->proc, SIGKILL);
        return;
    }
    for (;;) {
        const uint8_t *payload;
        size_t len;
        cel_err_t err;
        int rc = cel_frame_reader_next(e->reader, &payload, &len, &err);
        if (rc == CEL_EAGAIN) break;
        if (rc != CEL_OK) {
            cel_error("executor %d: %s; replacing it", e->slot + 1, err.msg);
            uv_process_kill(&e->proc, SIGKILL);
            break;
        }
        handle_frame(e, payload, len);
        if (e->state == EX_DYING || e->exited) break;
    }
}

static void on_soft_timeout(uv_timer_t *t);

/* Starts the time limits of the task now running (jobs[0]). */
static void start_timers(executor_t *e) {
    e->timed_out = 0;
    if (e->hard_s[0] > 0)
        uv_timer_start(&e->hard, on_hard_timeout, (uint64_t)(e->hard_s[0] * 1000), 0);
    if (e->soft_s[0] > 0)
        uv_timer_start(&e->soft, on_soft_timeout, (uint64_t)(e->soft_s[0] * 1000), 0);
}

static void on_hard_timeout(uv_timer_t *t) {
    executor_t *e = t->data;
    if (e->state != EX_BUSY) return;
    e->timed_out = 1;
    cel_debug("executor %d (pid %d): hard time limit, killing it", e->slot + 1, e->pid);
    uv_process_kill(&e->proc, SIGKILL);
}

static void on_soft_timeout(uv_timer_t *t) {
    executor_t *e = t->data;
    if (e->state == EX_BUSY) uv_process_kill(&e->proc, SIGUSR1);
}

static void spawn(cel_pool_t *p, int slot) {
    executor_t *e = calloc(1, sizeof(*e));
    if (!e || !(e->reader = cel_frame_reader_new(CEL_FRAME_MAX))) {
        free(e);
        cel_error("out of memory starting an executor; retrying");
        uv_timer_start(&p->respawn[slot], on_respawn_timer, 1000, 0);
        return;
    }
    e->pool = p;
    e->slot = slot;
    e->state = EX_STARTING;
    uv_pipe_init(p->loop, &e->chan, 0);
    uv_timer_init(p->loop, &e->hard);
    uv_timer_init(p->loop, &e->soft);
    e->chan.data = e->hard.data = e->soft.data = e->proc.data = e;
    e->handles_open = 3;

    /* argv: the executor program and the options it shares with us. */
    char index[16], maxin[32], btasks[16], bwait[16], btokens[32], gpumem[32], qn[32], qb[32];
    snprintf(qn, sizeof(qn), "%ld", p->cfg->max_adapters_per_owner);
    snprintf(qb, sizeof(qb), "%lld", p->cfg->max_bytes_per_owner);
    snprintf(gpumem, sizeof(gpumem), "%ld", p->cfg->gpu_adapter_mb);
    snprintf(btasks, sizeof(btasks), "%d", p->cfg->batch_max_tasks);
    snprintf(bwait, sizeof(bwait), "%d", p->cfg->batch_wait_ms);
    snprintf(btokens, sizeof(btokens), "%ld", p->cfg->batch_max_tokens);
    snprintf(index, sizeof(index), "%d", slot + 1);
    snprintf(maxin, sizeof(maxin), "%ld", p->cfg->max_input_tokens);
    const cel_options_t *cfg = p->cfg;
    char *args[32 + 2 * 16];
    int na = 0;
    args[na++] = (char *)cfg->executor;
    args[na++] = "--fd", args[na++] = "3";
    args[na++] = "--index", args[na++] = index;
    args[na++] = "--loglevel", args[na++] = (char *)cel_log_level_name(cfg->loglevel);
    if (cfg->model[0]) args[na++] = "--model", args[na++] = (char *)cfg->model;
    if (cfg->state_dir[0]) args[na++] = "--state-dir", args[na++] = (char *)cfg->state_dir;
    else if (cfg->private_state[0])
        args[na++] = "--private-state-parent", args[na++] = (char *)cfg->private_state;
    for (int i = 0; i < cfg->nimport_roots; i++)
        args[na++] = "--import-root", args[na++] = cfg->import_roots[i];
    if (cfg->max_input_tokens) args[na++] = "--max-input-tokens", args[na++] = maxin;
    if (cfg->device[0]) args[na++] = "--device", args[na++] = (char *)cfg->device;
    if (cfg->precision[0]) args[na++] = "--precision", args[na++] = (char *)cfg->precision;
    args[na++] = "--batch-max-tasks", args[na++] = btasks;
    args[na++] = "--batch-wait-ms", args[na++] = bwait;
    args[na++] = "--batch-max-tokens", args[na++] = btokens;
    if (cfg->gpu_adapter_mb) args[na++] = "--gpu-adapter-memory", args[na++] = gpumem;
    args[na++] = "--max-adapters-per-owner", args[na++] = qn;
    args[na++] = "--max-adapter-bytes-per-owner", args[na++] = qb;
    args[na++] = "--node", args[na++] = (char *)cfg->hostname; /* issue 15: adapter homes */
    args[na] = NULL;
    uv_stdio_container_t stdio[4];
    stdio[0].flags = UV_IGNORE;
    stdio[1].flags = UV_INHERIT_FD;
    stdio[1].data.fd = 1;
    stdio[2].flags = UV_INHERIT_FD;
    stdio[2].data.fd = 2;
    stdio[3].flags = UV_CREATE_PIPE | UV_READABLE_PIPE | UV_WRITABLE_PIPE;
    stdio[3].data.stream = (uv_stream_t *)&e->chan;
    uv_process_options_t opts;
    memset(&opts, 0, sizeof(opts));
    opts.file = p->cfg->executor;
    opts.args = args;
    opts.exit_cb = on_executor_exit;
    opts.stdio = stdio;
    opts.stdio_count = 4;
    int rc = uv_spawn(p->loop, &e->proc, &opts);
    p->live++;
    p->slots[slot] = e;
    if (rc != 0) {
        cel_error("cannot start executor '%s': %s", p->cfg->executor, uv_strerror(rc));
        e->state = EX_DYING;
        uv_close((uv_handle_t *)&e->hard, on_handle_closed);
        uv_close((uv_handle_t *)&e->soft, on_handle_closed);
        uv_close((uv_handle_t *)&e->chan, on_handle_closed);
        return;
    }
    e->handles_open = 4;
    e->pid = e->proc.pid;
    uv_read_start((uv_stream_t *)&e->chan, on_alloc, on_read);
    cel_debug("started executor %d (pid %d)", slot + 1, e->pid);
}

cel_pool_t *cel_pool_new(uv_loop_t *loop, const cel_options_t *cfg, const cel_pool_cbs_t *cbs,
                         void *priv) {
    cel_pool_t *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->loop = loop;
    p->cfg = cfg;
    p->cbs = *cbs;
    p->priv = priv;
    /* with --autoscale the pool starts at MIN executors (issue 19) */
    p->n = p->top = cfg->autoscale_max ? cfg->autoscale_min : cfg->concurrency;
    /* Sized for the largest pool so pool_grow never moves a live handle. */
    p->slots = calloc(CEL_MAX_CONCURRENCY, sizeof(*p->slots));
    p->respawn = calloc(CEL_MAX_CONCURRENCY, sizeof(*p->respawn));
    if (!p->slots || !p->respawn) {
        free(p->slots);
        free(p->respawn);
        free(p);
        return NULL;
    }
    for (int i = 0; i < CEL_MAX_CONCURRENCY; i++) {
        uv_timer_init(loop, &p->respawn[i]);
        p->respawn[i].data = p;
        p->timers_open++;
    }
    uv_check_init(loop, &p->flusher);
    p->flusher.data = p;
    uv_idle_init(loop, &p->flusher_idle);
    p->flusher_idle.data = p;
    p->timers_open += 2;
    for (int i = 0; i < p->n; i++) spawn(p, i);
    return p;
}

/* How many tasks executor e may hold now: 0 when it cannot take one. */
static int room(const cel_pool_t *p, const executor_t *e) {
    if (!e || (e->state != EX_IDLE && e->state != EX_BUSY)) return 0;
    if (e->slot >= p->n || e->restart) return 0;
    int depth = e->tasks_done >= 8 && e->mean_runtime < PIPE_FAST_S ? PIPE_FAST : 1;
    if (p->cfg->batch_max_tasks > depth) depth = p->cfg->batch_max_tasks;
    if (p->cfg->max_tasks_per_child) {
        int left = p->cfg->max_tasks_per_child - e->tasks_done - e->njobs;
        if (left < depth) depth = left;
    }
    return depth > e->njobs ? depth - e->njobs : 0;
}

int cel_pool_can_run(const cel_pool_t *p) {
    if (p->closing) return 0;
    for (int i = 0; i < p->n; i++)
        if (room(p, p->slots[i]) > 0) return 1;
    return 0;
}

const char *cel_pool_device(const cel_pool_t *p) {
    for (int i = 0; i < p->top; i++)
        if (p->slots[i] && p->slots[i]->was_ready) return p->slots[i]->device;
    return "";
}

long cel_pool_adapters(const cel_pool_t *p) {
    long n = 0;
    for (int i = 0; i < p->top; i++)
        if (p->slots[i]) n += p->slots[i]->adapters;
    return n;
}

int cel_pool_busy(const cel_pool_t *p) {
    int n = 0;
    for (int i = 0; i < p->top; i++)
        if (p->slots[i] && p->slots[i]->state == EX_BUSY) n++;
    return n;
}

/* Queues a run frame for executor e (written at the end of this loop turn:
 * flush_all) and queues job on it. */
static int run_on(executor_t *e, void *job, const uint8_t *payload, size_t len, double hard_limit,
                  double soft_limit, int *pid_out, int *slot_out) {
    uint8_t hdr[CEL_FRAME_HDR];
    if (cel_frame_header(len, hdr, NULL) != CEL_OK) return CEL_ELIMIT;
    size_t need = e->out_len + CEL_FRAME_HDR + len;
    if (need > e->out_cap) {
        size_t cap = e->out_cap ? e->out_cap : 4096;
        while (cap < need) cap *= 2;
        uint8_t *nb = realloc(e->out, cap);
        if (!nb) return CEL_ENOMEM;
        e->out = nb;
        e->out_cap = cap;
    }
    memcpy(e->out + e->out_len, hdr, CEL_FRAME_HDR);
    memcpy(e->out + e->out_len + CEL_FRAME_HDR, payload, len);
    e->out_len = need;
    uv_check_start(&e->pool->flusher, on_flush);
    uv_idle_start(&e->pool->flusher_idle, on_flush_idle);
    e->jobs[e->njobs] = job;
    e->hard_s[e->njobs] = hard_limit;
    e->soft_s[e->njobs] = soft_limit;
    e->njobs++;
    if (e->njobs == 1) {
        e->state = EX_BUSY;
        start_timers(e);
    }
    if (pid_out) *pid_out = e->pid;
    if (slot_out) *slot_out = e->slot;
    return CEL_OK;
}

int cel_pool_run(cel_pool_t *p, void *job, const uint8_t *payload, size_t len, double hard_limit,
                 double soft_limit, int *pid_out, int *slot_out) {
    /* An idle executor first; else the least loaded one with room. */
    executor_t *e = NULL;
    for (int i = 0; i < p->n && !e; i++)
        if (p->slots[i] && p->slots[i]->state == EX_IDLE && room(p, p->slots[i]) > 0)
            e = p->slots[i];
    for (int i = 0; i < p->n && !e; i++)
        if (room(p, p->slots[i]) > 0 && (!e || p->slots[i]->njobs < e->njobs)) e = p->slots[i];
    if (!e || p->closing) return CEL_ESTATE;
    return run_on(e, job, payload, len, hard_limit, soft_limit, pid_out, slot_out);
}

int cel_pool_slot_idle(const cel_pool_t *p, int slot) {
    if (p->closing || slot < 0 || slot >= p->n || !p->slots[slot]) return 0;
    /* a packing executor takes adapter jobs while it holds others: it runs them together */
    if (p->cfg->batch_max_tasks > 1) return room(p, p->slots[slot]) > 0;
    return p->slots[slot]->state == EX_IDLE && room(p, p->slots[slot]) > 0;
}

int cel_pool_slots(const cel_pool_t *p) { return p->n; }

int cel_pool_run_on(cel_pool_t *p, int slot, void *job, const uint8_t *payload, size_t len,
                    double hard_limit, double soft_limit, int *pid_out) {
    if (!cel_pool_slot_idle(p, slot)) return CEL_ESTATE;
    return run_on(p->slots[slot], job, payload, len, hard_limit, soft_limit, pid_out, NULL);
}

int cel_pool_terminate(cel_pool_t *p, void *job, int signum) {
    for (int i = 0; i < p->top; i++) {
        executor_t *e = p->slots[i];
        if (e && e->state == EX_BUSY && e->njobs && e->jobs[0] == job) {
            uv_process_kill(&e->proc, signum ? signum : SIGKILL);
            return CEL_OK;
        }
    }
    return CEL_ENOTFOUND;
}

int cel_pool_pids(const cel_pool_t *p, int *pids, int max) {
    int n = 0;
    for (int i = 0; i < p->top && n < max; i++)
        if (p->slots[i] && p->slots[i]->state != EX_DYING && p->slots[i]->pid)
            pids[n++] = p->slots[i]->pid;
    return n;
}

/* Ends an idle executor gracefully: EOF on its channel makes it exit 0; its
 * exit callback then closes the process handle. One that hangs is killed by a
 * later cel_pool_close(kill=1). */
static void executor_shutdown(executor_t *e) {
    /* issue 15: SIGUSR2 before the EOF says "the main process is alive and ends
     * you on purpose": the executor then hands back its adapters' gradients by
     * checkpoint (an EOF alone may be a main process that died) */
    if (!e->exited) uv_process_kill(&e->proc, SIGUSR2);
    uv_read_stop((uv_stream_t *)&e->chan);
    close_executor_handles(e);
}

static void on_respawn_timer_closed(uv_handle_t *h) {
    cel_pool_t *p = h->data;
    p->timers_open--;
    maybe_closed(p);
}

void cel_pool_close(cel_pool_t *p, int kill, void (*on_closed)(void *), void *priv) {
    int first = !p->closing;
    p->closing = 1;
    p->kill_on_close |= kill;
    if (first) {
        p->on_closed = on_closed;
        p->closed_priv = priv;
    }
    if (first) {
        for (int i = 0; i < CEL_MAX_CONCURRENCY; i++) {
            uv_timer_stop(&p->respawn[i]);
            uv_close((uv_handle_t *)&p->respawn[i], on_respawn_timer_closed);
        }
        flush_all(p); /* what was handed out this turn still goes */
        uv_close((uv_handle_t *)&p->flusher, on_respawn_timer_closed);
        uv_close((uv_handle_t *)&p->flusher_idle, on_respawn_timer_closed);
    }
    for (int i = 0; i < p->top; i++) {
        executor_t *e = p->slots[i];
        if (!e) continue;
        if (kill) {
            if (!e->exited) uv_process_kill(&e->proc, SIGKILL);
        } else if (e->state == EX_IDLE) {
            executor_shutdown(e);
        }
        /* STARTING executors are shut down when they report ready; BUSY ones
         * after their result. */
    }
    maybe_closed(p);
}

int cel_pool_resize(cel_pool_t *p, int n) {
    if (p->closing) return CEL_ESTATE;
    if (n < 0 || n > CEL_MAX_CONCURRENCY) return CEL_EINVAL;
    int old = p->n;
    p->n = n;
    if (n > p->top) p->top = n;
    for (int i = old; i < n; i++)
        if (!p->slots[i]) spawn(p, i); /* a retiring one in the slot stays on */
    for (int i = n; i < old; i++) {
        uv_timer_stop(&p->respawn[i]);
        executor_t *e = p->slots[i];
        if (e && e->state == EX_IDLE) executor_shutdown(e);
        /* busy: after its task; starting: when it reports ready */
    }
    return CEL_OK;
}

void cel_pool_restart(cel_pool_t *p) {
    if (p->closing) return;
    for (int i = 0; i < p->n; i++) {
        executor_t *e = p->slots[i];
        if (!e) continue;
        if (e->state == EX_IDLE) executor_shutdown(e);
        else if (e->state == EX_BUSY) e->restart = 1;
    }
}

int cel_pool_slot_unused(const cel_pool_t *p, int slot) {
    if (slot < 0 || slot >= p->n) return 0;
    const executor_t *e = p->slots[slot];
    return !e || e->njobs == 0;
}

int cel_pool_tasks_written(const cel_pool_t *p, int slot) {
    return slot >= 0 && slot < p->top && p->slots[slot] ? p->slots[slot]->tasks_done : 0;
}
