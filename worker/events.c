/* events.c -- the worker's event dispatcher (the celeryev exchange) and its clock.
 *
 * A bus of its own ("events", bus.h) that only publishes; nothing waits for
 * the broker but the close. Each event goes to the exchange celeryev --
 * topic on AMQP, fanout on Redis, as celery/events/event.py get_exchange
 * switches it -- with headers {"hostname"}, delivery_mode 1 and a JSON
 * body. Task events go one per message with routing key "task.<kind>"
 * (EventReceiver accepts single events as well as the 5.2 worker's
 * task.multi lists). Matches celery/events/dispatcher.py, event.py and
 * worker/heartbeat.py. Main process, libuv loop; never blocks.
 */
#include "events.h"

#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "../common/log.h"
#include "bus.h"

#define EVENTS_VERSION "0.1.0"
#define EVENT_REPR_MAX 1024 /* result/args reprs in events */

struct cel_events {
    uv_loop_t *loop;
    const cel_options_t *cfg;
    cel_bus_t *bus;
    cel_events_load_fn load;
    void *priv;
    uint64_t clock;
    int task_events;
    int online_sent;
    uv_timer_t heart;
    int closing_left;
    void (*on_closed)(void *);
    void *closed_priv;
};

const char *cel_events_version(void) { return EVENTS_VERSION; }

