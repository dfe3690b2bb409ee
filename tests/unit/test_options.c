/* test_options.c -- unit tests for the worker's options, Redis URLs and node
 * names (worker/options.c).
 */
#include "testutil.h"

#include <unistd.h>

#include "../../common/log.h"
#include "../../worker/options.h"

#define ARGV(...) char *av[] = { "celeriac", __VA_ARGS__, NULL }
#define ARGC      ((int)(sizeof(av) / sizeof(av[0])) - 1)

/* ---- redis URLs ---- */

static void url_ok(const char *url, const char *host, int port, int db, const char *user,
                   const char *password) {
    cel_redis_url_t u;
    cel_err_t err;
    if (cel_options_parse_redis_url(url, &u, &err) != CEL_OK) fail_msg("%s: %s", url, err.msg);
    if (strcmp(u.host, host) || u.port != port || u.db != db || strcmp(u.user, user) ||
        strcmp(u.password, password))
        fail_msg("%s: got host=%s port=%d db=%d user=%s password=%s", url, u.host, u.port, u.db,
                 u.user, u.password);
}

static void url_bad(const char *url) {
    cel_redis_url_t u;
    cel_err_t err = { 0 };
    if (cel_options_parse_redis_url(url, &u, &err) != CEL_EINVAL) fail_msg("%s was accepted", url);
    assert_int_equal(err.code, CEL_EINVAL);
    assert_true(err.msg[0] != '\0');
}

static void test_redis_url(void **state) {
    url_ok("redis://", "127.0.0.1", 6379, 0, "", "");
    url_ok("redis://localhost", "localhost", 6379, 0, "", "");
    url_ok("redis://h:6380", "h", 6380, 0, "", "");
    url_ok("redis://h:6380/2", "h", 6380, 2, "", "");
    url_ok("redis://h/3", "h", 6379, 3, "", "");
    url_ok("redis://h/", "h", 6379, 0, "", "");
    url_ok("redis:///5", "127.0.0.1", 6379, 5, "", "");
    url_ok("redis://:6390", "127.0.0.1", 6390, 0, "", "");
    url_ok("redis://h:1/0?socket_timeout=3", "h", 1, 0, "", "");
    url_ok("redis://h?x=1", "h", 6379, 0, "", "");
    url_ok("redis://h/?x=1", "h", 6379, 0, "", "");
    url_ok("redis://10.0.0.1:65535/100000", "10.0.0.1", 65535, 100000, "", "");
    /* credentials */
    url_ok("redis://:secret@h:1/2", "h", 1, 2, "", "secret");
    /* percent-escapes in credentials are decoded, as redis-py does */
    url_ok("redis://:p%40ss%3Aw@h", "h", 6379, 0, "", "p@ss:w");
    url_ok("redis://us%65r:pw@h", "h", 6379, 0, "user", "pw");
    /* IPv6 literals in brackets */
    url_ok("redis://[::1]:6379/1", "::1", 6379, 1, "", "");
    url_ok("redis://:pw@[fe80::1]", "fe80::1", 6379, 0, "", "pw");
    url_ok("redis://alice:secret@h", "h", 6379, 0, "alice", "secret");
    url_ok("redis://alice:@h", "h", 6379, 0, "alice", "");
    url_ok("redis://secret@h", "h", 6379, 0, "", "secret");
    url_ok("redis://alice:p@ss:w@h/1", "h", 6379, 1, "alice", "p@ss:w");
    url_ok("redis://:pw@", "127.0.0.1", 6379, 0, "", "pw");
    /* bad */
    url_bad("");
    url_bad("rediss://h");
    url_bad("unix:///tmp/redis.sock");
    url_bad("amqp://guest@h//");
    url_bad("REDIS://h");
    url_bad("redis://h:0");
    url_bad("redis://h:65536");
    url_bad("redis://h:-1");
    url_bad("redis://h:");
    url_bad("redis://h:/1");
    url_bad("redis://h:abc");
    url_bad("redis://h:12ab");
    url_bad("redis://h:99999999999999999999999");
    url_bad("redis://h/-1");
    url_bad("redis://h/100001");
    url_bad("redis://h/abc");
    url_bad("redis://h/1x");
    url_bad("redis://h/1/2");
    url_bad("redis://h/0@x");
    url_bad("redis://h:1:2");
    /* err may be NULL */
    cel_redis_url_t u;
    assert_int_equal(cel_options_parse_redis_url("http://h", &u, NULL), CEL_EINVAL);
}

static void test_redis_url_limits(void **state) {
    char url[1024], want[300];
    cel_redis_url_t u;
    cel_err_t err;
    /* host: 255 bytes fit, 256 do not */
    memset(want, 'h', 255);
    want[255] = '\0';
    snprintf(url, sizeof(url), "redis://%s:1", want);
    url_ok(url, want, 1, 0, "", "");
    snprintf(url, sizeof(url), "redis://%sh:1", want);
    url_bad(url);
    /* user 127 / 128 */
    memset(want, 'u', 127);
    want[127] = '\0';
    snprintf(url, sizeof(url), "redis://%s:pw@h", want);
    url_ok(url, "h", 6379, 0, want, "pw");
    snprintf(url, sizeof(url), "redis://%su:pw@h", want);
    url_bad(url);
    /* password (after a colon) 255 / 256 */
    memset(want, 'p', 255);
    want[255] = '\0';
    snprintf(url, sizeof(url), "redis://:%s@h", want);
    url_ok(url, "h", 6379, 0, "", want);
    snprintf(url, sizeof(url), "redis://:%sp@h", want);
    url_bad(url);
    /* bare password 255 / 256 */
    snprintf(url, sizeof(url), "redis://%s@h", want);
    url_ok(url, "h", 6379, 0, "", want);
    snprintf(url, sizeof(url), "redis://%sp@h", want);
    assert_int_equal(cel_options_parse_redis_url(url, &u, &err), CEL_EINVAL);
    assert_int_equal(strncmp(err.msg, "password too long", 17), 0);
    assert_null(strstr(err.msg, want)); /* never the password itself */
}

