/* amqp_bus.c -- the bus on AMQP: real exchanges and queues for pidbox, events, rpc replies.
 *
 * cel_bus_amqp_ops (bus.h) is the only symbol it exports. One connection
 * (amqp_conn.c) per bus. Publishing declares the exchange first, once, as
 * kombu's Producer does (declare=[exchange]); listening declares exchange,
 * queue (non-durable, auto-delete, x-expires / x-message-ttl in integer
 * milliseconds as kombu/transport/base.py to_rabbitmq_queue_arguments
 * writes them), the binding, and consumes with no_ack, as kombu's pidbox
 * Node does. The connection re-declares all of it after a reconnect.
 * Main process, libuv loop.
 */
#include "bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "amqp_conn.h"

#define DECLARED_MAX 16 /* exchanges one bus publishes to */

typedef struct amqp_bus {
    cel_amqp_t *conn;
    void (*on_state)(void *, int);
    void *priv;
    char name[48];
    char *declared[DECLARED_MAX];
    int ndeclared;
    char *queue; /* the listened queue, NULL when none */
    int listening;
    cel_bus_msg_fn fn;
    void *fn_priv;
    void (*on_closed)(void *);
    void *closed_priv;
} amqp_bus_t;

static void on_state(void *priv, int up) {
    amqp_bus_t *b = priv;
    if (b->on_state) b->on_state(b->priv, up);
}

static void on_delivery(void *priv, cel_amqp_delivery_t *d) {
    amqp_bus_t *b = priv;
    if (!b->listening) {
        cel_amqp_delivery_free(d);
        return;
    }
    if (!d->body) {
        cel_error("bus %s: dropping a message of %zu bytes on %s (limit %d)", b->name, d->len,
                  d->queue, CEL_BUS_MAX_BODY);
    } else if (!d->headers || !d->props) {
        cel_error("bus %s: dropping a message on %s: %s", b->name, d->queue, d->bad_headers);
    } else {
        cel_bus_msg_t m = { d->headers,
                            json_string_value(json_object_get(d->props, "content_type")),
                            json_string_value(json_object_get(d->props, "content_encoding")),
                            d->body, d->len };
        b->fn(b->fn_priv, &m);
    }
    cel_amqp_delivery_free(d);
}

static void *amqp_bus_open(uv_loop_t *loop, const cel_options_t *cfg, const char *name, int confirm,
                           void (*state_fn)(void *, int), void *priv, cel_err_t *err) {
    amqp_bus_t *b = calloc(1, sizeof(*b));
    if (!b) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    b->on_state = state_fn;
    b->priv = priv;
    snprintf(b->name, sizeof(b->name), "%s", name);
    cel_amqp_conf_t conf = { 0 };
    conf.url = &cfg->amqp;
    conf.name = name;
    conf.ssl_ca = cfg->ssl_ca;
    conf.ssl_cert = cfg->ssl_cert;
    conf.ssl_key = cfg->ssl_key;
    conf.ssl_verify = !cfg->ssl_no_verify;
    conf.heartbeat = (int)cfg->broker_heartbeat;
    conf.confirm = confirm;
    conf.max_body = CEL_BUS_MAX_BODY;
    cel_amqp_cbs_t cbs = { on_state, on_delivery };
    if (!(b->conn = cel_amqp_new(loop, &conf, &cbs, b, err))) {
        free(b);
        return NULL;
    }
    return b;
}

static int amqp_bus_up(const void *impl) { return cel_amqp_up(((const amqp_bus_t *)impl)->conn); }

/* Declares ex on this connection once (it is re-declared on reconnects). */
static int declare_once(amqp_bus_t *b, const cel_bus_exchange_t *ex) {
    if (!ex->name[0]) return CEL_OK; /* the default exchange always exists */
    for (int i = 0; i < b->ndeclared; i++)
        if (strcmp(b->declared[i], ex->name) == 0) return CEL_OK;
    if (b->ndeclared == DECLARED_MAX) return CEL_ELIMIT;
    if (!(b->declared[b->ndeclared] = strdup(ex->name))) return CEL_ENOMEM;
    b->ndeclared++;
    return cel_amqp_declare_exchange(b->conn, ex->name, ex->type, ex->durable, ex->auto_delete);
}

static void amqp_bus_publish(void *impl, const cel_bus_exchange_t *ex, const cel_broker_out_t *m,
                             cel_broker_done_fn done, void *priv) {
    amqp_bus_t *b = impl;
    int rc = declare_once(b, ex);
    if (rc != CEL_OK) {
        cel_error("bus %s: cannot declare exchange '%s': %s", b->name, ex->name, cel_err_name(rc));
        if (done) done(priv, 0);
        return;
    }
    cel_amqp_publish(b->conn, m, done, priv);
}

static int amqp_bus_listen(void *impl, const cel_bus_queue_t *q, cel_bus_msg_fn fn, void *priv) {
    amqp_bus_t *b = impl;
    if (b->queue) return CEL_EINVAL;
    json_t *args = json_object();
    if (!args || !(b->queue = strdup(q->name))) {
        json_decref(args);
        return CEL_ENOMEM;
    }
    /* kombu: expires first, then message_ttl, both int(seconds * 1000). */
    if (q->expires > 0)
        json_object_set_new(args, "x-expires", json_integer((json_int_t)(q->expires * 1000)));
    if (q->message_ttl > 0)
        json_object_set_new(args, "x-message-ttl",
                            json_integer((json_int_t)(q->message_ttl * 1000)));
    b->fn = fn;
    b->fn_priv = priv;
    b->listening = 1;
    int rc = declare_once(b, &q->exchange);
    if (rc == CEL_OK) rc = cel_amqp_declare_queue(b->conn, q->name, 0, 1, args);
    if (rc == CEL_OK) rc = cel_amqp_bind(b->conn, q->name, q->exchange.name, q->routing_key);
    if (rc == CEL_OK) rc = cel_amqp_consume(b->conn, q->name, 1);
    json_decref(args);
    return rc;
}

static void amqp_bus_unlisten(void *impl) {
    amqp_bus_t *b = impl;
    if (!b->listening) return;
    b->listening = 0;
    /* auto_delete: the queue goes with its last consumer, and so the binding */
    cel_amqp_cancel(b->conn, b->queue);
}

static void on_conn_closed(void *priv) {
    amqp_bus_t *b = priv;
    void (*cb)(void *) = b->on_closed;
    void *cp = b->closed_priv;
    for (int i = 0; i < b->ndeclared; i++) free(b->declared[i]);
    free(b->queue);
    free(b);
    if (cb) cb(cp);
}

static void amqp_bus_close(void *impl, void (*on_closed)(void *), void *priv) {
    amqp_bus_t *b = impl;
    b->listening = 0;
    b->on_closed = on_closed;
    b->closed_priv = priv;
    cel_amqp_close(b->conn, on_conn_closed, b);
}

const cel_bus_ops_t cel_bus_amqp_ops = {
    .abi = CEL_BUS_ABI,
    .scheme = "amqp",
    .event_exchange_type = "topic",
    .open = amqp_bus_open,
    .up = amqp_bus_up,
    .publish = amqp_bus_publish,
    .listen = amqp_bus_listen,
    .unlisten = amqp_bus_unlisten,
    .close = amqp_bus_close,
};
