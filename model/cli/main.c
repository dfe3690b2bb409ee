/* main.c -- celeriac-lm: the model engine on the command line.
 *
 * Dispatches to the subcommands (score.c, sample.c, train.c, tokenize.c),
 * each of which parses its own flags and prints its own --help. The default
 * model is the bundled one in model/tiny/ (see common.c: cel_cli_model_dir).
 * Exit status: 0 ok, 1 failure, 2 usage error; messages go to stderr.
 */
#include "cli.h"

#include <string.h>

static const char USAGE[] =
    "usage: celeriac-lm COMMAND [FLAGS] ARGS...\n"
    "\n"
    "commands:\n"
    "  score     log-probabilities of texts (one JSON object per text)\n"
    "  sample    generate text from prompts\n"
    "  train     train a LoRA adapter (--lora R) or the whole model (--full)\n"
    "  tokenize  print the token ids of a text (JSON array)\n"
    "  decode    print the text of token ids\n"
    "  bench     engine throughput on random tokens (train, score, sample; one JSON line)\n"
    "\n"
    "Every command takes --model DIR (a Hugging Face Llama folder: config.json,\n"
    "model.safetensors, tokenizer.json); the default is $CELERIAC_MODEL, else the\n"
    "bundled model at <bindir>/../model/tiny. `celeriac-lm COMMAND --help` for more.\n";

int main(int argc, char **argv) {
    if (argc < 2) {
        fputs(USAGE, stderr);
        return CEL_CLI_USAGE;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        fputs(USAGE, stdout);
        return CEL_CLI_OK;
    }
    static const struct {
        const char *name;
        int (*run)(int, char **);
    } cmds[] = {
        { "score", cel_cli_score },       { "sample", cel_cli_sample }, { "train", cel_cli_train },
        { "tokenize", cel_cli_tokenize }, { "decode", cel_cli_decode }, { "bench", cel_cli_bench },
    };
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
        if (!strcmp(cmd, cmds[i].name)) return cmds[i].run(argc - 1, argv + 1);
    fprintf(stderr, "celeriac-lm: unknown command '%s'\n\n%s", cmd, USAGE);
    return CEL_CLI_USAGE;
}
