/* test_base64.c -- unit tests for protocol/base64.c.
 *
 * RFC 4648 vectors, a captured body, round trips of every length 0..300,
 * and every rejected form (bad length, alphabet, padding placement).
 */
#include "testutil.h"

#include "../../protocol/protocol.h"

static void test_vectors(void **state) {
    const char *plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
    const char *enc[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
    for (int i = 0; i < 7; i++) {
        char *e = cel_base64_encode((const uint8_t *)plain[i], strlen(plain[i]));
        assert_string_equal(e, enc[i]);
        free(e);
        uint8_t *d;
        size_t n;
        cel_err_t err;
        assert_int_equal(cel_base64_decode(enc[i], strlen(enc[i]), &d, &n, &err), CEL_OK);
        assert_int_equal(n, strlen(plain[i]));
        assert_memory_equal(d, plain[i], n);
        assert_int_equal(d[n], 0);
        free(d);
    }
    const char *cap =
        "W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluI"
        "jogbnVsbCwgImNob3JkIjogbnVsbH1d";
    uint8_t *d;
    size_t n;
    assert_int_equal(cel_base64_decode(cap, strlen(cap), &d, &n, NULL), CEL_OK);
    assert_string_equal((char *)d, "[[2, 3], {}, {\"callbacks\": null, \"errbacks\": null, "
                                   "\"chain\": null, \"chord\": null}]");
    free(d);
}

static void test_round_trip(void **state) {
    uint8_t buf[300];
    for (size_t i = 0; i < sizeof(buf); i++) buf[i] = (uint8_t)(i * 37 + 11);
    for (size_t len = 0; len <= sizeof(buf); len++) {
        char *e = cel_base64_encode(buf, len);
        uint8_t *d;
        size_t n;
        assert_int_equal(cel_base64_decode(e, strlen(e), &d, &n, NULL), CEL_OK);
        assert_int_equal(n, len);
        assert_memory_equal(d, buf, len);
        free(d);
        free(e);
    }
}

static void test_rejects(void **state) {
    const char *bad[] = { "Zg=",  "Zg",   "Z",    "Zm9v!A==", "Zm9v Yg==", "Zg==Zg==",
                          "Z===", "====", "Zm=v", "Zm9v\n",   "-_==",      "Zg\0=" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t *d = (uint8_t *)1;
        size_t n = 99;
        cel_err_t err;
        size_t len = i == 11 ? 4 : strlen(bad[i]);
        if (cel_base64_decode(bad[i], len, &d, &n, &err) != CEL_EPROTO)
            fail_msg("'%s' accepted", bad[i]);
        assert_null(d);
        assert_int_equal(n, 0);
        assert_int_equal(err.code, CEL_EPROTO);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vectors),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_rejects),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
