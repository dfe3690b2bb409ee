/* tasks.c -- the task table and its JSON description (see tasks.h).
 *
 * One entry per task, sorted by name; parameters in positional order. The
 * signatures are those of the Python functions the tasks behave as, e.g.
 *   lora.sample(adapter_id, prompts, sampling_params=None)
 * and every limit the executor enforces on a value (besides those only a running
 * executor knows: the vocabulary, --max-input-tokens, the model's context, and
 * rules across values such as equal list lengths) is written here once.
 * No I/O; linked into the main process, the executor and the unit tests.
 */
#include "tasks.h"

#include <math.h>
#include <string.h>

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- shared values ---- */

static const char *const lora_targets[] = { "q_proj",    "k_proj",  "v_proj",    "o_proj",
                                            "gate_proj", "up_proj", "down_proj", NULL };
static const char *const loss_fns[] = { "cross_entropy", NULL };
static const char *const chat_roles[] = { "system", "user", "assistant", NULL };

#define ADAPTER_ID                                                     \
    {                                                                  \
        .name = "adapter_id", .type = CEL_TASKS_STR, .required = 1,    \
        .doc = "the adapter (an id lora.create or lora.load returned)" \
    }

#define OWNER                                                                                   \
    {                                                                                           \
        .name = "owner", .type = CEL_TASKS_STR, .nullable = 1, .dflt = "null", .min_len = 1,    \
        .max_len = CEL_TASKS_MAX_OWNER, .doc = "who owns the adapter (lora.list filters by it)" \
    }

static const cel_tasks_spec_t adapter_params[] = { ADAPTER_ID };

/* ---- diag.* ---- */

static const cel_tasks_spec_t add_params[] = {
    { .name = "a", .type = CEL_TASKS_ANY, .required = 1, .doc = "left operand of +" },
    { .name = "b", .type = CEL_TASKS_ANY, .required = 1, .doc = "right operand of +" },
};

static const cel_tasks_spec_t fail_params[] = {
    { .name = "message", .type = CEL_TASKS_ANY, .required = 1, .doc = "the ValueError's argument" },
};

static const cel_tasks_spec_t sleep_params[] = {
    { .name = "seconds",
      .type = CEL_TASKS_ANY,
      .required = 1,
      .doc = "how long to sleep: an int or float >= 0 (checked as Python's time.sleep does)" },
};

/* ---- model.score ---- */

static const cel_tasks_spec_t score_params[] = {
    { .name = "text",
      .type = CEL_TASKS_STR,
      .required = 1,
      .max_len = CEL_TASKS_MAX_TEXT,
      .doc = "the text to score (a bos token is put first)" },
    { .name = "adapter_id",
      .type = CEL_TASKS_STR,
      .nullable = 1,
      .dflt = "null",
      .doc = "the adapter to score with; None: the base model" },
};

/* ---- lora.create, lora.load ---- */

static const cel_tasks_spec_t target_item = { .type = CEL_TASKS_STR,
                                              .choices = lora_targets,
                                              .noun = "target module",
                                              .doc = "a Llama projection" };

static const cel_tasks_spec_t create_params[] = {
    { .name = "rank",
      .type = CEL_TASKS_INT,
      .nullable = 1,
      .dflt = "8",
      .has_min = 1,
      .min = 1,
      .has_max = 1,
      .max = CEL_TASKS_MAX_RANK,
      .doc = "LoRA rank r" },
    { .name = "alpha",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "16",
      .has_min = 1,
      .min = 0,
      .min_excl = 1,
      .has_max = 1,
      .max = CEL_TASKS_MAX_ALPHA,
      .doc = "LoRA alpha (the update is scaled by alpha / r)" },
    { .name = "target_modules",
      .type = CEL_TASKS_LIST,
      .nullable = 1,
      .dflt = "null",
      .min_len = 1,
      .max_len = COUNT(lora_targets) - 1,
      .unique = 1,
      .items = &target_item,
      .noun = "modules",
      .verb = "name",
      .doc = "projections to adapt; None: all seven" },
    { .name = "seed",
      .type = CEL_TASKS_INT,
      .nullable = 1,
      .dflt = "null",
      .has_min = 1,
      .min = 0,
      .expect = "an int or None",
      .doc = "seed of the initial weights; None: random" },
    OWNER,
};

