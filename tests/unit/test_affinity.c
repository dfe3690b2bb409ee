/* test_affinity.c -- unit tests for the adapter -> executor slot map (worker/affinity.c).
 *
 * Tasks are built with protocol's cel_task_decode_parts from a v2 body
 * [args, kwargs, embed]. Which argument names an adapter comes from the task
 * table (protocol/tasks.c); these tests pin today's positions too.
 */
#include "testutil.h"

#include "../../protocol/tasks.h"
#include "../../worker/affinity.h"

/* A task named name whose body is [args, kwargs, {}] (args/kwargs as JSON text). */
static cel_task_t *mk(const char *name, const char *args, const char *kwargs) {
    json_t *h = json_pack("{s:s, s:s, s:s}", "id", "tid-1", "task", name, "lang", "py");
    char body[1024];
    snprintf(body, sizeof(body), "[%s, %s, {}]", args, kwargs);
    cel_task_t *t = NULL;
    cel_err_t err;
    int rc = cel_task_decode_parts(h, NULL, NULL, (const uint8_t *)body, strlen(body),
                                   "application/json", "utf-8", &t, &err);
    json_decref(h);
    if (rc != CEL_OK) fail_msg("decode %s %s: %s", name, body, err.msg);
    return t;
}

static void expect_adapter(const char *name, const char *args, const char *kwargs,
                           const char *want) {
    cel_task_t *t = mk(name, args, kwargs);
    const char *got = cel_affinity_adapter_of(t);
    if (want == NULL && got != NULL)
        fail_msg("%s %s %s: want NULL, got %s", name, args, kwargs, got);
    if (want != NULL && (got == NULL || strcmp(got, want) != 0))
        fail_msg("%s %s %s: want %s, got %s", name, args, kwargs, want, got ? got : "NULL");
    cel_task_free(t);
}

static void test_adapter_of(void **state) {
    static const char *const pos0[] = { "lora.delete",     "lora.forward_backward", "lora.info",
                                        "lora.optim_step", "lora.sample",           "lora.save" };
    for (size_t i = 0; i < sizeof(pos0) / sizeof(pos0[0]); i++) {
        expect_adapter(pos0[i], "[\"A\"]", "{}", "A");
        expect_adapter(pos0[i], "[\"A\", [1, 2], \"x\"]", "{}", "A");
        expect_adapter(pos0[i], "[]", "{\"adapter_id\": \"K\"}", "K");
        /* kwargs wins over a positional value (Python would raise TypeError) */
        expect_adapter(pos0[i], "[\"A\"]", "{\"adapter_id\": \"K\"}", "K");
        expect_adapter(pos0[i], "[]", "{}", NULL);
        expect_adapter(pos0[i], "[null]", "{}", NULL);
        expect_adapter(pos0[i], "[42]", "{}", NULL);
        expect_adapter(pos0[i], "[[\"A\"]]", "{}", NULL);
        expect_adapter(pos0[i], "[]", "{\"adapter_id\": null}", NULL);
        expect_adapter(pos0[i], "[]", "{\"adapter_id\": 7}", NULL);
        /* a non-string kwarg does not fall back to args */
        expect_adapter(pos0[i], "[\"A\"]", "{\"adapter_id\": 7}", NULL);
        expect_adapter(pos0[i], "[]", "{\"other\": \"A\"}", NULL);
    }
    /* model.score(text, adapter_id=None) */
    expect_adapter("model.score", "[\"hello\", \"A\"]", "{}", "A");
    expect_adapter("model.score", "[\"hello\"]", "{}", NULL);
    expect_adapter("model.score", "[\"hello\", null]", "{}", NULL);
    expect_adapter("model.score", "[\"hello\"]", "{\"adapter_id\": \"K\"}", "K");
    expect_adapter("model.score", "[]", "{\"text\": \"t\", \"adapter_id\": \"K\"}", "K");
    expect_adapter("model.score", "[\"A\"]", "{}", NULL);
    /* tasks any executor may run */
    static const char *const free_tasks[] = { "lora.create", "lora.load",   "lora.list",
                                              "diag.echo",   "lora",        "lora.deletex",
                                              "tasks.add",   "model.score2" };
    for (size_t i = 0; i < sizeof(free_tasks) / sizeof(free_tasks[0]); i++) {
        expect_adapter(free_tasks[i], "[\"A\"]", "{\"adapter_id\": \"K\"}", NULL);
    }
    /* a task without a name */
    cel_task_t *t = mk("lora.info", "[\"A\"]", "{}");
    const char *saved = t->name;
    t->name = NULL;
    assert_null(cel_affinity_adapter_of(t));
    t->name = saved;
    cel_task_free(t);
}

