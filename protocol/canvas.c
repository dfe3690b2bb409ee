/* canvas.c -- plans and signature application: task signatures, groups, chains, chords.
 *
 * See canvas.h; the worker's steps built on this are in canvas_steps.c.
 * Signatures are jansson dicts {task, args, kwargs, options, subtask_type,
 * immutable}; the plan works on deep copies, so freezing
 * (options.task_id, reply_to, group_id, chord, group_index, root_id) never
 * touches the caller's message. Each apply_* function is the Python method of
 * the same name in celery/canvas.py (Signature.apply_async, group.apply_async
 * with _prepared/_apply_tasks, _chain.run with prepare_steps, _chord.run) and
 * returns the result object Python would (AsyncResult with parents,
 * GroupResult), from which the parent's children tuples are made. Bounded:
 * CEL_PLAN_MAX_ACTS actions and CEL_PLAN_MAX_DEPTH nesting per plan. No I/O;
 * main process.
 */
#include "canvas.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canvas_internal.h"
#include "internal.h"

/* ---- plan bookkeeping ------------------------------------------------- */

cel_plan_t *cel_plan_new(const cel_send_ctx_t *ctx, int extended) {
    cel_plan_t *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->ctx = ctx;
    p->extended = extended;
    p->children = json_array();
    p->keep = json_array();
    p->cloned = json_array();
    if (!p->children || !p->keep || !p->cloned) {
        cel_plan_free(p);
        return NULL;
    }
    return p;
}

void cel_plan_free(cel_plan_t *p) {
    if (!p) return;
    for (size_t i = 0; i < p->n; i++) cel_msg_free(p->acts[i].msg);
    free(p->acts);
    json_decref(p->children);
    json_decref(p->keep);
    json_decref(p->cloned);
    for (res_t *r = p->results, *next; r; r = next) {
        next = r->next;
        free(r->id);
        free(r->members);
        free(r);
    }
    free(p);
}

size_t cel_plan_count(const cel_plan_t *p) { return p->n; }

const cel_plan_act_t *cel_plan_get(const cel_plan_t *p, size_t i) {
    return i < p->n ? &p->acts[i] : NULL;
}

json_t *cel_plan_children(const cel_plan_t *p) { return p->children; }

cel_plan_act_t *cel_plan_add_act(cel_plan_t *p, cel_plan_kind_t kind, cel_err_t *err) {
    if (p->n >= CEL_PLAN_MAX_ACTS) {
        cel_err_set(err, CEL_ELIMIT, "a canvas step of more than %d actions", CEL_PLAN_MAX_ACTS);
        return NULL;
    }
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 8;
        cel_plan_act_t *a = realloc(p->acts, cap * sizeof(*a));
        if (!a) {
            cel_err_set(err, CEL_ENOMEM, "out of memory planning a canvas step");
            return NULL;
        }
        p->acts = a;
        p->cap = cap;
    }
    cel_plan_act_t *a = &p->acts[p->n++];
    memset(a, 0, sizeof(*a));
    a->kind = kind;
    a->group_index = -1;
    return a;
}

/* A string the plan keeps alive (NULL stays NULL). */
const char *cel_plan_keep_str(cel_plan_t *p, const char *s) {
    if (!s) return NULL;
    json_t *v = json_string(s);
    if (!v || json_array_append_new(p->keep, v)) return NULL;
    return json_string_value(v);
}

json_t *cel_plan_keep_json(cel_plan_t *p, json_t *v) {
    if (!v || json_array_append(p->keep, v)) return NULL;
    return v;
}

static res_t *new_res(cel_plan_t *p, const char *id, int group) {
    res_t *r = calloc(1, sizeof(*r));
    if (!r) return NULL;
    if (!(r->id = strdup(id ? id : ""))) {
        free(r);
        return NULL;
    }
    r->group = group;
    r->next = p->results;
    p->results = r;
    return r;
}

static int res_add_member(res_t *g, res_t *m) {
    res_t **a = realloc(g->members, (g->nmembers + 1) * sizeof(*a));
    if (!a) return CEL_ENOMEM;
    g->members = a;
    a[g->nmembers++] = m;
    return CEL_OK;
}

