/* test_call.c -- unit tests for the executor's argument binder (executor/call.c).
 *
 * Binding: every TypeError form CPython 3.11 produces for positional/keyword
 * calls (the expected strings were printed by python3 for the same signatures),
 * *args and **kwargs, defaults and None. Checking: each type, bound, length, choice,
 * dict key and one_of rule of the task table at its limit and one past it, with
 * the message the client reads. Also the outcome helpers (raise, traceback, repr).
 */
#include "testutil.h"

#include "../../executor/call.h"
#include "../../protocol/tasks.h"

/* ---- helpers ---- */

/* A call of task name with args/kwargs given as JSON text. */
static cel_call_t mk(const char *name, const char *args, const char *kwargs) {
    json_error_t je;
    cel_call_t c = { .name = name };
    c.args = json_loads(args, JSON_ALLOW_NUL, &je);
    if (!c.args) fail_msg("bad args JSON %s: %s", args, je.text);
    c.kwargs = json_loads(kwargs, 0, &je);
    if (!c.kwargs) fail_msg("bad kwargs JSON %s: %s", kwargs, je.text);
    return c;
}

static void drop(cel_call_t *c) {
    cel_call_close(c);
    json_decref(c->args);
    json_decref(c->kwargs);
}

/* Binds and expects the exception type(msg) (msg exactly). */
static void bind_fails(const cel_tasks_task_t *t, const char *args, const char *kwargs,
                       const char *type, const char *msg) {
    cel_call_t c = mk(t->name, args, kwargs);
    int rc = cel_call_bind(&c, t);
    if (rc != CEL_ETYPE) fail_msg("%s(%s, %s): rc %d, not a raise", t->name, args, kwargs, rc);
    assert_non_null(c.exc_type);
    const char *got = json_string_value(json_array_get(c.exc_args, 0));
    if (strcmp(c.exc_type, type) != 0 || !got || strcmp(got, msg) != 0)
        fail_msg("%s(%s, %s):\n  want %s: %s\n  got  %s: %s", t->name, args, kwargs, type, msg,
                 c.exc_type, got ? got : "(none)");
    assert_string_equal(c.exc_module, "builtins");
    assert_int_equal(c.argc, 0);
    assert_null(c.result);
    drop(&c);
}

/* Binds and expects success with argv equal to want (a JSON array text). */
static void bind_ok(const cel_tasks_task_t *t, const char *args, const char *kwargs,
                    const char *want) {
    cel_call_t c = mk(t->name, args, kwargs);
    int rc = cel_call_bind(&c, t);
    if (rc != CEL_OK)
        fail_msg("%s(%s, %s): rc %d: %s", t->name, args, kwargs, rc,
                 c.exc_args ? json_string_value(json_array_get(c.exc_args, 0)) : "");
    assert_null(c.exc_type);
    json_t *got = json_array();
    for (int i = 0; i < c.argc; i++) json_array_append(got, c.argv[i]);
    json_t *w = json_loads(want, 0, NULL);
    assert_non_null(w);
    if (!json_equal(got, w)) {
        char *g = json_dumps(got, JSON_ENCODE_ANY);
        fail_msg("%s(%s, %s): bound %s, want %s", t->name, args, kwargs, g, want);
    }
    json_decref(w);
    json_decref(got);
    drop(&c);
}

static const cel_tasks_task_t *task(const char *name) {
    const cel_tasks_task_t *t = cel_tasks_find(name);
    assert_non_null(t);
    return t;
}

/* ---- binding: CPython's TypeErrors ---- */

static const cel_tasks_spec_t abc[] = {
    { .name = "a", .type = CEL_TASKS_ANY, .required = 1 },
    { .name = "b", .type = CEL_TASKS_ANY, .required = 1 },
    { .name = "c", .type = CEL_TASKS_ANY, .required = 1 },
    { .name = "d", .type = CEL_TASKS_ANY, .required = 1 },
};
static const cel_tasks_spec_t k_params[] = {
    { .name = "a", .type = CEL_TASKS_ANY, .required = 1 },
    { .name = "b", .type = CEL_TASKS_INT, .nullable = 1, .dflt = "1" },
    { .name = "c", .type = CEL_TASKS_INT, .dflt = "2" },
};
static const cel_tasks_task_t f3 = { .name = "t.f", .params = abc, .nparams = 3 };
static const cel_tasks_task_t f4 = { .name = "t.f", .params = abc, .nparams = 4 };
static const cel_tasks_task_t g1 = { .name = "g", .params = abc, .nparams = 1 };
static const cel_tasks_task_t h0 = { .name = "x.y.h" };
static const cel_tasks_task_t k3 = { .name = "t.k", .params = k_params, .nparams = 3 };
static const cel_tasks_task_t opt2 = { .name = "t.opt", .params = k_params + 1, .nparams = 2 };
static const cel_tasks_task_t va = { .name = "t.va", .params = abc, .nparams = 1, .varargs = 1 };
static const cel_tasks_task_t vk = { .name = "t.vk", .params = abc, .nparams = 1, .varkw = 1 };
static const cel_tasks_task_t echo = { .name = "t.echo", .varargs = 1, .varkw = 1 };

