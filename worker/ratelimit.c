/* ratelimit.c -- token buckets per task name (see ratelimit.h).
 *
 * A bucket holds at most one token and refills at the task's rate, as
 * kombu/utils/limits.py TokenBucket with capacity 1. Monotonic time.
 * Main process only; no I/O.
 */
#include "ratelimit.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct bucket {
    char name[CEL_RATELIMIT_NAME_MAX + 1];
    double rate;   /* tokens per second */
    double tokens; /* 0..1 */
    double stamp;  /* monotonic seconds of the last refill */
} bucket_t;

struct cel_ratelimit {
    bucket_t *b;
    int n;
};

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

cel_ratelimit_t *cel_ratelimit_new(void) { return calloc(1, sizeof(cel_ratelimit_t)); }

void cel_ratelimit_free(cel_ratelimit_t *rl) {
    if (!rl) return;
    free(rl->b);
    free(rl);
}

int cel_ratelimit_parse(const char *s, double *per_sec, cel_err_t *err) {
    *per_sec = 0;
    if (!s || !*s) return CEL_OK;
    char *end;
    errno = 0;
    double n = strtod(s, &end);
    if (errno || end == s || !isfinite(n) || n < 0)
        return cel_err_set(err, CEL_EINVAL, "could not convert string to float: '%.64s'", s);
    double per = 1;
    if (*end == '/') {
        switch (end[1]) {
        case 's': per = 1; break;
        case 'm': per = 60; break;
        case 'h': per = 3600; break;
        default: return cel_err_set(err, CEL_EINVAL, "KeyError('%.8s')", end + 1);
        }
        if (end[2] != '\0') return cel_err_set(err, CEL_EINVAL, "bad rate unit in '%.64s'", s);
    } else if (*end) {
        return cel_err_set(err, CEL_EINVAL, "could not convert string to float: '%.64s'", s);
    }
    *per_sec = n / per;
    return CEL_OK;
}

static bucket_t *find(cel_ratelimit_t *rl, const char *name) {
    for (int i = 0; i < rl->n; i++)
        if (strcmp(rl->b[i].name, name) == 0) return &rl->b[i];
    return NULL;
}

int cel_ratelimit_set(cel_ratelimit_t *rl, const char *name, double per_sec, cel_err_t *err) {
    if (strlen(name) > CEL_RATELIMIT_NAME_MAX)
        return cel_err_set(err, CEL_ELIMIT, "task name too long");
    bucket_t *b = find(rl, name);
    if (per_sec <= 0) {
        if (b) *b = rl->b[--rl->n];
        return CEL_OK;
    }
    if (!b) {
        if (rl->n >= CEL_RATELIMIT_MAX)
            return cel_err_set(err, CEL_ELIMIT, "more than %d rate limits", CEL_RATELIMIT_MAX);
        bucket_t *nb = realloc(rl->b, sizeof(*nb) * (size_t)(rl->n + 1));
        if (!nb) return cel_err_set(err, CEL_ENOMEM, "out of memory");
        rl->b = nb;
        b = &rl->b[rl->n++];
        strcpy(b->name, name);
        b->tokens = 1;
        b->stamp = mono();
    }
    b->rate = per_sec;
    return CEL_OK;
}

double cel_ratelimit_take(cel_ratelimit_t *rl, const char *name) {
    bucket_t *b = name ? find(rl, name) : NULL;
    if (!b) return 0;
    double now = mono();
    b->tokens += (now - b->stamp) * b->rate;
    if (b->tokens > 1) b->tokens = 1;
    b->stamp = now;
    if (b->tokens >= 1 - 1e-9) {
        b->tokens -= 1;
        return 0;
    }
    return (1 - b->tokens) / b->rate;
}
