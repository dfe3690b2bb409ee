/* test_canvas.c -- unit tests for the worker's canvas steps, planned (protocol/canvas.c).
 *
 * plans.json (gen_messages.py) holds what the 5.2 worker's own code did for
 * client-made messages -- trace.py's callbacks and chain, mark_as_failure,
 * mark_as_revoked, on_chord_part_return's callback or ChordError -- as the
 * list of publishes (whole envelopes), chord sizes, stores and chord parts,
 * and the children tuples. Each case is planned here from the same message
 * and compared action by action. Fresh ids differ (a counter on each side),
 * so both sides are rewritten with ids named by first appearance; envelope
 * bodies are decoded first so the ids inside them count too. Also: limits,
 * bad signatures, the extended meta fields, and cel_plan_chord_error.
 */
#include "testutil.h"

#include <ctype.h>

#include "../../protocol/canvas.h"
#include "../../protocol/message.h"
#include "../../protocol/protocol.h"

typedef struct ids {
    long next;
} ids_t;

static void c_id(void *priv, char out[37]) {
    ids_t *g = priv;
    snprintf(out, 37, "ffffffff-0000-4000-8000-%012ld", ++g->next);
}

/* An envelope with its base64 body replaced by the body text. New ref. */
static json_t *open_envelope(const char *env) {
    json_t *e = json_loads(env, JSON_ALLOW_NUL, NULL);
    assert_non_null(e);
    const char *b64 = json_string_value(json_object_get(e, "body"));
    uint8_t *raw;
    size_t n;
    assert_int_equal(cel_base64_decode(b64, strlen(b64), &raw, &n, NULL), CEL_OK);
    json_object_set_new(e, "body", json_stringn((const char *)raw, n));
    free(raw);
    return e;
}

/* Renames every generated id (00000000-.. from celery, ffffffff-.. from
 * here) ID1, ID2... in order of first appearance. */
static char *canonical(const char *s) {
    size_t n = strlen(s);
    char *out = malloc(n + 1);
    char seen[256][37];
    int nseen = 0;
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        int gen = i + 36 <= n && (!strncmp(s + i, "00000000-0000-4000-8000-", 24) ||
                                  !strncmp(s + i, "ffffffff-0000-4000-8000-", 24));
        for (int k = 24; gen && k < 36; k++) gen = isdigit((unsigned char)s[i + k]);
        if (!gen) {
            out[w++] = s[i++];
            continue;
        }
        int idx = -1;
        for (int k = 0; k < nseen; k++)
            if (!strncmp(seen[k], s + i, 36)) idx = k;
        if (idx < 0) {
            assert_true(nseen < 256);
            memcpy(seen[nseen], s + i, 36);
            seen[nseen][36] = '\0';
            idx = nseen++;
        }
        w += (size_t)sprintf(out + w, "ID%d", idx + 1);
        i += 36;
    }
    out[w] = '\0';
    return out;
}

/* One action as the fixture writes it. New ref. */
static json_t *act_json(const cel_plan_act_t *a) {
    switch (a->kind) {
    case CEL_PLAN_PUBLISH: {
        cel_msg_t *m = a->msg;
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
        char *env = cel_envelope_encode(&p, NULL, NULL);
        assert_non_null(env);
        json_t *j = json_pack("[so]", "PUBLISH", open_envelope(env));
        free(env);
        return j;
    }
    case CEL_PLAN_CHORD_SIZE:
        return json_pack("[ssI]", "CHORD_SIZE", a->group_id, (json_int_t)a->size);
    case CEL_PLAN_STORE: {
        json_t *m = json_loads(a->meta, 0, NULL);
        assert_non_null(m);
        json_t *g = json_object_get(m, "group_id"), *pid = json_object_get(m, "parent_id");
        json_t *j =
            json_pack("[ssOOOO]", "STORE", a->task_id, json_object_get(m, "status"),
                      json_object_get(m, "result"), g ? g : json_null(), pid ? pid : json_null());
        json_decref(m);
        return j;
    }
    case CEL_PLAN_CHORD_PART:
        return json_pack("[sssisO]", "CHORD_PART", a->task_id, a->group_id, a->group_index,
                         a->entry, a->chord);
    }
    return NULL;
}

