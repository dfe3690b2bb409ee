/* sample.c -- celeriac-lm sample: generate text from one or more prompts.
 *
 * All prompts are sampled together in one batched sampler (KV cache); each
 * sequence has its own RNG stream from (--seed, index), so a prompt gives the
 * same text alone or with others. Each prompt gets the model's bos first. A
 * sequence ends at an eos id (not printed), at --max-tokens, or when its
 * decoded text contains a --stop string (the text is cut before it). The
 * completion is decoded after every step to check the stop strings.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_STOPS 64

static const char HELP[] =
    "usage: celeriac-lm sample [--model DIR] [--adapter DIR] [FLAGS] PROMPT...\n"
    "\n"
    "  --max-tokens N     new tokens per prompt (default 64)\n"
    "  --temperature T    0 = greedy (default 1)\n"
    "  --top-k K          keep the K most likely tokens (default 0 = off)\n"
    "  --top-p P          nucleus sampling, in (0, 1] (default 1 = off)\n"
    "  --seed S           same seed, same text (default: from the clock)\n"
    "  --stop STR         end a sample where STR appears (repeatable; STR not printed)\n"
    "  --json             one JSON object per prompt: prompt, text (the completion),\n"
    "                     tokens (generated), finish_reason (stop | length)\n"
    "  --threads N        BLAS threads\n" CEL_CLI_DEVICE_HELP "\n"
    "Plain output: each prompt followed by its completion, samples separated by a\n"
    "line holding '%'.\n";

typedef struct sample_args {
    const char *model, *adapter, *device;
    const char *stops[MAX_STOPS];
    int n_stops, json;
    long threads;
    cel_sample_params_t p;
} sample_args_t;

static int parse_args(int argc, char **argv, sample_args_t *a) {
    static const struct option opts[] = { { "model", 1, 0, 'm' },
                                          { "adapter", 1, 0, 'a' },
                                          { "max-tokens", 1, 0, 'n' },
                                          { "temperature", 1, 0, 't' },
                                          { "top-k", 1, 0, 'k' },
                                          { "top-p", 1, 0, 'p' },
                                          { "seed", 1, 0, 's' },
                                          { "stop", 1, 0, 'S' },
                                          { "json", 0, 0, 'J' },
                                          { "threads", 1, 0, 'j' },
                                          { "help", 0, 0, 'h' },
                                          { "device", 1, 0, 'D' },
                                          { 0, 0, 0, 0 } };
    const char *C = "sample";
    memset(a, 0, sizeof(*a));
    a->p.max_tokens = 64;
    a->p.temperature = 1.0f;
    a->p.top_p = 1.0f;
    a->p.seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    int c, bad = 0;
    long v;
    double d;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'a': a->adapter = optarg; break;
        case 'n':
            if (!(bad |= cel_cli_parse_long(C, "--max-tokens", optarg, 1, CEL_MODEL_MAX_SEQ, &v)))
                a->p.max_tokens = (int)v;
            break;
        case 't':
            if (!(bad |= cel_cli_parse_double(C, "--temperature", optarg, 0, 100, &d)))
                a->p.temperature = (float)d;
            break;
        case 'k':
            if (!(bad |= cel_cli_parse_long(C, "--top-k", optarg, 0, 1 << 30, &v)))
                a->p.top_k = (int)v;
            break;
        case 'p':
            if (!(bad |= cel_cli_parse_double(C, "--top-p", optarg, 1e-9, 1, &d)))
                a->p.top_p = (float)d;
            break;
        case 's': bad |= cel_cli_parse_u64(C, "--seed", optarg, &a->p.seed); break;
        case 'S':
            if (a->n_stops == MAX_STOPS || !*optarg) {
                cel_cli_error(C, "--stop: empty, or more than %d", MAX_STOPS);
                bad = 1;
            } else {
                a->stops[a->n_stops++] = optarg;
            }
            break;
        case 'J': a->json = 1; break;
        case 'j': bad |= cel_cli_parse_long(C, "--threads", optarg, 1, 1024, &a->threads); break;
        case 'D': a->device = optarg; break;
        case 'h': fputs(HELP, stdout); return 1;
        default: return cel_cli_bad_flag(C, argv);
        }
    }
    if (bad) return CEL_CLI_USAGE;
    if (optind >= argc) {
        cel_cli_error(C, "give at least one PROMPT (see --help)");
        return CEL_CLI_USAGE;
    }
    if (argc - optind > CEL_SAMPLE_MAX_SEQS) {
        cel_cli_error(C, "at most %d prompts", CEL_SAMPLE_MAX_SEQS);
        return CEL_CLI_USAGE;
    }
    return CEL_OK;
}

/* One sequence's generated ids and its decoded text. */
typedef struct seq {
    int32_t *ids;
    size_t n;
    char *text;
    size_t len;
} seq_t;

