/* test_tasks.c -- unit tests for the task table and its description (protocol/tasks.c).
 *
 * The table must be consistent with itself (sorted unique names, adapter
 * parameters that exist and are str, defaults that satisfy their own specs,
 * containers that say what they contain), with the model (the LoRA target
 * choices are the model's), and its JSON description must say exactly what
 * the table holds (the format in protocol/tasks.h). Also the --describe-tasks
 * option.
 */
#include "testutil.h"

#include <math.h>

#include "../../executor/call.h"
#include "../../model/model.h"
#include "../../protocol/tasks.h"
#include "../../worker/options.h"

/* Every task of the table, through the name list. */
#define FOR_EACH_TASK(t)                                       \
    for (const char *const *n_ = cel_tasks_names(); *n_; n_++) \
        for (const cel_tasks_task_t *t = cel_tasks_find(*n_); t; t = NULL)

static void test_names_sorted_and_found(void **state) {
    const char *const *names = cel_tasks_names();
    int n = 0;
    for (; names[n]; n++) {
        if (n > 0 && strcmp(names[n - 1], names[n]) >= 0)
            fail_msg("names not sorted/unique: %s, %s", names[n - 1], names[n]);
        const cel_tasks_task_t *t = cel_tasks_find(names[n]);
        assert_non_null(t);
        assert_string_equal(t->name, names[n]);
        assert_true(cel_tasks_known(names[n]));
    }
    assert_int_equal(n, 16);
    assert_ptr_equal(cel_tasks_names(), names); /* static storage */
    static const char *const unknown[] = { "",  "diag", "diag.",        "diag.add ", "lora.deletex",
                                           "a", "zzz",  "model.score2", "DIAG.ADD" };
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        assert_null(cel_tasks_find(unknown[i]));
        assert_false(cel_tasks_known(unknown[i]));
    }
    assert_null(cel_tasks_find(NULL));
    assert_false(cel_tasks_known(NULL));
    assert_string_equal(cel_tasks_func(cel_tasks_find("lora.optim_step")), "optim_step");
    assert_string_equal(cel_tasks_func(cel_tasks_find("diag.add")), "add");
}

static void test_adapter_params(void **state) {
    int bound = 0;
    FOR_EACH_TASK(t) {
        int pos = cel_tasks_adapter_pos(t);
        if (!t->adapter_param) {
            assert_int_equal(pos, -1);
        } else {
            if (pos < 0)
                fail_msg("%s: adapter_param %s is not a parameter", t->name, t->adapter_param);
            assert_int_equal(t->params[pos].type, CEL_TASKS_STR);
            bound++;
        }
        /* a deleting task names what it deletes; a creating one names nothing */
        if (t->effect == CEL_TASKS_EFFECT_DELETE) assert_non_null(t->adapter_param);
        if (t->effect == CEL_TASKS_EFFECT_CREATE) assert_null(t->adapter_param);
        if (t->batchable) assert_true(t->needs_model);
        if (strncmp(t->name, "diag.", 5) == 0) assert_false(t->needs_model);
        else assert_true(t->needs_model);
    }
    assert_int_equal(bound, 7);
    assert_int_equal(cel_tasks_adapter_pos(cel_tasks_find("model.score")), 1);
    assert_int_equal(cel_tasks_adapter_pos(cel_tasks_find("lora.sample")), 0);
    assert_int_equal(cel_tasks_adapter_pos(NULL), -1);
}

