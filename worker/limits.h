/* limits.h -- per task name limits set at run time: rate limits and time limits.
 *
 * The one owner of what the rate_limit and time_limit control commands set:
 * a rate per task name ("10/m", "5/s", "100/h") kept as a token bucket, as
 * celery/worker/consumer/consumer.py does with kombu's TokenBucket(rate,
 * capacity=1), and a (soft, hard) time limit pair per name, as
 * celery/worker/control.py time_limit sets them on the task class. main.c
 * creates the store; control.c writes it, consumer.c reads it (takes tokens,
 * asks for time limits). Pure bookkeeping, no I/O. Main process.
 */
#ifndef CEL_LIMITS_H
#define CEL_LIMITS_H

#include "../common/err.h"

#define CEL_LIMITS_MAX           1024 /* task names with any limit */
#define CEL_LIMITS_NAME_MAX      255  /* longest task name */
#define CEL_LIMITS_RATE_TEXT_MAX 63   /* a rate as given, kept for `registered` */

typedef struct cel_limits cel_limits_t;

/* Creates an empty store; NULL on allocation failure. */
cel_limits_t *cel_limits_new(void);

/* Frees the store. NULL is a no-op. */
void cel_limits_free(cel_limits_t *l);

/* Parses celery's rate string: "N/s", "N/m", "N/h" or a plain number (per
 * second); "" or 0 means no limit (*per_sec = 0). CEL_EINVAL with err on
 * anything else (err's text is Python's ValueError message). */
int cel_limits_parse_rate(const char *s, double *per_sec, cel_err_t *err);

/* Sets (per_sec > 0) or removes (<= 0) the rate limit of a task name. text
 * (may be NULL) is the rate as the user wrote it, kept for display (cut at
 * CEL_LIMITS_RATE_TEXT_MAX bytes). Changing a rate keeps the bucket's
 * tokens. CEL_ELIMIT when the name is longer than CEL_LIMITS_NAME_MAX or
 * CEL_LIMITS_MAX names already have a limit; CEL_ENOMEM. */
int cel_limits_set_rate(cel_limits_t *l, const char *name, const char *text, double per_sec,
                        cel_err_t *err);

/* The rate text of name's limit, or NULL when it has none. Borrowed until
 * the next set call. */
const char *cel_limits_rate_text(const cel_limits_t *l, const char *name);

/* Takes a token for name: 0 when it may run now (or has no rate limit), else
 * the seconds until a token is there (nothing taken). */
double cel_limits_take(cel_limits_t *l, const char *name);

/* Sets the time limits of a task name, seconds (negative counts as 0; 0
 * means none, and still overrides the worker's --time-limit and
 * --soft-time-limit). Errors as for cel_limits_set_rate. */
int cel_limits_set_time(cel_limits_t *l, const char *name, double soft, double hard,
                        cel_err_t *err);

/* When name has time limits set, stores them in *soft and *hard and returns
 * 1; otherwise leaves both alone and returns 0. */
int cel_limits_time(const cel_limits_t *l, const char *name, double *soft, double *hard);

#endif
