/* pidbox.c -- remote control over Redis: receive broadcasts, dispatch, reply.
 *
 * Two connections: "pidbox" is in subscribe mode (PSUBSCRIBE), "pidbox-reply"
 * registers our queue binding as kombu does (SADD _kombu.binding.celery.pidbox)
 * and sends replies: SMEMBERS of the reply exchange's binding set, then LPUSH
 * of the envelope to each queue whose routing key equals reply_to's. Handlers
 * run synchronously on the loop, so a reply never waits for an executor.
 * Matches kombu/pidbox.py (Node.handle_message, dispatch, Mailbox._publish_reply)
 * and celery/worker/pidbox.py (clock forwarded on every request).
 */
#include "pidbox.h"

#include <fnmatch.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../protocol/protocol.h"
#include "../common/log.h"
#include "redis.h"

struct cel_pidbox {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_events_t *ev;
    cel_pidbox_handler handler;
    void *priv;
    cel_redis_t *sub;
    cel_redis_t *cmd;
    char channel[64];
    int stopped;
    int closing_left;
    void (*on_closed)(void *);
    void *closed_priv;
};

typedef struct reply_ctx {
    cel_pidbox_t *pb;
    char routing_key[CEL_PIDBOX_NAME_MAX + 1];
    char *envelope;
} reply_ctx_t;

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

static void on_lpush(cel_redis_t *r, redisReply *reply, void *priv) {
    if (reply && reply->type == REDIS_REPLY_ERROR) cel_error("pidbox: reply LPUSH: %s", reply->str);
}

/* kombu binding members are "<routing key>\x06\x16<pattern>\x06\x16<queue>". */
static void on_bindings(cel_redis_t *r, redisReply *reply, void *priv) {
    reply_ctx_t *rc = priv;
    size_t rklen = strlen(rc->routing_key);
    int sent = 0;
    if (reply && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < reply->elements && i < CEL_PIDBOX_MAX_BINDINGS; i++) {
            redisReply *m = reply->element[i];
            if (m->type != REDIS_REPLY_STRING) continue;
            if (m->len < rklen + 4 || memcmp(m->str, rc->routing_key, rklen) != 0 ||
                memcmp(m->str + rklen, "\x06\x16", 2) != 0)
                continue;
            const char *rest = m->str + rklen + 2;
            size_t restlen = m->len - rklen - 2;
            const char *sep = memmem(rest, restlen, "\x06\x16", 2);
            if (!sep) continue;
            const char *q = sep + 2;
            size_t qlen = restlen - (size_t)(q - rest);
            if (qlen == 0) continue;
            const char *argv[] = { "LPUSH", q, rc->envelope };
            size_t lens[] = { 5, qlen, strlen(rc->envelope) };
            if (cel_redis_command(rc->pb->cmd, on_lpush, NULL, 3, argv, lens) == CEL_OK) sent++;
        }
    }
    if (!sent) cel_debug("pidbox: no reply queue bound for %s; reply dropped", rc->routing_key);
    free(rc->envelope);
    free(rc);
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
    char *b64 = cel_base64_encode((const uint8_t *)text, strlen(text));
    free(text);
    char tag[37];
    cel_events_uuid(tag);
    json_t *env = json_pack(
        "{s:s?, s:s, s:s, s:{s:s, s:I}, s:{s:i, s:{s:s, s:s}, s:i, s:s, s:s}}", "body", b64,
        "content-encoding", "utf-8", "content-type", "application/json", "headers", "ticket",
        ticket, "clock", (json_int_t)cel_events_clock_forward(pb->ev), "properties",
        "delivery_mode", 1, "delivery_info", "exchange", exchange, "routing_key", routing_key,
        "priority", 0, "body_encoding", "base64", "delivery_tag", tag);
    free(b64);
    reply_ctx_t *rc = calloc(1, sizeof(*rc));
    if (!rc || !env || !(rc->envelope = cel_json_dumps(env, NULL))) {
        json_decref(env);
        free(rc);
        cel_error("pidbox: out of memory building a reply");
        return;
    }
    json_decref(env);
    rc->pb = pb;
    snprintf(rc->routing_key, sizeof(rc->routing_key), "%s", routing_key);
    char key[CEL_PIDBOX_NAME_MAX + 32];
    snprintf(key, sizeof(key), "_kombu.binding.%s", exchange);
    const char *argv[] = { "SMEMBERS", key };
    if (cel_redis_command(pb->cmd, on_bindings, rc, 2, argv, NULL) != CEL_OK) {
        cel_error("pidbox: broker connection down; reply to %s dropped", routing_key);
        free(rc->envelope);
        free(rc);
    }
}

static int short_string(json_t *v) {
    return json_is_string(v) && json_string_length(v) <= CEL_PIDBOX_NAME_MAX;
}

