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
#include "../protocol/compress.h" /* compression and STARTED (issue 19) */

#define CEL_VERSION "0.1.0"

static const char usage_text[] =
    "Usage: celeriac [OPTIONS]\n"
    "A Celery worker written in C: consumes Celery tasks from Redis or RabbitMQ and\n"
    "stores results in the Celery Redis result backend or sends them back (rpc://).\n"
    "\n"
    "  -b, --broker URL             broker URL (env CELERY_BROKER_URL;\n"
    "                               default redis://127.0.0.1:6379/0): redis://,\n"
    "                               amqp://user:pass@host:port/vhost, amqps://, pyamqp://\n"
    "      --broker-file FILE       read the broker URL from FILE (keeps a password\n"
    "                               out of the command line)\n"
    "      --result-backend URL     result backend URL (env CELERY_RESULT_BACKEND;\n"
    "                               default: the broker URL on Redis, rpc:// on AMQP):\n"
    "                               redis://... or rpc://\n"
    "      --result-backend-file FILE  read the result backend URL from FILE\n"
    "      --broker-ssl-ca FILE     amqps: CA certificates the server is checked against\n"
    "      --broker-ssl-cert FILE   amqps: client certificate\n"
    "      --broker-ssl-key FILE    amqps: client certificate's private key\n"
    "      --broker-ssl-no-verify   amqps: do not check the server's certificate\n"
    "      --broker-heartbeat S     AMQP heartbeat in seconds (default 120; 0 = off)\n"
    "      --max-priority N         declare AMQP task queues with x-max-priority N\n"
    "                               (Celery's task_queue_max_priority; default none)\n"
    "  -Q, --queues LIST            comma-separated queues to consume (default celery)\n"
    "      --without-direct-queue   do not also consume this node's direct queue\n"
    "                               <nodename>.dq2 (exchange C.dq2, Celery's worker_direct)\n"
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
    "      --precision P            fp32 (the default) or bf16: the CPU passes' products\n"
    "                               with the base weights in bf16 with fp32 accumulation\n"
    "                               (CPUs with AVX512-BF16; a GPU computes in bf16 anyway)\n"
    "      --batch-max-tasks K      model tasks (lora.forward_backward, model.score) an\n"
    "                               executor packs into one pass (default 16 on a GPU,\n"
    "                               1 = off on the CPU)\n"
    "      --batch-wait-ms MS       wait this long for a partial batch to fill (default 2)\n"
    "      --batch-max-tokens N     padded tokens of one packed pass (default 16384)\n"
    "      --gpu-adapter-memory MB  GPU memory adapters may hold; past it the least\n"
    "                               recently used go back to host memory (default 0 =\n"
    "                               no limit)\n"
    "      --shutdown-timeout S     a warm shutdown waits this long for running tasks,\n"
    "                               then gives them back to the broker (default 60)\n"
    "      --model-time-limit S     hard time limit of model tasks that have none\n"
    "                               (default 600; 0 = none)\n"
    "      --max-adapters-per-owner N  adapters one owner may have (default 16; 0 = no\n"
    "                               limit)\n"
    "      --max-adapter-bytes-per-owner BYTES  disk one owner's adapters may use\n"
    "                               (default 4294967296; 0 = no limit)\n"
    "      --metrics-port PORT      serve Prometheus metrics on http://ADDR:PORT/metrics\n"
    "                               (env CELERIAC_METRICS_PORT; default: off; 0 picks a\n"
    "                               free port, logged)\n"
    "      --metrics-bind ADDR      address the metrics listen on (default 127.0.0.1)\n"
    "      --eta-task-limit N       eta/countdown messages held at once; past it the\n"
    "                               worker stops fetching until some are due (default\n"
    "                               10000; 0 = no limit)\n"
    "      --describe-tasks         print the task table as JSON (names, parameters,\n"
    "                               limits) and exit; contacts nothing\n"
    "      --result-extended        results also carry name, args, kwargs, worker,\n"
    "                               retries and queue (Celery's result_extended)\n"
    "      --result-chord-ordered B chord parts kept in a sorted set (yes, the default)\n"
    "                               or a list (no), as Celery's result_backend_transport_\n"
    "                               options result_chord_ordered; a chord already begun\n"
    "                               keeps the kind it was begun with\n"
    /* compression and STARTED (issue 19) */
    "      --result-compression M   compress the task messages the worker sends\n"
    "                               (callbacks, chain links, chord parts) with M: gzip,\n"
    "                               zlib, bzip2, lzma, xz, zstd or brotli, as Celery\n"
    "                               5.2's result_compression does (results stay plain)\n"
    "      --task-track-started     store the STARTED state ({pid, hostname}) when an\n"
    "                               executor starts a task (Celery's task_track_started)\n"
    "      --autoscale MAX[,MIN]    add executors under load up to MAX, retire idle ones\n"
    "                               down to MIN (default 0), as celery worker --autoscale;\n"
    "                               executors holding adapters are never retired\n"
    "      --without-mingle, --without-gossip, -O fair|default, -P prefork\n"
    "                               accepted for celery worker command lines (no effect)\n"
    "  -h, --help                   show this help\n"
    "      --version                show the version\n";

