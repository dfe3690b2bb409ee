/* bus_redis.c -- the bus on Redis: kombu's exchange emulation for pidbox, events, rpc replies.
 *
 * cel_bus_redis_ops (bus.h) is the only table it exports, with the kombu
 * envelope parser cel_bus_envelope_parse. Two connections: `cmd` publishes
 * and keeps bindings, `sub` (opened by listen) is in subscribe mode; the bus
 * is up when `cmd` is and `sub`'s PSUBSCRIBE has been confirmed.
 * Matches kombu/transport/redis.py: a fanout exchange is PUBLISH on
 * "/<db>.<exchange>" (plus "/<routing key>" when there is one) and
 * PSUBSCRIBE on the same; a direct exchange is SMEMBERS of
 * _kombu.binding.<exchange> then LPUSH to each queue whose routing key
 * matches; the default exchange is LPUSH to the queue named by the routing
 * key (with kombu's priority sub-queues). Messages are kombu JSON envelopes
 * with a base64 body (protocol/message.h's encoder, the one the broker's
 * publish uses). Main process, libuv loop; never blocks.
 */
#include "bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../protocol/message.h"
#include "../protocol/protocol.h"
#include "events.h"
#include "redis.h"

#define BINDINGS_MAX 4096 /* members of a binding set read for one publish */
#define NAME_MAX_LEN 255  /* exchange, queue and routing key names */

typedef struct redis_bus {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_redis_t *cmd;
    cel_redis_t *sub;
    void (*on_state)(void *, int);
    void *priv;
    int up_told; /* what on_state last said */
    char name[48];
    /* the listened queue */
    int listening;
    char exchange[NAME_MAX_LEN + 1];
    char queue[NAME_MAX_LEN + 1];
    char routing_key[NAME_MAX_LEN + 1];
    char channel[NAME_MAX_LEN + 32];
    cel_bus_msg_fn fn;
    void *fn_priv;
    int closing_left;
    void (*on_closed)(void *);
    void *closed_priv;
} redis_bus_t;

/* ---- envelopes --------------------------------------------------------- */

void cel_bus_envelope_free(cel_bus_envelope_t *e) {
    if (!e) return;
    json_decref(e->env);
    free(e->raw);
    e->env = NULL;
    e->raw = NULL;
}

int cel_bus_envelope_parse(const char *data, size_t len, cel_bus_envelope_t *out, cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    json_error_t jerr;
    json_t *env = json_loadb(data, len, 0, &jerr);
    if (!json_is_object(env)) {
        json_decref(env);
        return cel_err_set(err, CEL_EPROTO, "not a kombu envelope: %.*s",
                           (int)(len < 120 ? len : 120), data);
    }
    json_t *headers = json_object_get(env, "headers");
    if (!json_is_object(headers)) {
        headers = json_object();
        if (!headers || json_object_set_new(env, "headers", headers)) {
            json_decref(env);
            return cel_err_set(err, CEL_ENOMEM, "out of memory");
        }
    }
    json_t *body = json_object_get(env, "body");
    if (!json_is_string(body)) {
        json_decref(env);
        return cel_err_set(err, CEL_EPROTO, "envelope has no body string");
    }
    json_t *props = json_object_get(env, "properties");
    const char *benc = json_string_value(json_object_get(props, "body_encoding"));
    out->env = env;
    out->msg.headers = headers;
    out->msg.content_type = json_string_value(json_object_get(env, "content-type"));
    out->msg.content_encoding = json_string_value(json_object_get(env, "content-encoding"));
    if (benc && strcmp(benc, "base64") == 0) {
        int rc = cel_base64_decode(json_string_value(body), json_string_length(body), &out->raw,
                                   &out->msg.len, err);
        if (rc != CEL_OK) {
            cel_bus_envelope_free(out);
            return rc;
        }
        out->msg.body = out->raw;
    } else {
        out->msg.body = (const uint8_t *)json_string_value(body);
        out->msg.len = json_string_length(body);
    }
    return CEL_OK;
}

