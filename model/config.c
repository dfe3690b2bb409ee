/* config.c -- parse, validate and write Hugging Face config.json for Llama-family models.
 *
 * Must match transformers' LlamaConfig defaults: num_key_value_heads defaults
 * to num_attention_heads, head_dim to hidden_size / num_attention_heads,
 * rope_theta to 10000, rms_norm_eps to 1e-6, tie_word_embeddings to false
 * (LlamaConfig) -- a missing key takes that default; a present key of the wrong
 * type is an error. Pure except for reading/writing the file.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "params.h"

/* Reads an integer key into *out within [lo, hi]; a missing key keeps *out
 * when optional, else fails. */
static int get_int(json_t *root, const char *key, int optional, long long lo, long long hi,
                   int *out, cel_err_t *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (optional) return CEL_OK;
        return cel_err_set(err, CEL_EPROTO, "config.json: %s is missing", key);
    }
    if (!json_is_integer(v))
        return cel_err_set(err, CEL_EPROTO, "config.json: %s is not an integer", key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return cel_err_set(err, CEL_ELIMIT, "config.json: %s = %lld is outside [%lld, %lld]", key,
                           x, lo, hi);
    *out = (int)x;
    return CEL_OK;
}

static int get_float(json_t *root, const char *key, double lo, double hi, float *out,
                     cel_err_t *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return CEL_OK;
    if (!json_is_number(v))
        return cel_err_set(err, CEL_EPROTO, "config.json: %s is not a number", key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return cel_err_set(err, CEL_ELIMIT, "config.json: %s = %g is outside [%g, %g]", key, x, lo,
                           hi);
    *out = (float)x;
    return CEL_OK;
}

static int get_bool(json_t *root, const char *key, int *out, cel_err_t *err) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return CEL_OK;
    if (!json_is_boolean(v))
        return cel_err_set(err, CEL_EPROTO, "config.json: %s is not a boolean", key);
    *out = json_is_true(v);
    return CEL_OK;
}

static int parse_rope_scaling(json_t *root, cel_config_t *c, cel_err_t *err) {
    json_t *rs = json_object_get(root, "rope_scaling");
    if (!rs || json_is_null(rs)) return CEL_OK;
    if (!json_is_object(rs))
        return cel_err_set(err, CEL_EPROTO, "config.json: rope_scaling is not an object");
    json_t *t = json_object_get(rs, "rope_type");
    if (!t) t = json_object_get(rs, "type");
    const char *type = json_string_value(t);
    if (!type) return cel_err_set(err, CEL_EPROTO, "config.json: rope_scaling has no type");
    int rc = get_float(rs, "factor", 1e-3, 1e6, &c->rope_factor, err);
    if (rc) return rc;
    if (strcmp(type, "default") == 0) return CEL_OK;
    if (strcmp(type, "linear") == 0) {
        c->rope_kind = CEL_ROPE_LINEAR;
        return CEL_OK;
    }
    if (strcmp(type, "llama3") == 0) {
        c->rope_kind = CEL_ROPE_LLAMA3;
        c->rope_low_freq = 1.0f;
        c->rope_high_freq = 4.0f;
        c->rope_orig_max = 8192;
        if ((rc = get_float(rs, "low_freq_factor", 1e-6, 1e6, &c->rope_low_freq, err)) ||
            (rc = get_float(rs, "high_freq_factor", 1e-6, 1e6, &c->rope_high_freq, err)) ||
            (rc = get_int(rs, "original_max_position_embeddings", 1, 1, CEL_CONFIG_MAX_POS,
                          &c->rope_orig_max, err)))
            return rc;
        if (!(c->rope_high_freq > c->rope_low_freq))
            return cel_err_set(err, CEL_EPROTO,
                               "config.json: rope_scaling high_freq_factor "
                               "must exceed low_freq_factor");
        return CEL_OK;
    }
    return cel_err_set(err, CEL_EINVAL, "config.json: rope_scaling type %.32s is not supported",
                       type);
}

uint64_t cel_config_param_count(const cel_config_t *c) { return cel_params_count(c); }

