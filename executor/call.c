/* call.c -- binding a task's arguments as CPython would, checking them, raising.
 *
 * cel_call_bind follows CPython 3.11's initialize_locals() (Objects/call.c,
 * Python/ceval.c): positional copy, keyword arguments (unexpected / multiple
 * values), too many positional, missing ones; its TypeError messages are
 * CPython's byte for byte. Then every value meets its spec of the task table:
 * the checks and messages name the value as the user wrote it
 * ("sampling_params['top_p']", "example 3: weights[1]"). The error in a message
 * is the first found, walking parameters, dict keys and list items in order.
 * No I/O; executor processes only.
 */
#include "call.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/err.h"
#include "../protocol/protocol.h"

#define TRACEBACK_FILE "celeriac/diag" /* kept: clients may match tracebacks on it */
#define PATH_MAX_BYTES 256             /* of a value's name in a message ("example 3, message 2") */

/* ---- the outcome ---- */

/* Frees the outcome only (the bound values stay). */
static void clear_outcome(cel_call_t *call) {
    json_decref(call->result);
    json_decref(call->exc_args);
    free(call->traceback);
    call->result = NULL;
    call->exc_args = NULL;
    call->traceback = NULL;
    call->exc_type = NULL;
    call->exc_module = NULL;
}

void cel_call_close(cel_call_t *call) {
    clear_outcome(call);
    for (int i = 0; i < call->argc; i++) json_decref(call->argv[i]);
    memset(call->argv, 0, sizeof(call->argv));
    call->argc = 0;
}

