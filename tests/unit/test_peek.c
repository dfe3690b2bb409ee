/* test_peek.c -- unit tests for protocol/peek.c (headers-only envelope scan) and
 * cel_task_from_peek.
 *
 * Real envelopes from gen_messages.py (every field checked against a full
 * jansson parse of the same bytes), headers before and after a 10 MB body,
 * escaped keys and values, unreadable values, missing fields, every
 * truncation of a real envelope in an exact-size buffer (ASan sees any read
 * past len), nesting at the depth limit and one past it, and what happens
 * after the scan's stop point (never looked at). Run under `make asan`.
 */
#include "testutil.h"

#include "../../protocol/peek.h"
#include "../../protocol/protocol.h"

/* Runs the scan on an exact-size heap copy, so a read past len is an error. */
static int peek(const char *buf, size_t len, cel_peek_t *out, cel_err_t *err) {
    char *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    if (len) memcpy(copy, buf, len);
    int rc = cel_peek_envelope(copy, len, out, err);
    free(copy);
    return rc;
}

static int peeks(const char *text, cel_peek_t *out) {
    cel_err_t err;
    cel_err_clear(&err);
    return peek(text, strlen(text), out, &err);
}

/* What peek must find in obj[key]: the string, or "" when not a string. */
static const char *want_str(json_t *obj, const char *key) {
    const char *s = json_string_value(json_object_get(obj, key));
    return s && strlen(s) <= CEL_PEEK_STR_MAX ? s : "";
}

static void check_against_jansson(const char *name, const char *buf, size_t len,
                                  const cel_peek_t *pk) {
    json_t *env = json_loadb(buf, len, JSON_ALLOW_NUL, NULL);
    assert_non_null(env);
    json_t *h = json_object_get(env, "headers"), *p = json_object_get(env, "properties");
    const char *keys[] = { "id", "task", "root_id", "parent_id", "group" };
    const char *got[] = { pk->id, pk->task, pk->root_id, pk->parent_id, pk->group };
    for (int i = 0; i < 5; i++)
        if (strcmp(want_str(h, keys[i]), got[i]) != 0)
            fail_msg("%s: headers.%s: want '%s', got '%s'", name, keys[i], want_str(h, keys[i]),
                     got[i]);
    if (strcmp(want_str(p, "correlation_id"), pk->correlation_id) != 0 ||
        strcmp(want_str(p, "reply_to"), pk->reply_to) != 0)
        fail_msg("%s: properties differ", name);
    json_decref(env);
}

static void test_real_messages(void **state) {
    (void)state;
    json_t *expect = load_fixture("expect.json");
    const char *dir = testdata_dir();
    const char *name;
    json_t *e;
    int n = 0, v2 = 0;
    json_object_foreach(expect, name, e) {
        char fn[512];
        size_t len;
        snprintf(fn, sizeof(fn), "messages/%s.json", name);
        char *buf = read_file(dir, fn, &len);
        cel_peek_t pk;
        cel_err_t err;
        int rc = peek(buf, len, &pk, &err);
        if (rc != CEL_OK) fail_msg("%s: %s (%s)", name, cel_err_name(rc), err.msg);
        check_against_jansson(name, buf, len, &pk);
        if (json_integer_value(json_object_get(e, "proto")) == 2) {
            /* the ids the full decoder finds, read from the headers alone */
            assert_string_equal(pk.id, json_string_value(json_object_get(e, "id")));
            assert_string_equal(pk.task, json_string_value(json_object_get(e, "name")));
            v2++;
        }
        free(buf);
        n++;
    }
    assert_true(n >= 40);
    assert_true(v2 >= 40);
    json_decref(expect);
}

static const char *HEADERS =
    "\"headers\": {\"lang\": \"py\", \"task\": \"diag.echo\", \"id\": \"id-7\", \"shadow\": null,"
    " \"timelimit\": [null, 2.5], \"group\": \"g-1\", \"parent_id\": \"p-1\", \"root_id\": "
    "\"r-1\", \"stamps\": {\"a\": [1, {\"b\": \"}]\"}]}, \"ignore_result\": false}";
