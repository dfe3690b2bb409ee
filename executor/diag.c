/* diag.c -- the diag.* tasks: small Python functions for tests and benchmarks.
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
 * Their signatures are in the task table (protocol/tasks.c) and the executor
 * binds the arguments (executor/call.c) before a function here runs.
 * Runs in executor processes only; diag.sleep blocks and polls the soft-limit
 * flag set by the executor's SIGUSR1 handler.
 */
#include "diag.h"

#include <math.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/err.h"

#define SLEEP_SLICE_NS (20 * 1000 * 1000L) /* soft-limit latency of diag.sleep */

/* ---- the tasks ---- */

static int diag_noop(cel_call_t *call) { return cel_call_succeed(call, json_null()); }

/* argv: *args (a list), **kwargs (a dict). */
static int diag_echo(cel_call_t *call) {
    return cel_call_succeed(call, json_pack("[OO]", call->argv[0], call->argv[1]));
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
static int add_values(cel_call_t *call, json_t *a, json_t *b) {
    if (is_intlike(a) && is_intlike(b)) {
        json_int_t r;
        if (__builtin_add_overflow(int_value(a), int_value(b), &r))
            return cel_call_raisef(call, "OverflowError", "integer result out of range");
        return cel_call_succeed(call, json_integer(r));
    }
    if ((is_intlike(a) || json_is_real(a)) && (is_intlike(b) || json_is_real(b))) {
        double r = num_value(a) + num_value(b);
        if (!isfinite(r))
            return cel_call_raisef(call, "OverflowError", "float result out of range");
        return cel_call_succeed(call, json_real(r));
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
        return cel_call_succeed(call, r);
    }
    if (json_is_array(a) && json_is_array(b)) {
        json_t *r = json_array();
        if (!r || json_array_extend(r, a) || json_array_extend(r, b)) {
            json_decref(r);
            return CEL_ENOMEM;
        }
        return cel_call_succeed(call, r);
    }
    if (json_is_string(a) || json_is_array(a))
        return cel_call_raisef(call, "TypeError", "can only concatenate %s (not \"%s\") to %s",
                               cel_call_pytype(a), cel_call_pytype(b), cel_call_pytype(a));
    return cel_call_raisef(call, "TypeError", "unsupported operand type(s) for +: '%s' and '%s'",
                           cel_call_pytype(a), cel_call_pytype(b));
}

static int diag_add(cel_call_t *call) { return add_values(call, call->argv[0], call->argv[1]); }

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int diag_sleep(cel_call_t *call) {
    json_t *s = call->argv[0];
    if (!is_intlike(s) && !json_is_real(s))
        return cel_call_raisef(call, "TypeError", "'%s' object cannot be interpreted as an integer",
                               cel_call_pytype(s));
    double secs = num_value(s);
    if (secs < 0) return cel_call_raisef(call, "ValueError", "sleep length must be non-negative");
    if (secs > (double)INT64_MAX / 1e9) /* CPython's _PyTime_t is int64 nanoseconds */
        return cel_call_raisef(call, "OverflowError",
                               "timestamp too large to convert to C _PyTime_t");
    double deadline = mono_now() + secs;
    for (;;) {
        if (cel_call_soft_limit_hit(call)) return cel_call_finish(cel_call_raise_soft_limit(call));
        double left = deadline - mono_now();
        if (left <= 0) break;
        /* Short slices bound the delay when SIGUSR1 lands between the flag check
         * and nanosleep (the signal's EINTR covers the usual case). */
        long ns = left * 1e9 < SLEEP_SLICE_NS ? (long)(left * 1e9) : SLEEP_SLICE_NS;
        struct timespec ts = { 0, ns > 0 ? ns : 1 };
        nanosleep(&ts, NULL); /* EINTR: loop checks the flag */
    }
    return cel_call_succeed(call, json_incref(s));
}

static int diag_fail(cel_call_t *call) {
    char *text = cel_call_pystr(call->argv[0]);
    json_t *args = json_pack("[O]", call->argv[0]);
    if (!text || !args) {
        free(text);
        json_decref(args);
        return CEL_ENOMEM;
    }
    int rc = cel_call_raise(call, "ValueError", "builtins", args, text);
    free(text);
    return rc;
}

static int diag_crash(cel_call_t *call) {
    kill(getpid(), SIGKILL);
    return cel_call_raisef(call, "RuntimeError", "diag.crash survived SIGKILL"); /* unreachable */
}

static const struct {
    const char *name;
    cel_call_fn fn;
} diag_tasks[] = {
    { "diag.add", diag_add },   { "diag.crash", diag_crash }, { "diag.echo", diag_echo },
    { "diag.fail", diag_fail }, { "diag.noop", diag_noop },   { "diag.sleep", diag_sleep },
};

cel_call_fn cel_diag_find(const char *name) {
    for (size_t i = 0; name && i < sizeof(diag_tasks) / sizeof(diag_tasks[0]); i++)
        if (strcmp(diag_tasks[i].name, name) == 0) return diag_tasks[i].fn;
    return NULL;
}
