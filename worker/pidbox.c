/* pidbox.c -- remote control: receive broadcasts, dispatch, reply, on any broker.
 *
 * The mailbox of kombu's pidbox Node on the worker's bus (bus.h): the queue
 * "<node>.celery.pidbox" bound to the fanout exchange celery.pidbox
 * (x-message-ttl 300 s, x-expires 10 s: celery/app/control.py's Mailbox),
 * replies published to the direct exchange reply.celery.pidbox with the
 * caller's routing key. On Redis the bus turns these into PSUBSCRIBE and
 * SMEMBERS + LPUSH as kombu does; on AMQP they are real. Handlers run
 * synchronously on the loop, so a reply never waits for an executor.
 * Matches kombu/pidbox.py (Node.handle_message, dispatch,
 * Mailbox._publish_reply) and celery/worker/pidbox.py (clock forwarded on
 * every request). Malformed messages are logged and dropped.
 */
#include "pidbox.h"

#include <fnmatch.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../protocol/protocol.h"
#include "../common/log.h"
#include "bus.h"

struct cel_pidbox {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_events_t *ev;
    cel_pidbox_handler handler;
    void *priv;
    cel_bus_t *bus;            /* NULL in the fuzz harness: replies are built, then dropped */
    void (*on_up)(void *priv); /* once, when first listening */
    int stopped;
    void (*on_closed)(void *);
    void *closed_priv;
};

int cel_pidbox_match(const char *name, const char *pattern, const char *matcher) {
    if (!matcher || strcmp(matcher, "glob") == 0) return fnmatch(pattern, name, 0) == 0;
    if (strcmp(matcher, "pcre") != 0) return CEL_ENOTFOUND;
    /* re.match anchors at the start only. The pattern is compiled as it is (so
     * an unbalanced one is refused rather than escaping an added anchor) and a
     * match counts when the leftmost match starts at 0: POSIX returns the
     * leftmost match, so one starting at 0 is found whenever it exists. POSIX
     * ERE is close enough for node-name patterns ("w3@.*", "celeriac@(a|b)"). */
    regex_t re;
    if (regcomp(&re, pattern, REG_EXTENDED) != 0) return CEL_EINVAL;
    regmatch_t m;
    int rc = regexec(&re, name, 1, &m, 0) == 0 && m.rm_so == 0;
    regfree(&re);
    return rc;
}

/* Publishes {node: value} (value borrowed) to reply_to with the ticket. */
static void send_reply(cel_pidbox_t *pb, json_t *value, const char *exchange,
                       const char *routing_key, const char *ticket) {
    cel_err_t err;
    json_t *body = json_object();
    json_object_set(body, pb->cfg->hostname, value);
    char *text = cel_json_dumps(body, &err);
    json_decref(body);
    if (!text) {
        /* What a handler returned cannot be JSON: answer as kombu would fail. */
        cel_error("pidbox: cannot encode a reply: %s", err.msg);
        body = json_pack("{s:{s:s}}", pb->cfg->hostname, "error", err.msg);
        text = body ? cel_json_dumps(body, NULL) : NULL;
        json_decref(body);
        if (!text) return;
    }
    json_t *headers = json_pack("{s:s, s:I}", "ticket", ticket, "clock",
                                (json_int_t)cel_events_clock_forward(pb->ev));
    if (!headers) {
        free(text);
        cel_error("pidbox: out of memory building a reply");
        return;
    }
    if (!pb->bus || !cel_bus_up(pb->bus)) {
        cel_error("pidbox: broker connection down; reply to %s dropped", routing_key);
    } else {
        /* kombu's _publish_reply: a transient direct exchange, delivery_mode 1 */
        cel_bus_exchange_t ex = { exchange, "direct", 0, 0 };
        cel_broker_out_t m = { .exchange = exchange,
                               .routing_key = routing_key,
                               .headers = headers,
                               .content_type = "application/json",
                               .content_encoding = "utf-8",
                               .body = text,
                               .body_len = strlen(text),
                               .priority = 0,
                               .persistent = 0 };
        cel_bus_publish(pb->bus, &ex, &m, NULL, NULL);
    }
    json_decref(headers);
    free(text);
}

