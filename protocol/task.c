/* task.c -- decode a Celery task message into a cel_task_t.
 *
 * Entry points: the kombu Redis envelope (JSON with a base64 body) and the
 * transport-neutral parts (headers, properties, delivery_info, raw body) that
 * AMQP also uses. Protocol 2 is the norm; protocol 1 bodies (a dict holding
 * task/id/args/...) and hybrid ones (v2 headers, dict body with args) are
 * converted as celery/worker/strategy.py proto1_to_proto2 / hybrid_to_proto2
 * do. Everything a task points at lives in its own json_t trees and dies with
 * cel_task_free. A Redis envelope of the usual shape is read by scan.c in one
 * pass (only its body becomes a tree; the strings go into one block with the
 * task); any other, valid or not, is decoded the full way with jansson. No
 * I/O; main process.
 */
#include <stdlib.h>
#include <string.h>

#include "compress.h"
#include "internal.h"
#include "peek.h"

/* Longest argsrepr/kwargsrepr computed for protocol 1 (celery's
 * argsrepr_maxsize). */
#define TASK_REPR_MAX 1024

typedef struct task_impl {
    cel_task_t pub;
    json_t *keep; /* array holding every tree the pointers in pub borrow from */
    char *content_type;
    char *content_encoding;
    char *argsrepr;
    char *kwargsrepr;
} task_impl_t;

void cel_task_free(cel_task_t *task) {
    if (!task) return;
    task_impl_t *t = task->priv_;
    json_decref(t->keep);
    free(t->content_type);
    free(t->content_encoding);
    free(t->argsrepr);
    free(t->kwargsrepr);
    free(t);
}

