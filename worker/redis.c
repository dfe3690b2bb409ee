/* redis.c -- a reconnecting hiredis async connection on the libuv loop.
 *
 * State: DOWN -> CONNECTING -> (AUTH, SELECT, SCRIPT LOAD..., PING, then a
 * subscriber's PSUBSCRIBE and its confirmation) -> UP; a lost
 * connection goes back to DOWN and a backoff timer starts the next attempt.
 * hiredis frees its context after the disconnect callback, so we only drop our
 * pointer there. EVALSHA keeps its formatted command until the reply: on
 * NOSCRIPT the same arguments go out again as EVAL with the script's text
 * (as redis-py's Script does), after a SCRIPT LOAD that restores the cache.
 * A connection with a bulk limit reads its socket itself and passes the bytes
 * through respcut.c before hiredis's reader sees them, so an oversized bulk
 * string is never buffered whole. Main process only;
 * never blocks.
 */
#include "redis.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/async.h>

/* Exported by hiredis 0.14 without a prototype in its headers. */
void redisProcessCallbacks(redisAsyncContext *ac);

#include "../common/log.h"
#include "respcut.h"

/* ---- hiredis <-> libuv adapter ---------------------------------------
 * Our own instead of hiredis/adapters/libuv.h: in hiredis 0.14 that adapter
 * drops uv_poll errors (libuv reports POLLERR as status < 0 and stops the
 * poll), so a refused connect never reaches hiredis and reconnecting hangs.
 * Here an error is passed to hiredis as readiness; its own read/connect
 * check then finds the socket error and disconnects cleanly. */

typedef struct uv_events {
    redisAsyncContext *ac;
    uv_poll_t handle;
    uv_prepare_t flush; /* writes what hiredis buffered, before the loop waits */
    int events;         /* what hiredis asked to be told about */
    int polled;         /* what the poll handle watches now */
    int in_flush;       /* on_flush is writing: a write left over needs the poll */
    int open;           /* handles not yet closed */
} uv_events_t;

static int filtered_read(redisAsyncContext *ac);

