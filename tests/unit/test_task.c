/* test_task.c -- unit tests for task decoding (protocol/task.c, body.c).
 *
 * Real envelopes: the captures and fresh client messages written by
 * gen_messages.py into $CEL_TESTDATA, checked field by field against the
 * expectations Python computed. Then every error path: not JSON, no headers,
 * bad base64, wrong body shapes, content types, size and depth limits at and
 * past the limit, msgpack errors, big integers, NaN.
 */
#include "testutil.h"

#include "../../protocol/internal.h"
#include "../../protocol/protocol.h"
#include "../fuzz/guard.h"
#include "../fuzz/task_same.h"

static const char *HDRS =
    "{\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": \"id-1\", \"retries\": 0,"
    " \"timelimit\": [null, null], \"eta\": null, \"expires\": null}";

/* Builds a Redis envelope around a raw body (base64-encoded). headers is JSON
 * text or NULL for none. Returns a malloc'd string. */
static char *make_env(const char *headers, const void *body, size_t len, const char *ctype) {
    char *b64 = cel_base64_encode(body, len);
    assert_non_null(b64);
    json_t *env =
        json_pack("{s:s, s:s, s:s, s:{s:s, s:i, s:{s:s, s:s}, s:s, s:s}}", "body", b64,
                  "content-encoding", "utf-8", "content-type", ctype, "properties",
                  "correlation_id", "id-1", "priority", 0, "delivery_info", "exchange", "",
                  "routing_key", "celery", "body_encoding", "base64", "delivery_tag", "tag-1");
    assert_non_null(env);
    if (headers) {
        json_t *h = json_loads(headers, JSON_ALLOW_NUL, NULL);
        assert_non_null(h);
        json_object_set_new(env, "headers", h);
    }
    char *s = json_dumps(env, JSON_COMPACT);
    json_decref(env);
    free(b64);
    return s;
}

/* Decodes an envelope made of headers + body text; returns rc, *out set. */
static int decode_body(const char *headers, const char *body, const char *ctype, cel_task_t **out,
                       cel_err_t *err) {
    char *env = make_env(headers, body, strlen(body), ctype);
    int rc = cel_task_decode_envelope(env, strlen(env), out, err);
    free(env);
    return rc;
}

static void check_str(const char *name, const char *field, json_t *want, const char *got) {
    if (json_is_null(want) || !want) {
        if (got) fail_msg("%s: %s: want null, got '%s'", name, field, got);
        return;
    }
    if (!got || strcmp(json_string_value(want), got) != 0)
        fail_msg("%s: %s: want '%s', got '%s'", name, field, json_string_value(want),
                 got ? got : "(null)");
}

static void check_num(const char *name, const char *field, json_t *want, double got) {
    double w = json_is_true(want) ? 1 : json_is_false(want) ? 0 : json_number_value(want);
    if (w - got > 1e-6 || got - w > 1e-6)
        fail_msg("%s: %s: want %.6f, got %.6f", name, field, w, got);
}

static void check_json(const char *name, const char *field, json_t *want, json_t *got) {
    if (!got || !json_equal(want, got)) {
        char *a = json_dumps(want, JSON_ENCODE_ANY),
             *b = got ? json_dumps(got, JSON_ENCODE_ANY) : NULL;
        fail_msg("%s: %s: want %s, got %s", name, field, a, b ? b : "(null)");
    }
}

