/* test_publish.c -- the broker's publish operation on Redis (worker/broker_redis.c), against a real server.
 *
 * Starts its own redis-server on a free loopback port (skips when none is
 * installed) and publishes through the operations table on a libuv loop,
 * then reads what landed with a synchronous hiredis client: the default
 * exchange LPUSHes to the queue the routing key names (priority keys as
 * kombu names them), the envelope decodes as the task it was built from,
 * a direct exchange reaches every queue bound with the routing key, a topic
 * exchange the queues kombu's wildcards pick (topic.json, computed by kombu),
 * a fanout exchange PUBLISHes on /<db>.<exchange>/<rk>, an exchange without
 * bindings drops the message (ok, as kombu), and a publish that cannot be
 * sent says so at once. Run under `make asan`.
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

#include "../../worker/broker.h"
#include "../../worker/options.h"

#include "redis_server.h"

/* The element at the head of list key (NULL when empty); caller frees. */
static char *lindex0(const char *key, size_t klen, size_t *len) {
    redisReply *r = redisCommand(rc, "LINDEX %b 0", key, klen);
    assert_non_null(r);
    char *s = NULL;
    if (r->type == REDIS_REPLY_STRING) {
        s = malloc(r->len + 1);
        memcpy(s, r->str, r->len);
        s[r->len] = '\0';
        if (len) *len = r->len;
    }
    freeReplyObject(r);
    return s;
}

typedef struct run_state {
    uv_loop_t loop;
    uv_timer_t deadline;
    int timed_out;
    int up, done, ok, closed;
} run_state_t;

static void run_until(run_state_t *st, const int *flag, int want, const char *what) {
    loop_until(&st->deadline, flag, want, what);
}

static int capacity(void *priv) { return 0; } /* publish only: never fetch */
static void on_message(void *priv, const cel_broker_msg_t *m) { fail_msg("nothing to consume"); }
static void on_state(void *priv, int up) { ((run_state_t *)priv)->up += up; }

static void on_done(void *priv, int ok) {
    run_state_t *st = priv;
    st->done++;
    st->ok = ok;
}

static void on_closed(void *priv) { ((run_state_t *)priv)->closed++; }

static cel_broker_t *open_broker(run_state_t *st, cel_options_t *cfg, int db) {
    redisReply *sel = redisCommand(rc, "SELECT %d", db); /* the test's client looks there too */
    assert_true(sel && sel->type == REDIS_REPLY_STATUS);
    freeReplyObject(sel);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/%d", redis_port, db);
    char *argv[] = { "celeriac", "-b", url, "-Q", "unused-q", NULL };
    cel_err_t err;
    if (cel_options_parse(cfg, 5, argv, &err) != CEL_OK) fail_msg("options: %s", err.msg);
    memset(st, 0, sizeof(*st));
    assert_int_equal(uv_loop_init(&st->loop), 0);
    uv_timer_init(&st->loop, &st->deadline);
    st->deadline.data = &st->timed_out;
    static const cel_broker_cbs_t cbs = { capacity, on_message, on_state };
    cel_broker_t *b = cel_broker_new(&st->loop, cfg, &cbs, st, &err);
    assert_non_null(b);
    return b;
}

static void close_broker(run_state_t *st, cel_broker_t *b, cel_options_t *cfg) {
    cel_broker_close(b, on_closed, st);
    run_until(st, &st->closed, 1, "broker close");
    uv_close((uv_handle_t *)&st->deadline, NULL);
    uv_run(&st->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&st->loop), 0);
    cel_options_free(cfg);
}

/* A task message as the canvas sends one. */
static cel_broker_out_t task_out(json_t *headers, const char *ex, const char *rk, int pri) {
    static const char body[] = "[[4, 10], {}, {\"callbacks\": null, \"errbacks\": null, "
                               "\"chain\": null, \"chord\": null}]";
    cel_broker_out_t m = { .exchange = ex,
                           .routing_key = rk,
                           .headers = headers,
                           .content_type = "application/json",
                           .content_encoding = "utf-8",
                           .body = body,
                           .body_len = sizeof(body) - 1,
                           .correlation_id = "pub-1",
                           .reply_to = "oid-1",
                           .priority = pri,
                           .persistent = 1 };
    return m;
}

