/* test_limits.c -- unit tests for the per task name limits store (worker/limits.c).
 *
 * Rate strings, token buckets, time limits, how the two kinds of limit share
 * one entry per name (removing one keeps the other), the name length and
 * name count limits at and past the limit. The buckets read CLOCK_MONOTONIC
 * (no injectable clock), so timing tests use rates whose refill is either far
 * (1/h) or very short (1000/s plus a sleep).
 */
#include "testutil.h"

#include <time.h>

#include "../../worker/limits.h"

static void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {}
}

static void test_parse_ok(void **state) {
    double r;
    cel_err_t err;
    assert_int_equal(cel_limits_parse_rate("10/m", &r, &err), CEL_OK);
    assert_true(r > 10.0 / 60 - 1e-12 && r < 10.0 / 60 + 1e-12);
    assert_int_equal(cel_limits_parse_rate("5/s", &r, &err), CEL_OK);
    assert_true(r == 5.0);
    assert_int_equal(cel_limits_parse_rate("100/h", &r, &err), CEL_OK);
    assert_true(r > 100.0 / 3600 - 1e-12 && r < 100.0 / 3600 + 1e-12);
    assert_int_equal(cel_limits_parse_rate("7", &r, &err), CEL_OK);
    assert_true(r == 7.0);
    assert_int_equal(cel_limits_parse_rate("0.5/s", &r, &err), CEL_OK);
    assert_true(r == 0.5);
    r = 99;
    assert_int_equal(cel_limits_parse_rate("0", &r, &err), CEL_OK);
    assert_true(r == 0);
    r = 99;
    assert_int_equal(cel_limits_parse_rate("0/m", &r, &err), CEL_OK);
    assert_true(r == 0);
    r = 99;
    assert_int_equal(cel_limits_parse_rate("", &r, &err), CEL_OK);
    assert_true(r == 0);
    r = 99;
    assert_int_equal(cel_limits_parse_rate(NULL, &r, &err), CEL_OK);
    assert_true(r == 0);
}

static void test_parse_bad(void **state) {
    static const char *const bad[] = { "abc",  "/m",  "10/x", "10/mm", "10/minute", "-1",
                                       "-1/s", "nan", "inf",  "1e999", "10m" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        double r = 99;
        cel_err_t err = { 0 };
        if (cel_limits_parse_rate(bad[i], &r, &err) != CEL_EINVAL)
            fail_msg("'%s' was accepted (%g)", bad[i], r);
        assert_int_equal(err.code, CEL_EINVAL);
        assert_true(err.msg[0] != '\0');
        assert_true(r == 0);
    }
    cel_err_t err;
    double r;
    cel_limits_parse_rate("abc", &r, &err);
    assert_string_equal(err.msg, "could not convert string to float: 'abc'");
    cel_limits_parse_rate("10/x", &r, &err);
    assert_string_equal(err.msg, "KeyError('x')");
    /* err may be NULL */
    assert_int_equal(cel_limits_parse_rate("zz", &r, NULL), CEL_EINVAL);
}

static void test_no_limit(void **state) {
    cel_limits_t *rl = cel_limits_new();
    assert_non_null(rl);
    assert_true(cel_limits_take(rl, "t") == 0);
    assert_true(cel_limits_take(rl, NULL) == 0);
    for (int i = 0; i < 100; i++) assert_true(cel_limits_take(rl, "t") == 0);
    cel_limits_free(rl);
    cel_limits_free(NULL);
}

