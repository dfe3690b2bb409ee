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

#include "config.h"

typedef struct cel_consumer cel_consumer_t;

/* Creates the consumer and starts connecting and spawning. cfg borrowed for
 * the consumer's life. on_done(priv) runs once after a shutdown finished and
 * every handle the consumer owns is closed (then it is freed). */
cel_consumer_t *cel_consumer_new(uv_loop_t *loop, const cel_config_t *cfg,
                                 void (*on_done)(void *), void *priv);

/* Warm shutdown: stop consuming, give back what did not start, let running
 * tasks finish and store their results, then close everything. */
void cel_consumer_shutdown(cel_consumer_t *c);

/* Cold shutdown: kill executors, ack nothing more, close at once. Unacked
 * messages return to their queues after the visibility timeout. */
void cel_consumer_shutdown_cold(cel_consumer_t *c);

#endif