static void test_default_exchange(void **state) {
    need_redis();
    cel_options_t cfg;
    run_state_t st;
    cel_broker_t *b = open_broker(&st, &cfg, 3);
    cel_broker_out_t m = task_out(NULL, "", "pq", -1);
    /* not connected yet: refused at once */
    cel_broker_publish(b, &m, on_done, &st);
    assert_int_equal(st.done, 1);
    assert_int_equal(st.ok, 0);
    run_until(&st, &st.up, 1, "broker up");
    cmd_int("DEL pq pq\x06\x16"
            "3");

    json_t *h = json_pack("{s:s, s:s, s:s, s:s}", "lang", "py", "task", "diag.add", "id", "pub-1",
                          "root_id", "pub-0");
    m = task_out(h, "", "pq", -1);
    cel_broker_publish(b, &m, on_done, &st);
    run_until(&st, &st.done, 2, "publish");
    assert_int_equal(st.ok, 1);
    size_t len;
    char *env = lindex0("pq", 2, &len);
    assert_non_null(env);
    cel_task_t *t;
    cel_err_t err;
    assert_int_equal(cel_task_decode_envelope(env, len, &t, &err), CEL_OK);
    assert_string_equal(t->id, "pub-1");
    assert_string_equal(t->name, "diag.add");
    assert_string_equal(t->root_id, "pub-0");
    assert_string_equal(t->reply_to, "oid-1");
    assert_string_equal(t->routing_key, "pq");
    assert_string_equal(t->exchange, "");
    assert_int_equal(strlen(t->delivery_tag), 36);
    assert_int_equal(json_integer_value(json_array_get(t->args, 1)), 10);
    cel_task_free(t);
    free(env);

    /* priority 5 goes to kombu's step-3 key, and the next tag differs */
    m = task_out(h, "", "pq", 5);
    cel_broker_publish(b, &m, on_done, &st);
    run_until(&st, &st.done, 3, "publish with priority");
    assert_int_equal(st.ok, 1);
    assert_int_equal(cmd_int("LLEN pq"), 1);
    char *env5 = lindex0("pq\x06\x16"
                         "3",
                         5, &len);
    assert_non_null(env5);
    assert_non_null(strstr(env5, "\"priority\": 5"));
    free(env5);

    /* the default exchange needs a routing key */
    m = task_out(h, "", "", -1);
    cel_broker_publish(b, &m, on_done, &st);
    assert_int_equal(st.done, 4);
    assert_int_equal(st.ok, 0);
    json_decref(h);
    close_broker(&st, b, &cfg);
}

static void test_direct_and_unbound(void **state) {
    need_redis();
    cel_options_t cfg;
    run_state_t st;
    cel_broker_t *b = open_broker(&st, &cfg, 0);
    run_until(&st, &st.up, 1, "broker up");
    cmd_int("DEL qa qb qc _kombu.binding.dx");
    cmd_int("SADD _kombu.binding.dx %b %b %b", "rk\x06\x16\x06\x16qa", (size_t)8,
            "rk\x06\x16\x06\x16qb", (size_t)8, "no\x06\x16\x06\x16qc", (size_t)8);
    /* qa bound twice (another pattern field): still one copy */
    cmd_int("SADD _kombu.binding.dx %b", "rk\x06\x16x\x06\x16qa", (size_t)9);
    cel_broker_out_t m = task_out(NULL, "dx", "rk", -1);
    cel_broker_publish(b, &m, on_done, &st);
    run_until(&st, &st.done, 1, "publish to a direct exchange");
    assert_int_equal(st.ok, 1);
    assert_int_equal(cmd_int("LLEN qa"), 1);
    assert_int_equal(cmd_int("LLEN qb"), 1);
    assert_int_equal(cmd_int("LLEN qc"), 0);
    char *env = lindex0("qa", 2, NULL);
    assert_non_null(strstr(env, "\"delivery_info\": {\"exchange\": \"dx\", \"routing_key\": "
                                "\"rk\"}"));
    free(env);
    /* an exchange nothing is bound to: dropped, as kombu drops it */
    m = task_out(NULL, "nobody", "rk", -1);
    cel_broker_publish(b, &m, on_done, &st);
    run_until(&st, &st.done, 2, "publish to an unbound exchange");
    assert_int_equal(st.ok, 1);
    assert_int_equal(cmd_int("EXISTS rk nobody"), 0);
    close_broker(&st, b, &cfg);
}

