/* redis_wait.c -- the idle worker's wait on Redis: BLMOVE into in-flight lists, leases, rescue.
 *
 * See redis_wait.h for the design. One waiter per queue key (a connection of
 * its own: a blocked connection carries nothing else); the command connection
 * (borrowed from broker_redis.c) runs LEASE, RESCUE and GIVEBACK. Main
 * process, libuv loop.
 */
#include "redis_wait.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"
#include "../common/log.h"

#define LEASE_TTL_S    10   /* a worker unheard of this long is dead to the others */
#define LEASE_EVERY_MS 2000 /* lease and rescue */
#define LEASE_FRESH_MS 6000 /* wait only this long after the last lease: a wait ends
                             * (WAIT_TIMEOUT) before the lease could run out */
#define WAIT_TIMEOUT   "1"  /* s, as kombu's BRPOP: a waiter is re-armed after it */
#define WAITER_BULK    64   /* the moved message itself is not read */

/* Keys: the set _celeriac.waits holds every worker's uuid; _celeriac.alive.<uuid>
 * is its lease; _celeriac.lists.<uuid> the set of its lists,
 * _celeriac.wait.<uuid>.<queue key> each (the queue key is the name from its
 * 53rd byte on). */
#define REGISTRY "_celeriac.waits"
static const char list_prefix[] = "_celeriac.wait.";   /* + uuid + '.' + key */

/* LEASE: ARGV = uuid, ttl (s), list names... Keeps this worker alive to the
 * others and its lists registered. */
cel_redis_script_t cel_redis_wait_script_lease = {
    "redis.call('SET', '_celeriac.alive.' .. ARGV[1], '1', 'EX', ARGV[2])\n"
    "redis.call('SADD', '" REGISTRY "', ARGV[1])\n"
    "for i = 3, #ARGV do redis.call('SADD', '_celeriac.lists.' .. ARGV[1], ARGV[i]) end\n"
    "return 1\n",
    { 0 }
};

/* Shared Lua: gives list `name` back to its queue key so that the oldest
 * message is the next one taken there (RPOP side); returns how many. */
#define LUA_GIVE_BACK_FN                                     \
    "local function give_back(name)\n"                       \
    "  local key, n = string.sub(name, 53), 0\n"             \
    "  while true do\n"                                      \
    "    local m = redis.call('LPOP', name)\n"               \
    "    if not m then break end\n"                          \
    "    redis.call('RPUSH', key, m)\n"                      \
    "    n = n + 1\n"                                        \
    "  end\n"                                                \
    "  return n\n"                                           \
    "end\n"                                                  \
    "local function give_back_all(id)\n"                     \
    "  local n = 0\n"                                        \
    "  for _, name in ipairs(redis.call('SMEMBERS', '_celeriac.lists.' .. id)) do\n" \
    "    n = n + give_back(name)\n"                          \
    "  end\n"                                                \
    "  return n\n"                                           \
    "end\n"

/* RESCUE: ARGV = own uuid, 'dead' or 'own'. 'dead': the lists of every other
 * worker whose lease ran out go back to their queues; such a worker is
 * forgotten once a pass finds its lists empty (one pass later: a wait sent
 * just before it died has ended by then). 'own': this worker's lists (a clean
 * close); it is forgotten. Returns how many messages went back. */
cel_redis_script_t cel_redis_wait_script_rescue = {
    LUA_GIVE_BACK_FN
    "local n = 0\n"
    "local function forget(id)\n"
    "  redis.call('DEL', '_celeriac.lists.' .. id, '_celeriac.alive.' .. id)\n"
    "  redis.call('SREM', '" REGISTRY "', id)\n"
    "end\n"
    "if ARGV[2] == 'own' then\n"
    "  n = give_back_all(ARGV[1])\n"
    "  forget(ARGV[1])\n"
    "  return n\n"
    "end\n"
    "for _, id in ipairs(redis.call('SMEMBERS', '" REGISTRY "')) do\n"
    "  if id ~= ARGV[1] and redis.call('EXISTS', '_celeriac.alive.' .. id) == 0 then\n"
    "    local moved = give_back_all(id)\n"
    "    if moved == 0 then forget(id) end\n"
    "    n = n + moved\n"
    "  end\n"
    "end\n"
    "return n\n",
    { 0 }
};