static void test_real_messages(void **state) {
    json_t *expect = load_fixture("expect.json");
    const char *dir = testdata_dir();
    const char *name;
    json_t *e;
    int n = 0, fast = 0;
    json_object_foreach(expect, name, e) {
        char fn[512];
        size_t len;
        snprintf(fn, sizeof(fn), "messages/%s.json", name);
        char *buf = read_file(dir, fn, &len);
        cel_task_t *t = NULL;
        cel_err_t err;
        int rc = cel_task_decode_envelope(buf, len, &t, &err);
        /* the full decoder (jansson) reads it the same, whichever path it took */
        cel_task_t *full = NULL;
        cel_err_t ferr;
        char why[256];
        cel_env_scan_t sc;
        fast += cel_env_scan(buf, len, &sc) == CEL_OK;
        assert_int_equal(cel_task_decode_envelope_full(buf, len, CEL_MSG_MAX_BYTES, &full, &ferr),
                         rc);
        if (full && !task_same(t, full, why, sizeof(why))) fail_msg("%s: %s", name, why);
        if (full && full->proto == 2) assert_non_null(full->headers);
        cel_task_free(full);
        const char *want_rc = json_string_value(json_object_get(e, "rc"));
        if (strcmp(want_rc, "OK") == 0 && rc != CEL_OK)
            fail_msg("%s: rc %s (%s)", name, cel_err_name(rc), err.msg);
        if (strcmp(want_rc, "EBODY") == 0 && rc != CEL_EBODY)
            fail_msg("%s: want EBODY, got %s", name, cel_err_name(rc));
        assert_non_null(t);
        check_str(name, "id", json_object_get(e, "id"), t->id);
        check_str(name, "name", json_object_get(e, "name"), t->name);
        check_num(name, "proto", json_object_get(e, "proto"), t->proto);
        if (rc == CEL_OK) {
            static const char *strs[] = { "root_id",      "parent_id",        "group",
                                          "shadow",       "origin",           "argsrepr",
                                          "kwargsrepr",   "eta_str",          "expires_str",
                                          "content_type", "content_encoding", "correlation_id",
                                          "reply_to",     "delivery_tag",     "exchange",
                                          "routing_key" };
            const char *got[] = { t->root_id,      t->parent_id,        t->group,
                                  t->shadow,       t->origin,           t->argsrepr,
                                  t->kwargsrepr,   t->eta_str,          t->expires_str,
                                  t->content_type, t->content_encoding, t->correlation_id,
                                  t->reply_to,     t->delivery_tag,     t->exchange,
                                  t->routing_key };
            for (size_t i = 0; i < sizeof(strs) / sizeof(strs[0]); i++)
                check_str(name, strs[i], json_object_get(e, strs[i]), got[i]);
            check_num(name, "eta", json_object_get(e, "eta"), t->eta);
            check_num(name, "expires", json_object_get(e, "expires"), t->expires);
            check_num(name, "retries", json_object_get(e, "retries"), (double)t->retries);
            check_num(name, "time_limit", json_object_get(e, "time_limit"), t->time_limit);
            check_num(name, "soft_time_limit", json_object_get(e, "soft_time_limit"),
                      t->soft_time_limit);
            check_num(name, "ignore_result", json_object_get(e, "ignore_result"), t->ignore_result);
            check_num(name, "group_index", json_object_get(e, "group_index"), t->group_index);
            check_num(name, "priority", json_object_get(e, "priority"), t->priority);
            check_num(name, "redelivered", json_object_get(e, "redelivered"), t->redelivered);
            check_json(name, "args", json_object_get(e, "args"), t->args);
            check_json(name, "kwargs", json_object_get(e, "kwargs"), t->kwargs);
            check_json(name, "embed", json_object_get(e, "embed"), t->embed);
        } else {
            assert_null(t->args);
            assert_true(strlen(err.msg) > 0);
        }
        cel_task_free(t);
        free(buf);
        n++;
    }
    assert_true(n >= 40);
    assert_true(fast >= 10); /* the stock client's envelopes take the fast path */
    json_decref(expect);
}

/* The captured add(2,3) envelope from celery-wire.md 2.1, inline, so the
 * decoder is checked even without generated data. */
