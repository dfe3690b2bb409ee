/* redis_server.h -- a private redis-server for the C unit tests that need a real one.
 *
 * Header-only (each unit test is one translation unit). redis_setup() is a cmocka group
 * setup: it starts /usr/bin/redis-server on a free loopback port (no persistence) and waits
 * until it answers PING, leaving `rc` connected to it; when redis-server is not installed it
 * succeeds with rc NULL and every test that calls need_redis() skips. redis_teardown() stops
 * it. cmd_int() runs a synchronous command whose reply must be an integer.
 */
#ifndef CEL_TEST_REDIS_SERVER_H
#define CEL_TEST_REDIS_SERVER_H

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#define REDIS_START_DEADLINE_MS 10000

extern char **environ;

static pid_t redis_pid;
static int redis_port;
static redisContext *rc; /* the test's own synchronous client */

static inline int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t n = sizeof(a);
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof(a)) < 0 ||
        getsockname(s, (struct sockaddr *)&a, &n) < 0)
        return -1;
    close(s);
    return ntohs(a.sin_port);
}

static inline void sleep_ms(long ms) {
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) != 0) {}
}

static inline int redis_setup(void **state) {
    (void)state;
    if (access("/usr/bin/redis-server", X_OK) != 0) return 0; /* tests skip */
    redis_port = free_port();
    char port[16];
    snprintf(port, sizeof(port), "%d", redis_port);
    char *argv[] = { "redis-server", "--port", port,         "--bind",  "127.0.0.1", "--save", "",
                     "--appendonly", "no",     "--loglevel", "warning", NULL };
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (posix_spawn(&redis_pid, "/usr/bin/redis-server", &fa, NULL, argv, environ) != 0)
        redis_pid = 0;
    posix_spawn_file_actions_destroy(&fa);
    if (!redis_pid) return -1;
    /* wait for it to answer, not for a fixed time */
    for (int i = 0; i < REDIS_START_DEADLINE_MS / 20 && !rc; i++) {
        redisContext *c = redisConnect("127.0.0.1", redis_port);
        redisReply *r = c && !c->err ? redisCommand(c, "PING") : NULL;
        if (r && r->type == REDIS_REPLY_STATUS) rc = c;
        else if (c) redisFree(c);
        if (r) freeReplyObject(r);
        if (!rc) sleep_ms(20);
    }
    return rc ? 0 : -1;
}

static inline int redis_teardown(void **state) {
    (void)state;
    if (rc) redisFree(rc);
    if (redis_pid) {
        kill(redis_pid, SIGTERM);
        waitpid(redis_pid, NULL, 0);
    }
    return 0;
}

static inline void need_redis(void) {
    if (!rc) skip();
}

/* A synchronous command whose integer reply is returned. */
static inline long long cmd_int(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(rc, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type != REDIS_REPLY_INTEGER) fail_msg("%s: not an integer reply (%d)", fmt, r->type);
    long long v = r->integer;
    freeReplyObject(r);
    return v;
}

#endif