/* AsyncResult.as_tuple / GroupResult.as_tuple as JSON. */
static json_t *as_tuple(const res_t *r, int depth) {
    if (!r || depth > CEL_PLAN_MAX_DEPTH * 4) return json_null();
    json_t *head = json_pack("[so]", r->id, as_tuple(r->parent, depth + 1));
    if (!r->group) return json_pack("[oo]", head, json_null());
    json_t *m = json_array();
    for (size_t i = 0; i < r->nmembers; i++)
        json_array_append_new(m, as_tuple(r->members[i], depth + 1));
    return json_pack("[oo]", head, m);
}

/* ---- signature helpers ------------------------------------------------ */

const char *cel_plan_sig_type(json_t *sig) {
    const char *t = json_string_value(json_object_get(sig, "subtask_type"));
    if (!t) return "";
    if (!strcmp(t, "chain") || !strcmp(t, "group") || !strcmp(t, "chord")) return t;
    return ""; /* xmap, chunks...: task signatures of celery.* tasks */
}

/* The signature's options dict, created when missing. Borrowed. */
static json_t *opts_of(json_t *sig) {
    json_t *o = json_object_get(sig, "options");
    if (!json_is_object(o)) {
        o = json_object();
        json_object_set_new(sig, "options", o);
    }
    return o;
}

static const char *opt_s(json_t *sig, const char *key) {
    return json_string_value(json_object_get(json_object_get(sig, "options"), key));
}

static void mark_cloned(cel_plan_t *p, json_t *sig) { json_array_append(p->cloned, sig); }

static int is_cloned(cel_plan_t *p, json_t *sig) {
    size_t i;
    json_t *v;
    json_array_foreach(p->cloned, i, v) if (v == sig) return 1;
    return 0;
}

/* Signature.clone(args, kwargs, **opts): a deep copy with _merge applied
 * (options merged without dropping None; group_id kept when present). New
 * reference. */
static json_t *clone_sig(cel_plan_t *p, json_t *sig, json_t *args, json_t *kwargs,
                         json_t *options) {
    json_t *c = json_deep_copy(sig);
    if (!c) return NULL;
    if (!json_is_true(json_object_get(c, "immutable"))) {
        if (json_is_array(args) && json_array_size(args)) {
            json_t *a = json_deep_copy(args);
            json_t *own = json_object_get(c, "args");
            if (json_is_array(own)) json_array_extend(a, own);
            json_object_set_new(c, "args", a);
        }
        if (json_is_object(kwargs) && json_object_size(kwargs)) {
            json_t *k = json_object_get(c, "kwargs");
            if (!json_is_object(k)) json_object_set_new(c, "kwargs", k = json_object());
            json_object_update(k, kwargs);
        }
    }
    if (json_is_object(options)) {
        json_t *o = opts_of(c);
        const char *key;
        json_t *v;
        json_object_foreach(options, key, v) {
            if (!strcmp(key, "group_id") && json_object_get(o, key)) continue;
            json_object_set(o, key, v);
        }
    }
    mark_cloned(p, c);
    return c;
}

/* Signature.freeze(_id, group_id, chord, root_id, parent_id, group_index)
 * for a task signature; returns its AsyncResult. */
static res_t *freeze_task(cel_plan_t *p, json_t *sig, const char *id, const char *group_id,
                          json_t *chord, const char *root_id, const char *parent_id,
                          int group_index) {
    json_t *o = opts_of(sig);
    const char *tid = opt_s(sig, "task_id");
    char buf[37];
    if (!tid) {
        if (!id) p->ctx->new_id(p->ctx->id_priv, buf), id = buf;
        json_object_set_new(o, "task_id", json_string(id));
        tid = opt_s(sig, "task_id");
    }
    if (root_id) json_object_set_new(o, "root_id", json_string(root_id));
    if (parent_id) json_object_set_new(o, "parent_id", json_string(parent_id));
    if (!json_object_get(o, "reply_to"))
        json_object_set_new(o, "reply_to", json_string(p->ctx->reply_to));
    if (group_id && !json_object_get(o, "group_id"))
        json_object_set_new(o, "group_id", json_string(group_id));
    if (chord) json_object_set(o, "chord", chord);
    if (group_index >= 0) json_object_set_new(o, "group_index", json_integer(group_index));
    return new_res(p, tid, 0);
}

static res_t *freeze_sig(cel_plan_t *p, json_t *sig, const char *id, const char *group_id,
                         json_t *chord, const char *root_id, const char *parent_id, int group_index,
                         cel_err_t *err);
