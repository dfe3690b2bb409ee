/* backend_redis.c -- the Celery Redis result backend: store + publish in one script, get.
 *
 * cel_backend_redis_ops (backend.h) is the only symbol it exports. The meta
 * of task <id> lives at celery-task-meta-<id> (SETEX with result_expires,
 * or SET when 0) and the same JSON is PUBLISHed on the channel of that name
 * so AsyncResult.get() wakes up; a stored SUCCESS is never overwritten
 * (Celery 5.1+). Celery 5.2 does GET (skip if SUCCESS), then MULTI
 * SETEX+PUBLISH EXEC; the STORE script does the same atomically in one
 * round trip, and many stores pipeline on one connection. Chords use
 * Celery's keys celery-taskset-meta-<gid>.j (the parts: a sorted set by
 * header position, or a list), .t (added parts) and .s (the size), each
 * counted in one script (on_chord_part_return). Matches
 * celery/backends/redis.py set()/get()/on_chord_part_return() and
 * backends/base.py _store_result().
 * Error replies go back to the caller as ok=0 (the consumer retries with
 * backoff); NOSCRIPT never does (redis.c runs the script with EVAL). Keys of
 * any id length are built on the heap past KEY_INLINE. The stores of one
 * loop turn go out together, up to ACK_BATCH in one STORE_MANY call, or
 * STORE_ACK_MANY for store_acks (the server runs one script instead of one
 * per task); a store of the other kind, and any other command, first sends
 * the batch, so commands keep their order. Main process, libuv loop.
 */
#include "backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/log.h"
#include "redis.h"

/* Shared Lua: Celery's store of one meta -- skipped when a SUCCESS is there
 * already (returns 0), else SETEX with the TTL (SET when 0) and PUBLISH on the
 * key's channel (returns 1). */
#define LUA_STORE_FN                                                                 \
    "local function store(key, meta, ttl)\n"                                         \
    "  local cur = redis.call('GET', key)\n"                                         \
    "  if cur then\n"                                                                \
    "    local ok, v = pcall(cjson.decode, cur)\n"                                   \
    "    if ok and type(v) == 'table' and v.status == 'SUCCESS' then return 0 end\n" \
    "  end\n"                                                                        \
    "  if ttl and ttl > 0 then redis.call('SETEX', key, ttl, meta)\n"                \
    "  else redis.call('SET', key, meta) end\n"                                      \
    "  redis.call('PUBLISH', key, meta)\n"                                           \
    "  return 1\n"                                                                   \
    "end\n"

/* KEYS[1] = celery-task-meta-<id>; ARGV = meta, ttl seconds (0 = no expiry). */
static cel_redis_script_t script_store = { LUA_STORE_FN
                                           "return store(KEYS[1], ARGV[1], tonumber(ARGV[2]))\n",
                                           { 0 } };

/* KEYS[1] = meta key; ARGV = meta, ttl, delivery tag. The same store, then
 * kombu's ack (ZREM unacked_index + HDEL unacked) in the same step: used when
 * broker and backend are one Redis database, so the result and the ack can
 * never be separated by a crash. */
static cel_redis_script_t script_store_ack = { LUA_STORE_FN
                                               "store(KEYS[1], ARGV[1], tonumber(ARGV[2]))\n"
                                               "redis.call('ZREM', 'unacked_index', ARGV[3])\n"
                                               "redis.call('HDEL', 'unacked', ARGV[3])\n"
                                               "return 1\n",
                                               { 0 } };

/* CHORD_PART: KEYS = celery-taskset-meta-<gid>.j, .t, .s; ARGV = entry,
 * group_index ('+inf' for none), ttl (0: none), 'zset' or 'list' (the kind
 * for a new chord; one begun keeps its kind). on_chord_part_return in one
 * step: add the part, count, read .t and .s, refresh the TTLs; when the count
 * reaches .s + .t, read every entry in order and forget the chord, so one
 * part only is ever told it was the last. Returns {0} or {1, entries...}. */
