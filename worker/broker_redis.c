/* broker_redis.c -- the Redis broker transport, kombu-compatible: pop+register, ack, restore.
 *
 * cel_broker_redis_ops (broker.h) is the only symbol it exports.
 * `cmd` runs the Lua scripts, acks and requeues, pipelined. A non-empty queue
 * is drained with the POP script, which RPOPs and records each message in
 * `unacked`/`unacked_index` in one server-side step, so a message taken by
 * celeriac is never only in celeriac's memory. When the queues are empty the
 * worker waits through redis_wait.c, which moves the next message into an
 * in-flight list of this worker's (BLMOVE) instead of taking it off the queue
 * into a socket as kombu's BRPOP does (a worker killed in that round trip
 * lost the message); the next POP takes it from there.
 * Matches kombu/transport/redis.py (QoS, _do_restore_message, priority keys).
 * Messages are kombu JSON envelopes; decode and peek read them as such.
 * Robustness: a copy of every held message (held.c) lets a server that lost
 * them (FLUSHALL, a restart without persistence) get them back, found by the
 * TOUCH script and at every reconnect; answers lost with the connection are
 * repaired at the reconnect (a POP's messages, recorded under popkey, go back
 * to their queues; lost acks are sent again); an error reply to a fetch is retried
 * with backoff; a message over --max-message-size is read only as far as its
 * ids (the POP script cuts it server-side). Main process, libuv loop.
 */
#include "broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "../common/log.h"
#include "../protocol/message.h"
#include "events.h"
#include "held.h"
#include "metrics.h"
#include "redis.h"
#include "redis_wait.h"
#include "respcut.h"

#define POP_BATCH_MAX  128
#define RESTORE_BATCH  1000
#define TOUCH_BATCH    256 /* tags in one TOUCH script call */
#define TOUCH_MAX_S    5.0 /* held messages are checked at least this often */
#define PRIORITY_STEPS 4
#define POP_LISTS_MAX  32 /* in-flight lists a wake-up's POP looks at */
#define POP_KEYS_MAX   (2 * CEL_MAX_QUEUES * PRIORITY_STEPS) /* lists and keys of any other */
static const int priority_steps[PRIORITY_STEPS] = { 0, 3, 6, 9 };

/* Shared Lua: what kombu's QoS.append stores for an envelope m taken from queue
 * key: returns its delivery tag (nil when it has none), the `unacked` value
 * '[<envelope>, "<exchange>", "<routing_key>"]' and the decoded envelope. */
#define LUA_PAYLOAD_FN                                                                        \
    "local function payload(m, key)\n"                                                        \
    "  local ok, env = pcall(cjson.decode, m)\n"                                              \
    "  if not ok or type(env) ~= 'table' then return nil end\n"                               \
    "  if type(env.properties) ~= 'table' then return nil, nil, env end\n"                    \
    "  local tag = env.properties.delivery_tag\n"                                             \
    "  if type(tag) ~= 'string' or tag == '' then return nil, nil, env end\n"                 \
    "  local ex, rk = '', key\n"                                                              \
    "  local di = env.properties.delivery_info\n"                                             \
    "  if type(di) == 'table' then\n"                                                         \
    "    if type(di.exchange) == 'string' then ex = di.exchange end\n"                        \
    "    if type(di.routing_key) == 'string' then rk = di.routing_key end\n"                  \
    "  end\n"                                                                                 \
    "  return tag, '[' .. m .. ', ' .. cjson.encode(ex) .. ', ' .. cjson.encode(rk) .. ']', " \
    "env\n"                                                                                   \
    "end\n"

/* Shared Lua: payload() without decoding the envelope, for the layout kombu
 * writes, which ends with the properties: ..."delivery_info": {"exchange": EX,
 * "routing_key": RK}, "priority": N, "body_encoding": "base64",
 * "delivery_tag": TAG}}. Plain text only (no quote, backslash, slash, control
 * or non-ASCII byte in EX, RK, TAG: those cjson would escape or unescape), so
 * the payload is byte for byte what payload() makes; anything else returns
 * nil and payload() reads it. cjson.decode was most of the POP script's time. */
#define LUA_PAYLOAD_FAST_FN                                                              \
    "local function payload_fast(m)\n"                                                   \
    "  local at = #m - 400\n"                                                            \
    "  if at < 1 then at = 1 end\n"                                                      \
    "  at = string.find(m, '\"delivery_info\": {\"exchange\": \"', at, true)\n"          \
    "  if not at then return nil end\n"                                                  \
    "  local ex, rk, tag = string.match(m, '^\"delivery_info\": {\"exchange\": "         \
    "\"([^\"\\\\/%c\\128-\\255]*)\", \"routing_key\": \"([^\"\\\\/%c\\128-\\255]*)\"}, " \
    "\"priority\": %d+, \"body_encoding\": \"base64\", \"delivery_tag\": "               \
    "\"([^\"\\\\/%c\\128-\\255]+)\"}}$', at)\n"                                          \
    "  if not tag then return nil end\n"                                                 \
    "  return tag, '[' .. m .. ', \"' .. ex .. '\", \"' .. rk .. '\"]'\n"                \
    "end\n"

/* Shared Lua: register the envelope as kombu's QoS.append does: ZADD
 * unacked_index now tag; HSET unacked tag payload. Returns the tag (false when
 * it has none) and, when want_env is set or the fast path could not read it,
 * the decoded envelope. */
#define LUA_REGISTER_FN                                     \
    LUA_PAYLOAD_FN                                          \
    LUA_PAYLOAD_FAST_FN                                     \
    "local function register(m, now, key, want_env)\n"      \
    "  local tag, p, env\n"                                 \
    "  if not want_env then tag, p = payload_fast(m) end\n" \
    "  if not tag then tag, p, env = payload(m, key) end\n" \
    "  if not tag then return false, env end\n"             \
    "  redis.call('ZADD', 'unacked_index', now, tag)\n"     \
    "  redis.call('HSET', 'unacked', tag, p)\n"             \
    "  return tag, env\n"                                   \
    "end\n"