res_t *cel_plan_apply(cel_plan_t *p, json_t *sig, json_t *args, json_t *kwargs, json_t *options,
                      int cloned, cel_err_t *err);

/* The tasks list of a group or chain signature (kwargs.tasks); a chord's
 * header may be a list or a group signature. */
static json_t *tasks_of(json_t *sig) {
    json_t *t = json_object_get(json_object_get(sig, "kwargs"), "tasks");
    return json_is_array(t) ? t : NULL;
}

/* chord._descend: how many completions a header member contributes. */
static long descend(json_t *sig, int depth) {
    const char *ty = cel_plan_sig_type(sig);
    if (depth > CEL_PLAN_MAX_DEPTH) return 1;
    json_t *tasks = tasks_of(sig);
    if (!strcmp(ty, "group")) {
        long n = 0;
        size_t i;
        json_t *t;
        json_array_foreach(tasks, i, t) n += descend(t, depth + 1);
        return n;
    }
    if (!strcmp(ty, "chain")) {
        for (size_t i = json_array_size(tasks); i-- > 0;) {
            long n = descend(json_array_get(tasks, i), depth + 1);
            if (n > 0) return n;
        }
        return 0;
    }
    if (!strcmp(ty, "chord"))
        return descend(json_object_get(json_object_get(sig, "kwargs"), "body"), depth + 1);
    return 1;
}

/* A group with one member stands for that member (maybe_unroll_group). */
static json_t *maybe_unroll(json_t *sig) {
    json_t *tasks = tasks_of(sig);
    if (!strcmp(cel_plan_sig_type(sig), "group") && json_array_size(tasks) == 1)
        return json_array_get(tasks, 0);
    return sig;
}

/* ---- groups ------------------------------------------------------------ */

/* group._freeze_group_tasks: the group id (options.task_id) and each
 * member (nested groups unrolled, in order) frozen with group_id, chord,
 * root_id, parent_id and its index. The members replace kwargs.tasks. */
static res_t *freeze_group(cel_plan_t *p, json_t *g, const char *id, const char *group_id,
                           json_t *chord, const char *root_id, const char *parent_id,
                           int group_index, cel_err_t *err) {
    json_t *o = opts_of(g);
    char buf[37];
    if (!opt_s(g, "task_id")) {
        if (!group_id) p->ctx->new_id(p->ctx->id_priv, buf);
        json_object_set_new(o, "task_id", json_string(group_id ? group_id : buf));
    }
    if (group_id) json_object_set_new(o, "group_id", json_string(group_id));
    if (chord) json_object_set(o, "chord", chord);
    if (group_index >= 0) json_object_set_new(o, "group_index", json_integer(group_index));
    if (!json_object_get(o, "root_id"))
        json_object_set_new(o, "root_id", root_id ? json_string(root_id) : json_null());
    if (!json_object_get(o, "parent_id"))
        json_object_set_new(o, "parent_id", parent_id ? json_string(parent_id) : json_null());
    root_id = opt_s(g, "root_id");
    parent_id = opt_s(g, "parent_id");
    res_t *gr = new_res(p, opt_s(g, "task_id"), 1);
    json_t *out = json_array();
    json_t *stack = json_array();
    if (!gr || !out || !stack) goto oom;
    json_t *tasks = tasks_of(g);
    if (tasks) json_array_extend(stack, tasks);
    int index = 0;
    while (json_array_size(stack) > 0) {
        json_t *t = json_incref(json_array_get(stack, 0));
        json_array_remove(stack, 0);
        json_t *c = clone_sig(p, t, NULL, NULL, NULL);
        json_decref(t);
        if (!c) goto oom;
        if (!strcmp(cel_plan_sig_type(c), "group")) {
            /* stack.extendleft(task.tasks): reversed in front */
            json_t *sub = tasks_of(c);
            for (size_t i = 0; sub && i < json_array_size(sub); i++)
                json_array_insert(stack, 0, json_array_get(sub, i));
            json_decref(c);
            continue;
        }
        json_array_append_new(out, c);
        res_t *r = freeze_sig(p, c, NULL, group_id, chord, root_id, parent_id, index++, err);
        if (!r || res_add_member(gr, r)) goto fail;
    }
    json_object_set_new(json_object_get(g, "kwargs"), "tasks", out);
    json_decref(stack);
    return gr;
oom:
    cel_err_set(err, CEL_ENOMEM, "out of memory planning a group");
fail:
    json_decref(out);
    json_decref(stack);
    return NULL;
}

