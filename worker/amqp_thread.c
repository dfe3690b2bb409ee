/* amqp_thread.c -- the thread of an AMQP connection: every librabbitmq-c call is made here.
 *
 * Connect (socket, TLS, login, channel 1, confirm.select, qos, then the
 * remembered topology in order), then loop: carry out queued commands,
 * read every frame that is ready (amqp_simple_wait_frame_noblock with a
 * zero timeout, which also sends heartbeats when due), assemble deliveries
 * (deliver + header + body frames; a body over max_body is counted, not
 * kept), post events in batches, and poll(socket, eventfd) for at most
 * POLL_MS. A peer silent for twice the heartbeat is dead. Any error closes
 * the connection: pending confirms fail, and it reconnects with backoff
 * while still taking commands (remembered or failed). Why a thread at all:
 * amqp_conn.c's opening comment. Touches only the t_ fields of the object
 * and the two lists (under the mutex).
 */
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>

#include "../common/log.h"
#include "../protocol/amqp_msg.h"
#include "amqp_internal.h"

#define FRAME_BUDGET 4096 /* frames read between looks at the command list */
#define POLL_MS      200
#define CONNECT_S    4 /* kombu's connect_timeout */
#define RPC_S        10
#define BACKOFF_MIN  0.1
#define BACKOFF_MAX  5.0
#define DEFAULT_CA   "/etc/ssl/certs/ca-certificates.crt"

static double now_s(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* ---- thread: events out ------------------------------------------------ */

/* Queues an event locally; t_flush hands the batch over. */
static void t_emit(cel_amqp_t *a, evt_t *e) {
    e->next = NULL;
    if (a->t_out_tail) a->t_out_tail->next = e;
    else a->t_out_head = e;
    a->t_out_tail = e;
}

static void t_flush(cel_amqp_t *a) {
    if (!a->t_out_head) return;
    uv_mutex_lock(&a->mu);
    if (a->evt_tail) a->evt_tail->next = a->t_out_head;
    else a->evt_head = a->t_out_head;
    a->evt_tail = a->t_out_tail;
    uv_mutex_unlock(&a->mu);
    a->t_out_head = a->t_out_tail = NULL;
    uv_async_send(&a->async);
}

static void t_done(cel_amqp_t *a, op_t *op, int ok) {
    if (!op) return;
    evt_t *e = &op->ev;
    e->kind = E_DONE;
    e->op = op;
    e->ok = ok;
    t_emit(a, e);
}

/* A state change must reach the loop: on a failed allocation the thread
 * (never the loop) waits for memory. */
static void t_state(cel_amqp_t *a, int kind) {
    evt_t *e;
    while (!(e = calloc(1, sizeof(*e)))) usleep(10000);
    e->kind = kind;
    e->gen = a->t_gen;
    t_emit(a, e);
}

/* ---- thread: errors ---------------------------------------------------- */

/* Describes an rpc reply (the broker's words for a refusal) into buf. */
static void reply_text(amqp_rpc_reply_t r, char *buf, size_t size) {
    switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: snprintf(buf, size, "ok"); return;
    case AMQP_RESPONSE_NONE: snprintf(buf, size, "no reply (missing RPC reply type)"); return;
    case AMQP_RESPONSE_LIBRARY_EXCEPTION:
        snprintf(buf, size, "%s", amqp_error_string2(r.library_error));
        return;
    case AMQP_RESPONSE_SERVER_EXCEPTION:
        if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
            amqp_connection_close_t *m = r.reply.decoded;
            snprintf(buf, size, "connection closed by the broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
            amqp_channel_close_t *m = r.reply.decoded;
            snprintf(buf, size, "channel closed by the broker: %u %.*s", m->reply_code,
                     (int)m->reply_text.len, (const char *)m->reply_text.bytes);
        } else {
            snprintf(buf, size, "broker error (method 0x%08x)", r.reply.id);
        }
        return;
    }
    snprintf(buf, size, "unknown reply type %d", (int)r.reply_type);
}

/* CEL_OK when the last synchronous call succeeded; else logs what for. */
static int t_check(cel_amqp_t *a, const char *what) {
    amqp_rpc_reply_t r = amqp_get_rpc_reply(a->t_st);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) return CEL_OK;
    char why[512];
    reply_text(r, why, sizeof(why));
    cel_error("amqp %s: %s: %s", a->name, what, why);
    return CEL_EIO;
}

/* ---- thread: topology -------------------------------------------------- */