static void test_inline_capture(void **state) {
    const char *env =
        "{\"body\": "
        "\"W1syLCAzXSwge30sIHsiY2FsbGJhY2tzIjogbnVsbCwgImVycmJhY2tzIjogbnVsbCwgImNoYWluIj"
        "ogbnVsbCwgImNob3JkIjogbnVsbH1d\", \"content-encoding\": \"utf-8\", \"content-type\": "
        "\"application/json\", \"headers\": {\"lang\": \"py\", \"task\": \"tasks.add\", \"id\": "
        "\"e4c9481d-b89c-4c6b-a784-93ccde2f610a\", \"shadow\": null, \"eta\": null, \"expires\": "
        "null, \"group\": null, \"group_index\": null, \"retries\": 0, \"timelimit\": [null, "
        "null], "
        "\"root_id\": \"e4c9481d-b89c-4c6b-a784-93ccde2f610a\", \"parent_id\": null, \"argsrepr\": "
        "\"(2, 3)\", \"kwargsrepr\": \"{}\", \"origin\": \"gen7810@vm\", \"ignore_result\": "
        "false}, "
        "\"properties\": {\"correlation_id\": \"e4c9481d-b89c-4c6b-a784-93ccde2f610a\", "
        "\"reply_to\": \"18451551-3867-3061-9d3b-6382979a50c8\", \"delivery_mode\": 2, "
        "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": 0, "
        "\"body_encoding\": \"base64\", \"delivery_tag\": "
        "\"6cf2fb3c-ba63-4a64-a0b8-cc7cad9f0ce0\"}}";
    cel_task_t *t;
    cel_err_t err;
    assert_int_equal(cel_task_decode_envelope(env, strlen(env), &t, &err), CEL_OK);
    assert_string_equal(t->id, "e4c9481d-b89c-4c6b-a784-93ccde2f610a");
    assert_string_equal(t->name, "tasks.add");
    assert_string_equal(t->delivery_tag, "6cf2fb3c-ba63-4a64-a0b8-cc7cad9f0ce0");
    assert_string_equal(t->routing_key, "celery");
    assert_string_equal(t->exchange, "");
    assert_string_equal(t->argsrepr, "(2, 3)");
    assert_int_equal(json_integer_value(json_array_get(t->args, 1)), 3);
    assert_int_equal(json_object_size(t->kwargs), 0);
    assert_non_null(t->embed);
    assert_int_equal(t->group_index, -1);
    assert_true(t->eta == 0 && t->expires == 0 && t->time_limit == 0);
    cel_task_free(t);
}

static void expect_rc(const char *headers, const char *body, const char *ctype, int want,
                      const char *msg_part) {
    cel_task_t *t = (cel_task_t *)1;
    cel_err_t err;
    cel_err_clear(&err);
    int rc = decode_body(headers, body, ctype, &t, &err);
    if (rc != want)
        fail_msg("body %.60s: want %s, got %s (%s)", body, cel_err_name(want), cel_err_name(rc),
                 err.msg);
    if (want == CEL_EBODY) {
        assert_non_null(t);
        assert_string_equal(t->id, "id-1");
        assert_null(t->args);
    } else if (want != CEL_OK) {
        assert_null(t);
    }
    if (msg_part && !strstr(err.msg, msg_part))
        fail_msg("message '%s' lacks '%s'", err.msg, msg_part);
    cel_task_free(t);
}

static void test_envelope_errors(void **state) {
    cel_task_t *t = (cel_task_t *)1;
    cel_err_t err;
    const char *bad[] = { "",
                          "not json",
                          "{\"body\": ",
                          "[1, 2]",
                          "\"str\"",
                          "{}",
                          "{\"body\": 5}",
                          "{\"body\": \"\", \"properties\": 7}",
                          "{\"body\": \"\", \"headers\": [1]}" };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        t = (cel_task_t *)1;
        assert_int_equal(cel_task_decode_envelope(bad[i], strlen(bad[i]), &t, &err), CEL_EPROTO);
        assert_null(t);
        assert_int_equal(err.code, CEL_EPROTO);
    }
    /* JSON without headers: a v2 body but no task header -> nothing usable */
    expect_rc(NULL, "[[1], {}, null]", "application/json", CEL_EPROTO, "no 'task' header");
    /* headers without an id */
    expect_rc("{\"task\": \"tasks.add\"}", "[[1], {}, null]", "application/json", CEL_EPROTO,
              "no task id");
    expect_rc("{\"task\": 5, \"id\": \"x\"}", "[[1], {}, null]", "application/json", CEL_EPROTO,
              NULL);
    /* an id with an embedded NUL would store the result under another key */
    expect_rc("{\"task\": \"t\", \"id\": \"a\\u0000b\"}", "[[1], {}, null]", "application/json",
              CEL_EPROTO, "NUL");
}