/* Decodes the envelope's body into a JSON object (new reference) or NULL. */
static json_t *decode_body(json_t *env, cel_err_t *err) {
    json_t *props = json_object_get(env, "properties");
    const char *benc = json_string_value(json_object_get(props, "body_encoding"));
    const char *ctype = json_string_value(json_object_get(env, "content-type"));
    json_t *jbody = json_object_get(env, "body");
    if (!json_is_string(jbody)) {
        cel_err_set(err, CEL_EPROTO, "envelope has no body string");
        return NULL;
    }
    const char *b = json_string_value(jbody);
    size_t blen = json_string_length(jbody);
    uint8_t *raw = NULL;
    size_t rawlen = blen;
    if (benc && strcmp(benc, "base64") == 0) {
        if (cel_base64_decode(b, blen, &raw, &rawlen, err) != CEL_OK) return NULL;
    } else {
        raw = malloc(blen + 1);
        if (!raw) {
            cel_err_set(err, CEL_ENOMEM, "out of memory decoding a control message body");
            return NULL;
        }
        memcpy(raw, b, blen + 1);
    }
    json_t *body = NULL;
    if (!ctype || strcmp(ctype, "application/json") == 0) {
        json_error_t jerr;
        body = json_loadb((const char *)raw, rawlen, JSON_DECODE_ANY, &jerr);
        if (!body) cel_err_set(err, CEL_EPROTO, "body is not JSON: %s", jerr.text);
    } else if (strcmp(ctype, "application/x-msgpack") == 0) {
        cel_msgpack_to_json(raw, rawlen, &body, err);
    } else {
        cel_err_set(err, CEL_EPROTO, "content type '%.64s' is not accepted", ctype);
    }
    free(raw);
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

static void handle_message(cel_pidbox_t *pb, const char *data, size_t len) {
    cel_events_clock_forward(pb->ev); /* celery/worker/pidbox.py _forward_clock */
    if (len > CEL_PIDBOX_MAX_BYTES) {
        cel_error("pidbox: dropping a control message of %zu bytes (limit %d)", len,
                  CEL_PIDBOX_MAX_BYTES);
        return;
    }
    json_error_t jerr;
    cel_err_t err;
    cel_err_clear(&err);
    json_t *env = json_loadb(data, len, 0, &jerr);
    if (!json_is_object(env)) {
        cel_error("pidbox: dropping a malformed control message (not a kombu envelope): %.*s",
                  (int)(len < 120 ? len : 120), data); /* data is not NUL-terminated */
        json_decref(env);
        return;
    }
    json_t *clock = json_object_get(json_object_get(env, "headers"), "clock");
    if (json_is_integer(clock) && json_integer_value(clock) > 0)
        cel_events_clock_adjust(pb->ev, (uint64_t)json_integer_value(clock));
    json_t *body = decode_body(env, &err);
    json_decref(env);
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

static void on_pmessage(cel_redis_t *r, redisReply *reply, void *priv) {
    cel_pidbox_t *pb = priv;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 4) return;
    redisReply *kind = reply->element[0], *data = reply->element[3];
    if (kind->type != REDIS_REPLY_STRING || strcmp(kind->str, "pmessage") != 0) return;
    if (data->type != REDIS_REPLY_STRING || pb->stopped) return;
    handle_message(pb, data->str, data->len);
}

static void on_sub_state(cel_redis_t *r, int up, void *priv) {
    cel_pidbox_t *pb = priv;
    if (up && cel_redis_psubscribe(r, pb->channel, on_pmessage, pb) != CEL_OK)
        cel_error("pidbox: cannot subscribe to %s", pb->channel);
}

static void on_bound(cel_redis_t *r, redisReply *reply, void *priv) {
    if (reply && reply->type == REDIS_REPLY_ERROR) cel_error("pidbox: binding: %s", reply->str);
}

/* Declares our queue's binding as kombu's queue_bind does (informational on
 * Redis: fanout goes through PUBLISH, but tools list bindings). */
static void bind_queue(cel_pidbox_t *pb, const char *verb) {
    char member[400];
    int n = snprintf(member, sizeof(member), "\x06\x16\x06\x16%s.celery.pidbox", pb->cfg->hostname);
    const char *argv[] = { verb, "_kombu.binding.celery.pidbox", member };
    size_t lens[] = { 4, 28, (size_t)n };
    cel_redis_command(pb->cmd, on_bound, pb, 3, argv, lens);
}

static void on_cmd_state(cel_redis_t *r, int up, void *priv) {
    cel_pidbox_t *pb = priv;
    if (up && !pb->stopped) bind_queue(pb, "SADD");
}

cel_pidbox_t *cel_pidbox_new(uv_loop_t *loop, const cel_options_t *cfg, cel_events_t *ev,
                             cel_pidbox_handler handler, void *priv) {
    cel_pidbox_t *pb = calloc(1, sizeof(*pb));
    if (!pb) return NULL;
    pb->loop = loop;
    pb->cfg = cfg;
    pb->ev = ev;
    pb->handler = handler;
    pb->priv = priv;
    snprintf(pb->channel, sizeof(pb->channel), "/%d.celery.pidbox", cfg->broker.db);
    pb->cmd = cel_redis_new(loop, &cfg->broker, "pidbox-reply", NULL, 0, on_cmd_state, pb);
    pb->sub = cel_redis_new(loop, &cfg->broker, "pidbox", NULL, 0, on_sub_state, pb);
    if (!pb->cmd || !pb->sub) return NULL; /* out of memory at start-up: the caller exits */
    return pb;
}

void cel_pidbox_stop(cel_pidbox_t *pb) {
    if (pb->stopped) return;
    pb->stopped = 1;
    if (cel_redis_up(pb->cmd)) bind_queue(pb, "SREM");
}

static void close_step(void *priv) {
    cel_pidbox_t *pb = priv;
    if (--pb->closing_left > 0) return;
    void (*cb)(void *) = pb->on_closed;
    void *cp = pb->closed_priv;
    free(pb);
    if (cb) cb(cp);
}

void cel_pidbox_close(cel_pidbox_t *pb, void (*on_closed)(void *), void *priv) {
    cel_pidbox_stop(pb);
    pb->on_closed = on_closed;
    pb->closed_priv = priv;
    pb->closing_left = 2;
    cel_redis_close(pb->sub, close_step, pb);
    cel_redis_close(pb->cmd, close_step, pb);
}
