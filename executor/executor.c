/* executor.c -- main() of bin/celeriac-executor: runs tasks for the main process.
 *
 * Spawned (fork+exec) by the main process with a socketpair end as --fd. Speaks
 * the EXECUTOR PROTOCOL of frame.h: sends {"op":"ready"} once, then answers each
 * {"op":"run"} with exactly one {"op":"result"}, one task at a time, with blocking
 * reads and writes. EOF on the channel means exit 0 (after SIGUSR2, which the main
 * process sends first when it ends us on purpose, adapters' pending gradients are
 * handed back by checkpoint). A frame it cannot attribute
 * to a task (bad msgpack, not a map, no op/id, over the size limit) means exit 2,
 * and the main process respawns it. SIGUSR1 sets the soft-time-limit flag that
 * long tasks poll; SIGINT is ignored (the terminal's ^C is for the main process,
 * which stops executors by closing their channel), SIGPIPE too (EPIPE ends us).
 * The main process's death SIGKILLs us (PR_SET_PDEATHSIG), running task or not.
 * Tasks are dispatched by the task table (protocol/tasks.h): a name it lacks is
 * NotRegistered; the arguments are bound and checked with it (call.c), then
 * the task's function runs (diag.c for diag.*, lm.c's family for the model
 * tasks; checked against the table at start-up). This file frames, parses the
 * options, and loads the model (lm.c) on --device before "ready" (which
 * names the device): a model that cannot be loaded means exit 3, before any
 * task is taken. With --batch-max-tasks K > 1 the main
 * process writes up to K tasks ahead; packable model tasks that are waiting
 * (or arrive within --batch-wait-ms) are prepared and run as packed passes,
 * and every result still goes back in the order the tasks came. The results
 * of a packed pass go back in one write; any other result is written before
 * the next frame is handled (the main process times each task from the
 * previous one's result, so a result must never wait behind another task).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "../common/err.h"
#include "../common/log.h"
#include "../protocol/frame.h"
#include "../protocol/protocol.h"
#include "../protocol/tasks.h"
#include "call.h"
#include "diag.h"
#include "lm.h"

#define EXEC_READ_CHUNK     (64 * 1024) /* bytes per read(2) */
#define EXEC_EXIT_IO        CEL_EXEC_EXIT_IO    /* the exit statuses: protocol/frame.h */
#define EXEC_EXIT_PROTO     CEL_EXEC_EXIT_PROTO
#define EXEC_EXIT_MODEL     CEL_EXEC_EXIT_MODEL
#define EXEC_PROGRESS_EVERY 0.25        /* seconds between progress frames of one task */
#define EXEC_PATH_MAX       4096
#define EXEC_OUT_MAX        (256 * 1024) /* bytes gathered before a write regardless */

static volatile sig_atomic_t soft_limit; /* set by SIGUSR1, cleared before each task */
static volatile sig_atomic_t handback;   /* SIGUSR2: the main process ends us on purpose */

#define EXEC_MAX_BATCH 64 /* --batch-max-tasks cap, as the worker's CEL_MAX_BATCH_TASKS */

/* Packing (--batch-*): at most max_tasks waiting model tasks, wait_ms to fill. */
static struct {
    int max_tasks, wait_ms;
    long max_tokens;
} batching = { 1, 0, 16384 };

/* A task taken into the current batch: its run frame (owning id, name,
 * args/kwargs), the call and what to run. */
typedef struct held {
    cel_frame_run_t run;
    const char *id, *name;
    cel_call_t call;
    cel_lm_pending_t *pending; /* NULL: the call already has its result */
} held_t;

static held_t held[EXEC_MAX_BATCH];
static int nheld;

static void on_sigusr1(int sig) {
    (void)sig;
    soft_limit = 1;
}

static void on_sigusr2(int sig) {
    (void)sig;
    handback = 1;
}