static int t_apply(cel_amqp_t *a, const topo_t *t) {
    amqp_connection_state_t st = a->t_st;
    char what[600];
    switch (t->kind) {
    case C_EXCHANGE:
        amqp_exchange_declare(st, CHANNEL, amqp_cstring_bytes(t->a), amqp_cstring_bytes(t->b), 0,
                              t->flag1, t->flag2, 0, amqp_empty_table);
        snprintf(what, sizeof(what), "declaring exchange '%s' (%s%s)", t->a, t->b,
                 t->flag1 ? ", durable" : "");
        return t_check(a, what);
    case C_QUEUE: {
        amqp_table_t args = amqp_empty_table;
        cel_err_t err;
        if (t->args && cel_amqp_json_to_table(t->args, &args, &err) != CEL_OK) {
            cel_error("amqp %s: queue '%s' arguments: %s", a->name, t->a, err.msg);
            return CEL_EINVAL;
        }
        amqp_queue_declare(st, CHANNEL, amqp_cstring_bytes(t->a), 0, t->flag1, 0, t->flag2, args);
        cel_amqp_table_free(&args);
        snprintf(what, sizeof(what), "declaring queue '%s'", t->a);
        return t_check(a, what);
    }
    case C_BIND:
        amqp_queue_bind(st, CHANNEL, amqp_cstring_bytes(t->a), amqp_cstring_bytes(t->b),
                        amqp_cstring_bytes(t->c), amqp_empty_table);
        snprintf(what, sizeof(what), "binding queue '%s' to '%s'", t->a, t->b);
        return t_check(a, what);
    case C_CONSUME:
        amqp_basic_consume(st, CHANNEL, amqp_cstring_bytes(t->a), amqp_cstring_bytes(t->ctag), 0,
                           t->flag1, 0, amqp_empty_table);
        snprintf(what, sizeof(what), "consuming from '%s'", t->a);
        return t_check(a, what);
    }
    return CEL_OK;
}

static void topo_free(topo_t *t) {
    free(t->a);
    free(t->b);
    free(t->c);
    json_decref(t->args);
}

/* Remembers a declaration, taking c's strings. */
static int t_remember(cel_amqp_t *a, cmd_t *c, topo_t **out) {
    if (a->t_ntopo >= CEL_AMQP_MAX_TOPOLOGY) {
        cel_error("amqp %s: more than %d declarations; '%s' not declared", a->name,
                  CEL_AMQP_MAX_TOPOLOGY, c->a ? c->a : "?");
        return CEL_ELIMIT;
    }
    topo_t *t = &a->t_topo[a->t_ntopo++];
    memset(t, 0, sizeof(*t));
    t->kind = c->kind;
    t->a = c->a, c->a = NULL;
    t->b = c->b, c->b = NULL;
    t->c = c->c, c->c = NULL;
    t->args = c->args, c->args = NULL;
    t->flag1 = c->flag1;
    t->flag2 = c->flag2;
    memcpy(t->ctag, c->ctag, sizeof(t->ctag));
    *out = t;
    return CEL_OK;
}

/* ---- thread: messages -------------------------------------------------- */

static void t_confirm_done(void *ctx, void *op, int ok) { t_done(ctx, op, ok); }

static void t_confirm_push(cel_amqp_t *a, uint64_t seq, op_t *op) {
    if (cel_amqp_confirms_push(&a->t_confirms, seq, op) != CEL_OK) t_done(a, op, 0);
}

/* basic.ack / basic.nack from the broker for the publish numbered tag (or,
 * multiple, every one up to it); they may come out of order (amqp_confirms.h). */
static void t_confirmed(cel_amqp_t *a, uint64_t tag, int multiple, int ok) {
    cel_amqp_confirms_settle(&a->t_confirms, tag, multiple, ok, t_confirm_done, a);
}

static void t_fail_confirms(cel_amqp_t *a) {
    cel_amqp_confirms_fail_all(&a->t_confirms, t_confirm_done, a);
}

static amqp_bytes_t opt_bytes(json_t *props, const char *key, amqp_flags_t flag,
                              amqp_flags_t *flags) {
    json_t *v = json_object_get(props, key);
    if (!json_is_string(v)) return amqp_empty_bytes;
    *flags |= flag;
    amqp_bytes_t b = { json_string_length(v), (void *)json_string_value(v) };
    return b;
}