/* ---- secrets (issue 12) ---- */

static void test_safe_url(void **state) {
    char out[256];
    cel_options_safe_url("redis://:pw@h:1/0", out, sizeof(out));
    assert_string_equal(out, "redis://:**@h:1/0");
    cel_options_safe_url("redis://user:pw@h/2", out, sizeof(out));
    assert_string_equal(out, "redis://user:**@h/2");
    cel_options_safe_url("redis://barepw@h", out, sizeof(out)); /* redis-py: a password */
    assert_string_equal(out, "redis://:**@h");
    cel_options_safe_url("redis://h:6379/0", out, sizeof(out));
    assert_string_equal(out, "redis://h:6379/0");
    cel_options_safe_url("redis://:@h", out, sizeof(out)); /* an empty password */
    assert_string_equal(out, "redis://:@h");
    char small[8];
    cel_options_safe_url("redis://:secretsecret@h", small, sizeof(small));
    assert_null(strstr(small, "secret"));
}

/* Every URL error says what is wrong without the password. */
static void test_url_errors_hide_the_password(void **state) {
    static const char *const bad[] = {
        "redis://:hunter2@h:notaport/0", "redis://u:hunter2@h/x",   "rediss://:hunter2@h",
        "redis://hunter2@h:99999",       "redis://:hunter2@[::1/0", "redis://:hunter2@h/0/junk",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cel_redis_url_t u;
        cel_err_t err;
        assert_int_equal(cel_options_parse_redis_url(bad[i], &u, &err), CEL_EINVAL);
        if (strstr(err.msg, "hunter2")) fail_msg("%s: %s", bad[i], err.msg);
        assert_non_null(strstr(err.msg, "**"));
    }
}

static void test_hide_secrets(void **state) {
    char a0[] = "celeriac", a1[] = "-b", a2[] = "redis://:pw1@h/0", a3[] = "--result-backend",
         a4[] = "redis://u:pw2@h", a5[] = "-Q", a6[] = "x@y";
    char *av[] = { a0, a1, a2, a3, a4, a5, a6, NULL };
    cel_options_hide_secrets(7, av);
    assert_string_equal(a2, "redis://:***@h/0");
    assert_string_equal(a4, "redis://u:***@h");
    assert_string_equal(a6, "x@y"); /* not a URL */
    assert_string_equal(a0, "celeriac");
}

/* ---- AMQP URLs (issue 14) ---- */

static void amqp_ok(const char *url, const char *host, int port, const char *vhost,
                    const char *user, const char *password, int ssl) {
    cel_amqp_url_t u;
    cel_err_t err;
    if (cel_options_parse_amqp_url(url, &u, &err) != CEL_OK) fail_msg("%s: %s", url, err.msg);
    if (strcmp(u.host, host) || u.port != port || strcmp(u.vhost, vhost) || strcmp(u.user, user) ||
        strcmp(u.password, password) || u.ssl != ssl)
        fail_msg("%s: got host=%s port=%d vhost=%s user=%s password=%s ssl=%d", url, u.host, u.port,
                 u.vhost, u.user, u.password, u.ssl);
}

static void amqp_bad(const char *url) {
    cel_amqp_url_t u;
    cel_err_t err = { 0 };
    if (cel_options_parse_amqp_url(url, &u, &err) != CEL_EINVAL) fail_msg("%s was accepted", url);
    assert_true(err.msg[0] != '\0');
    /* the password never shows in the message */
    assert_null(strstr(err.msg, "s3cret"));
}

static void test_amqp_url(void **state) {
    /* kombu's defaults: guest/guest@localhost:5672, vhost "/" */
    amqp_ok("amqp://", "localhost", 5672, "/", "guest", "guest", 0);
    amqp_ok("amqp://h", "h", 5672, "/", "guest", "guest", 0);
    amqp_ok("amqp://h/", "h", 5672, "/", "guest", "guest", 0);
    amqp_ok("amqp://h//", "h", 5672, "/", "guest", "guest", 0);
    amqp_ok("amqp://guest:guest@127.0.0.1:5673//", "127.0.0.1", 5673, "/", "guest", "guest", 0);
    amqp_ok("amqp://u:p@h:1/v1", "h", 1, "v1", "u", "p", 0);
    amqp_ok("amqp://u@h/%2Fprod", "h", 5672, "/prod", "u", "guest", 0);
    amqp_ok("amqp://u%40x:p%3Aw%40@h", "h", 5672, "/", "u@x", "p:w@", 0);
    amqp_ok("pyamqp://u:p@h:5/v", "h", 5, "v", "u", "p", 0);
    amqp_ok("amqps://h", "h", 5671, "/", "guest", "guest", 1);
    amqp_ok("amqps://h:5000/v?ssl=1", "h", 5000, "v", "guest", "guest", 1);
    amqp_ok("amqp://[::1]:5672/v", "::1", 5672, "v", "guest", "guest", 0);
    amqp_ok("amqp://a:b@c@h/v", "h", 5672, "v", "a", "b@c", 0); /* the last @ ends userinfo */
    amqp_bad("redis://h");
    amqp_bad("amqp://u:s3cret@h:notaport/v");
    amqp_bad("amqp://u:s3cret@h:0/v");
    amqp_bad("amqp://u:s3cret@h:65536/v");
    amqp_bad("amqp://u:s3cret@h:/v");
    amqp_bad("amqp://u:s3cret@[::1/v");
    amqp_bad("amqp://u:s3cret@[]/v");
    /* limits: host 255/256, vhost 255/256, user 127/128, password 255/256 */
    char url[2048], want[300];
    memset(want, 'h', 255);
    want[255] = '\0';
    snprintf(url, sizeof(url), "amqp://%s", want);
    amqp_ok(url, want, 5672, "/", "guest", "guest", 0);
    snprintf(url, sizeof(url), "amqp://%sh", want);
    amqp_bad(url);
    memset(want, 'v', 255);
    snprintf(url, sizeof(url), "amqp://h/%s", want);
    amqp_ok(url, "h", 5672, want, "guest", "guest", 0);
    snprintf(url, sizeof(url), "amqp://h/%sv", want);
    amqp_bad(url);
    memset(want, 'u', 127);
    want[127] = '\0';
    snprintf(url, sizeof(url), "amqp://%s:s3cret@h", want);
    amqp_ok(url, "h", 5672, "/", want, "s3cret", 0);
    snprintf(url, sizeof(url), "amqp://%su:s3cret@h", want);
    amqp_bad(url);
    memset(want, 'p', 255);
    want[255] = '\0';
    snprintf(url, sizeof(url), "amqp://u:%s@h", want);
    amqp_ok(url, "h", 5672, "/", "u", want, 0);
    snprintf(url, sizeof(url), "amqp://u:%sp@h", want);
    amqp_bad(url);
    assert_int_equal(cel_options_is_amqp_url("amqp://"), 1);
    assert_int_equal(cel_options_is_amqp_url("amqps://x"), 1);
    assert_int_equal(cel_options_is_amqp_url("pyamqp://x"), 1);
    assert_int_equal(cel_options_is_amqp_url("redis://x"), 0);
    assert_int_equal(cel_options_is_amqp_url("amqpx://x"), 0);
}

