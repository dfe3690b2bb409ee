/* protocol.h -- celeriac's Celery message library: the public header.
 *
 * Pure functions, no I/O: decode Celery task messages (protocol 2 and 1, JSON and
 * msgpack bodies, the kombu Redis envelope), encode result meta as Celery's Redis
 * backend stores it, build exception dicts, convert between msgpack and JSON
 * values, base64, ISO-8601 times and Python-style reprs for logs and events.
 *
 * Values are jansson json_t trees (arguments, results, embed). What must match:
 * kombu/transport/redis.py + virtual/base.py (envelope), celery/app/amqp.py
 * as_task_v2 (headers, body), celery/backends/base.py + redis.py (result meta),
 * celery/worker/strategy.py proto1_to_proto2 (protocol 1). ../shared/celery-wire.md
 * has the captures.
 *
 * Runs in the main worker process (decode, meta) and in executors (msgpack).
 */
#ifndef CEL_PROTOCOL_H
#define CEL_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../common/err.h"

/* Limits every decoder enforces before sizing anything. */
#define CEL_MSG_MAX_BYTES (64u * 1024 * 1024) /* one envelope or body */
#define CEL_MSG_MAX_DEPTH 64                  /* nesting of arrays/maps */
#define CEL_MSG_MAX_ITEMS (1u << 22)          /* elements in one msgpack array/map */

/* A decoded task request. Every pointer is borrowed from the task and dies with
 * cel_task_free. Strings are NUL-terminated UTF-8, NULL when absent or null on
 * the wire. Read-only for users of the library. */
typedef struct cel_task {
    int proto;        /* 2, or 1 for a protocol-1 body */
    const char *id;   /* task id (never NULL after a successful decode) */
    const char *name; /* task name, headers.task (never NULL after decode) */
    const char *root_id;
    const char *parent_id;
    const char *group; /* group id */
    const char *shadow;
    const char *origin;
    const char *argsrepr; /* display only; NULL if absent */
    const char *kwargsrepr;
    const char *eta_str; /* eta as on the wire, NULL if none */
    const char *expires_str;
    double eta;     /* unix seconds (UTC), 0 when none */
    double expires; /* unix seconds (UTC), 0 when none */
    long retries;
    double time_limit;      /* hard, seconds; 0 when none */
    double soft_time_limit; /* soft, seconds; 0 when none */
    int ignore_result;
    int group_index; /* -1 when null/absent */
    /* message properties */
    const char *content_type; /* "application/json", "application/x-msgpack", ... */
    const char *content_encoding;
    const char *correlation_id;
    const char *reply_to;
    int priority;    /* 0..9 (clamped), 0 when absent */
    int redelivered; /* headers.redelivered or delivery_info.redelivered */
    /* kombu delivery info (Redis envelope); NULL for other transports */
    const char *delivery_tag;
    const char *exchange;    /* delivery_info.exchange ("" for the default exchange) */
    const char *routing_key; /* delivery_info.routing_key (the queue for tasks) */
    /* body, valid only when the decode returned CEL_OK */
    json_t *args;    /* array */
    json_t *kwargs;  /* object */
    json_t *embed;   /* object {callbacks, errbacks, chain, chord} or NULL */
    json_t *headers; /* the whole headers object (v2), or NULL */
    void *priv_;     /* owned storage; do not touch */
} cel_task_t;

/* Decodes one kombu Redis envelope (the JSON string kept in a Redis list):
 * {"body": <base64 when properties.body_encoding == "base64">, "content-type",
 *  "content-encoding", "headers": {...}, "properties": {...}}.
 * Returns:
 *   CEL_OK     *out is a complete task.
 *   CEL_EBODY  the envelope and headers are valid (id and name known, *out set)
 *              but the body could not be decoded (bad base64, bad JSON/msgpack,
 *              wrong shape such as a v2 body that is not [args, kwargs, embed],
 *              unsupported content type). err says why. The caller stores a
 *              FAILURE for *out->id.
 *   CEL_EPROTO / CEL_ELIMIT  nothing usable; *out is NULL.
 * On every return other than CEL_OK/CEL_EBODY *out is NULL and nothing leaks. */
int cel_task_decode_envelope(const char *buf, size_t len, cel_task_t **out, cel_err_t *err);