/* Every task of the table routes by its adapter parameter, at its position in
 * args or by name in kwargs; a task without one never routes. */
static void test_adapter_of_follows_table(void **state) {
    int routed = 0;
    for (const char *const *n = cel_tasks_names(); *n; n++) {
        const cel_tasks_task_t *t = cel_tasks_find(*n);
        int pos = cel_tasks_adapter_pos(t);
        char args[256] = "[", kwargs[128];
        for (int i = 0; i < (pos < 0 ? 1 : pos); i++) strcat(args, "\"x\", ");
        strcat(args, "\"A\"]");
        snprintf(kwargs, sizeof(kwargs), "{\"%s\": \"K\"}",
                 t->adapter_param ? t->adapter_param : "adapter_id");
        expect_adapter(*n, args, "{}", pos < 0 ? NULL : "A");
        expect_adapter(*n, "[]", kwargs, pos < 0 ? NULL : "K");
        routed += pos >= 0;
    }
    assert_int_equal(routed, 7);
}

static void test_set_get_count(void **state) {
    cel_affinity_t *a = cel_affinity_new(3);
    assert_non_null(a);
    assert_int_equal(cel_affinity_get(a, "A"), -1);
    for (int s = 0; s < 3; s++) assert_int_equal(cel_affinity_count(a, s), 0);
    cel_affinity_set(a, "A", 0);
    cel_affinity_set(a, "B", 0);
    cel_affinity_set(a, "C", 2);
    assert_int_equal(cel_affinity_get(a, "A"), 0);
    assert_int_equal(cel_affinity_get(a, "B"), 0);
    assert_int_equal(cel_affinity_get(a, "C"), 2);
    assert_int_equal(cel_affinity_count(a, 0), 2);
    assert_int_equal(cel_affinity_count(a, 1), 0);
    assert_int_equal(cel_affinity_count(a, 2), 1);
    /* setting the same slot again changes nothing */
    cel_affinity_set(a, "A", 0);
    assert_int_equal(cel_affinity_count(a, 0), 2);
    /* rebinding moves */
    cel_affinity_set(a, "A", 1);
    assert_int_equal(cel_affinity_get(a, "A"), 1);
    assert_int_equal(cel_affinity_count(a, 0), 1);
    assert_int_equal(cel_affinity_count(a, 1), 1);
    /* slots out of range: ignored by set, 0 from count */
    cel_affinity_set(a, "D", 3);
    cel_affinity_set(a, "D", -1);
    cel_affinity_set(a, "A", 3);
    assert_int_equal(cel_affinity_get(a, "D"), -1);
    assert_int_equal(cel_affinity_get(a, "A"), 1);
    assert_int_equal(cel_affinity_count(a, 3), 0);
    assert_int_equal(cel_affinity_count(a, -1), 0);
    /* the last slot (at the limit) works */
    cel_affinity_set(a, "E", 2);
    assert_int_equal(cel_affinity_count(a, 2), 2);
    cel_affinity_free(a);
    cel_affinity_free(NULL);
}

static void test_zero_slots(void **state) {
    cel_affinity_t *a = cel_affinity_new(0);
    if (!a) return; /* calloc(0) may return NULL: documented as allocation failure */
    cel_affinity_set(a, "A", 0);
    assert_int_equal(cel_affinity_get(a, "A"), -1);
    assert_int_equal(cel_affinity_count(a, 0), 0);
    cel_affinity_free(a);
}