/* An envelope whose argsrepr header is the given JSON string text (escapes kept). */
static int decode_argsrepr(const char *argsrepr, cel_task_t **t, cel_err_t *err) {
    char env[1024];
    int n = snprintf(env, sizeof(env),
                     "{\"body\": \"W1tdLCB7fSwgbnVsbF0=\", \"content-type\": \"application/json\", "
                     "\"content-encoding\": \"utf-8\", \"headers\": {\"lang\": \"py\", \"task\": "
                     "\"tasks.add\", \"id\": \"id-1\", \"argsrepr\": \"%s\"}, \"properties\": "
                     "{\"body_encoding\": \"base64\"}}",
                     argsrepr);
    assert_true(n > 0 && (size_t)n < sizeof(env));
    const uint8_t *at = guard_place((const uint8_t *)env, (size_t)n);
    return cel_task_decode_envelope((const char *)at, (size_t)n, t, err);
}

/* Python's json.dumps writes lone surrogates (argsrepr of a str holding one); each
 * becomes U+FFFD, a proper pair stays what it is. */
static void test_lone_surrogates(void **state) {
    static const struct {
        const char *in, *want;
    } cases[] = {
        { "\\ud800", "\xef\xbf\xbd" },
        { "\\udc00x", "\xef\xbf\xbdx" },
        { "a\\uDBFF", "a\xef\xbf\xbd" },
        { "\\ud800\\u0041", "\xef\xbf\xbd"
                            "A" },
        { "\\ud800\\ud800\\udc00", "\xef\xbf\xbd\xf0\x90\x80\x80" },
        { "\\ud83d\\ude00", "\xf0\x9f\x98\x80" },
        { "\\\\ud800", "\\ud800" }, /* an escaped backslash, not an escape */
        { "\\u00e9", "\xc3\xa9" },
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        cel_task_t *t = NULL;
        cel_err_t err;
        int rc = decode_argsrepr(cases[i].in, &t, &err);
        if (rc != CEL_OK) fail_msg("%s: rc %d: %s", cases[i].in, rc, err.msg);
        assert_string_equal(t->argsrepr, cases[i].want);
        cel_task_free(t);
    }
    /* \u with fewer than four hex digits is still an error, not a replacement */
    cel_task_t *t = (cel_task_t *)1;
    cel_err_t err;
    assert_int_equal(decode_argsrepr("\\ud80", &t, &err), CEL_EPROTO);
    assert_null(t);
    assert_int_equal(decode_argsrepr("\\ud800\\udcg0", &t, &err), CEL_EPROTO);
    assert_null(t);
}

/* Issue 20: replace_lone_surrogates ran sscanf on the envelope, which reads to a NUL
 * first; an envelope is (buf, len). The 14 bytes "\ud800\u0041" placed right before
 * an unreadable page crashed the decoder. Every prefix of it, and of a whole envelope
 * holding a lone surrogate, must be refused without reading past its end. */
