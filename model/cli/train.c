/* train.c -- celeriac-lm train: LoRA or full-parameter training on a text file.
 *
 * Each step draws --batch random windows of --seq tokens from the data stream
 * (data.c), runs forward_backward (adapter gradients with --lora, every base
 * weight with --full), and takes one AdamW step with a linear warmup then a
 * cosine decay to 10% of --lr and gradient clipping at --grad-clip. Prints the
 * mean token loss, tokens/s and the time left (ETA) every step: one plain line
 * per step, or a progress line with a bar rewritten with \r when stdout is a
 * terminal. --init CONFIG.json starts full
 * training from a fresh random model (how model/tiny/ is made). Saves to --out:
 * the PEFT adapter folder with its optimizer state, or a model folder with the
 * tokenizer copied (F32), also every --save-every steps.
 */
#include "cli.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char HELP[] =
    "usage: celeriac-lm train [--model DIR] --data FILE (--lora RANK | --full)\n"
    "                         --steps N --lr X --out DIR [FLAGS]\n"
    "\n"
    "  --model DIR         base model folder (default: the bundled model); with --init\n"
    "                      only its tokenizer.json is used\n"
    "  --data FILE         UTF-8 text (one document), or .jsonl with {\"text\": ...} per\n"
    "                      line; tokenized once as bos + text + eos per document\n"
    "  --lora RANK         train a LoRA adapter of this rank (base frozen)\n"
    "  --alpha A           lora_alpha (default 2*RANK); scaling alpha/rank\n"
    "  --targets LIST      LoRA modules, e.g. q_proj,v_proj (default: all seven)\n"
    "  --adapter DIR       continue training this adapter (with its optimizer state)\n"
    "  --full              train every weight of the model\n"
    "  --init CONFIG.json  with --full: start from a random init with this config\n"
    "  --steps N           optimizer steps\n"
    "  --lr X              peak learning rate\n"
    "  --batch B           windows per step (default 8)\n"
    "  --seq T             tokens per window (default 128; shortened for small data)\n"
    "  --warmup W          linear warmup steps (default 0), then cosine to 0.1*lr\n"
    "  --weight-decay WD   AdamW weight decay (default 0)\n"
    "  --grad-clip G       clip the global gradient norm (default 1; 0 = off)\n"
    "  --seed S            data order, LoRA and --init weights (default 0)\n"
    "  --save-every K      also save to --out every K steps (default: only at the end)\n"
    "  --threads N         BLAS threads (default: OpenBLAS's)\n"
    "  --precision P       fp32 (default) or bf16: with --lora on a CPU with\n"
    "                      AVX512-BF16, the base weights' products in bf16 (fp32 sums)\n"
    "  --device D          auto (a GPU when visible; the default for --lora), cpu,\n"
    "                      cuda, cuda:N; --full trains on the CPU only\n"
    "  --out DIR           where to save (created)\n"
    "\n"
    "Prints 'step S/N loss L lr X norm G tok/s R eta E' per step (on a terminal, one\n"
    "line rewritten in place with a bar and the elapsed time) and the mean token loss; --lora "
    "saves adapter_model.safetensors,\n"
    "adapter_config.json and optimizer.safetensors; --full saves config.json,\n"
    "model.safetensors and tokenizer.json.\n";

typedef struct train_args {
    const char *model, *data, *targets, *adapter, *init, *out, *device, *precision;
    long lora, steps, batch, seq, warmup, save_every, threads;
    double alpha, lr, wd, clip;
    uint64_t seed;
    int full;
} train_args_t;

