/* metrics.h -- the worker's Prometheus metrics: one registry, hooks, the text format.
 *
 * A process-wide registry (like the logger) that the request lifecycle feeds
 * through one-line hooks: consumer.c (received, started, finished), pool.c
 * (what an executor reports with each result), the broker transports (up,
 * reconnects). It is off until cel_metrics_init: every hook then returns
 * after testing one flag, so a worker without --metrics-port pays nothing.
 * Gauges that are a view of live state (executors busy and idle, requests
 * held, queues consumed) are not pushed: a collector that main.c installs
 * fills them when a scrape renders. cel_metrics_render writes the Prometheus
 * text exposition format 0.0.4; names follow Prometheus conventions
 * (celeriac_*_total counters, base units: seconds, bytes) and, where a
 * metric means what celery-exporter's or Flower's does, their label names
 * (name, hostname, queue_name, state). worker/metrics_http.c serves it.
 * Pure: no I/O, no libuv. Main process, libuv loop thread only.
 */
#ifndef CEL_METRICS_H
#define CEL_METRICS_H

#include <stddef.h>

#include "../common/err.h"
#include "../protocol/frame.h"
#include "../protocol/protocol.h"

#define CEL_METRICS_MAX_SERIES 256 /* (task name, queue) pairs; later ones fold into "other" */
#define CEL_METRICS_MAX_QUEUES 64  /* queues listed by the collector */
#define CEL_METRICS_MAX_SLOTS  256 /* executor slots (CEL_MAX_CONCURRENCY) */
#define CEL_METRICS_LABEL_MAX  200 /* bytes of one label value kept (longer ones are cut) */
#define CEL_METRICS_OTHER      "other"

/* Turns the registry on for a worker named hostname (copied). CEL_ENOMEM, or
 * CEL_ESTATE when it is on already. */
int cel_metrics_init(const char *hostname, cel_err_t *err);

/* Frees the registry and turns it off; a no-op when off. */
void cel_metrics_shutdown(void);

/* 1 when the registry is on. */
int cel_metrics_enabled(void);

/* ---- hooks: each a no-op when the registry is off --------------------- */

/* A task message was accepted (decoded, registered, not revoked or expired):
 * celery's task-received. */
void cel_metrics_task_received(const cel_task_t *t);

/* A task was handed to an executor after waiting `waited` seconds in the
 * worker (since it was received, or since its eta when that was later). */
void cel_metrics_task_started(const cel_task_t *t, double waited);

/* A task finished with Celery state `state` ("SUCCESS", "FAILURE", "RETRY",
 * "REVOKED"; others count nowhere). runtime: seconds it ran on an executor,
 * < 0 when it never ran (revoked, expired, refused): then no runtime sample. */
void cel_metrics_task_done(const cel_task_t *t, const char *state, double runtime);

/* The executor in slot (0-based) reported a result with these statistics
 * (res->stats; borrowed). */
void cel_metrics_executor_result(int slot, const cel_frame_result_t *res);

/* A new executor in slot reported ready: its per-executor gauges restart. */
void cel_metrics_executor_ready(int slot);

/* The broker connection came up (1) or went down (0): counts reconnects. */
void cel_metrics_broker_state(int up);

/* ---- what a scrape collects from live state --------------------------- */

/* Gauges a collector fills at render time. */
typedef struct cel_metrics_live {
    int slots;              /* executor slots (the concurrency) */
    int executors;          /* live executor processes */
    int busy;               /* of them running a task */
    int scheduled;          /* requests held for their eta/countdown */
    int reserved;           /* requests received, waiting for an executor */
    int active;             /* requests running */
    int prefetch_count;     /* the prefetch window */
    int eta_limit;          /* --eta-task-limit, 0 = none */
    long gpu_adapter_limit; /* --gpu-adapter-memory in bytes, 0 = none */
    int nqueues;
    const char *queues[CEL_METRICS_MAX_QUEUES]; /* consumed now; borrowed for the render */
} cel_metrics_live_t;

/* fn fills *out (zeroed before the call); it may keep strings alive in priv
 * until the next call. NULL: no live gauges. */
typedef void (*cel_metrics_collect_fn)(void *priv, cel_metrics_live_t *out);

/* Installs the collector (one at a time). */
void cel_metrics_set_collector(cel_metrics_collect_fn fn, void *priv);

/* Renders every metric in the Prometheus text format into a new buffer.
 * OUT: *out (free() it) and *len. CEL_ENOMEM, CEL_ESTATE when off. */
int cel_metrics_render(char **out, size_t *len, cel_err_t *err);

#endif
