/* amqp_conn.c -- an AMQP connection on a thread of its own: the loop side.
 *
 * Why a thread, and not librabbitmq's noblock frame reads driven by uv_poll
 * on the loop: both were measured (bench/amqp_designs.c, run by
 * bench/rabbitmq.py; figures in bench/README.md). Draining 20,000 acked
 * messages, uv_poll did 11.5-14k msg/s and the thread 7-13k on the loaded
 * 2-core test machine, and a publish-to-delivery round trip was about
 * 0.2-0.35 ms either way: the thread's queue and wake-ups cost something,
 * not much. What decides is what uv_poll leaves on the loop: librabbitmq
 * resolves names, connects, does the TLS handshake and the login with
 * blocking calls (80-200 ms of loop stall at connect, against 5-13 ms),
 * and its writes (basic.publish, basic.ack) wait for the socket whenever
 * the kernel buffer is full -- which is what RabbitMQ's connection.blocked
 * (a memory or disk alarm) does to a publisher: with the broker blocked for
 * about 3 s, the uv_poll loop stalled 5.5-7.7 s, the thread's at most
 * 150 ms (a busy machine, not a wait). A stalled loop stops remote control,
 * heartbeats and every timer, so every librabbitmq call is made on a thread.
 *
 * This file is the loop side: the calls of amqp_conn.h put commands on a
 * mutex-guarded list and write an eventfd that wakes the thread
 * (amqp_thread.c); acks, rejects and publishes are gathered over a loop
 * turn and handed over together at its end (a uv_check, or a uv_idle when
 * posted after the check phase), so one turn's acks cost one wake-up and
 * go out as one basic.ack with multiple=1 where they close a run of
 * tags (amqp_acks.h). The thread's events come back on another list and a
 * uv_async_t, at most EVENT_BUDGET per callback. The loop owns the object;
 * the thread only touches the fields marked t_ and the lists. Completions
 * carry their own event, so reporting one never allocates.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../common/log.h"
#include "../protocol/amqp_msg.h"
#include "amqp_internal.h"

#define EVENT_BUDGET   1024 /* events handled per loop callback */
#define CLOSE_GRACE_MS 5000

static void raw_props_free(cel_amqp_delivery_t *d) {
    raw_props_t *r = d->raw_;
    if (!r) return;
    empty_amqp_pool(&r->pool);
    free(r);
    d->raw_ = NULL;
}

void cel_amqp_raw_props_convert(cel_amqp_delivery_t *d) {
    raw_props_t *r = d->raw_;
    if (!r) return;
    cel_err_t err;
    if (cel_amqp_props_to_json(&r->p, &d->props, &d->headers, &err) != CEL_OK)
        snprintf(d->bad_headers, sizeof(d->bad_headers), "%s", err.msg);
    raw_props_free(d);
}

void cel_amqp_delivery_free(cel_amqp_delivery_t *d) {
    if (!d) return;
    raw_props_free(d);
    free(d->exchange);
    free(d->routing_key);
    free(d->queue);
    json_decref(d->props);
    json_decref(d->headers);
    free(d->body);
    free(d);
}

void cel_amqp_cmd_free(cmd_t *c) {
    free(c->a);
    free(c->b);
    free(c->c);
    json_decref(c->args);
    json_decref(c->props);
    free(c->body);
    free(c);
}

/* ---- loop side --------------------------------------------------------- */

/* Hands the loop's pending commands, then c (may be NULL), to the thread in
 * one go; wakes it only when its list was empty (a non-empty one has a
 * wake-up pending: the thread drains the eventfd before it takes the list). */
static void hand_over(cel_amqp_t *a, cmd_t *c) {
    cmd_t *head = a->l_head, *tail = a->l_tail;
    a->l_head = a->l_tail = NULL;
    uv_check_stop(&a->flush_check);
    uv_idle_stop(&a->flush_idle);
    if (c) {
        c->next = NULL;
        if (tail) tail->next = c;
        else head = c;
        tail = c;
    }
    if (!head) return;
    uv_mutex_lock(&a->mu);
    int was_empty = a->cmd_head == NULL;
    if (a->cmd_tail) a->cmd_tail->next = head;
    else a->cmd_head = head;
    a->cmd_tail = tail;
    uv_mutex_unlock(&a->mu);
    if (!was_empty) return;
    uint64_t one = 1;
    ssize_t w = write(a->efd, &one, sizeof(one));
    (void)w; /* EAGAIN: the counter is already non-zero, the thread will wake */
}

/* A command the thread must see before anything posted after it (topology,
 * qos, close): handed over now, behind the loop's pending ones. */
static void post(cel_amqp_t *a, cmd_t *c) { hand_over(a, c); }

