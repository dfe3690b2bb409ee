/* peek.c -- a headers-only scan of a kombu JSON envelope (see peek.h).
 *
 * A small JSON walker over (buf, len): the envelope object and its "headers"
 * and "properties" objects are walked member by member; every other value is
 * skipped. Strings are skipped with memchr for the closing quote (a 10 MB
 * base64 body costs one pass of memchr), nested containers with a counter and
 * a 64-bit stack of their kinds, so nothing is allocated and nothing recurses.
 * Only the wanted string values are decoded (escapes, surrogate pairs, UTF-8
 * checked) into the caller's fixed buffers. Skipped values are checked only
 * for what the walk needs (quotes, brackets), not for full JSON grammar: the
 * scan finds ids, it does not validate messages. No I/O; main process.
 */
#include "peek.h"

#include <string.h>

#include "internal.h"

#define PEEK_KEY_MAX 31 /* longer keys cannot be one we want */

typedef struct scan {
    const uint8_t *p;
    const uint8_t *end;
    cel_err_t *err;
} scan_t;

/* A string member we want from an object: key and where its value goes. */
typedef struct field {
    const char *key;
    char *out; /* CEL_PEEK_STR_MAX + 1 bytes */
} field_t;

static int truncated(scan_t *s) {
    return cel_err_set(s->err, CEL_EPROTO, "envelope ends before its headers could be read");
}

static int unexpected(scan_t *s) {
    return cel_err_set(s->err, CEL_EPROTO, "envelope is not JSON: unexpected byte 0x%02x", *s->p);
}

static void skip_ws(scan_t *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

/* Skips to just past the closing quote of a string whose content starts at
 * s->p (not inside an escape). A quote is escaped when an odd run of
 * backslashes precedes it; each run is counted once, so this is linear. */
static int skip_string_rest(scan_t *s) {
    const uint8_t *start = s->p;
    for (;;) {
        const uint8_t *q = memchr(s->p, '"', (size_t)(s->end - s->p));
        if (!q) return truncated(s);
        size_t bs = 0;
        while (q - bs > start && q[-(ptrdiff_t)bs - 1] == '\\') bs++;
        s->p = q + 1;
        if (bs % 2 == 0) return CEL_OK;
    }
}

static int hex4(const uint8_t *p, unsigned *v) {
    *v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t h = p[i];
        *v <<= 4;
        if (h >= '0' && h <= '9') *v |= (unsigned)(h - '0');
        else if (h >= 'a' && h <= 'f') *v |= (unsigned)(h - 'a' + 10);
        else if (h >= 'A' && h <= 'F') *v |= (unsigned)(h - 'A' + 10);
        else return -1;
    }
    return 0;
}

/* Appends code point cp as UTF-8 to out[*n..cap). Returns 0, -1 when full. */
static int put_utf8(char *out, size_t cap, size_t *n, uint32_t cp) {
    uint8_t b[4];
    size_t k;
    if (cp < 0x80) {
        b[0] = (uint8_t)cp, k = 1;
    } else if (cp < 0x800) {
        b[0] = (uint8_t)(0xc0 | cp >> 6), k = 2;
    } else if (cp < 0x10000) {
        b[0] = (uint8_t)(0xe0 | cp >> 12), k = 3;
    } else {
        b[0] = (uint8_t)(0xf0 | cp >> 18), k = 4;
    }
    for (size_t i = 1; i < k; i++) /* continuation bytes, most significant first */
        b[i] = (uint8_t)(0x80 | ((cp >> (6 * (k - 1 - i))) & 0x3f));
    if (cap - *n < k + 1) /* keep room for the NUL */
        return -1;
    memcpy(out + *n, b, k);
    *n += k;
    return 0;
}

/* Decodes the string at s->p (its opening quote) into out (cap bytes, NUL
 * included). *ok is 0 when the value does not fit or cannot be a C string
 * (\u0000, lone surrogate, invalid UTF-8, raw control byte); out is then "".
 * The whole string is consumed either way. CEL_EPROTO on a bad escape or
 * when the input ends inside the string. */
