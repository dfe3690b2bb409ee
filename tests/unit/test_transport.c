/* test_transport.c -- the broker and result backend operation tables, against a real Redis.
 *
 * Starts its own redis-server on a free loopback port (skips when there is
 * none installed), then drives worker/broker.c + broker_redis.c and
 * worker/backend.c + backend_redis.c through their tables on a libuv loop,
 * and checks what they did with a plain synchronous hiredis client: a
 * consumed message is held in kombu's `unacked` hash, ack removes it,
 * requeue gives it back marked redelivered, touch refreshes its score,
 * queues are added and cancelled; a stored meta is SET with its TTL and
 * PUBLISHed, a SUCCESS is never overwritten, get reads it back, store_ack
 * stores and acks in one step, and unknown URL schemes are refused. Every
 * loop is run until the awaited callback (with a deadline), and closed with
 * uv_loop_close == 0. Run under `make asan`.
 */
#include "testutil.h"

#include "loop_until.h"

#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <uv.h>

#include "../../protocol/peek.h"
#include "../../worker/backend.h"
#include "../../worker/broker.h"
#include "../../worker/options.h"

#include "redis_server.h"

/* Parses options as the worker would, for our server. */
static void options(cel_options_t *cfg, const char *queue, int backend_db) {
    char url[64], burl[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", redis_port);
    snprintf(burl, sizeof(burl), "redis://127.0.0.1:%d/%d", redis_port, backend_db);
    /* the transport alone: the node's direct queue (issue 15) is test_options's and
     * test_multiworker_state.py's */
    char *argv[] = { "celeriac",    "-b",
                     url,           "--result-backend",
                     burl,          "-Q",
                     (char *)queue, "--visibility-timeout",
                     "40",          "--without-direct-queue",
                     NULL };
    cel_err_t err;
    if (cel_options_parse(cfg, 10, argv, &err) != CEL_OK) fail_msg("options: %s", err.msg);
}

/* ---- a loop run until a condition, with a deadline --------------------- */

typedef struct run_state {
    uv_loop_t loop;
    uv_timer_t deadline;
    int timed_out;
    /* broker */
    int cap;
    int up;
    int nmsg;
    char tags[4][64];
    char *bodies[4];
    size_t lens[4];
    char queue[64];
    int done, ok;
    int closed;
    /* backend */
    int got;
    char *meta;
} run_state_t;

static void loop_init(run_state_t *st) {
    memset(st, 0, sizeof(*st));
    assert_int_equal(uv_loop_init(&st->loop), 0);
    uv_timer_init(&st->loop, &st->deadline);
    st->deadline.data = &st->timed_out;
}

/* Runs the loop until *flag >= want. */
static void run_until(run_state_t *st, const int *flag, int want, const char *what) {
    loop_until(&st->deadline, flag, want, what);
}

static void loop_close(run_state_t *st) {
    uv_close((uv_handle_t *)&st->deadline, NULL);
    uv_run(&st->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&st->loop), 0);
    for (int i = 0; i < 4; i++) free(st->bodies[i]);
    free(st->meta);
}

static int capacity(void *priv) { return ((run_state_t *)priv)->cap; }

static void on_message(void *priv, const cel_broker_msg_t *m) {
    run_state_t *st = priv;
    assert_true(st->nmsg < 4);
    assert_non_null(m->tag);
    snprintf(st->tags[st->nmsg], sizeof(st->tags[0]), "%s", m->tag);
    st->bodies[st->nmsg] = malloc(m->len);
    memcpy(st->bodies[st->nmsg], m->body, m->len);
    st->lens[st->nmsg] = m->len;
    snprintf(st->queue, sizeof(st->queue), "%s", m->queue);
    st->nmsg++;
    st->cap--;
}

static void on_state(void *priv, int up) { ((run_state_t *)priv)->up += up; }

static void on_done(void *priv, int ok) {
    run_state_t *st = priv;
    st->done++;
    st->ok = ok;
}

static void on_closed(void *priv) { ((run_state_t *)priv)->closed++; }

