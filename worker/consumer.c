/* consumer.c -- requests from message to ack: prefetch, eta, expiry, run, store, ack.
 *
 * States of a request: HELD (eta not reached; not counted against prefetch, as
 * Celery's qos.increment_eventually), READY (waiting for an executor), ACTIVE
 * (running), FINISHING (result being stored, then acked). A message is acked
 * only after its result is stored (or when it has none), so a crash at any
 * point leaves it held by the broker, to be delivered again. The broker and
 * the result backend are reached through their operation tables (broker.h,
 * backend.h): messages, opaque delivery tags and queue names, nothing of how
 * a transport holds them. Matches
 * celery/worker/strategy.py, request.py and consumer.py in what the client
 * sees: results, exceptions and log lines. Main process, libuv loop.
 */
#include "consumer.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "../protocol/frame.h"
#include "../protocol/protocol.h"
#include "affinity.h"
#include "autoscale.h"
#include "backend.h"
#include "broker.h"
#include "canvas.h"
#include "events.h"
#include "limits.h"
#include "../common/log.h"
#include "metrics.h"
#include "pool.h"
#include "revoked.h"
#include "../protocol/tasks.h"

#define NO_PREFETCH_LIMIT 1000 /* messages held when --prefetch-multiplier is 0 */
#define REPR_MAX          200  /* result repr in log lines */
/* A result that cannot be stored is tried again (backoff 0.1 s .. 5 s, and at
 * once when the backend reconnects); its message goes back to the queue after
 * STORE_TRIES failures spread over STORE_GIVE_UP_MS at least, so a connection
 * that keeps dropping does not use the tries up in a second. */
#define STORE_TRIES      10
#define STORE_GIVE_UP_MS 25000

/* Only READY requests (received, not yet handed to an executor) occupy the
 * prefetch window, as in Celery: it acks a message when the pool takes it, so
 * its window counts reserved messages only. Ours stay unacked until the result
 * is stored (safer), but are no longer counted once started. eta requests are
 * outside the window too (qos.increment_eventually). */
enum { R_NEW, R_HELD, R_READY, R_ACTIVE, R_FINISHING, R_GIVING_BACK };

typedef struct request request_t;
struct request {
    request_t *prev, *next; /* in c->requests */
    request_t *rnext;       /* in the ready FIFO */
    cel_consumer_t *c;
    cel_task_t *task;
    char *tag; /* delivery tag, owned; NULL when not registered */
    int state;
    double received;
    double started;
    int pid;
    int slot;        /* executor slot that ran it */
    int term_signum; /* revoke(terminate): the signal its executor got */
    int revoked;     /* finished as REVOKED: 1 revoked, 2 expired */
    double runtime;  /* the executor's measure, for task-succeeded */
    int given_back;  /* its requeue finished (freed once the pool let go too) */
    char *meta;      /* result meta waiting to be stored */
    size_t meta_len;
    int storing;     /* a store of meta is in flight */
    int in_pool;     /* handed to an executor, not yet reported back */
    int store_tries; /* stores that failed */
    uint64_t store_failed_at; /* uv_now of the first failure */
    /* what it finished with, kept for the canvas steps around the store */
    const char *status; /* a string literal */
    json_t *result;
    char *traceback;
    uv_timer_t timer; /* eta, then the next store after a failed one; closed when freed */
};

struct cel_consumer {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_broker_t *broker;
    cel_backend_t *backend;
    cel_canvas_t *canvas; /* callbacks, chains, chords (canvas.h) */
    cel_pool_t *pool;
    cel_affinity_t *affinity; /* adapter id -> executor slot */
    request_t *requests;      /* every live request */
    request_t *ready_head, *ready_tail;
    int held;     /* requests in the prefetch window */
    int eta_held; /* requests HELD for their eta (bounded by --eta-task-limit) */
    int limit;    /* prefetch_count */
    int nrequests;
    int stopping; /* warm shutdown started */
    int cold;
    int closing;      /* close_all ran */
    int closing_left; /* components still closing */
    int announced;    /* "ready." printed */
    int ready_holds;  /* parts that must be up before it (the mailbox) */
    int broker_was_up;
    uv_timer_t touch_timer;
    uv_timer_t drain_timer; /* deferred checks outside callbacks */
    long processed;
    double started_at;         /* for stats uptime */
    json_t *totals;            /* task name -> tasks started */
    cel_events_t *events;      /* borrowed (main.c) */
    cel_revoked_t *revoked;    /* borrowed: control adds, we look up */
    cel_limits_t *limits;      /* borrowed: control sets, we read */
    uv_timer_t rate_timer;     /* re-dispatch when a rate-limited task may start */
    uv_timer_t shutdown_timer; /* --shutdown-timeout of a warm shutdown */
    void (*on_done)(void *, int);
    void *done_priv;
    int failed; /* no executor could start: stopping by itself (on_pool_cannot_start) */
    /* autoscale and mingle (issue 19) */
    int active;             /* ACTIVE requests: with held, Celery's reserved_requests */
    cel_autoscale_t scaler; /* --autoscale's policy; scaler.max 0 = off */
    uv_timer_t scale_timer; /* runs it every second (and on each task reserved) */
};

/* autoscale and mingle (issue 19) */
static void maybe_scale(cel_consumer_t *c);
static void on_scale_timer(uv_timer_t *t);

static double now_unix(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static void on_drain_timer(uv_timer_t *t);

static int counted(int st) { return st == R_READY; }

/* Moves a request to state st, keeping the prefetch window count. */
static void set_state(request_t *r, int st) {
    cel_consumer_t *c = r->c;
    int was = counted(r->state), was_eta = r->state == R_HELD;
    c->held += counted(st) - was;
    c->eta_held += (st == R_HELD) - was_eta;
    c->active += (st == R_ACTIVE) - (r->state == R_ACTIVE); /* autoscale (issue 19) */
    r->state = st;
    /* A slot came free (or an eta one): fetch more (after the current callback). */
    if (((was && !counted(st)) || (was_eta && st != R_HELD)) && !c->stopping)
        uv_timer_start(&c->drain_timer, on_drain_timer, 0, 0);
}

static void dispatch(cel_consumer_t *c);
static void maybe_finish_shutdown(cel_consumer_t *c);
static void on_given_back(void *priv, int ok);

/* ---- request bookkeeping ---------------------------------------------- */

static request_t *request_new(cel_consumer_t *c, cel_task_t *task, const char *tag) {
    request_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    if (tag && !(r->tag = strdup(tag))) {
        free(r);
        return NULL;
    }
    r->c = c;
    r->task = task;
    r->received = now_unix();
    uv_timer_init(c->loop, &r->timer);
    r->timer.data = r;
    r->next = c->requests;
    if (c->requests) c->requests->prev = r;
    c->requests = r;
    c->nrequests++;
    return r;
}

static void on_request_closed(uv_handle_t *h) {
    request_t *r = h->data;
    cel_consumer_t *c = r->c;
    cel_task_free(r->task);
    free(r->tag);
    free(r->meta);
    json_decref(r->result);
    free(r->traceback);
    free(r);
    c->nrequests--;
    maybe_finish_shutdown(c);
}

/* Unlinks and frees a request (the timer close completes it). */
static void request_free(request_t *r) {
    cel_consumer_t *c = r->c;
    if (r->prev) r->prev->next = r->next;
    else c->requests = r->next;
    if (r->next) r->next->prev = r->prev;
    set_state(r, R_NEW);
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_request_closed);
}

