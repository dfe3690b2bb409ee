/* fuzz_peek.c -- libFuzzer harness for cel_peek_envelope, checked against jansson.
 *
 * Feeds arbitrary bytes (in an exact-size buffer: no NUL after them) to the
 * headers-only scan. Every result must be CEL_OK or a clean error with empty
 * fields; and whenever jansson parses the same bytes as an envelope whose
 * first "headers" object holds a readable string id, the scan must find that
 * id too. `make fuzz FUZZ=peek`
 * runs it over tests/fuzz/corpus/peek/ in guard-page mode (guard.h); `make test`
 * replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "../../protocol/internal.h"
#include "../../protocol/peek.h"

#include "guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_one(const uint8_t *data, size_t size) {
    char *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    if (size) memcpy(buf, data, size);
    cel_peek_t pk;
    cel_err_t err;
    int rc = cel_peek_envelope(buf, size, &pk, &err);
    if (rc != CEL_OK && (pk.id[0] || pk.task[0] || pk.reply_to[0])) __builtin_trap();
    if (rc != CEL_OK && rc != CEL_EPROTO && rc != CEL_ELIMIT) __builtin_trap();
    /* jansson keeps the last of repeated keys (the scan reads the first
     * "headers" object), and takes a raw NUL byte after a number as a
     * delimiter (invalid JSON, refused by the scan). Compare only where
     * neither can matter. */
    json_t *env = memchr(buf, 0, size) ? NULL : json_loadb(buf, size, JSON_REJECT_DUPLICATES, NULL);
    json_t *h = json_object_get(env, "headers");
    const char *id = json_string_value(json_object_get(h, "id"));
    if (json_is_object(h) && id && strlen(id) == json_string_length(json_object_get(h, "id")) &&
        strlen(id) <= CEL_PEEK_STR_MAX &&
        cel_json_depth(env, CEL_MSG_MAX_DEPTH) <= CEL_MSG_MAX_DEPTH) {
        if (rc != CEL_OK || strcmp(pk.id, id) != 0) __builtin_trap();
    }
    json_decref(env);
    free(buf);
    return 0;
}

/* Guard-page mode (guard.h): a read past the input faults. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
