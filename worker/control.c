/* control.c -- the inspect/control command handlers (celery/worker/control.py).
 *
 * Each handler builds its reply value from the consumer's live state and
 * returns at once; none waits for an executor or the network. Replies keep
 * the stock worker's field names, types and texts (captured in
 * ../shared/celery-wire/pidbox-redis-decoded.txt), so `celery inspect`,
 * `celery control` and Flower read them unchanged. Main process, libuv loop.
 */
#include "control.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/utsname.h>

#include "../common/log.h"
#include "pidbox.h"
#include "../protocol/tasks.h"

#define REVOKE_IDS_MAX 10000 /* ids in one revoke request */
#define QUERY_IDS_MAX  10000 /* ids in one query_task request */

struct cel_control {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_consumer_t *c;
    cel_events_t *ev;
    cel_revoked_t *rv;
    cel_limits_t *limits;
    cel_pidbox_t *pidbox;
};

/* {"ok": fmt with arg}: any length (ids and queue names come from clients). */
static json_t *ok(const char *fmt, const char *arg) {
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
    json_t *text = json_sprintf(fmt, arg ? arg : "");
#pragma GCC diagnostic pop
    return text ? json_pack("{s:o}", "ok", text) : NULL;
}

static json_t *nok(const char *msg) { return json_pack("{s:s}", "error", msg); }

/* The reply of a handler that raised: {"error": repr(exc)}. */
static json_t *raised(const char *type, const char *msg) {
    char buf[600];
    snprintf(buf, sizeof(buf), "%s('%.500s')", type, msg);
    return nok(buf);
}

/* ---- requests --------------------------------------------------------- */

/* Request.info(): the dict active/reserved/scheduled/query_task show. */
static json_t *request_info(const cel_control_t *ctl, const cel_consumer_req_t *r) {
    const cel_task_t *t = r->task;
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(t->id));
    json_object_set_new(o, "name", json_string(t->name));
    json_object_set(o, "args", t->args ? t->args : json_array());
    json_object_set(o, "kwargs", t->kwargs ? t->kwargs : json_object());
    json_object_set_new(o, "type", json_string(t->name));
    json_object_set_new(o, "hostname", json_string(ctl->cfg->hostname));
    json_object_set_new(o, "time_start",
                        r->time_start > 0 ? json_real(r->time_start) : json_null());
    /* Celery acks when a task starts; celeriac only once its result is stored. */
    json_object_set_new(o, "acknowledged", json_false());
    json_object_set_new(o, "delivery_info",
                        json_pack("{s:s, s:s, s:i, s:o}", "exchange",
                                  t->exchange ? t->exchange : "", "routing_key",
                                  t->routing_key ? t->routing_key : "", "priority", t->priority,
                                  "redelivered", t->redelivered ? json_true() : json_null()));
    json_object_set_new(o, "worker_pid", r->pid ? json_integer(r->pid) : json_null());
    return o;
}

typedef struct collect {
    const cel_control_t *ctl;
    int kind;
    json_t *out;
    json_t *ids; /* query_task: id -> true */
} collect_t;

static void on_request(void *priv, const cel_consumer_req_t *r) {
    collect_t *cl = priv;
    if (cl->ids) {
        if (!json_object_get(cl->ids, r->task->id)) return;
        json_object_set_new(cl->out, r->task->id,
                            json_pack("[s, o]", r->kind == CEL_REQ_ACTIVE ? "active" : "reserved",
                                      request_info(cl->ctl, r)));
        return;
    }
    if (r->kind != cl->kind) return;
    if (r->kind == CEL_REQ_SCHEDULED) {
        char eta[48];
        cel_time_format_iso8601_utc(r->task->eta, eta, sizeof(eta));
        json_array_append_new(cl->out, json_pack("{s:s, s:i, s:o}", "eta", eta, "priority", 6,
                                                 "request", request_info(cl->ctl, r)));
    } else {
        json_array_append_new(cl->out, request_info(cl->ctl, r));
    }
}

static json_t *list_requests(cel_control_t *ctl, int kind) {
    collect_t cl = { ctl, kind, json_array(), NULL };
    cel_consumer_each_request(ctl->c, on_request, &cl);
    return cl.out;
}

