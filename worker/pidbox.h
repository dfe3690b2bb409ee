/* pidbox.h -- the worker's remote-control mailbox (kombu pidbox Node), on Redis or AMQP.
 *
 * Listens on the worker's queue "<node>.celery.pidbox", bound to the fanout
 * exchange celery.pidbox, through the broker's bus (bus.h: PSUBSCRIBE on
 * Redis, a real queue on RabbitMQ); decodes each request (JSON or msgpack
 * body), keeps the Lamport clock, honours destination and pattern/matcher as
 * kombu/pidbox.py Node.handle_message does, calls the handler, and publishes
 * the reply {"<node>": value} to reply_to's exchange and routing key.
 * Malformed messages are logged and dropped. Main process, libuv loop;
 * never blocks.
 */
#ifndef CEL_PIDBOX_H
#define CEL_PIDBOX_H

#include <jansson.h>
#include <uv.h>

#include "options.h"
#include "events.h"

#define CEL_PIDBOX_MAX_BYTES    (1024 * 1024) /* one request envelope */
#define CEL_PIDBOX_MAX_BINDINGS 4096          /* members of a reply binding set read */
#define CEL_PIDBOX_MAX_DEST     1024          /* names in a destination list */
#define CEL_PIDBOX_NAME_MAX     255           /* exchange / routing key / ticket length */

typedef struct cel_pidbox cel_pidbox_t;

/* Runs one command. arguments is borrowed (an object, {} when absent).
 * Returns the reply value (new reference; json_null() for Python's None), or
 * NULL when no reply must be sent (shutdown). */
typedef json_t *(*cel_pidbox_handler)(void *priv, const char *method, json_t *arguments);

/* Creates the mailbox and starts connecting. cfg and ev borrowed for its life.
 * on_up(priv), when not NULL, runs once, the first time the mailbox's queue is
 * declared and bound (on AMQP the connection is announced up only after its
 * queues are), so that a broadcast sent after it reaches this node. */
cel_pidbox_t *cel_pidbox_new(uv_loop_t *loop, const cel_options_t *cfg, cel_events_t *ev,
                             cel_pidbox_handler handler, void (*on_up)(void *priv), void *priv);

/* Stops handling requests (warm shutdown); replies in flight still go out. */
void cel_pidbox_stop(cel_pidbox_t *pb);

/* Closes both connections; on_closed(priv) runs when done and pb is freed. */
void cel_pidbox_close(cel_pidbox_t *pb, void (*on_closed)(void *), void *priv);

/* 1 when name matches pattern under matcher "glob" (fnmatch) or "pcre"
 * (re.match: anchored at the start; approximated with POSIX extended
 * regular expressions). CEL_ENOTFOUND for another matcher, CEL_EINVAL for
 * a pattern that does not compile. Exposed for tests. */
int cel_pidbox_match(const char *name, const char *pattern, const char *matcher);

#endif
