/* amqp_msg.h -- AMQP 0-9-1 message parts as JSON: field tables, basic properties, rpc replies.
 *
 * On AMQP a Celery message is not a kombu envelope: its headers are an AMQP
 * field table, its properties the basic class's fields, its body raw bytes.
 * This converts the decoded structures librabbitmq-c hands over
 * (amqp_table_t, amqp_basic_properties_t) into jansson trees the task
 * decoder reads (cel_task_decode_parts), and JSON headers back into a field
 * table for publishing, with py-amqp's choice of types (amqp/serialization.py
 * _write_item: str S, bool t, float d, int I within +-2147483647 else L,
 * None V, dict F, list A), so what we publish decodes in Python as the stock
 * client's own messages do. Every count and depth from the wire meets a
 * limit before it sizes anything. Pure, no I/O: runs in the AMQP connection
 * thread (decoding) and wherever a message is built.
 */
#ifndef CEL_AMQP_MSG_H
#define CEL_AMQP_MSG_H

#include <stddef.h>

#include <amqp.h>
#include <jansson.h>

#include "../common/err.h"
#include "peek.h"

#define CEL_AMQP_MAX_ITEMS 65536 /* entries in one field table or array */

/* Converts a field table into a new JSON object (*out, caller decrefs).
 * Integers of every width become JSON integers ('L', unsigned in
 * librabbitmq's naming, is read as py-amqp writes it: signed 64 bits),
 * floats reals, decimals reals, timestamps integers, void null, strings
 * and byte arrays strings (bytes that are not UTF-8 -- py-amqp's lone
 * surrogates -- become U+FFFD). Returns CEL_OK; CEL_ELIMIT past
 * CEL_MSG_MAX_DEPTH nesting or CEL_AMQP_MAX_ITEMS entries; CEL_ETYPE for a
 * value JSON cannot hold (NaN, infinity, an unknown kind); CEL_ENOMEM.
 * *out is NULL on error. */
int cel_amqp_table_to_json(const amqp_table_t *t, json_t **out, cel_err_t *err);

/* Converts basic properties into two new JSON objects: *props holds the set
 * fields under kombu's names (content_type, content_encoding, delivery_mode,
 * priority, correlation_id, reply_to, expiration, message_id, timestamp,
 * type, user_id, app_id, cluster_id) and *headers the application headers
 * ({} when absent). Short strings that are not UTF-8 are left out. Same
 * returns as cel_amqp_table_to_json; both NULL on error. */
int cel_amqp_props_to_json(const amqp_basic_properties_t *p, json_t **props, json_t **headers,
                           cel_err_t *err);

/* Builds a field table from a JSON object (borrowed: the table points into
 * its strings, so obj must outlive the table); free it with
 * cel_amqp_table_free. CEL_EINVAL when obj is not an object, CEL_ETYPE for
 * a real JSON cannot hold, CEL_ELIMIT past CEL_MSG_MAX_DEPTH nesting, a key
 * over 255 bytes or CEL_AMQP_MAX_ITEMS entries, CEL_ENOMEM; out is empty
 * then. */
int cel_amqp_json_to_table(json_t *obj, amqp_table_t *out, cel_err_t *err);

/* Frees what cel_amqp_json_to_table allocated (not the strings). NULL ok. */
void cel_amqp_table_free(amqp_table_t *t);

/* The ids of a message refused before decoding (over --max-message-size),
 * read from its converted headers and properties (either may be NULL):
 * what cel_peek_envelope finds in a kombu envelope. CEL_OK always (missing
 * or unusable fields are ""). */
int cel_peek_amqp(json_t *headers, json_t *props, cel_peek_t *out, cel_err_t *err);

/* The rpc:// reply body for a stored result meta (cel_meta_encode's text,
 * borrowed; not NUL-terminated as far as this knows): celery/backends/rpc.py
 * _to_result, {"task_id", "status", "result", "traceback", "children"} in
 * that order, the values copied byte for byte (no date_done, group_id or
 * parent_id). *out is malloc'd (NUL-terminated, *out_len without it).
 * CEL_EPROTO when meta is not an object holding those five keys. */
int cel_meta_to_rpc(const char *meta, size_t len, char **out, size_t *out_len, cel_err_t *err);

#endif