/* Decodes q's ids; cuts the text at the first stop string. Returns 1 on a stop. */
static int check_stops(const cel_cli_lm_t *lm, const sample_args_t *a, seq_t *q, cel_err_t *err,
                       int *rc) {
    free(q->text);
    q->text = NULL;
    *rc = cel_tokenizer_decode(lm->tok, q->ids, q->n, &q->text, &q->len, err);
    if (*rc != CEL_OK) return 0;
    return cel_sampler_cut_stops(q->text, &q->len, a->stops, NULL, a->n_stops);
}

static void print_one(const sample_args_t *a, const char *prompt, const seq_t *q, int status,
                      int first) {
    if (a->json) {
        fputs("{\"prompt\": ", stdout);
        cel_cli_json_str(stdout, prompt, strlen(prompt));
        fputs(", \"text\": ", stdout);
        cel_cli_json_str(stdout, q->text ? q->text : "", q->text ? q->len : 0);
        printf(", \"tokens\": %zu, \"finish_reason\": \"%s\"}\n", q->n,
               status == 2 ? "length" : "stop");
        return;
    }
    if (!first) puts("%");
    fputs(prompt, stdout);
    if (q->text) fwrite(q->text, 1, q->len, stdout);
    putchar('\n');
}

static int run(const sample_args_t *a, cel_cli_lm_t *lm, int np, char **prompts, cel_err_t *err) {
    int32_t **pids = calloc((size_t)np, sizeof(*pids));
    int32_t *lens = calloc((size_t)np, sizeof(*lens));
    seq_t *seqs = calloc((size_t)np, sizeof(*seqs));
    int32_t *out = calloc((size_t)np, sizeof(*out));
    cel_sampler_t *s = NULL;
    int rc = (pids && lens && seqs && out) ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
    for (int i = 0; rc == CEL_OK && i < np; i++) {
        size_t n;
        rc = cel_cli_encode(lm, prompts[i], 1, &pids[i], &n, err);
        if (rc == CEL_OK && n == 0)
            rc = cel_err_set(err, CEL_EINVAL, "prompt %d is empty and the model has no bos", i + 1);
        if (rc == CEL_OK && n + (size_t)a->p.max_tokens > (size_t)cel_model_max_seq(lm->model))
            rc = cel_err_set(err, CEL_ELIMIT,
                             "prompt %d (%zu tokens) + --max-tokens %d passes "
                             "the model's %d",
                             i + 1, n, a->p.max_tokens, cel_model_max_seq(lm->model));
        lens[i] = (int32_t)n;
        if (rc == CEL_OK && !(seqs[i].ids = malloc((size_t)a->p.max_tokens * sizeof(int32_t))))
            rc = cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    if (rc == CEL_OK)
        rc = cel_sampler_new(lm->model, lm->lora, np, (const int32_t *const *)pids, lens, &a->p, &s,
                             err);
    while (rc == CEL_OK) {
        int live = cel_sampler_step(s, out, err);
        if (live < 0) {
            rc = live;
            break;
        }
        for (int i = 0; i < np && rc == CEL_OK; i++) {
            if (out[i] < 0 || cel_sampler_status(s, i) == 1) continue; /* done, or eos */
            seq_t *q = &seqs[i];
            if (q->n < (size_t)a->p.max_tokens) q->ids[q->n++] = out[i];
            if (a->n_stops && check_stops(lm, a, q, err, &rc) && cel_sampler_status(s, i) == 0) {
                cel_sampler_stop(s, i);
                live--;
            }
        }
        if (live <= 0) break;
    }
    for (int i = 0; rc == CEL_OK && i < np; i++) {
        /* with --stop the text is already decoded (and cut) after every token */
        if (!seqs[i].text || !a->n_stops) check_stops(lm, a, &seqs[i], err, &rc);
        if (rc == CEL_OK) print_one(a, prompts[i], &seqs[i], cel_sampler_status(s, i), i == 0);
    }
    cel_sampler_free(s);
    for (int i = 0; i < np; i++) {
        if (pids) free(pids[i]);
        if (seqs) {
            free(seqs[i].ids);
            free(seqs[i].text);
        }
    }
    free(pids);
    free(lens);
    free(seqs);
    free(out);
    return rc;
}

int cel_cli_sample(int argc, char **argv) {
    sample_args_t a;
    int rc = parse_args(argc, argv, &a);
    if (rc == 1) return CEL_CLI_OK;
    if (rc != CEL_OK) return rc;
    cel_model_set_threads((int)a.threads);
    cel_err_t err = { 0 };
    cel_cli_lm_t lm;
    if (cel_cli_lm_open(a.model, a.adapter, 1, &lm, &err) != CEL_OK) {
        cel_cli_error("sample", "%s", err.msg);
        return CEL_CLI_FAIL;
    }
    if (cel_cli_lm_device(&lm, "sample", a.device, &err) != CEL_OK) {
        cel_cli_error("sample", "%s", err.msg);
        cel_cli_lm_close(&lm);
        return CEL_CLI_FAIL;
    }
    rc = run(&a, &lm, argc - optind, argv + optind, &err);
    cel_cli_lm_close(&lm);
    if (rc != CEL_OK) {
        cel_cli_error("sample", "%s", err.msg);
        return CEL_CLI_FAIL;
    }
    return CEL_CLI_OK;
}