static int parse_args(int argc, char **argv, train_args_t *a) {
    static const struct option opts[] = { { "model", 1, 0, 'm' },
                                          { "data", 1, 0, 'd' },
                                          { "lora", 1, 0, 'r' },
                                          { "alpha", 1, 0, 'a' },
                                          { "targets", 1, 0, 'g' },
                                          { "adapter", 1, 0, 'A' },
                                          { "full", 0, 0, 'F' },
                                          { "init", 1, 0, 'I' },
                                          { "steps", 1, 0, 'n' },
                                          { "lr", 1, 0, 'l' },
                                          { "batch", 1, 0, 'b' },
                                          { "seq", 1, 0, 't' },
                                          { "warmup", 1, 0, 'w' },
                                          { "weight-decay", 1, 0, 'W' },
                                          { "grad-clip", 1, 0, 'c' },
                                          { "seed", 1, 0, 's' },
                                          { "save-every", 1, 0, 'S' },
                                          { "threads", 1, 0, 'j' },
                                          { "out", 1, 0, 'o' },
                                          { "help", 0, 0, 'h' },
                                          { "device", 1, 0, 'D' },
                                          { "precision", 1, 0, 'P' },
                                          { 0, 0, 0, 0 } };
    memset(a, 0, sizeof(*a));
    a->batch = 8;
    a->seq = 128;
    a->clip = 1.0;
    a->alpha = -1;
    a->steps = -1;
    a->lr = -1;
    const char *C = "train";
    int c, bad = 0;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model = optarg; break;
        case 'd': a->data = optarg; break;
        case 'r':
            bad |= cel_cli_parse_long(C, "--lora", optarg, 1, CEL_LORA_MAX_RANK, &a->lora);
            break;
        case 'a': bad |= cel_cli_parse_double(C, "--alpha", optarg, 1e-6, 1e6, &a->alpha); break;
        case 'g': a->targets = optarg; break;
        case 'A': a->adapter = optarg; break;
        case 'F': a->full = 1; break;
        case 'I': a->init = optarg; break;
        case 'n': bad |= cel_cli_parse_long(C, "--steps", optarg, 0, 100000000, &a->steps); break;
        case 'l': bad |= cel_cli_parse_double(C, "--lr", optarg, 0, 10, &a->lr); break;
        case 'b': bad |= cel_cli_parse_long(C, "--batch", optarg, 1, 65536, &a->batch); break;
        case 't':
            bad |= cel_cli_parse_long(C, "--seq", optarg, 1, CEL_MODEL_MAX_SEQ, &a->seq);
            break;
        case 'w': bad |= cel_cli_parse_long(C, "--warmup", optarg, 0, 100000000, &a->warmup); break;
        case 'W': bad |= cel_cli_parse_double(C, "--weight-decay", optarg, 0, 10, &a->wd); break;
        case 'c': bad |= cel_cli_parse_double(C, "--grad-clip", optarg, 0, 1e9, &a->clip); break;
        case 's': bad |= cel_cli_parse_u64(C, "--seed", optarg, &a->seed); break;
        case 'S':
            bad |= cel_cli_parse_long(C, "--save-every", optarg, 1, 100000000, &a->save_every);
            break;
        case 'j': bad |= cel_cli_parse_long(C, "--threads", optarg, 1, 1024, &a->threads); break;
        case 'o': a->out = optarg; break;
        case 'D': a->device = optarg; break;
        case 'P': a->precision = optarg; break;
        case 'h': fputs(HELP, stdout); return 1;
        default: return cel_cli_bad_flag(C, argv);
        }
    }
    if (bad) return CEL_CLI_USAGE;
    const char *missing = !a->data       ? "--data"
                          : a->steps < 0 ? "--steps"
                          : a->lr < 0    ? "--lr"
                          : !a->out      ? "--out"
                                         : NULL;
    if (missing) {
        cel_cli_error(C, "%s is required (see --help)", missing);
        return CEL_CLI_USAGE;
    }
    if (optind < argc) {
        cel_cli_error(C, "unexpected argument '%s'", argv[optind]);
        return CEL_CLI_USAGE;
    }
    if ((a->lora > 0) + a->full + (a->adapter != NULL && a->lora == 0) != 1 ||
        (a->full && a->adapter)) {
        cel_cli_error(C, "give exactly one of --lora RANK, --adapter DIR or --full");
        return CEL_CLI_USAGE;
    }
    if (a->init && !a->full) {
        cel_cli_error(C, "--init needs --full");
        return CEL_CLI_USAGE;
    }
    if (!a->full && a->lora > 0 && a->alpha < 0) a->alpha = 2.0 * a->lora;
    return CEL_OK;
}

/* Linear warmup to lr, then cosine decay to 0.1*lr at the last step. */
static float lr_at(const train_args_t *a, long step) {
    if (step < a->warmup) return (float)(a->lr * (step + 1) / a->warmup);
    long span = a->steps - a->warmup;
    double t = span > 1 ? (double)(step - a->warmup) / (span - 1) : 1.0;
    return (float)(a->lr * (0.1 + 0.9 * 0.5 * (1.0 + cos(M_PI * t))));
}

