/* affinity.h -- which executor holds which LoRA adapter.
 *
 * An adapter lives in one executor: every job naming it goes to that
 * executor's slot, in arrival order, so a user's forward_backward and
 * optim_step apply in order and gradients stay where they were accumulated.
 * This module only keeps the map and knows where each task names its
 * adapter; the consumer decides when to run. Main process only.
 */
#ifndef CEL_AFFINITY_H
#define CEL_AFFINITY_H

#include <jansson.h>

#include "../protocol/protocol.h"

typedef struct cel_affinity cel_affinity_t;

/* A map for nslots executor slots. NULL on allocation failure. */
cel_affinity_t *cel_affinity_new(int nslots);

/* Frees the map. NULL is a no-op. */
void cel_affinity_free(cel_affinity_t *a);

/* The adapter id a task is bound to (borrowed from the task), or NULL for
 * tasks any executor may run (diag.*, lora.create, lora.load, lora.list,
 * model.score without an adapter). Reads the task table's adapter parameter
 * from kwargs, else from its position in args, as the executor binds it; a
 * non-string value is NULL (the executor then fails the task with a TypeError). */
const char *cel_affinity_adapter_of(const cel_task_t *t);

/* 1 when t makes a new adapter (lora.create, lora.load: the table's effect). */
int cel_affinity_creates(const cel_task_t *t);

/* Slot holding adapter, or -1. */
int cel_affinity_get(const cel_affinity_t *a, const char *adapter);

/* Binds adapter to slot (rebinding moves it). */
void cel_affinity_set(cel_affinity_t *a, const char *adapter, int slot);

/* Number of adapters bound to slot. */
int cel_affinity_count(const cel_affinity_t *a, int slot);

/* Learns from a finished task: the results of tasks that create an adapter
 * (lora.create, lora.load: the table's effect) bind their new adapter to the
 * slot that ran them; a task that deletes one (lora.delete) unbinds it. result
 * borrowed (the task's SUCCESS value). */
void cel_affinity_learn(cel_affinity_t *a, const cel_task_t *t, json_t *result, int slot);

#endif
