/* backend.c -- picks the result backend by URL scheme and dispatches to its table.
 *
 * The only code that knows which result backends exist: cel_backend_new
 * reads the scheme of --result-backend's URL and opens the matching
 * cel_backend_ops_t; every other call goes through the table. Main process,
 * libuv loop.
 */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

static const cel_backend_ops_t *const backends[] = { &cel_backend_redis_ops, &cel_backend_rpc_ops };

struct cel_backend {
    const cel_backend_ops_t *ops;
    void *impl;
    void (*on_closed)(void *);
    void *closed_priv;
};

cel_backend_t *cel_backend_new(uv_loop_t *loop, const cel_options_t *cfg, void (*on_up)(void *),
                               void *priv, cel_err_t *err) {
    const char *url = cfg->backend_url;
    const char *sep = strstr(url, "://");
    size_t n = sep ? (size_t)(sep - url) : 0;
    const cel_backend_ops_t *ops = NULL;
    for (size_t i = 0; i < sizeof(backends) / sizeof(backends[0]); i++)
        if (n && strlen(backends[i]->scheme) == n && strncmp(backends[i]->scheme, url, n) == 0)
            ops = backends[i];
    if (!ops) {
        cel_err_set(err, CEL_EINVAL, "no result backend for '%.*s://'", (int)(n > 32 ? 32 : n),
                    url);
        return NULL;
    }
    if (ops->abi != CEL_BACKEND_ABI) {
        cel_err_set(err, CEL_EINVAL, "result backend %s has abi %d, want %d", ops->scheme, ops->abi,
                    CEL_BACKEND_ABI);
        return NULL;
    }
    cel_backend_t *be = calloc(1, sizeof(*be));
    if (!be) {
        cel_err_set(err, CEL_ENOMEM, "out of memory");
        return NULL;
    }
    be->ops = ops;
    if (!(be->impl = ops->open(loop, cfg, on_up, priv, err))) {
        free(be);
        return NULL;
    }
    return be;
}

const cel_backend_ops_t *cel_backend_ops(const cel_backend_t *be) { return be->ops; }

void cel_backend_store(cel_backend_t *be, const cel_task_t *t, const char *meta, size_t len,
                       cel_backend_done_fn done, void *priv) {
    be->ops->store(be->impl, t, meta, len, done, priv);
}

int cel_backend_acks_broker(const cel_backend_t *be) { return be->ops->acks_broker(be->impl); }

void cel_backend_store_ack(cel_backend_t *be, const cel_task_t *t, const char *meta, size_t len,
                           const char *tag, cel_backend_done_fn done, void *priv) {
    be->ops->store_ack(be->impl, t, meta, len, tag, done, priv);
}

void cel_backend_get(cel_backend_t *be, const char *task_id, cel_backend_got_fn got, void *priv) {
    be->ops->get(be->impl, task_id, got, priv);
}

int cel_backend_chords(const cel_backend_t *be) {
    return be->ops->chord_size && be->ops->chord_part;
}

/* Without chord support the calls fail at once (cel_backend_chords says so
 * beforehand). */
void cel_backend_chord_size(cel_backend_t *be, const char *group_id, long size,
                            cel_backend_done_fn done, void *priv) {
    if (!be->ops->chord_size) {
        if (done) done(priv, 0);
        return;
    }
    be->ops->chord_size(be->impl, group_id, size, done, priv);
}

void cel_backend_chord_part(cel_backend_t *be, const char *group_id, int group_index,
                            const char *entry, size_t len, cel_backend_chord_fn done, void *priv) {
    if (!be->ops->chord_part) {
        done(priv, 0, 0, NULL, NULL);
        return;
    }
    be->ops->chord_part(be->impl, group_id, group_index, entry, len, done, priv);
}

static void on_impl_closed(void *priv) {
    cel_backend_t *be = priv;
    void (*cb)(void *) = be->on_closed;
    void *cp = be->closed_priv;
    free(be);
    if (cb) cb(cp);
}

void cel_backend_close(cel_backend_t *be, void (*on_closed)(void *), void *priv) {
    be->on_closed = on_closed;
    be->closed_priv = priv;
    be->ops->close(be->impl, on_impl_closed, be);
}