static cel_redis_script_t script_chord_part = {
    "local j, t, s = KEYS[1], KEYS[2], KEYS[3]\n"
    "local mode = ARGV[4]\n"
    "local ty = redis.call('TYPE', j)\n"
    "if type(ty) == 'table' then ty = ty.ok end\n"
    "if ty == 'list' or ty == 'zset' then mode = ty end\n"
    "local ready\n"
    "if mode == 'zset' then\n"
    "  redis.call('ZADD', j, ARGV[2], ARGV[1])\n"
    "  ready = redis.call('ZCOUNT', j, '-inf', '+inf')\n"
    "else\n"
    "  redis.call('RPUSH', j, ARGV[1])\n"
    "  ready = redis.call('LLEN', j)\n"
    "end\n"
    "local diff = tonumber(redis.call('GET', t) or '0') or 0\n"
    "local size = redis.call('GET', s)\n"
    "local ttl = tonumber(ARGV[3])\n"
    "if ttl and ttl > 0 then\n"
    "  redis.call('EXPIRE', j, ttl); redis.call('EXPIRE', t, ttl); redis.call('EXPIRE', s, ttl)\n"
    "end\n"
    "if not size or ready ~= (tonumber(size) or -1) + diff then return {0} end\n"
    "local res\n"
    "if mode == 'zset' then res = redis.call('ZRANGE', j, 0, -1)\n"
    "else res = redis.call('LRANGE', j, 0, ready) end\n"
    "redis.call('DEL', j, t, s)\n"
    "local out = {1}\n"
    "for _, e in ipairs(res) do out[#out + 1] = e end\n"
    "return out\n",
    { 0 }
};

/* CHORD_SIZE: KEYS = celery-taskset-meta-<gid>.s; ARGV = size, ttl. As
 * RedisBackend.set: SETEX (or SET) and PUBLISH on the key. */
static cel_redis_script_t script_chord_size = {
    "local ttl = tonumber(ARGV[2])\n"
    "if ttl and ttl > 0 then redis.call('SETEX', KEYS[1], ttl, ARGV[1])\n"
    "else redis.call('SET', KEYS[1], ARGV[1]) end\n"
    "redis.call('PUBLISH', KEYS[1], ARGV[1])\n"
    "return 1\n",
    { 0 }
};

/* KEYS = meta keys; ARGV = ttl, then meta and delivery tag of each key.
 * STORE_ACK for each in order, the acks of all in one ZREM and one HDEL. */
static cel_redis_script_t script_store_ack_many = {
    LUA_STORE_FN "local ttl = tonumber(ARGV[1])\n"
                 "local tags = {}\n"
                 "for i, key in ipairs(KEYS) do\n"
                 "  store(key, ARGV[2 * i], ttl)\n"
                 "  tags[i] = ARGV[2 * i + 1]\n"
                 "end\n"
                 "redis.call('ZREM', 'unacked_index', unpack(tags))\n"
                 "redis.call('HDEL', 'unacked', unpack(tags))\n"
                 "return #KEYS\n",
    { 0 }
};

/* KEYS = meta keys; ARGV = ttl, then the meta of each key. STORE for each in order. */
static cel_redis_script_t script_store_many = {
    LUA_STORE_FN "local ttl = tonumber(ARGV[1])\n"
                 "for i, key in ipairs(KEYS) do store(key, ARGV[i + 1], ttl) end\n"
                 "return #KEYS\n",
    { 0 }
};

static cel_redis_script_t *scripts[] = { &script_store,          &script_store_ack,
                                         &script_chord_part,     &script_chord_size,
                                         &script_store_ack_many, &script_store_many };

#define ACK_BATCH 64 /* stores in one script call (3 * ACK_BATCH + 1 arguments) */

/* The store_acks of this loop turn: their keys, metas and tags copied into
 * data (offsets, so that it can grow), and whom to tell. */
