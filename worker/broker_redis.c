/* broker_redis.c -- the Redis broker transport, kombu-compatible: pop+register, ack, restore.
 *
 * cel_broker_redis_ops (broker.h) is the only symbol it exports.
 * Two connections: `cmd` runs the Lua scripts, acks and requeues, pipelined;
 * `blk` only waits in BRPOP when the queues are empty. A non-empty queue is
 * drained with the POP script, which RPOPs and records each message in
 * `unacked`/`unacked_index` in one server-side step, so a message taken by
 * celeriac is never only in celeriac's memory. The BRPOP wake-up path has the
 * same one-round-trip window kombu has; its message is registered at once.
 * Matches kombu/transport/redis.py (QoS, _do_restore_message, priority keys).
 * Messages are kombu JSON envelopes; decode and peek read them as such.
 * Main process, libuv loop.
 */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "../common/log.h"
#include "metrics.h"
#include "redis.h"

#define POP_BATCH_MAX  128
#define RESTORE_BATCH  1000
#define PRIORITY_STEPS 4
static const int priority_steps[PRIORITY_STEPS] = { 0, 3, 6, 9 };

/* Shared Lua: take the delivery tag and routing of an envelope and register it
 * as kombu's QoS.append does: ZADD unacked_index now tag; HSET unacked tag
 * '[<envelope>, "<exchange>", "<routing_key>"]'. Returns the tag or false. */
#define LUA_REGISTER_FN                                                                         \
    "local function register(m, now, key)\n"                                                    \
    "  local ok, env = pcall(cjson.decode, m)\n"                                                \
    "  if not ok or type(env) ~= 'table' or type(env.properties) ~= 'table' then return false " \
    "end\n"                                                                                     \
    "  local tag = env.properties.delivery_tag\n"                                               \
    "  if type(tag) ~= 'string' or tag == '' then return false end\n"                           \
    "  local ex, rk = '', key\n"                                                                \
    "  local di = env.properties.delivery_info\n"                                               \
    "  if type(di) == 'table' then\n"                                                           \
    "    if type(di.exchange) == 'string' then ex = di.exchange end\n"                          \
    "    if type(di.routing_key) == 'string' then rk = di.routing_key end\n"                    \
    "  end\n"                                                                                   \
    "  redis.call('ZADD', 'unacked_index', now, tag)\n"                                         \
    "  redis.call('HSET', 'unacked', tag, '[' .. m .. ', ' .. cjson.encode(ex) .. ', ' .. "     \
    "cjson.encode(rk) .. ']')\n"                                                                \
    "  return tag\n"                                                                            \
    "end\n"

/* POP: KEYS = queue keys in priority-major order; ARGV = max, now.
 * Returns {envelope, tag or '', key, ...}. */
static cel_redis_script_t script_pop = { LUA_REGISTER_FN "local out = {}\n"
                                                         "local n = tonumber(ARGV[1])\n"
                                                         "for _, k in ipairs(KEYS) do\n"
                                                         "  while n > 0 do\n"
                                                         "    local m = redis.call('RPOP', k)\n"
                                                         "    if not m then break end\n"
                                                         "    n = n - 1\n"
                                                         "    local tag = register(m, ARGV[2], k)\n"
                                                         "    out[#out + 1] = m\n"
                                                         "    out[#out + 1] = tag or ''\n"
                                                         "    out[#out + 1] = k\n"
                                                         "  end\n"
                                                         "  if n == 0 then break end\n"
                                                         "end\n"
                                                         "return out\n",
                                         { 0 } };

/* REGISTER: ARGV = envelope, now, key. For a message BRPOP already took. */
static cel_redis_script_t script_register = { LUA_REGISTER_FN
                                              "return register(ARGV[1], ARGV[2], ARGV[3]) or ''\n",
                                              { 0 } };