/* The AMQP options: TLS files, heartbeat, x-max-priority, backend defaults and refusals. */
static void test_amqp_options(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("-b", "amqps://u:p@h//", "--broker-ssl-ca", "/ca.pem", "--broker-ssl-cert", "/c.pem",
             "--broker-ssl-key", "/k.pem", "--broker-heartbeat", "30", "--max-priority", "10");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.broker_amqp, 1);
        assert_int_equal(cfg.amqp.ssl, 1);
        assert_int_equal(cfg.amqp.port, 5671);
        assert_string_equal(cfg.ssl_ca, "/ca.pem");
        assert_string_equal(cfg.ssl_cert, "/c.pem");
        assert_string_equal(cfg.ssl_key, "/k.pem");
        assert_int_equal(cfg.ssl_no_verify, 0);
        assert_true(cfg.broker_heartbeat == 30);
        assert_int_equal(cfg.max_priority, 10);
        assert_string_equal(cfg.backend_url, "rpc://");
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "pyamqp://h/v", "--result-backend", "redis://r:1/2", "--broker-ssl-no-verify");
        /* ssl options without amqps are refused */
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.backend_rpc, 0);
        assert_string_equal(cfg.backend.host, "r");
        assert_int_equal(cfg.backend.db, 2);
        assert_true(cfg.broker_heartbeat == 120); /* Celery's default */
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "amqp://h", "--broker-ssl-ca", "/ca.pem");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "amqps://"));
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "amqps://h", "--broker-ssl-cert", "/c.pem");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "amqp://h", "--result-backend", "amqp://h");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "rpc://"));
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "redis://h", "--result-backend", "rpc://");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.backend_rpc, 1);
        assert_int_equal(cfg.broker_amqp, 0);
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "kafka://u:s3cret@h");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_null(strstr(err.msg, "s3cret"));
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "amqp://h", "--max-priority", "256");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        cel_options_free(&cfg);
    }
    {
        ARGV("-b", "amqp://h", "--broker-heartbeat", "65536");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        cel_options_free(&cfg);
    }
}

/* ---- node names ---- */

static void host_parts(char *host, char *name, char *domain) {
    char h[256];
    if (gethostname(h, sizeof(h)) != 0) snprintf(h, sizeof(h), "localhost");
    h[255] = '\0';
    strcpy(host, h);
    char *dot = strchr(h, '.');
    if (dot) {
        strcpy(domain, dot + 1);
        *dot = '\0';
    } else {
        domain[0] = '\0';
    }
    strcpy(name, h);
}

static void test_expand_hostname(void **state) {
    char host[256], name[256], domain[256], out[600], want[800];
    cel_err_t err;
    host_parts(host, name, domain);
    assert_int_equal(cel_options_expand_hostname("celeriac@%h", out, sizeof(out), &err), CEL_OK);
    snprintf(want, sizeof(want), "celeriac@%s", host);
    assert_string_equal(out, want);
    assert_int_equal(cel_options_expand_hostname("w@%n", out, sizeof(out), &err), CEL_OK);
    snprintf(want, sizeof(want), "w@%s", name);
    assert_string_equal(out, want);
    assert_int_equal(cel_options_expand_hostname("w@%d", out, sizeof(out), &err), CEL_OK);
    snprintf(want, sizeof(want), "w@%s", domain);
    assert_string_equal(out, want);
    assert_int_equal(cel_options_expand_hostname("%n.%d@%h", out, sizeof(out), &err), CEL_OK);
    snprintf(want, sizeof(want), "%s.%s@%s", name, domain, host);
    assert_string_equal(out, want);
    /* %% and unknown or trailing escapes */
    assert_int_equal(cel_options_expand_hostname("a%%b@x", out, sizeof(out), &err), CEL_OK);
    assert_string_equal(out, "a%b@x");
    assert_int_equal(cel_options_expand_hostname("a%%h@x", out, sizeof(out), &err), CEL_OK);
    assert_string_equal(out, "a%h@x");
    assert_int_equal(cel_options_expand_hostname("a%x@y", out, sizeof(out), &err), CEL_OK);
    assert_string_equal(out, "a%x@y");
    assert_int_equal(cel_options_expand_hostname("a@y%", out, sizeof(out), &err), CEL_OK);
    assert_string_equal(out, "a@y%");
    /* no '@': the host is appended */
    assert_int_equal(cel_options_expand_hostname("worker1", out, sizeof(out), &err), CEL_OK);
    snprintf(want, sizeof(want), "worker1@%s", host);
    assert_string_equal(out, want);
    assert_int_equal(cel_options_expand_hostname("w-%n", out, sizeof(out), &err), CEL_OK);
    snprintf(want, sizeof(want), "w-%s@%s", name, host);
    assert_string_equal(out, want);
    assert_int_equal(cel_options_expand_hostname("", out, sizeof(out), &err), CEL_OK);
    snprintf(want, sizeof(want), "@%s", host);
    assert_string_equal(out, want);
}

