/* bus.h -- fanout and mailbox: what remote control, events and rpc results need of the broker.
 *
 * The worker's side channels are not task queues: remote control listens
 * on a fanout exchange (celery.pidbox) through a queue of its own and
 * replies on a direct one (reply.celery.pidbox); events are published to
 * celeryev; rpc:// results are published to the client's reply queue. A bus
 * is one connection that publishes to exchanges and listens on bound
 * queues, the same calls on every transport: Redis (bus_redis.c: kombu's
 * PUBLISH/PSUBSCRIBE fanout emulation and _kombu.binding sets) and AMQP
 * (amqp_bus.c: real exchanges, queues and bindings, declared as kombu does).
 * One operations table per transport, chosen by the broker URL, in the
 * shape of broker.h. Main process, libuv loop: nothing blocks; each call
 * that takes `done` (may be NULL) calls it exactly once.
 */
#ifndef CEL_BUS_H
#define CEL_BUS_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "broker.h"
#include "options.h"

#define CEL_BUS_ABI      1
#define CEL_BUS_MAX_BODY (1024 * 1024) /* one message listened to */

typedef struct cel_bus cel_bus_t;

/* An exchange as kombu declares it (borrowed for the call). */
typedef struct cel_bus_exchange {
    const char *name;
    const char *type; /* "direct", "fanout" or "topic" */
    int durable;
    int auto_delete;
} cel_bus_exchange_t;

/* A queue bound to an exchange and consumed without acks (a pidbox). */
typedef struct cel_bus_queue {
    cel_bus_exchange_t exchange;
    const char *name;        /* e.g. "<node>.celery.pidbox" */
    const char *routing_key; /* the binding key; "" for a fanout exchange */
    double message_ttl;      /* seconds, 0 = none (x-message-ttl) */
    double expires;          /* seconds, 0 = none (x-expires) */
} cel_bus_queue_t;

/* A message listened to; borrowed for the callback. */
typedef struct cel_bus_msg {
    json_t *headers;              /* an object, never NULL */
    const char *content_type;     /* NULL when absent */
    const char *content_encoding; /* NULL when absent */
    const uint8_t *body;          /* raw bytes (base64 already undone); not NUL-terminated */
    size_t len;
} cel_bus_msg_t;

typedef void (*cel_bus_msg_fn)(void *priv, const cel_bus_msg_t *m);

/* A transport's bus. impl is what its open returned. */
typedef struct cel_bus_ops {
    int abi;            /* CEL_BUS_ABI */
    const char *scheme; /* "redis", "amqp" */
    /* celeryev's type on this transport: celery/events/event.py get_exchange
     * turns the topic exchange into a fanout one on Redis. */
    const char *event_exchange_type;
    /* Starts connecting. name is for logs; confirm: publishes are done when
     * the broker confirmed them (AMQP publisher confirms), not when sent.
     * on_state(priv, up), which may be NULL, hears each change of up. cfg
     * borrowed for the bus's life. */
    void *(*open)(uv_loop_t *loop, const cel_options_t *cfg, const char *name, int confirm,
                  void (*on_state)(void *priv, int up), void *priv, cel_err_t *err);
    /* 1 while connected and, once it listens, listening: the queue declared,
     * bound and consumed (AMQP), the subscription confirmed by the server
     * (Redis); a message published after up reaches the listener. */
    int (*up)(const void *impl);
    /* Publishes m (borrowed) to exchange ex ("" name: the default exchange,
     * routing_key names the queue); declares ex first where that exists. */
    void (*publish)(void *impl, const cel_bus_exchange_t *ex, const cel_broker_out_t *m,
                    cel_broker_done_fn done, void *priv);
    /* Declares q, binds it and calls fn for each message, from now on and
     * after every reconnect. One queue per bus. CEL_EINVAL for an exchange
     * type the transport cannot listen on. */
    int (*listen)(void *impl, const cel_bus_queue_t *q, cel_bus_msg_fn fn, void *priv);
    /* Stops listening and removes the binding (warm shutdown). */
    void (*unlisten)(void *impl);
    /* Closes; on_closed(priv) runs when done; impl is freed. */
    void (*close)(void *impl, void (*on_closed)(void *), void *priv);
} cel_bus_ops_t;

extern const cel_bus_ops_t cel_bus_redis_ops; /* bus_redis.c */
extern const cel_bus_ops_t cel_bus_amqp_ops;  /* amqp_bus.c */

/* Opens the bus of the broker cfg names (Redis or AMQP). NULL with err set
 * on allocation failure. */
cel_bus_t *cel_bus_new(uv_loop_t *loop, const cel_options_t *cfg, const char *name, int confirm,
                       void (*on_state)(void *priv, int up), void *priv, cel_err_t *err);

const cel_bus_ops_t *cel_bus_ops(const cel_bus_t *bus);
int cel_bus_up(const cel_bus_t *bus);
void cel_bus_publish(cel_bus_t *bus, const cel_bus_exchange_t *ex, const cel_broker_out_t *m,
                     cel_broker_done_fn done, void *priv);
int cel_bus_listen(cel_bus_t *bus, const cel_bus_queue_t *q, cel_bus_msg_fn fn, void *priv);
void cel_bus_unlisten(cel_bus_t *bus);
void cel_bus_close(cel_bus_t *bus, void (*on_closed)(void *), void *priv);

/* A kombu Redis envelope taken apart: what a listener is handed. Owns its
 * storage (cel_bus_envelope_free). */
typedef struct cel_bus_envelope {
    cel_bus_msg_t msg;
    json_t *env;  /* the parsed envelope the strings point into */
    uint8_t *raw; /* the base64-decoded body, when it was encoded */
} cel_bus_envelope_t;

/* Parses a kombu envelope (data borrowed, len bytes, not NUL-terminated):
 * headers, content type and encoding, and the body (base64-decoded when
 * properties.body_encoding says so). CEL_EPROTO when it is not an envelope;
 * *out holds nothing to free then. Pure: also the fuzzed entry of pidbox. */
int cel_bus_envelope_parse(const char *data, size_t len, cel_bus_envelope_t *out, cel_err_t *err);
void cel_bus_envelope_free(cel_bus_envelope_t *e);

#endif