/* Shared Lua: kombu's restore_by_tag + _do_restore_message. */
#define LUA_RESTORE_FN                                                                          \
    "local function restore(tag, leftmost)\n"                                                   \
    "  local p = redis.call('HGET', 'unacked', tag)\n"                                          \
    "  redis.call('ZREM', 'unacked_index', tag)\n"                                              \
    "  redis.call('HDEL', 'unacked', tag)\n"                                                    \
    "  if not p then return 0 end\n"                                                            \
    "  local ok, v = pcall(cjson.decode, p)\n"                                                  \
    "  if not ok or type(v) ~= 'table' or type(v[1]) ~= 'table' then return 0 end\n"            \
    "  local M, EX, RK = v[1], v[2], v[3]\n"                                                    \
    "  if type(M.headers) == 'table' then M.headers.redelivered = true end\n"                   \
    "  if type(M.properties) == 'table' and type(M.properties.delivery_info) == 'table' then\n" \
    "    M.properties.delivery_info.redelivered = true\n"                                       \
    "  end\n"                                                                                   \
    "  local queues = {}\n"                                                                     \
    "  if type(EX) == 'string' and EX ~= '' then\n"                                             \
    "    for _, b in ipairs(redis.call('SMEMBERS', '_kombu.binding.' .. EX)) do\n"              \
    "      local r, q = string.match(b, '^(.-)\\6\\22.-\\6\\22(.*)$')\n"                        \
    "      if q and (r == RK or r == '') then queues[#queues + 1] = q end\n"                    \
    "    end\n"                                                                                 \
    "  end\n"                                                                                   \
    "  if #queues == 0 and type(RK) == 'string' then queues[1] = RK end\n"                      \
    "  local body = cjson.encode(M)\n"                                                          \
    "  for _, q in ipairs(queues) do\n"                                                         \
    "    if leftmost then redis.call('LPUSH', q, body) else redis.call('RPUSH', q, body) end\n" \
    "  end\n"                                                                                   \
    "  return 1\n"                                                                              \
    "end\n"

/* RESTORE: ARGV = ceil (now - visibility timeout), limit. kombu restore_visible. */
static cel_redis_script_t script_restore = {
    LUA_RESTORE_FN "local tags = redis.call('ZREVRANGEBYSCORE', 'unacked_index', ARGV[1], 0, "
                   "'LIMIT', 0, tonumber(ARGV[2]))\n"
                   "local n = 0\n"
                   "for _, tag in ipairs(tags) do n = n + restore(tag, false) end\n"
                   "return n\n",
    { 0 }
};

/* REQUEUE: ARGV = tag. Gives one held message back (restore_at_shutdown). */
static cel_redis_script_t script_requeue = { LUA_RESTORE_FN "return restore(ARGV[1], false)\n",
                                             { 0 } };

static cel_redis_script_t *all_scripts[] = { &script_pop, &script_register, &script_restore,
                                             &script_requeue };

typedef struct redis_broker {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_broker_cbs_t cbs;
    void *priv;
    cel_redis_t *cmd;
    cel_redis_t *blk;
    char *queues[CEL_MAX_QUEUES]; /* consumed now (add/cancel_consumer change it) */
    int nqueues;
    char **keys; /* nqueues * 4 priority keys (room for CEL_MAX_QUEUES) */
    size_t *keylens;
    int nkeys;
    int rotate;   /* fairness: first queue of the next fetch */
    int fetching; /* a POP or BRPOP is in flight */
    int blocking; /* that fetch is the BRPOP */
    int stopped;
    int pending; /* commands in flight on cmd */
    uv_timer_t restore_timer;
    int closing_left;
    void (*on_closed)(void *);
    void *closed_priv;
} redis_broker_t;

static double now_unix(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static void fetch(redis_broker_t *b, int block);

/* The key order of one fetch: priority-major, queues rotated for fairness. */
static int fetch_keys(redis_broker_t *b, const char **keys, size_t *lens) {
    int nq = b->nqueues;
    int n = 0;
    if (nq == 0) return 0;
    for (int p = 0; p < PRIORITY_STEPS; p++)
        for (int i = 0; i < nq; i++) {
            int q = (i + b->rotate) % nq;
            keys[n] = b->keys[q * PRIORITY_STEPS + p];
            lens[n++] = b->keylens[q * PRIORITY_STEPS + p];
        }
    b->rotate = (b->rotate + 1) % nq;
    return n;
}

/* Hands one message to the consumer. tag NULL: not registered in unacked. */
static void hand_over(redis_broker_t *b, const char *raw, size_t len, const char *tag,
                      const char *key) {
    cel_broker_msg_t m = { tag, key, raw, len, NULL };
    b->cbs.on_message(b->priv, &m);
}

static void deliver(redis_broker_t *b, redisReply *m, redisReply *tag, redisReply *key) {
    if (m->type != REDIS_REPLY_STRING) return;
    const char *t = tag && tag->type == REDIS_REPLY_STRING && tag->len > 0 ? tag->str : NULL;
    const char *k = key && key->type == REDIS_REPLY_STRING ? key->str : "";
    hand_over(b, m->str, m->len, t, k);
}

static void on_pop(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->fetching = 0;
    b->pending--;
    int got = 0;
    if (!reply) return; /* connection lost: on_state restarts fetching */
    if (reply->type == REDIS_REPLY_ERROR) {
        cel_error("broker: pop script failed: %s", reply->str);
    } else if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 2 < reply->elements; i += 3) {
            deliver(b, reply->element[i], reply->element[i + 1], reply->element[i + 2]);
            got++;
        }
    }
    /* Empty: wait in BRPOP for the next message. */
    fetch(b, got == 0 && reply->type != REDIS_REPLY_ERROR);
}