/* group.apply_async(args, kwargs, **options): the group id from the
 * options' task_id (else new), each member frozen (_prepared) and applied
 * with the group's options, the chord size recorded before the last member
 * that carries a chord, and the GroupResult added to the parent's children. */
static res_t *apply_group(cel_plan_t *p, json_t *g, json_t *args, json_t *kwargs, json_t *options,
                          cel_err_t *err) {
    json_t *o = json_deep_copy(opts_of(g));
    res_t *gr = NULL;
    json_t *members = NULL, *stack = NULL;
    if (!o) goto oom;
    if (json_is_object(options)) json_object_update(o, options);
    int add_to_parent = !json_is_false(json_object_get(o, "add_to_parent"));
    json_object_del(o, "add_to_parent");
    char gid[64];
    const char *given = json_string_value(json_object_get(o, "task_id"));
    if (given) snprintf(gid, sizeof(gid), "%s", given);
    else p->ctx->new_id(p->ctx->id_priv, gid);
    json_object_del(o, "task_id");
    json_object_set_new(o, "group_id", json_string(gid));
    const char *root_id = json_string_value(json_object_get(o, "root_id"));
    json_t *chord = json_object_get(o, "chord");
    if (chord && json_is_null(chord)) chord = NULL;
    if (!(gr = new_res(p, gid, 1))) goto oom;
    /* _prepared: members cloned and frozen, nested groups unrolled */
    members = json_array();
    stack = json_array();
    if (!members || !stack) goto oom;
    json_t *tasks = tasks_of(g);
    if (tasks) json_array_extend(stack, tasks);
    while (json_array_size(stack) > 0) {
        json_t *t = json_incref(json_array_get(stack, 0));
        json_array_remove(stack, 0);
        json_t *c = clone_sig(p, t, NULL, NULL, NULL);
        json_decref(t);
        if (!c) goto oom;
        if (!strcmp(cel_plan_sig_type(c), "group")) {
            json_t *sub = tasks_of(c);
            for (size_t i = sub ? json_array_size(sub) : 0; i-- > 0;)
                json_array_insert(stack, 0, json_array_get(sub, i));
            json_decref(c);
            continue;
        }
        json_array_append_new(members, c);
        res_t *r = freeze_sig(p, c, NULL, gid, NULL, root_id, NULL, -1, err);
        if (!r || res_add_member(gr, r)) goto fail;
    }
    /* _apply_tasks */
    json_t *mopts = json_deep_copy(o);
    if (!mopts) goto oom;
    json_object_set_new(mopts, "add_to_parent", json_false());
    json_object_del(mopts, "chord");
    long chord_size = 0;
    size_t i;
    json_t *m;
    json_array_foreach(members, i, m) {
        json_t *cobj = chord ? chord : json_object_get(opts_of(m), "chord");
        if (cobj && json_is_null(cobj)) cobj = NULL;
        chord_size += descend(m, 0);
        if (cobj && i + 1 == json_array_size(members)) {
            cel_plan_act_t *a = cel_plan_add_act(p, CEL_PLAN_CHORD_SIZE, err);
            if (!a) {
                json_decref(mopts);
                goto fail;
            }
            a->group_id = cel_plan_keep_str(p, gid);
            a->size = chord_size;
        }
        if (cobj) json_object_set(mopts, "chord", cobj);
        else json_object_del(mopts, "chord");
        if (!cel_plan_apply(p, m, args, kwargs, mopts, 1, err)) {
            json_decref(mopts);
            goto fail;
        }
    }
    json_decref(mopts);
    if (add_to_parent) json_array_append_new(p->children, as_tuple(gr, 0));
    json_decref(o);
    json_decref(members);
    json_decref(stack);
    return gr;
oom:
    cel_err_set(err, CEL_ENOMEM, "out of memory planning a group");
fail:
    json_decref(o);
    json_decref(members);
    json_decref(stack);
    return NULL;
}

/* ---- chains ------------------------------------------------------------ */