/* Keeps v alive as long as the task; takes the reference. -1 on failure. */
static int keep(task_impl_t *t, json_t *v) {
    if (!v) return -1;
    return json_array_append_new(t->keep, v);
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

/* A header that must be a string or null/absent. */
static int opt_str(json_t *obj, const char *key, const char **out, cel_err_t *err) {
    json_t *v = json_object_get(obj, key);
    *out = NULL;
    if (!v || json_is_null(v)) return CEL_OK;
    if (!json_is_string(v))
        return cel_err_set(err, CEL_EBODY, "header '%s' must be a string or null", key);
    *out = json_string_value(v);
    return CEL_OK;
}

/* A header that must be an integer or null/absent (def when absent). */
static int opt_int(json_t *obj, const char *key, long def, long *out, cel_err_t *err) {
    json_t *v = json_object_get(obj, key);
    *out = def;
    if (!v || json_is_null(v)) return CEL_OK;
    if (!json_is_integer(v))
        return cel_err_set(err, CEL_EBODY, "header '%s' must be an integer", key);
    json_int_t i = json_integer_value(v);
    if (i < -2147483647 || i > 2147483647)
        return cel_err_set(err, CEL_EBODY, "header '%s' is out of range", key);
    *out = (long)i;
    return CEL_OK;
}

static int truthy(json_t *v) {
    if (!v) return 0;
    switch (json_typeof(v)) {
    case JSON_TRUE: return 1;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0.0;
    case JSON_STRING: return json_string_length(v) != 0;
    case JSON_ARRAY: return json_array_size(v) != 0;
    case JSON_OBJECT: return json_object_size(v) != 0;
    default: return 0;
    }
}

static int read_time(json_t *hdr, const char *key, const char **str, double *when, cel_err_t *err) {
    int rc = opt_str(hdr, key, str, err);
    if (rc || !*str) return rc;
    cel_err_t e;
    if (cel_time_parse_iso8601(*str, when, &e) != CEL_OK)
        return cel_err_set(err, CEL_EBODY, "bad '%s' header: %s", key, e.msg);
    return CEL_OK;
}

static int read_timelimit(json_t *hdr, cel_task_t *t, cel_err_t *err) {
    json_t *tl = json_object_get(hdr, "timelimit");
    if (!tl || json_is_null(tl)) return CEL_OK;
    if (!json_is_array(tl) || json_array_size(tl) != 2)
        return cel_err_set(err, CEL_EBODY, "header 'timelimit' must be [hard, soft]");
    double *dst[2] = { &t->time_limit, &t->soft_time_limit };
    for (size_t i = 0; i < 2; i++) {
        json_t *v = json_array_get(tl, i);
        if (json_is_null(v)) continue;
        if (!json_is_number(v) || json_number_value(v) < 0)
            return cel_err_set(err, CEL_EBODY, "header 'timelimit' must hold numbers or nulls");
        *dst[i] = json_number_value(v);
    }
    return CEL_OK;
}

/* Fills the header-derived fields other than id/name. */
static int read_headers(json_t *hdr, cel_task_t *t, cel_err_t *err) {
    long retries, gi;
    int rc;
    if ((rc = opt_str(hdr, "root_id", &t->root_id, err)) ||
        (rc = opt_str(hdr, "parent_id", &t->parent_id, err)) ||
        (rc = opt_str(hdr, "group", &t->group, err)) ||
        (rc = opt_str(hdr, "shadow", &t->shadow, err)) ||
        (rc = opt_str(hdr, "origin", &t->origin, err)) ||
        (rc = opt_str(hdr, "argsrepr", &t->argsrepr, err)) ||
        (rc = opt_str(hdr, "kwargsrepr", &t->kwargsrepr, err)) ||
        (rc = read_time(hdr, "eta", &t->eta_str, &t->eta, err)) ||
        (rc = read_time(hdr, "expires", &t->expires_str, &t->expires, err)) ||
        (rc = opt_int(hdr, "retries", 0, &retries, err)) ||
        (rc = opt_int(hdr, "group_index", -1, &gi, err)) || (rc = read_timelimit(hdr, t, err)))
        return rc;
    t->retries = retries;
    t->group_index = (int)gi;
    t->ignore_result = truthy(json_object_get(hdr, "ignore_result"));
    if (truthy(json_object_get(hdr, "redelivered"))) t->redelivered = 1;
    return CEL_OK;
}

static void read_properties(json_t *props, json_t *dinfo, cel_task_t *t) {
    json_t *v;
    t->correlation_id = json_string_value(json_object_get(props, "correlation_id"));
    t->reply_to = json_string_value(json_object_get(props, "reply_to"));
    v = json_object_get(props, "priority");
    if (json_is_number(v)) {
        double p = json_number_value(v);
        t->priority = p < 0 ? 0 : p > 9 ? 9 : (int)p;
    }
    t->delivery_tag = json_string_value(json_object_get(dinfo, "delivery_tag"));
    if (!t->delivery_tag)
        t->delivery_tag = json_string_value(json_object_get(props, "delivery_tag"));
    t->exchange = json_string_value(json_object_get(dinfo, "exchange"));
    t->routing_key = json_string_value(json_object_get(dinfo, "routing_key"));
    if (truthy(json_object_get(dinfo, "redelivered"))) t->redelivered = 1;
}

/* Copies key from src into dst, as null when missing (hybrid_to_proto2). */
static int copy_or_null(json_t *dst, json_t *src, const char *key) {
    json_t *v = json_object_get(src, key);
    return json_object_set_new(dst, key, v ? json_deep_copy(v) : json_null());
}

/* Headers of a hybrid message: body fields, overridden by message headers. */
static json_t *hybrid_headers(json_t *body, json_t *headers) {
    static const char *keys[] = { "lang",     "task",       "id",     "root_id", "parent_id",
                                  "group",    "meth",       "shadow", "eta",     "expires",
                                  "argsrepr", "kwargsrepr", "origin" };
    json_t *h = json_object();
    if (!h) return NULL;
    int bad = 0;
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        bad |= copy_or_null(h, body, keys[i]);
    json_t *r = json_object_get(body, "retries");
    bad |= json_object_set_new(h, "retries", r ? json_deep_copy(r) : json_integer(0));
    json_t *tl = json_object_get(body, "timelimit");
    bad |= json_object_set_new(h, "timelimit", tl ? json_deep_copy(tl) : json_pack("[nn]"));
    if (headers) bad |= json_object_update(h, headers);
    if (bad) {
        json_decref(h);
        return NULL;
    }
    return h;
}

/* Embed of a protocol 1 or hybrid body. */
static json_t *v1_embed(json_t *body) {
    json_t *e = json_object();
    if (!e) return NULL;
    int bad = copy_or_null(e, body, "callbacks");
    bad |= copy_or_null(e, body, "errbacks");
    bad |= copy_or_null(e, body, "chord");
    bad |= json_object_set_new(e, "chain", json_null());
    if (bad) {
        json_decref(e);
        return NULL;
    }
    return e;
}

/* Sets args/kwargs/embed from a v2 body [args, kwargs, embed]. */
static int take_v2_body(task_impl_t *ti, json_t *body, cel_err_t *err) {
    cel_task_t *t = &ti->pub;
    if (!json_is_array(body))
        return cel_err_set(err, CEL_EBODY, "protocol 2 body must be a list [args, kwargs, embed]");
    if (json_array_size(body) != 3)
        return cel_err_set(err, CEL_EBODY,
                           "protocol 2 body must be [args, kwargs, embed], got %zu items",
                           json_array_size(body));
    json_t *args = json_array_get(body, 0), *kwargs = json_array_get(body, 1);
    json_t *embed = json_array_get(body, 2);
    if (!json_is_array(args)) return cel_err_set(err, CEL_EBODY, "task args must be a list");
    if (!json_is_object(kwargs))
        return cel_err_set(err, CEL_EBODY, "task kwargs must be a mapping");
    if (!json_is_object(embed) && !json_is_null(embed))
        return cel_err_set(err, CEL_EBODY, "task embed must be a mapping or null");
    t->args = args;
    t->kwargs = kwargs;
    t->embed = json_is_object(embed) ? embed : NULL;
    return CEL_OK;
}

/* Sets args/kwargs/embed from a protocol 1 / hybrid dict body. */
static int take_v1_body(task_impl_t *ti, json_t *body, cel_err_t *err) {
    cel_task_t *t = &ti->pub;
    json_t *args = json_object_get(body, "args"), *kwargs = json_object_get(body, "kwargs");
    if (!args) args = json_array();
    else json_incref(args);
    if (!kwargs) kwargs = json_object();
    else json_incref(kwargs);
    json_t *embed = v1_embed(body);
    int bad = keep(ti, args);
    bad |= keep(ti, kwargs);
    bad |= keep(ti, embed);
    if (bad) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    if (!json_is_array(args)) return cel_err_set(err, CEL_EBODY, "task args must be a list");
    if (!json_is_object(kwargs))
        return cel_err_set(err, CEL_EBODY, "Task keyword arguments must be a mapping");
    t->args = args;
    t->kwargs = kwargs;
    t->embed = embed;
    return CEL_OK;
}

/* Undoes the compression kombu's Producer.publish applied (the method named
 * by the `compression` header, as kombu's Message reads it) into *plain
 * (malloc'd), at most max_body bytes. CEL_ENOMEM, or a body error: CEL_ELIMIT
 * when it decompresses past max_body, else CEL_EBODY. */
static int decompress_body(json_t *comp, const uint8_t *raw, size_t raw_len, size_t max_body,
                           uint8_t **plain, size_t *plain_len, cel_err_t *err) {
    cel_compress_t m;
    cel_err_t e;
    if (!json_is_string(comp))
        return cel_err_set(err, CEL_EBODY, "header 'compression' must be a string");
    if (cel_compress_lookup(json_string_value(comp), &m, &e) != CEL_OK)
        return cel_err_set(err, CEL_EBODY, "%s", e.msg);
    int rc = cel_compress_decode(m, raw, raw_len, max_body, plain, plain_len, &e);
    if (rc == CEL_OK || rc == CEL_ENOMEM || rc == CEL_ELIMIT)
        return rc == CEL_OK ? rc : cel_err_set(err, rc, "%s", e.msg);
    return cel_err_set(err, CEL_EBODY, "body is not valid %s data: %s",
                       cel_compress_content_type(m), e.msg);
}

/* The shared decoder. body_err, when set, is why the body could not even be
 * extracted (bad base64); the body is then treated as undecodable. A
 * compressed body decompresses to at most max_body bytes. */
static int decode(json_t *headers, json_t *properties, json_t *delivery_info, const uint8_t *raw,
                  size_t raw_len, size_t max_body, const char *content_type,
                  const char *content_encoding, const cel_err_t *body_err, cel_task_t **out,
                  cel_err_t *err) {
    *out = NULL;
    if (headers && json_is_null(headers)) headers = NULL;
    if ((headers && !json_is_object(headers)) || (properties && !json_is_object(properties)))
        return cel_err_set(err, CEL_EPROTO, "message headers and properties must be mappings");
    if (delivery_info && !json_is_object(delivery_info)) delivery_info = NULL;

    task_impl_t *ti = calloc(1, sizeof(*ti));
    if (!ti) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    cel_task_t *t = &ti->pub;
    t->priv_ = ti;
    t->group_index = -1;
    ti->keep = json_array();
    ti->content_type = dup_or_null(content_type);
    ti->content_encoding = dup_or_null(content_encoding);
    if (!ti->keep || (content_type && !ti->content_type) ||
        (content_encoding && !ti->content_encoding))
        goto nomem;
    t->content_type = ti->content_type;
    t->content_encoding = ti->content_encoding;

    /* the body first: protocol 1 needs it to know the task at all */
    cel_err_t berr;
    json_t *body = NULL;
    int brc;
    if (body_err) {
        berr = *body_err;
        brc = CEL_EBODY;
    } else {
        json_t *comp = headers ? json_object_get(headers, "compression") : NULL;
        uint8_t *plain = NULL;
        size_t plain_len = 0;
        brc = CEL_OK;
        if (comp && !json_is_null(comp))
            brc = decompress_body(comp, raw, raw_len, max_body, &plain, &plain_len, &berr);
        if (brc == CEL_OK)
            brc = cel_body_load(plain ? plain : raw, plain ? plain_len : raw_len, content_type,
                                content_encoding, &body, &berr);
        free(plain);
        if (brc == CEL_ENOMEM) goto nomem;
        if (brc == CEL_OK && keep(ti, body) < 0) goto nomem;
    }

    json_t *hdr;
    int v1 = 0;
    if (headers && json_object_get(headers, "task")) {
        if (json_is_object(body) && json_object_get(body, "args")) {
            hdr = hybrid_headers(body, headers);
            v1 = 1;
            t->headers = hdr;
        } else {
            hdr = json_incref(headers); /* a reference, not a copy: protocol.h */
            t->headers = hdr;
        }
        t->proto = 2;
    } else {
        if (!json_is_object(body) || !json_object_get(body, "task")) {
            cel_task_free(t);
            if (brc != CEL_OK)
                return cel_err_set(err, CEL_EPROTO,
                                   "no 'task' header, and the body is not a "
                                   "protocol 1 task: %s",
                                   berr.msg);
            return cel_err_set(err, CEL_EPROTO,
                               "no 'task' header, and the body is not a "
                               "protocol 1 task (a mapping with 'task')");
        }
        hdr = json_copy(body);
        if (hdr && json_object_get(body, "taskset"))
            json_object_set(hdr, "group", json_object_get(body, "taskset"));
        v1 = 1;
        t->proto = 1;
    }
    if (keep(ti, hdr) < 0) goto nomem;
    json_t *props = properties ? json_incref(properties) : json_object();
    json_t *dinfo = delivery_info ? json_incref(delivery_info) : json_object();
    int bad = keep(ti, props);
    bad |= keep(ti, dinfo);
    if (bad) goto nomem;

    json_t *id = json_object_get(hdr, "id"), *name = json_object_get(hdr, "task");
    /* An empty name is a name no task has: the worker answers NotRegistered(''),
     * as the stock worker does, so only the id must be non-empty. */
    if (!json_is_string(id) || !json_is_string(name) || json_string_length(id) == 0) {
        cel_task_free(t);
        return cel_err_set(err, CEL_EPROTO, "message has no task id or name");
    }
    if (strlen(json_string_value(id)) != json_string_length(id) ||
        strlen(json_string_value(name)) != json_string_length(name)) {
        cel_task_free(t);
        return cel_err_set(err, CEL_EPROTO, "task id or name contains a NUL character");
    }
    t->id = json_string_value(id);
    t->name = json_string_value(name);
    read_properties(props, dinfo, t);

    /* from here on the task is known: failures are CEL_EBODY with *out set */
    int rc = read_headers(hdr, t, err);
    if (rc == CEL_OK && brc != CEL_OK) {
        /* err's code says why: CEL_ELIMIT for a body decompressed past max_body */
        cel_err_set(err, berr.code == CEL_ELIMIT ? CEL_ELIMIT : CEL_EBODY, "%s", berr.msg);
        rc = CEL_EBODY;
    }
    if (rc == CEL_OK) rc = v1 ? take_v1_body(ti, body, err) : take_v2_body(ti, body, err);
    if (rc == CEL_OK && t->proto == 1) {
        ti->argsrepr = cel_repr(t->args, 0, TASK_REPR_MAX);
        ti->kwargsrepr = cel_repr(t->kwargs, 0, TASK_REPR_MAX);
        if (!ti->argsrepr || !ti->kwargsrepr) goto nomem;
        t->argsrepr = ti->argsrepr;
        t->kwargsrepr = ti->kwargsrepr;
    }
    if (rc == CEL_ENOMEM) goto nomem;
    if (rc != CEL_OK) {
        t->args = t->kwargs = t->embed = NULL;
        *out = t;
        return CEL_EBODY;
    }
    cel_err_clear(err);
    *out = t;
    return CEL_OK;
nomem:
    cel_task_free(t);
    return cel_err_set(err, CEL_ENOMEM, "out of memory decoding a task");
}

/* See protocol.h. */
int cel_task_decode_parts(json_t *headers, json_t *properties, json_t *delivery_info,
                          const uint8_t *body, size_t body_len, const char *content_type,
                          const char *content_encoding, cel_task_t **out, cel_err_t *err) {
    return cel_task_decode_parts_max(headers, properties, delivery_info, body, body_len,
                                     CEL_MSG_MAX_BYTES, content_type, content_encoding, out, err);
}

/* See protocol.h. */
int cel_task_decode_parts_max(json_t *headers, json_t *properties, json_t *delivery_info,
                              const uint8_t *body, size_t body_len, size_t max_body,
                              const char *content_type, const char *content_encoding,
                              cel_task_t **out, cel_err_t *err) {
    return decode(headers, properties, delivery_info, body, body_len, max_body, content_type,
                  content_encoding, NULL, out, err);
}

static const char *opt_string(json_t *obj, const char *key) {
    return json_string_value(json_object_get(obj, key));
}

/* Reads exactly four hex digits at p (the caller has checked they are inside
 * the buffer). 1 and *v on success, 0 when any of them is not a hex digit.
 * By hand, not sscanf: sscanf reads its input up to a NUL first, and an
 * envelope is (buf, len), not a C string (AMQP bodies are not terminated). */
static int hex4(const char *p, unsigned *v) {
    unsigned x = 0;
    for (int k = 0; k < 4; k++) {
        char h = p[k];
        x <<= 4;
        if (h >= '0' && h <= '9') x |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f') x |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') x |= (unsigned)(h - 'A' + 10);
        else return 0;
    }
    *v = x;
    return 1;
}

