/* frame.h -- frames between the main process and executors: framing and typed codecs.
 *
 * A frame is a 4-byte big-endian payload length N (N <= CEL_FRAME_MAX) followed
 * by N bytes of payload; the payload is one msgpack map with string keys, the
 * kind named by its "op" (see EXECUTOR PROTOCOL). Two layers, both pure (no
 * I/O, no logging): an incremental reader that cuts a byte stream into
 * payloads, and one struct per frame kind with its encoder and decoder. Used
 * by the main process (worker/pool.c, worker/consumer.c; libuv pipe reads)
 * and by executors (executor/executor.c; blocking reads).
 *
 * EXECUTOR PROTOCOL (msgpack maps; keys in any order; unknown keys ignored)
 *   executor -> main, once, when its model is loaded:
 *     {"op": "ready", "pid": int, "device": str}   device: "cpu", "cuda:0", ...
 *   main -> executor, one per task:
 *     {"op": "run", "id": str, "task": str, "args": array, "kwargs": map,
 *      "soft_time_limit": float (0 = none), "retries": int}
 *     args and kwargs may be absent ([] and {}); soft_time_limit and retries
 *     are informational: the main process enforces time limits itself.
 *   executor -> main, exactly one per run, in the order the runs came:
 *     {"op": "result", "id": str, "status": "SUCCESS", "result": any,
 *      "runtime": float}
 *     {"op": "result", "id": str, "status": "FAILURE", "exc_type": str,
 *      "exc_module": str, "exc_message": array, "traceback": str|nil,
 *      "runtime": float}
 *     either may carry "stats": {...}, what the executor reports about the
 *     task and itself for the worker's metrics (cel_frame_stats_t; every key
 *     optional, numbers >= 0): "tokens_trained", "tokens_scored",
 *     "pass_tasks" and "pass_s" (on the first result of a model pass: the
 *     tasks it packed and its seconds), "adapters", "adapters_gpu" (held
 *     now), "evicted", "evicted_gpu" (since its previous stats), "gpu_used",
 *     "gpu_total" (bytes).
 *   executor -> main, while a task runs (model tasks, at most every 0.25 s):
 *     {"op": "progress", "id": str, "state": str, "meta": any}
 *   Writing ahead: the main process may write several runs before their
 *   results come back -- up to 4 to an executor whose recent tasks were
 *   short (pipelining), up to --batch-max-tasks when that is > 1. The
 *   executor still answers one run at a time, in order, except that packable
 *   model tasks (lora.forward_backward, model.score) waiting in its channel,
 *   or arriving within --batch-wait-ms, are prepared and run as one packed
 *   pass; their results then go back together, still in arrival order. A
 *   run frame whose id can be read but whose other fields are wrong gets a
 *   FAILURE result (kombu DecodeError); one without a readable id makes the
 *   executor exit with status 2. An executor that cannot start exits with
 *   status 2 (a bad command line) or 3 (the model, tokenizer or state
 *   directory could not be opened) before its ready frame. EOF on its
 *   channel means "exit now" (warm:
 *   the main process closes the channel when done with it). SIGUSR1 to an
 *   executor means "soft time limit reached" for the running task; SIGKILL
 *   ends it at the hard limit.
 */
#ifndef CEL_FRAME_H
#define CEL_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../common/err.h"

#define CEL_FRAME_MAX      (256u * 1024 * 1024) /* one payload */
#define CEL_FRAME_HDR      4
#define CEL_FRAME_NAME_MAX 65535 /* bytes of a short string field (id, task, exc_type, ...) */

/* An executor's exit statuses (see EXECUTOR PROTOCOL). */
#define CEL_EXEC_EXIT_IO    1 /* channel I/O failed or out of memory */
#define CEL_EXEC_EXIT_PROTO 2 /* bad command line, or a frame it cannot answer */
#define CEL_EXEC_EXIT_MODEL 3 /* the model, tokenizer or state dir could not be opened */

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

/* ---- typed frames --------------------------------------------------- */

/* Frame kinds, by their "op". */
enum { CEL_FRAME_READY = 1, CEL_FRAME_RUN = 2, CEL_FRAME_RESULT = 3, CEL_FRAME_PROGRESS = 4 };

/* Decoded frames own what their pointers point at until their _clear call
 * (strings in one block, json_t values by reference); frames given to an
 * encoder are only read (their pointers are borrowed). Every string field is
 * NUL-terminated UTF-8 without NUL inside. */

typedef struct cel_frame_ready {
    long pid;
    const char *device; /* where the model is: "cpu", "cuda:0" */
    void *mem_;
} cel_frame_ready_t;

typedef struct cel_frame_run {
    const char *id;
    const char *task;       /* task name */
    json_t *args;           /* array ([] when absent on the wire) */
    json_t *kwargs;         /* object ({} when absent) */
    double soft_time_limit; /* seconds, 0 = none */
    long retries;
    void *mem_;
} cel_frame_run_t;