static void test_missing(void **state) {
    bind_fails(&f3, "[]", "{}", "TypeError",
               "f() missing 3 required positional arguments: 'a', 'b', and 'c'");
    bind_fails(&f3, "[1]", "{}", "TypeError",
               "f() missing 2 required positional arguments: 'b' and 'c'");
    bind_fails(&f3, "[1, 2]", "{}", "TypeError", "f() missing 1 required positional argument: 'c'");
    bind_fails(&f4, "[]", "{}", "TypeError",
               "f() missing 4 required positional arguments: 'a', 'b', 'c', and 'd'");
    bind_fails(&f3, "[]", "{\"b\": 1}", "TypeError",
               "f() missing 2 required positional arguments: 'a' and 'c'");
    bind_fails(&k3, "[]", "{}", "TypeError", "k() missing 1 required positional argument: 'a'");
    bind_ok(&f3, "[1, 2, 3]", "{}", "[1, 2, 3]");
    bind_ok(&f3, "[1]", "{\"c\": 3, \"b\": 2}", "[1, 2, 3]");
}

static void test_too_many_positional(void **state) {
    bind_fails(&g1, "[1, 2]", "{}", "TypeError",
               "g() takes 1 positional argument but 2 were given");
    bind_fails(&h0, "[1]", "{}", "TypeError", "h() takes 0 positional arguments but 1 was given");
    bind_fails(&h0, "[1, 2]", "{}", "TypeError",
               "h() takes 0 positional arguments but 2 were given");
    bind_fails(&k3, "[1, 2, 3, 4]", "{}", "TypeError",
               "k() takes from 1 to 3 positional arguments but 4 were given");
    bind_fails(&opt2, "[1, 2, 3]", "{}", "TypeError",
               "opt() takes from 0 to 2 positional arguments but 3 were given");
    bind_ok(&k3, "[1, 2, 3]", "{}", "[1, 2, 3]");
    bind_ok(&h0, "[]", "{}", "[]");
}

static void test_keywords(void **state) {
    bind_fails(&k3, "[1]", "{\"z\": 1}", "TypeError", "k() got an unexpected keyword argument 'z'");
    bind_fails(&f3, "[1]", "{\"a\": 2}", "TypeError", "f() got multiple values for argument 'a'");
    /* keyword errors come before too-many-positional, as in CPython */
    bind_fails(&g1, "[1, 2]", "{\"a\": 3}", "TypeError",
               "g() got multiple values for argument 'a'");
    bind_fails(&k3, "[1, 2, 3, 4]", "{\"z\": 1}", "TypeError",
               "k() got an unexpected keyword argument 'z'");
    bind_fails(&h0, "[]", "{\"x\": 1}", "TypeError", "h() got an unexpected keyword argument 'x'");
    bind_ok(&k3, "[]", "{\"a\": 5, \"c\": 7}", "[5, 1, 7]");
}

static void test_varargs_varkw(void **state) {
    bind_ok(&echo, "[]", "{}", "[[], {}]");
    bind_ok(&echo, "[1, \"x\", null]", "{\"k\": [1], \"a\": null}",
            "[[1, \"x\", null], {\"k\": [1], \"a\": null}]");
    bind_ok(&va, "[1, 2, 3]", "{}", "[1, [2, 3]]");
    bind_ok(&va, "[1]", "{}", "[1, []]");
    bind_fails(&va, "[]", "{}", "TypeError", "va() missing 1 required positional argument: 'a'");
    bind_fails(&va, "[1]", "{\"z\": 1}", "TypeError",
               "va() got an unexpected keyword argument 'z'");
    bind_ok(&vk, "[]", "{\"a\": 1, \"z\": 2}", "[1, {\"z\": 2}]");
    bind_fails(&vk, "[1, 2]", "{}", "TypeError",
               "vk() takes 1 positional argument but 2 were given");
    bind_fails(&vk, "[1]", "{\"a\": 2}", "TypeError", "vk() got multiple values for argument 'a'");
}