static json_t *query_task(cel_control_t *ctl, json_t *args) {
    json_t *ids = json_object_get(args, "ids");
    collect_t cl = { ctl, 0, json_object(), json_object() };
    if (json_is_string(ids)) {
        json_object_set_new(cl.ids, json_string_value(ids), json_true());
    } else {
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v) {
            if (i >= QUERY_IDS_MAX) break;
            if (json_is_string(v)) json_object_set_new(cl.ids, json_string_value(v), json_true());
        }
    }
    cel_consumer_each_request(ctl->c, on_request, &cl);
    json_decref(cl.ids);
    return cl.out;
}

/* ---- settings --------------------------------------------------------- */

/* A URL with its password masked, as celery's maybe_sanitize_url. */
static void safe_url(const char *url, char *out, size_t size) {
    cel_options_safe_url(url, out, size);
}

static json_t *conf(cel_control_t *ctl) {
    const cel_options_t *cfg = ctl->cfg;
    char b[1100], r[1100];
    safe_url(cfg->broker_url, b, sizeof(b));
    safe_url(cfg->backend_url, r, sizeof(r));
    json_t *o =
        json_pack("{s:s, s:s, s:i, s:i, s:f, s:{s:f}, s:b}", "broker_url", b, "result_backend", r,
                  "worker_concurrency", cfg->concurrency, "worker_prefetch_multiplier",
                  cfg->prefetch_multiplier, "result_expires", cfg->result_expires,
                  "broker_transport_options", "visibility_timeout", cfg->visibility_timeout,
                  "worker_send_task_events", cel_events_task_events(ctl->ev));
    if (cfg->time_limit > 0) json_object_set_new(o, "task_time_limit", json_real(cfg->time_limit));
    if (cfg->soft_time_limit > 0)
        json_object_set_new(o, "task_soft_time_limit", json_real(cfg->soft_time_limit));
    if (cfg->max_tasks_per_child)
        json_object_set_new(o, "worker_max_tasks_per_child",
                            json_integer(cfg->max_tasks_per_child));
    json_object_set_new(o, "task_queues", cel_consumer_queues(ctl->c));
    return o;
}

static json_t *report(cel_control_t *ctl) {
    struct utsname u;
    if (uname(&u) != 0) memset(&u, 0, sizeof(u));
    json_t *cf = conf(ctl);
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        json_decref(cf);
        return nok("out of memory");
    }
    char r[1100];
    safe_url(ctl->cfg->backend_url, r, sizeof(r));
    fprintf(f,
            "\nsoftware -> celeriac:%s (C) protocol:2\nplatform -> system:%s arch:%s\n"
            "            kernel version:%s\nsettings -> transport:%s results:%s\n\n",
            cel_events_version(), u.sysname, u.machine, u.release,
            ctl->cfg->broker_amqp ? "amqp" : "redis", r);
    const char *k;
    json_t *v;
    json_object_foreach(cf, k, v) {
        char *rep = cel_repr(v, 0, 400);
        fprintf(f, "%s: %s\n", k, rep ? rep : "?");
        free(rep);
    }
    fclose(f);
    json_decref(cf);
    json_t *o = json_pack("{s:s}", "ok", text ? text : "");
    free(text);
    return o;
}

static json_t *registered(cel_control_t *ctl, json_t *args) {
    json_t *items = json_object_get(args, "taskinfoitems");
    int want_rate = !json_is_array(items) || json_array_size(items) == 0;
    size_t i;
    json_t *v;
    json_array_foreach(items, i,
                       v) if (json_is_string(v) && strcmp(json_string_value(v), "rate_limit") == 0)
        want_rate = 1;
    json_t *out = json_array();
    for (const char *const *n = cel_tasks_names(); *n; n++) {
        const char *rate = cel_limits_rate_text(ctl->limits, *n);
        if (want_rate && rate) {
            char buf[600];
            snprintf(buf, sizeof(buf), "%s [rate_limit=%s]", *n, rate);
            json_array_append_new(out, json_string(buf));
        } else {
            json_array_append_new(out, json_string(*n));
        }
    }
    return out;
}

/* "0.50" as celery's human_write_stats formats a share. */
static json_t *share(long v, long total) {
    return json_sprintf("%.2f", v && total ? (double)v / (double)total : 0.0);
}

