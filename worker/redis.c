/* redis.c -- a reconnecting hiredis async connection on the libuv loop.
 *
 * State: DOWN -> CONNECTING -> (AUTH, SELECT, SCRIPT LOAD...) -> UP; a lost
 * connection goes back to DOWN and a backoff timer starts the next attempt.
 * hiredis frees its context after the disconnect callback, so we only drop our
 * pointer there. Main process only; never blocks.
 */
#include "redis.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/async.h>

#include "../common/log.h"

/* ---- hiredis <-> libuv adapter ---------------------------------------
 * Our own instead of hiredis/adapters/libuv.h: in hiredis 0.14 that adapter
 * drops uv_poll errors (libuv reports POLLERR as status < 0 and stops the
 * poll), so a refused connect never reaches hiredis and reconnecting hangs.
 * Here an error is passed to hiredis as readiness; its own read/connect
 * check then finds the socket error and disconnects cleanly. */

typedef struct uv_events {
    redisAsyncContext *ac;
    uv_poll_t handle;
    int events;
} uv_events_t;

static void ev_poll(uv_poll_t *h, int status, int events) {
    uv_events_t *p = h->data;
    if (!p->ac) return;
    if (status < 0) {
        /* Error: let hiredis find out what happened. */
        if (p->ac->c.flags & REDIS_CONNECTED) redisAsyncHandleRead(p->ac);
        else redisAsyncHandleWrite(p->ac);
        return;
    }
    if (events & UV_READABLE) redisAsyncHandleRead(p->ac);
    if (p->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->ac);
}

static void ev_update(uv_events_t *p) {
    if (p->events) uv_poll_start(&p->handle, p->events, ev_poll);
    else uv_poll_stop(&p->handle);
}

static void ev_add_read(void *priv) {
    uv_events_t *p = priv;
    p->events |= UV_READABLE;
    ev_update(p);
}

static void ev_del_read(void *priv) {
    uv_events_t *p = priv;
    p->events &= ~UV_READABLE;
    ev_update(p);
}

static void ev_add_write(void *priv) {
    uv_events_t *p = priv;
    p->events |= UV_WRITABLE;
    ev_update(p);
}

static void ev_del_write(void *priv) {
    uv_events_t *p = priv;
    p->events &= ~UV_WRITABLE;
    ev_update(p);
}

static void ev_closed(uv_handle_t *h) { free(h->data); }

static void ev_cleanup(void *priv) {
    uv_events_t *p = priv;
    p->ac = NULL; /* hiredis is freeing the context */
    uv_close((uv_handle_t *)&p->handle, ev_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop) {
    if (ac->ev.data) return REDIS_ERR;
    uv_events_t *p = calloc(1, sizeof(*p));
    if (!p) return REDIS_ERR;
    if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
        free(p);
        return REDIS_ERR;
    }
    p->ac = ac;
    p->handle.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    ac->ev.data = p;
    return REDIS_OK;
}

enum { ST_DOWN, ST_CONNECTING, ST_UP, ST_CLOSING };

struct cel_redis {
    uv_loop_t *loop;
    cel_redis_url_t url;
    char name[32];
    cel_redis_script_t **scripts;
    int nscripts;
    cel_redis_state_cb on_state;
    void *priv;
    redisAsyncContext *ac;
    int state;
    int handshake_left; /* replies still expected before UP */
    int handshake_failed;
    uv_timer_t timer; /* reconnect backoff */
    uint64_t backoff_ms;
    int logged_down;
    void (*on_closed)(void *);
    void *closed_priv;
};

static void start_connect(cel_redis_t *r);

static void on_timer(uv_timer_t *t) {
    cel_redis_t *r = t->data;
    if (r->state == ST_DOWN) start_connect(r);
}

static void schedule_reconnect(cel_redis_t *r) {
    if (r->state == ST_CLOSING) return;
    r->state = ST_DOWN;
    uv_timer_start(&r->timer, on_timer, r->backoff_ms, 0);
    r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : 100;
    if (r->backoff_ms > 5000) r->backoff_ms = 5000;
}

static void on_timer_closed(uv_handle_t *h) {
    cel_redis_t *r = h->data;
    if (r->on_closed) r->on_closed(r->closed_priv);
    free(r);
}

