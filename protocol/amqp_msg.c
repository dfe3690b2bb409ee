/* amqp_msg.c -- AMQP field tables and basic properties <-> JSON, and the rpc:// reply body.
 *
 * Decoding walks librabbitmq-c's already-decoded structures (the bytes were
 * parsed by amqp_decode_table inside the library; tests/fuzz/fuzz_amqp_table.c
 * runs both on arbitrary bytes) and checks what the wire controls: nesting,
 * entry counts, UTF-8 (replaced, as Python's errors='replace'), non-finite
 * floats. Encoding follows py-amqp's
 * _write_item so a RabbitMQ that compares queue arguments (x-expires as a
 * signed 32-bit 'I', not a 64-bit 'L') sees exactly what kombu declares.
 * The rpc reply is cut out of the meta text rather than re-parsed, so big
 * integers and Python's NaN survive byte for byte. No I/O; the AMQP
 * connection thread and the main loop both call in.
 */
#include "amqp_msg.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ---- table -> JSON ----------------------------------------------------- */

static int value_to_json(const amqp_field_value_t *v, int depth, json_t **out, cel_err_t *err);

/* s[0..n) as a JSON string; bytes that are not UTF-8 become U+FFFD, one
 * per byte. py-amqp writes str with 'surrogatepass', so a lone surrogate in
 * a display-only header (argsrepr) arrives as ED A0 80: the message is still
 * read (as the envelope decoder replaces "\ud800" on Redis), and a body
 * with one still fails that task with a clear error. NULL when out of memory. */
static json_t *lenient_string(const uint8_t *s, size_t n) {
    json_t *j = json_stringn(n ? (const char *)s : "", n);
    if (j || n > CEL_MSG_MAX_BYTES / 3) return j;
    cel_buf_t b = { 0 };
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = cel_json_utf8_decode(s + i, n - i, &cp);
        if (k) {
            cel_buf_put(&b, (const char *)s + i, k);
            i += k;
        } else {
            cel_buf_put(&b, "\xef\xbf\xbd", 3);
            i++;
        }
    }
    size_t len = b.len;
    char *text = cel_buf_take(&b);
    j = text ? json_stringn(text, len) : NULL;
    free(text);
    return j;
}

/* A string from the wire (NUL allowed, as Python's str). */
static int bytes_to_string(amqp_bytes_t b, json_t **out, cel_err_t *err) {
    if (b.len > CEL_MSG_MAX_BYTES) return cel_err_set(err, CEL_ELIMIT, "string too long");
    *out = lenient_string(b.bytes, b.len);
    if (!*out) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    return CEL_OK;
}

static int table_to_json(const amqp_table_t *t, int depth, json_t **out, cel_err_t *err) {
    *out = NULL;
    if (depth > CEL_MSG_MAX_DEPTH)
        return cel_err_set(err, CEL_ELIMIT, "field table nested deeper than %d levels",
                           CEL_MSG_MAX_DEPTH);
    if (t->num_entries < 0 || t->num_entries > CEL_AMQP_MAX_ITEMS)
        return cel_err_set(err, CEL_ELIMIT, "field table of %d entries", t->num_entries);
    json_t *o = json_object();
    if (!o) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (int i = 0; i < t->num_entries; i++) {
        const amqp_table_entry_t *e = &t->entries[i];
        json_t *v;
        int rc = value_to_json(&e->value, depth + 1, &v, err);
        if (rc != CEL_OK) {
            json_decref(o);
            return rc;
        }
        /* Keys are short strings; one that is not UTF-8 gets the same
         * replacement as values. */
        json_t *k = lenient_string(e->key.bytes, e->key.len);
        if (!k || json_object_setn_new(o, json_string_value(k), json_string_length(k), v)) {
            json_decref(k);
            json_decref(o);
            return cel_err_set(err, CEL_ENOMEM, "out of memory");
        }
        json_decref(k);
    }
    *out = o;
    return CEL_OK;
}

