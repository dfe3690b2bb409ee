/* test_model.c -- unit tests for the model engine's API (model/model.h) on a tiny random model.
 *
 * config.json validation (impossible shapes, unsupported features, limits),
 * bad batches (ids out of range, lengths, empty texts), save/load round trips
 * of models and PEFT adapters with optimizer state, refused adapter configs,
 * gradient accumulation equal to one big batch, padding that does not leak
 * into valid slots, a fresh adapter that leaves the base unchanged, training
 * that lowers the loss, and sampling: greedy equals the forward's argmax,
 * same seed same tokens, a prompt samples the same alone or in a batch, stop
 * ids, max_tokens and caller stops. Numerics against torch live in
 * tests/integration/test_model_oracle.py.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "../../model/config.h"
#include "../../model/cpu/ops.h"
#include "../../model/internal.h"
#include "../../model/model.h"

static const char *CFG =
    "{\"architectures\":[\"LlamaForCausalLM\"],\"model_type\":\"llama\",\"vocab_size\":61,"
    "\"hidden_size\":16,\"intermediate_size\":40,\"num_hidden_layers\":2,"
    "\"num_attention_heads\":4,\"num_key_value_heads\":2,\"rms_norm_eps\":1e-5,"
    "\"max_position_embeddings\":48,\"tie_word_embeddings\":true,\"bos_token_id\":1,"
    "\"eos_token_id\":2,\"hidden_act\":\"silu\"}";

static char tmpdir[256];

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/cel_model_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static cel_model_t *tiny(uint64_t seed) {
    cel_model_t *m;
    cel_err_t err;
    if (cel_model_init(CFG, seed, &m, &err) != CEL_OK) fail_msg("init: %s", err.msg);
    /* a larger init than HF's 0.02 so logits are far from uniform */
    for (size_t i = 0; i < m->n; i++) m->w[i] *= 25.0f;
    for (size_t i = 0; i < (size_t)m->cfg.L * m->cfg.C; i++) m->p.ln1[i] = m->p.ln2[i] = 1.0f;
    for (int i = 0; i < m->cfg.C; i++) m->p.lnf[i] = 1.0f;
    return m;
}

static void expect_config_error(const char *json, int code, const char *want) {
    cel_config_t c;
    cel_err_t err = { 0 };
    int rc = cel_config_parse(json, strlen(json), &c, &err);
    if (rc != code || !strstr(err.msg, want))
        fail_msg("config %s: rc %d '%s', want %d '%s'", json, rc, err.msg, code, want);
}

