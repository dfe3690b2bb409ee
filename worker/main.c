/* main.c -- the celeriac worker program: options, logging, pidfile, signals, loop.
 *
 * Parses the command line (options.c), creates the worker's parts on one
 * libuv loop and runs it until a shutdown completes. The wiring: main owns
 * the revoked set, the per task name limits and the event dispatcher; the
 * consumer borrows them; remote control borrows them and the consumer (it
 * drives the consumer; the consumer never calls control). Shutdown goes the
 * other way: the consumer finishes its requests and closes, then control
 * and events close, then the shared state is saved and freed. SIGTERM/SIGINT
 * start a warm shutdown, a second one (or SIGQUIT) a cold one, as `celery
 * worker` does. Shutdown always ends: the warm one gives up after
 * --shutdown-timeout (the consumer gives back what did not finish), a cold one
 * that has not closed within COLD_DEADLINE_S, or any signal during a cold one,
 * kills the executors and exits at once (what is unacked stays with the
 * broker). With --metrics-port, main also turns the metrics registry on
 * (metrics.h), fills its live gauges from the consumer when a scrape asks, and
 * serves it (metrics_http.h) until the consumer is done. The only place that
 * exits the process.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <uv.h>

#include "../common/log.h"
#include "../protocol/tasks.h"
#include "consumer.h"
#include "control.h"
#include "events.h"
#include "limits.h"
#include "metrics.h"
#include "metrics_http.h"
#include "options.h"
#include "private_state.h"
#include "revoked.h"

#define COLD_DEADLINE_S 10 /* a cold shutdown that has not closed by then exits hard */
#define CEL_STR_(x)     #x
#define CEL_STR(x)      CEL_STR_(x)

typedef struct worker {
    uv_loop_t *loop;
    cel_options_t cfg;
    cel_revoked_t *revoked;
    cel_limits_t *limits;
    cel_events_t *events;
    cel_consumer_t *consumer;
    cel_control_t *control;
    cel_metrics_http_t *metrics; /* NULL without --metrics-port */
    json_t *metrics_queues;      /* the queue names a scrape borrowed */
    uv_signal_t sigterm, sigint, sigquit;
    uv_timer_t cold_deadline;
    int closing_left; /* control, events and metrics, after the consumer */
    int warm_started;
    int failed; /* the consumer stopped because no executor could start: exit 1 */
    int cold;
    int done;
} worker_t;

/* Heartbeats report the consumer's load. */
static void events_load(void *priv, long *active, long *processed) {
    worker_t *w = priv;
    *active = *processed = 0;
    if (!w->consumer || w->done) return;
    cel_consumer_info_t in;
    cel_consumer_info(w->consumer, &in);
    *active = in.busy;
    *processed = in.processed;
}

/* A scrape's view of the consumer: executors, requests by state, queues. */
static void count_request(void *priv, const cel_consumer_req_t *r) {
    cel_metrics_live_t *out = priv;
    if (r->kind == CEL_REQ_SCHEDULED) out->scheduled++;
    else if (r->kind == CEL_REQ_RESERVED) out->reserved++;
    else if (r->kind == CEL_REQ_ACTIVE) out->active++;
}

static void metrics_collect(void *priv, cel_metrics_live_t *out) {
    worker_t *w = priv;
    out->eta_limit = w->cfg.eta_task_limit;
    out->gpu_adapter_limit = w->cfg.gpu_adapter_mb << 20;
    if (!w->consumer || w->done) return;
    cel_consumer_info_t in;
    cel_consumer_info(w->consumer, &in);
    out->slots = in.slots;
    out->executors = in.npids;
    out->busy = in.busy;
    out->prefetch_count = in.prefetch_count;
    cel_consumer_each_request(w->consumer, count_request, out);
    json_decref(w->metrics_queues);
    w->metrics_queues = cel_consumer_queues(w->consumer);
    for (size_t i = 0; i < json_array_size(w->metrics_queues) && i < CEL_METRICS_MAX_QUEUES; i++)
        out->queues[out->nqueues++] = json_string_value(json_array_get(w->metrics_queues, i));
}