/* A result's "stats" (frame.h's EXECUTOR PROTOCOL). present is 0 when the
 * frame had none (the encoder then writes none); absent keys read as 0,
 * adapters and adapters_gpu as -1 (unknown). */
typedef struct cel_frame_stats {
    int present;
    long tokens_trained; /* tokens lora.forward_backward trained on */
    long tokens_scored;  /* tokens model.score scored */
    long pass_tasks;     /* > 0 on the first result of a model pass: tasks it packed */
    double pass_s;       /* that pass's seconds */
    long adapters;       /* adapters in the executor's memory after the task */
    long adapters_gpu;   /* of them on the GPU */
    long evicted;        /* dropped from its memory since its previous stats */
    long evicted_gpu;    /* moved from the GPU to host memory since then */
    double gpu_used;     /* GPU bytes its model holds (0 on the CPU) */
    double gpu_total;    /* the GPU's memory in bytes (0 on the CPU) */
} cel_frame_stats_t;

typedef struct cel_frame_result {
    const char *id;
    int failed;             /* 0: status SUCCESS, 1: FAILURE */
    json_t *result;         /* SUCCESS: the return value (json null for None) */
    const char *exc_type;   /* FAILURE: "ValueError" */
    const char *exc_module; /* FAILURE: "builtins" */
    json_t *exc_message;    /* FAILURE: the exception's args, an array */
    const char *traceback;  /* FAILURE: NULL for none (nil on the wire) */
    double runtime;         /* seconds the task ran */
    cel_frame_stats_t stats;
    void *mem_;
} cel_frame_result_t;

typedef struct cel_frame_progress {
    const char *id;
    const char *state; /* "PROGRESS" */
    json_t *meta;      /* any value */
    void *mem_;
} cel_frame_progress_t;

/* The kind of a payload: CEL_FRAME_* (> 0), read from its "op" key without
 * decoding the rest. CEL_EPROTO when the payload is not a msgpack map or has
 * no string "op"; CEL_ENOTFOUND for an op no kind has (err names it). */
int cel_frame_op(const uint8_t *payload, size_t len, cel_err_t *err);

/* Encoders: append the msgpack payload of f (no frame header; see
 * cel_frame_header) to a growing buffer (*buf, *len, *cap, realloc'd as
 * needed; start with all three zero/NULL). Required fields must be set (a
 * NULL string or json_t is CEL_EINVAL); strings longer than
 * CEL_FRAME_NAME_MAX (traceback: CEL_FRAME_MAX) and json values nested past
 * the encoder's depth are CEL_ELIMIT. On error *len is restored (the buffer
 * may have grown; the caller still frees *buf). */
int cel_frame_ready_encode(const cel_frame_ready_t *f, uint8_t **buf, size_t *len, size_t *cap,
                           cel_err_t *err);
int cel_frame_run_encode(const cel_frame_run_t *f, uint8_t **buf, size_t *len, size_t *cap,
                         cel_err_t *err);
int cel_frame_result_encode(const cel_frame_result_t *f, uint8_t **buf, size_t *len, size_t *cap,
                            cel_err_t *err);
int cel_frame_progress_encode(const cel_frame_progress_t *f, uint8_t **buf, size_t *len,
                              size_t *cap, cel_err_t *err);

/* Decoders: one payload (borrowed) into *out, which owns its parts after
 * CEL_OK until the matching _clear. Errors: CEL_EPROTO (not a map, truncated
 * or trailing bytes, op of another kind, a required field missing, a field
 * of the wrong type, a string with NUL or invalid UTF-8), CEL_ELIMIT (a short
 * string over CEL_FRAME_NAME_MAX, nesting or counts over protocol.h's
 * limits), CEL_ENOMEM; *out is then empty (nothing to clear) except for
 * cel_frame_run_decode, which keeps out->id when the id could be read, and
 * out->task when the task name could (the executor answers such a run with
 * a FAILURE; clear it after). err says
 * which field was wrong; for run frames in the words the executor's FAILURE
 * carries ("no op", "unknown op", "no task name", "args is not an array",
 * "kwargs is not a map"). */
int cel_frame_ready_decode(const uint8_t *payload, size_t len, cel_frame_ready_t *out,
                           cel_err_t *err);
int cel_frame_run_decode(const uint8_t *payload, size_t len, cel_frame_run_t *out, cel_err_t *err);
int cel_frame_result_decode(const uint8_t *payload, size_t len, cel_frame_result_t *out,
                            cel_err_t *err);
int cel_frame_progress_decode(const uint8_t *payload, size_t len, cel_frame_progress_t *out,
                              cel_err_t *err);

/* Free what a decoder gave the frame and zero it. A zeroed frame is a no-op. */
void cel_frame_ready_clear(cel_frame_ready_t *f);
void cel_frame_run_clear(cel_frame_run_t *f);
void cel_frame_result_clear(cel_frame_result_t *f);
void cel_frame_progress_clear(cel_frame_progress_t *f);

#endif
