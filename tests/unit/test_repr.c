/* test_repr.c -- unit tests for cel_repr and cel_exc_repr (protocol/repr.c).
 *
 * Against Python's own repr() of the same values (reprs.json from
 * gen_messages.py) and inline cases for tuples, quoting and the length cut.
 */
#include "testutil.h"

#include "../../protocol/protocol.h"

static void expect_repr(json_t *v, int as_tuple, size_t max, const char *want) {
    char *s = cel_repr(v, as_tuple, max);
    assert_non_null(s);
    if (strcmp(s, want) != 0) fail_msg("want <%s> got <%s>", want, s);
    free(s);
    json_decref(v);
}

static void test_inline(void **state) {
    expect_repr(json_pack("[i, i]", 2, 3), 1, 1024, "(2, 3)");
    expect_repr(json_pack("[i]", 2), 1, 1024, "(2,)");
    expect_repr(json_pack("[]"), 1, 1024, "()");
    expect_repr(json_pack("{s:[i, i]}", "k", 1, 2), 0, 1024, "{'k': [1, 2]}");
    expect_repr(json_string("it's"), 0, 1024, "\"it's\"");
    expect_repr(json_string("a'b\"c"), 0, 1024, "'a\\'b\"c'");
    expect_repr(json_pack("[n, b, b, f]", 1, 0, 0.5), 0, 1024, "[None, True, False, 0.5]");
    expect_repr(json_stringn("\0\x1b", 2), 0, 1024, "'\\x00\\x1b'");
    /* the cut: at most max bytes, ending in "..." */
    expect_repr(json_string("abcdefghijklmnopqrstuvwxyz"), 0, 16, "'abcdefghijkl...");
    assert_null(cel_repr(NULL, 0, 16));
    expect_repr(json_string("x"), 0, 3, "'x'"); /* max_len below 16 is taken as 16 */
}

static void test_cut_utf8(void **state) {
    /* never cut inside a UTF-8 sequence */
    json_t *v =
        json_string("\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
    char *s = cel_repr(v, 0, 16);
    assert_true(strlen(s) <= 16);
    assert_string_equal(s + strlen(s) - 3, "...");
    assert_true((s[strlen(s) - 4] & 0xc0) != 0xc0);
    free(s);
    json_decref(v);
}

static void test_python_fixtures(void **state) {
    json_t *f = load_fixture("reprs.json");
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(f, "values"), i, c) {
        json_t *v = json_loads(json_string_value(json_object_get(c, "value")),
                               JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        assert_non_null(v);
        expect_repr(v, (int)json_integer_value(json_object_get(c, "as_tuple")), 4096,
                    json_string_value(json_object_get(c, "repr")));
    }
    json_array_foreach(json_object_get(f, "exceptions"), i, c) {
        char *s = cel_exc_repr(json_object_get(c, "exc"));
        const char *want = json_string_value(json_object_get(c, "repr"));
        if (strcmp(s, want) != 0) fail_msg("want <%s> got <%s>", want, s);
        free(s);
    }
    json_decref(f);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inline),
        cmocka_unit_test(test_cut_utf8),
        cmocka_unit_test(test_python_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
