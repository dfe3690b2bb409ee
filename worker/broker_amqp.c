/* broker_amqp.c -- the AMQP 0-9-1 broker transport (RabbitMQ), as kombu's pyamqp consumer.
 *
 * cel_broker_amqp_ops (broker.h) is the only symbol it exports; amqp://,
 * amqps:// and pyamqp:// URLs reach it (broker.c maps the aliases). One
 * connection consumes (amqp_conn.c: a thread per connection, so the loop
 * never waits on librabbitmq), a second is opened on the first publish, in
 * confirm mode, so a broker that blocks publishers never stalls acks.
 *
 * Declarations are kombu's for each -Q queue: exchange <q> (direct,
 * durable), queue <q> (durable; x-max-priority with --max-priority), binding
 * <q> -> <q> with routing key <q>; a stock Python worker on the same vhost
 * declares exactly these, so neither side meets PRECONDITION_FAILED.
 *
 * The prefetch window: basic.qos (global, as Celery sets it on RabbitMQ) is
 * kept at held + capacity, where held counts messages handed to the
 * consumer and not yet acked on this connection (running, being stored,
 * waiting for an eta) and capacity is the consumer's free reserve. So the
 * broker sends exactly what the consumer can take, and an eta task raises
 * the window as Celery's qos.increment_eventually does. Raised at once,
 * lowered after a second (qos is a round trip); what arrives beyond capacity waits
 * here, unacked, and goes back to the broker on shutdown.
 *
 * Reconnects: when the connection drops the broker requeues everything it
 * had given us; the consumer may still be running some of it. A held
 * message whose task (id + retries) comes back redelivered on the new
 * connection is adopted -- the running request acks the new delivery --
 * instead of running twice; one that already finished here (its result was
 * stored, its ack may have been lost with the connection) is acked at once.
 * Order for a message: delivered -> handed over -> result stored -> acked.
 * Main process, libuv loop.
 */
#include "broker.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "../protocol/amqp_msg.h"
#include "amqp_conn.h"
#include "metrics.h"

#define DONE_KEYS        4096 /* tasks finished here, remembered against redelivery */
#define KEY_MAX          300  /* "<task id>/<retries>" kept for adoption */
#define PUB_DECLARED_MAX 1024 /* queues declared by publishing (then no more) */
#define QOS_LOWER_MS     1000 /* a window well above held + free is lowered after this */

/* A message handed to the consumer and not yet acked or given back. */
typedef struct held {
    struct held *next_tag, *next_key; /* hash chains */
    char tag[48];                     /* what the consumer holds: "<gen>.<delivery tag>" */
    uint64_t gen, dtag;               /* the delivery it stands for now */
    int stale;                        /* its connection is gone and nothing adopted it yet */
    char *key;                        /* "<id>/<retries>", NULL when unknown */
} held_t;

/* A string-keyed chained hash over intrusive links. */
typedef struct map {
    held_t **slots;
    size_t cap; /* power of two */
    size_t n;
} map_t;

typedef struct fifo_item {
    struct fifo_item *next;
    cel_amqp_delivery_t *d;
} fifo_item_t;

typedef struct amqp_broker {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_broker_cbs_t cbs;
    void *priv;
    cel_amqp_t *conn;
    cel_amqp_t *pub; /* opened on the first publish */
    char *queues[CEL_MAX_QUEUES];
    int nqueues;
    int stopped;
    int closing;
    int closing_left;
    void (*on_closed)(void *);
    void *closed_priv;
    map_t by_tag, by_key;
    int live; /* held entries on the current connection */
    fifo_item_t *fifo_head, *fifo_tail;
    int fifo_n;
    int qos_sent;         /* 0 = not sent on this connection */
    uv_timer_t qos_timer; /* lowers the window once it has been too wide for a while */
    char *done_ring[DONE_KEYS];
    int done_next;
    json_t *done_set;     /* key -> true, the ring's contents */
    json_t *pub_declared; /* queue -> true: declared on the publishing connection */
} amqp_broker_t;

