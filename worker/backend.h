/* backend.h -- the Celery Redis result backend, writer side.
 *
 * Stores a task's result meta as celery/backends/redis.py does: the value at
 * celery-task-meta-<id> (SETEX with result_expires, or SET when 0) and the same
 * JSON PUBLISHed on the channel of that name so AsyncResult.get() wakes up;
 * a stored SUCCESS is never overwritten (Celery 5.1+). Main process only.
 */
#ifndef CEL_BACKEND_H
#define CEL_BACKEND_H

#include <stddef.h>

#include <uv.h>

#include "options.h"

typedef struct cel_backend cel_backend_t;

/* Creates the backend connection (separate from the broker's). cfg borrowed.
 * on_up(priv) runs each time the connection becomes usable (to retry stores). */
cel_backend_t *cel_backend_new(uv_loop_t *loop, const cel_options_t *cfg,
                               void (*on_up)(void *), void *priv);

/* Stores meta (JSON text, borrowed) for task_id. done(priv, ok) runs once:
 * ok=1 stored (or a SUCCESS was already there), ok=0 the backend is down or
 * refused (the caller keeps the message unacked and may retry). */
void cel_backend_store(cel_backend_t *be, const char *task_id, const char *meta, size_t len,
                       void (*done)(void *, int), void *priv);

/* 1 when broker and backend are the same Redis database, so a store and the
 * message's ack can go in one script (cel_backend_store_ack). */
int cel_backend_shares_broker(const cel_backend_t *be);

/* Like cel_backend_store, then acks delivery tag `tag` (kombu QoS.ack) in the
 * same atomic step. Only valid when cel_backend_shares_broker(). tag NULL is
 * a plain store. */
void cel_backend_store_ack(cel_backend_t *be, const char *task_id, const char *meta, size_t len,
                           const char *tag, void (*done)(void *, int), void *priv);

/* Closes the connection; on_closed(priv) runs when done; be is freed. */
void cel_backend_close(cel_backend_t *be, void (*on_closed)(void *), void *priv);

#endif