/* POP: KEYS = in-flight lists (redis_wait.c) and queue keys, in the order to
 * take from; ARGV = max, now, size limit, record key, call number, record
 * lifetime (s), a count P, then the queue key of each of KEYS[1..P] (a queue
 * key maps to itself; keys past P are queue keys). A POP after a wake-up has
 * only the lists it filled; any other has each queue key's list just before
 * the key, in priority-major order: what the wait moved there came off that
 * queue before anything still in it, so it goes first.
 * Returns {envelope, tag or '', queue key, ...}; what an in-flight list still
 * holds when the window is full goes back to its queue, as the next message
 * taken there. Records the call's number and tags under the record key: if
 * the answer is lost with the connection, RECOVER gives them back. An envelope over the limit is
 * registered whole but returned cut down (redis.h's form, no head): the ids a
 * FAILURE needs as a small envelope with an empty body, so the worker never
 * reads more than that of it. RPOP comes first: under maxmemory a script that
 * already wrote may go on writing, so a popped message is always registered. */
static cel_redis_script_t script_pop = {
    LUA_REGISTER_FN
    "local function cut(m, env)\n"
    "  local s = ''\n"
    "  if type(env) == 'table' then\n"
    "    local h = type(env.headers) == 'table' and env.headers or {}\n"
    "    local p = type(env.properties) == 'table' and env.properties or {}\n"
    "    local ok, e = pcall(cjson.encode, {body = '', headers = {id = h.id, task = h.task,\n"
    "      root_id = h.root_id, parent_id = h.parent_id, group = h.group},\n"
    "      properties = {correlation_id = p.correlation_id, reply_to = p.reply_to}})\n"
    "    if ok and #e <= 262144 then s = e end\n"
    "  end\n"
    "  return '\\0celeriac-cut ' .. #m .. ' 0\\n' .. s\n"
    "end\n"
    "local out, tags = {}, {}\n"
    "local n = tonumber(ARGV[1])\n"
    "local lim = tonumber(ARGV[3]) or 0\n"
    "local lists = tonumber(ARGV[7]) or 0\n"
    "for i, k in ipairs(KEYS) do\n"
    "  local q = k\n"
    "  if i <= lists then q = ARGV[7 + i] end\n"
    "  while n > 0 do\n"
    "    local m = redis.call('RPOP', k)\n"
    "    if not m then break end\n"
    "    n = n - 1\n"
    "    local big = lim > 0 and #m > lim\n"
    "    local tag, env = register(m, ARGV[2], q, big)\n"
    "    if big then m = cut(m, env) end\n"
    "    out[#out + 1] = m\n"
    "    out[#out + 1] = tag or ''\n"
    "    out[#out + 1] = q\n"
    "    if tag then tags[#tags + 1] = tag end\n"
    "  end\n"
    "  if n == 0 then break end\n"
    "end\n"
    "for i = 1, lists do\n"
    "  while KEYS[i] ~= ARGV[7 + i] do\n"
    "    local m = redis.call('LPOP', KEYS[i])\n"
    "    if not m then break end\n"
    "    redis.call('RPUSH', ARGV[7 + i], m)\n"
    "  end\n"
    "end\n"
    "if #tags > 0 then\n"
    "  redis.call('SET', ARGV[4], cjson.encode({ARGV[5], tags}), 'EX', ARGV[6])\n"
    "end\n"
    "return out\n",
    { 0 }
};


/* REGISTER: ARGV = envelope, now, key. For held messages the server lost. */
static cel_redis_script_t script_register = {
    LUA_REGISTER_FN "local tag = register(ARGV[1], ARGV[2], ARGV[3])\nreturn tag or ''\n", { 0 }
};

/* Shared Lua: kombu's restore_by_tag + _do_restore_message, which puts a
 * message back on the key of its priority step (properties.priority 0-2: the
 * queue itself, 3-5, 6-8, 9: <queue>\x06\x16<step>). */
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
    "  local pri = 0\n"                                                                         \
    "  if type(M.properties) == 'table' then pri = tonumber(M.properties.priority) or 0 end\n"  \
    "  local suf = ''\n"                                                                        \
    "  if pri >= 9 then suf = '\\006\\0229' elseif pri >= 6 then suf = '\\006\\0226'\n"         \
    "  elseif pri >= 3 then suf = '\\006\\0223' end\n"                                          \
    "  local body = cjson.encode(M)\n"                                                          \
    "  for _, q in ipairs(queues) do\n"                                                         \
    "    if leftmost then redis.call('LPUSH', q .. suf, body)\n"                                \
    "    else redis.call('RPUSH', q .. suf, body) end\n"                                        \
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

/* RECOVER: ARGV = record key, call number. After a POP whose answer was lost
 * with its connection (and no answer to a later one came): when the record is
 * that call's or a later one's, the messages it took that are still in
 * `unacked` go back to their queues, at the end the next POP takes first, in
 * their order. Returns how many. */
static cel_redis_script_t script_recover = {
    LUA_RESTORE_FN
    "local rec = redis.call('GET', ARGV[1])\n"
    "if not rec then return 0 end\n"
    "redis.call('DEL', ARGV[1])\n"
    "local ok, v = pcall(cjson.decode, rec)\n"
    "if not ok or type(v) ~= 'table' or type(v[2]) ~= 'table' or\n"
    "   (tonumber(v[1]) or 0) < tonumber(ARGV[2]) then\n"
    "  return 0\n"
    "end\n"
    "local n = 0\n"
    "for i = #v[2], 1, -1 do n = n + restore(v[2][i], false) end\n"
    "return n\n",
    { 0 }
};

/* REQUEUE: ARGV = tag, our copy of the envelope ('' when none), its key. Gives
 * one held message back (restore_at_shutdown); when the server lost its
 * `unacked` entry, from our copy. */
static cel_redis_script_t script_requeue = {
    LUA_PAYLOAD_FN LUA_RESTORE_FN
    "if ARGV[2] ~= '' and redis.call('HEXISTS', 'unacked', ARGV[1]) == 0 then\n"
    "  local tag, p = payload(ARGV[2], ARGV[3])\n"
    "  if tag == ARGV[1] then redis.call('HSET', 'unacked', tag, p) end\n"
    "end\n"
    "return restore(ARGV[1], false)\n",
    { 0 }
};

/* TOUCH: ARGV = now, tags... Refreshes the index entry of each held message
 * still in `unacked` and returns the tags that are not (the server lost them). */
