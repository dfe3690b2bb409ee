/* config.h -- a Llama-family model's shape, read from Hugging Face config.json (internal).
 *
 * Parses and validates the LlamaForCausalLM keys (hidden_size, intermediate_size,
 * num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
 * rms_norm_eps, rope_theta, rope_scaling, max_position_embeddings, vocab_size,
 * tie_word_embeddings, bos/eos ids) against named limits, and writes one back
 * (for models trained here). Pure, no threads.
 */
#ifndef CEL_CONFIG_H
#define CEL_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "../common/err.h"

/* Limits: anything larger is refused before a byte is allocated. */
#define CEL_CONFIG_MAX_FILE     (1u << 20)
#define CEL_CONFIG_MAX_VOCAB    (1 << 20)
#define CEL_CONFIG_MAX_HIDDEN   65536
#define CEL_CONFIG_MAX_LAYERS   512
#define CEL_CONFIG_MAX_HEADS    1024
#define CEL_CONFIG_MAX_HEAD_DIM 1024
#define CEL_CONFIG_MAX_INTER    (1 << 20)
#define CEL_CONFIG_MAX_POS      (1 << 20)
#define CEL_CONFIG_MAX_PARAMS   (1ull << 36) /* floats; 256 GiB of f32 */
#define CEL_CONFIG_MAX_EOS      8

typedef enum { CEL_ROPE_PLAIN, CEL_ROPE_LINEAR, CEL_ROPE_LLAMA3 } cel_rope_kind_t;

typedef struct cel_config {
    int V;     /* vocab_size */
    int C;     /* hidden_size */
    int L;     /* num_hidden_layers */
    int NH;    /* num_attention_heads */
    int NKV;   /* num_key_value_heads (defaults to NH) */
    int HS;    /* head_dim (defaults to C / NH) */
    int I;     /* intermediate_size */
    int maxT;  /* max_position_embeddings */
    float eps; /* rms_norm_eps */
    float rope_theta;
    cel_rope_kind_t rope_kind;
    float rope_factor, rope_low_freq, rope_high_freq; /* rope_scaling */
    int rope_orig_max;                                /* original_max_position_embeddings */
    int tied;                                         /* tie_word_embeddings (HF's default: true) */
    int bos_id;                                       /* -1 when absent */
    int n_eos;
    int eos_ids[CEL_CONFIG_MAX_EOS];
} cel_config_t;

/* Parses config.json text (len bytes). Refuses other architectures, features
 * the engine does not have (attention/mlp biases, activations other than silu,
 * unknown rope_scaling) and impossible or over-limit shapes, with a message
 * naming the key. */
int cel_config_parse(const char *text, size_t len, cel_config_t *out, cel_err_t *err);

/* Reads and parses path. */
int cel_config_load(const char *path, cel_config_t *out, cel_err_t *err);

/* Writes cfg as a LlamaForCausalLM config.json to path (atomic: temp, fsync, rename). */
int cel_config_save(const cel_config_t *cfg, const char *path, cel_err_t *err);

/* Writes a JSON object to path atomically (path.tmp.<pid>, fsync, rename) with
 * jansson dump flags. Used for config.json and adapter_config.json. */
int cel_config_write_json(json_t *o, const char *path, size_t flags, cel_err_t *err);

/* Number of floats of the base model's parameters (embedding, layers, final
 * norm, untied head). */
uint64_t cel_config_param_count(const cel_config_t *cfg);

#endif
