/* log.h -- Celery-style log lines: "[2026-11-23 13:40:00,123: INFO/MainProcess] msg".
 *
 * Used by the main process and by executors (each names itself once with
 * cel_log_init). Writes whole lines with one write(2) so lines from several
 * processes sharing a file or terminal do not interleave. Never blocks the
 * caller for long: the target is stderr or a log file opened O_APPEND.
 */
#ifndef CEL_LOG_H
#define CEL_LOG_H

enum {
    CEL_LOG_DEBUG = 10,
    CEL_LOG_INFO = 20,
    CEL_LOG_WARNING = 30,
    CEL_LOG_ERROR = 40,
    CEL_LOG_CRITICAL = 50
};

/* Sets the process name shown after the level ("MainProcess", "Executor-1"),
 * the minimum level, and the output fd (stderr when fd < 0). */
void cel_log_init(const char *procname, int level, int fd);

/* Parses "debug", "INFO", "warn", ... (case-insensitive). Returns the level or
 * -1 when unknown. */
int cel_log_parse_level(const char *s);

/* Name of a level as Celery prints it ("INFO", "WARNING"). */
const char *cel_log_level_name(int level);

/* 1 when a line at this level would be written. */
int cel_log_enabled(int level);

/* Writes one line at level whatever the minimum (start-up banners). */
void cel_log_force(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Writes one line at level (dropped when below the minimum). */
void cel_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define cel_debug(...) cel_log(CEL_LOG_DEBUG, __VA_ARGS__)
#define cel_info(...)  cel_log(CEL_LOG_INFO, __VA_ARGS__)
#define cel_warn(...)  cel_log(CEL_LOG_WARNING, __VA_ARGS__)
#define cel_error(...) cel_log(CEL_LOG_ERROR, __VA_ARGS__)
#define cel_crit(...)  cel_log(CEL_LOG_CRITICAL, __VA_ARGS__)

#endif
