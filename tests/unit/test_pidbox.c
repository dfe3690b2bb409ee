/* test_pidbox.c -- the pidbox pattern matcher, and the mailbox's "up" on a real Redis.
 *
 * cel_pidbox_match (worker/pidbox.c) as kombu's glob and pcre matchers. Then,
 * against a private redis-server (redis_server.h; skipped when none is
 * installed), the contract that makes "ready." safe to act on: the mailbox's
 * on_up, and a Redis bus's on_state(1), come only once the server confirmed
 * the PSUBSCRIBE (worker/redis.c cel_redis_psubscribe), so a broadcast
 * PUBLISHed from inside that very callback has a subscriber and is answered;
 * after the subscriber connection is killed the bus says down, and up again
 * only once subscribed anew. The rest of pidbox.c (destination lists,
 * decoding) is covered by the integration tests. Run under `make asan`.
 */
#include "testutil.h"

#include "loop_until.h"

#include <uv.h>

#include "../../worker/bus.h"
#include "../../worker/events.h"
#include "../../worker/options.h"
#include "../../worker/pidbox.h"

#include "redis_server.h"

static void test_glob(void **state) {
    assert_int_equal(cel_pidbox_match("celeriac@host", "celeriac@*", "glob"), 1);
    assert_int_equal(cel_pidbox_match("celeriac@host", "*@host", "glob"), 1);
    assert_int_equal(cel_pidbox_match("celeriac@host", "celeriac@h?st", "glob"), 1);
    assert_int_equal(cel_pidbox_match("celeriac@host", "celeriac@[gh]ost", "glob"), 1);
    assert_int_equal(cel_pidbox_match("celeriac@host", "other@*", "glob"), 0);
    /* fnmatch is whole-string */
    assert_int_equal(cel_pidbox_match("celeriac@host", "celeriac", "glob"), 0);
    assert_int_equal(cel_pidbox_match("celeriac@host", "celeriac@host", "glob"), 1);
    assert_int_equal(cel_pidbox_match("", "*", "glob"), 1);
    /* NULL matcher means glob (kombu's default) */
    assert_int_equal(cel_pidbox_match("w1@a", "w?@*", NULL), 1);
    assert_int_equal(cel_pidbox_match("w10@a", "w?@*", NULL), 0);
}

static void test_pcre(void **state) {
    assert_int_equal(cel_pidbox_match("w3@host", "w3@.*", "pcre"), 1);
    assert_int_equal(cel_pidbox_match("celeriac@b", "celeriac@(a|b)", "pcre"), 1);
    assert_int_equal(cel_pidbox_match("celeriac@c", "celeriac@(a|b)", "pcre"), 0);
    /* re.match: anchored at the start, not at the end */
    assert_int_equal(cel_pidbox_match("celeriac@host", "celeriac", "pcre"), 1);
    assert_int_equal(cel_pidbox_match("xceleriac@host", "celeriac", "pcre"), 0);
    assert_int_equal(cel_pidbox_match("celeriac@host", "celeriac@host$", "pcre"), 1);
    assert_int_equal(cel_pidbox_match("celeriac@hostx", "celeriac@host$", "pcre"), 0);
    /* alternation stays anchored thanks to the group */
    assert_int_equal(cel_pidbox_match("zzb", "a|b", "pcre"), 0);
    assert_int_equal(cel_pidbox_match("", "", "pcre"), 1);
}

static void test_errors(void **state) {
    assert_int_equal(cel_pidbox_match("w@h", "w@*", "regex"), CEL_ENOTFOUND);
    assert_int_equal(cel_pidbox_match("w@h", "w@*", ""), CEL_ENOTFOUND);
    assert_int_equal(cel_pidbox_match("w@h", "(", "pcre"), CEL_EINVAL);
    assert_int_equal(cel_pidbox_match("w@h", "[a-", "pcre"), CEL_EINVAL);
    /* an unbalanced pattern must not escape the start anchor and match all */
    assert_true(cel_pidbox_match("zzz", "x)|(.*", "pcre") != 1);
    /* a pattern that closes the wrapping group early must not escape it */
    int m = cel_pidbox_match("w@h", ")|(x", "pcre");
    assert_true(m == CEL_EINVAL || m == 0 || m == 1);
    /* a long pattern */
    char pat[4096];
    memset(pat, 'a', sizeof(pat) - 3);
    pat[sizeof(pat) - 3] = '.';
    pat[sizeof(pat) - 2] = '*';
    pat[sizeof(pat) - 1] = '\0';
    char name[4096];
    memset(name, 'a', sizeof(name) - 1);
    name[sizeof(name) - 1] = '\0';
    assert_int_equal(cel_pidbox_match(name, pat, "pcre"), 1);
    assert_int_equal(cel_pidbox_match(name, pat, "glob"), 0);
}

