/* canvas_steps.c -- the worker's canvas steps: trace.py's, mark_as_failure's, the chord's end.
 *
 * What a finished task leads to, planned with canvas.c's signature
 * application: cel_plan_success (callbacks, then the next chain link),
 * cel_plan_after_store (the chord part; for a failure the later chain links'
 * FAILURE, their chord parts, the errbacks), cel_plan_chord_done (the body
 * with the results in header order, or ChordError when a part failed) and
 * cel_plan_chord_error. Matches celery/app/trace.py build_tracer,
 * backends/base.py mark_as_failure/_call_task_errbacks/chord_error_from_stack
 * and backends/redis.py on_chord_part_return. No I/O; main process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "canvas_internal.h"
#include "internal.h"

/* ---- the worker's steps ------------------------------------------------ */

/* Options trace.py passes: parent and root of the finished task, priority
 * None (task_inherit_parent_priority is off). */
static json_t *trace_options(const cel_task_t *t) {
    return json_pack("{s:s, s:s, s:n}", "parent_id", t->id, "root_id",
                     t->root_id && *t->root_id ? t->root_id : t->id, "priority");
}

int cel_plan_success(cel_plan_t *p, const cel_task_t *t, json_t *retval, cel_err_t *err) {
    json_t *embed = t->embed;
    json_t *cbs = json_object_get(embed, "callbacks");
    json_t *chain = json_object_get(embed, "chain");
    json_t *args = json_pack("[O]", retval ? retval : json_null());
    json_t *opts = trace_options(t);
    int rc = CEL_OK;
    if (!args || !opts) {
        rc = cel_err_set(err, CEL_ENOMEM, "out of memory planning callbacks");
        goto done;
    }
    if (json_is_array(cbs) && json_array_size(cbs) == 1) {
        json_t *s = json_deep_copy(json_array_get(cbs, 0));
        if (!cel_plan_apply(p, s, args, NULL, opts, 0, err)) rc = err ? err->code : CEL_EINVAL;
        json_decref(s);
    } else if (json_is_array(cbs) && json_array_size(cbs) > 1) {
        /* groups are applied on their own, the other signatures as one group */
        json_t *sigs = json_array();
        size_t i;
        json_t *s;
        json_array_foreach(cbs, i, s) {
            if (!strcmp(cel_plan_sig_type(s), "group")) {
                json_t *g = json_deep_copy(s);
                res_t *r = cel_plan_apply(p, g, args, NULL, opts, 0, err);
                json_decref(g);
                if (!r) {
                    rc = err ? err->code : CEL_EINVAL;
                    break;
                }
            } else {
                json_array_append(sigs, s);
            }
        }
        if (rc == CEL_OK && json_array_size(sigs)) {
            json_t *g = json_pack("{s:s, s:[], s:{s:O}, s:{}, s:s, s:b}", "task", "celery.group",
                                  "args", "kwargs", "tasks", sigs, "options", "subtask_type",
                                  "group", "immutable", 0);
            if (!cel_plan_apply(p, g, args, NULL, opts, 0, err)) rc = err ? err->code : CEL_EINVAL;
            json_decref(g);
        }
        json_decref(sigs);
    }
    if (rc == CEL_OK && json_is_array(chain) && json_array_size(chain) > 0) {
        /* the last element is the next task; the rest rides along */
        json_t *rest = json_copy(chain);
        size_t n = json_array_size(rest);
        json_t *next = json_deep_copy(json_array_get(rest, n - 1));
        json_array_remove(rest, n - 1);
        /* apply_async((retval,), chain=chain, parent_id=..., root_id=..., priority=...):
         * in that order, which a chain or chord body keeps in its options */
        json_t *copts = json_pack("{s:o}", "chain", rest);
        json_object_update(copts, opts);
        if (!cel_plan_apply(p, next, args, NULL, copts, 0, err)) rc = err ? err->code : CEL_EINVAL;
        json_decref(copts);
        json_decref(next);
    }
done:
    json_decref(args);
    json_decref(opts);
    return rc;
}

static const char *state_of(const char *s) { return s ? s : "FAILURE"; }