static int settle_device(cel_options_t *cfg, int concurrency_set, cel_err_t *err);
static int settle_direct_queue(cel_options_t *cfg, cel_err_t *err);

/* ---- AMQP broker options (issue 14) ---- */
static int settle_urls(cel_options_t *cfg, cel_err_t *err);
enum {
    OPT_SSL_CA = 2000,
    OPT_SSL_CERT,
    OPT_SSL_KEY,
    OPT_SSL_NO_VERIFY,
    OPT_BROKER_HEARTBEAT,
    OPT_MAX_PRIORITY,
};

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
    OPT_PRECISION,
    OPT_BATCH_WAIT,
    OPT_BATCH_TOKENS,
    OPT_GPU_MEM,
    OPT_DESCRIBE,
    /* hardening (issue 12) */
    OPT_BROKER_FILE,
    OPT_BACKEND_FILE,
    OPT_SHUTDOWN_TIMEOUT,
    OPT_MODEL_TIME_LIMIT,
    OPT_MAX_ADAPTERS_OWNER,
    OPT_MAX_BYTES_OWNER,
    /* canvas (issue 13) */
    OPT_RESULT_EXTENDED,
    OPT_CHORD_ORDERED,
    OPT_METRICS_PORT,
    OPT_METRICS_BIND,
    OPT_ETA_LIMIT,
    /* compression and STARTED (issue 19) */
    OPT_RESULT_COMPRESSION,
    OPT_TRACK_STARTED,
    /* autoscale and mingle (issue 19) */
    OPT_AUTOSCALE,
    OPT_WITHOUT_MINGLE,
    OPT_WITHOUT_GOSSIP,
    /* many workers (issue 15) */
    OPT_WITHOUT_DIRECT,
};

static int parse_autoscale(cel_options_t *cfg, const char *arg, cel_err_t *err);
static int accept_celery_flag(int opt, const char *arg, cel_err_t *err);
static void settle_autoscale(cel_options_t *cfg);

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

/* ---- secrets ---------------------------------------------------------- */

/* Where the password of url's userinfo is: [*start, *end), or 0 when none. A
 * userinfo without ':' is all password (redis-py reads redis://pw@host so). */
static int password_span(const char *url, size_t *start, size_t *end) {
    const char *scheme = strstr(url, "://");
    if (!scheme) return 0;
    const char *u = scheme + 3;
    const char *at = strrchr(u, '@');
    if (!at) return 0;
    const char *colon = memchr(u, ':', (size_t)(at - u));
    const char *p = colon ? colon + 1 : u;
    if (p == at) return 0;
    *start = (size_t)(p - url);
    *end = (size_t)(at - url);
    return 1;
}

void cel_options_safe_url(const char *url, char *out, size_t size) {
    size_t a, b;
    if (!size) return;
    if (!password_span(url, &a, &b)) {
        snprintf(out, size, "%s", url);
        return;
    }
    /* redis://pw@host -> redis://:**@host, as celery prints a password alone */
    int bare = url[a - 1] != ':';
    snprintf(out, size, "%.*s%s**%s", (int)a, url, bare ? ":" : "", url + b);
}

void cel_options_hide_secrets(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        size_t a, b;
        if (password_span(argv[i], &a, &b)) memset(argv[i] + a, '*', b - a);
    }
}