static cel_redis_script_t script_touch = {
    "local missing = {}\n"
    "for i = 2, #ARGV do\n"
    "  if redis.call('HEXISTS', 'unacked', ARGV[i]) == 1 then\n"
    "    redis.call('ZADD', 'unacked_index', ARGV[1], ARGV[i])\n"
    "  else\n"
    "    missing[#missing + 1] = ARGV[i]\n"
    "  end\n"
    "end\n"
    "return missing\n",
    { 0 }
};

/* PUBLISH: ARGV = envelope, exchange, routing key, exchange type, priority
 * suffix. kombu's basic_publish on Redis: the default exchange ('') puts the
 * message on the queue the routing key names; another exchange looks up its
 * bindings in _kombu.binding.<exchange> (direct: equal routing keys; topic:
 * kombu's wildcards, '*' as '.*?[^.]', '#' as '.*?') and LPUSHes to each
 * queue once; no binding: dropped, as kombu drops it. Returns the count. */
static cel_redis_script_t script_publish = {
    "local env, ex, rk, typ, suf = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]\n"
    "local function topic(key, s)\n"
    "  local parts = {}\n"
    "  for w in string.gmatch(key .. '.', '([^.]*)%.') do\n"
    "    if w == '*' then parts[#parts + 1] = '.-[^%.]'\n"
    "    elseif w == '#' then parts[#parts + 1] = '.-'\n"
    "    else parts[#parts + 1] = (string.gsub(w, '[%^%$%(%)%%%.%[%]%*%+%-%?]', '%%%0')) end\n"
    "  end\n"
    "  return string.match(s, '^' .. table.concat(parts, '%.') .. '$') ~= nil\n"
    "end\n"
    "local queues = {}\n"
    "if ex == '' then\n"
    "  queues[1] = rk\n"
    "else\n"
    "  local seen = {}\n"
    "  for _, b in ipairs(redis.call('SMEMBERS', '_kombu.binding.' .. ex)) do\n"
    "    local r, q = string.match(b, '^(.-)\\6\\22.-\\6\\22(.*)$')\n"
    "    if q and not seen[q] then\n"
    "      local hit\n"
    "      if typ == 'topic' then hit = topic(r, rk) else hit = r == rk end\n"
    "      if hit then seen[q] = true; queues[#queues + 1] = q end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "for _, q in ipairs(queues) do redis.call('LPUSH', q .. suf, env) end\n"
    "return #queues\n",
    { 0 }
};

static cel_redis_script_t *all_scripts[] = { &script_pop,     &script_register, &script_restore,
                                             &script_requeue, &script_touch,    &script_publish,
                                             &script_recover, &cel_redis_wait_script_lease,
                                             &cel_redis_wait_script_rescue,
                                             &cel_redis_wait_script_giveback };

typedef struct redis_broker {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_broker_cbs_t cbs;
    void *priv;
    cel_redis_t *cmd;
    cel_redis_wait_t *wait; /* the idle wait (redis_wait.c) */
    char *queues[CEL_MAX_QUEUES]; /* consumed now (add/cancel_consumer change it) */
    int nqueues;
    char **keys; /* nqueues * 4 priority keys (room for CEL_MAX_QUEUES) */
    size_t *keylens;
    char **lists; /* the in-flight list of each of keys (redis_wait.c) */
    size_t *listlens;
    int nkeys;
    char uuid[37]; /* names this worker's in-flight lists */
    int rotate;   /* fairness: first queue of the next fetch */
    int fetching; /* a POP is in flight */
    int idle;     /* the last POP found the queues empty: waiting */
    int pop_lists; /* the POP in flight looks only at in-flight lists */
    int stopped;
    int pending;            /* commands in flight on cmd */
    cel_held_t *held;       /* tag -> copy of each registered message we hold */
    uv_timer_t retry_timer; /* the next fetch after an error reply */
    int fetch_errors;       /* error replies in a row */
    int backing_off;        /* retry_timer runs: no fetch until it fires */
    uv_timer_t restore_timer;
    char popkey[64];              /* where the POP script records the tags it took */
    char poplife[24];             /* the record's lifetime in s: the visibility timeout (at
                                   * least 60), past which restore_visible gives back anyway */
    unsigned long long pop_calls; /* POP calls sent; the last one's number is in the record */
    unsigned long long pop_lost;  /* the first POP whose answer was lost (none received since), or 0 */
    unsigned long long recovering; /* the number RECOVER is in flight for, or 0 */
    char **reack;                 /* tags whose ack was lost with the connection */
    size_t nreack, reack_cap;
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

/* The keys a POP that is not a wake-up's takes from, in order: for each queue
 * key (priority-major, the first queue rotating), its in-flight list, then the
 * key itself; qkeys gets the queue key of each. Returns how many. */
static int fetch_keys(redis_broker_t *b, const char **keys, size_t *lens, const char **qkeys,
                      size_t *qlens) {
    int nq = b->nqueues;
    int n = 0;
    if (nq == 0) return 0;
    for (int p = 0; p < PRIORITY_STEPS; p++)
        for (int i = 0; i < nq; i++) {
            int k = ((i + b->rotate) % nq) * PRIORITY_STEPS + p;
            keys[n] = b->lists[k], lens[n] = b->listlens[k];
            qkeys[n] = b->keys[k], qlens[n++] = b->keylens[k];
            keys[n] = b->keys[k], lens[n] = b->keylens[k];
            qkeys[n] = b->keys[k], qlens[n++] = b->keylens[k];
        }
    b->rotate = (b->rotate + 1) % nq;
    return n;
}

/* Hands one message to the consumer. tag NULL: not registered in unacked. A
 * registered message is copied into b->held first, so that it can be
 * registered again if the server loses it. */
static void hand_over(redis_broker_t *b, const char *raw, size_t len, const char *tag,
                      const char *key) {
    if (tag && cel_held_put(b->held, tag, raw, len, key) != CEL_OK)
        cel_warn("broker: out of memory keeping a copy of message %s", tag);
    cel_broker_msg_t m = { tag, key, raw, len, NULL };
    b->cbs.on_message(b->priv, &m);
}

/* A message over --max-message-size, as redis.h's cut-down form: the consumer
 * sees its real size and, for peek, an envelope with an empty body and the
 * original's ids (from the POP script). */
typedef struct cut_view {
    const char *text;
    size_t len;
} cut_view_t;

static int hand_over_cut(redis_broker_t *b, const char *s, size_t n, const char *tag,
                         const char *key) {
    size_t orig, hl, tl;
    const char *head, *tail;
    if (!cel_respcut_parse(s, n, &orig, &head, &hl, &tail, &tl)) return 0;
    char *stub = NULL; /* the POP script's small envelope of the ids (may be empty) */
    size_t sl = 0;
    if (tl && tail[0] == '{' && (stub = malloc(tl))) memcpy(stub, tail, tl), sl = tl;
    cut_view_t view = { stub ? stub : "", sl };
    cel_broker_msg_t m = { tag, key, view.text, orig, &view };
    b->cbs.on_message(b->priv, &m);
    free(stub);
    return 1;
}

static void deliver(redis_broker_t *b, redisReply *m, redisReply *tag, redisReply *key) {
    if (m->type != REDIS_REPLY_STRING) return;
    const char *t = tag && tag->type == REDIS_REPLY_STRING && tag->len > 0 ? tag->str : NULL;
    const char *k = key && key->type == REDIS_REPLY_STRING ? key->str : "";
    if (hand_over_cut(b, m->str, m->len, t, k)) return;
    hand_over(b, m->str, m->len, t, k);
}

static void on_retry_timer(uv_timer_t *t) {
    redis_broker_t *b = t->data;
    b->backing_off = 0;
    fetch(b, 0);
}

/* An error reply to a fetch: log (rate-bounded) and fetch again after a backoff
 * instead of at once, so a server that refuses does not make us spin. */
static void back_off(redis_broker_t *b) {
    if (b->backing_off) return;
    b->backing_off = 1;
    uv_timer_start(&b->retry_timer, on_retry_timer, cel_redis_backoff_ms(b->fetch_errors++), 0);
}

static void fetch_failed(redis_broker_t *b, cel_redis_t *conn, const char *what,
                         const char *error) {
    cel_redis_log_error(conn, what, error);
    back_off(b);
}

static void on_pop(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->fetching = 0;
    b->pending--;
    int got = 0;
    if (!reply) {
        /* Connection lost: it may have run. on_cmd_state gives back what it
         * took (RECOVER) before fetching again. */
        if (!b->stopped && !b->pop_lost) b->pop_lost = b->pop_calls;
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        fetch_failed(b, r, "pop script failed", reply->str);
        return;
    }
    b->fetch_errors = 0;
    if (reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 2 < reply->elements; i += 3) {
            deliver(b, reply->element[i], reply->element[i + 1], reply->element[i + 2]);
            got++;
        }
    }
    /* Empty: wait for the next message (after a look at the queues when this
     * POP looked only at in-flight lists). */
    fetch(b, got == 0 && !b->pop_lists);
}