static void ready_push(cel_consumer_t *c, request_t *r) {
    set_state(r, R_READY);
    r->rnext = NULL;
    if (c->ready_tail) c->ready_tail->rnext = r;
    else c->ready_head = r;
    c->ready_tail = r;
    maybe_scale(c); /* as Celery's autoscaler on each task message (issue 19) */
}

static int capacity(void *priv) {
    cel_consumer_t *c = priv;
    if (c->stopping) return 0;
    /* past --eta-task-limit held eta messages, nothing more is fetched until some are due
     * (as Celery's newer worker_eta_task_limit); what is fetched is never dropped */
    if (c->cfg->eta_task_limit && c->eta_held >= c->cfg->eta_task_limit) return 0;
    int free_slots = c->limit - c->held;
    return free_slots > 0 ? free_slots : 0;
}

/* ---- ack and result storage ------------------------------------------ */

static void on_acked(void *priv, int ok) {
    request_t *r = priv;
    if (!ok && !r->c->cold)
        cel_error("could not ack %s[%s]; the broker will deliver it again",
                  r->task ? r->task->name : "?", r->task ? r->task->id : "?");
    request_free(r);
}

static void ack_and_free(request_t *r) {
    cel_consumer_t *c = r->c;
    set_state(r, R_FINISHING);
    if (c->cold) {
        request_free(r);
        return;
    }
    if (r->tag) cel_broker_ack(c->broker, r->tag, on_acked, r);
    else on_acked(r, 1);
}

static void store_meta(request_t *r);
static void give_back(request_t *r);

/* The wait before store number tries + 1: 100 ms doubling, at most 5 s. */
static uint64_t store_backoff_ms(int tries) { return tries >= 6 ? 5000 : (uint64_t)100 << tries; }

static void on_store_timer(uv_timer_t *t) {
    request_t *r = t->data;
    if (r->state == R_FINISHING && r->meta && !r->storing && !r->c->cold) store_meta(r);
}
static void after_store(request_t *r);

static void on_stored(void *priv, int ok) {
    request_t *r = priv;
    cel_consumer_t *c = r->c;
    r->storing = 0;
    if (!ok) {
        if (c->cold || r->state != R_FINISHING) {
            /* cold: its message was given back already, or stays unacked */
            if (r->state == R_FINISHING) request_free(r);
            return;
        }
        /* Keep it unacked and store again after a backoff (sooner when the
         * backend comes back: on_backend_up); past STORE_TRIES and
         * STORE_GIVE_UP_MS the message goes back to its queue rather than
         * being held forever. */
        if (++r->store_tries == 1) r->store_failed_at = uv_now(c->loop);
        if (r->store_tries >= STORE_TRIES &&
            uv_now(c->loop) - r->store_failed_at >= STORE_GIVE_UP_MS) {
            cel_error("Could not store the result of %s[%s] after %d tries; giving its message "
                      "back to the queue (it will run again)",
                      r->task->name, r->task->id, r->store_tries);
            give_back(r);
            return;
        }
        if (r->store_tries == 1)
            cel_error("could not store the result of %s[%s]; will retry", r->task->name,
                      r->task->id);
        int k = r->store_tries < STORE_TRIES ? r->store_tries : STORE_TRIES;
        uv_timer_start(&r->timer, on_store_timer, store_backoff_ms(k - 1), 0);
        return;
    }
    free(r->meta);
    r->meta = NULL;
    after_store(r);
}

static void on_stored_acked(void *priv, int ok) {
    request_t *r = priv;
    if (!ok) {
        on_stored(priv, ok);
        return;
    }
    r->storing = 0;
    cel_broker_forget(r->c->broker, r->tag); /* acked by the store itself */
    request_free(r);
}

/* Stores the meta, then acks; in one step when the backend can ack the
 * broker's messages itself (one server holds both). */
static void store_meta(request_t *r) {
    cel_consumer_t *c = r->c;
    uv_timer_stop(&r->timer);
    r->storing = 1;
    if (r->tag && cel_backend_acks_broker(c->backend) &&
        !cel_canvas_after_store_needed(c->canvas, r->task, r->status)) {
        cel_broker_acking(c->broker, r->tag);
        cel_backend_store_ack(c->backend, r->task, r->meta, r->meta_len, r->tag, on_stored_acked,
                              r);
    } else {
        cel_backend_store(c->backend, r->task, r->meta, r->meta_len, on_stored, r);
    }
}

static void on_backend_up(void *priv) {
    cel_consumer_t *c = priv;
    for (request_t *r = c->requests; r; r = r->next)
        if (r->state == R_FINISHING && r->meta && !r->storing) store_meta(r);
}

/* The canvas steps after the store (a chord part; a failure's chain and
 * errbacks) are done: the message can go. ok=0: the canvas closed first, the
 * message stays with the broker. */
static void on_canvas_after(void *priv, int ok, json_t *children) {
    request_t *r = priv;
    if (ok) ack_and_free(r);
    else request_free(r);
}

static void after_store(request_t *r) {
    cel_consumer_t *c = r->c;
    if (!c->cold && cel_canvas_after_store(c->canvas, r->task, r->status, r->result, r->traceback,
                                           on_canvas_after, r))
        return;
    ack_and_free(r);
}