static void test_defaults_and_none(void **state) {
    /* None is the default for a nullable parameter with one, a value otherwise */
    bind_ok(&k3, "[1]", "{}", "[1, 1, 2]");
    bind_ok(&k3, "[1, null]", "{}", "[1, 1, 2]");
    bind_ok(&k3, "[null, null]", "{}", "[null, 1, 2]"); /* a: any */
    bind_fails(&k3, "[1, 1, null]", "{}", "TypeError", "c must be an int, not NoneType");
    /* real tasks: model.score's adapter_id, lora.sample's required-but-None one */
    bind_ok(task("model.score"), "[\"t\"]", "{}", "[\"t\", null]");
    bind_ok(task("model.score"), "[\"t\", null]", "{}", "[\"t\", null]");
    bind_ok(task("lora.sample"), "[null, \"p\"]", "{}",
            "[null, [\"p\"], {\"max_tokens\": 32, \"temperature\": 1.0, \"top_p\": 1.0, "
            "\"top_k\": 0, \"seed\": null, \"stop\": null}]");
    bind_fails(task("lora.forward_backward"), "[null, [{\"text\": \"x\"}]]", "{}", "TypeError",
               "adapter_id must be a str, not NoneType");
    bind_ok(task("lora.create"), "[]", "{}", "[8, 16, null, null, null]");
    bind_ok(task("lora.create"), "[null, null, null, null, null]", "{}",
            "[8, 16, null, null, null]");
    bind_ok(task("lora.optim_step"), "[\"a\"]", "{}",
            "[\"a\", {\"learning_rate\": 0.0001, \"beta1\": 0.9, \"beta2\": 0.999, "
            "\"eps\": 1e-08, \"weight_decay\": 0, \"grad_clip_norm\": 0}]");
    bind_ok(task("lora.forward_backward"), "[\"a\", [{\"text\": \"x\"}], null]", "{}",
            "[\"a\", [{\"text\": \"x\"}], \"cross_entropy\"]");
}

/* Python's own binder runs before any value check: a bad value and a missing
 * argument give the missing-argument TypeError. */
static void test_binding_before_checks(void **state) {
    bind_fails(task("lora.sample"), "[5]", "{}", "TypeError",
               "sample() missing 1 required positional argument: 'prompts'");
    bind_fails(task("lora.create"), "[1, 2, 3, 4, 5, 6]", "{}", "TypeError",
               "create() takes from 0 to 5 positional arguments but 6 were given");
    bind_fails(task("model.score"), "[\"x\"]", "{\"adapter\": 1}", "TypeError",
               "score() got an unexpected keyword argument 'adapter'");
}

/* ---- checking: types and bounds ---- */

static void test_int_bounds(void **state) {
    const cel_tasks_task_t *c = task("lora.create");
    bind_ok(c, "[1]", "{}", "[1, 16, null, null, null]");
    bind_ok(c, "[256]", "{}", "[256, 16, null, null, null]");
    bind_fails(c, "[0]", "{}", "ValueError", "rank must be in [1, 256], not 0");
    bind_fails(c, "[257]", "{}", "ValueError", "rank must be in [1, 256], not 257");
    bind_fails(c, "[\"8\"]", "{}", "TypeError", "rank must be an int, not str");
    bind_fails(c, "[2.0]", "{}", "TypeError", "rank must be an int, not float");
    bind_fails(c, "[true]", "{}", "TypeError", "rank must be an int, not bool");
    /* one-sided */
    bind_ok(c, "[]", "{\"seed\": 0}", "[8, 16, null, 0, null]");
    bind_ok(c, "[]", "{\"seed\": 9223372036854775807}", "[8, 16, null, 9223372036854775807, null]");
    bind_fails(c, "[]", "{\"seed\": -1}", "ValueError", "seed must be >= 0, not -1");
    bind_fails(c, "[]", "{\"seed\": 1.5}", "TypeError", "seed must be an int or None, not float");
}