/* redis_wait.c's news: a message is in an in-flight list, a wait timed out
 * (or may start now), or an error reply (wait again after a backoff). */
static void on_wait(void *priv, int moved) {
    redis_broker_t *b = priv;
    if (moved < 0) {
        back_off(b); /* (redis_wait.c logged the error) */
    } else if (moved) {
        fetch(b, 0);
    } else if (b->idle) {
        fetch(b, 1);
    }
}

static void on_recovered(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->pending--;
    unsigned long long call = b->recovering;
    b->recovering = 0;
    if (!reply) {
        /* Lost again: try again at the next reconnect, from this call on
         * (a POP sent behind it ran only if it ran). */
        if (!b->stopped && (!b->pop_lost || call < b->pop_lost)) b->pop_lost = call;
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        cel_redis_log_error(r, "could not give back what a lost fetch took", reply->str);
    } else if (reply->type == REDIS_REPLY_INTEGER && reply->integer > 0) {
        cel_warn("broker: gave back %lld message(s) a fetch took while its connection was lost",
                 reply->integer);
    }
}

/* After a reconnect: RECOVER for the POP whose answer was lost, sent before
 * the next POP (one connection: they run in that order). */
static void recover_lost_pop(redis_broker_t *b) {
    if (!b->pop_lost || b->recovering) return;
    char call[24];
    snprintf(call, sizeof(call), "%llu", b->pop_lost);
    const char *args[] = { b->popkey, call };
    if (cel_redis_evalsha(b->cmd, &script_recover, on_recovered, b, 0, NULL, NULL, 2, args,
                          NULL) == CEL_OK) {
        b->pending++;
        b->recovering = b->pop_lost;
        b->pop_lost = 0;
    }
}

/* Keeps tag to ack again at the next reconnect. */
static void reack_later(redis_broker_t *b, const char *tag) {
    if (b->nreack == b->reack_cap) {
        size_t cap = b->reack_cap ? b->reack_cap * 2 : 16;
        char **n = realloc(b->reack, cap * sizeof(*n));
        if (!n) goto fail;
        b->reack = n;
        b->reack_cap = cap;
    }
    if (!(b->reack[b->nreack] = strdup(tag))) goto fail;
    b->nreack++;
    return;
fail:
    cel_error("broker: out of memory keeping a lost ack of %s; the message will be delivered "
              "again after the visibility timeout",
              tag);
}

typedef struct reack_ctx {
    redis_broker_t *b;
    char **tags;
    size_t n;
    int left;
    int lost;
} reack_ctx_t;

static void on_reacked(cel_redis_t *r, redisReply *reply, void *priv) {
    reack_ctx_t *q = priv;
    redis_broker_t *b = q->b;
    b->pending--;
    if (!reply) q->lost = 1;
    else if (reply->type == REDIS_REPLY_ERROR) cel_redis_log_error(r, "ack failed", reply->str);
    if (--q->left > 0) return;
    for (size_t i = 0; i < q->n; i++) {
        if (q->lost && !b->stopped) reack_later(b, q->tags[i]);
        free(q->tags[i]);
    }
    free(q->tags);
    free(q);
}

/* After a reconnect: the acks that were lost with the connection, again (a
 * ZREM and an HDEL of every tag; acking twice does nothing). */
