/* diag.c -- the diag.* tasks and the helpers every task family uses.
 *
 * Each task behaves as the equivalent Python function run by a Celery worker:
 *   def noop(): return None
 *   def echo(*args, **kwargs): return [list(args), kwargs]
 *   def add(a, b): return a + b
 *   def sleep(seconds): time.sleep(seconds); return seconds
 *   def fail(message): raise ValueError(message)
 *   def crash(): os.kill(os.getpid(), signal.SIGKILL)
 * so results, exception types, args and messages match CPython 3.11. Where C
 * cannot follow Python (ints beyond int64, non-finite floats) the task fails
 * with a clear exception instead; see add_values.
 * Runs in executor processes only; diag.sleep blocks and polls the soft-limit
 * flag set by the executor's SIGUSR1 handler.
 */
#include "diag.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/err.h"
#include "../protocol/protocol.h"

#define SLEEP_SLICE_NS (20 * 1000 * 1000L) /* soft-limit latency of diag.sleep */
#define TRACEBACK_FILE "celeriac/diag"

/* ---- helpers shared by task families ---- */

void cel_diag_call_close(cel_diag_call_t *call) {
    json_decref(call->result);
    json_decref(call->exc_args);
    free(call->traceback);
    call->result = NULL;
    call->exc_args = NULL;
    call->traceback = NULL;
    call->exc_type = NULL;
    call->exc_module = NULL;
}

int cel_diag_raise(cel_diag_call_t *call, const char *type, const char *module,
                   json_t *args, const char *text) {
    cel_diag_call_close(call);
    if (!args) args = json_array();
    if (!args) return CEL_ENOMEM;
    if (!text) text = "";
    int qualify = module && strcmp(module, "builtins") != 0;
    char *tb = NULL;
    int n = asprintf(&tb,
                     "Traceback (most recent call last):\n"
                     "  File \"%s\", line 1, in %s\n"
                     "%s%s%s%s%s\n",
                     TRACEBACK_FILE, call->name ? call->name : "?", qualify ? module : "",
                     qualify ? "." : "", type, *text ? ": " : "", text);
    if (n < 0) {
        json_decref(args);
        return CEL_ENOMEM;
    }
    call->exc_type = type;
    call->exc_module = module;
    call->exc_args = args;
    call->traceback = tb;
    return CEL_OK;
}

int cel_diag_raisef(cel_diag_call_t *call, const char *type, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *args = json_pack("[s]", msg);
    if (!args) return CEL_ENOMEM;
    return cel_diag_raise(call, type, "builtins", args, msg);
}

const char *cel_diag_pytype(const json_t *v) {
    switch (json_typeof(v)) {
    case JSON_INTEGER: return "int";
    case JSON_REAL: return "float";
    case JSON_STRING: return "str";
    case JSON_ARRAY: return "list";
    case JSON_OBJECT: return "dict";
    case JSON_TRUE:
    case JSON_FALSE: return "bool";
    case JSON_NULL: return "NoneType";
    }
    return "object";
}

char *cel_diag_pystr(json_t *v) {
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (n > CEL_DIAG_TEXT_MAX) n = CEL_DIAG_TEXT_MAX;
        char *s = malloc(n + 1);
        if (!s) return NULL;
        memcpy(s, json_string_value(v), n);
        s[n] = '\0'; /* an embedded NUL cuts the text: it only feeds the traceback */
        return s;
    }
    return cel_repr(v, 0, CEL_DIAG_TEXT_MAX);
}

/* Appends "'name'" joined as Python's missing_arguments() does: 'a' / 'a' and 'b' /
 * 'a', 'b', and 'c'. */