static void test_config(void **state) {
    (void)state;
    cel_config_t c;
    cel_err_t err;
    assert_int_equal(cel_config_parse(CFG, strlen(CFG), &c, &err), CEL_OK);
    assert_int_equal(c.HS, 4);
    assert_int_equal(c.NKV, 2);
    assert_int_equal(c.tied, 1);
    assert_true(c.rope_theta == 10000.0f);
    /* defaults: NKV = NH, untied, head_dim = C/NH */
    const char *min = "{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":4,"
                      "\"num_hidden_layers\":1,\"num_attention_heads\":2}";
    assert_int_equal(cel_config_parse(min, strlen(min), &c, &err), CEL_OK);
    assert_int_equal(c.NKV, 2);
    assert_int_equal(c.tied, 0);
    assert_int_equal(c.bos_id, -1);
    const char *hd = "{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":4,"
                     "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"head_dim\":6,"
                     "\"eos_token_id\":[3,4],\"rope_scaling\":{\"rope_type\":\"llama3\","
                     "\"factor\":8.0,\"low_freq_factor\":1.0,\"high_freq_factor\":4.0,"
                     "\"original_max_position_embeddings\":8192}}";
    assert_int_equal(cel_config_parse(hd, strlen(hd), &c, &err), CEL_OK);
    assert_int_equal(c.HS, 6);
    assert_int_equal(c.n_eos, 2);
    assert_int_equal(c.rope_kind, CEL_ROPE_LLAMA3);
    expect_config_error("{\"vocab_size\":10", CEL_EPROTO, "config.json");
    expect_config_error("[]", CEL_EPROTO, "not a JSON object");
    expect_config_error("{\"hidden_size\":8}", CEL_EPROTO, "vocab_size is missing");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":10,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":4}",
                        CEL_EPROTO, "not divisible");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":4,"
                        "\"num_key_value_heads\":3}",
                        CEL_EPROTO, "not a multiple");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":0,\"num_attention_heads\":2}",
                        CEL_ELIMIT, "num_hidden_layers = 0");
    expect_config_error("{\"vocab_size\":-5,\"hidden_size\":8,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":2}",
                        CEL_ELIMIT, "vocab_size");
    expect_config_error("{\"vocab_size\":10000000,\"hidden_size\":8,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":2}",
                        CEL_ELIMIT, "vocab_size");
    expect_config_error("{\"vocab_size\":1000000,\"hidden_size\":65536,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":64}",
                        CEL_ELIMIT, "parameters exceed");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":6,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":2}",
                        CEL_EPROTO, "must be even");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":\"8\",\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":2}",
                        CEL_EPROTO, "not an integer");
    expect_config_error("{\"model_type\":\"gpt2\"}", CEL_EINVAL, "gpt2");
    expect_config_error("{\"hidden_act\":\"gelu\"}", CEL_EINVAL, "gelu");
    expect_config_error("{\"attention_bias\":true}", CEL_EINVAL, "bias");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":2,"
                        "\"rope_scaling\":{\"type\":\"yarn\",\"factor\":2}}",
                        CEL_EINVAL, "yarn");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"eos_token_id\":10}",
                        CEL_EPROTO, "outside the vocabulary");
    expect_config_error("{\"vocab_size\":10,\"hidden_size\":8,\"intermediate_size\":4,"
                        "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"rms_norm_eps\":0}",
                        CEL_EPROTO, "positive");
    /* a model folder without weights, and a missing folder */
    cel_model_t *m;
    assert_int_equal(cel_model_load("/nonexistent", &m, &err), CEL_ENOTFOUND);
    char path[512];
    snprintf(path, sizeof(path), "%s/cfgonly", tmpdir);
    mkdir(path, 0755);
    char f[600];
    snprintf(f, sizeof(f), "%s/config.json", path);
    FILE *fp = fopen(f, "w");
    fputs(CFG, fp);
    fclose(fp);
    assert_int_equal(cel_model_load(path, &m, &err), CEL_ENOTFOUND);
    assert_non_null(strstr(err.msg, "model.safetensors"));
}

static void test_bad_batches(void **state) {
    (void)state;
    cel_model_t *m = tiny(1);
    cel_err_t err;
    int32_t tok[4] = { 1, 5, 61, 3 }, tgt[4] = { 5, 6, 7, 8 };
    cel_batch_t b = { .B = 1, .T = 4, .tokens = tok, .targets = tgt };
    double loss;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_EINVAL);
    assert_non_null(strstr(err.msg, "token id 61"));
    tok[2] = -1;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_EINVAL);
    tok[2] = 3;
    tgt[1] = 100;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_EINVAL);
    assert_non_null(strstr(err.msg, "target id 100"));
    /* a padded slot's junk is not read */
    int32_t lens[1] = { 1 };
    b.lens = lens;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_OK);
    lens[0] = 0;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_EINVAL);
    lens[0] = 5;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_EINVAL);
    b.lens = NULL;
    tgt[1] = 6;
    float w[4] = { 1, NAN, 1, 1 };
    b.weights = w;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_EINVAL);
    b.weights = NULL;
    /* no targets: no loss; too long; empty batch */
    b.targets = NULL;
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, NULL, &loss, &err), CEL_EINVAL);
    cel_batch_t big = { .B = 1, .T = 49, .tokens = tok };
    assert_int_equal(cel_model_forward(m, NULL, &big, NULL, NULL, NULL, &err), CEL_ELIMIT);
    cel_batch_t none = { .B = 0, .T = 4, .tokens = tok };
    assert_int_equal(cel_model_forward(m, NULL, &none, NULL, NULL, NULL, &err), CEL_EINVAL);
    /* scoring an empty or one-token text */
    cel_score_t sc;
    assert_int_equal(cel_model_score(m, NULL, tok, 0, NULL, &sc, &err), CEL_EINVAL);
    assert_int_equal(cel_model_score(m, NULL, tok, 1, NULL, &sc, &err), CEL_EINVAL);
    assert_int_equal(cel_model_score(m, NULL, tok, 4, NULL, &sc, &err), CEL_OK);
    assert_true(sc.logprob < 0 && sc.perplexity > 1 && sc.n == 3);
    /* training without an adapter needs full mode */
    b.targets = tgt;
    assert_int_equal(cel_model_forward_backward(m, NULL, &b, NULL, NULL, &err), CEL_ESTATE);
    float gn;
    cel_adamw_t opt = cel_model_adamw_defaults();
    assert_int_equal(cel_model_step(m, &opt, &gn, &err), CEL_ESTATE);
    cel_model_free(m);
    cel_model_free(NULL);
}

