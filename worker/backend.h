/* backend.h -- the result backend interface: one operations table per backend.
 *
 * The consumer hands a finished task's result meta (the JSON text Celery
 * stores, cel_meta_encode's) to the backend and learns only whether it was
 * stored; where it goes and how waiting clients hear of it (a Redis key and
 * PUBLISH, an rpc:// reply message) stays behind the table. A backend is one
 * cel_backend_ops_t (backend_redis.c, backend_rpc.c), chosen at creation by the
 * scheme of --result-backend's URL, in the shape of model/gpu.h: one
 * versioned table, the only symbol its file exports. backend.c dispatches.
 * Main process, libuv loop: no operation blocks. Each one that takes a
 * callback (done may be NULL) calls it exactly once: when the server
 * answered, or with ok=0 when the connection failed or closed first --
 * before the call returns when it could not even be sent.
 */
#ifndef CEL_BACKEND_H
#define CEL_BACKEND_H

#include <stddef.h>

#include <uv.h>

#include "../protocol/protocol.h"
#include "options.h"

#define CEL_BACKEND_ABI 1

typedef struct cel_backend cel_backend_t;

/* done(priv, ok) of a store: ok=1 stored (or a SUCCESS already there is
 * kept, as Celery 5.1+ does), ok=0 the backend is down or refused (the
 * caller keeps the message unacked and may store again). */
typedef void (*cel_backend_done_fn)(void *priv, int ok);

/* got(priv, ok, meta, len) of a get: meta (borrowed for the call, not
 * NUL-terminated as far as the caller knows) is NULL when nothing is stored
 * for the id; ok=0 when the backend could not answer. */
typedef void (*cel_backend_got_fn)(void *priv, int ok, const char *meta, size_t len);

/* chord(priv, ok, n, entries, lens) of chord_part: ok=0 when the backend
 * could not count the part; n=0 while parts are missing; when this part was
 * the last, the n stored entries ([1, id, state, result] JSON texts,
 * borrowed for the call) in header order -- the backend has then forgotten
 * the chord, so exactly one part is ever told it completed it. */
typedef void (*cel_backend_chord_fn)(void *priv, int ok, size_t n, const char *const *entries,
                                     const size_t *lens);

/* A result backend. impl is what its open returned. */
typedef struct cel_backend_ops {
    int abi;            /* CEL_BACKEND_ABI */
    const char *scheme; /* the URL scheme it serves: "redis" */
    /* Starts connecting. on_up(priv) runs each time the backend becomes
     * usable (to retry stores that failed). cfg borrowed for its life. NULL
     * with err set on failure. */
    void *(*open)(uv_loop_t *loop, const cel_options_t *cfg, void (*on_up)(void *), void *priv,
                  cel_err_t *err);
    /* Stores the result meta of task t (meta borrowed) and tells the clients
     * that wait for it. t is borrowed for the call: the backend reads what
     * addresses the result (the id; an rpc backend reply_to and
     * correlation_id). */
    void (*store)(void *impl, const cel_task_t *t, const char *meta, size_t len,
                  cel_backend_done_fn done, void *priv);
    /* 1 when the backend and the broker are one server, so that store_ack can
     * store a result and ack the message it came from in one step. */
    int (*acks_broker)(const void *impl);
    /* store, then the broker's ack of delivery tag `tag` in the same atomic
     * step (only when acks_broker() is 1). done as for store: ok=1 means both. */
    void (*store_ack)(void *impl, const cel_task_t *t, const char *meta, size_t len,
                      const char *tag, cel_backend_done_fn done, void *priv);
    /* Reads the meta stored for a task id (borrowed). */
    void (*get)(void *impl, const char *task_id, cel_backend_got_fn got, void *priv);
    /* Closes the connection; on_closed(priv) runs when done; impl is freed. */
    void (*close)(void *impl, void (*on_closed)(void *), void *priv);
    /* Chords, optional (NULL when the backend cannot count chord parts, as
     * Celery's rpc backend cannot: the canvas then fails the chord clearly).
     * chord_size records that group_id's chord completes after size parts
     * (set_chord_size); chord_part counts one part, entry (JSON text
     * [1, id, state, result]) at group_index (-1: none), and tells whether it
     * was the last (on_chord_part_return). */
    void (*chord_size)(void *impl, const char *group_id, long size, cel_backend_done_fn done,
                       void *priv);
    void (*chord_part)(void *impl, const char *group_id, int group_index, const char *entry,
                       size_t len, cel_backend_chord_fn done, void *priv);
} cel_backend_ops_t;

/* The backends (one table each, in their own file). */
extern const cel_backend_ops_t cel_backend_redis_ops; /* backend_redis.c */
extern const cel_backend_ops_t cel_backend_rpc_ops;   /* backend_rpc.c: rpc:// */

/* Creates the backend --result-backend's URL names (cfg->backend_url's
 * scheme) and starts it. NULL with err set for an unknown scheme or on
 * allocation failure. */
cel_backend_t *cel_backend_new(uv_loop_t *loop, const cel_options_t *cfg, void (*on_up)(void *),
                               void *priv, cel_err_t *err);

/* The table in use. */
const cel_backend_ops_t *cel_backend_ops(const cel_backend_t *be);

/* The operations of the table, for the backend in use (see cel_backend_ops_t). */
void cel_backend_store(cel_backend_t *be, const cel_task_t *t, const char *meta, size_t len,
                       cel_backend_done_fn done, void *priv);
int cel_backend_acks_broker(const cel_backend_t *be);
void cel_backend_store_ack(cel_backend_t *be, const cel_task_t *t, const char *meta, size_t len,
                           const char *tag, cel_backend_done_fn done, void *priv);
void cel_backend_get(cel_backend_t *be, const char *task_id, cel_backend_got_fn got, void *priv);
/* 1 when the backend counts chord parts (chord_size and chord_part set). */
int cel_backend_chords(const cel_backend_t *be);
void cel_backend_chord_size(cel_backend_t *be, const char *group_id, long size,
                            cel_backend_done_fn done, void *priv);
void cel_backend_chord_part(cel_backend_t *be, const char *group_id, int group_index,
                            const char *entry, size_t len, cel_backend_chord_fn done, void *priv);

/* Closes the backend; on_closed(priv) runs when done and be is freed. */
void cel_backend_close(cel_backend_t *be, void (*on_closed)(void *), void *priv);

#endif
