/* frame.c -- length-prefixed frames: the incremental reader, the header, the typed codecs.
 *
 * Implements frame.h. Pure: no I/O, no logging. The reader owns one growing
 * buffer; consumed bytes are dropped lazily (on the next feed) so a payload
 * handed out by cel_frame_reader_next stays valid until then. A length prefix
 * above the reader's maximum is a sticky CEL_ELIMIT: the stream cannot be
 * resynchronised, so every later call fails the same way.
 * The codecs write msgpack by hand (maps, strings, numbers) and append json_t
 * values with cel_json_to_msgpack. Decoding walks the top-level map once,
 * noting where each wanted value lies and skipping the rest; the strings are
 * then checked and copied into one block per frame, and only the json_t
 * fields (args, result, meta...) are built as trees (cel_msgpack_to_json,
 * with its limits). Used by the main process (libuv reads) and by executors
 * (blocking reads).
 */
#include "frame.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define FRAME_BUF_MIN 4096 /* first allocation; grows by doubling */

struct cel_frame_reader {
    uint8_t *buf;
    size_t cap; /* allocated bytes */
    size_t off; /* start of unconsumed bytes */
    size_t len; /* end of buffered bytes (buf[off..len) unconsumed) */
    size_t max; /* largest payload accepted */
    int err;    /* sticky error, CEL_OK while healthy */
    size_t bad; /* the offending length when err == CEL_ELIMIT */
};

cel_frame_reader_t *cel_frame_reader_new(size_t max_payload) {
    if (max_payload > CEL_FRAME_MAX) max_payload = CEL_FRAME_MAX;
    cel_frame_reader_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->max = max_payload;
    return r;
}

void cel_frame_reader_free(cel_frame_reader_t *r) {
    if (!r) return;
    free(r->buf);
    free(r);
}

/* Makes room for `need` more bytes after r->len, first dropping consumed bytes. */
static int reserve(cel_frame_reader_t *r, size_t need) {
    if (r->off > 0) {
        memmove(r->buf, r->buf + r->off, r->len - r->off);
        r->len -= r->off;
        r->off = 0;
    }
    if (need <= r->cap - r->len) return CEL_OK;
    if (need > SIZE_MAX - r->len) return CEL_ENOMEM;
    size_t want = r->len + need;
    size_t cap = r->cap ? r->cap : FRAME_BUF_MIN;
    while (cap < want) cap = cap > SIZE_MAX / 2 ? want : cap * 2;
    uint8_t *nb = realloc(r->buf, cap);
    if (!nb) return CEL_ENOMEM;
    r->buf = nb;
    r->cap = cap;
    return CEL_OK;
}

int cel_frame_reader_feed(cel_frame_reader_t *r, const void *buf, size_t len) {
    if (r->err) return r->err;
    if (len == 0) return CEL_OK;
    int rc = reserve(r, len);
    if (rc) return rc; /* ENOMEM is not sticky: the caller may retry */
    memcpy(r->buf + r->len, buf, len);
    r->len += len;
    return CEL_OK;
}

int cel_frame_reader_next(cel_frame_reader_t *r, const uint8_t **payload, size_t *len,
                          cel_err_t *err) {
    *payload = NULL;
    *len = 0;
    if (r->err == CEL_ELIMIT)
        return cel_err_set(err, CEL_ELIMIT, "frame length %zu exceeds limit %zu", r->bad, r->max);
    size_t avail = r->len - r->off;
    if (avail < CEL_FRAME_HDR) return CEL_EAGAIN;
    const uint8_t *p = r->buf + r->off;
    size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | (size_t)p[3];
    if (n > r->max) {
        r->err = CEL_ELIMIT;
        r->bad = n;
        return cel_err_set(err, CEL_ELIMIT, "frame length %zu exceeds limit %zu", n, r->max);
    }
    if (avail - CEL_FRAME_HDR < n) return CEL_EAGAIN;
    *payload = p + CEL_FRAME_HDR;
    *len = n;
    r->off += CEL_FRAME_HDR + n;
    if (r->off == r->len) r->off = r->len = 0; /* nothing left: no memmove next feed */
    return CEL_OK;
}

int cel_frame_header(size_t len, uint8_t hdr[CEL_FRAME_HDR], cel_err_t *err) {
    if (len > CEL_FRAME_MAX)
        return cel_err_set(err, CEL_ELIMIT, "frame length %zu exceeds limit %u", len,
                           CEL_FRAME_MAX);
    hdr[0] = (uint8_t)(len >> 24);
    hdr[1] = (uint8_t)(len >> 16);
    hdr[2] = (uint8_t)(len >> 8);
    hdr[3] = (uint8_t)len;
    return CEL_OK;
}