static void test_save_load_and_padding(void **state) {
    (void)state;
    cel_model_t *m = tiny(2), *m2;
    cel_err_t err;
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/model", tmpdir);
    mkdir(dir, 0755);
    assert_int_equal(cel_model_save(m, dir, &err), CEL_OK);
    assert_int_equal(cel_model_load(dir, &m2, &err), CEL_OK);
    assert_memory_equal(m->w, m2->w, m->n * sizeof(float));
    /* right padding: row 0 of a padded batch equals the same row alone */
    int V = cel_model_vocab_size(m);
    int32_t tok[2 * 6] = { 1, 9, 8, 7, 0, 0, 4, 5, 6, 7, 8, 9 };
    int32_t lens[2] = { 4, 6 };
    cel_batch_t b = { .B = 2, .T = 6, .tokens = tok, .lens = lens };
    float *l2 = malloc(12 * V * sizeof(float)), *l1 = malloc(4 * V * sizeof(float));
    assert_int_equal(cel_model_forward(m2, NULL, &b, l2, NULL, NULL, &err), CEL_OK);
    cel_batch_t one = { .B = 1, .T = 4, .tokens = tok };
    assert_int_equal(cel_model_forward(m, NULL, &one, l1, NULL, NULL, &err), CEL_OK);
    for (int i = 0; i < 4 * V; i++) assert_float_equal(l1[i], l2[i], 1e-5);
    free(l1);
    free(l2);
    cel_model_free(m);
    cel_model_free(m2);
}

static float *lora_grads(cel_model_t *m, cel_lora_t *l, const cel_batch_t *bs, int nb) {
    cel_err_t err;
    cel_lora_zero_grad(l);
    for (int i = 0; i < nb; i++)
        assert_int_equal(cel_model_forward_backward(m, l, &bs[i], NULL, NULL, &err), CEL_OK);
    float *g = malloc(l->n * sizeof(float));
    memcpy(g, l->g, l->n * sizeof(float));
    return g;
}

