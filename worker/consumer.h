/* consumer.h -- the worker's request lifecycle: receive, hold, run, store, ack.
 *
 * Owns the broker transport, the result backend and the executor pool. A
 * message becomes a request: decoded, checked (registered name, expiry),
 * held until its eta, run on an idle executor, its result stored, and only
 * then acked. Implements the prefetch window, warm and cold shutdown. It
 * borrows what main.c creates and shares with remote control (events, the
 * revoked set, the per task name limits) and knows nothing of control:
 * control calls the functions below, never the other way round.
 * Main process, libuv loop.
 */
#ifndef CEL_CONSUMER_H
#define CEL_CONSUMER_H

#include <uv.h>

#include "../protocol/protocol.h"
#include "events.h"
#include "limits.h"
#include "options.h"
#include "revoked.h"

typedef struct cel_consumer cel_consumer_t;

/* Creates the consumer and starts connecting and spawning. cfg, events,
 * revoked and limits are borrowed for the consumer's life (they must outlive
 * on_done). on_done(priv, failed) runs once after a shutdown finished and
 * every handle the consumer owns is closed (then it is freed); failed is 1
 * when the consumer stopped by itself because no executor could start (a
 * wrong --model, a missing device: the worker should exit with an error). */
cel_consumer_t *cel_consumer_new(uv_loop_t *loop, const cel_options_t *cfg, cel_events_t *events,
                                 cel_revoked_t *revoked, cel_limits_t *limits,
                                 void (*on_done)(void *, int), void *priv);

/* Warm shutdown: stop consuming, give back what did not start, let running
 * tasks finish and store their results, then close everything. */
/* "ready." is logged once the broker is up and every hold is released: a part
 * that must be listening first (remote control's mailbox) holds it. */
void cel_consumer_hold_ready(cel_consumer_t *c);
void cel_consumer_release_ready(cel_consumer_t *c);

void cel_consumer_shutdown(cel_consumer_t *c);

/* Cold shutdown: kill executors, ack nothing more, close at once. Unacked
 * messages stay with the broker, which delivers them again. */
void cel_consumer_shutdown_cold(cel_consumer_t *c);

/* ---- for remote control (control.c) ----------------------------------- */

enum { CEL_REQ_SCHEDULED = 1, CEL_REQ_RESERVED = 2, CEL_REQ_ACTIVE = 3 };

/* A live request as inspect shows it; borrowed for one callback. */
typedef struct cel_consumer_req {
    const cel_task_t *task;
    int kind;          /* CEL_REQ_* */
    double time_start; /* 0 when not started */
    int pid;           /* executor pid, 0 when not started */
} cel_consumer_req_t;

/* Calls fn for every request that is held (eta), reserved or running. */
void cel_consumer_each_request(cel_consumer_t *c,
                               void (*fn)(void *priv, const cel_consumer_req_t *r), void *priv);

/* Revokes a task id: a held or reserved request is finished at once as
 * REVOKED ('revoked'); with signum > 0 a running one has its executor killed
 * with that signal and is stored as REVOKED ('terminated'). The id is also
 * remembered so a later message is discarded. Returns 1 when a running
 * request was signalled. */
int cel_consumer_revoke(cel_consumer_t *c, const char *id, int signum);

/* Grows (delta > 0) or shrinks the executor pool and the prefetch window
 * with it. Returns the new concurrency, CEL_EINVAL when out of range, or
 * CEL_ESTATE when an executor it would retire holds adapters. */
int cel_consumer_resize(cel_consumer_t *c, int delta);

/* autoscale and mingle (issue 19) */
/* The autoscale command (Autoscaler.update): new max and/or min (< 0 = keep);
 * the prefetch window follows max; executors past max are retired when idle
 * and hold no adapters. *max_out, *min_out get the settings now. CEL_OK,
 * CEL_ENOTFOUND without --autoscale, CEL_ESTATE when stopping. */
int cel_consumer_autoscale(cel_consumer_t *c, int max, int min, int *max_out, int *min_out);

/* Restarts every executor (busy ones after their task). */
void cel_consumer_restart_pool(cel_consumer_t *c);

/* Starts (add=1) or stops consuming a queue. CEL_OK, CEL_ELIMIT, CEL_ENOTFOUND,
 * CEL_ESTATE once the consumer is closing. */
int cel_consumer_queue(cel_consumer_t *c, const char *queue, int add);

/* What stats and heartbeats report. totals is borrowed for the call; the
 * pool figures are zero once the pool has closed. */
typedef struct cel_consumer_info {
    json_t *totals; /* task name -> tasks started */
    int prefetch_count;
    double started_at; /* unix time */
    long processed;    /* tasks finished by an executor */
    int slots;         /* executor slots (the concurrency) */
    int busy;          /* executors running a task */
    int npids;
    int pids[CEL_MAX_CONCURRENCY];        /* live executors */
    long tasks_done[CEL_MAX_CONCURRENCY]; /* per slot, [0, slots) */
    /* autoscale and mingle (issue 19) */
    int autoscale_max, autoscale_min; /* 0, 0 without --autoscale */
    int qty;                          /* requests reserved or running (the autoscaler's) */
    /* issue 15 (a front end's GET /workers) */
    char device[96];        /* the executors' model device; "" before one is ready */
    long adapters_resident; /* adapters in the executors' memory */
} cel_consumer_info_t;

/* Fills *out (a large struct: keep one per call, not per request). */
void cel_consumer_info(cel_consumer_t *c, cel_consumer_info_t *out);

/* New array of the queues consumed now (names). */
json_t *cel_consumer_queues(cel_consumer_t *c);

/* Looks again for requests that may start: call after changing a limit
 * that held some back (a rate limit lowered or removed). */
void cel_consumer_redispatch(cel_consumer_t *c);

#endif