static json_t *fixture_act(json_t *a) {
    if (!strcmp(json_string_value(json_array_get(a, 0)), "PUBLISH"))
        return json_pack("[so]", "PUBLISH", open_envelope(json_string_value(json_array_get(a, 1))));
    return json_incref(a);
}

static void test_plans_vs_celery(void **state) {
    json_t *fx = load_fixture("plans.json");
    json_t *cases = json_object_get(fx, "cases");
    assert_true(json_array_size(cases) >= 20);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        const char *env = json_string_value(json_object_get(c, "request"));
        const char *step = json_string_value(json_object_get(c, "step"));
        json_t *arg = json_object_get(c, "arg");
        cel_task_t *t;
        cel_err_t err;
        assert_int_equal(cel_task_decode_envelope(env, strlen(env), &t, &err), CEL_OK);
        ids_t ids = { 0 };
        cel_send_ctx_t ctx = { .now = json_real_value(json_object_get(fx, "now")),
                               .origin = json_string_value(json_object_get(fx, "origin")),
                               .reply_to = json_string_value(json_object_get(fx, "reply_to")),
                               .default_queue = "celery",
                               .parent_id = t->id,
                               .parent_root_id = t->root_id,
                               .new_id = c_id,
                               .id_priv = &ids };
        cel_plan_t *p = cel_plan_new(&ctx, 0);
        assert_non_null(p);
        int rc;
        if (!strcmp(step, "success")) {
            rc = cel_plan_success(p, t, arg, &err);
            /* a successful chord part also counts, after its store */
            if (rc == CEL_OK) rc = cel_plan_after_store(p, t, "SUCCESS", arg, NULL, &err);
        } else if (!strcmp(step, "failure")) {
            json_t *exc = cel_exc_new("ValueError", "builtins", json_pack("[O]", arg));
            rc = cel_plan_after_store(p, t, "FAILURE", exc, "Traceback (most recent call last):\n",
                                      &err);
            json_decref(exc);
        } else if (!strcmp(step, "revoked")) {
            json_t *exc =
                cel_exc_new("TaskRevokedError", "celery.exceptions", json_pack("[s]", "revoked"));
            rc = cel_plan_after_store(p, t, "REVOKED", exc, NULL, &err);
            json_decref(exc);
        } else {
            rc = cel_plan_chord_done(p, json_object_get(t->embed, "chord"), t->group, arg, &err);
        }
        if (rc != CEL_OK) fail_msg("%s: %s", name, err.msg);
        json_t *got = json_array(), *want = json_array();
        for (size_t k = 0; k < cel_plan_count(p); k++)
            json_array_append_new(got, act_json(cel_plan_get(p, k)));
        size_t k;
        json_t *a;
        json_array_foreach(json_object_get(c, "acts"), k, a)
            json_array_append_new(want, fixture_act(a));
        json_t *gall = json_pack("[OO]", got, cel_plan_children(p));
        json_t *wall = json_pack("[OO]", want, json_object_get(c, "children"));
        char *gs = cel_json_dumps(gall, NULL), *ws = cel_json_dumps(wall, NULL);
        char *gc = canonical(gs), *wc = canonical(ws);
        if (strcmp(gc, wc) != 0) {
            size_t d = 0;
            while (gc[d] && gc[d] == wc[d]) d++;
            size_t from = d > 300 ? d - 300 : 0;
            fail_msg("%s: differs at %zu\n got  ...%.700s\n want ...%.700s", name, d, gc + from,
                     wc + from);
        }
        free(gs);
        free(ws);
        free(gc);
        free(wc);
        json_decref(gall);
        json_decref(wall);
        json_decref(got);
        json_decref(want);
        cel_plan_free(p);
        cel_task_free(t);
    }
    json_decref(fx);
}

