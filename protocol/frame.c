/* frame.c -- incremental reader and header writer for length-prefixed frames.
 *
 * Implements frame.h. Pure: no I/O, no logging. The reader owns one growing
 * buffer; consumed bytes are dropped lazily (on the next feed) so a payload
 * handed out by cel_frame_reader_next stays valid until then. A length prefix
 * above the reader's maximum is a sticky CEL_ELIMIT: the stream cannot be
 * resynchronised, so every later call fails the same way.
 * Used by the main process (libuv reads) and by executors (blocking reads).
 */
#include "frame.h"

#include <stdlib.h>
#include <string.h>

#define FRAME_BUF_MIN 4096 /* first allocation; grows by doubling */

struct cel_frame_reader {
    uint8_t *buf;
    size_t cap;  /* allocated bytes */
    size_t off;  /* start of unconsumed bytes */
    size_t len;  /* end of buffered bytes (buf[off..len) unconsumed) */
    size_t max;  /* largest payload accepted */
    int err;     /* sticky error, CEL_OK while healthy */
    size_t bad;  /* the offending length when err == CEL_ELIMIT */
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
        return cel_err_set(err, CEL_ELIMIT, "frame length %zu exceeds limit %zu", r->bad,
                           r->max);
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
