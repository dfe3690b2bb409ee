/* meta.c -- result meta as Celery's Redis backend stores it, and exception dicts.
 *
 * Matches celery/backends/base.py _get_result_meta + _store_result written with
 * json.dumps: key order status, result, traceback, children, date_done,
 * [group_id], [parent_id], [name, args, kwargs, worker, retries, queue with
 * result_extended], task_id; date_done naive UTC isoformat. The text is
 * byte-identical to what a Python worker SETs and PUBLISHes. No I/O; main
 * process.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Appends `"key": "value"` (value a C string, NULL -> null). */
static int put_str_field(cel_buf_t *b, const char *key, const char *val, cel_err_t *err) {
    cel_buf_put(b, ", \"", 3);
    cel_buf_puts(b, key);
    cel_buf_put(b, "\": ", 3);
    if (!val) {
        cel_buf_puts(b, "null");
        return CEL_OK;
    }
    return cel_json_dump_string(b, val, strlen(val), err);
}

/* Builds the meta JSON (see protocol.h for the fields). Returns a malloc'd
 * string, or NULL with err: CEL_EINVAL (no task_id/status), CEL_ETYPE (bad
 * UTF-8 in result/children/strings), CEL_ENOMEM. NaN and infinities (as
 * cel_json_float carries them) are written as Python's json writes them.
 * group_id/parent_id are left out when NULL or "" (Python tests truthiness). */
char *cel_meta_encode(const char *task_id, const char *status, json_t *result,
                      const char *traceback, json_t *children, double date_done,
                      const char *group_id, const char *parent_id, cel_err_t *err) {
    return cel_meta_encode_ext(task_id, status, result, traceback, children, date_done, group_id,
                               parent_id, NULL, err);
}

/* A JSON value field (NULL -> null). */
static int put_json_field(cel_buf_t *b, const char *key, json_t *v, cel_err_t *err) {
    cel_buf_put(b, ", \"", 3);
    cel_buf_puts(b, key);
    cel_buf_put(b, "\": ", 3);
    if (!v) {
        cel_buf_puts(b, "null");
        return CEL_OK;
    }
    return cel_json_dump_into(b, v, err);
}

/* The same, with result_extended's fields when ext is not NULL. */
char *cel_meta_encode_ext(const char *task_id, const char *status, json_t *result,
                          const char *traceback, json_t *children, double date_done,
                          const char *group_id, const char *parent_id, const cel_meta_ext_t *ext,
                          cel_err_t *err) {
    if (!task_id || !status) {
        cel_err_set(err, CEL_EINVAL, "meta needs a task id and a status");
        return NULL;
    }
    cel_buf_t b = { 0 };
    int rc;
    cel_buf_puts(&b, "{\"status\": ");
    rc = cel_json_dump_string(&b, status, strlen(status), err);
    if (rc == CEL_OK) {
        cel_buf_puts(&b, ", \"result\": ");
        rc = result ? cel_json_dump_into(&b, result, err) : (cel_buf_puts(&b, "null"), CEL_OK);
    }
    if (rc == CEL_OK) rc = put_str_field(&b, "traceback", traceback, err);
    if (rc == CEL_OK) {
        cel_buf_puts(&b, ", \"children\": ");
        rc = children ? cel_json_dump_into(&b, children, err) : (cel_buf_puts(&b, "[]"), CEL_OK);
    }
    if (rc == CEL_OK) {
        char when[40];
        rc = put_str_field(
            &b, "date_done",
            date_done < 0 ? NULL : cel_time_format_iso8601(date_done, when, sizeof(when)), err);
    }
    if (rc == CEL_OK && group_id && *group_id) rc = put_str_field(&b, "group_id", group_id, err);
    if (rc == CEL_OK && parent_id && *parent_id)
        rc = put_str_field(&b, "parent_id", parent_id, err);
    if (rc == CEL_OK && ext) {
        rc = put_str_field(&b, "name", ext->name, err);
        if (rc == CEL_OK) rc = put_json_field(&b, "args", ext->args, err);
        if (rc == CEL_OK) rc = put_json_field(&b, "kwargs", ext->kwargs, err);
        if (rc == CEL_OK) rc = put_str_field(&b, "worker", ext->worker, err);
        if (rc == CEL_OK) {
            if (ext->retries < 0) cel_buf_puts(&b, ", \"retries\": null");
            else cel_buf_printf(&b, ", \"retries\": %ld", ext->retries);
        }
        if (rc == CEL_OK) rc = put_str_field(&b, "queue", ext->queue, err);
    }
    if (rc == CEL_OK) rc = put_str_field(&b, "task_id", task_id, err);
    cel_buf_putc(&b, '}');
    if (rc != CEL_OK) {
        cel_buf_free(&b);
        return NULL;
    }
    char *s = cel_buf_take(&b);
    if (!s) cel_err_set(err, CEL_ENOMEM, "out of memory encoding result meta");
    return s;
}

/* {"exc_type": type, "exc_message": args, "exc_module": module}; args is
 * stolen (NULL -> []). Returns a new reference or NULL. */
json_t *cel_exc_new(const char *type, const char *module, json_t *args) {
    if (!args) args = json_array();
    if (!type || !module || !args) {
        json_decref(args);
        return NULL;
    }
    json_t *exc = json_object();
    if (!exc) {
        json_decref(args);
        return NULL;
    }
    /* every set_new runs so each value is handed over (stolen even on failure) */
    int bad = json_object_set_new(exc, "exc_type", json_string(type));
    bad |= json_object_set_new(exc, "exc_message", args);
    bad |= json_object_set_new(exc, "exc_module", json_string(module));
    if (bad) {
        json_decref(exc);
        return NULL;
    }
    return exc;
}
