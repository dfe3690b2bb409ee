/* ratelimit.h -- per task name rate limits ("10/m", "5/s", "100/h"), token buckets.
 *
 * As celery/worker/consumer/consumer.py with kombu's TokenBucket(rate,
 * capacity=1): a task may start when its bucket holds a token; otherwise the
 * caller waits the seconds returned. Pure bookkeeping, no I/O. Main process.
 */
#ifndef CEL_RATELIMIT_H
#define CEL_RATELIMIT_H

#include "../common/err.h"

#define CEL_RATELIMIT_MAX 1024     /* task names with a limit */
#define CEL_RATELIMIT_NAME_MAX 255 /* longest task name */

typedef struct cel_ratelimit cel_ratelimit_t;

cel_ratelimit_t *cel_ratelimit_new(void);
void cel_ratelimit_free(cel_ratelimit_t *rl);

/* Parses celery's rate string: "N/s", "N/m", "N/h" or a plain number (per
 * second); "" or 0 means no limit (*per_sec = 0). CEL_EINVAL with err on
 * anything else (err's text is Python's ValueError message). */
int cel_ratelimit_parse(const char *s, double *per_sec, cel_err_t *err);

/* Sets (per_sec > 0) or removes (0) the limit of a task name. CEL_ELIMIT when
 * CEL_RATELIMIT_MAX names already have one. */
int cel_ratelimit_set(cel_ratelimit_t *rl, const char *name, double per_sec, cel_err_t *err);

/* Takes a token for name: 0 when it may run now (or has no limit), else the
 * seconds until a token is there (nothing taken). */
double cel_ratelimit_take(cel_ratelimit_t *rl, const char *name);

#endif