/* ---- maps -------------------------------------------------------------- */

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static held_t **chain_of(map_t *m, const char *s) { return &m->slots[hash_str(s) & (m->cap - 1)]; }

static int map_init(map_t *m) {
    m->cap = 256;
    m->n = 0;
    m->slots = calloc(m->cap, sizeof(held_t *));
    return m->slots ? CEL_OK : CEL_ENOMEM;
}

/* by_key chains through next_key, by_tag through next_tag. */
static held_t **link_of(held_t *h, int by_key) { return by_key ? &h->next_key : &h->next_tag; }
static const char *name_of(held_t *h, int by_key) { return by_key ? h->key : h->tag; }

static void map_grow(map_t *m, int by_key) {
    size_t cap = m->cap * 2;
    held_t **slots = calloc(cap, sizeof(held_t *));
    if (!slots) return; /* longer chains, still correct */
    for (size_t i = 0; i < m->cap; i++) {
        held_t *h = m->slots[i];
        while (h) {
            held_t *next = *link_of(h, by_key);
            held_t **c = &slots[hash_str(name_of(h, by_key)) & (cap - 1)];
            *link_of(h, by_key) = *c;
            *c = h;
            h = next;
        }
    }
    free(m->slots);
    m->slots = slots;
    m->cap = cap;
}

static void map_put(map_t *m, held_t *h, int by_key) {
    if (m->n >= m->cap) map_grow(m, by_key);
    held_t **c = chain_of(m, name_of(h, by_key));
    *link_of(h, by_key) = *c;
    *c = h;
    m->n++;
}

static void map_del(map_t *m, held_t *h, int by_key) {
    for (held_t **p = chain_of(m, name_of(h, by_key)); *p; p = link_of(*p, by_key)) {
        if (*p != h) continue;
        *p = *link_of(h, by_key);
        m->n--;
        return;
    }
}

static held_t *find_tag(amqp_broker_t *b, const char *tag) {
    for (held_t *h = *chain_of(&b->by_tag, tag); h; h = h->next_tag)
        if (strcmp(h->tag, tag) == 0) return h;
    return NULL;
}

/* A held message of this task that lost its delivery in a reconnect. */
static held_t *find_stale(amqp_broker_t *b, const char *key) {
    for (held_t *h = *chain_of(&b->by_key, key); h; h = h->next_key)
        if (h->stale && strcmp(h->key, key) == 0) return h;
    return NULL;
}

static void held_free(amqp_broker_t *b, held_t *h) {
    map_del(&b->by_tag, h, 0);
    if (h->key) map_del(&b->by_key, h, 1);
    if (!h->stale) b->live--;
    free(h->key);
    free(h);
}

/* ---- tasks finished here ----------------------------------------------- */

static void done_add(amqp_broker_t *b, const char *key) {
    if (!key || !b->done_set || json_object_get(b->done_set, key)) return;
    char *k = strdup(key);
    if (!k) return;
    char *old = b->done_ring[b->done_next];
    if (old) {
        json_object_del(b->done_set, old);
        free(old);
    }
    b->done_ring[b->done_next] = k;
    b->done_next = (b->done_next + 1) % DONE_KEYS;
    json_object_set_new(b->done_set, k, json_true());
}

static int done_has(amqp_broker_t *b, const char *key) {
    return b->done_set && json_object_get(b->done_set, key) != NULL;
}

/* "<id>/<retries>" from the headers (protocol 2), or 0. A retry is a new
 * message with the same id and retries + 1: a different key. */
static int task_key(const cel_amqp_delivery_t *d, char *out, size_t size) {
    const char *id = json_string_value(json_object_get(d->headers, "id"));
    if (!id || !*id) return 0;
    json_t *r = json_object_get(d->headers, "retries");
    long long retries = json_is_integer(r) ? (long long)json_integer_value(r) : 0;
    int n = snprintf(out, size, "%s/%lld", id, retries);
    return n > 0 && (size_t)n < size;
}

