/* canvas.c -- runs the canvas steps of finished tasks: publishes, stores, chord counts.
 *
 * One job per hook call (canvas.h). A job runs its plans' actions in order:
 * publishes and stores are pipelined; a chord size or a chord part waits for
 * everything before it to finish, and everything after it waits for it
 * (Celery records a chord's size before it sends the last member, and a
 * chord part's answer may add the body's plan). An action that fails is
 * retried -- only that one, never twice sent when it succeeded -- every
 * RETRY_MS..RETRY_MAX_MS while the worker runs. The sender context is this
 * worker's: origin gen<pid>@<host> (Celery's anon_nodename), a reply_to oid
 * made at start (app.thread_oid), fresh ids from cel_events_uuid. Main
 * process, libuv loop; never blocks.
 */
#include "canvas.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "../common/log.h"
#include "../protocol/canvas.h"
#include "../protocol/peek.h"
#include "../protocol/tasks.h"
#include "events.h"

#define RETRY_MS     200
#define RETRY_MAX_MS 5000

enum { A_TODO, A_FLIGHT, A_DONE, A_FAILED };

typedef struct job job_t;

/* One action in flight: what its callback needs. */
typedef struct flight {
    job_t *job;
    size_t plan, act;
    cel_task_t *task; /* STORE: the task the store addresses */
} flight_t;

struct job {
    cel_canvas_t *cv;
    job_t *prev, *next;
    cel_send_ctx_t ctx;
    char *parent_id, *parent_root_id;
    cel_plan_t **plans;
    unsigned char **state; /* per plan, per action */
    size_t nplans, cap;
    size_t cur_plan, next_act; /* where issuing goes on */
    int inflight;
    int waiting;   /* a barrier action is in flight: issue nothing more */
    int failed;    /* this round had a failure */
    int retry_due; /* waiting for the retry timer */
    int pumping;   /* inside pump: replies that come at once only mark their action */
    unsigned retries;
    cel_canvas_done_fn done;
    void *priv;
};

struct cel_canvas {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_broker_t *broker;
    cel_backend_t *backend;
    char oid[37];
    char origin[300];
    job_t *jobs;
    int njobs;
    uv_timer_t retry;
    int closing;
    int timer_closed;
    void (*on_closed)(void *);
    void *closed_priv;
};

