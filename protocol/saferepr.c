/* saferepr.c -- Celery's saferepr() of JSON values: the argsrepr/kwargsrepr a client writes.
 *
 * A port of celery/utils/saferepr.py as 5.2 has it, quirks included: strings
 * always in single quotes with only ' escaped (no other escaping), str() of
 * numbers, nesting past maxlevels (3) shown as '[...]', and the streaming cut
 * at maxlen characters: once the budget is spent the next token becomes
 * ', ...' and only the closing brackets still pending are written (a token
 * that was a closing bracket itself is lost, as in Python). Lengths count
 * code points, as Python's len(). The token machine mirrors reprstream's
 * chain of iterators with an explicit stack. No I/O; any process.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "message.h"

/* Deeper than this is never expanded (maxlevels is smaller in practice). */
#define SR_MAX_FRAMES 64

enum { T_NONE, T_LIT, T_KEY, T_VALUE, T_DIRTY };

typedef struct frame {
    json_t *v;
    int tuple;  /* a Python tuple: '(' ... ')' or ',)' for one element */
    size_t i;   /* next element (list) or member (dict) */
    int phase;  /* 0 start literal, 1 items, 2 dirty, 3 end literal, 4 done */
    int step;   /* within a dict member: 0 key, 1 ': ', 2 value, 3 ', ' */
    void *iter; /* dict iteration */
} frame_t;

typedef struct token {
    int kind;
    const char *lit; /* T_LIT */
    int truncate;    /* T_LIT: dropped when cutting */
    int dir;         /* T_LIT: +1 opens, -1 closes */
    json_t *v;       /* T_KEY (a key string), T_VALUE */
    const char *key; /* T_KEY */
    size_t klen;
} token_t;

typedef struct machine {
    frame_t f[SR_MAX_FRAMES];
    int n;
    json_t *root; /* the value before its frame is pushed */
    int root_tuple;
    int root_done;
} machine_t;

static const char *open_lit(const frame_t *f) {
    return json_is_object(f->v) ? "{" : f->tuple ? "(" : "[";
}

static const char *close_lit(const frame_t *f) {
    if (json_is_object(f->v)) return "}";
    if (f->tuple) return json_array_size(f->v) == 1 ? ",)" : ")";
    return "]";
}

/* The next raw item of the innermost frame, popping finished frames. */
static int next_raw(machine_t *m, token_t *t) {
    memset(t, 0, sizeof(*t));
    if (!m->root_done) {
        m->root_done = 1;
        t->kind = T_VALUE;
        t->v = m->root;
        return 1;
    }
    while (m->n > 0) {
        frame_t *f = &m->f[m->n - 1];
        switch (f->phase) {
        case 0:
            f->phase = 1;
            f->iter = json_is_object(f->v) ? json_object_iter(f->v) : NULL;
            t->kind = T_LIT, t->lit = open_lit(f), t->dir = +1;
            return 1;
        case 1:
            if (json_is_object(f->v)) {
                if (!f->iter) {
                    f->phase = 2;
                    continue;
                }
                if (f->step == 0) {
                    f->step = 1;
                    t->kind = T_KEY;
                    t->key = json_object_iter_key(f->iter);
                    t->klen = json_object_iter_key_len(f->iter);
                    return 1;
                }
                if (f->step == 1) {
                    f->step = 2;
                    t->kind = T_LIT, t->lit = ": ", t->truncate = 1;
                    return 1;
                }
                if (f->step == 2) {
                    t->kind = T_VALUE;
                    t->v = json_object_iter_value(f->iter);
                    f->iter = json_object_iter_next(f->v, f->iter);
                    f->step = f->iter ? 3 : 0;
                    return 1;
                }
                f->step = 0;
                t->kind = T_LIT, t->lit = ", ", t->truncate = 1;
                return 1;
            }
            if (f->i >= json_array_size(f->v)) {
                f->phase = 2;
                continue;
            }
            if (f->step == 1) {
                f->step = 0;
                t->kind = T_LIT, t->lit = ", ", t->truncate = 1;
                return 1;
            }
            t->kind = T_VALUE;
            t->v = json_array_get(f->v, f->i++);
            f->step = f->i < json_array_size(f->v);
            return 1;
        case 2:
            f->phase = 3;
            t->kind = T_DIRTY;
            return 1;
        case 3:
            f->phase = 4;
            t->kind = T_LIT, t->lit = close_lit(f), t->dir = -1;
            return 1;
        default: m->n--; continue;
        }
    }
    return 0;
}

/* Code points in s[0..n). */
static size_t cp_len(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        if (((uint8_t)s[i] & 0xc0) != 0x80) c++;
    return c;
}

/* Byte offset of code point k in s[0..n) (n when past the end). */
static size_t cp_offset(const char *s, size_t n, size_t k) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++) {
        if (((uint8_t)s[i] & 0xc0) != 0x80) {
            if (c == k) return i;
            c++;
        }
    }
    return n;
}

