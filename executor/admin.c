/* admin.c -- adapter administration tasks: lora.create, save, load, info, list, delete.
 *
 * Each is a thin call into the adapter store (executor/adapters.c), which does
 * the file work in its crash-safe order; here the bound arguments become store
 * calls and the store's errors the exceptions a client reads (ValueError for an
 * unknown adapter, PermissionError for a lora.load path outside the allowed
 * folders, OSError for checkpoint I/O). target_modules=None means all seven
 * Llama projections (PEFT's "all-linear"): on small models it learns much
 * faster than PEFT's q_proj,v_proj default.
 * Executor processes only; blocking file I/O; one task at a time.
 */
#include "lm_internal.h"

#include <stdio.h>
#include <string.h>

#include "../common/log.h"

static cel_lm_state_t *const g = &cel_lm_state;

/* ---- lora.create ---- */

/* Parses target_modules: None (all seven), or a list of the table's names. */
static int parse_targets(cel_call_t *call, json_t *v, unsigned *out) {
    *out = CEL_LORA_ALL;
    if (json_is_null(v)) return CEL_OK;
    char csv[512] = "";
    size_t used = 0, i;
    json_t *e;
    json_array_foreach(v, i, e) {
        used += (size_t)snprintf(csv + used, sizeof(csv) - used, "%s%s", i ? "," : "",
                                 json_string_value(e));
        if (used >= sizeof(csv))
            return cel_call_fail(call, "ValueError", "target_modules is too long");
    }
    cel_err_t err;
    if (cel_lora_parse_targets(csv, out, &err) != CEL_OK)
        return cel_call_fail(call, "ValueError", "%s", err.msg);
    return CEL_OK;
}

/* lora.create's result for a. */
static json_t *created_result(cel_adapter_t *a) {
    json_t *d = cel_adapters_describe(a);
    if (!d) return NULL;
    json_object_del(d, "owner");
    json_object_del(d, "created");
    /* its home (issue 15): the front end sends its later jobs to <node>.dq2 */
    json_object_set_new(d, "node", json_string(cel_adapters_node(g->store)));
    return d;
}

/* lora.create(rank=8, alpha=16, target_modules=None, seed=None, owner=None) */
int cel_lm_create(cel_call_t *call) {
    json_t **v = call->argv;
    cel_lora_config_t cfg = { .rank = (int)json_integer_value(v[0]),
                              .alpha = (float)json_number_value(v[1]) };
    int rc = parse_targets(call, v[2], &cfg.targets);
    cfg.seed = json_is_null(v[3]) ? cel_lm_random_seed() : (uint64_t)json_integer_value(v[3]);
    if (rc == CEL_OK) rc = cel_lm_owner(call, v[4]);
    cel_adapter_t *a = NULL;
    cel_err_t err;
    if (rc == CEL_OK &&
        (rc = cel_adapters_create(g->store, &cfg, json_string_value(v[4]), &a, &err)) != CEL_OK)
        rc =
            rc == CEL_ENOMEM ? rc : cel_lm_store_error(call, rc, "cannot create the adapter", &err);
    if (rc == CEL_OK) {
        cel_info("Created adapter %s (rank %d, alpha %g)", cel_adapters_id(a), cfg.rank, cfg.alpha);
        rc = cel_call_succeed(call, created_result(a));
    }
    return cel_call_finish(rc);
}

/* ---- lora.save, load, info, list, delete ---- */

/* lora.save(adapter_id) */
int cel_lm_save(cel_call_t *call) {
    json_t **v = call->argv;
    cel_adapter_t *a = NULL;
    int rc = cel_lm_adapter(call, v[0], &a);
    char path[CEL_ADAPTERS_PATH_MAX];
    cel_err_t err;
    if (rc == CEL_OK && (rc = cel_adapters_export(g->store, a, path, &err)) != CEL_OK)
        rc = rc == CEL_ENOMEM   ? rc
             : rc == CEL_ELIMIT ? cel_lm_store_error(call, rc, "cannot save the adapter", &err)
                                : cel_call_fail(call, "OSError", "cannot save adapter %s: %s",
                                                cel_adapters_id(a), err.msg);
    if (rc == CEL_OK) rc = cel_call_succeed(call, json_string(path));
    return cel_call_finish(rc);
}

