/* buf.c -- a growable NUL-terminated string buffer for the encoders.
 *
 * Used by json.c, repr.c and meta.c to build output in one allocation.
 * Allocation failure is sticky (b->oom) so callers check once at the end.
 * No I/O; any process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Makes room for n more bytes plus the NUL. Returns 0 or -1 (sets oom). */
static int reserve(cel_buf_t *b, size_t n) {
    if (b->oom) return -1;
    if (n > SIZE_MAX / 2 - b->len) {
        b->oom = 1;
        return -1;
    }
    if (b->len + n + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void cel_buf_put(cel_buf_t *b, const char *s, size_t n) {
    if (reserve(b, n) < 0) return;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

void cel_buf_puts(cel_buf_t *b, const char *s) { cel_buf_put(b, s, strlen(s)); }

void cel_buf_putc(cel_buf_t *b, char c) { cel_buf_put(b, &c, 1); }

void cel_buf_printf(cel_buf_t *b, const char *fmt, ...) {
    char small[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = 1;
        return;
    }
    if ((size_t)n < sizeof(small)) {
        cel_buf_put(b, small, (size_t)n);
        return;
    }
    if (reserve(b, (size_t)n) < 0) return;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

char *cel_buf_take(cel_buf_t *b) {
    char *p = NULL;
    if (!b->oom) {
        if (!b->p) cel_buf_put(b, "", 0);
        p = b->oom ? NULL : b->p;
    }
    if (!p) free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
    return p;
}

void cel_buf_free(cel_buf_t *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}
