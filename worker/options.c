/* options.c -- command line and environment parsing for the celeriac worker.
 *
 * Runs once in the main process before the event loop. Option names follow
 * `celery worker` (celery/bin/worker.py); node names expand like
 * celery/utils/nodenames.py. Nothing here touches the network.
 */
#include "options.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../common/log.h"

#define CEL_VERSION "0.1.0"

static const char usage_text[] =
    "Usage: celeriac [OPTIONS]\n"
    "A Celery worker written in C: consumes Celery tasks from Redis and stores\n"
    "results in the Celery Redis result backend.\n"
    "\n"
    "  -b, --broker URL             broker URL (env CELERY_BROKER_URL;\n"
    "                               default redis://127.0.0.1:6379/0)\n"
    "      --result-backend URL     result backend URL (env CELERY_RESULT_BACKEND;\n"
    "                               default: the broker URL)\n"
    "  -Q, --queues LIST            comma-separated queues to consume (default celery)\n"
    "  -c, --concurrency N          executor processes (default: number of CPUs)\n"
    "  -n, --hostname NAME          node name; %h host, %n name, %d domain\n"
    "                               (default celeriac@%h)\n"
    "      --prefetch-multiplier N  messages held per executor (default 4; 0 = no limit)\n"
    "  -l, --loglevel LEVEL         DEBUG, INFO, WARNING, ERROR, CRITICAL (default WARNING)\n"
    "  -f, --logfile FILE           log to FILE instead of stderr\n"
    "      --pidfile FILE           write the main process id to FILE\n"
    "      --time-limit S           hard time limit per task, seconds (kills the executor)\n"
    "      --soft-time-limit S      soft time limit per task (SoftTimeLimitExceeded)\n"
    "      --max-tasks-per-child N  replace an executor after N tasks\n"
    "      --state-dir DIR          directory for persistent worker state (revoked task\n"
    "                               ids are kept there, like celery's --statedb)\n"
    "  -E, --task-events            send task events (task-received, -started, ...)\n"
    "      --without-heartbeat      send no worker-online/heartbeat/offline events\n"
    "      --result-expires S       result time to live, seconds (default 86400; 0 = never)\n"
    "      --visibility-timeout S   seconds before an unacked message is restored to its\n"
    "                               queue (kombu's visibility_timeout; default 3600)\n"
    "      --max-message-size BYTES largest message accepted (default 8388608)\n"
    "      --executor PATH          executor program (default: celeriac-executor beside\n"
    "                               this program)\n"
    "      --model DIR              model folder the executors load (default: the\n"
    "                               bundled model, model/tiny)\n"
    "      --import-root DIR        lora.load may also read adapters from DIR (repeatable)\n"
    "      --max-input-tokens N     longest example a training or scoring task accepts\n"
    "      --device D               where executors run the model: auto (a GPU when one\n"
    "                               is visible, else the CPU; the default), cpu, cuda,\n"
    "                               cuda:N. On a GPU one executor serves every task\n"
    "                               (-c is 1) and packs waiting model tasks into passes\n"
    "      --batch-max-tasks K      model tasks (lora.forward_backward, model.score) an\n"
    "                               executor packs into one pass (default 16 on a GPU,\n"
    "                               1 = off on the CPU)\n"
    "      --batch-wait-ms MS       wait this long for a partial batch to fill (default 2)\n"
    "      --batch-max-tokens N     padded tokens of one packed pass (default 16384)\n"
    "      --gpu-adapter-memory MB  GPU memory adapters may hold; past it the least\n"
    "                               recently used go back to host memory (default 0 =\n"
    "                               no limit)\n"
    "      --metrics-port PORT      serve Prometheus metrics on http://ADDR:PORT/metrics\n"
    "                               (env CELERIAC_METRICS_PORT; default: off; 0 picks a\n"
    "                               free port, logged)\n"
    "      --metrics-bind ADDR      address the metrics listen on (default 127.0.0.1)\n"
    "      --eta-task-limit N       eta/countdown messages held at once; past it the\n"
    "                               worker stops fetching until some are due (default\n"
    "                               10000; 0 = no limit)\n"
    "      --describe-tasks         print the task table as JSON (names, parameters,\n"
    "                               limits) and exit; contacts nothing\n"
    "  -h, --help                   show this help\n"
    "      --version                show the version\n";

