/* score.c -- celeriac-lm score: log-probabilities of texts under a model (+ adapter).
 *
 * Each TEXT is encoded with the model's bos first (when config.json names
 * one), so every token of the text itself is scored given its prefix; the bos
 * is context, not scored. Without a bos the first token has no context and is
 * not scored. Prints one JSON object per text, one per line:
 *   {"text", "tokens" (scored tokens), "logprob" (sum, nats), "mean_logprob",
 *    "perplexity" (exp(-mean_logprob)), "token_logprobs" (one per scored token)}
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char HELP[] =
    "usage: celeriac-lm score [--model DIR] [--adapter DIR] [--threads N] [--device D] TEXT...\n"
    "\n" CEL_CLI_DEVICE_HELP "\n"
    "Prints one JSON object per TEXT and line: text, tokens (how many were scored),\n"
    "logprob (natural log, summed), mean_logprob, perplexity = exp(-mean_logprob),\n"
    "token_logprobs. The model's bos is put before the text (not scored), so every\n"
    "token of the text is scored; without a bos the first token is not.\n";

/* Scores one text and prints its line; returns CEL_OK or an error in err. */
static int score_one(cel_cli_lm_t *lm, const char *text, cel_err_t *err) {
    int32_t *ids;
    size_t n;
    int rc = cel_cli_encode(lm, text, 1, &ids, &n, err);
    if (rc != CEL_OK) return rc;
    if (n < 2) {
        free(ids);
        return cel_err_set(err, CEL_EINVAL, "text \"%.40s\" has no token to score (%zu ids)", text,
                           n);
    }
    if (n > (size_t)cel_model_max_seq(lm->model)) {
        free(ids);
        return cel_err_set(err, CEL_ELIMIT, "text is %zu tokens, the model's limit is %d", n,
                           cel_model_max_seq(lm->model));
    }
    float *lp = malloc((n - 1) * sizeof(*lp));
    cel_score_t sc;
    rc = lp ? cel_model_score(lm->model, lm->lora, ids, (int)n, lp, &sc, err)
            : cel_err_set(err, CEL_ENOMEM, "out of memory");
    if (rc == CEL_OK) {
        fputs("{\"text\": ", stdout);
        cel_cli_json_str(stdout, text, strlen(text));
        printf(", \"tokens\": %d, \"logprob\": %.6f, \"mean_logprob\": %.6f, "
               "\"perplexity\": %.6f, \"token_logprobs\": [",
               sc.n, sc.logprob, sc.mean_logprob, sc.perplexity);
        for (int i = 0; i < sc.n; i++) printf(i ? ", %.6f" : "%.6f", lp[i]);
        puts("]}");
    }
    free(lp);
    free(ids);
    return rc;
}

int cel_cli_score(int argc, char **argv) {
    static const struct option opts[] = { { "model", 1, 0, 'm' },   { "adapter", 1, 0, 'a' },
                                          { "threads", 1, 0, 'j' }, { "help", 0, 0, 'h' },
                                          { "device", 1, 0, 'D' },  { 0, 0, 0, 0 } };
    const char *model = NULL, *adapter = NULL, *device = NULL;
    long threads = 0;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'a': adapter = optarg; break;
        case 'D': device = optarg; break;
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
    if (cel_cli_lm_device(&lm, "score", device, &err) != CEL_OK) {
        cel_cli_error("score", "%s", err.msg);
        cel_cli_lm_close(&lm);
        return CEL_CLI_FAIL;
    }
    int status = CEL_CLI_OK;
    for (int i = optind; i < argc; i++) {
        if (score_one(&lm, argv[i], &err) != CEL_OK) {
            cel_cli_error("score", "%s", err.msg);
            status = CEL_CLI_FAIL;
            break;
        }
        fflush(stdout);
    }
    cel_cli_lm_close(&lm);
    return status;
}
