/* call.h -- one task call in the executor: binding its arguments, and its outcome.
 *
 * The executor makes a cel_call_t for each task it runs, binds args/kwargs to
 * the task's parameters as Python would bind them to the signature the task
 * table gives (protocol/tasks.h: positional, keyword, defaults, *args and
 * **kwargs, CPython's TypeError wording), checks every value against the
 * table's types and limits (TypeError for a wrong type, ValueError for a bad
 * value), and hands the bound values to the task function. The function fills
 * exactly one outcome: a result (SUCCESS) or an exception (FAILURE) shaped as a
 * Python Celery worker would store it, with a Python-looking traceback.
 * Executor processes only, one call at a time, blocking; no I/O here.
 */
#ifndef CEL_CALL_H
#define CEL_CALL_H

#include <signal.h>

#include <jansson.h>

#include "../common/err.h"
#include "../protocol/tasks.h"

#define CEL_CALL_TEXT_MAX (64 * 1024) /* longest str(exc) put in a traceback */
#define CEL_CALL_REPR_MAX 80          /* bytes of a bad value echoed in a message */
#define CEL_CALL_MAX_ARGV (CEL_TASKS_MAX_PARAMS + 2)

typedef struct cel_call {
    /* inputs, borrowed */
    const char *name;                        /* full task name, "diag.add" */
    json_t *args;                            /* array */
    json_t *kwargs;                          /* object */
    const volatile sig_atomic_t *soft_limit; /* non-zero once SIGUSR1 arrived */
    /* bound by cel_call_bind (owned): argv[i] is the task's params[i] with its
     * default filled in (None too, for a nullable parameter with a default), a
     * dict with every field, a bare str made a one-item list (also_str); then
     * the extra positional arguments as a list (*args), then the extra keyword
     * arguments as a dict (**kwargs), when the task takes them. */
    json_t *argv[CEL_CALL_MAX_ARGV];
    int argc;
    /* OUT: either result, or exc_type/exc_module/exc_args/traceback */
    json_t *result;         /* owned reference; NULL means None on SUCCESS */
    const char *exc_type;   /* static string; NULL on SUCCESS */
    const char *exc_module; /* static string */
    json_t *exc_args;       /* owned array: the exception's args */
    char *traceback;        /* malloc'd, or NULL (json null) */
} cel_call_t;

/* A task function: reads call->argv (bound) and sets the outcome. Returns CEL_OK
 * when the call holds an outcome (SUCCESS or FAILURE), CEL_ENOMEM when it could
 * not even build one. */
typedef int (*cel_call_fn)(cel_call_t *call);

/* Binds call->args/kwargs to task's signature and checks every bound value
 * against its spec. Returns CEL_OK (call->argv set); CEL_ETYPE when the call
 * now holds the TypeError/ValueError a Python function with that signature and
 * those checks would raise ("add() missing 1 required positional argument:
 * 'b'", "rank must be in [1, 256], not 0"); CEL_ENOMEM; CEL_EINVAL for a
 * task with more than CEL_TASKS_MAX_PARAMS parameters (a table error). */
int cel_call_bind(cel_call_t *call, const cel_tasks_task_t *task);

/* Checks one value v against spec s, as cel_call_bind checks a parameter (the
 * messages name s->name, or "value"). OUT: *out, the value as bound (a new
 * reference: dict fields filled, None made the default...). Returns CEL_OK,
 * CEL_ETYPE (the call holds the exception, *out is NULL) or CEL_ENOMEM. */
int cel_call_check(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, json_t **out);

/* Frees the outcome and the bound values held by call (inputs untouched). */
void cel_call_close(cel_call_t *call);

/* Sets a FAILURE outcome (replacing any earlier one): exception type/module
 * (static strings), its args (taken; NULL gives []), and a traceback whose last
 * line is "<type>: <text>" (module-qualified when module is not "builtins", bare
 * "<type>" when text is empty), as Python's traceback module prints it. text may
 * be NULL (""). The traceback's frame line names call->name. Returns CEL_OK or
 * CEL_ENOMEM. */
int cel_call_raise(cel_call_t *call, const char *type, const char *module, json_t *args,
                   const char *text);

/* cel_call_raise with a builtins exception whose single string arg is the
 * formatted message (TypeError/ValueError/OverflowError ...). */
int cel_call_raisef(cel_call_t *call, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* cel_call_raisef for code that goes on checking: returns CEL_ETYPE ("the call
 * holds an exception") or CEL_ENOMEM. cel_call_finish turns CEL_ETYPE into the
 * CEL_OK a task function returns. */
int cel_call_fail(cel_call_t *call, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
int cel_call_finish(int rc);

/* Sets a SUCCESS outcome holding v (taken). NULL (a failed json_* call) gives
 * CEL_ENOMEM. */
int cel_call_succeed(cel_call_t *call, json_t *v);

/* 1 once the soft time limit of the call has passed. */
int cel_call_soft_limit_hit(const cel_call_t *call);

/* Raises billiard's SoftTimeLimitExceeded as the Python worker stores it.
 * Returns CEL_ETYPE or CEL_ENOMEM, as cel_call_fail. */
int cel_call_raise_soft_limit(cel_call_t *call);

/* Python's type name for a JSON value: int, float, str, list, dict, bool, NoneType. */
const char *cel_call_pytype(const json_t *v);

/* Python's str() of a value: a string as is, anything else as its repr. Returns a
 * malloc'd string or NULL. */
char *cel_call_pystr(json_t *v);

/* Python's repr() of v for a message, cut to CEL_CALL_REPR_MAX bytes with "...".
 * OUT: buf (size bytes; CEL_CALL_REPR_MAX + 8 is enough). Returns buf. */
const char *cel_call_repr(json_t *v, char *buf, size_t size);

#endif