/* Python's `limit or 0`: int 0 when unset. */
static json_t *seconds(double s) { return s > 0 ? json_real(s) : json_integer(0); }

/* WorkController.stats(): consumer, pool, broker and rusage parts. */
static json_t *stats(cel_control_t *ctl) {
    cel_consumer_info_t in;
    cel_consumer_info(ctl->c, &in);
    const cel_options_t *cfg = ctl->cfg;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    json_t *procs = json_array();
    for (int i = 0; i < in.npids; i++) json_array_append_new(procs, json_integer(in.pids[i]));
    int n = in.slots;
    long total = 0;
    for (int i = 0; i < n; i++) total += in.tasks_done[i];
    char *all = NULL, *raw = NULL;
    size_t al = 0, rl = 0;
    FILE *af = open_memstream(&all, &al), *rf = open_memstream(&raw, &rl);
    for (int i = 0; i < n && af && rf; i++) {
        long v = in.tasks_done[i];
        fprintf(af, "%s%.2f", i ? ", " : "", v && total ? (double)v / (double)total : 0.0);
        fprintf(rf, "%s%ld", i ? ", " : "", v);
    }
    if (af) fclose(af);
    if (rf) fclose(rf);
    json_t *writes =
        json_pack("{s:I, s:o, s:s, s:s, s:s, s:{s:i, s:i}}", "total", (json_int_t)total, "avg",
                  share(n ? total / n : 0, total), "all", all ? all : "", "raw", raw ? raw : "",
                  "strategy", "fair", "inqueues", "total", n, "active", in.busy);
    free(all);
    free(raw);
    json_t *pool = json_pack(
        "{s:i, s:o, s:o, s:b, s:[o, o], s:o}", "max-concurrency", n, "processes", procs,
        "max-tasks-per-child",
        cfg->max_tasks_per_child ? json_integer(cfg->max_tasks_per_child) : json_string("N/A"),
        "put-guarded-by-semaphore", 0, "timeouts", seconds(cfg->soft_time_limit),
        seconds(cfg->time_limit), "writes", writes);
    json_t *broker =
        cfg->broker_amqp
            ? json_pack("{s:s, s:s, s:s, s:i, s:b, s:b, s:s, s:i, s:{}, s:s, s:n, s:f, s:s, s:[]}",
                        "hostname", cfg->amqp.host, "userid", cfg->amqp.user, "virtual_host",
                        cfg->amqp.vhost, "port", cfg->amqp.port, "insist", 0, "ssl", cfg->amqp.ssl,
                        "transport", "amqp", "connect_timeout", 4, "transport_options",
                        "login_method", "PLAIN", "uri_prefix", "heartbeat", cfg->broker_heartbeat,
                        "failover_strategy", "round-robin", "alternates")
            : json_pack("{s:s, s:o, s:o, s:i, s:b, s:b, s:s, s:i, s:{}, s:n, s:n, s:f, s:s, s:[]}",
                        "hostname", cfg->broker.host, "userid",
                        cfg->broker.user[0] ? json_string(cfg->broker.user) : json_null(),
                        "virtual_host", json_sprintf("%d", cfg->broker.db), "port",
                        cfg->broker.port, "insist", 0, "ssl", 0, "transport", "redis",
                        "connect_timeout", 4, "transport_options", "login_method", "uri_prefix",
                        "heartbeat", 120.0, "failover_strategy", "round-robin", "alternates");
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    json_t *rusage = json_pack(
        "{s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "utime",
        ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, "stime",
        ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6, "maxrss", (json_int_t)ru.ru_maxrss, "ixrss",
        (json_int_t)ru.ru_ixrss, "idrss", (json_int_t)ru.ru_idrss, "isrss", (json_int_t)ru.ru_isrss,
        "minflt", (json_int_t)ru.ru_minflt, "majflt", (json_int_t)ru.ru_majflt, "nswap",
        (json_int_t)ru.ru_nswap, "inblock", (json_int_t)ru.ru_inblock, "oublock",
        (json_int_t)ru.ru_oublock, "msgsnd", (json_int_t)ru.ru_msgsnd, "msgrcv",
        (json_int_t)ru.ru_msgrcv, "nsignals", (json_int_t)ru.ru_nsignals, "nvcsw",
        (json_int_t)ru.ru_nvcsw, "nivcsw", (json_int_t)ru.ru_nivcsw);
    double now = tv.tv_sec + tv.tv_usec / 1e6;
    json_t *st = json_pack("{s:O, s:i, s:o, s:I, s:o, s:o, s:i, s:o}", "total", in.totals, "pid",
                           (int)getpid(), "clock",
                           json_sprintf("%llu", (unsigned long long)cel_events_clock(ctl->ev)),
                           "uptime", (json_int_t)(now - in.started_at), "pool", pool, "broker",
                           broker, "prefetch_count", in.prefetch_count, "rusage", rusage);
    /* issue 15: what a front end shows per node (GET /workers); keys the stock worker
     * does not send, which inspect and Flower pass through */
    if (st) {
        json_object_set_new(st, "device", json_string(in.device[0] ? in.device : cfg->device));
        json_object_set_new(st, "precision",
                            json_string(cfg->precision[0] ? cfg->precision : "fp32"));
        json_object_set_new(st, "adapters_resident", json_integer(in.adapters_resident));
    }
    /* autoscale and mingle (issue 19): Autoscaler.info() as the stock worker adds it */
    if (st && in.autoscale_max)
        json_object_set_new(st, "autoscaler",
                            json_pack("{s:i, s:i, s:i, s:i}", "max", in.autoscale_max, "min",
                                      in.autoscale_min, "current", in.slots, "qty", in.qty));
    return st;
}