/* ---- typed frames: writing ----------------------------------------- */

#define FRAME_BUF_FIRST 256 /* first allocation of an encode buffer */

typedef struct out {
    uint8_t **buf;
    size_t *len;
    size_t *cap;
    int oom;
} out_t;

static void put(out_t *o, const void *p, size_t n) {
    if (o->oom) return;
    if (n > *o->cap - *o->len) {
        if (n > SIZE_MAX / 2 - *o->len) {
            o->oom = 1;
            return;
        }
        size_t cap = *o->cap ? *o->cap : FRAME_BUF_FIRST;
        while (cap < *o->len + n) cap *= 2;
        uint8_t *nb = realloc(*o->buf, cap);
        if (!nb) {
            o->oom = 1;
            return;
        }
        *o->buf = nb;
        *o->cap = cap;
    }
    memcpy(*o->buf + *o->len, p, n);
    *o->len += n;
}

/* A type byte followed by the n-byte big-endian value v. */
static void put_be(out_t *o, uint8_t type, uint64_t v, int n) {
    uint8_t b[9];
    b[0] = type;
    for (int i = 0; i < n; i++) b[1 + i] = (uint8_t)(v >> (8 * (n - 1 - i)));
    put(o, b, (size_t)n + 1);
}

static void put_map(out_t *o, uint32_t n) {
    if (n < 16) put_be(o, (uint8_t)(0x80 | n), 0, 0);
    else put_be(o, 0xde, n, 2);
}

static void put_str(out_t *o, const char *s, size_t n) {
    if (n < 32) put_be(o, (uint8_t)(0xa0 | n), 0, 0);
    else if (n <= 0xff) put_be(o, 0xd9, n, 1);
    else if (n <= 0xffff) put_be(o, 0xda, n, 2);
    else put_be(o, 0xdb, n, 4);
    put(o, s, n);
}

static void put_int(out_t *o, int64_t v) {
    if (v >= 0 && v < 128) put_be(o, (uint8_t)v, 0, 0);
    else if (v < 0 && v >= -32) put_be(o, (uint8_t)(int8_t)v, 0, 0);
    else put_be(o, 0xd3, (uint64_t)v, 8);
}

static void put_f64(out_t *o, double d) {
    uint64_t u;
    memcpy(&u, &d, 8);
    put_be(o, 0xcb, u, 8);
}

/* One "key": string member; the string must be set and short enough. */
static int put_field(out_t *o, const char *key, const char *s, size_t max, cel_err_t *err) {
    if (!s) return cel_err_set(err, CEL_EINVAL, "frame field '%s' is not set", key);
    size_t n = strlen(s);
    if (n > max)
        return cel_err_set(err, CEL_ELIMIT, "frame field '%s' of %zu bytes is over the limit", key,
                           n);
    put_str(o, key, strlen(key));
    put_str(o, s, n);
    return CEL_OK;
}

/* One "key": json value member. */
static int put_json(out_t *o, const char *key, json_t *v, cel_err_t *err) {
    if (!v) return cel_err_set(err, CEL_EINVAL, "frame field '%s' is not set", key);
    put_str(o, key, strlen(key));
    if (o->oom) return CEL_OK;
    return cel_json_to_msgpack(v, o->buf, o->len, o->cap, err);
}

static int finish(out_t *o, size_t start, int rc, cel_err_t *err) {
    if (rc == CEL_OK && o->oom) rc = cel_err_set(err, CEL_ENOMEM, "out of memory encoding a frame");
    if (rc != CEL_OK) *o->len = start;
    return rc;
}

int cel_frame_ready_encode(const cel_frame_ready_t *f, uint8_t **buf, size_t *len, size_t *cap,
                           cel_err_t *err) {
    out_t o = { buf, len, cap, 0 };
    size_t start = *len;
    put_map(&o, 3);
    int rc = put_field(&o, "op", "ready", CEL_FRAME_NAME_MAX, err);
    put_str(&o, "pid", 3);
    put_int(&o, f->pid);
    if (rc == CEL_OK) rc = put_field(&o, "device", f->device, CEL_FRAME_NAME_MAX, err);
    return finish(&o, start, rc, err);
}

int cel_frame_run_encode(const cel_frame_run_t *f, uint8_t **buf, size_t *len, size_t *cap,
                         cel_err_t *err) {
    out_t o = { buf, len, cap, 0 };
    size_t start = *len;
    put_map(&o, 7);
    int rc = put_field(&o, "op", "run", CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK) rc = put_field(&o, "id", f->id, CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK) rc = put_field(&o, "task", f->task, CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK) rc = put_json(&o, "args", f->args, err);
    if (rc == CEL_OK) rc = put_json(&o, "kwargs", f->kwargs, err);
    put_str(&o, "soft_time_limit", 15);
    put_f64(&o, f->soft_time_limit);
    put_str(&o, "retries", 7);
    put_int(&o, f->retries);
    return finish(&o, start, rc, err);
}