static const cel_tasks_spec_t load_params[] = {
    { .name = "path",
      .type = CEL_TASKS_STR,
      .required = 1,
      .doc = "a PEFT folder under --state-dir (relative paths start there) or an --import-root" },
    OWNER,
};

/* ---- lora.forward_backward ---- */

static const cel_tasks_spec_t token_id = { .type = CEL_TASKS_INT,
                                           .has_min = 1,
                                           .min = 0,
                                           .has_max = 1,
                                           .max = CEL_TASKS_MAX_TOKEN_ID,
                                           .doc = "a token id of the model's vocabulary" };

/* Bounded so that the weighted loss and its gradients stay finite in float32
 * (3e38 overflowed them into a NaN step, issue 12). */
static const cel_tasks_spec_t loss_weight = { .type = CEL_TASKS_NUMBER,
                                              .has_min = 1,
                                              .min = 0,
                                              .has_max = 1,
                                              .max = CEL_TASKS_MAX_WEIGHT,
                                              .doc = "loss weight of one target" };

static const cel_tasks_spec_t text_fields[] = {
    { .name = "text",
      .type = CEL_TASKS_STR,
      .required = 1,
      .min_len = 1,
      .max_len = CEL_TASKS_MAX_TEXT,
      .doc = "trained on every token (bos first, eos last)" },
};

static const cel_tasks_spec_t datum_fields[] = {
    { .name = "tokens",
      .type = CEL_TASKS_LIST,
      .required = 1,
      .min_len = 1,
      .items = &token_id,
      .doc = "input token ids" },
    { .name = "target_tokens",
      .type = CEL_TASKS_LIST,
      .required = 1,
      .min_len = 1,
      .items = &token_id,
      .doc = "the id to predict at each input position (as many as tokens)" },
    { .name = "weights",
      .type = CEL_TASKS_LIST,
      .nullable = 1,
      .dflt = "null",
      .items = &loss_weight,
      .doc = "loss weight per position (as many as tokens); None: all 1" },
};

static const cel_tasks_spec_t chat_message_fields[] = {
    { .name = "role",
      .type = CEL_TASKS_STR,
      .required = 1,
      .choices = chat_roles,
      .doc = "who speaks" },
    { .name = "content",
      .type = CEL_TASKS_STR,
      .required = 1,
      .max_len = CEL_TASKS_MAX_TEXT,
      .doc = "what is said" },
};

static const cel_tasks_spec_t chat_message = {
    .type = CEL_TASKS_DICT,
    .fields = chat_message_fields,
    .nfields = COUNT(chat_message_fields),
    .expect = "{\"role\": str, \"content\": str}",
    .shape = "a chat message is {\"role\": str, \"content\": str}",
    .doc = "one chat turn"
};

#define CHAT_LIST                                                                                 \
    .type = CEL_TASKS_LIST, .min_len = 1, .max_len = CEL_TASKS_MAX_TURNS, .items = &chat_message, \
    .noun = "messages", .label = "message %zu"

static const cel_tasks_spec_t messages_fields[] = {
    { .name = "messages",
      .required = 1,
      CHAT_LIST,
      .doc = "a chat; the loss is on the assistant turns" },
};