typedef struct brpop_msg {
    redis_broker_t *b;
    char *raw;
    size_t len;
    char key[512];
} brpop_msg_t;

static void on_register(cel_redis_t *r, redisReply *reply, void *priv) {
    brpop_msg_t *bm = priv;
    redis_broker_t *b = bm->b;
    b->pending--;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        /* Not registered: deliver as unregistered rather than lose it. */
        cel_error("broker: could not register a message in unacked (%s)",
                  reply ? reply->str : "connection lost");
        hand_over(b, bm->raw, bm->len, NULL, bm->key);
    } else {
        const char *tag = reply->type == REDIS_REPLY_STRING && reply->len ? reply->str : NULL;
        hand_over(b, bm->raw, bm->len, tag, bm->key);
    }
    free(bm->raw);
    free(bm);
    b->fetching = 0;
    fetch(b, 0);
}

static void on_requeued_raw(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->pending--;
}

static void on_brpop(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->blocking = 0;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        if (reply && reply->type == REDIS_REPLY_ERROR) cel_error("broker: BRPOP: %s", reply->str);
        b->fetching = 0;
        if (reply) fetch(b, 0); /* timeout (nil): wait again; NULL: reconnect restarts */
        return;
    }
    redisReply *key = reply->element[0], *m = reply->element[1];
    char now[32];
    snprintf(now, sizeof(now), "%.6f", now_unix());
    if (b->stopped || !cel_redis_up(b->cmd)) {
        /* Taken after we stopped: put it back where the next pop finds it. */
        const char *argv[] = { "RPUSH", key->str, m->str };
        size_t lens[] = { 5, key->len, m->len };
        if (cel_redis_command(b->cmd, on_requeued_raw, b, 3, argv, lens) == CEL_OK) b->pending++;
        else cel_error("broker: lost connection holding a message it cannot give back");
        b->fetching = 0;
        return;
    }
    brpop_msg_t *bm = calloc(1, sizeof(*bm));
    if (bm) bm->raw = malloc(m->len + 1);
    if (!bm || !bm->raw) {
        free(bm);
        cel_error("broker: out of memory holding a message");
        b->fetching = 0;
        return;
    }
    bm->b = b;
    memcpy(bm->raw, m->str, m->len);
    bm->raw[m->len] = '\0';
    bm->len = m->len;
    snprintf(bm->key, sizeof(bm->key), "%.*s", (int)key->len, key->str);
    const char *args[] = { bm->raw, now, bm->key };
    size_t lens[] = { bm->len, strlen(now), strlen(bm->key) };
    if (cel_redis_evalsha(b->cmd, &script_register, on_register, bm, 0, NULL, NULL, 3, args,
                          lens) == CEL_OK) {
        b->pending++;
    } else {
        hand_over(b, bm->raw, bm->len, NULL, bm->key);
        free(bm->raw);
        free(bm);
        b->fetching = 0;
    }
}

/* Starts the next fetch unless one is in flight: the POP script, or BRPOP
 * when block is set (the last POP found the queues empty). */
