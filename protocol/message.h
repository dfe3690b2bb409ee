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

#endif
