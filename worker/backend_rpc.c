/* backend_rpc.c -- the rpc:// result backend: each state is a message to the caller's queue.
 *
 * cel_backend_rpc_ops (backend.h) is the only symbol it exports. Matches
 * celery/backends/rpc.py RPCBackend.store_result: the result goes to the
 * default exchange with routing key = the task message's reply_to and
 * correlation_id = its correlation_id (the task id when absent), delivery
 * mode 1 (result_persistent is off by default), headers {}, and the body
 * _to_result builds: {"task_id", "status", "result", "traceback",
 * "children"} -- cut out of the meta the consumer encodes, so every state
 * (SUCCESS, FAILURE, REVOKED, RETRY, STARTED, PROGRESS) goes out in the
 * stock worker's shape. No reply_to: nothing is sent, as Celery. The worker
 * never declares the client's queue. Publishes go over a bus of their own
 * (bus.h) with publisher confirms on AMQP, so "stored" means the broker
 * has the message and only then is the task's message acked. There is no
 * way to read a result back (get answers "cannot"). Main process, loop.
 */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../protocol/amqp_msg.h"
#include "bus.h"

typedef struct rpc_backend {
    cel_bus_t *bus;
    void (*on_up)(void *);
    void *priv;
    void (*on_closed)(void *);
    void *closed_priv;
} rpc_backend_t;

static void on_state(void *priv, int up) {
    rpc_backend_t *be = priv;
    if (up && be->on_up) be->on_up(be->priv);
}

static void *rpc_open(uv_loop_t *loop, const cel_options_t *cfg, void (*on_up)(void *), void *priv,
                      cel_err_t *err) {
    rpc_backend_t *be = calloc(1, sizeof(*be));
    if (!be) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    be->on_up = on_up;
    be->priv = priv;
    if (!(be->bus = cel_bus_new(loop, cfg, "rpc", 1, on_state, be, err))) {
        free(be);
        return NULL;
    }
    return be;
}

static void rpc_store(void *impl, const cel_task_t *t, const char *meta, size_t len,
                      cel_backend_done_fn done, void *priv) {
    rpc_backend_t *be = impl;
    if (!t->reply_to || !*t->reply_to) { /* RPCBackend.store_result: no routing key, no result */
        if (done) done(priv, 1);
        return;
    }
    if (!cel_bus_up(be->bus)) {
        if (done) done(priv, 0); /* retried when the bus is back (on_up) */
        return;
    }
    char *body;
    size_t blen;
    cel_err_t err;
    if (cel_meta_to_rpc(meta, len, &body, &blen, &err) != CEL_OK) {
        cel_error("backend rpc: cannot build the reply of %s: %s", t->id, err.msg);
        if (done) done(priv, 0);
        return;
    }
    json_t *headers = json_object();
    if (!headers) {
        free(body);
        if (done) done(priv, 0);
        return;
    }
    cel_bus_exchange_t ex = { "", "direct", 1, 0 };
    cel_broker_out_t m = { .exchange = "",
                           .routing_key = t->reply_to,
                           .headers = headers,
                           .content_type = "application/json",
                           .content_encoding = "utf-8",
                           .body = body,
                           .body_len = blen,
                           .correlation_id = t->correlation_id ? t->correlation_id : t->id,
                           .priority = 0,
                           .persistent = 0 };
    cel_bus_publish(be->bus, &ex, &m, done, priv);
    json_decref(headers);
    free(body);
}

static int rpc_acks_broker(const void *impl) { return 0; }

/* Not called (acks_broker is 0); a plain store keeps the table complete. */
static void rpc_store_ack(void *impl, const cel_task_t *t, const char *meta, size_t len,
                          const char *tag, cel_backend_done_fn done, void *priv) {
    rpc_store(impl, t, meta, len, done, priv);
}

/* Results travel to the client only; the worker cannot read them back. */
static void rpc_get(void *impl, const char *task_id, cel_backend_got_fn got, void *priv) {
    got(priv, 0, NULL, 0);
}

static void on_bus_closed(void *priv) {
    rpc_backend_t *be = priv;
    void (*cb)(void *) = be->on_closed;
    void *cp = be->closed_priv;
    free(be);
    if (cb) cb(cp);
}

static void rpc_close(void *impl, void (*on_closed)(void *), void *priv) {
    rpc_backend_t *be = impl;
    be->on_closed = on_closed;
    be->closed_priv = priv;
    cel_bus_close(be->bus, on_bus_closed, be);
}

const cel_backend_ops_t cel_backend_rpc_ops = {
    .abi = CEL_BACKEND_ABI,
    .scheme = "rpc",
    .open = rpc_open,
    .store = rpc_store,
    .acks_broker = rpc_acks_broker,
    .store_ack = rpc_store_ack,
    .get = rpc_get,
    .close = rpc_close,
};