static const char *PROPS =
    "\"properties\": {\"correlation_id\": \"id-7\", \"reply_to\": \"rq-1\", \"delivery_info\":"
    " {\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": 0, \"body_encoding\": "
    "\"base64\", \"delivery_tag\": \"t-1\"}";

static void check_full(const cel_peek_t *pk) {
    assert_string_equal(pk->id, "id-7");
    assert_string_equal(pk->task, "diag.echo");
    assert_string_equal(pk->root_id, "r-1");
    assert_string_equal(pk->parent_id, "p-1");
    assert_string_equal(pk->group, "g-1");
    assert_string_equal(pk->correlation_id, "id-7");
    assert_string_equal(pk->reply_to, "rq-1");
}

/* An envelope with a body of n base64 bytes placed first (kombu's order) or last. */
static char *big_envelope(size_t n, int body_last, size_t *len) {
    size_t cap = n + strlen(HEADERS) + strlen(PROPS) + 256;
    char *buf = malloc(cap);
    assert_non_null(buf);
    char *body = malloc(n + 1);
    assert_non_null(body);
    for (size_t i = 0; i < n; i++) body[i] = "ABCDabcd0123+/=="[i % 16];
    body[n] = '\0';
    const char *ct = "\"content-type\": \"application/json\"";
    int k = body_last
                ? snprintf(buf, cap, "{%s, %s, %s, \"body\": \"%s\"}", ct, HEADERS, PROPS, body)
                : snprintf(buf, cap, "{\"body\": \"%s\", %s, %s, %s}", body, ct, HEADERS, PROPS);
    free(body);
    *len = (size_t)k;
    return buf;
}

static void test_headers_after_huge_body(void **state) {
    (void)state;
    size_t len;
    char *buf = big_envelope(10u << 20, 0, &len);
    cel_peek_t pk;
    assert_int_equal(peek(buf, len, &pk, NULL), CEL_OK);
    check_full(&pk);
    free(buf);
}

static void test_headers_before_huge_body(void **state) {
    (void)state;
    size_t len;
    char *buf = big_envelope(10u << 20, 1, &len);
    cel_peek_t pk;
    assert_int_equal(peek(buf, len, &pk, NULL), CEL_OK);
    check_full(&pk);
    /* The scan stops after the properties: a body cut short is never read. */
    const char *stop = strstr(buf, "\"body\"");
    assert_non_null(stop);
    assert_int_equal(peek(buf, (size_t)(stop - buf) + 20, &pk, NULL), CEL_OK);
    check_full(&pk);
    free(buf);
}

/* Every prefix of an envelope, each in an exact-size buffer: before the stop
 * point EPROTO with empty fields, from it on CEL_OK with every field. */
static void test_every_truncation(void **state) {
    (void)state;
    char env[2048];
    int n = snprintf(env, sizeof(env), "{\"body\": \"W1tdLCB7fSwge31d\", %s, %s, \"x\": 1}",
                     HEADERS, PROPS);
    size_t stop = (size_t)(strstr(env, ", \"x\"") - env); /* just after the properties */
    for (size_t len = 0; len <= (size_t)n; len++) {
        cel_peek_t pk;
        cel_err_t err;
        int rc = peek(env, len, &pk, &err);
        if (len < stop) {
            if (rc != CEL_EPROTO)
                fail_msg("prefix %zu: want EPROTO, got %s", len, cel_err_name(rc));
            assert_string_equal(pk.id, "");
            assert_string_equal(pk.task, "");
            assert_string_equal(pk.reply_to, "");
        } else {
            if (rc != CEL_OK) fail_msg("prefix %zu: %s (%s)", len, cel_err_name(rc), err.msg);
            check_full(&pk);
        }
    }
}