/* ---- on a real Redis ---------------------------------------------------- */

#define DB    7
#define NODE  "pb@test"
#define MAXUP 4

typedef struct run_state {
    uv_loop_t loop;
    uv_timer_t deadline;
    uv_timer_t poll; /* watches the reply queue */
    int timed_out;
    cel_bus_t *bus;
    int ups, downs;
    long long receivers[MAXUP]; /* PUBLISH's count, sent from each on_up / on_state(1) */
    int up_said[MAXUP];         /* cel_bus_up inside on_state(1) */
    int handled, msgs, replies, closed;
} run_state_t;

static void run_until(run_state_t *st, const int *flag, int want, const char *what) {
    loop_until(&st->deadline, flag, want, what);
}

static void loop_init(run_state_t *st, cel_options_t *cfg) {
    memset(st, 0, sizeof(*st));
    assert_int_equal(uv_loop_init(&st->loop), 0);
    uv_timer_init(&st->loop, &st->deadline);
    uv_timer_init(&st->loop, &st->poll);
    st->deadline.data = &st->timed_out;
    st->poll.data = st;
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/%d", redis_port, DB);
    char *argv[] = { "celeriac", "-b", url, "-n", NODE, "-Q", "unused-q", NULL };
    cel_err_t err;
    if (cel_options_parse(cfg, 7, argv, &err) != CEL_OK) fail_msg("options: %s", err.msg);
    redisReply *r = redisCommand(rc, "SELECT %d", DB);
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
}

static void loop_close(run_state_t *st, cel_options_t *cfg) {
    uv_close((uv_handle_t *)&st->deadline, NULL);
    uv_close((uv_handle_t *)&st->poll, NULL);
    uv_run(&st->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&st->loop), 0);
    cel_options_free(cfg);
}

static void on_closed(void *priv) { ((run_state_t *)priv)->closed++; }

/* PUBLISHes a ping request, as celery's Mailbox sends one (a kombu envelope,
 * body not encoded), on the fanout exchange's channel, synchronously: how
 * many subscribers got it. */
static long long publish_now(const char *exchange) {
    json_t *body = json_pack("{s:s, s:{}, s:n, s:{s:s, s:s}, s:s}", "method", "ping", "arguments",
                             "destination", "reply_to", "exchange", "reply.celery.pidbox",
                             "routing_key", "rk-test", "ticket", "tk-1");
    char *text = json_dumps(body, JSON_COMPACT);
    json_t *env = json_pack("{s:s, s:s, s:s, s:{s:i}, s:{}}", "body", text, "content-type",
                            "application/json", "content-encoding", "utf-8", "headers", "clock", 3,
                            "properties");
    char *envtext = json_dumps(env, JSON_COMPACT);
    assert_non_null(envtext);
    char channel[64];
    snprintf(channel, sizeof(channel), "/%d.%s", DB, exchange);
    redisReply *r = redisCommand(rc, "PUBLISH %s %s", channel, envtext);
    assert_non_null(r);
    long long n = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
    freeReplyObject(r);
    free(envtext);
    json_decref(env);
    free(text);
    json_decref(body);
    return n;
}

static json_t *handler(void *priv, const char *method, json_t *arguments) {
    run_state_t *st = priv;
    st->handled++;
    return strcmp(method, "ping") == 0 ? json_pack("{s:s}", "ok", "pong") : json_null();
}

/* The mailbox is up: a broadcast sent now must reach it. */
static void on_pidbox_up(void *priv) {
    run_state_t *st = priv;
    if (st->ups < MAXUP) st->receivers[st->ups] = publish_now("celery.pidbox");
    st->ups++;
}

static void on_poll_replies(uv_timer_t *t) {
    run_state_t *st = t->data;
    redisReply *r = redisCommand(rc, "LLEN replyq");
    if (r && r->type == REDIS_REPLY_INTEGER) st->replies = (int)r->integer;
    freeReplyObject(r);
}

static void load(void *priv, long *active, long *processed) { *active = *processed = 0; }