static void test_expand_hostname_limit(void **state) {
    char out[16];
    cel_err_t err = { 0 };
    /* 15 bytes + NUL fit in 16; 16 do not */
    assert_int_equal(cel_options_expand_hostname("abcdefghij@klmn", out, sizeof(out), &err),
                     CEL_OK);
    assert_string_equal(out, "abcdefghij@klmn");
    assert_int_equal(cel_options_expand_hostname("abcdefghij@klmno", out, sizeof(out), &err),
                     CEL_EINVAL);
    assert_int_equal(err.code, CEL_EINVAL);
    assert_int_equal(
        cel_options_expand_hostname("%%%%%%%%%%%%%%%%%%%%%%%%%%%%%%@", out, sizeof(out), &err),
        CEL_EINVAL);
    assert_int_equal(
        cel_options_expand_hostname("%%%%%%%%%%%%%%%%%%%%%%%%%%%%@", out, sizeof(out), &err),
        CEL_OK);
    assert_string_equal(out, "%%%%%%%%%%%%%%@");
    char host[256], name[256], domain[256];
    host_parts(host, name, domain);
    char small[8];
    if (strlen(host) + 2 >= sizeof(small))
        assert_int_equal(cel_options_expand_hostname("a@%h", small, sizeof(small), &err),
                         CEL_EINVAL);
}

/* ---- command line ---- */

static int clear_env(void **state) {
    unsetenv("CELERY_BROKER_URL");
    unsetenv("CELERY_RESULT_BACKEND");
    unsetenv("CELERIAC_METRICS_PORT");
    return 0;
}

/* A second parse must not inherit getopt state from the first. */
static void test_parse_twice(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    char *a1[] = { "celeriac", "-hE", NULL };
    int rc = cel_options_parse(&cfg, 2, a1, &err);
    cel_options_free(&cfg);
    assert_true(rc == 1 || rc == CEL_OK);
    char *a2[] = { "celeriac", "-c", "2", NULL };
    assert_int_equal(cel_options_parse(&cfg, 3, a2, &err), CEL_OK);
    assert_int_equal(cfg.concurrency, 2);
    cel_options_free(&cfg);
}

static void test_defaults(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    char *av[] = { "celeriac", NULL };
    assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_OK);
    assert_string_equal(cfg.broker_url, "redis://127.0.0.1:6379/0");
    assert_string_equal(cfg.backend_url, cfg.broker_url);
    assert_string_equal(cfg.broker.host, "127.0.0.1");
    assert_int_equal(cfg.backend.port, 6379);
    assert_int_equal(cfg.nqueues, 2); /* celery and the direct queue (issue 15) */
    assert_string_equal(cfg.queues[0], "celery");
    assert_string_equal(cfg.queues[1], cfg.direct_queue);
    assert_true(cfg.concurrency >= 1 && cfg.concurrency <= CEL_MAX_CONCURRENCY);
    assert_int_equal(cfg.prefetch_multiplier, 4);
    assert_int_equal(cfg.loglevel, CEL_LOG_WARNING);
    assert_true(cfg.result_expires == 86400);
    assert_true(cfg.visibility_timeout == 3600);
    assert_int_equal(cfg.max_message_size, 8L * 1024 * 1024);
    assert_true(strncmp(cfg.hostname, "celeriac@", 9) == 0);
    assert_non_null(strstr(cfg.executor, "celeriac-executor"));
    assert_string_equal(cfg.model, "");
    assert_int_equal(cfg.task_events, 0);
    assert_int_equal(cfg.without_heartbeat, 0);
    assert_true(cfg.shutdown_timeout == 60);
    assert_true(cfg.model_time_limit == 600);
    assert_int_equal(cfg.max_adapters_per_owner, 16);
    assert_true(cfg.max_bytes_per_owner == 4LL << 30);
    cel_options_free(&cfg);
}

/* --broker-file / --result-backend-file: the URL from the file's first line. */
static void test_url_files(void **state) {
    char path[] = "/tmp/celeriac-test-url-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char text[] = "  redis://:filepw@host:7000/3  \nignored\n";
    assert_int_equal(write(fd, text, sizeof(text) - 1), (int)sizeof(text) - 1);
    close(fd);
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("--broker-file", path);
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_string_equal(cfg.broker.password, "filepw");
        assert_int_equal(cfg.broker.port, 7000);
        assert_int_equal(cfg.backend.db, 3); /* the backend defaults to the broker */
        cel_options_free(&cfg);
    }
    {
        ARGV("--result-backend-file", path);
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_string_equal(cfg.backend.host, "host");
        assert_string_equal(cfg.broker.host, "127.0.0.1");
        cel_options_free(&cfg);
    }
    unlink(path);
    {
        ARGV("--broker-file", path);
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "--broker-file"));
        cel_options_free(&cfg);
    }
}