static int save(const train_args_t *a, cel_cli_lm_t *lm, long step, double loss, cel_err_t *err) {
    int rc = cel_cli_mkdirs(a->out, err);
    if (rc != CEL_OK) return rc;
    if (a->full) {
        rc = cel_model_save(lm->model, a->out, err);
        if (rc != CEL_OK) return rc;
        char src[CEL_CLI_PATH_MAX + 32], dst[CEL_CLI_PATH_MAX + 32];
        snprintf(src, sizeof(src), "%s/tokenizer.json", lm->dir);
        snprintf(dst, sizeof(dst), "%s/tokenizer.json", a->out);
        if (strcmp(src, dst) == 0) return CEL_OK;
        return cel_cli_copy_file(src, dst, err);
    }
    char steps[32], lossbuf[32], lr[32];
    snprintf(steps, sizeof(steps), "%ld", step);
    snprintf(lossbuf, sizeof(lossbuf), "%.6f", loss);
    snprintf(lr, sizeof(lr), "%g", a->lr);
    const char *meta[] = { "trained_by", "celeriac-lm train", "data",  a->data, "steps",
                           steps,        "final_loss",        lossbuf, "lr",    lr };
    return cel_lora_save(lm->lora, a->out, lm->dir, meta, 5, err);
}

/* Opens the model (or a fresh --init one) and the adapter to train. */
static int setup(const train_args_t *a, cel_cli_lm_t *lm, cel_err_t *err) {
    int rc = cel_cli_lm_open(a->model, a->full ? NULL : a->adapter, a->init == NULL, lm, err);
    if (rc != CEL_OK) return rc;
    if (a->init) {
        FILE *f = fopen(a->init, "rb");
        if (!f) return cel_err_set(err, CEL_EIO, "cannot open --init %s", a->init);
        char *text = calloc(1, (1 << 20) + 1);
        size_t n = text ? fread(text, 1, 1 << 20, f) : 0;
        fclose(f);
        if (!text) return cel_err_set(err, CEL_ENOMEM, "out of memory");
        rc = cel_model_init(text, a->seed, &lm->model, err);
        free(text);
        if (rc != CEL_OK) return rc;
        (void)n;
        if (cel_tokenizer_vocab_size(lm->tok) > (size_t)cel_model_vocab_size(lm->model))
            return cel_err_set(err, CEL_EINVAL, "tokenizer has %zu ids, --init config only %d",
                               cel_tokenizer_vocab_size(lm->tok), cel_model_vocab_size(lm->model));
        int32_t eos[8];
        int neos = cel_model_eos(lm->model, eos, 8);
        if ((rc = cel_tokenizer_set_bos(lm->tok, cel_model_bos(lm->model), err)) != CEL_OK)
            return rc;
        if ((rc = cel_tokenizer_set_eos(lm->tok, neos > 0 ? eos[0] : -1, err)) != CEL_OK) return rc;
    }
    if (a->full) {
        if (a->device && strcmp(a->device, "cpu") != 0 && strcmp(a->device, "auto") != 0)
            return cel_err_set(err, CEL_EINVAL, "--full trains on the CPU only");
        if (a->precision && strcmp(a->precision, "fp32") != 0)
            return cel_err_set(err, CEL_EINVAL, "--full trains in fp32 only");
        return cel_model_train_full(lm->model, err);
    }
    if (a->precision && (rc = cel_model_set_precision(lm->model, a->precision, err)) != CEL_OK)
        return rc;
    if ((rc = cel_cli_lm_device(lm, "train", a->device, err)) != CEL_OK) return rc;
    if (a->lora > 0) {
        cel_lora_config_t lc = {
            .rank = (int)a->lora, .alpha = (float)a->alpha, .targets = CEL_LORA_ALL, .seed = a->seed
        };
        if (a->targets && (rc = cel_lora_parse_targets(a->targets, &lc.targets, err)) != CEL_OK)
            return rc;
        return cel_lora_new(lm->model, &lc, &lm->lora, err);
    }
    return CEL_OK;
}

/* "1h02m", "3m07s", "42s": a duration for the progress line. */
static void fmt_secs(double secs, char *out, size_t size) {
    long s = secs > 0 && secs < 1e9 ? (long)(secs + 0.5) : 0;
    if (s >= 3600) snprintf(out, size, "%ldh%02ldm", s / 3600, s % 3600 / 60);
    else if (s >= 60) snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
    else snprintf(out, size, "%lds", s);
}

/* The progress of step `done` of a.steps: "step S/N loss L lr X norm G tok/s R eta E" as a
 * plain line, or on a terminal the same rewritten in place (\r, erase to the end of the line)
 * with a bar and the elapsed time. tokens: per step; el: seconds since the first step. */
