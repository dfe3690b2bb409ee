/* score.c -- celeriac-lm score: log-probabilities of texts under a model (+ adapter).
 *
 * Each TEXT is encoded with the model's bos first (when config.json names
 * one), so every token of the text itself is scored given its prefix; the bos
 * is context, not scored. Without a bos the first token has no context and is
 * not scored. The texts are scored in packed passes (several texts, one row
 * each, per forward; see score_packed). Prints one JSON object per text, one
 * per line, in the order given:
 *   {"text", "tokens" (scored tokens), "logprob" (sum, nats), "mean_logprob",
 *    "perplexity" (exp(-mean_logprob)), "token_logprobs" (one per scored token)}
 */
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char HELP[] =
    "usage: celeriac-lm score [--model DIR] [--adapter DIR] [--threads N] [--device D]\n"
    "                         [--precision fp32|bf16] TEXT...\n"
    "\n" CEL_CLI_DEVICE_HELP "\n"
    "Prints one JSON object per TEXT and line: text, tokens (how many were scored),\n"
    "logprob (natural log, summed), mean_logprob, perplexity = exp(-mean_logprob),\n"
    "token_logprobs. The model's bos is put before the text (not scored), so every\n"
    "token of the text is scored; without a bos the first token is not.\n";

/* Padded tokens (texts x the longest) of one packed pass, and at most
 * SCORE_PASS_LOGITS logits floats (the pass holds every row's logits). Larger
 * passes gain nothing on the CPU: about 512 rows amortise the weights' reads
 * (+5-10% over one text of 128 at a time), more only spill the activations
 * out of cache. */
#define SCORE_PASS_TOKENS 512
#define SCORE_PASS_LOGITS (1 << 26)

/* One text to score: its ids and, after its pass, its log-probs and loss. */
typedef struct score_text {
    const char *text;
    int32_t *ids;
    size_t n;
    float *lp;
    double loss;
} score_text_t;

/* Encodes text into t (bos first) and checks it fits the model. */
static int encode_one(cel_cli_lm_t *lm, const char *text, score_text_t *t, cel_err_t *err) {
    t->text = text;
    int rc = cel_cli_encode(lm, text, 1, &t->ids, &t->n, err);
    if (rc != CEL_OK) return rc;
    if (t->n < 2)
        return cel_err_set(err, CEL_EINVAL, "text \"%.40s\" has no token to score (%zu ids)", text,
                           t->n);
    if (t->n > (size_t)cel_model_max_seq(lm->model))
        return cel_err_set(err, CEL_ELIMIT, "text is %zu tokens, the model's limit is %d", t->n,
                           cel_model_max_seq(lm->model));
    t->lp = malloc((t->n - 1) * sizeof(float));
    return t->lp ? CEL_OK : cel_err_set(err, CEL_ENOMEM, "out of memory");
}

static void print_one(const score_text_t *t) {
    int n = (int)t->n - 1;
    fputs("{\"text\": ", stdout);
    cel_cli_json_str(stdout, t->text, strlen(t->text));
    printf(", \"tokens\": %d, \"logprob\": %.6f, \"mean_logprob\": %.6f, "
           "\"perplexity\": %.6f, \"token_logprobs\": [",
           n, -t->loss, -t->loss / n, exp(t->loss / n));
    for (int i = 0; i < n; i++) printf(i ? ", %.6f" : "%.6f", t->lp[i]);
    puts("]}");
}

static int by_length(const void *a, const void *b) {
    const score_text_t *x = *(score_text_t *const *)a, *y = *(score_text_t *const *)b;
    return x->n < y->n ? -1 : x->n > y->n;
}

/* Scores texts[0..n) in packed passes (cel_model_run_jobs: one job, one row
 * per text, right-padded to the pass's longest): sorted by length so that
 * little is padding, at most SCORE_PASS_TOKENS padded tokens a pass. Each text
 * gets what it gets alone (up to summation order; tests/integration/
 * test_model_oracle.py checks a packed pass against torch text by text). */