/* Stores the result (unless ignored) with the children the canvas sent. */
static void store_result(request_t *r, json_t *children) {
    cel_consumer_t *c = r->c;
    cel_task_t *t = r->task;
    if (t->ignore_result) {
        after_store(r);
        return;
    }
    cel_err_t err;
    char *meta = cel_canvas_meta(c->canvas, t, r->status, r->result, r->traceback, children,
                                 now_unix(), &err);
    if (!meta) {
        /* The result cannot be serialized (e.g. NaN): store what Celery would. */
        cel_error("Task %s[%s] result could not be encoded: %s", t->name, t->id, err.msg);
        json_t *exc = cel_exc_new("EncodeError", "kombu.exceptions", json_pack("[s]", err.msg));
        json_decref(r->result);
        r->result = exc;
        r->status = "FAILURE";
        meta = cel_canvas_meta(c->canvas, t, r->status, exc, NULL, children, now_unix(), &err);
        if (!meta) {
            cel_error("Task %s[%s]: cannot encode a failure either: %s", t->name, t->id, err.msg);
            ack_and_free(r);
            return;
        }
    }
    r->meta = meta;
    r->meta_len = strlen(meta);
    store_meta(r);
}

/* The callbacks and chain link of a success were sent: store. */
static void on_canvas_before(void *priv, int ok, json_t *children) {
    request_t *r = priv;
    if (ok) store_result(r, children);
    else request_free(r);
}

/* Finishes a request with a state and result: the canvas steps a success
 * sends first, store (unless ignored), the steps after it, then ack.
 * result and traceback are borrowed. */
static void finish(request_t *r, const char *status, json_t *result, const char *traceback) {
    cel_task_t *t = r->task;
    double rt = r->runtime > 0 ? r->runtime : r->started > 0 ? now_unix() - r->started : 0;
    cel_events_task_done(r->c->events, t, status, result, traceback, rt, r->revoked == 2,
                         r->term_signum);
    cel_metrics_task_done(t, status, r->started > 0 ? rt : -1);
    set_state(r, R_FINISHING);
    r->status = status;
    r->result = json_incref(result);
    r->traceback = traceback ? strdup(traceback) : NULL;
    if (!r->c->cold &&
        cel_canvas_before_store(r->c->canvas, t, status, result, on_canvas_before, r))
        return;
    store_result(r, NULL);
}

/* Stores a FAILURE with an exception built here (not by an executor). */
static void fail_with(request_t *r, const char *type, const char *module, json_t *args,
                      const char *traceback) {
    json_t *exc = cel_exc_new(type, module, args);
    finish(r, "FAILURE", exc, traceback);
    json_decref(exc);
}

/* Stores REVOKED with TaskRevokedError(reason): "expired", "revoked" or
 * "terminated" (celery's Request._announce_revoked + mark_as_revoked). */
static void revoke_with(request_t *r, const char *reason) {
    if (strcmp(reason, "terminated") != 0)
        cel_info("Discarding %s task: %s[%s]", reason, r->task->name, r->task->id);
    r->revoked = strcmp(reason, "expired") == 0 ? 2 : 1;
    json_t *exc = cel_exc_new("TaskRevokedError", "celery.exceptions", json_pack("[s]", reason));
    finish(r, "REVOKED", exc, NULL);
    json_decref(exc);
}

static void revoke_expired(request_t *r) { revoke_with(r, "expired"); }

/* ---- running ---------------------------------------------------------- */

static int build_run_frame(request_t *r, uint8_t **buf, size_t *len) {
    cel_task_t *t = r->task;
    cel_frame_run_t f = { .id = t->id,
                          .task = t->name,
                          .args = t->args,
                          .kwargs = t->kwargs,
                          .soft_time_limit = t->soft_time_limit,
                          .retries = t->retries };
    size_t cap = 0;
    *buf = NULL;
    *len = 0;
    return cel_frame_run_encode(&f, buf, len, &cap, NULL);
}

/* --task-track-started: the STARTED meta trace.py stores as the task starts,
 * {"pid": <the executor's pid>, "hostname": <node name>}, no date_done. The
 * final result goes later over the same backend connection, in order, so it
 * always lands after this one (and a store that failed is not retried). */
static void store_started(cel_consumer_t *c, request_t *r) {
    cel_task_t *t = r->task;
    json_t *info = json_pack("{s:i, s:s}", "pid", r->pid, "hostname", c->cfg->hostname);
    char *m = info ? cel_canvas_meta(c->canvas, t, "STARTED", info, NULL, NULL, -1, NULL) : NULL;
    if (m) cel_backend_store(c->backend, t, m, strlen(m), NULL, NULL);
    free(m);
    json_decref(info);
}

/* Hands one request to an executor: `slot` for a job bound to an adapter,
 * any executor when slot < 0. Returns 0 when no executor took it (the caller
 * keeps it queued), 1 when it was started or finished here. */
static int run_request(cel_consumer_t *c, request_t *r, int slot) {
    cel_task_t *t = r->task;
    if (t->expires > 0 && now_unix() >= t->expires) {
        revoke_expired(r);
        return 1;
    }
    if (cel_revoked_has(c->revoked, t->id)) {
        revoke_with(r, "revoked");
        return 1;
    }
    uint8_t *buf;
    size_t len;
    if (build_run_frame(r, &buf, &len) != CEL_OK) {
        fail_with(r, "EncodeError", "kombu.exceptions",
                  json_pack("[s]", "cannot encode the task for the executor"), NULL);
        return 1;
    }
    /* The message's limits, else time_limit's for the task name, else ours. */
    double hard = c->cfg->time_limit, soft = c->cfg->soft_time_limit;
    cel_limits_time(c->limits, t->name, &soft, &hard);
    if (t->time_limit > 0) hard = t->time_limit;
    if (t->soft_time_limit > 0) soft = t->soft_time_limit;
    if (hard <= 0 && c->cfg->model_time_limit > 0) {
        /* a model task reading a hostile file must not hold an executor forever */
        const cel_tasks_task_t *spec = cel_tasks_find(t->name);
        if (spec && spec->needs_model) hard = c->cfg->model_time_limit;
    }
    int rc;
    if (slot >= 0) {
        rc = cel_pool_run_on(c->pool, slot, r, buf, len, hard, soft, &r->pid);
        r->slot = slot;
    } else {
        rc = cel_pool_run(c->pool, r, buf, len, hard, soft, &r->pid, &r->slot);
    }
    free(buf);
    if (rc != CEL_OK) return 0;
    r->in_pool = 1;
    set_state(r, R_ACTIVE);
    r->started = now_unix();
    json_t *n = json_object_get(c->totals, t->name);
    json_object_set_new(c->totals, t->name, json_integer(json_integer_value(n) + 1));
    cel_events_task(c->events, "task-started", t, NULL);
    if (c->cfg->track_started && !t->ignore_result) store_started(c, r);
    cel_metrics_task_started(t, r->started - (t->eta > r->received ? t->eta : r->received));
    cel_debug("TaskPool: Apply %s[%s] on executor %d (pid %d)", t->name, t->id, r->slot + 1,
              r->pid);
    return 1;
}