/* _chain.prepare_steps: the tasks in reverse (last first), each cloned and
 * frozen, args to the first, nested chains spliced, a group followed by a
 * task upgraded to a chord, link_error on every task. *tasks_out (new array,
 * last task first) and the result of the chain (its last task, parents
 * linked). */
static res_t *prepare_steps(cel_plan_t *p, json_t *chain_tasks, json_t *args, json_t *kwargs,
                            const char *root_id, json_t *link_error, const char *last_task_id,
                            const char *group_id, json_t *chord_body, int group_index,
                            json_t **tasks_out, cel_err_t *err) {
    json_t *steps = json_copy(chain_tasks);
    json_t *out = json_array();
    res_t *first_res = NULL, *prev_res = NULL;
    json_t *prev_task = NULL;
    int i = 0;
    size_t nres = 0; /* Python's len(results): results[0] is the chain's result */
    *tasks_out = NULL;
    if (!steps || !out) goto oom;
    while (json_array_size(steps) > 0) {
        size_t last = json_array_size(steps) - 1;
        json_t *t = json_incref(json_array_get(steps, last));
        json_array_remove(steps, last);
        int is_first = json_array_size(steps) == 0, is_last = i == 0;
        json_t *u = maybe_unroll(t);
        json_t *task = clone_sig(p, u, is_first ? args : NULL, is_first ? kwargs : NULL, NULL);
        json_decref(t);
        if (!task) goto oom;
        if (!strcmp(cel_plan_sig_type(task), "chain")) {
            json_t *sub = tasks_of(task);
            if (sub) json_array_extend(steps, sub);
            json_decref(task);
            continue;
        }
        if (!strcmp(cel_plan_sig_type(task), "group") && prev_task) {
            /* group(...) | s -> chord(group, s) */
            size_t n = json_array_size(out);
            json_t *body = json_incref(json_array_get(out, n - 1));
            json_array_remove(out, n - 1);
            json_t *ch =
                json_pack("{s:s, s:[], s:{s:{}, s:O, s:O}, s:{}, s:s, s:b}", "task", "celery.chord",
                          "args", "kwargs", "kwargs", "header", task, "body", body, "options",
                          "subtask_type", "chord", "immutable", 0);
            json_decref(body);
            json_decref(task);
            if (!ch) goto oom;
            if (--nres == 0) first_res = NULL; /* results.pop() */
            if (!prev_res->group)
                json_object_set_new(opts_of(ch), "task_id", json_string(prev_res->id));
            if (root_id) json_object_set_new(opts_of(ch), "root_id", json_string(root_id));
            mark_cloned(p, ch);
            task = ch;
            prev_task = body;
        }
        res_t *res = is_last ? freeze_sig(p, task, last_task_id, group_id, chord_body, root_id,
                                          NULL, group_index, err)
                             : freeze_sig(p, task, NULL, NULL, NULL, root_id, NULL, -1, err);
        if (!res) {
            json_decref(task);
            goto fail;
        }
        i++;
        if (prev_task && prev_res && !prev_res->parent) prev_res->parent = res;
        if (json_is_object(link_error) || json_is_array(link_error)) {
            json_t *l = json_is_array(link_error) ? link_error : NULL;
            size_t nl = l ? json_array_size(l) : 1;
            for (size_t k = 0; k < nl; k++) {
                json_t *eb = l ? json_array_get(l, k) : link_error;
                /* task.link_error(errback): a chord links its body */
                json_t *target = task;
                if (!strcmp(cel_plan_sig_type(task), "chord"))
                    target = json_object_get(json_object_get(task, "kwargs"), "body");
                json_t *lst = json_object_get(opts_of(target), "link_error");
                if (!json_is_array(lst)) {
                    json_t *nl2 = json_array();
                    if (lst && !json_is_null(lst)) json_array_append(nl2, lst);
                    json_object_set_new(opts_of(target), "link_error", nl2);
                    lst = nl2;
                }
                json_array_append(lst, eb);
            }
        }
        json_array_append_new(out, task);
        if (!first_res) first_res = res;
        nres++;
        prev_task = task;
        prev_res = res;
        if (!strcmp(cel_plan_sig_type(task), "chord")) {
            while (prev_res->parent) prev_res = prev_res->parent;
        }
    }
    json_decref(steps);
    *tasks_out = out;
    return first_res ? first_res : new_res(p, NULL, 0);
oom:
    cel_err_set(err, CEL_ENOMEM, "out of memory planning a chain");
fail:
    json_decref(steps);
    json_decref(out);
    return NULL;
}