static void on_flush_check(uv_check_t *h) { hand_over(h->data, NULL); }
static void on_flush_idle(uv_idle_t *h) { hand_over(h->data, NULL); }

/* An ack, reject or publish: kept until the end of this loop turn (or the
 * start of the next, when it was posted after the check phase), so that
 * everything one turn settles costs one lock and one wake-up and reaches
 * the thread as one batch (its acks as one multiple ack where they can). */
static void post_later(cel_amqp_t *a, cmd_t *c) {
    c->next = NULL;
    if (a->l_tail) a->l_tail->next = c;
    else {
        a->l_head = c;
        uv_check_start(&a->flush_check, on_flush_check);
        uv_idle_start(&a->flush_idle, on_flush_idle);
    }
    a->l_tail = c;
}

static void on_handle_closed(uv_handle_t *h) {
    cel_amqp_t *a = h->data;
    if (--a->handles_left > 0) return;
    void (*cb)(void *) = a->on_closed;
    void *cp = a->closed_priv;
    uv_mutex_destroy(&a->mu);
    close(a->efd);
    free(a->t_topo);
    cel_amqp_confirms_free(&a->t_confirms);
    free(a);
    if (cb) cb(cp);
}

static void close_handles(cel_amqp_t *a) {
    a->handles_left = 4;
    uv_timer_stop(&a->grace);
    uv_close((uv_handle_t *)&a->grace, on_handle_closed);
    uv_close((uv_handle_t *)&a->async, on_handle_closed);
    uv_close((uv_handle_t *)&a->flush_check, on_handle_closed);
    uv_close((uv_handle_t *)&a->flush_idle, on_handle_closed);
}

static void finish_close(cel_amqp_t *a) {
    if (a->thread_started) uv_thread_join(&a->thread); /* it has posted E_CLOSED: exiting */
    a->thread_started = 0;
    /* Events that came after E_CLOSED cannot exist; drop any leftovers. */
    uv_mutex_lock(&a->mu);
    evt_t *e = a->evt_head;
    a->evt_head = a->evt_tail = NULL;
    uv_mutex_unlock(&a->mu);
    while (e) {
        evt_t *next = e->next;
        cel_amqp_delivery_free(e->d);
        if (e->kind == E_DONE) free(e->op);
        else free(e);
        e = next;
    }
    /* Commands posted after the close was asked for: the thread is gone. */
    uv_mutex_lock(&a->mu);
    cmd_t *c = a->cmd_head;
    a->cmd_head = a->cmd_tail = NULL;
    uv_mutex_unlock(&a->mu);
    if (c) {
        cmd_t *t = c;
        while (t->next) t = t->next;
        t->next = a->l_head;
    } else c = a->l_head;
    a->l_head = a->l_tail = NULL;
    while (c) {
        cmd_t *next = c->next;
        if (c->op) {
            a->pending--;
            if (c->op->done) c->op->done(c->op->priv, 0);
            free(c->op);
        }
        cel_amqp_cmd_free(c);
        c = next;
    }
    close_handles(a);
}

static void on_async(uv_async_t *h) {
    cel_amqp_t *a = h->data;
    if (a->thread_done) return;
    uv_mutex_lock(&a->mu);
    evt_t *e = a->evt_head;
    int n = 0;
    evt_t *last = NULL;
    for (evt_t *x = e; x && n < EVENT_BUDGET; x = x->next, n++) last = x;
    if (last) {
        a->evt_head = last->next;
        if (!a->evt_head) a->evt_tail = NULL;
        last->next = NULL;
    }
    int more = a->evt_head != NULL;
    uv_mutex_unlock(&a->mu);
    if (more) uv_async_send(&a->async); /* the rest on the next turn */
    while (e) {
        evt_t *next = e->next;
        switch (e->kind) {
        case E_UP:
            a->up = 1;
            a->gen = e->gen;
            if (a->cbs.on_state) a->cbs.on_state(a->priv, 1);
            break;
        case E_DOWN:
            a->up = 0;
            if (a->cbs.on_state) a->cbs.on_state(a->priv, 0);
            break;
        case E_DELIVERY:
            cel_amqp_raw_props_convert(e->d);
            if (a->cbs.on_delivery && !a->closing) a->cbs.on_delivery(a->priv, e->d);
            else cel_amqp_delivery_free(e->d);
            break;
        case E_DONE: {
            op_t *op = e->op;
            a->pending--;
            if (op->done) op->done(op->priv, e->ok);
            free(op); /* e is part of it */
            e = next;
            continue;
        }
        case E_CLOSED: a->thread_done = 1; break;
        }
        free(e);
        e = next;
    }
    if (a->thread_done) finish_close(a);
}

