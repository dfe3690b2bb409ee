/* canvas_internal.h -- what canvas.c and canvas_steps.c share; not public.
 *
 * The plan's layout, its result objects (AsyncResult/GroupResult stand-ins
 * for the children tuples) and the helpers the steps use to add actions and
 * apply signatures. Pure; main process.
 */
#ifndef CEL_CANVAS_INTERNAL_H
#define CEL_CANVAS_INTERNAL_H

#include "canvas.h"

/* An AsyncResult (members == NULL) or a GroupResult. */
typedef struct res res_t;
struct res {
    char *id;
    res_t *parent;
    res_t **members;
    size_t nmembers;
    int group;
    res_t *next; /* the plan's list of every result, for freeing */
};

struct cel_plan {
    const cel_send_ctx_t *ctx;
    int extended;
    cel_plan_act_t *acts;
    size_t n, cap;
    json_t *children;
    json_t *keep;   /* json values the actions point into */
    json_t *cloned; /* signatures Python holds as clones (args are a tuple) */
    res_t *results;
    int depth;
};

/* Adds an action (NULL with err set past CEL_PLAN_MAX_ACTS or out of memory). */
cel_plan_act_t *cel_plan_add_act(cel_plan_t *p, cel_plan_kind_t kind, cel_err_t *err);

/* A string or value the plan keeps alive for its actions (NULL on failure). */
const char *cel_plan_keep_str(cel_plan_t *p, const char *s);
json_t *cel_plan_keep_json(cel_plan_t *p, json_t *v);

/* "chain", "group", "chord", or "" for a task signature. */
const char *cel_plan_sig_type(json_t *sig);

/* sig.apply_async(args, kwargs, **options) for any kind of signature (sig
 * borrowed, frozen in place); cloned: Python holds it as a clone. The result
 * object, or NULL with err set. */
struct res *cel_plan_apply(cel_plan_t *p, json_t *sig, json_t *args, json_t *kwargs,
                           json_t *options, int cloned, cel_err_t *err);

#endif