static const cel_tasks_spec_t example_alts[] = {
    { .type = CEL_TASKS_DICT,
      .fields = text_fields,
      .nfields = COUNT(text_fields),
      .doc = "a plain text" },
    { .type = CEL_TASKS_DICT,
      .fields = datum_fields,
      .nfields = COUNT(datum_fields),
      .shape = "a datum needs tokens and target_tokens",
      .doc = "a tokenized example" },
    { CHAT_LIST, .doc = "a chat; the loss is on the assistant turns (ChatML when the "
                        "tokenizer has it)" },
    { .type = CEL_TASKS_DICT,
      .fields = messages_fields,
      .nfields = COUNT(messages_fields),
      .doc = "a chat given as {\"messages\": chat}" },
};

static const cel_tasks_spec_t example = {
    .type = CEL_TASKS_ONE_OF,
    .fields = example_alts,
    .nfields = COUNT(example_alts),
    .expect = "{\"text\": str}, a chat [{\"role\", \"content\"}, ...] or a datum "
              "{\"tokens\", \"target_tokens\", \"weights\"}",
    .doc = "one training example"
};

static const cel_tasks_spec_t fb_params[] = {
    ADAPTER_ID,
    { .name = "data",
      .type = CEL_TASKS_LIST,
      .required = 1,
      .min_len = 1,
      .max_len = CEL_TASKS_MAX_EXAMPLES,
      .items = &example,
      .noun = "examples",
      .label = "example %zu",
      .expect = "a list of examples",
      .doc = "the examples whose loss gradients are added to the adapter's" },
    { .name = "loss_fn",
      .type = CEL_TASKS_STR,
      .nullable = 1,
      .dflt = "\"cross_entropy\"",
      .choices = loss_fns,
      .doc = "the loss (weighted mean over target tokens)" },
};

/* ---- lora.optim_step ---- */

static const cel_tasks_spec_t adam_fields[] = {
    { .name = "learning_rate",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "0.0001",
      .has_min = 1,
      .min = 0,
      .min_excl = 1,
      .has_max = 1,
      .max = 10,
      .doc = "AdamW step size" },
    { .name = "beta1",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "0.9",
      .has_min = 1,
      .min = 0,
      .has_max = 1,
      .max = 1,
      .max_excl = 1,
      .doc = "first-moment decay" },
    { .name = "beta2",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "0.999",
      .has_min = 1,
      .min = 0,
      .has_max = 1,
      .max = 1,
      .max_excl = 1,
      .doc = "second-moment decay" },
    { .name = "eps",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "1e-08",
      .has_min = 1,
      .min = 0,
      .min_excl = 1,
      .has_max = 1,
      .max = 1,
      .doc = "added to the denominator" },
    { .name = "weight_decay",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "0",
      .has_min = 1,
      .min = 0,
      .has_max = 1,
      .max = 1e3,
      .doc = "decoupled weight decay" },
    { .name = "grad_clip_norm",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "0",
      .has_min = 1,
      .min = 0,
      .has_max = 1,
      .max = 1e12,
      .doc = "clip the gradients' global norm to this; 0: no clipping" },
};

static const cel_tasks_spec_t optim_params[] = {
    ADAPTER_ID,
    { .name = "adam_params",
      .type = CEL_TASKS_DICT,
      .nullable = 1,
      .dflt = "null",
      .fields = adam_fields,
      .nfields = COUNT(adam_fields),
      .expect = "a dict or None",
      .doc = "AdamW settings; a missing key (or None) takes its default" },
};

/* ---- lora.sample ---- */

static const cel_tasks_spec_t prompt_item = { .type = CEL_TASKS_STR,
                                              .max_len = CEL_TASKS_MAX_TEXT,
                                              .doc = "a prompt (a bos token is put "
                                                     "first)" };

static const cel_tasks_spec_t stop_item = {
    .type = CEL_TASKS_STR,
    .min_len = 1,
    .max_len = CEL_TASKS_MAX_STOP_LEN,
    .doc = "a sample ends where this text appears (not included)"
};

