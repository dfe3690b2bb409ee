/* fuzz_body.c -- libFuzzer harness for raw task bodies through cel_task_decode_parts,
 * aimed at protocol 1 (a dict with task/id/args/...) and hybrid bodies (v2 headers, a
 * dict body with args), the conversions of celery/worker/strategy.py.
 *
 * The first byte picks the content type (bit 0: msgpack, else JSON; bit 2 adds
 * "; charset=utf-8"), whether v2 headers with a task name come along (bit 1: hybrid
 * when the body is a dict with args, else protocol 2) and whether properties and
 * delivery_info do (bit 3); the rest is the body as the transport hands it over (AMQP:
 * not NUL-terminated). A decoded task must hold what the worker reads next (id, name,
 * args list, kwargs mapping, argsrepr for protocol 1), an undecodable one nothing.
 * Guard-page mode (guard.h). `make fuzz` runs it over tests/fuzz/corpus/body/;
 * `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "../../protocol/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    int mode = data[0];
    data++;
    size--;
    const char *ctype =
        (mode & 1) ? ((mode & 4) ? "application/x-msgpack; charset=utf-8" : "application/x-msgpack")
                   : ((mode & 4) ? "application/json; charset=utf-8" : "application/json");
    json_t *headers = (mode & 2) ? json_pack("{s:s, s:s, s:s, s:i}", "lang", "py", "task",
                                             "tasks.add", "id", "hdr-id", "retries", 1)
                                 : NULL;
    json_t *props = (mode & 8) ? json_pack("{s:s, s:s, s:i}", "correlation_id", "c", "reply_to",
                                           "r", "priority", 3)
                               : NULL;
    json_t *dinfo = (mode & 8) ? json_pack("{s:s, s:s, s:b}", "exchange", "", "routing_key",
                                           "celery", "redelivered", 1)
                               : NULL;
    cel_task_t *t = NULL;
    cel_err_t err;
    int rc = cel_task_decode_parts(headers, props, dinfo, data, size, ctype, "utf-8", &t, &err);
    if (rc == CEL_OK || rc == CEL_EBODY) {
        if (!t || !t->id || !t->name || !*t->id || strlen(t->id) > size + 6) __builtin_trap();
        if (rc == CEL_OK) {
            if (!json_is_array(t->args) || !json_is_object(t->kwargs)) __builtin_trap();
            if (t->proto == 1 && (!t->argsrepr || !t->kwargsrepr)) __builtin_trap();
            char *s = cel_repr(t->args, 1, 64);
            free(s);
            s = cel_json_dumps(t->kwargs, NULL);
            free(s);
            uint8_t *buf = NULL;
            size_t len = 0, cap = 0;
            cel_json_to_msgpack(t->args, &buf, &len, &cap, NULL);
            free(buf);
        } else if (t->args || t->kwargs) {
            __builtin_trap();
        }
    } else if (t || rc >= 0) {
        __builtin_trap();
    }
    cel_task_free(t);
    json_decref(headers);
    json_decref(props);
    json_decref(dinfo);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
