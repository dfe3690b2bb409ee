/* metrics.c -- the worker's metric registry and its Prometheus text rendering.
 *
 * One static registry, allocated by cel_metrics_init. Task metrics are kept
 * per series, a (task name, queue) pair found through a small open-addressing
 * table; past CEL_METRICS_MAX_SERIES pairs (names come from the network) the
 * rest share one series labelled "other", so a client cannot grow the page
 * without bound. Histograms keep per-bucket counts and are made cumulative
 * when rendered. Executor figures are kept per slot as the latest report
 * (gauges) or summed (counters: evictions, tokens, passes). Rendering follows
 * the text exposition format 0.0.4 (expfmt): HELP and TYPE once per family,
 * label values escaped (\\, \", \n) and cut to valid UTF-8. Pure: no I/O.
 * Main process, libuv loop thread only (no locks: nothing else calls it).
 */
#include "metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TABLE_SIZE 512 /* open addressing slots: > 2 * CEL_METRICS_MAX_SERIES */
#define HOST_MAX   256

/* Seconds: from a quick diag task to a long training step. */
static const double time_le[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                  1,     2.5,    5,     10,   30,    60,   120, 300,  600 };
/* Tasks in one packed model pass (--batch-max-tasks is at most 64). */
static const double batch_le[] = { 1, 2, 4, 8, 16, 32, 64 };

#define NTIME  (sizeof(time_le) / sizeof(time_le[0]))
#define NBATCH (sizeof(batch_le) / sizeof(batch_le[0]))

typedef struct hist {
    uint64_t n[NTIME + 1]; /* per bucket (not cumulative); the last is +Inf */
    uint64_t count;
    double sum;
} hist_t;

enum { C_RECEIVED, C_STARTED, C_SUCCEEDED, C_FAILED, C_RETRIED, C_REVOKED, C_N };

typedef struct series {
    char *name;  /* task name label (cut to a valid label) */
    char *queue; /* queue_name label */
    uint32_t hash;
    uint64_t c[C_N];
    hist_t runtime;
    hist_t wait;
} series_t;

typedef struct slot_stats {
    int reported; /* a result with stats came since the executor started */
    long adapters, adapters_gpu;
    double gpu_used, gpu_total;
} slot_stats_t;

typedef struct registry {
    char hostname[HOST_MAX];
    series_t *series[CEL_METRICS_MAX_SERIES + 1]; /* in creation order; the last: "other" */
    int nseries;
    series_t *other;
    int16_t table[TABLE_SIZE]; /* index into series + 1; 0 = empty */
    slot_stats_t slots[CEL_METRICS_MAX_SLOTS];
    uint64_t tokens_trained, tokens_scored;
    uint64_t evicted, evicted_gpu;
    hist_t batch_tasks; /* buckets of batch_le (n[NBATCH] is +Inf) */
    hist_t batch_seconds;
    int broker_up, broker_ever_up;
    uint64_t broker_reconnects;
    cel_metrics_collect_fn collect;
    void *collect_priv;
} registry_t;

static registry_t *reg; /* NULL: off */

/* ---- label values ------------------------------------------------------ */

/* Length of the longest prefix of s (at most max bytes) that is valid UTF-8
 * cut at a character boundary; *bad is set when an invalid sequence stopped it. */
static size_t utf8_prefix(const char *s, size_t max, int *bad) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    *bad = 0;
    while (p[i] && i < max) {
        size_t k;
        uint32_t cp;
        if (p[i] < 0x80) k = 1, cp = p[i];
        else if ((p[i] & 0xe0) == 0xc0) k = 2, cp = p[i] & 0x1f;
        else if ((p[i] & 0xf0) == 0xe0) k = 3, cp = p[i] & 0x0f;
        else if ((p[i] & 0xf8) == 0xf0) k = 4, cp = p[i] & 0x07;
        else {
            *bad = 1;
            break;
        }
        if (i + k > max) break;
        size_t j = 1;
        for (; j < k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) break;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if (j < k || (k == 2 && cp < 0x80) || (k == 3 && cp < 0x800) || (k == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
            *bad = 1;
            break;
        }
        i += k;
    }
    return i;
}

