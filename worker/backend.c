/* backend.c -- Celery Redis result backend writes: store + publish in one script.
 *
 * Celery 5.2 does GET (skip if SUCCESS), then MULTI SETEX+PUBLISH EXEC. The STORE
 * script does the same atomically in one round trip; many stores pipeline on
 * one connection. Matches celery/backends/redis.py set() and
 * backends/base.py _store_result(). Main process, libuv loop.
 */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "redis.h"

/* KEYS[1] = celery-task-meta-<id>; ARGV = meta, ttl seconds (0 = no expiry). */
static cel_redis_script_t script_store = {
    "local cur = redis.call('GET', KEYS[1])\n"
    "if cur then\n"
    "  local ok, v = pcall(cjson.decode, cur)\n"
    "  if ok and type(v) == 'table' and v.status == 'SUCCESS' then return 0 end\n"
    "end\n"
    "local ttl = tonumber(ARGV[2])\n"
    "if ttl and ttl > 0 then redis.call('SETEX', KEYS[1], ttl, ARGV[1])\n"
    "else redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "redis.call('PUBLISH', KEYS[1], ARGV[1])\n"
    "return 1\n",
    {0}};

/* KEYS[1] = meta key; ARGV = meta, ttl, delivery tag. The same store, then
 * kombu's ack (ZREM unacked_index + HDEL unacked) in the same step: used when
 * broker and backend are one Redis database, so the result and the ack can
 * never be separated by a crash. */
static cel_redis_script_t script_store_ack = {
    "local cur = redis.call('GET', KEYS[1])\n"
    "local skip = false\n"
    "if cur then\n"
    "  local ok, v = pcall(cjson.decode, cur)\n"
    "  if ok and type(v) == 'table' and v.status == 'SUCCESS' then skip = true end\n"
    "end\n"
    "if not skip then\n"
    "  local ttl = tonumber(ARGV[2])\n"
    "  if ttl and ttl > 0 then redis.call('SETEX', KEYS[1], ttl, ARGV[1])\n"
    "  else redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "  redis.call('PUBLISH', KEYS[1], ARGV[1])\n"
    "end\n"
    "redis.call('ZREM', 'unacked_index', ARGV[3])\n"
    "redis.call('HDEL', 'unacked', ARGV[3])\n"
    "return 1\n",
    {0}};

static cel_redis_script_t *scripts[] = {&script_store, &script_store_ack};

struct cel_backend {
    const cel_options_t *cfg;
    cel_redis_t *conn;
    void (*on_up)(void *);
    void *priv;
    char ttl[32];
    void (*on_closed)(void *);
    void *closed_priv;
};

static void on_state(cel_redis_t *r, int up, void *priv) {
    cel_backend_t *be = priv;
    if (up && be->on_up) be->on_up(be->priv);
}

cel_backend_t *cel_backend_new(uv_loop_t *loop, const cel_options_t *cfg,
                               void (*on_up)(void *), void *priv) {
    cel_backend_t *be = calloc(1, sizeof(*be));
    if (!be) return NULL;
    be->cfg = cfg;
    be->on_up = on_up;
    be->priv = priv;
    /* Celery passes result_expires as whole seconds to SETEX. */
    snprintf(be->ttl, sizeof(be->ttl), "%ld", (long)cfg->result_expires);
    be->conn = cel_redis_new(loop, &cfg->backend, "backend", scripts, 2, on_state, be);
    if (!be->conn) {
        free(be);
        return NULL;
    }
    return be;
}

typedef struct store_ctx {
    void (*done)(void *, int);
    void *priv;
} store_ctx_t;

static void on_stored(cel_redis_t *r, redisReply *reply, void *priv) {
    store_ctx_t *s = priv;
    int ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (reply && reply->type == REDIS_REPLY_ERROR) cel_error("backend: store failed: %s", reply->str);
    if (s->done) s->done(s->priv, ok);
    free(s);
}

void cel_backend_store(cel_backend_t *be, const char *task_id, const char *meta, size_t len,
                       void (*done)(void *, int), void *priv) {
    cel_backend_store_ack(be, task_id, meta, len, NULL, done, priv);
}

int cel_backend_shares_broker(const cel_backend_t *be) {
    const cel_redis_url_t *a = &be->cfg->broker, *b = &be->cfg->backend;
    return a->port == b->port && a->db == b->db && strcmp(a->host, b->host) == 0;
}

void cel_backend_store_ack(cel_backend_t *be, const char *task_id, const char *meta, size_t len,
                           const char *tag, void (*done)(void *, int), void *priv) {
    char key[300];
    int klen = snprintf(key, sizeof(key), "celery-task-meta-%s", task_id);
    store_ctx_t *s = malloc(sizeof(*s));
    if (!s || klen >= (int)sizeof(key)) {
        free(s);
        if (done) done(priv, 0);
        return;
    }
    s->done = done;
    s->priv = priv;
    const char *keys[] = {key};
    size_t klens[] = {(size_t)klen};
    const char *args[] = {meta, be->ttl, tag};
    size_t alens[] = {len, strlen(be->ttl), tag ? strlen(tag) : 0};
    if (cel_redis_evalsha(be->conn, tag ? &script_store_ack : &script_store, on_stored, s, 1, keys,
                          klens, tag ? 3 : 2, args, alens) != CEL_OK) {
        free(s);
        if (done) done(priv, 0);
    }
}

static void on_conn_closed(void *priv) {
    cel_backend_t *be = priv;
    void (*cb)(void *) = be->on_closed;
    void *cp = be->closed_priv;
    free(be);
    if (cb) cb(cp);
}

void cel_backend_close(cel_backend_t *be, void (*on_closed)(void *), void *priv) {
    be->on_closed = on_closed;
    be->closed_priv = priv;
    cel_redis_close(be->conn, on_conn_closed, be);
}