/* The envelope text kombu's virtual transport stores for m (protocol/message.h). */
static char *envelope_for(const cel_bus_exchange_t *ex, const cel_broker_out_t *m, cel_err_t *err) {
    char tag[37];
    cel_events_uuid(tag);
    cel_envelope_parts_t p = {
        .body = m->body,
        .body_len = m->body_len,
        .content_type = m->content_type,
        .content_encoding = m->content_encoding,
        .headers = m->headers,
        .correlation_id = m->correlation_id,
        .reply_to = m->reply_to,
        .extra = m->extra,
        .delivery_mode = m->persistent ? 2 : 1,
        .expiration = m->expiration,
        .exchange = ex->name,
        .routing_key = m->routing_key,
        .priority = m->priority < 0 ? 0 : m->priority,
        .delivery_tag = tag,
    };
    size_t len;
    return cel_envelope_encode(&p, &len, err);
}

/* ---- publishing -------------------------------------------------------- */

typedef struct pub_ctx {
    redis_bus_t *b;
    cel_broker_done_fn done;
    void *priv;
    int left;
    int ok;
    char *envelope;
    char routing_key[NAME_MAX_LEN + 1];
    int priority;
} pub_ctx_t;

static void pub_finish(pub_ctx_t *p) {
    if (p->done) p->done(p->priv, p->ok);
    free(p->envelope);
    free(p);
}

static void on_pushed(cel_redis_t *r, redisReply *reply, void *priv) {
    pub_ctx_t *p = priv;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        if (reply) cel_error("bus %s: %s", p->b->name, reply->str);
        p->ok = 0;
    }
    if (--p->left == 0) pub_finish(p);
}

static int push(pub_ctx_t *p, const char *q, size_t qlen) {
    char name[NAME_MAX_LEN + 1], key[NAME_MAX_LEN + 8];
    if (qlen > NAME_MAX_LEN) return CEL_ELIMIT;
    memcpy(name, q, qlen);
    name[qlen] = '\0';
    int klen = cel_envelope_queue_key(name, p->priority, key, sizeof(key));
    if (klen < 0) return CEL_ELIMIT;
    const char *argv[] = { "LPUSH", key, p->envelope };
    size_t lens[] = { 5, (size_t)klen, strlen(p->envelope) };
    if (cel_redis_command(p->b->cmd, on_pushed, p, 3, argv, lens) != CEL_OK) return CEL_EIO;
    p->left++;
    return CEL_OK;
}

/* kombu binding members are "<routing key>\x06\x16<pattern>\x06\x16<queue>". */
static void on_bindings(cel_redis_t *r, redisReply *reply, void *priv) {
    pub_ctx_t *p = priv;
    size_t rklen = strlen(p->routing_key);
    p->left = 1; /* this reply, until the pushes are sent */
    if (!reply || reply->type != REDIS_REPLY_ARRAY) {
        p->ok = 0;
    } else {
        for (size_t i = 0; i < reply->elements && i < BINDINGS_MAX; i++) {
            redisReply *m = reply->element[i];
            if (m->type != REDIS_REPLY_STRING) continue;
            if (m->len < rklen + 4 || memcmp(m->str, p->routing_key, rklen) != 0 ||
                memcmp(m->str + rklen, "\x06\x16", 2) != 0)
                continue;
            const char *rest = m->str + rklen + 2;
            size_t restlen = m->len - rklen - 2;
            const char *sep = memmem(rest, restlen, "\x06\x16", 2);
            if (!sep) continue;
            const char *q = sep + 2;
            size_t qlen = restlen - (size_t)(q - rest);
            if (qlen && push(p, q, qlen) != CEL_OK) p->ok = 0;
        }
    }
    if (p->left == 1) cel_debug("bus %s: no queue bound for %s", p->b->name, p->routing_key);
    if (--p->left == 0) pub_finish(p);
}