int cel_call_raise(cel_call_t *call, const char *type, const char *module, json_t *args,
                   const char *text) {
    clear_outcome(call);
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

/* raisef's body: the message formatted from fmt/ap. */
static int raisev(cel_call_t *call, const char *type, const char *fmt, va_list ap) {
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    json_t *args = json_pack("[s]", msg);
    if (!args) return CEL_ENOMEM;
    return cel_call_raise(call, type, "builtins", args, msg);
}

int cel_call_raisef(cel_call_t *call, const char *type, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = raisev(call, type, fmt, ap);
    va_end(ap);
    return rc;
}

int cel_call_fail(cel_call_t *call, const char *type, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = raisev(call, type, fmt, ap);
    va_end(ap);
    return rc ? rc : CEL_ETYPE;
}

int cel_call_finish(int rc) { return rc == CEL_ETYPE ? CEL_OK : rc; }

int cel_call_succeed(cel_call_t *call, json_t *v) {
    if (!v) return CEL_ENOMEM;
    clear_outcome(call);
    call->result = v;
    return CEL_OK;
}

int cel_call_soft_limit_hit(const cel_call_t *call) {
    return call->soft_limit && *call->soft_limit;
}

int cel_call_raise_soft_limit(cel_call_t *call) {
    int rc = cel_call_raise(call, "SoftTimeLimitExceeded", "billiard.exceptions", NULL,
                            "SoftTimeLimitExceeded()");
    return rc ? rc : CEL_ETYPE;
}

const char *cel_call_pytype(const json_t *v) {
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

char *cel_call_pystr(json_t *v) {
    if (json_is_string(v)) {
        size_t n = json_string_length(v);
        if (n > CEL_CALL_TEXT_MAX) n = CEL_CALL_TEXT_MAX;
        char *s = malloc(n + 1);
        if (!s) return NULL;
        memcpy(s, json_string_value(v), n);
        s[n] = '\0'; /* an embedded NUL cuts the text: it only feeds the traceback */
        return s;
    }
    return cel_repr(v, 0, CEL_CALL_TEXT_MAX);
}

const char *cel_call_repr(json_t *v, char *buf, size_t size) {
    char *s = cel_repr(v, 0, CEL_CALL_REPR_MAX + 4);
    if (!s) {
        snprintf(buf, size, "?");
        return buf;
    }
    if (strlen(s) > CEL_CALL_REPR_MAX) snprintf(buf, size, "%.*s...", CEL_CALL_REPR_MAX, s);
    else snprintf(buf, size, "%s", s);
    free(s);
    return buf;
}

/* ---- binding (CPython's initialize_locals) ---- */

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

/* Python's binding of args/kwargs. OUT: in[i] the borrowed value given for
 * params[i] or NULL; *extra_kw a new dict of unmatched keywords (varkw only).
 * Returns CEL_OK, CEL_ETYPE (TypeError raised) or CEL_ENOMEM. */
static int bind_python(cel_call_t *call, const cel_tasks_task_t *t, json_t **in,
                       json_t **extra_kw) {
    const char *func = cel_tasks_func(t);
    int np = t->nparams, nreq = 0;
    for (int i = 0; i < np; i++) nreq += t->params[i].required;
    size_t nargs = json_array_size(call->args);
    for (int i = 0; i < np; i++)
        in[i] = (size_t)i < nargs ? json_array_get(call->args, (size_t)i) : NULL;
    *extra_kw = NULL;
    if (t->varkw && !(*extra_kw = json_object())) return CEL_ENOMEM;
    const char *key;
    json_t *val;
    json_object_foreach(call->kwargs, key, val) {
        int j;
        for (j = 0; j < np; j++)
            if (strcmp(t->params[j].name, key) == 0) break;
        if (j == np && t->varkw) {
            if (json_object_set(*extra_kw, key, val)) return CEL_ENOMEM;
            continue;
        }
        if (j == np)
            return cel_call_fail(call, "TypeError", "%s() got an unexpected keyword argument '%s'",
                                 func, key);
        if (in[j])
            return cel_call_fail(call, "TypeError", "%s() got multiple values for argument '%s'",
                                 func, key);
        in[j] = val;
    }
    if (!t->varargs && nargs > (size_t)np) {
        if (nreq == np)
            return cel_call_fail(call, "TypeError",
                                 "%s() takes %d positional argument%s but %zu %s given", func, np,
                                 np == 1 ? "" : "s", nargs, nargs == 1 ? "was" : "were");
        return cel_call_fail(call, "TypeError",
                             "%s() takes from %d to %d positional arguments but %zu %s given", func,
                             nreq, np, nargs, nargs == 1 ? "was" : "were");
    }
    const char *missing[CEL_TASKS_MAX_PARAMS];
    int nmissing = 0;
    for (int i = 0; i < np; i++)
        if (!in[i] && t->params[i].required) missing[nmissing++] = t->params[i].name;
    if (nmissing > 0) {
        char names[512];
        join_names(names, sizeof(names), missing, nmissing);
        return cel_call_fail(call, "TypeError",
                             "%s() missing %d required positional argument%s: %s", func, nmissing,
                             nmissing == 1 ? "" : "s", names);
    }
    return CEL_OK;
}

/* ---- checking against the table ---- */

/* Where a value sits, as a chain up to its parameter; rendered only for a
 * message, so checking a long list of ints builds no names. */
typedef struct path {
    const struct path *up;        /* NULL: a parameter (key is its name) */
    const char *key;              /* a dict field's key, or NULL for a list item */
    size_t index;                 /* list item: its index */
    const cel_tasks_spec_t *list; /* list item: the list's spec (for its label) */
} path_t;

/* A rendered path: prefix is the part up to the last labelled list item
 * ("example 3, message 2"), local the rest ("weights[1]", "adam_params['eps']"). */
typedef struct name {
    char prefix[PATH_MAX_BYTES];
    char local[PATH_MAX_BYTES];
} name_t;

static void render(const path_t *p, name_t *n) {
    if (!p->up) {
        n->prefix[0] = '\0';
        snprintf(n->local, sizeof(n->local), "%s", p->key);
        return;
    }
    render(p->up, n);
    char tmp[PATH_MAX_BYTES];
    if (p->key) { /* a dict field */
        snprintf(tmp, sizeof(tmp), "%s", n->local);
        if (tmp[0]) snprintf(n->local, sizeof(n->local), "%.200s['%.40s']", tmp, p->key);
        else snprintf(n->local, sizeof(n->local), "%s", p->key);
        return;
    }
    if (!p->list->label) {
        snprintf(tmp, sizeof(tmp), "%s", n->local);
        snprintf(n->local, sizeof(n->local), "%.200s[%zu]", tmp, p->index);
        return;
    }
    char label[64];
    snprintf(label, sizeof(label), p->list->label, p->index);
    snprintf(tmp, sizeof(tmp), "%s", n->prefix);
    if (!tmp[0]) snprintf(n->prefix, sizeof(n->prefix), "%s", label); /* items of a parameter */
    else if (!n->local[0]) snprintf(n->prefix, sizeof(n->prefix), "%.150s, %s", tmp, label);
    else snprintf(n->prefix, sizeof(n->prefix), "%.100s: %.60s, %s", tmp, n->local, label);
    n->local[0] = '\0';
}

/* The whole name: "example 3: weights[1]", "example 3", "adam_params['eps']". */
static const char *full(const path_t *p, char *buf, size_t size) {
    name_t n;
    render(p, &n);
    if (!n.prefix[0]) snprintf(buf, size, "%s", n.local);
    else if (!n.local[0]) snprintf(buf, size, "%s", n.prefix);
    else snprintf(buf, size, "%s: %s", n.prefix, n.local);
    return buf;
}

/* OUT: head "<prefix>: " when the name has a labelled part (else ""), local. */
static void split(const path_t *p, char *head, size_t hsize, char *local, size_t lsize) {
    name_t n;
    render(p, &n);
    snprintf(head, hsize, "%s%s", n.prefix, n.prefix[0] ? ": " : "");
    snprintf(local, lsize, "%s", n.local);
}

static int type_ok(const cel_tasks_spec_t *s, const json_t *v) {
    switch (s->type) {
    case CEL_TASKS_ANY: return 1;
    case CEL_TASKS_INT: return json_is_integer(v);
    case CEL_TASKS_NUMBER: return json_is_integer(v) || json_is_real(v);
    case CEL_TASKS_STR: return json_is_string(v);
    case CEL_TASKS_BOOL: return json_is_boolean(v);
    case CEL_TASKS_LIST: return json_is_array(v) || (s->also_str && json_is_string(v));
    case CEL_TASKS_DICT: return json_is_object(v);
    case CEL_TASKS_ONE_OF: return 1;
    }
    return 0;
}

/* What a spec wants, for "<x> must be <expect>, not <type>". */
static const char *expect(const cel_tasks_spec_t *s, char *buf, size_t size) {
    if (s->expect) return s->expect;
    switch (s->type) {
    case CEL_TASKS_INT: return "an int";
    case CEL_TASKS_NUMBER: return "a number";
    case CEL_TASKS_STR: return "a str";
    case CEL_TASKS_BOOL: return "a bool";
    case CEL_TASKS_DICT: return "a dict";
    case CEL_TASKS_LIST: {
        char item[96];
        const char *e =
            s->items->type == CEL_TASKS_ANY ? " values" : strchr(expect(s->items, item, 96), ' ');
        snprintf(buf, size, "%sa list of%s", s->also_str ? "a str or " : "", e ? e : " values");
        return buf; /* "a list of str": the item's phrase without its article */
    }
    default: return "a value";
    }
}

/* Unicode code points of a str (jansson strings are valid UTF-8). */
static size_t code_points(const json_t *v) {
    const unsigned char *p = (const unsigned char *)json_string_value(v);
    size_t n = 0, len = json_string_length(v);
    for (size_t i = 0; i < len; i++) n += (p[i] & 0xC0) != 0x80;
    return n;
}

/* The bound, formatted as the spec's type is ("%lld" for int, "%g" else). */
static const char *fmt_bound(const cel_tasks_spec_t *s, double b, char *buf, size_t size) {
    if (s->type == CEL_TASKS_INT) snprintf(buf, size, "%lld", (long long)b);
    else snprintf(buf, size, "%g", b);
    return buf;
}

static int check(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, const path_t *p,
                 json_t **out);

#define NAME_MAX_BYTES (2 * PATH_MAX_BYTES + 2)

/* int/number: the bounds (and finiteness). */
static int check_number(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, const path_t *p) {
    double x = json_is_real(v) ? json_real_value(v) : (double)json_integer_value(v);
    int lo_ok = !s->has_min || (s->min_excl ? x > s->min : x >= s->min);
    int hi_ok = !s->has_max || (s->max_excl ? x < s->max : x <= s->max);
    if (lo_ok && hi_ok && isfinite(x)) return CEL_OK;
    char name[NAME_MAX_BYTES], lo[40], hi[40], r[CEL_CALL_REPR_MAX + 8];
    full(p, name, sizeof(name));
    cel_call_repr(v, r, sizeof(r));
    fmt_bound(s, s->min, lo, sizeof(lo));
    fmt_bound(s, s->max, hi, sizeof(hi));
    if (s->has_min && s->has_max)
        return cel_call_fail(call, "ValueError", "%s must be in %c%s, %s%c, not %s", name,
                             s->min_excl ? '(' : '[', lo, hi, s->max_excl ? ')' : ']', r);
    const char *fin = s->type == CEL_TASKS_NUMBER ? "finite and " : "";
    if (s->has_min)
        return cel_call_fail(call, "ValueError", "%s must be %s%s %s, not %s", name, fin,
                             s->min_excl ? ">" : ">=", lo, r);
    if (s->has_max)
        return cel_call_fail(call, "ValueError", "%s must be %s%s %s, not %s", name, fin,
                             s->max_excl ? "<" : "<=", hi, r);
    return cel_call_fail(call, "ValueError", "%s must be a finite number, not %s", name, r);
}

/* "<name> must be 1 to 256 characters long, not 300", "data must hold 1 to 512
 * examples, not 0", "text must not be empty". n: the str's or list's length. */
static int length_error(cel_call_t *call, const cel_tasks_spec_t *s, const path_t *p, size_t n) {
    char name[NAME_MAX_BYTES];
    full(p, name, sizeof(name));
    int list = s->type == CEL_TASKS_LIST;
    const char *verb = list ? (s->verb ? s->verb : "hold") : "be";
    const char *unit = list ? (s->noun ? s->noun : "items") : "characters long";
    if (s->min_len == 1 && n == 0 && (!list || !s->max_len))
        return cel_call_fail(call, "ValueError", "%s must not be empty", name);
    if (s->min_len > 0 && s->max_len)
        return cel_call_fail(call, "ValueError", "%s must %s %ld to %ld %s, not %zu", name, verb,
                             s->min_len, s->max_len, unit, n);
    if (s->max_len)
        return cel_call_fail(call, "ValueError", "%s must %s at most %ld %s, not %zu", name, verb,
                             s->max_len, unit, n);
    return cel_call_fail(call, "ValueError", "%s must %s at least %ld %s, not %zu", name, verb,
                         s->min_len, unit, n);
}

static int check_str(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, const path_t *p) {
    if (s->min_len > 0 || s->max_len) {
        size_t n = code_points(v);
        if (n < (size_t)s->min_len || (s->max_len && n > (size_t)s->max_len))
            return length_error(call, s, p, n);
    }
    if (!s->choices) return CEL_OK;
    size_t len = json_string_length(v);
    for (int i = 0; s->choices[i]; i++)
        if (strlen(s->choices[i]) == len && memcmp(s->choices[i], json_string_value(v), len) == 0)
            return CEL_OK;
    char supported[512] = "", r[CEL_CALL_REPR_MAX + 8], head[PATH_MAX_BYTES + 2];
    char local[PATH_MAX_BYTES];
    size_t used = 0;
    for (int i = 0; s->choices[i] && used < sizeof(supported); i++)
        used += (size_t)snprintf(supported + used, sizeof(supported) - used, "%s'%s'",
                                 i ? ", " : "", s->choices[i]);
    split(p, head, sizeof(head), local, sizeof(local));
    return cel_call_fail(call, "ValueError", "%sunknown %s %s (supported: %s)", head,
                         s->noun ? s->noun : local, cel_call_repr(v, r, sizeof(r)), supported);
}

static int check_list(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, const path_t *p,
                      json_t **out) {
    json_t *one = NULL;
    if (json_is_string(v)) { /* also_str: a bare str is a one-item list */
        if (!(one = json_pack("[O]", v))) return CEL_ENOMEM;
        v = one;
    }
    size_t n = json_array_size(v);
    int rc = CEL_OK;
    if (n < (size_t)s->min_len || (s->max_len && n > (size_t)s->max_len))
        rc = length_error(call, s, p, n);
    json_t *copy = NULL; /* made when an item's bound value differs from the item */
    for (size_t i = 0; rc == CEL_OK && i < n; i++) {
        json_t *item = json_array_get(v, i), *b = NULL;
        path_t ip = { .up = p, .index = i, .list = s };
        rc = check(call, s->items, item, &ip, &b);
        if (rc == CEL_OK && b != item && !copy) {
            copy = json_array();
            for (size_t j = 0; copy && j < i; j++)
                if (json_array_append(copy, json_array_get(v, j))) {
                    json_decref(copy);
                    copy = NULL;
                }
            if (!copy) rc = CEL_ENOMEM;
        }
        if (rc == CEL_OK && copy && json_array_append(copy, b)) rc = CEL_ENOMEM;
        json_decref(b);
        /* unique lists are short (target_modules): pairwise is fine */
        for (size_t j = 0; rc == CEL_OK && s->unique && j < i; j++)
            if (json_equal(json_array_get(v, j), item)) {
                char name[NAME_MAX_BYTES], r[CEL_CALL_REPR_MAX + 8];
                rc = cel_call_fail(call, "ValueError", "%s has %s twice",
                                   full(p, name, sizeof(name)), cel_call_repr(item, r, sizeof(r)));
            }
    }
    if (rc == CEL_OK) *out = copy ? json_incref(copy) : json_incref(v);
    json_decref(copy);
    json_decref(one);
    return rc;
}

/* An unknown key k of dict spec s at p. */
static int unknown_key(cel_call_t *call, const cel_tasks_spec_t *s, const path_t *p,
                       const char *k) {
    char known[512] = "", head[PATH_MAX_BYTES + 2], local[PATH_MAX_BYTES];
    size_t used = 0;
    for (int i = 0; i < s->nfields && used < sizeof(known); i++)
        used += (size_t)snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
                                 s->fields[i].name);
    split(p, head, sizeof(head), local, sizeof(local));
    return cel_call_fail(call, "ValueError", "%sunknown %s%skey '%.64s' (%s)", head, local,
                         local[0] ? " " : "", k, known);
}

static int check_dict(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, const path_t *p,
                      json_t **out) {
    const char *key;
    json_t *val;
    json_object_foreach(v, key, val) {
        int k;
        for (k = 0; k < s->nfields; k++)
            if (strcmp(key, s->fields[k].name) == 0) break;
        if (k == s->nfields && !s->extra_fields) return unknown_key(call, s, p, key);
    }
    json_t *d = s->extra_fields ? json_copy(v) : json_object();
    if (!d) return CEL_ENOMEM;
    int rc = CEL_OK;
    for (int k = 0; rc == CEL_OK && k < s->nfields; k++) {
        const cel_tasks_spec_t *f = &s->fields[k];
        json_t *fv = json_object_get(v, f->name), *b = NULL;
        if (!fv && f->required) {
            char name[NAME_MAX_BYTES];
            full(p, name, sizeof(name));
            if (s->shape) rc = cel_call_fail(call, "ValueError", "%s: %s", name, s->shape);
            else rc = cel_call_fail(call, "ValueError", "%s needs the key '%s'", name, f->name);
            break;
        }
        path_t fp = { .up = p, .key = f->name };
        rc = check(call, f, fv, &fp, &b);
        if (rc == CEL_OK && json_object_set_new(d, f->name, b)) rc = CEL_ENOMEM;
    }
    if (rc == CEL_OK) *out = d;
    else json_decref(d);
    return rc;
}

/* one_of: the first alternative of the value's type that, for a dict, shares a
 * key with the value; the value must then match it. */
static int check_one_of(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, const path_t *p,
                        json_t **out) {
    int type_seen = 0;
    for (int a = 0; a < s->nfields; a++) {
        const cel_tasks_spec_t *alt = &s->fields[a];
        if (!type_ok(alt, v)) continue;
        type_seen = 1;
        int keyed = alt->type != CEL_TASKS_DICT;
        for (int k = 0; !keyed && k < alt->nfields; k++)
            keyed = json_object_get(v, alt->fields[k].name) != NULL;
        if (keyed) return check(call, alt, v, p, out);
    }
    char name[NAME_MAX_BYTES];
    full(p, name, sizeof(name));
    return cel_call_fail(call, type_seen ? "ValueError" : "TypeError", "%s must be %s, not %s",
                         name, s->expect ? s->expect : "one of its forms",
                         type_seen ? "a dict with those keys" : cel_call_pytype(v));
}

/* The default of s as a bound value (a dict left to None: its fields' defaults).
 * OUT: *out (new reference). */
static int bind_default(cel_call_t *call, const cel_tasks_spec_t *s, const path_t *p,
                        json_t **out) {
    json_t *d = s->dflt ? json_loads(s->dflt, JSON_DECODE_ANY, NULL) : json_null();
    if (!d) return CEL_ENOMEM;
    if (json_is_null(d) && s->type == CEL_TASKS_DICT) {
        json_decref(d);
        if (!(d = json_object())) return CEL_ENOMEM;
        int rc = check_dict(call, s, d, p, out);
        json_decref(d);
        return rc;
    }
    *out = d;
    return CEL_OK;
}

/* Checks v (NULL: absent, so the default) against s. OUT: *out the bound value
 * (new reference). */
static int check(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, const path_t *p,
                 json_t **out) {
    *out = NULL;
    if (!v) return bind_default(call, s, p, out);
    if (json_is_null(v) && s->nullable) {
        if (s->dflt) return bind_default(call, s, p, out);
        *out = json_incref(v); /* None where no default exists (lora.sample's adapter_id) */
        return CEL_OK;
    }
    if (s->type == CEL_TASKS_ANY) {
        *out = json_incref(v);
        return CEL_OK;
    }
    if (s->type == CEL_TASKS_ONE_OF) return check_one_of(call, s, v, p, out);
    if (!type_ok(s, v)) {
        char name[NAME_MAX_BYTES], buf[128];
        return cel_call_fail(call, "TypeError", "%s must be %s, not %s",
                             full(p, name, sizeof(name)), expect(s, buf, sizeof(buf)),
                             cel_call_pytype(v));
    }
    int rc = CEL_OK;
    switch (s->type) {
    case CEL_TASKS_INT:
    case CEL_TASKS_NUMBER: rc = check_number(call, s, v, p); break;
    case CEL_TASKS_STR: rc = check_str(call, s, v, p); break;
    case CEL_TASKS_LIST: return check_list(call, s, v, p, out);
    case CEL_TASKS_DICT: return check_dict(call, s, v, p, out);
    default: break;
    }
    if (rc == CEL_OK) *out = json_incref(v);
    return rc;
}

int cel_call_check(cel_call_t *call, const cel_tasks_spec_t *s, json_t *v, json_t **out) {
    path_t p = { .key = s->name ? s->name : "value" };
    return check(call, s, v, &p, out);
}

int cel_call_bind(cel_call_t *call, const cel_tasks_task_t *task) {
    cel_call_close(call);
    json_t *in[CEL_TASKS_MAX_PARAMS], *extra_kw = NULL;
    if (task->nparams > CEL_TASKS_MAX_PARAMS) return CEL_EINVAL;
    int rc = bind_python(call, task, in, &extra_kw);
    for (int i = 0; rc == CEL_OK && i < task->nparams; i++) {
        rc = cel_call_check(call, &task->params[i], in[i], &call->argv[i]);
        if (rc == CEL_OK) call->argc = i + 1;
    }
    if (rc == CEL_OK && task->varargs) {
        size_t nargs = json_array_size(call->args), np = (size_t)task->nparams;
        json_t *rest = json_array();
        for (size_t i = np; rest && i < nargs; i++)
            if (json_array_append(rest, json_array_get(call->args, i))) {
                json_decref(rest);
                rest = NULL;
            }
        if (!rest) rc = CEL_ENOMEM;
        else call->argv[call->argc++] = rest;
    }
    if (rc == CEL_OK && task->varkw) {
        call->argv[call->argc++] = extra_kw;
        extra_kw = NULL;
    }
    json_decref(extra_kw);
    if (rc != CEL_OK) {
        for (int i = 0; i < call->argc; i++) json_decref(call->argv[i]);
        memset(call->argv, 0, sizeof(call->argv));
        call->argc = 0;
    }
    return rc;
}
