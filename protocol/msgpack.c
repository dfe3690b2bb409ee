/* msgpack.c -- msgpack bytes <-> jansson values, for bodies and executor frames.
 *
 * Decoding is our own small reader rather than msgpack-c's unpacker: that one
 * sizes an array from its header before reading the elements (a 5-byte input
 * can ask for gigabytes) and has its own fixed nesting stack. Here every count
 * is checked against CEL_MSG_MAX_ITEMS and the bytes left before anything is
 * allocated, and nesting against CEL_MSG_MAX_DEPTH. Map keys must be strings;
 * bin is accepted when it is valid UTF-8 (Python msgpack without raw=False
 * sends str as bin only in old versions); ext, NaN/Inf and integers beyond
 * int64 are refused (CEL_ETYPE). Encoding uses msgpack-c's packer (compact
 * ints, float64, str8). No I/O; main process and executors.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "internal.h"

typedef struct reader {
    const uint8_t *p;
    const uint8_t *end;
    cel_err_t *err;
} reader_t;

static int need(reader_t *r, size_t n) {
    if ((size_t)(r->end - r->p) < n) return cel_err_set(r->err, CEL_EPROTO, "truncated msgpack");
    return CEL_OK;
}

static uint64_t be(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* Reads an n-byte big-endian unsigned length/value. */
static int read_uint(reader_t *r, int n, uint64_t *v) {
    int rc = need(r, (size_t)n);
    if (rc) return rc;
    *v = be(r->p, n);
    r->p += n;
    return CEL_OK;
}

static int make_string(reader_t *r, uint64_t n, int is_bin, json_t **out) {
    int rc = need(r, n);
    if (rc) return rc;
    json_t *s = json_stringn((const char *)r->p, (size_t)n);
    if (!s)
        return cel_err_set(r->err, CEL_ETYPE, "msgpack %s is not valid UTF-8",
                           is_bin ? "bin" : "str");
    r->p += n;
    *out = s;
    return CEL_OK;
}

static int read_value(reader_t *r, int depth, json_t **out);

static int read_array(reader_t *r, uint64_t n, int depth, json_t **out) {
    if (depth >= CEL_MSG_MAX_DEPTH)
        return cel_err_set(r->err, CEL_ELIMIT, "msgpack nested deeper than %d", CEL_MSG_MAX_DEPTH);
    if (n > CEL_MSG_MAX_ITEMS)
        return cel_err_set(r->err, CEL_ELIMIT, "msgpack array of %llu items is over the limit",
                           (unsigned long long)n);
    if (n > (uint64_t)(r->end - r->p)) /* every element takes at least one byte */
        return cel_err_set(r->err, CEL_EPROTO, "truncated msgpack");
    json_t *a = json_array();
    if (!a) return cel_err_set(r->err, CEL_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        json_t *v = NULL;
        int rc = read_value(r, depth + 1, &v);
        if (rc == CEL_OK && json_array_append_new(a, v) != 0)
            rc = cel_err_set(r->err, CEL_ENOMEM, "out of memory");
        if (rc) {
            json_decref(a);
            return rc;
        }
    }
    *out = a;
    return CEL_OK;
}

static int read_map(reader_t *r, uint64_t n, int depth, json_t **out) {
    if (depth >= CEL_MSG_MAX_DEPTH)
        return cel_err_set(r->err, CEL_ELIMIT, "msgpack nested deeper than %d", CEL_MSG_MAX_DEPTH);
    if (n > CEL_MSG_MAX_ITEMS)
        return cel_err_set(r->err, CEL_ELIMIT, "msgpack map of %llu entries is over the limit",
                           (unsigned long long)n);
    if (n > (uint64_t)(r->end - r->p) / 2)
        return cel_err_set(r->err, CEL_EPROTO, "truncated msgpack");
    json_t *o = json_object();
    if (!o) return cel_err_set(r->err, CEL_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < n; i++) {
        json_t *k = NULL, *v = NULL;
        int rc = read_value(r, depth + 1, &k);
        if (rc == CEL_OK && !json_is_string(k))
            rc = cel_err_set(r->err, CEL_ETYPE, "msgpack map key is not a string");
        if (rc == CEL_OK) rc = read_value(r, depth + 1, &v);
        if (rc == CEL_OK &&
            json_object_setn_new(o, json_string_value(k), json_string_length(k), v) != 0) {
            v = NULL; /* setn_new consumed it */
            rc = cel_err_set(r->err, CEL_ENOMEM, "out of memory");
        }
        json_decref(k);
        if (rc) {
            json_decref(o);
            return rc;
        }
    }
    *out = o;
    return CEL_OK;
}