static int t_publish(cel_amqp_t *a, cmd_t *c) {
    amqp_basic_properties_t p;
    memset(&p, 0, sizeof(p));
    cel_err_t err;
    if (c->args) {
        if (cel_amqp_json_to_table(c->args, &p.headers, &err) != CEL_OK) {
            cel_error("amqp %s: cannot publish to '%s': headers: %s", a->name, c->b, err.msg);
            t_done(a, c->op, 0);
            return CEL_OK; /* the message, not the connection, is at fault */
        }
        p._flags |= AMQP_BASIC_HEADERS_FLAG;
    }
    p.content_type = opt_bytes(c->props, "content_type", AMQP_BASIC_CONTENT_TYPE_FLAG, &p._flags);
    p.content_encoding =
        opt_bytes(c->props, "content_encoding", AMQP_BASIC_CONTENT_ENCODING_FLAG, &p._flags);
    p.correlation_id =
        opt_bytes(c->props, "correlation_id", AMQP_BASIC_CORRELATION_ID_FLAG, &p._flags);
    p.reply_to = opt_bytes(c->props, "reply_to", AMQP_BASIC_REPLY_TO_FLAG, &p._flags);
    p.expiration = opt_bytes(c->props, "expiration", AMQP_BASIC_EXPIRATION_FLAG, &p._flags);
    json_t *pri = json_object_get(c->props, "priority");
    if (json_is_integer(pri)) {
        p._flags |= AMQP_BASIC_PRIORITY_FLAG;
        p.priority = (uint8_t)json_integer_value(pri);
    }
    p._flags |= AMQP_BASIC_DELIVERY_MODE_FLAG;
    p.delivery_mode = c->flag1 ? 2 : 1;
    amqp_bytes_t body = { c->len, c->body };
    int rc = amqp_basic_publish(a->t_st, CHANNEL, amqp_cstring_bytes(c->a),
                                amqp_cstring_bytes(c->b), 0, 0, &p, body);
    cel_amqp_table_free(&p.headers);
    if (rc != AMQP_STATUS_OK) {
        cel_error("amqp %s: publish to '%s': %s", a->name, c->b, amqp_error_string2(rc));
        t_done(a, c->op, 0);
        return CEL_EIO;
    }
    if (a->confirm) t_confirm_push(a, ++a->t_seq, c->op);
    else t_done(a, c->op, 1);
    c->op = NULL;
    return CEL_OK;
}

/* ---- thread: acks ------------------------------------------------------ */

/* One basic.ack frame; CEL_EIO (logged) when it cannot be written. */
static int t_send_ack(cel_amqp_t *a, uint64_t tag, int multiple) {
    int rc = amqp_basic_ack(a->t_st, CHANNEL, tag, multiple);
    if (rc == AMQP_STATUS_OK) return CEL_OK;
    cel_error("amqp %s: ack: %s", a->name, amqp_error_string2(rc));
    return CEL_EIO;
}

/* Sends the acks taken in this batch of commands: one multiple ack up to
 * the floor when the batch's acks close runs of settled tags, single acks
 * for those above a tag not settled yet (a task still running). ok=0: the
 * connection failed first; every queued ack fails. Returns CEL_EIO when a
 * write failed. */
static int t_acks_flush(cel_amqp_t *a, int ok) {
    size_t n = a->t_nackq;
    if (!n) return CEL_OK;
    a->t_nackq = 0;
    int rc = CEL_OK;
    if (!ok) {
        for (size_t i = 0; i < n; i++) t_done(a, a->t_ackq_op[i], 0);
        return CEL_OK;
    }
    /* The broker takes a multiple ack only for a tag it still holds: the
     * highest of this batch below the floor. Every tag under it is settled,
     * and those not acked yet are all in this batch. */
    uint64_t old = a->t_acks.floor, floor = cel_amqp_acks_advance(&a->t_acks), upto = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t t = a->t_ackq_tag[i];
        if (t > old && t <= floor && t > upto) upto = t;
    }
    if (upto) rc = t_send_ack(a, upto, 1);
    for (size_t i = 0; i < n && rc == CEL_OK; i++)
        if (a->t_ackq_tag[i] > floor) rc = t_send_ack(a, a->t_ackq_tag[i], 0);
    for (size_t i = 0; i < n; i++) t_done(a, a->t_ackq_op[i], rc == CEL_OK);
    return rc;
}

/* An ack of a live delivery: marked settled and queued for t_acks_flush at
 * the end of the batch; sent on its own when it cannot be queued. */
static int t_ack(cel_amqp_t *a, uint64_t tag, op_t *op) {
    int m = cel_amqp_acks_mark(&a->t_acks, tag);
    if (m == 0) { /* settled already (a second ack): nothing to send */
        cel_debug("amqp %s: delivery %" PRIu64 " acked twice", a->name, tag);
        t_done(a, op, 1);
        return CEL_OK;
    }
    if (a->t_nackq == a->t_capackq) {
        size_t cap = a->t_capackq ? a->t_capackq * 2 : 64;
        uint64_t *tags = realloc(a->t_ackq_tag, cap * sizeof(*tags));
        if (tags) a->t_ackq_tag = tags;
        op_t **ops = tags ? realloc(a->t_ackq_op, cap * sizeof(*ops)) : NULL;
        if (ops) a->t_ackq_op = ops, a->t_capackq = cap;
    }
    if (a->t_nackq < a->t_capackq) {
        a->t_ackq_tag[a->t_nackq] = tag;
        a->t_ackq_op[a->t_nackq++] = op;
        return CEL_OK;
    }
    int rc = t_send_ack(a, tag, 0); /* no room to queue it */
    t_done(a, op, rc == CEL_OK);
    return rc;
}

