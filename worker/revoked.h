/* revoked.h -- the ids of revoked tasks: a bounded, expiring set kept across restarts.
 *
 * Like celery's LimitedSet as worker/state.py uses it (maxlen 50000, expiry
 * 3 h, oldest dropped first) and its --statedb persistence: with --state-dir
 * the set is written to <dir>/revoked.json (temp file + rename) when it
 * changes and at shutdown, and read back at start. Main process only.
 */
#ifndef CEL_REVOKED_H
#define CEL_REVOKED_H

#include <jansson.h>

#include "../common/err.h"

#define CEL_REVOKED_MAX      50000              /* ids kept (celery REVOKES_MAX) */
#define CEL_REVOKED_EXPIRES  (3 * 3600.0)       /* seconds an id is kept (REVOKE_EXPIRES) */
#define CEL_REVOKED_ID_MAX   255                /* longest task id accepted */
#define CEL_REVOKED_FILE_MAX (16 * 1024 * 1024) /* largest state file read */

typedef struct cel_revoked cel_revoked_t;

/* Creates the set; with state_dir (may be NULL or "") loads what is saved
 * there (a missing or corrupt file is logged and starts empty). */
cel_revoked_t *cel_revoked_new(const char *state_dir);

/* Adds id (now). Ids longer than CEL_REVOKED_ID_MAX are ignored. */
void cel_revoked_add(cel_revoked_t *rv, const char *id);

/* 1 when id is revoked and not expired. */
int cel_revoked_has(cel_revoked_t *rv, const char *id);

/* New array of the ids, oldest first. */
json_t *cel_revoked_list(cel_revoked_t *rv);

/* New object {id: time added}, as mingle's hello reply carries. */
json_t *cel_revoked_dict(cel_revoked_t *rv);

/* Merges a hello's {id: time} (borrowed); bad entries are skipped. */
void cel_revoked_merge(cel_revoked_t *rv, json_t *dict);

/* Writes the set to the state dir (no-op without one). */
int cel_revoked_save(cel_revoked_t *rv, cel_err_t *err);

/* Frees the set. NULL is a no-op. */
void cel_revoked_free(cel_revoked_t *rv);

#endif