static int read_value(reader_t *r, int depth, json_t **out) {
    int rc = need(r, 1);
    if (rc) return rc;
    uint8_t c = *r->p++;
    uint64_t u;
    json_t *v = NULL;
    if (c <= 0x7f) {
        v = json_integer(c);
    } else if (c >= 0xe0) {
        v = json_integer((int8_t)c);
    } else if (c >= 0x80 && c <= 0x8f) {
        return read_map(r, c & 0x0f, depth, out);
    } else if (c >= 0x90 && c <= 0x9f) {
        return read_array(r, c & 0x0f, depth, out);
    } else if (c >= 0xa0 && c <= 0xbf) {
        return make_string(r, c & 0x1f, 0, out);
    } else {
        switch (c) {
        case 0xc0: v = json_null(); break;
        case 0xc2: v = json_false(); break;
        case 0xc3: v = json_true(); break;
        case 0xc4:
        case 0xc5:
        case 0xc6:
            if ((rc = read_uint(r, 1 << (c - 0xc4), &u))) return rc;
            return make_string(r, u, 1, out);
        case 0xd9:
        case 0xda:
        case 0xdb:
            if ((rc = read_uint(r, 1 << (c - 0xd9), &u))) return rc;
            return make_string(r, u, 0, out);
        case 0xca:
        case 0xcb: {
            double d;
            if ((rc = read_uint(r, c == 0xca ? 4 : 8, &u))) return rc;
            if (c == 0xca) {
                uint32_t w = (uint32_t)u;
                float f;
                memcpy(&f, &w, 4);
                d = f;
            } else {
                memcpy(&d, &u, 8);
            }
            if (!isfinite(d))
                return cel_err_set(r->err, CEL_ETYPE, "msgpack float is NaN or infinite");
            v = json_real(d);
            break;
        }
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf:
            if ((rc = read_uint(r, 1 << (c - 0xcc), &u))) return rc;
            if (u > (uint64_t)INT64_MAX)
                return cel_err_set(r->err, CEL_ETYPE, "msgpack integer %llu is beyond int64",
                                   (unsigned long long)u);
            v = json_integer((json_int_t)u);
            break;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: {
            int n = 1 << (c - 0xd0);
            if ((rc = read_uint(r, n, &u))) return rc;
            int64_t s;
            if (n == 8) {
                memcpy(&s, &u, 8);
            } else {
                uint64_t sign = 1ull << (n * 8 - 1);
                s = (u & sign) ? (int64_t)(u - sign) - (int64_t)sign : (int64_t)u;
            }
            v = json_integer((json_int_t)s);
            break;
        }
        case 0xdc:
        case 0xdd:
            if ((rc = read_uint(r, c == 0xdc ? 2 : 4, &u))) return rc;
            return read_array(r, u, depth, out);
        case 0xde:
        case 0xdf:
            if ((rc = read_uint(r, c == 0xde ? 2 : 4, &u))) return rc;
            return read_map(r, u, depth, out);
        case 0xc7:
        case 0xc8:
        case 0xc9:
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8: return cel_err_set(r->err, CEL_ETYPE, "msgpack ext type is not supported");
        default: return cel_err_set(r->err, CEL_EPROTO, "invalid msgpack byte 0x%02x", c);
        }
    }
    if (!v) return cel_err_set(r->err, CEL_ENOMEM, "out of memory");
    *out = v;
    return CEL_OK;
}

