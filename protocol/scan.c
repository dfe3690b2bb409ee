/* scan.c -- the fast path of the envelope decoder: one pass over a kombu JSON envelope.
 *
 * cel_env_scan (internal.h) reads what task.c needs of a Redis envelope --
 * the body string, content type and encoding, the headers and properties a
 * cel_task_t carries -- as spans into the buffer, in one pass, without
 * building a JSON tree or allocating. It accepts only a strict subset of
 * JSON, the one stock clients write: ASCII strings without escapes, integers
 * and plain decimals of at most 18 digits, nesting up to SCAN_MAX_DEPTH,
 * each wanted key at most once, and every field of the type Celery gives it
 * (see cel_env_scan). Everything it accepts it validates as jansson would
 * (every skipped value too, and nothing but whitespace after the envelope),
 * so an accepted envelope is one jansson parses to the same values; anything
 * outside the subset, malformed or not, is CEL_EAGAIN and task.c decodes it
 * the full way, which gives every malformed message its usual error.
 * tests/fuzz/fuzz_scan.c checks the two agree. No I/O; main process.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define SCAN_MAX_DEPTH  32 /* deeper envelopes take the full decoder */
#define SCAN_MAX_DIGITS 18 /* longer numbers too (exact in int64 and as doubles) */

typedef struct scan {
    const char *p;
    const char *end;
} scan_t;

static void ws(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* A string at s->p (its opening quote): printable ASCII, no escapes. The
 * span gets its content. -1 outside the subset. */
static int str(scan_t *s, cel_span_t *out) {
    const char *q = s->p + 1;
    while (q < s->end) {
        unsigned char c = (unsigned char)*q;
        if (c == '"') {
            out->p = s->p + 1;
            out->n = (size_t)(q - s->p - 1);
            out->set = 1;
            s->p = q + 1;
            return 0;
        }
        if (c < 0x20 || c >= 0x7f || c == '\\') return -1;
        q++;
    }
    return -1;
}

/* A number: -?(0|[1-9][0-9]*)(.[0-9]+)? with at most SCAN_MAX_DIGITS digits
 * (no exponent). *is_int when it has no fraction; *v its value. */
static int num(scan_t *s, double *v, long long *iv, int *is_int) {
    const char *q = s->p;
    int neg = 0, digits = 0;
    long long whole = 0;
    if (q < s->end && *q == '-') neg = 1, q++;
    if (q >= s->end || *q < '0' || *q > '9') return -1;
    if (*q == '0') {
        q++, digits++;
        if (q < s->end && *q >= '0' && *q <= '9') return -1; /* a leading zero */
    } else {
        while (q < s->end && *q >= '0' && *q <= '9') {
            if (++digits > SCAN_MAX_DIGITS) return -1;
            whole = whole * 10 + (*q++ - '0');
        }
    }
    *is_int = 1;
    if (q < s->end && *q == '.') {
        q++;
        if (q >= s->end || *q < '0' || *q > '9') return -1;
        while (q < s->end && *q >= '0' && *q <= '9') q++, digits++;
        *is_int = 0;
    }
    if (digits > SCAN_MAX_DIGITS) return -1;
    if (q < s->end && (*q == 'e' || *q == 'E')) return -1;
    if (*is_int) {
        *iv = neg ? -whole : whole;
        *v = (double)*iv;
    } else {
        /* strtod as jansson uses it, on a copy: the buffer is not terminated */
        char tmp[SCAN_MAX_DIGITS + 4];
        size_t n = (size_t)(q - s->p);
        memcpy(tmp, s->p, n);
        tmp[n] = '\0';
        *v = strtod(tmp, NULL);
        *iv = 0;
    }
    s->p = q;
    return 0;
}

/* Matches a literal (true, false, null). */
static int lit(scan_t *s, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return -1;
    s->p += n;
    return 0;
}

/* What a value we looked at was. */
enum { V_NULL, V_FALSE, V_TRUE, V_NUM, V_STR, V_ARR, V_OBJ };

typedef struct val {
    int kind;
    double num;
    long long inum;
    int is_int;
    cel_span_t str;
    int nonempty; /* for V_ARR / V_OBJ */
} val_t;

static int value(scan_t *s, int depth, val_t *v);

/* The members of an object (after its '{'), each value read by value(). */
static int skip_object(scan_t *s, int depth, int *nonempty) {
    *nonempty = 0;
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        cel_span_t key;
        val_t v;
        ws(s);
        if (s->p >= s->end || *s->p != '"' || str(s, &key) < 0) return -1;
        ws(s);
        if (s->p >= s->end || *s->p != ':') return -1;
        s->p++;
        if (value(s, depth, &v) < 0) return -1;
        *nonempty = 1;
        ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == '}') {
            s->p++;
            return 0;
        }
        if (*s->p != ',') return -1;
        s->p++;
    }
}