static void ev_poll(uv_poll_t *h, int status, int events) {
    uv_events_t *p = h->data;
    if (!p->ac) return;
    if (status >= 0 && (events & UV_READABLE) && filtered_read(p->ac)) {
        if (p->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->ac);
        return;
    }
    if (status < 0) {
        /* Error: let hiredis find out what happened. */
        if (p->ac->c.flags & REDIS_CONNECTED) redisAsyncHandleRead(p->ac);
        else redisAsyncHandleWrite(p->ac);
        return;
    }
    if (events & UV_READABLE) redisAsyncHandleRead(p->ac);
    if (p->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(p->ac);
}

/* Restarting a poll costs epoll_ctl calls even when nothing changed (libuv
 * re-adds the fd), so the handle is touched only when its events change. */
static void ev_update(uv_events_t *p) {
    if (p->events == p->polled) return;
    p->polled = p->events;
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

/* Commands of one loop turn are written together, by on_flush, without
 * waiting for the socket to say it is writable (it nearly always is); only
 * what the socket does not take then, and a connect in progress, wait for
 * the poll. */
static void on_flush(uv_prepare_t *h) {
    uv_events_t *p = h->data;
    uv_prepare_stop(h);
    if (!p->ac || (p->events & UV_WRITABLE) || !(p->ac->c.flags & REDIS_CONNECTED)) return;
    p->in_flush = 1;
    redisAsyncHandleWrite(p->ac); /* may disconnect: p lives until its handles close */
    p->in_flush = 0;
}

static void ev_add_write(void *priv) {
    uv_events_t *p = priv;
    if (!p->in_flush && p->ac && (p->ac->c.flags & REDIS_CONNECTED)) {
        uv_prepare_start(&p->flush, on_flush);
        return;
    }
    p->events |= UV_WRITABLE;
    ev_update(p);
}

static void ev_del_write(void *priv) {
    uv_events_t *p = priv;
    p->events &= ~UV_WRITABLE;
    ev_update(p);
}

static void ev_closed(uv_handle_t *h) {
    uv_events_t *p = h->data;
    if (--p->open == 0) free(p);
}

static void ev_cleanup(void *priv) {
    uv_events_t *p = priv;
    p->ac = NULL; /* hiredis is freeing the context */
    uv_close((uv_handle_t *)&p->handle, ev_closed);
    uv_close((uv_handle_t *)&p->flush, ev_closed);
}

static int ev_attach(redisAsyncContext *ac, uv_loop_t *loop) {
    if (ac->ev.data) return REDIS_ERR;
    uv_events_t *p = calloc(1, sizeof(*p));
    if (!p) return REDIS_ERR;
    if (uv_poll_init(loop, &p->handle, ac->c.fd) != 0) {
        free(p);
        return REDIS_ERR;
    }
    uv_prepare_init(loop, &p->flush);
    p->open = 2;
    p->ac = ac;
    p->handle.data = p;
    p->flush.data = p;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    ac->ev.data = p;
    return REDIS_OK;
}

enum { ST_DOWN, ST_CONNECTING, ST_UP, ST_CLOSING };

#define ERRLOG_SLOTS 8

typedef struct errlog {
    char key[96];
    double last;
    long left_out;
} errlog_t;

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
    int quiet; /* cel_redis_set_quiet: connects and losses at DEBUG */
    void (*on_closed)(void *);
    void *closed_priv;
    cel_respcut_t *cut; /* NULL: no bulk limit */
    errlog_t errlog[ERRLOG_SLOTS];
    /* A subscriber (cel_redis_psubscribe): PSUBSCRIBE is the set-up's last
     * step, and UP waits for the server's confirmation. */
    char *sub_pattern; /* NULL: a command connection */
    cel_redis_cb sub_cb;
    void *sub_priv;
    int sub_sent; /* this connection's PSUBSCRIBE went out */
};

static void start_connect(cel_redis_t *r);
static int send_psubscribe(cel_redis_t *r);

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void cel_redis_log_error(cel_redis_t *r, const char *what, const char *error) {
    char key[96];
    snprintf(key, sizeof(key), "%s: %s", what, error ? error : "connection lost");
    double now = mono_now();
    errlog_t *slot = NULL, *oldest = &r->errlog[0];
    for (int i = 0; i < ERRLOG_SLOTS; i++) {
        if (strcmp(r->errlog[i].key, key) == 0) slot = &r->errlog[i];
        if (r->errlog[i].last < oldest->last) oldest = &r->errlog[i];
    }
    if (slot && now - slot->last < CEL_REDIS_LOG_INTERVAL) {
        slot->left_out++;
        return;
    }
    long left_out = slot ? slot->left_out : 0;
    if (!slot) {
        slot = oldest;
        snprintf(slot->key, sizeof(slot->key), "%s", key);
    }
    slot->last = now;
    slot->left_out = 0;
    if (left_out)
        cel_error("%s: %s: %.300s (%ld more like it in the last %.0f s)", r->name, what,
                  error ? error : "connection lost", left_out, CEL_REDIS_LOG_INTERVAL);
    else cel_error("%s: %s: %.300s", r->name, what, error ? error : "connection lost");
}

unsigned cel_redis_backoff_ms(int attempt) {
    if (attempt < 0) attempt = 0;
    if (attempt > 6) return 5000;
    unsigned ms = 100u << attempt;
    return ms > 5000 ? 5000 : ms;
}

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
    cel_respcut_free(r->cut);
    free(r->sub_pattern);
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
    /* A subscription the server refused (an ACL without the pattern, say)
     * ends the connection with its error: said at every attempt, as a
     * refused AUTH is, but at most once per interval. */
    if (r->sub_sent && r->state == ST_CONNECTING && status != REDIS_OK) {
        char what[64];
        snprintf(what, sizeof(what), "PSUBSCRIBE %.40s", r->sub_pattern);
        cel_redis_log_error(r, what, ac->errstr);
    }
    if (!r->logged_down || was_up)
        cel_log(r->quiet ? CEL_LOG_DEBUG : CEL_LOG_ERROR,
                "%s: connection to redis://%s:%d lost: %s. Trying again...", r->name, r->url.host,
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
    if (r->sub_pattern && !r->sub_sent) {
        /* A subscriber is up once subscribed, not before: what is published
         * after its owner hears "up" reaches it. The confirmation comes to
         * on_sub_reply, which takes the last step. */
        if (send_psubscribe(r) != CEL_OK) {
            if (r->ac) redisAsyncDisconnect(r->ac);
            return;
        }
        r->sub_sent = 1;
        r->handshake_left = 1;
        return;
    }
    r->state = ST_UP;
    r->backoff_ms = 0;
    cel_log(r->quiet         ? CEL_LOG_DEBUG
            : r->logged_down ? CEL_LOG_WARNING
                             : CEL_LOG_INFO,
            "%s: connected to redis://%s:%d/%d", r->name, r->url.host, r->url.port, r->url.db);
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
        cel_log(r->quiet ? CEL_LOG_DEBUG : CEL_LOG_ERROR, "%s: redis refused the connection set-up: %s",
                r->name, rep->str);
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
            cel_log(r->quiet ? CEL_LOG_DEBUG : CEL_LOG_ERROR,
                    "%s: cannot connect to redis://%s:%d: %s. Trying again...", r->name,
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
    r->sub_sent = 0;
    if (r->cut) cel_respcut_reset(r->cut); /* a new stream */
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
            cel_log(r->quiet ? CEL_LOG_DEBUG : CEL_LOG_ERROR, "%s: cannot connect to redis://%s:%d: %s",
                    r->name, r->url.host, r->url.port, ac ? ac->errstr : "out of memory");
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

void cel_redis_set_quiet(cel_redis_t *r) { r->quiet = 1; }

void cel_redis_set_bulk_limit(cel_redis_t *r, size_t limit) {
    cel_respcut_free(r->cut);
    r->cut = limit ? cel_respcut_new(limit) : NULL;
    if (limit && !r->cut) cel_warn("%s: out of memory: no bulk size limit", r->name);
}

static int feed_reader(void *priv, const char *p, size_t n) {
    return redisReaderFeed(priv, p, n) == REDIS_OK ? CEL_OK : CEL_EIO;
}

/* Reads the socket of a connection with a bulk limit through its filter (what
 * redisAsyncHandleRead does, with the filter in between). Returns 0 when the
 * connection has no filter or is not connected yet (hiredis reads then). */
static int filtered_read(redisAsyncContext *ac) {
    cel_redis_t *r = ac->data;
    if (!r || !r->cut || !(ac->c.flags & REDIS_CONNECTED) || r->state == ST_CONNECTING) return 0;
    char buf[64 * 1024];
    ssize_t n = read(ac->c.fd, buf, sizeof(buf));
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return 1;
    if (n <= 0 || cel_respcut_feed(r->cut, buf, (size_t)n, feed_reader, ac->c.reader) != CEL_OK) {
        /* EOF, an error or a bad stream: let hiredis read the dead socket and
         * take the connection down the usual way */
        shutdown(ac->c.fd, SHUT_RDWR);
        redisAsyncHandleRead(ac);
        return 1;
    }
    redisProcessCallbacks(ac);
    return 1;
}

typedef struct cmd_ctx {
    cel_redis_t *r;
    cel_redis_cb cb;
    void *priv;
    const cel_redis_script_t *script; /* EVALSHA: run again as EVAL on NOSCRIPT */
    char *fmt;                        /* EVALSHA: the formatted command */
    size_t fmt_len;
} cmd_ctx_t;

static void on_reply(redisAsyncContext *ac, void *reply, void *priv);

/* The EVALSHA command c->fmt, rewritten as EVAL with the script's text (the
 * arguments after the sha are the same bytes), and sent after a SCRIPT LOAD
 * that puts the script back in the server's cache. Returns 1 when sent. */
static int eval_again(redisAsyncContext *ac, cmd_ctx_t *c) {
    /* "*<n>\r\n$7\r\nEVALSHA\r\n$40\r\n<sha>\r\n<rest>" */
    const char *crlf = memchr(c->fmt, '\n', c->fmt_len);
    size_t skip = crlf ? (size_t)(crlf - c->fmt) + 1 + 13 + 47 : c->fmt_len + 1;
    if (skip > c->fmt_len || memcmp(c->fmt + (crlf - c->fmt) + 1, "$7\r\nEVALSHA\r\n", 13))
        return 0;
    const char *text = c->script->text;
    size_t tlen = strlen(text), rest = c->fmt_len - skip, head = (size_t)(crlf - c->fmt) + 1;
    char lenbuf[32];
    int ln = snprintf(lenbuf, sizeof(lenbuf), "$4\r\nEVAL\r\n$%zu\r\n", tlen);
    size_t n = head + (size_t)ln + tlen + 2 + rest;
    char *cmd = malloc(n);
    if (!cmd) return 0;
    char *o = cmd;
    memcpy(o, c->fmt, head), o += head;
    memcpy(o, lenbuf, (size_t)ln), o += ln;
    memcpy(o, text, tlen), o += tlen;
    memcpy(o, "\r\n", 2), o += 2;
    memcpy(o, c->fmt + skip, rest);
    redisAsyncCommand(ac, NULL, NULL, "SCRIPT LOAD %s", text);
    int rc = redisAsyncFormattedCommand(ac, on_reply, c, cmd, n);
    free(cmd);
    if (rc != REDIS_OK) return 0;
    free(c->fmt);
    c->fmt = NULL;
    return 1;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *priv) {
    cmd_ctx_t *c = priv;
    redisReply *rep = reply;
    if (c->fmt && rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0) {
        cel_redis_log_error(c->r,
                            "the server lost its scripts (NOSCRIPT); running them with EVAL "
                            "and loading them again",
                            rep->str);
        if (eval_again(ac, c)) return; /* on_reply runs again with the EVAL's reply */
    }
    if (c->cb) c->cb(c->r, reply, c->priv);
    free(c->fmt);
    free(c);
}

int cel_redis_command(cel_redis_t *r, cel_redis_cb cb, void *priv, int argc, const char **argv,
                      const size_t *argvlen) {
    if (!cel_redis_up(r)) return CEL_EIO;
    cmd_ctx_t *c = malloc(sizeof(*c));
    if (!c) return CEL_ENOMEM;
    *c = (cmd_ctx_t){ r, cb, priv, NULL, NULL, 0 };
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, argv, argvlen) != REDIS_OK) {
        free(c);
        return CEL_EIO;
    }
    return CEL_OK;
}

/* A subscription keeps its context for every message: hiredis calls the
 * callback with the confirmation, once per message, and a last time with
 * NULL when the context is freed (disconnect or close; r may be gone then:
 * ac->data is cleared before a free of our own). The confirmation of the
 * set-up's PSUBSCRIBE makes the connection up. */
static void on_sub_reply(redisAsyncContext *ac, void *reply, void *priv) {
    cmd_ctx_t *c = priv;
    redisReply *rep = reply;
    cel_redis_t *r = ac->data;
    if (!rep) {
        free(c);
        return;
    }
    if (!r) return;
    if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 3 &&
        rep->element[0]->type == REDIS_REPLY_STRING &&
        strcmp(rep->element[0]->str, "psubscribe") == 0) {
        if (r->state == ST_CONNECTING && r->sub_sent) handshake_step(r);
        return;
    }
    if (r->state == ST_UP && r->sub_cb) r->sub_cb(r, rep, r->sub_priv);
}