static void test_env(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    char *av[] = { "celeriac", NULL };
    setenv("CELERY_BROKER_URL", "redis://b:1/1", 1);
    assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_OK);
    assert_string_equal(cfg.backend_url, "redis://b:1/1");
    assert_int_equal(cfg.backend.db, 1);
    cel_options_free(&cfg);
    setenv("CELERY_RESULT_BACKEND", "redis://r:2/2", 1);
    assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_OK);
    assert_string_equal(cfg.broker.host, "b");
    assert_string_equal(cfg.backend.host, "r");
    cel_options_free(&cfg);
    /* the command line wins; empty env values are ignored */
    {
        char *av2[] = { "celeriac", "-b", "redis://c:3/3", NULL };
        assert_int_equal(cel_options_parse(&cfg, 3, av2, &err), CEL_OK);
        assert_string_equal(cfg.broker.host, "c");
        assert_string_equal(cfg.backend.host, "r");
        cel_options_free(&cfg);
    }
    setenv("CELERY_BROKER_URL", "", 1);
    setenv("CELERY_RESULT_BACKEND", "", 1);
    assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_OK);
    assert_string_equal(cfg.broker_url, "redis://127.0.0.1:6379/0");
    assert_string_equal(cfg.backend_url, cfg.broker_url);
    cel_options_free(&cfg);
    setenv("CELERY_BROKER_URL", "kafka://guest@h//", 1);
    assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_EINVAL);
    cel_options_free(&cfg);
    /* an AMQP broker: results default to rpc:// */
    setenv("CELERY_BROKER_URL", "amqp://guest@h//", 1);
    assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_OK);
    assert_int_equal(cfg.broker_amqp, 1);
    assert_string_equal(cfg.backend_url, "rpc://");
    assert_int_equal(cfg.backend_rpc, 1);
    assert_string_equal(cfg.amqp.host, "h");
    cel_options_free(&cfg);
    clear_env(state);
}

static void test_all_options(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    ARGV("--broker", "redis://:pw@b:7/1", "--result-backend", "redis://r/2", "-Q", " a , b,,c ",
         "-c", "3", "-n", "w1@box", "--prefetch-multiplier", "0", "-l", "debug", "-f", "/tmp/log",
         "--pidfile", "/tmp/pid", "--time-limit", "10", "--soft-time-limit", "5.5",
         "--max-tasks-per-child", "100", "--state-dir", "/tmp/st", "--result-expires", "0",
         "--visibility-timeout", "1", "--max-message-size", "1024", "--executor", "/x/exe",
         "--model", "/m", "--import-root", "/i1", "--import-root=/i2", "--max-input-tokens", "512",
         "-E", "--without-heartbeat");
    assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
    assert_string_equal(cfg.broker.host, "b");
    assert_string_equal(cfg.broker.password, "pw");
    assert_int_equal(cfg.broker.port, 7);
    assert_string_equal(cfg.backend.host, "r");
    assert_int_equal(cfg.backend.db, 2);
    assert_int_equal(cfg.nqueues, 4);
    assert_string_equal(cfg.queues[0], "a");
    assert_string_equal(cfg.queues[1], "b");
    assert_string_equal(cfg.queues[2], "c");
    assert_string_equal(cfg.queues[3], "w1@box.dq2");
    assert_int_equal(cfg.concurrency, 3);
    assert_string_equal(cfg.hostname, "w1@box");
    assert_int_equal(cfg.prefetch_multiplier, 0);
    assert_int_equal(cfg.loglevel, CEL_LOG_DEBUG);
    assert_string_equal(cfg.logfile, "/tmp/log");
    assert_string_equal(cfg.pidfile, "/tmp/pid");
    assert_true(cfg.time_limit == 10);
    assert_true(cfg.soft_time_limit == 5.5);
    assert_int_equal(cfg.max_tasks_per_child, 100);
    assert_string_equal(cfg.state_dir, "/tmp/st");
    assert_true(cfg.result_expires == 0);
    assert_true(cfg.visibility_timeout == 1);
    assert_int_equal(cfg.max_message_size, 1024);
    assert_string_equal(cfg.executor, "/x/exe");
    assert_string_equal(cfg.model, "/m");
    assert_int_equal(cfg.nimport_roots, 2);
    assert_string_equal(cfg.import_roots[1], "/i2");
    assert_int_equal(cfg.max_input_tokens, 512);
    assert_int_equal(cfg.task_events, 1);
    assert_int_equal(cfg.without_heartbeat, 1);
    cel_options_free(&cfg);
    assert_int_equal(cfg.nqueues, 0);
    assert_int_equal(cfg.nimport_roots, 0);
}

/* Runs cel_options_parse with stdout sent to /dev/null (--help / --version). */
static int parse_quiet(cel_options_t *cfg, int argc, char **argv, cel_err_t *err) {
    fflush(stdout);
    int saved = dup(1);
    FILE *null = fopen("/dev/null", "w");
    assert_non_null(null);
    dup2(fileno(null), 1);
    int rc = cel_options_parse(cfg, argc, argv, err);
    fflush(stdout);
    dup2(saved, 1);
    close(saved);
    fclose(null);
    return rc;
}

static void test_help_version(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("--help");
        assert_int_equal(parse_quiet(&cfg, ARGC, av, &err), 1);
        cel_options_free(&cfg);
    }
    {
        ARGV("-h");
        assert_int_equal(parse_quiet(&cfg, ARGC, av, &err), 1);
        cel_options_free(&cfg);
    }
    {
        ARGV("--version");
        assert_int_equal(parse_quiet(&cfg, ARGC, av, &err), 1);
        cel_options_free(&cfg);
    }
}

/* Parses celeriac OPT VALUE: want_ok 1 expects CEL_OK, 0 CEL_EINVAL. */
static void one(const char *opt, const char *value, int want_ok) {
    cel_options_t cfg;
    cel_err_t err = { 0 };
    char *av[] = { "celeriac", (char *)opt, (char *)value, NULL };
    int rc = cel_options_parse(&cfg, value ? 3 : 2, av, &err);
    if (want_ok && rc != CEL_OK) fail_msg("%s %s: %s", opt, value ? value : "", err.msg);
    if (!want_ok && rc != CEL_EINVAL)
        fail_msg("%s %s was accepted (%d)", opt, value ? value : "", rc);
    if (!want_ok) assert_true(err.msg[0] != '\0');
    cel_options_free(&cfg);
}