/* cel_err_set with the URL (masked) appended in quotes. */
static int url_error(cel_err_t *err, const char *what, const char *url) {
    char safe[CEL_ERR_MSG_MAX];
    cel_options_safe_url(url, safe, sizeof(safe));
    return cel_err_set(err, CEL_EINVAL, "%s in '%s'", what, safe);
}

int cel_options_parse_redis_url(const char *url, cel_redis_url_t *out, cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    snprintf(out->host, sizeof(out->host), "127.0.0.1");
    out->port = 6379;
    const char *p;
    if (strncmp(url, "redis://", 8) == 0) {
        p = url + 8;
    } else {
        return url_error(err, "unsupported URL (only redis://[:password@]host:port/db)", url);
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
                return url_error(err, "credentials too long", url);
            memcpy(out->user, p, ulen);
            memcpy(out->password, colon + 1, plen);
        } else {
            /* redis://password@host is how redis-py reads a bare userinfo */
            if (ulen >= sizeof(out->password)) return url_error(err, "password too long", url);
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
            return url_error(err, "bad IPv6 host", url);
        memcpy(out->host, p + 1, (size_t)(close - p - 1));
        out->host[close - p - 1] = '\0';
        hend = close + 1;
        p = hend;
        goto port;
    }
    hend = p + strcspn(p, ":/?");
    if (hend > p) {
        if ((size_t)(hend - p) >= sizeof(out->host)) return url_error(err, "host too long", url);
        memcpy(out->host, p, (size_t)(hend - p));
        out->host[hend - p] = '\0';
    }
    p = hend;
port:
    if (*p == ':') {
        char *end;
        long port = strtol(p + 1, &end, 10);
        if (end == p + 1 || port <= 0 || port > 65535) return url_error(err, "bad port", url);
        out->port = (int)port;
        p = end;
    }
    if (*p == '/') {
        p++;
        if (*p && *p != '?') {
            char *end;
            long db = strtol(p, &end, 10);
            if (end == p || db < 0 || db > 100000 || (*end && *end != '?'))
                return url_error(err, "bad database number", url);
            out->db = (int)db;
            p = end;
        }
    }
    if (*p && *p != '?') return url_error(err, "cannot parse the URL", url);
    return CEL_OK;
}

/* ---- AMQP broker URLs (issue 14) ---------------------------------------- */

int cel_options_is_amqp_url(const char *url) {
    return strncmp(url, "amqp://", 7) == 0 || strncmp(url, "amqps://", 8) == 0 ||
           strncmp(url, "pyamqp://", 9) == 0;
}

/* Copies s[0..n) into dst (size bytes) and percent-decodes it. */
static int copy_decoded(char *dst, size_t size, const char *s, size_t n, const char *what,
                        const char *url, cel_err_t *err) {
    if (n >= size) return cel_err_set(err, CEL_EINVAL, "%s in '%.64s...' is too long", what, url);
    memcpy(dst, s, n);
    dst[n] = '\0';
    percent_decode(dst);
    return CEL_OK;
}

/* kombu's URL reading for the AMQP transports (kombu/utils/url.py url_to_parts):
 * userinfo and path are unquoted; an empty or missing vhost is "/"; the
 * port defaults to 5672 (5671 with TLS). The password never goes into an
 * error message. */