static void join_names(char *buf, size_t size, const char *const *names, int n) {
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < n && used < size; i++) {
        const char *sep = i == 0 ? "" : (n == 2 ? " and " : (i == n - 1 ? ", and " : ", "));
        int w = snprintf(buf + used, size - used, "%s'%s'", sep, names[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
}

int cel_diag_bind(cel_diag_call_t *call, const char *func, const char *const *params,
                  int nparams, int varargs, int varkw, json_t **out) {
    /* Same checks in the same order as CPython's initialize_locals(): positional
     * copy, keywords (unexpected / multiple values), too many positional, missing. */
    if (nparams < 0 || nparams > CEL_DIAG_MAX_PARAMS) return CEL_EINVAL;
    size_t nargs = json_array_size(call->args);
    for (int i = 0; i < nparams; i++)
        out[i] = (size_t)i < nargs ? json_array_get(call->args, (size_t)i) : NULL;
    const char *key;
    json_t *val;
    json_object_foreach(call->kwargs, key, val) {
        int j;
        for (j = 0; j < nparams; j++)
            if (strcmp(params[j], key) == 0) break;
        if (j == nparams) {
            if (varkw) continue;
            int rc = cel_diag_raisef(call, "TypeError",
                                     "%s() got an unexpected keyword argument '%s'", func, key);
            return rc ? rc : CEL_ETYPE;
        }
        if (out[j]) {
            int rc = cel_diag_raisef(call, "TypeError",
                                     "%s() got multiple values for argument '%s'", func, key);
            return rc ? rc : CEL_ETYPE;
        }
        out[j] = val;
    }
    if (!varargs && nargs > (size_t)nparams) {
        int rc = cel_diag_raisef(call, "TypeError",
                                 "%s() takes %d positional argument%s but %zu %s given", func,
                                 nparams, nparams == 1 ? "" : "s", nargs,
                                 nargs == 1 ? "was" : "were");
        return rc ? rc : CEL_ETYPE;
    }
    const char *missing[CEL_DIAG_MAX_PARAMS];
    int nmissing = 0;
    for (int i = 0; i < nparams; i++)
        if (!out[i]) missing[nmissing++] = params[i];
    if (nmissing > 0) {
        char names[512];
        join_names(names, sizeof(names), missing, nmissing);
        int rc = cel_diag_raisef(call, "TypeError",
                                 "%s() missing %d required positional argument%s: %s", func,
                                 nmissing, nmissing == 1 ? "" : "s", names);
        return rc ? rc : CEL_ETYPE;
    }
    return CEL_OK;
}

/* Binds, or returns from the calling task function when binding failed (the
 * TypeError is then the call's outcome). */
#define BIND(call, func, params, nparams, varargs, varkw, out)                                 \
    do {                                                                                       \
        int bind_rc_ = cel_diag_bind((call), (func), (params), (nparams), (varargs), (varkw),  \
                                     (out));                                                   \
        if (bind_rc_ == CEL_ETYPE) return CEL_OK;                                              \
        if (bind_rc_) return bind_rc_;                                                         \
    } while (0)

/* Sets a SUCCESS outcome holding v (taken); NULL from a failed json_* is ENOMEM. */
static int succeed(cel_diag_call_t *call, json_t *v) {
    if (!v) return CEL_ENOMEM;
    call->result = v;
    return CEL_OK;
}

/* ---- the tasks ---- */

static int diag_noop(cel_diag_call_t *call) {
    BIND(call, "noop", NULL, 0, 0, 0, NULL);
    return succeed(call, json_null());
}

static int diag_echo(cel_diag_call_t *call) {
    return succeed(call, json_pack("[OO]", call->args, call->kwargs));
}

static int is_intlike(const json_t *v) { return json_is_integer(v) || json_is_boolean(v); }

static json_int_t int_value(const json_t *v) {
    return json_is_integer(v) ? json_integer_value(v) : json_is_true(v) ? 1 : 0;
}

static double num_value(const json_t *v) {
    return json_is_real(v) ? json_real_value(v) : (double)int_value(v);
}

/* a + b with Python's semantics for the types JSON carries: int/bool/float
 * arithmetic, str + str and list + list concatenation, Python's TypeError
 * otherwise. Departures (documented in the report): an int64 overflow raises
 * OverflowError("integer result out of range") where Python would grow the int,
 * and a non-finite float sum raises OverflowError("float result out of range")
 * because the result could not be carried as JSON. */
static int add_values(cel_diag_call_t *call, json_t *a, json_t *b) {
    if (is_intlike(a) && is_intlike(b)) {
        json_int_t r;
        if (__builtin_add_overflow(int_value(a), int_value(b), &r))
            return cel_diag_raisef(call, "OverflowError", "integer result out of range");
        return succeed(call, json_integer(r));
    }
    if ((is_intlike(a) || json_is_real(a)) && (is_intlike(b) || json_is_real(b))) {
        double r = num_value(a) + num_value(b);
        if (!isfinite(r))
            return cel_diag_raisef(call, "OverflowError", "float result out of range");
        return succeed(call, json_real(r));
    }
    if (json_is_string(a) && json_is_string(b)) {
        size_t la = json_string_length(a), lb = json_string_length(b);
        char *s = malloc(la + lb + 1);
        if (!s) return CEL_ENOMEM;
        memcpy(s, json_string_value(a), la);
        memcpy(s + la, json_string_value(b), lb);
        s[la + lb] = '\0';
        json_t *r = json_stringn_nocheck(s, la + lb);
        free(s);
        return succeed(call, r);
    }
    if (json_is_array(a) && json_is_array(b)) {
        json_t *r = json_array();
        if (!r || json_array_extend(r, a) || json_array_extend(r, b)) {
            json_decref(r);
            return CEL_ENOMEM;
        }
        return succeed(call, r);
    }
    if (json_is_string(a) || json_is_array(a))
        return cel_diag_raisef(call, "TypeError", "can only concatenate %s (not \"%s\") to %s",
                               cel_diag_pytype(a), cel_diag_pytype(b), cel_diag_pytype(a));
    return cel_diag_raisef(call, "TypeError", "unsupported operand type(s) for +: '%s' and '%s'",
                           cel_diag_pytype(a), cel_diag_pytype(b));
}

static int diag_add(cel_diag_call_t *call) {
    static const char *const params[] = {"a", "b"};
    json_t *v[2];
    BIND(call, "add", params, 2, 0, 0, v);
    return add_values(call, v[0], v[1]);
}

static int soft_limit_hit(cel_diag_call_t *call) {
    return call->soft_limit && *call->soft_limit;
}

/* Raises billiard's SoftTimeLimitExceeded as the Python worker stores it. */
static int raise_soft_limit(cel_diag_call_t *call) {
    return cel_diag_raise(call, "SoftTimeLimitExceeded", "billiard.exceptions", NULL,
                          "SoftTimeLimitExceeded()");
}

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int diag_sleep(cel_diag_call_t *call) {
    static const char *const params[] = {"seconds"};
    json_t *v[1];
    BIND(call, "sleep", params, 1, 0, 0, v);
    json_t *s = v[0];
    if (!is_intlike(s) && !json_is_real(s))
        return cel_diag_raisef(call, "TypeError", "'%s' object cannot be interpreted as an integer",
                               cel_diag_pytype(s));
    double secs = num_value(s);
    if (secs < 0) return cel_diag_raisef(call, "ValueError", "sleep length must be non-negative");
    if (secs > (double)INT64_MAX / 1e9) /* CPython's _PyTime_t is int64 nanoseconds */
        return cel_diag_raisef(call, "OverflowError",
                               "timestamp too large to convert to C _PyTime_t");
    double deadline = mono_now() + secs;
    for (;;) {
        if (soft_limit_hit(call)) return raise_soft_limit(call);
        double left = deadline - mono_now();
        if (left <= 0) break;
        /* Short slices bound the delay when SIGUSR1 lands between the flag check
         * and nanosleep (the signal's EINTR covers the usual case). */
        long ns = left * 1e9 < SLEEP_SLICE_NS ? (long)(left * 1e9) : SLEEP_SLICE_NS;
        struct timespec ts = {0, ns > 0 ? ns : 1};
        nanosleep(&ts, NULL); /* EINTR: loop checks the flag */
    }
    return succeed(call, json_incref(s));
}

static int diag_fail(cel_diag_call_t *call) {
    static const char *const params[] = {"message"};
    json_t *v[1];
    BIND(call, "fail", params, 1, 0, 0, v);
    char *text = cel_diag_pystr(v[0]);
    json_t *args = json_pack("[O]", v[0]);
    if (!text || !args) {
        free(text);
        json_decref(args);
        return CEL_ENOMEM;
    }
    int rc = cel_diag_raise(call, "ValueError", "builtins", args, text);
    free(text);
    return rc;
}

static int diag_crash(cel_diag_call_t *call) {
    BIND(call, "crash", NULL, 0, 0, 0, NULL);
    kill(getpid(), SIGKILL);
    return cel_diag_raisef(call, "RuntimeError", "diag.crash survived SIGKILL"); /* unreachable */
}

static const cel_diag_task_t diag_tasks[] = {
    {"diag.add", diag_add},     {"diag.crash", diag_crash}, {"diag.echo", diag_echo},
    {"diag.fail", diag_fail},   {"diag.noop", diag_noop},   {"diag.sleep", diag_sleep},
    {NULL, NULL},
};

const cel_diag_task_t *cel_diag_find(const char *name) {
    if (!name) return NULL;
    for (const cel_diag_task_t *t = diag_tasks; t->name; t++)
        if (strcmp(t->name, name) == 0) return t;
    return NULL;
}