/* GIVEBACK: ARGV = uuid, list names. For keys no longer consumed. */
cel_redis_script_t cel_redis_wait_script_giveback = {
    LUA_GIVE_BACK_FN "local n = 0\n"
                     "for i = 2, #ARGV do\n"
                     "  n = n + give_back(ARGV[i])\n"
                     "  redis.call('SREM', '_celeriac.lists.' .. ARGV[1], ARGV[i])\n"
                     "end\n"
                     "return n\n",
    { 0 }
};

typedef struct waiter {
    cel_redis_wait_t *w;
    cel_redis_t *conn;
    char *key; /* the queue key */
    size_t keylen;
    char *list; /* its in-flight list */
    size_t listlen;
    unsigned long long lease_need; /* the LEASE call that registers list */
    long long client_id;           /* for CLIENT UNBLOCK; 0 unknown */
    int up, blocked, retired, moved;
} waiter_t;

struct cel_redis_wait {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_redis_t *cmd;
    cel_redis_wait_cb cb;
    void *priv;
    char uuid[40];
    uv_timer_t lease_timer;
    waiter_t **v; /* live and retired waiters */
    int n, cap;
    unsigned long long lease_sent, lease_ok;
    uint64_t lease_ok_ms;
    int legacy; /* the server has no BLMOVE (before 6.2): BRPOPLPUSH, the same move */
    int stopped;
    int pending;
    int closing;
    void (*on_closed)(void *);
    void *closed_priv;
};

static void waiter_free(waiter_t *x) {
    free(x->key);
    free(x->list);
    free(x);
}

static void maybe_closed(cel_redis_wait_t *w);

static void on_cmd_reply(cel_redis_t *r, redisReply *reply, void *priv) {
    cel_redis_wait_t *w = priv;
    w->pending--;
    if (reply && reply->type == REDIS_REPLY_ERROR) cel_redis_log_error(r, "unblock", reply->str);
    if (w->closing) maybe_closed(w);
}

static void on_rescued(cel_redis_t *r, redisReply *reply, void *priv) {
    cel_redis_wait_t *w = priv;
    w->pending--;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        cel_redis_log_error(r, "giving back in-flight lists", reply->str);
    else if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer > 0)
        cel_warn("broker: gave back %lld message(s) from in-flight lists (of a dead worker, or "
                 "of queues no longer consumed)",
                 reply->integer);
    if (w->closing) maybe_closed(w);
}

static void give_back(cel_redis_wait_t *w, waiter_t **xs, int n) {
    if (!n || !cel_redis_up(w->cmd)) return; /* kept: the lease runs out, a RESCUE gives them */
    const char **args = malloc((size_t)(n + 1) * sizeof(*args));
    size_t *lens = malloc((size_t)(n + 1) * sizeof(*lens));
    if (args && lens) {
        args[0] = w->uuid, lens[0] = strlen(w->uuid);
        for (int i = 0; i < n; i++) args[i + 1] = xs[i]->list, lens[i + 1] = xs[i]->listlen;
        if (cel_redis_evalsha(w->cmd, &cel_redis_wait_script_giveback, on_rescued, w, 0, NULL,
                              NULL, n + 1, args, lens) == CEL_OK)
            w->pending++;
    }
    free(args);
    free(lens);
}

static uint64_t now_ms(cel_redis_wait_t *w) {
    uv_update_time(w->loop);
    return uv_now(w->loop);
}

static void on_leased(cel_redis_t *r, redisReply *reply, void *priv);

typedef struct lease_ctx {
    cel_redis_wait_t *w;
    unsigned long long call;
} lease_ctx_t;

static void send_lease(cel_redis_wait_t *w) {
    if (w->stopped || !cel_redis_up(w->cmd)) return;
    int n = 0;
    const char **args = malloc((size_t)(w->n + 2) * sizeof(*args));
    size_t *lens = malloc((size_t)(w->n + 2) * sizeof(*lens));
    lease_ctx_t *c = malloc(sizeof(*c));
    if (!args || !lens || !c) goto out;
    char ttl[16];
    snprintf(ttl, sizeof(ttl), "%d", LEASE_TTL_S);
    args[n] = w->uuid, lens[n++] = strlen(w->uuid);
    args[n] = ttl, lens[n++] = strlen(ttl);
    for (int i = 0; i < w->n; i++)
        if (!w->v[i]->retired) args[n] = w->v[i]->list, lens[n++] = w->v[i]->listlen;
    c->w = w;
    c->call = w->lease_sent + 1;
    if (cel_redis_evalsha(w->cmd, &cel_redis_wait_script_lease, on_leased, c, 0, NULL, NULL, n,
                          args, lens) == CEL_OK) {
        w->pending++;
        w->lease_sent++;
        c = NULL;
    }
out:
    free(c);
    free(args);
    free(lens);
}