static void show_step(const train_args_t *a, long done, double loss, float lr, float norm,
                      long tokens, double el, int tty) {
    char eta[32], elapsed[32];
    fmt_secs(el / done * (double)(a->steps - done), eta, sizeof(eta));
    double tps = el > 0 ? (double)done * tokens / el : 0;
    if (!tty) {
        printf("step %ld/%ld loss %.4f lr %.2e norm %.3f tok/s %.0f eta %s\n", done, a->steps, loss,
               lr, norm, tps, eta);
        fflush(stdout);
        return;
    }
    enum { BAR = 20 };
    char bar[BAR + 1];
    int fill = (int)((double)done * BAR / (double)a->steps);
    for (int i = 0; i < BAR; i++) bar[i] = i < fill ? '#' : '.';
    bar[BAR] = '\0';
    fmt_secs(el, elapsed, sizeof(elapsed));
    printf("\rstep %ld/%ld loss %.4f lr %.2e norm %.3f tok/s %.0f [%s] %3.0f%% %s eta %s\x1b[K",
           done, a->steps, loss, lr, norm, tps, bar, 100.0 * done / a->steps, elapsed, eta);
    fflush(stdout);
}

int cel_cli_train(int argc, char **argv) {
    train_args_t a;
    int rc = parse_args(argc, argv, &a);
    if (rc == 1) return CEL_CLI_OK;
    if (rc != CEL_OK) return rc;
    cel_model_set_threads((int)a.threads);
    cel_err_t err = { 0 };
    cel_cli_lm_t lm;
    cel_cli_data_t data = { 0 };
    int32_t *tokens = NULL, *targets = NULL;
    float *weights = NULL;
    int status = CEL_CLI_FAIL;
    memset(&lm, 0, sizeof(lm));
    double t0 = cel_cli_now();
    if (setup(&a, &lm, &err) != CEL_OK) goto fail;
    if (cel_cli_data_load(&lm, a.data, &data, &err) != CEL_OK) goto fail;
    int T = (int)a.seq, B = (int)a.batch;
    if (T > cel_model_max_seq(lm.model)) T = cel_model_max_seq(lm.model);
    if ((size_t)T + 1 > data.n) T = (int)data.n - 1;
    tokens = malloc((size_t)B * T * sizeof(*tokens));
    targets = malloc((size_t)B * T * sizeof(*targets));
    weights = malloc((size_t)B * T * sizeof(*weights));
    if (!tokens || !targets || !weights) {
        cel_err_set(&err, CEL_ENOMEM, "out of memory");
        goto fail;
    }
    fprintf(stderr, "train: %s, %llu params%s, data %s: %zu docs, %zu tokens; B=%d T=%d\n",
            a.full ? (a.init ? "full from --init" : "full") : "lora",
            (unsigned long long)cel_model_param_count(lm.model), a.full ? "" : " (base frozen)",
            a.data, data.docs, data.n, B, T);
    int tty = isatty(STDOUT_FILENO);
    uint64_t rng = a.seed ^ 0x5eedda7aull;
    cel_adamw_t opt = cel_model_adamw_defaults();
    opt.weight_decay = (float)a.wd;
    opt.grad_clip = (float)a.clip;
    double loss = NAN, tstart = cel_cli_now();
    /* weights 1/(B*T): the engine's summed loss becomes the mean token loss, so
     * gradient norms and --grad-clip do not depend on the batch size */
    for (size_t i = 0; i < (size_t)B * T; i++) weights[i] = 1.0f / ((float)B * T);
    cel_batch_t batch = {
        .B = B, .T = T, .tokens = tokens, .targets = targets, .weights = weights
    };
    for (long s = 0; s < a.steps; s++) {
        cel_cli_data_batch(&data, B, T, &rng, tokens, targets);
        double sum;
        float norm = 0;
        opt.lr = lr_at(&a, s);
        if (cel_model_forward_backward(lm.model, lm.lora, &batch, NULL, &sum, &err) != CEL_OK)
            goto fail;
        rc = a.full ? cel_model_step(lm.model, &opt, &norm, &err)
                    : cel_lora_step(lm.lora, &opt, &norm, &err);
        if (rc != CEL_OK) goto fail;
        loss = sum;
        show_step(&a, s + 1, loss, opt.lr, norm, B * T, cel_cli_now() - tstart, tty);
        if (a.save_every && (s + 1) % a.save_every == 0 && s + 1 < a.steps &&
            save(&a, &lm, s + 1, loss, &err) != CEL_OK)
            goto fail;
    }
    if (tty) putchar('\n');
    if (save(&a, &lm, a.steps, loss, &err) != CEL_OK) goto fail;
    double el = cel_cli_now() - tstart;
    printf("saved %s: %ld steps, final loss %.4f, %.1f s, %.0f tok/s\n", a.out, a.steps, loss,
           cel_cli_now() - t0, a.steps ? (double)a.steps * B * T / el : 0.0);
    status = CEL_CLI_OK;
fail:
    if (status != CEL_CLI_OK) cel_cli_error("train", "%s", err.msg);
    free(tokens);
    free(targets);
    free(weights);
    cel_cli_data_free(&data);
    cel_cli_lm_close(&lm);
    return status;
}