static int short_string(json_t *v) {
    return json_is_string(v) && json_string_length(v) <= CEL_PIDBOX_NAME_MAX;
}

/* Decodes a request's body into a JSON object (new reference) or NULL. */
static json_t *decode_body(const cel_bus_msg_t *m, cel_err_t *err) {
    const char *ctype = m->content_type;
    json_t *body = NULL;
    if (!ctype || strcmp(ctype, "application/json") == 0) {
        json_error_t jerr;
        body = json_loadb((const char *)m->body, m->len, JSON_DECODE_ANY, &jerr);
        if (!body) cel_err_set(err, CEL_EPROTO, "body is not JSON: %s", jerr.text);
    } else if (strcmp(ctype, "application/x-msgpack") == 0) {
        cel_msgpack_to_json(m->body, m->len, &body, err);
    } else {
        cel_err_set(err, CEL_EPROTO, "content type '%.64s' is not accepted", ctype);
    }
    if (body && !json_is_object(body)) {
        cel_err_set(err, CEL_EPROTO, "body is not a mapping");
        json_decref(body);
        body = NULL;
    }
    return body;
}

/* Node.handle_message: is this request for us? */
static int for_us(cel_pidbox_t *pb, json_t *body) {
    json_t *dest = json_object_get(body, "destination");
    if (json_is_array(dest) && json_array_size(dest) > 0) {
        size_t i;
        json_t *d;
        json_array_foreach(dest, i, d) {
            if (i >= CEL_PIDBOX_MAX_DEST) break;
            if (json_is_string(d) && strcmp(json_string_value(d), pb->cfg->hostname) == 0) return 1;
        }
        return 0;
    }
    const char *pattern = json_string_value(json_object_get(body, "pattern"));
    const char *matcher = json_string_value(json_object_get(body, "matcher"));
    if (pattern && *pattern && matcher && *matcher) {
        int m = cel_pidbox_match(pb->cfg->hostname, pattern, matcher);
        if (m < 0)
            cel_error("Control command error: %s matcher '%.64s' for pattern '%.64s'",
                      m == CEL_ENOTFOUND ? "No matcher installed for" : "bad pattern,", matcher,
                      pattern);
        return m == 1;
    }
    return 1;
}

/* One request, its clock already forwarded. */
static void handle_request(cel_pidbox_t *pb, const cel_bus_msg_t *m) {
    cel_err_t err;
    cel_err_clear(&err);
    json_t *clock = json_object_get(m->headers, "clock");
    if (json_is_integer(clock) && json_integer_value(clock) > 0)
        cel_events_clock_adjust(pb->ev, (uint64_t)json_integer_value(clock));
    json_t *body = decode_body(m, &err);
    if (!body) {
        cel_error("pidbox: dropping a control message: %s", err.msg);
        return;
    }
    const char *method = json_string_value(json_object_get(body, "method"));
    if (!method || strlen(method) > CEL_PIDBOX_NAME_MAX) {
        cel_error("pidbox: dropping a control message without a method");
        json_decref(body);
        return;
    }
    if (!for_us(pb, body)) {
        json_decref(body);
        return;
    }
    json_t *args = json_object_get(body, "arguments");
    json_t *reply_to = json_object_get(body, "reply_to");
    json_t *ticket = json_object_get(body, "ticket");
    json_t *exch = json_object_get(reply_to, "exchange");
    json_t *rk = json_object_get(reply_to, "routing_key");
    cel_debug("pidbox received method %s [reply_to:%s ticket:%s]", method,
              json_string_value(rk) ? json_string_value(rk) : "None",
              json_string_value(ticket) ? json_string_value(ticket) : "None");
    json_t *empty = NULL;
    if (!json_is_object(args)) args = empty = json_object();
    json_t *value = pb->handler(pb->priv, method, args);
    json_decref(empty);
    if (value && json_is_object(reply_to) && short_string(exch) && short_string(rk) &&
        short_string(ticket))
        send_reply(pb, value, json_string_value(exch), json_string_value(rk),
                   json_string_value(ticket));
    json_decref(value);
    json_decref(body);
}