static void on_leased(cel_redis_t *r, redisReply *reply, void *priv) {
    lease_ctx_t *c = priv;
    cel_redis_wait_t *w = c->w;
    w->pending--;
    if (reply && reply->type == REDIS_REPLY_ERROR) {
        cel_redis_log_error(r, "lease", reply->str);
    } else if (reply) {
        if (c->call > w->lease_ok) w->lease_ok = c->call;
        w->lease_ok_ms = now_ms(w);
        if (!w->stopped) w->cb(w->priv, 0); /* waiters that were not allowed yet may wait */
    }
    free(c);
    if (w->closing) maybe_closed(w);
}

static void rescue(cel_redis_wait_t *w, const char *mode) {
    if (!cel_redis_up(w->cmd)) return;
    const char *args[] = { w->uuid, mode };
    if (cel_redis_evalsha(w->cmd, &cel_redis_wait_script_rescue, on_rescued, w, 0, NULL, NULL, 2,
                          args, NULL) == CEL_OK)
        w->pending++;
}

/* ---- waiters ------------------------------------------------------------- */

static void on_waited(cel_redis_t *r, redisReply *reply, void *priv) {
    waiter_t *x = priv;
    cel_redis_wait_t *w = x->w;
    x->blocked = 0;
    if (!reply) return; /* lost: waits again once it is back up */
    if (reply->type == REDIS_REPLY_ERROR) {
        if (strstr(reply->str, "unknown command") && strcasestr(reply->str, "blmove")) {
            /* (every waiter's first wait says so) */
            if (!w->legacy)
                cel_info("broker: this Redis has no BLMOVE (before 6.2): waiting with BRPOPLPUSH");
            w->legacy = 1;
            if (!x->retired && !w->stopped) w->cb(w->priv, 0);
        } else {
            cel_redis_log_error(r, "waiting for a message", reply->str);
            if (!x->retired && !w->stopped) w->cb(w->priv, -1);
        }
        return;
    }
    int moved = reply->type == REDIS_REPLY_STRING;
    if (moved) x->moved = 1;
    if (x->retired || w->stopped) {
        if (moved) give_back(w, &x, 1);
        return;
    }
    w->cb(w->priv, moved);
}

static void on_client_id(cel_redis_t *r, redisReply *reply, void *priv) {
    (void)r;
    waiter_t *x = priv;
    if (reply && reply->type == REDIS_REPLY_INTEGER) x->client_id = reply->integer;
}

static void on_waiter_state(cel_redis_t *r, int up, void *priv) {
    waiter_t *x = priv;
    x->up = up;
    if (!up) {
        x->blocked = 0;
        x->client_id = 0;
        return;
    }
    const char *argv[] = { "CLIENT", "ID" };
    cel_redis_command(r, on_client_id, x, 2, argv, NULL);
    if (!x->retired && !x->w->stopped) x->w->cb(x->w->priv, 0);
}

static void on_waiter_closed(void *priv) {
    waiter_t *x = priv;
    cel_redis_wait_t *w = x->w;
    for (int i = 0; i < w->n; i++)
        if (w->v[i] == x) {
            w->v[i] = w->v[--w->n];
            break;
        }
    waiter_free(x);
    if (w->closing) maybe_closed(w);
}

/* Cuts x's wait short (CLIENT UNBLOCK on cmd: a give-back sent after it runs
 * after it). */
static void unblock(cel_redis_wait_t *w, waiter_t *x) {
    if (!x->blocked || x->client_id <= 0 || !cel_redis_up(w->cmd)) return;
    char id[24];
    snprintf(id, sizeof(id), "%lld", x->client_id);
    const char *argv[] = { "CLIENT", "UNBLOCK", id };
    if (cel_redis_command(w->cmd, on_cmd_reply, w, 3, argv, NULL) == CEL_OK) w->pending++;
    x->client_id = 0;
}

/* Ends waiters xs[0..n): unblocked, their lists given back, their
 * connections closed after the waits' answers (hiredis waits for pending
 * replies; a message moved meanwhile is given back by on_waited). */