/* The idle executor with the fewest adapters, for an adapter not bound yet
 * (after a restart its checkpoint is loaded wherever it lands) or one being
 * made. -1 if none. */
static int choose_slot(cel_consumer_t *c) {
    int best = -1;
    for (int i = 0; i < cel_pool_slots(c->pool); i++)
        if (cel_pool_slot_idle(c->pool, i) &&
            (best < 0 ||
             cel_affinity_count(c->affinity, i) < cel_affinity_count(c->affinity, best)))
            best = i;
    return best;
}

/* Starts what can start, in arrival order, without head-of-line blocking: a
 * job whose adapter's executor is busy waits (and so do later jobs of the
 * same adapter, keeping their order) while other jobs go ahead. */
static void on_rate_timer(uv_timer_t *t) { dispatch(t->data); }

static void dispatch(cel_consumer_t *c) {
    json_t *blocked = NULL; /* adapters whose next job cannot start now */
    json_t *limited = NULL; /* task names waiting for their rate limit */
    double wait_min = 0;
    request_t *prev = NULL, *r = c->ready_head;
    while (r && cel_pool_can_run(c->pool)) {
        request_t *next = r->rnext;
        const char *ad = cel_affinity_adapter_of(r->task);
        int slot = -1;
        if (limited && json_object_get(limited, r->task->name)) {
            prev = r, r = next;
            continue;
        }
        if (ad) {
            if (blocked && json_object_get(blocked, ad)) {
                prev = r, r = next;
                continue;
            }
            slot = cel_affinity_get(c->affinity, ad);
            /* a slot shrunk away (pool_shrink while it created the adapter, issue 19):
             * another executor loads its checkpoint */
            if (slot < 0 || slot >= cel_pool_slots(c->pool)) slot = choose_slot(c);
            if (slot < 0 || !cel_pool_slot_idle(c->pool, slot)) {
                if (!blocked) blocked = json_object();
                json_object_set_new(blocked, ad, json_true());
                prev = r, r = next;
                continue;
            }
            cel_affinity_set(c->affinity, ad, slot);
        } else if (cel_affinity_creates(r->task) && !c->scaler.max) {
            /* a new adapter stays where it is made: the idle executor holding fewest, so
             * users' adapters spread over the executors (-1, none idle: any with room);
             * under autoscale the lowest free one, so they gather on executors that stay */
            slot = choose_slot(c);
        }
        double wait = cel_limits_take(c->limits, r->task->name);
        if (wait > 0) {
            /* Later tasks of this name wait too, keeping their order. */
            if (!limited) limited = json_object();
            json_object_set_new(limited, r->task->name, json_true());
            if (wait_min == 0 || wait < wait_min) wait_min = wait;
            prev = r, r = next;
            continue;
        }
        /* Unlink r from the ready list, then run it. */
        if (prev) prev->rnext = next;
        else c->ready_head = next;
        if (c->ready_tail == r) c->ready_tail = prev;
        r->rnext = NULL;
        if (!run_request(c, r, slot)) {
            /* No executor after all: back where it was. */
            r->rnext = next;
            if (prev) prev->rnext = r;
            else c->ready_head = r;
            if (!next) c->ready_tail = r;
            break;
        }
        r = next;
    }
    json_decref(blocked);
    json_decref(limited);
    if (wait_min > 0 && !c->closing)
        uv_timer_start(&c->rate_timer, on_rate_timer, (uint64_t)(wait_min * 1000) + 1, 0);
}

static void on_pool_idle(void *priv) { dispatch(priv); }

/* No executor could start, and none ever has: nothing fetched could ever run,
 * so the worker stops (a warm shutdown, from the drain timer rather than
 * inside the pool's callback: what it fetched goes back to the broker for
 * other workers) and exits with status 1, as a worker whose tasks cannot be
 * imported does not start. */
static void on_pool_cannot_start(void *priv, int slot, int exitcode) {
    cel_consumer_t *c = priv;
    cel_crit("Executor-%d could not start (exit status %d: %s; its error is above), and no "
             "executor of this worker has started: it cannot run any task. Stopping the worker.",
             slot + 1, exitcode,
             exitcode == CEL_EXEC_EXIT_MODEL
                 ? "the model, its tokenizer or the state directory could not be opened"
                 : "it refused its command line");
    c->failed = 1;
    if (!c->stopping && !c->closing) uv_timer_start(&c->drain_timer, on_drain_timer, 0, 0);
}

/* A task queued on an executor that died before starting it: run it next. */
static void on_pool_requeue(void *priv, void *job) {
    cel_consumer_t *c = priv;
    request_t *r = job;
    r->in_pool = 0;
    if (r->state == R_GIVING_BACK) {
        if (r->given_back) request_free(r);
        return;
    }
    if (c->cold || c->stopping) {
        /* Not started: give it back like any unstarted message. */
        set_state(r, R_GIVING_BACK);
        if (r->tag && !c->cold) cel_broker_requeue(c->broker, r->tag, on_given_back, r);
        else request_free(r);
        return;
    }
    set_state(r, R_READY);
    r->rnext = c->ready_head;
    c->ready_head = r;
    if (!c->ready_tail) c->ready_tail = r;
}

static char *result_repr(json_t *v) {
    char *s = cel_repr(v, 0, REPR_MAX);
    return s ? s : strdup("?");
}

static void on_pool_result(void *priv, void *job, const cel_frame_result_t *res) {
    cel_consumer_t *c = priv;
    request_t *r = job;
    cel_task_t *t = r->task;
    c->processed++;
    r->in_pool = 0;
    if (r->state == R_GIVING_BACK) {
        if (r->given_back) request_free(r);
        return;
    }
    if (c->cold) {
        request_free(r);
        return;
    }
    r->runtime = res->runtime;
    if (!res->failed) {
        if (cel_log_enabled(CEL_LOG_INFO)) {
            char *rs = result_repr(res->result);
            cel_info("Task %s[%s] succeeded in %.6fs: %s", t->name, t->id, res->runtime, rs);
            free(rs);
        }
        cel_affinity_learn(c->affinity, t, res->result, r->slot);
        finish(r, "SUCCESS", res->result, NULL);
        return;
    }
    const char *tb = res->traceback;
    json_t *exc = cel_exc_new(res->exc_type, res->exc_module, json_incref(res->exc_message));
    char *er = cel_exc_repr(exc);
    cel_error("Task %s[%s] raised unexpected: %s%s%s", t->name, t->id, er ? er : "?",
              tb ? "\n" : "", tb ? tb : "");
    free(er);
    finish(r, "FAILURE", exc, tb);
    json_decref(exc);
}

