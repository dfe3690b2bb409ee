/* test_chord.c -- the result backend's chord operations on Redis (worker/backend_redis.c).
 *
 * Against a real redis-server of its own (skips when none is installed):
 * chord_size writes celery-taskset-meta-<gid>.s with the TTL and publishes
 * it, as RedisBackend.set; chord_part adds parts (a sorted set by header
 * position, or a list in arrival order with result_chord_ordered off),
 * answers 0 while parts are missing and hands the last part every entry in
 * order, then the keys are gone, so no later part completes it again; .t
 * (add_to_chord) raises the count needed; a chord begun as a list stays one
 * whatever this worker's setting; the table says it supports chords.
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

#include "../../worker/backend.h"
#include "../../worker/options.h"

#include "redis_server.h"

typedef struct run_state {
    uv_loop_t loop;
    uv_timer_t deadline;
    int timed_out;
    int up, done, ok, closed;
    size_t n;         /* entries of the last chord answer */
    char *entries[8]; /* copies */
} run_state_t;

static void run_until(run_state_t *st, const int *flag, int want, const char *what) {
    loop_until(&st->deadline, flag, want, what);
}

static void on_up(void *priv) { ((run_state_t *)priv)->up++; }

static void on_done(void *priv, int ok) {
    run_state_t *st = priv;
    st->done++;
    st->ok = ok;
}

static void on_closed(void *priv) { ((run_state_t *)priv)->closed++; }

static void on_chord(void *priv, int ok, size_t n, const char *const *entries, const size_t *lens) {
    run_state_t *st = priv;
    st->done++;
    st->ok = ok;
    for (size_t i = 0; i < st->n; i++) free(st->entries[i]);
    st->n = n;
    assert_true(n <= 8);
    for (size_t i = 0; i < n; i++) {
        st->entries[i] = malloc(lens[i] + 1);
        memcpy(st->entries[i], entries[i], lens[i]);
        st->entries[i][lens[i]] = '\0';
    }
}

static cel_backend_t *open_backend(run_state_t *st, cel_options_t *cfg, int ordered) {
    redisReply *sel = redisCommand(rc, "SELECT 0");
    freeReplyObject(sel);
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", redis_port);
    char *argv[] = {
        "celeriac", "-b", url, "--result-chord-ordered", ordered ? "yes" : "no", NULL
    };
    cel_err_t err;
    if (cel_options_parse(cfg, 5, argv, &err) != CEL_OK) fail_msg("options: %s", err.msg);
    memset(st, 0, sizeof(*st));
    assert_int_equal(uv_loop_init(&st->loop), 0);
    uv_timer_init(&st->loop, &st->deadline);
    st->deadline.data = &st->timed_out;
    cel_backend_t *be = cel_backend_new(&st->loop, cfg, on_up, st, &err);
    assert_non_null(be);
    run_until(st, &st->up, 1, "backend up");
    assert_int_equal(cel_backend_chords(be), 1);
    return be;
}

static void close_backend(run_state_t *st, cel_backend_t *be, cel_options_t *cfg) {
    cel_backend_close(be, on_closed, st);
    run_until(st, &st->closed, 1, "backend close");
    uv_close((uv_handle_t *)&st->deadline, NULL);
    uv_run(&st->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&st->loop), 0);
    for (size_t i = 0; i < st->n; i++) free(st->entries[i]);
    cel_options_free(cfg);
}

/* One part, run to its answer. */
static void part(run_state_t *st, cel_backend_t *be, const char *gid, int index,
                 const char *entry) {
    int want = st->done + 1;
    cel_backend_chord_part(be, gid, index, entry, strlen(entry), on_chord, st);
    run_until(st, &st->done, want, "chord part");
    assert_int_equal(st->ok, 1);
}

