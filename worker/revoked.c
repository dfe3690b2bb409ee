/* revoked.c -- bounded expiring set of revoked task ids, saved in --state-dir.
 *
 * A jansson object keeps insertion order, which is also age order, so the
 * oldest ids are at the front when the set is over its limit. The state
 * file is small JSON {id: time added}; writes are a temp file and a rename,
 * without fsync (a lost write costs only a revoke, as with celery's statedb
 * after a crash). Main process only.
 */
#include "revoked.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "../common/log.h"

struct cel_revoked {
    json_t *ids; /* id -> real (unix time added) */
    char path[1100];
};

static double now_unix(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + tv.tv_usec / 1e6;
}

/* Drops expired ids and the oldest beyond CEL_REVOKED_MAX. */
static void purge(cel_revoked_t *rv) {
    double cut = now_unix() - CEL_REVOKED_EXPIRES;
    size_t over = json_object_size(rv->ids) > CEL_REVOKED_MAX
                      ? json_object_size(rv->ids) - CEL_REVOKED_MAX
                      : 0;
    const char *k;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(rv->ids, tmp, k, v) {
        if (over > 0) {
            json_object_del(rv->ids, k);
            over--;
        } else if (json_number_value(v) < cut) {
            json_object_del(rv->ids, k);
        }
    }
}

void cel_revoked_merge(cel_revoked_t *rv, json_t *dict) {
    const char *k;
    json_t *v;
    size_t n = 0;
    json_object_foreach(dict, k, v) {
        if (++n > CEL_REVOKED_MAX) break;
        if (!json_is_number(v) || strlen(k) > CEL_REVOKED_ID_MAX) continue;
        if (!json_object_get(rv->ids, k))
            json_object_set_new(rv->ids, k, json_real(json_number_value(v)));
    }
    purge(rv);
}

cel_revoked_t *cel_revoked_new(const char *state_dir) {
    cel_revoked_t *rv = calloc(1, sizeof(*rv));
    if (!rv || !(rv->ids = json_object())) {
        free(rv);
        return NULL;
    }
    if (!state_dir || !state_dir[0]) return rv;
    snprintf(rv->path, sizeof(rv->path), "%s/revoked.json", state_dir);
    FILE *f = fopen(rv->path, "rb");
    if (!f) {
        if (errno != ENOENT) cel_warn("cannot read %s: %s", rv->path, strerror(errno));
        return rv;
    }
    json_error_t jerr;
    json_t *saved = NULL;
    if (fseek(f, 0, SEEK_END) == 0 && ftell(f) <= CEL_REVOKED_FILE_MAX) {
        rewind(f);
        saved = json_loadf(f, 0, &jerr);
        if (!saved) cel_warn("ignoring corrupt %s: %s", rv->path, jerr.text);
    } else {
        cel_warn("ignoring %s: larger than %d bytes", rv->path, CEL_REVOKED_FILE_MAX);
    }
    fclose(f);
    if (json_is_object(saved)) cel_revoked_merge(rv, saved);
    json_decref(saved);
    if (json_object_size(rv->ids))
        cel_info("restored %zu revoked task id(s) from %s", json_object_size(rv->ids), rv->path);
    return rv;
}

void cel_revoked_add(cel_revoked_t *rv, const char *id) {
    if (!id || strlen(id) > CEL_REVOKED_ID_MAX) return;
    json_object_del(rv->ids, id); /* re-added at the end: newest */
    json_object_set_new(rv->ids, id, json_real(now_unix()));
    purge(rv);
}

int cel_revoked_has(cel_revoked_t *rv, const char *id) {
    if (!id) return 0;
    json_t *v = json_object_get(rv->ids, id);
    return v && json_number_value(v) >= now_unix() - CEL_REVOKED_EXPIRES;
}

json_t *cel_revoked_list(cel_revoked_t *rv) {
    purge(rv);
    json_t *a = json_array();
    const char *k;
    json_t *v;
    json_object_foreach(rv->ids, k, v) json_array_append_new(a, json_string(k));
    return a;
}

json_t *cel_revoked_dict(cel_revoked_t *rv) {
    purge(rv);
    return json_deep_copy(rv->ids);
}

int cel_revoked_save(cel_revoked_t *rv, cel_err_t *err) {
    if (!rv || !rv->path[0]) return CEL_OK;
    char tmp[1200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", rv->path);
    purge(rv);
    if (json_dump_file(rv->ids, tmp, JSON_COMPACT) != 0 || rename(tmp, rv->path) != 0) {
        remove(tmp);
        return cel_err_set(err, CEL_EIO, "cannot write %s: %s", rv->path, strerror(errno));
    }
    return CEL_OK;
}

void cel_revoked_free(cel_revoked_t *rv) {
    if (!rv) return;
    json_decref(rv->ids);
    free(rv);
}