static int array_to_json(const amqp_array_t *a, int depth, json_t **out, cel_err_t *err) {
    *out = NULL;
    if (depth > CEL_MSG_MAX_DEPTH)
        return cel_err_set(err, CEL_ELIMIT, "field array nested deeper than %d levels",
                           CEL_MSG_MAX_DEPTH);
    if (a->num_entries < 0 || a->num_entries > CEL_AMQP_MAX_ITEMS)
        return cel_err_set(err, CEL_ELIMIT, "field array of %d entries", a->num_entries);
    json_t *arr = json_array();
    if (!arr) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (int i = 0; i < a->num_entries; i++) {
        json_t *v;
        int rc = value_to_json(&a->entries[i], depth + 1, &v, err);
        if (rc != CEL_OK) {
            json_decref(arr);
            return rc;
        }
        if (json_array_append_new(arr, v)) {
            json_decref(arr);
            return cel_err_set(err, CEL_ENOMEM, "out of memory");
        }
    }
    *out = arr;
    return CEL_OK;
}

static int real_to_json(double d, json_t **out, cel_err_t *err) {
    if (!isfinite(d)) return cel_err_set(err, CEL_ETYPE, "a non-finite float in a field table");
    *out = json_real(d);
    return *out ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
}

static int value_to_json(const amqp_field_value_t *v, int depth, json_t **out, cel_err_t *err) {
    *out = NULL;
    json_t *j = NULL;
    switch (v->kind) {
    case AMQP_FIELD_KIND_BOOLEAN: j = json_boolean(v->value.boolean); break;
    case AMQP_FIELD_KIND_I8: j = json_integer(v->value.i8); break;
    case AMQP_FIELD_KIND_U8: j = json_integer(v->value.u8); break;
    case AMQP_FIELD_KIND_I16: j = json_integer(v->value.i16); break;
    case AMQP_FIELD_KIND_U16: j = json_integer(v->value.u16); break;
    case AMQP_FIELD_KIND_I32: j = json_integer(v->value.i32); break;
    case AMQP_FIELD_KIND_U32: j = json_integer(v->value.u32); break;
    case AMQP_FIELD_KIND_I64: j = json_integer(v->value.i64); break;
    /* librabbitmq names 'L' unsigned; py-amqp writes (and reads) it as a
     * signed long long, and nothing in Python sends more than that. */
    case AMQP_FIELD_KIND_U64: j = json_integer((json_int_t)(int64_t)v->value.u64); break;
    case AMQP_FIELD_KIND_TIMESTAMP:
        if (v->value.u64 > (uint64_t)INT64_MAX)
            return cel_err_set(err, CEL_ETYPE, "timestamp out of range in a field table");
        j = json_integer((json_int_t)v->value.u64);
        break;
    case AMQP_FIELD_KIND_F32: return real_to_json(v->value.f32, out, err);
    case AMQP_FIELD_KIND_F64: return real_to_json(v->value.f64, out, err);
    case AMQP_FIELD_KIND_DECIMAL: {
        if (v->value.decimal.decimals > 30)
            return cel_err_set(err, CEL_ETYPE, "decimal with %u places in a field table",
                               (unsigned)v->value.decimal.decimals);
        double d = (double)(int32_t)v->value.decimal.value;
        for (unsigned i = 0; i < v->value.decimal.decimals; i++) d /= 10;
        return real_to_json(d, out, err);
    }
    case AMQP_FIELD_KIND_UTF8:
    case AMQP_FIELD_KIND_BYTES: return bytes_to_string(v->value.bytes, out, err);
    case AMQP_FIELD_KIND_VOID: j = json_null(); break;
    case AMQP_FIELD_KIND_TABLE: return table_to_json(&v->value.table, depth, out, err);
    case AMQP_FIELD_KIND_ARRAY: return array_to_json(&v->value.array, depth, out, err);
    default:
        return cel_err_set(err, CEL_ETYPE, "unknown field kind 0x%02x in a field table",
                           (unsigned)v->kind);
    }
    if (!j) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    *out = j;
    return CEL_OK;
}

int cel_amqp_table_to_json(const amqp_table_t *t, json_t **out, cel_err_t *err) {
    return table_to_json(t, 1, out, err);
}

/* Sets props[key] to a short string when it is UTF-8 (kombu decodes
 * shortstr properties as text; one that is not is dropped, not fatal). */
static int set_short(json_t *props, const char *key, amqp_bytes_t b) {
    json_t *s = json_stringn(b.len ? (const char *)b.bytes : "", b.len);
    if (!s) return 0;
    return json_object_set_new(props, key, s);
}