static void test_extended_meta(void **state) {
    json_t *args = json_pack("[ii]", 20, 22), *kw = json_object();
    cel_meta_ext_t ext = { "tasks.add", args, kw, "w4@vm", 0, "celery" };
    json_t *r = json_integer(42);
    char *m = cel_meta_encode_ext("t1", "SUCCESS", r, NULL, NULL, 1795382020.668855, "g", NULL,
                                  &ext, NULL);
    /* the captured result_extended meta (celery-wire.md 3.1), with a group */
    assert_string_equal(m, "{\"status\": \"SUCCESS\", \"result\": 42, \"traceback\": null, "
                           "\"children\": [], \"date_done\": \"2026-11-22T21:13:40.668855\", "
                           "\"group_id\": \"g\", \"name\": \"tasks.add\", \"args\": [20, 22], "
                           "\"kwargs\": {}, \"worker\": \"w4@vm\", \"retries\": 0, \"queue\": "
                           "\"celery\", \"task_id\": \"t1\"}");
    free(m);
    cel_meta_ext_t none = { NULL, NULL, NULL, NULL, -1, NULL };
    m = cel_meta_encode_ext("t2", "FAILURE", NULL, NULL, NULL, -1, NULL, "p", &none, NULL);
    assert_string_equal(m, "{\"status\": \"FAILURE\", \"result\": null, \"traceback\": null, "
                           "\"children\": [], \"date_done\": null, \"parent_id\": \"p\", "
                           "\"name\": null, \"args\": null, \"kwargs\": null, \"worker\": null, "
                           "\"retries\": null, \"queue\": null, \"task_id\": \"t2\"}");
    free(m);
    json_decref(args);
    json_decref(kw);
    json_decref(r);
}

static void plain_ctx(cel_send_ctx_t *ctx, ids_t *ids) {
    memset(ctx, 0, sizeof(*ctx));
    ctx->now = 1795382020.0;
    ctx->origin = "gen1@h";
    ctx->reply_to = "oid";
    ctx->default_queue = "celery";
    ctx->parent_id = "p";
    ctx->new_id = c_id;
    ctx->id_priv = ids;
}

