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

#include "options.h"
#include "consumer.h"
#include "events.h"
#include "revoked.h"

typedef struct cel_control cel_control_t;

/* Creates the handlers and their mailbox. Everything borrowed for its life. */
cel_control_t *cel_control_new(uv_loop_t *loop, const cel_options_t *cfg, cel_consumer_t *c,
                               cel_events_t *ev, cel_revoked_t *rv);

/* Runs one command (what the mailbox calls); see cel_pidbox_handler. */
json_t *cel_control_dispatch(void *ctl, const char *method, json_t *arguments);

/* Time limits set by the time_limit command for a task name: *soft and
 * *hard are overwritten only when one was set (0 then means none). */
void cel_control_time_limits(cel_control_t *ctl, const char *name, double *soft, double *hard);

/* Stops answering (warm shutdown done); closes the mailbox; on_closed(priv)
 * runs when done and ctl is freed. */
void cel_control_close(cel_control_t *ctl, void (*on_closed)(void *), void *priv);

#endif
