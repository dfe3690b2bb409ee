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
 * tests/fuzz/fuzz_scan.c checks the two agree. What it reads of each object
 * is a table of fields (key, kind, where in cel_env_scan_t it goes) that
 * one member reader, member(), follows. No I/O; main process.
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

/* How a wanted member is read and where it goes: off (and off2) are offsets
 * of members of cel_env_scan_t, of the type the kind names. A value the kind
 * does not allow is outside the subset (-1) unless the kind says it is
 * ignored, as the full decoder ignores it. */
enum {
    F_STR,      /* a string (cel_span_t at off) */
    F_STR_NULL, /* a string, or null (left unset) */
    F_STR_ANY,  /* a string; anything else is ignored (json_string_value reads NULL) */
    F_INT_NULL, /* an integer in +-2147483647 (long at off), or null */
    F_TRUTHY,   /* any value, as Python truthiness (int at off) */
    F_NULL,     /* only null (compression: anything else is the full decoder's) */
    F_BASE64,   /* only the string "base64" (int at off set to 1) */
    F_PRIORITY, /* a number clamped to 0..9 (int at off); anything else is ignored */
    F_LIMITS,   /* timelimit: null, or [hard, soft] (doubles at off, off2), each null or >= 0 */
    F_OBJ,      /* an object read with sub (int at off set to 1 after it) */
    F_OBJ_ANY,  /* the same; anything else is skipped (a delivery_info that is not one) */
};

typedef struct fields fields_t;

typedef struct field {
    const char *name;
    size_t len;
    int kind;
    size_t off, off2;
    const fields_t *sub;
} field_t;

/* The wanted keys of one object; at most 32 (object()'s seen mask). */
struct fields {
    const field_t *f;
    int n;
};

#define FIELD(name, kind, member) \
    { name, sizeof(name) - 1, kind, offsetof(cel_env_scan_t, member), 0, NULL }
#define FIELD_OBJ(name, kind, flag, sub) \
    { name, sizeof(name) - 1, kind, offsetof(cel_env_scan_t, flag), 0, sub }
#define FIELDS(arr) \
    { arr, (int)(sizeof(arr) / sizeof(arr[0])) }

static const fields_t no_fields = { NULL, 0 };

static int value(scan_t *s, int depth, val_t *v);

/* timelimit's value at s->p: null or a [hard, soft] pair, as task.c's
 * read_timelimit takes it (exactly two items, each null or a number >= 0). */
