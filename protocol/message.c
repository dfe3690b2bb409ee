/* message.c -- a Celery task message from a signature, as the 5.2 stock client builds it.
 *
 * cel_message_apply follows one signature through Signature.apply_async
 * (celery/canvas.py: _merge), app.send_task (celery/app/base.py: routing,
 * expires -> expiration), amqp.as_task_v2 (headers in their order, the
 * [args, kwargs, embed] body) and send_task_message + Producer.publish
 * (celery/app/amqp.py, kombu/messaging.py: default exchange for direct
 * routing, delivery_mode, priority, the leftover options that become
 * properties). The result is transport-neutral (cel_msg_t); a transport
 * wraps it (envelope.c for Redis). Ids, time and node names come from
 * cel_send_ctx_t, so tests compare with celery byte for byte. No I/O; main
 * process.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "internal.h"
#include "message.h"

/* Option names that send_task, send_task_message or Producer.publish take
 * as parameters; any other option ends up in the message properties. */
static const char *const consumed[] = {
    /* send_task */
    "countdown", "eta", "task_id", "producer", "connection", "router", "result_cls", "expires",
    "publisher", "link", "link_error", "add_to_parent", "group_id", "group_index", "retries",
    "chord", "reply_to", "time_limit", "soft_time_limit", "root_id", "parent_id", "route_name",
    "shadow", "chain", "task_type", "ignore_result",
    /* send_task_message */
    "exchange", "routing_key", "queue", "event_dispatcher", "retry", "retry_policy", "serializer",
    "delivery_mode", "compression", "declare", "headers", "exchange_type",
    /* Producer.publish */
    "mandatory", "immediate", "priority", "content_type", "content_encoding", "timeout",
    "expiration", NULL
};

static int is_consumed(const char *key) {
    for (int i = 0; consumed[i]; i++)
        if (strcmp(consumed[i], key) == 0) return 1;
    return 0;
}

void cel_msg_free(cel_msg_t *m) {
    if (!m) return;
    free(m->id);
    free(m->name);
    free(m->exchange);
    free(m->exchange_type);
    free(m->routing_key);
    json_decref(m->headers);
    free(m->content_type);
    free(m->content_encoding);
    free(m->body);
    free(m->reply_to);
    json_decref(m->extra);
    free(m->expiration);
    free(m);
}

/* A string option (NULL when missing or None); CEL_EINVAL for another type. */
static int opt_str(json_t *o, const char *key, const char **out, cel_err_t *err) {
    json_t *v = json_object_get(o, key);
    *out = NULL;
    if (!v || json_is_null(v)) return CEL_OK;
    if (!json_is_string(v)) return cel_err_set(err, CEL_EINVAL, "option %s must be a string", key);
    *out = json_string_value(v);
    return CEL_OK;
}

/* A number option; *set 0 when missing or None. */
static int opt_num(json_t *o, const char *key, double *out, int *set, cel_err_t *err) {
    json_t *v = json_object_get(o, key);
    *set = 0;
    *out = 0;
    if (!v || json_is_null(v)) return CEL_OK;
    if (!json_is_number(v)) return cel_err_set(err, CEL_EINVAL, "option %s must be a number", key);
    *out = json_number_value(v);
    *set = 1;
    return CEL_OK;
}

/* Python truthiness of a JSON value. */
static int truthy(json_t *v) {
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_NULL:
    case JSON_FALSE: return 0;
    case JSON_TRUE: return 1;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0;
    case JSON_STRING: return json_string_length(v) > 0;
    case JSON_ARRAY: return json_array_size(v) > 0;
    case JSON_OBJECT: return json_object_size(v) > 0;
    }
    return 0;
}

/* kombu.utils.functional.maybe_list: None stays None, a list as is, any
 * other value in a list of one. New reference (NULL for None). */
static json_t *maybe_list(json_t *v) {
    if (!v || json_is_null(v)) return NULL;
    if (json_is_array(v)) return json_incref(v);
    json_t *a = json_array();
    json_array_append(a, v);
    return a;
}