/* Python's json.dumps writes lone UTF-16 surrogates ("\ud800") that no UTF-8
 * JSON parser accepts. In the envelope they can only come from display-only
 * headers (argsrepr), so a copy with each lone surrogate escape replaced by
 * \ufffd (same length) is parsed instead. The body is base64 and untouched:
 * a lone surrogate there still fails that task with a clear error. Returns a
 * malloc'd copy, or NULL when there is nothing to replace. */
static char *replace_lone_surrogates(const char *buf, size_t len) {
    char *copy = NULL;
    int in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = buf[i];
        if (!in_str) {
            if (ch == '"') in_str = 1;
            continue;
        }
        if (ch == '"') {
            in_str = 0;
            continue;
        }
        if (ch != '\\' || i + 1 >= len) continue;
        if (buf[i + 1] != 'u' || i + 5 >= len) {
            i++; /* a two-character escape */
            continue;
        }
        unsigned v = 0;
        if (!hex4(buf + i + 2, &v)) continue;
        int lone = 0;
        if (v >= 0xD800 && v <= 0xDBFF) {
            /* a high surrogate needs a low one right after it */
            unsigned lo = 0;
            if (i + 11 < len && buf[i + 6] == '\\' && buf[i + 7] == 'u' && hex4(buf + i + 8, &lo) &&
                lo >= 0xDC00 && lo <= 0xDFFF) {
                i += 11;
                continue;
            }
            lone = 1;
        } else if (v >= 0xDC00 && v <= 0xDFFF) {
            lone = 1;
        }
        if (lone) {
            if (!copy) {
                copy = malloc(len);
                if (!copy) return NULL;
                memcpy(copy, buf, len);
            }
            memcpy(copy + i + 2, "fffd", 4);
        }
        i += 5;
    }
    return copy;
}