static void test_lora_accumulate_save_load(void **state) {
    (void)state;
    cel_model_t *m = tiny(3);
    cel_err_t err;
    cel_lora_config_t lc = { .rank = 4, .alpha = 8, .seed = 11 };
    assert_int_equal(cel_lora_parse_targets("q_proj,v_proj,nope", &lc.targets, &err), CEL_EINVAL);
    assert_int_equal(cel_lora_parse_targets("q_proj,v_proj,down_proj", &lc.targets, &err), CEL_OK);
    cel_lora_t *l;
    cel_lora_config_t bad = lc;
    bad.rank = 0;
    assert_int_equal(cel_lora_new(m, &bad, &l, &err), CEL_EINVAL);
    assert_int_equal(cel_lora_new(m, &lc, &l, &err), CEL_OK);
    /* B = 0: the adapter does not change the model at first */
    int32_t tok[8] = { 1, 2, 3, 4, 5, 6, 7, 8 }, tgt[8] = { 2, 3, 4, 5, 6, 7, 8, 9 };
    cel_batch_t one = { .B = 1, .T = 8, .tokens = tok, .targets = tgt };
    double base, with;
    assert_int_equal(cel_model_forward(m, NULL, &one, NULL, NULL, &base, &err), CEL_OK);
    assert_int_equal(cel_model_forward(m, l, &one, NULL, NULL, &with, &err), CEL_OK);
    assert_true(base == with);
    /* B nonzero so every gradient is live */
    for (size_t i = 0; i < l->n; i++) l->w[i] = 0.2f * sinf((float)i);
    /* accumulation over two batches == one batch holding both rows */
    int32_t tok2[16], tgt2[16];
    float w2[16];
    for (int i = 0; i < 8; i++) {
        tok2[i] = tok[i], tgt2[i] = tgt[i], w2[i] = 1;
        tok2[8 + i] = (tok[i] * 7) % 61, tgt2[8 + i] = (tgt[i] * 5) % 61, w2[8 + i] = i * 0.25f;
    }
    cel_batch_t halves[2] = {
        { .B = 1, .T = 8, .tokens = tok2, .targets = tgt2, .weights = w2 },
        { .B = 1, .T = 8, .tokens = tok2 + 8, .targets = tgt2 + 8, .weights = w2 + 8 }
    };
    cel_batch_t both = { .B = 2, .T = 8, .tokens = tok2, .targets = tgt2, .weights = w2 };
    float *ga = lora_grads(m, l, halves, 2), *gb = lora_grads(m, l, &both, 1);
    double maxg = 0;
    for (size_t i = 0; i < l->n; i++) {
        assert_float_equal(ga[i], gb[i], 1e-4 * (1 + fabs(gb[i])));
        maxg = fmax(maxg, fabs(gb[i]));
    }
    assert_true(maxg > 1e-3);
    free(ga);
    free(gb);
    /* a step, then save and load: weights, moments, step and metadata come back */
    cel_adamw_t opt = cel_model_adamw_defaults();
    float gn;
    assert_int_equal(cel_lora_step(l, &opt, &gn, &err), CEL_OK);
    assert_true(gn > 0);
    for (size_t i = 0; i < l->n; i++) assert_true(l->g[i] == 0.0f);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/adapter", tmpdir);
    mkdir(dir, 0755);
    const char *meta[] = { "last_task", "abc" };
    assert_int_equal(cel_lora_save(l, dir, "tiny", meta, 1, &err), CEL_OK);
    const char *reserved[] = { "step", "9" };
    assert_int_equal(cel_lora_save(l, dir, "tiny", reserved, 1, &err), CEL_EINVAL);
    cel_lora_t *l2;
    assert_int_equal(cel_lora_load(m, dir, &l2, &err), CEL_OK);
    assert_int_equal(cel_lora_step_count(l2), 1);
    assert_int_equal(cel_lora_rank(l2), 4);
    assert_true(cel_lora_alpha(l2) == 8.0f);
    assert_int_equal(cel_lora_targets(l2), lc.targets);
    assert_string_equal(cel_lora_meta(l2, "last_task"), "abc");
    assert_null(cel_lora_meta(l2, "step"));
    assert_memory_equal(l->w, l2->w, l->n * sizeof(float));
    assert_memory_equal(l->m, l2->m, l->n * sizeof(float));
    assert_memory_equal(l->v, l2->v, l->n * sizeof(float));
    cel_lora_free(l2);
    /* the same files as an image (the adapter store's checkpoint file): byte for
     * byte what the save wrote, parts joined, and they load back the same */
    cel_lora_image_t img = { 0 };
    for (size_t i = 0; i < l->n; i++) l->g[i] = 0.25f + (float)i * 1e-3f;
    assert_int_equal(cel_lora_save_image(l, "tiny", meta, 1, 1, &img, &err), CEL_OK);
    assert_int_equal(img.n, 4);
    assert_int_equal(cel_lora_save_grads(l, dir, 0, &err), CEL_OK);
    cel_lora_image_t back = { 0 };
    for (int i = 0; i < img.n; i++) {
        char fp[700];
        snprintf(fp, sizeof(fp), "%s/%s", dir, img.f[i].name);
        FILE *fh = fopen(fp, "rb");
        assert_non_null(fh);
        unsigned char *want = malloc(img.f[i].len + 1), *got = malloc(img.f[i].len + 1);
        assert_int_equal(fread(want, 1, img.f[i].len + 1, fh), img.f[i].len);
        fclose(fh);
        size_t at = 0;
        if (img.f[i].iov) {
            for (int k = 0; k < img.f[i].niov; k++) {
                memcpy(got + at, img.f[i].iov[k].iov_base, img.f[i].iov[k].iov_len);
                at += img.f[i].iov[k].iov_len;
            }
        } else {
            memcpy(got, img.f[i].data, img.f[i].len);
            at = img.f[i].len;
        }
        assert_int_equal(at, img.f[i].len);
        assert_memory_equal(got, want, at);
        free(want);
        assert_int_equal(cel_lora_image_add(&back, img.f[i].name, got, at, &err), CEL_OK);
    }
    cel_lora_image_free(&img);
    assert_int_equal(cel_lora_load_image(m, &back, &l2, &err), CEL_OK);
    assert_int_equal(cel_lora_step_count(l2), 1);
    assert_string_equal(cel_lora_meta(l2, "last_task"), "abc");
    assert_memory_equal(l->w, l2->w, l->n * sizeof(float));
    assert_memory_equal(l->m, l2->m, l->n * sizeof(float));
    assert_memory_equal(l->v, l2->v, l->n * sizeof(float));
    assert_int_equal(cel_lora_load_grads_image(l2, &back, &err), CEL_OK);
    assert_memory_equal(l->g, l2->g, l->n * sizeof(float));
    cel_lora_free(l2);
    cel_lora_image_free(&back);
    /* refused adapter configs */
    char f[600];
    snprintf(f, sizeof(f), "%s/adapter_config.json", dir);
    const char *bads[] = {
        "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],"
        "\"use_dora\":true}",
        "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"embed_tokens\"]}",
        "{\"peft_type\":\"IA3\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}",
        "{\"peft_type\":\"LORA\",\"r\":0,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}",
        "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"],"
        "\"bias\":\"all\"}",
        /* valid config, but the weights file holds more modules than it names */
        "{\"peft_type\":\"LORA\",\"r\":4,\"lora_alpha\":8,\"target_modules\":[\"q_proj\"]}",
        /* and a rank the tensors do not have */
        "{\"peft_type\":\"LORA\",\"r\":3,\"lora_alpha\":8,\"target_modules\":"
        "[\"q_proj\",\"v_proj\",\"down_proj\"]}",
        "not json",
    };
    for (size_t i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
        FILE *fp = fopen(f, "w");
        fputs(bads[i], fp);
        fclose(fp);
        int rc = cel_lora_load(m, dir, &l2, &err);
        if (rc == CEL_OK) fail_msg("adapter config %s was accepted", bads[i]);
        assert_null(l2);
    }
    cel_lora_free(l);
    cel_model_free(m);
}