static const cel_tasks_spec_t sampling_fields[] = {
    { .name = "max_tokens",
      .type = CEL_TASKS_INT,
      .nullable = 1,
      .dflt = "32",
      .has_min = 1,
      .min = 1,
      .has_max = 1,
      .max = CEL_TASKS_MAX_NEW_TOKENS,
      .doc = "new tokens per prompt" },
    { .name = "temperature",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "1.0",
      .has_min = 1,
      .min = 0,
      .has_max = 1,
      .max = 100,
      .doc = "0: greedy" },
    { .name = "top_p",
      .type = CEL_TASKS_NUMBER,
      .nullable = 1,
      .dflt = "1.0",
      .has_min = 1,
      .min = 0,
      .min_excl = 1,
      .has_max = 1,
      .max = 1,
      .doc = "nucleus sampling; 1: off" },
    { .name = "top_k",
      .type = CEL_TASKS_INT,
      .nullable = 1,
      .dflt = "0",
      .has_min = 1,
      .min = 0,
      .has_max = 1,
      .max = CEL_TASKS_MAX_TOP_K,
      .doc = "0: off" },
    { .name = "seed",
      .type = CEL_TASKS_INT,
      .nullable = 1,
      .dflt = "null",
      .has_min = 1,
      .min = 0,
      .expect = "an int or None",
      .doc = "same seed and prompts, same samples; None: random" },
    { .name = "stop",
      .type = CEL_TASKS_LIST,
      .nullable = 1,
      .dflt = "null",
      .also_str = 1,
      .max_len = CEL_TASKS_MAX_STOPS,
      .items = &stop_item,
      .noun = "stop strings",
      .doc = "stop strings; None: none" },
};

static const cel_tasks_spec_t sample_params[] = {
    { .name = "adapter_id",
      .type = CEL_TASKS_STR,
      .required = 1,
      .nullable = 1,
      .doc = "the adapter to sample with; None: the base model" },
    { .name = "prompts",
      .type = CEL_TASKS_LIST,
      .required = 1,
      .also_str = 1,
      .min_len = 1,
      .max_len = CEL_TASKS_MAX_PROMPTS,
      .items = &prompt_item,
      .noun = "prompts",
      .doc = "the prompts, sampled together" },
    { .name = "sampling_params",
      .type = CEL_TASKS_DICT,
      .nullable = 1,
      .dflt = "null",
      .fields = sampling_fields,
      .nfields = COUNT(sampling_fields),
      .expect = "a dict or None",
      .doc = "sampling settings; a missing key (or None) takes its default" },
};

/* ---- lora.save, info, list, delete ---- */

static const cel_tasks_spec_t list_params[] = {
    { .name = "owner",
      .type = CEL_TASKS_STR,
      .nullable = 1,
      .dflt = "null",
      .doc = "only this owner's adapters; None: all" },
};

/* ---- the table ---- */

#define PARAMS(p) .params = p, .nparams = COUNT(p)

