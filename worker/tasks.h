/* tasks.h -- the names of the tasks celeriac's executors can run.
 *
 * A plain list with no dependency on the task code, so the main process can
 * check names (NotRegistered, `inspect registered`) without linking the
 * executor side. Must list exactly what the executor's task tables hold
 * (executor/diag.c today); the executor checks this at start-up.
 */
#ifndef CEL_TASKS_H
#define CEL_TASKS_H

/* NULL-terminated list of registered task names, sorted as `inspect registered`
 * shows them. Static storage; never freed. */
const char *const *cel_tasks_names(void);

/* 1 when name is a registered task, 0 otherwise (NULL gives 0). */
int cel_tasks_known(const char *name);

#endif