static void test_number_bounds(void **state) {
    const cel_tasks_task_t *c = task("lora.create");
    bind_ok(c, "[8, 1e-300]", "{}", "[8, 1e-300, null, null, null]");
    bind_ok(c, "[8, 1000000]", "{}", "[8, 1000000, null, null, null]");
    bind_fails(c, "[8, 0]", "{}", "ValueError", "alpha must be in (0, 1e+06], not 0");
    bind_fails(c, "[8, -1]", "{}", "ValueError", "alpha must be in (0, 1e+06], not -1");
    bind_fails(c, "[8, 1000000.5]", "{}", "ValueError",
               "alpha must be in (0, 1e+06], not 1000000.5");
    bind_fails(c, "[8, \"x\"]", "{}", "TypeError", "alpha must be a number, not str");
    bind_fails(c, "[8, false]", "{}", "TypeError", "alpha must be a number, not bool");
    const cel_tasks_task_t *o = task("lora.optim_step");
    bind_ok(o, "[\"a\", {\"beta1\": 0, \"learning_rate\": 10, \"grad_clip_norm\": 1.5}]", "{}",
            "[\"a\", {\"learning_rate\": 10, \"beta1\": 0, \"beta2\": 0.999, \"eps\": 1e-08, "
            "\"weight_decay\": 0, \"grad_clip_norm\": 1.5}]");
    bind_ok(o, "[\"a\", {\"beta1\": 0.999999}]", "{}",
            "[\"a\", {\"learning_rate\": 0.0001, \"beta1\": 0.999999, \"beta2\": 0.999, "
            "\"eps\": 1e-08, \"weight_decay\": 0, \"grad_clip_norm\": 0}]");
    bind_fails(o, "[\"a\", {\"beta1\": 1.0}]", "{}", "ValueError",
               "adam_params['beta1'] must be in [0, 1), not 1.0");
    bind_fails(o, "[\"a\", {\"learning_rate\": 10.5}]", "{}", "ValueError",
               "adam_params['learning_rate'] must be in (0, 10], not 10.5");
    bind_fails(o, "[\"a\", {\"learning_rate\": 0}]", "{}", "ValueError",
               "adam_params['learning_rate'] must be in (0, 10], not 0");
    /* None for a setting takes its default, as for sampling_params */
    bind_ok(o, "[\"a\", {\"beta1\": null}]", "{}",
            "[\"a\", {\"learning_rate\": 0.0001, \"beta1\": 0.9, \"beta2\": 0.999, "
            "\"eps\": 1e-08, \"weight_decay\": 0, \"grad_clip_norm\": 0}]");
    bind_fails(o, "[\"a\", {\"beta1\": \"x\"}]", "{}", "TypeError",
               "adam_params['beta1'] must be a number, not str");
    /* loss weights: bounded on both sides (issue 12) */
    const cel_tasks_task_t *fb = task("lora.forward_backward");
    bind_ok(fb, "[\"a\", [{\"tokens\": [1, 2], \"target_tokens\": [2, 3], \"weights\": [0, 2.5]}]]",
            "{}",
            "[\"a\", [{\"tokens\": [1, 2], \"target_tokens\": [2, 3], \"weights\": [0, 2.5]}],"
            " \"cross_entropy\"]");
    bind_fails(fb,
               "[\"a\", [{\"tokens\": [1, 2], \"target_tokens\": [2, 3], \"weights\": [1, -1]}]]",
               "{}", "ValueError", "example 0: weights[1] must be in [0, 10000], not -1");
    /* 3e38 is a float32, but a loss weighted by it overflows: refused (issue 12) */
    bind_fails(fb,
               "[\"a\", [{\"tokens\": [1, 2], \"target_tokens\": [2, 3], \"weights\": [3e38, 1]}]]",
               "{}", "ValueError", "example 0: weights[0] must be in [0, 10000], not 3e+38");
    bind_ok(fb, "[\"a\", [{\"tokens\": [1, 2], \"target_tokens\": [2, 3], \"weights\": [1e4, 1]}]]",
            "{}",
            "[\"a\", [{\"tokens\": [1, 2], \"target_tokens\": [2, 3], \"weights\": [10000.0, 1]}],"
            " \"cross_entropy\"]");
}