int cel_config_parse(const char *text, size_t len, cel_config_t *out, cel_err_t *err) {
    memset(out, 0, sizeof(*out));
    if (len > CEL_CONFIG_MAX_FILE)
        return cel_err_set(err, CEL_ELIMIT, "config.json: %zu bytes (limit %u)", len,
                           CEL_CONFIG_MAX_FILE);
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) return cel_err_set(err, CEL_EPROTO, "config.json: %s (line %d)", je.text, je.line);
    int rc = CEL_OK;
    cel_config_t c = { 0 };
    c.eps = 1e-6f;
    c.rope_theta = 10000.0f;
    c.rope_kind = CEL_ROPE_PLAIN;
    c.rope_factor = 1.0f;
    c.maxT = 2048;
    c.bos_id = -1;
    c.NKV = -1;
    c.HS = -1;
    if (!json_is_object(root)) {
        rc = cel_err_set(err, CEL_EPROTO, "config.json: not a JSON object");
        goto done;
    }
    const char *mt = json_string_value(json_object_get(root, "model_type"));
    if (mt && strcmp(mt, "llama") != 0 && strcmp(mt, "mistral") != 0) {
        rc = cel_err_set(err, CEL_EINVAL,
                         "config.json: model_type %.32s is not supported "
                         "(llama, mistral)",
                         mt);
        goto done;
    }
    json_t *arch = json_object_get(root, "architectures");
    if (json_is_array(arch) && json_array_size(arch) > 0) {
        const char *a = json_string_value(json_array_get(arch, 0));
        if (!a || (strcmp(a, "LlamaForCausalLM") != 0 && strcmp(a, "MistralForCausalLM") != 0)) {
            rc = cel_err_set(err, CEL_EINVAL, "config.json: architecture %.48s is not supported",
                             a ? a : "(not a string)");
            goto done;
        }
    }
    const char *act = json_string_value(json_object_get(root, "hidden_act"));
    if (act && strcmp(act, "silu") != 0) {
        rc = cel_err_set(err, CEL_EINVAL,
                         "config.json: hidden_act %.32s is not supported "
                         "(silu)",
                         act);
        goto done;
    }
    int abias = 0, mbias = 0;
    if ((rc = get_bool(root, "attention_bias", &abias, err)) ||
        (rc = get_bool(root, "mlp_bias", &mbias, err)))
        goto done;
    if (abias || mbias) {
        rc = cel_err_set(err, CEL_EINVAL,
                         "config.json: attention_bias/mlp_bias are not "
                         "supported");
        goto done;
    }
    json_t *sw = json_object_get(root, "sliding_window");
    if (sw && !json_is_null(sw)) {
        rc = cel_err_set(err, CEL_EINVAL, "config.json: sliding_window is not supported");
        goto done;
    }
    if ((rc = get_int(root, "vocab_size", 0, 1, CEL_CONFIG_MAX_VOCAB, &c.V, err)) ||
        (rc = get_int(root, "hidden_size", 0, 1, CEL_CONFIG_MAX_HIDDEN, &c.C, err)) ||
        (rc = get_int(root, "intermediate_size", 0, 1, CEL_CONFIG_MAX_INTER, &c.I, err)) ||
        (rc = get_int(root, "num_hidden_layers", 0, 1, CEL_CONFIG_MAX_LAYERS, &c.L, err)) ||
        (rc = get_int(root, "num_attention_heads", 0, 1, CEL_CONFIG_MAX_HEADS, &c.NH, err)) ||
        (rc = get_int(root, "num_key_value_heads", 1, 1, CEL_CONFIG_MAX_HEADS, &c.NKV, err)) ||
        (rc = get_int(root, "head_dim", 1, 2, CEL_CONFIG_MAX_HEAD_DIM, &c.HS, err)) ||
        (rc = get_int(root, "max_position_embeddings", 1, 1, CEL_CONFIG_MAX_POS, &c.maxT, err)) ||
        (rc = get_int(root, "bos_token_id", 1, 0, CEL_CONFIG_MAX_VOCAB, &c.bos_id, err)) ||
        (rc = get_float(root, "rms_norm_eps", 0.0, 1.0, &c.eps, err)) ||
        (rc = get_float(root, "rope_theta", 1.0, 1e12, &c.rope_theta, err)) ||
        (rc = get_bool(root, "tie_word_embeddings", &c.tied, err)) ||
        (rc = parse_rope_scaling(root, &c, err)))
        goto done;
    json_t *eos = json_object_get(root, "eos_token_id");
    if (json_is_integer(eos)) {
        c.eos_ids[c.n_eos++] = (int)json_integer_value(eos);
    } else if (json_is_array(eos)) {
        size_t i;
        json_t *e;
        json_array_foreach(eos, i, e) {
            if (!json_is_integer(e) || c.n_eos >= CEL_CONFIG_MAX_EOS) {
                rc = cel_err_set(err, CEL_EPROTO,
                                 "config.json: eos_token_id must be up to %d "
                                 "integers",
                                 CEL_CONFIG_MAX_EOS);
                goto done;
            }
            c.eos_ids[c.n_eos++] = (int)json_integer_value(e);
        }
    } else if (eos && !json_is_null(eos)) {
        rc = cel_err_set(err, CEL_EPROTO, "config.json: eos_token_id is not an integer");
        goto done;
    }
    for (int i = 0; i < c.n_eos; i++)
        if (c.eos_ids[i] < 0 || c.eos_ids[i] >= c.V) {
            rc = cel_err_set(err, CEL_EPROTO,
                             "config.json: eos_token_id %d outside the "
                             "vocabulary",
                             c.eos_ids[i]);
            goto done;
        }
    if (c.bos_id >= c.V) {
        rc = cel_err_set(err, CEL_EPROTO, "config.json: bos_token_id %d outside the vocabulary",
                         c.bos_id);
        goto done;
    }
    if (c.NKV < 0) c.NKV = c.NH;
    if (c.NKV > c.NH || c.NH % c.NKV != 0) {
        rc = cel_err_set(err, CEL_EPROTO,
                         "config.json: num_attention_heads %d is not a multiple "
                         "of num_key_value_heads %d",
                         c.NH, c.NKV);
        goto done;
    }
    if (c.HS < 0) {
        if (c.C % c.NH != 0) {
            rc = cel_err_set(err, CEL_EPROTO,
                             "config.json: hidden_size %d is not divisible by "
                             "num_attention_heads %d",
                             c.C, c.NH);
            goto done;
        }
        c.HS = c.C / c.NH;
    }
    if (c.HS % 2 != 0 || c.HS > CEL_CONFIG_MAX_HEAD_DIM) {
        rc = cel_err_set(err, CEL_EPROTO,
                         "config.json: head dimension %d must be even and at "
                         "most %d",
                         c.HS, CEL_CONFIG_MAX_HEAD_DIM);
        goto done;
    }
    if (!(c.eps > 0)) {
        rc = cel_err_set(err, CEL_EPROTO, "config.json: rms_norm_eps must be positive");
        goto done;
    }
    if (cel_config_param_count(&c) > CEL_CONFIG_MAX_PARAMS) {
        rc = cel_err_set(err, CEL_ELIMIT, "config.json: %llu parameters exceed the limit %llu",
                         (unsigned long long)cel_config_param_count(&c),
                         (unsigned long long)CEL_CONFIG_MAX_PARAMS);
        goto done;
    }
    *out = c;
