/* options.h -- the worker's settings: command line, environment, URLs, node name.
 *
 * Parsed once in main() before the loop starts; read-only afterwards. Mirrors
 * `celery worker`'s options where they exist (see README.md for every flag).
 */
#ifndef CEL_OPTIONS_H
#define CEL_OPTIONS_H

#include "../common/err.h"

#define CEL_MAX_QUEUES      64
#define CEL_MAX_CONCURRENCY 256
#define CEL_MAX_BATCH_TASKS 64    /* --batch-max-tasks */
#define CEL_ETA_TASK_LIMIT  10000 /* --eta-task-limit default */

/* A parsed redis://[user:password@]host[:port][/db] URL. */
typedef struct cel_redis_url {
    char host[256];
    int port;
    int db;
    char user[128];     /* "" when none (AUTH with password only) */
    char password[256]; /* "" when none */
} cel_redis_url_t;

typedef struct cel_options {
    char broker_url[1024];
    char backend_url[1024];
    cel_redis_url_t broker;
    cel_redis_url_t backend;
    char *queues[CEL_MAX_QUEUES];
    int nqueues;
    int concurrency;
    int prefetch_multiplier; /* 0 = unlimited, as Celery */
    char hostname[256];      /* expanded node name, e.g. celeriac@host */
    int loglevel;
    char logfile[1024];      /* "" = stderr */
    char pidfile[1024];      /* "" = none */
    double time_limit;       /* hard, seconds, 0 = none */
    double soft_time_limit;  /* 0 = none */
    int max_tasks_per_child; /* 0 = unlimited */
    char state_dir[1024];    /* "" = none */
    double result_expires;   /* seconds, 0 = never */
    double visibility_timeout;
    long max_message_size;  /* bytes of one envelope */
    char executor[1024];    /* path of celeriac-executor */
    char model[1024];       /* model folder for executors; "" = their default */
    char *import_roots[16]; /* extra roots lora.load may read from */
    int nimport_roots;
    long max_input_tokens; /* per example; 0 = the executor's default */
    char device[32];       /* --device: auto, cpu, cuda, cuda:N (executors choose) */
    int gpu;               /* the device names or (auto) may find a GPU: one executor */
    int batch_max_tasks;   /* tasks written to one executor to pack into one pass */
    int batch_wait_ms;     /* how long an executor waits to fill a partial batch */
    long batch_max_tokens; /* padded tokens of one packed pass */
    long gpu_adapter_mb;   /* GPU memory for adapters before LRU eviction; 0 = no limit */
    int task_events;       /* -E: send task-* events from the start */
    int without_heartbeat; /* no worker-* events */
    int describe_tasks;    /* --describe-tasks: main prints the task table, exits */
    /* ---- metrics and backpressure (issue 18) ---- */
    int metrics_port;       /* --metrics-port: -1 = off (default), 0 = any free port */
    char metrics_bind[256]; /* --metrics-bind: the address it listens on (127.0.0.1) */
    int eta_task_limit;     /* --eta-task-limit: eta/countdown messages held; 0 = no limit */
} cel_options_t;

/* Fills cfg from argv and the environment (CELERY_BROKER_URL,
 * CELERY_RESULT_BACKEND, CELERIAC_METRICS_PORT). Returns CEL_OK; 1 when --help/--version was printed
 * or --describe-tasks was given (cfg->describe_tasks set, nothing else parsed:
 * the caller prints the table), and the caller exits 0; or CEL_EINVAL with err
 * saying which option is wrong. */
int cel_options_parse(cel_options_t *cfg, int argc, char **argv, cel_err_t *err);

/* Frees what cel_options_parse allocated (the queue names). */
void cel_options_free(cel_options_t *cfg);

/* Parses a redis:// URL (also unix-less rediss is refused). */
int cel_options_parse_redis_url(const char *url, cel_redis_url_t *out, cel_err_t *err);

/* Expands %h (full host name), %n (name before the first dot), %d (domain
 * after it) and %% in a node name pattern, as celery's nodename does. */
int cel_options_expand_hostname(const char *pattern, char *out, size_t size, cel_err_t *err);

#endif
