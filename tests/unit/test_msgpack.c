/* test_msgpack.c -- unit tests for msgpack <-> JSON values (protocol/msgpack.c).
 *
 * A captured msgpack body, every type's encodings, round trips, and the
 * refusals: non-string keys, ext, bad UTF-8, NaN, > int64, truncation,
 * trailing bytes, depth at and past CEL_MSG_MAX_DEPTH, oversized counts.
 */
#include "testutil.h"

#include "../../protocol/protocol.h"

static int from_bytes(const uint8_t *b, size_t n, json_t **out, cel_err_t *err) {
    return cel_msgpack_to_json(b, n, out, err);
}

static void test_captured_body(void **state) {
    /* redis-monitor-msgpack.txt: base64 k5MCoXikMDBmZoGha8s/+AAAAAAAAISp... */
    const char *b64 =
        "k5MCoXikMDBmZoGha8s/+AAAAAAAAISpY2FsbGJhY2tzwKhlcnJiYWNrc8ClY2hhaW7ApWNob3JkwA==";
    uint8_t *raw;
    size_t n;
    assert_int_equal(cel_base64_decode(b64, strlen(b64), &raw, &n, NULL), CEL_OK);
    json_t *v;
    cel_err_t err;
    assert_int_equal(from_bytes(raw, n, &v, &err), CEL_OK);
    char *s = cel_json_dumps(v, &err);
    assert_string_equal(s, "[[2, \"x\", \"00ff\"], {\"k\": 1.5}, {\"callbacks\": null, "
                           "\"errbacks\": null, \"chain\": null, \"chord\": null}]");
    free(s);
    /* and back: msgpack-c's packer gives Python msgpack's bytes for this value */
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_json_to_msgpack(v, &buf, &len, &cap, &err), CEL_OK);
    assert_int_equal(len, n);
    assert_memory_equal(buf, raw, n);
    free(buf);
    free(raw);
    json_decref(v);
}

static void test_types(void **state) {
    const uint8_t in[] = { 0xdc, 0x00, 0x12, 0x00, 0x7f, 0xff, 0xe0, 0xcc, 0xff, 0xcd, 0x01, 0x00,
                           0xd0, 0x80, 0xd1, 0x80, 0x00, 0xd2, 0x80, 0,    0,    0,    0xd3, 0x80,
                           0,    0,    0,    0,    0,    0,    0,    0xcf, 0x7f, 0xff, 0xff, 0xff,
                           0xff, 0xff, 0xff, 0xff, 0xca, 0x3f, 0xc0, 0,    0,    0xc0, 0xc2, 0xc3,
                           0xc4, 0x02, 'h',  'i',  0xd9, 0x01, 'x',  0x80 };
    json_t *v;
    cel_err_t err;
    assert_int_equal(from_bytes(in, sizeof(in), &v, &err), CEL_OK);
    char *s = cel_json_dumps(v, &err);
    assert_string_equal(s, "[0, 127, -1, -32, 255, 256, -128, -32768, -2147483648, "
                           "-9223372036854775808, 9223372036854775807, 1.5, null, false, true, "
                           "\"hi\", \"x\", {}]");
    free(s);
    /* round trip through our packer */
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    assert_int_equal(cel_json_to_msgpack(v, &buf, &len, &cap, &err), CEL_OK);
    json_t *w;
    assert_int_equal(from_bytes(buf, len, &w, &err), CEL_OK);
    assert_true(json_equal(v, w));
    /* appending: a second value goes after the first */
    size_t first = len;
    assert_int_equal(cel_json_to_msgpack(json_null(), &buf, &len, &cap, &err), CEL_OK);
    assert_int_equal(len, first + 1);
    assert_int_equal(buf[first], 0xc0);
    free(buf);
    json_decref(v);
    json_decref(w);
}

static void test_strings_with_nul(void **state) {
    json_t *v = json_pack("{s:s%}", "k", "a\0b", (size_t)3);
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    cel_err_t err;
    assert_int_equal(cel_json_to_msgpack(v, &buf, &len, &cap, &err), CEL_OK);
    json_t *w;
    assert_int_equal(from_bytes(buf, len, &w, &err), CEL_OK);
    assert_int_equal(json_string_length(json_object_get(w, "k")), 3);
    assert_true(json_equal(v, w));
    free(buf);
    json_decref(v);
    json_decref(w);
    /* a NUL inside a map key survives too (json_equal cannot see it: compare text) */
    const uint8_t nulkey[] = { 0x82, 0xa1, 0x00, 0x01, 0xa0, 0x02 };
    assert_int_equal(from_bytes(nulkey, sizeof(nulkey), &v, &err), CEL_OK);
    buf = NULL;
    len = cap = 0;
    assert_int_equal(cel_json_to_msgpack(v, &buf, &len, &cap, &err), CEL_OK);
    assert_int_equal(len, sizeof(nulkey));
    assert_memory_equal(buf, nulkey, len);
    char *s = cel_json_dumps(v, &err);
    assert_string_equal(s, "{\"\\u0000\": 1, \"\": 2}");
    free(s);
    free(buf);
    json_decref(v);
}

