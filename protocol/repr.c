/* repr.c -- Python's repr() of JSON values and of exceptions, for logs/events.
 *
 * argsrepr/kwargsrepr, task-succeeded "result" and task-failed "exception"
 * fields show values the way Python prints them: None/True/False, 'str' with
 * Python's quote choice and escapes, [lists], (tuples,), {'k': v}. Unicode
 * printability follows str.isprintable() for the categories that matter (Cc,
 * Cf, Zl, Zp, Zs other than space, private use); unassigned code points are
 * printed as-is. No I/O; any process.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Stop building once the output is this much past the cut: the rest is
 * thrown away anyway. */
#define REPR_SLACK 8

static int is_printable(uint32_t c) {
    if (c < 0x20 || (c >= 0x7f && c <= 0xa0) || c == 0xad) return 0;
    if (c < 0x600) return 1;
    if ((c >= 0x600 && c <= 0x605) || c == 0x61c || c == 0x6dd || c == 0x70f || c == 0x8e2 ||
        c == 0x1680 || c == 0x180e)
        return 0;
    if ((c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
        (c >= 0x205f && c <= 0x2064) || (c >= 0x2066 && c <= 0x206f) || c == 0x3000)
        return 0;
    if ((c >= 0xd800 && c <= 0xf8ff) || c == 0xfeff || (c >= 0xfff9 && c <= 0xfffb) ||
        c == 0xfffe || c == 0xffff)
        return 0;
    if (c == 0x110bd || c == 0x110cd || (c >= 0x1d173 && c <= 0x1d17a) ||
        (c >= 0xe0000 && c <= 0xe0fff) || c >= 0xf0000)
        return 0;
    return 1;
}

static void repr_string(cel_buf_t *b, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    const uint8_t *u = (const uint8_t *)s;
    char quote = '\'';
    if (memchr(s, '\'', n) && !memchr(s, '"', n)) quote = '"';
    cel_buf_putc(b, quote);
    size_t i = 0;
    while (i < n) {
        uint8_t c = u[i];
        if (c == (uint8_t)quote || c == '\\') {
            cel_buf_putc(b, '\\');
            cel_buf_putc(b, (char)c);
            i++;
            continue;
        }
        if (c == '\n' || c == '\r' || c == '\t') {
            cel_buf_puts(b, c == '\n' ? "\\n" : c == '\r' ? "\\r" : "\\t");
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = cel_json_utf8_decode(u + i, n - i, &cp);
        if (k == 0) { /* not UTF-8: show the byte, as repr(bytes) would */
            cp = c;
            k = 1;
        }
        if (is_printable(cp)) {
            cel_buf_put(b, s + i, k);
        } else if (cp <= 0xff) {
            char e[4] = { '\\', 'x', hex[cp >> 4], hex[cp & 15] };
            cel_buf_put(b, e, 4);
        } else if (cp <= 0xffff) {
            cel_buf_printf(b, "\\u%04x", (unsigned)cp);
        } else {
            cel_buf_printf(b, "\\U%08x", (unsigned)cp);
        }
        i += k;
    }
    cel_buf_putc(b, quote);
}

static void repr_value(cel_buf_t *b, json_t *v, int as_tuple, size_t stop, int depth) {
    if (b->len > stop) return;
    if (depth > CEL_ENC_MAX_DEPTH) {
        cel_buf_puts(b, "...");
        return;
    }
    switch (json_typeof(v)) {
    case JSON_NULL: cel_buf_puts(b, "None"); break;
    case JSON_TRUE: cel_buf_puts(b, "True"); break;
    case JSON_FALSE: cel_buf_puts(b, "False"); break;
    case JSON_INTEGER: cel_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); break;
    case JSON_REAL: {
        char tmp[CEL_PYFLOAT_MAX];
        cel_buf_put(b, tmp, cel_pyfloat_format(json_real_value(v), tmp));
        break;
    }
    case JSON_STRING: repr_string(b, json_string_value(v), json_string_length(v)); break;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        cel_buf_putc(b, as_tuple ? '(' : '[');
        for (size_t i = 0; i < n && b->len <= stop; i++) {
            if (i) cel_buf_put(b, ", ", 2);
            repr_value(b, json_array_get(v, i), 0, stop, depth + 1);
        }
        if (as_tuple && n == 1) cel_buf_putc(b, ',');
        cel_buf_putc(b, as_tuple ? ')' : ']');
        break;
    }
    case JSON_OBJECT: {
        const char *key;
        size_t klen;
        json_t *val;
        int first = 1;
        cel_buf_putc(b, '{');
        json_object_keylen_foreach(v, key, klen, val) {
            if (b->len > stop) break;
            if (!first) cel_buf_put(b, ", ", 2);
            first = 0;
            repr_string(b, key, klen);
            cel_buf_put(b, ": ", 2);
            repr_value(b, val, 0, stop, depth + 1);
        }
        cel_buf_putc(b, '}');
        break;
    }
    }
}

/* Cuts b to at most max_len bytes ending in "...", on a UTF-8 boundary. */
static void cut(cel_buf_t *b, size_t max_len) {
    if (b->oom || b->len <= max_len) return;
    size_t keep = max_len - 3;
    while (keep > 0 && ((uint8_t)b->p[keep] & 0xc0) == 0x80) keep--;
    memcpy(b->p + keep, "...", 4);
    b->len = keep + 3;
}

/* Python-style repr of v, cut at max_len bytes (>= 16) with "...". Returns a
 * malloc'd string or NULL (allocation failure or v NULL). */
char *cel_repr(json_t *v, int as_tuple, size_t max_len) {
    if (!v) return NULL;
    if (max_len < 16) max_len = 16;
    cel_buf_t b = { 0 };
    size_t stop = max_len > SIZE_MAX - REPR_SLACK ? SIZE_MAX - REPR_SLACK : max_len;
    repr_value(&b, v, as_tuple && json_is_array(v), stop + REPR_SLACK, 0);
    cut(&b, max_len);
    return cel_buf_take(&b);
}

/* Python's repr of the exception described by exc (a cel_exc_new dict):
 * Type(arg) for one argument, Type(a, b) or Type() otherwise. Returns a
 * malloc'd string or NULL. */
char *cel_exc_repr(json_t *exc) {
    const char *type = json_string_value(json_object_get(exc, "exc_type"));
    json_t *args = json_object_get(exc, "exc_message");
    if (!type) type = "Exception";
    cel_buf_t b = { 0 };
    cel_buf_puts(&b, type);
    if (json_is_array(args) && json_array_size(args) == 1) {
        cel_buf_putc(&b, '(');
        repr_value(&b, json_array_get(args, 0), 0, SIZE_MAX / 4, 0);
        cel_buf_putc(&b, ')');
    } else if (json_is_array(args)) {
        repr_value(&b, args, 1, SIZE_MAX / 4, 0);
    } else if (args && !json_is_null(args)) {
        /* exc_message as a bare value (older senders): show it as one arg */
        cel_buf_putc(&b, '(');
        repr_value(&b, args, 0, SIZE_MAX / 4, 0);
        cel_buf_putc(&b, ')');
    } else {
        cel_buf_puts(&b, "()");
    }
    return cel_buf_take(&b);
}