static char *envelope(size_t *len) {
    const char *dir = testdata_dir();
    if (!dir) skip();
    return read_file(dir, "messages/fresh-basic.json", len);
}

/* env (len bytes) with its own delivery tag and priority, compact (malloc'd). */
static char *envelope_tagged(const char *env, size_t len, const char *tag, int priority) {
    json_t *j = json_loadb(env, len, 0, NULL);
    assert_non_null(j);
    json_object_set_new(json_object_get(j, "properties"), "delivery_tag", json_string(tag));
    json_object_set_new(json_object_get(j, "properties"), "priority", json_integer(priority));
    char *out = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    return out;
}

/* A loop in st and a Redis broker on it for cfg, taking at most cap messages. */
static cel_broker_t *start_broker(run_state_t *st, const cel_options_t *cfg, int cap) {
    loop_init(st);
    cel_broker_cbs_t cbs = { capacity, on_message, on_state };
    cel_err_t err;
    st->cap = cap;
    cel_broker_t *b = cel_broker_new(&st->loop, cfg, &cbs, st, &err);
    assert_non_null(b);
    return b;
}

static void test_broker_redis(void **state) {
    (void)state;
    need_redis();
    cel_options_t cfg;
    options(&cfg, "tq", 0);
    size_t len;
    char *env = envelope(&len);
    /* a second message: the same envelope with its own delivery tag and priority 5 */
    char *env2 = envelope_tagged(env, len, "tag-b", 5);
    cmd_int("DEL tq celery unacked unacked_index");
    cmd_int("DEL %b", "celery\x06\x16" "3", (size_t)9);
    cmd_int("LPUSH tq %b", env, len);
    cmd_int("LPUSH tq %s", env2);

    run_state_t st;
    cel_broker_t *b = start_broker(&st, &cfg, 2);
    assert_string_equal(cel_broker_ops(b)->scheme, "redis");
    /* a quarter of 40 s, but at most 5 s: a server that lost what we hold gets it back soon */
    assert_true(cel_broker_touch_interval(b) == 5.0);
    run_until(&st, &st.nmsg, 2, "two messages");
    assert_int_equal(st.up, 1);
    assert_string_equal(st.queue, "tq");
    assert_int_equal(st.lens[0], len);
    assert_memory_equal(st.bodies[0], env, len);
    /* both are held by the broker, none left in the queue */
    assert_int_equal(cmd_int("LLEN tq"), 0);
    assert_int_equal(cmd_int("HLEN unacked"), 2);
    assert_int_equal(cmd_int("HEXISTS unacked %s", st.tags[0]), 1);
    assert_string_equal(st.tags[1], "tag-b");
    /* each holds what kombu's QoS.append stores, [envelope, exchange, routing_key],
     * whether the pop script read the tail of kombu's layout (the first) or
     * decoded the envelope (the second, written compact) */
    for (int i = 0; i < 2; i++) {
        json_t *e = json_loadb(st.bodies[i], st.lens[i], 0, NULL);
        json_t *di = json_object_get(json_object_get(e, "properties"), "delivery_info");
        int flags = JSON_ENCODE_ANY | JSON_ESCAPE_SLASH;
        char *ex = json_dumps(json_object_get(di, "exchange"), flags);
        char *rk = json_dumps(json_object_get(di, "routing_key"), flags);
        assert_non_null(ex);
        assert_non_null(rk);
        size_t want_len = st.lens[i] + strlen(ex) + strlen(rk) + 6;
        char *want = malloc(want_len + 1);
        snprintf(want, want_len + 1, "[%.*s, %s, %s]", (int)st.lens[i], st.bodies[i], ex, rk);
        redisReply *h = redisCommand(rc, "HGET unacked %s", st.tags[i]);
        assert_true(h && h->type == REDIS_REPLY_STRING);
        assert_int_equal(h->len, want_len);
        assert_memory_equal(h->str, want, want_len);
        freeReplyObject(h);
        free(want);
        free(ex);
        free(rk);
        json_decref(e);
    }

    /* the transport decodes and peeks its own messages */
    cel_err_t err;
    cel_broker_msg_t m = { st.tags[0], "tq", st.bodies[0], st.lens[0], NULL };
    cel_task_t *t;
    assert_int_equal(cel_broker_decode(b, &m, CEL_MSG_MAX_BYTES, &t, &err), CEL_OK);
    cel_peek_t pk;
    assert_int_equal(cel_broker_peek(b, &m, &pk, &err), CEL_OK);
    assert_string_equal(pk.id, t->id);
    assert_string_equal(pk.task, t->name);
    cel_task_free(t);

    /* touch refreshes the score of a held message */
    cmd_int("ZADD unacked_index 5 %s", st.tags[1]);
    const char *tags[] = { st.tags[1] };
    cel_broker_touch(b, tags, 1);
    while (cel_broker_pending(b) > 0) uv_run(&st.loop, UV_RUN_ONCE);
    redisReply *r = redisCommand(rc, "ZSCORE unacked_index %s", st.tags[1]);
    assert_true(r && r->type == REDIS_REPLY_STRING && atof(r->str) > 1e9);
    freeReplyObject(r);

    /* ack: gone for good */
    cel_broker_ack(b, st.tags[0], on_done, &st);
    run_until(&st, &st.done, 1, "ack");
    assert_int_equal(st.ok, 1);
    assert_int_equal(cmd_int("HEXISTS unacked %s", st.tags[0]), 0);
    assert_int_equal(cmd_int("ZREM unacked_index %s", st.tags[0]), 0); /* was not there */

    /* requeue: back where its routing key leads (the envelope says "celery",
     * as kombu's restore does), on the key of its priority step (5: "\x06\x163",
     * kombu's _q_for_pri), marked redelivered, no longer held */
    cel_broker_stop(b); /* so it is not fetched again at once */
    cel_broker_requeue(b, st.tags[1], on_done, &st);
    run_until(&st, &st.done, 2, "requeue");
    assert_int_equal(st.ok, 1);
    assert_int_equal(cmd_int("HLEN unacked"), 0);
    assert_int_equal(cmd_int("LLEN celery"), 0);
    assert_int_equal(cmd_int("LLEN %b", "celery\x06\x16" "3", (size_t)9), 1);
    r = redisCommand(rc, "LINDEX %b 0", "celery\x06\x16" "3", (size_t)9);
    assert_true(r && r->type == REDIS_REPLY_STRING);
    json_t *back = json_loadb(r->str, r->len, 0, NULL);
    freeReplyObject(r);
    assert_true(json_is_true(json_object_get(json_object_get(back, "headers"), "redelivered")));
    json_decref(back);

    /* queues: add (bound as kombu does), cancel, cancel again */
    assert_int_equal(cel_broker_add_queue(b, "tq2"), CEL_OK);
    assert_int_equal(cel_broker_add_queue(b, "tq2"), CEL_OK);
    json_t *qs = cel_broker_queues(b);
    assert_int_equal(json_array_size(qs), 2);
    assert_string_equal(json_string_value(json_array_get(qs, 1)), "tq2");
    json_decref(qs);
    while (cel_broker_pending(b) > 0) uv_run(&st.loop, UV_RUN_ONCE);
    assert_int_equal(
        cmd_int("SISMEMBER _kombu.binding.tq2 %b", "tq2\x06\x16\x06\x16tq2", (size_t)10), 1);
    assert_int_equal(cel_broker_cancel_queue(b, "tq2"), CEL_OK);
    assert_int_equal(cel_broker_cancel_queue(b, "tq2"), CEL_ENOTFOUND);
    qs = cel_broker_queues(b);
    assert_int_equal(json_array_size(qs), 1);
    json_decref(qs);

    cel_broker_close(b, on_closed, &st);
    run_until(&st, &st.closed, 1, "broker close");
    loop_close(&st);
    cel_options_free(&cfg);
    free(env);
    free(env2);
}