int cel_amqp_props_to_json(const amqp_basic_properties_t *p, json_t **props, json_t **headers,
                           cel_err_t *err) {
    *props = *headers = NULL;
    json_t *o = json_object();
    if (!o) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    amqp_flags_t f = p->_flags;
    int bad = 0;
    if (f & AMQP_BASIC_CONTENT_TYPE_FLAG) bad |= set_short(o, "content_type", p->content_type);
    if (f & AMQP_BASIC_CONTENT_ENCODING_FLAG)
        bad |= set_short(o, "content_encoding", p->content_encoding);
    if (f & AMQP_BASIC_DELIVERY_MODE_FLAG)
        bad |= json_object_set_new(o, "delivery_mode", json_integer(p->delivery_mode));
    if (f & AMQP_BASIC_PRIORITY_FLAG)
        bad |= json_object_set_new(o, "priority", json_integer(p->priority));
    if (f & AMQP_BASIC_CORRELATION_ID_FLAG)
        bad |= set_short(o, "correlation_id", p->correlation_id);
    if (f & AMQP_BASIC_REPLY_TO_FLAG) bad |= set_short(o, "reply_to", p->reply_to);
    if (f & AMQP_BASIC_EXPIRATION_FLAG) bad |= set_short(o, "expiration", p->expiration);
    if (f & AMQP_BASIC_MESSAGE_ID_FLAG) bad |= set_short(o, "message_id", p->message_id);
    if (f & AMQP_BASIC_TIMESTAMP_FLAG && p->timestamp <= (uint64_t)INT64_MAX)
        bad |= json_object_set_new(o, "timestamp", json_integer((json_int_t)p->timestamp));
    if (f & AMQP_BASIC_TYPE_FLAG) bad |= set_short(o, "type", p->type);
    if (f & AMQP_BASIC_USER_ID_FLAG) bad |= set_short(o, "user_id", p->user_id);
    if (f & AMQP_BASIC_APP_ID_FLAG) bad |= set_short(o, "app_id", p->app_id);
    if (f & AMQP_BASIC_CLUSTER_ID_FLAG) bad |= set_short(o, "cluster_id", p->cluster_id);
    if (bad) {
        json_decref(o);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    json_t *h;
    int rc;
    if (f & AMQP_BASIC_HEADERS_FLAG) {
        rc = cel_amqp_table_to_json(&p->headers, &h, err);
    } else {
        h = json_object();
        rc = h ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    if (rc != CEL_OK) {
        json_decref(o);
        return rc;
    }
    *props = o;
    *headers = h;
    return CEL_OK;
}

/* ---- JSON -> table ----------------------------------------------------- */

static int json_to_value(json_t *j, int depth, amqp_field_value_t *v, cel_err_t *err);

static amqp_bytes_t str_bytes(json_t *s) {
    amqp_bytes_t b;
    b.len = json_string_length(s);
    b.bytes = (void *)json_string_value(s);
    return b;
}

static int json_to_table_at(json_t *obj, int depth, amqp_table_t *out, cel_err_t *err) {
    if (depth > CEL_MSG_MAX_DEPTH)
        return cel_err_set(err, CEL_ELIMIT, "headers nested deeper than %d levels",
                           CEL_MSG_MAX_DEPTH);
    size_t n = json_object_size(obj);
    if (n > CEL_AMQP_MAX_ITEMS) return cel_err_set(err, CEL_ELIMIT, "a table of %zu entries", n);
    out->num_entries = (int)n;
    out->entries = NULL;
    if (!n) return CEL_OK;
    out->entries = calloc(n, sizeof(amqp_table_entry_t));
    if (!out->entries) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    size_t i = 0;
    for (void *it = json_object_iter(obj); it && i < n; it = json_object_iter_next(obj, it)) {
        json_t *val = json_object_iter_value(it);
        amqp_table_entry_t *e = &out->entries[i++];
        e->key.bytes = (void *)json_object_iter_key(it);
        e->key.len = json_object_iter_key_len(it); /* a key may hold a NUL */
        if (e->key.len > 255)
            return cel_err_set(err, CEL_ELIMIT, "a table key of %zu bytes (max 255)", e->key.len);
        int rc = json_to_value(val, depth + 1, &e->value, err);
        if (rc != CEL_OK) return rc;
    }
    return CEL_OK;
}

static int json_to_value(json_t *j, int depth, amqp_field_value_t *v, cel_err_t *err) {
    switch (json_typeof(j)) {
    case JSON_STRING:
        v->kind = AMQP_FIELD_KIND_UTF8;
        v->value.bytes = str_bytes(j);
        return CEL_OK;
    case JSON_TRUE:
    case JSON_FALSE:
        v->kind = AMQP_FIELD_KIND_BOOLEAN;
        v->value.boolean = json_is_true(j);
        return CEL_OK;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(j);
        if (i > 2147483647 || i < -2147483647) { /* py-amqp's bounds, -2^31 included */
            v->kind = AMQP_FIELD_KIND_U64;       /* 'L', signed as py-amqp writes it */
            v->value.u64 = (uint64_t)(int64_t)i;
        } else {
            v->kind = AMQP_FIELD_KIND_I32;
            v->value.i32 = (int32_t)i;
        }
        return CEL_OK;
    }
    case JSON_REAL:
        if (!isfinite(json_real_value(j)))
            return cel_err_set(err, CEL_ETYPE, "a non-finite float in headers");
        v->kind = AMQP_FIELD_KIND_F64;
        v->value.f64 = json_real_value(j);
        return CEL_OK;
    case JSON_NULL: v->kind = AMQP_FIELD_KIND_VOID; return CEL_OK;
    case JSON_OBJECT:
        v->kind = AMQP_FIELD_KIND_TABLE;
        return json_to_table_at(j, depth, &v->value.table, err);
    case JSON_ARRAY: {
        if (depth > CEL_MSG_MAX_DEPTH)
            return cel_err_set(err, CEL_ELIMIT, "headers nested deeper than %d levels",
                               CEL_MSG_MAX_DEPTH);
        size_t n = json_array_size(j);
        if (n > CEL_AMQP_MAX_ITEMS) return cel_err_set(err, CEL_ELIMIT, "an array of %zu", n);
        v->kind = AMQP_FIELD_KIND_ARRAY;
        v->value.array.num_entries = (int)n;
        v->value.array.entries = NULL;
        if (!n) return CEL_OK;
        v->value.array.entries = calloc(n, sizeof(amqp_field_value_t));
        if (!v->value.array.entries) return cel_err_set(err, CEL_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            int rc =
                json_to_value(json_array_get(j, i), depth + 1, &v->value.array.entries[i], err);
            if (rc != CEL_OK) return rc;
        }
        return CEL_OK;
    }
    }
    return cel_err_set(err, CEL_ETYPE, "a value headers cannot hold");
}

static void free_value(amqp_field_value_t *v);

static void free_entries(amqp_table_t *t) {
    for (int i = 0; t->entries && i < t->num_entries; i++) free_value(&t->entries[i].value);
    free(t->entries);
    t->entries = NULL;
    t->num_entries = 0;
}

static void free_value(amqp_field_value_t *v) {
    if (v->kind == AMQP_FIELD_KIND_TABLE) {
        free_entries(&v->value.table);
    } else if (v->kind == AMQP_FIELD_KIND_ARRAY) {
        for (int i = 0; v->value.array.entries && i < v->value.array.num_entries; i++)
            free_value(&v->value.array.entries[i]);
        free(v->value.array.entries);
        v->value.array.entries = NULL;
    }
}

void cel_amqp_table_free(amqp_table_t *t) {
    if (t) free_entries(t);
}

int cel_amqp_json_to_table(json_t *obj, amqp_table_t *out, cel_err_t *err) {
    out->num_entries = 0;
    out->entries = NULL;
    if (!json_is_object(obj)) return cel_err_set(err, CEL_EINVAL, "headers must be a mapping");
    int rc = json_to_table_at(obj, 1, out, err);
    if (rc != CEL_OK) free_entries(out);
    return rc;
}

/* ---- peek -------------------------------------------------------------- */

static void peek_field(json_t *obj, const char *key, char *out) {
    out[0] = '\0';
    json_t *v = json_object_get(obj, key);
    if (!json_is_string(v)) return;
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n > CEL_PEEK_STR_MAX || strlen(s) != n) return; /* too long, or holds a NUL */
    memcpy(out, s, n + 1);
}