/* ---- control ---------------------------------------------------------- */

/* "SIGTERM", "TERM", "9", 15 -> signal number; 0 when unknown or out of range. */
static int signum_of(json_t *v) {
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        return n > 0 && n < NSIG ? (int)n : 0;
    }
    const char *s = json_string_value(v);
    if (!s || !*s) return SIGTERM;
    if (*s >= '0' && *s <= '9') {
        char *end;
        errno = 0;
        long n = strtol(s, &end, 10); /* a jansson string: NUL-terminated */
        return errno == 0 && *end == '\0' && n > 0 && n < NSIG ? (int)n : 0;
    }
    if (strncasecmp(s, "SIG", 3) == 0) s += 3;
    for (int i = 1; i < NSIG; i++) {
        const char *abbr = sigabbrev_np(i);
        if (abbr && strcasecmp(abbr, s) == 0) return i;
    }
    return 0;
}

static json_t *revoke_cmd(cel_control_t *ctl, json_t *args, int force_terminate) {
    json_t *ids = json_object_get(args, "task_id");
    json_t *list = json_array();
    if (json_is_string(ids)) {
        json_array_append(list, ids);
    } else {
        size_t i;
        json_t *v;
        json_array_foreach(ids, i, v) if (i < REVOKE_IDS_MAX && json_is_string(v))
            json_array_append(list, v);
    }
    int terminate = force_terminate || json_is_true(json_object_get(args, "terminate"));
    int signum = terminate ? signum_of(json_object_get(args, "signal")) : 0;
    if (terminate && signum <= 0) {
        json_decref(list);
        return raised("ValueError", "unknown signal");
    }
    char *joined = NULL, *terminated = NULL;
    size_t jl = 0, tl = 0;
    FILE *jf = open_memstream(&joined, &jl), *tf = open_memstream(&terminated, &tl);
    int nterm = 0;
    size_t i;
    json_t *v;
    json_array_foreach(list, i, v) {
        const char *id = json_string_value(v);
        cel_revoked_add(ctl->rv, id);
        if (jf) fprintf(jf, "%s%s", i ? ", " : "", id);
        if (cel_consumer_revoke(ctl->c, id, signum) && tf) {
            cel_info("Terminating %s (%d)", id, signum);
            fprintf(tf, "%s%s", nterm++ ? ", " : "", id);
        }
    }
    if (jf) fclose(jf);
    if (tf) fclose(tf);
    cel_err_t err;
    if (cel_revoked_save(ctl->rv, &err) != CEL_OK) cel_error("%s", err.msg);
    json_t *reply;
    if (terminate) {
        reply = nterm ? ok("terminate: %s", terminated) : ok("terminate: tasks unknown", NULL);
    } else {
        cel_info("Tasks flagged as revoked: %s", joined ? joined : "");
        reply = ok("tasks %s flagged as revoked", joined);
    }
    free(joined);
    free(terminated);
    json_decref(list);
    return reply;
}