/* The "stats" member: only the fields that are set (a number > 0, or >= 0
 * for the adapter counts), so a task with nothing to report adds one byte. */
static void put_stats(out_t *o, const cel_frame_stats_t *st) {
    struct {
        const char *key;
        double v;
        int is_int;
        int set;
    } f[] = {
        { "tokens_trained", (double)st->tokens_trained, 1, st->tokens_trained > 0 },
        { "tokens_scored", (double)st->tokens_scored, 1, st->tokens_scored > 0 },
        { "pass_tasks", (double)st->pass_tasks, 1, st->pass_tasks > 0 },
        { "pass_s", st->pass_s, 0, st->pass_tasks > 0 },
        { "adapters", (double)st->adapters, 1, st->adapters >= 0 },
        { "adapters_gpu", (double)st->adapters_gpu, 1, st->adapters_gpu >= 0 },
        { "evicted", (double)st->evicted, 1, st->evicted > 0 },
        { "evicted_gpu", (double)st->evicted_gpu, 1, st->evicted_gpu > 0 },
        { "gpu_used", st->gpu_used, 0, st->gpu_used > 0 },
        { "gpu_total", st->gpu_total, 0, st->gpu_total > 0 },
    };
    uint32_t n = 0;
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) n += f[i].set ? 1 : 0;
    put_str(o, "stats", 5);
    put_map(o, n);
    for (size_t i = 0; i < sizeof(f) / sizeof(f[0]); i++) {
        if (!f[i].set) continue;
        put_str(o, f[i].key, strlen(f[i].key));
        if (f[i].is_int) put_int(o, (int64_t)f[i].v);
        else put_f64(o, f[i].v);
    }
}

int cel_frame_result_encode(const cel_frame_result_t *f, uint8_t **buf, size_t *len, size_t *cap,
                            cel_err_t *err) {
    out_t o = { buf, len, cap, 0 };
    size_t start = *len;
    put_map(&o, (f->failed ? 8 : 5) + (f->stats.present ? 1 : 0));
    int rc = put_field(&o, "op", "result", CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK) rc = put_field(&o, "id", f->id, CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK)
        rc = put_field(&o, "status", f->failed ? "FAILURE" : "SUCCESS", CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK && !f->failed) rc = put_json(&o, "result", f->result, err);
    if (rc == CEL_OK && f->failed) {
        rc = put_field(&o, "exc_type", f->exc_type, CEL_FRAME_NAME_MAX, err);
        if (rc == CEL_OK) rc = put_field(&o, "exc_module", f->exc_module, CEL_FRAME_NAME_MAX, err);
        if (rc == CEL_OK && !json_is_array(f->exc_message))
            rc = cel_err_set(err, CEL_EINVAL, "frame field 'exc_message' is not an array");
        if (rc == CEL_OK) rc = put_json(&o, "exc_message", f->exc_message, err);
        if (rc == CEL_OK && f->traceback) {
            rc = put_field(&o, "traceback", f->traceback, CEL_FRAME_MAX, err);
        } else if (rc == CEL_OK) {
            put_str(&o, "traceback", 9);
            put_be(&o, 0xc0, 0, 0);
        }
    }
    put_str(&o, "runtime", 7);
    put_f64(&o, f->runtime);
    if (f->stats.present) put_stats(&o, &f->stats);
    return finish(&o, start, rc, err);
}

int cel_frame_progress_encode(const cel_frame_progress_t *f, uint8_t **buf, size_t *len,
                              size_t *cap, cel_err_t *err) {
    out_t o = { buf, len, cap, 0 };
    size_t start = *len;
    put_map(&o, 4);
    int rc = put_field(&o, "op", "progress", CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK) rc = put_field(&o, "id", f->id, CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK) rc = put_field(&o, "state", f->state, CEL_FRAME_NAME_MAX, err);
    if (rc == CEL_OK) rc = put_json(&o, "meta", f->meta, err);
    return finish(&o, start, rc, err);
}

/* ---- typed frames: reading ------------------------------------------- */

typedef struct in {
    const uint8_t *p;
    const uint8_t *end;
    cel_err_t *err;
} in_t;

/* Where one wanted member's value lies in the payload (v NULL: absent). */
typedef struct slot {
    const char *key;
    const uint8_t *v;
    size_t n;
} slot_t;

