/* json.c -- json_t to text exactly as Python's json.dumps(ensure_ascii=True).
 *
 * Separators ", " and ": ", keys in insertion order, floats as Python's repr,
 * everything outside printable ASCII as \uXXXX (surrogate pairs above the
 * BMP), embedded NULs kept (json_string_length). jansson's reals cannot hold
 * NaN/Infinity, so a result that has one carries cel_json_float's marker object
 * instead, written here as Python's tokens (NaN, Infinity, -Infinity). Also the
 * depth check the decoders use. No I/O; any process. jansson's json_dumps is not used:
 * it prints 17 significant digits and other separators.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

size_t cel_json_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp) {
    if (n == 0) return 0;
    uint8_t c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len;
    uint32_t v, min;
    if ((c & 0xe0) == 0xc0) {
        len = 2, v = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
        len = 3, v = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (n < len) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *cp = v;
    return len;
}

int cel_json_dump_string(cel_buf_t *b, const char *s, size_t n, cel_err_t *err) {
    static const char hex[] = "0123456789abcdef";
    const uint8_t *u = (const uint8_t *)s;
    cel_buf_putc(b, '"');
    size_t i = 0;
    while (i < n) {
        /* copy the run of characters that need no escaping in one go */
        size_t j = i;
        while (j < n && u[j] >= 0x20 && u[j] < 0x7f && u[j] != '"' && u[j] != '\\') j++;
        cel_buf_put(b, s + i, j - i);
        i = j;
        if (i >= n) break;
        uint8_t c = u[i];
        const char *esc = NULL;
        switch (c) {
        case '"': esc = "\\\""; break;
        case '\\': esc = "\\\\"; break;
        case '\n': esc = "\\n"; break;
        case '\r': esc = "\\r"; break;
        case '\t': esc = "\\t"; break;
        case '\b': esc = "\\b"; break;
        case '\f': esc = "\\f"; break;
        }
        if (esc) {
            cel_buf_puts(b, esc);
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = cel_json_utf8_decode(u + i, n - i, &cp);
        if (k == 0) return cel_err_set(err, CEL_ETYPE, "string is not valid UTF-8");
        i += k;
        uint32_t units[2];
        int nu = 1;
        if (cp >= 0x10000) {
            cp -= 0x10000;
            units[0] = 0xd800 | (cp >> 10);
            units[1] = 0xdc00 | (cp & 0x3ff);
            nu = 2;
        } else {
            units[0] = cp;
        }
        for (int q = 0; q < nu; q++) {
            char e[6] = { '\\',
                          'u',
                          hex[(units[q] >> 12) & 15],
                          hex[(units[q] >> 8) & 15],
                          hex[(units[q] >> 4) & 15],
                          hex[units[q] & 15] };
            cel_buf_put(b, e, 6);
        }
    }
    cel_buf_putc(b, '"');
    return CEL_OK;
}

/* The marker of a non-finite float: {"\0celeriac-float": "NaN" | "Infinity" |
 * "-Infinity"}, a key no Python program writes by accident. A client could send
 * one in its arguments (the decoders keep NUL in keys): it only changes how its
 * own value is written back. */
#define FLOAT_KEY     "\0celeriac-float"
#define FLOAT_KEY_LEN 15