static json_t *rate_limit(cel_control_t *ctl, json_t *args) {
    const char *name = json_string_value(json_object_get(args, "task_name"));
    json_t *rv = json_object_get(args, "rate_limit");
    char rate[64] = "";
    if (json_is_string(rv)) snprintf(rate, sizeof(rate), "%s", json_string_value(rv));
    else if (json_is_number(rv)) snprintf(rate, sizeof(rate), "%g", json_number_value(rv));
    double per_sec;
    cel_err_t err;
    if (cel_limits_parse_rate(rate, &per_sec, &err) != CEL_OK) {
        char msg[400];
        snprintf(msg, sizeof(msg), "Invalid rate limit string: ValueError(\"%s\")", err.msg);
        return nok(msg);
    }
    if (!name || !cel_tasks_known(name)) {
        cel_error("Rate limit attempt for unknown task %s", name ? name : "None");
        return nok("unknown task");
    }
    if (cel_limits_set_rate(ctl->limits, name, rate, per_sec, NULL) != CEL_OK)
        return nok("too many rate limits");
    cel_consumer_redispatch(ctl->c); /* waiting tasks may start now */
    if (per_sec <= 0) {
        cel_info("Rate limits disabled for tasks of type %s", name);
        return ok("rate limit disabled successfully", NULL);
    }
    cel_info("New rate limit for tasks of type %s: %s.", name, rate);
    return ok("new rate limit set successfully", NULL);
}

static json_t *time_limit(cel_control_t *ctl, json_t *args) {
    const char *name = json_string_value(json_object_get(args, "task_name"));
    if (!name || !cel_tasks_known(name)) {
        cel_error("Change time limit attempt for unknown task %s", name ? name : "None");
        return nok("unknown task");
    }
    double soft = json_number_value(json_object_get(args, "soft"));
    double hard = json_number_value(json_object_get(args, "hard"));
    if (soft < 0) soft = 0;
    if (hard < 0) hard = 0;
    if (cel_limits_set_time(ctl->limits, name, soft, hard, NULL) != CEL_OK)
        return nok("too many time limits");
    cel_info("New time limits for tasks of type %s: soft=%g hard=%g", name, soft, hard);
    return ok("time limits set successfully", NULL);
}

static json_t *pool_resize(cel_control_t *ctl, json_t *args, int sign) {
    /* autoscale and mingle (issue 19): the stock worker's answer under --autoscale */
    if (ctl->cfg->autoscale_max)
        return nok(sign > 0 ? "pool_grow is not supported with autoscale. Adjust autoscale "
                              "range instead."
                            : "pool_shrink is not supported with autoscale. Adjust autoscale "
                              "range instead.");
    json_t *n = json_object_get(args, "n");
    long k = json_is_integer(n) ? (long)json_integer_value(n) : 1;
    if (json_is_string(n)) k = atol(json_string_value(n));
    if (k < 0 || k > CEL_MAX_CONCURRENCY) return raised("ValueError", "bad pool size change");
    int rc = cel_consumer_resize(ctl->c, (int)(sign * k));
    if (rc == CEL_ESTATE)
        return raised("ValueError", "Cannot shrink pool: an executor it would retire holds "
                                    "adapters");
    if (rc < 0)
        return raised("ValueError", sign > 0 ? "Can't grow pool past its maximum"
                                             : "Can't shrink pool below one executor");
    return ok(sign > 0 ? "pool will grow" : "pool will shrink", NULL);
}

static json_t *queue_cmd(cel_control_t *ctl, json_t *args, int add) {
    const char *q = json_string_value(json_object_get(args, "queue"));
    if (!q || !*q) return raised("TypeError", "a queue name is required");
    if (strlen(q) > CEL_MAX_QUEUE_NAME) return raised("ValueError", "queue name too long");
    int rc = cel_consumer_queue(ctl->c, q, add);
    if (rc == CEL_ELIMIT) return raised("ValueError", "too many queues");
    if (add) {
        if (rc == CEL_OK) cel_info("Started consuming from %s", q);
        return ok("add consumer %s", q);
    }
    if (rc == CEL_OK) cel_info("Cancelling queue %s", q);
    return ok("no longer consuming from %s", q);
}

