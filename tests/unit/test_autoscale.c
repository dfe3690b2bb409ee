/* test_autoscale.c -- unit tests for the autoscale policy (worker/autoscale.c).
 *
 * Growth to min(qty, max) at once; no shrink before a growth nor within
 * keepalive of it (Celery's rule); shrink towards max(qty, min) after it;
 * always back under max; the update command's clamps; AUTOSCALE_KEEPALIVE.
 */
#include "testutil.h"

#include <stdlib.h>

#include "../../worker/autoscale.h"

static void test_grow(void **state) {
    cel_autoscale_t a;
    cel_autoscale_init(&a, 4, 1, 2);
    assert_int_equal(cel_autoscale_decide(&a, 0, 1, 100), 0);
    assert_int_equal(cel_autoscale_decide(&a, 1, 1, 100), 0);
    assert_int_equal(cel_autoscale_decide(&a, 3, 1, 100), 2);
    assert_true(a.last_up == 100);
    assert_int_equal(cel_autoscale_decide(&a, 50, 3, 101), 1); /* capped at max */
    assert_int_equal(cel_autoscale_decide(&a, 50, 4, 101), 0);
}

static void test_shrink_after_keepalive(void **state) {
    cel_autoscale_t a;
    cel_autoscale_init(&a, 4, 1, 2);
    /* never grew: Celery never shrinks */
    assert_int_equal(cel_autoscale_decide(&a, 0, 3, 100), 0);
    assert_int_equal(cel_autoscale_decide(&a, 4, 1, 100), 3);
    assert_int_equal(cel_autoscale_decide(&a, 0, 4, 101), 0);    /* within keepalive */
    assert_int_equal(cel_autoscale_decide(&a, 0, 4, 102), 0);    /* exactly keepalive */
    assert_int_equal(cel_autoscale_decide(&a, 2, 4, 102.5), -2); /* towards qty */
    assert_int_equal(cel_autoscale_decide(&a, 0, 2, 103), -1);   /* towards min */
    assert_int_equal(cel_autoscale_decide(&a, 0, 1, 104), 0);
}

static void test_over_max_and_under_min(void **state) {
    cel_autoscale_t a;
    cel_autoscale_init(&a, 4, 0, 30);
    assert_int_equal(cel_autoscale_decide(&a, 9, 6, 0), -2); /* above max: at once */
    cel_autoscale_update(&a, -1, 3);
    assert_int_equal(a.max, 4);
    assert_int_equal(cel_autoscale_decide(&a, 0, 1, 0), 2); /* up to the new min */
    cel_autoscale_update(&a, 2, -1);
    assert_int_equal(a.max, 2);
    assert_int_equal(a.min, 2); /* the max given lowers min */
}

static void test_init_and_update_clamps(void **state) {
    cel_autoscale_t a;
    cel_autoscale_init(&a, 0, -3, 0);
    assert_int_equal(a.max, 1);
    assert_int_equal(a.min, 0);
    assert_true(a.keepalive == 30);
    cel_autoscale_init(&a, 3, 7, 5);
    assert_int_equal(a.min, 3);
    cel_autoscale_update(&a, 0, -1);
    assert_int_equal(a.max, 1);
    assert_int_equal(a.min, 1);
    cel_autoscale_update(&a, -1, 6);
    assert_int_equal(a.max, 6);
    assert_int_equal(a.min, 6);
}

static void test_keepalive_env(void **state) {
    unsetenv("AUTOSCALE_KEEPALIVE");
    assert_true(cel_autoscale_keepalive_env() == 30);
    setenv("AUTOSCALE_KEEPALIVE", "1.5", 1);
    assert_true(cel_autoscale_keepalive_env() == 1.5);
    setenv("AUTOSCALE_KEEPALIVE", "0", 1);
    assert_true(cel_autoscale_keepalive_env() == 30);
    setenv("AUTOSCALE_KEEPALIVE", "5s", 1);
    assert_true(cel_autoscale_keepalive_env() == 30);
    unsetenv("AUTOSCALE_KEEPALIVE");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_grow),
        cmocka_unit_test(test_shrink_after_keepalive),
        cmocka_unit_test(test_over_max_and_under_min),
        cmocka_unit_test(test_init_and_update_clamps),
        cmocka_unit_test(test_keepalive_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