/* ---- the prefetch window ----------------------------------------------- */

/* The window follows held + capacity with some slack: raised to want +
 * slack as soon as want passes it, lowered to want + slack once it has
 * stayed more than 2 x slack above want for QOS_LOWER_MS. held swings by a
 * window's worth as tasks finish and their acks go out, and basic.qos is a
 * round trip the broker also pays for, so a steady stream of tasks sends
 * none (lowering at once sent one per two or three tasks). The slack is
 * what may wait here unacked beyond the consumer's reserve: a quarter of
 * the window, more for at most QOS_LOWER_MS after a burst. */
static int qos_slack(const amqp_broker_t *b) {
    int limit = b->cfg->prefetch_multiplier * b->cfg->concurrency;
    return limit / 4 > 1 ? limit / 4 : 1;
}

static int qos_want(amqp_broker_t *b) {
    int cap = b->cbs.capacity(b->priv);
    int want = b->live + (cap > 0 ? cap : 0);
    return want < 1 ? 1 : want; /* 0 would mean no limit at all */
}

static void on_qos_timer(uv_timer_t *t) {
    amqp_broker_t *b = t->data;
    if (b->stopped || b->closing || !cel_amqp_up(b->conn) || b->qos_sent == 0) return;
    int want = qos_want(b), slack = qos_slack(b);
    if (b->qos_sent - want > 2 * slack) {
        cel_amqp_qos(b->conn, want + slack);
        b->qos_sent = want + slack;
    }
}

static void update_qos(amqp_broker_t *b) {
    if (b->stopped || b->closing || !cel_amqp_up(b->conn)) return;
    int want = qos_want(b), slack = qos_slack(b);
    if (b->qos_sent == 0) {
        cel_amqp_qos(b->conn, want);
        b->qos_sent = want;
    } else if (want > b->qos_sent) {
        cel_amqp_qos(b->conn, want + slack);
        b->qos_sent = want + slack;
    } else if (b->qos_sent - want > 2 * slack && !uv_is_active((uv_handle_t *)&b->qos_timer)) {
        uv_timer_start(&b->qos_timer, on_qos_timer, QOS_LOWER_MS, 0);
    }
}

/* ---- receiving --------------------------------------------------------- */

static void hand_over(amqp_broker_t *b, cel_amqp_delivery_t *d) {
    held_t *h = calloc(1, sizeof(*h));
    char key[KEY_MAX];
    if (h && task_key(d, key, sizeof(key)) && !(h->key = strdup(key))) {
        free(h);
        h = NULL;
    }
    if (!h) {
        /* Left unacked: the broker delivers it again after a reconnect. */
        cel_error("broker: out of memory holding a message from '%s'", d->queue);
        cel_amqp_delivery_free(d);
        return;
    }
    h->gen = d->gen;
    h->dtag = d->tag;
    snprintf(h->tag, sizeof(h->tag), "%" PRIu64 ".%" PRIu64, d->gen, d->tag);
    map_put(&b->by_tag, h, 0);
    if (h->key) map_put(&b->by_key, h, 1);
    b->live++;
    cel_broker_msg_t m = { h->tag, d->queue, (const char *)d->body, d->len, d };
    b->cbs.on_message(b->priv, &m);
    cel_amqp_delivery_free(d);
}

static void drain(amqp_broker_t *b) {
    while (b->fifo_head && !b->stopped && b->cbs.capacity(b->priv) > 0) {
        fifo_item_t *it = b->fifo_head;
        b->fifo_head = it->next;
        if (!b->fifo_head) b->fifo_tail = NULL;
        b->fifo_n--;
        cel_amqp_delivery_t *d = it->d;
        free(it);
        if (d->gen != cel_amqp_generation(b->conn)) { /* from a dead connection */
            cel_amqp_delivery_free(d);
            continue;
        }
        hand_over(b, d);
    }
}

