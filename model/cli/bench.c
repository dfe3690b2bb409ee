/* bench.c -- `celeriac-lm bench`: engine throughput on random tokens, one JSON line.
 *
 * Times LoRA training (forward + backward + AdamW), scoring (forward) or
 * greedy sampling on the chosen device with random token ids (no tokenizer
 * needed, so a random model made by transformers.LlamaConfig works). With
 * --adapters K each adapter has its own batch stream; by default the K
 * batches of a step run packed as one pass (cel_model_run_jobs), with
 * --sequential one after another. bench/gpu.py and bench/engine.py drive it
 * and compare with PyTorch. Not a test: it prints figures.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char HELP[] =
    "usage: celeriac-lm bench [--model DIR] [--device D] --mode train|score|sample [FLAGS]\n"
    "\n"
    "  --mode M           train (LoRA forward+backward+AdamW), score (forward), sample\n"
    "                     (greedy, KV cache)\n"
    "  --rank R           LoRA rank on all seven linear layers (default 16)\n"
    "  --adapters K       adapters, each with its own batch per step (default 1;\n"
    "                     0 = the base model, for score and sample)\n"
    "  --batch B          sequences per adapter per step (default 4)\n"
    "  --seq T            tokens per sequence, or prompt length for sample (default 512)\n"
    "  --steps S          timed steps (default 10)\n"
    "  --warmup W         untimed steps first (default 2)\n"
    "  --max-tokens M     new tokens per sequence for sample (default 128)\n"
    "  --sequential       run the adapters' batches one after another, not packed\n"
    "  --threads N        BLAS threads\n" CEL_CLI_DEVICE_HELP "\n"
    "Prints one JSON object: mode, device, adapters, batch, seq, tokens, seconds,\n"
    "tokens_per_s, peak_gpu_bytes, params.\n";

typedef struct bench_args {
    const char *model, *device, *mode;
    long rank, adapters, batch, seq, steps, warmup, max_tokens, threads;
    int sequential;
} bench_args_t;

static int parse_args(int argc, char **argv, bench_args_t *a) {
    static const struct option opts[] = { { "model", 1, 0, 'm' },      { "device", 1, 0, 'D' },
                                          { "mode", 1, 0, 'M' },       { "rank", 1, 0, 'r' },
                                          { "adapters", 1, 0, 'k' },   { "batch", 1, 0, 'b' },
                                          { "seq", 1, 0, 't' },        { "steps", 1, 0, 'n' },
                                          { "warmup", 1, 0, 'w' },     { "max-tokens", 1, 0, 'x' },
                                          { "sequential", 0, 0, 'S' }, { "threads", 1, 0, 'j' },
                                          { "help", 0, 0, 'h' },       { 0, 0, 0, 0 } };
    const char *C = "bench";
    memset(a, 0, sizeof(*a));
    a->rank = 16, a->adapters = 1, a->batch = 4, a->seq = 512, a->steps = 10, a->warmup = 2;
    a->max_tokens = 128;
    int c, bad = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'D': a->device = optarg; break;
        case 'M': a->mode = optarg; break;
        case 'r':
            bad |= cel_cli_parse_long(C, "--rank", optarg, 1, CEL_LORA_MAX_RANK, &a->rank);
            break;
        case 'k': bad |= cel_cli_parse_long(C, "--adapters", optarg, 0, 256, &a->adapters); break;
        case 'b':
            bad |= cel_cli_parse_long(C, "--batch", optarg, 1, CEL_SAMPLE_MAX_SEQS, &a->batch);
            break;
        case 't':
            bad |= cel_cli_parse_long(C, "--seq", optarg, 2, CEL_MODEL_MAX_SEQ, &a->seq);
            break;
        case 'n': bad |= cel_cli_parse_long(C, "--steps", optarg, 1, 1000000, &a->steps); break;
        case 'w': bad |= cel_cli_parse_long(C, "--warmup", optarg, 0, 1000000, &a->warmup); break;
        case 'x':
            bad |= cel_cli_parse_long(C, "--max-tokens", optarg, 1, 100000, &a->max_tokens);
            break;
        case 'S': a->sequential = 1; break;
        case 'j': bad |= cel_cli_parse_long(C, "--threads", optarg, 1, 1024, &a->threads); break;
        case 'h': fputs(HELP, stdout); return 1;
        default: return cel_cli_bad_flag(C, argv);
        }
    }
    if (bad) return CEL_CLI_USAGE;
    if (!a->mode ||
        (strcmp(a->mode, "train") && strcmp(a->mode, "score") && strcmp(a->mode, "sample"))) {
        cel_cli_error(C, "--mode train, score or sample is required (see --help)");
        return CEL_CLI_USAGE;
    }
    if (!strcmp(a->mode, "train") && a->adapters < 1) {
        cel_cli_error(C, "--mode train needs --adapters >= 1");
        return CEL_CLI_USAGE;
    }
    return CEL_OK;
}

/* splitmix64 for the random token ids. */
static uint64_t next_u64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill_ids(int32_t *x, size_t n, int V, uint64_t *rng) {
    for (size_t i = 0; i < n; i++) x[i] = (int32_t)(next_u64(rng) % (uint64_t)V);
}

