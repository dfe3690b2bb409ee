/* test_amqp_acks.c -- worker/amqp_acks.c: the floor and the settled tags above it.
 *
 * What decides whether a run of acks may go out as one basic.ack with
 * multiple=1: the floor only passes tags that were marked, never a gap (a
 * task still running); out-of-order marks, duplicates, the ring wrapping
 * and growing, the span limit, and a reset for a new connection. Checked
 * against a plain array model over a long random sequence too.
 * Run under `make asan`.
 */
#include "testutil.h"

#include "../../worker/amqp_acks.h"

static void test_in_order_run(void **state) {
    cel_amqp_acks_t k = { 0 };
    assert_int_equal(cel_amqp_acks_advance(&k), 0); /* nothing marked yet */
    for (uint64_t t = 1; t <= 5; t++) assert_int_equal(cel_amqp_acks_mark(&k, t), 1);
    assert_int_equal(cel_amqp_acks_advance(&k), 5);
    assert_int_equal(cel_amqp_acks_mark(&k, 3), 0); /* at or below the floor: settled */
    assert_int_equal(cel_amqp_acks_advance(&k), 5);
    cel_amqp_acks_free(&k);
}

static void test_gap_holds_the_floor(void **state) {
    cel_amqp_acks_t k = { 0 };
    assert_int_equal(cel_amqp_acks_mark(&k, 1), 1);
    assert_int_equal(cel_amqp_acks_mark(&k, 3), 1);
    assert_int_equal(cel_amqp_acks_mark(&k, 4), 1);
    assert_int_equal(cel_amqp_acks_advance(&k), 1); /* 2 is still running */
    assert_int_equal(cel_amqp_acks_mark(&k, 4), 0); /* marked already */
    assert_int_equal(cel_amqp_acks_advance(&k), 1);
    assert_int_equal(cel_amqp_acks_mark(&k, 2), 1);
    assert_int_equal(cel_amqp_acks_advance(&k), 4);
    cel_amqp_acks_free(&k);
}

static void test_ring_wraps_and_grows(void **state) {
    cel_amqp_acks_t k = { 0 };
    /* many times the first ring size, in order: the ring is reused, not grown */
    for (uint64_t t = 1; t <= 100000; t++) {
        assert_int_equal(cel_amqp_acks_mark(&k, t), 1);
        assert_int_equal(cel_amqp_acks_advance(&k), t);
    }
    uint64_t cap = k.cap;
    assert_true(cap <= 1024);
    /* 100001 held back: everything above it is kept, across growth */
    for (uint64_t t = 100002; t <= 120000; t++) assert_int_equal(cel_amqp_acks_mark(&k, t), 1);
    assert_true(k.cap > cap);
    assert_int_equal(cel_amqp_acks_advance(&k), 100000);
    assert_int_equal(cel_amqp_acks_mark(&k, 100001), 1);
    assert_int_equal(cel_amqp_acks_advance(&k), 120000);
    cel_amqp_acks_free(&k);
}

static void test_span_limit(void **state) {
    cel_amqp_acks_t k = { 0 };
    uint64_t far = CEL_AMQP_ACKS_MAX_SPAN + 1;
    assert_int_equal(cel_amqp_acks_mark(&k, far), -1); /* acked on its own by the caller */
    assert_int_equal(cel_amqp_acks_mark(&k, far - 1), 1);
    for (uint64_t t = 1; t < far - 1; t++) cel_amqp_acks_mark(&k, t);
    /* the floor never passes the tag it could not track */
    assert_int_equal(cel_amqp_acks_advance(&k), far - 1);
    assert_true(k.cap <= CEL_AMQP_ACKS_MAX_SPAN);
    cel_amqp_acks_free(&k);
}

static void test_reset_for_a_new_connection(void **state) {
    cel_amqp_acks_t k = { 0 };
    for (uint64_t t = 1; t <= 10; t++) cel_amqp_acks_mark(&k, t);
    cel_amqp_acks_mark(&k, 12);
    assert_int_equal(cel_amqp_acks_advance(&k), 10);
    cel_amqp_acks_reset(&k); /* tags start again at 1 */
    assert_int_equal(k.floor, 0);
    assert_int_equal(cel_amqp_acks_mark(&k, 2), 1);
    assert_int_equal(cel_amqp_acks_advance(&k), 0); /* 12's old bit is gone too */
    assert_int_equal(cel_amqp_acks_mark(&k, 1), 1);
    assert_int_equal(cel_amqp_acks_advance(&k), 2);
    cel_amqp_acks_free(&k);
}

/* Random out-of-order marks against an array of flags. */
static void test_matches_a_model(void **state) {
    enum { N = 20000, WINDOW = 300 };
    static unsigned char model[N + 2];
    cel_amqp_acks_t k = { 0 };
    uint64_t next = 1, floor = 0;
    unsigned seed = 12345;
    memset(model, 0, sizeof(model));
    while (floor < N) {
        seed = seed * 1103515245u + 12345u;
        /* settle one of the unsettled tags in [floor+1, floor+WINDOW] (tasks finishing) */
        uint64_t t = floor + 1 + (seed >> 8) % WINDOW;
        if (t > N) t = N;
        if (t >= next) next = t + 1;
        int want = model[t] ? 0 : 1;
        assert_int_equal(cel_amqp_acks_mark(&k, t), want);
        model[t] = 1;
        while (floor < N && model[floor + 1]) floor++;
        assert_int_equal(cel_amqp_acks_advance(&k), floor);
    }
    cel_amqp_acks_free(&k);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_in_order_run),
        cmocka_unit_test(test_gap_holds_the_floor),
        cmocka_unit_test(test_ring_wraps_and_grows),
        cmocka_unit_test(test_span_limit),
        cmocka_unit_test(test_reset_for_a_new_connection),
        cmocka_unit_test(test_matches_a_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
