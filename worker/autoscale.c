/* autoscale.c -- the autoscale policy (see autoscale.h): grow at once under
 * load, shrink after keepalive seconds without growth, as Celery's Autoscaler.
 * Pure arithmetic; the consumer drives it from a timer and on each message.
 */
#include "autoscale.h"

#include <stdlib.h>

#define KEEPALIVE_DEFAULT 30.0

void cel_autoscale_init(cel_autoscale_t *a, int max, int min, double keepalive) {
    a->max = max < 1 ? 1 : max;
    a->min = min < 0 ? 0 : min > a->max ? a->max : min;
    a->keepalive = keepalive > 0 ? keepalive : KEEPALIVE_DEFAULT;
    a->last_up = -1;
}

double cel_autoscale_keepalive_env(void) {
    const char *s = getenv("AUTOSCALE_KEEPALIVE");
    if (!s || !*s) return KEEPALIVE_DEFAULT;
    char *end;
    double v = strtod(s, &end);
    return *end == '\0' && v > 0 && v < 1e9 ? v : KEEPALIVE_DEFAULT;
}

int cel_autoscale_decide(cel_autoscale_t *a, int qty, int procs, double now) {
    if (procs > a->max) return a->max - procs;
    int up = qty < a->max ? qty : a->max;
    if (up > procs) {
        a->last_up = now;
        return up - procs;
    }
    int down = qty > a->min ? qty : a->min;
    /* Celery shrinks only after a growth at least keepalive ago. */
    if (down < procs && a->last_up >= 0 && now - a->last_up > a->keepalive) return down - procs;
    if (procs < a->min) return a->min - procs;
    return 0;
}

void cel_autoscale_update(cel_autoscale_t *a, int max, int min) {
    if (max >= 0) a->max = max < 1 ? 1 : max;
    if (min >= 0) a->min = min;
    /* the value just given wins: a max lowers min, a lone min raises max */
    if (a->min > a->max) {
        if (max >= 0) a->min = a->max;
        else a->max = a->min;
    }
}