static void test_chord_error_and_limits(void **state) {
    ids_t ids = { 0 };
    cel_send_ctx_t ctx;
    plain_ctx(&ctx, &ids);
    cel_err_t err;
    /* a chord the backend cannot count: the body's errbacks, then ChordError */
    json_t *body = json_loads("{\"task\": \"b\", \"args\": [], \"kwargs\": {}, \"options\": "
                              "{\"task_id\": \"body-1\", \"link_error\": [{\"task\": \"eb\", "
                              "\"args\": [], \"kwargs\": {}, \"options\": {}, \"subtask_type\": "
                              "null, \"immutable\": false}]}, \"subtask_type\": null, "
                              "\"immutable\": false}",
                              0, NULL);
    cel_plan_t *p = cel_plan_new(&ctx, 1);
    assert_int_equal(cel_plan_chord_error(p, body, "no chords here", &err), CEL_OK);
    assert_int_equal(cel_plan_count(p), 2);
    const cel_plan_act_t *a = cel_plan_get(p, 0);
    assert_int_equal(a->kind, CEL_PLAN_PUBLISH);
    assert_string_equal(a->msg->name, "eb");
    assert_string_equal(a->msg->body, "[[\"body-1\"], {}, {\"callbacks\": null, \"errbacks\": "
                                      "null, \"chain\": null, \"chord\": null}]");
    a = cel_plan_get(p, 1);
    assert_int_equal(a->kind, CEL_PLAN_STORE);
    assert_string_equal(a->task_id, "body-1");
    assert_non_null(strstr(a->meta, "\"exc_type\": \"ChordError\", \"exc_message\": [\"no chords "
                                    "here\"], \"exc_module\": \"celery.exceptions\""));
    assert_null(cel_plan_get(p, 2));
    cel_plan_free(p);

    /* a chord result that is not Celery's fails the chord, not the worker */
    p = cel_plan_new(&ctx, 0);
    json_t *bad = json_pack("[[s]]", "x");
    assert_int_equal(cel_plan_chord_done(p, body, "g", bad, &err), CEL_OK);
    assert_int_equal(cel_plan_get(p, cel_plan_count(p) - 1)->kind, CEL_PLAN_STORE);
    json_decref(bad);
    cel_plan_free(p);

    /* a body that cannot be sent: ChordError("Callback error: ...") instead */
    p = cel_plan_new(&ctx, 0);
    json_t *nobody = json_pack("{s:i, s:{s:s}}", "task", 5, "options", "task_id", "cb-9");
    json_t *ok = json_pack("[[issi]]", 1, "p1", "SUCCESS", 3);
    assert_int_equal(cel_plan_chord_done(p, nobody, "g", ok, &err), CEL_OK);
    assert_int_equal(cel_plan_count(p), 1);
    assert_non_null(strstr(cel_plan_get(p, 0)->meta, "Callback error: "));
    json_decref(ok);
    json_decref(nobody);
    cel_plan_free(p);

    /* nesting past the limit is refused, not followed: a chord body of chords
     * in chords fails the chord with a Callback error (nested groups and
     * chains are unrolled, as Python does, so they are no test of it) */
    json_t *deep = json_loads("{\"task\": \"leaf\", \"args\": [], \"kwargs\": {}, \"options\": "
                              "{}, \"subtask_type\": null, \"immutable\": false}",
                              0, NULL);
    for (int d = 0; d < CEL_PLAN_MAX_DEPTH + 2; d++)
        deep = json_pack("{s:s, s:[], s:{s:[{s:s}], s:o, s:{}}, s:{s:s}, s:s, s:b}", "task",
                         "celery.chord", "args", "kwargs", "header", "task", "leaf", "body", deep,
                         "kwargs", "options", "task_id", "deep-body", "subtask_type", "chord",
                         "immutable", 0);
    p = cel_plan_new(&ctx, 0);
    ok = json_pack("[[issi]]", 1, "p1", "SUCCESS", 3);
    assert_int_equal(cel_plan_chord_done(p, deep, "g", ok, &err), CEL_OK);
    assert_int_equal(cel_plan_count(p), 1);
    assert_int_equal(cel_plan_get(p, 0)->kind, CEL_PLAN_STORE);
    assert_non_null(strstr(cel_plan_get(p, 0)->meta, "nested deeper than"));
    cel_plan_free(p);
    json_decref(ok);
    json_decref(deep);
    json_decref(body);
}

/* ---- garbage in the canvas of a message --------------------------------- */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

/* A random JSON value of a few kinds a signature field could hold. */
static json_t *random_value(int depth) {
    switch (next_rand() % 11) {
    case 0: return json_null();
    case 1: return json_integer((json_int_t)(next_rand() % 7) - 2);
    case 2: return json_real(1.5);
    case 3: return json_string("");
    case 4: return json_string("chain");
    case 5: return json_string("group");
    case 6: return json_string("chord");
    case 7: return json_true();
    case 8: return depth > 3 ? json_array() : json_pack("[o]", random_value(depth + 1));
    case 9:
        return depth > 3 ? json_object()
                         : json_pack("{s:o, s:o}", "task", random_value(depth + 1), "tasks",
                                     random_value(depth + 1));
    default:
        return json_pack("{s:s, s:[], s:{}, s:{s:s}, s:o, s:b}", "task", "t", "args", "kwargs",
                         "options", "task_id", "x", "subtask_type", random_value(depth + 1),
                         "immutable", 0);
    }
}