static void give_back(amqp_broker_t *b, cel_amqp_delivery_t *d) {
    cel_amqp_reject(b->conn, d->gen, d->tag, 1, NULL, NULL);
    cel_amqp_delivery_free(d);
}

static void on_delivery(void *priv, cel_amqp_delivery_t *d) {
    amqp_broker_t *b = priv;
    if (b->stopped) {
        give_back(b, d); /* came after basic.cancel: back to the queue */
        return;
    }
    char key[KEY_MAX];
    if (d->redelivered && task_key(d, key, sizeof(key))) {
        held_t *h = find_stale(b, key);
        if (h) {
            /* Still held by the consumer from before the reconnect: this
             * delivery is the one its ack will settle. */
            cel_debug("broker: %s redelivered after a reconnect; adopted by its running request",
                      key);
            h->gen = d->gen;
            h->dtag = d->tag;
            h->stale = 0;
            b->live++;
            cel_amqp_delivery_free(d);
            update_qos(b);
            return;
        }
        if (done_has(b, key)) {
            cel_info("broker: task %s was finished and stored here before the reconnect; "
                     "its redelivery is acked without running it again",
                     key);
            cel_amqp_ack(b->conn, d->gen, d->tag, NULL, NULL);
            cel_amqp_delivery_free(d);
            return;
        }
    }
    fifo_item_t *it = malloc(sizeof(*it));
    if (!it) {
        cel_error("broker: out of memory; a message waits for the next connection");
        cel_amqp_delivery_free(d);
        return;
    }
    it->d = d;
    it->next = NULL;
    if (b->fifo_tail) b->fifo_tail->next = it;
    else b->fifo_head = it;
    b->fifo_tail = it;
    b->fifo_n++;
    drain(b);
}

static void drop_fifo(amqp_broker_t *b, int requeue) {
    while (b->fifo_head) {
        fifo_item_t *it = b->fifo_head;
        b->fifo_head = it->next;
        if (requeue && it->d->gen == cel_amqp_generation(b->conn)) give_back(b, it->d);
        else cel_amqp_delivery_free(it->d);
        free(it);
    }
    b->fifo_tail = NULL;
    b->fifo_n = 0;
}

static void on_state(void *priv, int up) {
    amqp_broker_t *b = priv;
    cel_metrics_broker_state(up);
    if (!up) {
        /* The broker took back every unacked delivery of that connection. */
        for (size_t i = 0; i < b->by_tag.cap; i++)
            for (held_t *h = b->by_tag.slots[i]; h; h = h->next_tag)
                if (!h->stale) h->stale = 1;
        b->live = 0;
        drop_fifo(b, 0);
        if (!b->closing) cel_warn("broker: connection lost; reconnecting");
    } else {
        b->qos_sent = 0;
        update_qos(b);
    }
    if (b->cbs.on_state && !b->closing) b->cbs.on_state(b->priv, up);
}

/* ---- queues ------------------------------------------------------------ */

/* kombu's declarations for a task queue created from -Q (celery/app/amqp.py
 * Queues.new_missing: Queue(name, Exchange(name, 'direct'), name)), and for
 * the direct queue (worker_direct: Queue('<node>.dq2', Exchange('C.dq2'),
 * '<node>'), see cel_options_queue_route). */
static int declare_queue(amqp_broker_t *b, const char *q) {
    json_t *args = NULL;
    const char *ex, *rk;
    cel_options_queue_route(b->cfg, q, &ex, &rk);
    if (b->cfg->max_priority > 0) args = json_pack("{s:i}", "x-max-priority", b->cfg->max_priority);
    int rc = cel_amqp_declare_exchange(b->conn, ex, "direct", 1, 0);
    if (rc == CEL_OK) rc = cel_amqp_declare_queue(b->conn, q, 1, 0, args);
    if (rc == CEL_OK) rc = cel_amqp_bind(b->conn, q, ex, rk);
    if (rc == CEL_OK) rc = cel_amqp_consume(b->conn, q, 0);
    json_decref(args);
    return rc;
}