/* --metrics-port: the registry on and its responder listening, before
 * anything else starts. Returns 0, or -1 (logged) when it cannot listen. */
static int start_metrics(worker_t *w) {
    if (w->cfg.metrics_port < 0) return 0;
    cel_err_t err;
    if (cel_metrics_init(w->cfg.hostname, &err) != CEL_OK ||
        cel_metrics_http_new(w->loop, w->cfg.metrics_bind, w->cfg.metrics_port, &w->metrics,
                             &err) != CEL_OK) {
        fprintf(stderr, "celeriac: --metrics-port: %s\n", err.msg);
        return -1;
    }
    cel_metrics_set_collector(metrics_collect, w);
    cel_log_force(CEL_LOG_INFO, "metrics at http://%s%s%s:%d/metrics",
                  strchr(w->cfg.metrics_bind, ':') ? "[" : "", w->cfg.metrics_bind,
                  strchr(w->cfg.metrics_bind, ':') ? "]" : "", cel_metrics_http_port(w->metrics));
    return 0;
}

/* Control, events and metrics are closed: save and free the shared state, let the loop end. */
static void on_part_closed(void *priv) {
    worker_t *w = priv;
    if (--w->closing_left > 0) return;
    cel_metrics_shutdown();
    json_decref(w->metrics_queues);
    w->metrics_queues = NULL;
    cel_err_t err;
    if (cel_revoked_save(w->revoked, &err) != CEL_OK) cel_error("%s", err.msg);
    cel_revoked_free(w->revoked);
    cel_limits_free(w->limits);
    w->revoked = NULL;
    w->limits = NULL;
    uv_close((uv_handle_t *)&w->sigterm, NULL);
    uv_close((uv_handle_t *)&w->sigint, NULL);
    uv_close((uv_handle_t *)&w->sigquit, NULL);
    uv_timer_stop(&w->cold_deadline);
    uv_close((uv_handle_t *)&w->cold_deadline, NULL);
}

/* The consumer finished (and freed itself): close what borrowed it. */
static void on_consumer_done(void *priv, int failed) {
    worker_t *w = priv;
    w->done = 1;
    w->failed = failed;
    w->consumer = NULL;
    w->closing_left = w->metrics ? 3 : 2;
    if (w->metrics) cel_metrics_http_close(w->metrics, on_part_closed, w);
    w->metrics = NULL;
    cel_control_close(w->control, on_part_closed, w);
    w->control = NULL;
    cel_events_close(w->events, on_part_closed, w); /* sends worker-offline */
    w->events = NULL;
}

/* Kills the executors, removes the pidfile and exits now: a cold shutdown
 * that cannot close (a server that does not answer), or was asked twice. */
static void exit_now(worker_t *w, const char *why) {
    cel_error("worker: %s: exiting now; unacknowledged messages stay with the broker", why);
    if (w->consumer) {
        cel_consumer_info_t in;
        cel_consumer_info(w->consumer, &in);
        for (int i = 0; i < in.npids; i++) kill(in.pids[i], SIGKILL);
    }
    if (w->cfg.pidfile[0]) unlink(w->cfg.pidfile);
    _exit(1);
}

static void on_cold_deadline(uv_timer_t *t) {
    worker_t *w = t->data;
    if (!w->done) exit_now(w, "cold shutdown did not finish in " CEL_STR(COLD_DEADLINE_S) " s");
}

static void on_signal(uv_signal_t *h, int signum) {
    worker_t *w = h->data;
    if (w->done) {
        /* the consumer is closed; only control and events are left */
        if (signum == SIGQUIT || w->cold) exit_now(w, "signal during shutdown");
        return;
    }
    if (signum == SIGQUIT || w->warm_started) {
        if (w->cold) exit_now(w, "second signal during a cold shutdown");
        w->cold = 1;
        cel_warn("worker: Cold shutdown (MainProcess)");
        uv_timer_start(&w->cold_deadline, on_cold_deadline, COLD_DEADLINE_S * 1000, 0);
        cel_consumer_shutdown_cold(w->consumer);
        return;
    }
    w->warm_started = 1;
    cel_warn("worker: Warm shutdown (MainProcess)");
    cel_consumer_shutdown(w->consumer);
}