/* Checks one spec and what it contains; named: a parameter or dict field. */
static void check_spec(const char *task, const cel_tasks_spec_t *s, int named) {
    const char *what = s->name ? s->name : "(item)";
    if (named != (s->name != NULL)) fail_msg("%s %s: named where it must not be", task, what);
    if (!s->doc && named) fail_msg("%s %s: no doc", task, what);
    if (named && !s->required) {
        if (!s->dflt) fail_msg("%s %s: optional without a default", task, what);
        json_error_t je;
        json_t *d = json_loads(s->dflt, JSON_DECODE_ANY, &je);
        if (!d) fail_msg("%s %s: default %s is not JSON: %s", task, what, s->dflt, je.text);
        if (json_is_null(d) && !s->nullable)
            fail_msg("%s %s: default None but not nullable", task, what);
        json_decref(d);
    }
    if (s->required && s->dflt) fail_msg("%s %s: required with a default", task, what);
    if (!named && (s->required || s->dflt || s->nullable))
        fail_msg("%s %s: an item has required/default/nullable", task, what);
    if (s->has_min && s->has_max && !(s->min < s->max)) fail_msg("%s %s: empty range", task, what);
    if ((s->has_min || s->has_max) && s->type != CEL_TASKS_INT && s->type != CEL_TASKS_NUMBER)
        fail_msg("%s %s: bounds on a non-number", task, what);
    if ((s->min_len || s->max_len) && s->type != CEL_TASKS_STR && s->type != CEL_TASKS_LIST)
        fail_msg("%s %s: lengths on a non-str/list", task, what);
    if (s->max_len && s->min_len > s->max_len) fail_msg("%s %s: min_len > max_len", task, what);
    if (s->choices && s->type != CEL_TASKS_STR) fail_msg("%s %s: choices on a non-str", task, what);
    if (s->also_str && !(s->type == CEL_TASKS_LIST && s->items->type == CEL_TASKS_STR))
        fail_msg("%s %s: also_str on something not a list of str", task, what);
    if (s->type == CEL_TASKS_LIST) {
        if (!s->items) fail_msg("%s %s: list without items", task, what);
        check_spec(task, s->items, 0);
    } else if (s->items) {
        fail_msg("%s %s: items on a non-list", task, what);
    }
    if (s->type == CEL_TASKS_DICT || s->type == CEL_TASKS_ONE_OF) {
        if (!s->fields || s->nfields < 1) fail_msg("%s %s: no fields/alternatives", task, what);
        for (int i = 0; i < s->nfields; i++) {
            check_spec(task, &s->fields[i], s->type == CEL_TASKS_DICT);
            for (int j = 0; s->type == CEL_TASKS_DICT && j < i; j++)
                if (strcmp(s->fields[i].name, s->fields[j].name) == 0)
                    fail_msg("%s %s: field %s twice", task, what, s->fields[i].name);
        }
    } else if (s->fields) {
        fail_msg("%s %s: fields on a non-dict", task, what);
    }
}

static void test_specs(void **state) {
    FOR_EACH_TASK(t) {
        assert_true(t->nparams <= CEL_TASKS_MAX_PARAMS);
        assert_non_null(t->doc);
        int optional = 0;
        for (int i = 0; i < t->nparams; i++) {
            check_spec(t->name, &t->params[i], 1);
            /* Python: no required parameter after one with a default */
            if (!t->params[i].required) optional = 1;
            else if (optional)
                fail_msg("%s: required %s after a default", t->name, t->params[i].name);
            for (int j = 0; j < i; j++)
                if (strcmp(t->params[i].name, t->params[j].name) == 0)
                    fail_msg("%s: parameter %s twice", t->name, t->params[i].name);
        }
    }
}

/* Every default of the table satisfies its own spec, bound as the executor binds
 * (executor/call.c). */
static void check_defaults(const char *task_name, const cel_tasks_spec_t *s) {
    if (s->name && !s->required) {
        cel_call_t c = { .name = task_name };
        json_t *d = json_loads(s->dflt, JSON_DECODE_ANY, NULL), *out = NULL;
        assert_non_null(d);
        int rc = cel_call_check(&c, s, d, &out);
        if (rc != CEL_OK)
            fail_msg("%s %s: default %s refused: %s", task_name, s->name, s->dflt,
                     json_string_value(json_array_get(c.exc_args, 0)));
        json_decref(out);
        json_decref(d);
        cel_call_close(&c);
    }
    if (s->items) check_defaults(task_name, s->items);
    for (int i = 0; i < s->nfields; i++) check_defaults(task_name, &s->fields[i]);
}

static void test_table_defaults_pass(void **state) {
    for (const char *const *n = cel_tasks_names(); *n; n++) {
        const cel_tasks_task_t *t = cel_tasks_find(*n);
        for (int i = 0; i < t->nparams; i++) check_defaults(t->name, &t->params[i]);
    }
}

