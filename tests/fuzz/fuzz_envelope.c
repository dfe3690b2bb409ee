/* fuzz_envelope.c -- libFuzzer harness for cel_task_decode_envelope.
 *
 * Feeds arbitrary bytes as a kombu Redis envelope; every result must be a
 * clean error or a task that frees without leaks.
 * Guard-page mode (guard.h): each input ends right before an unreadable page.
 * `make fuzz` runs it over tests/fuzz/corpus/envelope/; `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "../../protocol/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_one(const uint8_t *data, size_t size) {
    cel_task_t *t = NULL;
    cel_err_t err;
    int rc = cel_task_decode_envelope((const char *)data, size, &t, &err);
    if (rc == CEL_OK || rc == CEL_EBODY) {
        /* exercise what the worker does next with a decoded task */
        if (!t || !t->id || !t->name) __builtin_trap();
        if (rc == CEL_OK) {
            char *s = cel_repr(t->args, 1, 64);
            free(s);
            s = cel_json_dumps(t->kwargs, NULL);
            free(s);
            uint8_t *buf = NULL;
            size_t len = 0, cap = 0;
            cel_json_to_msgpack(t->args, &buf, &len, &cap, NULL);
            free(buf);
        }
    } else if (t) {
        __builtin_trap();
    }
    cel_task_free(t);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