typedef struct ack_batch {
    int n;
    int acks;                                    /* store_acks (a tag each), or plain stores */
    size_t off[ACK_BATCH][3], len[ACK_BATCH][3]; /* key, meta, tag */
    cel_backend_done_fn done[ACK_BATCH];
    void *priv[ACK_BATCH];
    char *data;
    size_t data_len, data_cap;
} ack_batch_t;

typedef struct redis_backend {
    const cel_options_t *cfg;
    cel_redis_t *conn;
    void (*on_up)(void *);
    void *priv;
    char ttl[32];
    ack_batch_t *batch;    /* stores waiting for the end of the loop turn */
    uv_check_t send_check; /* sends the batch after the poll phase that gathered it */
    uv_idle_t send_idle;   /* ... or, gathered elsewhere, keeps the poll from blocking */
    void (*on_closed)(void *);
    void *closed_priv;
    int closing_left;
} redis_backend_t;

static void send_batch(redis_backend_t *be);

/* The end of a loop turn: what it gathered goes out now. A check handle runs
 * after the poll phase whose callbacks gathered it; the idle handle only makes
 * that poll not block when the batch was begun before it (a timer, a prepare
 * handle), and sends it first if it runs first. */
static void send_now(redis_backend_t *be) {
    uv_check_stop(&be->send_check);
    uv_idle_stop(&be->send_idle);
    send_batch(be);            /* none: a full batch or another command sent it */
    cel_redis_flush(be->conn); /* written now, not at the next prepare phase */
}

static void on_send_check(uv_check_t *h) { send_now(h->data); }
static void on_send_idle(uv_idle_t *h) { send_now(h->data); }

static void on_state(cel_redis_t *r, int up, void *priv) {
    redis_backend_t *be = priv;
    if (up && be->on_up) be->on_up(be->priv);
}

