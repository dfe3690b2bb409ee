/* fuzz_msgpack.c -- libFuzzer harness for cel_msgpack_to_json.
 *
 * Arbitrary bytes as msgpack; a decoded value must re-encode, decode again to
 * an equal value, and dump as JSON.
 * Guard-page mode (guard.h): each input ends right before an unreadable page.
 * `make fuzz` runs it over tests/fuzz/corpus/msgpack/; `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "../../protocol/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_one(const uint8_t *data, size_t size) {
    json_t *v = NULL;
    if (cel_msgpack_to_json(data, size, &v, NULL) != CEL_OK) {
        if (v) __builtin_trap();
        return 0;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    if (cel_json_to_msgpack(v, &buf, &len, &cap, NULL) != CEL_OK) __builtin_trap();
    /* compare as dumps text: json_equal looks keys up with strlen, so it
     * calls objects with NUL in a key unequal */
    json_t *w = NULL;
    if (cel_msgpack_to_json(buf, len, &w, NULL) != CEL_OK) __builtin_trap();
    char *s = cel_json_dumps(v, NULL), *s2 = cel_json_dumps(w, NULL);
    if (!s || !s2 || strcmp(s, s2) != 0) __builtin_trap();
    free(s);
    free(s2);
    s = cel_repr(v, 0, 100);
    free(s);
    free(buf);
    json_decref(v);
    json_decref(w);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