int cel_options_parse_amqp_url(const char *url, cel_amqp_url_t *out, cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    const char *p;
    if (strncmp(url, "amqp://", 7) == 0) p = url + 7;
    else if (strncmp(url, "pyamqp://", 9) == 0) p = url + 9;
    else if (strncmp(url, "amqps://", 8) == 0) p = url + 8, out->ssl = 1;
    else return cel_err_set(err, CEL_EINVAL, "not an amqp://, amqps:// or pyamqp:// URL");
    snprintf(out->host, sizeof(out->host), "localhost");
    snprintf(out->user, sizeof(out->user), "guest");
    snprintf(out->password, sizeof(out->password), "guest");
    snprintf(out->vhost, sizeof(out->vhost), "/");
    out->port = out->ssl ? 5671 : 5672;
    const char *end = p + strcspn(p, "?#");
    const char *slash = memchr(p, '/', (size_t)(end - p));
    const char *auth_end = slash ? slash : end;
    const char *at = NULL;
    for (const char *q = p; q < auth_end; q++)
        if (*q == '@') at = q; /* the last @ before the path */
    int rc;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        size_t ulen = colon ? (size_t)(colon - p) : (size_t)(at - p);
        if (ulen && (rc = copy_decoded(out->user, sizeof(out->user), p, ulen, "user name", "amqp",
                                       err)) != CEL_OK)
            return rc;
        if (colon &&
            (rc = copy_decoded(out->password, sizeof(out->password), colon + 1,
                               (size_t)(at - colon - 1), "password", "amqp", err)) != CEL_OK)
            return rc;
        p = at + 1;
    }
    const char *hend;
    if (*p == '[') {
        const char *close = memchr(p, ']', (size_t)(auth_end - p));
        if (!close || close == p + 1 || (size_t)(close - p - 1) >= sizeof(out->host))
            return cel_err_set(err, CEL_EINVAL, "bad IPv6 host in the broker URL");
        memcpy(out->host, p + 1, (size_t)(close - p - 1));
        out->host[close - p - 1] = '\0';
        hend = close + 1;
    } else {
        hend = p;
        while (hend < auth_end && *hend != ':') hend++;
        if (hend > p && (rc = copy_decoded(out->host, sizeof(out->host), p, (size_t)(hend - p),
                                           "host", "amqp", err)) != CEL_OK)
            return rc;
    }
    p = hend;
    if (p < auth_end && *p == ':') {
        long port = 0;
        const char *q = p + 1;
        if (q == auth_end) return cel_err_set(err, CEL_EINVAL, "bad port in the broker URL");
        for (; q < auth_end; q++) {
            if (*q < '0' || *q > '9' || port > 65535)
                return cel_err_set(err, CEL_EINVAL, "bad port in the broker URL");
            port = port * 10 + (*q - '0');
        }
        if (port <= 0 || port > 65535)
            return cel_err_set(err, CEL_EINVAL, "bad port in the broker URL");
        out->port = (int)port;
        p = auth_end;
    }
    if (p != auth_end) return cel_err_set(err, CEL_EINVAL, "cannot parse the broker URL");
    if (slash && end > slash + 1 &&
        (rc = copy_decoded(out->vhost, sizeof(out->vhost), slash + 1, (size_t)(end - slash - 1),
                           "virtual host", "amqp", err)) != CEL_OK)
        return rc;
    if (!out->vhost[0]) snprintf(out->vhost, sizeof(out->vhost), "/");
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
            if (n > CEL_MAX_QUEUE_NAME)
                return cel_err_set(err, CEL_EINVAL, "queue name longer than %d bytes",
                                   CEL_MAX_QUEUE_NAME);
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

/* Reads a URL from the first line of path into dst (what --broker-file and
 * --result-backend-file name), so that no password needs to be on the command
 * line. */