static int truncated(in_t *r) { return cel_err_set(r->err, CEL_EPROTO, "truncated frame"); }

static int read_be(in_t *r, int n, uint64_t *v) {
    if (r->end - r->p < n) return truncated(r);
    *v = 0;
    for (int i = 0; i < n; i++) *v = *v << 8 | r->p[i];
    r->p += n;
    return CEL_OK;
}

/* Reads a str or bin header; *kind is 0 when the next value is neither
 * (nothing consumed then). */
static int read_str(in_t *r, const uint8_t **s, size_t *n, int *kind) {
    *kind = 0;
    if (r->p >= r->end) return truncated(r);
    uint8_t c = *r->p;
    uint64_t len;
    if (c >= 0xa0 && c <= 0xbf) {
        r->p++;
        len = c & 0x1f;
    } else if ((c >= 0xd9 && c <= 0xdb) || (c >= 0xc4 && c <= 0xc6)) {
        r->p++;
        int rc = read_be(r, 1 << (c >= 0xd9 ? c - 0xd9 : c - 0xc4), &len);
        if (rc) return rc;
    } else {
        return CEL_OK;
    }
    if ((uint64_t)(r->end - r->p) < len) return truncated(r);
    *s = r->p;
    *n = (size_t)len;
    r->p += len;
    *kind = 1;
    return CEL_OK;
}

/* Skips one value of any type; `depth` containers enclose it. */
static int skip(in_t *r, int depth) {
    if (r->p >= r->end) return truncated(r);
    uint8_t c = *r->p++;
    uint64_t n = 0, items = 0;
    int rc = CEL_OK;
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3) return CEL_OK;
    int container = (c >= 0x80 && c <= 0x9f) || (c >= 0xdc && c <= 0xdf);
    if (container && depth + 1 > CEL_MSG_MAX_DEPTH) /* empty ones count too */
        return cel_err_set(r->err, CEL_ELIMIT, "frame nested deeper than %d", CEL_MSG_MAX_DEPTH);
    if (c >= 0xa0 && c <= 0xbf) n = c & 0x1f;
    else if (c >= 0x80 && c <= 0x8f) items = 2 * (uint64_t)(c & 0x0f);
    else if (c >= 0x90 && c <= 0x9f) items = c & 0x0f;
    else switch (c) {
        case 0xc4:
        case 0xc5:
        case 0xc6: rc = read_be(r, 1 << (c - 0xc4), &n); break;
        case 0xd9:
        case 0xda:
        case 0xdb: rc = read_be(r, 1 << (c - 0xd9), &n); break;
        case 0xc7:
        case 0xc8:
        case 0xc9:
            rc = read_be(r, 1 << (c - 0xc7), &n);
            n += 1; /* the ext type byte */
            break;
        case 0xca: n = 4; break;
        case 0xcb: n = 8; break;
        case 0xcc:
        case 0xcd:
        case 0xce:
        case 0xcf: n = 1u << (c - 0xcc); break;
        case 0xd0:
        case 0xd1:
        case 0xd2:
        case 0xd3: n = 1u << (c - 0xd0); break;
        case 0xd4:
        case 0xd5:
        case 0xd6:
        case 0xd7:
        case 0xd8: n = 1 + (1u << (c - 0xd4)); break;
        case 0xdc:
        case 0xdd: rc = read_be(r, c == 0xdc ? 2 : 4, &items); break;
        case 0xde:
        case 0xdf:
            rc = read_be(r, c == 0xde ? 2 : 4, &items);
            items *= 2;
            break;
        default: return cel_err_set(r->err, CEL_EPROTO, "invalid msgpack byte 0x%02x", c);
        }
    if (rc) return rc;
    if ((uint64_t)(r->end - r->p) < n) return truncated(r);
    r->p += n;
    if (items == 0) return CEL_OK;
    if (items > 2 * (uint64_t)CEL_MSG_MAX_ITEMS)
        return cel_err_set(r->err, CEL_ELIMIT, "frame holds a container over the item limit");
    if (items > (uint64_t)(r->end - r->p)) return truncated(r); /* each takes a byte */
    for (uint64_t i = 0; i < items; i++)
        if ((rc = skip(r, depth + 1))) return rc;
    return CEL_OK;
}

/* Walks the payload's map, noting the value of each wanted key (the last
 * of repeated ones) and skipping the rest. */