static void test_surrogate_at_buffer_end(void **state) {
    static const uint8_t in[] = { 0x22, 0x5c, 0x75, 0x64, 0x38, 0x30, 0x30,
                                  0x5c, 0x75, 0x30, 0x30, 0x34, 0x31, 0x22 };
    guard_mode = 1; /* whatever CEL_FUZZ_GUARD says: this test is the guard */
    cel_task_t *t = (cel_task_t *)1;
    cel_err_t err;
    const uint8_t *at = guard_place(in, sizeof(in));
    assert_int_equal(cel_task_decode_envelope((const char *)at, sizeof(in), &t, &err), CEL_EPROTO);
    assert_null(t);
    assert_non_null(strstr(err.msg, "not a JSON object")); /* parsed after the repair */
    for (size_t n = 0; n < sizeof(in); n++) {
        at = guard_place(in, n);
        assert_int_equal(cel_task_decode_envelope((const char *)at, n, &t, &err), CEL_EPROTO);
        assert_null(t);
    }
    const char *env = "{\"body\": \"W1tdLCB7fSwgbnVsbF0=\", \"content-type\": "
                      "\"application/json\", \"properties\": {\"body_encoding\": \"base64\"}, "
                      "\"headers\": {\"task\": \"t\", \"id\": \"i\", \"argsrepr\": "
                      "\"\\udc00\\ud800\\u0041\"}}";
    size_t len = strlen(env);
    for (size_t n = 0; n <= len; n++) {
        at = guard_place((const uint8_t *)env, n);
        int rc = cel_task_decode_envelope((const char *)at, n, &t, &err);
        if (n < len) {
            assert_int_equal(rc, CEL_EPROTO);
            assert_null(t);
        } else {
            assert_int_equal(rc, CEL_OK);
            assert_string_equal(t->argsrepr, "\xef\xbf\xbd\xef\xbf\xbd"
                                             "A");
            cel_task_free(t);
        }
    }
}

static void test_bad_base64(void **state) {
    const char *fmt = "{\"body\": \"%s\", \"content-type\": \"application/json\", "
                      "\"content-encoding\": \"utf-8\", \"headers\": %s, \"properties\": "
                      "{\"body_encoding\": \"base64\", \"delivery_tag\": \"t\"}}";
    const char *bodies[] = { "W1tdLCB7fSwgbnVsbF0", "W1tdLCB7fSwgbnVsbF0*", "====", "W1t=LCB7" };
    for (size_t i = 0; i < 4; i++) {
        char env[1024];
        snprintf(env, sizeof(env), fmt, bodies[i], HDRS);
        cel_task_t *t;
        cel_err_t err;
        assert_int_equal(cel_task_decode_envelope(env, strlen(env), &t, &err), CEL_EBODY);
        assert_non_null(t);
        assert_string_equal(t->id, "id-1");
        assert_string_equal(t->delivery_tag, "t");
        assert_non_null(strstr(err.msg, "base64"));
        cel_task_free(t);
    }
    /* protocol 1 with a bad body: the task is unknown */
    char env[1024];
    snprintf(env, sizeof(env), fmt, "!!!!", "{}");
    cel_task_t *t;
    cel_err_t err;
    assert_int_equal(cel_task_decode_envelope(env, strlen(env), &t, &err), CEL_EPROTO);
    assert_null(t);
    /* no body_encoding: body taken as text */
    snprintf(env, sizeof(env),
             "{\"body\": \"[[7], {}, null]\", \"content-type\": \"application/json\", "
             "\"headers\": %s, \"properties\": {}}",
             HDRS);
    assert_int_equal(cel_task_decode_envelope(env, strlen(env), &t, &err), CEL_OK);
    assert_int_equal(json_integer_value(json_array_get(t->args, 0)), 7);
    cel_task_free(t);
    snprintf(env, sizeof(env),
             "{\"body\": \"[[7], {}, null]\", \"content-type\": \"application/json\", "
             "\"headers\": %s, \"properties\": {\"body_encoding\": \"rot13\"}}",
             HDRS);
    assert_int_equal(cel_task_decode_envelope(env, strlen(env), &t, &err), CEL_EBODY);
    assert_non_null(strstr(err.msg, "rot13"));
    cel_task_free(t);
}