static void test_chord_sorted_set(void **state) {
    need_redis();
    cel_options_t cfg;
    run_state_t st;
    cel_backend_t *be = open_backend(&st, &cfg, 1);
    cmd_int("DEL celery-taskset-meta-g1.j celery-taskset-meta-g1.t celery-taskset-meta-g1.s");
    /* the size, with the TTL, and published on its key */
    cel_backend_chord_size(be, "g1", 3, on_done, &st);
    run_until(&st, &st.done, 1, "chord size");
    assert_int_equal(st.ok, 1);
    redisReply *r = redisCommand(rc, "GET celery-taskset-meta-g1.s");
    assert_string_equal(r->str, "3");
    freeReplyObject(r);
    long long ttl = cmd_int("TTL celery-taskset-meta-g1.s");
    assert_true(ttl > 86000 && ttl <= 86400);
    /* parts out of order: the answer is in header order, once, to the last */
    part(&st, be, "g1", 2, "[1, \"c\", \"SUCCESS\", 3]");
    assert_int_equal(st.n, 0);
    assert_int_equal(cmd_int("ZCARD celery-taskset-meta-g1.j"), 1);
    assert_true(cmd_int("TTL celery-taskset-meta-g1.j") > 86000);
    part(&st, be, "g1", 0, "[1, \"a\", \"SUCCESS\", 1]");
    assert_int_equal(st.n, 0);
    part(&st, be, "g1", 1, "[1, \"b\", \"FAILURE\", {\"exc_type\": \"E\"}]");
    assert_int_equal(st.n, 3);
    assert_string_equal(st.entries[0], "[1, \"a\", \"SUCCESS\", 1]");
    assert_string_equal(st.entries[1], "[1, \"b\", \"FAILURE\", {\"exc_type\": \"E\"}]");
    assert_string_equal(st.entries[2], "[1, \"c\", \"SUCCESS\", 3]");
    assert_int_equal(cmd_int("EXISTS celery-taskset-meta-g1.j celery-taskset-meta-g1.t "
                             "celery-taskset-meta-g1.s"),
                     0);
    /* a part that comes again (a redelivery) after that completes nothing */
    part(&st, be, "g1", 1, "[1, \"b\", \"SUCCESS\", 2]");
    assert_int_equal(st.n, 0);
    cmd_int("DEL celery-taskset-meta-g1.j");

    /* .t (add_to_chord) raises the count; no index sorts last (+inf) */
    cel_backend_chord_size(be, "g2", 1, on_done, &st);
    run_until(&st, &st.done, st.done + 1, "chord size");
    cmd_int("INCR celery-taskset-meta-g2.t");
    part(&st, be, "g2", -1, "[1, \"late\", \"SUCCESS\", 9]");
    assert_int_equal(st.n, 0);
    part(&st, be, "g2", 0, "[1, \"first\", \"SUCCESS\", 8]");
    assert_int_equal(st.n, 2);
    assert_string_equal(st.entries[0], "[1, \"first\", \"SUCCESS\", 8]");
    assert_string_equal(st.entries[1], "[1, \"late\", \"SUCCESS\", 9]");
    /* no size recorded (a chord this backend did not start): never complete */
    part(&st, be, "g3", 0, "[1, \"x\", \"SUCCESS\", 1]");
    assert_int_equal(st.n, 0);
    cmd_int("DEL celery-taskset-meta-g3.j");
    close_backend(&st, be, &cfg);
}

static void test_chord_list(void **state) {
    need_redis();
    cel_options_t cfg;
    run_state_t st;
    cel_backend_t *be = open_backend(&st, &cfg, 0);
    cmd_int("DEL celery-taskset-meta-l1.j");
    cel_backend_chord_size(be, "l1", 2, on_done, &st);
    run_until(&st, &st.done, 1, "chord size");
    part(&st, be, "l1", 1, "[1, \"second\", \"SUCCESS\", 2]");
    assert_int_equal(cmd_int("LLEN celery-taskset-meta-l1.j"), 1);
    part(&st, be, "l1", 0, "[1, \"first\", \"SUCCESS\", 1]");
    /* a list keeps arrival order, as Celery's list mode does */
    assert_int_equal(st.n, 2);
    assert_string_equal(st.entries[0], "[1, \"second\", \"SUCCESS\", 2]");
    close_backend(&st, be, &cfg);

    /* a chord begun as a list by another worker stays a list here */
    be = open_backend(&st, &cfg, 1);
    cmd_int("DEL celery-taskset-meta-l2.j");
    cmd_int("RPUSH celery-taskset-meta-l2.j %s", "[1, \"py\", \"SUCCESS\", 0]");
    redisReply *r = redisCommand(rc, "SET celery-taskset-meta-l2.s 2");
    assert_true(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    part(&st, be, "l2", 0, "[1, \"c\", \"SUCCESS\", 1]");
    assert_int_equal(st.n, 2);
    assert_string_equal(st.entries[1], "[1, \"c\", \"SUCCESS\", 1]");
    close_backend(&st, be, &cfg);
}

static void test_chord_down(void **state) {
    /* not connected: both operations fail at once, with their callback */
    cel_options_t cfg;
    char *argv[] = { "celeriac", "-b", "redis://127.0.0.1:1/0", NULL };
    assert_int_equal(cel_options_parse(&cfg, 3, argv, NULL), CEL_OK);
    run_state_t st;
    memset(&st, 0, sizeof(st));
    assert_int_equal(uv_loop_init(&st.loop), 0);
    uv_timer_init(&st.loop, &st.deadline);
    cel_backend_t *be = cel_backend_new(&st.loop, &cfg, on_up, &st, NULL);
    assert_non_null(be);
    cel_backend_chord_size(be, "g", 1, on_done, &st);
    assert_int_equal(st.done, 1);
    assert_int_equal(st.ok, 0);
    cel_backend_chord_part(be, "g", 0, "[]", 2, on_chord, &st);
    assert_int_equal(st.done, 2);
    assert_int_equal(st.ok, 0);
    cel_backend_close(be, on_closed, &st);
    while (!st.closed) uv_run(&st.loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&st.deadline, NULL);
    uv_run(&st.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&st.loop), 0);
    cel_options_free(&cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chord_sorted_set),
        cmocka_unit_test(test_chord_list),
        cmocka_unit_test(test_chord_down),
    };
    return cmocka_run_group_tests(tests, redis_setup, redis_teardown);
}