static int send_psubscribe(cel_redis_t *r) {
    cmd_ctx_t *c = malloc(sizeof(*c));
    if (!c) {
        cel_redis_log_error(r, "subscribing", "out of memory");
        return CEL_ENOMEM;
    }
    *c = (cmd_ctx_t){ r, NULL, NULL, NULL, NULL, 0 };
    const char *argv[] = { "PSUBSCRIBE", r->sub_pattern };
    if (redisAsyncCommandArgv(r->ac, on_sub_reply, c, 2, argv, NULL) != REDIS_OK) {
        free(c);
        return CEL_EIO;
    }
    return CEL_OK;
}

int cel_redis_psubscribe(cel_redis_t *r, const char *pattern, cel_redis_cb cb, void *priv) {
    if (r->sub_pattern || r->state == ST_UP || r->state == ST_CLOSING) return CEL_ESTATE;
    if (!(r->sub_pattern = strdup(pattern))) return CEL_ENOMEM;
    r->sub_cb = cb;
    r->sub_priv = priv;
    return CEL_OK;
}

#define EVAL_MAX_ARGS 512

void cel_redis_flush(cel_redis_t *r) {
    if (r && r->ac && r->ac->ev.data) on_flush(&((uv_events_t *)r->ac->ev.data)->flush);
}