static void fetch(redis_broker_t *b, int block) {
    if (b->fetching) return;
    if (b->stopped || !cel_redis_up(b->cmd)) return;
    int cap = b->cbs.capacity(b->priv);
    if (cap <= 0 || b->nqueues == 0) return;
    const char *keys[CEL_MAX_QUEUES * PRIORITY_STEPS + 1];
    size_t lens[CEL_MAX_QUEUES * PRIORITY_STEPS + 1];
    int n = fetch_keys(b, keys, lens);
    if (block) {
        /* BRPOP keys... timeout 1, as kombu; re-issued on timeout. */
        if (!cel_redis_up(b->blk)) return;
        const char *argv[CEL_MAX_QUEUES * PRIORITY_STEPS + 2];
        size_t alens[CEL_MAX_QUEUES * PRIORITY_STEPS + 2];
        argv[0] = "BRPOP", alens[0] = 5;
        for (int i = 0; i < n; i++) argv[i + 1] = keys[i], alens[i + 1] = lens[i];
        argv[n + 1] = "1", alens[n + 1] = 1;
        if (cel_redis_command(b->blk, on_brpop, b, n + 2, argv, alens) == CEL_OK)
            b->fetching = b->blocking = 1;
        return;
    }
    char max[16], now[32];
    snprintf(max, sizeof(max), "%d", cap > POP_BATCH_MAX ? POP_BATCH_MAX : cap);
    snprintf(now, sizeof(now), "%.6f", now_unix());
    const char *args[] = { max, now };
    if (cel_redis_evalsha(b->cmd, &script_pop, on_pop, b, n, keys, lens, 2, args, NULL) == CEL_OK) {
        b->fetching = 1;
        b->pending++;
    }
}

static void redis_kick(void *impl) { fetch(impl, 0); }

static void on_restored(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->pending--;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
        cel_warn("Restored %lld unacknowledged message(s) whose visibility timeout passed",
                 reply->integer);
    else if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_error("broker: restore failed: %s", reply->str);
}

static void restore_visible(redis_broker_t *b) {
    char ceil[32], lim[16];
    snprintf(ceil, sizeof(ceil), "%.6f", now_unix() - b->cfg->visibility_timeout);
    snprintf(lim, sizeof(lim), "%d", RESTORE_BATCH);
    const char *args[] = { ceil, lim };
    if (cel_redis_evalsha(b->cmd, &script_restore, on_restored, b, 0, NULL, NULL, 2, args, NULL) ==
        CEL_OK)
        b->pending++;
}

static void on_restore_timer(uv_timer_t *t) {
    redis_broker_t *b = t->data;
    if (cel_redis_up(b->cmd)) restore_visible(b);
}

static void on_bind(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->pending--;
}

static void bind_queue(redis_broker_t *b, const char *q) {
    char key[300], member[700];
    snprintf(key, sizeof(key), "_kombu.binding.%s", q);
    int mlen = snprintf(member, sizeof(member), "%s\x06\x16\x06\x16%s", q, q);
    const char *argv[] = { "SADD", key, member };
    size_t lens[] = { 4, strlen(key), (size_t)mlen };
    if (cel_redis_command(b->cmd, on_bind, b, 3, argv, lens) == CEL_OK) b->pending++;
}

/* Rebuilds the priority keys of the queues consumed now. */
static int build_keys(redis_broker_t *b) {
    for (int i = 0; i < b->nkeys; i++) free(b->keys[i]);
    b->nkeys = 0;
    for (int q = 0; q < b->nqueues; q++)
        for (int p = 0; p < PRIORITY_STEPS; p++) {
            char k[300];
            int n = p == 0
                        ? snprintf(k, sizeof(k), "%s", b->queues[q])
                        : snprintf(k, sizeof(k), "%s\x06\x16%d", b->queues[q], priority_steps[p]);
            if (!(b->keys[b->nkeys] = strdup(k))) return CEL_ENOMEM;
            b->keylens[b->nkeys++] = (size_t)n;
        }
    b->rotate = 0;
    return CEL_OK;
}

static int redis_add_queue(void *impl, const char *queue) {
    redis_broker_t *b = impl;
    for (int i = 0; i < b->nqueues; i++)
        if (strcmp(b->queues[i], queue) == 0) return CEL_OK;
    if (b->nqueues >= CEL_MAX_QUEUES || strlen(queue) > 200) return CEL_ELIMIT;
    if (!(b->queues[b->nqueues] = strdup(queue))) return CEL_ENOMEM;
    b->nqueues++;
    int rc = build_keys(b);
    if (cel_redis_up(b->cmd)) bind_queue(b, queue);
    fetch(b, 0); /* a BRPOP in flight still waits on the old keys until its 1 s timeout */
    return rc;
}