/* The LoRA target choices are exactly the model's module names. */
static void test_targets_are_the_models(void **state) {
    const cel_tasks_task_t *t = cel_tasks_find("lora.create");
    const cel_tasks_spec_t *tm = NULL;
    for (int i = 0; i < t->nparams; i++)
        if (strcmp(t->params[i].name, "target_modules") == 0) tm = &t->params[i];
    assert_non_null(tm);
    unsigned all = 0;
    int n = 0;
    for (const char *const *c = tm->items->choices; *c; c++, n++) {
        unsigned bits = 0;
        cel_err_t err;
        if (cel_lora_parse_targets(*c, &bits, &err) != CEL_OK) fail_msg("%s: %s", *c, err.msg);
        assert_int_equal(bits & all, 0);
        all |= bits;
    }
    assert_int_equal(all, CEL_LORA_ALL);
    assert_int_equal(tm->max_len, n);
}

/* The described spec d says what s holds. */
static void check_described(const cel_tasks_spec_t *s, json_t *d) {
    static const char *const types[] = { "any",  "int",  "number", "str",
                                         "bool", "list", "dict",   "one_of" };
    assert_true(json_is_object(d));
    if (s->name) assert_string_equal(json_string_value(json_object_get(d, "name")), s->name);
    else assert_null(json_object_get(d, "name"));
    assert_string_equal(json_string_value(json_object_get(d, "type")), types[s->type]);
    int required = json_is_true(json_object_get(d, "required"));
    assert_int_equal(required, s->required || !s->name);
    json_t *dflt = json_object_get(d, "default");
    if (required) {
        assert_null(dflt);
    } else {
        json_t *want = json_loads(s->dflt, JSON_DECODE_ANY, NULL);
        assert_true(json_equal(dflt, want));
        json_decref(want);
    }
    assert_int_equal(json_is_true(json_object_get(d, "nullable")), s->nullable);
    json_t *min = json_object_get(d, "min"), *max = json_object_get(d, "max");
    assert_int_equal(min != NULL, s->has_min);
    assert_int_equal(max != NULL, s->has_max);
    if (min) assert_true(json_number_value(min) == s->min);
    if (max) assert_true(json_number_value(max) == s->max);
    if (s->type == CEL_TASKS_INT) {
        if (min) assert_true(json_is_integer(min));
        if (max) assert_true(json_is_integer(max));
    }
    assert_int_equal(json_is_true(json_object_get(d, "min_exclusive")), s->min_excl);
    assert_int_equal(json_is_true(json_object_get(d, "max_exclusive")), s->max_excl);
    json_t *ml = json_object_get(d, "min_len"), *xl = json_object_get(d, "max_len");
    assert_int_equal(ml ? json_integer_value(ml) : 0, s->min_len);
    assert_int_equal(xl ? json_integer_value(xl) : 0, s->max_len);
    json_t *choices = json_object_get(d, "choices");
    assert_int_equal(choices != NULL, s->choices != NULL);
    for (size_t i = 0; choices && i < json_array_size(choices); i++)
        assert_string_equal(json_string_value(json_array_get(choices, i)), s->choices[i]);
    if (choices) assert_null(s->choices[json_array_size(choices)]);
    if (s->type == CEL_TASKS_LIST) {
        assert_int_equal(json_is_true(json_object_get(d, "unique")), s->unique);
        assert_int_equal(json_is_true(json_object_get(d, "also_str")), s->also_str);
        check_described(s->items, json_object_get(d, "items"));
    } else {
        assert_null(json_object_get(d, "items"));
    }
    const char *key = s->type == CEL_TASKS_DICT ? "fields" : "one_of";
    json_t *sub = json_object_get(d, key);
    if (s->type == CEL_TASKS_DICT || s->type == CEL_TASKS_ONE_OF) {
        assert_int_equal(json_array_size(sub), s->nfields);
        for (int i = 0; i < s->nfields; i++)
            check_described(&s->fields[i], json_array_get(sub, (size_t)i));
    }
    if (s->type == CEL_TASKS_DICT)
        assert_int_equal(json_is_true(json_object_get(d, "extra_fields")), s->extra_fields);
    else assert_null(json_object_get(d, "extra_fields"));
    if (s->doc) assert_string_equal(json_string_value(json_object_get(d, "doc")), s->doc);
}