static double now_unix(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

static uint64_t rng_state;

static uint64_t rng_next(void) {
    if (!rng_state) {
        int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0 || read(fd, &rng_state, sizeof(rng_state)) != sizeof(rng_state))
            rng_state = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
        if (fd >= 0) close(fd);
        if (!rng_state) rng_state = 0x9e3779b97f4a7c15ull;
    }
    /* xorshift64*: unique enough for delivery tags, not for secrets. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

void cel_events_uuid(char out[37]) {
    uint8_t b[16];
    uint64_t a = rng_next(), c = rng_next();
    memcpy(b, &a, 8);
    memcpy(b + 8, &c, 8);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

uint64_t cel_events_clock_forward(cel_events_t *ev) { return ++ev->clock; }

void cel_events_clock_adjust(cel_events_t *ev, uint64_t other) {
    ev->clock = (other > ev->clock ? other : ev->clock) + 1;
}

uint64_t cel_events_clock(const cel_events_t *ev) { return ev->clock; }

int cel_events_set_task_events(cel_events_t *ev, int on) {
    int was = ev->task_events;
    ev->task_events = on;
    return was;
}

int cel_events_task_events(const cel_events_t *ev) { return ev->task_events; }

/* Python's time.timezone // 3600 (altzone in DST): hours west of UTC. */
static int utcoffset(void) {
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    long west = -tm.tm_gmtoff;
    return (int)floor((double)west / 3600.0);
}

/* Publishes body (taken) to celeryev with routing_key. */
static void publish(cel_events_t *ev, const char *routing_key, json_t *body) {
    cel_err_t err;
    char *text = cel_json_dumps(body, &err);
    json_decref(body);
    if (!text) {
        cel_error("events: cannot encode an event: %s", err.msg);
        return;
    }
    json_t *headers = json_pack("{s:s}", "hostname", ev->cfg->hostname);
    if (headers) {
        cel_bus_exchange_t ex = { "celeryev", cel_bus_ops(ev->bus)->event_exchange_type, 1, 0 };
        cel_broker_out_t m = { .exchange = "celeryev",
                               .routing_key = routing_key,
                               .headers = headers,
                               .content_type = "application/json",
                               .content_encoding = "utf-8",
                               .body = text,
                               .body_len = strlen(text),
                               .priority = 0,
                               .persistent = 0 };
        cel_bus_publish(ev->bus, &ex, &m, NULL, NULL);
    }
    json_decref(headers);
    free(text);
}

void cel_events_send(cel_events_t *ev, const char *type, json_t *fields) {
    if (!ev || !cel_bus_up(ev->bus)) {
        json_decref(fields);
        return;
    }
    json_t *e = json_object();
    json_object_set_new(e, "hostname", json_string(ev->cfg->hostname));
    json_object_set_new(e, "utcoffset", json_integer(utcoffset()));
    json_object_set_new(e, "pid", json_integer(getpid()));
    json_object_set_new(e, "clock", json_integer((json_int_t)cel_events_clock_forward(ev)));
    if (fields) {
        json_object_update(e, fields);
        json_decref(fields);
    }
    json_object_set_new(e, "timestamp", json_real(now_unix()));
    json_object_set_new(e, "type", json_string(type));
    char rk[64];
    snprintf(rk, sizeof(rk), "%s", type);
    for (char *p = rk; *p; p++)
        if (*p == '-') *p = '.';
    publish(ev, rk, e);
}

void cel_events_task(cel_events_t *ev, const char *type, const cel_task_t *t, json_t *fields) {
    if (!ev || !ev->task_events) {
        json_decref(fields);
        return;
    }
    json_t *f = json_object();
    json_object_set_new(f, "uuid", json_string(t->id));
    if (fields) {
        json_object_update(f, fields);
        json_decref(fields);
    }
    cel_events_send(ev, type, f);
}

static json_t *repr_or(const char *given, json_t *v, int as_tuple) {
    if (given) return json_string(given);
    char *r = cel_repr(v ? v : json_null(), as_tuple, EVENT_REPR_MAX);
    json_t *s = json_string(r ? r : "?");
    free(r);
    return s;
}

void cel_events_task_received(cel_events_t *ev, const cel_task_t *t) {
    if (!ev || !ev->task_events) return;
    json_t *f = json_object();
    json_object_set_new(f, "name", json_string(t->name));
    json_object_set_new(f, "args", repr_or(t->argsrepr, t->args, 1));
    json_object_set_new(f, "kwargs", repr_or(t->kwargsrepr, t->kwargs, 0));
    json_object_set_new(f, "root_id", t->root_id ? json_string(t->root_id) : json_null());
    json_object_set_new(f, "parent_id", t->parent_id ? json_string(t->parent_id) : json_null());
    json_object_set_new(f, "retries", json_integer(t->retries));
    json_object_set_new(f, "eta", t->eta_str ? json_string(t->eta_str) : json_null());
    json_object_set_new(f, "expires", t->expires_str ? json_string(t->expires_str) : json_null());
    cel_events_task(ev, "task-received", t, f);
}

void cel_events_task_done(cel_events_t *ev, const cel_task_t *t, const char *status, json_t *result,
                          const char *traceback, double runtime, int expired, int signum) {
    if (!ev || !ev->task_events) return;
    json_t *f = json_object();
    const char *type;
    if (strcmp(status, "SUCCESS") == 0) {
        type = "task-succeeded";
        json_object_set_new(f, "result", repr_or(NULL, result, 0));
        json_object_set_new(f, "runtime", json_real(runtime));
    } else if (strcmp(status, "REVOKED") == 0) {
        type = "task-revoked";
        json_object_set_new(f, "terminated", json_boolean(signum > 0));
        json_object_set_new(f, "signum", signum > 0 ? json_integer(signum) : json_null());
        json_object_set_new(f, "expired", json_boolean(expired));
    } else {
        type = strcmp(status, "RETRY") == 0 ? "task-retried" : "task-failed";
        char *er = cel_exc_repr(result);
        json_object_set_new(f, "exception", json_string(er ? er : "Exception()"));
        free(er);
        if (traceback) json_object_set_new(f, "traceback", json_string(traceback));
    }
    cel_events_task(ev, type, t, f);
}

void cel_events_task_rejected(cel_events_t *ev, const cel_task_t *t, int requeue) {
    if (!ev || !ev->task_events || !t) return;
    cel_events_task(ev, "task-rejected", t, json_pack("{s:b}", "requeue", requeue));
}

static json_t *software(json_t *o) {
    json_object_set_new(o, "sw_ident", json_string("celeriac"));
    json_object_set_new(o, "sw_ver", json_string(EVENTS_VERSION));
    json_object_set_new(o, "sw_sys", json_string("Linux"));
    return o;
}

static void send_worker(cel_events_t *ev, const char *type) {
    if (ev->cfg->without_heartbeat) return;
    long active = 0, processed = 0;
    if (ev->load) ev->load(ev->priv, &active, &processed);
    double la[3] = { 0, 0, 0 };
    if (getloadavg(la, 3) < 0) la[0] = la[1] = la[2] = 0;
    json_t *f = json_object();
    json_object_set_new(f, "freq", json_real(CEL_EVENTS_FREQ));
    json_object_set_new(f, "active", json_integer(active));
    json_object_set_new(f, "processed", json_integer(processed));
    json_object_set_new(f, "loadavg",
                        json_pack("[f, f, f]", round(la[0] * 100) / 100, round(la[1] * 100) / 100,
                                  round(la[2] * 100) / 100));
    cel_events_send(ev, type, software(f));
}

void cel_events_heartbeat_now(cel_events_t *ev) {
    json_t *f = json_object();
    json_object_set_new(f, "freq", json_integer(5));
    cel_events_send(ev, "worker-heartbeat", software(f));
}

static void on_heart(uv_timer_t *t) {
    cel_events_t *ev = t->data;
    if (ev->online_sent) send_worker(ev, "worker-heartbeat");
}

static void on_state(void *priv, int up) {
    cel_events_t *ev = priv;
    if (up && !ev->online_sent) {
        ev->online_sent = 1;
        send_worker(ev, "worker-online");
    }
}

cel_events_t *cel_events_new(uv_loop_t *loop, const cel_options_t *cfg, cel_events_load_fn load,
                             void *priv) {
    cel_events_t *ev = calloc(1, sizeof(*ev));
    if (!ev) return NULL;
    ev->loop = loop;
    ev->cfg = cfg;
    ev->load = load;
    ev->priv = priv;
    ev->task_events = cfg->task_events;
    uv_timer_init(loop, &ev->heart);
    ev->heart.data = ev;
    uint64_t every = (uint64_t)(CEL_EVENTS_FREQ * 1000);
    uv_timer_start(&ev->heart, on_heart, every, every);
    cel_err_t err;
    ev->bus = cel_bus_new(loop, cfg, "events", 0, on_state, ev, &err);
    if (!ev->bus) {
        uv_close((uv_handle_t *)&ev->heart, NULL);
        return NULL; /* out of memory at start-up: the caller exits */
    }
    return ev;
}

static void close_step(void *priv) {
    cel_events_t *ev = priv;
    if (--ev->closing_left > 0) return;
    void (*cb)(void *) = ev->on_closed;
    void *cp = ev->closed_priv;
    free(ev);
    if (cb) cb(cp);
}

static void on_heart_closed(uv_handle_t *h) { close_step(h->data); }

void cel_events_close(cel_events_t *ev, void (*on_closed)(void *), void *priv) {
    ev->on_closed = on_closed;
    ev->closed_priv = priv;
    ev->closing_left = 2;
    /* The publish is queued before the close, which carries it out first. */
    if (ev->online_sent) send_worker(ev, "worker-offline");
    uv_timer_stop(&ev->heart);
    uv_close((uv_handle_t *)&ev->heart, on_heart_closed);
    cel_bus_close(ev->bus, close_step, ev);
}