static void retire(cel_redis_wait_t *w, waiter_t **xs, int n) {
    for (int i = 0; i < n; i++) unblock(w, xs[i]);
    give_back(w, xs, n);
    for (int i = 0; i < n; i++) xs[i]->retired = 1;
    /* (a connection that is not up closes at once: on_waiter_closed edits w->v) */
    for (int i = 0; i < n; i++) cel_redis_close(xs[i]->conn, on_waiter_closed, xs[i]);
}

char *cel_redis_wait_list_name(const char *uuid, const char *key, size_t keylen, size_t *len) {
    size_t n = sizeof(list_prefix) - 1 + strlen(uuid) + 1 + keylen;
    char *s = malloc(n + 1);
    if (!s) return NULL;
    int h = snprintf(s, n + 1, "%s%s.", list_prefix, uuid);
    memcpy(s + h, key, keylen);
    s[n] = '\0';
    *len = n;
    return s;
}

static waiter_t *waiter_new(cel_redis_wait_t *w, const char *key, size_t keylen) {
    if (w->n == w->cap) {
        int cap = w->cap ? w->cap * 2 : 8;
        waiter_t **v = realloc(w->v, (size_t)cap * sizeof(*v));
        if (!v) return NULL;
        w->v = v;
        w->cap = cap;
    }
    waiter_t *x = calloc(1, sizeof(*x));
    if (!x) return NULL;
    x->w = w;
    x->keylen = keylen;
    x->key = malloc(keylen + 1);
    x->list = cel_redis_wait_list_name(w->uuid, key, keylen, &x->listlen);
    if (!x->key || !x->list) goto fail;
    memcpy(x->key, key, keylen);
    x->key[keylen] = '\0';
    x->lease_need = w->lease_sent + 1;
    x->conn = cel_redis_new(w->loop, &w->cfg->broker, "broker-wait", NULL, 0, on_waiter_state, x);
    if (!x->conn) goto fail;
    cel_redis_set_bulk_limit(x->conn, WAITER_BULK);
    cel_redis_set_quiet(x->conn); /* the broker's own connection says it for all of them */
    w->v[w->n++] = x;
    return x;
fail:
    waiter_free(x);
    return NULL;
}

static void on_lease_timer(uv_timer_t *t) {
    cel_redis_wait_t *w = t->data;
    if (w->stopped || !cel_redis_up(w->cmd)) return;
    send_lease(w);
    rescue(w, "dead");
}

/* ---- interface ----------------------------------------------------------- */

cel_redis_wait_t *cel_redis_wait_new(uv_loop_t *loop, const cel_options_t *cfg, cel_redis_t *cmd,
                                     const char *uuid, cel_redis_wait_cb cb, void *priv) {
    cel_redis_wait_t *w = calloc(1, sizeof(*w));
    if (!w) return NULL;
    w->loop = loop;
    w->cfg = cfg;
    w->cmd = cmd;
    w->cb = cb;
    w->priv = priv;
    snprintf(w->uuid, sizeof(w->uuid), "%s", uuid);
    uv_timer_init(loop, &w->lease_timer);
    w->lease_timer.data = w;
    uv_timer_start(&w->lease_timer, on_lease_timer, LEASE_EVERY_MS, LEASE_EVERY_MS);
    return w;
}

int cel_redis_wait_keys(cel_redis_wait_t *w, char *const *keys, const size_t *lens, int n) {
    if (w->stopped) return CEL_OK;
    waiter_t **gone = malloc((size_t)(w->n ? w->n : 1) * sizeof(*gone));
    if (!gone) return CEL_ENOMEM;
    int ngone = 0;
    for (int i = 0; i < w->n; i++) {
        waiter_t *x = w->v[i];
        int keep = x->retired;
        for (int k = 0; k < n && !keep; k++)
            keep = lens[k] == x->keylen && memcmp(keys[k], x->key, lens[k]) == 0;
        if (!keep) gone[ngone++] = x;
    }
    retire(w, gone, ngone);
    free(gone);
    int rc = CEL_OK, added = 0;
    for (int k = 0; k < n; k++) {
        int have = 0;
        for (int i = 0; i < w->n && !have; i++)
            have = !w->v[i]->retired && w->v[i]->keylen == lens[k] &&
                   memcmp(w->v[i]->key, keys[k], lens[k]) == 0;
        if (have) continue;
        if (!waiter_new(w, keys[k], lens[k])) rc = CEL_ENOMEM;
        else added++;
    }
    if (added) send_lease(w);
    return rc;
}