/* One step of the train or score mode over K adapters' batches. */
static int step(cel_model_t *m, cel_lora_t **loras, cel_model_job_t *jobs, int K, int train,
                int sequential, const cel_adamw_t *opt, cel_err_t *err) {
    int rc = CEL_OK;
    if (sequential) {
        for (int j = 0; j < K && rc == CEL_OK; j++) {
            rc = cel_model_run_jobs(m, &jobs[j], 1, train, err);
            if (rc == CEL_OK && jobs[j].rc != CEL_OK) rc = jobs[j].rc, *err = jobs[j].err;
            if (rc == CEL_OK && train) rc = cel_lora_step(loras[j], opt, NULL, err);
        }
        return rc;
    }
    rc = cel_model_run_jobs(m, jobs, K, train, err);
    for (int j = 0; j < K && rc == CEL_OK; j++)
        if (jobs[j].rc != CEL_OK) rc = jobs[j].rc, *err = jobs[j].err;
    for (int j = 0; j < K && rc == CEL_OK && train; j++)
        rc = cel_lora_step(loras[j], opt, NULL, err);
    return rc;
}

/* Times --steps of train/score; OUT: *tokens, *secs. */
static int run_passes(const bench_args_t *a, cel_model_t *m, double *tokens, double *secs,
                      cel_err_t *err) {
    int train = !strcmp(a->mode, "train"), K = a->adapters ? (int)a->adapters : 1;
    int V = cel_model_vocab_size(m), B = (int)a->batch, T = (int)a->seq;
    size_t per = (size_t)B * T;
    cel_lora_t **loras = calloc(K, sizeof(*loras));
    cel_model_job_t *jobs = calloc(K, sizeof(*jobs));
    int32_t *ids = malloc(2 * per * K * sizeof(int32_t));
    int rc = loras && jobs && ids ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
    uint64_t rng = 1234;
    if (rc == CEL_OK) fill_ids(ids, 2 * per * K, V, &rng);
    for (int j = 0; j < K && rc == CEL_OK; j++) {
        if (a->adapters > 0) {
            cel_lora_config_t lc = { .rank = (int)a->rank,
                                     .alpha = 2.0f * a->rank,
                                     .targets = CEL_LORA_ALL,
                                     .seed = (uint64_t)j };
            rc = cel_lora_new(m, &lc, &loras[j], err);
        }
        jobs[j].lora = loras[j];
        jobs[j].batch = (cel_batch_t){
            .B = B, .T = T, .tokens = ids + 2 * per * j, .targets = ids + 2 * per * j + per
        };
    }
    cel_adamw_t opt = cel_model_adamw_defaults();
    opt.lr = 1e-4f;
    double t0 = 0;
    for (long s = 0; s < a->warmup + a->steps && rc == CEL_OK; s++) {
        if (s == a->warmup) t0 = cel_cli_now();
        rc = step(m, loras, jobs, K, train, a->sequential, &opt, err);
    }
    *secs = cel_cli_now() - t0;
    *tokens = (double)a->steps * per * K;
    for (int j = 0; j < K; j++) cel_lora_free(loras ? loras[j] : NULL);
    free(loras);
    free(jobs);
    free(ids);
    return rc;
}

