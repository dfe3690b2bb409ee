/* tasks.c -- the list of registered task names (see tasks.h).
 *
 * No code of the tasks themselves lives here; linked into both the main
 * process and the executor. Keep in sync with the tables in executor/diag.c and
 * executor/tasks_model.c
 * (the executor logs an error at start-up if a name here has no function).
 */
#include "tasks.h"

#include <string.h>

static const char *const task_names[] = {
    "diag.add",
    "diag.crash",
    "diag.echo",
    "diag.fail",
    "diag.noop",
    "diag.sleep",
    "lora.create",
    "lora.delete",
    "lora.forward_backward",
    "lora.info",
    "lora.list",
    "lora.load",
    "lora.optim_step",
    "lora.sample",
    "lora.save",
    "model.score",
    NULL,
};

const char *const *cel_tasks_names(void) { return task_names; }

int cel_tasks_known(const char *name) {
    if (!name) return 0;
    for (size_t i = 0; task_names[i]; i++)
        if (strcmp(task_names[i], name) == 0) return 1;
    return 0;
}