static void on_grace(uv_timer_t *t) {
    cel_amqp_t *a = t->data;
    int fd = atomic_load(&a->sockfd);
    if (fd >= 0) {
        cel_warn("amqp %s: the broker does not take our writes; cutting the connection", a->name);
        shutdown(fd, SHUT_RDWR); /* the blocked write returns, the thread exits */
    }
}

cel_amqp_t *cel_amqp_new(uv_loop_t *loop, const cel_amqp_conf_t *conf, const cel_amqp_cbs_t *cbs,
                         void *priv, cel_err_t *err) {
    cel_amqp_t *a = calloc(1, sizeof(*a));
    if (!a) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    a->t_topo = calloc(CEL_AMQP_MAX_TOPOLOGY, sizeof(topo_t));
    if (!a->t_topo) {
        free(a);
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    a->loop = loop;
    a->cbs = *cbs;
    a->priv = priv;
    a->url = *conf->url;
    snprintf(a->name, sizeof(a->name), "%s", conf->name ? conf->name : "broker");
    snprintf(a->ssl_ca, sizeof(a->ssl_ca), "%s", conf->ssl_ca ? conf->ssl_ca : "");
    snprintf(a->ssl_cert, sizeof(a->ssl_cert), "%s", conf->ssl_cert ? conf->ssl_cert : "");
    snprintf(a->ssl_key, sizeof(a->ssl_key), "%s", conf->ssl_key ? conf->ssl_key : "");
    a->ssl_verify = conf->ssl_verify;
    a->heartbeat = conf->heartbeat;
    a->confirm = conf->confirm;
    a->quiet = conf->quiet_refusals;
    a->max_body = conf->max_body;
    atomic_init(&a->sockfd, -1);
    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (a->efd < 0 || uv_mutex_init(&a->mu) != 0) {
        if (a->efd >= 0) close(a->efd);
        free(a->t_topo);
        free(a);
        cel_err_set(err, CEL_EIO, "cannot create the AMQP connection's wake-up fd");
        return NULL;
    }
    uv_async_init(loop, &a->async, on_async);
    a->async.data = a;
    uv_timer_init(loop, &a->grace);
    a->grace.data = a;
    uv_check_init(loop, &a->flush_check);
    a->flush_check.data = a;
    uv_idle_init(loop, &a->flush_idle);
    a->flush_idle.data = a;
    if (uv_thread_create(&a->thread, cel_amqp_thread_main, a) != 0) {
        cel_err_set(err, CEL_EIO, "cannot start the AMQP connection thread");
        a->thread_done = 1;
        close_handles(a);
        return NULL;
    }
    a->thread_started = 1;
    return a;
}

int cel_amqp_up(const cel_amqp_t *a) { return a->up; }

uint64_t cel_amqp_generation(const cel_amqp_t *a) { return a->gen; }

int cel_amqp_pending(const cel_amqp_t *a) { return a->pending; }

static cmd_t *cmd_new(int kind) {
    cmd_t *c = calloc(1, sizeof(*c));
    if (c) c->kind = kind;
    return c;
}

/* strdup that treats NULL as "". */
static char *sdup(const char *s) { return strdup(s ? s : ""); }

static int post_topology(cel_amqp_t *a, cmd_t *c) {
    if (!c) return CEL_ENOMEM;
    if ((!c->a) || (c->kind != C_QUEUE && c->kind != C_CONSUME && !c->b) ||
        (c->kind == C_BIND && !c->c)) {
        cel_amqp_cmd_free(c);
        return CEL_ENOMEM;
    }
    post(a, c);
    return CEL_OK;
}

int cel_amqp_declare_exchange(cel_amqp_t *a, const char *name, const char *type, int durable,
                              int auto_delete) {
    cmd_t *c = cmd_new(C_EXCHANGE);
    if (c) {
        c->a = sdup(name);
        c->b = sdup(type);
        c->flag1 = durable;
        c->flag2 = auto_delete;
    }
    return post_topology(a, c);
}

int cel_amqp_declare_queue(cel_amqp_t *a, const char *name, int durable, int auto_delete,
                           json_t *args) {
    cmd_t *c = cmd_new(C_QUEUE);
    if (c) {
        c->a = sdup(name);
        c->flag1 = durable;
        c->flag2 = auto_delete;
        if (args && !(c->args = json_deep_copy(args))) {
            cel_amqp_cmd_free(c);
            return CEL_ENOMEM;
        }
    }
    return post_topology(a, c);
}

int cel_amqp_bind(cel_amqp_t *a, const char *queue, const char *exchange, const char *routing_key) {
    cmd_t *c = cmd_new(C_BIND);
    if (c) {
        c->a = sdup(queue);
        c->b = sdup(exchange);
        c->c = sdup(routing_key);
    }
    return post_topology(a, c);
}

int cel_amqp_consume(cel_amqp_t *a, const char *queue, int no_ack) {
    cmd_t *c = cmd_new(C_CONSUME);
    if (c) {
        c->a = sdup(queue);
        c->flag1 = no_ack;
        snprintf(c->ctag, sizeof(c->ctag), "celeriac.%d", ++a->ctag_next);
    }
    return post_topology(a, c);
}

int cel_amqp_cancel(cel_amqp_t *a, const char *queue) {
    cmd_t *c = cmd_new(C_CANCEL);
    if (!c || !(c->a = sdup(queue))) {
        if (c) cel_amqp_cmd_free(c);
        return CEL_ENOMEM;
    }
    post(a, c);
    return CEL_OK;
}

void cel_amqp_qos(cel_amqp_t *a, int prefetch_count) {
    cmd_t *c = cmd_new(C_QOS);
    if (!c) return; /* the old window stays: safe */
    c->count = prefetch_count < 1 ? 1 : prefetch_count > 65535 ? 65535 : prefetch_count;
    post(a, c);
}

/* Queues a command that completes through done; on allocation failure done
 * runs from the next loop turn... there is none to borrow, so it runs now
 * with ok=0, before the call returns (broker.h's contract for "not sent"). */
static void post_op(cel_amqp_t *a, cmd_t *c, cel_broker_done_fn done, void *priv) {
    op_t *op = c ? malloc(sizeof(*op)) : NULL;
    if (!op) {
        if (c) cel_amqp_cmd_free(c);
        if (done) done(priv, 0);
        return;
    }
    op->done = done;
    op->priv = priv;
    c->op = op;
    a->pending++;
    post_later(a, c);
}

void cel_amqp_publish(cel_amqp_t *a, const cel_broker_out_t *m, cel_broker_done_fn done,
                      void *priv) {
    cmd_t *c = cmd_new(C_PUBLISH);
    int bad = !c;
    if (c) {
        c->a = sdup(m->exchange);
        c->b = sdup(m->routing_key);
        c->flag1 = m->persistent;
        c->len = m->body_len;
        c->body = malloc(m->body_len ? m->body_len : 1);
        c->props = json_object();
        if (m->headers) c->args = json_deep_copy(m->headers);
        bad = !c->a || !c->b || !c->body || !c->props || (m->headers && !c->args);
        if (!bad) {
            if (m->body_len) memcpy(c->body, m->body, m->body_len);
            if (m->content_type)
                bad |= json_object_set_new(c->props, "content_type", json_string(m->content_type));
            if (m->content_encoding)
                bad |= json_object_set_new(c->props, "content_encoding",
                                           json_string(m->content_encoding));
            if (m->correlation_id)
                bad |=
                    json_object_set_new(c->props, "correlation_id", json_string(m->correlation_id));
            if (m->reply_to)
                bad |= json_object_set_new(c->props, "reply_to", json_string(m->reply_to));
            if (m->expiration)
                bad |= json_object_set_new(c->props, "expiration", json_string(m->expiration));
            /* m->extra: kombu hands these to py-amqp, which knows no such
             * basic properties and drops them; so do we. */
            if (m->priority >= 0)
                bad |= json_object_set_new(c->props, "priority",
                                           json_integer(m->priority > 255 ? 255 : m->priority));
        }
    }
    if (bad) {
        if (c) cel_amqp_cmd_free(c);
        c = NULL;
    }
    post_op(a, c, done, priv);
}

void cel_amqp_ack(cel_amqp_t *a, uint64_t gen, uint64_t tag, cel_broker_done_fn done, void *priv) {
    cmd_t *c = cmd_new(C_ACK);
    if (c) c->gen = gen, c->tag = tag;
    post_op(a, c, done, priv);
}

void cel_amqp_reject(cel_amqp_t *a, uint64_t gen, uint64_t tag, int requeue,
                     cel_broker_done_fn done, void *priv) {
    cmd_t *c = cmd_new(C_REJECT);
    if (c) c->gen = gen, c->tag = tag, c->flag1 = requeue;
    post_op(a, c, done, priv);
}

void cel_amqp_close(cel_amqp_t *a, void (*on_closed)(void *), void *priv) {
    if (a->closing) return;
    a->closing = 1;
    a->on_closed = on_closed;
    a->closed_priv = priv;
    if (a->thread_done) { /* cannot happen before close; kept for safety */
        finish_close(a);
        return;
    }
    cmd_t *c = cmd_new(C_CLOSE);
    if (c) post(a, c);
    else {
        /* No memory for the command: the flag alone stops the thread. */
        hand_over(a, NULL);
        atomic_store(&a->t_closing, 1);
        uint64_t one = 1;
        ssize_t w = write(a->efd, &one, sizeof(one));
        (void)w;
    }
    uv_timer_start(&a->grace, on_grace, CLOSE_GRACE_MS, 0);
}
