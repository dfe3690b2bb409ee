/* events.h -- Celery events from the worker: worker-online/heartbeat/offline, task-*.
 *
 * Publishes event messages as celery/events/dispatcher.py does, to the
 * `celeryev` exchange through the broker's bus (bus.h): topic on AMQP,
 * fanout on Redis (there each event is a kombu envelope PUBLISHed on
 * "/<db>.celeryev/<routing key>"); routing key = type with '-' replaced by
 * '.'. Keeps the worker's Lamport clock (celery/utils/functional
 * LamportClock: forward on send, max+1 on receive), used by the pidbox too.
 * Worker events always go out (Celery's heartbeat/gossip default); task
 * events only with -E or after enable_events. Events sent while the
 * connection is down are dropped, as with no subscriber. Main process, loop.
 */
#ifndef CEL_EVENTS_H
#define CEL_EVENTS_H

#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "../protocol/protocol.h"
#include "options.h"

#define CEL_EVENTS_FREQ 2.0 /* heartbeat interval, seconds (celery Heart) */

typedef struct cel_events cel_events_t;

/* Fills *active (running requests) and *processed (tasks finished since
 * start) for heartbeats. */
typedef void (*cel_events_load_fn)(void *priv, long *active, long *processed);

/* Creates the dispatcher and its connection; worker-online goes out when it
 * first comes up, then a worker-heartbeat every CEL_EVENTS_FREQ s. cfg borrowed. */
cel_events_t *cel_events_new(uv_loop_t *loop, const cel_options_t *cfg, cel_events_load_fn load,
                             void *priv);

/* Lamport clock: forward() increments and returns the new value; adjust()
 * takes a received value (max + 1). */
uint64_t cel_events_clock_forward(cel_events_t *ev);
void cel_events_clock_adjust(cel_events_t *ev, uint64_t other);
uint64_t cel_events_clock(const cel_events_t *ev);

/* Task events on or off; returns the previous setting. */
int cel_events_set_task_events(cel_events_t *ev, int on);
int cel_events_task_events(const cel_events_t *ev);

/* Sends one event of type with extra fields (taken; may be NULL); adds
 * hostname, utcoffset, pid, clock, timestamp and type. */
void cel_events_send(cel_events_t *ev, const char *type, json_t *fields);

/* Sends a task event ("task-started"...) for t when task events are on;
 * fields taken (may be NULL), uuid added first. */
void cel_events_task(cel_events_t *ev, const char *type, const cel_task_t *t, json_t *fields);

/* task-received for t (args/kwargs as reprs, eta/expires as sent). */
void cel_events_task_received(cel_events_t *ev, const cel_task_t *t);

/* The event for a finished task: task-succeeded (result repr, runtime),
 * task-failed / task-retried (exception repr from the exception dict in
 * result, traceback when not NULL), task-revoked (terminated = signum > 0,
 * signum, expired). result and traceback borrowed. */
void cel_events_task_done(cel_events_t *ev, const cel_task_t *t, const char *status, json_t *result,
                          const char *traceback, double runtime, int expired, int signum);

/* task-rejected for t, as celery's Request.reject sends it: {uuid, requeue}.
 * celeriac rejects (requeue=1) the received requests it gives back to the
 * broker unstarted. */
void cel_events_task_rejected(cel_events_t *ev, const cel_task_t *t, int requeue);

/* The heartbeat control command: a worker-heartbeat now, freq 5, sw_* only. */
void cel_events_heartbeat_now(cel_events_t *ev);

/* A random uuid4 string (37 bytes with NUL) for delivery tags. */
void cel_events_uuid(char out[37]);

/* Sends worker-offline (when up), closes; on_closed(priv) runs when done and
 * ev is freed. */
void cel_events_close(cel_events_t *ev, void (*on_closed)(void *), void *priv);

/* The celeriac version string ("0.1.0"), for sw_ver and report. */
const char *cel_events_version(void);

#endif