static int settle_device(cel_options_t *cfg, int concurrency_set);

enum {
    OPT_BACKEND = 1000,
    OPT_PREFETCH,
    OPT_PIDFILE,
    OPT_TIME_LIMIT,
    OPT_SOFT_TIME_LIMIT,
    OPT_MAX_TASKS,
    OPT_STATE_DIR,
    OPT_RESULT_EXPIRES,
    OPT_VISIBILITY,
    OPT_MAX_MSG,
    OPT_EXECUTOR,
    OPT_VERSION,
    OPT_MODEL,
    OPT_IMPORT_ROOT,
    OPT_MAX_INPUT,
    OPT_NO_HEARTBEAT,
    OPT_DEVICE,
    OPT_BATCH_TASKS,
    OPT_BATCH_WAIT,
    OPT_BATCH_TOKENS,
    OPT_GPU_MEM,
    OPT_DESCRIBE,
    OPT_METRICS_PORT,
    OPT_METRICS_BIND,
    OPT_ETA_LIMIT,
};

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int copy_str(char *dst, size_t size, const char *src, const char *what, cel_err_t *err) {
    size_t n = strlen(src);
    if (n >= size) return cel_err_set(err, CEL_EINVAL, "%s is too long (%zu bytes)", what, n);
    memcpy(dst, src, n + 1);
    return CEL_OK;
}

static int parse_long(const char *s, long min, long max, long *out, const char *what,
                      cel_err_t *err) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end != '\0' || v < min || v > max)
        return cel_err_set(err, CEL_EINVAL, "%s: expected an integer in [%ld, %ld], got '%s'", what,
                           min, max, s);
    *out = v;
    return CEL_OK;
}

static int parse_seconds(const char *s, double *out, const char *what, cel_err_t *err) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end != '\0' || !isfinite(v) || v < 0 || v > 1e9)
        return cel_err_set(err, CEL_EINVAL, "%s: expected seconds >= 0, got '%s'", what, s);
    *out = v;
    return CEL_OK;
}

/* Decodes %XX escapes in place, as redis-py unquotes URL credentials. */
static void percent_decode(char *s) {
    char *o = s;
    for (char *p = s; *p; p++) {
        int hi, lo;
        if (p[0] == '%' && p[1] && p[2] && (hi = hexval(p[1])) >= 0 && (lo = hexval(p[2])) >= 0) {
            *o++ = (char)(hi * 16 + lo);
            p += 2;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
}

int cel_options_parse_redis_url(const char *url, cel_redis_url_t *out, cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    snprintf(out->host, sizeof(out->host), "127.0.0.1");
    out->port = 6379;
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else {
        return cel_err_set(err, CEL_EINVAL,
                           "unsupported URL '%s': only redis://[:password@]host:port/db", url);
    }
    const char *at = strrchr(p, '@');
    const char *slash = strchr(p, '/');
    if (at && slash && at > slash) at = NULL; /* an @ in the path is not userinfo */
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
        if (colon) {
            size_t plen = (size_t)(at - colon - 1);
            if (ulen >= sizeof(out->user) || plen >= sizeof(out->password))
                return cel_err_set(err, CEL_EINVAL, "credentials in '%s' are too long", url);
            memcpy(out->user, p, ulen);
            memcpy(out->password, colon + 1, plen);
        } else {
            /* redis://password@host is how redis-py reads a bare userinfo */
            if (ulen >= sizeof(out->password))
                return cel_err_set(err, CEL_EINVAL, "password in '%s' is too long", url);
            memcpy(out->password, p, ulen);
        }
        percent_decode(out->user);
        percent_decode(out->password);
        p = at + 1;
    }
    const char *hend;
    if (*p == '[') {
        /* [IPv6 address] */
        const char *close = strchr(p, ']');
        if (!close || (size_t)(close - p - 1) >= sizeof(out->host))
            return cel_err_set(err, CEL_EINVAL, "bad IPv6 host in '%s'", url);
        memcpy(out->host, p + 1, (size_t)(close - p - 1));
        out->host[close - p - 1] = '\0';
        hend = close + 1;
        p = hend;
        goto port;
    }
    hend = p + strcspn(p, ":/?");
    if (hend > p) {
        if ((size_t)(hend - p) >= sizeof(out->host))
            return cel_err_set(err, CEL_EINVAL, "host in '%s' is too long", url);
        memcpy(out->host, p, (size_t)(hend - p));
        out->host[hend - p] = '\0';
    }
    p = hend;
port:
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port <= 0 || port > 65535)
            return cel_err_set(err, CEL_EINVAL, "bad port in '%s'", url);
        out->port = (int)port;
        p = end;
    }
    if (*p == '/') {
        p++;
        if (*p && *p != '?') {
            char *end;
            long db = strtol(p, &end, 10);
            if (end == p || db < 0 || db > 100000 || (*end && *end != '?'))
                return cel_err_set(err, CEL_EINVAL, "bad database number in '%s'", url);
            out->db = (int)db;
            p = end;
        }
    }
    if (*p && *p != '?') return cel_err_set(err, CEL_EINVAL, "cannot parse URL '%s'", url);
    return CEL_OK;
}