static int collect(const uint8_t *payload, size_t len, slot_t *slots, int nslots, cel_err_t *err) {
    in_t r = { payload, payload + len, err };
    for (int i = 0; i < nslots; i++) slots[i].v = NULL, slots[i].n = 0;
    if (len > CEL_FRAME_MAX)
        return cel_err_set(err, CEL_ELIMIT, "frame of %zu bytes is over the limit", len);
    if (len == 0) return cel_err_set(err, CEL_EPROTO, "empty frame");
    uint8_t c = *r.p++;
    uint64_t n;
    int rc = CEL_OK;
    if (c >= 0x80 && c <= 0x8f) n = c & 0x0f;
    else if (c == 0xde || c == 0xdf) rc = read_be(&r, c == 0xde ? 2 : 4, &n);
    else return cel_err_set(err, CEL_EPROTO, "frame is not a map");
    if (rc) return rc;
    if (n > CEL_MSG_MAX_ITEMS)
        return cel_err_set(err, CEL_ELIMIT, "frame map of %llu entries is over the limit",
                           (unsigned long long)n);
    for (uint64_t i = 0; i < n; i++) {
        const uint8_t *k;
        size_t klen;
        int kind;
        if ((rc = read_str(&r, &k, &klen, &kind))) return rc;
        if (!kind) return cel_err_set(err, CEL_EPROTO, "frame map key is not a string");
        const uint8_t *v = r.p;
        if ((rc = skip(&r, 1))) return rc;
        for (int j = 0; j < nslots; j++)
            if (strlen(slots[j].key) == klen && memcmp(slots[j].key, k, klen) == 0) {
                slots[j].v = v;
                slots[j].n = (size_t)(r.p - v);
            }
    }
    if (r.p != r.end)
        return cel_err_set(err, CEL_EPROTO, "%zu trailing bytes after a frame",
                           (size_t)(r.end - r.p));
    return CEL_OK;
}

/* The string value of a slot (pointer and length) when it is a str (or bin)
 * holding UTF-8 without NUL. Returns 1 when it is, 0 when absent or anything
 * else. */
static int slot_str(const slot_t *sl, const uint8_t **s, size_t *n) {
    if (!sl->v) return 0;
    in_t r = { sl->v, sl->v + sl->n, NULL };
    int kind;
    if (read_str(&r, s, n, &kind) != CEL_OK || !kind) return 0;
    for (size_t i = 0; i < *n;) {
        uint32_t cp;
        size_t k = (*s)[i] < 0x80 ? 1 : cel_json_utf8_decode(*s + i, *n - i, &cp);
        if (k == 0 || (*s)[i] == 0) return 0;
        i += k;
    }
    return 1;
}

/* 1 when the slot holds str `want`. */
static int slot_is(const slot_t *sl, const char *want) {
    const uint8_t *s;
    size_t n;
    return slot_str(sl, &s, &n) && n == strlen(want) && memcmp(s, want, n) == 0;
}

/* A number slot (int or float, finite). Returns 1 when it is one. */
static int slot_num(const slot_t *sl, double *d) {
    if (!sl->v || sl->n == 0) return 0;
    const uint8_t *p = sl->v;
    uint8_t c = p[0];
    uint64_t u = 0;
    for (size_t i = 1; i < sl->n; i++) u = u << 8 | p[i];
    if (c <= 0x7f) *d = c;
    else if (c >= 0xe0) *d = (int8_t)c;
    else if (c >= 0xcc && c <= 0xcf) *d = (double)u;
    else if (c >= 0xd0 && c <= 0xd3) {
        int bits = 8 * (int)(sl->n - 1);
        int64_t v =
            bits == 64 ? (int64_t)u : (int64_t)(u ^ (1ull << (bits - 1))) - (1ll << (bits - 1));
        *d = (double)v;
    } else if (c == 0xca) {
        uint32_t w = (uint32_t)u;
        float f;
        memcpy(&f, &w, 4);
        *d = f;
    } else if (c == 0xcb) {
        memcpy(d, &u, 8);
    } else {
        return 0;
    }
    return isfinite(*d);
}

/* An integer slot that fits a long. Returns 1 when it is one. */
static int slot_int(const slot_t *sl, long *out) {
    if (!sl->v || sl->n == 0 || sl->v[0] == 0xca || sl->v[0] == 0xcb) return 0;
    double d;
    if (!slot_num(sl, &d) || d < -2147483648.0 || d > 2147483647.0) return 0;
    *out = (long)d;
    return 1;
}

/* The first byte of a slot's value is an array / a map header. */
static int slot_is_array(const slot_t *sl) {
    uint8_t c = sl->v ? sl->v[0] : 0;
    return sl->v && ((c >= 0x90 && c <= 0x9f) || c == 0xdc || c == 0xdd);
}

static int slot_is_map(const slot_t *sl) {
    uint8_t c = sl->v ? sl->v[0] : 0;
    return sl->v && ((c >= 0x80 && c <= 0x8f) || c == 0xde || c == 0xdf);
}