static int limits(scan_t *s, int depth, double *hard, double *soft) {
    val_t v;
    if (s->p < s->end && *s->p == 'n') return lit(s, "null");
    if (s->p >= s->end || *s->p != '[' || depth + 1 > SCAN_MAX_DEPTH) return -1;
    s->p++;
    double *dst[2] = { hard, soft };
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

static int object(scan_t *s, int depth, const fields_t *t, cel_env_scan_t *o);

/* The value of the wanted member f at s->p (after whitespace), stored in o. */
static int member(scan_t *s, int depth, const field_t *f, cel_env_scan_t *o) {
    char *dst = (char *)o + f->off;
    val_t v;
    switch (f->kind) {
    case F_LIMITS: return limits(s, depth, (double *)dst, (double *)((char *)o + f->off2));
    case F_OBJ:
    case F_OBJ_ANY:
        if (s->p < s->end && *s->p == '{') {
            if (object(s, depth, f->sub, o) < 0) return -1;
            *(int *)dst = 1;
            return 0;
        }
        if (f->kind == F_OBJ) return -1;
        break;
    default: break;
    }
    if (value(s, depth, &v) < 0) return -1;
    switch (f->kind) {
    case F_STR:
    case F_STR_NULL:
    case F_STR_ANY:
        if (v.kind == V_STR) {
            *(cel_span_t *)dst = v.str;
            return 0;
        }
        return f->kind == F_STR_ANY || (f->kind == F_STR_NULL && v.kind == V_NULL) ? 0 : -1;
    case F_INT_NULL:
        if (v.kind == V_NULL) return 0;
        if (v.kind != V_NUM || !v.is_int || v.inum < -2147483647 || v.inum > 2147483647) return -1;
        *(long *)dst = (long)v.inum;
        return 0;
    case F_TRUTHY:
        switch (v.kind) {
        case V_TRUE: *(int *)dst = 1; break;
        case V_NUM: *(int *)dst = v.num != 0; break;
        case V_STR: *(int *)dst = v.str.n != 0; break;
        case V_ARR:
        case V_OBJ: *(int *)dst = v.nonempty; break;
        default: *(int *)dst = 0; break;
        }
        return 0;
    case F_NULL: return v.kind == V_NULL ? 0 : -1;
    case F_BASE64:
        if (v.kind != V_STR || v.str.n != 6 || memcmp(v.str.p, "base64", 6) != 0) return -1;
        *(int *)dst = 1;
        return 0;
    case F_PRIORITY:
        if (v.kind == V_NUM) *(int *)dst = v.num < 0 ? 0 : v.num > 9 ? 9 : (int)v.num;
        return 0;
    default: return 0; /* F_OBJ_ANY's value that is not an object */
    }
}

/* The object at s->p (its '{'), depth counting the containers around it.
 * Members whose key is in t are read by member() into o; the others are
 * checked by value() and skipped (t = &no_fields skips them all; o is then
 * unused). A wanted key twice is outside the subset. 1 if it has members,
 * 0 if it is empty, -1 outside the subset. */
static int object(scan_t *s, int depth, const fields_t *t, cel_env_scan_t *o) {
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
        int k = 0;
        while (k < t->n && (t->f[k].len != key.n || memcmp(t->f[k].name, key.p, key.n) != 0)) k++;
        if (k < t->n) {
            if (seen & (1u << k)) return -1; /* jansson keeps the last: leave it to jansson */
            seen |= 1u << k;
            if (member(s, depth + 1, &t->f[k], o) < 0) return -1;
        } else {
            val_t v;
            if (value(s, depth + 1, &v) < 0) return -1;
        }
        ws(s);
        if (s->p >= s->end) return -1;
        if (*s->p == '}') {
            s->p++;
            return 1;
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
        v->kind = V_OBJ;
        v->nonempty = object(s, depth, &no_fields, NULL);
        return v->nonempty < 0 ? -1 : 0;
    case '[':
        if (depth + 1 > SCAN_MAX_DEPTH) return -1;
        v->kind = V_ARR;
        s->p++;
        return skip_array(s, depth + 1, &v->nonempty);
    default: v->kind = V_NUM; return num(s, &v->num, &v->inum, &v->is_int);
    }
}

/* ---- what is read of each object ------------------------------------------ */

/* delivery_info: read as json_string_value / truthiness, anything else ignored */
static const field_t info_f[] = {
    FIELD("exchange", F_STR_ANY, exchange),
    FIELD("routing_key", F_STR_ANY, routing_key),
    FIELD("delivery_tag", F_STR_ANY, info_tag),
    FIELD("redelivered", F_TRUTHY, info_redelivered),
};
static const fields_t info_fields = FIELDS(info_f);

static const field_t prop_f[] = {
    FIELD("body_encoding", F_BASE64, base64),
    FIELD("correlation_id", F_STR_ANY, correlation_id),
    FIELD("reply_to", F_STR_ANY, reply_to),
    FIELD("priority", F_PRIORITY, priority),
    FIELD("delivery_tag", F_STR_ANY, prop_tag),
    FIELD_OBJ("delivery_info", F_OBJ_ANY, has_info, &info_fields),
};
static const fields_t prop_fields = FIELDS(prop_f);

static const field_t header_f[] = {
    FIELD("task", F_STR, task),
    FIELD("id", F_STR, id),
    FIELD("root_id", F_STR_NULL, root_id),
    FIELD("parent_id", F_STR_NULL, parent_id),
    FIELD("group", F_STR_NULL, group),
    FIELD("shadow", F_STR_NULL, shadow),
    FIELD("origin", F_STR_NULL, origin),
    FIELD("argsrepr", F_STR_NULL, argsrepr),
    FIELD("kwargsrepr", F_STR_NULL, kwargsrepr),
    FIELD("eta", F_STR_NULL, eta),
    FIELD("expires", F_STR_NULL, expires),
    FIELD("retries", F_INT_NULL, retries),
    FIELD("group_index", F_INT_NULL, group_index),
    { "timelimit", sizeof("timelimit") - 1, F_LIMITS, offsetof(cel_env_scan_t, time_limit),
      offsetof(cel_env_scan_t, soft_time_limit), NULL },
    FIELD("ignore_result", F_TRUTHY, ignore_result),
    FIELD("redelivered", F_TRUTHY, redelivered),
    { "compression", sizeof("compression") - 1, F_NULL, 0, 0, NULL }, /* nothing stored */
};
static const fields_t header_fields = FIELDS(header_f);

static const field_t top_f[] = {
    FIELD("body", F_STR, body),
    FIELD_OBJ("headers", F_OBJ, has_headers, &header_fields),
    FIELD_OBJ("properties", F_OBJ, has_props, &prop_fields),
    FIELD("content-type", F_STR_ANY, content_type),
    FIELD("content-encoding", F_STR_ANY, content_encoding),
};
static const fields_t top_fields = FIELDS(top_f);

/* the longest table: object() marks the keys it has seen in 32 bits */
_Static_assert(sizeof(header_f) / sizeof(header_f[0]) <= 32, "too many wanted keys");

int cel_env_scan(const char *buf, size_t len, cel_env_scan_t *out) {
    memset(out, 0, sizeof(*out));
    out->group_index = -1;
    scan_t s = { buf, buf + len };
    ws(&s);
    if (len > CEL_MSG_MAX_BYTES || s.p >= s.end || *s.p != '{' ||
        object(&s, 0, &top_fields, out) < 0)
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