/* _chain.run via apply_async: the chain's own options merged with the given
 * ones, the first task applied with the rest as its chain (extending a
 * chain the options already carry). */
static res_t *apply_chain(cel_plan_t *p, json_t *ch, json_t *args, json_t *kwargs, json_t *options,
                          cel_err_t *err) {
    json_t *o = json_deep_copy(opts_of(ch));
    json_t *tasks = NULL;
    res_t *result = NULL;
    if (!o) goto oom;
    if (json_is_object(options)) json_object_update(o, options);
    json_t *a = json_is_true(json_object_get(ch, "immutable")) || !json_array_size(args)
                    ? json_object_get(ch, "args")
                    : NULL;
    json_t *allargs = NULL;
    if (!a) {
        allargs = json_deep_copy(args);
        json_t *own = json_object_get(ch, "args");
        if (json_is_array(own)) json_array_extend(allargs, own);
        a = allargs;
    }
    const char *group_id = json_string_value(json_object_get(o, "group_id"));
    const char *task_id = json_string_value(json_object_get(o, "task_id"));
    const char *root_id = json_string_value(json_object_get(o, "root_id"));
    json_t *chord = json_object_get(o, "chord");
    json_t *gi = json_object_get(o, "group_index");
    json_t *none = tasks_of(ch) ? NULL : json_array();
    res_t *r = prepare_steps(p, none ? none : tasks_of(ch), a, kwargs, root_id,
                             json_object_get(o, "link_error"), task_id, group_id,
                             json_is_null(chord) ? NULL : chord,
                             json_is_integer(gi) ? (int)json_integer_value(gi) : -1, &tasks, err);
    json_decref(none);
    json_decref(allargs);
    if (!r) goto fail;
    size_t n = json_array_size(tasks);
    if (n == 0) {
        json_decref(o);
        json_decref(tasks);
        return r;
    }
    json_t *link = json_object_get(o, "link");
    if (link && !json_is_null(link)) {
        json_t *t0 = json_array_get(tasks, 0);
        json_t *lst = json_object_get(opts_of(t0), "link");
        if (!json_is_array(lst)) {
            json_t *l2 = json_array();
            if (lst && !json_is_null(lst)) json_array_append(l2, lst);
            json_object_set_new(opts_of(t0), "link", l2);
            lst = l2;
        }
        if (json_is_array(link)) json_array_extend(lst, link);
        else json_array_append(lst, link);
    }
    json_t *first = json_incref(json_array_get(tasks, n - 1));
    json_array_remove(tasks, n - 1);
    /* run()'s named parameters stay out of the options passed on */
    static const char *const named[] = { "group_id",   "chord",       "task_id",  "link",
                                         "link_error", "publisher",   "producer", "root_id",
                                         "parent_id",  "group_index", NULL };
    for (int k = 0; named[k]; k++) json_object_del(o, named[k]);
    json_t *have = json_object_get(o, "chain");
    if (!have) {
        json_object_set(o, "chain", tasks);
    } else if (json_is_array(have)) {
        json_t *c2 = json_copy(have);
        json_array_extend(c2, tasks);
        json_object_set_new(o, "chain", c2);
    }
    result = cel_plan_apply(p, first, NULL, NULL, o, 1, err) ? r : NULL;
    json_decref(first);
fail:
    json_decref(o);
    json_decref(tasks);
    return result;
oom:
    cel_err_set(err, CEL_ENOMEM, "out of memory planning a chain");
    json_decref(o);
    return NULL;
}

/* ---- chords ------------------------------------------------------------ */

/* The header of a chord as a group signature (a list or a single signature
 * becomes one, stored back). NULL for a chord without kwargs. Borrowed. */
static json_t *chord_header(json_t *ch) {
    json_t *kw = json_object_get(ch, "kwargs");
    if (!json_is_object(kw)) return NULL;
    json_t *h = json_object_get(kw, "header");
    if (json_is_object(h) && !strcmp(cel_plan_sig_type(h), "group")) return h;
    json_t *tasks = json_is_array(h) ? json_incref(h) : json_array();
    if (json_is_object(h)) json_array_append(tasks, h);
    json_t *g =
        json_pack("{s:s, s:[], s:{s:o}, s:{}, s:s, s:b}", "task", "celery.group", "args", "kwargs",
                  "tasks", tasks, "options", "subtask_type", "group", "immutable", 0);
    if (!g || json_object_set_new(kw, "header", g)) return NULL;
    return g;
}