/* A label value we keep: s cut to CEL_METRICS_LABEL_MAX bytes of valid UTF-8
 * (the part before an invalid byte). New string or NULL. */
static char *label_dup(const char *s) {
    int bad;
    size_t n = utf8_prefix(s ? s : "", CEL_METRICS_LABEL_MAX, &bad);
    char *out = malloc(n + 1);
    if (!out) return NULL;
    memcpy(out, s ? s : "", n);
    out[n] = '\0';
    return out;
}

/* ---- lifecycle ----------------------------------------------------------- */

static void series_free(series_t *s) {
    if (!s) return;
    free(s->name);
    free(s->queue);
    free(s);
}

static series_t *series_new(const char *name, const char *queue, uint32_t hash) {
    series_t *s = calloc(1, sizeof(*s));
    if (!s) return NULL;
    s->name = label_dup(name);
    s->queue = label_dup(queue);
    s->hash = hash;
    if (!s->name || !s->queue) {
        series_free(s);
        return NULL;
    }
    return s;
}

int cel_metrics_init(const char *hostname, cel_err_t *err) {
    if (reg) return cel_err_set(err, CEL_ESTATE, "metrics are on already");
    registry_t *r = calloc(1, sizeof(*r));
    if (!r) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    int bad;
    size_t n = utf8_prefix(hostname ? hostname : "", HOST_MAX - 1, &bad);
    memcpy(r->hostname, hostname ? hostname : "", n);
    r->hostname[n] = '\0';
    if (!(r->other = series_new(CEL_METRICS_OTHER, CEL_METRICS_OTHER, 0))) {
        free(r);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    reg = r;
    return CEL_OK;
}

void cel_metrics_shutdown(void) {
    if (!reg) return;
    for (int i = 0; i < reg->nseries; i++) series_free(reg->series[i]);
    series_free(reg->other);
    free(reg);
    reg = NULL;
}

int cel_metrics_enabled(void) { return reg != NULL; }

void cel_metrics_set_collector(cel_metrics_collect_fn fn, void *priv) {
    if (!reg) return;
    reg->collect = fn;
    reg->collect_priv = priv;
}

/* ---- recording ----------------------------------------------------------- */

static uint32_t fnv1a(uint32_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 16777619u;
    return h;
}

/* The series of task t: its name and the queue it was routed to (the routing
 * key, which is the queue under Celery's default routing), both as kept (cut
 * to a valid label first, so names that differ only past the cut share one).
 * New ones are made until the cap, then "other" takes the rest (also when
 * out of memory). */
static series_t *series_of(const cel_task_t *t) {
    const char *name = t->name ? t->name : "";
    const char *queue = t->routing_key ? t->routing_key : "";
    int bad;
    size_t nlen = utf8_prefix(name, CEL_METRICS_LABEL_MAX, &bad);
    size_t qlen = utf8_prefix(queue, CEL_METRICS_LABEL_MAX, &bad);
    uint32_t h = fnv1a(fnv1a(2166136261u, name, nlen) * 31u + 1u, queue, qlen);
    for (uint32_t i = 0; i < TABLE_SIZE; i++) {
        int16_t *e = &reg->table[(h + i) % TABLE_SIZE];
        if (*e == 0) {
            if (reg->nseries == CEL_METRICS_MAX_SERIES) return reg->other;
            series_t *s = series_new(name, queue, h);
            if (!s) return reg->other;
            reg->series[reg->nseries++] = s;
            *e = (int16_t)reg->nseries;
            return s;
        }
        series_t *s = reg->series[*e - 1];
        if (s->hash == h && strlen(s->name) == nlen && memcmp(s->name, name, nlen) == 0 &&
            strlen(s->queue) == qlen && memcmp(s->queue, queue, qlen) == 0)
            return s;
    }
    return reg->other;
}

static void hist_add(hist_t *hs, const double *le, size_t nle, double v) {
    if (!isfinite(v) || v < 0) v = 0;
    size_t i = 0;
    while (i < nle && v > le[i]) i++;
    hs->n[i]++;
    hs->count++;
    hs->sum += v;
}

void cel_metrics_task_received(const cel_task_t *t) {
    if (reg) series_of(t)->c[C_RECEIVED]++;
}

void cel_metrics_task_started(const cel_task_t *t, double waited) {
    if (!reg) return;
    series_t *s = series_of(t);
    s->c[C_STARTED]++;
    hist_add(&s->wait, time_le, NTIME, waited);
}

void cel_metrics_task_done(const cel_task_t *t, const char *state, double runtime) {
    if (!reg || !state) return;
    int c;
    if (strcmp(state, "SUCCESS") == 0) c = C_SUCCEEDED;
    else if (strcmp(state, "FAILURE") == 0) c = C_FAILED;
    else if (strcmp(state, "RETRY") == 0) c = C_RETRIED;
    else if (strcmp(state, "REVOKED") == 0) c = C_REVOKED;
    else return;
    series_t *s = series_of(t);
    s->c[c]++;
    if (runtime >= 0) hist_add(&s->runtime, time_le, NTIME, runtime);
}

void cel_metrics_executor_result(int slot, const cel_frame_result_t *res) {
    if (!reg || !res->stats.present) return;
    const cel_frame_stats_t *st = &res->stats;
    reg->tokens_trained += (uint64_t)st->tokens_trained;
    reg->tokens_scored += (uint64_t)st->tokens_scored;
    reg->evicted += (uint64_t)st->evicted;
    reg->evicted_gpu += (uint64_t)st->evicted_gpu;
    if (st->pass_tasks > 0) {
        hist_add(&reg->batch_tasks, batch_le, NBATCH, (double)st->pass_tasks);
        hist_add(&reg->batch_seconds, time_le, NTIME, st->pass_s);
    }
    if (slot < 0 || slot >= CEL_METRICS_MAX_SLOTS) return;
    slot_stats_t *ss = &reg->slots[slot];
    ss->reported = 1;
    if (st->adapters >= 0) ss->adapters = st->adapters;
    if (st->adapters_gpu >= 0) ss->adapters_gpu = st->adapters_gpu;
    ss->gpu_used = st->gpu_used;
    ss->gpu_total = st->gpu_total;
}

void cel_metrics_executor_ready(int slot) {
    if (reg && slot >= 0 && slot < CEL_METRICS_MAX_SLOTS)
        memset(&reg->slots[slot], 0, sizeof(reg->slots[slot]));
}

void cel_metrics_broker_state(int up) {
    if (!reg) return;
    if (up && !reg->broker_up && reg->broker_ever_up) reg->broker_reconnects++;
    if (up) reg->broker_ever_up = 1;
    reg->broker_up = up ? 1 : 0;
}

/* ---- rendering ----------------------------------------------------------- */

typedef struct text {
    char *buf;
    size_t len, cap;
    int oom;
} text_t;

static void grow(text_t *o, size_t need) {
    if (o->oom || need <= o->cap - o->len) return;
    size_t cap = o->cap ? o->cap : 16384;
    while (cap - o->len < need) cap *= 2;
    char *nb = realloc(o->buf, cap);
    if (!nb) {
        o->oom = 1;
        return;
    }
    o->buf = nb;
    o->cap = cap;
}

static void puts_n(text_t *o, const char *s, size_t n) {
    grow(o, n + 1);
    if (o->oom) return;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    o->buf[o->len] = '\0';
}

static void printf_to(text_t *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void printf_to(text_t *o, const char *fmt, ...) {
    for (int tries = 0; tries < 2 && !o->oom; tries++) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = o->cap - o->len;
        int n = vsnprintf(o->buf ? o->buf + o->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) {
            o->oom = 1;
            return;
        }
        if ((size_t)n < room) {
            o->len += (size_t)n;
            return;
        }
        grow(o, (size_t)n + 1);
    }
}

/* A label value, escaped as the text format wants (kept values are valid UTF-8). */
static void put_value(text_t *o, const char *v) {
    for (const char *p = v; *p; p++) {
        if (*p == '\\') puts_n(o, "\\\\", 2);
        else if (*p == '"') puts_n(o, "\\\"", 2);
        else if (*p == '\n') puts_n(o, "\\n", 2);
        else puts_n(o, p, 1);
    }
}

static void family(text_t *o, const char *name, const char *type, const char *help) {
    printf_to(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Starts a sample: name{hostname="..."[,k="v"...] -- the caller closes it
 * with labels_end. */
static void sample_start(text_t *o, const char *name) {
    printf_to(o, "%s{hostname=\"", name);
    put_value(o, reg->hostname);
    puts_n(o, "\"", 1);
}

static void label(text_t *o, const char *k, const char *v) {
    printf_to(o, ",%s=\"", k);
    put_value(o, v);
    puts_n(o, "\"", 1);
}

static void task_labels(text_t *o, const char *name, const series_t *s) {
    sample_start(o, name);
    label(o, "name", s->name);
    label(o, "queue_name", s->queue);
}

static void value_u(text_t *o, uint64_t v) { printf_to(o, "} %llu\n", (unsigned long long)v); }

static void value_d(text_t *o, double v) { printf_to(o, "} %.17g\n", v); }

/* The _bucket, _sum and _count samples of hs; labels(o, name, arg) writes
 * the opening and the labels before "le". */
static void hist_samples(text_t *o, const char *base, const hist_t *hs, const double *le,
                         size_t nle, void (*labels)(text_t *, const char *, const void *),
                         const void *arg) {
    char name[128];
    uint64_t cum = 0;
    snprintf(name, sizeof(name), "%s_bucket", base);
    for (size_t i = 0; i <= nle; i++) {
        cum += hs->n[i];
        labels(o, name, arg);
        if (i < nle) printf_to(o, ",le=\"%g\"", le[i]);
        else puts_n(o, ",le=\"+Inf\"", 10);
        value_u(o, cum);
    }
    snprintf(name, sizeof(name), "%s_sum", base);
    labels(o, name, arg);
    value_d(o, hs->sum);
    snprintf(name, sizeof(name), "%s_count", base);
    labels(o, name, arg);
    value_u(o, hs->count);
}

static void series_labels(text_t *o, const char *name, const void *arg) {
    task_labels(o, name, arg);
}

static void host_labels(text_t *o, const char *name, const void *arg) { sample_start(o, name); }

/* Every series, "other" last when it was used. */
static int nall(void) {
    const series_t *x = reg->other;
    int used = 0;
    for (int c = 0; c < C_N; c++) used |= x->c[c] != 0;
    return reg->nseries + (used ? 1 : 0);
}

static const series_t *nth(int i) { return i < reg->nseries ? reg->series[i] : reg->other; }

static void render_tasks(text_t *o) {
    static const struct {
        const char *name, *help;
    } counters[C_N] = {
        { "celeriac_task_received_total", "Task messages the worker accepted (task-received)." },
        { "celeriac_task_started_total", "Tasks handed to an executor (task-started)." },
        { "celeriac_task_succeeded_total", "Tasks that finished with SUCCESS." },
        { "celeriac_task_failed_total", "Tasks that finished with FAILURE." },
        { "celeriac_task_retried_total", "Tasks that finished with RETRY." },
        { "celeriac_task_revoked_total", "Tasks finished as REVOKED (revoked, expired, "
                                         "terminated)." },
    };
    int n = nall();
    for (int c = 0; c < C_N; c++) {
        family(o, counters[c].name, "counter", counters[c].help);
        for (int i = 0; i < n; i++) {
            task_labels(o, counters[c].name, nth(i));
            value_u(o, nth(i)->c[c]);
        }
    }
    family(o, "celeriac_task_runtime_seconds", "histogram",
           "Seconds tasks ran on an executor, by task name.");
    for (int i = 0; i < n; i++)
        hist_samples(o, "celeriac_task_runtime_seconds", &nth(i)->runtime, time_le, NTIME,
                     series_labels, nth(i));
    family(o, "celeriac_task_queue_wait_seconds", "histogram",
           "Seconds tasks waited in the worker (from received, or their eta, to an executor).");
    for (int i = 0; i < n; i++)
        hist_samples(o, "celeriac_task_queue_wait_seconds", &nth(i)->wait, time_le, NTIME,
                     series_labels, nth(i));
}

static void gauge1(text_t *o, const char *name, const char *help, double v) {
    family(o, name, "gauge", help);
    sample_start(o, name);
    value_d(o, v);
}

static void render_live(text_t *o, const cel_metrics_live_t *lv) {
    gauge1(o, "celeriac_worker_up", "1 while the worker runs.", 1);
    gauge1(o, "celeriac_worker_tasks_active", "Tasks running on executors now.", lv->active);
    family(o, "celeriac_executors", "gauge", "Executor processes by state (busy, idle).");
    sample_start(o, "celeriac_executors");
    label(o, "state", "busy");
    value_d(o, lv->busy);
    sample_start(o, "celeriac_executors");
    label(o, "state", "idle");
    value_d(o, lv->executors > lv->busy ? lv->executors - lv->busy : 0);
    gauge1(o, "celeriac_executor_slots", "Executor slots (the concurrency).", lv->slots);
    family(o, "celeriac_requests", "gauge",
           "Task messages the worker holds, by state: scheduled (eta/countdown), reserved "
           "(prefetched, waiting for an executor), active (running).");
    static const char *const states[] = { "scheduled", "reserved", "active" };
    const int counts[] = { lv->scheduled, lv->reserved, lv->active };
    for (int i = 0; i < 3; i++) {
        sample_start(o, "celeriac_requests");
        label(o, "state", states[i]);
        value_d(o, counts[i]);
    }
    gauge1(o, "celeriac_prefetch_limit",
           "Reserved messages the worker may hold (the prefetch "
           "window).",
           lv->prefetch_count);
    gauge1(o, "celeriac_eta_task_limit",
           "Scheduled (eta/countdown) messages the worker may hold "
           "before it stops fetching; 0: no limit.",
           lv->eta_limit);
    family(o, "celeriac_queue_consumed", "gauge", "1 for each queue the worker consumes.");
    for (int i = 0; i < lv->nqueues && i < CEL_METRICS_MAX_QUEUES; i++) {
        if (!lv->queues[i]) continue;
        sample_start(o, "celeriac_queue_consumed");
        char *q = label_dup(lv->queues[i]);
        label(o, "queue_name", q ? q : "");
        free(q);
        value_d(o, 1);
    }
}

static void render_executors(text_t *o, int slots) {
    if (slots > CEL_METRICS_MAX_SLOTS) slots = CEL_METRICS_MAX_SLOTS;
    char ex[16];
    family(o, "celeriac_adapters_resident", "gauge",
           "LoRA adapters an executor holds, in its memory and on the GPU.");
    for (int i = 0; i < slots; i++) {
        const slot_stats_t *ss = &reg->slots[i];
        if (!ss->reported) continue;
        snprintf(ex, sizeof(ex), "%d", i + 1);
        sample_start(o, "celeriac_adapters_resident");
        label(o, "executor", ex);
        label(o, "tier", "memory");
        value_d(o, (double)ss->adapters);
        if (ss->gpu_total > 0) {
            sample_start(o, "celeriac_adapters_resident");
            label(o, "executor", ex);
            label(o, "tier", "gpu");
            value_d(o, (double)ss->adapters_gpu);
        }
    }
    family(o, "celeriac_adapter_evictions_total", "counter",
           "Adapters evicted: from an executor's memory (tier=memory, reloaded from their "
           "checkpoint) or from the GPU to host memory (tier=gpu).");
    sample_start(o, "celeriac_adapter_evictions_total");
    label(o, "tier", "memory");
    value_u(o, reg->evicted);
    sample_start(o, "celeriac_adapter_evictions_total");
    label(o, "tier", "gpu");
    value_u(o, reg->evicted_gpu);
    family(o, "celeriac_gpu_memory_used_bytes", "gauge", "GPU memory an executor's model holds.");
    for (int i = 0; i < slots; i++) {
        if (reg->slots[i].gpu_total <= 0) continue;
        snprintf(ex, sizeof(ex), "%d", i + 1);
        sample_start(o, "celeriac_gpu_memory_used_bytes");
        label(o, "executor", ex);
        value_d(o, reg->slots[i].gpu_used);
    }
    family(o, "celeriac_gpu_memory_total_bytes", "gauge", "Memory of an executor's GPU.");
    for (int i = 0; i < slots; i++) {
        if (reg->slots[i].gpu_total <= 0) continue;
        snprintf(ex, sizeof(ex), "%d", i + 1);
        sample_start(o, "celeriac_gpu_memory_total_bytes");
        label(o, "executor", ex);
        value_d(o, reg->slots[i].gpu_total);
    }
}

static void render_model(text_t *o) {
    family(o, "celeriac_batch_tasks", "histogram",
           "Model tasks per pass (a packed pass runs the base model once for several users).");
    hist_samples(o, "celeriac_batch_tasks", &reg->batch_tasks, batch_le, NBATCH, host_labels, NULL);
    family(o, "celeriac_batch_duration_seconds", "histogram", "Seconds of one model pass.");
    hist_samples(o, "celeriac_batch_duration_seconds", &reg->batch_seconds, time_le, NTIME,
                 host_labels, NULL);
    family(o, "celeriac_tokens_trained_total", "counter",
           "Tokens lora.forward_backward trained on (rate() gives tokens/s).");
    sample_start(o, "celeriac_tokens_trained_total");
    value_u(o, reg->tokens_trained);
    family(o, "celeriac_tokens_scored_total", "counter", "Tokens model.score scored.");
    sample_start(o, "celeriac_tokens_scored_total");
    value_u(o, reg->tokens_scored);
}

int cel_metrics_render(char **out, size_t *len, cel_err_t *err) {
    *out = NULL;
    *len = 0;
    if (!reg) return cel_err_set(err, CEL_ESTATE, "metrics are off");
    cel_metrics_live_t lv;
    memset(&lv, 0, sizeof(lv));
    if (reg->collect) reg->collect(reg->collect_priv, &lv);
    text_t o = { 0 };
    grow(&o, 16384);
    render_tasks(&o);
    render_live(&o, &lv);
    render_executors(&o, lv.slots);
    render_model(&o);
    if (lv.gpu_adapter_limit > 0)
        gauge1(&o, "celeriac_gpu_adapter_memory_limit_bytes",
               "GPU memory adapters may hold before the least recently used move to host "
               "memory (--gpu-adapter-memory).",
               (double)lv.gpu_adapter_limit);
    gauge1(&o, "celeriac_broker_up", "1 while the broker connection is up.", reg->broker_up);
    family(&o, "celeriac_broker_reconnects_total", "counter",
           "Times the broker connection came back after it was lost.");
    sample_start(&o, "celeriac_broker_reconnects_total");
    value_u(&o, reg->broker_reconnects);
    if (o.oom) {
        free(o.buf);
        return cel_err_set(err, CEL_ENOMEM, "out of memory rendering metrics");
    }
    *out = o.buf;
    *len = o.len;
    return CEL_OK;
}