/* Carries out one command on the live connection (live=1), or, while
 * disconnected, only remembers it (topology) or fails it (messages).
 * Returns CEL_EIO when the connection must be dropped. */
static int t_command(cel_amqp_t *a, cmd_t *c, int live) {
    topo_t *t;
    switch (c->kind) {
    case C_EXCHANGE:
    case C_QUEUE:
    case C_BIND:
    case C_CONSUME:
        if (t_remember(a, c, &t) != CEL_OK) return CEL_OK;
        return live ? t_apply(a, t) : CEL_OK;
    case C_CANCEL:
        for (int i = 0; i < a->t_ntopo; i++) {
            topo_t *x = &a->t_topo[i];
            if (x->kind != C_CONSUME || strcmp(x->a, c->a) != 0) continue;
            if (live) {
                amqp_basic_cancel(a->t_st, CHANNEL, amqp_cstring_bytes(x->ctag));
                if (t_check(a, "cancelling a consumer") != CEL_OK) {
                    topo_free(x);
                    memmove(x, x + 1, sizeof(*x) * (size_t)(a->t_ntopo - i - 1));
                    a->t_ntopo--;
                    return CEL_EIO;
                }
            }
            topo_free(x);
            memmove(x, x + 1, sizeof(*x) * (size_t)(a->t_ntopo - i - 1));
            a->t_ntopo--;
            break;
        }
        return CEL_OK;
    case C_QOS:
        a->t_qos = c->count;
        if (live) {
            /* Not amqp_basic_qos: its wait for qos-ok would hold up every delivery and ack
             * behind a round trip; the qos-ok is read (and ignored) with the other frames. */
            amqp_basic_qos_t q = { 0, (uint16_t)c->count, 1 };
            int rc = amqp_send_method(a->t_st, CHANNEL, AMQP_BASIC_QOS_METHOD, &q);
            if (rc != AMQP_STATUS_OK) {
                cel_error("amqp %s: basic.qos: %s", a->name, amqp_error_string2(rc));
                return CEL_EIO;
            }
        }
        return CEL_OK;
    case C_PUBLISH:
        if (!live) {
            t_done(a, c->op, 0);
            c->op = NULL;
            return CEL_OK;
        }
        return t_publish(a, c);
    case C_ACK:
    case C_REJECT: {
        if (!live || c->gen != a->t_gen) {
            t_done(a, c->op, 0);
            c->op = NULL;
            return CEL_OK;
        }
        if (c->kind == C_ACK) {
            op_t *op = c->op;
            c->op = NULL;
            return t_ack(a, c->tag, op);
        }
        int rc = amqp_basic_reject(a->t_st, CHANNEL, c->tag, c->flag1);
        t_done(a, c->op, rc == AMQP_STATUS_OK);
        c->op = NULL;
        if (rc != AMQP_STATUS_OK) {
            cel_error("amqp %s: reject: %s", a->name, amqp_error_string2(rc));
            return CEL_EIO;
        }
        cel_amqp_acks_mark(&a->t_acks, c->tag); /* settled: a multiple ack may pass it */
        return CEL_OK;
    }
    case C_CLOSE: atomic_store(&a->t_closing, 1); return CEL_OK;
    }
    return CEL_OK;
}

/* Takes the queued commands and carries them out in order. */
static int t_commands(cel_amqp_t *a) {
    uint64_t v;
    if (a->t_wake) { /* the eventfd said so: drain it before taking the list */
        while (read(a->efd, &v, sizeof(v)) > 0) {}
        a->t_wake = 0;
    }
    uv_mutex_lock(&a->mu);
    cmd_t *c = a->cmd_head;
    a->cmd_head = a->cmd_tail = NULL;
    uv_mutex_unlock(&a->mu);
    /* A batch of acks goes out in as few segments as the kernel can make of it
     * (each costs the broker a read): corked until the batch is written. */
    int fd = a->t_connected && c && c->next ? amqp_get_sockfd(a->t_st) : -1, on = 1, off = 0;
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_CORK, &on, sizeof(on));
    int rc = CEL_OK;
    while (c) {
        cmd_t *next = c->next;
        /* After a failure the rest run as if disconnected: the connection is
         * about to be dropped and declared again from scratch. */
        int r = t_command(a, c, a->t_connected && rc == CEL_OK);
        if (rc == CEL_OK) rc = r;
        cel_amqp_cmd_free(c);
        c = next;
    }
    int r = t_acks_flush(a, a->t_connected && rc == CEL_OK);
    if (rc == CEL_OK) rc = r;
    if (fd >= 0 && a->t_connected) setsockopt(fd, IPPROTO_TCP, TCP_CORK, &off, sizeof(off));
    return rc;
}

