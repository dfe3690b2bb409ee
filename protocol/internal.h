/* internal.h -- declarations shared between the files of protocol/, not public.
 *
 * A growable string buffer (buf.c), Python's float repr (pyfloat.c), the JSON
 * depth check and string escaper (json.c), and the body decoder (body.c) that
 * task.c calls. Nothing here does I/O; all of it runs in whichever process
 * links protocol/.
 */
#ifndef CEL_PROTOCOL_INTERNAL_H
#define CEL_PROTOCOL_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../common/err.h"
#include "protocol.h"

/* Encoders (dumps, repr, msgpack pack) walk trees recursively; this only
 * protects the stack against trees built by our own code. Decoders enforce the
 * stricter CEL_MSG_MAX_DEPTH on what comes from outside. */
#define CEL_ENC_MAX_DEPTH 512

/* Longest text produced by cel_pyfloat_format, NUL included. */
#define CEL_PYFLOAT_MAX 32

/* A growable NUL-terminated byte string. Any failed allocation sets oom and
 * makes later appends no-ops, so callers check once at the end. */
typedef struct cel_buf {
    char *p;
    size_t len;
    size_t cap;
    int oom;
} cel_buf_t;

void cel_buf_put(cel_buf_t *b, const char *s, size_t n);
void cel_buf_puts(cel_buf_t *b, const char *s);
void cel_buf_putc(cel_buf_t *b, char c);
void cel_buf_printf(cel_buf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the string over (caller frees) or NULL after oom; resets b. */
char *cel_buf_take(cel_buf_t *b);
/* Frees the storage; b may be reused after. */
void cel_buf_free(cel_buf_t *b);

/* Writes Python's repr(float(v)) ("0.1", "1e+100", "1.0", "-0.0", "inf", "nan")
 * into out (>= CEL_PYFLOAT_MAX bytes). Returns the length. */
size_t cel_pyfloat_format(double v, char *out);

/* Appends v as Python's json.dumps(ensure_ascii=True) would. Returns CEL_OK,
 * CEL_ETYPE (NaN/Inf, invalid UTF-8) or CEL_ELIMIT (deeper than
 * CEL_ENC_MAX_DEPTH) with err set; b->oom signals allocation failure. */
int cel_json_dump_into(cel_buf_t *b, json_t *v, cel_err_t *err);

/* Appends a JSON string literal for s[0..n) (ensure_ascii escaping). */
int cel_json_dump_string(cel_buf_t *b, const char *s, size_t n, cel_err_t *err);

/* Returns the nesting depth of v (scalars 0, [] 1, [[]] 2), stopping early
 * once it exceeds max (then returns max + 1). */
int cel_json_depth(json_t *v, int max);

/* Decodes one UTF-8 sequence at s[0..n): stores the code point and returns its
 * length, or 0 when the bytes are not valid UTF-8. */
size_t cel_json_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);

/* Body decoding for task.c: turns raw body bytes of the given content type
 * into a json_t (new reference). Errors are CEL_EBODY with a message, or
 * CEL_ENOMEM. */
int cel_body_load(const uint8_t *body, size_t len, const char *content_type,
                  const char *content_encoding, json_t **out, cel_err_t *err);

#endif