static const cel_tasks_task_t table[] = {
    { .name = "diag.add", PARAMS(add_params), .doc = "a + b, as Python's + gives it" },
    { .name = "diag.crash", .doc = "kills its executor (the task fails with WorkerLostError)" },
    { .name = "diag.echo", .varargs = 1, .varkw = 1, .doc = "returns [args, kwargs]" },
    { .name = "diag.fail", PARAMS(fail_params), .doc = "raises ValueError(message)" },
    { .name = "diag.noop", .doc = "returns None" },
    { .name = "diag.sleep",
      PARAMS(sleep_params),
      .doc = "sleeps, then returns seconds (honours the soft time limit)" },
    { .name = "lora.create",
      PARAMS(create_params),
      .effect = CEL_TASKS_EFFECT_CREATE,
      .needs_model = 1,
      .doc = "a new LoRA adapter on the model, checkpointed at step 0" },
    { .name = "lora.delete",
      PARAMS(adapter_params),
      .adapter_param = "adapter_id",
      .effect = CEL_TASKS_EFFECT_DELETE,
      .needs_model = 1,
      .doc = "removes the adapter and its checkpoints" },
    { .name = "lora.forward_backward",
      PARAMS(fb_params),
      .adapter_param = "adapter_id",
      .batchable = 1,
      .needs_model = 1,
      .doc = "adds the loss gradients of data to the adapter's; returns the mean loss" },
    { .name = "lora.info",
      PARAMS(adapter_params),
      .adapter_param = "adapter_id",
      .needs_model = 1,
      .doc = "the adapter's rank, alpha, targets, step, owner, creation time" },
    { .name = "lora.list",
      PARAMS(list_params),
      .needs_model = 1,
      .doc = "info of every adapter (of one owner)" },
    { .name = "lora.load",
      PARAMS(load_params),
      .effect = CEL_TASKS_EFFECT_CREATE,
      .needs_model = 1,
      .doc = "a new adapter from a PEFT folder" },
    { .name = "lora.optim_step",
      PARAMS(optim_params),
      .adapter_param = "adapter_id",
      .needs_model = 1,
      .doc = "one AdamW step on the accumulated gradients, checkpointed before it returns" },
    { .name = "lora.sample",
      PARAMS(sample_params),
      .adapter_param = "adapter_id",
      .needs_model = 1,
      .doc = "continues each prompt" },
    { .name = "lora.save",
      PARAMS(adapter_params),
      .adapter_param = "adapter_id",
      .needs_model = 1,
      .doc = "writes the adapter as a PEFT folder; returns its path" },
    { .name = "model.score",
      PARAMS(score_params),
      .adapter_param = "adapter_id",
      .batchable = 1,
      .needs_model = 1,
      .doc = "log-probabilities of the text's tokens, with or without an adapter" },
};

#define NTASKS COUNT(table)

const char *const *cel_tasks_names(void) {
    static const char *names[NTASKS + 1];
    if (!names[0])
        for (int i = 0; i < NTASKS; i++) names[i] = table[i].name;
    return names;
}

const cel_tasks_task_t *cel_tasks_find(const char *name) {
    if (!name) return NULL;
    int lo = 0, hi = NTASKS - 1; /* the table is sorted by name */
    while (lo <= hi) {
        int mid = (lo + hi) / 2, c = strcmp(name, table[mid].name);
        if (c == 0) return &table[mid];
        if (c < 0) hi = mid - 1;
        else lo = mid + 1;
    }
    return NULL;
}

int cel_tasks_known(const char *name) { return cel_tasks_find(name) != NULL; }

int cel_tasks_adapter_pos(const cel_tasks_task_t *t) {
    if (!t || !t->adapter_param) return -1;
    for (int i = 0; i < t->nparams; i++)
        if (strcmp(t->params[i].name, t->adapter_param) == 0) return i;
    return -1;
}

const char *cel_tasks_func(const cel_tasks_task_t *t) {
    const char *dot = strrchr(t->name, '.');
    return dot ? dot + 1 : t->name;
}

/* ---- the description ---- */

static const char *type_name(cel_tasks_type_t t) {
    switch (t) {
    case CEL_TASKS_ANY: return "any";
    case CEL_TASKS_INT: return "int";
    case CEL_TASKS_NUMBER: return "number";
    case CEL_TASKS_STR: return "str";
    case CEL_TASKS_BOOL: return "bool";
    case CEL_TASKS_LIST: return "list";
    case CEL_TASKS_DICT: return "dict";
    case CEL_TASKS_ONE_OF: return "one_of";
    }
    return "any";
}

/* A bound as JSON: an integer when it is one (and exact in a double). */
static json_t *bound(double v) {
    if (v == floor(v) && fabs(v) <= 9007199254740992.0) return json_integer((json_int_t)v);
    return json_real(v);
}

/* Sets key to v (taken) in o; 1 when it failed. */
static int put(json_t *o, const char *key, json_t *v) {
    return !v || json_object_set_new(o, key, v) != 0;
}