static int read_string(scan_t *s, char *out, size_t cap, int *ok) {
    size_t n = 0;
    *ok = 1;
    out[0] = '\0';
    s->p++; /* the opening quote */
    while (*ok) {
        if (s->p >= s->end) return truncated(s);
        uint8_t c = *s->p;
        uint32_t cp;
        if (c == '"') {
            s->p++;
            out[n] = '\0';
            return CEL_OK;
        }
        if (c == '\\') {
            if (s->end - s->p < 2) return truncated(s);
            uint8_t e = s->p[1];
            s->p += 2;
            switch (e) {
            case '"':
            case '\\':
            case '/': cp = e; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': {
                unsigned hi, lo;
                if (s->end - s->p < 4) return truncated(s);
                if (hex4(s->p, &hi) < 0)
                    return cel_err_set(s->err, CEL_EPROTO, "envelope is not JSON: bad \\u escape");
                s->p += 4;
                cp = hi;
                if (hi >= 0xdc00 && hi <= 0xdfff) {
                    *ok = 0; /* a low surrogate alone */
                } else if (hi >= 0xd800 && hi <= 0xdbff) {
                    if (s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' &&
                        hex4(s->p + 2, &lo) == 0 && lo >= 0xdc00 && lo <= 0xdfff) {
                        s->p += 6;
                        cp = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                    } else {
                        *ok = 0; /* a high surrogate alone */
                    }
                }
                break;
            }
            default: return cel_err_set(s->err, CEL_EPROTO, "envelope is not JSON: bad escape");
            }
            if (cp == 0) *ok = 0;
        } else if (c < 0x20) {
            *ok = 0;
            break; /* not at an escape: the rest is skipped below */
        } else {
            size_t k = cel_json_utf8_decode(s->p, (size_t)(s->end - s->p), &cp);
            if (k == 0) {
                *ok = 0;
                break;
            }
            s->p += k;
        }
        if (*ok && put_utf8(out, cap, &n, cp) < 0) *ok = 0;
    }
    out[0] = '\0';
    return skip_string_rest(s);
}

/* Skips the array or object at s->p; `open` containers enclose it. Counts
 * brackets (outside strings) and checks that each closes what it opened. */
static int skip_container(scan_t *s, int open) {
    uint64_t kinds = 0; /* bit i: container i (from the outermost skipped) is an object */
    int d = 0;
    while (s->p < s->end) {
        uint8_t c = *s->p;
        if (c == '"') {
            s->p++;
            int rc = skip_string_rest(s);
            if (rc) return rc;
            continue;
        }
        s->p++;
        if (c == '{' || c == '[') {
            if (open + d + 1 > CEL_MSG_MAX_DEPTH)
                return cel_err_set(s->err, CEL_ELIMIT, "envelope nested deeper than %d levels",
                                   CEL_MSG_MAX_DEPTH);
            if (c == '{') kinds |= 1ull << d;
            else kinds &= ~(1ull << d);
            d++;
        } else if (c == '}' || c == ']') {
            if (d == 0 || ((kinds >> (d - 1)) & 1) != (c == '}'))
                return cel_err_set(s->err, CEL_EPROTO, "envelope is not JSON: unbalanced '%c'", c);
            if (--d == 0) return CEL_OK;
        }
    }
    return truncated(s);
}

/* Skips one value of any kind; `open` containers enclose it. */
static int skip_value(scan_t *s, int open) {
    skip_ws(s);
    if (s->p >= s->end) return truncated(s);
    uint8_t c = *s->p;
    if (c == '"') {
        s->p++;
        return skip_string_rest(s);
    }
    if (c == '{' || c == '[') return skip_container(s, open);
    /* a number, true, false or null (letters and digits up to a delimiter) */
    const uint8_t *start = s->p;
    while (s->p < s->end &&
           ((*s->p >= '0' && *s->p <= '9') || (*s->p >= 'a' && *s->p <= 'z') ||
            (*s->p >= 'A' && *s->p <= 'Z') || *s->p == '-' || *s->p == '+' || *s->p == '.'))
        s->p++; /* Python's json also writes NaN and Infinity */
    if (s->p == start) return unexpected(s);
    return CEL_OK;
}

/* Reads the key of the next member and the ':' after it. *match is the
 * index of the field it names, -1 for none. */
