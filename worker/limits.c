/* limits.c -- per task name rate and time limits (see limits.h).
 *
 * One entry per task name that has any limit, in a small array searched
 * linearly (a handful of names in practice; CEL_LIMITS_MAX at most), so the
 * dispatch path pays one length check when no limit is set. A rate bucket
 * holds at most one token and refills at the task's rate, as
 * kombu/utils/limits.py TokenBucket with capacity 1. Monotonic time.
 * Main process only; no I/O.
 */
#include "limits.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct entry {
    char name[CEL_LIMITS_NAME_MAX + 1];
    double rate;   /* tokens per second; 0 = no rate limit */
    double tokens; /* 0..1 */
    double stamp;  /* monotonic seconds of the last refill */
    char rate_text[CEL_LIMITS_RATE_TEXT_MAX + 1];
    int has_time; /* time_limit was set for this name */
    double soft, hard;
} entry_t;

struct cel_limits {
    entry_t *e;
    int n;
    int cap;
};

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

cel_limits_t *cel_limits_new(void) { return calloc(1, sizeof(cel_limits_t)); }

void cel_limits_free(cel_limits_t *l) {
    if (!l) return;
    free(l->e);
    free(l);
}

int cel_limits_parse_rate(const char *s, double *per_sec, cel_err_t *err) {
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

static entry_t *find(const cel_limits_t *l, const char *name) {
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->e[i].name, name) == 0) return &l->e[i];
    return NULL;
}

/* The entry of name, added (with no limit yet) when missing. */
static int get_or_add(cel_limits_t *l, const char *name, entry_t **out, cel_err_t *err) {
    *out = NULL;
    if (strlen(name) > CEL_LIMITS_NAME_MAX)
        return cel_err_set(err, CEL_ELIMIT, "task name too long");
    if ((*out = find(l, name))) return CEL_OK;
    if (l->n >= CEL_LIMITS_MAX)
        return cel_err_set(err, CEL_ELIMIT, "more than %d task names with limits", CEL_LIMITS_MAX);
    if (l->n == l->cap) {
        int cap = l->cap ? l->cap * 2 : 8;
        if (cap > CEL_LIMITS_MAX) cap = CEL_LIMITS_MAX;
        entry_t *ne = realloc(l->e, sizeof(*ne) * (size_t)cap);
        if (!ne) return cel_err_set(err, CEL_ENOMEM, "out of memory");
        l->e = ne;
        l->cap = cap;
    }
    entry_t *e = &l->e[l->n++];
    memset(e, 0, sizeof(*e));
    strcpy(e->name, name);
    *out = e;
    return CEL_OK;
}

/* Drops an entry that no longer holds any limit. */
static void drop_if_empty(cel_limits_t *l, entry_t *e) {
    if (e->rate > 0 || e->has_time) return;
    *e = l->e[--l->n];
}

int cel_limits_set_rate(cel_limits_t *l, const char *name, const char *text, double per_sec,
                        cel_err_t *err) {
    if (strlen(name) > CEL_LIMITS_NAME_MAX)
        return cel_err_set(err, CEL_ELIMIT, "task name too long");
    entry_t *e;
    if (per_sec <= 0) {
        if ((e = find(l, name))) {
            e->rate = 0;
            e->rate_text[0] = '\0';
            drop_if_empty(l, e);
        }
        return CEL_OK;
    }
    int rc = get_or_add(l, name, &e, err);
    if (rc) return rc;
    if (e->rate <= 0) { /* a new bucket starts full */
        e->tokens = 1;
        e->stamp = mono();
    }
    e->rate = per_sec;
    snprintf(e->rate_text, sizeof(e->rate_text), "%s", text ? text : "");
    return CEL_OK;
}

const char *cel_limits_rate_text(const cel_limits_t *l, const char *name) {
    const entry_t *e = name ? find(l, name) : NULL;
    return e && e->rate > 0 ? e->rate_text : NULL;
}

double cel_limits_take(cel_limits_t *l, const char *name) {
    if (l->n == 0 || !name) return 0;
    entry_t *e = find(l, name);
    if (!e || e->rate <= 0) return 0;
    double now = mono();
    e->tokens += (now - e->stamp) * e->rate;
    if (e->tokens > 1) e->tokens = 1;
    e->stamp = now;
    if (e->tokens >= 1 - 1e-9) {
        e->tokens -= 1;
        return 0;
    }
    return (1 - e->tokens) / e->rate;
}

int cel_limits_set_time(cel_limits_t *l, const char *name, double soft, double hard,
                        cel_err_t *err) {
    entry_t *e;
    int rc = get_or_add(l, name, &e, err);
    if (rc) return rc;
    e->has_time = 1;
    e->soft = soft > 0 ? soft : 0;
    e->hard = hard > 0 ? hard : 0;
    return CEL_OK;
}

int cel_limits_time(const cel_limits_t *l, const char *name, double *soft, double *hard) {
    if (l->n == 0 || !name) return 0;
    const entry_t *e = find(l, name);
    if (!e || !e->has_time) return 0;
    *soft = e->soft;
    *hard = e->hard;
    return 1;
}
