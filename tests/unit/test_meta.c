/* test_meta.c -- unit tests for result meta and exception dicts (protocol/meta.c).
 *
 * Byte-exact comparison with the metas celery-wire.md 3.1 captured from a
 * Python worker, with every SETEX meta of the raw captures and with metas
 * Python built for odd values (metas.json from gen_messages.py).
 */
#include "testutil.h"

#include "../../protocol/protocol.h"

static void test_captured_success(void **state) {
    json_t *five = json_integer(5);
    cel_err_t err;
    /* date_done 2026-11-22T21:13:40.668855 as unix seconds */
    char *s = cel_meta_encode("e4c9481d-b89c-4c6b-a784-93ccde2f610a", "SUCCESS", five, NULL, NULL,
                              1795382020.668855, NULL, NULL, &err);
    assert_non_null(s);
    assert_string_equal(s, "{\"status\": \"SUCCESS\", \"result\": 5, \"traceback\": null, "
                           "\"children\": [], \"date_done\": \"2026-11-22T21:13:40.668855\", "
                           "\"task_id\": \"e4c9481d-b89c-4c6b-a784-93ccde2f610a\"}");
    free(s);
    json_decref(five);
}

static void test_captured_failure(void **state) {
    json_t *exc = cel_exc_new("ValueError", "builtins", json_pack("[s]", "boom: bad value"));
    assert_non_null(exc);
    const char *tb = "Traceback (most recent call last):\n  File \".../celery/app/trace.py\", "
                     "line 451, in trace_task\n ...\nValueError: boom: bad value\n";
    cel_err_t err;
    char *s = cel_meta_encode("c56648f5-96d8-4013-afb6-7965de6d7de6", "FAILURE", exc, tb, NULL,
                              1795382030.261459, NULL, NULL, &err);
    assert_non_null(s);
    assert_string_equal(
        s, "{\"status\": \"FAILURE\", \"result\": {\"exc_type\": \"ValueError\", \"exc_message\": "
           "[\"boom: bad value\"], \"exc_module\": \"builtins\"}, \"traceback\": \"Traceback (most "
           "recent call last):\\n  File \\\".../celery/app/trace.py\\\", line 451, in "
           "trace_task\\n ...\\nValueError: boom: bad value\\n\", \"children\": [], "
           "\"date_done\": \"2026-11-22T21:13:50.261459\", \"task_id\": "
           "\"c56648f5-96d8-4013-afb6-7965de6d7de6\"}");
    free(s);
    char *r = cel_exc_repr(exc);
    assert_string_equal(r, "ValueError('boom: bad value')");
    free(r);
    json_decref(exc);
}

static void test_group_parent_retry(void **state) {
    json_t *children = json_pack("[[[s, n], n]]", "x");
    json_t *exc = cel_exc_new("KeyError", "builtins", json_pack("[s]", "again"));
    cel_err_t err;
    char *s = cel_meta_encode("x", "RETRY", exc, "tb\n", children, -1, "g", "x", &err);
    assert_string_equal(s, "{\"status\": \"RETRY\", \"result\": {\"exc_type\": \"KeyError\", "
                           "\"exc_message\": [\"again\"], \"exc_module\": \"builtins\"}, "
                           "\"traceback\": \"tb\\n\", \"children\": [[[\"x\", null], null]], "
                           "\"date_done\": null, \"group_id\": \"g\", \"parent_id\": \"x\", "
                           "\"task_id\": \"x\"}");
    free(s);
    /* empty group/parent ids are left out, as Python's truthiness test does */
    s = cel_meta_encode("x", "REVOKED", NULL, NULL, NULL, 0, "", "", &err);
    assert_string_equal(s, "{\"status\": \"REVOKED\", \"result\": null, \"traceback\": null, "
                           "\"children\": [], \"date_done\": \"1970-01-01T00:00:00\", "
                           "\"task_id\": \"x\"}");
    free(s);
    json_decref(children);
    json_decref(exc);
}

static void test_meta_errors(void **state) {
    cel_err_t err;
    assert_null(cel_meta_encode(NULL, "SUCCESS", NULL, NULL, NULL, 0, NULL, NULL, &err));
    assert_int_equal(err.code, CEL_EINVAL);
    /* a string that is not UTF-8 (only possible through _nocheck) */
    json_t *bad = json_stringn_nocheck("\xff\xfe", 2);
    assert_null(cel_meta_encode("x", "SUCCESS", bad, NULL, NULL, 0, NULL, NULL, &err));
    assert_int_equal(err.code, CEL_ETYPE);
    json_decref(bad);
    /* jansson itself refuses NaN/Inf reals, so they cannot reach the encoder */
    assert_null(json_real(0.0 / 0.0));
}

static void test_meta_fixtures(void **state) {
    json_t *metas = load_fixture("metas.json");
    size_t i;
    json_t *m;
    json_array_foreach(metas, i, m) {
        cel_err_t err;
        char *s = cel_meta_encode(
            json_string_value(json_object_get(m, "task_id")),
            json_string_value(json_object_get(m, "status")), json_object_get(m, "result"),
            json_string_value(json_object_get(m, "traceback")), json_object_get(m, "children"),
            json_number_value(json_object_get(m, "date_done")),
            json_string_value(json_object_get(m, "group_id")),
            json_string_value(json_object_get(m, "parent_id")), &err);
        if (!s) fail_msg("meta %zu: %s", i, err.msg);
        const char *want = json_string_value(json_object_get(m, "expected"));
        if (strcmp(s, want) != 0) fail_msg("meta %zu:\n want %s\n got  %s", i, want, s);
        free(s);
    }
    assert_true(json_array_size(metas) >= 20);
    json_decref(metas);
}

static void test_exc_new(void **state) {
    json_t *e = cel_exc_new("SoftTimeLimitExceeded", "billiard.exceptions", NULL);
    cel_err_t err;
    char *s = cel_json_dumps(e, &err);
    assert_string_equal(s, "{\"exc_type\": \"SoftTimeLimitExceeded\", \"exc_message\": [], "
                           "\"exc_module\": \"billiard.exceptions\"}");
    free(s);
    s = cel_exc_repr(e);
    assert_string_equal(s, "SoftTimeLimitExceeded()");
    free(s);
    json_decref(e);
    e = cel_exc_new("TimeLimitExceeded", "billiard.exceptions", json_pack("[f]", 1.0));
    s = cel_exc_repr(e);
    assert_string_equal(s, "TimeLimitExceeded(1.0)");
    free(s);
    json_decref(e);
    assert_null(cel_exc_new(NULL, "m", json_array())); /* args freed, no leak */
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_captured_success),   cmocka_unit_test(test_captured_failure),
        cmocka_unit_test(test_group_parent_retry), cmocka_unit_test(test_meta_errors),
        cmocka_unit_test(test_meta_fixtures),      cmocka_unit_test(test_exc_new),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
