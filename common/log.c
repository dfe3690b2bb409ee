/* log.c -- Celery-style log lines for the main process and executors.
 *
 * One formatted line, one write(2). Timestamps are local time with
 * milliseconds, as Celery's default formatter prints them.
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_proc[64] = "MainProcess";
static int log_level = CEL_LOG_WARNING;
static int log_fd = 2;

void cel_log_init(const char *procname, int level, int fd) {
    if (procname) snprintf(log_proc, sizeof(log_proc), "%s", procname);
    log_level = level;
    log_fd = fd >= 0 ? fd : 2;
}

int cel_log_parse_level(const char *s) {
    static const struct {
        const char *name;
        int level;
    } names[] = {
        { "debug", CEL_LOG_DEBUG },    { "info", CEL_LOG_INFO },   { "warning", CEL_LOG_WARNING },
        { "warn", CEL_LOG_WARNING },   { "error", CEL_LOG_ERROR }, { "critical", CEL_LOG_CRITICAL },
        { "fatal", CEL_LOG_CRITICAL },
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(s, names[i].name) == 0) return names[i].level;
    return -1;
}

const char *cel_log_level_name(int level) {
    if (level >= CEL_LOG_CRITICAL) return "CRITICAL";
    if (level >= CEL_LOG_ERROR) return "ERROR";
    if (level >= CEL_LOG_WARNING) return "WARNING";
    if (level >= CEL_LOG_INFO) return "INFO";
    return "DEBUG";
}

int cel_log_enabled(int level) { return level >= log_level; }

static void log_write(int level, const char *fmt, va_list ap) {
    char line[4096];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    localtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "[%04d-%02d-%02d %02d:%02d:%02d,%03d: %s/%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (int)(tv.tv_usec / 1000), cel_log_level_name(level), log_proc);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) len = sizeof(line) - 2;
    line[len++] = '\n';
    const char *p = line;
    while (len > 0) {
        ssize_t w = write(log_fd, p, len);
        if (w <= 0) break;
        p += w;
        len -= (size_t)w;
    }
}

void cel_log(int level, const char *fmt, ...) {
    if (level < log_level) return;
    va_list ap;
    va_start(ap, fmt);
    log_write(level, fmt, ap);
    va_end(ap);
}

void cel_log_force(int level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    log_write(level, fmt, ap);
    va_end(ap);
}
