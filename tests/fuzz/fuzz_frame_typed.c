/* fuzz_frame_typed.c -- libFuzzer harness for the typed executor frames (protocol/frame.c).
 *
 * Feeds arbitrary bytes (an exact-size buffer) to cel_frame_op and to every
 * kind's decoder. Each result must be a clean error with an empty frame (a
 * run frame may keep its id and name), or a frame that encodes again, decodes
 * again, and encodes to the same bytes (compared as bytes: jansson's
 * json_equal misses object keys with NUL inside). `make fuzz FUZZ=frame_typed`
 * runs it over tests/fuzz/corpus/frame_typed/ in guard-page mode (guard.h); `make test`
 * replays that corpus.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../protocol/frame.h"

#include "guard.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Encodes a decoded frame, decodes that, encodes again: the two encodings
 * must be the same bytes. */
#define ROUND_TRIP(kind, type, f)                                                               \
    do {                                                                                        \
        type g_;                                                                                \
        uint8_t *a_ = NULL, *b_ = NULL;                                                         \
        size_t al_ = 0, ac_ = 0, bl_ = 0, bc_ = 0;                                              \
        if (cel_frame_##kind##_encode(&(f), &a_, &al_, &ac_, NULL) != CEL_OK) __builtin_trap(); \
        if (cel_frame_##kind##_decode(a_, al_, &g_, NULL) != CEL_OK) __builtin_trap();          \
        if (cel_frame_##kind##_encode(&g_, &b_, &bl_, &bc_, NULL) != CEL_OK) __builtin_trap();  \
        if (al_ != bl_ || memcmp(a_, b_, al_) != 0) __builtin_trap();                           \
        cel_frame_##kind##_clear(&g_);                                                          \
        free(a_);                                                                               \
        free(b_);                                                                               \
    } while (0)

static void check_run(const uint8_t *p, size_t n) {
    cel_frame_run_t f;
    if (cel_frame_run_decode(p, n, &f, NULL) != CEL_OK) {
        if (f.args || f.kwargs || (f.task && !f.id)) __builtin_trap();
    } else {
        ROUND_TRIP(run, cel_frame_run_t, f);
    }
    cel_frame_run_clear(&f);
}

static void check_result(const uint8_t *p, size_t n) {
    cel_frame_result_t f;
    if (cel_frame_result_decode(p, n, &f, NULL) != CEL_OK) {
        if (f.id || f.mem_ || f.result || f.exc_message) __builtin_trap();
        return;
    }
    ROUND_TRIP(result, cel_frame_result_t, f);
    cel_frame_result_clear(&f);
}

static int fuzz_one(const uint8_t *data, size_t size) {
    uint8_t *p = malloc(size ? size : 1);
    if (!p) return 0;
    if (size) memcpy(p, data, size);
    int op = cel_frame_op(p, size, NULL);
    if (op == 0 || op > CEL_FRAME_PROGRESS) __builtin_trap();
    check_run(p, size);
    check_result(p, size);
    cel_frame_ready_t rd;
    if (cel_frame_ready_decode(p, size, &rd, NULL) == CEL_OK)
        ROUND_TRIP(ready, cel_frame_ready_t, rd);
    else if (rd.device) __builtin_trap();
    cel_frame_ready_clear(&rd);
    cel_frame_progress_t pr;
    if (cel_frame_progress_decode(p, size, &pr, NULL) == CEL_OK)
        ROUND_TRIP(progress, cel_frame_progress_t, pr);
    else if (pr.id || pr.meta) __builtin_trap();
    cel_frame_progress_clear(&pr);
    free(p);
    return 0;
}

/* Guard-page mode (guard.h): a read past the input faults. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
