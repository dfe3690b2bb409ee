/* tasks.h -- the task table: every task celeriac runs, its parameters and their limits.
 *
 * The single source of what a task is: its name, its Python-like signature
 * (parameters in order, types, defaults, None handling, *args and **kwargs), the
 * limits of each value (bounds, lengths, choices, dict keys, one_of shapes),
 * which parameter names a LoRA adapter (routing) and what the task does to it,
 * whether it can be packed into a batch and whether it needs the model. Read by
 * the main process (known names, `inspect registered`, adapter affinity), by
 * the executor (binding and checking arguments: executor/call.c, dispatch) and,
 * through `celeriac --describe-tasks` (cel_tasks_describe), by the HTTP front end.
 * Pure data and pure functions: no model code, no I/O. The descriptors are
 * public read-only structs (like getopt's struct option): they are constant
 * tables, not objects with a lifetime.
 *
 * The description (cel_tasks_describe, `celeriac --describe-tasks`), format
 * "celeriac-tasks/1", is a contract with flask_app:
 *   {"format": "celeriac-tasks/1", "tasks": [TASK, ...]}      tasks sorted by name
 *   TASK {"name", "params": [SPEC...] (positional order), "varargs", "varkw",
 *         "adapter_param": str|null, "adapter_effect": "create"|"delete"|null,
 *         "batchable", "needs_model", "doc"}
 *   SPEC {"name" (not for list items / one_of alternatives),
 *         "type": any|int|number|str|bool|list|dict|one_of, "required",
 *         "default" (iff not required; JSON), "nullable" (None means the default),
 *         int/number: "min", "max", "min_exclusive", "max_exclusive" (when true),
 *         str/list: "min_len", "max_len" (code points / items; when set),
 *         str: "choices", list: "unique", "also_str", "items": SPEC,
 *         dict: "fields": [SPEC...], "extra_fields", one_of: "one_of": [SPEC...],
 *         "doc"}
 * int is a JSON integer (not a bool; int64 on the wire), number an int or a
 * finite float. Limits only a running executor knows (vocabulary,
 * --max-input-tokens, context length, equal lengths across values) are not here.
 */
#ifndef CEL_TASKS_H
#define CEL_TASKS_H

#include <jansson.h>

#define CEL_TASKS_FORMAT     "celeriac-tasks/1" /* "format" of the described JSON */
#define CEL_TASKS_MAX_PARAMS 8                  /* named parameters of one task */

/* Limits of task values (the table uses these; so does the executor). */
#define CEL_TASKS_MAX_TEXT       (4L << 20)  /* code points of one text, prompt or message */
#define CEL_TASKS_MAX_EXAMPLES   512         /* examples in one forward_backward */
#define CEL_TASKS_MAX_TURNS      256         /* messages in one chat example */
#define CEL_TASKS_MAX_PROMPTS    64          /* prompts in one lora.sample */
#define CEL_TASKS_MAX_NEW_TOKENS 2048        /* sampling_params["max_tokens"] */
#define CEL_TASKS_MAX_TOP_K      (1L << 30)  /* sampling_params["top_k"] */
#define CEL_TASKS_MAX_STOPS      16          /* stop strings */
#define CEL_TASKS_MAX_STOP_LEN   256         /* code points of one stop string */
#define CEL_TASKS_MAX_RANK       256         /* LoRA rank */
#define CEL_TASKS_MAX_ALPHA      1e6         /* LoRA alpha */
#define CEL_TASKS_MAX_WEIGHT     1e4         /* a target's loss weight (forward_backward) */
#define CEL_TASKS_MAX_OWNER      256         /* code points of an owner string */
#define CEL_TASKS_MAX_TOKEN_ID   2147483647L /* token ids are int32 (the vocabulary is less) */

typedef enum cel_tasks_type {
    CEL_TASKS_ANY,    /* any JSON value */
    CEL_TASKS_INT,    /* a JSON integer (not a bool) */
    CEL_TASKS_NUMBER, /* an int or a float, finite */
    CEL_TASKS_STR,
    CEL_TASKS_BOOL,
    CEL_TASKS_LIST,
    CEL_TASKS_DICT,
    CEL_TASKS_ONE_OF, /* the value must match one of the alternatives */
} cel_tasks_type_t;