static int read_key(scan_t *s, const field_t *fields, int nfields, int *match) {
    char key[PEEK_KEY_MAX + 1];
    int ok;
    *match = -1;
    if (*s->p != '"') return unexpected(s);
    int rc = read_string(s, key, sizeof(key), &ok);
    if (rc) return rc;
    skip_ws(s);
    if (s->p >= s->end) return truncated(s);
    if (*s->p != ':') return unexpected(s);
    s->p++;
    skip_ws(s);
    if (s->p >= s->end) return truncated(s);
    for (int i = 0; ok && i < nfields; i++)
        if (strcmp(key, fields[i].key) == 0) *match = i;
    return CEL_OK;
}

/* After a member: ',' (more follow, *done = 0) or '}' (*done = 1). */
static int member_end(scan_t *s, int *done) {
    skip_ws(s);
    if (s->p >= s->end) return truncated(s);
    if (*s->p != ',' && *s->p != '}') return unexpected(s);
    *done = *s->p == '}';
    s->p++;
    if (!*done) {
        skip_ws(s);
        if (s->p >= s->end) return truncated(s);
    }
    return CEL_OK;
}

/* Walks the object at s->p (enclosed by `open` containers), decoding the
 * wanted string members into their fields (a repeated key: the last one
 * counts, as in Python's json) and skipping the rest. */
static int read_fields(scan_t *s, int open, const field_t *fields, int nfields) {
    if (open + 1 > CEL_MSG_MAX_DEPTH)
        return cel_err_set(s->err, CEL_ELIMIT, "envelope nested deeper than %d levels",
                           CEL_MSG_MAX_DEPTH);
    s->p++; /* '{' */
    skip_ws(s);
    if (s->p >= s->end) return truncated(s);
    if (*s->p == '}') {
        s->p++;
        return CEL_OK;
    }
    for (int done = 0; !done;) {
        int i, rc = read_key(s, fields, nfields, &i);
        if (rc) return rc;
        if (i >= 0 && *s->p == '"') {
            int ok;
            rc = read_string(s, fields[i].out, CEL_PEEK_STR_MAX + 1, &ok);
        } else {
            if (i >= 0) fields[i].out[0] = '\0'; /* not a string */
            rc = skip_value(s, open + 1);
        }
        if (rc || (rc = member_end(s, &done))) return rc;
    }
    return CEL_OK;
}

static int scan(scan_t *s, cel_peek_t *out) {
    const field_t headers[] = { { "id", out->id },
                                { "task", out->task },
                                { "root_id", out->root_id },
                                { "parent_id", out->parent_id },
                                { "group", out->group } };
    const field_t props[] = { { "correlation_id", out->correlation_id },
                              { "reply_to", out->reply_to } };
    static const field_t tops[] = { { "headers", NULL }, { "properties", NULL } };
    int seen[2] = { 0, 0 };
    skip_ws(s);
    if (s->p >= s->end) return cel_err_set(s->err, CEL_EPROTO, "empty envelope");
    if (*s->p != '{') return cel_err_set(s->err, CEL_EPROTO, "envelope is not a JSON object");
    s->p++;
    skip_ws(s);
    if (s->p >= s->end) return truncated(s);
    if (*s->p == '}') return CEL_OK;
    for (int done = 0; !done;) {
        int i, rc = read_key(s, tops, 2, &i);
        if (rc) return rc;
        if (i >= 0 && !seen[i] && *s->p == '{') {
            seen[i] = 1;
            rc = i == 0 ? read_fields(s, 1, headers, 5) : read_fields(s, 1, props, 2);
            if (rc == CEL_OK && seen[0] && seen[1])
                return CEL_OK; /* all we need: the rest (maybe the body) is not read */
        } else {
            rc = skip_value(s, 1);
        }
        if (rc || (rc = member_end(s, &done))) return rc;
    }
    return CEL_OK;
}

int cel_peek_envelope(const char *buf, size_t len, cel_peek_t *out, cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    scan_t s = { (const uint8_t *)buf, (const uint8_t *)buf + len, err };
    int rc = scan(&s, out);
    if (rc != CEL_OK) memset(out, 0, sizeof(*out));
    return rc;
}
