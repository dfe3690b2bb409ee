/* tiny_model.h -- the tiny random Llama the adapter and model-job unit tests share (header-only).
 *
 * TINY_MODEL_CFG is a LlamaForCausalLM config.json small enough for exact CPU
 * checks in milliseconds: vocabulary 67, width 24, 2 layers, 4 query heads over
 * 2 key/value heads, 48 positions, untied embeddings. tiny_model_new() builds
 * it with random weights from the one seed these tests use, failing the
 * running test (or fixture) when it cannot; the caller frees it with
 * cel_model_free. Nothing here touches a file or a device.
 */
#ifndef CEL_TEST_TINY_MODEL_H
#define CEL_TEST_TINY_MODEL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "../../model/model.h"

#define TINY_MODEL_SEED 7

static const char *const TINY_MODEL_CFG =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"vocab_size\":67,"
    "\"hidden_size\":24,\"intermediate_size\":44,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-5,"
    "\"max_position_embeddings\":48,\"tie_word_embeddings\":false,\"bos_token_id\":1,"
    "\"eos_token_id\":2,\"hidden_act\":\"silu\"}";

/* A new tiny model with TINY_MODEL_SEED's random weights; fails the test when init fails. */
static inline cel_model_t *tiny_model_new(void) {
    cel_model_t *m = NULL;
    cel_err_t err;
    if (cel_model_init(TINY_MODEL_CFG, TINY_MODEL_SEED, &m, &err) != CEL_OK)
        fail_msg("tiny model init: %s", err.msg);
    return m;
}

#endif