static void test_training_learns(void **state) {
    (void)state;
    cel_model_t *m = tiny(4);
    cel_err_t err;
    int32_t tok[10] = { 1, 10, 20, 30, 40, 50, 60, 11, 21, 31 }, tgt[10];
    for (int i = 0; i < 10; i++) tgt[i] = tok[(i + 1) % 10];
    cel_batch_t b = { .B = 1, .T = 10, .tokens = tok, .targets = tgt };
    cel_adamw_t opt = cel_model_adamw_defaults();
    opt.lr = 1e-2f;
    double first = 0, last = 0;
    /* LoRA */
    cel_lora_config_t lc = { .rank = 4, .alpha = 8, .targets = CEL_LORA_ALL, .seed = 1 };
    cel_lora_t *l;
    assert_int_equal(cel_lora_new(m, &lc, &l, &err), CEL_OK);
    for (int s = 0; s < 30; s++) {
        assert_int_equal(cel_model_forward_backward(m, l, &b, NULL, &last, &err), CEL_OK);
        if (s == 0) first = last;
        assert_int_equal(cel_lora_step(l, &opt, NULL, &err), CEL_OK);
    }
    printf("  lora: loss %.3f -> %.3f\n", first, last);
    assert_true(last < 0.5 * first);
    cel_lora_free(l);
    /* full-parameter */
    assert_int_equal(cel_model_train_full(m, &err), CEL_OK);
    assert_int_equal(cel_model_train_full(m, &err), CEL_OK);
    opt.grad_clip = 1.0f;
    for (int s = 0; s < 30; s++) {
        assert_int_equal(cel_model_forward_backward(m, NULL, &b, NULL, &last, &err), CEL_OK);
        if (s == 0) first = last;
        assert_int_equal(cel_model_step(m, &opt, NULL, &err), CEL_OK);
    }
    printf("  full: loss %.3f -> %.3f\n", first, last);
    assert_true(last < 0.5 * first);
    assert_int_equal(cel_model_step_count(m), 30);
    cel_model_free(m);
}