/* Decodes exactly one msgpack value filling buf[0..len). *out is a new
 * reference on CEL_OK, NULL otherwise. Errors: CEL_EPROTO (truncated, invalid
 * byte, trailing bytes), CEL_ETYPE (non-string key, ext, bad UTF-8, NaN/Inf,
 * > int64), CEL_ELIMIT (size, depth, count), CEL_ENOMEM. */
int cel_msgpack_to_json(const uint8_t *buf, size_t len, json_t **out, cel_err_t *err) {
    *out = NULL;
    if (len > CEL_MSG_MAX_BYTES)
        return cel_err_set(err, CEL_ELIMIT, "msgpack of %zu bytes is over the limit", len);
    if (len == 0) return cel_err_set(err, CEL_EPROTO, "empty msgpack");
    reader_t r = { buf, buf + len, err };
    json_t *v = NULL;
    int rc = read_value(&r, 0, &v);
    if (rc) return rc;
    if (r.p != r.end) {
        json_decref(v);
        return cel_err_set(err, CEL_EPROTO, "%zu trailing bytes after msgpack value",
                           (size_t)(r.end - r.p));
    }
    *out = v;
    return CEL_OK;
}

typedef struct writer {
    uint8_t **buf;
    size_t *len;
    size_t *cap;
    int oom;
} writer_t;

static int on_write(void *data, const char *p, size_t n) {
    writer_t *w = data;
    if (w->oom) return -1;
    if (n > SIZE_MAX / 2 - *w->len) {
        w->oom = 1;
        return -1;
    }
    if (*w->len + n > *w->cap) {
        size_t cap = *w->cap ? *w->cap : 256;
        while (cap < *w->len + n) cap *= 2;
        uint8_t *nb = realloc(*w->buf, cap);
        if (!nb) {
            w->oom = 1;
            return -1;
        }
        *w->buf = nb;
        *w->cap = cap;
    }
    memcpy(*w->buf + *w->len, p, n);
    *w->len += n;
    return 0;
}

static int pack(msgpack_packer *pk, json_t *v, int depth, cel_err_t *err) {
    if (depth > CEL_ENC_MAX_DEPTH)
        return cel_err_set(err, CEL_ELIMIT, "value nested deeper than %d", CEL_ENC_MAX_DEPTH);
    switch (json_typeof(v)) {
    case JSON_NULL: msgpack_pack_nil(pk); break;
    case JSON_TRUE: msgpack_pack_true(pk); break;
    case JSON_FALSE: msgpack_pack_false(pk); break;
    case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(v)); break;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(v)); break;
    case JSON_STRING:
        msgpack_pack_str_with_body(pk, json_string_value(v), json_string_length(v));
        break;
    case JSON_ARRAY:
        msgpack_pack_array(pk, json_array_size(v));
        for (size_t i = 0; i < json_array_size(v); i++) {
            int rc = pack(pk, json_array_get(v, i), depth + 1, err);
            if (rc) return rc;
        }
        break;
    case JSON_OBJECT: {
        const char *key;
        size_t klen;
        json_t *val;
        msgpack_pack_map(pk, json_object_size(v));
        json_object_keylen_foreach(v, key, klen, val) {
            msgpack_pack_str_with_body(pk, key, klen);
            int rc = pack(pk, val, depth + 1, err);
            if (rc) return rc;
        }
        break;
    }
    }
    return CEL_OK;
}

/* Appends msgpack of v to *buf (see protocol.h). On failure *len is restored
 * to its value at entry (the buffer may have grown). */
int cel_json_to_msgpack(json_t *v, uint8_t **buf, size_t *len, size_t *cap, cel_err_t *err) {
    if (!v) return cel_err_set(err, CEL_EINVAL, "NULL value");
    size_t start = *len;
    writer_t w = { buf, len, cap, 0 };
    msgpack_packer pk;
    msgpack_packer_init(&pk, &w, on_write);
    int rc = pack(&pk, v, 0, err);
    if (rc == CEL_OK && w.oom) rc = cel_err_set(err, CEL_ENOMEM, "out of memory packing msgpack");
    if (rc) *len = start;
    return rc;
}
