/* respcut.c -- cuts oversized bulk strings out of a RESP byte stream as it streams.
 *
 * A small state machine over RESP2 items: at each item's type byte, a '$'
 * header is collected and read; any other item (+ - : lines, '*' array
 * headers whose elements follow as items) is passed through up to its '\n'.
 * A bulk within the limit is passed through as it comes; a longer one is held
 * back, keeping its first bytes and a ring of its last bytes, and emitted as
 * a new, short bulk in the cut form (respcut.h) once its final CRLF is seen.
 * Pure; no I/O; main process.
 */
#include "respcut.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { S_TYPE, S_LINE, S_HDR, S_PASS, S_BIG, S_RAW };

struct cel_respcut {
    size_t limit;
    int state;
    char hdr[32]; /* "$<n>\r\n" being read */
    size_t hdr_len;
    long long left;  /* S_PASS: bytes to pass; S_BIG: content bytes still to come */
    long long total; /* S_BIG: the bulk's length */
    int crlf_left;   /* S_BIG: bytes of the CRLF after the content */
    char head[CEL_RESPCUT_HEAD];
    size_t head_len;
    char *ring; /* the last CEL_RESPCUT_TAIL content bytes, while in S_BIG */
    size_t ring_pos, ring_len;
};

cel_respcut_t *cel_respcut_new(size_t limit) {
    cel_respcut_t *f = calloc(1, sizeof(*f));
    if (!f) return NULL;
    f->limit = limit < 2 * CEL_RESPCUT_HEAD + 2 ? 2 * CEL_RESPCUT_HEAD + 2 : limit;
    return f;
}

void cel_respcut_reset(cel_respcut_t *f) {
    free(f->ring);
    f->ring = NULL;
    f->state = S_TYPE;
    f->hdr_len = f->head_len = f->ring_pos = f->ring_len = 0;
}

void cel_respcut_free(cel_respcut_t *f) {
    if (!f) return;
    free(f->ring);
    free(f);
}

int cel_respcut_parse(const char *s, size_t n, size_t *orig_len, const char **head,
                      size_t *head_len, const char **tail, size_t *tail_len) {
    if (n < CEL_RESPCUT_MAGIC_LEN || memcmp(s, CEL_RESPCUT_MAGIC, CEL_RESPCUT_MAGIC_LEN)) return 0;
    const char *p = s + CEL_RESPCUT_MAGIC_LEN, *end = s + n;
    unsigned long long len = 0, hl = 0;
    int digits = 0;
    for (; p < end && *p >= '0' && *p <= '9' && digits < 19; p++, digits++)
        len = len * 10 + (unsigned)(*p - '0');
    if (!digits || p >= end || *p++ != ' ') return 0;
    digits = 0;
    for (; p < end && *p >= '0' && *p <= '9' && digits < 19; p++, digits++)
        hl = hl * 10 + (unsigned)(*p - '0');
    if (!digits || p >= end || *p++ != '\n' || hl > (size_t)(end - p)) return 0;
    *orig_len = (size_t)len;
    *head = p;
    *head_len = (size_t)hl;
    *tail = p + hl;
    *tail_len = (size_t)(end - p - hl);
    return 1;
}

/* The bulk just read, in the cut form, to the sink. */
static int emit_big(cel_respcut_t *f, cel_respcut_sink sink, void *priv) {
    char pre[64];
    memcpy(pre, CEL_RESPCUT_MAGIC, CEL_RESPCUT_MAGIC_LEN);
    size_t pn = CEL_RESPCUT_MAGIC_LEN + (size_t)snprintf(pre + CEL_RESPCUT_MAGIC_LEN,
                                                         sizeof(pre) - CEL_RESPCUT_MAGIC_LEN,
                                                         "%lld %zu\n", f->total, f->head_len);
    char hdr[32];
    int hn = snprintf(hdr, sizeof(hdr), "$%zu\r\n", pn + f->head_len + f->ring_len);
    size_t cap = CEL_RESPCUT_TAIL;
    size_t start = f->ring_len < cap ? 0 : f->ring_pos; /* the oldest byte */
    size_t first = f->ring_len < cap ? f->ring_len : cap - start;
    int rc = sink(priv, hdr, (size_t)hn);
    if (rc == CEL_OK) rc = sink(priv, pre, pn);
    if (rc == CEL_OK && f->head_len) rc = sink(priv, f->head, f->head_len);
    if (rc == CEL_OK && first) rc = sink(priv, f->ring + start, first);
    if (rc == CEL_OK && f->ring_len >= cap && start) rc = sink(priv, f->ring, start);
    if (rc == CEL_OK) rc = sink(priv, "\r\n", 2);
    free(f->ring);
    f->ring = NULL;
    f->ring_pos = f->ring_len = f->head_len = 0;
    return rc;
}