static void test_topic_as_kombu(void **state) {
    need_redis();
    json_t *fx = load_fixture("topic.json");
    cel_options_t cfg;
    run_state_t st;
    cel_broker_t *b = open_broker(&st, &cfg, 0);
    run_until(&st, &st.up, 1, "broker up");
    cmd_int("DEL _kombu.binding.tx");
    size_t i;
    json_t *bind;
    json_array_foreach(json_object_get(fx, "bindings"), i, bind) {
        char member[256];
        int n = snprintf(member, sizeof(member), "%s\x06\x16%s\x06\x16%s",
                         json_string_value(json_array_get(bind, 0)),
                         json_string_value(json_array_get(bind, 1)),
                         json_string_value(json_array_get(bind, 2)));
        cmd_int("SADD _kombu.binding.tx %b", member, (size_t)n);
        cmd_int("DEL %s", json_string_value(json_array_get(bind, 2)));
    }
    json_t *c;
    int sent = 0;
    json_array_foreach(json_object_get(fx, "cases"), i, c) {
        const char *rk = json_string_value(json_array_get(c, 0));
        cel_broker_out_t m = task_out(NULL, "tx", rk, -1);
        m.exchange_type = "topic";
        cel_broker_publish(b, &m, on_done, &st);
        run_until(&st, &st.done, ++sent, "publish to a topic exchange");
        assert_int_equal(st.ok, 1);
        /* every queue kombu picks got exactly this one, the others nothing */
        size_t j;
        json_t *q;
        json_array_foreach(json_object_get(fx, "bindings"), j, bind) {
            const char *qn = json_string_value(json_array_get(bind, 2));
            int want = 0;
            size_t k;
            json_array_foreach(json_array_get(c, 1), k, q) want |=
                strcmp(json_string_value(q), qn) == 0;
            long long got = cmd_int("LLEN %s", qn);
            if (got != want)
                fail_msg("routing key '%s': queue %s has %lld, want %d", rk, qn, got, want);
            cmd_int("DEL %s", qn);
        }
    }
    json_decref(fx);
    close_broker(&st, b, &cfg);
}

static void test_fanout(void **state) {
    need_redis();
    cel_options_t cfg;
    run_state_t st;
    cel_broker_t *b = open_broker(&st, &cfg, 5);
    run_until(&st, &st.up, 1, "broker up");
    redisContext *sub = redisConnect("127.0.0.1", redis_port);
    assert_true(sub && !sub->err);
    redisReply *r = redisCommand(sub, "PSUBSCRIBE /5.fx*");
    freeReplyObject(r);
    cel_broker_out_t m = task_out(NULL, "fx", "k.1", -1);
    m.exchange_type = "fanout";
    cel_broker_publish(b, &m, on_done, &st);
    run_until(&st, &st.done, 1, "fanout publish");
    assert_int_equal(st.ok, 1);
    m.routing_key = "";
    cel_broker_publish(b, &m, on_done, &st);
    run_until(&st, &st.done, 2, "fanout publish without a routing key");
    struct timeval tv = { 5, 0 };
    redisSetTimeout(sub, tv);
    const char *want[] = { "/5.fx/k.1", "/5.fx" };
    for (int i = 0; i < 2; i++) {
        assert_int_equal(redisGetReply(sub, (void **)&r), REDIS_OK);
        assert_true(r->type == REDIS_REPLY_ARRAY && r->elements == 4);
        assert_string_equal(r->element[0]->str, "pmessage");
        assert_string_equal(r->element[2]->str, want[i]);
        assert_non_null(strstr(r->element[3]->str, "\"exchange\": \"fx\""));
        freeReplyObject(r);
    }
    redisFree(sub);
    close_broker(&st, b, &cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_exchange),
        cmocka_unit_test(test_direct_and_unbound),
        cmocka_unit_test(test_topic_as_kombu),
        cmocka_unit_test(test_fanout),
    };
    return cmocka_run_group_tests(tests, redis_setup, redis_teardown);
}