int cel_redis_evalsha(cel_redis_t *r, const cel_redis_script_t *s, cel_redis_cb cb, void *priv,
                      int nkeys, const char **keys, const size_t *keylens, int nargs,
                      const char **args, const size_t *arglens) {
    const char *argv[EVAL_MAX_ARGS];
    size_t lens[EVAL_MAX_ARGS];
    char nk[16];
    if (nkeys < 0 || nargs < 0 || nkeys + nargs + 3 > EVAL_MAX_ARGS) return CEL_ELIMIT;
    if (!cel_redis_up(r)) return CEL_EIO;
    int n = 0;
    argv[n] = "EVALSHA", lens[n++] = 7;
    argv[n] = s->sha, lens[n++] = 40;
    lens[n] = (size_t)snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[n++] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[n] = keys[i], lens[n++] = keylens ? keylens[i] : strlen(keys[i]);
    for (int i = 0; i < nargs; i++)
        argv[n] = args[i], lens[n++] = arglens ? arglens[i] : strlen(args[i]);
    cmd_ctx_t *c = malloc(sizeof(*c));
    if (!c) return CEL_ENOMEM;
    *c = (cmd_ctx_t){ r, cb, priv, s, NULL, 0 };
    long long len = redisFormatCommandArgv(&c->fmt, n, argv, lens);
    if (len < 0) {
        free(c);
        return CEL_ENOMEM;
    }
    c->fmt_len = (size_t)len;
    if (redisAsyncFormattedCommand(r->ac, on_reply, c, c->fmt, c->fmt_len) != REDIS_OK) {
        free(c->fmt);
        free(c);
        return CEL_EIO;
    }
    return CEL_OK;
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