/* Decodes a task from its transport-neutral parts (used by AMQP and by the
 * envelope decoder): headers object (may be NULL/empty for protocol 1),
 * properties object (may be NULL), delivery_info object (may be NULL), the raw
 * (already base64-decoded) body and its content type/encoding. The task keeps
 * references to headers, properties and delivery_info (json_incref, not a deep
 * copy: a copy was a tenth of the RabbitMQ worker's CPU), so the caller must
 * not change them afterwards; it copies the body. Same returns as
 * cel_task_decode_envelope. */
int cel_task_decode_parts(json_t *headers, json_t *properties, json_t *delivery_info,
                          const uint8_t *body, size_t body_len, const char *content_type,
                          const char *content_encoding, cel_task_t **out, cel_err_t *err);

/* Compressed bodies (kombu's `compression` header: zlib, bzip2, xz, zstd,
 * brotli; compress.h) are decompressed before they are decoded. The two
 * functions above let one decompress to CEL_MSG_MAX_BYTES; these take the
 * cap (the worker's --max-message-size). A body that decompresses past it, or
 * is not valid data for its method, is CEL_EBODY with *out set; err->code is
 * then CEL_ELIMIT for the cap (the worker stores kombu's LimitExceeded), else
 * CEL_EBODY (DecodeError). Memory stays within the cap. */
int cel_task_decode_envelope_max(const char *buf, size_t len, size_t max_body, cel_task_t **out,
                                 cel_err_t *err);
int cel_task_decode_parts_max(json_t *headers, json_t *properties, json_t *delivery_info,
                              const uint8_t *body, size_t body_len, size_t max_body,
                              const char *content_type, const char *content_encoding,
                              cel_task_t **out, cel_err_t *err);

struct cel_peek;

/* Builds a task known only by what a headers-only scan found (peek.h), for a
 * message refused before its body is decoded (too large), so that its FAILURE
 * can be stored and its events sent. pk->id must be non-empty; the name is
 * pk->task ("" when absent); root_id, parent_id, group, correlation_id and
 * reply_to are set when non-empty. args is [], kwargs {}, proto 2, no body
 * fields beyond those. Copies what it keeps. CEL_EINVAL without an id,
 * CEL_ENOMEM; *out is NULL on error. */
int cel_task_from_peek(const struct cel_peek *pk, cel_task_t **out, cel_err_t *err);

/* Frees a task and everything it owns. NULL is a no-op. */
void cel_task_free(cel_task_t *task);

/* Result meta, exactly as celery/backends/base.py writes it for the Redis
 * backend (json.dumps separators ", " / ": ", key order status, result,
 * traceback, children, date_done, [group_id], [parent_id], task_id).
 * status: "SUCCESS", "FAILURE", "REVOKED", "RETRY", "STARTED", "PROGRESS", ...
 * result: borrowed, may be NULL (json null). traceback: NULL -> null.
 * children: borrowed, NULL -> []. date_done: unix seconds, or < 0 -> null
 * (RETRY/STARTED/custom states); written as naive UTC isoformat
 * "2026-11-22T21:13:40.668855" (microseconds dropped when 0, as Python does).
 * group_id/parent_id: written only when not NULL.
 * Returns a malloc'd NUL-terminated string (caller frees), or NULL with err set
 * (e.g. CEL_ETYPE when result holds a NaN/Inf real that JSON cannot carry). */
char *cel_meta_encode(const char *task_id, const char *status, json_t *result,
                      const char *traceback, json_t *children, double date_done,
                      const char *group_id, const char *parent_id, cel_err_t *err);

/* What extended results add to a stored meta (result_extended). */
typedef struct cel_meta_ext {
    const char *name;
    json_t *args, *kwargs; /* borrowed; NULL -> null */
    const char *worker;    /* node name, NULL -> null */
    long retries;          /* < 0 -> null */
    const char *queue;     /* delivery_info routing_key, NULL -> null */
} cel_meta_ext_t;

/* cel_meta_encode plus, when ext is not NULL, the extended fields (name,
 * args, kwargs, worker, retries, queue) between parent_id and task_id, as
 * backends/base.py _get_result_meta writes them under result_extended. */
char *cel_meta_encode_ext(const char *task_id, const char *status, json_t *result,
                          const char *traceback, json_t *children, double date_done,
                          const char *group_id, const char *parent_id, const cel_meta_ext_t *ext,
                          cel_err_t *err);

