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

/* A span of an envelope that scan.c read: the content of a JSON string (no
 * escapes, printable ASCII), not NUL-terminated; set 0 when absent or null. */
typedef struct cel_span {
    const char *p;
    size_t n;
    int set;
} cel_span_t;

/* What cel_env_scan reads of a kombu Redis envelope: the fields of a
 * cel_task_t, as spans into the buffer and values. */
typedef struct cel_env_scan {
    cel_span_t body, content_type, content_encoding;
    /* headers */
    cel_span_t task, id, root_id, parent_id, group, shadow, origin, argsrepr, kwargsrepr;
    cel_span_t eta, expires; /* as on the wire: task.c parses them */
    long retries, group_index;
    double time_limit, soft_time_limit;
    int ignore_result, redelivered;
    /* properties and delivery_info */
    cel_span_t correlation_id, reply_to, delivery_tag, exchange, routing_key;
    int priority;
    /* scan.c's own bookkeeping */
    cel_span_t info_tag, prop_tag;
    int has_headers, has_props, has_info, info_redelivered, base64;
} cel_env_scan_t;

/* The fast path of cel_task_decode_envelope (scan.c): one pass over buf[0..len)
 * (not NUL-terminated) reading a protocol 2 envelope of the subset stock
 * clients write -- a JSON object with a base64 "body", "headers" holding a
 * string task and a non-empty string id, "properties" with body_encoding
 * "base64"; ASCII strings without escapes, numbers of at most 18 digits
 * without exponent, nesting up to 32, each wanted key once, each field of its
 * Celery type -- into *out. CEL_OK when it is such an envelope and jansson
 * would read the same values from it; CEL_EAGAIN for anything else, valid or
 * not, which the full decoder then reads. Never allocates. */
int cel_env_scan(const char *buf, size_t len, cel_env_scan_t *out);

/* cel_task_decode_envelope_max without the fast path: jansson reads every
 * envelope (task.c; tests/fuzz/fuzz_scan.c compares the two). */
int cel_task_decode_envelope_full(const char *buf, size_t len, size_t max_body, cel_task_t **out,
                                  cel_err_t *err);

#endif
