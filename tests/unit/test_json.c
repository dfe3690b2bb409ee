/* test_json.c -- unit tests for cel_json_dumps (protocol/json.c, pyfloat.c).
 *
 * Output must equal Python's json.dumps: checked inline for the tricky cases
 * and against dumps.json (values and Python's text, from gen_messages.py).
 */
#include "testutil.h"

#include <math.h>

#include "../../protocol/internal.h" /* cel_pyfloat_format */
#include "../../protocol/protocol.h"

static void expect_dumps(json_t *v, const char *want) {
    cel_err_t err;
    char *s = cel_json_dumps(v, &err);
    if (!s) fail_msg("dumps failed: %s", err.msg);
    if (strcmp(s, want) != 0) fail_msg("want %s got %s", want, s);
    free(s);
    json_decref(v);
}

static void test_floats(void **state) {
    expect_dumps(json_real(0.1), "0.1");
    expect_dumps(json_real(1e100), "1e+100");
    expect_dumps(json_real(1.0), "1.0");
    expect_dumps(json_real(-0.0), "-0.0");
    expect_dumps(json_real(1e16), "1e+16");
    expect_dumps(json_real(1e15), "1000000000000000.0");
    expect_dumps(json_real(1e-5), "1e-05");
    expect_dumps(json_real(0.0001), "0.0001");
    expect_dumps(json_real(0.1 + 0.2), "0.30000000000000004");
    expect_dumps(json_real(5e-324), "5e-324");
    expect_dumps(json_real(1.7976931348623157e308), "1.7976931348623157e+308");
    expect_dumps(json_real(123.456), "123.456");
    expect_dumps(json_real(-2.5e-7), "-2.5e-07");
}

/* The significant digits of a number's text (no sign, point, exponent, or
 * leading and trailing zeros). */
static void sig_digits(const char *s, char *out) {
    size_t n = 0;
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9' && (n > 0 || *s != '0')) out[n++] = *s;
    while (n > 0 && out[n - 1] == '0') n--;
    out[n] = '\0';
}

/* cel_pyfloat_format's bisection finds the digits the plain scan finds (the
 * shortest precision 1..17 that reads back), for random bit patterns, doubles
 * made from floats (the model's log-probs), every power of two and its
 * neighbours, and short decimals. */
static void expect_shortest(double v) {
    char got[CEL_PYFLOAT_MAX], tmp[40], want[24], have[24];
    cel_pyfloat_format(v, got);
    if (strtod(got, NULL) != v) fail_msg("%s does not read back as %.17g", got, v);
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, v);
        if (strtod(tmp, NULL) == v) break;
    }
    snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, v);
    sig_digits(tmp, want);
    sig_digits(got, have);
    if (strcmp(want, have) != 0) fail_msg("%.17g: want digits %s, got %s (%s)", v, want, have, got);
}

static void test_float_digits_are_the_shortest(void **state) {
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 100000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double d;
        memcpy(&d, &x, sizeof(d));
        if (isfinite(d) && d != 0.0) expect_shortest(d);
        uint32_t b = (uint32_t)(x >> 32);
        float f;
        memcpy(&f, &b, sizeof(f));
        if (isfinite(f) && f != 0.0f) expect_shortest((double)f);
        expect_shortest(-(double)(x % 100000) / 1000.0 - 0.001);
    }
    for (int e = -1074; e <= 1023; e++) {
        double p = ldexp(1.0, e);
        expect_shortest(p);
        expect_shortest(nextafter(p, 0.0));
        expect_shortest(nextafter(p, INFINITY));
    }
}

