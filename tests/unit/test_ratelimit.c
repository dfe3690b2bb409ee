/* test_ratelimit.c -- unit tests for rate strings and token buckets (worker/ratelimit.c).
 *
 * The buckets read CLOCK_MONOTONIC (no injectable clock), so timing tests use
 * rates whose refill is either far (1/h) or very short (1000/s plus a sleep).
 */
#include "testutil.h"

#include <time.h>

#include "../../worker/ratelimit.h"

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static void test_parse_ok(void **state) {
    double r;
    cel_err_t err;
    assert_int_equal(cel_ratelimit_parse("10/m", &r, &err), CEL_OK);
    assert_true(r > 10.0 / 60 - 1e-12 && r < 10.0 / 60 + 1e-12);
    assert_int_equal(cel_ratelimit_parse("5/s", &r, &err), CEL_OK);
    assert_true(r == 5.0);
    assert_int_equal(cel_ratelimit_parse("100/h", &r, &err), CEL_OK);
    assert_true(r > 100.0 / 3600 - 1e-12 && r < 100.0 / 3600 + 1e-12);
    assert_int_equal(cel_ratelimit_parse("7", &r, &err), CEL_OK);
    assert_true(r == 7.0);
    assert_int_equal(cel_ratelimit_parse("0.5/s", &r, &err), CEL_OK);
    assert_true(r == 0.5);
    r = 99;
    assert_int_equal(cel_ratelimit_parse("0", &r, &err), CEL_OK);
    assert_true(r == 0);
    r = 99;
    assert_int_equal(cel_ratelimit_parse("0/m", &r, &err), CEL_OK);
    assert_true(r == 0);
    r = 99;
    assert_int_equal(cel_ratelimit_parse("", &r, &err), CEL_OK);
    assert_true(r == 0);
    r = 99;
    assert_int_equal(cel_ratelimit_parse(NULL, &r, &err), CEL_OK);
    assert_true(r == 0);
}

static void test_parse_bad(void **state) {
    static const char *const bad[] = {"abc", "/m", "10/x", "10/mm", "10/minute", "-1",
                                      "-1/s", "nan", "inf", "1e999", "10m"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        double r = 99;
        cel_err_t err = {0};
        if (cel_ratelimit_parse(bad[i], &r, &err) != CEL_EINVAL)
            fail_msg("'%s' was accepted (%g)", bad[i], r);
        assert_int_equal(err.code, CEL_EINVAL);
        assert_true(err.msg[0] != '\0');
        assert_true(r == 0);
    }
    cel_err_t err;
    double r;
    cel_ratelimit_parse("abc", &r, &err);
    assert_string_equal(err.msg, "could not convert string to float: 'abc'");
    cel_ratelimit_parse("10/x", &r, &err);
    assert_string_equal(err.msg, "KeyError('x')");
    /* err may be NULL */
    assert_int_equal(cel_ratelimit_parse("zz", &r, NULL), CEL_EINVAL);
}

static void test_no_limit(void **state) {
    cel_ratelimit_t *rl = cel_ratelimit_new();
    assert_non_null(rl);
    assert_true(cel_ratelimit_take(rl, "t") == 0);
    assert_true(cel_ratelimit_take(rl, NULL) == 0);
    for (int i = 0; i < 100; i++) assert_true(cel_ratelimit_take(rl, "t") == 0);
    cel_ratelimit_free(rl);
    cel_ratelimit_free(NULL);
}