static void test_str_lengths(void **state) {
    const cel_tasks_task_t *s = task("lora.sample");
    /* stop strings: 1 to 256 code points (not bytes) */
    char stop[2 * 257 + 64], args[4 * 257 + 128], want[4 * 257 + 256];
    for (int n = 256; n <= 257; n++) {
        size_t used = 0;
        for (int i = 0; i < n; i++) used += (size_t)snprintf(stop + used, sizeof(stop) - used, "é");
        snprintf(args, sizeof(args), "[null, \"p\", {\"stop\": \"%s\"}]", stop);
        if (n == 256) {
            snprintf(want, sizeof(want),
                     "[null, [\"p\"], {\"max_tokens\": 32, \"temperature\": "
                     "1.0, \"top_p\": 1.0, \"top_k\": 0, \"seed\": null, \"stop\": [\"%s\"]}]",
                     stop);
            bind_ok(s, args, "{}", want);
        } else {
            bind_fails(s, args, "{}", "ValueError",
                       "sampling_params['stop'][0] must be 1 to 256 characters long, not 257");
        }
    }
    bind_fails(s, "[null, \"p\", {\"stop\": [\"a\", \"\"]}]", "{}", "ValueError",
               "sampling_params['stop'][1] must not be empty");
    /* text: at most CEL_TASKS_MAX_TEXT code points */
    size_t n = CEL_TASKS_MAX_TEXT;
    char *text = malloc(n + 2);
    assert_non_null(text);
    memset(text, 'x', n + 1);
    text[n + 1] = '\0';
    const cel_tasks_task_t *score = task("model.score");
    cel_call_t c = { .name = "model.score",
                     .args = json_pack("[s]", text),
                     .kwargs = json_object() };
    assert_int_equal(cel_call_bind(&c, score), CEL_ETYPE);
    assert_string_equal(json_string_value(json_array_get(c.exc_args, 0)),
                        "text must be at most 4194304 characters long, not 4194305");
    drop(&c);
    text[n] = '\0';
    c = (cel_call_t){ .name = "model.score",
                      .args = json_pack("[s]", text),
                      .kwargs = json_object() };
    assert_int_equal(cel_call_bind(&c, score), CEL_OK);
    drop(&c);
    free(text);
    bind_ok(score, "[\"\"]", "{}", "[\"\", null]"); /* score's text may be empty */
    bind_fails(task("lora.forward_backward"), "[\"a\", [{\"text\": \"\"}]]", "{}", "ValueError",
               "example 0: text must not be empty");
}

static void test_choices(void **state) {
    const cel_tasks_task_t *fb = task("lora.forward_backward");
    bind_fails(fb, "[\"a\", [{\"text\": \"x\"}], \"ppo\"]", "{}", "ValueError",
               "unknown loss_fn 'ppo' (supported: 'cross_entropy')");
    /* an embedded NUL does not match a choice */
    bind_fails(fb, "[\"a\", [{\"text\": \"x\"}], \"cross_entropy\\u0000\"]", "{}", "ValueError",
               "unknown loss_fn 'cross_entropy\\x00' (supported: 'cross_entropy')");
    bind_fails(fb, "[\"a\", [{\"text\": \"x\"}], 3]", "{}", "TypeError",
               "loss_fn must be a str, not int");
    const cel_tasks_task_t *c = task("lora.create");
    bind_ok(c, "[2, 4, [\"down_proj\", \"q_proj\"]]", "{}",
            "[2, 4, [\"down_proj\", \"q_proj\"], null, null]");
    bind_fails(c, "[2, 4, [\"q_proj\", \"lm_head\"]]", "{}", "ValueError",
               "unknown target module 'lm_head' (supported: 'q_proj', 'k_proj', 'v_proj', "
               "'o_proj', 'gate_proj', 'up_proj', 'down_proj')");
    bind_fails(c, "[2, 4, [\"q_proj\", \"q_proj\"]]", "{}", "ValueError",
               "target_modules has 'q_proj' twice");
    bind_fails(c, "[2, 4, \"q_proj\"]", "{}", "TypeError",
               "target_modules must be a list of str, not str");
    bind_fails(c, "[2, 4, [\"q_proj\", 1]]", "{}", "TypeError",
               "target_modules[1] must be a str, not int");
}