static int score_packed(cel_cli_lm_t *lm, score_text_t *texts, int n, cel_err_t *err) {
    score_text_t **order = malloc(n * sizeof(*order));
    cel_model_job_t *jobs = calloc(n, sizeof(*jobs));
    if (!order || !jobs) {
        free(order);
        free(jobs);
        return cel_err_set(err, CEL_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) order[i] = &texts[i];
    qsort(order, n, sizeof(*order), by_length);
    long cap = SCORE_PASS_LOGITS / cel_model_vocab_size(lm->model);
    if (cap > SCORE_PASS_TOKENS) cap = SCORE_PASS_TOKENS;
    int rc = CEL_OK;
    for (int i = 0; i < n && rc == CEL_OK;) {
        int k = 0;
        /* sorted: the pass's longest is its last text */
        while (i + k < n && (k == 0 || (long)(k + 1) * (long)(order[i + k]->n - 1) <= cap)) {
            score_text_t *t = order[i + k];
            jobs[k] = (cel_model_job_t){
                .lora = lm->lora,
                .batch = { .B = 1, .T = (int)t->n - 1, .tokens = t->ids, .targets = t->ids + 1 },
                .logprobs = t->lp
            };
            k++;
        }
        rc = cel_model_run_jobs(lm->model, jobs, k, 0, err);
        for (int j = 0; j < k && rc == CEL_OK; j++) {
            if (jobs[j].rc != CEL_OK) {
                *err = jobs[j].err;
                rc = jobs[j].rc;
            }
            order[i + j]->loss = jobs[j].loss;
        }
        i += k;
    }
    free(order);
    free(jobs);
    return rc;
}

int cel_cli_score(int argc, char **argv) {
    static const struct option opts[] = {
        { "model", 1, 0, 'm' }, { "adapter", 1, 0, 'a' }, { "threads", 1, 0, 'j' },
        { "help", 0, 0, 'h' },  { "device", 1, 0, 'D' },  { "precision", 1, 0, 'P' },
        { 0, 0, 0, 0 }
    };
    const char *model = NULL, *adapter = NULL, *device = NULL, *precision = NULL;
    long threads = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'a': adapter = optarg; break;
        case 'D': device = optarg; break;
        case 'P': precision = optarg; break;
        case 'j':
            if (cel_cli_parse_long("score", "--threads", optarg, 1, 1024, &threads) != CEL_OK)
                return CEL_CLI_USAGE;
            break;
        case 'h': fputs(HELP, stdout); return CEL_CLI_OK;
        default: return cel_cli_bad_flag("score", argv);
        }
    }
    if (optind >= argc) {
        cel_cli_error("score", "give at least one TEXT (see --help)");
        return CEL_CLI_USAGE;
    }
    cel_model_set_threads((int)threads);
    cel_err_t err = { 0 };
    cel_cli_lm_t lm;
    if (cel_cli_lm_open(model, adapter, 1, &lm, &err) != CEL_OK) {
        cel_cli_error("score", "%s", err.msg);
        return CEL_CLI_FAIL;
    }
    if ((precision && cel_model_set_precision(lm.model, precision, &err) != CEL_OK) ||
        cel_cli_lm_device(&lm, "score", device, &err) != CEL_OK) {
        cel_cli_error("score", "%s", err.msg);
        cel_cli_lm_close(&lm);
        return CEL_CLI_FAIL;
    }
    /* every text is encoded first; the ones before the first bad one are
     * scored (packed) and printed, then the bad one's error */
    int status = CEL_CLI_OK, n = argc - optind, ok = 0;
    score_text_t *texts = calloc(n, sizeof(*texts));
    int rc = texts ? CEL_OK : cel_err_set(&err, CEL_ENOMEM, "out of memory");
    for (; rc == CEL_OK && ok < n; ok++) {
        rc = encode_one(&lm, argv[optind + ok], &texts[ok], &err);
        if (rc != CEL_OK) break;
    }
    cel_err_t serr = { 0 };
    int src = ok > 0 ? score_packed(&lm, texts, ok, &serr) : CEL_OK;
    if (src != CEL_OK) {
        rc = src;
        err = serr;
    } else {
        for (int i = 0; i < ok; i++) print_one(&texts[i]);
    }
    if (rc != CEL_OK) {
        cel_cli_error("score", "%s", err.msg);
        status = CEL_CLI_FAIL;
    }
    fflush(stdout);
    for (int i = 0; texts && i < n; i++) {
        free(texts[i].ids);
        free(texts[i].lp);
    }
    free(texts);
    cel_cli_lm_close(&lm);
    return status;
}