static void on_pool_progress(void *priv, void *job, const cel_frame_progress_t *prog) {
    request_t *r = job;
    cel_task_t *t = r->task;
    if (t->ignore_result) return;
    char *m = cel_canvas_meta(r->c->canvas, t, prog->state, prog->meta, NULL, NULL, -1, NULL);
    if (m) {
        cel_backend_store(r->c->backend, t, m, strlen(m), NULL, NULL);
        free(m);
    }
}

static void on_pool_lost(void *priv, void *job, int why, int exitcode, int signum) {
    cel_consumer_t *c = priv;
    request_t *r = job;
    cel_task_t *t = r->task;
    c->processed++;
    r->in_pool = 0;
    if (r->state == R_GIVING_BACK) {
        if (r->given_back) request_free(r);
        return;
    }
    if (c->cold) {
        request_free(r);
        return;
    }
    if (r->term_signum) {
        revoke_with(r, "terminated"); /* revoke(terminate=True) killed it */
        return;
    }
    if (why == CEL_POOL_TIMEOUT) {
        double hard = t->time_limit > 0 ? t->time_limit : c->cfg->time_limit;
        cel_error("Hard time limit (%gs) exceeded for %s[%s]", hard, t->name, t->id);
        json_t *arg = hard == floor(hard) ? json_integer((json_int_t)hard) : json_real(hard);
        json_t *args = json_array();
        json_array_append_new(args, arg);
        fail_with(r, "TimeLimitExceeded", "billiard.exceptions", args, NULL);
        return;
    }
    char why_s[160];
    if (signum) {
        const char *name = sigabbrev_np(signum);
        snprintf(why_s, sizeof(why_s), "Worker exited prematurely: signal %d (SIG%s) Job: %ld.",
                 signum, name ? name : "?", c->processed);
    } else {
        snprintf(why_s, sizeof(why_s), "Worker exited prematurely: exitcode %d Job: %ld.", exitcode,
                 c->processed);
    }
    cel_error("Task handler raised error: WorkerLostError('%s')", why_s);
    fail_with(r, "WorkerLostError", "billiard.exceptions", json_pack("[s]", why_s), NULL);
}

/* ---- receiving -------------------------------------------------------- */

static void on_eta(uv_timer_t *t) {
    request_t *r = t->data;
    cel_consumer_t *c = r->c;
    if (r->state != R_HELD || c->stopping) return;
    ready_push(c, r);
    dispatch(c);
}

static void drop_message(cel_consumer_t *c, const char *tag) {
    if (tag) cel_broker_ack(c->broker, tag, NULL, NULL);
}

/* A message over --max-message-size: its ids are read without decoding it
 * (for an envelope, from the headers alone), and a LimitExceeded FAILURE is
 * stored for it when its id is readable; otherwise it is dropped. */
static void refuse_oversized(cel_consumer_t *c, const cel_broker_msg_t *m) {
    cel_peek_t pk;
    cel_task_t *task = NULL;
    const char *tag = m->tag;
    size_t len = m->len;
    if (cel_broker_peek(c->broker, m, &pk, NULL) != CEL_OK) pk.id[0] = pk.task[0] = '\0';
    cel_error("Refusing a message of %zu bytes from '%s' (--max-message-size is %ld)%s%s", len,
              m->queue, c->cfg->max_message_size, pk.id[0] ? ": task " : "", pk.id);
    if (!pk.task[0]) snprintf(pk.task, sizeof(pk.task), "unknown");
    if (!pk.id[0] || cel_task_from_peek(&pk, &task, NULL) != CEL_OK) {
        drop_message(c, tag);
        return;
    }
    request_t *r = request_new(c, task, tag);
    if (!r) {
        cel_task_free(task);
        drop_message(c, tag);
        return;
    }
    set_state(r, R_READY);
    char msg[200];
    snprintf(msg, sizeof(msg), "message of %zu bytes exceeds the worker's limit of %ld bytes", len,
             c->cfg->max_message_size);
    fail_with(r, "LimitExceeded", "kombu.exceptions", json_pack("[s]", msg), NULL);
}

static void on_message(void *priv, const cel_broker_msg_t *m) {
    cel_consumer_t *c = priv;
    cel_task_t *task = NULL;
    const char *tag = m->tag;
    cel_err_t err;
    cel_err_clear(&err);

    if ((long)m->len > c->cfg->max_message_size) {
        refuse_oversized(c, m);
        return;
    }

    int rc = cel_broker_decode(c->broker, m, (size_t)c->cfg->max_message_size, &task, &err);
    if (rc != CEL_OK && rc != CEL_EBODY) {
        int shown = m->len > 120 ? 120 : (int)m->len;
        cel_error("Can't decode message body from '%s': %s (message dropped: %.*s%s)", m->queue,
                  err.msg, shown, m->body, m->len > 120 ? "..." : "");
        drop_message(c, tag);
        return;
    }
    request_t *r = request_new(c, task, tag);
    if (!r) {
        cel_error("out of memory: dropping task %s", task->id);
        cel_task_free(task);
        return; /* left with the broker, which delivers it again */
    }
    set_state(r, R_READY); /* counted; the paths below decide what happens */
    if (rc == CEL_EBODY && err.code == CEL_ELIMIT) {
        /* a compressed body past --max-message-size once decompressed */
        cel_error("Refusing task %s[%s]: %s (--max-message-size is %ld)", task->name, task->id,
                  err.msg, c->cfg->max_message_size);
        fail_with(r, "LimitExceeded", "kombu.exceptions", json_pack("[s]", err.msg), NULL);
        return;
    }
    if (rc == CEL_EBODY) {
        cel_error("Can't decode message body of %s[%s]: %s", task->name, task->id, err.msg);
        fail_with(r, "DecodeError", "kombu.exceptions", json_pack("[s]", err.msg), NULL);
        return;
    }
    if (!cel_tasks_known(task->name)) {
        cel_error("Received unregistered task of type '%s'.\nThe message has been ignored and "
                  "discarded.\n\nDid you remember to import the module containing this task?\n"
                  "Or maybe you're using relative imports?",
                  task->name);
        fail_with(r, "NotRegistered", "celery.exceptions", json_pack("[s]", task->name), NULL);
        return;
    }
    if (cel_revoked_has(c->revoked, task->id)) {
        revoke_with(r, "revoked"); /* celery strategy: no "Received" for these */
        return;
    }
    if (c->stopping) {
        /* a fetch that was in flight when the worker began to stop: nothing starts
         * now, so it goes back unstarted (kombu's restore_at_shutdown) rather than
         * waiting in the ready list until --shutdown-timeout */
        give_back(r);
        return;
    }
    if (cel_log_enabled(CEL_LOG_INFO)) cel_info("Received task: %s[%s]", task->name, task->id);
    double now = now_unix();
    if (task->expires > 0 && now >= task->expires) {
        revoke_expired(r);
        return;
    }
    cel_events_task_received(c->events, task);
    cel_metrics_task_received(task);
    if (task->eta > now) {
        /* Held until due; not counted against the prefetch window. */
        set_state(r, R_HELD);
        uv_timer_start(&r->timer, on_eta, (uint64_t)((task->eta - now) * 1000) + 1, 0);
        return;
    }
    ready_push(c, r);
    dispatch(c);
}