static void test_describe_round_trips(void **state) {
    json_t *d = cel_tasks_describe();
    assert_non_null(d);
    /* through text and back, as --describe-tasks prints it and Flask reads it */
    char *text = json_dumps(d, JSON_INDENT(2));
    assert_non_null(text);
    json_error_t je;
    json_t *back = json_loads(text, 0, &je);
    if (!back) fail_msg("describe output does not parse: %s", je.text);
    assert_true(json_equal(d, back));
    free(text);
    assert_string_equal(json_string_value(json_object_get(back, "format")), CEL_TASKS_FORMAT);
    json_t *tasks = json_object_get(back, "tasks");
    const char *const *names = cel_tasks_names();
    size_t i = 0;
    for (; names[i]; i++) {
        json_t *jt = json_array_get(tasks, i);
        const cel_tasks_task_t *t = cel_tasks_find(names[i]);
        assert_string_equal(json_string_value(json_object_get(jt, "name")), t->name);
        json_t *params = json_object_get(jt, "params");
        assert_int_equal(json_array_size(params), t->nparams);
        for (int p = 0; p < t->nparams; p++)
            check_described(&t->params[p], json_array_get(params, (size_t)p));
        assert_int_equal(json_is_true(json_object_get(jt, "varargs")), t->varargs);
        assert_int_equal(json_is_true(json_object_get(jt, "varkw")), t->varkw);
        assert_int_equal(json_is_true(json_object_get(jt, "batchable")), t->batchable);
        assert_int_equal(json_is_true(json_object_get(jt, "needs_model")), t->needs_model);
        json_t *ap = json_object_get(jt, "adapter_param");
        if (t->adapter_param) assert_string_equal(json_string_value(ap), t->adapter_param);
        else assert_true(json_is_null(ap));
        json_t *eff = json_object_get(jt, "adapter_effect");
        const char *want = t->effect == CEL_TASKS_EFFECT_CREATE   ? "create"
                           : t->effect == CEL_TASKS_EFFECT_DELETE ? "delete"
                                                                  : NULL;
        if (want) assert_string_equal(json_string_value(eff), want);
        else assert_true(json_is_null(eff));
        assert_string_equal(json_string_value(json_object_get(jt, "doc")), t->doc);
        assert_int_equal(json_object_size(jt), 9);
    }
    assert_int_equal(json_array_size(tasks), i);
    assert_int_equal(json_object_size(back), 2);
    json_decref(back);
    json_decref(d);
}

/* A few facts of the contract spelled out, so a table edit that changes what the
 * HTTP API accepts shows here too. */
static void test_known_facts(void **state) {
    json_t *d = cel_tasks_describe();
    json_t *tasks = json_object_get(d, "tasks");
    json_t *optim = NULL, *sample = NULL;
    size_t i;
    json_t *t;
    json_array_foreach(tasks, i, t) {
        const char *name = json_string_value(json_object_get(t, "name"));
        if (strcmp(name, "lora.optim_step") == 0) optim = t;
        if (strcmp(name, "lora.sample") == 0) sample = t;
    }
    json_t *adam = json_array_get(json_object_get(optim, "params"), 1);
    assert_string_equal(json_string_value(json_object_get(adam, "name")), "adam_params");
    json_t *f;
    int clip = 0;
    json_array_foreach(json_object_get(adam, "fields"), i, f) {
        if (strcmp(json_string_value(json_object_get(f, "name")), "grad_clip_norm") == 0) clip = 1;
    }
    assert_true(clip);
    json_t *prompts = json_array_get(json_object_get(sample, "params"), 1);
    assert_true(json_is_true(json_object_get(prompts, "also_str")));
    assert_int_equal(json_integer_value(json_object_get(prompts, "max_len")),
                     CEL_TASKS_MAX_PROMPTS);
    json_decref(d);
}

static void test_describe_option(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    char *argv[] = { "celeriac", "--describe-tasks", NULL };
    assert_int_equal(cel_options_parse(&cfg, 2, argv, &err), 1);
    assert_true(cfg.describe_tasks);
    cel_options_free(&cfg);
    char *argv2[] = { "celeriac", "-Q", "a,b", NULL };
    assert_int_equal(cel_options_parse(&cfg, 3, argv2, &err), CEL_OK);
    assert_false(cfg.describe_tasks);
    cel_options_free(&cfg);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_sorted_and_found),
        cmocka_unit_test(test_adapter_params),
        cmocka_unit_test(test_specs),
        cmocka_unit_test(test_table_defaults_pass),
        cmocka_unit_test(test_targets_are_the_models),
        cmocka_unit_test(test_describe_round_trips),
        cmocka_unit_test(test_known_facts),
        cmocka_unit_test(test_describe_option),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
