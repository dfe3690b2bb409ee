/* message.h -- building messages to send: kombu's Redis envelope, Celery task messages.
 *
 * The encoding side of protocol/: what a worker needs to publish a task the
 * way the stock client does (celery/app/amqp.py as_task_v2 + send_task_message,
 * kombu's Producer.publish) and to wrap it in the JSON envelope kombu's Redis
 * transport LPUSHes (kombu/transport/virtual/base.py prepare_message,
 * _inplace_augment_message). Pure functions: ids, times and node names come
 * from the caller, so every output can be compared byte for byte with what
 * kombu and celery make from the same inputs (tests/unit/test_message.c,
 * data from tests/unit/gen_messages.py). No I/O; main process.
 */
#ifndef CEL_MESSAGE_H
#define CEL_MESSAGE_H

#include <stddef.h>

#include <jansson.h>

#include "../common/err.h"

/* Celery's argsrepr/kwargsrepr limit (amqp.argsrepr_maxsize, kwargsrepr_maxsize). */
#define CEL_MESSAGE_REPR_MAX 1024

/* The parts of one message in kombu's Redis envelope. Borrowed. */
typedef struct cel_envelope_parts {
    const void *body; /* serialized body; base64-encoded into the envelope */
    size_t body_len;
    const char *content_type;     /* NULL -> null */
    const char *content_encoding; /* NULL -> null */
    json_t *headers;              /* object, or NULL for {} */
    const char *correlation_id;   /* NULL: left out */
    const char *reply_to;         /* NULL: left out */
    json_t *extra;                /* more properties (object, kept in order), or NULL */
    int delivery_mode;            /* 1 or 2 */
    const char *expiration;       /* milliseconds as a string, or NULL */
    const char *exchange;         /* delivery_info.exchange */
    const char *routing_key;      /* delivery_info.routing_key */
    int priority;                 /* properties.priority as written (kombu: 0 when none) */
    const char *delivery_tag;     /* a fresh uuid4 per publish */
} cel_envelope_parts_t;

/* Encodes the envelope kombu's Redis transport stores for a message, byte for
 * byte as kombu.utils.json.dumps writes it:
 *   {"body": <base64>, "content-encoding", "content-type", "headers",
 *    "properties": {correlation_id, reply_to, <extra...>, delivery_mode,
 *                   [expiration], delivery_info {exchange, routing_key},
 *                   priority, body_encoding "base64", delivery_tag}}
 * Returns a malloc'd NUL-terminated string (*len its length), or NULL with
 * err: CEL_EINVAL (missing exchange, routing key or tag), CEL_ETYPE (headers
 * or extra not JSON-able: NaN, bad UTF-8), CEL_ELIMIT (body over
 * CEL_MSG_MAX_BYTES), CEL_ENOMEM. */
char *cel_envelope_encode(const cel_envelope_parts_t *p, size_t *len, cel_err_t *err);

/* The queue key kombu's Redis transport LPUSHes a message of this priority
 * to (_q_for_pri): the queue name for 0..2 (and for -1, none), else
 * "<queue>\x06\x16<step>" with step 3, 6 or 9. Writes at most size bytes
 * (NUL included); returns the length, or -1 when it does not fit. */
int cel_envelope_queue_key(const char *queue, int priority, char *out, size_t size);

/* Celery's saferepr(v, maxlen, maxlevels) (celery/utils/saferepr.py), as the
 * client writes argsrepr/kwargsrepr: as_tuple shows an array as a Python
 * tuple. Returns a malloc'd string or NULL (v NULL, out of memory). */
char *cel_saferepr(json_t *v, int as_tuple, long maxlen, int maxlevels);

/* What a sender takes from its app and process rather than from the
 * signature. Borrowed. */
typedef struct cel_send_ctx {
    double now;                 /* unix seconds: countdown and numeric expires count from it */
    const char *origin;         /* headers.origin: "gen<pid>@<host>" (anon_nodename) */
    const char *reply_to;       /* app.thread_oid: when the options name none */
    const char *default_queue;  /* task_default_queue: "celery" */
    const char *parent_id;      /* the task running now (send_task's current_worker_task): the
                                * default parent_id, or NULL */
    const char *parent_root_id; /* its root_id (default root_id: this, else parent_id) */
    const char *compression;    /* the app's result_compression, which 5.2's send_task_message
                                 * compresses task messages with when the options name no
                                 * compression (a kombu name: "gzip"), or NULL */
    /* A fresh task id (uuid4 text, 36 characters) into out. */
    void (*new_id)(void *priv, char out[37]);
    void *id_priv;
} cel_send_ctx_t;

/* One task message ready to publish. Owns every field; cel_msg_free. */
typedef struct cel_msg {
    char *id;   /* headers.id, also the correlation_id */
    char *name; /* headers.task */
    char *exchange;
    char *exchange_type; /* "direct", "topic", "fanout" */
    char *routing_key;
    json_t *headers; /* as_task_v2's, in its order (+ the options' headers) */
    char *content_type;
    char *content_encoding;
    char *body; /* serialized [args, kwargs, embed] */
    size_t body_len;
    char *reply_to;
    json_t *extra;    /* options 5.2 passes on as properties, or NULL */
    char *expiration; /* ms as a string, or NULL */
    int priority;     /* 0 when none (kombu's default_priority) */
    int persistent;   /* delivery_mode 2 */
} cel_msg_t;

void cel_msg_free(cel_msg_t *m);

/* Signature.apply_async(args, kwargs, **options) for a task signature (a
 * dict {task, args, kwargs, options, subtask_type, immutable}), as the 5.2
 * worker runs it for a task it has not registered: the options merged into
 * the signature's (None values dropped; a group_id the signature has is
 * kept), args prepended and kwargs merged unless immutable, then
 * app.send_task -> amqp.as_task_v2 -> send_task_message -> Producer.publish:
 * task_id (else a new id), countdown/eta, expires (seconds or ISO text; also
 * the expiration property), link/link_error/chain/chord into the embed,
 * group_id/group_index, root_id (else the id), parent_id, shadow, retries,
 * time limits, ignore_result, headers, priority, serializer (json, msgpack),
 * compression (else ctx->compression: the body compressed as kombu does and
 * its content type in the `compression` header), delivery_mode, and routing: queue (else ctx->default_queue) on the default
 * exchange, or exchange + routing_key (and exchange_type) as given. Options
 * none of those consume are passed on as properties (extra), as 5.2 does.
 * args_tuple says whether Python holds the signature's own args as a tuple
 * (a cloned signature) for argsrepr; prepended args always make one.
 * sig, args (array or NULL), kwargs (object or NULL) and options (object or
 * NULL) are borrowed. CEL_OK with *out set (cel_msg_free), else CEL_EINVAL
 * (not a signature, an option of the wrong type), CEL_ETYPE (values JSON
 * cannot carry), CEL_ENOMEM; *out NULL. */
int cel_message_apply(json_t *sig, json_t *args, json_t *kwargs, json_t *options, int args_tuple,
                      const cel_send_ctx_t *ctx, cel_msg_t **out, cel_err_t *err);

#endif
