/* test_message.c -- unit tests for building messages to send (protocol/envelope.c, message.c).
 *
 * Envelopes are compared byte for byte with what kombu's Producer.publish
 * made from the same inputs (publish.json, written by gen_messages.py with
 * the delivery tag fixed); priority keys with kombu's _q_for_pri. Error
 * paths: missing routing, bodies past the limit, values JSON cannot carry.
 */
#include "testutil.h"

#include "../../protocol/message.h"
#include "../../protocol/protocol.h"

static const char *str_or_null(json_t *o, const char *key) {
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static void test_envelope_vs_kombu(void **state) {
    json_t *cases = load_fixture("publish.json");
    size_t i;
    json_t *c;
    assert_true(json_array_size(cases) >= 6);
    json_array_foreach(cases, i, c) {
        const char *b64 = str_or_null(c, "body_b64");
        uint8_t *body;
        size_t blen;
        assert_int_equal(cel_base64_decode(b64, strlen(b64), &body, &blen, NULL), CEL_OK);
        json_t *headers = json_object_get(c, "headers");
        json_t *pri = json_object_get(c, "priority");
        cel_envelope_parts_t p = {
            .body = body,
            .body_len = blen,
            .content_type = str_or_null(c, "content_type"),
            .content_encoding = str_or_null(c, "content_encoding"),
            .headers = json_is_object(headers) ? headers : NULL,
            .correlation_id = str_or_null(c, "correlation_id"),
            .reply_to = str_or_null(c, "reply_to"),
            .extra = json_object_get(c, "extra"),
            .delivery_mode = (int)json_integer_value(json_object_get(c, "delivery_mode")),
            .expiration = str_or_null(c, "expiration_str"),
            .exchange = str_or_null(c, "exchange"),
            .routing_key = str_or_null(c, "routing_key"),
            .priority = json_is_integer(pri) ? (int)json_integer_value(pri) : 0,
            .delivery_tag = str_or_null(c, "delivery_tag"),
        };
        cel_err_t err;
        size_t len;
        char *env = cel_envelope_encode(&p, &len, &err);
        if (!env) fail_msg("case %zu: %s", i, err.msg);
        const char *want = str_or_null(c, "expected");
        if (strcmp(env, want) != 0) fail_msg("case %zu:\n got  %s\n want %s", i, env, want);
        assert_int_equal(len, strlen(want));
        free(env);

        char key[300];
        int n = cel_envelope_queue_key(str_or_null(c, "queue"), p.priority, key, sizeof(key));
        assert_true(n > 0);
        assert_string_equal(key, str_or_null(c, "queue_key"));
        free(body);
    }
    json_decref(cases);
}

static void test_envelope_errors(void **state) {
    cel_envelope_parts_t p = { .body = "x",
                               .body_len = 1,
                               .exchange = "",
                               .routing_key = "q",
                               .delivery_tag = "t",
                               .delivery_mode = 2 };
    cel_err_t err;
    size_t len = 99;
    char *s = cel_envelope_encode(&p, &len, &err);
    assert_non_null(s);
    assert_string_equal(s,
                        "{\"body\": \"eA==\", \"content-encoding\": null, \"content-type\": null, "
                        "\"headers\": {}, \"properties\": {\"delivery_mode\": 2, "
                        "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"q\"}, "
                        "\"priority\": 0, \"body_encoding\": \"base64\", \"delivery_tag\": "
                        "\"t\"}}");
    free(s);
    /* no routing key, no exchange, no tag */
    p.routing_key = NULL;
    assert_null(cel_envelope_encode(&p, &len, &err));
    assert_int_equal(err.code, CEL_EINVAL);
    assert_int_equal(len, 0);
    p.routing_key = "q";
    p.delivery_tag = NULL;
    assert_null(cel_envelope_encode(&p, &len, &err));
    assert_int_equal(err.code, CEL_EINVAL);
    p.delivery_tag = "t";
    /* a body over the limit is refused before anything is sized by it */
    p.body_len = (size_t)CEL_MSG_MAX_BYTES + 1;
    assert_null(cel_envelope_encode(&p, &len, &err));
    assert_int_equal(err.code, CEL_ELIMIT);
    p.body_len = 1;
    /* headers JSON cannot carry (invalid UTF-8), or not an object */
    json_t *h = json_pack("{s:f}", "x", 0.0);
    json_object_set_new(h, "bad", json_stringn_nocheck("\xff", 1));
    p.headers = h;
    assert_null(cel_envelope_encode(&p, &len, &err));
    assert_int_equal(err.code, CEL_ETYPE);
    json_t *arr = json_array();
    p.headers = arr;
    assert_null(cel_envelope_encode(&p, &len, &err));
    assert_int_equal(err.code, CEL_ETYPE);
    p.headers = NULL;
    p.extra = arr;
    assert_null(cel_envelope_encode(&p, &len, &err));
    assert_int_equal(err.code, CEL_ETYPE);
    json_decref(arr);
    json_decref(h);
}

static void test_queue_key(void **state) {
    char k[16];
    assert_int_equal(cel_envelope_queue_key("celery", -1, k, sizeof(k)), 6);
    assert_string_equal(k, "celery");
    assert_int_equal(cel_envelope_queue_key("celery", 2, k, sizeof(k)), 6);
    assert_int_equal(cel_envelope_queue_key("celery", 3, k, sizeof(k)), 9);
    assert_memory_equal(k,
                        "celery\x06\x16"
                        "3",
                        10);
    assert_int_equal(cel_envelope_queue_key("celery", 8, k, sizeof(k)), 9);
    assert_memory_equal(k,
                        "celery\x06\x16"
                        "6",
                        10);
    assert_int_equal(cel_envelope_queue_key("celery", 42, k, sizeof(k)), 9);
    assert_memory_equal(k,
                        "celery\x06\x16"
                        "9",
                        10);
    /* exactly fits (9 chars + NUL), then one short */
    assert_int_equal(cel_envelope_queue_key("celery", 9, k, 10), 9);
    assert_int_equal(cel_envelope_queue_key("celery", 9, k, 9), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope_vs_kombu),
        cmocka_unit_test(test_envelope_errors),
        cmocka_unit_test(test_queue_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