static void test_bucket(void **state) {
    cel_limits_t *rl = cel_limits_new();
    cel_err_t err;
    assert_int_equal(cel_limits_set_rate(rl, "slow", NULL, 1.0 / 3600, &err), CEL_OK);
    /* capacity 1: the first take is free, the second waits about an hour */
    assert_true(cel_limits_take(rl, "slow") == 0);
    double w = cel_limits_take(rl, "slow");
    assert_true(w > 3590 && w <= 3600);
    /* nothing was taken by the refused call */
    double w2 = cel_limits_take(rl, "slow");
    assert_true(w2 > 3590 && w2 <= w);
    /* other names are unaffected */
    assert_true(cel_limits_take(rl, "other") == 0);

    /* a fast bucket refills */
    assert_int_equal(cel_limits_set_rate(rl, "fast", NULL, 1000, &err), CEL_OK);
    assert_true(cel_limits_take(rl, "fast") == 0);
    w = cel_limits_take(rl, "fast");
    assert_true(w > 0 && w <= 0.001 + 1e-9);
    sleep_ms(5);
    assert_true(cel_limits_take(rl, "fast") == 0);
    /* capacity stays 1 after a long idle time */
    sleep_ms(10);
    assert_true(cel_limits_take(rl, "fast") == 0);
    assert_true(cel_limits_take(rl, "fast") > 0);

    /* changing the rate keeps the bucket; 0 removes the limit */
    assert_int_equal(cel_limits_set_rate(rl, "slow", NULL, 2.0 / 3600, &err), CEL_OK);
    w = cel_limits_take(rl, "slow");
    assert_true(w > 1790 && w <= 1800);
    assert_int_equal(cel_limits_set_rate(rl, "slow", NULL, 0, &err), CEL_OK);
    assert_true(cel_limits_take(rl, "slow") == 0);
    assert_true(cel_limits_take(rl, "slow") == 0);
    /* removing an unknown name is fine, negative removes too */
    assert_int_equal(cel_limits_set_rate(rl, "nope", NULL, 0, &err), CEL_OK);
    assert_int_equal(cel_limits_set_rate(rl, "fast", NULL, -1, &err), CEL_OK);
    assert_true(cel_limits_take(rl, "fast") == 0);
    assert_true(cel_limits_take(rl, "fast") == 0);
    cel_limits_free(rl);
}