static void test_bucket(void **state) {
    cel_ratelimit_t *rl = cel_ratelimit_new();
    cel_err_t err;
    assert_int_equal(cel_ratelimit_set(rl, "slow", 1.0 / 3600, &err), CEL_OK);
    /* capacity 1: the first take is free, the second waits about an hour */
    assert_true(cel_ratelimit_take(rl, "slow") == 0);
    double w = cel_ratelimit_take(rl, "slow");
    assert_true(w > 3590 && w <= 3600);
    /* nothing was taken by the refused call */
    double w2 = cel_ratelimit_take(rl, "slow");
    assert_true(w2 > 3590 && w2 <= w);
    /* other names are unaffected */
    assert_true(cel_ratelimit_take(rl, "other") == 0);

    /* a fast bucket refills */
    assert_int_equal(cel_ratelimit_set(rl, "fast", 1000, &err), CEL_OK);
    assert_true(cel_ratelimit_take(rl, "fast") == 0);
    w = cel_ratelimit_take(rl, "fast");
    assert_true(w > 0 && w <= 0.001 + 1e-9);
    sleep_ms(5);
    assert_true(cel_ratelimit_take(rl, "fast") == 0);
    /* capacity stays 1 after a long idle time */
    sleep_ms(10);
    assert_true(cel_ratelimit_take(rl, "fast") == 0);
    assert_true(cel_ratelimit_take(rl, "fast") > 0);

    /* changing the rate keeps the bucket; 0 removes the limit */
    assert_int_equal(cel_ratelimit_set(rl, "slow", 2.0 / 3600, &err), CEL_OK);
    w = cel_ratelimit_take(rl, "slow");
    assert_true(w > 1790 && w <= 1800);
    assert_int_equal(cel_ratelimit_set(rl, "slow", 0, &err), CEL_OK);
    assert_true(cel_ratelimit_take(rl, "slow") == 0);
    assert_true(cel_ratelimit_take(rl, "slow") == 0);
    /* removing an unknown name is fine, negative removes too */
    assert_int_equal(cel_ratelimit_set(rl, "nope", 0, &err), CEL_OK);
    assert_int_equal(cel_ratelimit_set(rl, "fast", -1, &err), CEL_OK);
    assert_true(cel_ratelimit_take(rl, "fast") == 0);
    assert_true(cel_ratelimit_take(rl, "fast") == 0);
    cel_ratelimit_free(rl);
}

static void test_name_limit(void **state) {
    cel_ratelimit_t *rl = cel_ratelimit_new();
    cel_err_t err;
    char name[CEL_RATELIMIT_NAME_MAX + 2];
    memset(name, 'n', CEL_RATELIMIT_NAME_MAX);
    name[CEL_RATELIMIT_NAME_MAX] = '\0';
    assert_int_equal(cel_ratelimit_set(rl, name, 1.0 / 3600, &err), CEL_OK);
    assert_true(cel_ratelimit_take(rl, name) == 0);
    assert_true(cel_ratelimit_take(rl, name) > 0);
    name[CEL_RATELIMIT_NAME_MAX] = 'n';
    name[CEL_RATELIMIT_NAME_MAX + 1] = '\0';
    assert_int_equal(cel_ratelimit_set(rl, name, 1, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_true(cel_ratelimit_take(rl, name) == 0);
    assert_int_equal(cel_ratelimit_set(rl, name, 0, &err), CEL_ELIMIT);
    cel_ratelimit_free(rl);
}

static void test_count_limit(void **state) {
    cel_ratelimit_t *rl = cel_ratelimit_new();
    cel_err_t err;
    char name[32];
    for (int i = 0; i < CEL_RATELIMIT_MAX; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        assert_int_equal(cel_ratelimit_set(rl, name, 1.0 / 3600, &err), CEL_OK);
    }
    assert_int_equal(cel_ratelimit_set(rl, "one-more", 1, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_true(cel_ratelimit_take(rl, "one-more") == 0);
    /* an existing name can still be changed at the limit */
    assert_int_equal(cel_ratelimit_set(rl, "t5", 2, &err), CEL_OK);
    /* removing one makes room; the others keep their buckets */
    assert_int_equal(cel_ratelimit_set(rl, "t0", 0, &err), CEL_OK);
    assert_int_equal(cel_ratelimit_set(rl, "one-more", 1.0 / 3600, &err), CEL_OK);
    assert_true(cel_ratelimit_take(rl, "one-more") == 0);
    assert_true(cel_ratelimit_take(rl, "one-more") > 0);
    snprintf(name, sizeof(name), "t%d", CEL_RATELIMIT_MAX - 1); /* moved into t0's place */
    assert_true(cel_ratelimit_take(rl, name) == 0);
    assert_true(cel_ratelimit_take(rl, name) > 0);
    assert_true(cel_ratelimit_take(rl, "t0") == 0);
    assert_true(cel_ratelimit_take(rl, "t0") == 0);
    cel_ratelimit_free(rl);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),   cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_no_limit),   cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_name_limit), cmocka_unit_test(test_count_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
