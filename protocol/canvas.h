/* canvas.h -- what a worker sends and stores to move a Celery canvas forward, as a plan.
 *
 * Pure: given a finished task (its decoded message, state and result) this
 * computes the actions the 5.2 Python worker takes -- celery/app/trace.py's
 * callbacks and next chain link on success, backends/base.py mark_as_failure's
 * chain propagation and errbacks on failure, the chord part to count, and
 * backends/redis.py on_chord_part_return's callback (or ChordError) once the
 * last part is in -- without doing any of them. Signatures of any kind are
 * applied as celery/canvas.py does: task signatures through message.c,
 * groups (ids frozen, nested groups unrolled, the chord size before the last
 * member), chains (prepare_steps: reversed, args to the first task, nested
 * chains spliced, group + task upgraded to a chord) and chords (header frozen
 * with the body, the body carrying the rest). The worker runs the actions in
 * order (worker/canvas.c). Ids, time and node names come from the
 * cel_send_ctx_t. Main process; no I/O.
 */
#ifndef CEL_CANVAS_H
#define CEL_CANVAS_H

#include <jansson.h>

#include "message.h"
#include "protocol.h"

#define CEL_PLAN_MAX_ACTS  100000 /* actions one step may take (a group of 100k...) */
#define CEL_PLAN_MAX_DEPTH 32     /* signatures nested in signatures */

typedef enum cel_plan_kind {
    CEL_PLAN_PUBLISH = 1, /* send msg */
    CEL_PLAN_CHORD_SIZE,  /* the backend records group_id's chord size (.s) */
    CEL_PLAN_STORE,       /* the backend stores meta for task_id (reply_to for rpc) */
    CEL_PLAN_CHORD_PART,  /* count task_id's result in group_id's chord; when it is the
                           * last, the caller plans cel_plan_chord_done */
} cel_plan_kind_t;

/* One action. Everything is owned by the plan. */
typedef struct cel_plan_act {
    cel_plan_kind_t kind;
    cel_msg_t *msg;       /* PUBLISH */
    const char *group_id; /* CHORD_SIZE, CHORD_PART */
    long size;            /* CHORD_SIZE */
    const char *task_id;  /* STORE, CHORD_PART */
    const char *reply_to; /* STORE: where an rpc backend sends it (may be NULL) */
    const char *meta;     /* STORE: the result meta */
    int group_index;      /* CHORD_PART: position in the header, -1 when none */
    const char *entry;    /* CHORD_PART: the [1, id, state, result] text Celery stores */
    json_t *chord;        /* CHORD_PART: the body signature to call when complete */
    const char *root_id;  /* CHORD_PART: root id of the part (the body's parent chain) */
} cel_plan_act_t;

typedef struct cel_plan cel_plan_t;

/* A new empty plan. ctx is borrowed for the plan's life; its parent_id and
 * parent_root_id (the task that finished) are send_task's defaults.
 * extended: metas the plan stores carry the extended fields. NULL when out
 * of memory. */
cel_plan_t *cel_plan_new(const cel_send_ctx_t *ctx, int extended);
void cel_plan_free(cel_plan_t *p);

size_t cel_plan_count(const cel_plan_t *p);
const cel_plan_act_t *cel_plan_get(const cel_plan_t *p, size_t i);

/* The result tuples the finished task gained as children (what Celery's
 * meta lists under "children"): [] when none. Borrowed. */
json_t *cel_plan_children(const cel_plan_t *p);

/* trace.py, after a task of t returned retval (borrowed): its callbacks
 * (one: applied with (retval,); several: groups apart, the rest as one group)
 * then the next link of its chain with the rest. Before the result is
 * stored, so they are its children. CEL_OK (possibly nothing to do), or an
 * error with err set (a signature that cannot be sent): the plan then holds
 * what was planned before it. */
int cel_plan_success(cel_plan_t *p, const cel_task_t *t, json_t *retval, cel_err_t *err);

/* After t's result of state (SUCCESS, FAILURE, REVOKED, ...) was stored:
 * its chord part when t belongs to a chord; for FAILURE also
 * mark_as_failure's rest: the FAILURE stored for every later chain link
 * (and their chord parts), then the errbacks as a group applied with
 * (t->id,). result is the return value or the exception dict; traceback may
 * be NULL. Same returns. */
int cel_plan_after_store(cel_plan_t *p, const cel_task_t *t, const char *state, json_t *result,
                         const char *traceback, cel_err_t *err);

/* A chord's last part is in: entries are the stored [1, id, state, result]
 * arrays in header order (decoded; borrowed). Plans the body applied with
 * [results] -- or, when a part failed, ChordError: the body's errbacks
 * applied with (body id,) and its FAILURE stored (chord_error_from_stack).
 * The finishing part is the context's parent. Same returns. */
int cel_plan_chord_done(cel_plan_t *p, json_t *chord, const char *group_id, json_t *entries,
                        cel_err_t *err);

/* The FAILURE with ChordError(why) stored for the body and its errbacks
 * applied: for a chord that cannot complete (its backend cannot count
 * parts, as Celery's rpc backend). */
int cel_plan_chord_error(cel_plan_t *p, json_t *chord, const char *why, cel_err_t *err);

#endif