json_t *cel_json_float(double v) {
    if (isfinite(v)) return json_real(v);
    json_t *o = json_object();
    const char *tok = isnan(v) ? "NaN" : v > 0 ? "Infinity" : "-Infinity";
    if (o && json_object_setn_new(o, FLOAT_KEY, FLOAT_KEY_LEN, json_string(tok)) != 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* The token of a marker object, or NULL when v is not one. */
static const char *float_token(const json_t *v) {
    if (!json_is_object(v) || json_object_size(v) != 1) return NULL;
    json_t *t = json_object_getn(v, FLOAT_KEY, FLOAT_KEY_LEN);
    const char *s = json_string_value(t);
    if (!s) return NULL;
    if (!strcmp(s, "NaN") || !strcmp(s, "Infinity") || !strcmp(s, "-Infinity")) return s;
    return NULL;
}

int cel_json_float_value(const json_t *v, double *out) {
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 1;
    }
    const char *t = float_token(v);
    if (!t) return 0;
    *out = t[0] == 'N' ? NAN : t[0] == '-' ? -INFINITY : INFINITY;
    return 1;
}

static int dump(cel_buf_t *b, json_t *v, int depth, cel_err_t *err) {
    if (depth > CEL_ENC_MAX_DEPTH)
        return cel_err_set(err, CEL_ELIMIT, "value nested deeper than %d", CEL_ENC_MAX_DEPTH);
    switch (json_typeof(v)) {
    case JSON_NULL: cel_buf_put(b, "null", 4); return CEL_OK;
    case JSON_TRUE: cel_buf_put(b, "true", 4); return CEL_OK;
    case JSON_FALSE: cel_buf_put(b, "false", 5); return CEL_OK;
    case JSON_INTEGER:
        cel_buf_printf(b, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        return CEL_OK;
    case JSON_REAL: {
        double d = json_real_value(v);
        if (!isfinite(d))
            return cel_err_set(err, CEL_ETYPE, "Out of range float values are not JSON compliant");
        char tmp[CEL_PYFLOAT_MAX];
        size_t n = cel_pyfloat_format(d, tmp);
        cel_buf_put(b, tmp, n);
        return CEL_OK;
    }
    case JSON_STRING:
        return cel_json_dump_string(b, json_string_value(v), json_string_length(v), err);
    case JSON_ARRAY: {
        cel_buf_putc(b, '[');
        for (size_t i = 0; i < json_array_size(v); i++) {
            if (i) cel_buf_put(b, ", ", 2);
            int rc = dump(b, json_array_get(v, i), depth + 1, err);
            if (rc) return rc;
        }
        cel_buf_putc(b, ']');
        return CEL_OK;
    }
    case JSON_OBJECT: {
        const char *key;
        size_t klen;
        json_t *val;
        int first = 1;
        const char *tok = float_token(v);
        if (tok) {
            cel_buf_puts(b, tok);
            return CEL_OK;
        }
        cel_buf_putc(b, '{');
        json_object_keylen_foreach(v, key, klen, val) {
            if (!first) cel_buf_put(b, ", ", 2);
            first = 0;
            int rc = cel_json_dump_string(b, key, klen, err);
            if (rc) return rc;
            cel_buf_put(b, ": ", 2);
            rc = dump(b, val, depth + 1, err);
            if (rc) return rc;
        }
        cel_buf_putc(b, '}');
        return CEL_OK;
    }
    }
    return cel_err_set(err, CEL_ETYPE, "unknown JSON value type");
}

int cel_json_dump_into(cel_buf_t *b, json_t *v, cel_err_t *err) {
    if (!v) return cel_err_set(err, CEL_EINVAL, "NULL value");
    return dump(b, v, 0, err);
}

/* Serializes v as Python's json.dumps(v) (ensure_ascii=True). Returns a
 * malloc'd string, or NULL with err: CEL_ETYPE for NaN/Inf or invalid UTF-8,
 * CEL_ELIMIT past CEL_ENC_MAX_DEPTH, CEL_ENOMEM. */
char *cel_json_dumps(json_t *v, cel_err_t *err) {
    cel_buf_t b = { 0 };
    if (cel_json_dump_into(&b, v, err) != CEL_OK) {
        cel_buf_free(&b);
        return NULL;
    }
    char *s = cel_buf_take(&b);
    if (!s) cel_err_set(err, CEL_ENOMEM, "out of memory in json dumps");
    return s;
}

int cel_json_depth(json_t *v, int max) {
    if (!json_is_array(v) && !json_is_object(v)) return 0;
    if (max <= 0) return 1;
    int deepest = 0;
    if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v) && deepest < max; i++) {
            int d = cel_json_depth(json_array_get(v, i), max - 1);
            if (d > deepest) deepest = d;
        }
    } else {
        const char *key;
        json_t *val;
        json_object_foreach(v, key, val) {
            int d = cel_json_depth(val, max - 1);
            if (d > deepest) deepest = d;
            if (deepest >= max) break;
        }
    }
    return deepest + 1;
}
