/* fuzz_frame.c -- libFuzzer harness for the executor frames: protocol/frame.c's
 * incremental reader and the msgpack payload decode that pool.c and executor.c run on
 * every frame (cel_msgpack_to_json, then the "op" and field look-ups).
 *
 * The first byte picks how the rest is fed (chunks of 1..64 bytes, or all at once) and
 * the reader's payload limit (CEL_FRAME_MAX, or 64 bytes to reach the sticky
 * CEL_ELIMIT); the rest is the byte stream of an executor pipe. Checked against a walk
 * of the same bytes by hand: each frame is exactly the bytes after its header, frames
 * come out in order whatever the chunking, a length over the limit fails and keeps
 * failing, and what is left unread is an incomplete frame. Each payload that decodes
 * must encode again, frame again and read back to the same bytes. Guard-page mode
 * (guard.h). `make fuzz` runs it over tests/fuzz/corpus/frame/; `make test` replays
 * that corpus. Written against cel_frame_reader_* and cel_msgpack_to_json; typed
 * frame decoders belong in fuzz_one too once frame.c has them.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "guard.h"
#include "../../protocol/frame.h"
#include "../../protocol/protocol.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SMALL_MAX 64

static size_t be32(const uint8_t *p) {
    return (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | (size_t)p[3];
}

/* What pool.c (main process) and executor.c look at in a decoded frame. */
static void look_at(json_t *msg) {
    const char *op = json_string_value(json_object_get(msg, "op"));
    const char *id = json_string_value(json_object_get(msg, "id"));
    if (op && id && strcmp(op, "result") == 0) {
        char *s = cel_repr(json_object_get(msg, "result"), 0, 256);
        free(s);
    }
    json_t *args = json_object_get(msg, "args");
    if (json_is_array(args)) {
        char *s = cel_repr(args, 1, 256);
        free(s);
    }
}

/* A decoded payload must re-encode, frame, and read back as the same bytes. */
static void round_trip(json_t *msg) {
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    if (cel_json_to_msgpack(msg, &buf, &len, &cap, NULL) != CEL_OK) __builtin_trap();
    uint8_t hdr[CEL_FRAME_HDR];
    if (cel_frame_header(len, hdr, NULL) != CEL_OK) __builtin_trap();
    cel_frame_reader_t *r = cel_frame_reader_new(len);
    if (!r) __builtin_trap();
    const uint8_t *p = NULL;
    size_t n = 0;
    if (cel_frame_reader_feed(r, hdr, sizeof(hdr)) != CEL_OK ||
        cel_frame_reader_next(r, &p, &n, NULL) != CEL_EAGAIN ||
        cel_frame_reader_feed(r, buf, len) != CEL_OK ||
        cel_frame_reader_next(r, &p, &n, NULL) != CEL_OK || n != len ||
        (len && memcmp(p, buf, len) != 0) || cel_frame_reader_next(r, &p, &n, NULL) != CEL_EAGAIN)
        __builtin_trap();
    json_t *again = NULL;
    if (cel_msgpack_to_json(buf, len, &again, NULL) != CEL_OK) __builtin_trap();
    json_decref(again);
    cel_frame_reader_free(r);
    free(buf);
}

static int fuzz_one(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t chunk = (data[0] & 0x80) ? size : (size_t)(data[0] & 0x3f) + 1;
    size_t max = (data[0] & 0x40) ? SMALL_MAX : CEL_FRAME_MAX;
    data++;
    size--;
    cel_frame_reader_t *r = cel_frame_reader_new(max);
    if (!r) return 0;
    size_t fed = 0, pos = 0; /* pos: where the next frame starts, walked by hand */
    int limited = 0;
    while (!limited && fed < size) {
        size_t n = size - fed < chunk ? size - fed : chunk;
        if (cel_frame_reader_feed(r, data + fed, n) != CEL_OK) __builtin_trap();
        fed += n;
        for (;;) {
            const uint8_t *payload = NULL;
            size_t len = 0;
            cel_err_t err;
            int rc = cel_frame_reader_next(r, &payload, &len, &err);
            if (rc == CEL_EAGAIN) {
                /* nothing whole is buffered: the header or the payload is incomplete */
                if (payload || len) __builtin_trap();
                if (fed - pos >= CEL_FRAME_HDR && fed - pos - CEL_FRAME_HDR >= be32(data + pos))
                    __builtin_trap();
                break;
            }
            if (rc == CEL_ELIMIT) {
                if (fed - pos < CEL_FRAME_HDR || be32(data + pos) <= max || err.code != rc)
                    __builtin_trap();
                limited = 1;
                break;
            }
            if (rc != CEL_OK || fed - pos < CEL_FRAME_HDR) __builtin_trap();
            size_t want = be32(data + pos);
            if (len != want || fed - pos - CEL_FRAME_HDR < len ||
                (len && memcmp(payload, data + pos + CEL_FRAME_HDR, len) != 0))
                __builtin_trap();
            pos += CEL_FRAME_HDR + len;
            json_t *msg = NULL;
            if (cel_msgpack_to_json(payload, len, &msg, NULL) == CEL_OK) {
                look_at(msg);
                round_trip(msg);
                json_decref(msg);
            } else if (msg) {
                __builtin_trap();
            }
        }
    }
    if (limited) {
        /* sticky: feeding more and asking again fail the same way */
        const uint8_t *p = NULL;
        size_t n = 0;
        if (cel_frame_reader_feed(r, data, size) != CEL_ELIMIT ||
            cel_frame_reader_next(r, &p, &n, NULL) != CEL_ELIMIT || p || n)
            __builtin_trap();
    }
    cel_frame_reader_free(r);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fuzz_one(guard_place(data, size), size);
}