/* The task of an envelope scan.c read (CEL_OK), or CEL_EAGAIN when its body
 * is not a well-formed protocol 2 body or a time does not parse (the full
 * decoder then says why), or CEL_ENOMEM. The strings live in the block after
 * the task_impl_t; ti->keep is the body. */
static int decode_scanned(const cel_env_scan_t *sc, cel_task_t **out, cel_err_t *err) {
    const cel_span_t *spans[] = { &sc->task,
                                  &sc->id,
                                  &sc->root_id,
                                  &sc->parent_id,
                                  &sc->group,
                                  &sc->shadow,
                                  &sc->origin,
                                  &sc->argsrepr,
                                  &sc->kwargsrepr,
                                  &sc->eta,
                                  &sc->expires,
                                  &sc->content_type,
                                  &sc->content_encoding,
                                  &sc->correlation_id,
                                  &sc->reply_to,
                                  &sc->delivery_tag,
                                  &sc->exchange,
                                  &sc->routing_key };
    enum { NSPANS = sizeof(spans) / sizeof(spans[0]) };
    size_t need = 0;
    for (int i = 0; i < NSPANS; i++)
        if (spans[i]->set) need += spans[i]->n + 1;
    task_impl_t *ti = calloc(1, sizeof(*ti) + need);
    if (!ti) return cel_err_set(err, CEL_ENOMEM, "out of memory decoding a task");
    const char *str[NSPANS];
    char *at = (char *)(ti + 1);
    for (int i = 0; i < NSPANS; i++) {
        str[i] = NULL;
        if (!spans[i]->set) continue;
        memcpy(at, spans[i]->p, spans[i]->n);
        at[spans[i]->n] = '\0';
        str[i] = at;
        at += spans[i]->n + 1;
    }
    cel_task_t *t = &ti->pub;
    t->priv_ = ti;
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    cel_err_t e;
    int rc = cel_base64_decode(sc->body.p, sc->body.n, &raw, &raw_len, &e);
    json_t *body = NULL;
    if (rc == CEL_OK) rc = cel_body_load(raw, raw_len, str[11], str[12], &body, &e);
    free(raw);
    if (rc == CEL_OK) {
        json_t *args = json_array_get(body, 0), *kwargs = json_array_get(body, 1);
        json_t *embed = json_array_get(body, 2);
        if (!json_is_array(body) || json_array_size(body) != 3 || !json_is_array(args) ||
            !json_is_object(kwargs) || (!json_is_object(embed) && !json_is_null(embed)))
            rc = CEL_EAGAIN;
        t->args = args;
        t->kwargs = kwargs;
        t->embed = json_is_object(embed) ? embed : NULL;
    }
    ti->keep = body;
    if (rc == CEL_OK && str[9] && cel_time_parse_iso8601(str[9], &t->eta, &e) != CEL_OK)
        rc = CEL_EAGAIN;
    if (rc == CEL_OK && str[10] && cel_time_parse_iso8601(str[10], &t->expires, &e) != CEL_OK)
        rc = CEL_EAGAIN;
    if (rc != CEL_OK) {
        cel_task_free(t);
        return rc == CEL_ENOMEM ? cel_err_set(err, rc, "out of memory decoding a task")
                                : CEL_EAGAIN;
    }
    t->proto = 2;
    t->name = str[0];
    t->id = str[1];
    t->root_id = str[2];
    t->parent_id = str[3];
    t->group = str[4];
    t->shadow = str[5];
    t->origin = str[6];
    t->argsrepr = str[7];
    t->kwargsrepr = str[8];
    t->eta_str = str[9];
    t->expires_str = str[10];
    t->content_type = str[11];
    t->content_encoding = str[12];
    t->correlation_id = str[13];
    t->reply_to = str[14];
    t->delivery_tag = str[15];
    t->exchange = str[16];
    t->routing_key = str[17];
    t->retries = sc->retries;
    t->group_index = (int)sc->group_index;
    t->time_limit = sc->time_limit;
    t->soft_time_limit = sc->soft_time_limit;
    t->ignore_result = sc->ignore_result;
    t->redelivered = sc->redelivered;
    t->priority = sc->priority;
    cel_err_clear(err);
    *out = t;
    return CEL_OK;
}