static int redis_cancel_queue(void *impl, const char *queue) {
    redis_broker_t *b = impl;
    for (int i = 0; i < b->nqueues; i++) {
        if (strcmp(b->queues[i], queue) != 0) continue;
        free(b->queues[i]);
        memmove(b->queues + i, b->queues + i + 1,
                sizeof(b->queues[0]) * (size_t)(b->nqueues - i - 1));
        b->nqueues--;
        return build_keys(b);
    }
    return CEL_ENOTFOUND;
}

static json_t *redis_queues(const void *impl) {
    const redis_broker_t *b = impl;
    json_t *a = json_array();
    for (int i = 0; i < b->nqueues; i++) json_array_append_new(a, json_string(b->queues[i]));
    return a;
}

static void on_cmd_state(cel_redis_t *r, int up, void *priv) {
    redis_broker_t *b = priv;
    cel_metrics_broker_state(up);
    if (up) {
        /* Declare the bindings as kombu's queue_bind does, then restore. */
        for (int i = 0; i < b->nqueues; i++) bind_queue(b, b->queues[i]);
        restore_visible(b);
        fetch(b, 0);
    } else {
        b->fetching = b->blocking = 0;
    }
    if (b->cbs.on_state) b->cbs.on_state(b->priv, up);
}

static void on_blk_state(cel_redis_t *r, int up, void *priv) {
    redis_broker_t *b = priv;
    if (!up && b->blocking) b->fetching = b->blocking = 0;
    if (up) fetch(b, 0);
}

static void *redis_open(uv_loop_t *loop, const cel_options_t *cfg, const cel_broker_cbs_t *cbs,
                        void *priv, cel_err_t *err) {
    redis_broker_t *b = calloc(1, sizeof(*b));
    if (!b) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    b->loop = loop;
    b->cfg = cfg;
    b->cbs = *cbs;
    b->priv = priv;
    b->keys = calloc(CEL_MAX_QUEUES * PRIORITY_STEPS, sizeof(char *));
    b->keylens = calloc(CEL_MAX_QUEUES * PRIORITY_STEPS, sizeof(size_t));
    if (!b->keys || !b->keylens) goto fail;
    for (int q = 0; q < cfg->nqueues; q++) {
        if (!(b->queues[q] = strdup(cfg->queues[q]))) goto fail;
        b->nqueues++;
    }
    if (build_keys(b) != CEL_OK) goto fail;
    uv_timer_init(loop, &b->restore_timer);
    b->restore_timer.data = b;
    double every = cfg->visibility_timeout < 10 ? cfg->visibility_timeout : 10;
    uv_timer_start(&b->restore_timer, on_restore_timer, (uint64_t)(every * 1000),
                   (uint64_t)(every * 1000));
    b->cmd = cel_redis_new(loop, &cfg->broker, "broker", all_scripts,
                           (int)(sizeof(all_scripts) / sizeof(all_scripts[0])), on_cmd_state, b);
    b->blk = cel_redis_new(loop, &cfg->broker, "broker-wait", NULL, 0, on_blk_state, b);
    if (!b->cmd || !b->blk) goto fail; /* out of memory at start-up: caller exits */
    return b;
fail:
    cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (int i = 0; i < b->nqueues; i++) free(b->queues[i]);
    if (b->keys)
        for (int i = 0; i < b->nkeys; i++) free(b->keys[i]);
    free(b->keys);
    free(b->keylens);
    free(b);
    return NULL;
}

typedef struct done_ctx {
    redis_broker_t *b;
    cel_broker_done_fn done;
    void *priv;
    int left;
    int ok;
} done_ctx_t;

static void on_done_part(cel_redis_t *r, redisReply *reply, void *priv) {
    done_ctx_t *d = priv;
    d->b->pending--;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        if (reply) cel_error("broker: %s", reply->str);
        d->ok = 0;
    }
    if (--d->left > 0) return;
    if (d->done) d->done(d->priv, d->ok);
    free(d);
}

static void redis_ack(void *impl, const char *tag, cel_broker_done_fn done, void *priv) {
    redis_broker_t *b = impl;
    done_ctx_t *d = malloc(sizeof(*d));
    if (!d) {
        if (done) done(priv, 0);
        return;
    }
    *d = (done_ctx_t){ b, done, priv, 0, 1 };
    const char *zrem[] = { "ZREM", "unacked_index", tag };
    const char *hdel[] = { "HDEL", "unacked", tag };
    if (cel_redis_command(b->cmd, on_done_part, d, 3, zrem, NULL) == CEL_OK)
        d->left++, b->pending++;
    if (cel_redis_command(b->cmd, on_done_part, d, 3, hdel, NULL) == CEL_OK)
        d->left++, b->pending++;
    if (d->left == 0) {
        if (done) done(priv, 0);
        free(d);
    } else if (d->left == 1) {
        d->ok = 0; /* half sent: report failure when the sent half returns */
    }
}