static int amqp_add_queue(void *impl, const char *queue) {
    amqp_broker_t *b = impl;
    for (int i = 0; i < b->nqueues; i++)
        if (strcmp(b->queues[i], queue) == 0) return CEL_OK;
    if (b->nqueues >= CEL_MAX_QUEUES || strlen(queue) > 200) return CEL_ELIMIT;
    if (!(b->queues[b->nqueues] = strdup(queue))) return CEL_ENOMEM;
    int rc = declare_queue(b, queue);
    if (rc != CEL_OK) {
        free(b->queues[b->nqueues]);
        return rc;
    }
    b->nqueues++;
    return CEL_OK;
}

static int amqp_cancel_queue(void *impl, const char *queue) {
    amqp_broker_t *b = impl;
    for (int i = 0; i < b->nqueues; i++) {
        if (strcmp(b->queues[i], queue) != 0) continue;
        cel_amqp_cancel(b->conn, queue);
        free(b->queues[i]);
        memmove(b->queues + i, b->queues + i + 1,
                sizeof(b->queues[0]) * (size_t)(b->nqueues - i - 1));
        b->nqueues--;
        return CEL_OK;
    }
    return CEL_ENOTFOUND;
}

static json_t *amqp_queues(const void *impl) {
    const amqp_broker_t *b = impl;
    json_t *a = json_array();
    for (int i = 0; i < b->nqueues; i++) json_array_append_new(a, json_string(b->queues[i]));
    return a;
}

/* ---- open / close ------------------------------------------------------ */

static cel_amqp_conf_t conf_for(const cel_options_t *cfg, const char *name, int confirm) {
    cel_amqp_conf_t c = { 0 };
    c.url = &cfg->amqp;
    c.name = name;
    c.ssl_ca = cfg->ssl_ca;
    c.ssl_cert = cfg->ssl_cert;
    c.ssl_key = cfg->ssl_key;
    c.ssl_verify = !cfg->ssl_no_verify;
    c.heartbeat = (int)cfg->broker_heartbeat;
    c.confirm = confirm;
    c.max_body = (size_t)cfg->max_message_size;
    return c;
}

static void broker_free(amqp_broker_t *b) {
    for (int i = 0; i < b->nqueues; i++) free(b->queues[i]);
    for (size_t i = 0; i < b->by_tag.cap; i++) {
        held_t *h = b->by_tag.slots[i];
        while (h) {
            held_t *next = h->next_tag;
            free(h->key);
            free(h);
            h = next;
        }
    }
    free(b->by_tag.slots);
    free(b->by_key.slots);
    for (int i = 0; i < DONE_KEYS; i++) free(b->done_ring[i]);
    json_decref(b->done_set);
    json_decref(b->pub_declared);
    free(b);
}