static void test_list_lengths(void **state) {
    const cel_tasks_task_t *c = task("lora.create");
    bind_ok(c,
            "[2, 4, [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", "
            "\"up_proj\", \"down_proj\"]]",
            "{}",
            "[2, 4, [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", \"up_proj\", "
            "\"down_proj\"], null, null]");
    bind_fails(c,
               "[2, 4, [\"q_proj\", \"k_proj\", \"v_proj\", \"o_proj\", \"gate_proj\", "
               "\"up_proj\", \"down_proj\", \"q_proj\"]]",
               "{}", "ValueError", "target_modules must name 1 to 7 modules, not 8");
    bind_fails(c, "[2, 4, []]", "{}", "ValueError",
               "target_modules must name 1 to 7 modules, not 0");
    /* prompts: 1 to 64; a bare str is one prompt */
    const cel_tasks_task_t *s = task("lora.sample");
    json_t *prompts = json_array();
    for (int i = 0; i < 65; i++) json_array_append_new(prompts, json_string("p"));
    for (int n = 64; n <= 65; n++) {
        json_t *p = json_array();
        for (int i = 0; i < n; i++) json_array_append(p, json_array_get(prompts, (size_t)i));
        cel_call_t call = { .name = "lora.sample",
                            .args = json_pack("[n, o]", p),
                            .kwargs = json_object() };
        int rc = cel_call_bind(&call, s);
        if (n == 64) {
            assert_int_equal(rc, CEL_OK);
            assert_int_equal(json_array_size(call.argv[1]), 64);
        } else {
            assert_int_equal(rc, CEL_ETYPE);
            assert_string_equal(json_string_value(json_array_get(call.exc_args, 0)),
                                "prompts must hold 1 to 64 prompts, not 65");
        }
        drop(&call);
    }
    json_decref(prompts);
    bind_fails(s, "[null, []]", "{}", "ValueError", "prompts must hold 1 to 64 prompts, not 0");
    bind_fails(s, "[null, 5]", "{}", "TypeError",
               "prompts must be a str or a list of str, not int");
    bind_fails(s, "[null, [\"a\", 1]]", "{}", "TypeError", "prompts[1] must be a str, not int");
    /* stop: at most 16 */
    char args[1024];
    size_t used = (size_t)snprintf(args, sizeof(args), "[null, \"p\", {\"stop\": [");
    for (int i = 0; i < 17; i++)
        used += (size_t)snprintf(args + used, sizeof(args) - used, "%s\"s\"", i ? ", " : "");
    snprintf(args + used, sizeof(args) - used, "]}]");
    bind_fails(s, args, "{}", "ValueError",
               "sampling_params['stop'] must hold at most 16 stop strings, not 17");
    /* data: 1 to 512 examples */
    const cel_tasks_task_t *fb = task("lora.forward_backward");
    for (int n = 512; n <= 513; n++) {
        json_t *data = json_array();
        for (int i = 0; i < n; i++) json_array_append_new(data, json_pack("{s:s}", "text", "x"));
        cel_call_t call = { .name = fb->name,
                            .args = json_pack("[s, o]", "a", data),
                            .kwargs = json_object() };
        int rc = cel_call_bind(&call, fb);
        assert_int_equal(rc, n == 512 ? CEL_OK : CEL_ETYPE);
        if (n == 513)
            assert_string_equal(json_string_value(json_array_get(call.exc_args, 0)),
                                "data must hold 1 to 512 examples, not 513");
        drop(&call);
    }
    bind_fails(fb, "[\"a\", []]", "{}", "ValueError", "data must hold 1 to 512 examples, not 0");
    bind_fails(fb, "[\"a\", \"x\"]", "{}", "TypeError", "data must be a list of examples, not str");
}

static void test_dicts(void **state) {
    const cel_tasks_task_t *o = task("lora.optim_step");
    bind_fails(o, "[\"a\", {\"lr\": 1}]", "{}", "ValueError",
               "unknown adam_params key 'lr' (learning_rate, beta1, beta2, eps, weight_decay, "
               "grad_clip_norm)");
    bind_fails(o, "[\"a\", [1]]", "{}", "TypeError",
               "adam_params must be a dict or None, not list");
    const cel_tasks_task_t *s = task("lora.sample");
    bind_fails(s, "[null, \"a\", {\"n\": 2}]", "{}", "ValueError",
               "unknown sampling_params key 'n' (max_tokens, temperature, top_p, top_k, seed, "
               "stop)");
    bind_fails(s, "[null, \"a\", {\"max_tokens\": 0}]", "{}", "ValueError",
               "sampling_params['max_tokens'] must be in [1, 2048], not 0");
    bind_fails(s, "[null, \"a\", {\"max_tokens\": 2049}]", "{}", "ValueError",
               "sampling_params['max_tokens'] must be in [1, 2048], not 2049");
    bind_fails(s, "[null, \"a\", {\"top_k\": 1073741825}]", "{}", "ValueError",
               "sampling_params['top_k'] must be in [0, 1073741824], not 1073741825");
    bind_fails(s, "[null, \"a\", {\"top_p\": 0}]", "{}", "ValueError",
               "sampling_params['top_p'] must be in (0, 1], not 0");
    bind_fails(s, "[null, \"a\", {\"temperature\": \"hot\"}]", "{}", "TypeError",
               "sampling_params['temperature'] must be a number, not str");
    /* nullable fields: None is the default; a bare stop str is a list */
    bind_ok(s,
            "[\"x\", [\"a\", \"b\"], {\"max_tokens\": 2048, \"temperature\": null, "
            "\"top_k\": 1073741824, \"stop\": \"\\n\", \"seed\": 7}]",
            "{}",
            "[\"x\", [\"a\", \"b\"], {\"max_tokens\": 2048, \"temperature\": 1.0, \"top_p\": 1.0, "
            "\"top_k\": 1073741824, \"seed\": 7, \"stop\": [\"\\n\"]}]");
}