/* See protocol.h. */
int cel_task_decode_envelope(const char *buf, size_t len, cel_task_t **out, cel_err_t *err) {
    return cel_task_decode_envelope_max(buf, len, CEL_MSG_MAX_BYTES, out, err);
}

/* See protocol.h. */
int cel_task_decode_envelope_max(const char *buf, size_t len, size_t max_body, cel_task_t **out,
                                 cel_err_t *err) {
    *out = NULL;
    cel_env_scan_t sc;
    if (cel_env_scan(buf, len, &sc) == CEL_OK) {
        int rc = decode_scanned(&sc, out, err);
        if (rc != CEL_EAGAIN) return rc;
    }
    return cel_task_decode_envelope_full(buf, len, max_body, out, err);
}

int cel_task_decode_envelope_full(const char *buf, size_t len, size_t max_body, cel_task_t **out,
                                  cel_err_t *err) {
    *out = NULL;
    if (len > CEL_MSG_MAX_BYTES)
        return cel_err_set(err, CEL_ELIMIT, "envelope of %zu bytes is over the %u byte limit", len,
                           CEL_MSG_MAX_BYTES);
    json_error_t je;
    json_t *env = json_loadb(buf, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!env && strstr(je.text, "nvalid Unicode")) {
        char *fixed = replace_lone_surrogates(buf, len);
        if (fixed) {
            env = json_loadb(fixed, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
            free(fixed);
        }
    }
    if (!env)
        return cel_err_set(err, CEL_EPROTO, "envelope is not valid JSON: %s at line %d column %d",
                           je.text, je.line, je.column);
    int rc;
    if (!json_is_object(env)) {
        rc = cel_err_set(err, CEL_EPROTO, "envelope is not a JSON object");
        goto done;
    }
    if (cel_json_depth(env, CEL_MSG_MAX_DEPTH) > CEL_MSG_MAX_DEPTH) {
        rc = cel_err_set(err, CEL_ELIMIT, "envelope nested deeper than %d levels",
                         CEL_MSG_MAX_DEPTH);
        goto done;
    }
    json_t *body = json_object_get(env, "body");
    json_t *props = json_object_get(env, "properties");
    json_t *headers = json_object_get(env, "headers");
    if (!json_is_string(body)) {
        rc = cel_err_set(err, CEL_EPROTO, "envelope has no string 'body'");
        goto done;
    }
    if (props && json_is_null(props)) props = NULL;
    if (props && !json_is_object(props)) {
        rc = cel_err_set(err, CEL_EPROTO, "envelope 'properties' is not a mapping");
        goto done;
    }
    const char *benc = opt_string(props, "body_encoding");
    const char *text = json_string_value(body);
    size_t text_len = json_string_length(body);
    uint8_t *raw = NULL;
    size_t raw_len = 0;
    cel_err_t berr;
    const cel_err_t *pre = NULL;
    if (benc && strcmp(benc, "base64") == 0) {
        int brc = cel_base64_decode(text, text_len, &raw, &raw_len, &berr);
        if (brc == CEL_ENOMEM) {
            rc = cel_err_set(err, brc, "%s", berr.msg);
            goto done;
        }
        if (brc != CEL_OK) {
            cel_err_set(&berr, CEL_EBODY, "body is not valid base64");
            pre = &berr;
        }
    } else if (benc) {
        cel_err_set(&berr, CEL_EBODY, "unsupported body_encoding '%.32s'", benc);
        pre = &berr;
    }
    const uint8_t *bytes = raw ? raw : (const uint8_t *)text;
    size_t nbytes = raw ? raw_len : text_len;
    rc =
        decode(headers, props, json_object_get(props, "delivery_info"), bytes, nbytes, max_body,
               opt_string(env, "content-type"), opt_string(env, "content-encoding"), pre, out, err);
    free(raw);
done:
    json_decref(env);
    return rc;
}

/* Keeps a copy of s when non-empty; *dst borrows it. -1 on failure. */
static int keep_str(task_impl_t *t, const char *s, const char **dst) {
    *dst = NULL;
    if (!s[0]) return 0;
    json_t *v = json_string(s);
    if (keep(t, v) < 0) return -1;
    *dst = json_string_value(v);
    return 0;
}

/* See protocol.h. */
int cel_task_from_peek(const cel_peek_t *pk, cel_task_t **out, cel_err_t *err) {
    *out = NULL;
    if (!pk->id[0]) return cel_err_set(err, CEL_EINVAL, "a task needs an id");
    task_impl_t *ti = calloc(1, sizeof(*ti));
    if (!ti) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    cel_task_t *t = &ti->pub;
    t->priv_ = ti;
    t->proto = 2;
    t->group_index = -1;
    ti->keep = json_array();
    json_t *name = json_string(pk->task);
    json_t *args = json_array(), *kwargs = json_object();
    int bad = !ti->keep;
    if (!bad) {
        bad |= keep(ti, name) < 0;
        bad |= keep(ti, args) < 0;
        bad |= keep(ti, kwargs) < 0;
    } else {
        json_decref(name);
        json_decref(args);
        json_decref(kwargs);
    }
    if (!bad) {
        bad |= keep_str(ti, pk->id, &t->id) < 0;
        bad |= keep_str(ti, pk->root_id, &t->root_id) < 0;
        bad |= keep_str(ti, pk->parent_id, &t->parent_id) < 0;
        bad |= keep_str(ti, pk->group, &t->group) < 0;
        bad |= keep_str(ti, pk->correlation_id, &t->correlation_id) < 0;
        bad |= keep_str(ti, pk->reply_to, &t->reply_to) < 0;
    }
    if (bad) {
        cel_task_free(t);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    t->name = json_string_value(name);
    t->args = args;
    t->kwargs = kwargs;
    *out = t;
    return CEL_OK;
}
