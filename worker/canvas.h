/* canvas.h -- moving canvases forward: what the worker sends and stores when a task finishes.
 *
 * The consumer calls two hooks per finished request: before its result is
 * stored (a success sends its callbacks and the next chain link, which
 * become the result's children) and after (a chord member counts its part,
 * and the last one sends the chord body; a failure stores FAILURE for the
 * rest of its chain and sends its errbacks). The steps are planned by
 * protocol/canvas.c and run here through the broker's publish and the
 * backend's store and chord operations, pipelined, with a barrier where
 * Celery orders them (a chord's size is recorded before its last member is
 * sent). A step that fails (a connection down) is retried with backoff
 * until it is done, so the consumer holds the message meanwhile; closing
 * ends every job with ok=0. Main process, libuv loop.
 */
#ifndef CEL_CANVAS_WORKER_H
#define CEL_CANVAS_WORKER_H

#include <jansson.h>
#include <uv.h>

#include "../protocol/protocol.h"
#include "backend.h"
#include "broker.h"
#include "options.h"

typedef struct cel_canvas cel_canvas_t;

/* done(priv, ok, children): ok=1 when every step was done; children (the
 * result tuples for the finished task's meta, borrowed for the call) is []
 * when nothing was sent. ok=0 only when the canvas closed first. */
typedef void (*cel_canvas_done_fn)(void *priv, int ok, json_t *children);

/* Creates the canvas runner. cfg, broker and backend are borrowed for its
 * life (close it before them). NULL when out of memory. */
cel_canvas_t *cel_canvas_new(uv_loop_t *loop, const cel_options_t *cfg, cel_broker_t *broker,
                             cel_backend_t *backend);

/* Before t's result (state, result borrowed) is stored: 1 when steps were
 * started (done follows, exactly once), 0 when there is nothing to do
 * (done is not called). The hooks and cel_canvas_meta take cv NULL (after
 * the close) as a canvas with nothing to do. */
int cel_canvas_before_store(cel_canvas_t *cv, const cel_task_t *t, const char *state,
                            json_t *result, cel_canvas_done_fn done, void *priv);

/* 1 when cel_canvas_after_store would have steps for t in this state. */
int cel_canvas_after_store_needed(const cel_canvas_t *cv, const cel_task_t *t, const char *state);

/* After t's result was stored (or not, with ignore_result): as before. */
int cel_canvas_after_store(cel_canvas_t *cv, const cel_task_t *t, const char *state, json_t *result,
                           const char *traceback, cel_canvas_done_fn done, void *priv);

/* The result meta of t as this worker stores it: cel_meta_encode, plus the
 * extended fields with --result-extended. NULL with err set when the
 * result cannot be encoded. */
char *cel_canvas_meta(const cel_canvas_t *cv, const cel_task_t *t, const char *state,
                      json_t *result, const char *traceback, json_t *children, double date_done,
                      cel_err_t *err);

/* Jobs running or waiting to retry. */
int cel_canvas_pending(const cel_canvas_t *cv);

/* Stops retrying: jobs end with ok=0 (now, or when their replies come);
 * on_closed(priv) runs once the timer is closed; cv is freed then. */
void cel_canvas_close(cel_canvas_t *cv, void (*on_closed)(void *), void *priv);

#endif