static void test_body_shapes(void **state) {
    const char *J = "application/json";
    expect_rc(HDRS, "[[1, 2], {\"a\": 1}, {\"callbacks\": null}]", J, CEL_OK, NULL);
    expect_rc(HDRS, "[[1, 2], {}, null]", J, CEL_OK, NULL);
    expect_rc(HDRS, "{\"x\": 1}", J, CEL_EBODY, "must be a list");
    expect_rc(HDRS, "5", J, CEL_EBODY, "must be a list");
    expect_rc(HDRS, "[[1], {}]", J, CEL_EBODY, "got 2 items");
    expect_rc(HDRS, "[[1], {}, null, 4]", J, CEL_EBODY, "got 4 items");
    expect_rc(HDRS, "[{}, {}, null]", J, CEL_EBODY, "args must be a list");
    expect_rc(HDRS, "[[], [], null]", J, CEL_EBODY, "kwargs must be a mapping");
    expect_rc(HDRS, "[[], {}, 5]", J, CEL_EBODY, "embed");
    expect_rc(HDRS, "[[1, 2], {}, null", J, CEL_EBODY, "not valid JSON");
    expect_rc(HDRS, "", J, CEL_EBODY, "not valid JSON");
    expect_rc(HDRS, "[[123456789012345678901234567890], {}, null]", J, CEL_EBODY, "64 bits");
    expect_rc(HDRS, "[[NaN], {}, null]", J, CEL_EBODY, "NaN");
    expect_rc(HDRS, "[[Infinity], {}, null]", J, CEL_EBODY, "NaN and Infinity");
    expect_rc(HDRS, "[[1e999], {}, null]", J, CEL_EBODY, NULL);
    /* a hybrid message with bad kwargs */
    expect_rc(HDRS, "{\"args\": [1], \"kwargs\": [1]}", J, CEL_EBODY, "mapping");
    expect_rc(HDRS, "{\"args\": 3, \"kwargs\": {}}", J, CEL_EBODY, "args must be a list");
    /* bad headers: the task is known, the message is not runnable */
    expect_rc("{\"task\": \"t\", \"id\": \"id-1\", \"eta\": \"tomorrow\"}", "[[], {}, null]", J,
              CEL_EBODY, "eta");
    expect_rc("{\"task\": \"t\", \"id\": \"id-1\", \"eta\": 5}", "[[], {}, null]", J, CEL_EBODY,
              "eta");
    expect_rc("{\"task\": \"t\", \"id\": \"id-1\", \"retries\": \"x\"}", "[[], {}, null]", J,
              CEL_EBODY, "retries");
    expect_rc("{\"task\": \"t\", \"id\": \"id-1\", \"timelimit\": [1]}", "[[], {}, null]", J,
              CEL_EBODY, "timelimit");
    expect_rc("{\"task\": \"t\", \"id\": \"id-1\", \"timelimit\": [\"a\", 1]}", "[[], {}, null]", J,
              CEL_EBODY, "timelimit");
    /* protocol 1 body without a task name */
    expect_rc("{}", "{\"id\": \"x\", \"args\": []}", J, CEL_EPROTO, "protocol 1");
    expect_rc("{}", "{\"task\": \"t\", \"id\": \"id-1\", \"kwargs\": 5}", J, CEL_EBODY, "mapping");
}

static void test_content_types(void **state) {
    const char *b = "[[1], {}, null]";
    expect_rc(HDRS, b, "application/x-python-serialize", CEL_EBODY, "pickle");
    expect_rc(HDRS, b, "application/x-yaml", CEL_EBODY,
              "unsupported content type 'application/x-yaml'");
    expect_rc(HDRS, b, "text/plain", CEL_EBODY, "unsupported content type");
    expect_rc(HDRS, b, "", CEL_EBODY, "no content type");
    expect_rc(HDRS, b, "application/json; charset=utf-8", CEL_OK, NULL);
    expect_rc(HDRS, b, "Application/JSON", CEL_OK, NULL);
    /* msgpack body given as JSON content type and the reverse */
    expect_rc(HDRS, b, "application/x-msgpack", CEL_EBODY, "msgpack");
}