static void test_escapes(void **state) {
    (void)state;
    cel_peek_t pk;
    /* escaped key names, escaped values, a surrogate pair, quotes and
     * backslash runs inside skipped strings */
    const char *env =
        "{\"body\": \"a\\\\\\\"b\\\\\", \"he\\u0061ders\": {\"\\u0069d\": "
        "\"q\\\"u\\\\o\\/te\\u00e9\\ud83d\\ude00\\n\", \"x\": \"\\\\\", \"task\": \"t\\u2603\"},"
        " \"properties\": {}}";
    assert_int_equal(peeks(env, &pk), CEL_OK);
    assert_string_equal(pk.id, "q\"u\\o/te\xc3\xa9\xf0\x9f\x98\x80\n");
    assert_string_equal(pk.task, "t\xe2\x98\x83");
    /* raw UTF-8 passes through */
    assert_int_equal(peeks("{\"headers\": {\"id\": \"\xc3\xa9t\xc3\xa9\"}}", &pk), CEL_OK);
    assert_string_equal(pk.id, "\xc3\xa9t\xc3\xa9");
    /* a bad escape is not JSON */
    assert_int_equal(peeks("{\"headers\": {\"id\": \"a\\qb\"}}", &pk), CEL_EPROTO);
    assert_int_equal(peeks("{\"headers\": {\"id\": \"a\\u12G4\"}}", &pk), CEL_EPROTO);
}

/* Values a C string cannot carry, or longer than the limit, read as "";
 * the scan goes on and finds the other fields. */
static void test_unreadable_values(void **state) {
    (void)state;
    cel_peek_t pk;
    const char *bad[] = { "a\\u0000b", "\\ud800", "\\udc00x", "\\ud800\\u0041",
                          "\xff\xfe",  "a\xc3",   "\x01",     "\xed\xa0\x80" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char env[256];
        snprintf(env, sizeof(env),
                 "{\"headers\": {\"id\": \"%s\", \"task\": \"ok\"}, \"properties\": "
                 "{\"reply_to\": \"r\"}}",
                 bad[i]);
        if (peeks(env, &pk) != CEL_OK) fail_msg("case %zu not scanned", i);
        if (pk.id[0]) fail_msg("case %zu: id '%s' should be unreadable", i, pk.id);
        assert_string_equal(pk.task, "ok");
        assert_string_equal(pk.reply_to, "r");
    }
    /* at the length limit and one past it (also when the last char is escaped) */
    char v[CEL_PEEK_STR_MAX + 2];
    memset(v, 'i', sizeof(v));
    v[CEL_PEEK_STR_MAX] = '\0';
    char env[1024];
    snprintf(env, sizeof(env), "{\"headers\": {\"id\": \"%s\", \"task\": \"t\"}}", v);
    assert_int_equal(peeks(env, &pk), CEL_OK);
    assert_int_equal(strlen(pk.id), CEL_PEEK_STR_MAX);
    v[CEL_PEEK_STR_MAX] = 'i';
    v[CEL_PEEK_STR_MAX + 1] = '\0';
    snprintf(env, sizeof(env), "{\"headers\": {\"id\": \"%s\", \"task\": \"t\"}}", v);
    assert_int_equal(peeks(env, &pk), CEL_OK);
    assert_string_equal(pk.id, "");
    assert_string_equal(pk.task, "t");
    v[CEL_PEEK_STR_MAX - 1] = '\0';
    snprintf(env, sizeof(env), "{\"headers\": {\"id\": \"%s\\\\\", \"task\": \"t\"}}", v);
    assert_int_equal(peeks(env, &pk), CEL_OK); /* 254 + an escaped backslash = 255 */
    assert_int_equal(strlen(pk.id), CEL_PEEK_STR_MAX);
    snprintf(env, sizeof(env), "{\"headers\": {\"id\": \"%s\\u00e9\", \"task\": \"t\"}}", v);
    assert_int_equal(peeks(env, &pk), CEL_OK); /* 254 + 2 bytes: over */
    assert_string_equal(pk.id, "");
    assert_string_equal(pk.task, "t");
}