/* --metrics-port, --metrics-bind, --eta-task-limit (issue 18): defaults and ranges. */
static void test_metrics_options(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    {
        char *av[] = { "celeriac", NULL };
        assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_OK);
        assert_int_equal(cfg.metrics_port, -1); /* off */
        assert_string_equal(cfg.metrics_bind, "127.0.0.1");
        assert_int_equal(cfg.eta_task_limit, CEL_ETA_TASK_LIMIT);
        cel_options_free(&cfg);
    }
    {
        char *av[] = { "celeriac", "--metrics-port",   "9808", "--metrics-bind",
                       "::1",      "--eta-task-limit", "0",    NULL };
        assert_int_equal(cel_options_parse(&cfg, 7, av, &err), CEL_OK);
        assert_int_equal(cfg.metrics_port, 9808);
        assert_string_equal(cfg.metrics_bind, "::1");
        assert_int_equal(cfg.eta_task_limit, 0);
        cel_options_free(&cfg);
    }
    one("--metrics-port", "0", 1);
    one("--metrics-port", "65535", 1);
    one("--metrics-port", "65536", 0);
    one("--metrics-port", "-1", 0);
    one("--metrics-port", "http", 0);
    one("--eta-task-limit", "2147483647", 1);
    one("--eta-task-limit", "2147483648", 0);
    one("--eta-task-limit", "-1", 0);
    char big[300];
    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    one("--metrics-bind", big, 0);
    one("--metrics-port", NULL, 0);
    /* the environment, overridden by the option */
    setenv("CELERIAC_METRICS_PORT", "0", 1);
    {
        char *av[] = { "celeriac", NULL };
        assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_OK);
        assert_int_equal(cfg.metrics_port, 0);
        cel_options_free(&cfg);
    }
    {
        char *av[] = { "celeriac", "--metrics-port", "7", NULL };
        assert_int_equal(cel_options_parse(&cfg, 3, av, &err), CEL_OK);
        assert_int_equal(cfg.metrics_port, 7);
        cel_options_free(&cfg);
    }
    setenv("CELERIAC_METRICS_PORT", "http", 1);
    {
        char *av[] = { "celeriac", NULL };
        assert_int_equal(cel_options_parse(&cfg, 1, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "CELERIAC_METRICS_PORT"));
        cel_options_free(&cfg);
    }
    unsetenv("CELERIAC_METRICS_PORT");
}

static void test_ranges(void **state) {
    char buf[64];
    one("-c", "1", 1);
    snprintf(buf, sizeof(buf), "%d", CEL_MAX_CONCURRENCY);
    one("-c", buf, 1);
    snprintf(buf, sizeof(buf), "%d", CEL_MAX_CONCURRENCY + 1);
    one("-c", buf, 0);
    one("-c", "0", 0);
    one("-c", "-1", 0);
    one("-c", "x", 0);
    one("-c", "", 0);
    one("-c", "2x", 0);
    one("-c", "99999999999999999999999", 0);
    one("--prefetch-multiplier", "100000", 1);
    one("--prefetch-multiplier", "100001", 0);
    one("--prefetch-multiplier", "-1", 0);
    one("--max-tasks-per-child", "2147483647", 1);
    one("--max-tasks-per-child", "2147483648", 0);
    one("--max-tasks-per-child", "-1", 0);
    one("--max-message-size", "1024", 1);
    one("--max-message-size", "1023", 0);
    one("--max-message-size", "67108864", 1);
    one("--max-message-size", "67108865", 0);
    one("--max-input-tokens", "1", 1);
    one("--max-input-tokens", "0", 0);
    one("--max-input-tokens", "1048576", 1);
    one("--max-input-tokens", "1048577", 0);
    one("--shutdown-timeout", "0", 1);
    one("--shutdown-timeout", "2.5", 1);
    one("--shutdown-timeout", "-1", 0);
    one("--model-time-limit", "0", 1);
    one("--model-time-limit", "nan", 0);
    one("--max-adapters-per-owner", "0", 1);
    one("--max-adapters-per-owner", "1000000", 1);
    one("--max-adapters-per-owner", "1000001", 0);
    one("--max-adapter-bytes-per-owner", "0", 1);
    one("--max-adapter-bytes-per-owner", "9223372036854775807", 1);
    one("--max-adapter-bytes-per-owner", "-5", 0);
    static const char *const secs[] = { "--time-limit", "--soft-time-limit", "--result-expires" };
    for (size_t i = 0; i < 3; i++) {
        one(secs[i], "0", 1);
        one(secs[i], "0.25", 1);
        one(secs[i], "1e9", 1);
        one(secs[i], "1000000001", 0);
        one(secs[i], "-1", 0);
        one(secs[i], "nan", 0);
        one(secs[i], "inf", 0);
        one(secs[i], "1s", 0);
        one(secs[i], "", 0);
    }
    one("--visibility-timeout", "1", 1);
    one("--visibility-timeout", "0.999", 0);
    one("--visibility-timeout", "0", 0);
    one("--visibility-timeout", "x", 0);
    one("-l", "INFO", 1);
    one("-l", "warn", 1);
    one("-l", "Critical", 1);
    one("-l", "verbose", 0);
    one("-l", "", 0);
    /* a soft limit above the hard one only warns */
    {
        cel_options_t cfg;
        cel_err_t err;
        ARGV("--time-limit", "1", "--soft-time-limit", "2");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        cel_options_free(&cfg);
    }
}

static void test_bad_command_lines(void **state) {
    one("--nope", NULL, 0);
    one("-x", NULL, 0);
    one("-c", NULL, 0); /* needs a value */
    one("--broker", NULL, 0);
    one("--import-root", NULL, 0);
    one("stray", NULL, 0);
    one("-E", "stray", 0);
    one("--help=x", NULL, 0);
    one("-b", "rediss://h", 0);
    one("--result-backend", "redis://h:0", 0);
    one("-Q", "", 0);
    one("-Q", " , ,", 0);
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("-c");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "needs a value"));
        cel_options_free(&cfg);
    }
    {
        ARGV("--bogus");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "--bogus"));
        cel_options_free(&cfg);
    }
}