/* What a task does to the adapter it names or returns. */
typedef enum cel_tasks_effect {
    CEL_TASKS_EFFECT_NONE,
    CEL_TASKS_EFFECT_CREATE, /* the result's "adapter_id" is a new adapter */
    CEL_TASKS_EFFECT_DELETE, /* the adapter named by adapter_param is gone */
} cel_tasks_effect_t;

/* One value's description: a parameter, a dict field, a list's items or a one_of
 * alternative. Fields left zero mean "no such limit". */
typedef struct cel_tasks_spec cel_tasks_spec_t;
struct cel_tasks_spec {
    const char *name; /* parameter or dict key; NULL for items and alternatives */
    cel_tasks_type_t type;
    unsigned required : 1; /* parameter: no default; dict field: key must be present */
    unsigned nullable : 1; /* None is accepted and means the default */
    unsigned has_min : 1, has_max : 1;
    unsigned min_excl : 1, max_excl : 1;
    unsigned unique : 1;            /* list: no duplicate items */
    unsigned extra_fields : 1;      /* dict: unknown keys are accepted */
    unsigned also_str : 1;          /* list of str: a bare str is a one-item list */
    const char *dflt;               /* the default as JSON text; NULL iff required */
    double min, max;                /* int/number bounds (has_min, has_max) */
    long min_len, max_len;          /* str: code points, list: items; max_len 0 = unbounded */
    const char *const *choices;     /* str: NULL-terminated allowed values, or NULL */
    const cel_tasks_spec_t *items;  /* list: every item */
    const cel_tasks_spec_t *fields; /* dict: known keys; one_of: the alternatives */
    int nfields;
    const char *doc; /* one line */
    /* The wording of the executor's messages (not described): */
    const char *expect; /* "<x> must be <expect>, not <type>"; NULL: from the type */
    const char *noun;   /* list: items in "must hold 1 to 64 <noun>"; str choices:
                           "unknown <noun> 'x'" (NULL: the value's name) */
    const char *verb;   /* list: "must <verb> 1 to 7 ..." (NULL: "hold") */
    const char *label;  /* list: how an item is named, "example %zu" (NULL: "<x>[i]") */
    const char *shape;  /* dict: what follows "<where>: " when a key is missing */
};

/* One task. */
typedef struct cel_tasks_task {
    const char *name;               /* "lora.optim_step" */
    const cel_tasks_spec_t *params; /* in positional order */
    int nparams;                    /* <= CEL_TASKS_MAX_PARAMS */
    unsigned varargs : 1;           /* def f(..., *args) */
    unsigned varkw : 1;             /* def f(..., **kwargs) */
    unsigned batchable : 1;         /* may be packed with other tasks into one pass */
    unsigned needs_model : 1;       /* runs on the executor's model (diag.* do not) */
    const char *adapter_param;      /* the str parameter naming a LoRA adapter, or NULL */
    cel_tasks_effect_t effect;
    const char *doc; /* one line */
} cel_tasks_task_t;

/* NULL-terminated list of the task names, sorted (as `inspect registered` shows
 * them). Static storage; never freed. */
const char *const *cel_tasks_names(void);

/* 1 when name is a task of the table, 0 otherwise (NULL gives 0). */
int cel_tasks_known(const char *name);

/* The table's entry for name (static storage), or NULL. */
const cel_tasks_task_t *cel_tasks_find(const char *name);

/* The position of t's adapter parameter among its params, or -1 when it has none. */
int cel_tasks_adapter_pos(const cel_tasks_task_t *t);

/* The bare function name used in Python's messages: "optim_step" for
 * "lora.optim_step" (the part after the last dot). Points into t->name. */
const char *cel_tasks_func(const cel_tasks_task_t *t);

/* The description of one spec / of the whole table in the format above
 * ({"format": CEL_TASKS_FORMAT, "tasks": [...]}, tasks sorted by name).
 * Returns a new reference, or NULL when out of memory or a default is not JSON. */
json_t *cel_tasks_describe_spec(const cel_tasks_spec_t *s);
json_t *cel_tasks_describe(void);

#endif
