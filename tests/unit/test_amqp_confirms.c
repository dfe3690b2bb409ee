/* test_amqp_confirms.c -- worker/amqp_confirms.c: publisher confirms answered in any order.
 *
 * RabbitMQ may confirm a newer publish before an older one (a transient
 * message before a persistent one waiting for the disk). A single ack
 * settles its own publish only -- the older ones stay pending and succeed
 * when their own ack comes, never failed for being skipped (which made the
 * worker send a chain's next link twice). Also: multiple acks, nacks,
 * unknown and repeated answers, the ring wrapping and growing behind one
 * old unanswered publish, a lost connection failing the rest, and a random
 * run against an array model. Run under `make asan`.
 */
#include "testutil.h"

#include "../../common/err.h"
#include "../../worker/amqp_confirms.h"

enum { N = 20000 };

typedef struct seen {
    int calls[N + 2]; /* per publish: how many times settled */
    int ok[N + 2];    /* per publish: the last answer */
} seen_t;

static void on_settled(void *ctx, void *op, int ok) {
    seen_t *s = ctx;
    uint64_t seq = (uint64_t)(uintptr_t)op;
    s->calls[seq]++;
    s->ok[seq] = ok;
}

static void push_range(cel_amqp_confirms_t *k, uint64_t from, uint64_t to) {
    for (uint64_t q = from; q <= to; q++)
        assert_int_equal(cel_amqp_confirms_push(k, q, (void *)(uintptr_t)q), CEL_OK);
}

static void test_out_of_order_single_acks(void **state) {
    static seen_t s;
    memset(&s, 0, sizeof(s));
    cel_amqp_confirms_t k = { 0 };
    push_range(&k, 1, 3);
    assert_int_equal(cel_amqp_confirms_settle(&k, 2, 0, 1, on_settled, &s), 1);
    assert_int_equal(s.calls[1], 0); /* still waiting for its own ack */
    assert_int_equal(s.calls[2], 1);
    assert_int_equal(s.ok[2], 1);
    assert_int_equal(cel_amqp_confirms_pending(&k), 2);
    assert_int_equal(cel_amqp_confirms_settle(&k, 3, 0, 1, on_settled, &s), 1);
    assert_int_equal(cel_amqp_confirms_settle(&k, 1, 0, 1, on_settled, &s), 1);
    for (int q = 1; q <= 3; q++) {
        assert_int_equal(s.calls[q], 1);
        assert_int_equal(s.ok[q], 1);
    }
    assert_int_equal(k.n, 0);
    cel_amqp_confirms_free(&k);
}

static void test_multiple_and_nack(void **state) {
    static seen_t s;
    memset(&s, 0, sizeof(s));
    cel_amqp_confirms_t k = { 0 };
    push_range(&k, 1, 6);
    assert_int_equal(cel_amqp_confirms_settle(&k, 5, 0, 0, on_settled, &s), 1); /* nack 5 */
    assert_int_equal(cel_amqp_confirms_settle(&k, 4, 1, 1, on_settled, &s), 4); /* 1..4 */
    assert_int_equal(cel_amqp_confirms_settle(&k, 5, 1, 1, on_settled, &s), 0); /* 5 answered */
    assert_int_equal(s.ok[5], 0);
    assert_int_equal(s.calls[5], 1);
    for (int q = 1; q <= 4; q++) assert_int_equal(s.ok[q], 1);
    assert_int_equal(cel_amqp_confirms_settle(&k, 99, 0, 1, on_settled, &s), 0); /* unknown */
    assert_int_equal(cel_amqp_confirms_settle(&k, 3, 0, 1, on_settled, &s), 0);  /* repeated */
    assert_int_equal(cel_amqp_confirms_pending(&k), 1);
    assert_int_equal(cel_amqp_confirms_settle(&k, 6, 1, 1, on_settled, &s), 1);
    assert_int_equal(k.n, 0);
    cel_amqp_confirms_free(&k);
}

