/* test_time.c -- unit tests for ISO-8601 parsing and formatting (protocol/time.c).
 *
 * Inline captured values plus times.json: Python's parse of Celery ISO
 * strings and datetime.utcfromtimestamp(t).isoformat() of chosen times.
 */
#include "testutil.h"

#include "../../protocol/protocol.h"

static void test_inline(void **state) {
    double t;
    cel_err_t err;
    assert_int_equal(cel_time_parse_iso8601("2026-11-22T21:14:16.013988+00:00", &t, &err), CEL_OK);
    assert_true(t > 1795382056.013987 && t < 1795382056.013989);
    char buf[40];
    assert_string_equal(cel_time_format_iso8601(1795382020.668855, buf, sizeof(buf)),
                        "2026-11-22T21:13:40.668855");
    assert_string_equal(cel_time_format_iso8601(1795382020.0, buf, sizeof(buf)),
                        "2026-11-22T21:13:40");
    assert_string_equal(cel_time_format_iso8601_utc(t, buf, sizeof(buf)),
                        "2026-11-22T21:14:16.013988+00:00");
    assert_int_equal(cel_time_parse_iso8601("2026-11-22", &t, &err), CEL_EPROTO);
    assert_int_equal(cel_time_parse_iso8601(NULL, &t, &err), CEL_EPROTO);
}

static void test_python_fixtures(void **state) {
    json_t *f = load_fixture("times.json");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(f, "parse"), i, c) {
        const char *s = json_string_value(json_array_get(c, 0));
        double want = json_number_value(json_array_get(c, 1)), got;
        cel_err_t err;
        if (cel_time_parse_iso8601(s, &got, &err) != CEL_OK) fail_msg("%s: %s", s, err.msg);
        if (got - want > 1e-6 || want - got > 1e-6)
            fail_msg("%s: want %.6f got %.6f", s, want, got);
    }
    json_array_foreach(json_object_get(f, "bad"), i, c) {
        double got;
        cel_err_t err;
        if (cel_time_parse_iso8601(json_string_value(c), &got, &err) != CEL_EPROTO)
            fail_msg("'%s' was accepted", json_string_value(c));
    }
    json_array_foreach(json_object_get(f, "format"), i, c) {
        char buf[40];
        const char *want = json_string_value(json_array_get(c, 1));
        cel_time_format_iso8601(json_number_value(json_array_get(c, 0)), buf, sizeof(buf));
        if (strcmp(buf, want) != 0)
            fail_msg("%.7f: want %s got %s", json_number_value(json_array_get(c, 0)), want, buf);
    }
    json_decref(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inline),
        cmocka_unit_test(test_python_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
