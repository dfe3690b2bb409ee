/* autoscale.h -- when to add and retire executors (celery/worker/autoscale.py).
 *
 * The policy only: given the requests the worker holds (reserved and active,
 * Celery's len(reserved_requests)) and the executors it has, it says how many
 * to add or retire, as Celery's Autoscaler._maybe_scale does: grow to
 * min(qty, max) at once; shrink towards max(qty, min) only once the last
 * growth is keepalive seconds old (AUTOSCALE_KEEPALIVE, default 30). Which
 * executors may go is the consumer's call (it keeps those holding adapters).
 * No I/O, no clock of its own: the caller passes the time.
 */
#ifndef CEL_AUTOSCALE_H
#define CEL_AUTOSCALE_H

typedef struct cel_autoscale {
    int max, min;     /* executors, 0 <= min <= max */
    double keepalive; /* seconds a growth holds before any shrink */
    double last_up;   /* when it last grew (monotonic seconds); < 0 = never */
} cel_autoscale_t;

/* Sets a policy for [min, max] with keepalive seconds (<= 0: 30). */
void cel_autoscale_init(cel_autoscale_t *a, int max, int min, double keepalive);

/* The keepalive from the environment (AUTOSCALE_KEEPALIVE, as Celery reads
 * it), else 30; a value that is not a positive number is 30. */
double cel_autoscale_keepalive_env(void);

/* Executors to add (> 0) or retire (< 0) now, for qty requests held and procs
 * executors at time now. A growth is recorded (it starts the keepalive). More
 * executors than max are always retired, keepalive or not. */
int cel_autoscale_decide(cel_autoscale_t *a, int qty, int procs, double now);

/* The autoscale command (Autoscaler.update): max and/or min (< 0 = leave as
 * is); max is at least 1. If min would end above max, a max given lowers min
 * to it, else the min given raises max. */
void cel_autoscale_update(cel_autoscale_t *a, int max, int min);

#endif