/* celery.utils.text.truncate(s, maxlen): when len(s) >= maxlen, the first
 * maxlen characters up to their last space, then '...'. Appends to b and
 * returns the code points written. */
static long put_truncated(cel_buf_t *b, const char *s, size_t n, long maxlen, int quote) {
    size_t len = cp_len(s, n);
    size_t keep = n;
    int cut = maxlen > 0 && len >= (size_t)maxlen;
    if (cut) {
        keep = cp_offset(s, n, (size_t)maxlen);
        const char *sp = NULL;
        for (size_t i = 0; i < keep; i++)
            if (s[i] == ' ') sp = s + i;
        if (sp) keep = (size_t)(sp - s);
    }
    long written = 0;
    if (quote) cel_buf_putc(b, '\''), written++;
    for (size_t i = 0; i < keep; i++) {
        if (quote && s[i] == '\'') cel_buf_putc(b, '\\'), written++;
        cel_buf_putc(b, s[i]);
    }
    written += (long)cp_len(s, keep);
    if (cut) cel_buf_puts(b, "..."), written += 3;
    if (quote) cel_buf_putc(b, '\''), written++;
    return written;
}

/* str() of a scalar, or the '[...]' of a container past maxlevels. */
static void scalar_text(cel_buf_t *t, json_t *v) {
    switch (json_typeof(v)) {
    case JSON_NULL: cel_buf_puts(t, "None"); break;
    case JSON_TRUE: cel_buf_puts(t, "True"); break;
    case JSON_FALSE: cel_buf_puts(t, "False"); break;
    case JSON_INTEGER: cel_buf_printf(t, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
    case JSON_REAL: {
        char tmp[CEL_PYFLOAT_MAX];
        cel_buf_put(t, tmp, cel_pyfloat_format(json_real_value(v), tmp));
        break;
    }
    default: break;
    }
}

static long saferepr_into(cel_buf_t *b, json_t *v, int as_tuple, long maxlen, int maxlevels);

char *cel_saferepr(json_t *v, int as_tuple, long maxlen, int maxlevels) {
    if (!v) return NULL;
    cel_buf_t b = { 0 };
    saferepr_into(&b, v, as_tuple && json_is_array(v), maxlen, maxlevels);
    return cel_buf_take(&b);
}

/* _saferepr: returns the code points written. */
static long saferepr_into(cel_buf_t *b, json_t *v, int as_tuple, long maxlen, int maxlevels) {
    machine_t m = { .n = 0, .root = v, .root_tuple = as_tuple };
    int level = 0;
    long written = 0;
    token_t t;
    while (next_raw(&m, &t)) {
        /* reprstream: what the raw item becomes */
        cel_buf_t text = { 0 };
        int is_text = 0, is_key = 0, is_quoted = 0, is_lit = 0;
        if (t.kind == T_DIRTY) continue;
        if (t.kind == T_LIT) {
            level += t.dir;
            is_lit = 1;
        } else if (t.kind == T_KEY) {
            is_key = 1;
        } else if (json_is_string(t.v)) {
            is_quoted = 1;
        } else if (json_is_array(t.v) || json_is_object(t.v)) {
            int tuple = t.v == m.root && m.root_tuple;
            frame_t probe = { .v = t.v, .tuple = tuple };
            if ((maxlevels && level >= maxlevels) || m.n >= SR_MAX_FRAMES) {
                cel_buf_puts(&text, open_lit(&probe));
                cel_buf_puts(&text, "...");
                cel_buf_puts(&text, close_lit(&probe));
                is_text = 1;
            } else {
                m.f[m.n++] = probe;
                continue;
            }
        } else {
            scalar_text(&text, t.v);
            is_text = 1;
        }
        /* _saferepr: the budget is checked before each token */
        if (maxlen <= 0) {
            cel_buf_free(&text);
            cel_buf_puts(b, ", ...");
            written += 5;
            /* the closing literals still pending, innermost first */
            while (next_raw(&m, &t))
                if (t.kind == T_LIT && !t.truncate) {
                    cel_buf_puts(b, t.lit);
                    written += (long)strlen(t.lit);
                }
            return written;
        }
        long n;
        if (is_lit) {
            cel_buf_puts(b, t.lit);
            n = (long)strlen(t.lit);
        } else if (is_key) {
            json_t *k = json_stringn_nocheck(t.key, t.klen);
            n = k ? saferepr_into(b, k, 0, maxlen, maxlevels) : 0;
            json_decref(k);
        } else if (is_quoted) {
            n = put_truncated(b, json_string_value(t.v), json_string_length(t.v), maxlen, 1);
        } else {
            (void)is_text;
            n = put_truncated(b, text.p ? text.p : "", text.len, maxlen, 0);
        }
        cel_buf_free(&text);
        written += n;
        maxlen -= n;
    }
    return written;
}