static void test_name_limit(void **state) {
    cel_limits_t *rl = cel_limits_new();
    cel_err_t err;
    char name[CEL_LIMITS_NAME_MAX + 2];
    memset(name, 'n', CEL_LIMITS_NAME_MAX);
    name[CEL_LIMITS_NAME_MAX] = '\0';
    assert_int_equal(cel_limits_set_rate(rl, name, NULL, 1.0 / 3600, &err), CEL_OK);
    assert_true(cel_limits_take(rl, name) == 0);
    assert_true(cel_limits_take(rl, name) > 0);
    name[CEL_LIMITS_NAME_MAX] = 'n';
    name[CEL_LIMITS_NAME_MAX + 1] = '\0';
    assert_int_equal(cel_limits_set_rate(rl, name, NULL, 1, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_true(cel_limits_take(rl, name) == 0);
    assert_int_equal(cel_limits_set_rate(rl, name, NULL, 0, &err), CEL_ELIMIT);
    cel_limits_free(rl);
}

static void test_count_limit(void **state) {
    cel_limits_t *rl = cel_limits_new();
    cel_err_t err;
    char name[32];
    for (int i = 0; i < CEL_LIMITS_MAX; i++) {
        snprintf(name, sizeof(name), "t%d", i);
        assert_int_equal(cel_limits_set_rate(rl, name, NULL, 1.0 / 3600, &err), CEL_OK);
    }
    assert_int_equal(cel_limits_set_rate(rl, "one-more", NULL, 1, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_true(cel_limits_take(rl, "one-more") == 0);
    /* an existing name can still be changed at the limit */
    assert_int_equal(cel_limits_set_rate(rl, "t5", NULL, 2, &err), CEL_OK);
    /* removing one makes room; the others keep their buckets */
    assert_int_equal(cel_limits_set_rate(rl, "t0", NULL, 0, &err), CEL_OK);
    assert_int_equal(cel_limits_set_rate(rl, "one-more", NULL, 1.0 / 3600, &err), CEL_OK);
    assert_true(cel_limits_take(rl, "one-more") == 0);
    assert_true(cel_limits_take(rl, "one-more") > 0);
    snprintf(name, sizeof(name), "t%d", CEL_LIMITS_MAX - 1); /* moved into t0's place */
    assert_true(cel_limits_take(rl, name) == 0);
    assert_true(cel_limits_take(rl, name) > 0);
    assert_true(cel_limits_take(rl, "t0") == 0);
    assert_true(cel_limits_take(rl, "t0") == 0);
    cel_limits_free(rl);
}

static void test_rate_text(void **state) {
    cel_limits_t *l = cel_limits_new();
    cel_err_t err;
    assert_null(cel_limits_rate_text(l, "t"));
    assert_null(cel_limits_rate_text(l, NULL));
    assert_int_equal(cel_limits_set_rate(l, "t", "10/m", 10.0 / 60, &err), CEL_OK);
    assert_string_equal(cel_limits_rate_text(l, "t"), "10/m");
    assert_int_equal(cel_limits_set_rate(l, "t", "5", 5, &err), CEL_OK);
    assert_string_equal(cel_limits_rate_text(l, "t"), "5");
    /* the text is cut at its limit, exactly */
    char text[CEL_LIMITS_RATE_TEXT_MAX + 10];
    memset(text, '9', sizeof(text) - 1);
    text[sizeof(text) - 1] = '\0';
    assert_int_equal(cel_limits_set_rate(l, "t", text, 1, &err), CEL_OK);
    assert_int_equal(strlen(cel_limits_rate_text(l, "t")), CEL_LIMITS_RATE_TEXT_MAX);
    assert_int_equal(cel_limits_set_rate(l, "t", "0", 0, &err), CEL_OK);
    assert_null(cel_limits_rate_text(l, "t"));
    cel_limits_free(l);
}

static void test_time_limits(void **state) {
    cel_limits_t *l = cel_limits_new();
    cel_err_t err;
    double soft = 7, hard = 8;
    /* none set: the caller's values stay */
    assert_int_equal(cel_limits_time(l, "t", &soft, &hard), 0);
    assert_true(soft == 7 && hard == 8);
    assert_int_equal(cel_limits_time(l, NULL, &soft, &hard), 0);
    assert_int_equal(cel_limits_set_time(l, "t", 1.5, 3, &err), CEL_OK);
    assert_int_equal(cel_limits_time(l, "t", &soft, &hard), 1);
    assert_true(soft == 1.5 && hard == 3);
    /* other names are unaffected */
    soft = 7, hard = 8;
    assert_int_equal(cel_limits_time(l, "u", &soft, &hard), 0);
    assert_true(soft == 7 && hard == 8);
    /* 0 (and negative) means none, and still overrides */
    assert_int_equal(cel_limits_set_time(l, "t", -1, 0, &err), CEL_OK);
    assert_int_equal(cel_limits_time(l, "t", &soft, &hard), 1);
    assert_true(soft == 0 && hard == 0);
    /* a time limit alone puts no rate on the name */
    assert_true(cel_limits_take(l, "t") == 0);
    assert_true(cel_limits_take(l, "t") == 0);
    assert_null(cel_limits_rate_text(l, "t"));
    cel_limits_free(l);
}

/* Rate and time limits of one name live in one entry: removing the rate
 * keeps the time limits and the other way round, and the entry counts once. */
static void test_shared_entry(void **state) {
    cel_limits_t *l = cel_limits_new();
    cel_err_t err;
    double soft = 0, hard = 0;
    assert_int_equal(cel_limits_set_time(l, "t", 2, 4, &err), CEL_OK);
    assert_int_equal(cel_limits_set_rate(l, "t", "1/h", 1.0 / 3600, &err), CEL_OK);
    assert_true(cel_limits_take(l, "t") == 0); /* a new bucket starts full */
    assert_true(cel_limits_take(l, "t") > 3500);
    assert_int_equal(cel_limits_set_rate(l, "t", NULL, 0, &err), CEL_OK);
    assert_true(cel_limits_take(l, "t") == 0);
    assert_int_equal(cel_limits_time(l, "t", &soft, &hard), 1);
    assert_true(soft == 2 && hard == 4);
    /* the count limit counts names, not limits */
    char name[32];
    for (int i = 1; i < CEL_LIMITS_MAX; i++) {
        snprintf(name, sizeof(name), "n%d", i);
        assert_int_equal(cel_limits_set_time(l, name, 1, 1, &err), CEL_OK);
    }
    assert_int_equal(cel_limits_set_rate(l, "t", "1", 1, &err), CEL_OK);
    assert_int_equal(cel_limits_set_time(l, "extra", 1, 1, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_int_equal(cel_limits_set_rate(l, "extra", "1", 1, &err), CEL_ELIMIT);
    assert_int_equal(cel_limits_time(l, "extra", &soft, &hard), 0);
    /* a name too long for either */
    char longname[CEL_LIMITS_NAME_MAX + 2];
    memset(longname, 'x', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(cel_limits_set_time(l, longname, 1, 1, &err), CEL_ELIMIT);
    cel_limits_free(l);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_ok),     cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_no_limit),     cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_name_limit),   cmocka_unit_test(test_count_limit),
        cmocka_unit_test(test_rate_text),    cmocka_unit_test(test_time_limits),
        cmocka_unit_test(test_shared_entry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