/* Installs the handlers; no SA_RESTART so blocking calls see EINTR. */
static int install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_sigusr1;
    if (sigaction(SIGUSR1, &sa, NULL) < 0) return -1;
    sa.sa_handler = on_sigusr2; /* (restarting: it only sets a flag read at EOF) */
    sa.sa_flags = SA_RESTART;
    if (sigaction(SIGUSR2, &sa, NULL) < 0) return -1;
    sa.sa_flags = 0;
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0) return -1;
    if (sigaction(SIGINT, &sa, NULL) < 0) return -1;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    return sigprocmask(SIG_UNBLOCK, &set, NULL);
}

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Writes iov fully, retrying on EINTR and short writes. */
static int write_all(int fd, struct iovec *iov, int cnt) {
    while (cnt > 0) {
        ssize_t w = writev(fd, iov, cnt);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        size_t left = (size_t)w;
        while (cnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            cnt--;
        }
        if (cnt > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

/* Result frames not yet written (see the opening comment). */
static struct {
    uint8_t *buf;
    size_t len, cap;
} outq;

/* Writes the gathered frames. CEL_OK or CEL_EIO with err. */
static int flush_out(int fd, cel_err_t *err) {
    if (!outq.len) return CEL_OK;
    struct iovec iov = { outq.buf, outq.len };
    outq.len = 0;
    if (write_all(fd, &iov, 1) < 0)
        return cel_err_set(err, CEL_EIO, "write to main process: %s", strerror(errno));
    return CEL_OK;
}

/* Writes an encoded payload as one frame and frees it; rc is the encoder's
 * result (passed through when it failed: then nothing is written). With
 * gather set the frame may wait in the out buffer (flush_out writes it);
 * otherwise it goes now, after what was gathered. CEL_ELIMIT/CEL_EINVAL
 * mean the frame could not be encoded; CEL_EIO the channel failed. */
static int send_frame(int fd, int rc, uint8_t *buf, size_t len, int gather, cel_err_t *err) {
    uint8_t hdr[CEL_FRAME_HDR];
    if (rc == CEL_OK) rc = cel_frame_header(len, hdr, err);
    if (rc == CEL_OK && outq.len + sizeof(hdr) + len <= EXEC_OUT_MAX) {
        size_t need = outq.len + sizeof(hdr) + len;
        if (need > outq.cap) {
            size_t cap = outq.cap ? outq.cap : 4096;
            while (cap < need) cap *= 2;
            uint8_t *nb = realloc(outq.buf, cap);
            if (nb) outq.buf = nb, outq.cap = cap;
        }
        if (need <= outq.cap) {
            memcpy(outq.buf + outq.len, hdr, sizeof(hdr));
            memcpy(outq.buf + outq.len + sizeof(hdr), buf, len);
            outq.len = need;
            free(buf);
            return gather ? CEL_OK : flush_out(fd, err);
        }
    }
    if (rc == CEL_OK) rc = flush_out(fd, err);
    if (rc == CEL_OK) {
        struct iovec iov[2] = { { hdr, sizeof(hdr) }, { buf, len } };
        if (write_all(fd, iov, 2) < 0)
            rc = cel_err_set(err, CEL_EIO, "write to main process: %s", strerror(errno));
    }
    free(buf);
    return rc;
}

static int send_payload(int fd, int rc, uint8_t *buf, size_t len, cel_err_t *err) {
    return send_frame(fd, rc, buf, len, 0, err);
}

/* The running task, for progress frames. */
static struct {
    int fd;
    const char *id;
    double last; /* when the last progress frame went (or the task started) */
} running = { .fd = -1 };

/* The model tasks' progress hook: a {"op": "progress"} frame for the running task, at
 * most one per EXEC_PROGRESS_EVERY (none for tasks shorter than that). */
static int send_progress(void *priv, long done, long total) {
    (void)priv;
    double now = mono_now();
    if (!running.id || now - running.last < EXEC_PROGRESS_EVERY) return CEL_OK;
    running.last = now;
    cel_err_t err;
    json_t *meta = json_pack("{s:I, s:I}", "done", (json_int_t)done, "total", (json_int_t)total);
    if (!meta) return CEL_ENOMEM;
    cel_frame_progress_t f = { .id = running.id, .state = "PROGRESS", .meta = meta };
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = cel_frame_progress_encode(&f, &buf, &len, &cap, &err);
    json_decref(meta);
    return send_payload(running.fd, rc, buf, len, &err);
}

/* The "stats" a model task's result carries (frame.h), for the worker's
 * metrics: the tokens it trained or scored (its result's "tokens"), the pass
 * it ran in (pass_tasks > 0 only on a pass's first result), and this
 * executor's adapters, its evictions since the previous report and its GPU
 * memory. Diag tasks report nothing (their results stay as small as before). */
static void model_stats(cel_frame_stats_t *st, const cel_call_t *call, int pass_tasks,
                        double pass_s) {
    static long reported, reported_gpu; /* evictions already sent */
    const cel_tasks_task_t *t = cel_tasks_find(call->name);
    memset(st, 0, sizeof(*st));
    if (!t || !t->needs_model || !cel_lm_ready()) return;
    cel_lm_stats_t ls;
    cel_lm_stats(&ls);
    st->present = 1;
    json_t *tokens = call->exc_type ? NULL : json_object_get(call->result, "tokens");
    if (json_is_integer(tokens) && json_integer_value(tokens) > 0) {
        if (strcmp(call->name, "lora.forward_backward") == 0)
            st->tokens_trained = (long)json_integer_value(tokens);
        else if (strcmp(call->name, "model.score") == 0)
            st->tokens_scored = (long)json_integer_value(tokens);
    }
    st->pass_tasks = pass_tasks;
    st->pass_s = pass_s;
    st->adapters = ls.adapters;
    st->adapters_gpu = ls.adapters_gpu;
    st->evicted = ls.evictions - reported;
    st->evicted_gpu = ls.evictions_gpu - reported_gpu;
    reported = ls.evictions;
    reported_gpu = ls.evictions_gpu;
    st->gpu_used = ls.gpu_used;
    st->gpu_total = ls.gpu_total;
}

/* Encodes and sends the result frame of a finished call (outcome borrowed). */
static int send_result_frame(int fd, const char *id, cel_call_t *call, double runtime,
                             const cel_frame_stats_t *st, cel_err_t *err) {
    cel_frame_result_t f = { .id = id, .runtime = runtime };
    if (st) f.stats = *st;
    if (!call->exc_type) {
        f.result = call->result ? call->result : json_null();
    } else {
        f.failed = 1;
        f.exc_type = call->exc_type;
        f.exc_module = call->exc_module ? call->exc_module : "builtins";
        f.exc_message = call->exc_args;
        f.traceback = call->traceback;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = cel_frame_result_encode(&f, &buf, &len, &cap, err);
    return send_frame(fd, rc, buf, len, 1, err);
}

/* Sends the outcome of call with its stats (may be NULL); a result the codec
 * refuses (e.g. an unencodable value) becomes kombu's EncodeError, as Celery
 * stores an unserializable result. */
static int send_result(int fd, const char *id, cel_call_t *call, double runtime,
                       const cel_frame_stats_t *st) {
    cel_err_t err;
    cel_err_clear(&err);
    int rc = send_result_frame(fd, id, call, runtime, st, &err);
    if (rc == CEL_OK || rc == CEL_EIO) goto out;
    cel_error("Task %s[%s] result could not be encoded: %s", call->name, id,
              rc == CEL_ENOMEM ? "out of memory" : err.msg);
    char text[CEL_ERR_MSG_MAX];
    snprintf(text, sizeof(text), "%s", rc == CEL_ENOMEM ? "out of memory" : err.msg);
    if (cel_call_raise(call, "EncodeError", "kombu.exceptions", json_pack("[s]", text), text))
        return CEL_ENOMEM;
    rc = send_result_frame(fd, id, call, runtime, st, &err);
out:
    if (rc == CEL_EIO) cel_error("%s", err.msg);
    return rc;
}

/* Answers a run frame we cannot run (bad fields) with a FAILURE for id. */
static int send_bad_run(int fd, const char *id, const char *task, const char *why) {
    cel_call_t call = { .name = task ? task : "?" };
    cel_error("Bad run frame for task id %s: %s", id, why);
    int rc = cel_call_raise(&call, "DecodeError", "kombu.exceptions", json_pack("[s]", why), why);
    if (rc == CEL_OK) rc = send_result(fd, id, &call, 0.0, NULL);
    cel_call_close(&call);
    return rc;
}

/* The function of a task of the table, or NULL: the model family's for a task
 * that needs the model, the diag family's otherwise. */
static cel_call_fn task_fn(const cel_tasks_task_t *t) {
    return t->needs_model ? cel_lm_find(t->name) : cel_diag_find(t->name);
}

/* Gets call ready to run task t: its function, the model if it needs one, its
 * arguments bound and checked by the table. OUT: *fn to call, or NULL when the
 * call already holds its outcome (the exception). Returns CEL_OK or CEL_ENOMEM. */
static int start_call(cel_call_t *call, const cel_tasks_task_t *t, cel_call_fn *fn) {
    *fn = NULL;
    cel_call_fn f = task_fn(t);
    if (!f) /* logged at start-up */
        return cel_call_raisef(call, "NotImplementedError",
                               "task %s has no function in this "
                               "executor",
                               t->name);
    int rc = cel_call_bind(call, t);
    if (rc == CEL_OK && t->needs_model && !cel_lm_ready())
        rc = cel_call_fail(call, "RuntimeError", "the executor has no model loaded");
    if (rc == CEL_OK) *fn = f;
    return cel_call_finish(rc);
}

/* Runs one task and sends its result. Returns CEL_OK or a channel/memory error. */
static int run_task(int fd, const char *id, const char *name, json_t *args, json_t *kwargs) {
    cel_call_t call = { .name = name, .args = args, .kwargs = kwargs, .soft_limit = &soft_limit };
    const cel_tasks_task_t *task = cel_tasks_find(name);
    double t0 = mono_now();
    int rc;
    if (!task) {
        /* The Python worker stores NotRegistered(name) with a null traceback. */
        rc = cel_call_raise(&call, "NotRegistered", "celery.exceptions", json_pack("[s]", name),
                            NULL);
        if (rc == CEL_OK) {
            free(call.traceback);
            call.traceback = NULL;
        }
    } else {
        soft_limit = 0; /* before the log line: a test waits for it, then signals */
        cel_debug("Task %s[%s] starting", name, id);
        running.fd = fd;
        running.id = id;
        running.last = t0;
        cel_call_fn fn;
        rc = start_call(&call, task, &fn);
        cel_lm_begin(id);
        if (rc == CEL_OK && fn) rc = fn(&call);
        cel_lm_begin(NULL);
        running.id = NULL;
    }
    double runtime = mono_now() - t0;
    if (rc != CEL_OK) {
        cel_call_close(&call);
        rc = cel_call_raise(&call, "MemoryError", "builtins", NULL, NULL);
    }
    if (rc == CEL_OK) {
        cel_debug("Task %s[%s] %s in %.6fs", name, id, call.exc_type ? "failed" : "succeeded",
                  runtime);
        cel_frame_stats_t st; /* a packable task run alone is a pass of one */
        model_stats(&st, &call, task && task->batchable && !call.exc_type ? 1 : 0, runtime);
        rc = send_result(fd, id, &call, runtime, &st);
    }
    cel_call_close(&call);
    return rc;
}

/* Runs the held tasks' packed passes and sends every result in order.
 * Returns CEL_OK or a channel/memory error. */
static int flush_batch(int fd) {
    if (nheld == 0) return CEL_OK;
    cel_lm_pending_t *ps[EXEC_MAX_BATCH];
    int np = 0;
    for (int i = 0; i < nheld; i++)
        if (held[i].pending) ps[np++] = held[i].pending;
    cel_err_t ferr;
    if (flush_out(fd, &ferr) != CEL_OK) {
        cel_error("%s", ferr.msg);
        return CEL_EIO;
    }
    double t0 = mono_now();
    soft_limit = 0;
    int rc = np ? cel_lm_run(ps, np, batching.max_tokens) : CEL_OK;
    double runtime = mono_now() - t0;
    if (np > 1) cel_debug("Packed %d model tasks in %.6fs", np, runtime);
    int first = 1;
    for (int i = 0; i < nheld; i++) {
        held_t *h = &held[i];
        cel_frame_stats_t st; /* the pass is reported once, with its first result */
        model_stats(&st, &h->call, h->pending && first ? np : 0, runtime);
        if (h->pending) first = 0;
        if (rc == CEL_OK) rc = send_result(fd, h->id, &h->call, h->pending ? runtime : 0.0, &st);
        cel_lm_pending_free(h->pending);
        cel_call_close(&h->call);
        cel_frame_run_clear(&h->run);
    }
    nheld = 0;
    return rc;
}

/* Binds and prepares a packable task t and holds it for the next flush (taking
 * run: it is left empty). */
static int hold_task(cel_frame_run_t *run, const cel_tasks_task_t *t) {
    held_t *h = &held[nheld++];
    memset(h, 0, sizeof(*h));
    h->run = *run;
    memset(run, 0, sizeof(*run));
    h->id = h->run.id;
    h->name = t->name;
    h->call = (cel_call_t){
        .name = t->name, .args = h->run.args, .kwargs = h->run.kwargs, .soft_limit = &soft_limit
    };
    cel_debug("Task %s[%s] held for a packed pass", h->name, h->id);
    cel_call_fn fn;
    int rc = start_call(&h->call, t, &fn);
    cel_lm_begin(h->id); /* the task id stays valid until flush_batch sends the result */
    if (rc == CEL_OK && fn) rc = cel_lm_prepare(&h->call, &h->pending);
    cel_lm_begin(NULL);
    return rc;
}

/* Handles one frame. Returns -1 to keep going, else the exit status. */
static int handle_frame(int fd, const uint8_t *payload, size_t len) {
    cel_err_t err;
    cel_err_clear(&err);
    if (flush_out(fd, &err) != CEL_OK) { /* the previous result goes before anything else */
        cel_error("%s", err.msg);
        return EXEC_EXIT_IO;
    }
    cel_frame_run_t run;
    const cel_tasks_task_t *t = NULL;
    int status = -1;
    int rc = cel_frame_run_decode(payload, len, &run, &err);
    if (rc != CEL_OK && rc != CEL_ENOMEM && !run.id) {
        cel_error("Malformed frame (%zu bytes): %s", len, err.msg);
        status = EXEC_EXIT_PROTO;
    } else if (rc != CEL_OK && rc != CEL_ENOMEM) {
        /* a bad frame's answer must not overtake the held tasks' results */
        rc = flush_batch(fd);
        if (rc == CEL_OK) rc = send_bad_run(fd, run.id, run.task, err.msg);
    } else if (rc == CEL_OK && batching.max_tasks > 1 && (t = cel_tasks_find(run.task)) &&
               t->batchable && run.args && run.kwargs) {
        rc = hold_task(&run, t); /* held until the flush */
        if (rc == CEL_OK && nheld >= batching.max_tasks) rc = flush_batch(fd);
    } else if (rc == CEL_OK) {
        rc = flush_batch(fd); /* results stay in the order the tasks came */
        if (rc == CEL_OK) rc = run_task(fd, run.id, run.task, run.args, run.kwargs);
    }
    cel_frame_run_clear(&run);
    if (status < 0 && rc != CEL_OK) {
        if (rc == CEL_ENOMEM) cel_error("Out of memory");
        status = EXEC_EXIT_IO;
    }
    return status;
}

/* Reads frames until EOF or a fatal error. Returns the exit status. */
static int serve(int fd) {
    static uint8_t chunk[EXEC_READ_CHUNK];
    cel_frame_reader_t *reader = cel_frame_reader_new(CEL_FRAME_MAX);
    if (!reader) {
        cel_error("Out of memory");
        return EXEC_EXIT_IO;
    }
    int status = -1;
    while (status < 0) {
        const uint8_t *payload;
        size_t len;
        cel_err_t err;
        int rc = cel_frame_reader_next(reader, &payload, &len, &err);
        if (rc == CEL_OK) {
            status = handle_frame(fd, payload, len);
            continue;
        }
        if (rc != CEL_EAGAIN) {
            cel_error("Malformed frame: %s", err.msg);
            status = EXEC_EXIT_PROTO;
            break;
        }
        if (flush_out(fd, &err) != CEL_OK) { /* nothing more to do: what was gathered goes */
            cel_error("%s", err.msg);
            status = EXEC_EXIT_IO;
            break;
        }
        if (nheld == 0 && cel_lm_idle_work()) { /* idle, unless a frame is on its way */
            struct pollfd pfd = { .fd = fd, .events = POLLIN };
            if (poll(&pfd, 1, 0) == 0) cel_lm_idle();
        }
        if (nheld > 0) {
            /* a partial batch: wait a little for more tasks, then run it */
            struct pollfd pfd = { .fd = fd, .events = POLLIN };
            int pr = poll(&pfd, 1, batching.wait_ms);
            if (pr < 0 && errno == EINTR) continue;
            if (pr <= 0) {
                if (flush_batch(fd) != CEL_OK) status = EXEC_EXIT_IO;
                continue;
            }
        }
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            cel_error("Read from main process: %s", strerror(errno));
            status = EXEC_EXIT_IO;
        } else if (n == 0) {
            cel_debug("Channel closed, exiting");
            status = flush_batch(fd) == CEL_OK ? 0 : EXEC_EXIT_IO;
            /* issue 15: the main process, alive, ended us on purpose (SIGUSR2
             * before the EOF: warm shutdown, retirement): gradients not yet
             * applied go back to the shared state by checkpoint. An EOF alone
             * is a main process that died (kill -9): then nothing is handed
             * back, as the tasks it held may be delivered again elsewhere, and
             * their gradients are reported lost by whoever takes the adapter
             * next. (getppid() cannot tell: a dying process closes its files
             * before its children are reparented.) */
            if (handback) cel_lm_handback();
            else if (cel_lm_ready())
                cel_warn("Channel closed without notice (main process gone?); "
                         "accumulated gradients are not handed back");
        } else if (cel_frame_reader_feed(reader, chunk, (size_t)n) != CEL_OK) {
            cel_error("Out of memory");
            status = EXEC_EXIT_IO;
        }
    }
    cel_err_t ferr;
    if (flush_out(fd, &ferr) != CEL_OK && status == 0) status = EXEC_EXIT_IO;
    cel_frame_reader_free(reader);
    return status;
}

/* Parses a non-negative int option value. */
static int parse_int(const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < 0 || v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

static int usage(const char *why) {
    fprintf(stderr,
            "celeriac-executor: %s\n"
            "usage: celeriac-executor --fd FD --index N [--loglevel LEVEL] [--model DIR]\n"
            "         [--state-dir DIR | --private-state-parent DIR] [--import-root DIR]...\n"
            "         [--max-input-tokens N]\n"
            "         [--threads N] [--device D] [--precision fp32|bf16] [--batch-max-tasks K]\n"
            "         [--batch-wait-ms MS] [--batch-max-tokens N]\n"
            "         [--gpu-adapter-memory MB] [--max-adapters-per-owner N]\n"
            "         [--max-adapter-bytes-per-owner BYTES] [--node NAME]\n",
            why);
    return EXEC_EXIT_PROTO;
}

/* The bundled model: <dir of this binary>/../model/tiny (or, for the ASan build in
 * build/asan/bin, the source tree's). OUT: out (EXEC_PATH_MAX). */
static int default_model_dir(char *out) {
    char exe[EXEC_PATH_MAX - 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) return -1;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    static const char *const rel[] = { "/../model/tiny", "/../../../model/tiny" };
    for (size_t i = 0; i < sizeof(rel) / sizeof(rel[0]); i++) {
        char p[EXEC_PATH_MAX + 32];
        snprintf(p, sizeof(p), "%s%s", exe, rel[i]);
        if (access(p, F_OK) == 0 && realpath(p, out)) return 0;
    }
    snprintf(out, EXEC_PATH_MAX, "%s/../model/tiny", exe);
    return 0;
}

int main(int argc, char **argv) {
    int fd = -1, index = -1, level = CEL_LOG_WARNING;
    const char *roots[CEL_LM_MAX_ROOTS];
    cel_lm_opts_t mopts = { .import_roots = roots, .threads = 1, .progress = send_progress };
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc) return usage("missing option value");
        const char *val = argv[++i];
        if (strcmp(opt, "--fd") == 0) {
            if (parse_int(val, &fd) < 0) return usage("bad --fd");
        } else if (strcmp(opt, "--index") == 0) {
            if (parse_int(val, &index) < 0) return usage("bad --index");
        } else if (strcmp(opt, "--loglevel") == 0 || strcmp(opt, "-l") == 0) {
            if ((level = cel_log_parse_level(val)) < 0) return usage("bad --loglevel");
        } else if (strcmp(opt, "--model") == 0) {
            mopts.model_dir = val;
        } else if (strcmp(opt, "--state-dir") == 0) {
            mopts.state_dir = *val ? val : NULL;
        } else if (strcmp(opt, "--private-state-parent") == 0) {
            mopts.private_parent = *val ? val : NULL;
        } else if (strcmp(opt, "--import-root") == 0) {
            if (mopts.n_import_roots == CEL_LM_MAX_ROOTS) return usage("too many --import-root");
            roots[mopts.n_import_roots++] = val;
        } else if (strcmp(opt, "--max-input-tokens") == 0) {
            if (parse_int(val, &mopts.max_input_tokens) < 0 || mopts.max_input_tokens < 2)
                return usage("bad --max-input-tokens");
        } else if (strcmp(opt, "--device") == 0) {
            mopts.device = val;
        } else if (strcmp(opt, "--precision") == 0) {
            if (strcmp(val, "fp32") && strcmp(val, "bf16")) return usage("bad --precision");
            mopts.precision = val;
        } else if (strcmp(opt, "--batch-max-tasks") == 0) {
            if (parse_int(val, &batching.max_tasks) < 0 || batching.max_tasks < 1 ||
                batching.max_tasks > EXEC_MAX_BATCH)
                return usage("bad --batch-max-tasks");
        } else if (strcmp(opt, "--batch-wait-ms") == 0) {
            if (parse_int(val, &batching.wait_ms) < 0 || batching.wait_ms > 1000)
                return usage("bad --batch-wait-ms");
        } else if (strcmp(opt, "--batch-max-tokens") == 0) {
            int v;
            if (parse_int(val, &v) < 0 || v < 1) return usage("bad --batch-max-tokens");
            batching.max_tokens = v;
        } else if (strcmp(opt, "--gpu-adapter-memory") == 0) {
            int v;
            if (parse_int(val, &v) < 0) return usage("bad --gpu-adapter-memory");
            mopts.gpu_adapter_mb = v;
        } else if (strcmp(opt, "--max-adapters-per-owner") == 0) {
            int v;
            if (parse_int(val, &v) < 0) return usage("bad --max-adapters-per-owner");
            mopts.max_adapters_per_owner = v;
        } else if (strcmp(opt, "--max-adapter-bytes-per-owner") == 0) {
            char *end;
            errno = 0;
            long long v = strtoll(val, &end, 10);
            if (errno || end == val || *end || v < 0)
                return usage("bad --max-adapter-bytes-per-owner");
            mopts.max_bytes_per_owner = v;
        } else if (strcmp(opt, "--node") == 0) {
            if (strlen(val) > 255) return usage("bad --node");
            mopts.node = val;
        } else if (strcmp(opt, "--threads") == 0) {
            if (parse_int(val, &mopts.threads) < 0 || mopts.threads < 1 || mopts.threads > 1024)
                return usage("bad --threads");
        } else {
            return usage("unknown option");
        }
    }
    if (fd < 0 || index < 0) return usage("--fd and --index are required");
    if (fcntl(fd, F_GETFD) < 0) return usage("--fd is not an open descriptor");

    char procname[32];
    snprintf(procname, sizeof(procname), "Executor-%d", index);
    cel_log_init(procname, level, -1);
    if (install_signals() < 0) {
        cel_error("sigaction: %s", strerror(errno));
        return EXEC_EXIT_IO;
    }
    /* The main process gone (kill -9, a crash) ends us at once, also in the
     * middle of a long task: finishing it would hold its adapter's lock (the
     * node that adopts the adapter answers AdapterBusy meanwhile) for a result
     * nobody can store. It is a kill -9 of the whole worker, which every
     * checkpoint and marker write is safe against. (The main process spawns
     * us from its loop thread, the one whose exit sends the signal; one that
     * died before this line shows as the channel's EOF.) */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0)
        cel_warn("prctl(PR_SET_PDEATHSIG): %s; a long task outlives a killed main process",
                 strerror(errno));
    for (const char *const *n = cel_tasks_names(); *n; n++)
        if (!task_fn(cel_tasks_find(*n)))
            cel_error("Task %s is in the task table but has no function", *n);

    char model_dir[EXEC_PATH_MAX];
    if (!mopts.model_dir) {
        if (default_model_dir(model_dir) < 0) {
            cel_error("Cannot find the bundled model next to the binary; pass --model DIR");
            return EXEC_EXIT_MODEL;
        }
        mopts.model_dir = model_dir;
    }
    cel_err_t merr;
    cel_err_clear(&merr);
    char device[256] = "cpu";
    mopts.device_chosen = device;
    if (cel_lm_open(&mopts, &merr) != CEL_OK) {
        cel_error("Cannot load the model from %s on device %s: %s", mopts.model_dir,
                  mopts.device ? mopts.device : "auto", merr.msg);
        return EXEC_EXIT_MODEL;
    }

    cel_err_t err;
    cel_err_clear(&err);
    cel_frame_ready_t ready = { .pid = getpid(), .device = device };
    uint8_t *rbuf = NULL;
    size_t rlen = 0, rcap = 0;
    int rc = cel_frame_ready_encode(&ready, &rbuf, &rlen, &rcap, &err);
    rc = send_payload(fd, rc, rbuf, rlen, &err);
    if (rc != CEL_OK) {
        cel_error("Cannot send ready: %s", rc == CEL_ENOMEM ? "out of memory" : err.msg);
        cel_lm_close();
        return EXEC_EXIT_IO;
    }
    cel_debug("Ready, pid %d", (int)getpid());
    int status = serve(fd);
    close(fd);
    cel_lm_close();
    return status;
}