static void reack_lost(redis_broker_t *b) {
    if (!b->nreack) return;
    reack_ctx_t *q = calloc(1, sizeof(*q));
    const char **argv = malloc((b->nreack + 2) * sizeof(*argv));
    if (!q || !argv) {
        free(q);
        free(argv);
        return; /* kept for the next reconnect */
    }
    q->b = b;
    q->tags = b->reack;
    q->n = b->nreack;
    b->reack = NULL;
    b->nreack = b->reack_cap = 0;
    for (size_t i = 0; i < q->n; i++) argv[i + 2] = q->tags[i];
    argv[0] = "ZREM", argv[1] = "unacked_index";
    if (cel_redis_command(b->cmd, on_reacked, q, (int)q->n + 2, argv, NULL) == CEL_OK)
        q->left++, b->pending++;
    argv[0] = "HDEL", argv[1] = "unacked";
    if (cel_redis_command(b->cmd, on_reacked, q, (int)q->n + 2, argv, NULL) == CEL_OK)
        q->left++, b->pending++;
    free(argv);
    if (q->left == 0) {
        q->left = 1, b->pending++;
        on_reacked(b->cmd, NULL, q); /* not sent: keep them */
    }
}

/* Starts the next fetch unless one is in flight: the POP script, or the
 * wait when block is set (the last POP found the queues empty) and no
 * in-flight list may hold a message. */
static void fetch(redis_broker_t *b, int block) {
    if (b->fetching || b->backing_off) return;
    if (b->stopped || !cel_redis_up(b->cmd)) return;
    if (b->pop_lost) recover_lost_pop(b);
    int cap = b->cbs.capacity(b->priv);
    if (b->nqueues == 0) return;
    if (cap <= 0) {
        /* Full: a wait armed while idle may still have moved a message for us;
         * a POP that takes nothing gives it back to its queue, where another
         * worker's wait gets it, instead of keeping it until we have room. */
        if (!cel_redis_wait_any_moved(b->wait)) return;
        cap = 0;
    } else if (block && !cel_redis_wait_any_moved(b->wait)) {
        b->idle = 1;
        cel_redis_wait_arm(b->wait);
        return;
    }
    b->idle = 0;
    const char *keys[POP_KEYS_MAX];
    size_t lens[POP_KEYS_MAX];
    const char *args[7 + POP_KEYS_MAX];
    size_t alens[7 + POP_KEYS_MAX];
    /* A POP after a wait looks only at the lists the wait filled (the next one
     * looks at the queues, each after its list): the wake-up costs one short
     * script. */
    int p = cel_redis_wait_moved(b->wait, keys, lens, args + 7, alens + 7, POP_LISTS_MAX);
    int lists_only = p > 0;
    int n = lists_only ? p : (p = fetch_keys(b, keys, lens, args + 7, alens + 7));
    char max[16], now[32], lim[32], call[24];
    snprintf(max, sizeof(max), "%d", cap > POP_BATCH_MAX ? POP_BATCH_MAX : cap);
    snprintf(now, sizeof(now), "%.6f", now_unix());
    snprintf(lim, sizeof(lim), "%ld", b->cfg->max_message_size);
    snprintf(call, sizeof(call), "%llu", b->pop_calls + 1);
    char lists[16];
    snprintf(lists, sizeof(lists), "%d", p);
    const char *fixed[] = { max, now, lim, b->popkey, call, b->poplife, lists };
    for (int i = 0; i < 7; i++) args[i] = fixed[i], alens[i] = strlen(fixed[i]);
    if (cel_redis_evalsha(b->cmd, &script_pop, on_pop, b, n, keys, lens, 7 + p, args, alens) ==
        CEL_OK) {
        b->pop_calls++;
        b->fetching = 1;
        b->pop_lists = lists_only;
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
        cel_redis_log_error(r, "restore failed", reply->str);
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
    if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_redis_log_error(r, "queue binding failed", reply->str);
}

/* kombu's queue_bind on Redis: SADD _kombu.binding.<exchange>
 * "<routing key>\x06\x16\x06\x16<queue>"; the direct queue goes to C.dq2
 * (cel_options_queue_route). */
static void bind_queue(redis_broker_t *b, const char *q) {
    static const char prefix[] = "_kombu.binding.";
    const char *ex, *rk;
    cel_options_queue_route(b->cfg, q, &ex, &rk);
    size_t ql = strlen(q), el = strlen(ex), rl = strlen(rk);
    char *key = malloc(sizeof(prefix) + el), *member = malloc(rl + ql + 5);
    if (key && member) {
        memcpy(key, prefix, sizeof(prefix) - 1);
        memcpy(key + sizeof(prefix) - 1, ex, el + 1);
        memcpy(member, rk, rl);
        memcpy(member + rl, "\x06\x16\x06\x16", 4);
        memcpy(member + rl + 4, q, ql);
        const char *argv[] = { "SADD", key, member };
        size_t lens[] = { 4, sizeof(prefix) - 1 + el, rl + ql + 4 };
        if (cel_redis_command(b->cmd, on_bind, b, 3, argv, lens) == CEL_OK) b->pending++;
    }
    free(key);
    free(member);
}

static void free_keys(redis_broker_t *b) {
    for (int i = 0; i < b->nkeys; i++) {
        free(b->keys[i]);
        free(b->lists[i]);
    }
    b->nkeys = 0;
}

/* Rebuilds the priority keys of the queues consumed now, and their lists. */
static int build_keys(redis_broker_t *b) {
    free_keys(b);
    for (int q = 0; q < b->nqueues; q++)
        for (int p = 0; p < PRIORITY_STEPS; p++) {
            size_t ql = strlen(b->queues[q]);
            char *k = malloc(ql + 8);
            if (!k) return CEL_ENOMEM;
            memcpy(k, b->queues[q], ql + 1);
            size_t n = ql;
            if (p) n += (size_t)snprintf(k + ql, 8, "\x06\x16%d", priority_steps[p]);
            char *l = cel_redis_wait_list_name(b->uuid, k, n, &b->listlens[b->nkeys]);
            if (!l) {
                free(k);
                return CEL_ENOMEM;
            }
            b->keys[b->nkeys] = k;
            b->lists[b->nkeys] = l;
            b->keylens[b->nkeys++] = n;
        }
    b->rotate = 0;
    return CEL_OK;
}

static int redis_add_queue(void *impl, const char *queue) {
    redis_broker_t *b = impl;
    for (int i = 0; i < b->nqueues; i++)
        if (strcmp(b->queues[i], queue) == 0) return CEL_OK;
    if (b->nqueues >= CEL_MAX_QUEUES || strlen(queue) > CEL_MAX_QUEUE_NAME) return CEL_ELIMIT;
    if (!(b->queues[b->nqueues] = strdup(queue))) return CEL_ENOMEM;
    b->nqueues++;
    int rc = build_keys(b);
    if (cel_redis_up(b->cmd)) bind_queue(b, queue);
    if (rc == CEL_OK) rc = cel_redis_wait_keys(b->wait, b->keys, b->keylens, b->nkeys);
    fetch(b, 0);
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
        int rc = build_keys(b);
        if (rc == CEL_OK) rc = cel_redis_wait_keys(b->wait, b->keys, b->keylens, b->nkeys);
        fetch(b, 0);
        return rc;
    }
    return CEL_ENOTFOUND;
}

