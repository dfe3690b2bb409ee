/* affinity.c -- adapter id -> executor slot map for LoRA job routing.
 *
 * A jansson object serves as the string map (adapters are few: hundreds, not
 * millions). Which argument names a task's adapter, and whether the task creates
 * or deletes one, comes from the task table (protocol/tasks.h). Main process
 * only; no I/O.
 */
#include "affinity.h"

#include <stdlib.h>

#include "../protocol/tasks.h"

struct cel_affinity {
    json_t *map; /* adapter id -> slot (integer) */
    int *count;  /* adapters per slot */
    int nslots;
};

cel_affinity_t *cel_affinity_new(int nslots) {
    cel_affinity_t *a = calloc(1, sizeof(*a));
    if (!a) return NULL;
    a->map = json_object();
    a->count = calloc((size_t)nslots, sizeof(int));
    a->nslots = nslots;
    if (!a->map || !a->count) {
        cel_affinity_free(a);
        return NULL;
    }
    return a;
}

void cel_affinity_free(cel_affinity_t *a) {
    if (!a) return;
    json_decref(a->map);
    free(a->count);
    free(a);
}

const char *cel_affinity_adapter_of(const cel_task_t *t) {
    const cel_tasks_task_t *d = cel_tasks_find(t->name);
    int pos = cel_tasks_adapter_pos(d);
    if (pos < 0) return NULL;
    json_t *v = json_object_get(t->kwargs, d->adapter_param);
    if (!v) v = json_array_get(t->args, (size_t)pos);
    return json_string_value(v);
}

int cel_affinity_creates(const cel_task_t *t) {
    const cel_tasks_task_t *d = cel_tasks_find(t->name);
    return d && d->effect == CEL_TASKS_EFFECT_CREATE;
}

int cel_affinity_get(const cel_affinity_t *a, const char *adapter) {
    json_t *v = json_object_get(a->map, adapter);
    return v ? (int)json_integer_value(v) : -1;
}

void cel_affinity_set(cel_affinity_t *a, const char *adapter, int slot) {
    if (slot < 0 || slot >= a->nslots) return;
    int old = cel_affinity_get(a, adapter);
    if (old == slot) return;
    if (old >= 0) a->count[old]--;
    if (json_object_set_new(a->map, adapter, json_integer(slot)) == 0) a->count[slot]++;
}

int cel_affinity_count(const cel_affinity_t *a, int slot) {
    return slot >= 0 && slot < a->nslots ? a->count[slot] : 0;
}

void cel_affinity_learn(cel_affinity_t *a, const cel_task_t *t, json_t *result, int slot) {
    const cel_tasks_task_t *d = cel_tasks_find(t->name);
    if (!d) return;
    if (d->effect == CEL_TASKS_EFFECT_CREATE) {
        const char *id = json_string_value(json_object_get(result, "adapter_id"));
        if (id) cel_affinity_set(a, id, slot);
    } else if (d->effect == CEL_TASKS_EFFECT_DELETE) {
        const char *id = cel_affinity_adapter_of(t);
        int old = id ? cel_affinity_get(a, id) : -1;
        if (old >= 0) {
            a->count[old]--;
            json_object_del(a->map, id);
        }
    }
}