static void test_missing_and_wrong_types(void **state) {
    (void)state;
    cel_peek_t pk;
    assert_int_equal(peeks("{}", &pk), CEL_OK);
    assert_string_equal(pk.id, "");
    assert_int_equal(peeks(" {\"body\": \"W10=\", \"properties\": {}} ", &pk), CEL_OK);
    assert_string_equal(pk.id, "");
    assert_int_equal(peeks("{\"headers\": null, \"properties\": null}", &pk), CEL_OK);
    assert_string_equal(pk.id, "");
    assert_int_equal(peeks("{\"headers\": {\"id\": 7, \"task\": [\"x\"], \"group\": null}}", &pk),
                     CEL_OK);
    assert_string_equal(pk.id, "");
    assert_string_equal(pk.task, "");
    assert_string_equal(pk.group, "");
    /* numbers and Python's NaN/Infinity are skipped like any scalar */
    assert_int_equal(peeks("{\"a\": -1.5e+3, \"b\": NaN, \"c\": -Infinity, \"d\": true,"
                           "\"headers\": {\"n\": 0, \"id\": \"i\"}}",
                           &pk),
                     CEL_OK);
    assert_string_equal(pk.id, "i");
    /* a repeated key inside headers: the last one counts, as in Python */
    assert_int_equal(peeks("{\"headers\": {\"id\": \"a\", \"id\": \"b\"}}", &pk), CEL_OK);
    assert_string_equal(pk.id, "b");
    /* "headers" that is not an object does not count; a later one does */
    assert_int_equal(peeks("{\"headers\": \"x\", \"headers\": {\"id\": \"c\"}}", &pk), CEL_OK);
    assert_string_equal(pk.id, "c");
    /* whitespace everywhere JSON allows it */
    assert_int_equal(peeks("\n{ \"headers\" :\t{ \"id\" :\r\"d\" } , \"properties\" : { } }", &pk),
                     CEL_OK);
    assert_string_equal(pk.id, "d");
}

static void test_not_an_envelope(void **state) {
    (void)state;
    cel_peek_t pk;
    const char *bad[] = { "",
                          "   ",
                          "[1, 2]",
                          "\"str\"",
                          "42",
                          "{",
                          "{\"a\"",
                          "{\"a\" 1}",
                          "{\"a\": }",
                          "{\"a\": [}",
                          "{\"a\": {]}",
                          "{\"a\": 1 \"b\": 2}",
                          "{\"a\": 1,}",
                          "{1: 2}",
                          "{\"a\": \"unterminated}",
                          "{\"headers\": {\"id\": \"x\"",
                          "{\"a\": ]}" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cel_err_t err;
        int rc = peek(bad[i], strlen(bad[i]), &pk, &err);
        if (rc != CEL_EPROTO) fail_msg("'%s': want EPROTO, got %s", bad[i], cel_err_name(rc));
        assert_int_equal(err.code, CEL_EPROTO);
        assert_string_equal(pk.id, "");
    }
}

/* Nesting: the envelope is level 1, headers 2; CEL_MSG_MAX_DEPTH levels in all
 * are accepted, one more is CEL_ELIMIT, in headers and in skipped values. */
static char *nested_env(const char *prefix, int levels, const char *suffix) {
    size_t cap = strlen(prefix) + strlen(suffix) + 2 * (size_t)levels + 1;
    char *s = malloc(cap);
    assert_non_null(s);
    size_t n = strlen(prefix);
    memcpy(s, prefix, n);
    for (int i = 0; i < levels; i++) s[n++] = '[';
    for (int i = 0; i < levels; i++) s[n++] = ']';
    memcpy(s + n, suffix, strlen(suffix) + 1);
    return s;
}