int cel_options_expand_hostname(const char *pattern, char *out, size_t size, cel_err_t *err) {
    char host[256];
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    const char *dot = strchr(host, '.');
    char name[256], domain[256];
    snprintf(name, sizeof(name), "%.*s", dot ? (int)(dot - host) : (int)strlen(host), host);
    snprintf(domain, sizeof(domain), "%s", dot ? dot + 1 : "");

    /* A name without '@' gets the host appended, as celery's default_nodename. */
    char pat[512];
    if (strchr(pattern, '@')) snprintf(pat, sizeof(pat), "%s", pattern);
    else snprintf(pat, sizeof(pat), "%s@%%h", pattern);

    size_t o = 0;
    for (const char *p = pat; *p; p++) {
        const char *rep = NULL;
        char one[2] = { *p, 0 };
        if (*p == '%' && p[1]) {
            p++;
            if (*p == 'h') rep = host;
            else if (*p == 'n') rep = name;
            else if (*p == 'd') rep = domain;
            else if (*p == '%') rep = "%";
            else {
                one[0] = '%';
                p--;
                rep = one;
            }
        } else {
            rep = one;
        }
        size_t n = strlen(rep);
        if (o + n + 1 > size) return cel_err_set(err, CEL_EINVAL, "node name too long");
        memcpy(out + o, rep, n);
        o += n;
    }
    out[o] = '\0';
    return CEL_OK;
}

static int set_queues(cel_options_t *cfg, const char *list, cel_err_t *err) {
    for (int i = 0; i < cfg->nqueues; i++) free(cfg->queues[i]);
    cfg->nqueues = 0;
    const char *p = list;
    while (*p) {
        size_t n = strcspn(p, ",");
        const char *s = p;
        while (n && *s == ' ') s++, n--;
        while (n && s[n - 1] == ' ') n--;
        if (n) {
            if (cfg->nqueues == CEL_MAX_QUEUES)
                return cel_err_set(err, CEL_EINVAL, "too many queues (max %d)", CEL_MAX_QUEUES);
            if (n > 200) return cel_err_set(err, CEL_EINVAL, "queue name too long");
            cfg->queues[cfg->nqueues] = strndup(s, n);
            if (!cfg->queues[cfg->nqueues]) return cel_err_set(err, CEL_ENOMEM, "out of memory");
            cfg->nqueues++;
        }
        p = s + strcspn(s, ",");
        if (*p == ',') p++;
    }
    if (cfg->nqueues == 0) return cel_err_set(err, CEL_EINVAL, "no queue named in '%s'", list);
    return CEL_OK;
}

/* Finds celeriac-executor next to our own binary (/proc/self/exe). */
static void default_executor(char *out, size_t size) {
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n <= 0) {
        snprintf(out, size, "celeriac-executor");
        return;
    }
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (slash) *slash = '\0';
    if (strlen(self) + sizeof("/celeriac-executor") > size) {
        snprintf(out, size, "celeriac-executor");
        return;
    }
    strcpy(out, self);
    strcat(out, "/celeriac-executor");
}