/* ---- thread: frames ---------------------------------------------------- */

/* The consumer a delivery came to, or NULL. */
static const topo_t *consumer_of(cel_amqp_t *a, amqp_bytes_t ctag) {
    for (int i = 0; i < a->t_ntopo; i++)
        if (a->t_topo[i].kind == C_CONSUME && strlen(a->t_topo[i].ctag) == ctag.len &&
            memcmp(a->t_topo[i].ctag, ctag.bytes, ctag.len) == 0)
            return &a->t_topo[i];
    return NULL;
}

static char *dup_bytes(amqp_bytes_t b) {
    char *s = malloc(b.len + 1);
    if (!s) return NULL;
    if (b.len) memcpy(s, b.bytes, b.len);
    s[b.len] = '\0';
    return s;
}

static void t_deliver(cel_amqp_t *a) {
    evt_t *e = calloc(1, sizeof(*e));
    if (!e) {
        /* Dropped unacked: the broker delivers it again after a reconnect. */
        cel_error("amqp %s: out of memory; a message waits for the next connection", a->name);
        cel_amqp_delivery_free(a->t_cur);
    } else {
        e->kind = E_DELIVERY;
        e->d = a->t_cur;
        t_emit(a, e);
    }
    a->t_cur = NULL;
}

static int t_method(cel_amqp_t *a, amqp_frame_t *f) {
    amqp_method_t *m = &f->payload.method;
    switch (m->id) {
    case AMQP_BASIC_DELIVER_METHOD: {
        amqp_basic_deliver_t *d = m->decoded;
        cel_amqp_delivery_free(a->t_cur);
        a->t_cur = calloc(1, sizeof(*a->t_cur));
        if (!a->t_cur) return CEL_ENOMEM;
        a->t_cur->gen = a->t_gen;
        a->t_cur->tag = d->delivery_tag;
        a->t_cur->redelivered = d->redelivered;
        a->t_cur->exchange = dup_bytes(d->exchange);
        a->t_cur->routing_key = dup_bytes(d->routing_key);
        const topo_t *t = consumer_of(a, d->consumer_tag);
        a->t_cur->queue = strdup(t ? t->a : "");
        if (t && t->flag1) cel_amqp_acks_mark(&a->t_acks, d->delivery_tag); /* no_ack */
        a->t_got = 0;
        if (!a->t_cur->exchange || !a->t_cur->routing_key || !a->t_cur->queue) return CEL_ENOMEM;
        return CEL_OK;
    }
    case AMQP_BASIC_ACK_METHOD: {
        amqp_basic_ack_t *k = m->decoded;
        t_confirmed(a, k->delivery_tag, k->multiple, 1);
        return CEL_OK;
    }
    case AMQP_BASIC_NACK_METHOD: {
        amqp_basic_nack_t *k = m->decoded;
        t_confirmed(a, k->delivery_tag, k->multiple, 0);
        return CEL_OK;
    }
    case AMQP_BASIC_RETURN_METHOD: /* content follows; we never publish mandatory */
        a->t_skip = 1;
        return CEL_OK;
    case AMQP_BASIC_CANCEL_METHOD:
        /* The broker cancelled a consumer (its queue was deleted): declare and
         * consume again on a fresh connection. */
        cel_warn("amqp %s: the broker cancelled a consumer; reconnecting", a->name);
        return CEL_EIO;
    case AMQP_CHANNEL_CLOSE_METHOD: {
        amqp_channel_close_t *c = m->decoded;
        cel_error("amqp %s: channel closed by the broker: %u %.*s", a->name, c->reply_code,
                  (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        amqp_channel_close_ok_t ok = { 0 };
        amqp_send_method(a->t_st, CHANNEL, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        return CEL_EIO;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
        amqp_connection_close_t *c = m->decoded;
        cel_error("amqp %s: connection closed by the broker: %u %.*s", a->name, c->reply_code,
                  (int)c->reply_text.len, (const char *)c->reply_text.bytes);
        amqp_connection_close_ok_t ok = { 0 };
        amqp_send_method(a->t_st, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        return CEL_EIO;
    }
    case AMQP_CONNECTION_BLOCKED_METHOD:
        cel_warn("amqp %s: the broker blocked this connection (resource alarm)", a->name);
        return CEL_OK;
    case AMQP_CONNECTION_UNBLOCKED_METHOD:
        cel_warn("amqp %s: the broker unblocked this connection", a->name);
        return CEL_OK;
    default: return CEL_OK; /* qos-ok, cancel-ok and the like */
    }
}

/* b copied into pool; 0, or -1 out of memory. */
static int copy_bytes(amqp_pool_t *pool, amqp_bytes_t *b) {
    if (!b->len) return 0;
    amqp_bytes_t n;
    amqp_pool_alloc_bytes(pool, b->len, &n);
    if (!n.bytes) return -1;
    memcpy(n.bytes, b->bytes, b->len);
    *b = n;
    return 0;
}

/* The properties of a delivery copied out of the connection's frame pool
 * (recycled once the frames are read), for the loop to convert to JSON:
 * one pool page instead of a malloc per header, and the JSON is made, and
 * later freed, on the loop thread, where glibc serves it from the thread's
 * own cache. NULL when out of memory. */
static raw_props_t *t_props_copy(const amqp_basic_properties_t *p) {
    raw_props_t *r = malloc(sizeof(*r));
    if (!r) return NULL;
    init_amqp_pool(&r->pool, 4096);
    r->p = *p;
    amqp_basic_properties_t *q = &r->p;
    int bad = 0;
    /* only the fields flagged present: librabbitmq leaves the others unset */
    struct {
        amqp_flags_t flag;
        amqp_bytes_t *b;
    } fields[] = { { AMQP_BASIC_CONTENT_TYPE_FLAG, &q->content_type },
                   { AMQP_BASIC_CONTENT_ENCODING_FLAG, &q->content_encoding },
                   { AMQP_BASIC_CORRELATION_ID_FLAG, &q->correlation_id },
                   { AMQP_BASIC_REPLY_TO_FLAG, &q->reply_to },
                   { AMQP_BASIC_EXPIRATION_FLAG, &q->expiration },
                   { AMQP_BASIC_MESSAGE_ID_FLAG, &q->message_id },
                   { AMQP_BASIC_TYPE_FLAG, &q->type },
                   { AMQP_BASIC_USER_ID_FLAG, &q->user_id },
                   { AMQP_BASIC_APP_ID_FLAG, &q->app_id },
                   { AMQP_BASIC_CLUSTER_ID_FLAG, &q->cluster_id } };
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++)
        if (p->_flags & fields[i].flag) bad |= copy_bytes(&r->pool, fields[i].b);
    if (!bad && (p->_flags & AMQP_BASIC_HEADERS_FLAG))
        bad = amqp_table_clone(&p->headers, &q->headers, &r->pool) != AMQP_STATUS_OK;
    if (bad) {
        empty_amqp_pool(&r->pool);
        free(r);
        return NULL;
    }
    return r;
}

static int t_frame(cel_amqp_t *a, amqp_frame_t *f) {
    switch (f->frame_type) {
    case AMQP_FRAME_METHOD: return t_method(a, f);
    case AMQP_FRAME_HEADER: {
        uint64_t size = f->payload.properties.body_size;
        if (a->t_skip) {
            a->t_skip = 0;
            a->t_skip_left = (size_t)size;
            return CEL_OK;
        }
        cel_amqp_delivery_t *d = a->t_cur;
        if (!d) return CEL_OK; /* a header we did not ask for */
        if (size > (uint64_t)SIZE_MAX / 2) return CEL_ELIMIT;
        d->len = (size_t)size;
        const amqp_basic_properties_t *p = f->payload.properties.decoded;
        if (!(d->raw_ = t_props_copy(p))) { /* no memory for the copy: converted here */
            cel_err_t err;
            if (cel_amqp_props_to_json(p, &d->props, &d->headers, &err) != CEL_OK)
                snprintf(d->bad_headers, sizeof(d->bad_headers), "%s", err.msg);
        }
        if (d->len <= a->max_body) {
            d->body = malloc(d->len + 1);
            if (!d->body) return CEL_ENOMEM;
            d->body[d->len] = '\0';
        }
        if (d->len == 0) t_deliver(a);
        return CEL_OK;
    }
    case AMQP_FRAME_BODY: {
        amqp_bytes_t b = f->payload.body_fragment;
        if (a->t_skip_left) {
            a->t_skip_left = b.len >= a->t_skip_left ? 0 : a->t_skip_left - b.len;
            return CEL_OK;
        }
        cel_amqp_delivery_t *d = a->t_cur;
        if (!d) return CEL_OK;
        size_t n = b.len > d->len - a->t_got ? d->len - a->t_got : b.len;
        if (d->body && n) memcpy(d->body + a->t_got, b.bytes, n);
        a->t_got += n;
        if (a->t_got >= d->len) t_deliver(a);
        return CEL_OK;
    }
    default: return CEL_OK; /* heartbeats are handled inside librabbitmq */
    }
}

/* ---- thread: connection ------------------------------------------------ */

static void t_disconnect(cel_amqp_t *a) {
    if (a->t_st) {
        if (a->t_connected && a->t_closing) {
            /* A clean goodbye; bounded by the rpc timeout. */
            amqp_channel_close(a->t_st, CHANNEL, AMQP_REPLY_SUCCESS);
            amqp_connection_close(a->t_st, AMQP_REPLY_SUCCESS);
        }
        atomic_store(&a->sockfd, -1);
        amqp_destroy_connection(a->t_st);
        a->t_st = NULL;
    }
    int was = a->t_announced;
    a->t_connected = 0;
    a->t_announced = 0;
    cel_amqp_delivery_free(a->t_cur);
    a->t_cur = NULL;
    a->t_skip = 0;
    a->t_skip_left = 0;
    t_fail_confirms(a);
    if (was) t_state(a, E_DOWN);
}

static int t_connect(cel_amqp_t *a) {
    a->t_st = amqp_new_connection();
    if (!a->t_st) return CEL_ENOMEM;
    amqp_socket_t *sock = a->url.ssl ? amqp_ssl_socket_new(a->t_st) : amqp_tcp_socket_new(a->t_st);
    if (!sock) {
        cel_error("amqp %s: cannot create a%s socket", a->name, a->url.ssl ? " TLS" : "");
        return CEL_EIO;
    }
    if (a->url.ssl) {
        const char *ca = a->ssl_ca[0] ? a->ssl_ca : DEFAULT_CA;
        amqp_ssl_socket_set_verify_peer(sock, a->ssl_verify);
        amqp_ssl_socket_set_verify_hostname(sock, a->ssl_verify);
        if (a->ssl_verify && amqp_ssl_socket_set_cacert(sock, ca) != AMQP_STATUS_OK) {
            cel_error("amqp %s: cannot load CA certificates from %s", a->name, ca);
            return CEL_EIO;
        }
        if (a->ssl_cert[0] &&
            amqp_ssl_socket_set_key(sock, a->ssl_cert, a->ssl_key) != AMQP_STATUS_OK) {
            cel_error("amqp %s: cannot load client certificate %s with key %s", a->name,
                      a->ssl_cert, a->ssl_key);
            return CEL_EIO;
        }
    }
    struct timeval tv = { CONNECT_S, 0 }, rpc = { RPC_S, 0 };
    int rc = amqp_socket_open_noblock(sock, a->url.host, a->url.port, &tv);
    if (rc != AMQP_STATUS_OK) {
        int refused = rc == AMQP_STATUS_SOCKET_ERROR || rc == AMQP_STATUS_TIMEOUT;
        cel_log(refused && a->quiet ? CEL_LOG_DEBUG : CEL_LOG_ERROR,
                "amqp %s: cannot connect to %s%s:%d: %s", a->name, a->url.ssl ? "amqps://" : "",
                a->url.host, a->url.port, amqp_error_string2(rc));
        return CEL_EIO;
    }
    atomic_store(&a->sockfd, amqp_socket_get_sockfd(sock));
    amqp_set_handshake_timeout(a->t_st, &rpc);
    amqp_set_rpc_timeout(a->t_st, &rpc);
    /* What kombu's py-amqp announces that matters to the broker: we want
     * consumer cancel notifications and connection.blocked. */
    amqp_table_entry_t caps[] = {
        { amqp_cstring_bytes("consumer_cancel_notify"),
          { AMQP_FIELD_KIND_BOOLEAN, { .boolean = 1 } } },
        { amqp_cstring_bytes("connection.blocked"), { AMQP_FIELD_KIND_BOOLEAN, { .boolean = 1 } } },
    };
    amqp_table_entry_t props[] = {
        { amqp_cstring_bytes("product"),
          { AMQP_FIELD_KIND_UTF8, { .bytes = amqp_cstring_bytes("celeriac") } } },
        { amqp_cstring_bytes("capabilities"), { AMQP_FIELD_KIND_TABLE, { .table = { 2, caps } } } },
    };
    amqp_table_t client = { 2, props };
    amqp_rpc_reply_t r =
        amqp_login_with_properties(a->t_st, a->url.vhost, 0, 131072, a->heartbeat, &client,
                                   AMQP_SASL_METHOD_PLAIN, a->url.user, a->url.password);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char why[512];
        reply_text(r, why, sizeof(why));
        cel_error("amqp %s: login to %s:%d vhost '%s' as '%s' failed: %s", a->name, a->url.host,
                  a->url.port, a->url.vhost, a->url.user, why);
        return CEL_EIO;
    }
    amqp_channel_open(a->t_st, CHANNEL);
    if (t_check(a, "opening a channel") != CEL_OK) return CEL_EIO;
    if (a->confirm) {
        amqp_confirm_select(a->t_st, CHANNEL);
        if (t_check(a, "turning publisher confirms on") != CEL_OK) return CEL_EIO;
    }
    a->t_gen++;
    a->t_seq = 0;
    cel_amqp_acks_reset(&a->t_acks);
    a->t_connected = 1;
    /* The window first: a consumer started before it would be sent the
     * whole queue. */
    if (a->t_qos > 0) {
        amqp_basic_qos(a->t_st, CHANNEL, 0, (uint16_t)a->t_qos, 1);
        if (t_check(a, "setting the prefetch count") != CEL_OK) return CEL_EIO;
    }
    for (int i = 0; i < a->t_ntopo; i++)
        if (t_apply(a, &a->t_topo[i]) != CEL_OK) return CEL_EIO;
    /* Commands posted while this connection was being made (the pidbox's
     * listen, right after its bus was opened) are carried out before it is
     * announced: "up" means every queue asked for so far is declared, bound
     * and consumed, so a broadcast sent after the worker says ready arrives. */
    if (t_commands(a) != CEL_OK) return CEL_EIO;
    a->t_last_rx = now_s();
    a->t_announced = 1;
    t_state(a, E_UP);
    return CEL_OK;
}

/* Connected: commands, frames, poll, until an error or a close. */
static void t_run(cel_amqp_t *a) {
    int fd = amqp_get_sockfd(a->t_st);
    int hb = amqp_get_heartbeat(a->t_st);
    for (;;) {
        if (t_commands(a) != CEL_OK || a->t_closing) break;
        int rc = CEL_OK;
        for (int i = 0; i < FRAME_BUDGET; i++) {
            amqp_frame_t f;
            struct timeval zero = { 0, 0 };
            int s = amqp_simple_wait_frame_noblock(a->t_st, &f, &zero);
            if (s == AMQP_STATUS_TIMEOUT) break;
            if (s != AMQP_STATUS_OK) {
                cel_error("amqp %s: connection lost: %s", a->name, amqp_error_string2(s));
                rc = CEL_EIO;
                break;
            }
            if ((rc = t_frame(a, &f)) != CEL_OK) break;
        }
        t_flush(a);
        if (rc != CEL_OK) break;
        if (!amqp_frames_enqueued(a->t_st) && !amqp_data_in_buffer(a->t_st))
            amqp_maybe_release_buffers(a->t_st);
        int busy = amqp_frames_enqueued(a->t_st) || amqp_data_in_buffer(a->t_st);
        struct pollfd p[2] = { { fd, POLLIN, 0 }, { a->efd, POLLIN, 0 } };
        int n = poll(p, 2, busy ? 0 : POLL_MS);
        if (n > 0 && (p[1].revents & POLLIN)) a->t_wake = 1;
        double now = now_s();
        if (n > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) a->t_last_rx = now;
        if (hb > 0 && now - a->t_last_rx > 2.0 * hb) {
            cel_error("amqp %s: no heartbeat from the broker for %d s; reconnecting", a->name,
                      2 * hb);
            break;
        }
    }
}

/* Waits out the backoff, still taking commands (they fail or are remembered). */
static void t_backoff(cel_amqp_t *a, double seconds) {
    double until = now_s() + seconds;
    for (;;) {
        t_commands(a);
        t_flush(a);
        if (a->t_closing) return;
        double left = until - now_s();
        if (left <= 0) return;
        struct pollfd p = { a->efd, POLLIN, 0 };
        if (poll(&p, 1, (int)(left * 1000) + 1) > 0) a->t_wake = 1;
    }
}

void cel_amqp_thread_main(void *arg) {
    cel_amqp_t *a = arg;
    double backoff = BACKOFF_MIN;
    while (!a->t_closing) {
        if (t_connect(a) == CEL_OK) {
            backoff = BACKOFF_MIN;
            if (!a->quiet || a->t_gen > 1)
                cel_info("amqp %s: connected to %s:%d vhost '%s'", a->name, a->url.host,
                         a->url.port, a->url.vhost);
            t_flush(a);
            t_run(a);
        }
        t_disconnect(a);
        t_flush(a);
        if (a->t_closing) break;
        t_backoff(a, backoff);
        backoff = backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : backoff * 2;
    }
    /* Whatever is still queued fails now; then the loop may free us. */
    t_commands(a);
    t_fail_confirms(a);
    for (int i = 0; i < a->t_ntopo; i++) topo_free(&a->t_topo[i]);
    a->t_ntopo = 0;
    cel_amqp_acks_free(&a->t_acks);
    free(a->t_ackq_tag);
    free(a->t_ackq_op);
    a->t_ackq_tag = NULL;
    a->t_ackq_op = NULL;
    t_state(a, E_CLOSED);
    t_flush(a);
}