/* Clients blocked in a command (the broker's idle waits), from INFO clients. */
static long blocked_clients(void) {
    redisReply *r = redisCommand(rc, "INFO clients");
    assert_true(r && r->type == REDIS_REPLY_STRING);
    const char *p = strstr(r->str, "blocked_clients:");
    long n = p ? atol(p + strlen("blocked_clients:")) : -1;
    freeReplyObject(r);
    return n;
}

static void on_tick(uv_timer_t *t) {
    run_state_t *st = t->data;
    st->ok = blocked_clients() >= 4;
}

/* The idle wait moved the queue's next message into this worker's in-flight
 * list, and a POP for a freed slot was sent before the loop had read that
 * wake-up: the POP must take the moved message before the one queued after it
 * (it used to look only at the queues, and a user's optim_step ran before its
 * forward_backward). */
static void test_broker_order_after_unread_wake(void **state) {
    (void)state;
    need_redis();
    cel_options_t cfg;
    options(&cfg, "oq", 0);
    size_t len;
    char *env = envelope(&len);
    char *envs[] = { envelope_tagged(env, len, "tag-first", 0),
                     envelope_tagged(env, len, "tag-second", 0) };
    cmd_int("DEL oq unacked unacked_index");

    run_state_t st;
    cel_broker_t *b = start_broker(&st, &cfg, 4);
    /* idle: one wait per priority key of oq, blocked in the server */
    uv_timer_t tick;
    uv_timer_init(&st.loop, &tick);
    tick.data = &st;
    uv_timer_start(&tick, on_tick, 10, 10);
    run_until(&st, &st.ok, 1, "the waits to block");
    uv_timer_stop(&tick);
    /* the loop does not run now: the first message is moved by the wait (its
     * answer unread in the waiter's socket), the second stays queued */
    cmd_int("LPUSH oq %s", envs[0]);
    assert_int_equal(cmd_int("LLEN oq"), 0);
    cmd_int("LPUSH oq %s", envs[1]);
    assert_int_equal(cmd_int("LLEN oq"), 1);
    cel_broker_kick(b); /* a slot freed: a POP that is not the wake-up's */
    run_until(&st, &st.nmsg, 2, "both messages");
    assert_string_equal(st.tags[0], "tag-first");
    assert_string_equal(st.tags[1], "tag-second");
    assert_int_equal(cmd_int("LLEN oq"), 0);

    uv_close((uv_handle_t *)&tick, NULL);
    cel_broker_close(b, on_closed, &st);
    run_until(&st, &st.closed, 1, "broker close");
    loop_close(&st);
    cel_options_free(&cfg);
    free(env);
    free(envs[0]);
    free(envs[1]);
}

