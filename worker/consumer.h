/* consumer.h -- the worker's request lifecycle: receive, hold, run, store, ack.
 *
 * Owns the broker transport, the result backend and the executor pool. A
 * message becomes a request: decoded, checked (registered name, expiry),
 * held until its eta, run on an idle executor, its result stored, and only
 * then acked. Implements the prefetch window, warm and cold shutdown.
 * Main process, libuv loop.
 */
#ifndef CEL_CONSUMER_H
#define CEL_CONSUMER_H

#include <uv.h>

#include "../protocol/protocol.h"
#include "options.h"

typedef struct cel_consumer cel_consumer_t;

/* Creates the consumer and starts connecting and spawning. cfg borrowed for
 * the consumer's life. on_done(priv) runs once after a shutdown finished and
 * every handle the consumer owns is closed (then it is freed). */
cel_consumer_t *cel_consumer_new(uv_loop_t *loop, const cel_options_t *cfg,
                                 void (*on_done)(void *), void *priv);

/* Warm shutdown: stop consuming, give back what did not start, let running
 * tasks finish and store their results, then close everything. */
void cel_consumer_shutdown(cel_consumer_t *c);

/* Cold shutdown: kill executors, ack nothing more, close at once. Unacked
 * messages return to their queues after the visibility timeout. */
void cel_consumer_shutdown_cold(cel_consumer_t *c);

/* ---- for remote control (control.c) ----------------------------------- */

enum { CEL_REQ_SCHEDULED = 1, CEL_REQ_RESERVED = 2, CEL_REQ_ACTIVE = 3 };

/* A live request as inspect shows it; borrowed for one callback. */
typedef struct cel_consumer_req {
    const cel_task_t *task;
    int kind;           /* CEL_REQ_* */
    double time_start;  /* 0 when not started */
    int pid;            /* executor pid, 0 when not started */
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
 * with it. Returns the new concurrency, or CEL_EINVAL when out of range. */
int cel_consumer_resize(cel_consumer_t *c, int delta);

/* Restarts every executor (busy ones after their task). */
void cel_consumer_restart_pool(cel_consumer_t *c);

/* Starts (add=1) or stops consuming a queue. CEL_OK, CEL_ELIMIT, CEL_ENOTFOUND. */
int cel_consumer_queue(cel_consumer_t *c, const char *queue, int add);

/* What stats reports; everything borrowed for the call. */
typedef struct cel_consumer_info {
    struct cel_pool *pool;
    json_t *totals;      /* task name -> tasks started */
    int prefetch_count;
    double started_at;   /* unix time */
    long processed;
} cel_consumer_info_t;

void cel_consumer_info(cel_consumer_t *c, cel_consumer_info_t *out);

/* New array of the queues consumed now (names). */
json_t *cel_consumer_queues(cel_consumer_t *c);

/* Sets a per task name rate limit (per_sec 0 removes it) and re-dispatches. */
int cel_consumer_rate_limit(cel_consumer_t *c, const char *name, double per_sec);

#endif