/* Runs a sampler to the end; out[i] gets sequence i's tokens (-1 terminated). */
static void sample_all(cel_model_t *m, const cel_lora_t *l, int n, const int32_t *const *p,
                       const int32_t *lens, const cel_sample_params_t *sp, int32_t out[][32]) {
    cel_sampler_t *s;
    cel_err_t err;
    memset(out, 0xff, (size_t)n * sizeof(out[0])); /* -1 past the end, for memcmp */
    assert_int_equal(cel_sampler_new(m, l, n, p, lens, sp, &s, &err), CEL_OK);
    int cnt[8] = { 0 };
    int32_t toks[8];
    int live;
    do {
        live = cel_sampler_step(s, toks, &err);
        assert_true(live >= 0);
        for (int i = 0; i < n; i++)
            if (toks[i] >= 0) out[i][cnt[i]++] = toks[i];
    } while (live > 0);
    for (int i = 0; i < n; i++) out[i][cnt[i]] = -1;
    cel_sampler_free(s);
}

/* Stop strings: the earliest match of any wins; split matches are found once
 * the text holds them whole; bytes, not C strings (stop_lens). */
static void test_stop_strings(void **state) {
    (void)state;
    char text[64];
    size_t len;
    const char *stops[] = { "world", "lo", "xyz" };
#define CUT(s, stops_, lens_, n_)                               \
    (snprintf(text, sizeof(text), "%s", s), len = strlen(text), \
     cel_sampler_cut_stops(text, &len, stops_, lens_, n_))
    assert_int_equal(CUT("hello world", stops, NULL, 3), 1); /* "lo" comes first */
    assert_int_equal(len, 3);
    assert_string_equal(text, "hel");
    assert_int_equal(CUT("hello world", stops, NULL, 1), 1);
    assert_int_equal(len, 6);
    assert_string_equal(text, "hello ");
    assert_int_equal(CUT("hello wor", stops, NULL, 1), 0); /* not whole yet: untouched */
    assert_int_equal(len, 9);
    assert_string_equal(text, "hello wor");
    assert_int_equal(CUT("world", stops, NULL, 1), 1); /* at 0: the text becomes empty */
    assert_int_equal(len, 0);
    assert_string_equal(text, "");
    assert_int_equal(CUT("abc", stops, NULL, 0), 0);
    assert_int_equal(CUT("", stops, NULL, 3), 0);
    assert_int_equal(len, 0);
    assert_int_equal(CUT("ab xyz", stops, NULL, 3), 1); /* at the very end */
    assert_int_equal(len, 3);
    /* lengths given: an embedded NUL is part of the stop, an empty stop never matches */
    const char *nul[] = { "b\0c", "" };
    size_t nul_lens[] = { 3, 0 };
    memcpy(text, "ab\0cd", 6);
    len = 5;
    assert_int_equal(cel_sampler_cut_stops(text, &len, nul, nul_lens, 2), 1);
    assert_int_equal(len, 1);
    assert_int_equal(text[1], '\0');
    memcpy(text, "ab\0xd", 6);
    len = 5;
    assert_int_equal(cel_sampler_cut_stops(text, &len, nul, nul_lens, 2), 0);
    assert_int_equal(len, 5);
    /* a stop longer than the text, and overlapping candidates */
    const char *over[] = { "aaab", "aab" };
    assert_int_equal(CUT("aab", over, NULL, 1), 0);
    assert_int_equal(CUT("aaab", over, NULL, 2), 1);
    assert_int_equal(len, 0);
#undef CUT
}

