/* frame.h -- length-prefixed frames between the main process and executors.
 *
 * A frame is a 4-byte big-endian payload length N (N <= CEL_FRAME_MAX) followed
 * by N bytes of payload; the payload is one msgpack map (see EXECUTOR PROTOCOL).
 * The reader is a pure incremental parser: feed bytes as they arrive, take whole
 * frames out. No I/O here; used by the main process (libuv pipe reads) and by
 * executors (blocking reads).
 *
 * EXECUTOR PROTOCOL (msgpack maps, string keys)
 *   executor -> main, once at start:  {"op": "ready", "pid": int}
 *   main -> executor:  {"op": "run", "id": str, "task": str, "args": array,
 *                       "kwargs": map, "soft_time_limit": float (0 = none),
 *                       "retries": int}
 *   executor -> main:  {"op": "result", "id": str, "status": "SUCCESS",
 *                       "result": any, "runtime": float}
 *                      {"op": "result", "id": str, "status": "FAILURE",
 *                       "exc_type": str, "exc_module": str, "exc_message": array,
 *                       "traceback": str|nil, "runtime": float}
 *                      {"op": "progress", "id": str, "state": str, "meta": any}
 *   The executor runs one task at a time: it answers every "run" with exactly
 *   one "result" before reading the next frame. EOF on its channel means
 *   "exit now" (warm: the main process closes the channel when done with it).
 *   SIGUSR1 to an executor means "soft time limit reached" for the running task.
 */
#ifndef CEL_FRAME_H
#define CEL_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

#define CEL_FRAME_MAX (256u * 1024 * 1024) /* one payload */
#define CEL_FRAME_HDR 4

typedef struct cel_frame_reader cel_frame_reader_t;

/* Allocates a reader whose frames may be at most max_payload bytes
 * (<= CEL_FRAME_MAX). Returns NULL on allocation failure. */
cel_frame_reader_t *cel_frame_reader_new(size_t max_payload);

/* Frees a reader. NULL is a no-op. */
void cel_frame_reader_free(cel_frame_reader_t *r);

/* Appends len bytes (borrowed) to the reader's buffer. Returns CEL_OK, CEL_ENOMEM,
 * or the reader's sticky error. */
int cel_frame_reader_feed(cel_frame_reader_t *r, const void *buf, size_t len);

/* Takes the next whole frame. On CEL_OK *payload and *len point into the reader's
 * buffer and stay valid until the next feed/next/free call. Returns CEL_EAGAIN
 * when no whole frame is buffered, CEL_ELIMIT (sticky: every later call fails
 * the same way) when a length prefix exceeds the reader's maximum. */
int cel_frame_reader_next(cel_frame_reader_t *r, const uint8_t **payload, size_t *len,
                          cel_err_t *err);

/* Writes the 4-byte big-endian header for a payload of len bytes into hdr.
 * Returns CEL_ELIMIT if len > CEL_FRAME_MAX. */
int cel_frame_header(size_t len, uint8_t hdr[CEL_FRAME_HDR], cel_err_t *err);

#endif
