/* body.c -- raw task body bytes to a json_t, by content type.
 *
 * application/json (jansson, with size and depth limits, clear messages for
 * what Python's json writes but jansson cannot hold: integers beyond int64,
 * NaN/Infinity) and application/x-msgpack (msgpack.c). Anything else (pickle,
 * yaml, ...) is refused with CEL_EBODY. The shape of the body (v2 list, v1
 * dict) is task.c's business. No I/O; main process.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "internal.h"

#define MEDIA_TYPE_MAX 128

/* Copies the media type part of a content type ("application/json;
 * charset=utf-8" -> "application/json"), lower-cased and trimmed. */
static void media_type(const char *ct, char *out, size_t size) {
    size_t n = 0;
    while (*ct == ' ' || *ct == '\t') ct++;
    for (; *ct && *ct != ';' && n + 1 < size; ct++)
        out[n++] = (*ct >= 'A' && *ct <= 'Z') ? (char)(*ct - 'A' + 'a') : *ct;
    while (n > 0 && (out[n - 1] == ' ' || out[n - 1] == '\t')) n--;
    out[n] = '\0';
}

static int text_encoding_ok(const char *enc) {
    static const char *ok[] = { "utf-8", "utf8", "binary", "ascii", "us-ascii", "ascii-8bit" };
    if (!enc || !*enc) return 1;
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        if (strcasecmp(enc, ok[i]) == 0) return 1;
    return 0;
}

static int load_json(const uint8_t *body, size_t len, json_t **out, cel_err_t *err) {
    json_error_t je;
    json_t *v = json_loadb((const char *)body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
    if (!v) {
        const char *hint = "";
        if (strstr(je.text, "too big integer"))
            hint = " (integers beyond 64 bits are not supported)";
        else if (strstr(je.text, "invalid token") || strstr(je.text, "real number overflow"))
            hint = " (NaN and Infinity are not supported)";
        else if (strstr(je.text, "maximum parsing depth")) hint = " (nested too deep)";
        return cel_err_set(err, CEL_EBODY, "body is not valid JSON: %s at line %d column %d%s",
                           je.text, je.line, je.column, hint);
    }
    if (cel_json_depth(v, CEL_MSG_MAX_DEPTH) > CEL_MSG_MAX_DEPTH) {
        json_decref(v);
        return cel_err_set(err, CEL_EBODY, "body nested deeper than %d levels", CEL_MSG_MAX_DEPTH);
    }
    *out = v;
    return CEL_OK;
}

int cel_body_load(const uint8_t *body, size_t len, const char *content_type,
                  const char *content_encoding, json_t **out, cel_err_t *err) {
    char mt[MEDIA_TYPE_MAX];
    *out = NULL;
    if (len > CEL_MSG_MAX_BYTES)
        return cel_err_set(err, CEL_EBODY, "body of %zu bytes is over the %u byte limit", len,
                           CEL_MSG_MAX_BYTES);
    if (!content_type || !*content_type)
        return cel_err_set(err, CEL_EBODY, "message has no content type");
    media_type(content_type, mt, sizeof(mt));
    if (strcmp(mt, "application/json") == 0) {
        if (!text_encoding_ok(content_encoding))
            return cel_err_set(err, CEL_EBODY, "unsupported content encoding '%.64s'",
                               content_encoding);
        return load_json(body, len, out, err);
    }
    if (strcmp(mt, "application/x-msgpack") == 0) {
        cel_err_t e;
        int rc = cel_msgpack_to_json(body, len, out, &e);
        if (rc == CEL_ENOMEM) return cel_err_set(err, rc, "%s", e.msg);
        if (rc) return cel_err_set(err, CEL_EBODY, "body is not valid msgpack: %s", e.msg);
        return CEL_OK;
    }
    if (strcmp(mt, "application/x-python-serialize") == 0)
        return cel_err_set(err, CEL_EBODY,
                           "content type 'application/x-python-serialize' (pickle) is not "
                           "supported; use json or msgpack");
    return cel_err_set(err, CEL_EBODY,
                       "unsupported content type '%.64s'; use application/json or "
                       "application/x-msgpack",
                       content_type);
}