/* One CHORD_PART action for a request-like (id, group, index, chord). */
static int add_chord_part(cel_plan_t *p, const char *tid, const char *gid, int index, json_t *chord,
                          const char *root_id, const char *state, json_t *result, cel_err_t *err) {
    json_t *e = json_pack("[isso]", 1, tid, state, result ? json_incref(result) : json_null());
    char *text = e ? cel_json_dumps(e, err) : NULL;
    json_decref(e);
    if (!text) return err ? err->code : CEL_ENOMEM;
    cel_plan_act_t *a = cel_plan_add_act(p, CEL_PLAN_CHORD_PART, err);
    if (!a) {
        free(text);
        return err ? err->code : CEL_ENOMEM;
    }
    a->task_id = cel_plan_keep_str(p, tid);
    a->group_id = cel_plan_keep_str(p, gid);
    a->group_index = index;
    a->entry = cel_plan_keep_str(p, text);
    a->chord = cel_plan_keep_json(p, chord);
    a->root_id = cel_plan_keep_str(p, root_id);
    free(text);
    return CEL_OK;
}

/* _call_task_errbacks: the errbacks as one group applied with (id,). */
static int call_errbacks(cel_plan_t *p, json_t *errbacks, const char *id, const char *root_id,
                         cel_err_t *err) {
    if (!json_is_array(errbacks) || json_array_size(errbacks) == 0) return CEL_OK;
    json_t *g =
        json_pack("{s:s, s:[], s:{s:O}, s:{}, s:s, s:b}", "task", "celery.group", "args", "kwargs",
                  "tasks", errbacks, "options", "subtask_type", "group", "immutable", 0);
    json_t *args = json_pack("[s]", id);
    json_t *opts =
        json_pack("{s:s, s:s}", "parent_id", id, "root_id", root_id && *root_id ? root_id : id);
    int rc = CEL_OK;
    if (!g || !args || !opts) rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
    else if (!cel_plan_apply(p, g, args, NULL, opts, 0, err)) rc = err ? err->code : CEL_EINVAL;
    json_decref(g);
    json_decref(args);
    json_decref(opts);
    return rc;
}

/* A STORE action. ext NULL: no extended fields. */
static int add_store(cel_plan_t *p, const char *id, const char *reply_to, const char *state,
                     json_t *result, const char *traceback, const char *group_id,
                     const char *parent_id, const cel_meta_ext_t *ext, cel_err_t *err) {
    char *meta = cel_meta_encode_ext(id, state, result, traceback, NULL, p->ctx->now, group_id,
                                     parent_id, p->extended ? ext : NULL, err);
    if (!meta) return err ? err->code : CEL_ENOMEM;
    cel_plan_act_t *a = cel_plan_add_act(p, CEL_PLAN_STORE, err);
    if (!a) {
        free(meta);
        return err ? err->code : CEL_ENOMEM;
    }
    a->task_id = cel_plan_keep_str(p, id);
    a->reply_to = cel_plan_keep_str(p, reply_to);
    a->meta = cel_plan_keep_str(p, meta);
    free(meta);
    return CEL_OK;
}

int cel_plan_after_store(cel_plan_t *p, const cel_task_t *t, const char *state, json_t *result,
                         const char *traceback, cel_err_t *err) {
    state = state_of(state);
    json_t *chord = json_object_get(t->embed, "chord");
    int rc;
    if (json_is_object(chord) && t->group && *t->group &&
        (rc = add_chord_part(p, t->id, t->group, t->group_index, chord, t->root_id, state, result,
                             err)))
        return rc;
    if (strcmp(state, "FAILURE") != 0) return CEL_OK;
    /* mark_as_failure: every later chain link fails too */
    json_t *chain = json_object_get(t->embed, "chain");
    size_t i;
    json_t *el;
    json_array_foreach(chain, i, el) {
        json_t *o = json_object_get(el, "options");
        const char *id = json_string_value(json_object_get(o, "task_id"));
        if (id) {
            json_t *gi = json_object_get(o, "group_index");
            cel_meta_ext_t ext = { .name = json_string_value(json_object_get(el, "task")),
                                   .args = json_object_get(el, "args"),
                                   .kwargs = json_object_get(el, "kwargs"),
                                   .retries = -1 };
            (void)gi;
            if ((rc =
                     add_store(p, id, json_string_value(json_object_get(o, "reply_to")), state,
                               result, traceback, json_string_value(json_object_get(o, "group_id")),
                               json_string_value(json_object_get(o, "parent_id")), &ext, err)))
                return rc;
        }
        json_t *ech = json_object_get(o, "chord");
        if (json_object_get(o, "chord") && json_is_object(ech)) {
            json_t *gi = json_object_get(o, "group_index");
            const char *gid = json_string_value(json_object_get(o, "group_id"));
            if (gid && id &&
                (rc = add_chord_part(
                     p, id, gid, json_is_integer(gi) ? (int)json_integer_value(gi) : -1, ech,
                     json_string_value(json_object_get(o, "root_id")), state, result, err)))
                return rc;
        }
    }
    return call_errbacks(p, json_object_get(t->embed, "errbacks"), t->id, t->root_id, err);
}

