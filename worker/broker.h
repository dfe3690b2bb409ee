/* broker.h -- the broker transport interface: one operations table per transport.
 *
 * The consumer sees messages, opaque delivery tags and queue names only;
 * what a transport does to hold, ack, give back or keep a message (kombu's
 * ack emulation on Redis, basic.ack on AMQP) stays behind its table. A
 * transport is one cel_broker_ops_t (broker_redis.c is the first), chosen at
 * creation by the scheme of --broker's URL, in the shape of model/gpu.h:
 * one versioned table, the only symbol its file exports. broker.c dispatches.
 * Main process, libuv loop: no operation blocks. Each one that takes a
 * `done` callback (may be NULL) calls it exactly once: ok=1 when the server
 * confirmed, ok=0 when the connection failed or closed first -- before the
 * call returns when it could not even be sent.
 */
#ifndef CEL_BROKER_H
#define CEL_BROKER_H

#include <stddef.h>

#include <jansson.h>
#include <uv.h>

#include "../protocol/peek.h"
#include "../protocol/protocol.h"
#include "options.h"

#define CEL_BROKER_ABI 1

typedef struct cel_broker cel_broker_t;

/* One message as the transport took it; borrowed for the on_message call. */
typedef struct cel_broker_msg {
    const char *tag;   /* delivery tag for ack/requeue/touch (copy it to keep it);
                        * NULL when the transport could not hold the message: it is
                        * gone from the broker already (log and drop it) */
    const char *queue; /* where it came from, for logs */
    const char *body;  /* the message as it arrived (Redis: the kombu JSON envelope);
                        * not NUL-terminated as far as the consumer knows */
    size_t len;        /* its size, what --max-message-size limits */
    const void *parts; /* the transport's own view, for its decode/peek; may be NULL */
} cel_broker_msg_t;

typedef struct cel_broker_cbs {
    /* How many more messages the consumer can take now (0 = stop fetching). */
    int (*capacity)(void *priv);
    /* One message taken from a queue. */
    void (*on_message)(void *priv, const cel_broker_msg_t *m);
    /* The transport came up (1) or went down (0). */
    void (*on_state)(void *priv, int up);
} cel_broker_cbs_t;

/* done(priv, ok) of ack, requeue and publish. */
typedef void (*cel_broker_done_fn)(void *priv, int ok);

/* A message to send, transport-neutral: what kombu's Producer.publish is
 * given. Every field is borrowed for the call; the transport serializes it
 * its own way (Redis: kombu's JSON envelope with a base64 body, LPUSHed to
 * the queues the exchange binds for routing_key, or PUBLISHed for a fanout
 * exchange; AMQP: basic.publish with native properties and headers). */
typedef struct cel_broker_out {
    const char *exchange;      /* "" = the default exchange: routing_key names the queue */
    const char *exchange_type; /* "direct" (NULL), "topic" or "fanout" */
    const char *routing_key;
    json_t *headers;              /* message headers (task protocol 2 headers), may be NULL */
    const char *content_type;     /* "application/json" */
    const char *content_encoding; /* "utf-8" */
    const void *body;             /* the serialized body */
    size_t body_len;
    const char *correlation_id; /* may be NULL */
    const char *reply_to;       /* may be NULL */
    json_t *extra;              /* more properties, in order, after reply_to (Celery 5.2
                                 * passes unknown task options on as properties); may
                                 * be NULL. AMQP may ignore them, as py-amqp does */
    const char *expiration;     /* per-message TTL in ms as a string ("60000"), or NULL */
    int priority;               /* 0..9, -1 = none (Redis writes 0) */
    int persistent;             /* delivery_mode 2 (else 1) */
} cel_broker_out_t;