static json_t *redis_queues(const void *impl) {
    const redis_broker_t *b = impl;
    json_t *a = json_array();
    for (int i = 0; i < b->nqueues; i++) json_array_append_new(a, json_string(b->queues[i]));
    return a;
}

/* ---- held messages the server lost ------------------------------------ */

static void send_ack(redis_broker_t *b, const char *tag, cel_broker_done_fn done, void *priv);

typedef struct rereg_ctx {
    redis_broker_t *b;
    char tag[];
} rereg_ctx_t;

static void on_reregistered(cel_redis_t *r, redisReply *reply, void *priv) {
    rereg_ctx_t *q = priv;
    redis_broker_t *b = q->b;
    b->pending--;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        cel_redis_log_error(r, "could not register a held message again",
                            reply ? reply->str : NULL);
    } else {
        /* Acked meanwhile (a store_ack runs on the backend's connection and
         * may have reached the server first): ack the registration again. */
        const cel_held_msg_t *h = cel_held_get(b->held, q->tag);
        if (!h || h->acking) send_ack(b, q->tag, NULL, NULL);
    }
    free(q);
}

/* Registers a held message in unacked again (REGISTER from our copy). */
static void reregister(redis_broker_t *b, const cel_held_msg_t *h) {
    char now[32];
    snprintf(now, sizeof(now), "%.6f", now_unix());
    const char *args[] = { h->raw, now, h->key };
    size_t lens[] = { h->len, strlen(now), strlen(h->key) };
    size_t tl = strlen(h->tag) + 1;
    rereg_ctx_t *q = malloc(sizeof(*q) + tl);
    if (!q) return;
    q->b = b;
    memcpy(q->tag, h->tag, tl);
    if (cel_redis_evalsha(b->cmd, &script_register, on_reregistered, q, 0, NULL, NULL, 3, args,
                          lens) == CEL_OK)
        b->pending++;
    else free(q);
}

static void on_touched(cel_redis_t *r, redisReply *reply, void *priv) {
    redis_broker_t *b = priv;
    b->pending--;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        if (reply) cel_redis_log_error(r, "touch failed", reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) return;
    size_t again = 0;
    for (size_t i = 0; i < reply->elements; i++) {
        redisReply *t = reply->element[i];
        if (t->type != REDIS_REPLY_STRING) continue;
        const cel_held_msg_t *h = cel_held_get(b->held, t->str);
        if (!h || h->acking) continue; /* acked (or being acked) or given back meanwhile */
        reregister(b, h);
        again++;
    }
    if (again)
        cel_warn("broker: the server lost %zu message(s) this worker holds (FLUSHALL, or a restart "
                 "without persistence?); registered them in unacked again",
                 again);
}

/* TOUCH script for tags[0..n): refreshes them, and registers again from our
 * copies those the server no longer has. */
static void touch_batch(redis_broker_t *b, const char **tags, int n) {
    const char *args[TOUCH_BATCH + 1];
    char now[32];
    snprintf(now, sizeof(now), "%.6f", now_unix());
    args[0] = now;
    for (int i = 0; i < n; i++) args[i + 1] = tags[i];
    if (cel_redis_evalsha(b->cmd, &script_touch, on_touched, b, 0, NULL, NULL, n + 1, args, NULL) ==
        CEL_OK)
        b->pending++;
}

typedef struct verify {
    redis_broker_t *b;
    const char *tags[TOUCH_BATCH];
    int n;
} verify_t;

static void verify_one(void *priv, const cel_held_msg_t *m) {
    verify_t *v = priv;
    v->tags[v->n++] = m->tag;
    if (v->n == TOUCH_BATCH) {
        touch_batch(v->b, v->tags, v->n);
        v->n = 0;
    }
}

/* After a reconnect: every held message is touched, and registered again if
 * the server came back without it. */
static void verify_held(redis_broker_t *b) {
    verify_t v = { .b = b };
    cel_held_each(b->held, verify_one, &v);
    if (v.n) touch_batch(b, v.tags, v.n);
}

static void on_cmd_state(cel_redis_t *r, int up, void *priv) {
    redis_broker_t *b = priv;
    cel_metrics_broker_state(up);
    if (up) {
        /* Declare the bindings as kombu's queue_bind does, check what we hold,
         * then restore. */
        for (int i = 0; i < b->nqueues; i++) bind_queue(b, b->queues[i]);
        reack_lost(b);
        verify_held(b);
        recover_lost_pop(b);
        cel_redis_wait_cmd_up(b->wait);
        restore_visible(b);
        fetch(b, 0);
    } else {
        b->fetching = b->idle = 0;
    }
    if (b->cbs.on_state) b->cbs.on_state(b->priv, up);
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
    b->lists = calloc(CEL_MAX_QUEUES * PRIORITY_STEPS, sizeof(char *));
    b->listlens = calloc(CEL_MAX_QUEUES * PRIORITY_STEPS, sizeof(size_t));
    b->held = cel_held_new();
    char *id = b->uuid;
    cel_events_uuid(id);
    snprintf(b->popkey, sizeof(b->popkey), "_celeriac.pop.%s", id);
    snprintf(b->poplife, sizeof(b->poplife), "%.0f",
             cfg->visibility_timeout < 60 ? 60 : cfg->visibility_timeout);
    if (!b->keys || !b->keylens || !b->lists || !b->listlens || !b->held) goto fail;
    for (int q = 0; q < cfg->nqueues; q++) {
        if (!(b->queues[q] = strdup(cfg->queues[q]))) goto fail;
        b->nqueues++;
    }
    if (build_keys(b) != CEL_OK) goto fail;
    uv_timer_init(loop, &b->restore_timer);
    b->restore_timer.data = b;
    uv_timer_init(loop, &b->retry_timer);
    b->retry_timer.data = b;
    double every = cfg->visibility_timeout < 10 ? cfg->visibility_timeout : 10;
    uv_timer_start(&b->restore_timer, on_restore_timer, (uint64_t)(every * 1000),
                   (uint64_t)(every * 1000));
    b->cmd = cel_redis_new(loop, &cfg->broker, "broker", all_scripts,
                           (int)(sizeof(all_scripts) / sizeof(all_scripts[0])), on_cmd_state, b);
    if (!b->cmd) goto fail; /* out of memory at start-up: caller exits */
    b->wait = cel_redis_wait_new(loop, cfg, b->cmd, id, on_wait, b);
    if (!b->wait || cel_redis_wait_keys(b->wait, b->keys, b->keylens, b->nkeys) != CEL_OK)
        goto fail;
    return b;
fail:
    cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (int i = 0; i < b->nqueues; i++) free(b->queues[i]);
    if (b->keys && b->lists) free_keys(b);
    free(b->keys);
    free(b->keylens);
    free(b->lists);
    free(b->listlens);
    cel_held_free(b->held);
    free(b);
    return NULL;
}