/* Decodes a slot's value into a json_t (new reference). */
static int slot_json(const slot_t *sl, json_t **out, cel_err_t *err) {
    int rc = cel_msgpack_to_json(sl->v, sl->n, out, err);
    if (rc == CEL_ETYPE)
        rc = cel_err_set(err, CEL_EPROTO, "frame field '%s': %s", sl->key,
                         err ? err->msg : "bad value");
    return rc;
}

/* One block for a frame's strings: each taken from its slot (already checked
 * with slot_str), NUL-terminated. */
typedef struct strs {
    char *mem;
    size_t used, cap;
} strs_t;

static int strs_alloc(strs_t *st, const slot_t *const *sls, int n, cel_err_t *err) {
    st->used = st->cap = 0;
    for (int i = 0; i < n; i++) st->cap += sls[i] ? sls[i]->n + 1 : 0;
    st->mem = malloc(st->cap ? st->cap : 1);
    if (!st->mem) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    return CEL_OK;
}

static const char *strs_take(strs_t *st, const slot_t *sl) {
    const uint8_t *s;
    size_t n;
    slot_str(sl, &s, &n);
    char *dst = st->mem + st->used;
    memcpy(dst, s, n);
    dst[n] = '\0';
    st->used += n + 1;
    return dst;
}

/* A short string field: 1 when present and readable, 0 absent or not a
 * string; CEL_ELIMIT (< 0) when longer than CEL_FRAME_NAME_MAX. */
static int short_str(const slot_t *sl, cel_err_t *err) {
    const uint8_t *s;
    size_t n;
    if (!slot_str(sl, &s, &n)) return 0;
    if (n > CEL_FRAME_NAME_MAX)
        return cel_err_set(err, CEL_ELIMIT, "frame field '%s' of %zu bytes is over the limit",
                           sl->key, n);
    return 1;
}

/* Checks "op" against the kind's name. */
static int check_op(const slot_t *op, const char *want, cel_err_t *err) {
    if (!slot_is(op, want)) return cel_err_set(err, CEL_EPROTO, "not a '%s' frame", want);
    return CEL_OK;
}

int cel_frame_op(const uint8_t *payload, size_t len, cel_err_t *err) {
    slot_t op = { "op", NULL, 0 };
    /* the whole map is walked (so a broken frame is caught here) but nothing decoded */
    int rc = collect(payload, len, &op, 1, err);
    if (rc) return rc;
    const uint8_t *s;
    size_t n;
    if (!slot_str(&op, &s, &n)) return cel_err_set(err, CEL_EPROTO, "frame has no op");
    static const char *const names[] = { "ready", "run", "result", "progress" };
    for (int i = 0; i < 4; i++)
        if (n == strlen(names[i]) && memcmp(s, names[i], n) == 0) return i + 1;
    return cel_err_set(err, CEL_ENOTFOUND, "%.*s", (int)(n > 64 ? 64 : n), (const char *)s);
}

void cel_frame_ready_clear(cel_frame_ready_t *f) {
    free(f->mem_);
    memset(f, 0, sizeof(*f));
}

void cel_frame_run_clear(cel_frame_run_t *f) {
    json_decref(f->args);
    json_decref(f->kwargs);
    free(f->mem_);
    memset(f, 0, sizeof(*f));
}

void cel_frame_result_clear(cel_frame_result_t *f) {
    json_decref(f->result);
    json_decref(f->exc_message);
    free(f->mem_);
    memset(f, 0, sizeof(*f));
}

void cel_frame_progress_clear(cel_frame_progress_t *f) {
    json_decref(f->meta);
    free(f->mem_);
    memset(f, 0, sizeof(*f));
}

int cel_frame_ready_decode(const uint8_t *payload, size_t len, cel_frame_ready_t *out,
                           cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    slot_t sl[] = { { "op", 0, 0 }, { "pid", 0, 0 }, { "device", 0, 0 } };
    int rc = collect(payload, len, sl, 3, err);
    if (rc == CEL_OK) rc = check_op(&sl[0], "ready", err);
    if (rc) return rc;
    if (!slot_int(&sl[1], &out->pid) || out->pid <= 0)
        return cel_err_set(err, CEL_EPROTO, "ready frame: no pid");
    if ((rc = short_str(&sl[2], err)) <= 0)
        return rc < 0 ? rc : cel_err_set(err, CEL_EPROTO, "ready frame: no device");
    const slot_t *strings[] = { &sl[2] };
    strs_t st;
    if ((rc = strs_alloc(&st, strings, 1, err))) return rc;
    out->mem_ = st.mem;
    out->device = strs_take(&st, &sl[2]);
    return CEL_OK;
}