static void expect_err(const uint8_t *b, size_t n, int code, const char *part) {
    json_t *v = (json_t *)1;
    cel_err_t err;
    int rc = from_bytes(b, n, &v, &err);
    if (rc != code) fail_msg("want %s got %s (%s)", cel_err_name(code), cel_err_name(rc), err.msg);
    assert_null(v);
    if (part && !strstr(err.msg, part)) fail_msg("message '%s' lacks '%s'", err.msg, part);
}

static void test_errors(void **state) {
    const uint8_t intkey[] = { 0x81, 0x01, 0x02 };
    const uint8_t nilkey[] = { 0x81, 0xc0, 0x02 };
    const uint8_t ext[] = { 0xd4, 0x01, 0x02 };
    const uint8_t ext8[] = { 0xc7, 0x01, 0x05, 0x00 };
    const uint8_t badutf[] = { 0xa2, 0xc3, 0x28 };
    const uint8_t badbin[] = { 0xc4, 0x01, 0xff };
    const uint8_t nan[] = { 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0 };
    const uint8_t inf32[] = { 0xca, 0x7f, 0x80, 0, 0 };
    const uint8_t big[] = { 0xcf, 0x80, 0, 0, 0, 0, 0, 0, 0 };
    const uint8_t trunc1[] = { 0x92, 0x01 };
    const uint8_t trunc2[] = { 0xda, 0x00 };
    const uint8_t trunc3[] = { 0xd9, 0x05, 'a' };
    const uint8_t trailing[] = { 0x01, 0x02 };
    const uint8_t c1[] = { 0xc1 };
    const uint8_t hugearr[] = { 0xdd, 0xff, 0xff, 0xff, 0xff };
    const uint8_t hugemap[] = { 0xdf, 0x7f, 0xff, 0xff, 0xff };
    const uint8_t overcount[] = { 0xdd, 0x00, 0x00, 0x00, 0x10, 0x01 };
    /* after the bad key the rest is never read: no leak of partial maps */
    const uint8_t partial[] = { 0x82, 0xa1, 'a', 0x91, 0x01, 0x05, 0x06 };
    expect_err(intkey, sizeof(intkey), CEL_ETYPE, "not a string");
    expect_err(nilkey, sizeof(nilkey), CEL_ETYPE, "not a string");
    expect_err(ext, sizeof(ext), CEL_ETYPE, "ext");
    expect_err(ext8, sizeof(ext8), CEL_ETYPE, "ext");
    expect_err(badutf, sizeof(badutf), CEL_ETYPE, "UTF-8");
    expect_err(badbin, sizeof(badbin), CEL_ETYPE, "UTF-8");
    expect_err(nan, sizeof(nan), CEL_ETYPE, "NaN");
    expect_err(inf32, sizeof(inf32), CEL_ETYPE, "NaN");
    expect_err(big, sizeof(big), CEL_ETYPE, "int64");
    expect_err(trunc1, sizeof(trunc1), CEL_EPROTO, "truncated");
    expect_err(trunc2, sizeof(trunc2), CEL_EPROTO, "truncated");
    expect_err(trunc3, sizeof(trunc3), CEL_EPROTO, "truncated");
    expect_err(trailing, sizeof(trailing), CEL_EPROTO, "trailing");
    expect_err(c1, sizeof(c1), CEL_EPROTO, "invalid");
    expect_err(c1, 0, CEL_EPROTO, "empty");
    expect_err(hugearr, sizeof(hugearr), CEL_ELIMIT, "over the limit");
    expect_err(hugemap, sizeof(hugemap), CEL_ELIMIT, "over the limit");
    expect_err(overcount, sizeof(overcount), CEL_EPROTO, "truncated");
    expect_err(partial, sizeof(partial), CEL_ETYPE, "not a string");
    expect_err(c1, CEL_MSG_MAX_BYTES + 1, CEL_ELIMIT, "over the limit"); /* size checked first */
}

static void test_depth(void **state) {
    uint8_t b[CEL_MSG_MAX_DEPTH + 2];
    for (int d = CEL_MSG_MAX_DEPTH; d <= CEL_MSG_MAX_DEPTH + 1; d++) {
        for (int i = 0; i < d - 1; i++) b[i] = 0x91;
        b[d - 1] = 0x90;
        json_t *v;
        cel_err_t err;
        int rc = from_bytes(b, (size_t)d, &v, &err);
        assert_int_equal(rc, d <= CEL_MSG_MAX_DEPTH ? CEL_OK : CEL_ELIMIT);
        json_decref(v);
        /* maps count too */
        for (int i = 0; i < d - 1; i++) b[i] = 0x91;
        b[d - 1] = 0x80;
        rc = from_bytes(b, (size_t)d, &v, &err);
        assert_int_equal(rc, d <= CEL_MSG_MAX_DEPTH ? CEL_OK : CEL_ELIMIT);
        json_decref(v);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_captured_body),
        cmocka_unit_test(test_types),
        cmocka_unit_test(test_strings_with_nul),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_depth),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
