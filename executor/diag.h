/* diag.h -- the diagnostic tasks (diag.*): noop, echo, add, sleep, fail, crash.
 *
 * Small functions that behave as their Python twins (see diag.c), for tests,
 * benchmarks and health checks; none needs the model. Their signatures are in
 * the task table (protocol/tasks.h); the executor binds the arguments with
 * executor/call.h before calling one. Executor processes only, blocking.
 */
#ifndef CEL_DIAG_H
#define CEL_DIAG_H

#include "call.h"

/* The function of the diag.* task name, or NULL. */
cel_call_fn cel_diag_find(const char *name);

#endif
