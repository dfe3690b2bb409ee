/* tokenize.c -- celeriac-lm tokenize and decode: text to token ids and back.
 *
 * Only the folder's tokenizer.json is read (and config.json for its bos id
 * with --bos); the weights are not loaded. Output: a JSON array of ids, or the
 * decoded text followed by a newline.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char TOK_HELP[] =
    "usage: celeriac-lm tokenize [--model DIR] [--bos] TEXT\n"
    "\n"
    "Prints TEXT's token ids as a JSON array. --bos prepends the model's bos id\n"
    "(as score and sample do).\n";

static const char DEC_HELP[] =
    "usage: celeriac-lm decode [--model DIR] ID...\n"
    "\n"
    "Prints the text of the token ids (special tokens included) and a newline.\n";

int cel_cli_tokenize(int argc, char **argv) {
    static const struct option opts[] = {
        { "model", 1, 0, 'm' }, { "bos", 0, 0, 'b' }, { "help", 0, 0, 'h' }, { 0, 0, 0, 0 }
    };
    const char *model = NULL;
    int bos = 0, c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'b': bos = 1; break;
        case 'h': fputs(TOK_HELP, stdout); return CEL_CLI_OK;
        default: return cel_cli_bad_flag("tokenize", argv);
        }
    }
    if (argc - optind != 1) {
        cel_cli_error("tokenize", "give exactly one TEXT (see --help)");
        return CEL_CLI_USAGE;
    }
    cel_err_t err = { 0 };
    cel_cli_lm_t lm;
    /* --bos needs config.json's bos id, which only cel_model_load reads */
    if (cel_cli_lm_open(model, NULL, bos, &lm, &err) != CEL_OK) {
        cel_cli_error("tokenize", "%s", err.msg);
        return CEL_CLI_FAIL;
    }
    int32_t *ids;
    size_t n;
    int status = CEL_CLI_OK;
    if (cel_cli_encode(&lm, argv[optind], bos, &ids, &n, &err) != CEL_OK) {
        cel_cli_error("tokenize", "%s", err.msg);
        status = CEL_CLI_FAIL;
    } else {
        putchar('[');
        for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
        puts("]");
        free(ids);
    }
    cel_cli_lm_close(&lm);
    return status;
}

int cel_cli_decode(int argc, char **argv) {
    static const struct option opts[] = { { "model", 1, 0, 'm' },
                                          { "help", 0, 0, 'h' },
                                          { 0, 0, 0, 0 } };
    const char *model = NULL;
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': model = optarg; break;
        case 'h': fputs(DEC_HELP, stdout); return CEL_CLI_OK;
        default: return cel_cli_bad_flag("decode", argv);
        }
    }
    int n = argc - optind;
    int32_t *ids = malloc(((size_t)n + 1) * sizeof(*ids));
    if (!ids) return CEL_CLI_FAIL;
    for (int i = 0; i < n; i++) {
        long v;
        if (cel_cli_parse_long("decode", "ID", argv[optind + i], 0, INT32_MAX, &v) != CEL_OK) {
            free(ids);
            return CEL_CLI_USAGE;
        }
        ids[i] = (int32_t)v;
    }
    cel_err_t err = { 0 };
    cel_cli_lm_t lm;
    int status = CEL_CLI_FAIL;
    char *text = NULL;
    size_t len;
    if (cel_cli_lm_open(model, NULL, 0, &lm, &err) == CEL_OK) {
        if (cel_tokenizer_decode(lm.tok, ids, (size_t)n, &text, &len, &err) == CEL_OK) {
            fwrite(text, 1, len, stdout);
            putchar('\n');
            status = CEL_CLI_OK;
        }
        cel_cli_lm_close(&lm);
    }
    if (status != CEL_CLI_OK) cel_cli_error("decode", "%s", err.msg);
    free(text);
    free(ids);
    return status;
}