done:
    json_decref(root);
    return rc;
}

int cel_config_load(const char *path, cel_config_t *out, cel_err_t *err) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return cel_err_set(err, errno == ENOENT ? CEL_ENOTFOUND : CEL_EIO, "%s: %s", path,
                           strerror(errno));
    char *buf = malloc(CEL_CONFIG_MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    size_t n = fread(buf, 1, CEL_CONFIG_MAX_FILE + 1, f);
    int bad = ferror(f);
    fclose(f);
    int rc;
    if (bad) rc = cel_err_set(err, CEL_EIO, "%s: read error", path);
    else rc = cel_config_parse(buf, n, out, err);
    free(buf);
    return rc;
}

int cel_config_save(const cel_config_t *c, const char *path, cel_err_t *err) {
    json_t *o =
        json_pack("{s:[s], s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, "
                  "s:b, s:b, s:b, s:s}",
                  "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_act", "silu",
                  "vocab_size", c->V, "hidden_size", c->C, "intermediate_size", c->I,
                  "num_hidden_layers", c->L, "num_attention_heads", c->NH, "num_key_value_heads",
                  c->NKV, "head_dim", c->HS, "max_position_embeddings", c->maxT, "rms_norm_eps",
                  (double)c->eps, "rope_theta", (double)c->rope_theta, "tie_word_embeddings",
                  c->tied, "attention_bias", 0, "mlp_bias", 0, "torch_dtype", "float32");
    if (!o) return cel_err_set(err, CEL_ENOMEM, "out of memory");
    if (c->bos_id >= 0) json_object_set_new(o, "bos_token_id", json_integer(c->bos_id));
    if (c->n_eos == 1) json_object_set_new(o, "eos_token_id", json_integer(c->eos_ids[0]));
    if (c->n_eos > 1) {
        json_t *a = json_array();
        for (int i = 0; i < c->n_eos; i++) json_array_append_new(a, json_integer(c->eos_ids[i]));
        json_object_set_new(o, "eos_token_id", a);
    }
    if (c->rope_kind != CEL_ROPE_PLAIN) {
        json_t *rs = json_pack("{s:s, s:f}", "rope_type",
                               c->rope_kind == CEL_ROPE_LINEAR ? "linear" : "llama3", "factor",
                               (double)c->rope_factor);
        if (c->rope_kind == CEL_ROPE_LLAMA3) {
            json_object_set_new(rs, "low_freq_factor", json_real(c->rope_low_freq));
            json_object_set_new(rs, "high_freq_factor", json_real(c->rope_high_freq));
            json_object_set_new(rs, "original_max_position_embeddings",
                                json_integer(c->rope_orig_max));
        }
        json_object_set_new(o, "rope_scaling", rs);
    }
    int rc = cel_config_write_json(o, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER, err);
    json_decref(o);
    return rc;
}

/* See config.h. */
int cel_config_write_json(json_t *o, const char *path, size_t flags, cel_err_t *err) {
    char tmp[4160];
    snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    int rc = CEL_OK;
    if (json_dump_file(o, tmp, flags) != 0) {
        rc = cel_err_set(err, CEL_EIO, "%s: cannot write", tmp);
    } else {
        int fd = open(tmp, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
        if (rename(tmp, path) != 0) rc = cel_err_set(err, CEL_EIO, "%s: %s", path, strerror(errno));
    }
    if (rc != CEL_OK) unlink(tmp);
    return rc;
}