static void test_string_limits(void **state) {
    char big[1100];
    /* 1023 bytes fit in the 1024-byte fields, 1024 do not */
    memset(big, 'f', 1023);
    big[0] = '/';
    big[1023] = '\0';
    static const char *const opts[] = { "-f", "--pidfile", "--state-dir", "--executor", "--model" };
    for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
        big[1023] = '\0';
        one(opts[i], big, 1);
        big[1023] = 'f';
        big[1024] = '\0';
        one(opts[i], big, 0);
    }
    /* broker URL field: 1024 bytes is too long, whatever the URL */
    memset(big, 'h', 1024);
    memcpy(big, "redis://", 8);
    big[1024] = '\0';
    one("-b", big, 0);
    one("--result-backend", big, 0);
}

static void test_queue_limits(void **state) {
    char list[64 * 4 + 8], name[210];
    size_t o = 0;
    for (int i = 0; i < CEL_MAX_QUEUES; i++) o += (size_t)sprintf(list + o, "q%d,", i);
    list[o - 1] = '\0';
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("-Q", list, "--without-direct-queue");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.nqueues, CEL_MAX_QUEUES);
        assert_string_equal(cfg.queues[CEL_MAX_QUEUES - 1], "q63");
        cel_options_free(&cfg);
    }
    {
        /* the direct queue counts too (issue 15) */
        ARGV("-Q", list);
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "too many queues"));
        assert_non_null(strstr(err.msg, "direct queue"));
        cel_options_free(&cfg);
    }
    strcat(list, ",extra");
    {
        ARGV("-Q", list);
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_EINVAL);
        assert_non_null(strstr(err.msg, "too many queues"));
        cel_options_free(&cfg); /* frees the queues already made */
    }
    /* names are on the heap: CEL_MAX_QUEUE_NAME bytes fit, one more does not */
    char *big = malloc(CEL_MAX_QUEUE_NAME + 2);
    memset(big, 'q', CEL_MAX_QUEUE_NAME);
    big[CEL_MAX_QUEUE_NAME] = '\0';
    one("-Q", big, 1);
    big[CEL_MAX_QUEUE_NAME] = 'q';
    big[CEL_MAX_QUEUE_NAME + 1] = '\0';
    one("-Q", big, 0);
    free(big);
    memset(name, 'q', 200);
    name[200] = '\0';
    one("-Q", name, 1);
    /* the last -Q wins */
    {
        ARGV("-Q", "a,b", "-Q", "c", "--without-direct-queue");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.nqueues, 1);
        assert_string_equal(cfg.queues[0], "c");
        cel_options_free(&cfg);
    }
}

/* many workers (issue 15): the direct queue as worker_direct names and binds it */
static void test_direct_queue(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    const char *ex, *rk;
    {
        ARGV("-n", "w1@%h", "-Q", "a");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        char want[300];
        snprintf(want, sizeof(want), "%s.dq2", cfg.hostname);
        assert_string_equal(cfg.direct_queue, want);
        assert_int_equal(cfg.nqueues, 2);
        assert_string_equal(cfg.queues[1], want);
        cel_options_queue_route(&cfg, cfg.queues[1], &ex, &rk);
        assert_string_equal(ex, "C.dq2");
        assert_string_equal(rk, cfg.hostname);
        cel_options_queue_route(&cfg, "a", &ex, &rk);
        assert_string_equal(ex, "a");
        assert_string_equal(rk, "a");
        cel_options_free(&cfg);
    }
    {
        /* named by -Q as well: consumed once */
        ARGV("-n", "w2@box", "-Q", "w2@box.dq2,b");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.nqueues, 2);
        assert_string_equal(cfg.queues[0], "w2@box.dq2");
        cel_options_queue_route(&cfg, cfg.queues[0], &ex, &rk);
        assert_string_equal(ex, "C.dq2");
        assert_string_equal(rk, "w2@box");
        cel_options_free(&cfg);
    }
    {
        ARGV("-n", "w3@box", "--without-direct-queue");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.nqueues, 1);
        assert_string_equal(cfg.direct_queue, "");
        cel_options_queue_route(&cfg, "w3@box.dq2", &ex, &rk);
        assert_string_equal(ex, "w3@box.dq2");
        cel_options_free(&cfg);
    }
}

/* one GPU per worker (issue 15): --device cuda:N as the executor will read it */
static void test_device_option(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("--device", "cuda:3", "-c", "4");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_string_equal(cfg.device, "cuda:3"); /* passed to every executor as is */
        assert_int_equal(cfg.gpu, 1);
        assert_int_equal(cfg.concurrency, 1); /* one executor per GPU */
        cel_options_free(&cfg);
    }
    one("--device", "cuda:0", 1);
    one("--device", "cuda:255", 1);
    one("--device", "cuda", 1);
    one("--device", "cpu", 1);
    one("--device", "cuda:256", 0);
    one("--device", "cuda:", 0);
    one("--device", "cuda:x", 0);
    one("--device", "cuda:1x", 0);
    one("--device", "cuda:-1", 0);
    one("--device", "gpu", 0);
}

/* --precision fp32|bf16 (issue 17): bf16 for the CPU's passes, refused at start-up on a
 * CPU without AVX512-BF16 rather than by every executor start */
static void test_precision_option(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("--precision", "fp32");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_string_equal(cfg.precision, ""); /* the default: nothing passed on */
        cel_options_free(&cfg);
    }
    {
        ARGV("--precision", "bf16", "--device", "cpu");
        int has = 0;
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__clang__) || __GNUC__ >= 10)
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512bf16");
#endif
        int rc = cel_options_parse(&cfg, ARGC, av, &err);
        if (has) {
            assert_int_equal(rc, CEL_OK);
            assert_string_equal(cfg.precision, "bf16");
            cel_options_free(&cfg);
        } else {
            assert_int_equal(rc, CEL_EINVAL);
            assert_non_null(strstr(err.msg, "AVX512-BF16"));
        }
    }
    {
        ARGV("--precision", "bf16", "--device", "cuda:0"); /* a GPU is bf16 anyway */
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        cel_options_free(&cfg);
    }
    one("--precision", "fp16", 0);
    one("--precision", "", 0);
    one("--precision", "BF16", 0);
}