static void *redis_open(uv_loop_t *loop, const cel_options_t *cfg, void (*on_up)(void *),
                        void *priv, cel_err_t *err) {
    redis_backend_t *be = calloc(1, sizeof(*be));
    if (!be) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    be->cfg = cfg;
    be->on_up = on_up;
    be->priv = priv;
    /* Celery passes result_expires as whole seconds to SETEX. */
    snprintf(be->ttl, sizeof(be->ttl), "%ld", (long)cfg->result_expires);
    be->conn = cel_redis_new(loop, &cfg->backend, "backend", scripts,
                             (int)(sizeof(scripts) / sizeof(scripts[0])), on_state, be);
    if (!be->conn) {
        free(be);
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    uv_check_init(loop, &be->send_check);
    be->send_check.data = be;
    uv_idle_init(loop, &be->send_idle);
    be->send_idle.data = be;
    return be;
}

typedef struct store_ctx {
    cel_backend_done_fn done;
    void *priv;
} store_ctx_t;

static void on_stored(cel_redis_t *r, redisReply *reply, void *priv) {
    store_ctx_t *s = priv;
    int ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_redis_log_error(r, "store failed", reply->str);
    if (s->done) s->done(s->priv, ok);
    free(s);
}

/* The broker is the kombu Redis transport on this very database: its ack
 * (unacked hash and index) can go into the store script. */
static int redis_acks_broker(const void *impl) {
    const redis_backend_t *be = impl;
    const cel_redis_url_t *a = &be->cfg->broker, *b = &be->cfg->backend;
    return strncmp(be->cfg->broker_url, "redis://", 8) == 0 && a->port == b->port &&
           a->db == b->db && strcmp(a->host, b->host) == 0;
}

#define KEY_PREFIX "celery-task-meta-"
#define KEY_INLINE 300 /* keys of ids up to ~280 bytes need no allocation */

/* The meta key of task_id: in buf, or malloc'd (*heap set) when longer.
 * NULL when out of memory. */
static const char *meta_key(const char *task_id, char buf[KEY_INLINE], size_t *klen, char **heap) {
    *heap = NULL;
    size_t n = strlen(task_id) + sizeof(KEY_PREFIX) - 1;
    char *k = n < KEY_INLINE ? buf : (*heap = malloc(n + 1));
    if (!k) return NULL;
    memcpy(k, KEY_PREFIX, sizeof(KEY_PREFIX) - 1);
    memcpy(k + sizeof(KEY_PREFIX) - 1, task_id, n - (sizeof(KEY_PREFIX) - 1) + 1);
    *klen = n;
    return k;
}

static void on_stored_batch(cel_redis_t *r, redisReply *reply, void *priv) {
    ack_batch_t *b = priv;
    int ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_redis_log_error(r, "store failed", reply->str);
    for (int i = 0; i < b->n; i++)
        if (b->done[i]) b->done[i](b->priv[i], ok);
    free(b->data);
    free(b);
}

/* Sends the stores gathered so far: STORE or STORE_ACK for one, STORE_MANY
 * or STORE_ACK_MANY for more. Every one is told (ok=0 when it could not be sent). */
static void send_batch(redis_backend_t *be) {
    ack_batch_t *b = be->batch;
    if (!b) return;
    be->batch = NULL;
    const char *keys[ACK_BATCH], *args[2 * ACK_BATCH + 1];
    size_t klens[ACK_BATCH], alens[2 * ACK_BATCH + 1];
    int na = 1, per = b->acks ? 2 : 1;
    args[0] = be->ttl, alens[0] = strlen(be->ttl);
    for (int i = 0; i < b->n; i++) {
        keys[i] = b->data + b->off[i][0], klens[i] = b->len[i][0];
        for (int k = 1; k <= per; k++)
            args[na] = b->data + b->off[i][k], alens[na++] = b->len[i][k];
    }
    int rc;
    if (b->n == 1) {
        /* STORE: meta, ttl; STORE_ACK: meta, ttl, tag */
        const char *one[] = { args[1], args[0], b->acks ? args[2] : NULL };
        size_t one_lens[] = { alens[1], alens[0], b->acks ? alens[2] : 0 };
        rc = cel_redis_evalsha(be->conn, b->acks ? &script_store_ack : &script_store,
                               on_stored_batch, b, 1, keys, klens, 1 + per, one, one_lens);
    } else {
        rc = cel_redis_evalsha(be->conn, b->acks ? &script_store_ack_many : &script_store_many,
                               on_stored_batch, b, b->n, keys, klens, na, args, alens);
    }
    if (rc != CEL_OK) on_stored_batch(be->conn, NULL, b);
}

/* Appends n bytes to the batch's data; the offset in *off. -1 when out of memory. */
static int batch_put(ack_batch_t *b, const char *s, size_t n, size_t *off) {
    if (b->data_len + n > b->data_cap) {
        size_t cap = b->data_cap ? b->data_cap : 4096;
        while (cap < b->data_len + n) cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) return -1;
        b->data = d;
        b->data_cap = cap;
    }
    memcpy(b->data + b->data_len, s, n);
    *off = b->data_len;
    b->data_len += n;
    return 0;
}

/* Gathers one store (tag NULL) or store_ack for the end of the loop turn (send_now). */
static void gather(redis_backend_t *be, const char *task_id, const char *meta, size_t len,
                   const char *tag, cel_backend_done_fn done, void *priv) {
    if (!cel_redis_up(be->conn)) { /* fails now, as an unsent command does */
        if (done) done(priv, 0);
        return;
    }
    if (be->batch && be->batch->acks != (tag != NULL)) send_batch(be); /* keeps the order */
    if (!be->batch && !(be->batch = calloc(1, sizeof(*be->batch)))) {
        if (done) done(priv, 0);
        return;
    }
    ack_batch_t *b = be->batch;
    b->acks = tag != NULL;
    int i = b->n;
    size_t idl = strlen(task_id), tl = tag ? strlen(tag) : 0, mark = b->data_len, io;
    if (batch_put(b, KEY_PREFIX, sizeof(KEY_PREFIX) - 1, &b->off[i][0]) < 0 ||
        batch_put(b, task_id, idl, &io) < 0 || batch_put(b, meta, len, &b->off[i][1]) < 0 ||
        (tag && batch_put(b, tag, tl, &b->off[i][2]) < 0)) {
        b->data_len = mark; /* the others stay as they were */
        if (done) done(priv, 0);
        return;
    }
    b->len[i][0] = sizeof(KEY_PREFIX) - 1 + idl;
    b->len[i][1] = len;
    b->len[i][2] = tl;
    b->done[i] = done;
    b->priv[i] = priv;
    b->n++;
    if (b->n == ACK_BATCH) send_batch(be);
    else if (b->n == 1) {
        uv_check_start(&be->send_check, on_send_check);
        uv_idle_start(&be->send_idle, on_send_idle);
    }
}