static int url_from_file(char *dst, size_t size, const char *path, const char *what,
                         cel_err_t *err) {
    FILE *f = fopen(path, "re");
    if (!f) return cel_err_set(err, CEL_EINVAL, "%s %s: %s", what, path, strerror(errno));
    char line[2048];
    int ok = fgets(line, sizeof(line), f) != NULL;
    fclose(f);
    if (!ok) return cel_err_set(err, CEL_EINVAL, "%s %s: empty", what, path);
    size_t n = strcspn(line, "\r\n");
    while (n && (line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
    line[n] = '\0';
    const char *v = line + strspn(line, " \t");
    int rc = *v ? copy_str(dst, size, v, what, err)
                : cel_err_set(err, CEL_EINVAL, "%s %s: empty", what, path);
    memset(line, 0, sizeof(line));
    return rc;
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
    cfg->shutdown_timeout = 60;
    cfg->model_time_limit = 600;
    cfg->max_adapters_per_owner = 16;
    cfg->max_bytes_per_owner = 4LL << 30;
    cfg->result_chord_ordered = 1;
    cfg->broker_heartbeat = 120; /* Celery's broker_heartbeat */
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
        /* ---- AMQP broker (issue 14) ---- */
        { "broker-ssl-ca", required_argument, 0, OPT_SSL_CA },
        { "broker-ssl-cert", required_argument, 0, OPT_SSL_CERT },
        { "broker-ssl-key", required_argument, 0, OPT_SSL_KEY },
        { "broker-ssl-no-verify", no_argument, 0, OPT_SSL_NO_VERIFY },
        { "broker-heartbeat", required_argument, 0, OPT_BROKER_HEARTBEAT },
        { "max-priority", required_argument, 0, OPT_MAX_PRIORITY },
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
        { "precision", required_argument, 0, OPT_PRECISION },
        { "batch-wait-ms", required_argument, 0, OPT_BATCH_WAIT },
        { "batch-max-tokens", required_argument, 0, OPT_BATCH_TOKENS },
        { "gpu-adapter-memory", required_argument, 0, OPT_GPU_MEM },
        { "task-events", no_argument, 0, 'E' },
        { "without-heartbeat", no_argument, 0, OPT_NO_HEARTBEAT },
        { "help", no_argument, 0, 'h' },
        { "version", no_argument, 0, OPT_VERSION },
        { "describe-tasks", no_argument, 0, OPT_DESCRIBE },
        /* hardening (issue 12) */
        { "broker-file", required_argument, 0, OPT_BROKER_FILE },
        { "result-backend-file", required_argument, 0, OPT_BACKEND_FILE },
        { "shutdown-timeout", required_argument, 0, OPT_SHUTDOWN_TIMEOUT },
        { "model-time-limit", required_argument, 0, OPT_MODEL_TIME_LIMIT },
        { "max-adapters-per-owner", required_argument, 0, OPT_MAX_ADAPTERS_OWNER },
        { "max-adapter-bytes-per-owner", required_argument, 0, OPT_MAX_BYTES_OWNER },
        /* canvas (issue 13) */
        { "result-extended", no_argument, 0, OPT_RESULT_EXTENDED },
        { "result-chord-ordered", required_argument, 0, OPT_CHORD_ORDERED },
        { "metrics-port", required_argument, 0, OPT_METRICS_PORT },
        { "metrics-bind", required_argument, 0, OPT_METRICS_BIND },
        { "eta-task-limit", required_argument, 0, OPT_ETA_LIMIT },
        /* compression and STARTED (issue 19) */
        { "result-compression", required_argument, 0, OPT_RESULT_COMPRESSION },
        { "task-track-started", no_argument, 0, OPT_TRACK_STARTED },
        /* autoscale and mingle (issue 19) */
        { "autoscale", required_argument, 0, OPT_AUTOSCALE },
        { "without-mingle", no_argument, 0, OPT_WITHOUT_MINGLE },
        { "without-gossip", no_argument, 0, OPT_WITHOUT_GOSSIP },
        { "without-direct-queue", no_argument, 0, OPT_WITHOUT_DIRECT },
        { "optimization", required_argument, 0, 'O' },
        { "pool", required_argument, 0, 'P' },
        { 0, 0, 0, 0 },
    };
    optind = 0; /* 0, not 1: glibc then forgets the state of any earlier parse */
    opterr = 0;
    int c, rc = CEL_OK, concurrency_set = 0;
    long v = 0;
    while ((c = getopt_long(argc, argv, ":b:Q:c:n:l:f:hEO:P:", opts, NULL)) != -1) {
        switch (c) {
        case 'b':
            rc = copy_str(cfg->broker_url, sizeof(cfg->broker_url), optarg, "--broker", err);
            break;
        case OPT_BACKEND:
            rc = copy_str(cfg->backend_url, sizeof(cfg->backend_url), optarg, "--result-backend",
                          err);
            break;
        /* ---- AMQP broker (issue 14) ---- */
        case OPT_SSL_CA:
            rc = copy_str(cfg->ssl_ca, sizeof(cfg->ssl_ca), optarg, "--broker-ssl-ca", err);
            break;
        case OPT_SSL_CERT:
            rc = copy_str(cfg->ssl_cert, sizeof(cfg->ssl_cert), optarg, "--broker-ssl-cert", err);
            break;
        case OPT_SSL_KEY:
            rc = copy_str(cfg->ssl_key, sizeof(cfg->ssl_key), optarg, "--broker-ssl-key", err);
            break;
        case OPT_SSL_NO_VERIFY: cfg->ssl_no_verify = 1; break;
        case OPT_BROKER_HEARTBEAT:
            rc = parse_seconds(optarg, &cfg->broker_heartbeat, "--broker-heartbeat", err);
            if (rc == CEL_OK && cfg->broker_heartbeat > 65535)
                rc = cel_err_set(err, CEL_EINVAL, "--broker-heartbeat is at most 65535 seconds");
            break;
        case OPT_MAX_PRIORITY:
            rc = parse_long(optarg, 0, 255, &v, "--max-priority", err);
            cfg->max_priority = (int)v;
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
            /* cuda:N as the executor reads it (model/device.c): N in [0, 255] */
            if (rc == CEL_OK && strcmp(optarg, "auto") && strcmp(optarg, "cpu") &&
                strcmp(optarg, "cuda") &&
                (strncmp(optarg, "cuda:", 5) || !optarg[5] || strlen(optarg) > 8 ||
                 strspn(optarg + 5, "0123456789") != strlen(optarg + 5) || atoi(optarg + 5) > 255))
                rc = cel_err_set(err, CEL_EINVAL,
                                 "--device: expected auto, cpu, cuda or cuda:N (N a GPU index, "
                                 "0 to 255)");
            break;
        case OPT_PRECISION:
            /* fp32 is the default and the oracle; bf16 needs AVX512-BF16 (checked in
             * settle_device, once the device is known) */
            if (strcmp(optarg, "fp32") && strcmp(optarg, "bf16"))
                rc = cel_err_set(err, CEL_EINVAL, "--precision: expected fp32 or bf16");
            else
                snprintf(cfg->precision, sizeof(cfg->precision), "%s",
                         strcmp(optarg, "bf16") ? "" : "bf16");
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
        /* hardening (issue 12) */
        case OPT_BROKER_FILE:
            rc = url_from_file(cfg->broker_url, sizeof(cfg->broker_url), optarg, "--broker-file",
                               err);
            break;
        case OPT_BACKEND_FILE:
            rc = url_from_file(cfg->backend_url, sizeof(cfg->backend_url), optarg,
                               "--result-backend-file", err);
            break;
        case OPT_SHUTDOWN_TIMEOUT:
            rc = parse_seconds(optarg, &cfg->shutdown_timeout, "--shutdown-timeout", err);
            break;
        case OPT_MODEL_TIME_LIMIT:
            rc = parse_seconds(optarg, &cfg->model_time_limit, "--model-time-limit", err);
            break;
        case OPT_MAX_ADAPTERS_OWNER:
            rc = parse_long(optarg, 0, 1000000, &v, "--max-adapters-per-owner", err);
            cfg->max_adapters_per_owner = v;
            break;
        case OPT_MAX_BYTES_OWNER:
            rc = parse_long(optarg, 0, LONG_MAX, &v, "--max-adapter-bytes-per-owner", err);
            cfg->max_bytes_per_owner = v;
            break;
        /* canvas (issue 13) */
        case OPT_RESULT_EXTENDED: cfg->result_extended = 1; break;
        case OPT_CHORD_ORDERED:
            if (!strcmp(optarg, "yes") || !strcmp(optarg, "true") || !strcmp(optarg, "1"))
                cfg->result_chord_ordered = 1;
            else if (!strcmp(optarg, "no") || !strcmp(optarg, "false") || !strcmp(optarg, "0"))
                cfg->result_chord_ordered = 0;
            else rc = cel_err_set(err, CEL_EINVAL, "--result-chord-ordered: expected yes or no");
            break;
        /* compression and STARTED (issue 19) */
        case OPT_RESULT_COMPRESSION: {
            cel_compress_t m;
            if (cel_compress_lookup(optarg, &m, NULL) != CEL_OK)
                rc = cel_err_set(err, CEL_EINVAL,
                                 "--result-compression: unknown method '%.64s' (gzip, zlib, "
                                 "bzip2, lzma, xz, zstd, brotli)",
                                 optarg);
            else
                rc = copy_str(cfg->result_compression, sizeof(cfg->result_compression), optarg,
                              "--result-compression", err);
            break;
        }
        case OPT_TRACK_STARTED: cfg->track_started = 1; break;
        /* autoscale and mingle (issue 19) */
        case OPT_AUTOSCALE: rc = parse_autoscale(cfg, optarg, err); break;
        case OPT_WITHOUT_DIRECT: cfg->without_direct_queue = 1; break;
        case OPT_WITHOUT_MINGLE:
        case OPT_WITHOUT_GOSSIP:
        case 'O':
        case 'P': rc = accept_celery_flag(c, optarg, err); break;
        case ':': return cel_err_set(err, CEL_EINVAL, "option %s needs a value", argv[optind - 1]);
        default:
            /* autoscale and mingle (issue 19): name the flag itself, not its cluster or value */
            if (optopt > 0 && optopt < 128)
                return cel_err_set(err, CEL_EINVAL, "unknown option -%c (see --help)", optopt);
            return cel_err_set(err, CEL_EINVAL, "unknown option %.*s (see --help)",
                               (int)strcspn(argv[optind - 1], "="), argv[optind - 1]);
        }
        if (rc != CEL_OK) return rc;
    }
    if (optind < argc)
        return cel_err_set(err, CEL_EINVAL, "unexpected argument '%s' (see --help)", argv[optind]);
    if ((rc = settle_urls(cfg, err)) != CEL_OK) return rc;
    if ((rc = set_queues(cfg, queues, err)) != CEL_OK) return rc;
    if ((rc = cel_options_expand_hostname(hostname_pat, cfg->hostname, sizeof(cfg->hostname), err)))
        return rc;
    if ((rc = settle_direct_queue(cfg, err)) != CEL_OK) return rc;
    if ((rc = settle_device(cfg, concurrency_set, err)) != CEL_OK) return rc;
    settle_autoscale(cfg);
    if (cfg->soft_time_limit && cfg->time_limit && cfg->soft_time_limit > cfg->time_limit)
        cel_warn("--soft-time-limit %.3g is above --time-limit %.3g", cfg->soft_time_limit,
                 cfg->time_limit);
    return CEL_OK;
}

/* ---- AMQP broker (issue 14) ---- */
/* Parses the broker and backend URLs by scheme. Without --result-backend the
 * results go to the broker on Redis (as before) and back over the broker
 * (rpc://) on AMQP, which has no key-value store of its own. */
static int settle_urls(cel_options_t *cfg, cel_err_t *err) {
    int rc;
    cfg->broker_amqp = cel_options_is_amqp_url(cfg->broker_url);
    if (!cfg->backend_url[0])
        snprintf(cfg->backend_url, sizeof(cfg->backend_url), "%s",
                 cfg->broker_amqp ? "rpc://" : cfg->broker_url);
    if (cfg->broker_amqp) {
        if ((rc = cel_options_parse_amqp_url(cfg->broker_url, &cfg->amqp, err)) != CEL_OK)
            return rc;
    } else if (strncmp(cfg->broker_url, "redis://", 8) != 0) {
        return url_error(err, "unsupported broker URL (redis://, amqp://, amqps:// or pyamqp://)",
                         cfg->broker_url);
    } else if ((rc = cel_options_parse_redis_url(cfg->broker_url, &cfg->broker, err)) != CEL_OK) {
        return rc;
    }
    cfg->backend_rpc = strncmp(cfg->backend_url, "rpc://", 6) == 0;
    if (!cfg->backend_rpc && strncmp(cfg->backend_url, "redis://", 8) != 0)
        return url_error(err, "unsupported result backend URL (redis:// or rpc://)",
                         cfg->backend_url);
    if (!cfg->backend_rpc &&
        (rc = cel_options_parse_redis_url(cfg->backend_url, &cfg->backend, err)) != CEL_OK)
        return rc;
    if ((cfg->ssl_ca[0] || cfg->ssl_cert[0] || cfg->ssl_key[0]) && !cfg->amqp.ssl)
        return cel_err_set(err, CEL_EINVAL, "--broker-ssl-* options need an amqps:// broker");
    if (!cfg->ssl_cert[0] != !cfg->ssl_key[0])
        return cel_err_set(err, CEL_EINVAL, "--broker-ssl-cert and --broker-ssl-key go together");
    return CEL_OK;
}

/* Decides what --device means for the pool: the main process never loads
 * CUDA, so for auto it only looks for the driver's device files. A GPU gets
 * one executor (the model once per GPU) that packs model tasks. */
static int cpu_has_bf16(void) {
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__clang__) || __GNUC__ >= 10)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