static void redis_requeue(void *impl, const char *tag, cel_broker_done_fn done, void *priv) {
    redis_broker_t *b = impl;
    done_ctx_t *d = malloc(sizeof(*d));
    if (!d) {
        if (done) done(priv, 0);
        return;
    }
    *d = (done_ctx_t){ b, done, priv, 1, 1 };
    const char *args[] = { tag };
    if (cel_redis_evalsha(b->cmd, &script_requeue, on_done_part, d, 0, NULL, NULL, 1, args, NULL) ==
        CEL_OK) {
        b->pending++;
    } else {
        if (done) done(priv, 0);
        free(d);
    }
}

/* Held messages are refreshed four times per visibility timeout, so a
 * restore (ours or a Python worker's) never takes one that is running. */
static double redis_touch_interval(const void *impl) {
    const redis_broker_t *b = impl;
    double every = b->cfg->visibility_timeout / 4;
    return every < 0.5 ? 0.5 : every;
}

static void on_touch(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->pending--;
}

static void redis_touch(void *impl, const char **tags, int n) {
    redis_broker_t *b = impl;
    char now[32];
    snprintf(now, sizeof(now), "%.6f", now_unix());
    for (int i = 0; i < n; i++) {
        const char *argv[] = { "ZADD", "unacked_index", "XX", now, tags[i] };
        if (cel_redis_command(b->cmd, on_touch, b, 5, argv, NULL) == CEL_OK) b->pending++;
    }
}

static void redis_stop(void *impl) {
    redis_broker_t *b = impl;
    b->stopped = 1;
    uv_timer_stop(&b->restore_timer);
}

static int redis_pending(const void *impl) { return ((const redis_broker_t *)impl)->pending; }

static void close_step(void *priv) {
    redis_broker_t *b = priv;
    if (--b->closing_left > 0) return;
    for (int i = 0; i < b->nkeys; i++) free(b->keys[i]);
    for (int i = 0; i < b->nqueues; i++) free(b->queues[i]);
    free(b->keys);
    free(b->keylens);
    void (*cb)(void *) = b->on_closed;
    void *cp = b->closed_priv;
    free(b);
    if (cb) cb(cp);
}

static void on_restore_timer_closed(uv_handle_t *h) { close_step(h->data); }

/* The waiting connection closes first: a BRPOP that still returns a message
 * can then give it back on the command connection. */
static void on_blk_closed(void *priv) {
    redis_broker_t *b = priv;
    cel_redis_close(b->cmd, close_step, b);
    close_step(b);
}

static void redis_close(void *impl, void (*on_closed)(void *), void *priv) {
    redis_broker_t *b = impl;
    b->stopped = 1;
    b->on_closed = on_closed;
    b->closed_priv = priv;
    b->closing_left = 3;
    uv_timer_stop(&b->restore_timer);
    uv_close((uv_handle_t *)&b->restore_timer, on_restore_timer_closed);
    cel_redis_close(b->blk, on_blk_closed, b);
}

/* Messages on Redis are kombu JSON envelopes. */
static int redis_decode(const cel_broker_msg_t *m, cel_task_t **out, cel_err_t *err) {
    return cel_task_decode_envelope(m->body, m->len, out, err);
}

static int redis_peek(const cel_broker_msg_t *m, cel_peek_t *out, cel_err_t *err) {
    return cel_peek_envelope(m->body, m->len, out, err);
}

const cel_broker_ops_t cel_broker_redis_ops = {
    .abi = CEL_BROKER_ABI,
    .scheme = "redis",
    .open = redis_open,
    .decode = redis_decode,
    .peek = redis_peek,
    .kick = redis_kick,
    .ack = redis_ack,
    .requeue = redis_requeue,
    .touch_interval = redis_touch_interval,
    .touch = redis_touch,
    .stop = redis_stop,
    .pending = redis_pending,
    .add_queue = redis_add_queue,
    .cancel_queue = redis_cancel_queue,
    .queues = redis_queues,
    .close = redis_close,
};
