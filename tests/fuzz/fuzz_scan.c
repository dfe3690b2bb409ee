/* fuzz_scan.c -- libFuzzer harness for the envelope fast path (scan.c), checked against jansson.
 *
 * Feeds arbitrary bytes (in an exact-size buffer: guard-page mode, guard.h)
 * to cel_task_decode_envelope, which reads the envelopes of the usual shape
 * with scan.c, and to cel_task_decode_envelope_full, which reads every one
 * with jansson. Both must return the same code, and when both have a task
 * (CEL_OK, CEL_EBODY) the same task (task_same.h). cel_env_scan alone must
 * return CEL_OK or CEL_EAGAIN. `make fuzz FUZZ=scan` runs it over
 * tests/fuzz/corpus/scan/; `make test` replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../protocol/internal.h"
#include "../../protocol/protocol.h"
#include "guard.h"
#include "task_same.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fuzz_one(const uint8_t *data, size_t size) {
    cel_env_scan_t sc;
    int src = cel_env_scan((const char *)data, size, &sc);
    if (src != CEL_OK && src != CEL_EAGAIN) __builtin_trap();
    cel_task_t *a = NULL, *b = NULL;
    cel_err_t ea, eb;
    int ra = cel_task_decode_envelope((const char *)data, size, &a, &ea);
    int rb = cel_task_decode_envelope_full((const char *)data, size, CEL_MSG_MAX_BYTES, &b, &eb);
    if (ra != rb && ra != CEL_ENOMEM && rb != CEL_ENOMEM) __builtin_trap();
    if ((a == NULL) != (b == NULL) && ra == rb) __builtin_trap();
    char why[256];
    if (a && b && !task_same(a, b, why, sizeof(why))) __builtin_trap();
    cel_task_free(a);
    cel_task_free(b);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