static void *amqp_open(uv_loop_t *loop, const cel_options_t *cfg, const cel_broker_cbs_t *cbs,
                       void *priv, cel_err_t *err) {
    amqp_broker_t *b = calloc(1, sizeof(*b));
    if (!b) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    b->loop = loop;
    b->cfg = cfg;
    b->cbs = *cbs;
    b->priv = priv;
    b->done_set = json_object();
    b->pub_declared = json_object();
    if (map_init(&b->by_tag) != CEL_OK || map_init(&b->by_key) != CEL_OK || !b->done_set ||
        !b->pub_declared) {
        broker_free(b);
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    cel_amqp_conf_t conf = conf_for(cfg, "broker", 0);
    cel_amqp_cbs_t acbs = { on_state, on_delivery };
    if (!(b->conn = cel_amqp_new(loop, &conf, &acbs, b, err))) {
        broker_free(b);
        return NULL;
    }
    uv_timer_init(loop, &b->qos_timer);
    b->qos_timer.data = b;
    /* The window before any consumer (amqp_conn declares it first on every
     * connect, too). */
    int cap = cbs->capacity(priv);
    cel_amqp_qos(b->conn, cap > 0 ? cap : 1);
    for (int q = 0; q < cfg->nqueues; q++)
        if (amqp_add_queue(b, cfg->queues[q]) != CEL_OK)
            cel_error("broker: out of memory declaring queue '%s'; not consumed", cfg->queues[q]);
    return b;
}

static void close_step(void *priv) {
    amqp_broker_t *b = priv;
    if (--b->closing_left > 0) return;
    void (*cb)(void *) = b->on_closed;
    void *cp = b->closed_priv;
    broker_free(b);
    if (cb) cb(cp);
}

static void on_qos_timer_closed(uv_handle_t *h) { close_step(h->data); }

static void amqp_close(void *impl, void (*on_closed)(void *), void *priv) {
    amqp_broker_t *b = impl;
    b->closing = 1;
    b->stopped = 1;
    b->on_closed = on_closed;
    b->closed_priv = priv;
    drop_fifo(b, 1);
    b->closing_left = b->pub ? 3 : 2;
    uv_close((uv_handle_t *)&b->qos_timer, on_qos_timer_closed);
    cel_amqp_close(b->conn, close_step, b);
    if (b->pub) cel_amqp_close(b->pub, close_step, b);
}

static void amqp_stop(void *impl) {
    amqp_broker_t *b = impl;
    if (b->stopped) return;
    b->stopped = 1;
    for (int i = 0; i < b->nqueues; i++) cel_amqp_cancel(b->conn, b->queues[i]);
    drop_fifo(b, 1);
}

static void amqp_kick(void *impl) {
    amqp_broker_t *b = impl;
    drain(b);
    update_qos(b);
}

static int amqp_pending(const void *impl) {
    const amqp_broker_t *b = impl;
    return cel_amqp_pending(b->conn) + (b->pub ? cel_amqp_pending(b->pub) : 0);
}

/* ---- settling ---------------------------------------------------------- */

static void amqp_ack(void *impl, const char *tag, cel_broker_done_fn done, void *priv) {
    amqp_broker_t *b = impl;
    held_t *h = find_tag(b, tag);
    if (!h) {
        if (done) done(priv, 0);
        return;
    }
    done_add(b, h->key);
    if (h->stale) {
        /* Its connection is gone: the broker already gave it back. If it
         * comes back to us, done_add above acks it without a second run. */
        held_free(b, h);
        if (done) done(priv, 0);
        return;
    }
    uint64_t gen = h->gen, dtag = h->dtag;
    held_free(b, h);
    cel_amqp_ack(b->conn, gen, dtag, done, priv);
    update_qos(b); /* lowered once it is well above what is held + free */
}

static void amqp_requeue(void *impl, const char *tag, cel_broker_done_fn done, void *priv) {
    amqp_broker_t *b = impl;
    held_t *h = find_tag(b, tag);
    if (!h) {
        if (done) done(priv, 0);
        return;
    }
    if (h->stale) { /* back in its queue already */
        held_free(b, h);
        if (done) done(priv, 1);
        return;
    }
    uint64_t gen = h->gen, dtag = h->dtag;
    held_free(b, h);
    cel_amqp_reject(b->conn, gen, dtag, 1, done, priv);
}

static double amqp_touch_interval(const void *impl) { return 0; }

static void amqp_touch(void *impl, const char **tags, int n) {}

/* ---- decoding ---------------------------------------------------------- */

static int amqp_decode(const cel_broker_msg_t *m, size_t max_body, cel_task_t **out,
                       cel_err_t *err) {
    const cel_amqp_delivery_t *d = m->parts;
    *out = NULL;
    if (!d->headers || !d->props)
        return cel_err_set(err, CEL_EPROTO, "unreadable message properties: %s", d->bad_headers);
    if (!d->body) return cel_err_set(err, CEL_ELIMIT, "message body of %zu bytes", d->len);
    json_t *dinfo = json_pack("{s:s, s:s, s:b}", "exchange", d->exchange, "routing_key",
                              d->routing_key, "redelivered", d->redelivered);
    if (!dinfo) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    int rc = cel_task_decode_parts_max(
        d->headers, d->props, dinfo, d->body, d->len, max_body,
        json_string_value(json_object_get(d->props, "content_type")),
        json_string_value(json_object_get(d->props, "content_encoding")), out, err);
    json_decref(dinfo);
    return rc;
}

static int amqp_peek(const cel_broker_msg_t *m, cel_peek_t *out, cel_err_t *err) {
    const cel_amqp_delivery_t *d = m->parts;
    return cel_peek_amqp(d->headers, d->props, out, err);
}

/* ---- publishing -------------------------------------------------------- */

/* Before the first message to a queue through the default exchange, the
 * queue is declared as Celery's send_task_message declares the queue it
 * routes to (with the same arguments our consumer uses), so a message for
 * a queue no worker has declared yet is kept, not dropped as unroutable. */
static int declare_target(amqp_broker_t *b, const char *queue) {
    if (json_object_get(b->pub_declared, queue)) return CEL_OK;
    if (json_object_size(b->pub_declared) >= PUB_DECLARED_MAX) return CEL_OK; /* no more */
    json_t *args = b->cfg->max_priority > 0
                       ? json_pack("{s:i}", "x-max-priority", b->cfg->max_priority)
                       : NULL;
    int rc = cel_amqp_declare_exchange(b->pub, queue, "direct", 1, 0);
    if (rc == CEL_OK) rc = cel_amqp_declare_queue(b->pub, queue, 1, 0, args);
    if (rc == CEL_OK) rc = cel_amqp_bind(b->pub, queue, queue, queue);
    json_decref(args);
    if (rc == CEL_OK) json_object_set_new(b->pub_declared, queue, json_true());
    return rc;
}

static void amqp_publish(void *impl, const cel_broker_out_t *m, cel_broker_done_fn done,
                         void *priv) {
    amqp_broker_t *b = impl;
    const char *ex = m->exchange ? m->exchange : "";
    const char *rk = m->routing_key ? m->routing_key : "";
    if (!ex[0] && !rk[0]) {
        cel_error("broker: a message for the default exchange needs a routing key");
        if (done) done(priv, 0);
        return;
    }
    if (!b->pub) {
        cel_amqp_conf_t conf = conf_for(b->cfg, "broker-publish", 1);
        cel_amqp_cbs_t acbs = { NULL, NULL };
        cel_err_t err;
        if (b->closing || !(b->pub = cel_amqp_new(b->loop, &conf, &acbs, b, &err))) {
            if (!b->closing) cel_error("broker: cannot publish: %s", err.msg);
            if (done) done(priv, 0);
            return;
        }
    }
    if (!ex[0] && strlen(rk) <= 200 && declare_target(b, rk) != CEL_OK) {
        if (done) done(priv, 0);
        return;
    }
    cel_amqp_publish(b->pub, m, done, priv);
}

const cel_broker_ops_t cel_broker_amqp_ops = {
    .abi = CEL_BROKER_ABI,
    .scheme = "amqp",
    .open = amqp_open,
    .decode = amqp_decode,
    .peek = amqp_peek,
    .kick = amqp_kick,
    .ack = amqp_ack,
    .requeue = amqp_requeue,
    .touch_interval = amqp_touch_interval,
    .touch = amqp_touch,
    .stop = amqp_stop,
    .pending = amqp_pending,
    .add_queue = amqp_add_queue,
    .cancel_queue = amqp_cancel_queue,
    .queues = amqp_queues,
    .close = amqp_close,
    .publish = amqp_publish,
};