/* cel_model_set_precision: its refusals, and that bf16 (where the CPU has it)
 * changes a forward by bf16 rounding only and back to fp32 exactly. */
static void test_precision(void **state) {
    (void)state;
    cel_model_t *m = tiny(3);
    cel_err_t err = { 0 };
    assert_int_equal(cel_model_set_precision(m, "fp16", &err), CEL_EINVAL);
    int32_t tok[6] = { 1, 5, 9, 2, 7, 3 };
    cel_batch_t b = { .B = 1, .T = 5, .tokens = tok, .targets = tok + 1 };
    float lp32[5], lp16[5], again[5];
    assert_int_equal(cel_model_forward(m, NULL, &b, NULL, lp32, NULL, &err), CEL_OK);
    if (!cel_cpu_bf16_supported()) {
        assert_int_equal(cel_model_set_precision(m, "bf16", &err), CEL_ENOTFOUND);
    } else {
        assert_int_equal(cel_model_set_precision(m, "bf16", &err), CEL_OK);
        assert_int_equal(cel_model_set_precision(m, "bf16", &err), CEL_OK); /* idempotent */
        assert_int_equal(cel_model_train_full(m, &err), CEL_ESTATE);
        assert_int_equal(cel_model_forward(m, NULL, &b, NULL, lp16, NULL, &err), CEL_OK);
        double d = 0;
        for (int i = 0; i < 5; i++) d = fmax(d, fabs(lp16[i] - lp32[i]));
        printf("  bf16 vs fp32 log-probs: max diff %.3g\n", d);
        assert_true(d > 0 && d < 0.5);
        assert_int_equal(cel_model_set_precision(m, "fp32", &err), CEL_OK);
        assert_int_equal(cel_model_forward(m, NULL, &b, NULL, again, NULL, &err), CEL_OK);
        assert_memory_equal(again, lp32, sizeof(lp32));
    }
    assert_int_equal(cel_model_train_full(m, &err), CEL_OK);
    assert_int_not_equal(cel_model_set_precision(m, "bf16", &err), CEL_OK);
    cel_model_free(m);
}