/* "ready." once the broker is up and nothing holds it (cel_consumer_hold_ready). */
static void maybe_announce(cel_consumer_t *c) {
    if (c->announced || !c->broker_was_up || c->ready_holds > 0) return;
    c->announced = 1;
    cel_log_force(CEL_LOG_INFO, "%s ready.", c->cfg->hostname);
}

void cel_consumer_hold_ready(cel_consumer_t *c) { c->ready_holds++; }

void cel_consumer_release_ready(cel_consumer_t *c) {
    if (c->ready_holds > 0) c->ready_holds--;
    maybe_announce(c);
}

static void on_broker_state(void *priv, int up) {
    cel_consumer_t *c = priv;
    if (up) c->broker_was_up = 1;
    maybe_announce(c);
}

/* Tells the broker the messages we hold are still in hand, for transports
 * that would otherwise hand a long-running task to someone else. */
static void on_touch_timer(uv_timer_t *t) {
    cel_consumer_t *c = t->data;
    enum { BATCH = 256 };
    const char *tags[BATCH];
    int n = 0;
    for (request_t *r = c->requests; r; r = r->next) {
        if (!r->tag || r->state == R_GIVING_BACK) continue;
        tags[n++] = r->tag;
        if (n == BATCH) {
            cel_broker_touch(c->broker, tags, n);
            n = 0;
        }
    }
    if (n) cel_broker_touch(c->broker, tags, n);
}

cel_consumer_t *cel_consumer_new(uv_loop_t *loop, const cel_options_t *cfg, cel_events_t *events,
                                 cel_revoked_t *revoked, cel_limits_t *limits,
                                 void (*on_done)(void *, int), void *priv) {
    cel_consumer_t *c = calloc(1, sizeof(*c));
    if (!c) return NULL;
    c->loop = loop;
    c->cfg = cfg;
    c->on_done = on_done;
    c->done_priv = priv;
    c->events = events;
    c->revoked = revoked;
    c->limits = limits;
    c->limit =
        cfg->prefetch_multiplier ? cfg->concurrency * cfg->prefetch_multiplier : NO_PREFETCH_LIMIT;
    uv_timer_init(loop, &c->touch_timer);
    c->touch_timer.data = c;
    uv_timer_init(loop, &c->drain_timer);
    c->drain_timer.data = c;

    cel_pool_cbs_t pcbs = { on_pool_result,  on_pool_progress, on_pool_lost,
                            on_pool_requeue, on_pool_idle,     on_pool_cannot_start };
    uv_timer_init(loop, &c->rate_timer);
    c->rate_timer.data = c;
    uv_timer_init(loop, &c->shutdown_timer);
    c->shutdown_timer.data = c;
    c->started_at = now_unix();
    c->totals = json_object();
    c->pool = cel_pool_new(loop, cfg, &pcbs, c);
    /* autoscale and mingle (issue 19) */
    uv_timer_init(loop, &c->scale_timer);
    c->scale_timer.data = c;
    if (cfg->autoscale_max) {
        cel_autoscale_init(&c->scaler, cfg->autoscale_max, cfg->autoscale_min,
                           cel_autoscale_keepalive_env());
        uv_timer_start(&c->scale_timer, on_scale_timer, 1000, 1000);
    }
    c->affinity = cel_affinity_new(CEL_MAX_CONCURRENCY); /* pool_grow may add slots */
    cel_err_t err;
    cel_err_set(&err, CEL_ENOMEM, "out of memory");
    c->backend = cel_backend_new(loop, cfg, on_backend_up, c, &err);
    cel_broker_cbs_t bcbs = { capacity, on_message, on_broker_state };
    if (c->backend) c->broker = cel_broker_new(loop, cfg, &bcbs, c, &err);
    if (c->broker) c->canvas = cel_canvas_new(loop, cfg, c->broker, c->backend);
    if (!c->pool || !c->backend || !c->broker || !c->canvas || !c->affinity || !c->totals) {
        cel_crit("cannot start the worker: %s", err.msg);
        return NULL; /* main exits; the OS reclaims */
    }
    double every = cel_broker_touch_interval(c->broker);
    if (every > 0)
        uv_timer_start(&c->touch_timer, on_touch_timer, (uint64_t)(every * 1000),
                       (uint64_t)(every * 1000));
    return c;
}

/* ---- shutdown --------------------------------------------------------- */

/* The consumer is freed when its components are closed and no request is
 * left (request timers close asynchronously too). */
static void maybe_free(cel_consumer_t *c) {
    if (!c->closing || c->closing_left > 0 || c->nrequests > 0) return;
    cel_affinity_free(c->affinity);
    json_decref(c->totals);
    void (*cb)(void *, int) = c->on_done;
    void *p = c->done_priv;
    int failed = c->failed;
    free(c);
    if (cb) cb(p, failed);
}

static void close_step(void *priv) {
    cel_consumer_t *c = priv;
    c->closing_left--;
    maybe_free(c);
}

static void on_timer_closed(uv_handle_t *h) { close_step(h->data); }