static void finish_close(cel_redis_t *r) {
    uv_timer_stop(&r->timer);
    uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
    cel_redis_t *r = ac->data;
    if (!r) return;
    r->ac = NULL; /* hiredis frees the context after this callback */
    int was_up = r->state == ST_UP;
    if (r->state == ST_CLOSING) {
        finish_close(r);
        return;
    }
    if (!r->logged_down || was_up)
        cel_error("%s: connection to redis://%s:%d lost: %s. Trying again...", r->name, r->url.host,
                  r->url.port, status == REDIS_OK ? "closed" : ac->errstr);
    r->logged_down = 1;
    schedule_reconnect(r);
    if (was_up && r->on_state) r->on_state(r, 0, r->priv);
}

static void handshake_step(cel_redis_t *r) {
    if (--r->handshake_left > 0) return;
    if (r->handshake_failed) {
        /* A wrong password or db: keep retrying with backoff, loudly. */
        if (r->ac) redisAsyncDisconnect(r->ac);
        return;
    }
    r->state = ST_UP;
    r->backoff_ms = 0;
    if (r->logged_down)
        cel_warn("%s: connected to redis://%s:%d/%d", r->name, r->url.host, r->url.port, r->url.db);
    else
        cel_info("%s: connected to redis://%s:%d/%d", r->name, r->url.host, r->url.port, r->url.db);
    r->logged_down = 0;
    if (r->on_state) r->on_state(r, 1, r->priv);
}

static void on_handshake_reply(redisAsyncContext *ac, void *reply, void *priv) {
    cel_redis_t *r = ac->data;
    redisReply *rep = reply;
    if (!r || r->state != ST_CONNECTING) return;
    if (!rep) {
        r->handshake_failed = 1;
    } else if (rep->type == REDIS_REPLY_ERROR) {
        cel_error("%s: redis refused the connection set-up: %s", r->name, rep->str);
        r->handshake_failed = 1;
    } else if (priv) {
        cel_redis_script_t *s = priv;
        if (rep->type == REDIS_REPLY_STRING && rep->len == 40) {
            memcpy(s->sha, rep->str, 40);
            s->sha[40] = '\0';
        } else {
            r->handshake_failed = 1;
        }
    }
    handshake_step(r);
}

static void on_connect(const redisAsyncContext *cac, int status) {
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    cel_redis_t *r = ac->data;
    if (!r) return;
    if (status != REDIS_OK) {
        if (!r->logged_down)
            cel_error("%s: cannot connect to redis://%s:%d: %s. Trying again...", r->name,
                      r->url.host, r->url.port, ac->errstr);
        r->logged_down = 1;
        r->ac = NULL; /* freed by hiredis */
        if (r->state == ST_CLOSING) finish_close(r);
        else schedule_reconnect(r);
        return;
    }
    if (r->state == ST_CLOSING) {
        redisAsyncDisconnect(ac);
        return;
    }
    r->handshake_failed = 0;
    r->handshake_left = 1; /* the PING below */
    if (r->url.password[0]) {
        r->handshake_left++;
        if (r->url.user[0])
            redisAsyncCommand(ac, on_handshake_reply, NULL, "AUTH %s %s", r->url.user,
                              r->url.password);
        else redisAsyncCommand(ac, on_handshake_reply, NULL, "AUTH %s", r->url.password);
    }
    if (r->url.db) {
        r->handshake_left++;
        redisAsyncCommand(ac, on_handshake_reply, NULL, "SELECT %d", r->url.db);
    }
    for (int i = 0; i < r->nscripts; i++) {
        r->handshake_left++;
        redisAsyncCommand(ac, on_handshake_reply, r->scripts[i], "SCRIPT LOAD %s",
                          r->scripts[i]->text);
    }
    redisAsyncCommand(ac, on_handshake_reply, NULL, "PING");
}