static json_t *active_queues(cel_control_t *ctl) {
    json_t *names = cel_consumer_queues(ctl->c);
    json_t *out = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(names, i, v) {
        const char *q = json_string_value(v), *ex, *rk;
        cel_options_queue_route(ctl->cfg, q, &ex, &rk);
        json_array_append_new(
            out,
            json_pack("{s:s, s:{s:s, s:s, s:n, s:b, s:b, s:b, s:n, s:b}, s:s, s:n, s:n, s:n,"
                      " s:b, s:b, s:b, s:b, s:n, s:[], s:n, s:n, s:n, s:n, s:n, s:n}",
                      "name", q, "exchange", "name", ex, "type", "direct", "arguments", "durable",
                      1, "passive", 0, "auto_delete", 0, "delivery_mode", "no_declare", 0,
                      "routing_key", rk, "queue_arguments", "binding_arguments",
                      "consumer_arguments", "durable", 1, "exclusive", 0, "auto_delete", 0,
                      "no_ack", 0, "alias", "bindings", "no_declare", "expires", "message_ttl",
                      "max_length", "max_length_bytes", "max_priority"));
    }
    json_decref(names);
    return out;
}

static json_t *events_switch(cel_control_t *ctl, int on) {
    int was = cel_events_set_task_events(ctl->ev, on);
    if (was == on)
        return ok(on ? "task events already enabled" : "task events already disabled", NULL);
    cel_info("Events of group {task} %s by remote.", on ? "enabled" : "disabled");
    return ok(on ? "task events enabled" : "task events disabled", NULL);
}

/* autoscale and mingle (issue 19) */
/* An int argument as celery's control command casts it ('max': int): a JSON
 * integer or a decimal string; -1 when absent or null, -2 when bad. */
static long int_arg(json_t *args, const char *key) {
    json_t *v = json_object_get(args, key);
    if (!v || json_is_null(v)) return -1;
    if (json_is_integer(v)) {
        json_int_t n = json_integer_value(v);
        return n >= 0 && n <= CEL_MAX_CONCURRENCY ? (long)n : -2;
    }
    const char *str = json_string_value(v);
    char *end;
    long n = str && *str ? strtol(str, &end, 10) : -2;
    return str && *str && !*end && n >= 0 && n <= CEL_MAX_CONCURRENCY ? n : -2;
}

static json_t *autoscale(cel_control_t *ctl, json_t *args) {
    long max = int_arg(args, "max"), min = int_arg(args, "min");
    if (max == -2 || min == -2) return raised("ValueError", "bad autoscale range");
    int max_now, min_now;
    int rc = cel_consumer_autoscale(ctl->c, (int)max, (int)min, &max_now, &min_now);
    if (rc == CEL_ENOTFOUND) return raised("ValueError", "Autoscale not enabled");
    if (rc != CEL_OK) return raised("ValueError", "the worker is stopping");
    char text[80];
    snprintf(text, sizeof(text), "autoscale now max=%d min=%d", max_now, min_now);
    return ok("%s", text);
}

static json_t *hello(cel_control_t *ctl, json_t *args) {
    const char *from = json_string_value(json_object_get(args, "from_node"));
    if (!from || strcmp(from, ctl->cfg->hostname) == 0) return json_null();
    cel_info("sync with %s", from);
    json_t *rv = json_object_get(args, "revoked");
    if (json_is_object(rv)) cel_revoked_merge(ctl->rv, rv);
    return json_pack("{s:o, s:I}", "revoked", cel_revoked_dict(ctl->rv), "clock",
                     (json_int_t)cel_events_clock_forward(ctl->ev));
}