/* Each component is forgotten as it goes, so a remote control command or a
 * second signal that comes while the others still close never reaches a
 * freed one. */
static void on_pool_closed(void *priv) {
    ((cel_consumer_t *)priv)->pool = NULL;
    close_step(priv);
}

static void on_broker_closed(void *priv) {
    ((cel_consumer_t *)priv)->broker = NULL;
    close_step(priv);
}

static void on_canvas_closed(void *priv) {
    ((cel_consumer_t *)priv)->canvas = NULL;
    close_step(priv);
}

static void on_backend_closed(void *priv) {
    ((cel_consumer_t *)priv)->backend = NULL;
    close_step(priv);
}

static void close_all(cel_consumer_t *c) {
    if (c->closing) return;
    c->closing = 1;
    c->closing_left = 9;
    uv_close((uv_handle_t *)&c->scale_timer, on_timer_closed); /* autoscale (issue 19) */
    uv_timer_stop(&c->shutdown_timer);
    uv_close((uv_handle_t *)&c->shutdown_timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->rate_timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->touch_timer, on_timer_closed);
    uv_close((uv_handle_t *)&c->drain_timer, on_timer_closed);
    cel_canvas_close(c->canvas, on_canvas_closed, c); /* before what its jobs use */
    cel_pool_close(c->pool, c->cold, on_pool_closed, c);
    cel_broker_close(c->broker, on_broker_closed, c);
    cel_backend_close(c->backend, on_backend_closed, c);
}

/* Runs once per loop turn when asked: fetch into free slots, or see whether
 * a shutdown can complete. */
static void on_drain_timer(uv_timer_t *t) {
    cel_consumer_t *c = t->data;
    if (c->failed && !c->stopping && !c->closing) cel_consumer_shutdown(c);
    else if (c->stopping) maybe_finish_shutdown(c);
    else if (!c->closing) cel_broker_kick(c->broker);
}

static void maybe_finish_shutdown(cel_consumer_t *c) {
    if (c->closing) {
        maybe_free(c);
        return;
    }
    if (!c->stopping || c->nrequests > 0) return;
    if (cel_broker_pending(c->broker) > 0) {
        /* Acks or requeues still in flight: look again shortly. */
        uv_timer_start(&c->drain_timer, on_drain_timer, 10, 0);
        return;
    }
    close_all(c);
}

static void on_given_back(void *priv, int ok) {
    request_t *r = priv;
    if (!ok && !r->c->cold)
        cel_error("could not give %s back to the broker; the broker will deliver it again",
                  r->task->id);
    if (ok) cel_events_task_rejected(r->c->events, r->task, 1); /* Request.reject(requeue) */
    r->given_back = 1;
    if (!r->in_pool) request_free(r); /* else when its killed executor is reaped */
}

/* Puts r's message back in its queue (marked redelivered) and frees r when
 * that is done; r must not be finishing a store or in the ready list. */
static void give_back(request_t *r) {
    cel_consumer_t *c = r->c;
    set_state(r, R_GIVING_BACK);
    uv_timer_stop(&r->timer);
    if (r->tag && c->broker) {
        cel_broker_requeue(c->broker, r->tag, on_given_back, r);
        return;
    }
    if (!r->tag)
        cel_error("%s[%s] was never registered with the broker: it cannot be given back",
                  r->task->name, r->task->id);
    on_given_back(r, 1);
}

static void go_cold(cel_consumer_t *c);

/* --shutdown-timeout passed in a warm shutdown: what is still running or
 * waiting to store is given back to the broker and the worker closes. */
static void on_shutdown_timer(uv_timer_t *t) {
    cel_consumer_t *c = t->data;
    if (c->closing || c->cold) return;
    int left = 0;
    for (request_t *r = c->requests; r; r = r->next)
        if (r->state != R_GIVING_BACK) left++;
    cel_warn("Warm shutdown: %d task(s) not finished after %gs (--shutdown-timeout); giving their "
             "messages back to the broker",
             left, c->cfg->shutdown_timeout);
    go_cold(c);
}

void cel_consumer_shutdown(cel_consumer_t *c) {
    if (c->stopping) return;
    c->stopping = 1;
    cel_broker_stop(c->broker);
    /* Give back everything that has not started (as kombu's restore_at_shutdown). */
    request_t *r = c->requests, *next;
    c->ready_head = c->ready_tail = NULL;
    for (; r; r = next) {
        next = r->next;
        if (r->state != R_READY && r->state != R_HELD) continue;
        give_back(r);
    }
    int active = cel_pool_busy(c->pool);
    if (active) cel_warn("Waiting for %d running task(s) to finish...", active);
    uv_timer_start(&c->shutdown_timer, on_shutdown_timer,
                   (uint64_t)(c->cfg->shutdown_timeout * 1000), 0);
    maybe_finish_shutdown(c);
}

/* Kills the executors and closes; every message not finished goes back to
 * its queue (kombu's restore_at_shutdown), nothing more is acked. */
static void go_cold(cel_consumer_t *c) {
    c->cold = 1;
    c->stopping = 1;
    c->ready_head = c->ready_tail = NULL;
    uv_timer_stop(&c->shutdown_timer);
    cel_broker_stop(c->broker);
    request_t *r = c->requests, *next;
    for (; r; r = next) {
        next = r->next;
        if (r->state == R_GIVING_BACK || r->state == R_NEW) continue;
        /* a store in flight ends by itself (its reply, or NULL at close) */
        if (r->state == R_FINISHING && (r->storing || !r->meta)) continue;
        give_back(r);
    }
    close_all(c);
}

void cel_consumer_shutdown_cold(cel_consumer_t *c) {
    if (c->closing) {
        c->cold = 1;
        if (c->pool) cel_pool_close(c->pool, 1, NULL, NULL); /* already closing: just kill */
        return;
    }
    go_cold(c);
}

/* ---- remote control hooks (control.c) -------------------------------- */

void cel_consumer_each_request(cel_consumer_t *c,
                               void (*fn)(void *priv, const cel_consumer_req_t *r), void *priv) {
    for (request_t *r = c->requests; r; r = r->next) {
        cel_consumer_req_t q = { r->task, 0, 0, 0 };
        if (r->state == R_HELD) q.kind = CEL_REQ_SCHEDULED;
        else if (r->state == R_READY) q.kind = CEL_REQ_RESERVED;
        else if (r->state == R_ACTIVE)
            q.kind = CEL_REQ_ACTIVE, q.time_start = r->started, q.pid = r->pid;
        else continue;
        fn(priv, &q);
    }
}

