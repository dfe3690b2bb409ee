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

static void test_saferepr_vs_celery(void **state) {
    json_t *cases = load_fixture("saferepr.json");
    size_t i;
    json_t *c;
    assert_true(json_array_size(cases) > 50);
    json_array_foreach(cases, i, c) {
        json_t *v = json_object_get(c, "value");
        int as_tuple = json_is_true(json_object_get(c, "as_tuple"));
        long maxlen = (long)json_integer_value(json_object_get(c, "maxlen"));
        char *r = cel_saferepr(v, as_tuple, maxlen, 3);
        assert_non_null(r);
        const char *want = str_or_null(c, "repr");
        if (strcmp(r, want) != 0)
            fail_msg("case %zu (maxlen %ld):\n got  %s\n want %s", i, maxlen, r, want);
        free(r);
    }
    json_decref(cases);
    assert_null(cel_saferepr(NULL, 0, 10, 3));
}

typedef struct ids {
    long next;
} ids_t;

static void counter_id(void *priv, char out[37]) {
    ids_t *g = priv;
    snprintf(out, 37, "00000000-0000-4000-8000-%012ld", g->next++);
}

/* The message cel_message_apply builds, in kombu's envelope with tag t. */
static char *apply_envelope(json_t *c, const cel_send_ctx_t *ctx, cel_err_t *err) {
    json_t *args = json_object_get(c, "args"), *kw = json_object_get(c, "kwargs");
    json_t *opts = json_object_get(c, "options");
    cel_msg_t *m;
    int rc = cel_message_apply(json_object_get(c, "sig"), json_is_array(args) ? args : NULL,
                               json_is_object(kw) ? kw : NULL, json_is_object(opts) ? opts : NULL,
                               json_is_true(json_object_get(c, "args_tuple")), ctx, &m, err);
    if (rc != CEL_OK) return NULL;
    cel_envelope_parts_t p = { .body = m->body,
                               .body_len = m->body_len,
                               .content_type = m->content_type,
                               .content_encoding = m->content_encoding,
                               .headers = m->headers,
                               .correlation_id = m->id,
                               .reply_to = m->reply_to,
                               .extra = m->extra,
                               .delivery_mode = m->persistent ? 2 : 1,
                               .expiration = m->expiration,
                               .exchange = m->exchange,
                               .routing_key = m->routing_key,
                               .priority = m->priority,
                               .delivery_tag = "tag-fixed" };
    char *env = cel_envelope_encode(&p, NULL, err);
    cel_msg_free(m);
    return env;
}

static void test_apply_vs_celery(void **state) {
    json_t *cases = load_fixture("apply.json");
    size_t i;
    json_t *c;
    assert_true(json_array_size(cases) >= 13);
    json_array_foreach(cases, i, c) {
        ids_t ids = { (long)json_integer_value(json_object_get(c, "first_id")) };
        cel_send_ctx_t ctx = { .now = json_real_value(json_object_get(c, "now")),
                               .origin = str_or_null(c, "origin"),
                               .reply_to = str_or_null(c, "reply_to"),
                               .default_queue = "celery",
                               .new_id = counter_id,
                               .id_priv = &ids };
        cel_err_t err;
        char *env = apply_envelope(c, &ctx, &err);
        if (!env) fail_msg("case %zu: %s", i, err.msg);
        const char *want = str_or_null(c, "expected");
        assert_non_null(want);
        if (strcmp(env, want) != 0) fail_msg("case %zu:\n got  %s\n want %s", i, env, want);
        /* as many fresh ids as celery took */
        assert_int_equal(ids.next - json_integer_value(json_object_get(c, "first_id")),
                         json_integer_value(json_object_get(c, "ids_used")));
        free(env);
    }
    json_decref(cases);
}

static void fixed_id(void *priv, char out[37]) { snprintf(out, 37, "fixed-id"); }

static void test_apply_errors(void **state) {
    cel_send_ctx_t ctx = { .now = 1e9,
                           .origin = "gen1@h",
                           .reply_to = "oid",
                           .default_queue = "celery",
                           .new_id = fixed_id };
    cel_msg_t *m = (cel_msg_t *)1;
    cel_err_t err;
    const char *bad[] = {
        "[1]",                                              /* not a dict */
        "{\"args\": []}",                                   /* no task name */
        "{\"task\": \"t\", \"args\": {}}",                  /* args not a list */
        "{\"task\": \"t\", \"kwargs\": []}",                /* kwargs not a dict */
        "{\"task\": \"t\", \"options\": []}",               /* options not a dict */
        "{\"task\": \"t\", \"options\": {\"task_id\": 5}}", /* an id that is no string */
        "{\"task\": \"t\", \"options\": {\"countdown\": \"soon\"}}",
        "{\"task\": \"t\", \"options\": {\"priority\": 1.5}}",
        "{\"task\": \"t\", \"options\": {\"group_index\": \"2\"}}",
        "{\"task\": \"t\", \"options\": {\"retries\": []}}",
        "{\"task\": \"t\", \"options\": {\"expires\": {}}}",
        "{\"task\": \"t\", \"options\": {\"expires\": \"tomorrow\"}}",
        "{\"task\": \"t\", \"options\": {\"headers\": 1}}",
        "{\"task\": \"t\", \"options\": {\"serializer\": \"pickle\"}}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *sig = json_loads(bad[i], 0, NULL);
        assert_non_null(sig);
        m = (cel_msg_t *)1;
        int rc = cel_message_apply(sig, NULL, NULL, NULL, 0, &ctx, &m, &err);
        if (rc != CEL_EINVAL) fail_msg("case %zu (%s): rc %d", i, bad[i], rc);
        assert_null(m);
        json_decref(sig);
    }
    /* args that are not valid UTF-8 cannot go into the headers' argsrepr */
    json_t *sig = json_pack("{s:s, s:[f]}", "task", "t", "args", 1.0);
    json_t *args = json_array();
    json_array_append_new(args, json_stringn_nocheck("\xff", 1));
    assert_int_equal(cel_message_apply(sig, args, NULL, NULL, 0, &ctx, &m, &err), CEL_EINVAL);
    json_decref(args);
    /* a minimal one works, with the context's id, queue and reply_to */
    assert_int_equal(cel_message_apply(sig, NULL, NULL, NULL, 0, &ctx, &m, &err), CEL_OK);
    assert_string_equal(m->id, "fixed-id");
    assert_string_equal(m->routing_key, "celery");
    assert_string_equal(m->exchange, "");
    assert_string_equal(m->reply_to, "oid");
    assert_string_equal(m->body, "[[1.0], {}, {\"callbacks\": null, \"errbacks\": null, "
                                 "\"chain\": null, \"chord\": null}]");
    assert_string_equal(json_string_value(json_object_get(m->headers, "argsrepr")), "[1.0]");
    cel_msg_free(m);
    cel_msg_free(NULL);
    json_decref(sig);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_envelope_vs_kombu), cmocka_unit_test(test_envelope_errors),
        cmocka_unit_test(test_queue_key),         cmocka_unit_test(test_saferepr_vs_celery),
        cmocka_unit_test(test_apply_vs_celery),   cmocka_unit_test(test_apply_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
