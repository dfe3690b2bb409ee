/* affinity.c -- adapter id -> executor slot map for LoRA job routing.
 *
 * A jansson object serves as the string map (adapters are few: hundreds, not
 * millions). Main process only; no I/O.
 */
#include "affinity.h"

#include <stdlib.h>
#include <string.h>

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

/* Tasks bound to an adapter, and the position of adapter_id in their args. */
static const struct {
    const char *name;
    int pos;
} bound[] = {
    {"lora.delete", 0}, {"lora.forward_backward", 0}, {"lora.info", 0},
    {"lora.optim_step", 0}, {"lora.sample", 0}, {"lora.save", 0}, {"model.score", 1},
};

const char *cel_affinity_adapter_of(const cel_task_t *t) {
    if (!t->name) return NULL;
    for (size_t i = 0; i < sizeof(bound) / sizeof(bound[0]); i++) {
        if (strcmp(t->name, bound[i].name) != 0) continue;
        json_t *v = json_object_get(t->kwargs, "adapter_id");
        if (!v) v = json_array_get(t->args, (size_t)bound[i].pos);
        return json_string_value(v);
    }
    return NULL;
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
    if (!t->name) return;
    if (strcmp(t->name, "lora.create") == 0 || strcmp(t->name, "lora.load") == 0) {
        const char *id = json_string_value(json_object_get(result, "adapter_id"));
        if (id) cel_affinity_set(a, id, slot);
    } else if (strcmp(t->name, "lora.delete") == 0) {
        const char *id = cel_affinity_adapter_of(t);
        int old = id ? cel_affinity_get(a, id) : -1;
        if (old >= 0) {
            a->count[old]--;
            json_object_del(a->map, id);
        }
    }
}
