/* loop_until.h -- the C unit tests' bounded wait on a libuv loop.
 *
 * Header-only, like redis_server.h. loop_until() runs the loop of its deadline
 * timer until *flag reaches want; past LOOP_UNTIL_MS it fails the test naming
 * what it waited for. The timer is the caller's (initialised on the loop, with
 * data pointing at the caller's timed_out flag, closed with the loop).
 */
#ifndef CEL_TEST_LOOP_UNTIL_H
#define CEL_TEST_LOOP_UNTIL_H

#include <uv.h>

#define LOOP_UNTIL_MS 10000

static void loop_until_expired(uv_timer_t *t) {
    *(int *)t->data = 1;
    uv_stop(t->loop);
}

static void loop_until(uv_timer_t *deadline, const int *flag, int want, const char *what) {
    const int *timed_out = deadline->data;
    uv_timer_start(deadline, loop_until_expired, LOOP_UNTIL_MS, 0);
    while (*flag < want && !*timed_out) uv_run(deadline->loop, UV_RUN_ONCE);
    uv_timer_stop(deadline);
    if (*flag < want) fail_msg("timed out waiting for %s", what);
}

#endif