int cel_options_parse(cel_options_t *cfg, int argc, char **argv, cel_err_t *err) {
    memset(cfg, 0, sizeof(*cfg));
    const char *env;
    snprintf(cfg->broker_url, sizeof(cfg->broker_url), "%s",
             (env = getenv("CELERY_BROKER_URL")) && *env ? env : "redis://127.0.0.1:6379/0");
    if ((env = getenv("CELERY_RESULT_BACKEND")) && *env)
        snprintf(cfg->backend_url, sizeof(cfg->backend_url), "%s", env);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cfg->batch_wait_ms = -1; /* settle_device's default */
    cfg->concurrency =
        ncpu > 0 ? (int)(ncpu > CEL_MAX_CONCURRENCY ? CEL_MAX_CONCURRENCY : ncpu) : 1;
    cfg->prefetch_multiplier = 4;
    cfg->loglevel = CEL_LOG_WARNING;
    cfg->result_expires = 86400;
    cfg->visibility_timeout = 3600;
    cfg->max_message_size = 8L * 1024 * 1024;
    cfg->metrics_port = -1;
    if ((env = getenv("CELERIAC_METRICS_PORT")) && *env) {
        long port;
        int rc = parse_long(env, 0, 65535, &port, "CELERIAC_METRICS_PORT", err);
        if (rc != CEL_OK) return rc;
        cfg->metrics_port = (int)port;
    }
    snprintf(cfg->metrics_bind, sizeof(cfg->metrics_bind), "127.0.0.1");
    cfg->eta_task_limit = CEL_ETA_TASK_LIMIT;
    const char *hostname_pat = "celeriac@%h";
    const char *queues = "celery";
    default_executor(cfg->executor, sizeof(cfg->executor));

    static const struct option opts[] = {
        { "broker", required_argument, 0, 'b' },
        { "result-backend", required_argument, 0, OPT_BACKEND },
        { "queues", required_argument, 0, 'Q' },
        { "concurrency", required_argument, 0, 'c' },
        { "hostname", required_argument, 0, 'n' },
        { "prefetch-multiplier", required_argument, 0, OPT_PREFETCH },
        { "loglevel", required_argument, 0, 'l' },
        { "logfile", required_argument, 0, 'f' },
        { "pidfile", required_argument, 0, OPT_PIDFILE },
        { "time-limit", required_argument, 0, OPT_TIME_LIMIT },
        { "soft-time-limit", required_argument, 0, OPT_SOFT_TIME_LIMIT },
        { "max-tasks-per-child", required_argument, 0, OPT_MAX_TASKS },
        { "state-dir", required_argument, 0, OPT_STATE_DIR },
        { "result-expires", required_argument, 0, OPT_RESULT_EXPIRES },
        { "visibility-timeout", required_argument, 0, OPT_VISIBILITY },
        { "max-message-size", required_argument, 0, OPT_MAX_MSG },
        { "executor", required_argument, 0, OPT_EXECUTOR },
        { "model", required_argument, 0, OPT_MODEL },
        { "import-root", required_argument, 0, OPT_IMPORT_ROOT },
        { "max-input-tokens", required_argument, 0, OPT_MAX_INPUT },
        { "device", required_argument, 0, OPT_DEVICE },
        { "batch-max-tasks", required_argument, 0, OPT_BATCH_TASKS },
        { "batch-wait-ms", required_argument, 0, OPT_BATCH_WAIT },
        { "batch-max-tokens", required_argument, 0, OPT_BATCH_TOKENS },
        { "gpu-adapter-memory", required_argument, 0, OPT_GPU_MEM },
        { "task-events", no_argument, 0, 'E' },
        { "without-heartbeat", no_argument, 0, OPT_NO_HEARTBEAT },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, OPT_VERSION },
        { "describe-tasks", no_argument, 0, OPT_DESCRIBE },
        { "metrics-port", required_argument, 0, OPT_METRICS_PORT },
        { "metrics-bind", required_argument, 0, OPT_METRICS_BIND },
        { "eta-task-limit", required_argument, 0, OPT_ETA_LIMIT },
        { 0, 0, 0, 0 },
    };
    optind = 0; /* 0, not 1: glibc then forgets the state of any earlier parse */
    opterr = 0;
    int c, rc = CEL_OK, concurrency_set = 0;
    long v = 0;
    while ((c = getopt_long(argc, argv, ":b:Q:c:n:l:f:hE", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            rc = copy_str(cfg->broker_url, sizeof(cfg->broker_url), optarg, "--broker", err);
            break;
        case OPT_BACKEND:
            rc = copy_str(cfg->backend_url, sizeof(cfg->backend_url), optarg, "--result-backend",
                          err);
            break;
        case 'Q': queues = optarg; break;
        case 'c':
            rc = parse_long(optarg, 1, CEL_MAX_CONCURRENCY, &v, "--concurrency", err);
            cfg->concurrency = (int)v;
            concurrency_set = 1;
            break;
        case 'n': hostname_pat = optarg; break;
        case OPT_PREFETCH:
            rc = parse_long(optarg, 0, 100000, &v, "--prefetch-multiplier", err);
            cfg->prefetch_multiplier = (int)v;
            break;
        case 'l':
            cfg->loglevel = cel_log_parse_level(optarg);
            if (cfg->loglevel < 0)
                rc = cel_err_set(err, CEL_EINVAL, "--loglevel: unknown level '%s'", optarg);
            break;
        case 'f':
            rc = copy_str(cfg->logfile, sizeof(cfg->logfile), optarg, "--logfile", err);
            break;
        case OPT_PIDFILE:
            rc = copy_str(cfg->pidfile, sizeof(cfg->pidfile), optarg, "--pidfile", err);
            break;
        case OPT_TIME_LIMIT:
            rc = parse_seconds(optarg, &cfg->time_limit, "--time-limit", err);
            break;
        case OPT_SOFT_TIME_LIMIT:
            rc = parse_seconds(optarg, &cfg->soft_time_limit, "--soft-time-limit", err);
            break;
        case OPT_MAX_TASKS:
            rc = parse_long(optarg, 0, INT_MAX, &v, "--max-tasks-per-child", err);
            cfg->max_tasks_per_child = (int)v;
            break;
        case OPT_STATE_DIR:
            rc = copy_str(cfg->state_dir, sizeof(cfg->state_dir), optarg, "--state-dir", err);
            break;
        case OPT_RESULT_EXPIRES:
            rc = parse_seconds(optarg, &cfg->result_expires, "--result-expires", err);
            break;
        case OPT_VISIBILITY:
            rc = parse_seconds(optarg, &cfg->visibility_timeout, "--visibility-timeout", err);
            if (rc == CEL_OK && cfg->visibility_timeout < 1)
                rc = cel_err_set(err, CEL_EINVAL, "--visibility-timeout must be >= 1 second");
            break;
        case OPT_MAX_MSG:
            rc = parse_long(optarg, 1024, 64L * 1024 * 1024, &v, "--max-message-size", err);
            cfg->max_message_size = v;
            break;
        case OPT_EXECUTOR:
            rc = copy_str(cfg->executor, sizeof(cfg->executor), optarg, "--executor", err);
            break;
        case OPT_MODEL:
            rc = copy_str(cfg->model, sizeof(cfg->model), optarg, "--model", err);
            break;
        case OPT_IMPORT_ROOT:
            if (cfg->nimport_roots ==
                (int)(sizeof(cfg->import_roots) / sizeof(cfg->import_roots[0])))
                rc = cel_err_set(err, CEL_EINVAL, "too many --import-root options");
            else if (!(cfg->import_roots[cfg->nimport_roots++] = strdup(optarg)))
                rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
            break;
        case OPT_MAX_INPUT:
            rc = parse_long(optarg, 1, 1L << 20, &v, "--max-input-tokens", err);
            cfg->max_input_tokens = v;
            break;
        case OPT_DEVICE:
            rc = copy_str(cfg->device, sizeof(cfg->device), optarg, "--device", err);
            if (rc == CEL_OK && strcmp(optarg, "auto") && strcmp(optarg, "cpu") &&
                strcmp(optarg, "cuda") && strncmp(optarg, "cuda:", 5))
                rc = cel_err_set(err, CEL_EINVAL, "--device: expected auto, cpu, cuda or cuda:N");
            break;
        case OPT_BATCH_TASKS:
            rc = parse_long(optarg, 1, CEL_MAX_BATCH_TASKS, &v, "--batch-max-tasks", err);
            cfg->batch_max_tasks = (int)v;
            break;
        case OPT_BATCH_WAIT:
            rc = parse_long(optarg, 0, 1000, &v, "--batch-wait-ms", err);
            cfg->batch_wait_ms = (int)v;
            break;
        case OPT_BATCH_TOKENS:
            rc = parse_long(optarg, 1, 1L << 22, &v, "--batch-max-tokens", err);
            cfg->batch_max_tokens = v;
            break;
        case OPT_GPU_MEM:
            rc = parse_long(optarg, 0, 1L << 30, &v, "--gpu-adapter-memory", err);
            cfg->gpu_adapter_mb = v;
            break;
        case OPT_METRICS_PORT:
            rc = parse_long(optarg, 0, 65535, &v, "--metrics-port", err);
            cfg->metrics_port = (int)v;
            break;
        case OPT_METRICS_BIND:
            rc = copy_str(cfg->metrics_bind, sizeof(cfg->metrics_bind), optarg, "--metrics-bind",
                          err);
            break;
        case OPT_ETA_LIMIT:
            rc = parse_long(optarg, 0, INT_MAX, &v, "--eta-task-limit", err);
            cfg->eta_task_limit = (int)v;
            break;
        case 'E': cfg->task_events = 1; break;
        case OPT_NO_HEARTBEAT: cfg->without_heartbeat = 1; break;
        case 'h': fputs(usage_text, stdout); return 1;
        case OPT_VERSION: printf("celeriac %s\n", CEL_VERSION); return 1;
        case OPT_DESCRIBE: cfg->describe_tasks = 1; return 1;
        case ':': return cel_err_set(err, CEL_EINVAL, "option %s needs a value", argv[optind - 1]);
        default:
            return cel_err_set(err, CEL_EINVAL, "unknown option %s (see --help)", argv[optind - 1]);
        }
        if (rc != CEL_OK) return rc;
    }
    if (optind < argc)
        return cel_err_set(err, CEL_EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
    if (!cfg->backend_url[0])
        snprintf(cfg->backend_url, sizeof(cfg->backend_url), "%s", cfg->broker_url);
    if ((rc = cel_options_parse_redis_url(cfg->broker_url, &cfg->broker, err)) != CEL_OK) return rc;
    if ((rc = cel_options_parse_redis_url(cfg->backend_url, &cfg->backend, err)) != CEL_OK)
        return rc;
    if ((rc = set_queues(cfg, queues, err)) != CEL_OK) return rc;
    if ((rc = cel_options_expand_hostname(hostname_pat, cfg->hostname, sizeof(cfg->hostname), err)))
        return rc;
    if ((rc = settle_device(cfg, concurrency_set)) != CEL_OK) return rc;
    if (cfg->soft_time_limit && cfg->time_limit && cfg->soft_time_limit > cfg->time_limit)
        cel_warn("--soft-time-limit %.3g is above --time-limit %.3g", cfg->soft_time_limit,
                 cfg->time_limit);
    return CEL_OK;
}

/* Decides what --device means for the pool: the main process never loads
 * CUDA, so for auto it only looks for the driver's device files. A GPU gets
 * one executor (the model once per GPU) that packs model tasks. */
static int settle_device(cel_options_t *cfg, int concurrency_set) {
    if (!cfg->device[0]) snprintf(cfg->device, sizeof(cfg->device), "auto");
    const char *vis = getenv("CUDA_VISIBLE_DEVICES");
    int files = (!vis || (vis[0] && strcmp(vis, "-1") != 0)) &&
                (access("/dev/nvidiactl", F_OK) == 0 || access("/dev/nvidia0", F_OK) == 0);
    cfg->gpu = strncmp(cfg->device, "cuda", 4) == 0 || (!strcmp(cfg->device, "auto") && files);
    if (cfg->gpu) {
        if (concurrency_set && cfg->concurrency != 1)
            cel_warn("--device %s: one executor per GPU; -c %d becomes 1", cfg->device,
                     cfg->concurrency);
        cfg->concurrency = 1;
    }
    if (!cfg->batch_max_tasks) cfg->batch_max_tasks = cfg->gpu ? 16 : 1;
    if (cfg->batch_wait_ms < 0) cfg->batch_wait_ms = 2;
    if (!cfg->batch_max_tokens) cfg->batch_max_tokens = 16384;
    return CEL_OK;
}

void cel_options_free(cel_options_t *cfg) {
    for (int i = 0; i < cfg->nqueues; i++) free(cfg->queues[i]);
    cfg->nqueues = 0;
    for (int i = 0; i < cfg->nimport_roots; i++) free(cfg->import_roots[i]);
    cfg->nimport_roots = 0;
}