static void test_examples_one_of(void **state) {
    const cel_tasks_task_t *fb = task("lora.forward_backward");
    const char *want_forms = "{\"text\": str}, a chat [{\"role\", \"content\"}, ...] or a datum "
                             "{\"tokens\", \"target_tokens\", \"weights\"}";
    char msg[512];
    snprintf(msg, sizeof(msg), "example 0 must be %s, not int", want_forms);
    bind_fails(fb, "[\"a\", [5]]", "{}", "TypeError", msg);
    snprintf(msg, sizeof(msg), "example 1 must be %s, not a dict with those keys", want_forms);
    bind_fails(fb, "[\"a\", [{\"text\": \"x\"}, {\"txt\": \"a\"}]]", "{}", "ValueError", msg);
    bind_fails(fb, "[\"a\", [{\"text\": 1}]]", "{}", "TypeError",
               "example 0: text must be a str, not int");
    bind_fails(fb, "[\"a\", [{\"text\": \"x\", \"extra\": 1}]]", "{}", "ValueError",
               "example 0: unknown key 'extra' (text)");
    bind_fails(fb, "[\"a\", [{\"tokens\": [1], \"target_tokens\": [2], \"extra\": 1}]]", "{}",
               "ValueError", "example 0: unknown key 'extra' (tokens, target_tokens, weights)");
    bind_fails(fb, "[\"a\", [{\"tokens\": [1, 2]}]]", "{}", "ValueError",
               "example 0: a datum needs tokens and target_tokens");
    bind_fails(fb, "[\"a\", [{\"tokens\": [1, -2], \"target_tokens\": [1, 2]}]]", "{}",
               "ValueError", "example 0: tokens[1] must be in [0, 2147483647], not -2");
    bind_fails(fb, "[\"a\", [{\"tokens\": [1, 2.5], \"target_tokens\": [1, 2]}]]", "{}",
               "TypeError", "example 0: tokens[1] must be an int, not float");
    bind_fails(fb, "[\"a\", [{\"tokens\": [], \"target_tokens\": [1]}]]", "{}", "ValueError",
               "example 0: tokens must not be empty");
    bind_ok(fb, "[\"a\", [{\"target_tokens\": [2], \"tokens\": [1]}]]", "{}",
            "[\"a\", [{\"tokens\": [1], \"target_tokens\": [2], \"weights\": null}], "
            "\"cross_entropy\"]");
    /* chats */
    bind_ok(fb,
            "[\"a\", [[{\"role\": \"user\", \"content\": \"\"}, {\"role\": \"assistant\", "
            "\"content\": \"b\"}]]]",
            "{}",
            "[\"a\", [[{\"role\": \"user\", \"content\": \"\"}, {\"role\": \"assistant\", "
            "\"content\": \"b\"}]], \"cross_entropy\"]");
    bind_fails(fb, "[\"a\", [{\"text\": \"x\"}, [{\"role\": \"user\"}]]]", "{}", "ValueError",
               "example 1, message 0: a chat message is {\"role\": str, \"content\": str}");
    bind_fails(fb, "[\"a\", [[{\"role\": \"robot\", \"content\": \"x\"}]]]", "{}", "ValueError",
               "example 0, message 0: unknown role 'robot' (supported: 'system', 'user', "
               "'assistant')");
    bind_fails(fb, "[\"a\", [[{\"role\": \"user\", \"content\": 1}]]]", "{}", "TypeError",
               "example 0, message 0: content must be a str, not int");
    bind_fails(fb, "[\"a\", [[5]]]", "{}", "TypeError",
               "example 0, message 0 must be {\"role\": str, \"content\": str}, not int");
    bind_fails(fb, "[\"a\", [[]]]", "{}", "ValueError",
               "example 0 must hold 1 to 256 messages, not 0");
    bind_fails(fb, "[\"a\", [{\"messages\": [{\"role\": \"x\", \"content\": \"y\"}]}]]", "{}",
               "ValueError",
               "example 0: messages, message 0: unknown role 'x' (supported: "
               "'system', 'user', 'assistant')");
    /* 256 turns, and one more */
    for (int n = 256; n <= 257; n++) {
        json_t *chat = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(chat, json_pack("{s:s, s:s}", "role", "user", "content", "c"));
        cel_call_t call = { .name = fb->name,
                            .args = json_pack("[s, [o]]", "a", chat),
                            .kwargs = json_object() };
        int rc = cel_call_bind(&call, fb);
        assert_int_equal(rc, n == 256 ? CEL_OK : CEL_ETYPE);
        if (n == 257)
            assert_string_equal(json_string_value(json_array_get(call.exc_args, 0)),
                                "example 0 must hold 1 to 256 messages, not 257");
        drop(&call);
    }
}

