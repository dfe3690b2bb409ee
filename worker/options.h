/* options.h -- the worker's settings: command line, environment, URLs, node name.
 *
 * Parsed once in main() before the loop starts; read-only afterwards. Mirrors
 * `celery worker`'s options where they exist (see README.md for every flag).
 */
#ifndef CEL_OPTIONS_H
#define CEL_OPTIONS_H

#include "../common/err.h"

#define CEL_MAX_QUEUES      64
#define CEL_MAX_QUEUE_NAME  65536 /* bytes of one queue name (-Q, add_consumer) */
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

/* ---- AMQP broker (issue 14) ------------------------------------------ */
/* A parsed amqp://, amqps:// or pyamqp:// URL, read as kombu reads it:
 * amqp://[user[:password]@]host[:port][/vhost], percent-escapes decoded. */
typedef struct cel_amqp_url {
    char host[256];     /* "localhost" when absent */
    int port;           /* 5672 (5671 for amqps) when absent */
    char vhost[256];    /* "/" when the path is empty, as kombu */
    char user[128];     /* "guest" when absent */
    char password[256]; /* "guest" when absent */
    int ssl;            /* amqps:// */
} cel_amqp_url_t;

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
    char private_state[1024]; /* set by main when state_dir is "": the executors' private
                               * adapter folders go under it (private_state.h) */
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
    char precision[8];     /* --precision: "" (fp32) or "bf16" for CPU passes */
    int batch_max_tasks;   /* tasks written to one executor to pack into one pass */
    int batch_wait_ms;     /* how long an executor waits to fill a partial batch */
    long batch_max_tokens; /* padded tokens of one packed pass */
    long gpu_adapter_mb;   /* GPU memory for adapters before LRU eviction; 0 = no limit */
    int task_events;       /* -E: send task-* events from the start */
    int without_heartbeat; /* no worker-* events */
    int describe_tasks;    /* --describe-tasks: main prints the task table, exits */
    /* ---- hardening (issue 12) ---- */
    double shutdown_timeout;       /* warm shutdown waits this long, then gives back */
    double model_time_limit;       /* hard limit of model tasks without one; 0 = none */
    long max_adapters_per_owner;   /* executors refuse more; 0 = no limit */
    long long max_bytes_per_owner; /* adapter bytes on disk per owner; 0 = no limit */
    /* canvas (issue 13) */
    int result_extended;      /* --result-extended: metas carry name, args, kwargs, ... */
    int result_chord_ordered; /* chord parts in a sorted set (1, Celery's default) or a list */
    /* ---- AMQP broker (issue 14): amqp://, amqps://, pyamqp://; rpc:// results ---- */
    int broker_amqp;         /* broker_url is an AMQP URL, parsed into amqp (broker unused) */
    int backend_rpc;         /* backend_url is rpc://: results go back over the broker */
    cel_amqp_url_t amqp;     /* the AMQP broker */
    char ssl_ca[1024];       /* --broker-ssl-ca: CA bundle that signs the server (amqps) */
    char ssl_cert[1024];     /* --broker-ssl-cert: client certificate, "" = none */
    char ssl_key[1024];      /* --broker-ssl-key: its private key */
    int ssl_no_verify;       /* --broker-ssl-no-verify: skip the peer check (not the default) */
    double broker_heartbeat; /* --broker-heartbeat: AMQP heartbeat, seconds, 0 = off (120) */
    int max_priority;        /* --max-priority: x-max-priority of task queues, 0 = none */
    /* ---- metrics and backpressure (issue 18) ---- */
    int metrics_port;       /* --metrics-port: -1 = off (default), 0 = any free port */
    char metrics_bind[256]; /* --metrics-bind: the address it listens on (127.0.0.1) */
    int eta_task_limit;     /* --eta-task-limit: eta/countdown messages held; 0 = no limit */
    /* compression and STARTED (issue 19) */
    char result_compression[32]; /* --result-compression: kombu name of the method canvas
                                  * messages are compressed with, as 5.2 uses
                                  * result_compression; "" = none */
    int track_started;           /* --task-track-started: store STARTED when a task starts */
    /* autoscale and mingle (issue 19) */
    int autoscale_max; /* --autoscale MAX,MIN: executors grow to MAX under load; 0 = off */
    int autoscale_min; /* and are retired down to MIN when idle (concurrency is then MAX) */
    /* many workers (issue 15) */
    int without_direct_queue; /* --without-direct-queue: no <nodename>.dq2 queue */
    char direct_queue[300];   /* "<hostname>.dq2" (also in queues), "" when off */
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

/* Writes url with the password of its userinfo replaced by "**" (as celery's
 * maybe_sanitize_url; a bare userinfo counts as the password, as redis-py reads
 * it), for logs, errors and inspect conf. Always NUL-terminates out. */
void cel_options_safe_url(const char *url, char *out, size_t size);

/* Overwrites, in place, the passwords of URLs in argv (what `ps` and
 * /proc/<pid>/cmdline show) with '*'. Call after cel_options_parse. */
void cel_options_hide_secrets(int argc, char **argv);
/* Parses an amqp://, amqps:// or pyamqp:// URL (see cel_amqp_url_t). */
int cel_options_parse_amqp_url(const char *url, cel_amqp_url_t *out, cel_err_t *err);

/* 1 when url names an AMQP broker (amqp://, amqps://, pyamqp://), else 0. */
int cel_options_is_amqp_url(const char *url);

/* many workers (issue 15) */
/* Where a consumed queue is bound, as the stock worker binds it: the direct
 * queue (worker_direct, celery/utils/nodenames.py) to exchange "C.dq2" with
 * the node name as routing key; any other queue to the direct exchange of its
 * own name with its name as key (Queues.new_missing). Outputs are borrowed
 * from cfg or queue. */
void cel_options_queue_route(const cel_options_t *cfg, const char *queue, const char **exchange,
                             const char **routing_key);

/* Expands %h (full host name), %n (name before the first dot), %d (domain
 * after it) and %% in a node name pattern, as celery's nodename does. */
int cel_options_expand_hostname(const char *pattern, char *out, size_t size, cel_err_t *err);

#endif