void cel_redis_wait_arm(cel_redis_wait_t *w) {
    if (w->stopped || w->lease_ok == 0) return;
    if (now_ms(w) - w->lease_ok_ms > LEASE_FRESH_MS) return; /* the next lease re-arms */
    for (int i = 0; i < w->n; i++) {
        waiter_t *x = w->v[i];
        if (!x->up || x->blocked || x->retired || w->lease_ok < x->lease_need) continue;
        const char *argv[6];
        size_t lens[6];
        int argc = 0;
        if (w->legacy) {
            argv[argc] = "BRPOPLPUSH", lens[argc++] = 10;
            argv[argc] = x->key, lens[argc++] = x->keylen;
            argv[argc] = x->list, lens[argc++] = x->listlen;
        } else {
            argv[argc] = "BLMOVE", lens[argc++] = 6;
            argv[argc] = x->key, lens[argc++] = x->keylen;
            argv[argc] = x->list, lens[argc++] = x->listlen;
            argv[argc] = "RIGHT", lens[argc++] = 5;
            argv[argc] = "LEFT", lens[argc++] = 4;
        }
        argv[argc] = WAIT_TIMEOUT, lens[argc++] = strlen(WAIT_TIMEOUT);
        if (cel_redis_command(x->conn, on_waited, x, argc, argv, lens) == CEL_OK) x->blocked = 1;
    }
}

int cel_redis_wait_any_moved(const cel_redis_wait_t *w) {
    for (int i = 0; i < w->n; i++)
        if (w->v[i]->moved && !w->v[i]->retired) return 1;
    return 0;
}

int cel_redis_wait_moved(cel_redis_wait_t *w, const char **lists, size_t *list_lens,
                         const char **keys, size_t *key_lens, int max) {
    int n = 0;
    for (int i = 0; i < w->n && n < max; i++) {
        waiter_t *x = w->v[i];
        if (!x->moved || x->retired) continue;
        x->moved = 0;
        lists[n] = x->list, list_lens[n] = x->listlen;
        keys[n] = x->key, key_lens[n] = x->keylen;
        n++;
    }
    return n;
}

void cel_redis_wait_cmd_up(cel_redis_wait_t *w) {
    if (w->stopped) return;
    for (int i = 0; i < w->n; i++) w->v[i]->moved = 1; /* a lost fetch may have left some */
    send_lease(w);
    rescue(w, "dead");
}

void cel_redis_wait_stop(cel_redis_wait_t *w) {
    if (w->stopped) return;
    w->stopped = 1;
    uv_timer_stop(&w->lease_timer);
    waiter_t **live = malloc((size_t)(w->n ? w->n : 1) * sizeof(*live));
    int n = 0;
    if (live) {
        for (int i = 0; i < w->n; i++)
            if (!w->v[i]->retired) live[n++] = w->v[i];
        retire(w, live, n);
    } else {
        for (int i = w->n - 1; i >= 0; i--) /* the lists go back at close or by RESCUE */
            if (!w->v[i]->retired)
                w->v[i]->retired = 1, cel_redis_close(w->v[i]->conn, on_waiter_closed, w->v[i]);
    }
    free(live);
}

int cel_redis_wait_pending(const cel_redis_wait_t *w) { return w->pending; }

static void on_timer_closed(uv_handle_t *h) {
    cel_redis_wait_t *w = h->data;
    void (*cb)(void *) = w->on_closed;
    void *cp = w->closed_priv;
    free(w->v);
    free(w);
    if (cb) cb(cp);
}

static void maybe_closed(cel_redis_wait_t *w) {
    if (w->n > 0 || w->pending > 0 || w->closing == 3) return;
    if (w->closing == 1) {
        /* every waiter closed: what they may have moved meanwhile goes back */
        w->closing = 2;
        rescue(w, "own");
        if (w->pending > 0) return;
    }
    w->closing = 3;
    uv_close((uv_handle_t *)&w->lease_timer, on_timer_closed);
}

void cel_redis_wait_close(cel_redis_wait_t *w, void (*on_closed)(void *), void *priv) {
    cel_redis_wait_stop(w);
    w->on_closed = on_closed;
    w->closed_priv = priv;
    w->closing = 1;
    maybe_closed(w);
}