/* A transport. impl is what its open returned. */
typedef struct cel_broker_ops {
    int abi;            /* CEL_BROKER_ABI */
    const char *scheme; /* the URL scheme it serves: "redis" */
    /* Starts connecting; consuming starts when up and capacity() > 0. cfg and
     * cbs are borrowed for its life. NULL with err set on failure. */
    void *(*open)(uv_loop_t *loop, const cel_options_t *cfg, const cel_broker_cbs_t *cbs,
                  void *priv, cel_err_t *err);
    /* Decodes a message it delivered into a task (cel_task_decode_envelope's
     * returns: CEL_OK, CEL_EBODY with *out set, else nothing usable); a
     * compressed body decompresses to at most max_body bytes
     * (cel_task_decode_envelope_max: err->code CEL_ELIMIT past it). */
    int (*decode)(const cel_broker_msg_t *m, size_t max_body, cel_task_t **out, cel_err_t *err);
    /* Reads the ids of a message too big to decode, without decoding it. */
    int (*peek)(const cel_broker_msg_t *m, cel_peek_t *out, cel_err_t *err);
    /* capacity() may have grown: fetch if idle. */
    void (*kick)(void *impl);
    /* Acknowledges a message: it is done and will not come back. */
    void (*ack)(void *impl, const char *tag, cel_broker_done_fn done, void *priv);
    /* Gives a message that did not start back to its queue, marked redelivered. */
    void (*requeue)(void *impl, const char *tag, cel_broker_done_fn done, void *priv);
    /* Seconds between touches of held messages; 0 when the transport needs
     * none (its messages stay held as long as the connection does). */
    double (*touch_interval)(const void *impl);
    /* Tells the transport these messages are still being worked on (tags
     * borrowed), so they are not handed to another worker. */
    void (*touch)(void *impl, const char **tags, int n);
    /* Stops fetching; a fetch in flight may still deliver. */
    void (*stop)(void *impl);
    /* Operations in flight (acks, requeues, fetches). */
    int (*pending)(const void *impl);
    /* Starts consuming a queue: CEL_OK (also when consumed already), CEL_ELIMIT. */
    int (*add_queue)(void *impl, const char *queue);
    /* Stops consuming a queue: CEL_OK, CEL_ENOTFOUND when not consumed. */
    int (*cancel_queue)(void *impl, const char *queue);
    /* New array of the names of the queues consumed now. */
    json_t *(*queues)(const void *impl);
    /* Closes every connection; on_closed(priv) runs when done; impl is freed. */
    void (*close)(void *impl, void (*on_closed)(void *), void *priv);
    /* The message was acked by other means (the result backend's store_ack):
     * drop what the transport keeps of it. May be NULL (nothing kept). */
    void (*forget)(void *impl, const char *tag);
    /* The message's ack is about to be sent by other means (store_ack): until
     * forget, keep it but do not repair its absence from the server (a
     * store_ack whose answer was lost with its connection may have acked it).
     * May be NULL. */
    void (*acking)(void *impl, const char *tag);
    /* Sends a message (m borrowed for the call) as kombu's Producer.publish
     * would. done(priv, 1) once the server took it (for an exchange that
     * binds no queue for the routing key it is dropped, as kombu drops it,
     * and that is still ok=1); ok=0 when the connection is down or the
     * server refused it (then nothing was queued), or when m is not valid
     * (no routing key for the default exchange). */
    void (*publish)(void *impl, const cel_broker_out_t *m, cel_broker_done_fn done, void *priv);
} cel_broker_ops_t;

/* The transports (one table each, in their own file). */
extern const cel_broker_ops_t cel_broker_redis_ops; /* broker_redis.c */
extern const cel_broker_ops_t cel_broker_amqp_ops;  /* broker_amqp.c */

/* Creates the transport --broker's URL names (cfg->broker_url's scheme) and
 * starts it. cfg and cbs borrowed for the broker's life. NULL with err set
 * for an unknown scheme or on allocation failure. */
cel_broker_t *cel_broker_new(uv_loop_t *loop, const cel_options_t *cfg, const cel_broker_cbs_t *cbs,
                             void *priv, cel_err_t *err);

/* The table in use (its scheme names the transport in logs and stats). */
const cel_broker_ops_t *cel_broker_ops(const cel_broker_t *b);

/* The operations of the table, for the broker in use (see cel_broker_ops_t). */
int cel_broker_decode(const cel_broker_t *b, const cel_broker_msg_t *m, size_t max_body,
                      cel_task_t **out, cel_err_t *err);
int cel_broker_peek(const cel_broker_t *b, const cel_broker_msg_t *m, cel_peek_t *out,
                    cel_err_t *err);
void cel_broker_kick(cel_broker_t *b);
void cel_broker_ack(cel_broker_t *b, const char *tag, cel_broker_done_fn done, void *priv);
void cel_broker_requeue(cel_broker_t *b, const char *tag, cel_broker_done_fn done, void *priv);
double cel_broker_touch_interval(const cel_broker_t *b);
void cel_broker_touch(cel_broker_t *b, const char **tags, int n);
void cel_broker_stop(cel_broker_t *b);
int cel_broker_pending(const cel_broker_t *b);
int cel_broker_add_queue(cel_broker_t *b, const char *queue);
int cel_broker_cancel_queue(cel_broker_t *b, const char *queue);
json_t *cel_broker_queues(const cel_broker_t *b);
void cel_broker_forget(cel_broker_t *b, const char *tag);
void cel_broker_acking(cel_broker_t *b, const char *tag);
void cel_broker_publish(cel_broker_t *b, const cel_broker_out_t *m, cel_broker_done_fn done,
                        void *priv);

/* Closes the transport; on_closed(priv) runs when it is done and b is freed. */
void cel_broker_close(cel_broker_t *b, void (*on_closed)(void *), void *priv);

#endif