static int skip_array(scan_t *s, int depth, int *nonempty) {
    *nonempty = 0;
    ws(s);
    if (s->p < s->end && *s->p == ']') {
        s->p++;
        return 0;
    }
    for (;;) {
        val_t v;
        if (value(s, depth, &v) < 0) return -1;
        *nonempty = 1;
        ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == ']') {
            s->p++;
            return 0;
        }
        if (*s->p != ',') return -1;
        s->p++;
    }
}

/* Any value; depth counts the containers around it. */
static int value(scan_t *s, int depth, val_t *v) {
    memset(v, 0, sizeof(*v));
    ws(s);
    if (s->p >= s->end) return -1;
    switch (*s->p) {
    case '"': v->kind = V_STR; return str(s, &v->str);
    case 't': v->kind = V_TRUE; return lit(s, "true");
    case 'f': v->kind = V_FALSE; return lit(s, "false");
    case 'n': v->kind = V_NULL; return lit(s, "null");
    case '{':
    case '[':
        if (depth + 1 > SCAN_MAX_DEPTH) return -1;
        v->kind = *s->p == '{' ? V_OBJ : V_ARR;
        s->p++;
        return v->kind == V_OBJ ? skip_object(s, depth + 1, &v->nonempty)
                                : skip_array(s, depth + 1, &v->nonempty);
    default: v->kind = V_NUM; return num(s, &v->num, &v->inum, &v->is_int);
    }
}

/* Python truthiness of a scalar value (containers: not empty). */
static int truthy(const val_t *v) {
    switch (v->kind) {
    case V_TRUE: return 1;
    case V_NUM: return v->num != 0;
    case V_STR: return v->str.n != 0;
    case V_ARR:
    case V_OBJ: return v->nonempty;
    default: return 0;
    }
}

/* A string-or-null field (a string keeps its span; null leaves it unset). */
static int str_or_null(const val_t *v, cel_span_t *out) {
    if (v->kind == V_NULL) return 0;
    if (v->kind != V_STR) return -1;
    *out = v->str;
    return 0;
}

/* An int-or-null header in +-2147483647. */
static int int_or_null(const val_t *v, long *out) {
    if (v->kind == V_NULL) return 0;
    if (v->kind != V_NUM || !v->is_int || v->inum < -2147483647 || v->inum > 2147483647) return -1;
    *out = (long)v->inum;
    return 0;
}

/* A member loop over the object at s->p (its '{'): for each key, fn(key,
 * priv) reads the value (returning -1 outside the subset). Keys fn wants are
 * given an index; a repeated one is outside the subset. */
typedef int (*member_fn)(scan_t *s, int depth, int key, void *priv);

static int object(scan_t *s, int depth, const char *const *keys, int nkeys, member_fn fn,
                  void *priv) {
    unsigned seen = 0;
    if (depth + 1 > SCAN_MAX_DEPTH) return -1;
    s->p++; /* '{' */
    ws(s);
    if (s->p < s->end && *s->p == '}') {
        s->p++;
        return 0;
    }
    for (;;) {
        cel_span_t key;
        ws(s);
        if (s->p >= s->end || *s->p != '"' || str(s, &key) < 0) return -1;
        ws(s);
        if (s->p >= s->end || *s->p != ':') return -1;
        s->p++;
        ws(s);
        int k = -1;
        for (int i = 0; i < nkeys; i++)
            if (strlen(keys[i]) == key.n && memcmp(keys[i], key.p, key.n) == 0) k = i;
        if (k >= 0) {
            if (seen & (1u << k)) return -1; /* jansson keeps the last: leave it to jansson */
            seen |= 1u << k;
            if (fn(s, depth + 1, k, priv) < 0) return -1;
        } else {
            val_t v;
            if (value(s, depth + 1, &v) < 0) return -1;
        }
        ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == '}') {
            s->p++;
            return 0;
        }
        if (*s->p != ',') return -1;
        s->p++;
    }
}

/* ---- headers ------------------------------------------------------------ */

static const char *const header_keys[] = {
    "task",        "id",        "root_id",       "parent_id",   "group",      "shadow",
    "origin",      "argsrepr",  "kwargsrepr",    "eta",         "expires",    "retries",
    "group_index", "timelimit", "ignore_result", "redelivered", "compression"
};

static int timelimit(scan_t *s, int depth, cel_env_scan_t *o) {
    val_t v;
    if (s->p < s->end && *s->p == 'n') return lit(s, "null");
    if (s->p >= s->end || *s->p != '[' || depth + 1 > SCAN_MAX_DEPTH) return -1;
    s->p++;
    double *dst[2] = { &o->time_limit, &o->soft_time_limit };
    for (int i = 0; i < 2; i++) {
        if (i) {
            ws(s);
            if (s->p >= s->end || *s->p != ',') return -1;
            s->p++;
        }
        if (value(s, depth + 1, &v) < 0) return -1;
        if (v.kind == V_NULL) continue;
        if (v.kind != V_NUM || v.num < 0) return -1;
        *dst[i] = v.num;
    }
    ws(s);
    if (s->p >= s->end || *s->p != ']') return -1;
    s->p++;
    return 0;
}