/* maybe_list for an option: None -> NULL, a list as is, else a list of one.
 * New reference. */
static json_t *maybe_list_opt(json_t *v) {
    if (!v || json_is_null(v)) return NULL;
    if (json_is_array(v)) return json_incref(v);
    json_t *a = json_array();
    json_array_append(a, v);
    return a;
}

/* ChordError(why) for the body: its errbacks, then its FAILURE. */
static int chord_error(cel_plan_t *p, json_t *chord, const char *why, cel_err_t *err) {
    json_t *o = json_object_get(chord, "options");
    const char *id = json_string_value(json_object_get(o, "task_id"));
    json_t *ebs = maybe_list_opt(json_object_get(o, "link_error"));
    int rc = CEL_OK;
    if (id) rc = call_errbacks(p, ebs, id, NULL, err);
    json_decref(ebs);
    if (rc || !id) return rc;
    json_t *exc = cel_exc_new("ChordError", "celery.exceptions", json_pack("[s]", why));
    size_t n = strlen(why) + 200;
    char *tb = malloc(n);
    if (!exc || !tb) {
        json_decref(exc);
        free(tb);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    snprintf(tb, n,
             "Traceback (most recent call last):\n"
             "  File \"celeriac\", in on_chord_part_return\n"
             "celery.exceptions.ChordError: %s\n",
             why);
    rc = add_store(p, id, json_string_value(json_object_get(o, "reply_to")), "FAILURE", exc, tb,
                   NULL, NULL, NULL, err);
    json_decref(exc);
    free(tb);
    return rc;
}

int cel_plan_chord_error(cel_plan_t *p, json_t *chord, const char *why, cel_err_t *err) {
    return chord_error(p, chord, why, err);
}

int cel_plan_chord_done(cel_plan_t *p, json_t *chord, const char *group_id, json_t *entries,
                        cel_err_t *err) {
    json_t *resl = json_array();
    if (!resl) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    size_t i;
    json_t *e;
    json_array_foreach(entries, i, e) {
        const char *tid = json_string_value(json_array_get(e, 1));
        const char *state = json_string_value(json_array_get(e, 2));
        json_t *v = json_array_get(e, 3);
        if (!json_is_array(e) || json_array_size(e) < 4 || !tid || !state) {
            json_decref(resl);
            return chord_error(p, chord, "Join error: a chord result that is not Celery's", err);
        }
        /* _unpack_chord_result: a failed or revoked part fails the chord */
        if (!strcmp(state, "FAILURE") || !strcmp(state, "REVOKED")) {
            char *r = cel_exc_repr(v);
            size_t n = strlen(tid) + (r ? strlen(r) : 16) + 32;
            char *why = malloc(n);
            int rc;
            if (!why) rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
            else {
                snprintf(why, n, "Dependency %s raised %s", tid, r ? r : "Exception()");
                rc = chord_error(p, chord, why, err);
            }
            free(r);
            free(why);
            json_decref(resl);
            return rc;
        }
        json_array_append(resl, v ? v : json_null());
    }
    /* callback.delay(resl) */
    json_t *args = json_pack("[o]", resl);
    json_t *sig = json_deep_copy(chord);
    cel_err_t e2;
    size_t before = p->n;
    res_t *r = args && sig ? cel_plan_apply(p, sig, args, NULL, NULL, 0, &e2) : NULL;
    json_decref(args);
    json_decref(sig);
    (void)group_id;
    if (r) return CEL_OK;
    /* Callback error: what was planned for it goes, ChordError instead */
    for (size_t k = before; k < p->n; k++) cel_msg_free(p->acts[k].msg);
    p->n = before;
    char why[400];
    snprintf(why, sizeof(why), "Callback error: %s", args && sig ? e2.msg : "out of memory");
    return chord_error(p, chord, why, err);
}