static void start_connect(cel_redis_t *r) {
    cel_debug("%s: connecting to redis://%s:%d", r->name, r->url.host, r->url.port);
    redisAsyncContext *ac = redisAsyncConnect(r->url.host, r->url.port);
    if (!ac || ac->err) {
        if (!r->logged_down)
            cel_error("%s: cannot connect to redis://%s:%d: %s", r->name, r->url.host, r->url.port,
                      ac ? ac->errstr : "out of memory");
        r->logged_down = 1;
        if (ac) redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    ac->data = r;
    if (ev_attach(ac, r->loop) != REDIS_OK) {
        redisAsyncFree(ac);
        schedule_reconnect(r);
        return;
    }
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    r->ac = ac;
    r->state = ST_CONNECTING;
}

cel_redis_t *cel_redis_new(uv_loop_t *loop, const cel_redis_url_t *url, const char *name,
                           cel_redis_script_t **scripts, int nscripts, cel_redis_state_cb on_state,
                           void *priv) {
    cel_redis_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    r->loop = loop;
    r->url = *url;
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->scripts = scripts;
    r->nscripts = nscripts;
    r->on_state = on_state;
    r->priv = priv;
    uv_timer_init(loop, &r->timer);
    r->timer.data = r;
    start_connect(r);
    return r;
}

int cel_redis_up(const cel_redis_t *r) { return r && r->state == ST_UP && r->ac; }

typedef struct cmd_ctx {
    cel_redis_t *r;
    cel_redis_cb cb;
    void *priv;
} cmd_ctx_t;

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
    cmd_ctx_t *c = priv;
    if (c->cb) c->cb(c->r, reply, c->priv);
    free(c);
}

int cel_redis_command(cel_redis_t *r, cel_redis_cb cb, void *priv, int argc, const char **argv,
                      const size_t *argvlen) {
    if (!cel_redis_up(r)) return CEL_EIO;
    cmd_ctx_t *c = malloc(sizeof(*c));
    if (!c) return CEL_ENOMEM;
    c->r = r;
    c->cb = cb;
    c->priv = priv;
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        free(c);
        return CEL_EIO;
    }
    return CEL_OK;
}

/* Subscriptions keep their context for every message: hiredis calls the
 * callback once per message and a last time with NULL when the context is
 * freed (disconnect or close); the context is freed then. */
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv) {
    cmd_ctx_t *c = priv;
    if (c->cb) c->cb(c->r, reply, c->priv);
    if (!reply) free(c);
}

int cel_redis_psubscribe(cel_redis_t *r, const char *pattern, cel_redis_cb cb, void *priv) {
    if (!cel_redis_up(r)) return CEL_EIO;
    cmd_ctx_t *c = malloc(sizeof(*c));
    if (!c) return CEL_ENOMEM;
    c->r = r;
    c->cb = cb;
    c->priv = priv;
    const char *argv[] = { "PSUBSCRIBE", pattern };
    if (redisAsyncCommandArgv(r->ac, on_sub_reply, c, 2, argv, NULL) != REDIS_OK) {
        free(c);
        return CEL_EIO;
    }
    return CEL_OK;
}

#define EVAL_MAX_ARGS 512

int cel_redis_evalsha(cel_redis_t *r, const cel_redis_script_t *s, cel_redis_cb cb, void *priv,
                      int nkeys, const char **keys, const size_t *keylens, int nargs,
                      const char **args, const size_t *arglens) {
    const char *argv[EVAL_MAX_ARGS];
    size_t lens[EVAL_MAX_ARGS];
    char nk[16];
    if (nkeys + nargs + 3 > EVAL_MAX_ARGS) return CEL_ELIMIT;
    int n = 0;
    argv[n] = "EVALSHA", lens[n++] = 7;
    argv[n] = s->sha, lens[n++] = strlen(s->sha);
    lens[n] = (size_t)snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[n++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[n] = keys[i], lens[n++] = keylens ? keylens[i] : strlen(keys[i]);
    for (int i = 0; i < nargs; i++)
        argv[n] = args[i], lens[n++] = arglens ? arglens[i] : strlen(args[i]);
    return cel_redis_command(r, cb, priv, n, argv, lens);
}

void cel_redis_close(cel_redis_t *r, void (*on_closed)(void *priv), void *priv) {
    if (!r) {
        if (on_closed) on_closed(priv);
        return;
    }
    r->on_closed = on_closed;
    r->closed_priv = priv;
    int prev = r->state;
    r->state = ST_CLOSING;
    if (r->ac && prev == ST_CONNECTING) {
        /* hiredis runs no disconnect callback for a context that never
         * connected, so free it here and finish at once. */
        redisAsyncContext *ac = r->ac;
        r->ac = NULL;
        ac->data = NULL;
        redisAsyncFree(ac);
        finish_close(r);
    } else if (r->ac) {
        redisAsyncDisconnect(r->ac); /* on_disconnect finishes the close */
    } else {
        finish_close(r);
    }
}
