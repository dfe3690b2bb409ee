/* control.h -- inspect and control commands, answered as the stock worker answers them.
 *
 * The handlers of celery/worker/control.py (ping, stats, active, reserved,
 * scheduled, registered, active_queues, revoked, conf, report, query_task,
 * clock, revoke, terminate, shutdown, pool_grow/shrink/restart, autoscale,
 * rate_limit, time_limit, add/cancel_consumer, enable/disable_events,
 * heartbeat, election, hello) over the pidbox (pidbox.c). Same reply shapes,
 * types and texts; an unknown command gets {"error": "KeyError('<name>')"}.
 * Main process, libuv loop; every handler returns at once.
 */
#ifndef CEL_CONTROL_H
#define CEL_CONTROL_H

#include <uv.h>

#include "consumer.h"
#include "events.h"
#include "limits.h"
#include "options.h"
#include "revoked.h"

typedef struct cel_control cel_control_t;

/* Creates the handlers and their mailbox. Everything borrowed for its life:
 * control reads and drives the consumer (never the other way round), adds
 * to the revoked set, switches task events and writes the per task name
 * limits that the consumer reads. */
cel_control_t *cel_control_new(uv_loop_t *loop, const cel_options_t *cfg, cel_consumer_t *c,
                               cel_events_t *ev, cel_revoked_t *rv, cel_limits_t *limits);

/* Runs one command (what the mailbox calls); see cel_pidbox_handler. */
json_t *cel_control_dispatch(void *ctl, const char *method, json_t *arguments);

/* Stops answering (warm shutdown done); closes the mailbox; on_closed(priv)
 * runs when done and ctl is freed. */
void cel_control_close(cel_control_t *ctl, void (*on_closed)(void *), void *priv);

#endif