static void ready_remove(cel_consumer_t *c, request_t *r) {
    request_t *prev = NULL;
    for (request_t *q = c->ready_head; q; prev = q, q = q->rnext) {
        if (q != r) continue;
        if (prev) prev->rnext = q->rnext;
        else c->ready_head = q->rnext;
        if (c->ready_tail == q) c->ready_tail = prev;
        q->rnext = NULL;
        return;
    }
}

int cel_consumer_revoke(cel_consumer_t *c, const char *id, int signum) {
    int hit = 0;
    request_t *r = c->requests, *next;
    for (; r; r = next) {
        next = r->next;
        if (!r->task || strcmp(r->task->id, id) != 0) continue;
        if (r->state == R_HELD) {
            uv_timer_stop(&r->timer);
            revoke_with(r, "revoked");
        } else if (r->state == R_READY) {
            ready_remove(c, r);
            revoke_with(r, "revoked");
        } else if (r->state == R_ACTIVE && signum > 0 && !r->term_signum &&
                   cel_pool_terminate(c->pool, r, signum) == CEL_OK) {
            r->term_signum = signum;
            hit = 1;
        }
    }
    return hit;
}

int cel_consumer_resize(cel_consumer_t *c, int delta) {
    if (c->stopping || c->closing) return CEL_EINVAL;
    int n = cel_pool_slots(c->pool) + delta;
    /* autoscale and mingle (issue 19): at least one executor; none holding adapters retired */
    if (n < 1) return CEL_EINVAL;
    for (int s = n; s < cel_pool_slots(c->pool); s++)
        if (cel_affinity_count(c->affinity, s) > 0) return CEL_ESTATE;
    if (cel_pool_resize(c->pool, n) != CEL_OK) return CEL_EINVAL;
    if (c->cfg->prefetch_multiplier) c->limit = n * c->cfg->prefetch_multiplier;
    cel_info("pool now has %d executor(s); prefetch %d", n, c->limit);
    uv_timer_start(&c->drain_timer, on_drain_timer, 0, 0);
    return n;
}

void cel_consumer_restart_pool(cel_consumer_t *c) {
    if (!c->closing) cel_pool_restart(c->pool);
}

int cel_consumer_queue(cel_consumer_t *c, const char *queue, int add) {
    if (c->closing) return CEL_ESTATE;
    return add ? cel_broker_add_queue(c->broker, queue) : cel_broker_cancel_queue(c->broker, queue);
}

json_t *cel_consumer_queues(cel_consumer_t *c) {
    return c->broker ? cel_broker_queues(c->broker) : json_array();
}

void cel_consumer_redispatch(cel_consumer_t *c) {
    if (!c->stopping && !c->closing) dispatch(c);
}

void cel_consumer_info(cel_consumer_t *c, cel_consumer_info_t *out) {
    out->totals = c->totals;
    out->prefetch_count = c->limit;
    out->started_at = c->started_at;
    out->processed = c->processed;
    out->slots = out->busy = out->npids = 0;
    /* autoscale and mingle (issue 19) */
    out->autoscale_max = c->scaler.max;
    out->autoscale_min = c->scaler.min;
    out->qty = c->held + c->active;
    out->device[0] = '\0';
    out->adapters_resident = 0;
    if (!c->pool) return;
    snprintf(out->device, sizeof(out->device), "%s", cel_pool_device(c->pool));
    out->adapters_resident = cel_pool_adapters(c->pool);
    out->slots = cel_pool_slots(c->pool);
    out->busy = cel_pool_busy(c->pool);
    out->npids = cel_pool_pids(c->pool, out->pids, CEL_MAX_CONCURRENCY);
    for (int i = 0; i < out->slots; i++) out->tasks_done[i] = cel_pool_tasks_written(c->pool, i);
}

/* ---- autoscale and mingle (issue 19) ---------------------------------- */

static double now_mono(void) { return (double)uv_hrtime() / 1e9; }

/* Retires up to k executors from the top slot down, each only when it runs
 * nothing and holds no adapter (their gradients and routing stay put); stops
 * at the first that must stay, slots being contiguous. Returns how many. */
static int retire_idle(cel_consumer_t *c, int k) {
    int n = cel_pool_slots(c->pool), got = 0;
    while (got < k && n > 0 && cel_pool_slot_unused(c->pool, n - 1) &&
           cel_affinity_count(c->affinity, n - 1) == 0)
        n--, got++;
    if (got && cel_pool_resize(c->pool, n) != CEL_OK) return 0;
    return got;
}

static void maybe_scale(cel_consumer_t *c) {
    if (!c->scaler.max || c->stopping || c->closing || !c->pool) return;
    int procs = cel_pool_slots(c->pool);
    int d = cel_autoscale_decide(&c->scaler, c->held + c->active, procs, now_mono());
    if (d > 0 && cel_pool_resize(c->pool, procs + d) == CEL_OK) {
        cel_info("Scaling up %d processes.", d);
    } else if (d < 0) {
        int got = retire_idle(c, -d);
        if (got) cel_info("Scaling down %d processes.", got);
        else cel_debug("Autoscaler won't scale down: all processes busy or holding adapters.");
    }
}

static void on_scale_timer(uv_timer_t *t) { maybe_scale(t->data); }

int cel_consumer_autoscale(cel_consumer_t *c, int max, int min, int *max_out, int *min_out) {
    if (!c->scaler.max) return CEL_ENOTFOUND;
    if (c->stopping || c->closing) return CEL_ESTATE;
    cel_autoscale_update(&c->scaler, max, min);
    /* the prefetch window follows max, as Celery's _update_consumer_prefetch_count */
    if (c->cfg->prefetch_multiplier) c->limit = c->scaler.max * c->cfg->prefetch_multiplier;
    int procs = cel_pool_slots(c->pool);
    if (procs > c->scaler.max) {
        int got = retire_idle(c, procs - c->scaler.max);
        if (got) cel_info("Scaling down %d processes.", got);
    } else if (procs < c->scaler.min && cel_pool_resize(c->pool, c->scaler.min) == CEL_OK) {
        cel_info("Scaling up %d processes.", c->scaler.min - procs);
    }
    uv_timer_start(&c->drain_timer, on_drain_timer, 0, 0); /* the window may have grown */
    *max_out = c->scaler.max;
    *min_out = c->scaler.min;
    return CEL_OK;
}