/* ---- the outcome ---- */

static void test_raise_and_traceback(void **state) {
    cel_call_t c = { .name = "diag.fail" };
    assert_int_equal(cel_call_raisef(&c, "ValueError", "bad %d", 7), CEL_OK);
    assert_string_equal(c.exc_type, "ValueError");
    assert_string_equal(c.traceback, "Traceback (most recent call last):\n"
                                     "  File \"celeriac/diag\", line 1, in diag.fail\n"
                                     "ValueError: bad 7\n");
    assert_int_equal(cel_call_fail(&c, "TypeError", "x"), CEL_ETYPE);
    assert_string_equal(c.exc_type, "TypeError");
    assert_int_equal(cel_call_finish(CEL_ETYPE), CEL_OK);
    assert_int_equal(cel_call_finish(CEL_ENOMEM), CEL_ENOMEM);
    assert_int_equal(cel_call_raise(&c, "Boom", "my.mod", NULL, NULL), CEL_OK);
    assert_true(strstr(c.traceback, "\nmy.mod.Boom\n") != NULL);
    assert_int_equal(json_array_size(c.exc_args), 0);
    assert_int_equal(cel_call_succeed(&c, json_integer(3)), CEL_OK);
    assert_null(c.exc_type);
    assert_null(c.traceback);
    assert_int_equal(json_integer_value(c.result), 3);
    assert_int_equal(cel_call_succeed(&c, NULL), CEL_ENOMEM);
    volatile sig_atomic_t flag = 0;
    c.soft_limit = &flag;
    assert_false(cel_call_soft_limit_hit(&c));
    flag = 1;
    assert_true(cel_call_soft_limit_hit(&c));
    assert_int_equal(cel_call_raise_soft_limit(&c), CEL_ETYPE);
    assert_string_equal(c.exc_module, "billiard.exceptions");
    cel_call_close(&c);
    cel_call_close(&c); /* twice is fine */
}

static void test_pytype_pystr_repr(void **state) {
    json_t *v = json_pack("[i, f, s, [], {}, b, n]", 1, 1.5, "s", 1);
    static const char *const want[] = { "int", "float", "str", "list", "dict", "bool", "NoneType" };
    for (size_t i = 0; i < 7; i++)
        assert_string_equal(cel_call_pytype(json_array_get(v, i)), want[i]);
    char *s = cel_call_pystr(json_array_get(v, 2));
    assert_string_equal(s, "s");
    free(s);
    s = cel_call_pystr(v);
    assert_string_equal(s, "[1, 1.5, 's', [], {}, True, None]");
    free(s);
    char buf[CEL_CALL_REPR_MAX + 8];
    assert_string_equal(cel_call_repr(json_array_get(v, 2), buf, sizeof(buf)), "'s'");
    char big[200];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    json_t *b = json_string(big);
    cel_call_repr(b, buf, sizeof(buf));
    assert_int_equal(strlen(buf), CEL_CALL_REPR_MAX + 3);
    assert_string_equal(buf + CEL_CALL_REPR_MAX, "...");
    json_decref(b);
    json_decref(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing),           cmocka_unit_test(test_too_many_positional),
        cmocka_unit_test(test_keywords),          cmocka_unit_test(test_varargs_varkw),
        cmocka_unit_test(test_defaults_and_none), cmocka_unit_test(test_binding_before_checks),
        cmocka_unit_test(test_int_bounds),        cmocka_unit_test(test_number_bounds),
        cmocka_unit_test(test_str_lengths),       cmocka_unit_test(test_choices),
        cmocka_unit_test(test_list_lengths),      cmocka_unit_test(test_dicts),
        cmocka_unit_test(test_examples_one_of),   cmocka_unit_test(test_raise_and_traceback),
        cmocka_unit_test(test_pytype_pystr_repr),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