static void test_old_publish_holds_ring_that_grows(void **state) {
    static seen_t s;
    memset(&s, 0, sizeof(s));
    cel_amqp_confirms_t k = { 0 };
    /* 1 waits for the disk while 2..N are confirmed one by one as they go */
    push_range(&k, 1, 1);
    for (uint64_t q = 2; q <= N; q++) {
        push_range(&k, q, q);
        assert_int_equal(cel_amqp_confirms_settle(&k, q, 0, 1, on_settled, &s), 1);
    }
    assert_int_equal(s.calls[1], 0);
    assert_int_equal(cel_amqp_confirms_pending(&k), 1);
    assert_int_equal(cel_amqp_confirms_settle(&k, 1, 0, 1, on_settled, &s), 1);
    assert_int_equal(k.n, 0); /* the head moved past all of them */
    for (uint64_t q = 1; q <= N; q++) assert_int_equal(s.calls[q], 1);
    /* the ring is reused when answers keep up */
    size_t cap = k.cap;
    for (uint64_t q = 1; q <= N; q++) {
        push_range(&k, q, q);
        cel_amqp_confirms_settle(&k, q, 0, 1, on_settled, &s);
    }
    assert_int_equal(k.cap, cap);
    cel_amqp_confirms_free(&k);
}

static void test_lost_connection_fails_the_rest(void **state) {
    static seen_t s;
    memset(&s, 0, sizeof(s));
    cel_amqp_confirms_t k = { 0 };
    push_range(&k, 1, 5);
    cel_amqp_confirms_settle(&k, 3, 0, 1, on_settled, &s);
    cel_amqp_confirms_fail_all(&k, on_settled, &s);
    for (int q = 1; q <= 5; q++) assert_int_equal(s.calls[q], 1);
    assert_int_equal(s.ok[3], 1);
    assert_int_equal(s.ok[1] + s.ok[2] + s.ok[4] + s.ok[5], 0);
    assert_int_equal(k.n, 0);
    cel_amqp_confirms_free(&k);
}

/* Random answers (single, multiple, ack or nack) against an array model. */
static void test_matches_a_model(void **state) {
    enum { WINDOW = 200 };
    static seen_t s;
    static int model_ok[N + 2], model_done[N + 2];
    memset(&s, 0, sizeof(s));
    memset(model_ok, 0, sizeof(model_ok));
    memset(model_done, 0, sizeof(model_done));
    cel_amqp_confirms_t k = { 0 };
    uint64_t pushed = 0, lowest = 1;
    unsigned seed = 777;
    while (lowest <= N) {
        seed = seed * 1103515245u + 12345u;
        while (pushed < N && pushed < lowest + WINDOW) {
            pushed++;
            push_range(&k, pushed, pushed);
        }
        uint64_t tag = lowest + (seed >> 8) % WINDOW;
        if (tag > pushed) tag = pushed;
        int multiple = (seed >> 20) % 8 == 0, ok = (seed >> 24) % 10 != 0;
        size_t want = 0;
        for (uint64_t q = multiple ? 1 : tag; q <= tag; q++)
            if (!model_done[q]) {
                model_done[q] = 1;
                model_ok[q] = ok;
                want++;
            }
        assert_int_equal(cel_amqp_confirms_settle(&k, tag, multiple, ok, on_settled, &s), want);
        while (lowest <= N && model_done[lowest]) lowest++;
    }
    for (uint64_t q = 1; q <= N; q++) {
        assert_int_equal(s.calls[q], 1);
        assert_int_equal(s.ok[q], model_ok[q]);
    }
    assert_int_equal(k.n, 0);
    cel_amqp_confirms_free(&k);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_out_of_order_single_acks),
        cmocka_unit_test(test_multiple_and_nack),
        cmocka_unit_test(test_old_publish_holds_ring_that_grows),
        cmocka_unit_test(test_lost_connection_fails_the_rest),
        cmocka_unit_test(test_matches_a_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