static void test_msgpack_bodies(void **state) {
    const char *M = "application/x-msgpack";
    /* [[1], {"a": 2}, nil] */
    const uint8_t ok[] = { 0x93, 0x91, 0x01, 0x81, 0xa1, 'a', 0x02, 0xc0 };
    /* [[1], {1: 2}, nil]: non-string key */
    const uint8_t intkey[] = { 0x93, 0x91, 0x01, 0x81, 0x01, 0x02, 0xc0 };
    /* truncated */
    const uint8_t trunc[] = { 0x93, 0x91, 0x01, 0x81, 0xa1 };
    /* uint64 beyond int64 */
    const uint8_t big[] = { 0x93, 0x91, 0xcf, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x80, 0xc0 };
    /* float64 NaN */
    const uint8_t nan[] = { 0x93, 0x91, 0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0, 0x80, 0xc0 };
    /* array header claiming 2^32-1 items */
    const uint8_t huge[] = { 0x93, 0xdd, 0xff, 0xff, 0xff, 0xff, 0x80, 0xc0 };
    struct {
        const uint8_t *b;
        size_t n;
        int rc;
        const char *msg;
    } cases[] = { { ok, sizeof(ok), CEL_OK, NULL },
                  { intkey, sizeof(intkey), CEL_EBODY, "not a string" },
                  { trunc, sizeof(trunc), CEL_EBODY, "truncated" },
                  { big, sizeof(big), CEL_EBODY, "int64" },
                  { nan, sizeof(nan), CEL_EBODY, "NaN" },
                  { huge, sizeof(huge), CEL_EBODY, "over the limit" } };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *env = make_env(HDRS, cases[i].b, cases[i].n, M);
        cel_task_t *t;
        cel_err_t err;
        int rc = cel_task_decode_envelope(env, strlen(env), &t, &err);
        if (rc != cases[i].rc) fail_msg("case %zu: got %s (%s)", i, cel_err_name(rc), err.msg);
        if (cases[i].msg && !strstr(err.msg, cases[i].msg))
            fail_msg("case %zu: message '%s'", i, err.msg);
        assert_non_null(t);
        cel_task_free(t);
        free(env);
    }
}

/* A body whose whole document nests `depth` arrays: [[[...]], {}, null]. */
static char *nested_json(int depth) {
    char *s = malloc((size_t)depth * 2 + 32);
    size_t n = 0;
    s[n++] = '[';
    for (int i = 1; i < depth; i++) s[n++] = '[';
    for (int i = 1; i < depth; i++) s[n++] = ']';
    n += (size_t)sprintf(s + n, ", {}, null]");
    return s;
}

static void test_depth_limits(void **state) {
    for (int d = CEL_MSG_MAX_DEPTH - 1; d <= CEL_MSG_MAX_DEPTH + 1; d++) {
        char *body = nested_json(d);
        expect_rc(HDRS, body, "application/json", d <= CEL_MSG_MAX_DEPTH ? CEL_OK : CEL_EBODY,
                  d <= CEL_MSG_MAX_DEPTH ? NULL : "nested deeper");
        free(body);
        /* the same in msgpack: 0x93 then d-1 fixarray(1) levels, then 0x90 */
        uint8_t mp[256];
        size_t n = 0;
        mp[n++] = 0x93;
        for (int i = 1; i < d - 1; i++) mp[n++] = 0x91;
        mp[n++] = 0x90;
        mp[n++] = 0x80;
        mp[n++] = 0xc0;
        char *env = make_env(HDRS, mp, n, "application/x-msgpack");
        cel_task_t *t;
        cel_err_t err;
        int rc = cel_task_decode_envelope(env, strlen(env), &t, &err);
        assert_int_equal(rc, d <= CEL_MSG_MAX_DEPTH ? CEL_OK : CEL_EBODY);
        cel_task_free(t);
        free(env);
    }
    /* far past jansson's own parser depth */
    char *body = nested_json(5000);
    expect_rc(HDRS, body, "application/json", CEL_EBODY, "not valid JSON");
    free(body);
    /* a deep envelope (headers) is refused outright */
    char hdr[512];
    int n = snprintf(hdr, sizeof(hdr), "{\"task\": \"t\", \"id\": \"id-1\", \"x\": ");
    for (int i = 0; i < CEL_MSG_MAX_DEPTH; i++) hdr[n++] = '[';
    for (int i = 0; i < CEL_MSG_MAX_DEPTH; i++) hdr[n++] = ']';
    hdr[n++] = '}';
    hdr[n] = '\0';
    expect_rc(hdr, "[[], {}, null]", "application/json", CEL_ELIMIT, "nested deeper");
}