static int settle_device(cel_options_t *cfg, int concurrency_set, cel_err_t *err) {
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
    /* --precision bf16 is for the CPU's passes (a GPU's products are bf16 anyway): refused
     * here, not by every executor start, when this CPU cannot do it */
    if (!strcmp(cfg->precision, "bf16") && !cfg->gpu && !cpu_has_bf16())
        return cel_err_set(err, CEL_EINVAL,
                           "--precision bf16: this CPU lacks AVX512-BF16 (use fp32, the default)");
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

/* ---- autoscale and mingle (issue 19) ---- */
/* --autoscale MAX[,MIN] as celery worker reads it (MIN defaults to 0). */
static int parse_autoscale(cel_options_t *cfg, const char *arg, cel_err_t *err) {
    char *end;
    errno = 0;
    long max = strtol(arg, &end, 10), min = 0;
    if (end != arg && *end == ',') {
        const char *m = end + 1;
        min = strtol(m, &end, 10);
        if (end == m) end = (char *)"x";
    }
    if (errno || end == arg || *end || max < 1 || max > CEL_MAX_CONCURRENCY || min < 0)
        return cel_err_set(err, CEL_EINVAL,
                           "--autoscale: expected MAX[,MIN] with 1 <= MAX <= %d "
                           "(got '%.40s')",
                           CEL_MAX_CONCURRENCY, arg);
    if (min > max)
        return cel_err_set(err, CEL_EINVAL, "--autoscale: MIN %ld is above MAX %ld", min, max);
    cfg->autoscale_max = (int)max;
    cfg->autoscale_min = (int)min;
    return CEL_OK;
}

/* celery worker flags that change nothing here: --without-mingle (celeriac
 * never asks its neighbours at start; it answers their hello),
 * --without-gossip (it follows no other worker), -O fair (it dispatches to
 * a free executor anyway), -P prefork (its executors are processes). */
static int accept_celery_flag(int opt, const char *arg, cel_err_t *err) {
    if (opt == 'O' && strcmp(arg, "fair") != 0 && strcmp(arg, "default") != 0)
        return cel_err_set(err, CEL_EINVAL,
                           "-O/--optimization: expected fair or default (got "
                           "'%.40s')",
                           arg);
    if (opt == 'P' && strcmp(arg, "prefork") != 0 && strcmp(arg, "processes") != 0)
        return cel_err_set(err, CEL_EINVAL,
                           "-P/--pool %.40s: celeriac's pool is its executor "
                           "processes (prefork); no other pool",
                           arg);
    return CEL_OK;
}

/* With --autoscale the prefetch window is MAX x multiplier (as Celery sizes
 * it) and the pool starts with MIN executors. On a GPU there is one executor. */
static void settle_autoscale(cel_options_t *cfg) {
    if (!cfg->autoscale_max) return;
    if (cfg->gpu) {
        cel_warn("--device %s: one executor per GPU; --autoscale is off", cfg->device);
        cfg->autoscale_max = cfg->autoscale_min = 0;
        return;
    }
    cfg->concurrency = cfg->autoscale_max;
}

/* ---- many workers (issue 15) ---- */
/* Adds the node's direct queue, <hostname>.dq2, to the queues consumed (as
 * celery's worker_direct does with queues.select_add), unless
 * --without-direct-queue. A -Q naming it already is kept as given. */
static int settle_direct_queue(cel_options_t *cfg, cel_err_t *err) {
    cfg->direct_queue[0] = '\0';
    if (cfg->without_direct_queue) return CEL_OK;
    snprintf(cfg->direct_queue, sizeof(cfg->direct_queue), "%s.dq2", cfg->hostname);
    for (int i = 0; i < cfg->nqueues; i++)
        if (strcmp(cfg->queues[i], cfg->direct_queue) == 0) return CEL_OK;
    if (cfg->nqueues == CEL_MAX_QUEUES)
        return cel_err_set(err, CEL_EINVAL, "too many queues (max %d with the direct queue)",
                           CEL_MAX_QUEUES);
    if (!(cfg->queues[cfg->nqueues] = strdup(cfg->direct_queue)))
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    cfg->nqueues++;
    return CEL_OK;
}

void cel_options_queue_route(const cel_options_t *cfg, const char *queue, const char **exchange,
                             const char **routing_key) {
    if (cfg->direct_queue[0] && strcmp(queue, cfg->direct_queue) == 0) {
        *exchange = "C.dq2";
        *routing_key = cfg->hostname;
        return;
    }
    *exchange = queue;
    *routing_key = queue;
}
