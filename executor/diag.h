/* diag.h -- diagnostic tasks (diag.*) and the executor's task-function interface.
 *
 * A task family is a NULL-terminated table of {name, fn}. The executor looks a
 * name up in each family (cel_diag_find today; model.*, lora.* add their own
 * tables with the same entry type) and calls fn with a cel_diag_call_t whose
 * inputs are set; fn fills exactly one outcome: a result (SUCCESS) or an
 * exception (FAILURE) shaped as a Python Celery worker would store it.
 * The helpers below (argument binding with Python's TypeError wording, raising
 * with a Python-looking traceback) are meant for every family.
 * Runs in executor processes only, one task at a time, blocking.
 */
#ifndef CEL_DIAG_H
#define CEL_DIAG_H

#include <signal.h>

#include <jansson.h>

#define CEL_DIAG_MAX_PARAMS 16       /* named parameters of one task function */
#define CEL_DIAG_TEXT_MAX (64 * 1024) /* longest str(exc) put in a traceback */

typedef struct cel_diag_call {
    /* inputs, borrowed */
    const char *name;                         /* full task name, "diag.add" */
    json_t *args;                             /* array */
    json_t *kwargs;                           /* object */
    const volatile sig_atomic_t *soft_limit;  /* non-zero once SIGUSR1 arrived */
    /* OUT: either result, or exc_type/exc_module/exc_args/traceback */
    json_t *result;          /* owned reference; NULL means None on SUCCESS */
    const char *exc_type;    /* static string; NULL on SUCCESS */
    const char *exc_module;  /* static string */
    json_t *exc_args;        /* owned array: the exception's args */
    char *traceback;         /* malloc'd, or NULL (json null) */
} cel_diag_call_t;

/* A task function. Returns CEL_OK when the call holds an outcome (SUCCESS or
 * FAILURE), CEL_ENOMEM when it could not even build one. */
typedef int (*cel_diag_fn)(cel_diag_call_t *call);

typedef struct cel_diag_task {
    const char *name;
    cel_diag_fn fn;
} cel_diag_task_t;

/* The diag.* family's entry for name, or NULL. */
const cel_diag_task_t *cel_diag_find(const char *name);

/* Frees the outcome held by call and clears it (inputs untouched). */
void cel_diag_call_close(cel_diag_call_t *call);

/* Sets a FAILURE outcome: exception type/module (static strings), its args
 * (taken; NULL gives []), and a traceback whose last line is "<type>: <text>"
 * (module-qualified when module is not "builtins", bare "<type>" when text is
 * empty), as Python's traceback module prints it. text may be NULL (""). The
 * traceback's frame line names call->name. Returns CEL_OK or CEL_ENOMEM. */
int cel_diag_raise(cel_diag_call_t *call, const char *type, const char *module,
                   json_t *args, const char *text);

/* cel_diag_raise with a builtins exception whose single string arg is the
 * formatted message (TypeError/ValueError/OverflowError ...). */
int cel_diag_raisef(cel_diag_call_t *call, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Binds call->args/kwargs to a Python signature def f(p0, p1, ...[, *args][, **kw])
 * with all params required and no defaults. func is the bare function name used
 * in messages ("add"). On success out[i] holds the borrowed value of params[i]
 * and CEL_OK is returned; on a binding error the call gets Python's TypeError
 * ("add() missing 1 required positional argument: 'b'", ...) and CEL_ETYPE is
 * returned (CEL_ENOMEM if even that failed). nparams <= CEL_DIAG_MAX_PARAMS. */
int cel_diag_bind(cel_diag_call_t *call, const char *func, const char *const *params,
                  int nparams, int varargs, int varkw, json_t **out);

/* Python's type name for a JSON value: int, float, str, list, dict, bool, NoneType. */
const char *cel_diag_pytype(const json_t *v);

/* Python's str() of a value: a string as is, anything else as its repr. Returns a
 * malloc'd string or NULL. */
char *cel_diag_pystr(json_t *v);

#endif