static void test_size_limits(void **state) {
    /* a body one byte over the limit through decode_parts */
    size_t n = CEL_MSG_MAX_BYTES + 1;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    memset(big, ' ', n);
    json_t *h = json_loads(HDRS, 0, NULL);
    cel_task_t *t;
    cel_err_t err;
    assert_int_equal(
        cel_task_decode_parts(h, NULL, NULL, big, n, "application/json", "utf-8", &t, &err),
        CEL_EBODY);
    assert_non_null(strstr(err.msg, "over the"));
    cel_task_free(t);
    /* exactly at the limit: accepted as far as size goes (it is all blanks, so bad JSON) */
    assert_int_equal(
        cel_task_decode_parts(h, NULL, NULL, big, n - 1, "application/json", "utf-8", &t, &err),
        CEL_EBODY);
    assert_null(strstr(err.msg, "over the"));
    cel_task_free(t);
    /* an envelope over the limit */
    assert_int_equal(cel_task_decode_envelope((const char *)big, n, &t, &err), CEL_ELIMIT);
    assert_null(t);
    free(big);
    json_decref(h);
}

static void test_decode_parts_amqp(void **state) {
    json_t *h = json_pack("{s:s, s:s, s:s, s:[i, f], s:s, s:i, s:b}", "task", "tasks.add", "id",
                          "amqp-1", "eta", "2026-11-22T21:14:16.013988+00:00", "timelimit", 10, 5.5,
                          "root_id", "r", "group_index", 2, "ignore_result", 1);
    json_t *p =
        json_pack("{s:s, s:s, s:i}", "correlation_id", "amqp-1", "reply_to", "oid", "priority", 12);
    json_t *d =
        json_pack("{s:s, s:s, s:b}", "exchange", "", "routing_key", "celery", "redelivered", 1);
    const char *body = "[[1, \"x\"], {\"k\": 2.5}, {\"callbacks\": null, \"errbacks\": null, "
                       "\"chain\": null, \"chord\": null}]";
    cel_task_t *t;
    cel_err_t err;
    assert_int_equal(cel_task_decode_parts(h, p, d, (const uint8_t *)body, strlen(body),
                                           "application/json", "utf-8", &t, &err),
                     CEL_OK);
    /* the task keeps copies: the caller's trees can go */
    json_decref(h);
    json_decref(p);
    json_decref(d);
    assert_string_equal(t->id, "amqp-1");
    assert_string_equal(t->reply_to, "oid");
    assert_int_equal(t->priority, 9);
    assert_int_equal(t->redelivered, 1);
    assert_int_equal(t->ignore_result, 1);
    assert_int_equal(t->group_index, 2);
    assert_null(t->delivery_tag);
    assert_true(t->time_limit == 10 && t->soft_time_limit == 5.5);
    assert_true(t->eta > 1795382056.013987 && t->eta < 1795382056.013989);
    assert_string_equal(t->eta_str, "2026-11-22T21:14:16.013988+00:00");
    assert_string_equal(t->content_type, "application/json");
    assert_int_equal(json_array_size(t->args), 2);
    cel_task_free(t);
    cel_task_free(NULL);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_inline_capture),  cmocka_unit_test(test_real_messages),
        cmocka_unit_test(test_envelope_errors), cmocka_unit_test(test_bad_base64),
        cmocka_unit_test(test_body_shapes),     cmocka_unit_test(test_content_types),
        cmocka_unit_test(test_msgpack_bodies),  cmocka_unit_test(test_depth_limits),
        cmocka_unit_test(test_size_limits),     cmocka_unit_test(test_decode_parts_amqp),
        cmocka_unit_test(test_lone_surrogates), cmocka_unit_test(test_surrogate_at_buffer_end),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