json_t *cel_control_dispatch(void *priv, const char *m, json_t *args) {
    cel_control_t *ctl = priv;
    if (!strcmp(m, "ping")) return ok("pong", NULL);
    if (!strcmp(m, "stats")) return stats(ctl);
    if (!strcmp(m, "active") || !strcmp(m, "dump_active"))
        return list_requests(ctl, CEL_REQ_ACTIVE);
    if (!strcmp(m, "reserved") || !strcmp(m, "dump_reserved"))
        return list_requests(ctl, CEL_REQ_RESERVED);
    if (!strcmp(m, "scheduled") || !strcmp(m, "dump_schedule"))
        return list_requests(ctl, CEL_REQ_SCHEDULED);
    if (!strcmp(m, "registered") || !strcmp(m, "dump_tasks")) return registered(ctl, args);
    if (!strcmp(m, "active_queues")) return active_queues(ctl);
    if (!strcmp(m, "revoked") || !strcmp(m, "dump_revoked")) return cel_revoked_list(ctl->rv);
    if (!strcmp(m, "conf") || !strcmp(m, "dump_conf")) return conf(ctl);
    if (!strcmp(m, "report")) return report(ctl);
    if (!strcmp(m, "query_task")) return query_task(ctl, args);
    if (!strcmp(m, "clock"))
        return json_pack("{s:I}", "clock", (json_int_t)cel_events_clock(ctl->ev));
    if (!strcmp(m, "revoke")) return revoke_cmd(ctl, args, 0);
    if (!strcmp(m, "terminate")) return revoke_cmd(ctl, args, 1);
    if (!strcmp(m, "rate_limit")) return rate_limit(ctl, args);
    if (!strcmp(m, "time_limit")) return time_limit(ctl, args);
    if (!strcmp(m, "pool_grow")) return pool_resize(ctl, args, 1);
    if (!strcmp(m, "pool_shrink")) return pool_resize(ctl, args, -1);
    if (!strcmp(m, "pool_restart")) {
        cel_consumer_restart_pool(ctl->c);
        return ok("reload started", NULL);
    }
    if (!strcmp(m, "autoscale")) return autoscale(ctl, args);
    if (!strcmp(m, "add_consumer")) return queue_cmd(ctl, args, 1);
    if (!strcmp(m, "cancel_consumer")) return queue_cmd(ctl, args, 0);
    if (!strcmp(m, "enable_events")) return events_switch(ctl, 1);
    if (!strcmp(m, "disable_events")) return events_switch(ctl, 0);
    if (!strcmp(m, "heartbeat")) {
        cel_debug("Heartbeat requested by remote.");
        cel_events_heartbeat_now(ctl->ev);
        return json_null();
    }
    if (!strcmp(m, "election")) return json_null(); /* no gossip: nothing to elect */
    if (!strcmp(m, "hello")) return hello(ctl, args);
    if (!strcmp(m, "shutdown")) {
        cel_warn("Got shutdown from remote");
        cel_consumer_shutdown(ctl->c);
        return NULL; /* WorkerShutdown: the stock worker sends no reply */
    }
    cel_error("No such control command: '%s'", m);
    char buf[CEL_PIDBOX_NAME_MAX + 16];
    snprintf(buf, sizeof(buf), "KeyError('%s')", m);
    return nok(buf);
}

static void on_pidbox_up(void *priv) {
    cel_control_t *ctl = priv;
    cel_consumer_release_ready(ctl->c);
}

cel_control_t *cel_control_new(uv_loop_t *loop, const cel_options_t *cfg, cel_consumer_t *c,
                               cel_events_t *ev, cel_revoked_t *rv, cel_limits_t *limits) {
    cel_control_t *ctl = calloc(1, sizeof(*ctl));
    if (!ctl) return NULL;
    ctl->loop = loop;
    ctl->cfg = cfg;
    ctl->c = c;
    ctl->ev = ev;
    ctl->rv = rv;
    ctl->limits = limits;
    /* "ready." waits for the mailbox, as celery's Pidbox bootstep comes before it:
     * a broadcast sent after it reaches this node. */
    cel_consumer_hold_ready(c);
    ctl->pidbox = cel_pidbox_new(loop, cfg, ev, cel_control_dispatch, on_pidbox_up, ctl);
    if (!ctl->pidbox) {
        free(ctl);
        return NULL;
    }
    return ctl;
}

void cel_control_close(cel_control_t *ctl, void (*on_closed)(void *), void *priv) {
    /* The mailbox frees itself; ctl goes with it. */
    cel_pidbox_t *pb = ctl->pidbox;
    free(ctl);
    cel_pidbox_close(pb, on_closed, priv);
}
