/* broker.h -- the Redis broker transport, compatible with kombu's.
 *
 * Consumes the worker's queues and their priority sub-queues in kombu's order,
 * registers every message it takes in kombu's ack emulation (`unacked` hash +
 * `unacked_index` zset) in the same server-side step as the pop, acks, gives
 * messages back, and restores messages whose visibility timeout passed (its
 * own and those of dead Python workers alike). Main process, libuv loop.
 */
#ifndef CEL_BROKER_H
#define CEL_BROKER_H

#include <stddef.h>

#include <jansson.h>
#include <uv.h>

#include "options.h"

typedef struct cel_broker cel_broker_t;

typedef struct cel_broker_cbs {
    /* How many more messages the consumer can take now (0 = stop fetching). */
    int (*capacity)(void *priv);
    /* One message taken from queue key `key`. raw/len are borrowed for the
     * call. tag is its delivery tag as registered in `unacked`, or NULL when
     * the message was not an envelope kombu could register (garbage: it is
     * already gone from the broker; log and drop it). */
    void (*on_message)(void *priv, const char *raw, size_t len, const char *tag,
                       const char *key);
    /* The broker connection came up (1) or went down (0). */
    void (*on_state)(void *priv, int up);
} cel_broker_cbs_t;

/* Creates the transport and starts connecting; consuming starts when up and
 * capacity() > 0. cfg and cbs are borrowed for the broker's life. */
cel_broker_t *cel_broker_new(uv_loop_t *loop, const cel_options_t *cfg,
                             const cel_broker_cbs_t *cbs, void *priv);

/* Tells the broker that capacity() may have grown; it fetches if idle. */
void cel_broker_kick(cel_broker_t *b);

/* Acks (kombu QoS.ack: ZREM unacked_index + HDEL unacked). done(priv, ok) runs
 * when Redis confirmed (ok=1) or the connection failed (ok=0); may be NULL. */
void cel_broker_ack(cel_broker_t *b, const char *tag, void (*done)(void *, int), void *priv);

/* Gives an unacked message back to its queue (kombu restore_by_tag: RPUSH to
 * the consuming end, redelivered flag set). done as for ack. */
void cel_broker_requeue(cel_broker_t *b, const char *tag, void (*done)(void *, int), void *priv);

/* Refreshes the unacked_index score of messages still held, so a long task is
 * not restored under a running worker (ZADD XX). tags borrowed. */
void cel_broker_touch(cel_broker_t *b, const char **tags, int n);

/* Stops fetching; a pop in flight still delivers what it took. */
void cel_broker_stop(cel_broker_t *b);

/* Number of Redis commands in flight (acks, requeues, pops). */
int cel_broker_pending(const cel_broker_t *b);

/* Starts consuming queue (add_consumer): its binding is declared and it is
 * fetched from at once. CEL_OK (also when already consumed), CEL_ELIMIT. */
int cel_broker_add_queue(cel_broker_t *b, const char *queue);

/* Stops consuming queue (cancel_consumer). CEL_ENOTFOUND when not consumed.
 * A wait already in flight may still deliver one message from it. */
int cel_broker_cancel_queue(cel_broker_t *b, const char *queue);

/* New array of the names of the queues consumed now. */
json_t *cel_broker_queues(const cel_broker_t *b);

/* Closes both connections; on_closed(priv) runs when done; b is freed. */
void cel_broker_close(cel_broker_t *b, void (*on_closed)(void *), void *priv);

#endif