static void test_learn(void **state) {
    cel_affinity_t *a = cel_affinity_new(2);
    cel_task_t *create = mk("lora.create", "[]", "{\"rank\": 8}");
    cel_task_t *load = mk("lora.load", "[\"/tmp/x\"]", "{}");
    json_t *res = json_pack("{s:s, s:i}", "adapter_id", "A", "rank", 8);
    cel_affinity_learn(a, create, res, 1);
    json_decref(res);
    assert_int_equal(cel_affinity_get(a, "A"), 1);
    assert_int_equal(cel_affinity_count(a, 1), 1);
    res = json_pack("{s:s}", "adapter_id", "B");
    cel_affinity_learn(a, load, res, 0);
    json_decref(res);
    assert_int_equal(cel_affinity_get(a, "B"), 0);
    assert_int_equal(cel_affinity_count(a, 0), 1);
    /* results without a string adapter_id teach nothing */
    json_t *bad[] = { json_null(), json_string("A"), json_pack("{s:i}", "adapter_id", 5),
                      json_object(), json_pack("[s]", "C") };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cel_affinity_learn(a, create, bad[i], 0);
        json_decref(bad[i]);
    }
    cel_affinity_learn(a, create, NULL, 0);
    assert_int_equal(cel_affinity_count(a, 0), 1);
    assert_int_equal(cel_affinity_count(a, 1), 1);
    /* a slot out of range is ignored */
    res = json_pack("{s:s}", "adapter_id", "Z");
    cel_affinity_learn(a, create, res, 2);
    json_decref(res);
    assert_int_equal(cel_affinity_get(a, "Z"), -1);

    /* lora.delete unbinds (positional and keyword), whatever its result */
    cel_task_t *del = mk("lora.delete", "[\"A\"]", "{}");
    cel_affinity_learn(a, del, json_true(), 0); /* slot of the deleting executor is irrelevant */
    assert_int_equal(cel_affinity_get(a, "A"), -1);
    assert_int_equal(cel_affinity_count(a, 1), 0);
    /* deleting again (or an unknown adapter) is harmless */
    cel_affinity_learn(a, del, NULL, 1);
    assert_int_equal(cel_affinity_count(a, 1), 0);
    cel_task_free(del);
    del = mk("lora.delete", "[]", "{\"adapter_id\": \"B\"}");
    cel_affinity_learn(a, del, NULL, 0);
    assert_int_equal(cel_affinity_get(a, "B"), -1);
    assert_int_equal(cel_affinity_count(a, 0), 0);
    cel_task_free(del);
    del = mk("lora.delete", "[5]", "{}");
    cel_affinity_learn(a, del, NULL, 0);
    cel_task_free(del);

    /* other tasks teach nothing, even with an adapter_id in their result */
    cel_affinity_set(a, "S", 1);
    cel_task_t *other = mk("lora.sample", "[\"S\", [\"hi\"]]", "{}");
    res = json_pack("{s:s}", "adapter_id", "Q");
    cel_affinity_learn(a, other, res, 0);
    json_decref(res);
    assert_int_equal(cel_affinity_get(a, "Q"), -1);
    assert_int_equal(cel_affinity_get(a, "S"), 1);
    cel_task_free(other);
    /* a nameless task is ignored */
    const char *saved = create->name;
    create->name = NULL;
    res = json_pack("{s:s}", "adapter_id", "N");
    cel_affinity_learn(a, create, res, 0);
    json_decref(res);
    create->name = saved;
    assert_int_equal(cel_affinity_get(a, "N"), -1);

    /* lora.load of an id already bound elsewhere moves it */
    res = json_pack("{s:s}", "adapter_id", "S");
    cel_affinity_learn(a, load, res, 0);
    json_decref(res);
    assert_int_equal(cel_affinity_get(a, "S"), 0);
    assert_int_equal(cel_affinity_count(a, 0), 1);
    assert_int_equal(cel_affinity_count(a, 1), 0);

    cel_task_free(create);
    cel_task_free(load);
    cel_affinity_free(a);
}

static void test_many(void **state) {
    cel_affinity_t *a = cel_affinity_new(4);
    char id[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "ad-%d", i);
        cel_affinity_set(a, id, i % 4);
    }
    for (int s = 0; s < 4; s++) assert_int_equal(cel_affinity_count(a, s), 250);
    assert_int_equal(cel_affinity_get(a, "ad-999"), 3);
    cel_affinity_free(a);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_adapter_of),    cmocka_unit_test(test_adapter_of_follows_table),
        cmocka_unit_test(test_set_get_count), cmocka_unit_test(test_zero_slots),
        cmocka_unit_test(test_learn),         cmocka_unit_test(test_many),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