static void redis_publish(void *impl, const cel_bus_exchange_t *ex, const cel_broker_out_t *m,
                          cel_broker_done_fn done, void *priv) {
    redis_bus_t *b = impl;
    cel_err_t err;
    cel_err_set(&err, CEL_ENOMEM, "out of memory");
    if (strlen(m->routing_key) > NAME_MAX_LEN || strlen(ex->name) > NAME_MAX_LEN) {
        cel_error("bus %s: exchange or routing key name too long; message dropped", b->name);
        if (done) done(priv, 0);
        return;
    }
    pub_ctx_t *p = calloc(1, sizeof(*p));
    if (!p || !(p->envelope = envelope_for(ex, m, &err))) {
        cel_error("bus %s: cannot encode a message for '%s': %s", b->name, ex->name, err.msg);
        free(p);
        if (done) done(priv, 0);
        return;
    }
    p->b = b;
    p->done = done;
    p->priv = priv;
    p->ok = 1;
    p->priority = m->priority < 0 ? 0 : m->priority;
    snprintf(p->routing_key, sizeof(p->routing_key), "%s", m->routing_key);
    int rc;
    if (!ex->name[0]) {
        rc = push(p, m->routing_key, strlen(m->routing_key));
    } else if (strcmp(ex->type, "fanout") == 0) {
        char channel[2 * NAME_MAX_LEN + 32];
        int n = m->routing_key[0]
                    ? snprintf(channel, sizeof(channel), "/%d.%s/%s", b->cfg->broker.db, ex->name,
                               m->routing_key)
                    : snprintf(channel, sizeof(channel), "/%d.%s", b->cfg->broker.db, ex->name);
        const char *argv[] = { "PUBLISH", channel, p->envelope };
        size_t lens[] = { 7, (size_t)n, strlen(p->envelope) };
        rc = cel_redis_command(b->cmd, on_pushed, p, 3, argv, lens);
        if (rc == CEL_OK) p->left = 1;
    } else {
        char key[NAME_MAX_LEN + 32];
        snprintf(key, sizeof(key), "_kombu.binding.%s", ex->name);
        const char *argv[] = { "SMEMBERS", key };
        rc = cel_redis_command(b->cmd, on_bindings, p, 2, argv, NULL);
    }
    if (rc != CEL_OK) {
        cel_debug("bus %s: connection down; a message for %s is dropped", b->name, ex->name);
        if (p->left == 0) {
            free(p->envelope);
            free(p);
            if (done) done(priv, 0);
        }
    }
}

/* ---- listening --------------------------------------------------------- */

static void on_bound(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_bus_t *b = priv;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_error("bus %s: binding: %s", b->name, reply->str);
}

/* kombu's queue_bind on Redis: SADD _kombu.binding.<exchange>
 * "<routing key>\x06\x16<pattern>\x06\x16<queue>" (informational for a
 * fanout exchange: PUBLISH does the work, but tools list bindings). */
static void bind_queue(redis_bus_t *b, const char *verb) {
    char key[NAME_MAX_LEN + 32], member[3 * NAME_MAX_LEN + 8];
    int kn = snprintf(key, sizeof(key), "_kombu.binding.%s", b->exchange);
    int mn = snprintf(member, sizeof(member), "%s\x06\x16\x06\x16%s", b->routing_key, b->queue);
    const char *argv[] = { verb, key, member };
    size_t lens[] = { strlen(verb), (size_t)kn, (size_t)mn };
    cel_redis_command(b->cmd, on_bound, b, 3, argv, lens);
}

static void on_pmessage(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_bus_t *b = priv;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) return;
    redisReply *kind = reply->element[0], *data = reply->element[3];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "pmessage") != 0) return;
    if (data->type != REDIS_REPLY_STRING || !b->listening) return;
    if (data->len > CEL_BUS_MAX_BODY) {
        cel_error("bus %s: dropping a message of %zu bytes on %s (limit %d)", b->name, data->len,
                  b->channel, CEL_BUS_MAX_BODY);
        return;
    }
    cel_bus_envelope_t e;
    cel_err_t err;
    if (cel_bus_envelope_parse(data->str, data->len, &e, &err) != CEL_OK) {
        cel_error("bus %s: dropping a malformed message on %s: %s", b->name, b->channel, err.msg);
        return;
    }
    b->fn(b->fn_priv, &e.msg);
    cel_bus_envelope_free(&e);
}

/* The bus is up while `cmd` is and, once it listens, while `sub` is
 * subscribed (cel_redis_psubscribe: up only after the server's confirmation):
 * a broadcast published after "up" reaches this node, as on AMQP where up
 * means declared, bound and consumed. on_state hears each change once. */
static int bus_up(const redis_bus_t *b) {
    return cel_redis_up(b->cmd) && (!b->sub || cel_redis_up(b->sub));
}

static void tell_state(redis_bus_t *b) {
    int up = bus_up(b);
    if (up == b->up_told) return;
    b->up_told = up;
    if (b->on_state) b->on_state(b->priv, up);
}