/* Content bytes of a big bulk: the first into head, all through the ring. */
static void keep_big(cel_respcut_t *f, const char *p, size_t k) {
    for (size_t j = 0; j < k && f->head_len < CEL_RESPCUT_HEAD; j++) f->head[f->head_len++] = p[j];
    size_t cap = CEL_RESPCUT_TAIL;
    if (k > cap) p += k - cap, k = cap;
    while (k) {
        size_t run = cap - f->ring_pos < k ? cap - f->ring_pos : k;
        memcpy(f->ring + f->ring_pos, p, run);
        f->ring_pos = (f->ring_pos + run) % cap;
        f->ring_len = f->ring_len + run > cap ? cap : f->ring_len + run;
        p += run, k -= run;
    }
}

int cel_respcut_feed(cel_respcut_t *f, const char *buf, size_t n, cel_respcut_sink sink,
                     void *priv) {
    size_t i = 0;
    while (i < n) {
        const char *p = buf + i;
        size_t avail = n - i, k;
        int rc;
        switch (f->state) {
        case S_RAW: return sink(priv, p, avail);
        case S_TYPE:
            f->state = *p == '$' ? S_HDR : S_LINE; /* the '$' is the header's first byte */
            f->hdr_len = 0;
            continue;
        case S_LINE: {
            const char *nl = memchr(p, '\n', avail);
            k = nl ? (size_t)(nl - p) + 1 : avail;
            if ((rc = sink(priv, p, k)) != CEL_OK) return rc;
            if (nl) f->state = S_TYPE;
            i += k;
            continue;
        }
        case S_PASS:
            k = (long long)avail < f->left ? avail : (size_t)f->left;
            if ((rc = sink(priv, p, k)) != CEL_OK) return rc;
            f->left -= (long long)k;
            if (f->left == 0) f->state = S_TYPE;
            i += k;
            continue;
        case S_BIG:
            if (f->left > 0) {
                k = (long long)avail < f->left ? avail : (size_t)f->left;
                keep_big(f, p, k);
                f->left -= (long long)k;
                i += k;
                continue;
            }
            i++; /* the CRLF after the content */
            if (--f->crlf_left > 0) continue;
            f->state = S_TYPE;
            if ((rc = emit_big(f, sink, priv)) != CEL_OK) return rc;
            continue;
        case S_HDR: break;
        }
        /* S_HDR: "$<n>\r\n", one byte at a time (it is short) */
        if (f->hdr_len == sizeof(f->hdr) - 1) {
            /* not RESP as we know it: pass everything on from here */
            f->state = S_RAW;
            if ((rc = sink(priv, f->hdr, f->hdr_len)) != CEL_OK) return rc;
            continue;
        }
        f->hdr[f->hdr_len++] = *p;
        i++;
        if (*p != '\n') continue;
        f->hdr[f->hdr_len] = '\0';
        long long len = strtoll(f->hdr + 1, NULL, 10);
        if (len < 0 || (unsigned long long)len <= f->limit) {
            if ((rc = sink(priv, f->hdr, f->hdr_len)) != CEL_OK) return rc;
            f->left = len < 0 ? 0 : len + 2;
            f->state = f->left ? S_PASS : S_TYPE;
            continue;
        }
        if (!(f->ring = malloc(CEL_RESPCUT_TAIL))) return CEL_ENOMEM;
        f->state = S_BIG;
        f->total = f->left = len;
        f->crlf_left = 2;
        f->head_len = f->ring_pos = f->ring_len = 0;
    }
    return CEL_OK;
}