static void on_up(void *priv) { ((run_state_t *)priv)->up++; }

static void on_got(void *priv, int ok, const char *meta, size_t len) {
    run_state_t *st = priv;
    st->got++;
    st->ok = ok;
    free(st->meta);
    st->meta = NULL;
    if (meta) {
        st->meta = malloc(len + 1);
        memcpy(st->meta, meta, len);
        st->meta[len] = '\0';
    }
}

/* A task known by its id alone, as the consumer has for every request. */
static cel_task_t *task_with_id(const char *id) {
    cel_peek_t pk;
    memset(&pk, 0, sizeof(pk));
    snprintf(pk.id, sizeof(pk.id), "%s", id);
    cel_task_t *t;
    assert_int_equal(cel_task_from_peek(&pk, &t, NULL), CEL_OK);
    return t;
}

static void test_backend_redis(void **state) {
    (void)state;
    need_redis();
    cel_options_t cfg;
    options(&cfg, "tq", 0);
    run_state_t st;
    loop_init(&st);
    cel_err_t err;
    cel_backend_t *be = cel_backend_new(&st.loop, &cfg, on_up, &st, &err);
    assert_non_null(be);
    assert_string_equal(cel_backend_ops(be)->scheme, "redis");
    cel_task_t *t = task_with_id("b-1");
    /* not up yet: the store fails at once, and says so */
    cel_backend_store(be, t, "{}", 2, on_done, &st);
    assert_int_equal(st.done, 1);
    assert_int_equal(st.ok, 0);
    run_until(&st, &st.up, 1, "backend up");

    /* a store is SET with the TTL and PUBLISHed on the key's channel */
    redisContext *sub = redisConnect("127.0.0.1", redis_port);
    assert_true(sub && !sub->err);
    redisReply *r = redisCommand(sub, "SUBSCRIBE celery-task-meta-b-1");
    freeReplyObject(r);
    const char *meta = "{\"status\": \"SUCCESS\", \"result\": 1, \"task_id\": \"b-1\"}";
    cel_backend_store(be, t, meta, strlen(meta), on_done, &st);
    run_until(&st, &st.done, 2, "store");
    assert_int_equal(st.ok, 1);
    r = redisCommand(rc, "GET celery-task-meta-b-1");
    assert_string_equal(r->str, meta);
    freeReplyObject(r);
    long long ttl = cmd_int("TTL celery-task-meta-b-1");
    assert_true(ttl > 86000 && ttl <= 86400);
    struct timeval tv = { 5, 0 };
    redisSetTimeout(sub, tv);
    assert_int_equal(redisGetReply(sub, (void **)&r), REDIS_OK);
    assert_true(r->type == REDIS_REPLY_ARRAY && r->elements == 3);
    assert_string_equal(r->element[0]->str, "message");
    assert_string_equal(r->element[2]->str, meta);
    freeReplyObject(r);
    redisFree(sub);

    /* a SUCCESS stays: a later FAILURE for the same id is not written */
    const char *fail = "{\"status\": \"FAILURE\", \"task_id\": \"b-1\"}";
    cel_backend_store(be, t, fail, strlen(fail), on_done, &st);
    run_until(&st, &st.done, 3, "second store");
    assert_int_equal(st.ok, 1);

    /* get reads back what is there, and NULL for nothing */
    cel_backend_get(be, "b-1", on_got, &st);
    run_until(&st, &st.got, 1, "get");
    assert_int_equal(st.ok, 1);
    assert_string_equal(st.meta, meta);
    cel_backend_get(be, "nothing-here", on_got, &st);
    run_until(&st, &st.got, 2, "get of a missing id");
    assert_int_equal(st.ok, 1);
    assert_null(st.meta);

    /* one server: store and the broker's ack in one step */
    assert_int_equal(cel_backend_acks_broker(be), 1);
    cmd_int("HSET unacked tag-9 x");
    cmd_int("ZADD unacked_index 1 tag-9");
    cel_task_t *t2 = task_with_id("b-2");
    cel_backend_store_ack(be, t2, fail, strlen(fail), "tag-9", on_done, &st);
    run_until(&st, &st.done, 4, "store_ack");
    assert_int_equal(st.ok, 1);
    assert_int_equal(cmd_int("HEXISTS unacked tag-9"), 0);
    assert_int_equal(cmd_int("ZREM unacked_index tag-9"), 0); /* was not there */
    assert_int_equal(cmd_int("EXISTS celery-task-meta-b-2"), 1);

    /* stores of one loop turn go in one script call (STORE_MANY), a store_ack
     * between them in its own: every one done, in order; a SUCCESS stays */
    {
        enum { N = 5 };
        cel_task_t *ts[N];
        char id[32], k[64];
        for (int i = 0; i < N; i++) {
            snprintf(id, sizeof(id), "m-%d", i);
            ts[i] = task_with_id(id);
        }
        cmd_int("HSET unacked tag-m x");
        cmd_int("ZADD unacked_index 1 tag-m");
        int before = st.done;
        cel_backend_store(be, ts[0], meta, strlen(meta), on_done, &st);
        cel_backend_store(be, ts[1], meta, strlen(meta), on_done, &st);
        cel_backend_store_ack(be, ts[2], meta, strlen(meta), "tag-m", on_done, &st);
        cel_backend_store(be, ts[3], meta, strlen(meta), on_done, &st);
        cel_backend_store(be, ts[4], meta, strlen(meta), on_done, &st);
        cel_backend_store(be, ts[0], fail, strlen(fail), on_done, &st); /* SUCCESS stays */
        assert_int_equal(st.done, before); /* nothing before the end of the loop turn */
        run_until(&st, &st.done, before + N + 1, "a turn's stores");
        assert_int_equal(st.ok, 1);
        for (int i = 0; i < N; i++) {
            snprintf(k, sizeof(k), "GET celery-task-meta-m-%d", i);
            redisReply *g = redisCommand(rc, k);
            assert_string_equal(g->str, meta);
            freeReplyObject(g);
            cel_task_free(ts[i]);
        }
        assert_int_equal(cmd_int("HEXISTS unacked tag-m"), 0);
    }

    /* an id longer than the key buffer is stored all the same */
    char longid[600];
    memset(longid, 'L', sizeof(longid) - 1);
    longid[sizeof(longid) - 1] = '\0';
    json_t *ej = json_pack("{s:s, s:s, s:{s:s, s:s}, s:{s:s}}", "body", "W1tdLCB7fSwge31d",
                           "content-type", "application/json", "headers", "id", longid, "task",
                           "diag.noop", "properties", "body_encoding", "base64");
    char *etext = json_dumps(ej, JSON_COMPACT);
    json_decref(ej);
    cel_task_t *t3;
    assert_int_equal(cel_task_decode_envelope(etext, strlen(etext), &t3, &err), CEL_OK);
    free(etext);
    assert_int_equal(strlen(t3->id), sizeof(longid) - 1);
    char *key = malloc(strlen(t3->id) + 32);
    sprintf(key, "celery-task-meta-%s", t3->id);
    int done_before = st.done;
    cel_backend_store(be, t3, fail, strlen(fail), on_done, &st);
    run_until(&st, &st.done, done_before + 1, "store of a long id");
    assert_int_equal(st.ok, 1);
    assert_int_equal(cmd_int("EXISTS %s", key), 1);
    cel_backend_get(be, t3->id, on_got, &st);
    run_until(&st, &st.got, 3, "get of a long id");
    assert_string_equal(st.meta, fail);
    free(key);

    cel_backend_close(be, on_closed, &st);
    run_until(&st, &st.closed, 1, "backend close");
    loop_close(&st);
    cel_task_free(t);
    cel_task_free(t2);
    cel_task_free(t3);
    cel_options_free(&cfg);
}

