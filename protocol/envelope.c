/* envelope.c -- kombu's Redis envelope, encoding side: what a publish LPUSHes.
 *
 * The decoding side lives in task.c. Matches kombu/messaging.py
 * Producer.publish (delivery_mode then expiration), kombu/transport/virtual/
 * base.py prepare_message (delivery_info, priority) and
 * _inplace_augment_message (base64 body, body_encoding, delivery_tag), and
 * kombu/transport/redis.py _put / _q_for_pri for the priority key. Written
 * with json.c's encoder so the text equals kombu.utils.json.dumps's. No I/O;
 * main process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "message.h"

/* Appends `"key": ` then value (a C string, NULL -> null). */
static int put_str(cel_buf_t *b, const char *key, const char *val, int first, cel_err_t *err) {
    if (!first) cel_buf_put(b, ", ", 2);
    int rc = cel_json_dump_string(b, key, strlen(key), err);
    if (rc) return rc;
    cel_buf_put(b, ": ", 2);
    if (!val) {
        cel_buf_puts(b, "null");
        return CEL_OK;
    }
    return cel_json_dump_string(b, val, strlen(val), err);
}

char *cel_envelope_encode(const cel_envelope_parts_t *p, size_t *len, cel_err_t *err) {
    if (len) *len = 0;
    if (!p->exchange || !p->routing_key || !p->delivery_tag) {
        cel_err_set(err, CEL_EINVAL, "an envelope needs an exchange, a routing key and a tag");
        return NULL;
    }
    if (p->body_len > CEL_MSG_MAX_BYTES) {
        cel_err_set(err, CEL_ELIMIT, "message body of %zu bytes is over the limit", p->body_len);
        return NULL;
    }
    if ((p->headers && !json_is_object(p->headers)) || (p->extra && !json_is_object(p->extra))) {
        cel_err_set(err, CEL_ETYPE, "headers and extra properties must be objects");
        return NULL;
    }
    char *b64 = cel_base64_encode(p->body ? p->body : (const void *)"", p->body_len);
    if (!b64) {
        cel_err_set(err, CEL_ENOMEM, "out of memory encoding an envelope");
        return NULL;
    }
    cel_buf_t b = { 0 };
    int rc;
    cel_buf_puts(&b, "{\"body\": \"");
    cel_buf_puts(&b, b64); /* the base64 alphabet needs no escaping */
    cel_buf_putc(&b, '"');
    free(b64);
    rc = put_str(&b, "content-encoding", p->content_encoding, 0, err);
    if (!rc) rc = put_str(&b, "content-type", p->content_type, 0, err);
    if (!rc) {
        cel_buf_puts(&b, ", \"headers\": ");
        if (p->headers) rc = cel_json_dump_into(&b, p->headers, err);
        else cel_buf_puts(&b, "{}");
    }
    if (!rc) {
        cel_buf_puts(&b, ", \"properties\": {");
        int first = 1;
        if (p->correlation_id)
            rc = put_str(&b, "correlation_id", p->correlation_id, first, err), first = 0;
        if (!rc && p->reply_to) rc = put_str(&b, "reply_to", p->reply_to, first, err), first = 0;
        if (!rc && p->extra) {
            const char *key;
            size_t klen;
            json_t *val;
            json_object_keylen_foreach(p->extra, key, klen, val) {
                if (!first) cel_buf_put(&b, ", ", 2);
                first = 0;
                if ((rc = cel_json_dump_string(&b, key, klen, err))) break;
                cel_buf_put(&b, ": ", 2);
                if ((rc = cel_json_dump_into(&b, val, err))) break;
            }
        }
        if (!rc) {
            cel_buf_printf(&b, "%s\"delivery_mode\": %d", first ? "" : ", ", p->delivery_mode);
            if (p->expiration) rc = put_str(&b, "expiration", p->expiration, 0, err);
        }
        if (!rc) {
            cel_buf_puts(&b, ", \"delivery_info\": {");
            rc = put_str(&b, "exchange", p->exchange, 1, err);
            if (!rc) rc = put_str(&b, "routing_key", p->routing_key, 0, err);
            cel_buf_putc(&b, '}');
        }
        if (!rc) {
            cel_buf_printf(&b, ", \"priority\": %d, \"body_encoding\": \"base64\"", p->priority);
            rc = put_str(&b, "delivery_tag", p->delivery_tag, 0, err);
        }
        cel_buf_puts(&b, "}}");
    }
    if (rc) {
        cel_buf_free(&b);
        return NULL;
    }
    size_t n = b.len;
    char *s = cel_buf_take(&b);
    if (!s) {
        cel_err_set(err, CEL_ENOMEM, "out of memory encoding an envelope");
        return NULL;
    }
    if (len) *len = n;
    return s;
}

int cel_envelope_queue_key(const char *queue, int priority, char *out, size_t size) {
    /* kombu: priority clamped to 0..9, then the largest of the steps
     * 0, 3, 6, 9 that is not above it. */
    if (priority < 0) priority = 0;
    if (priority > 9) priority = 9;
    int step = priority / 3 * 3;
    int n =
        step ? snprintf(out, size, "%s\x06\x16%d", queue, step) : snprintf(out, size, "%s", queue);
    return n < 0 || (size_t)n >= size ? -1 : n;
}