typedef struct done_ctx {
    redis_broker_t *b;
    cel_broker_done_fn done;
    void *priv;
    int left;
    int ok;
    char *tag; /* an ack's tag (owned), NULL for a publish */
    int lost;  /* a part's answer was lost with the connection */
} done_ctx_t;

static void on_done_part(cel_redis_t *r, redisReply *reply, void *priv) {
    done_ctx_t *d = priv;
    d->b->pending--;
    if (!reply) d->lost = 1;
    if (!reply || reply->type == REDIS_REPLY_ERROR) {
        if (reply) cel_redis_log_error(r, "ack, requeue or publish failed", reply->str);
        d->ok = 0;
    }
    if (--d->left > 0) return;
    if (d->tag && d->lost && !d->b->stopped) {
        /* An ack lost with the connection is sent again when it is back. */
        reack_later(d->b, d->tag);
        d->ok = 1;
    }
    if (d->done) d->done(d->priv, d->ok);
    free(d->tag);
    free(d);
}

static void redis_ack(void *impl, const char *tag, cel_broker_done_fn done, void *priv) {
    redis_broker_t *b = impl;
    cel_held_del(b->held, tag);
    send_ack(b, tag, done, priv);
}

/* kombu's ack: ZREM unacked_index + HDEL unacked; one lost with the
 * connection is sent again at the reconnect. */
static void send_ack(redis_broker_t *b, const char *tag, cel_broker_done_fn done, void *priv) {
    done_ctx_t *d = malloc(sizeof(*d));
    if (!d) {
        if (done) done(priv, 0);
        return;
    }
    *d = (done_ctx_t){ b, done, priv, 0, 1, strdup(tag), 0 };
    const char *zrem[] = { "ZREM", "unacked_index", tag };
    const char *hdel[] = { "HDEL", "unacked", tag };
    if (cel_redis_command(b->cmd, on_done_part, d, 3, zrem, NULL) == CEL_OK)
        d->left++, b->pending++;
    if (cel_redis_command(b->cmd, on_done_part, d, 3, hdel, NULL) == CEL_OK)
        d->left++, b->pending++;
    if (d->left == 0) {
        /* Not sent (the connection is down): sent when it is back. */
        if (!b->stopped) reack_later(b, tag);
        if (done) done(priv, !b->stopped);
        free(d->tag);
        free(d);
    } else if (d->left == 1) {
        d->ok = 0; /* half sent: acked again at the next reconnect */
        d->lost = 1;
    }
}

typedef struct requeue_ctx {
    done_ctx_t d;
    char *tag;
} requeue_ctx_t;

static void on_requeued(cel_redis_t *r, redisReply *reply, void *priv) {
    requeue_ctx_t *q = priv;
    redis_broker_t *b = q->d.b;
    b->pending--;
    int ok = reply && reply->type != REDIS_REPLY_ERROR;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_redis_log_error(r, "could not give a message back", reply->str);
    /* Given back (or not ours to give any more): our copy goes. When it could
     * not be sent back it stays in unacked, restored after the visibility
     * timeout. */
    cel_held_del(b->held, q->tag);
    if (q->d.done) q->d.done(q->d.priv, ok);
    free(q->tag);
    free(q);
}

static void redis_requeue(void *impl, const char *tag, cel_broker_done_fn done, void *priv) {
    redis_broker_t *b = impl;
    requeue_ctx_t *q = calloc(1, sizeof(*q));
    if (!q || !(q->tag = strdup(tag))) {
        free(q);
        if (done) done(priv, 0);
        return;
    }
    q->d = (done_ctx_t){ b, done, priv, 1, 1, NULL, 0 };
    const cel_held_msg_t *h = cel_held_get(b->held, tag);
    const char *args[] = { tag, h ? h->raw : "", h ? h->key : "" };
    size_t lens[] = { strlen(tag), h ? h->len : 0, h ? strlen(h->key) : 0 };
    if (cel_redis_evalsha(b->cmd, &script_requeue, on_requeued, q, 0, NULL, NULL, 3, args, lens) ==
        CEL_OK) {
        b->pending++;
    } else {
        cel_held_del(b->held, tag);
        free(q->tag);
        free(q);
        if (done) done(priv, 0);
    }
}

/* Held messages are refreshed four times per visibility timeout, so a
 * restore (ours or a Python worker's) never takes one that is running, and at
 * least every TOUCH_MAX_S, so a server that lost them (FLUSHALL) gets them
 * back soon. */
static double redis_touch_interval(const void *impl) {
    const redis_broker_t *b = impl;
    double every = b->cfg->visibility_timeout / 4;
    if (every > TOUCH_MAX_S) every = TOUCH_MAX_S;
    return every < 0.5 ? 0.5 : every;
}

static void redis_touch(void *impl, const char **tags, int n) {
    redis_broker_t *b = impl;
    for (int i = 0; i < n; i += TOUCH_BATCH)
        touch_batch(b, tags + i, n - i < TOUCH_BATCH ? n - i : TOUCH_BATCH);
}

static void redis_stop(void *impl) {
    redis_broker_t *b = impl;
    b->stopped = 1;
    uv_timer_stop(&b->restore_timer);
    uv_timer_stop(&b->retry_timer);
    cel_redis_wait_stop(b->wait);
}