/* The exception dict Celery stores for FAILURE/REVOKED/RETRY:
 * {"exc_type": type, "exc_message": <args list>, "exc_module": module}.
 * args is taken (stolen) if not NULL; NULL gives []. Returns a new reference
 * or NULL on allocation failure. Common forms:
 *   cel_exc_new("ValueError", "builtins", json_pack("[s]", msg))
 *   cel_exc_new("NotRegistered", "celery.exceptions", json_pack("[s]", name))
 *   cel_exc_new("TaskRevokedError", "celery.exceptions", json_pack("[s]", "expired"))
 *   cel_exc_new("TimeLimitExceeded", "billiard.exceptions", json_pack("[f]", 1.0))
 *   cel_exc_new("WorkerLostError", "billiard.exceptions", json_pack("[s]", "..."))
 */
json_t *cel_exc_new(const char *type, const char *module, json_t *args);

/* Python's repr of an exception as Celery puts it in task-failed events and logs:
 * "ValueError('boom')", "TimeLimitExceeded(1.0)". Takes the exception dict made
 * by cel_exc_new. Returns a malloc'd string or NULL. */
char *cel_exc_repr(json_t *exc);

/* Python-style repr of a JSON value, as argsrepr/kwargsrepr and event fields show
 * them: None/True/False, 'strings' with Python's quoting, [lists], {'k': v}.
 * If as_tuple is set and v is an array, it is shown as a tuple "(1, 2)" / "(1,)".
 * Output is cut at max_len bytes (>= 16) with "..." when longer.
 * Returns a malloc'd string or NULL. */
char *cel_repr(json_t *v, int as_tuple, size_t max_len);

/* Serializes a JSON value as Python's json.dumps(ensure_ascii=True) would.
 * Returns malloc'd string or NULL with err (CEL_ETYPE for invalid UTF-8). */
char *cel_json_dumps(json_t *v, cel_err_t *err);

/* A float as a JSON value, NaN and +-inf included (jansson's reals cannot hold
 * them): a real when finite, else a one-key marker object that cel_json_dumps
 * writes as Python's json does (NaN, Infinity, -Infinity), that msgpack frames
 * carry unchanged and that a client's json.loads reads back as the float.
 * NULL on ENOMEM. */
json_t *cel_json_float(double v);

/* 1 and *out set when v is a number or cel_json_float's marker, else 0. */
int cel_json_float_value(const json_t *v, double *out);

/* msgpack <-> JSON values. Maps need string keys (others are refused with
 * CEL_ETYPE); bin/ext types are refused unless bin is valid UTF-8 (-> string);
 * depth and item counts are limited as above. cel_msgpack_to_json returns a
 * new reference in *out. */
int cel_msgpack_to_json(const uint8_t *buf, size_t len, json_t **out, cel_err_t *err);

/* Appends the msgpack encoding of v to a growing buffer (*buf, *len, *cap,
 * realloc'd as needed; start with all three zero/NULL). */
int cel_json_to_msgpack(json_t *v, uint8_t **buf, size_t *len, size_t *cap, cel_err_t *err);

/* Standard base64 (RFC 4648 with padding), as Python's base64.b64encode/b64decode.
 * cel_base64_decode rejects characters outside the alphabet and bad padding
 * (CEL_EPROTO); it ignores nothing. *out is malloc'd (caller frees) with a
 * trailing NUL not counted in *out_len. */
int cel_base64_decode(const char *in, size_t len, uint8_t **out, size_t *out_len, cel_err_t *err);
char *cel_base64_encode(const uint8_t *in, size_t len);

/* ISO-8601 as Celery sends eta/expires ("2026-11-22T21:14:16.013988+00:00",
 * "...Z", naive "2026-11-22T21:14:16" taken as UTC since enable_utc is the
 * default, date-only not accepted). Result in unix seconds (UTC). */
int cel_time_parse_iso8601(const char *s, double *out, cel_err_t *err);

/* Formats unix seconds as Python's datetime.utcfromtimestamp(t).isoformat():
 * naive, microseconds only when non-zero. buf needs >= 32 bytes. Returns buf. */
char *cel_time_format_iso8601(double t, char *buf, size_t size);

/* Formats unix seconds as an aware UTC isoformat with "+00:00" (eta in
 * inspect scheduled, task-received events). buf needs >= 40 bytes. */
char *cel_time_format_iso8601_utc(double t, char *buf, size_t size);

#endif