/* Another database on the same server is another store: no combined ack. */
static void test_backend_other_db(void **state) {
    (void)state;
    need_redis();
    cel_options_t cfg;
    options(&cfg, "tq", 1);
    run_state_t st;
    loop_init(&st);
    cel_backend_t *be = cel_backend_new(&st.loop, &cfg, on_up, &st, NULL);
    assert_non_null(be);
    assert_int_equal(cel_backend_acks_broker(be), 0);
    cel_backend_close(be, on_closed, &st);
    run_until(&st, &st.closed, 1, "backend close");
    loop_close(&st);
    cel_options_free(&cfg);
}

/* A URL scheme no table serves is refused with a clear error. */
static void test_unknown_scheme(void **state) {
    (void)state;
    cel_options_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    snprintf(cfg.broker_url, sizeof(cfg.broker_url), "kafka://guest@localhost//");
    snprintf(cfg.backend_url, sizeof(cfg.backend_url), "mongodb://h");
    uv_loop_t loop;
    uv_loop_init(&loop);
    cel_broker_cbs_t cbs = { capacity, on_message, on_state };
    cel_err_t err;
    assert_null(cel_broker_new(&loop, &cfg, &cbs, NULL, &err));
    assert_int_equal(err.code, CEL_EINVAL);
    assert_non_null(strstr(err.msg, "kafka://"));
    assert_null(cel_backend_new(&loop, &cfg, on_up, NULL, &err));
    assert_int_equal(err.code, CEL_EINVAL);
    assert_non_null(strstr(err.msg, "mongodb://"));
    snprintf(cfg.broker_url, sizeof(cfg.broker_url), "no scheme");
    assert_null(cel_broker_new(&loop, &cfg, &cbs, NULL, &err));
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broker_redis),
        cmocka_unit_test(test_broker_order_after_unread_wake),
        cmocka_unit_test(test_backend_redis),
        cmocka_unit_test(test_backend_other_db),
        cmocka_unit_test(test_unknown_scheme),
    };
    return cmocka_run_group_tests(tests, redis_setup, redis_teardown);
}
