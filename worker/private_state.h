/* private_state.h -- the worker's private adapter-state folder when --state-dir is not given.
 *
 * Without --state-dir each executor keeps its adapters in a folder of its own,
 * which nothing else reads and which does not outlive it. The main process
 * makes one parent for them, /tmp/celeriac-state-XXXXXX, passes it to each
 * executor (--private-state-parent; the executor uses <parent>/executor-<pid>),
 * removes an executor's folder once that executor has exited (a killed one
 * cannot), and the parent when the worker ends. A worker killed with -9
 * cannot: the parent holds an `owner` file its worker keeps locked (flock) for
 * its life, and the next worker to start removes every parent whose lock is
 * free. Main process; blocking file-system calls on small folders.
 */
#ifndef CEL_PRIVATE_STATE_H
#define CEL_PRIVATE_STATE_H

#include <stddef.h>

#include "../common/err.h"

/* Removes the parents of killed workers, then makes a fresh one (mode 0700),
 * locked for this process's life, and writes its path to out[size]. */
int cel_private_state_make(char *out, size_t size, cel_err_t *err);

/* Removes <parent>/executor-<pid> and everything under it, if there. */
void cel_private_state_drop(const char *parent, int pid);

/* Removes parent and everything under it. */
void cel_private_state_remove(const char *parent);

#endif