/* Times greedy sampling of --batch prompts of --seq random tokens. */
static int run_sample(const bench_args_t *a, cel_model_t *m, double *tokens, double *secs,
                      cel_err_t *err) {
    int V = cel_model_vocab_size(m), B = (int)a->batch, T = (int)a->seq;
    if (T + a->max_tokens > cel_model_max_seq(m))
        return cel_err_set(err, CEL_ELIMIT, "--seq + --max-tokens exceed the model's %d",
                           cel_model_max_seq(m));
    cel_lora_t *lora = NULL;
    int32_t *ids = malloc((size_t)B * T * sizeof(int32_t));
    const int32_t **prompts = malloc(B * sizeof(*prompts));
    int32_t *lens = malloc(B * sizeof(int32_t)), *out = malloc(B * sizeof(int32_t));
    int32_t never = -1; /* no stop id: every sequence runs to max_tokens */
    int rc = ids && prompts && lens && out ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
    uint64_t rng = 99;
    if (rc == CEL_OK) {
        fill_ids(ids, (size_t)B * T, V, &rng);
        for (int i = 0; i < B; i++) prompts[i] = ids + (size_t)i * T, lens[i] = T;
    }
    if (rc == CEL_OK && a->adapters > 0) {
        cel_lora_config_t lc = {
            .rank = (int)a->rank, .alpha = 2.0f * a->rank, .targets = CEL_LORA_ALL, .seed = 1
        };
        rc = cel_lora_new(m, &lc, &lora, err);
    }
    cel_sample_params_t p = { .max_tokens = (int)a->max_tokens,
                              .temperature = 0.0f,
                              .top_p = 1.0f,
                              .stop_ids = &never,
                              .n_stop_ids = 1 };
    double total = 0, t0 = 0;
    for (long s = 0; s < a->warmup + a->steps && rc == CEL_OK; s++) {
        if (s == a->warmup) t0 = cel_cli_now();
        cel_sampler_t *smp = NULL;
        rc = cel_sampler_new(m, lora, B, prompts, lens, &p, &smp, err);
        int live = 1;
        long gen = 0;
        while (rc == CEL_OK && live > 0) {
            live = cel_sampler_step(smp, out, err);
            if (live < 0) rc = live;
            for (int i = 0; i < B; i++) gen += out[i] >= 0;
        }
        cel_sampler_free(smp);
        if (s >= a->warmup) total += gen;
    }
    *secs = cel_cli_now() - t0;
    *tokens = total;
    cel_lora_free(lora);
    free(ids);
    free(prompts);
    free(lens);
    free(out);
    return rc;
}

int cel_cli_bench(int argc, char **argv) {
    bench_args_t a;
    int rc = parse_args(argc, argv, &a);
    if (rc == 1) return CEL_CLI_OK;
    if (rc != CEL_OK) return rc;
    cel_model_set_threads((int)a.threads);
    cel_err_t err = { 0 };
    cel_cli_lm_t lm;
    memset(&lm, 0, sizeof(lm));
    char dir[CEL_CLI_PATH_MAX];
    if (cel_cli_model_dir(a.model, dir, sizeof(dir), &err) != CEL_OK ||
        cel_model_load(dir, &lm.model, &err) != CEL_OK ||
        cel_cli_lm_device(&lm, "bench", a.device, &err) != CEL_OK) {
        cel_cli_error("bench", "%s", err.msg);
        cel_model_free(lm.model);
        return CEL_CLI_FAIL;
    }
    double tokens = 0, secs = 0;
    rc = !strcmp(a.mode, "sample") ? run_sample(&a, lm.model, &tokens, &secs, &err)
                                   : run_passes(&a, lm.model, &tokens, &secs, &err);
    if (rc != CEL_OK) {
        cel_cli_error("bench", "%s", err.msg);
        cel_model_free(lm.model);
        return CEL_CLI_FAIL;
    }
    cel_device_stats_t ds;
    cel_model_device_stats(lm.model, &ds);
    printf("{\"mode\": \"%s\", \"device\": \"%s\", \"adapters\": %ld, \"batch\": %ld, "
           "\"seq\": %ld, \"sequential\": %s, \"tokens\": %.0f, \"seconds\": %.6f, "
           "\"tokens_per_s\": %.3f, \"peak_gpu_bytes\": %zu, \"params\": %llu}\n",
           a.mode, cel_model_on_gpu(lm.model) ? "cuda" : "cpu", a.adapters, a.batch, a.seq,
           a.sequential ? "true" : "false", tokens, secs, secs > 0 ? tokens / secs : 0.0,
           ds.mem_peak, (unsigned long long)cel_model_param_count(lm.model));
    cel_model_free(lm.model);
    return CEL_CLI_OK;
}