static void redis_store(void *impl, const cel_task_t *t, const char *meta, size_t len,
                        cel_backend_done_fn done, void *priv) {
    gather(impl, t->id, meta, len, NULL, done, priv);
}

static void redis_store_ack(void *impl, const cel_task_t *t, const char *meta, size_t len,
                            const char *tag, cel_backend_done_fn done, void *priv) {
    gather(impl, t->id, meta, len, tag, done, priv);
}

typedef struct get_ctx {
    cel_backend_got_fn got;
    void *priv;
} get_ctx_t;

static void on_got(cel_redis_t *r, redisReply *reply, void *priv) {
    get_ctx_t *g = priv;
    if (reply && reply->type == REDIS_REPLY_ERROR) cel_redis_log_error(r, "GET failed", reply->str);
    if (!reply || reply->type == REDIS_REPLY_ERROR) g->got(g->priv, 0, NULL, 0);
    else if (reply->type == REDIS_REPLY_STRING) g->got(g->priv, 1, reply->str, reply->len);
    else g->got(g->priv, 1, NULL, 0); /* nil: nothing stored */
    free(g);
}

static void redis_get(void *impl, const char *task_id, cel_backend_got_fn got, void *priv) {
    redis_backend_t *be = impl;
    send_batch(be);
    char buf[KEY_INLINE], *heap;
    size_t klen;
    const char *key = meta_key(task_id, buf, &klen, &heap);
    get_ctx_t *g = key ? malloc(sizeof(*g)) : NULL;
    if (!g) {
        free(heap);
        got(priv, 0, NULL, 0);
        return;
    }
    g->got = got;
    g->priv = priv;
    const char *argv[] = { "GET", key };
    size_t lens[] = { 3, klen };
    int rc = cel_redis_command(be->conn, on_got, g, 2, argv, lens);
    free(heap);
    if (rc != CEL_OK) {
        free(g);
        got(priv, 0, NULL, 0);
    }
}

#define TASKSET_PREFIX "celery-taskset-meta-"

/* celery-taskset-meta-<gid><suffix>, malloc'd (NULL when out of memory). */
static char *taskset_key(const char *gid, const char *suffix) {
    size_t n = sizeof(TASKSET_PREFIX) + strlen(gid) + strlen(suffix);
    char *k = malloc(n);
    if (k) snprintf(k, n, TASKSET_PREFIX "%s%s", gid, suffix);
    return k;
}

static void redis_chord_size(void *impl, const char *group_id, long size, cel_backend_done_fn done,
                             void *priv) {
    redis_backend_t *be = impl;
    send_batch(be);
    char *key = taskset_key(group_id, ".s");
    store_ctx_t *s = key ? malloc(sizeof(*s)) : NULL;
    if (!s) {
        free(key);
        if (done) done(priv, 0);
        return;
    }
    s->done = done;
    s->priv = priv;
    char n[32];
    snprintf(n, sizeof(n), "%ld", size);
    const char *keys[] = { key };
    const char *args[] = { n, be->ttl };
    int rc =
        cel_redis_evalsha(be->conn, &script_chord_size, on_stored, s, 1, keys, NULL, 2, args, NULL);
    free(key);
    if (rc != CEL_OK) {
        free(s);
        if (done) done(priv, 0);
    }
}

typedef struct chord_ctx {
    cel_backend_chord_fn done;
    void *priv;
} chord_ctx_t;