int cel_frame_run_decode(const uint8_t *payload, size_t len, cel_frame_run_t *out, cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    slot_t sl[] = { { "op", 0, 0 },     { "id", 0, 0 },     { "task", 0, 0 },
                    { "args", 0, 0 },   { "kwargs", 0, 0 }, { "soft_time_limit", 0, 0 },
                    { "retries", 0, 0 } };
    int rc = collect(payload, len, sl, 7, err);
    if (rc) return rc;
    if ((rc = short_str(&sl[1], err)) <= 0)
        return rc < 0 ? rc : cel_err_set(err, CEL_EPROTO, "no id");
    int task_ok = short_str(&sl[2], NULL) > 0;
    const slot_t *strings[] = { &sl[1], task_ok ? &sl[2] : NULL };
    strs_t st;
    if ((rc = strs_alloc(&st, strings, 2, err))) return rc;
    out->mem_ = st.mem;
    out->id = strs_take(&st, &sl[1]);
    /* from here on the id is known: the executor answers with a FAILURE */
    if (!sl[0].v) return cel_err_set(err, CEL_EPROTO, "no op");
    if (!slot_is(&sl[0], "run")) return cel_err_set(err, CEL_EPROTO, "unknown op");
    if (!task_ok) return cel_err_set(err, CEL_EPROTO, "no task name");
    out->task = strs_take(&st, &sl[2]);
    if (sl[3].v && !slot_is_array(&sl[3]))
        return cel_err_set(err, CEL_EPROTO, "args is not an array");
    if (sl[4].v && !slot_is_map(&sl[4])) return cel_err_set(err, CEL_EPROTO, "kwargs is not a map");
    if (sl[5].v && !slot_num(&sl[5], &out->soft_time_limit))
        return cel_err_set(err, CEL_EPROTO, "soft_time_limit is not a number");
    if (sl[6].v && !slot_int(&sl[6], &out->retries))
        return cel_err_set(err, CEL_EPROTO, "retries is not an integer");
    if (out->soft_time_limit < 0) out->soft_time_limit = 0;
    rc = sl[3].v ? slot_json(&sl[3], &out->args, err) : CEL_OK;
    if (rc == CEL_OK) rc = sl[4].v ? slot_json(&sl[4], &out->kwargs, err) : CEL_OK;
    if (rc == CEL_OK && !out->args && !(out->args = json_array()))
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
    if (rc == CEL_OK && !out->kwargs && !(out->kwargs = json_object()))
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
    if (rc != CEL_OK) {
        /* keep only the id and name: json parts go */
        json_decref(out->args);
        json_decref(out->kwargs);
        out->args = out->kwargs = NULL;
    }
    return rc;
}

/* A result's "stats" map: every member optional, each a number >= 0 (the
 * counts integers); anything else is CEL_EPROTO naming the field. */
static int read_stats(const slot_t *sm, cel_frame_stats_t *st, cel_err_t *err) {
    st->adapters = st->adapters_gpu = -1;
    if (!sm->v) return CEL_OK;
    if (!slot_is_map(sm)) return cel_err_set(err, CEL_EPROTO, "result frame: stats is not a map");
    slot_t sl[] = { { "tokens_trained", 0, 0 }, { "tokens_scored", 0, 0 }, { "pass_tasks", 0, 0 },
                    { "adapters", 0, 0 },       { "adapters_gpu", 0, 0 },  { "evicted", 0, 0 },
                    { "evicted_gpu", 0, 0 },    { "pass_s", 0, 0 },        { "gpu_used", 0, 0 },
                    { "gpu_total", 0, 0 } };
    long *ints[] = { &st->tokens_trained, &st->tokens_scored, &st->pass_tasks, &st->adapters,
                     &st->adapters_gpu,   &st->evicted,       &st->evicted_gpu };
    double *nums[] = { &st->pass_s, &st->gpu_used, &st->gpu_total };
    int rc = collect(sm->v, sm->n, sl, 10, err);
    if (rc) return rc;
    for (int i = 0; i < 7; i++)
        if (sl[i].v && (!slot_int(&sl[i], ints[i]) || *ints[i] < 0))
            return cel_err_set(err, CEL_EPROTO, "result frame: stats.%s is not a count", sl[i].key);
    for (int i = 0; i < 3; i++)
        if (sl[7 + i].v && (!slot_num(&sl[7 + i], nums[i]) || *nums[i] < 0))
            return cel_err_set(err, CEL_EPROTO, "result frame: stats.%s is not a number >= 0",
                               sl[7 + i].key);
    st->present = 1;
    return CEL_OK;
}