static void test_import_roots_limit(void **state) {
    enum { N = sizeof(((cel_options_t *)0)->import_roots) / sizeof(char *) };
    char *av[2 * (N + 1) + 2];
    int ac = 0;
    av[ac++] = "celeriac";
    for (int i = 0; i < N; i++) {
        av[ac++] = "--import-root";
        av[ac++] = "/r";
    }
    av[ac] = NULL;
    cel_options_t cfg;
    cel_err_t err;
    assert_int_equal(cel_options_parse(&cfg, ac, av, &err), CEL_OK);
    assert_int_equal(cfg.nimport_roots, N);
    cel_options_free(&cfg);
    av[ac++] = "--import-root";
    av[ac++] = "/r";
    av[ac] = NULL;
    assert_int_equal(cel_options_parse(&cfg, ac, av, &err), CEL_EINVAL);
    assert_non_null(strstr(err.msg, "too many"));
    cel_options_free(&cfg);
}

static void test_hostname_option(void **state) {
    char host[256], name[256], domain[256], want[600];
    host_parts(host, name, domain);
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("-n", "w%%1@%n");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        snprintf(want, sizeof(want), "w%%1@%s", name);
        assert_string_equal(cfg.hostname, want);
        cel_options_free(&cfg);
    }
    {
        ARGV("--hostname=solo");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        snprintf(want, sizeof(want), "solo@%s", host);
        assert_string_equal(cfg.hostname, want);
        cel_options_free(&cfg);
    }
    /* 255 bytes fit in hostname[256], 256 do not */
    char big[300];
    memset(big, 'n', 255);
    big[253] = '@';
    big[255] = '\0';
    one("-n", big, 1);
    big[255] = 'n';
    big[256] = '\0';
    one("-n", big, 0);
}

/* ---- autoscale and mingle (issue 19) ---- */

static void test_autoscale_and_celery_flags(void **state) {
    cel_options_t cfg;
    cel_err_t err;
    {
        ARGV("--device", "cpu", "-c", "2", "--autoscale", "6,2");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.autoscale_max, 6);
        assert_int_equal(cfg.autoscale_min, 2);
        assert_int_equal(cfg.concurrency, 6); /* the prefetch window is sized for MAX */
        cel_options_free(&cfg);
    }
    {
        ARGV("--device", "cpu", "--autoscale=3");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.autoscale_max, 3);
        assert_int_equal(cfg.autoscale_min, 0);
        cel_options_free(&cfg);
    }
    {
        ARGV("--device", "cuda", "--autoscale", "3,1");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.autoscale_max, 0); /* one executor per GPU */
        assert_int_equal(cfg.concurrency, 1);
        cel_options_free(&cfg);
    }
    {
        ARGV("--without-mingle", "--without-gossip", "--without-heartbeat", "-O", "fair",
             "--pool=prefork", "-P", "processes", "--optimization", "default");
        assert_int_equal(cel_options_parse(&cfg, ARGC, av, &err), CEL_OK);
        assert_int_equal(cfg.autoscale_max, 0);
        cel_options_free(&cfg);
    }
    one("--autoscale", "0", 0);
    one("--autoscale", "2,3", 0);
    one("--autoscale", "4,", 0);
    one("--autoscale", "4,x", 0);
    one("--autoscale", ",2", 0);
    one("--autoscale", "257", 0);
    one("--autoscale", "4,-1", 0);
    one("--autoscale", "4,1", 1);
    one("-P", "solo", 0);
    one("-O", "fast", 0);
    one("--without-mingle=1", NULL, 0);
    static const char *const unknown[][2] = {
        { "--purge", "--purge" }, { "--beat=1", "--beat" }, { "-B", "-B" }, { "-EB", "-B" }
    };
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        char *av[] = { "celeriac", (char *)unknown[i][0], NULL };
        assert_int_equal(cel_options_parse(&cfg, 2, av, &err), CEL_EINVAL);
        char want[64];
        snprintf(want, sizeof(want), "unknown option %s ", unknown[i][1]);
        if (!strstr(err.msg, want)) fail_msg("%s: %s", unknown[i][0], err.msg);
        cel_options_free(&cfg);
    }
}

int main(void) {
    cel_log_init("test", CEL_LOG_CRITICAL + 10, -1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_redis_url),
        cmocka_unit_test(test_redis_url_limits),
        cmocka_unit_test(test_safe_url),
        cmocka_unit_test(test_url_errors_hide_the_password),
        cmocka_unit_test(test_hide_secrets),
        cmocka_unit_test(test_amqp_url),
        cmocka_unit_test_setup(test_amqp_options, clear_env),
        cmocka_unit_test(test_expand_hostname),
        cmocka_unit_test(test_expand_hostname_limit),
        cmocka_unit_test_setup(test_parse_twice, clear_env),
        cmocka_unit_test_setup(test_defaults, clear_env),
        cmocka_unit_test_setup(test_env, clear_env),
        cmocka_unit_test_setup(test_url_files, clear_env),
        cmocka_unit_test_setup(test_all_options, clear_env),
        cmocka_unit_test_setup(test_help_version, clear_env),
        cmocka_unit_test_setup(test_ranges, clear_env),
        cmocka_unit_test_setup(test_metrics_options, clear_env),
        cmocka_unit_test_setup(test_bad_command_lines, clear_env),
        cmocka_unit_test_setup(test_string_limits, clear_env),
        cmocka_unit_test_setup(test_queue_limits, clear_env),
        cmocka_unit_test_setup(test_direct_queue, clear_env),
        cmocka_unit_test_setup(test_device_option, clear_env),
        cmocka_unit_test_setup(test_precision_option, clear_env),
        cmocka_unit_test_setup(test_import_roots_limit, clear_env),
        cmocka_unit_test_setup(test_hostname_option, clear_env),
        cmocka_unit_test_setup(test_autoscale_and_celery_flags, clear_env),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
