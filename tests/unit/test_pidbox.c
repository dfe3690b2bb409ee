/* test_pidbox.c -- unit tests for the pidbox destination pattern matcher
 * (worker/pidbox.c cel_pidbox_match).
 *
 * The rest of pidbox.c (destination lists, envelope decoding, replies) is
 * static and runs on a Redis connection; it is covered by the integration
 * tests, not here.
 */
#include "testutil.h"

#include "../../worker/pidbox.h"

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

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_glob),
        cmocka_unit_test(test_pcre),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