#define CHORD_MAX_PARTS 1000000 /* entries handed back at once */

static void on_chord_part(cel_redis_t *r, redisReply *reply, void *priv) {
    chord_ctx_t *c = priv;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_error("backend: chord part failed: %s", reply->str);
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 ||
        reply->elements > CHORD_MAX_PARTS) {
        c->done(c->priv, 0, 0, NULL, NULL);
        free(c);
        return;
    }
    size_t n = reply->elements - 1;
    if (n == 0) {
        c->done(c->priv, 1, 0, NULL, NULL);
        free(c);
        return;
    }
    const char **entries = malloc(n * sizeof(*entries));
    size_t *lens = malloc(n * sizeof(*lens));
    if (!entries || !lens) {
        /* the chord is forgotten already: say so loudly, fail the part */
        cel_error("backend: out of memory reading a completed chord");
        free(entries);
        free(lens);
        c->done(c->priv, 0, 0, NULL, NULL);
        free(c);
        return;
    }
    size_t k = 0;
    for (size_t i = 1; i < reply->elements; i++) {
        redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_STRING) continue;
        entries[k] = e->str;
        lens[k++] = e->len;
    }
    c->done(c->priv, 1, k, entries, lens);
    free(entries);
    free(lens);
    free(c);
}

static void redis_chord_part(void *impl, const char *group_id, int group_index, const char *entry,
                             size_t len, cel_backend_chord_fn done, void *priv) {
    redis_backend_t *be = impl;
    send_batch(be);
    char *j = taskset_key(group_id, ".j"), *t = taskset_key(group_id, ".t");
    char *s = taskset_key(group_id, ".s");
    chord_ctx_t *c = j && t && s ? malloc(sizeof(*c)) : NULL;
    int rc = CEL_ENOMEM;
    if (c) {
        c->done = done;
        c->priv = priv;
        char idx[32];
        if (group_index >= 0) snprintf(idx, sizeof(idx), "%d", group_index);
        else snprintf(idx, sizeof(idx), "+inf");
        const char *keys[] = { j, t, s };
        const char *args[] = { entry, idx, be->ttl,
                               be->cfg->result_chord_ordered ? "zset" : "list" };
        size_t alens[] = { len, strlen(idx), strlen(be->ttl), strlen(args[3]) };
        rc = cel_redis_evalsha(be->conn, &script_chord_part, on_chord_part, c, 3, keys, NULL, 4,
                               args, alens);
    }
    free(j);
    free(t);
    free(s);
    if (rc != CEL_OK) {
        free(c);
        done(priv, 0, 0, NULL, NULL);
    }
}

/* The connection and the sender handles are closed: be goes. */
static void close_step(redis_backend_t *be) {
    if (--be->closing_left > 0) return;
    void (*cb)(void *) = be->on_closed;
    void *cp = be->closed_priv;
    free(be);
    if (cb) cb(cp);
}

static void on_conn_closed(void *priv) { close_step(priv); }

static void on_sender_closed(uv_handle_t *h) { close_step(h->data); }

static void redis_close(void *impl, void (*on_closed)(void *), void *priv) {
    redis_backend_t *be = impl;
    be->on_closed = on_closed;
    be->closed_priv = priv;
    be->closing_left = 3;
    send_batch(be); /* what was gathered still goes, or is told it failed */
    uv_close((uv_handle_t *)&be->send_check, on_sender_closed);
    uv_close((uv_handle_t *)&be->send_idle, on_sender_closed);
    cel_redis_close(be->conn, on_conn_closed, be);
}

const cel_backend_ops_t cel_backend_redis_ops = {
    .abi = CEL_BACKEND_ABI,
    .scheme = "redis",
    .open = redis_open,
    .store = redis_store,
    .acks_broker = redis_acks_broker,
    .store_ack = redis_store_ack,
    .get = redis_get,
    .close = redis_close,
    .chord_size = redis_chord_size,
    .chord_part = redis_chord_part,
};
