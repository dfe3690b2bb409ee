/* redis.h -- one reconnecting asynchronous Redis connection on the libuv loop.
 *
 * Wraps a hiredis async context: connects, AUTHs and SELECTs the URL's db, loads
 * the Lua scripts it was given (a subscriber: PSUBSCRIBEs, and waits for the
 * server's confirmation), and only then reports itself up. When the
 * connection drops every pending command's callback runs with reply NULL, the
 * owner is told it is down, and it reconnects with backoff (100 ms .. 5 s).
 * Error replies: a script the server forgot (NOSCRIPT: SCRIPT FLUSH, a
 * failover, a restart) is run again with EVAL and its text, and reloaded, so
 * the caller never sees NOSCRIPT; other error replies go to the caller, which
 * retries with cel_redis_backoff_ms and logs through cel_redis_log_error (one
 * line per distinct error per interval). A connection may cap the bulk strings
 * it accepts (cel_redis_set_bulk_limit): a longer one is read as it streams in
 * and handed over cut down to its head and tail, so a huge value never sits
 * in memory. Main process only; nothing here blocks.
 */
#ifndef CEL_REDIS_H
#define CEL_REDIS_H

#include <stddef.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "../common/err.h"
#include "options.h"

typedef struct cel_redis cel_redis_t;

/* A reply callback. reply is NULL when the connection failed or closed before
 * the reply came; it is borrowed for the call (hiredis frees it after). */
typedef void (*cel_redis_cb)(cel_redis_t *r, redisReply *reply, void *priv);

/* Told when the connection becomes usable (up=1) or is lost (up=0). */
typedef void (*cel_redis_state_cb)(cel_redis_t *r, int up, void *priv);

/* A Lua script; sha is filled from SCRIPT LOAD's reply before the connection is up. */
typedef struct cel_redis_script {
    const char *text;
    char sha[41];
} cel_redis_script_t;

/* Creates a connection and starts connecting. name is used in logs
 * ("broker", "backend"). scripts (borrowed, may be NULL) are loaded at every
 * connect before the connection is reported up. Never fails but on ENOMEM. */
cel_redis_t *cel_redis_new(uv_loop_t *loop, const cel_redis_url_t *url, const char *name,
                           cel_redis_script_t **scripts, int nscripts, cel_redis_state_cb on_state,
                           void *priv);

/* 1 when connected, authenticated, scripts loaded and (a subscriber) subscribed. */
int cel_redis_up(const cel_redis_t *r);

/* Sends a command (argv borrowed, copied by hiredis). cb may be NULL. Returns
 * CEL_OK, or CEL_EIO when the connection is not up (cb is then not called). */
int cel_redis_command(cel_redis_t *r, cel_redis_cb cb, void *priv, int argc, const char **argv,
                      const size_t *argvlen);

/* Makes r a subscriber to pattern: at every connect, PSUBSCRIBE is the last
 * step of the set-up, and r is reported up (on_state, cel_redis_up, the
 * "connected" log line) only once the server confirmed it, so a message
 * published after "up" reaches it; a refusal (an ACL) is logged and retried
 * with backoff like a refused AUTH. From then on the connection carries only
 * the subscription: cb runs for every ["pmessage", pattern, channel, data]
 * array while it is up. Call it once, before the connection is up (right
 * after cel_redis_new: nothing connects before the loop runs). CEL_ESTATE
 * when it is up already or has a subscription, CEL_ENOMEM. */
int cel_redis_psubscribe(cel_redis_t *r, const char *pattern, cel_redis_cb cb, void *priv);

/* Commands are written when the loop turn ends (before it waits); this
 * writes what is buffered now, for a caller that runs in that phase itself. */
void cel_redis_flush(cel_redis_t *r);

/* EVALSHA script with keys then args. Same contract as cel_redis_command. At
 * most CEL_REDIS_EVAL_MAX_ARGS keys and args together. */
#define CEL_REDIS_EVAL_MAX_ARGS 509
int cel_redis_evalsha(cel_redis_t *r, const cel_redis_script_t *s, cel_redis_cb cb, void *priv,
                      int nkeys, const char **keys, const size_t *keylens, int nargs,
                      const char **args, const size_t *arglens);

/* Logs "<name>: <what>: <error>" at ERROR, at most once per distinct error text
 * per CEL_REDIS_LOG_INTERVAL seconds on this connection; the next line after a
 * quiet spell says how many were left out. */
void cel_redis_log_error(cel_redis_t *r, const char *what, const char *error);

#define CEL_REDIS_LOG_INTERVAL 10.0

/* The delay before retry number attempt (0, 1, ...) after an error reply:
 * 100 ms doubling up to 5 s. */
unsigned cel_redis_backoff_ms(int attempt);

/* Logs this connection's connects, losses and reconnects at DEBUG: for one of
 * many connections to a server that another connection already reports on. */
void cel_redis_set_quiet(cel_redis_t *r);

/* Bulk strings longer than limit bytes in this connection's replies (0 = no
 * cap) are delivered cut down, in respcut.h's form (cel_respcut_parse reads it):
 * memory stays O(CEL_RESPCUT_TAIL) whatever the value's size. */
void cel_redis_set_bulk_limit(cel_redis_t *r, size_t limit);

/* Closes the connection for good: pending callbacks run with NULL, no
 * reconnect, and on_closed (may be NULL) runs once every handle is closed.
 * The object is freed after on_closed returns. */
void cel_redis_close(cel_redis_t *r, void (*on_closed)(void *priv), void *priv);

#endif