static void redis_forget(void *impl, const char *tag) {
    cel_held_del(((redis_broker_t *)impl)->held, tag);
}

static void redis_acking(void *impl, const char *tag) {
    cel_held_set_acking(((redis_broker_t *)impl)->held, tag);
}

static int redis_pending(const void *impl) {
    const redis_broker_t *b = impl;
    return b->pending + (b->wait ? cel_redis_wait_pending(b->wait) : 0);
}

static void close_step(void *priv) {
    redis_broker_t *b = priv;
    if (--b->closing_left > 0) return;
    free_keys(b);
    for (int i = 0; i < b->nqueues; i++) free(b->queues[i]);
    free(b->keys);
    free(b->keylens);
    free(b->lists);
    free(b->listlens);
    cel_held_free(b->held);
    for (size_t i = 0; i < b->nreack; i++) free(b->reack[i]);
    free(b->reack);
    void (*cb)(void *) = b->on_closed;
    void *cp = b->closed_priv;
    free(b);
    if (cb) cb(cp);
}

static void on_timer_closed(uv_handle_t *h) { close_step(h->data); }

/* The waits end first: what they moved meanwhile is given back on the
 * command connection, which closes after. */
static void on_wait_closed(void *priv) {
    redis_broker_t *b = priv;
    b->wait = NULL;
    cel_redis_close(b->cmd, close_step, b);
    close_step(b);
}

static void redis_close(void *impl, void (*on_closed)(void *), void *priv) {
    redis_broker_t *b = impl;
    b->stopped = 1;
    b->on_closed = on_closed;
    b->closed_priv = priv;
    b->closing_left = 4;
    uv_timer_stop(&b->restore_timer);
    uv_timer_stop(&b->retry_timer);
    uv_close((uv_handle_t *)&b->restore_timer, on_timer_closed);
    uv_close((uv_handle_t *)&b->retry_timer, on_timer_closed);
    cel_redis_wait_close(b->wait, on_wait_closed, b);
}

/* Sends m as kombu's Redis transport does: the envelope with a fresh
 * delivery tag, LPUSHed by the PUBLISH script to the priority key of every
 * queue the exchange routes it to, or PUBLISHed on /<db>.<exchange>[/<rk>]
 * for a fanout exchange (kombu's fanout_prefix and fanout_patterns). */
static void redis_publish(void *impl, const cel_broker_out_t *m, cel_broker_done_fn done,
                          void *priv) {
    redis_broker_t *b = impl;
    const char *ex = m->exchange ? m->exchange : "";
    const char *rk = m->routing_key ? m->routing_key : "";
    const char *type = m->exchange_type ? m->exchange_type : "direct";
    int fanout = strcmp(type, "fanout") == 0 && ex[0];
    if (!ex[0] && !rk[0]) {
        cel_error("broker: a message for the default exchange needs a routing key");
        if (done) done(priv, 0);
        return;
    }
    char tag[37];
    cel_events_uuid(tag);
    cel_envelope_parts_t p = {
        .body = m->body,
        .body_len = m->body_len,
        .content_type = m->content_type,
        .content_encoding = m->content_encoding,
        .headers = m->headers,
        .correlation_id = m->correlation_id,
        .reply_to = m->reply_to,
        .extra = m->extra,
        .delivery_mode = m->persistent ? 2 : 1,
        .expiration = m->expiration,
        .exchange = ex,
        .routing_key = rk,
        .priority = m->priority < 0 ? 0 : m->priority,
        .delivery_tag = tag,
    };
    cel_err_t err;
    size_t len;
    char *env = cel_envelope_encode(&p, &len, &err);
    if (!env) {
        cel_error("broker: cannot encode a message for %s/%s: %s", ex, rk, err.msg);
        if (done) done(priv, 0);
        return;
    }
    done_ctx_t *d = malloc(sizeof(*d));
    if (!d) {
        free(env);
        if (done) done(priv, 0);
        return;
    }
    *d = (done_ctx_t){ b, done, priv, 1, 1, NULL, 0 };
    int rc;
    if (fanout) {
        size_t n = strlen(ex) + strlen(rk) + 32;
        char *channel = malloc(n);
        if (!channel) {
            rc = CEL_ENOMEM;
        } else {
            if (rk[0]) snprintf(channel, n, "/%d.%s/%s", b->cfg->broker.db, ex, rk);
            else snprintf(channel, n, "/%d.%s", b->cfg->broker.db, ex);
            const char *argv[] = { "PUBLISH", channel, env };
            size_t lens[] = { 7, strlen(channel), len };
            rc = cel_redis_command(b->cmd, on_done_part, d, 3, argv, lens);
            free(channel);
        }
    } else {
        char suf[8];
        int pri = m->priority < 0 ? 0 : m->priority > 9 ? 9 : m->priority;
        if (pri >= 3) snprintf(suf, sizeof(suf), "\x06\x16%d", pri / 3 * 3);
        else suf[0] = '\0';
        const char *args[] = { env, ex, rk, strcmp(type, "topic") == 0 ? "topic" : "direct", suf };
        size_t lens[] = { len, strlen(ex), strlen(rk), strlen(args[3]), strlen(suf) };
        rc = cel_redis_evalsha(b->cmd, &script_publish, on_done_part, d, 0, NULL, NULL, 5, args,
                               lens);
    }
    free(env);
    if (rc == CEL_OK) {
        b->pending++;
    } else {
        free(d);
        if (done) done(priv, 0);
    }
}

/* Messages on Redis are kombu JSON envelopes. */
static int redis_decode(const cel_broker_msg_t *m, size_t max_body, cel_task_t **out,
                        cel_err_t *err) {
    *out = NULL;
    if (m->parts)
        return cel_err_set(err, CEL_ELIMIT, "message of %zu bytes was not read whole", m->len);
    return cel_task_decode_envelope_max(m->body, m->len, max_body, out, err);
}

static int redis_peek(const cel_broker_msg_t *m, cel_peek_t *out, cel_err_t *err) {
    if (m->parts) {
        const cut_view_t *v = m->parts;
        return cel_peek_envelope(v->text, v->len, out, err);
    }
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
    .forget = redis_forget,
    .acking = redis_acking,
    .publish = redis_publish,
};
