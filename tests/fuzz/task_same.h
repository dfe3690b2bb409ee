/* task_same.h -- do two decoded tasks say the same? For the envelope fast path's checks.
 *
 * cel_task_decode_envelope reads most envelopes with scan.c and the rest with
 * jansson (cel_task_decode_envelope_full); whatever path a message takes, the
 * task must be the same. task_same compares every field of cel_task_t but
 * headers (the fast path does not build that tree) and priv_. Header-only,
 * included by tests/fuzz/fuzz_scan.c and tests/unit/test_task.c.
 */
#ifndef CEL_TEST_TASK_SAME_H
#define CEL_TEST_TASK_SAME_H

#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "../../protocol/protocol.h"

static int same_str(const char *a, const char *b) {
    return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static int same_json(json_t *a, json_t *b) { return (!a && !b) || (a && b && json_equal(a, b)); }

/* 1 when a and b hold the same task; else 0 with the first difference in why. */
static int task_same(const cel_task_t *a, const cel_task_t *b, char *why, size_t size) {
    const char *names[] = {
        "id",           "name",         "root_id",          "parent_id",      "group",
        "shadow",       "origin",       "argsrepr",         "kwargsrepr",     "eta_str",
        "expires_str",  "content_type", "content_encoding", "correlation_id", "reply_to",
        "delivery_tag", "exchange",     "routing_key"
    };
    const char *as[] = {
        a->id,           a->name,         a->root_id,          a->parent_id,      a->group,
        a->shadow,       a->origin,       a->argsrepr,         a->kwargsrepr,     a->eta_str,
        a->expires_str,  a->content_type, a->content_encoding, a->correlation_id, a->reply_to,
        a->delivery_tag, a->exchange,     a->routing_key
    };
    const char *bs[] = {
        b->id,           b->name,         b->root_id,          b->parent_id,      b->group,
        b->shadow,       b->origin,       b->argsrepr,         b->kwargsrepr,     b->eta_str,
        b->expires_str,  b->content_type, b->content_encoding, b->correlation_id, b->reply_to,
        b->delivery_tag, b->exchange,     b->routing_key
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (!same_str(as[i], bs[i])) {
            snprintf(why, size, "%s: '%s' vs '%s'", names[i], as[i] ? as[i] : "(null)",
                     bs[i] ? bs[i] : "(null)");
            return 0;
        }
    const double an[] = { a->proto,         a->eta,         a->expires,
                          a->retries,       a->time_limit,  a->soft_time_limit,
                          a->ignore_result, a->group_index, a->priority,
                          a->redelivered };
    const double bn[] = { b->proto,         b->eta,         b->expires,
                          b->retries,       b->time_limit,  b->soft_time_limit,
                          b->ignore_result, b->group_index, b->priority,
                          b->redelivered };
    for (size_t i = 0; i < sizeof(an) / sizeof(an[0]); i++)
        if (!(an[i] == bn[i]) && !(an[i] != an[i] && bn[i] != bn[i])) {
            snprintf(why, size, "number %zu: %.17g vs %.17g", i, an[i], bn[i]);
            return 0;
        }
    if (!same_json(a->args, b->args) || !same_json(a->kwargs, b->kwargs) ||
        !same_json(a->embed, b->embed)) {
        snprintf(why, size, "args, kwargs or embed differ");
        return 0;
    }
    return 1;
}

#endif