/* _chord.freeze: header frozen with the body as its chord, body frozen with
 * the id given, its first parentless result's parent the header's; the
 * chord's own id becomes the header's. Returns the body's result. */
static res_t *freeze_chord(cel_plan_t *p, json_t *ch, const char *id, const char *group_id,
                           json_t *chord, const char *root_id, const char *parent_id,
                           int group_index, cel_err_t *err) {
    json_t *h = chord_header(ch);
    json_t *body = json_object_get(json_object_get(ch, "kwargs"), "body");
    if (!h || !json_is_object(body)) {
        cel_err_set(err, CEL_EINVAL, "a chord without a header or a body");
        return NULL;
    }
    res_t *hr = freeze_sig(p, h, NULL, NULL, body, root_id, parent_id, -1, err);
    if (!hr) return NULL;
    res_t *br = freeze_sig(p, body, id, group_id, chord, root_id, NULL, group_index, err);
    if (!br) return NULL;
    res_t *node = br;
    for (int guard = 0; node && guard < 1000; guard++, node = node->parent)
        if (!node->parent) {
            node->parent = hr;
            break;
        }
    const char *hid = opt_s(h, "task_id");
    if (hid) json_object_set_new(opts_of(ch), "task_id", json_string(hid));
    return br;
}

/* _chord.apply_async + run: the body cloned with the options (it carries
 * the rest of a chain), frozen; the header's members frozen with the body
 * and their index; the header applied as a group with args prepended. */
static res_t *apply_chord(cel_plan_t *p, json_t *ch, json_t *args, json_t *kwargs, json_t *options,
                          cel_err_t *err) {
    json_t *kw = json_object_get(ch, "kwargs");
    json_t *body0 = json_object_get(kw, "body");
    if (!json_is_object(body0)) {
        cel_err_set(err, CEL_EINVAL, "a chord without a body");
        return NULL;
    }
    json_t *pargs = json_is_true(json_object_get(ch, "immutable")) || !json_array_size(args)
                        ? json_incref(json_object_get(ch, "args"))
                        : json_deep_copy(args);
    if (!json_is_true(json_object_get(ch, "immutable")) && json_array_size(args) &&
        json_is_array(json_object_get(ch, "args")))
        json_array_extend(pargs, json_object_get(ch, "args"));
    json_t *body = clone_sig(p, body0, NULL, NULL, options);
    json_t *header = json_deep_copy(chord_header(ch));
    json_t *o = json_deep_copy(opts_of(ch));
    res_t *bodyres = NULL;
    if (!body || !header || !o) {
        cel_err_set(err, CEL_ENOMEM, "out of memory planning a chord");
        goto done;
    }
    if (json_is_object(options)) json_object_update(o, options);
    char task_id[64] = { 0 };
    if (json_string_value(json_object_get(o, "task_id")))
        snprintf(task_id, sizeof(task_id), "%s", json_string_value(json_object_get(o, "task_id")));
    json_object_del(o, "task_id");
    /* run() */
    char gid[64];
    if (opt_s(header, "task_id")) snprintf(gid, sizeof(gid), "%s", opt_s(header, "task_id"));
    else p->ctx->new_id(p->ctx->id_priv, gid);
    const char *root_id = opt_s(body, "root_id");
    char root[64] = { 0 };
    if (root_id) snprintf(root, sizeof(root), "%s", root_id);
    json_object_update(opts_of(body), o);
    bodyres = freeze_sig(p, body, task_id[0] ? task_id : NULL, NULL, NULL, root[0] ? root : NULL,
                         NULL, -1, err);
    if (!bodyres) goto done;
    json_object_del(o, "chain");
    json_object_del(o, "chord");
    res_t *hr = freeze_group(p, header, NULL, gid, body, root[0] ? root : NULL, NULL, -1, err);
    if (!hr) {
        bodyres = NULL;
        goto done;
    }
    if (json_array_size(tasks_of(header)) > 0) {
        json_object_set_new(o, "task_id", json_string(gid));
        if (!apply_group(p, header, pargs, NULL, o, err)) bodyres = NULL;
    } else {
        /* an empty header: the body at once, with no results */
        json_t *empty = json_pack("[[]]");
        if (!cel_plan_apply(p, body, empty, NULL, NULL, 1, err)) bodyres = NULL;
        json_decref(empty);
    }
    if (bodyres) bodyres->parent = hr;
done:
    json_decref(pargs);
    json_decref(body);
    json_decref(header);
    json_decref(o);
    (void)kwargs;
    return bodyres;
}