static void test_sampling(void **state) {
    (void)state;
    cel_model_t *m = tiny(5);
    cel_err_t err;
    int32_t p0[] = { 1, 7, 9, 11 }, p1[] = { 3 }, p2[] = { 5, 6, 7, 8, 9, 10, 11, 12 };
    const int32_t *prompts[] = { p0, p1, p2 };
    int32_t lens[] = { 4, 1, 8 };
    int32_t none[] = { -1 };
    cel_sample_params_t sp = {
        .max_tokens = 12, .temperature = 0, .top_p = 1, .seed = 3, .stop_ids = none, .n_stop_ids = 1
    };
    int32_t a[3][32], b[3][32];
    /* greedy: the first token is the forward's argmax at the last prompt slot */
    sample_all(m, NULL, 3, prompts, lens, &sp, a);
    int V = cel_model_vocab_size(m);
    float *lg = malloc(8 * V * sizeof(float));
    cel_batch_t fb = { .B = 1, .T = 8, .tokens = p2 };
    assert_int_equal(cel_model_forward(m, NULL, &fb, lg, NULL, NULL, &err), CEL_OK);
    int best = 0;
    for (int i = 1; i < V; i++)
        if (lg[7 * V + i] > lg[7 * V + best]) best = i;
    assert_int_equal(a[2][0], best);
    free(lg);
    for (int i = 0; i < 3; i++) {
        int n = 0;
        while (a[i][n] >= 0) n++;
        assert_int_equal(n, 12);
    }
    /* temperature / top-k / top-p: same seed same tokens; alone == in a batch */
    sp.temperature = 1.0f;
    sp.top_k = 20;
    sp.top_p = 0.9f;
    sample_all(m, NULL, 3, prompts, lens, &sp, a);
    sample_all(m, NULL, 3, prompts, lens, &sp, b);
    assert_memory_equal(a, b, sizeof(a));
    const int32_t *only1[] = { p1 };
    int32_t c[3][32];
    /* alone, p1 is sequence 0: streams follow the index, so compare with index 0 */
    const int32_t *first[] = { p1, p0, p2 };
    int32_t lens2[] = { 1, 4, 8 };
    sample_all(m, NULL, 3, first, lens2, &sp, b);
    sample_all(m, NULL, 1, only1, lens2, &sp, c);
    assert_memory_equal(b[0], c[0], 13 * sizeof(int32_t));
    sp.seed = 4;
    sample_all(m, NULL, 3, prompts, lens, &sp, b);
    assert_true(memcmp(a, b, sizeof(a)) != 0);
    /* stop ids: a sequence ends on the id, which is returned */
    int32_t stop[] = { a[0][2] };
    sp.seed = 3;
    sp.stop_ids = stop;
    sample_all(m, NULL, 3, prompts, lens, &sp, b);
    int k = 0;
    while (b[0][k] >= 0 && b[0][k] != stop[0]) k++;
    assert_int_equal(b[0][k], stop[0]);
    assert_int_equal(b[0][k + 1], -1);
    /* caller stop, status, bad parameters, prompt limits */
    cel_sampler_t *s;
    sp.stop_ids = none;
    assert_int_equal(cel_sampler_new(m, NULL, 3, prompts, lens, &sp, &s, &err), CEL_OK);
    int32_t toks[3];
    assert_int_equal(cel_sampler_step(s, toks, &err), 3);
    cel_sampler_stop(s, 1);
    assert_int_equal(cel_sampler_status(s, 1), 3);
    assert_int_equal(cel_sampler_step(s, toks, &err), 2);
    assert_int_equal(toks[1], -1);
    cel_sampler_free(s);
    cel_sample_params_t badp = sp;
    badp.top_p = 0;
    assert_int_equal(cel_sampler_new(m, NULL, 3, prompts, lens, &badp, &s, &err), CEL_EINVAL);
    badp = sp;
    badp.max_tokens = 0;
    assert_int_equal(cel_sampler_new(m, NULL, 3, prompts, lens, &badp, &s, &err), CEL_EINVAL);
    int32_t badlen[] = { 0, 1, 1 };
    assert_int_equal(cel_sampler_new(m, NULL, 3, prompts, badlen, &sp, &s, &err), CEL_ELIMIT);
    int32_t badtok[] = { 99 };
    const int32_t *bp[] = { badtok };
    int32_t one[] = { 1 };
    assert_int_equal(cel_sampler_new(m, NULL, 1, bp, one, &sp, &s, &err), CEL_EINVAL);
    /* near the model's length (48): 47 prompt tokens fill positions 0..46, one sampled
     * token is fed at position 47, and the token predicted there is the last */
    int32_t longp[47];
    for (int i = 0; i < 47; i++) longp[i] = i % 61;
    const int32_t *lp[] = { longp };
    int32_t ll[] = { 47 };
    int32_t d[1][32];
    sample_all(m, NULL, 1, lp, ll, &sp, d);
    assert_true(d[0][0] >= 0 && d[0][1] >= 0);
    assert_int_equal(d[0][2], -1);
    cel_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config),
        cmocka_unit_test(test_bad_batches),
        cmocka_unit_test(test_save_load_and_padding),
        cmocka_unit_test(test_lora_accumulate_save_load),
        cmocka_unit_test(test_training_learns),
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_sampling),
        cmocka_unit_test(test_precision),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