int cel_peek_amqp(json_t *headers, json_t *props, cel_peek_t *out, cel_err_t *err) {
    peek_field(headers, "id", out->id);
    peek_field(headers, "task", out->task);
    peek_field(headers, "root_id", out->root_id);
    peek_field(headers, "parent_id", out->parent_id);
    peek_field(headers, "group", out->group);
    peek_field(props, "correlation_id", out->correlation_id);
    peek_field(props, "reply_to", out->reply_to);
    return CEL_OK;
}

/* ---- rpc:// reply ------------------------------------------------------ */

/* A span of the meta text. */
typedef struct span {
    const char *p;
    size_t n;
} span_t;

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}

/* Past the string whose opening quote is at p, or NULL (also for a raw
 * control character, which JSON does not allow in a string). */
static const char *skip_string(const char *p, const char *end) {
    for (p++; p < end; p++) {
        if ((unsigned char)*p < 0x20) return NULL;
        if (*p == '\\') p++;
        else if (*p == '"') return p + 1;
    }
    return NULL;
}

/* A character of a bare JSON value: a number, true/false/null, Python's NaN/Infinity. */
static int bare(char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' ||
           c == '+' || c == '.';
}

/* Past one JSON value starting at p (a string, a container, or a bare word
 * such as a number, null or Python's NaN), or NULL when it does not end. */