static void on_sub_state(cel_redis_t *r, int up, void *priv) { tell_state(priv); }

static int redis_listen(void *impl, const cel_bus_queue_t *q, cel_bus_msg_fn fn, void *priv) {
    redis_bus_t *b = impl;
    if (strcmp(q->exchange.type, "fanout") != 0 || b->sub) return CEL_EINVAL;
    if (strlen(q->exchange.name) > NAME_MAX_LEN || strlen(q->name) > NAME_MAX_LEN ||
        strlen(q->routing_key) > NAME_MAX_LEN)
        return CEL_ELIMIT;
    snprintf(b->exchange, sizeof(b->exchange), "%s", q->exchange.name);
    snprintf(b->queue, sizeof(b->queue), "%s", q->name);
    snprintf(b->routing_key, sizeof(b->routing_key), "%s", q->routing_key);
    /* kombu: binding key '#' becomes the glob '*' */
    if (q->routing_key[0])
        snprintf(b->channel, sizeof(b->channel), "/%d.%s/%s", b->cfg->broker.db, b->exchange,
                 strcmp(q->routing_key, "#") == 0 ? "*" : q->routing_key);
    else snprintf(b->channel, sizeof(b->channel), "/%d.%s", b->cfg->broker.db, b->exchange);
    b->fn = fn;
    b->fn_priv = priv;
    b->listening = 1;
    if (cel_redis_up(b->cmd)) bind_queue(b, "SADD");
    char name[64];
    snprintf(name, sizeof(name), "%s-sub", b->name);
    /* Nothing connects before the loop runs: the subscription is set in time. */
    b->sub = cel_redis_new(b->loop, &b->cfg->broker, name, NULL, 0, on_sub_state, b);
    if (!b->sub) return CEL_ENOMEM;
    int rc = cel_redis_psubscribe(b->sub, b->channel, on_pmessage, b);
    /* up before it listened: down until subscribed */
    tell_state(b);
    return rc;
}

static void redis_unlisten(void *impl) {
    redis_bus_t *b = impl;
    if (!b->listening) return;
    b->listening = 0;
    if (cel_redis_up(b->cmd)) bind_queue(b, "SREM");
}

/* ---- open / close ------------------------------------------------------ */

static void on_cmd_state(cel_redis_t *r, int up, void *priv) {
    redis_bus_t *b = priv;
    if (up && b->listening) bind_queue(b, "SADD");
    tell_state(b);
}

static void *redis_open(uv_loop_t *loop, const cel_options_t *cfg, const char *name, int confirm,
                        void (*on_state)(void *, int), void *priv, cel_err_t *err) {
    redis_bus_t *b = calloc(1, sizeof(*b));
    if (!b) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    b->loop = loop;
    b->cfg = cfg;
    b->on_state = on_state;
    b->priv = priv;
    snprintf(b->name, sizeof(b->name), "%s", name);
    b->cmd = cel_redis_new(loop, &cfg->broker, name, NULL, 0, on_cmd_state, b);
    if (!b->cmd) {
        free(b);
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    return b;
}

static int redis_up(const void *impl) { return bus_up(impl); }

static void close_step(void *priv) {
    redis_bus_t *b = priv;
    if (--b->closing_left > 0) return;
    void (*cb)(void *) = b->on_closed;
    void *cp = b->closed_priv;
    free(b);
    if (cb) cb(cp);
}

static void redis_close(void *impl, void (*on_closed)(void *), void *priv) {
    redis_bus_t *b = impl;
    redis_unlisten(b);
    b->on_closed = on_closed;
    b->closed_priv = priv;
    b->closing_left = b->sub ? 2 : 1;
    if (b->sub) cel_redis_close(b->sub, close_step, b);
    /* Writes queued before the close (worker-offline, SREM) still go out:
     * the disconnect waits for their replies. */
    cel_redis_close(b->cmd, close_step, b);
}

const cel_bus_ops_t cel_bus_redis_ops = {
    .abi = CEL_BUS_ABI,
    .scheme = "redis",
    .event_exchange_type = "fanout",
    .open = redis_open,
    .up = redis_up,
    .publish = redis_publish,
    .listen = redis_listen,
    .unlisten = redis_unlisten,
    .close = redis_close,
};