/* ---- any signature ----------------------------------------------------- */

static res_t *freeze_sig(cel_plan_t *p, json_t *sig, const char *id, const char *group_id,
                         json_t *chord, const char *root_id, const char *parent_id, int group_index,
                         cel_err_t *err) {
    if (++p->depth > CEL_PLAN_MAX_DEPTH) {
        p->depth--;
        cel_err_set(err, CEL_ELIMIT, "signatures nested deeper than %d", CEL_PLAN_MAX_DEPTH);
        return NULL;
    }
    const char *ty = cel_plan_sig_type(sig);
    res_t *r;
    if (!strcmp(ty, "group")) {
        r = freeze_group(p, sig, id, group_id, chord, root_id, parent_id, group_index, err);
    } else if (!strcmp(ty, "chain")) {
        json_t *tasks = NULL;
        json_t *own = tasks_of(sig);
        /* freeze() runs prepare_steps(clone=False): the chain's args go to the
         * first task, its kwargs (the task list) to none */
        json_t *none = own ? NULL : json_array();
        r = prepare_steps(p, none ? none : own, json_object_get(sig, "args"), NULL, root_id, NULL,
                          id, group_id, chord, group_index, &tasks, err);
        json_decref(none);
        if (r) {
            /* freeze(clone=False) leaves the frozen tasks in place, in order */
            json_t *ordered = json_array();
            for (size_t i = json_array_size(tasks); i-- > 0;)
                json_array_append(ordered, json_array_get(tasks, i));
            json_object_set_new(json_object_get(sig, "kwargs"), "tasks", ordered);
        }
        json_decref(tasks);
    } else if (!strcmp(ty, "chord")) {
        r = freeze_chord(p, sig, id, group_id, chord, root_id, parent_id, group_index, err);
    } else {
        r = freeze_task(p, sig, id, group_id, chord, root_id, parent_id, group_index);
        if (!r) cel_err_set(err, CEL_ENOMEM, "out of memory planning a canvas step");
    }
    p->depth--;
    return r;
}

/* sig.apply_async(args, kwargs, **options) for any kind of signature. */
res_t *cel_plan_apply(cel_plan_t *p, json_t *sig, json_t *args, json_t *kwargs, json_t *options,
                      int cloned, cel_err_t *err) {
    if (!json_is_object(sig)) {
        cel_err_set(err, CEL_EINVAL, "a signature must be a mapping");
        return NULL;
    }
    if (++p->depth > CEL_PLAN_MAX_DEPTH) {
        p->depth--;
        cel_err_set(err, CEL_ELIMIT, "signatures nested deeper than %d", CEL_PLAN_MAX_DEPTH);
        return NULL;
    }
    const char *ty = cel_plan_sig_type(sig);
    res_t *r = NULL;
    if (!strcmp(ty, "group")) {
        r = apply_group(p, sig, args, kwargs, options, err);
    } else if (!strcmp(ty, "chain")) {
        r = apply_chain(p, sig, args, kwargs, options, err);
    } else if (!strcmp(ty, "chord")) {
        r = apply_chord(p, sig, args, kwargs, options, err);
    } else {
        cel_msg_t *m;
        int add = !json_is_false(json_object_get(options, "add_to_parent"));
        if (cel_message_apply(sig, args, kwargs, options, cloned || is_cloned(p, sig), p->ctx, &m,
                              err) == CEL_OK) {
            cel_plan_act_t *a = cel_plan_add_act(p, CEL_PLAN_PUBLISH, err);
            if (!a) {
                cel_msg_free(m);
            } else {
                a->msg = m;
                r = new_res(p, m->id, 0);
                if (!r) cel_err_set(err, CEL_ENOMEM, "out of memory planning a canvas step");
                else if (add) json_array_append_new(p->children, as_tuple(r, 0));
            }
        }
    }
    p->depth--;
    return r;
}
