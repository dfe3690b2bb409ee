/* broker.c -- picks the broker transport by URL scheme and dispatches to its table.
 *
 * The only code that knows which transports exist: cel_broker_new reads the
 * scheme of --broker's URL and opens the matching cel_broker_ops_t; every
 * other call goes through the table. Holds nothing but the table and the
 * transport's own object. Main process, libuv loop.
 */
#include "broker.h"

#include <stdlib.h>
#include <string.h>

#include "../common/log.h"

static const cel_broker_ops_t *const transports[] = { &cel_broker_redis_ops, &cel_broker_amqp_ops };

/* Other names of a transport's scheme, as Celery users write them. */
static const struct {
    const char *alias, *scheme;
} aliases[] = { { "amqps", "amqp" }, { "pyamqp", "amqp" } };

struct cel_broker {
    const cel_broker_ops_t *ops;
    void *impl;
    void (*on_closed)(void *);
    void *closed_priv;
};

cel_broker_t *cel_broker_new(uv_loop_t *loop, const cel_options_t *cfg, const cel_broker_cbs_t *cbs,
                             void *priv, cel_err_t *err) {
    const char *url = cfg->broker_url;
    const char *sep = strstr(url, "://");
    size_t n = sep ? (size_t)(sep - url) : 0;
    const char *scheme = url;
    for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++)
        if (n && strlen(aliases[i].alias) == n && strncmp(aliases[i].alias, url, n) == 0)
            scheme = aliases[i].scheme, n = strlen(scheme);
    const cel_broker_ops_t *ops = NULL;
    for (size_t i = 0; i < sizeof(transports) / sizeof(transports[0]); i++)
        if (n && strlen(transports[i]->scheme) == n &&
            strncmp(transports[i]->scheme, scheme, n) == 0)
            ops = transports[i];
    if (!ops) {
        cel_err_set(err, CEL_EINVAL, "no broker transport for '%.*s://'", (int)(n > 32 ? 32 : n),
                    url);
        return NULL;
    }
    if (ops->abi != CEL_BROKER_ABI) {
        cel_err_set(err, CEL_EINVAL, "broker transport %s has abi %d, want %d", ops->scheme,
                    ops->abi, CEL_BROKER_ABI);
        return NULL;
    }
    cel_broker_t *b = calloc(1, sizeof(*b));
    if (!b) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    b->ops = ops;
    if (!(b->impl = ops->open(loop, cfg, cbs, priv, err))) {
        free(b);
        return NULL;
    }
    return b;
}

const cel_broker_ops_t *cel_broker_ops(const cel_broker_t *b) { return b->ops; }

int cel_broker_decode(const cel_broker_t *b, const cel_broker_msg_t *m, size_t max_body,
                      cel_task_t **out, cel_err_t *err) {
    return b->ops->decode(m, max_body, out, err);
}

int cel_broker_peek(const cel_broker_t *b, const cel_broker_msg_t *m, cel_peek_t *out,
                    cel_err_t *err) {
    return b->ops->peek(m, out, err);
}

void cel_broker_kick(cel_broker_t *b) { b->ops->kick(b->impl); }

void cel_broker_ack(cel_broker_t *b, const char *tag, cel_broker_done_fn done, void *priv) {
    b->ops->ack(b->impl, tag, done, priv);
}

void cel_broker_requeue(cel_broker_t *b, const char *tag, cel_broker_done_fn done, void *priv) {
    b->ops->requeue(b->impl, tag, done, priv);
}

double cel_broker_touch_interval(const cel_broker_t *b) { return b->ops->touch_interval(b->impl); }

void cel_broker_touch(cel_broker_t *b, const char **tags, int n) {
    b->ops->touch(b->impl, tags, n);
}

void cel_broker_stop(cel_broker_t *b) { b->ops->stop(b->impl); }

int cel_broker_pending(const cel_broker_t *b) { return b->ops->pending(b->impl); }

int cel_broker_add_queue(cel_broker_t *b, const char *queue) {
    return b->ops->add_queue(b->impl, queue);
}

int cel_broker_cancel_queue(cel_broker_t *b, const char *queue) {
    return b->ops->cancel_queue(b->impl, queue);
}

json_t *cel_broker_queues(const cel_broker_t *b) { return b->ops->queues(b->impl); }

void cel_broker_forget(cel_broker_t *b, const char *tag) {
    if (b && tag && b->ops->forget) b->ops->forget(b->impl, tag);
}

void cel_broker_acking(cel_broker_t *b, const char *tag) {
    if (b && tag && b->ops->acking) b->ops->acking(b->impl, tag);
}

void cel_broker_publish(cel_broker_t *b, const cel_broker_out_t *m, cel_broker_done_fn done,
                        void *priv) {
    if (!b->ops->publish) {
        /* A transport without it cannot move a canvas forward: say so. */
        cel_error("broker: the %s transport cannot publish messages", b->ops->scheme);
        if (done) done(priv, 0);
        return;
    }
    b->ops->publish(b->impl, m, done, priv);
}

static void on_impl_closed(void *priv) {
    cel_broker_t *b = priv;
    void (*cb)(void *) = b->on_closed;
    void *cp = b->closed_priv;
    free(b);
    if (cb) cb(cp);
}

void cel_broker_close(cel_broker_t *b, void (*on_closed)(void *), void *priv) {
    b->on_closed = on_closed;
    b->closed_priv = priv;
    b->ops->close(b->impl, on_impl_closed, b);
}
