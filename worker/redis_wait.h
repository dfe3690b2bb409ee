/* redis_wait.h -- waiting for messages on Redis without taking them off the queue in a socket.
 *
 * kombu's idle worker waits in BRPOP, which removes a message from its queue
 * as it is delivered: a worker killed before it registered the message in
 * `unacked` lost it for good. Here each queue key has a connection of its own
 * that waits in BLMOVE <key> <in-flight list> RIGHT LEFT: the message moves
 * into this worker's in-flight list for that key (`_celeriac.wait.<uuid>.<key>`)
 * and is never only in a socket; the broker's POP script then takes it from
 * there as from a queue (registered in `unacked` in the same step). Blocked
 * clients are served first come, first served, as BRPOP's, so idle workers
 * still take turns.
 * A worker killed between the two steps leaves the message in its list. Every
 * worker keeps a lease (`_celeriac.alive.<uuid>`, 10 s, renewed every 2 s)
 * and registers its lists (`_celeriac.waits`, `_celeriac.lists.<uuid>`); every
 * 2 s each worker gives the lists of workers whose lease ran out back to their
 * queues (RESCUE), so a killed worker's message runs elsewhere within about
 * 12 s (a message it had registered in `unacked` waits for the visibility
 * timeout, as with kombu). A clean close gives its own back at once. A waiter
 * only waits while the lease is fresh, so a list is not filled for a worker
 * the others already count as dead; a worker thought dead while alive loses
 * nothing either: its next POP finds its list empty. Main process, libuv loop.
 */
#ifndef CEL_REDIS_WAIT_H
#define CEL_REDIS_WAIT_H

#include <stddef.h>

#include <uv.h>

#include "options.h"
#include "redis.h"

typedef struct cel_redis_wait cel_redis_wait_t;

/* Told when a wait ended: moved = 1 when a message came into an in-flight
 * list (fetch it), 0 when it timed out or a waiter became able to wait (wait
 * again if still idle), -1 after an error reply (wait again after a backoff). */
typedef void (*cel_redis_wait_cb)(void *priv, int moved);

/* cmd (borrowed) carries the lease and give-back scripts; uuid names this
 * worker's lists. NULL on ENOMEM. */
cel_redis_wait_t *cel_redis_wait_new(uv_loop_t *loop, const cel_options_t *cfg, cel_redis_t *cmd,
                                     const char *uuid, cel_redis_wait_cb cb, void *priv);

/* The queue keys consumed now: a waiter for each new one, the others retired
 * (unblocked, closed, their lists given back). CEL_ENOMEM. */
int cel_redis_wait_keys(cel_redis_wait_t *w, char *const *keys, const size_t *lens, int n);

/* Waits on every key that is not waited on yet (the queues were empty). */
void cel_redis_wait_arm(cel_redis_wait_t *w);

/* The in-flight list of the worker named uuid for queue key (malloc'd; its
 * length in *len). NULL on ENOMEM. */
char *cel_redis_wait_list_name(const char *uuid, const char *key, size_t keylen, size_t *len);
/* The in-flight lists that may hold messages (at most max), with their queue
 * keys, for the next POP; their marks are cleared. Returns how many. */
int cel_redis_wait_moved(cel_redis_wait_t *w, const char **lists, size_t *list_lens,
                         const char **keys, size_t *key_lens, int max);

/* 1 when an in-flight list may hold a message (fetch before waiting again). */
int cel_redis_wait_any_moved(const cel_redis_wait_t *w);

/* The command connection came up: lease, registration, rescue; the next POP
 * looks at every list (a lost answer may have left messages there). */
void cel_redis_wait_cmd_up(cel_redis_wait_t *w);

/* Stops waiting for good (warm shutdown): waiters retired, lists given back. */
void cel_redis_wait_stop(cel_redis_wait_t *w);

/* Its scripts, for the command connection's list (loaded at every connect). */
extern cel_redis_script_t cel_redis_wait_script_lease, cel_redis_wait_script_rescue,
    cel_redis_wait_script_giveback;

/* Commands in flight on cmd. */
int cel_redis_wait_pending(const cel_redis_wait_t *w);

/* Stops, then, once every waiter is closed, gives this worker's lists back
 * and drops its lease (when cmd is up), and calls on_closed. Frees w. */
void cel_redis_wait_close(cel_redis_wait_t *w, void (*on_closed)(void *), void *priv);

#endif