/* A request as a kombu Redis envelope (data not NUL-terminated): the same
 * path the Redis bus takes, in one function, for tests/fuzz/fuzz_pidbox.c
 * (which includes this file; the worker itself does not call it). */
__attribute__((unused)) static void handle_message(cel_pidbox_t *pb, const char *data, size_t len) {
    cel_events_clock_forward(pb->ev); /* celery/worker/pidbox.py _forward_clock */
    if (len > CEL_PIDBOX_MAX_BYTES) {
        cel_error("pidbox: dropping a control message of %zu bytes (limit %d)", len,
                  CEL_PIDBOX_MAX_BYTES);
        return;
    }
    cel_bus_envelope_t e;
    cel_err_t err;
    if (cel_bus_envelope_parse(data, len, &e, &err) != CEL_OK) {
        cel_error("pidbox: dropping a malformed control message (%s)", err.msg);
        return;
    }
    handle_request(pb, &e.msg);
    cel_bus_envelope_free(&e);
}

/* A request from the bus (unwrapped by it on Redis, native on AMQP). */
static void on_request(void *priv, const cel_bus_msg_t *m) {
    cel_pidbox_t *pb = priv;
    if (pb->stopped) return;
    cel_events_clock_forward(pb->ev); /* celery/worker/pidbox.py _forward_clock */
    handle_request(pb, m);
}

static void on_bus_state(void *priv, int up) {
    cel_pidbox_t *pb = priv;
    void (*cb)(void *) = pb->on_up;
    if (!up || !cb) return;
    pb->on_up = NULL;
    cb(pb->priv);
}

cel_pidbox_t *cel_pidbox_new(uv_loop_t *loop, const cel_options_t *cfg, cel_events_t *ev,
                             cel_pidbox_handler handler, void (*on_up)(void *priv), void *priv) {
    cel_pidbox_t *pb = calloc(1, sizeof(*pb));
    if (!pb) return NULL;
    pb->loop = loop;
    pb->cfg = cfg;
    pb->ev = ev;
    pb->handler = handler;
    pb->priv = priv;
    pb->on_up = on_up;
    char queue[CEL_PIDBOX_NAME_MAX + 32];
    snprintf(queue, sizeof(queue), "%s.celery.pidbox", cfg->hostname);
    /* celery/app/control.py Mailbox: queue_ttl 300 s, queue_expires 10 s */
    cel_bus_queue_t q = { { "celery.pidbox", "fanout", 0, 0 }, queue, "", 300.0, 10.0 };
    cel_err_t err;
    if (!(pb->bus = cel_bus_new(loop, cfg, "pidbox", 0, on_bus_state, pb, &err)) ||
        cel_bus_listen(pb->bus, &q, on_request, pb) != CEL_OK)
        return NULL; /* out of memory at start-up: the caller exits */
    return pb;
}

void cel_pidbox_stop(cel_pidbox_t *pb) {
    if (pb->stopped) return;
    pb->stopped = 1;
    if (pb->bus) cel_bus_unlisten(pb->bus);
}

static void on_bus_closed(void *priv) {
    cel_pidbox_t *pb = priv;
    void (*cb)(void *) = pb->on_closed;
    void *cp = pb->closed_priv;
    free(pb);
    if (cb) cb(cp);
}

void cel_pidbox_close(cel_pidbox_t *pb, void (*on_closed)(void *), void *priv) {
    cel_pidbox_stop(pb);
    pb->on_closed = on_closed;
    pb->closed_priv = priv;
    cel_bus_close(pb->bus, on_bus_closed, pb);
}
