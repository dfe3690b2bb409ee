/* amqp_conn.h -- one AMQP 0-9-1 connection (librabbitmq-c) on a thread, driven from the loop.
 *
 * librabbitmq-c is synchronous; the main loop must never wait on the broker.
 * A cel_amqp_t owns one connection, one channel and one thread that does
 * every librabbitmq call; the loop hands it commands (declare, consume,
 * publish, ack, reject, qos) and hears back through a uv_async_t (state
 * changes, deliveries, completions). Its topology -- exchanges, queues,
 * bindings, consumers, qos -- is remembered and declared again, in the same
 * order, on every (re)connect, with backoff (100 ms .. 5 s) between tries.
 * Heartbeats are sent and watched by the thread. Deliveries carry the
 * connection's generation: after a reconnect the old delivery tags are dead
 * and acks for them report failure without touching the wire.
 *
 * Every function here is called on the loop thread only. Every call that
 * takes `done` ends in exactly one done(priv, ok) from a later loop turn
 * (never from inside the call): ok=1 when written (acks, rejects, publishes
 * without confirms) or confirmed by the broker (publishes on a confirm
 * channel), ok=0 when the connection was down or failed first.
 */
#ifndef CEL_AMQP_CONN_H
#define CEL_AMQP_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "../common/err.h"
#include "broker.h"
#include "options.h"

#define CEL_AMQP_MAX_TOPOLOGY 1024 /* declarations, bindings and consumers remembered */

typedef struct cel_amqp cel_amqp_t;

/* How to connect; copied by cel_amqp_new (strings too). */
typedef struct cel_amqp_conf {
    const cel_amqp_url_t *url;
    const char *name;     /* for logs: "broker", "rpc", "pidbox", "events" */
    const char *ssl_ca;   /* amqps: CA file ("" or NULL: the system bundle) */
    const char *ssl_cert; /* amqps: client certificate ("" or NULL: none) */
    const char *ssl_key;
    int ssl_verify;     /* check the server's certificate and host name */
    int heartbeat;      /* seconds asked for, 0 = none (the server may lower it) */
    int confirm;        /* publisher confirms: publish's done waits for basic.ack */
    size_t max_body;    /* bodies over this are delivered without their bytes */
    int quiet_refusals; /* log a refused connection at DEBUG (tests start the broker late) */
} cel_amqp_conf_t;

/* One message as it arrived; the receiver owns it (cel_amqp_delivery_free). */
typedef struct cel_amqp_delivery {
    uint64_t gen; /* the connection it came on */
    uint64_t tag; /* its delivery tag there */
    int redelivered;
    char *exchange;
    char *routing_key;
    char *queue;     /* the consumed queue it came from */
    json_t *props;   /* basic properties under kombu's names; NULL if unreadable */
    json_t *headers; /* application headers; NULL if unreadable (why: bad_headers) */
    char bad_headers[CEL_ERR_MSG_MAX];
    uint8_t *body; /* NUL-terminated copy; NULL when len > max_body */
    size_t len;    /* the body's size as sent */
    void *raw_;    /* private: the properties as read, until the loop converts them */
} cel_amqp_delivery_t;

void cel_amqp_delivery_free(cel_amqp_delivery_t *d);

typedef struct cel_amqp_cbs {
    /* The connection came up, topology declared (up=1), or went down (0). */
    void (*on_state)(void *priv, int up);
    /* A message from a consumed queue; d is taken. May be NULL (publish only). */
    void (*on_delivery)(void *priv, cel_amqp_delivery_t *d);
} cel_amqp_cbs_t;

/* Starts the thread, which connects at once. conf is copied, cbs copied.
 * NULL with err set when a thread, lock or handle cannot be had. */
cel_amqp_t *cel_amqp_new(uv_loop_t *loop, const cel_amqp_conf_t *conf, const cel_amqp_cbs_t *cbs,
                         void *priv, cel_err_t *err);

/* 1 while connected with the topology declared. */
int cel_amqp_up(const cel_amqp_t *a);

/* The generation of the current (or last) connection; deliveries of older
 * ones can no longer be acked. */
uint64_t cel_amqp_generation(const cel_amqp_t *a);

/* Topology, remembered and declared at every connect in call order.
 * Strings and args are copied. CEL_ELIMIT past CEL_AMQP_MAX_TOPOLOGY. A
 * declaration the broker refuses (PRECONDITION_FAILED) is logged with the
 * broker's words and the connection retried with backoff. */
int cel_amqp_declare_exchange(cel_amqp_t *a, const char *name, const char *type, int durable,
                              int auto_delete);
int cel_amqp_declare_queue(cel_amqp_t *a, const char *name, int durable, int auto_delete,
                           json_t *args);
int cel_amqp_bind(cel_amqp_t *a, const char *queue, const char *exchange, const char *routing_key);
/* Starts consuming queue (ack required unless no_ack). */
int cel_amqp_consume(cel_amqp_t *a, const char *queue, int no_ack);
/* Stops consuming queue (basic.cancel); nothing when it is not consumed. */
int cel_amqp_cancel(cel_amqp_t *a, const char *queue);
/* basic.qos prefetch_count (global, as Celery sets it on RabbitMQ). */
void cel_amqp_qos(cel_amqp_t *a, int prefetch_count);

/* basic.publish of m (copied). done may be NULL. */
void cel_amqp_publish(cel_amqp_t *a, const cel_broker_out_t *m, cel_broker_done_fn done,
                      void *priv);

/* basic.ack / basic.reject of delivery tag on connection gen. */
void cel_amqp_ack(cel_amqp_t *a, uint64_t gen, uint64_t tag, cel_broker_done_fn done, void *priv);
void cel_amqp_reject(cel_amqp_t *a, uint64_t gen, uint64_t tag, int requeue,
                     cel_broker_done_fn done, void *priv);

/* Calls whose done has not run yet. */
int cel_amqp_pending(const cel_amqp_t *a);

/* Closes: commands already given are carried out first, then the channel
 * and connection are closed, pending dones run with ok=0, the thread
 * exits, and on_closed(priv) runs; a is freed after it returns. A thread
 * stuck writing to a broker that stopped reading is cut off after 5 s. */
void cel_amqp_close(cel_amqp_t *a, void (*on_closed)(void *), void *priv);

#endif