int cel_frame_result_decode(const uint8_t *payload, size_t len, cel_frame_result_t *out,
                            cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    slot_t sl[] = { { "op", 0, 0 },          { "id", 0, 0 },        { "status", 0, 0 },
                    { "result", 0, 0 },      { "exc_type", 0, 0 },  { "exc_module", 0, 0 },
                    { "exc_message", 0, 0 }, { "traceback", 0, 0 }, { "runtime", 0, 0 },
                    { "stats", 0, 0 } };
    int rc = collect(payload, len, sl, 10, err);
    if (rc == CEL_OK) rc = check_op(&sl[0], "result", err);
    if (rc == CEL_OK) rc = read_stats(&sl[9], &out->stats, err);
    if (rc) {
        memset(&out->stats, 0, sizeof(out->stats));
        return rc;
    }
    if ((rc = short_str(&sl[1], err)) <= 0)
        return rc < 0 ? rc : cel_err_set(err, CEL_EPROTO, "result frame: no id");
    if (slot_is(&sl[2], "FAILURE")) out->failed = 1;
    else if (!slot_is(&sl[2], "SUCCESS"))
        return cel_err_set(err, CEL_EPROTO, "result frame: no status SUCCESS or FAILURE");
    if (!slot_num(&sl[8], &out->runtime) || out->runtime < 0)
        return cel_err_set(err, CEL_EPROTO, "result frame: no runtime");
    const slot_t *strings[4] = { &sl[1], NULL, NULL, NULL };
    const uint8_t *tb;
    size_t tblen;
    if (!out->failed) {
        if (!sl[3].v) return cel_err_set(err, CEL_EPROTO, "result frame: no result");
    } else {
        if ((rc = short_str(&sl[4], err)) <= 0)
            return rc < 0 ? rc : cel_err_set(err, CEL_EPROTO, "result frame: no exc_type");
        if ((rc = short_str(&sl[5], err)) <= 0)
            return rc < 0 ? rc : cel_err_set(err, CEL_EPROTO, "result frame: no exc_module");
        if (!slot_is_array(&sl[6]))
            return cel_err_set(err, CEL_EPROTO, "result frame: exc_message is not an array");
        int tb_nil = sl[7].v && sl[7].n == 1 && sl[7].v[0] == 0xc0;
        if (!tb_nil && !slot_str(&sl[7], &tb, &tblen))
            return cel_err_set(err, CEL_EPROTO, "result frame: traceback is not a string or nil");
        strings[1] = &sl[4];
        strings[2] = &sl[5];
        strings[3] = tb_nil ? NULL : &sl[7];
    }
    strs_t st;
    if ((rc = strs_alloc(&st, strings, 4, err))) return rc;
    out->mem_ = st.mem;
    out->id = strs_take(&st, &sl[1]);
    if (out->failed) {
        out->exc_type = strs_take(&st, &sl[4]);
        out->exc_module = strs_take(&st, &sl[5]);
        if (strings[3]) out->traceback = strs_take(&st, &sl[7]);
        rc = slot_json(&sl[6], &out->exc_message, err);
    } else {
        rc = slot_json(&sl[3], &out->result, err);
    }
    if (rc != CEL_OK) cel_frame_result_clear(out);
    return rc;
}

int cel_frame_progress_decode(const uint8_t *payload, size_t len, cel_frame_progress_t *out,
                              cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    slot_t sl[] = { { "op", 0, 0 }, { "id", 0, 0 }, { "state", 0, 0 }, { "meta", 0, 0 } };
    int rc = collect(payload, len, sl, 4, err);
    if (rc == CEL_OK) rc = check_op(&sl[0], "progress", err);
    if (rc) return rc;
    if ((rc = short_str(&sl[1], err)) <= 0)
        return rc < 0 ? rc : cel_err_set(err, CEL_EPROTO, "progress frame: no id");
    if ((rc = short_str(&sl[2], err)) <= 0)
        return rc < 0 ? rc : cel_err_set(err, CEL_EPROTO, "progress frame: no state");
    if (!sl[3].v) return cel_err_set(err, CEL_EPROTO, "progress frame: no meta");
    const slot_t *strings[] = { &sl[1], &sl[2] };
    strs_t st;
    if ((rc = strs_alloc(&st, strings, 2, err))) return rc;
    out->mem_ = st.mem;
    out->id = strs_take(&st, &sl[1]);
    out->state = strs_take(&st, &sl[2]);
    rc = slot_json(&sl[3], &out->meta, err);
    if (rc != CEL_OK) cel_frame_progress_clear(out);
    return rc;
}