static void test_depth_limit(void **state) {
    (void)state;
    cel_peek_t pk;
    cel_err_t err;
    /* in headers: 2 levels outside */
    char *ok = nested_env("{\"headers\": {\"id\": \"i\", \"x\": ", CEL_MSG_MAX_DEPTH - 2, "}}");
    assert_int_equal(peek(ok, strlen(ok), &pk, &err), CEL_OK);
    assert_string_equal(pk.id, "i");
    char *bad = nested_env("{\"headers\": {\"id\": \"i\", \"x\": ", CEL_MSG_MAX_DEPTH - 1, "}}");
    assert_int_equal(peek(bad, strlen(bad), &pk, &err), CEL_ELIMIT);
    assert_int_equal(err.code, CEL_ELIMIT);
    assert_string_equal(pk.id, "");
    free(ok);
    free(bad);
    /* in a skipped top-level value: 1 level outside */
    ok = nested_env("{\"body\": ", CEL_MSG_MAX_DEPTH - 1, ", \"headers\": {\"id\": \"i\"}}");
    assert_int_equal(peek(ok, strlen(ok), &pk, &err), CEL_OK);
    assert_string_equal(pk.id, "i");
    bad = nested_env("{\"body\": ", CEL_MSG_MAX_DEPTH, ", \"headers\": {\"id\": \"i\"}}");
    assert_int_equal(peek(bad, strlen(bad), &pk, &err), CEL_ELIMIT);
    free(ok);
    free(bad);
    /* far deeper than the limit: refused without recursion */
    bad = nested_env("{\"body\": ", 100000, "}");
    assert_int_equal(peek(bad, strlen(bad), &pk, &err), CEL_ELIMIT);
    free(bad);
    /* after the stop point nothing is looked at, however deep or broken */
    ok = nested_env("{\"headers\": {\"id\": \"i\"}, \"properties\": {}, \"body\": ", 100000,
                    "garbage");
    assert_int_equal(peek(ok, strlen(ok), &pk, &err), CEL_OK);
    assert_string_equal(pk.id, "i");
    free(ok);
}

static void test_task_from_peek(void **state) {
    (void)state;
    size_t len;
    char *buf = big_envelope(1000, 0, &len);
    cel_peek_t pk;
    assert_int_equal(peek(buf, len, &pk, NULL), CEL_OK);
    free(buf);
    cel_task_t *t = NULL;
    cel_err_t err;
    assert_int_equal(cel_task_from_peek(&pk, &t, &err), CEL_OK);
    assert_non_null(t);
    assert_int_equal(t->proto, 2);
    assert_string_equal(t->id, "id-7");
    assert_string_equal(t->name, "diag.echo");
    assert_string_equal(t->root_id, "r-1");
    assert_string_equal(t->parent_id, "p-1");
    assert_string_equal(t->group, "g-1");
    assert_string_equal(t->correlation_id, "id-7");
    assert_string_equal(t->reply_to, "rq-1");
    assert_true(json_is_array(t->args) && json_array_size(t->args) == 0);
    assert_true(json_is_object(t->kwargs) && json_object_size(t->kwargs) == 0);
    assert_null(t->embed);
    assert_null(t->delivery_tag);
    assert_int_equal(t->group_index, -1);
    assert_int_equal(t->ignore_result, 0);
    cel_task_free(t);
    /* absent fields stay NULL; a name may be empty; an id is required */
    memset(&pk, 0, sizeof(pk));
    snprintf(pk.id, sizeof(pk.id), "only-id");
    assert_int_equal(cel_task_from_peek(&pk, &t, &err), CEL_OK);
    assert_string_equal(t->id, "only-id");
    assert_string_equal(t->name, "");
    assert_null(t->group);
    assert_null(t->parent_id);
    assert_null(t->reply_to);
    cel_task_free(t);
    pk.id[0] = '\0';
    t = (cel_task_t *)1;
    assert_int_equal(cel_task_from_peek(&pk, &t, &err), CEL_EINVAL);
    assert_null(t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_messages),
        cmocka_unit_test(test_headers_after_huge_body),
        cmocka_unit_test(test_headers_before_huge_body),
        cmocka_unit_test(test_every_truncation),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_unreadable_values),
        cmocka_unit_test(test_missing_and_wrong_types),
        cmocka_unit_test(test_not_an_envelope),
        cmocka_unit_test(test_depth_limit),
        cmocka_unit_test(test_task_from_peek),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