/* Replaces one node somewhere inside v (an object or array) with garbage. */
static void mutate(json_t *v, int depth) {
    size_t n = json_is_array(v) ? json_array_size(v) : json_is_object(v) ? json_object_size(v) : 0;
    if (n == 0) return;
    size_t k = next_rand() % n;
    json_t *child;
    const char *key = NULL;
    if (json_is_array(v)) {
        child = json_array_get(v, k);
    } else {
        void *it = json_object_iter(v);
        for (size_t i = 0; i < k; i++) it = json_object_iter_next(v, it);
        key = json_object_iter_key(it);
        child = json_object_iter_value(it);
    }
    if ((json_is_array(child) || json_is_object(child)) && depth < 12 && next_rand() % 3) {
        mutate(child, depth + 1);
        return;
    }
    if (key) json_object_set_new(v, key, random_value(0));
    else json_array_set_new(v, k, random_value(0));
}

/* An envelope of the same headers with body b. */
static cel_task_t *task_with_body(json_t *env, json_t *b) {
    char *text = cel_json_dumps(b, NULL);
    if (!text) return NULL;
    char *b64 = cel_base64_encode((const uint8_t *)text, strlen(text));
    free(text);
    json_t *e = json_deep_copy(env);
    json_object_set_new(e, "body", json_string(b64));
    free(b64);
    char *et = cel_json_dumps(e, NULL);
    json_decref(e);
    cel_task_t *t = NULL;
    if (et && cel_task_decode_envelope(et, strlen(et), &t, NULL) != CEL_OK) t = NULL;
    free(et);
    return t;
}

/* Every plan entry point on thousands of messages whose canvas was broken
 * at random: errors are values, nothing crashes, nothing leaks (ASan). */
static void test_garbage_signatures(void **state) {
    json_t *fx = load_fixture("plans.json");
    json_t *cases = json_object_get(fx, "cases");
    int planned = 0;
    for (int round = 0; round < 4000; round++) {
        json_t *c = json_array_get(cases, (size_t)round % json_array_size(cases));
        json_t *env = json_loads(json_string_value(json_object_get(c, "request")), 0, NULL);
        json_t *opened = open_envelope(json_string_value(json_object_get(c, "request")));
        json_t *body = json_loads(json_string_value(json_object_get(opened, "body")), 0, NULL);
        json_decref(opened);
        for (int m = 0; m < 1 + (int)(next_rand() % 4); m++) mutate(json_array_get(body, 2), 0);
        cel_task_t *t = task_with_body(env, body);
        json_decref(body);
        json_decref(env);
        if (!t) continue;
        ids_t ids = { 0 };
        cel_send_ctx_t ctx;
        plain_ctx(&ctx, &ids);
        ctx.parent_id = t->id;
        cel_plan_t *p = cel_plan_new(&ctx, round % 2);
        cel_err_t err;
        json_t *rv = json_integer(round);
        json_t *exc = cel_exc_new("ValueError", "builtins", json_pack("[s]", "x"));
        int rc = cel_plan_success(p, t, rv, &err);
        assert_true(rc == CEL_OK || rc == CEL_EINVAL || rc == CEL_ELIMIT || rc == CEL_ETYPE);
        rc = cel_plan_after_store(p, t, round % 3 ? "FAILURE" : "REVOKED", exc, "tb", &err);
        assert_true(rc == CEL_OK || rc == CEL_EINVAL || rc == CEL_ELIMIT || rc == CEL_ETYPE);
        json_t *entries = json_pack("[[issi], [iss{}]]", 1, "a", "SUCCESS", 1, 1, "b",
                                    round % 5 ? "SUCCESS" : "FAILURE");
        rc = cel_plan_chord_done(p, json_object_get(t->embed, "chord"), t->group, entries, &err);
        assert_true(rc == CEL_OK || rc == CEL_EINVAL || rc == CEL_ELIMIT || rc == CEL_ETYPE);
        planned += (int)cel_plan_count(p);
        json_decref(entries);
        json_decref(rv);
        json_decref(exc);
        cel_plan_free(p);
        cel_task_free(t);
    }
    assert_true(planned > 0);
    json_decref(fx);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plans_vs_celery),
        cmocka_unit_test(test_extended_meta),
        cmocka_unit_test(test_chord_error_and_limits),
        cmocka_unit_test(test_garbage_signatures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