static void test_pidbox_up_means_subscribed(void **state) {
    need_redis();
    run_state_t st;
    cel_options_t cfg;
    loop_init(&st, &cfg);
    /* kombu's reply binding, so the reply lands in a list we can read */
    cmd_int("DEL replyq");
    static const char member[] = "rk-test\x06\x16\x06\x16replyq";
    cmd_int("SADD _kombu.binding.reply.celery.pidbox %b", member, sizeof(member) - 1);
    cel_events_t *ev = cel_events_new(&st.loop, &cfg, load, NULL);
    assert_non_null(ev);
    cel_pidbox_t *pb = cel_pidbox_new(&st.loop, &cfg, ev, handler, on_pidbox_up, &st);
    assert_non_null(pb);
    run_until(&st, &st.ups, 1, "the mailbox up");
    /* sent from inside on_up: a subscriber was there to take it */
    assert_int_equal(st.receivers[0], 1);
    run_until(&st, &st.handled, 1, "the ping handled");
    uv_timer_start(&st.poll, on_poll_replies, 5, 5);
    run_until(&st, &st.replies, 1, "the reply pushed");
    uv_timer_stop(&st.poll);
    redisReply *r = redisCommand(rc, "LPOP replyq");
    assert_true(r && r->type == REDIS_REPLY_STRING);
    cel_bus_envelope_t e;
    cel_err_t err;
    assert_int_equal(cel_bus_envelope_parse(r->str, r->len, &e, &err), CEL_OK);
    freeReplyObject(r);
    json_t *body = json_loadb((const char *)e.msg.body, e.msg.len, 0, NULL);
    assert_non_null(body);
    assert_string_equal(json_string_value(json_object_get(json_object_get(body, NODE), "ok")),
                        "pong");
    assert_string_equal(json_string_value(json_object_get(e.msg.headers, "ticket")), "tk-1");
    json_decref(body);
    cel_bus_envelope_free(&e);
    assert_int_equal(st.ups, 1); /* on_up runs once */
    cel_pidbox_close(pb, on_closed, &st);
    cel_events_close(ev, on_closed, &st);
    run_until(&st, &st.closed, 2, "mailbox and events closed");
    loop_close(&st, &cfg);
}

static void on_bus_state(void *priv, int up) {
    run_state_t *st = priv;
    if (!up) {
        st->downs++;
        return;
    }
    if (st->ups < MAXUP) {
        st->up_said[st->ups] = cel_bus_up(st->bus);
        st->receivers[st->ups] = publish_now("tfan");
    }
    st->ups++;
}

static void on_bus_msg(void *priv, const cel_bus_msg_t *m) {
    run_state_t *st = priv;
    st->msgs++;
    assert_int_equal(json_integer_value(json_object_get(m->headers, "clock")), 3);
}

/* Kills the connections of type ("pubsub" or "normal") but the test's own. */
static void kill_clients(const char *type) {
    assert_true(cmd_int("CLIENT KILL TYPE %s SKIPME yes", type) >= 1);
}

static void test_bus_up_after_resubscribe(void **state) {
    need_redis();
    run_state_t st;
    cel_options_t cfg;
    loop_init(&st, &cfg);
    cel_err_t err;
    st.bus = cel_bus_new(&st.loop, &cfg, "t", 0, on_bus_state, &st, &err);
    assert_non_null(st.bus);
    cel_bus_queue_t q = { { "tfan", "fanout", 0, 0 }, "tq", "", 300.0, 10.0 };
    assert_int_equal(cel_bus_listen(st.bus, &q, on_bus_msg, &st), CEL_OK);
    run_until(&st, &st.ups, 1, "the bus up");
    assert_int_equal(st.up_said[0], 1);
    assert_int_equal(st.receivers[0], 1);
    run_until(&st, &st.msgs, 1, "the first message");
    /* the subscriber connection dies: down, then up only once subscribed again */
    kill_clients("pubsub");
    run_until(&st, &st.downs, 1, "the bus down after its subscriber was killed");
    run_until(&st, &st.ups, 2, "the bus up again");
    assert_int_equal(st.up_said[1], 1);
    assert_int_equal(st.receivers[1], 1);
    run_until(&st, &st.msgs, 2, "the message sent at the second up");
    /* the command connection dies: the same, as before */
    kill_clients("normal");
    run_until(&st, &st.downs, 2, "the bus down after its command connection was killed");
    run_until(&st, &st.ups, 3, "the bus up a third time");
    assert_int_equal(st.receivers[2], 1);
    run_until(&st, &st.msgs, 3, "the message sent at the third up");
    cel_bus_close(st.bus, on_closed, &st);
    run_until(&st, &st.closed, 1, "bus closed");
    assert_int_equal(st.downs, 2); /* closing says nothing */
    loop_close(&st, &cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_pcre),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_pidbox_up_means_subscribed),
        cmocka_unit_test(test_bus_up_after_resubscribe),
    };
    return cmocka_run_group_tests(tests, redis_setup, redis_teardown);
}