static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return NULL;
    if (*p == '"') return skip_string(p, end);
    if (*p == '[' || *p == '{') {
        size_t depth = 0;
        while (p < end) {
            if (*p == '"') {
                if (!(p = skip_string(p, end))) return NULL;
                continue;
            }
            unsigned char u = (unsigned char)*p;
            if (u < 0x20 && u != '\t' && u != '\n' && u != '\r') return NULL; /* not JSON */
            if (*p == '[' || *p == '{') depth++;
            else if (*p == ']' || *p == '}') {
                if (--depth == 0) return p + 1;
            }
            p++;
        }
        return NULL;
    }
    const char *s = p;
    while (p < end && bare(*p)) p++;
    return p > s ? p : NULL;
}

int cel_meta_to_rpc(const char *meta, size_t len, char **out, size_t *out_len, cel_err_t *err) {
    static const char *const want[] = { "task_id", "status", "result", "traceback", "children" };
    enum { NWANT = 5 };
    span_t got[NWANT] = { { 0 } };
    *out = NULL;
    const char *p = meta, *end = meta + len;
    p = skip_ws(p, end);
    if (p >= end || *p != '{') return cel_err_set(err, CEL_EPROTO, "result meta is not an object");
    p++;
    for (;;) {
        p = skip_ws(p, end);
        if (p < end && *p == '}') break;
        if (p >= end || *p != '"') return cel_err_set(err, CEL_EPROTO, "result meta: bad key");
        const char *k = p + 1, *kend = skip_string(p, end);
        if (!kend) return cel_err_set(err, CEL_EPROTO, "result meta: unterminated key");
        size_t klen = (size_t)(kend - 1 - k);
        p = skip_ws(kend, end);
        if (p >= end || *p != ':') return cel_err_set(err, CEL_EPROTO, "result meta: no ':'");
        p = skip_ws(p + 1, end);
        const char *v = p;
        if (!(p = skip_value(p, end)))
            return cel_err_set(err, CEL_EPROTO, "result meta: unterminated value");
        for (int i = 0; i < NWANT; i++)
            if (strlen(want[i]) == klen && memcmp(want[i], k, klen) == 0)
                got[i] = (span_t){ v, (size_t)(p - v) };
        p = skip_ws(p, end);
        if (p < end && *p == ',') {
            p++;
            continue;
        }
        if (p < end && *p == '}') break;
        return cel_err_set(err, CEL_EPROTO, "result meta: expected ',' or '}'");
    }
    cel_buf_t b = { 0 };
    cel_buf_putc(&b, '{');
    for (int i = 0; i < NWANT; i++) {
        if (!got[i].p) {
            cel_buf_free(&b);
            return cel_err_set(err, CEL_EPROTO, "result meta has no '%s'", want[i]);
        }
        cel_buf_printf(&b, "%s\"%s\": ", i ? ", " : "", want[i]);
        cel_buf_put(&b, got[i].p, got[i].n);
    }
    cel_buf_putc(&b, '}');
    size_t n = b.len;
    char *s = cel_buf_take(&b);
    if (!s) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    *out = s;
    *out_len = n;
    return CEL_OK;
}
