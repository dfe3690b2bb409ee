/* fuzz_amqp_table.c -- libFuzzer harness for protocol/amqp_msg.c on AMQP field tables.
 *
 * Arbitrary bytes as the encoded field table of a message's headers, decoded by
 * librabbitmq-c's amqp_decode_table as the connection thread's frame decoder does, then
 * cel_amqp_table_to_json. A table that converts must convert back (cel_amqp_json_to_table;
 * only a key grown past 255 bytes by U+FFFD replacements may be refused), encode, decode
 * and convert to the same JSON text. The same bytes also go through
 * cel_meta_to_rpc, whose input is a result meta. Guard-page mode (guard.h).
 * `make fuzz` runs it over tests/fuzz/corpus/amqp_table/; `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <amqp.h>

#include "guard.h"
#include "../../protocol/amqp_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char *dumps(json_t *v) { return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY); }

static void round_trip(json_t *j) {
    amqp_table_t back;
    int rc = cel_amqp_json_to_table(j, &back, NULL);
    /* ELIMIT is fair: bytes that were not UTF-8 came back as U+FFFD (three bytes each),
     * which can push a key past AMQP's 255 */
    if (rc == CEL_ELIMIT) return;
    if (rc != CEL_OK) __builtin_trap();
    size_t cap = 1 << 20, off = 0;
    uint8_t *buf = malloc(cap);
    amqp_bytes_t out = { cap, buf };
    if (amqp_encode_table(out, &back, &off) == AMQP_STATUS_OK) {
        amqp_pool_t pool;
        init_amqp_pool(&pool, 4096);
        amqp_table_t again;
        size_t off2 = 0;
        amqp_bytes_t in = { off, buf };
        json_t *j2 = NULL;
        if (amqp_decode_table(in, &pool, &again, &off2) != AMQP_STATUS_OK ||
            cel_amqp_table_to_json(&again, &j2, NULL) != CEL_OK)
            __builtin_trap();
        char *a = dumps(j), *b = dumps(j2);
        if (!a || !b || strcmp(a, b) != 0) __builtin_trap();
        free(a);
        free(b);
        json_decref(j2);
        empty_amqp_pool(&pool);
    }
    free(buf);
    cel_amqp_table_free(&back);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *in = guard_place(data, size);
    amqp_pool_t pool;
    init_amqp_pool(&pool, 4096);
    amqp_table_t t;
    size_t off = 0;
    amqp_bytes_t enc = { size, (void *)in };
    if (amqp_decode_table(enc, &pool, &t, &off) == AMQP_STATUS_OK) {
        json_t *j = NULL;
        if (cel_amqp_table_to_json(&t, &j, NULL) == CEL_OK) round_trip(j);
        else if (j) __builtin_trap();
        json_decref(j);
    }
    empty_amqp_pool(&pool);
    char *rpc = NULL;
    size_t n;
    if (cel_meta_to_rpc((const char *)in, size, &rpc, &n, NULL) == CEL_OK && strlen(rpc) != n)
        __builtin_trap();
    free(rpc);
    return 0;
}