static int header(scan_t *s, int depth, int key, void *priv) {
    cel_env_scan_t *o = priv;
    val_t v;
    if (key == 13) return timelimit(s, depth, o);
    if (value(s, depth, &v) < 0) return -1;
    cel_span_t *strs[] = { &o->task,       &o->id,     &o->root_id, &o->parent_id,
                           &o->group,      &o->shadow, &o->origin,  &o->argsrepr,
                           &o->kwargsrepr, &o->eta,    &o->expires };
    if (key <= 1) return v.kind == V_STR ? (*strs[key] = v.str, 0) : -1;
    if (key <= 10) return str_or_null(&v, strs[key]);
    switch (key) {
    case 11: return int_or_null(&v, &o->retries);
    case 12: return int_or_null(&v, &o->group_index);
    case 14: o->ignore_result = truthy(&v); return 0;
    case 15: o->redelivered |= truthy(&v); return 0;
    default: return v.kind == V_NULL ? 0 : -1; /* compression: the full decoder's */
    }
}

/* ---- properties ---------------------------------------------------------- */

static const char *const info_keys[] = { "exchange", "routing_key", "delivery_tag", "redelivered" };

static int info(scan_t *s, int depth, int key, void *priv) {
    cel_env_scan_t *o = priv;
    val_t v;
    if (value(s, depth, &v) < 0) return -1;
    /* json_string_value: what is not a string reads as NULL */
    cel_span_t *strs[] = { &o->exchange, &o->routing_key, &o->info_tag };
    if (key < 3) {
        if (v.kind == V_STR) *strs[key] = v.str;
        return 0;
    }
    o->info_redelivered = truthy(&v);
    return 0;
}

static const char *const prop_keys[] = { "body_encoding", "correlation_id", "reply_to",
                                         "priority",      "delivery_tag",   "delivery_info" };

static int prop(scan_t *s, int depth, int key, void *priv) {
    cel_env_scan_t *o = priv;
    val_t v;
    if (key == 5 && s->p < s->end && *s->p == '{') {
        if (object(s, depth, info_keys, 4, info, o) < 0) return -1;
        o->has_info = 1;
        return 0;
    }
    if (value(s, depth, &v) < 0) return -1;
    switch (key) {
    case 0:
        if (v.kind != V_STR || v.str.n != 6 || memcmp(v.str.p, "base64", 6) != 0) return -1;
        o->base64 = 1;
        return 0;
    case 1:
        if (v.kind == V_STR) o->correlation_id = v.str;
        return 0;
    case 2:
        if (v.kind == V_STR) o->reply_to = v.str;
        return 0;
    case 3:
        if (v.kind == V_NUM) o->priority = v.num < 0 ? 0 : v.num > 9 ? 9 : (int)v.num;
        return 0;
    case 4:
        if (v.kind == V_STR) o->prop_tag = v.str;
        return 0;
    default: return 0; /* a delivery_info that is not an object counts as none */
    }
}

/* ---- the envelope ------------------------------------------------------- */

static const char *const top_keys[] = { "body", "headers", "properties", "content-type",
                                        "content-encoding" };

static int top(scan_t *s, int depth, int key, void *priv) {
    cel_env_scan_t *o = priv;
    val_t v;
    if (key == 1 || key == 2) {
        if (s->p >= s->end || *s->p != '{') return -1;
        if (key == 1) {
            o->has_headers = 1;
            return object(s, depth, header_keys, 17, header, o);
        }
        o->has_props = 1;
        return object(s, depth, prop_keys, 6, prop, o);
    }
    if (value(s, depth, &v) < 0) return -1;
    if (key == 0) return v.kind == V_STR ? (o->body = v.str, 0) : -1;
    if (v.kind == V_STR) *(key == 3 ? &o->content_type : &o->content_encoding) = v.str;
    return 0;
}

int cel_env_scan(const char *buf, size_t len, cel_env_scan_t *out) {
    memset(out, 0, sizeof(*out));
    out->group_index = -1;
    scan_t s = { buf, buf + len };
    ws(&s);
    if (len > CEL_MSG_MAX_BYTES || s.p >= s.end || *s.p != '{' ||
        object(&s, 0, top_keys, 5, top, out) < 0)
        return CEL_EAGAIN;
    ws(&s);
    /* jansson's checks that a task message passes, and the shape of one */
    if (s.p != s.end || !out->body.set || !out->has_headers || !out->has_props || !out->base64 ||
        !out->task.set || !out->id.set || out->id.n == 0)
        return CEL_EAGAIN;
    /* delivery_info's tag first, then the properties' (read_properties) */
    out->delivery_tag = out->has_info && out->info_tag.set ? out->info_tag : out->prop_tag;
    out->redelivered |= out->has_info && out->info_redelivered;
    return CEL_OK;
}