static double now_unix(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static void new_id(void *priv, char out[37]) { cel_events_uuid(out); }

cel_canvas_t *cel_canvas_new(uv_loop_t *loop, const cel_options_t *cfg, cel_broker_t *broker,
                             cel_backend_t *backend) {
    cel_canvas_t *cv = calloc(1, sizeof(*cv));
    if (!cv) return NULL;
    cv->loop = loop;
    cv->cfg = cfg;
    cv->broker = broker;
    cv->backend = backend;
    cel_events_uuid(cv->oid);
    char host[256];
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    snprintf(cv->origin, sizeof(cv->origin), "gen%d@%s", (int)getpid(), host);
    uv_timer_init(loop, &cv->retry);
    cv->retry.data = cv;
    return cv;
}

int cel_canvas_pending(const cel_canvas_t *cv) { return cv->njobs; }

static void maybe_free_canvas(cel_canvas_t *cv) {
    if (!cv->closing || !cv->timer_closed || cv->njobs > 0) return;
    void (*cb)(void *) = cv->on_closed;
    void *p = cv->closed_priv;
    free(cv);
    if (cb) cb(p);
}

/* ---- jobs ------------------------------------------------------------- */

static job_t *job_new(cel_canvas_t *cv, const cel_task_t *t, cel_canvas_done_fn done, void *priv) {
    job_t *j = calloc(1, sizeof(*j));
    if (!j) return NULL;
    j->cv = cv;
    j->done = done;
    j->priv = priv;
    j->parent_id = strdup(t->id);
    j->parent_root_id = t->root_id ? strdup(t->root_id) : NULL;
    if (!j->parent_id || (t->root_id && !j->parent_root_id)) {
        free(j->parent_id);
        free(j->parent_root_id);
        free(j);
        return NULL;
    }
    j->ctx = (cel_send_ctx_t){ .now = now_unix(),
                               .origin = cv->origin,
                               .reply_to = cv->oid,
                               .default_queue = "celery",
                               .parent_id = j->parent_id,
                               .parent_root_id = j->parent_root_id,
                               .compression = cv->cfg->result_compression,
                               .new_id = new_id,
                               .id_priv = NULL };
    return j;
}

static cel_plan_t *job_plan(job_t *j) {
    if (j->nplans == j->cap) {
        size_t cap = j->cap ? j->cap * 2 : 2;
        cel_plan_t **p = realloc(j->plans, cap * sizeof(*p));
        unsigned char **s = p ? realloc(j->state, cap * sizeof(*s)) : NULL;
        if (p) j->plans = p;
        if (s) j->state = s;
        if (!p || !s) return NULL;
        j->cap = cap;
    }
    cel_plan_t *p = cel_plan_new(&j->ctx, j->cv->cfg->result_extended);
    if (!p) return NULL;
    j->plans[j->nplans] = p;
    j->state[j->nplans] = NULL;
    j->nplans++;
    return p;
}

/* Fixes the action states of the last plan once it is complete. */
static int job_seal(job_t *j) {
    size_t k = j->nplans - 1;
    size_t n = cel_plan_count(j->plans[k]);
    j->state[k] = calloc(n ? n : 1, 1);
    return j->state[k] ? CEL_OK : CEL_ENOMEM;
}

static void job_free(job_t *j) {
    for (size_t i = 0; i < j->nplans; i++) {
        cel_plan_free(j->plans[i]);
        free(j->state[i]);
    }
    free(j->plans);
    free(j->state);
    free(j->parent_id);
    free(j->parent_root_id);
    free(j);
}

static void job_link(cel_canvas_t *cv, job_t *j) {
    j->next = cv->jobs;
    if (cv->jobs) cv->jobs->prev = j;
    cv->jobs = j;
    cv->njobs++;
}

static void job_finish(job_t *j, int ok) {
    cel_canvas_t *cv = j->cv;
    if (j->prev) j->prev->next = j->next;
    else cv->jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    cv->njobs--;
    json_t *children = j->nplans ? cel_plan_children(j->plans[0]) : NULL;
    json_t *none = children ? NULL : json_array();
    if (j->done) j->done(j->priv, ok, children ? children : none);
    json_decref(none);
    job_free(j);
    maybe_free_canvas(cv);
}

static void pump(job_t *j);
static void schedule_retry(cel_canvas_t *cv);

/* An action's reply: mark it, and go on when nothing is in flight. */
static void settle(flight_t *f, int ok) {
    job_t *j = f->job;
    j->state[f->plan][f->act] = ok ? A_DONE : A_FAILED;
    if (!ok) j->failed = 1;
    j->inflight--;
    cel_task_free(f->task);
    free(f);
    if (j->waiting && j->inflight == 0) j->waiting = 0;
    if (!j->pumping) pump(j);
}

static void on_published(void *priv, int ok) { settle(priv, ok); }
static void on_stored(void *priv, int ok) { settle(priv, ok); }

/* A chord part was counted; when it completed the chord, plan the body. */
static void on_chord_part(void *priv, int ok, size_t n, const char *const *entries,
                          const size_t *lens) {
    flight_t *f = priv;
    job_t *j = f->job;
    const cel_plan_act_t *a = cel_plan_get(j->plans[f->plan], f->act);
    if (ok && n > 0) {
        json_t *arr = json_array();
        int bad = !arr;
        for (size_t i = 0; i < n && !bad; i++) {
            json_t *e = json_loadb(entries[i], lens[i], 0, NULL);
            if (!e) {
                /* not JSON jansson reads (e.g. a NaN a Python part returned) */
                e = json_pack("[isss]", 1, "?", "FAILURE", "undecodable chord result");
            }
            bad = json_array_append_new(arr, e) != 0;
        }
        cel_plan_t *p = bad ? NULL : job_plan(j);
        cel_err_t err;
        if (!p || cel_plan_chord_done(p, a->chord, a->group_id, arr, &err) != CEL_OK ||
            job_seal(j) != CEL_OK) {
            cel_error("Chord %s could not call its body: %s", a->group_id,
                      p ? err.msg : "out of memory");
        } else {
            cel_debug("Chord %s complete: %zu part(s)", a->group_id, n);
        }
        json_decref(arr);
    }
    settle(f, ok);
}

/* Starts one action. Barrier actions set j->waiting. */
static void issue(job_t *j, size_t pi, size_t ai) {
    cel_canvas_t *cv = j->cv;
    const cel_plan_act_t *a = cel_plan_get(j->plans[pi], ai);
    flight_t *f = calloc(1, sizeof(*f));
    if (!f) {
        j->state[pi][ai] = A_FAILED;
        j->failed = 1;
        return;
    }
    f->job = j;
    f->plan = pi;
    f->act = ai;
    j->state[pi][ai] = A_FLIGHT;
    j->inflight++;
    switch (a->kind) {
    case CEL_PLAN_PUBLISH: {
        const cel_msg_t *m = a->msg;
        cel_broker_out_t out = { .exchange = m->exchange,
                                 .exchange_type = m->exchange_type,
                                 .routing_key = m->routing_key,
                                 .headers = m->headers,
                                 .content_type = m->content_type,
                                 .content_encoding = m->content_encoding,
                                 .body = m->body,
                                 .body_len = m->body_len,
                                 .correlation_id = m->id,
                                 .reply_to = m->reply_to,
                                 .extra = m->extra,
                                 .expiration = m->expiration,
                                 .priority = m->priority,
                                 .persistent = m->persistent };
        if (j->retries == 0) cel_debug("Sending %s[%s] (parent %s)", m->name, m->id, j->parent_id);
        cel_broker_publish(cv->broker, &out, on_published, f);
        return;
    }
    case CEL_PLAN_STORE: {
        cel_peek_t pk;
        memset(&pk, 0, sizeof(pk));
        if (strlen(a->task_id) > CEL_PEEK_STR_MAX) {
            cel_error("canvas: task id too long to store a result for: %.80s...", a->task_id);
            settle(f, 1); /* nothing can be done for it: do not retry forever */
            return;
        }
        snprintf(pk.id, sizeof(pk.id), "%s", a->task_id);
        snprintf(pk.correlation_id, sizeof(pk.correlation_id), "%s", a->task_id);
        if (a->reply_to) snprintf(pk.reply_to, sizeof(pk.reply_to), "%s", a->reply_to);
        if (cel_task_from_peek(&pk, &f->task, NULL) != CEL_OK) {
            settle(f, 0);
            return;
        }
        cel_backend_store(cv->backend, f->task, a->meta, strlen(a->meta), on_stored, f);
        return;
    }
    case CEL_PLAN_CHORD_SIZE:
        j->waiting = 1;
        cel_backend_chord_size(cv->backend, a->group_id, a->size, on_stored, f);
        return;
    case CEL_PLAN_CHORD_PART:
        j->waiting = 1;
        if (!cel_backend_chords(cv->backend)) {
            /* Celery's rpc backend cannot count parts either (its chords
             * never call the body); say so once, on the first part */
            if (a->group_index <= 0) {
                cel_plan_t *p = job_plan(j);
                char why[200];
                snprintf(why, sizeof(why),
                         "the %s result backend does not support chords: the body of chord %.60s "
                         "is never called",
                         cel_backend_ops(cv->backend)->scheme, a->group_id);
                cel_error("Chord %s: %s", a->group_id, why);
                if (!p || cel_plan_chord_error(p, a->chord, why, NULL) != CEL_OK ||
                    job_seal(j) != CEL_OK)
                    cel_error("Chord %s: could not fail its body", a->group_id);
            }
            settle(f, 1);
            return;
        }
        cel_backend_chord_part(cv->backend, a->group_id, a->group_index, a->entry, strlen(a->entry),
                               on_chord_part, f);
        return;
    }
}

/* Issues what may go now; finishes the job, or schedules a retry round. */
static void pump(job_t *j) {
    cel_canvas_t *cv = j->cv;
    if (cv->closing && !j->waiting && j->inflight == 0) {
        job_finish(j, 0);
        return;
    }
    j->pumping = 1;
    while (!j->waiting && !cv->closing && j->cur_plan < j->nplans) {
        cel_plan_t *p = j->plans[j->cur_plan];
        size_t n = cel_plan_count(p);
        if (j->next_act >= n) {
            j->cur_plan++;
            j->next_act = 0;
            continue;
        }
        const cel_plan_act_t *a = cel_plan_get(p, j->next_act);
        int barrier = a->kind == CEL_PLAN_CHORD_SIZE || a->kind == CEL_PLAN_CHORD_PART;
        if (j->state[j->cur_plan][j->next_act] == A_DONE) {
            j->next_act++;
            continue;
        }
        if (barrier && j->inflight > 0) {
            j->waiting = 1; /* everything before it first */
            break;
        }
        size_t pi = j->cur_plan, ai = j->next_act++;
        issue(j, pi, ai); /* its reply may come at once (settle, not pumping again) */
    }
    j->pumping = 0;
    if (cv->closing && !j->waiting && j->inflight == 0) {
        job_finish(j, 0);
        return;
    }
    if (j->inflight > 0 || j->waiting) return;
    if (j->cur_plan < j->nplans) return; /* closing: handled above */
    if (!j->failed) {
        if (j->retries) cel_info("canvas: the steps after %s went through", j->parent_id);
        job_finish(j, 1);
        return;
    }
    /* a round with failures: run the failed actions again later */
    if (j->retries == 0)
        cel_error("canvas: could not send or store everything %s led to; retrying", j->parent_id);
    j->failed = 0;
    j->retries++;
    j->retry_due = 1;
    for (size_t k = 0; k < j->nplans; k++)
        for (size_t i = 0; i < cel_plan_count(j->plans[k]); i++)
            if (j->state[k][i] == A_FAILED) j->state[k][i] = A_TODO;
    schedule_retry(cv);
}

static void on_retry(uv_timer_t *t) {
    cel_canvas_t *cv = t->data;
    job_t *due[64];
    int n = 0;
    for (job_t *j = cv->jobs; j && n < 64; j = j->next)
        if (j->retry_due) due[n++] = j;
    for (int i = 0; i < n; i++) {
        due[i]->retry_due = 0;
        due[i]->cur_plan = 0;
        due[i]->next_act = 0;
        pump(due[i]); /* may finish (and free) it */
    }
    for (job_t *j = cv->jobs; j; j = j->next)
        if (j->retry_due) {
            schedule_retry(cv);
            break;
        }
}

static void schedule_retry(cel_canvas_t *cv) {
    if (cv->closing || uv_is_active((uv_handle_t *)&cv->retry)) return;
    unsigned max = 0;
    for (job_t *j = cv->jobs; j; j = j->next)
        if (j->retry_due && j->retries > max) max = j->retries;
    uint64_t ms = RETRY_MS;
    for (unsigned i = 1; i < max && ms < RETRY_MAX_MS; i++) ms *= 2;
    uv_timer_start(&cv->retry, on_retry, ms > RETRY_MAX_MS ? RETRY_MAX_MS : ms, 0);
}

/* Starts a job whose first plan was filled by plan_fn; 0 when it is empty. */
static int start(cel_canvas_t *cv, job_t *j) {
    if (job_seal(j) != CEL_OK) {
        job_free(j);
        return -1;
    }
    if (cel_plan_count(j->plans[0]) == 0 && json_array_size(cel_plan_children(j->plans[0])) == 0) {
        job_free(j);
        return 0;
    }
    job_link(cv, j);
    pump(j);
    return 1;
}

/* Whether a finished task of this name had its canvas read: an unknown
 * name is answered as Celery's on_unknown_task does, without one. */
static int has_canvas(const cel_task_t *t) {
    return json_is_object(t->embed) && cel_tasks_known(t->name);
}

int cel_canvas_before_store(cel_canvas_t *cv, const cel_task_t *t, const char *state,
                            json_t *result, cel_canvas_done_fn done, void *priv) {
    if (!cv || cv->closing || strcmp(state, "SUCCESS") != 0 || !has_canvas(t)) return 0;
    json_t *cbs = json_object_get(t->embed, "callbacks");
    json_t *chain = json_object_get(t->embed, "chain");
    if (!json_array_size(cbs) && !json_array_size(chain)) return 0;
    job_t *j = job_new(cv, t, done, priv);
    cel_plan_t *p = j ? job_plan(j) : NULL;
    cel_err_t err;
    if (!p) {
        if (j) job_free(j);
        cel_error("Task %s[%s]: out of memory sending its callbacks", t->name, t->id);
        return 0;
    }
    if (cel_plan_success(p, t, result, &err) != CEL_OK)
        /* what was planned before the bad signature still goes, as in Python
         * (which stops at the exception) */
        cel_error("Task %s[%s]: cannot send its callbacks or chain: %s", t->name, t->id, err.msg);
    int rc = start(cv, j);
    if (rc < 0) cel_error("Task %s[%s]: out of memory sending its callbacks", t->name, t->id);
    return rc > 0;
}

int cel_canvas_after_store_needed(const cel_canvas_t *cv, const cel_task_t *t, const char *state) {
    if (!cv || cv->closing || !has_canvas(t)) return 0;
    if (json_is_object(json_object_get(t->embed, "chord")) && t->group && *t->group) return 1;
    if (strcmp(state, "FAILURE") != 0) return 0;
    return json_array_size(json_object_get(t->embed, "chain")) > 0 ||
           json_array_size(json_object_get(t->embed, "errbacks")) > 0;
}

int cel_canvas_after_store(cel_canvas_t *cv, const cel_task_t *t, const char *state, json_t *result,
                           const char *traceback, cel_canvas_done_fn done, void *priv) {
    if (!cel_canvas_after_store_needed(cv, t, state)) return 0;
    job_t *j = job_new(cv, t, done, priv);
    cel_plan_t *p = j ? job_plan(j) : NULL;
    cel_err_t err;
    if (!p) {
        if (j) job_free(j);
        cel_error("Task %s[%s]: out of memory moving its canvas on", t->name, t->id);
        return 0;
    }
    if (cel_plan_after_store(p, t, state, result, traceback, &err) != CEL_OK)
        cel_error("Task %s[%s]: cannot move its canvas on: %s", t->name, t->id, err.msg);
    int rc = start(cv, j);
    if (rc < 0) cel_error("Task %s[%s]: out of memory moving its canvas on", t->name, t->id);
    return rc > 0;
}

char *cel_canvas_meta(const cel_canvas_t *cv, const cel_task_t *t, const char *state,
                      json_t *result, const char *traceback, json_t *children, double date_done,
                      cel_err_t *err) {
    cel_meta_ext_t ext = { .name = t->name,
                           .args = t->args,
                           .kwargs = t->kwargs,
                           .worker = cv ? cv->cfg->hostname : NULL,
                           .retries = t->retries,
                           .queue = t->routing_key };
    return cel_meta_encode_ext(t->id, state, result, traceback, children, date_done, t->group,
                               t->parent_id, cv && cv->cfg->result_extended ? &ext : NULL, err);
}

static void on_timer_closed(uv_handle_t *h) {
    cel_canvas_t *cv = h->data;
    cv->timer_closed = 1;
    maybe_free_canvas(cv);
}

void cel_canvas_close(cel_canvas_t *cv, void (*on_closed)(void *), void *priv) {
    cv->closing = 1;
    cv->on_closed = on_closed;
    cv->closed_priv = priv;
    uv_timer_stop(&cv->retry);
    uv_close((uv_handle_t *)&cv->retry, on_timer_closed);
    /* jobs with nothing in flight end now; the others when their replies come */
    job_t *j = cv->jobs, *next;
    for (; j; j = next) {
        next = j->next;
        if (j->inflight == 0) job_finish(j, 0);
    }
}