/* Signature._merge's options: the signature's, updated with the given ones
 * that are not None, except group_id when the signature has one. */
static json_t *merge_options(json_t *own, json_t *given) {
    json_t *o = json_is_object(own) ? json_copy(own) : json_object();
    const char *k;
    json_t *v;
    if (!o) return NULL;
    if (json_is_object(given)) json_object_foreach(given, k, v) {
            if (json_is_null(v)) continue;
            if (strcmp(k, "group_id") == 0 && json_object_get(o, k)) continue;
            json_object_set(o, k, v);
        }
    return o;
}

/* send_task_message + Producer.publish: the option's compression, else the
 * app's default (5.2 reads result_compression there), compresses the body
 * and adds headers.compression (its content type) after the others, as
 * kombu's _prepare does. CEL_EINVAL for a method kombu does not know. */
static int compress_body(cel_msg_t *m, json_t *o, const cel_send_ctx_t *ctx, json_t *h,
                         cel_err_t *err) {
    const char *name;
    int rc = opt_str(o, "compression", &name, err);
    if (rc) return rc;
    if (!name || !*name) name = ctx->compression;
    if (!name || !*name) return CEL_OK;
    cel_compress_t method;
    if (cel_compress_lookup(name, &method, err) != CEL_OK)
        return cel_err_set(err, CEL_EINVAL, "compression %.64s is not supported", name);
    uint8_t *z;
    size_t zn;
    if ((rc = cel_compress_encode(method, (const uint8_t *)m->body, m->body_len, &z, &zn, err)))
        return rc;
    if (json_object_set_new(h, "compression", json_string(cel_compress_content_type(method)))) {
        free(z);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    free(m->body);
    m->body = (char *)z;
    m->body_len = zn;
    return CEL_OK;
}

/* "1795382056.048165" style aware UTC ISO text of now + seconds, counted in
 * whole microseconds as datetime + timedelta does. */
static void iso_after(double now, double seconds, char *buf, size_t size) {
    double us = nearbyint(now * 1e6) + nearbyint(seconds * 1e6);
    cel_time_format_iso8601_utc(us / 1e6, buf, size);
}

int cel_message_apply(json_t *sig, json_t *args, json_t *kwargs, json_t *options, int args_tuple,
                      const cel_send_ctx_t *ctx, cel_msg_t **out, cel_err_t *err) {
    *out = NULL;
    const char *name = json_string_value(json_object_get(sig, "task"));
    json_t *sargs = json_object_get(sig, "args"), *skw = json_object_get(sig, "kwargs");
    json_t *sopts = json_object_get(sig, "options");
    if (!json_is_object(sig) || !name)
        return cel_err_set(err, CEL_EINVAL, "not a task signature (no task name)");
    if ((sargs && !json_is_array(sargs) && !json_is_null(sargs)) ||
        (skw && !json_is_object(skw) && !json_is_null(skw)) ||
        (sopts && !json_is_object(sopts) && !json_is_null(sopts)))
        return cel_err_set(err, CEL_EINVAL,
                           "signature of %.100s: args, kwargs or options of the "
                           "wrong type",
                           name);
    int immutable = json_is_true(json_object_get(sig, "immutable"));

    json_t *a = NULL, *kw = NULL, *o = NULL, *h = NULL, *props_extra = NULL, *embed = NULL;
    json_t *body = NULL;
    char *argsrepr = NULL, *kwargsrepr = NULL;
    cel_msg_t *m = NULL;
    int rc = CEL_ENOMEM;
    char idbuf[37];

    /* _merge: args prepended and kwargs merged unless immutable */
    int prepend = !immutable && json_is_array(args) && json_array_size(args) > 0;
    a = json_array();
    if (!a) goto fail;
    if (prepend) json_array_extend(a, args);
    if (json_is_array(sargs)) json_array_extend(a, sargs);
    int as_tuple = prepend || args_tuple || json_array_size(a) == 0;
    kw = json_is_object(skw) ? json_copy(skw) : json_object();
    if (!kw) goto fail;
    if (!immutable && json_is_object(kwargs)) json_object_update(kw, kwargs);
    o = merge_options(sopts, options);
    if (!o) goto fail;

    /* send_task's parameters */
    const char *task_id, *eta_s, *reply_to, *root_id, *parent_id, *shadow, *group_id;
    const char *queue, *exchange, *routing_key, *exchange_type, *serializer;
    double countdown, time_limit, soft_limit;
    int has_countdown, has_tl, has_stl;
    if ((rc = opt_str(o, "task_id", &task_id, err)) || (rc = opt_str(o, "eta", &eta_s, err)) ||
        (rc = opt_str(o, "reply_to", &reply_to, err)) ||
        (rc = opt_str(o, "root_id", &root_id, err)) ||
        (rc = opt_str(o, "parent_id", &parent_id, err)) ||
        (rc = opt_str(o, "shadow", &shadow, err)) ||
        (rc = opt_str(o, "group_id", &group_id, err)) || (rc = opt_str(o, "queue", &queue, err)) ||
        (rc = opt_str(o, "exchange", &exchange, err)) ||
        (rc = opt_str(o, "routing_key", &routing_key, err)) ||
        (rc = opt_str(o, "exchange_type", &exchange_type, err)) ||
        (rc = opt_str(o, "serializer", &serializer, err)) ||
        (rc = opt_num(o, "countdown", &countdown, &has_countdown, err)) ||
        (rc = opt_num(o, "time_limit", &time_limit, &has_tl, err)) ||
        (rc = opt_num(o, "soft_time_limit", &soft_limit, &has_stl, err)))
        goto fail;
    json_t *gi = json_object_get(o, "group_index"), *ret = json_object_get(o, "retries");
    json_t *pri = json_object_get(o, "priority"), *exp = json_object_get(o, "expires");
    json_t *dm = json_object_get(o, "delivery_mode"), *xh = json_object_get(o, "headers");
    /* send_task: ids not given come from the task running now */
    if (!root_id || !*root_id)
        root_id =
            ctx->parent_root_id && *ctx->parent_root_id ? ctx->parent_root_id : ctx->parent_id;
    if (!parent_id || !*parent_id) parent_id = ctx->parent_id;
    rc = CEL_EINVAL;
    if (gi && !json_is_null(gi) && !json_is_integer(gi)) {
        cel_err_set(err, rc, "option group_index must be an integer");
        goto fail;
    }
    if (ret && !json_is_null(ret) && !json_is_integer(ret)) {
        cel_err_set(err, rc, "option retries must be an integer");
        goto fail;
    }
    if (pri && !json_is_null(pri) && !json_is_integer(pri)) {
        cel_err_set(err, rc, "option priority must be an integer");
        goto fail;
    }
    if (exp && !json_is_null(exp) && !json_is_number(exp) && !json_is_string(exp)) {
        cel_err_set(err, rc, "option expires must be seconds or an ISO 8601 time");
        goto fail;
    }
    if (xh && !json_is_null(xh) && !json_is_object(xh)) {
        cel_err_set(err, rc, "option headers must be a mapping");
        goto fail;
    }
    int persistent = 1;
    if (json_is_integer(dm)) persistent = json_integer_value(dm) != 1;
    else if (json_is_string(dm)) persistent = strcmp(json_string_value(dm), "transient") != 0;
    if (serializer && strcmp(serializer, "json") != 0 && strcmp(serializer, "msgpack") != 0) {
        cel_err_set(err, rc, "serializer %.40s is not supported (json, msgpack)", serializer);
        goto fail;
    }
    rc = CEL_ENOMEM;
    if (!task_id) {
        ctx->new_id(ctx->id_priv, idbuf);
        task_id = idbuf;
    }
    /* expires: seconds from now, or an absolute time; the property is the
     * TTL in ms, 0 when already past (send_task) */
    char expires_iso[48] = { 0 }, expiration[32] = { 0 };
    if (json_is_number(exp)) {
        double s = json_number_value(exp);
        iso_after(ctx->now, s, expires_iso, sizeof(expires_iso));
        snprintf(expiration, sizeof(expiration), "%lld", (long long)((s < 0 ? 0 : s) * 1000));
    } else if (json_is_string(exp)) {
        double at;
        snprintf(expires_iso, sizeof(expires_iso), "%s", json_string_value(exp));
        if (cel_time_parse_iso8601(json_string_value(exp), &at, NULL) != CEL_OK) {
            rc = cel_err_set(err, CEL_EINVAL, "option expires is not an ISO 8601 time");
            goto fail;
        }
        double s = at - ctx->now;
        snprintf(expiration, sizeof(expiration), "%lld", (long long)((s < 0 ? 0 : s) * 1000));
    }
    char eta_iso[48] = { 0 };
    if (has_countdown && countdown != 0) iso_after(ctx->now, countdown, eta_iso, sizeof(eta_iso));
    else if (eta_s) snprintf(eta_iso, sizeof(eta_iso), "%s", eta_s);

    /* argsrepr/kwargsrepr: given in the options, else saferepr's */
    const char *given_ar, *given_kr;
    if ((rc = opt_str(o, "argsrepr", &given_ar, err)) ||
        (rc = opt_str(o, "kwargsrepr", &given_kr, err)))
        goto fail;
    rc = CEL_ENOMEM;
    argsrepr = given_ar ? strdup(given_ar) : cel_saferepr(a, as_tuple, CEL_MESSAGE_REPR_MAX, 3);
    kwargsrepr = given_kr ? strdup(given_kr) : cel_saferepr(kw, 0, CEL_MESSAGE_REPR_MAX, 3);
    if (!argsrepr || !kwargsrepr) goto fail;

    /* as_task_v2's headers, in order */
    h = json_object();
    if (!h) goto fail;
    json_t *tl = json_array();
    json_array_append_new(tl, has_tl ? json_copy(json_object_get(o, "time_limit")) : json_null());
    json_array_append_new(tl,
                          has_stl ? json_copy(json_object_get(o, "soft_time_limit")) : json_null());
    int bad = 0;
    bad |= json_object_set_new(h, "lang", json_string("py"));
    bad |= json_object_set_new(h, "task", json_string(name));
    bad |= json_object_set_new(h, "id", json_string(task_id));
    bad |= json_object_set_new(h, "shadow", shadow ? json_string(shadow) : json_null());
    bad |= json_object_set_new(h, "eta", eta_iso[0] ? json_string(eta_iso) : json_null());
    bad |=
        json_object_set_new(h, "expires", expires_iso[0] ? json_string(expires_iso) : json_null());
    bad |= json_object_set_new(h, "group", group_id ? json_string(group_id) : json_null());
    bad |= json_object_set_new(h, "group_index", json_is_integer(gi) ? json_copy(gi) : json_null());
    bad |= json_object_set_new(h, "retries",
                               json_integer(json_is_integer(ret) ? json_integer_value(ret) : 0));
    bad |= json_object_set_new(h, "timelimit", tl);
    bad |= json_object_set_new(h, "root_id", json_string(root_id && *root_id ? root_id : task_id));
    bad |= json_object_set_new(h, "parent_id", parent_id ? json_string(parent_id) : json_null());
    bad |= json_object_set_new(h, "argsrepr", json_string(argsrepr));
    bad |= json_object_set_new(h, "kwargsrepr", json_string(kwargsrepr));
    bad |= json_object_set_new(h, "origin", json_string(ctx->origin));
    bad |= json_object_set_new(h, "ignore_result",
                               json_boolean(truthy(json_object_get(o, "ignore_result"))));
    if (json_is_object(xh)) bad |= json_object_update(h, xh);
    if (bad) {
        rc = cel_err_set(err, CEL_EINVAL, "a header value is not valid UTF-8");
        goto fail;
    }

    /* the body: (args, kwargs, embed) */
    embed = json_object();
    json_t *cbs = maybe_list(json_object_get(o, "link"));
    json_t *ebs = maybe_list(json_object_get(o, "link_error"));
    json_t *chain = json_object_get(o, "chain"), *chord = json_object_get(o, "chord");
    json_object_set_new(embed, "callbacks", cbs ? cbs : json_null());
    json_object_set_new(embed, "errbacks", ebs ? ebs : json_null());
    json_object_set(embed, "chain", chain ? chain : json_null());
    json_object_set(embed, "chord", chord ? chord : json_null());
    body = json_pack("[OOO]", a, kw, embed);
    if (!body) goto fail;

    m = calloc(1, sizeof(*m));
    if (!m) goto fail;
    int msgpack = serializer && strcmp(serializer, "msgpack") == 0;
    if (msgpack) {
        size_t cap = 0;
        uint8_t *buf = NULL;
        if ((rc = cel_json_to_msgpack(body, &buf, &m->body_len, &cap, err))) goto fail;
        m->body = (char *)buf;
    } else {
        if (!(m->body = cel_json_dumps(body, err))) {
            rc = err ? err->code : CEL_ETYPE;
            goto fail;
        }
        m->body_len = strlen(m->body);
    }
    rc = CEL_ENOMEM;
    m->content_type = strdup(msgpack ? "application/x-msgpack" : "application/json");
    m->content_encoding = strdup(msgpack ? "binary" : "utf-8");
    if ((rc = compress_body(m, o, ctx, h, err))) goto fail;
    rc = CEL_ENOMEM;

    /* send_task_message: direct routing goes to the default exchange with
     * the queue as routing key (task_create_missing_queues: queue q is bound
     * to a direct exchange q with routing key q) */
    const char *qname = queue ? queue : ctx->default_queue;
    const char *xtype = exchange_type ? exchange_type : "direct";
    const char *ex = exchange, *rk = routing_key;
    if ((!ex || !*ex || !rk || !*rk) && strcmp(xtype, "direct") == 0) {
        ex = "", rk = qname;
    } else if (!ex) {
        ex = qname;
        rk = rk && *rk ? rk : qname;
    }
    m->exchange = strdup(ex);
    m->exchange_type = strdup(xtype);
    m->routing_key = strdup(rk ? rk : "");
    m->id = strdup(task_id);
    m->name = strdup(name);
    m->reply_to = strdup(reply_to && *reply_to ? reply_to : ctx->reply_to);
    m->expiration = expiration[0] ? strdup(expiration) : NULL;
    m->priority = json_is_integer(pri) ? (int)json_integer_value(pri) : 0;
    m->persistent = persistent;
    if (!m->content_type || !m->content_encoding || !m->exchange || !m->exchange_type ||
        !m->routing_key || !m->id || !m->name || !m->reply_to || (expiration[0] && !m->expiration))
        goto fail;
    /* what no parameter took becomes a property, in order */
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        if (is_consumed(k)) continue;
        if (!props_extra && !(props_extra = json_object())) goto fail;
        json_object_set(props_extra, k, v);
    }
    m->extra = props_extra;
    props_extra = NULL;
    m->headers = h;
    h = NULL;
    *out = m;
    m = NULL;
    rc = CEL_OK;
fail:
    if (rc == CEL_ENOMEM) cel_err_set(err, CEL_ENOMEM, "out of memory building a task message");
    cel_msg_free(m);
    json_decref(a);
    json_decref(kw);
    json_decref(o);
    json_decref(h);
    json_decref(props_extra);
    json_decref(embed);
    json_decref(body);
    free(argsrepr);
    free(kwargsrepr);
    return rc;
}