/* NaN and infinities, carried as cel_json_float's marker, written as Python's json. */
static void test_non_finite_floats(void **state) {
    expect_dumps(cel_json_float(NAN), "NaN");
    expect_dumps(cel_json_float(INFINITY), "Infinity");
    expect_dumps(cel_json_float(-INFINITY), "-Infinity");
    expect_dumps(cel_json_float(2.5), "2.5");
    json_t *a = json_pack("[f, o, {s:o}]", 1.5, cel_json_float(NAN), "p", cel_json_float(INFINITY));
    expect_dumps(a, "[1.5, NaN, {\"p\": Infinity}]");
    double d = 0;
    json_t *m = cel_json_float(-INFINITY);
    assert_int_equal(cel_json_float_value(m, &d), 1);
    assert_true(isinf(d) && d < 0);
    /* the marker survives a msgpack frame (what an executor sends the main process) */
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    json_t *back = NULL;
    assert_int_equal(cel_json_to_msgpack(m, &buf, &len, &cap, NULL), CEL_OK);
    assert_int_equal(cel_msgpack_to_json(buf, len, &back, NULL), CEL_OK);
    free(buf);
    expect_dumps(back, "-Infinity");
    json_decref(m);
    json_t *three = json_integer(3);
    assert_int_equal(cel_json_float_value(three, &d), 1);
    assert_true(d == 3);
    json_decref(three);
    /* an object that only looks like one is an object */
    json_t *o = json_object();
    json_object_set_new(o, "celeriac-float", json_string("NaN"));
    expect_dumps(o, "{\"celeriac-float\": \"NaN\"}");
    o = cel_json_float(NAN);
    json_object_set_new(o, "x", json_true());
    assert_int_equal(cel_json_float_value(o, &d), 0);
    json_decref(o);
    json_t *r = json_real(1.0);
    assert_int_equal(cel_json_float_value(r, &d), 1);
    json_decref(r);
}

static void test_strings_and_containers(void **state) {
    expect_dumps(json_string("h\xc3\xa9llo"), "\"h\\u00e9llo\"");
    expect_dumps(json_string("\xf0\x9f\x98\x80"), "\"\\ud83d\\ude00\"");
    expect_dumps(json_stringn("a\0b", 3), "\"a\\u0000b\"");
    expect_dumps(json_string("\"\\/\b\f\n\r\t\x01\x7f"),
                 "\"\\\"\\\\/\\b\\f\\n\\r\\t\\u0001\\u007f\"");
    expect_dumps(json_pack("{s:i, s:[b, b, n], s:{}}", "z", 1, "a", 1, 0, "m"),
                 "{\"z\": 1, \"a\": [true, false, null], \"m\": {}}");
    expect_dumps(json_pack("[]"), "[]");
    expect_dumps(json_integer(-9223372036854775807LL - 1), "-9223372036854775808");
    json_t *o = json_object();
    json_object_setn_new(o, "k\0ey", 4, json_null());
    expect_dumps(o, "{\"k\\u0000ey\": null}");
}

static void test_errors(void **state) {
    cel_err_t err;
    json_t *bad = json_stringn_nocheck("\xc3", 1);
    assert_null(cel_json_dumps(bad, &err));
    assert_int_equal(err.code, CEL_ETYPE);
    json_decref(bad);
    assert_null(cel_json_dumps(NULL, &err));
    /* deeper than the encoder's stack guard */
    json_t *root = json_array(), *cur = root;
    for (int i = 0; i < 600; i++) {
        json_t *n = json_array();
        json_array_append_new(cur, n);
        cur = n;
    }
    assert_null(cel_json_dumps(root, &err));
    assert_int_equal(err.code, CEL_ELIMIT);
    json_decref(root);
}

static void test_python_fixtures(void **state) {
    json_t *cases = load_fixture("dumps.json");
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *in = json_string_value(json_array_get(c, 0));
        json_t *v = json_loads(in, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
        if (!v) fail_msg("cannot load %s", in);
        expect_dumps(v, json_string_value(json_array_get(c, 1)));
    }
    json_decref(cases);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_floats),
        cmocka_unit_test(test_float_digits_are_the_shortest),
        cmocka_unit_test(test_non_finite_floats),
        cmocka_unit_test(test_strings_and_containers),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_python_fixtures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