static int write_pidfile(const char *path) {
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    /* A stale pidfile of a dead process is replaced, a live one refuses. */
    FILE *f = fopen(path, "r");
    if (f) {
        int pid = 0;
        if (fscanf(f, "%d", &pid) == 1 && pid > 0 && pid != getpid() &&
            (kill(pid, 0) == 0 || errno == EPERM)) {
            fclose(f);
            fprintf(stderr, "celeriac: pidfile %s names a running process %d\n", path, pid);
            return -1;
        }
        fclose(f);
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, buf, (size_t)n) != n) {
        fprintf(stderr, "celeriac: cannot write pidfile %s: %s\n", path, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    close(fd);
    return 0;
}

static void log_banner(const cel_options_t *cfg) {
    char queues[1024] = "";
    for (int i = 0; i < cfg->nqueues; i++) {
        size_t n = strlen(queues);
        snprintf(queues + n, sizeof(queues) - n, "%s%s", i ? "," : "", cfg->queues[i]);
    }
    int ntasks = 0;
    for (const char *const *t = cel_tasks_names(); *t; t++) ntasks++;
    char broker[1024], results[600];
    if (cfg->broker_amqp)
        snprintf(broker, sizeof(broker), "%s://%s@%s:%d/%s", cfg->amqp.ssl ? "amqps" : "amqp",
                 cfg->amqp.user, cfg->amqp.host, cfg->amqp.port, cfg->amqp.vhost);
    else
        snprintf(broker, sizeof(broker), "redis://%s:%d/%d", cfg->broker.host, cfg->broker.port,
                 cfg->broker.db);
    if (cfg->backend_rpc) snprintf(results, sizeof(results), "rpc://");
    else
        snprintf(results, sizeof(results), "redis://%s:%d/%d", cfg->backend.host, cfg->backend.port,
                 cfg->backend.db);
    char conc[48]; /* autoscale (issue 19): as celery's banner, {min=N, max=M} */
    if (cfg->autoscale_max)
        snprintf(conc, sizeof(conc), "{min=%d, max=%d}", cfg->autoscale_min, cfg->autoscale_max);
    else snprintf(conc, sizeof(conc), "%d", cfg->concurrency);
    cel_info("celeriac %s starting: broker %s, results %s, "
             "queues [%s], concurrency %s (executors), prefetch %d, %d tasks registered",
             cfg->hostname, broker, results, queues, conc,
             cfg->prefetch_multiplier * cfg->concurrency, ntasks);
}

/* --describe-tasks: the task table as JSON on stdout (protocol/tasks.h).
 * Returns the exit status. */
static int describe_tasks(void) {
    json_t *d = cel_tasks_describe();
    char *text = d ? json_dumps(d, JSON_INDENT(2)) : NULL;
    json_decref(d);
    if (!text) {
        fprintf(stderr, "celeriac: cannot describe the task table (out of memory)\n");
        return 1;
    }
    int ok = puts(text) >= 0 && fflush(stdout) == 0;
    free(text);
    if (!ok) fprintf(stderr, "celeriac: cannot write the task table: %s\n", strerror(errno));
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    worker_t w;
    memset(&w, 0, sizeof(w));
    cel_err_t err;
    int rc = cel_options_parse(&w.cfg, argc, argv, &err);
    if (rc == 1) {
        int status = w.cfg.describe_tasks ? describe_tasks() : 0;
        cel_options_free(&w.cfg);
        return status;
    }
    cel_options_hide_secrets(argc, argv); /* what ps shows */
    if (rc != CEL_OK) {
        fprintf(stderr, "celeriac: %s\n", err.msg);
        cel_options_free(&w.cfg); /* what the parse made before it stopped */
        return 2;
    }
    int logfd = -1;
    if (w.cfg.logfile[0]) {
        logfd = open(w.cfg.logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (logfd < 0) {
            fprintf(stderr, "celeriac: cannot open log file %s: %s\n", w.cfg.logfile,
                    strerror(errno));
            cel_options_free(&w.cfg);
            return 2;
        }
        /* Executors inherit stderr: send theirs to the log file too. */
        dup2(logfd, 2);
    }
    cel_log_init("MainProcess", w.cfg.loglevel, logfd);
    if (access(w.cfg.executor, X_OK) != 0) {
        fprintf(stderr, "celeriac: executor program %s is not executable: %s\n", w.cfg.executor,
                strerror(errno));
        cel_options_free(&w.cfg);
        return 2;
    }
    if (w.cfg.state_dir[0] && mkdir(w.cfg.state_dir, 0700) != 0 && errno != EEXIST) {
        fprintf(stderr, "celeriac: cannot create --state-dir %s: %s\n", w.cfg.state_dir,
                strerror(errno));
        cel_options_free(&w.cfg);
        return 2;
    }
    cel_err_t perr;
    if (!w.cfg.state_dir[0] &&
        cel_private_state_make(w.cfg.private_state, sizeof(w.cfg.private_state), &perr) != CEL_OK) {
        fprintf(stderr, "celeriac: %s\n", perr.msg);
        cel_options_free(&w.cfg);
        return 2;
    }
    if (w.cfg.pidfile[0] && write_pidfile(w.cfg.pidfile) != 0) {
        cel_private_state_remove(w.cfg.private_state);
        cel_options_free(&w.cfg);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    w.loop = uv_default_loop();
    if (start_metrics(&w) != 0) {
        uv_run(w.loop, UV_RUN_DEFAULT); /* closes the listener that failed */
        cel_metrics_shutdown();
        uv_loop_close(w.loop);
        if (w.cfg.pidfile[0]) unlink(w.cfg.pidfile);
        cel_private_state_remove(w.cfg.private_state);
        cel_options_free(&w.cfg);
        return 2;
    }
    log_banner(&w.cfg);
    w.revoked = cel_revoked_new(w.cfg.state_dir);
    w.limits = cel_limits_new();
    w.events = cel_events_new(w.loop, &w.cfg, events_load, &w);
    if (w.revoked && w.limits && w.events)
        w.consumer =
            cel_consumer_new(w.loop, &w.cfg, w.events, w.revoked, w.limits, on_consumer_done, &w);
    if (w.consumer)
        w.control = cel_control_new(w.loop, &w.cfg, w.consumer, w.events, w.revoked, w.limits);
    if (!w.control) {
        /* out of memory at start-up: the OS reclaims the rest */
        cel_crit("out of memory starting the worker");
        if (w.cfg.pidfile[0]) unlink(w.cfg.pidfile);
        cel_private_state_remove(w.cfg.private_state);
        return 1;
    }
    uv_timer_init(w.loop, &w.cold_deadline);
    w.cold_deadline.data = &w;
    uv_signal_init(w.loop, &w.sigterm);
    uv_signal_init(w.loop, &w.sigint);
    uv_signal_init(w.loop, &w.sigquit);
    w.sigterm.data = w.sigint.data = w.sigquit.data = &w;
    uv_signal_start(&w.sigterm, on_signal, SIGTERM);
    uv_signal_start(&w.sigint, on_signal, SIGINT);
    uv_signal_start(&w.sigquit, on_signal, SIGQUIT);

    uv_run(w.loop, UV_RUN_DEFAULT);

    int closed = uv_loop_close(w.loop);
    if (closed != 0)
        cel_error("event loop closed with handles still open: %s", uv_strerror(closed));
    if (w.cfg.pidfile[0]) unlink(w.cfg.pidfile);
    cel_private_state_remove(w.cfg.private_state); /* its executors have all exited */
    cel_options_free(&w.cfg);
    return closed == 0 && !w.failed ? 0 : 1;
}