/* lora.load(path, owner=None) */
int cel_lm_load(cel_call_t *call) {
    json_t **v = call->argv;
    int rc = CEL_OK;
    if (strlen(json_string_value(v[0])) != json_string_length(v[0]))
        rc = cel_call_fail(call, "ValueError", "path must not contain NUL");
    if (rc == CEL_OK) rc = cel_lm_owner(call, v[1]);
    cel_adapter_t *a = NULL;
    cel_err_t err;
    if (rc == CEL_OK) {
        rc = cel_adapters_import(g->store, json_string_value(v[0]), json_string_value(v[1]), &a,
                                 &err);
        if (rc == CEL_ESTATE)
            rc = cel_call_fail(call, "PermissionError", "path %s %s", cel_lm_repr(v[0]), err.msg);
        else if (rc == CEL_ELIMIT || rc == CEL_EAGAIN)
            rc = cel_lm_store_error(call, rc, "cannot load the adapter", &err);
        else if (rc == CEL_EIO)
            rc = cel_call_fail(call, "OSError", "path %s: %s", cel_lm_repr(v[0]), err.msg);
        else if (rc != CEL_OK && rc != CEL_ENOMEM)
            rc = cel_call_fail(call, "ValueError", "path %s %s", cel_lm_repr(v[0]), err.msg);
    }
    if (rc == CEL_OK) {
        cel_info("Loaded adapter %s from %s", cel_adapters_id(a), json_string_value(v[0]));
        rc = cel_call_succeed(call, created_result(a));
    }
    return cel_call_finish(rc);
}

/* lora.info(adapter_id) */
int cel_lm_info(cel_call_t *call) {
    json_t **v = call->argv;
    json_t *info = NULL;
    cel_err_t err;
    int rc;
    if ((rc = cel_adapters_info(g->store, json_string_value(v[0]), &info, &err))) {
        if (rc == CEL_ENOTFOUND)
            rc = cel_call_fail(call, "ValueError", "unknown adapter %s", cel_lm_repr(v[0]));
        else if (rc != CEL_ENOMEM)
            rc = cel_call_fail(call, "OSError", "adapter %s: %s", json_string_value(v[0]), err.msg);
    }
    if (rc == CEL_OK) rc = cel_call_succeed(call, info);
    return cel_call_finish(rc);
}

/* lora.list(owner=None) */
int cel_lm_list(cel_call_t *call) {
    json_t **v = call->argv;
    json_t *list = NULL;
    cel_err_t err;
    int rc;
    if ((rc = cel_adapters_list(g->store, json_string_value(v[0]), &list, &err)))
        rc = rc == CEL_ENOMEM ? rc : cel_call_fail(call, "OSError", "%s", err.msg);
    if (rc == CEL_OK) rc = cel_call_succeed(call, list);
    return cel_call_finish(rc);
}

/* lora.delete(adapter_id) */
int cel_lm_delete(cel_call_t *call) {
    json_t **v = call->argv;
    cel_err_t err;
    int rc;
    if ((rc = cel_adapters_delete(g->store, json_string_value(v[0]), &err))) {
        if (rc == CEL_ENOTFOUND)
            rc = cel_call_fail(call, "ValueError", "unknown adapter %s", cel_lm_repr(v[0]));
        else if (rc != CEL_ENOMEM)
            rc = cel_call_fail(call, "OSError", "cannot delete %s: %s", json_string_value(v[0]),
                               err.msg);
    }
    if (rc == CEL_OK) {
        cel_info("Deleted adapter %s", json_string_value(v[0]));
        rc = cel_call_succeed(call, json_pack("{s:O}", "deleted", v[0]));
    }
    return cel_call_finish(rc);
}