/* A JSON array of the specs in a (each described). */
static json_t *spec_array(const cel_tasks_spec_t *a, int n) {
    json_t *arr = json_array();
    for (int i = 0; arr && i < n; i++)
        if (json_array_append_new(arr, cel_tasks_describe_spec(&a[i]))) {
            json_decref(arr);
            return NULL;
        }
    return arr;
}

json_t *cel_tasks_describe_spec(const cel_tasks_spec_t *s) {
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = 0;
    if (s->name) bad |= put(o, "name", json_string(s->name));
    bad |= put(o, "type", json_string(type_name(s->type)));
    bad |= put(o, "required", json_boolean(s->required || !s->name));
    if (s->name && !s->required)
        bad |= put(o, "default", s->dflt ? json_loads(s->dflt, JSON_DECODE_ANY, NULL) : NULL);
    bad |= put(o, "nullable", json_boolean(s->nullable));
    if (s->type == CEL_TASKS_INT || s->type == CEL_TASKS_NUMBER) {
        if (s->has_min) bad |= put(o, "min", bound(s->min));
        if (s->has_max) bad |= put(o, "max", bound(s->max));
        if (s->has_min && s->min_excl) bad |= put(o, "min_exclusive", json_true());
        if (s->has_max && s->max_excl) bad |= put(o, "max_exclusive", json_true());
    }
    if (s->type == CEL_TASKS_STR || s->type == CEL_TASKS_LIST) {
        if (s->min_len > 0) bad |= put(o, "min_len", json_integer(s->min_len));
        if (s->max_len > 0) bad |= put(o, "max_len", json_integer(s->max_len));
    }
    if (s->type == CEL_TASKS_STR && s->choices) {
        json_t *c = json_array();
        for (int i = 0; c && s->choices[i]; i++)
            if (json_array_append_new(c, json_string(s->choices[i]))) {
                json_decref(c);
                c = NULL;
            }
        bad |= put(o, "choices", c);
    }
    if (s->type == CEL_TASKS_LIST) {
        bad |= put(o, "unique", json_boolean(s->unique));
        bad |= put(o, "also_str", json_boolean(s->also_str));
        bad |= put(o, "items", s->items ? cel_tasks_describe_spec(s->items) : NULL);
    }
    if (s->type == CEL_TASKS_DICT) {
        bad |= put(o, "fields", spec_array(s->fields, s->nfields));
        bad |= put(o, "extra_fields", json_boolean(s->extra_fields));
    }
    if (s->type == CEL_TASKS_ONE_OF) bad |= put(o, "one_of", spec_array(s->fields, s->nfields));
    if (s->doc) bad |= put(o, "doc", json_string(s->doc));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* One task's description. */
static json_t *describe_task(const cel_tasks_task_t *t) {
    static const char *const effects[] = { NULL, "create", "delete" };
    json_t *o = json_object();
    if (!o) return NULL;
    int bad = put(o, "name", json_string(t->name));
    bad |= put(o, "params", spec_array(t->params, t->nparams));
    bad |= put(o, "varargs", json_boolean(t->varargs));
    bad |= put(o, "varkw", json_boolean(t->varkw));
    bad |= put(o, "adapter_param", t->adapter_param ? json_string(t->adapter_param) : json_null());
    bad |= put(o, "adapter_effect",
               effects[t->effect] ? json_string(effects[t->effect]) : json_null());
    bad |= put(o, "batchable", json_boolean(t->batchable));
    bad |= put(o, "needs_model", json_boolean(t->needs_model));
    bad |= put(o, "doc", json_string(t->doc ? t->doc : ""));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *cel_tasks_describe(void) {
    json_t *tasks = json_array();
    for (int i = 0; tasks && i < NTASKS; i++)
        if (json_array_append_new(tasks, describe_task(&table[i]))) {
            json_decref(tasks);
            tasks = NULL;
        }
    if (!tasks) return NULL;
    return json_pack("{s:s, s:o}", "format", CEL_TASKS_FORMAT, "tasks", tasks);
}
