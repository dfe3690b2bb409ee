/* cli.h -- shared pieces of the celeriac-lm program (internal to model/cli/).
 *
 * celeriac-lm is the model engine on the command line: score, sample, train,
 * tokenize, decode. Each subcommand lives in its own file and is entered with
 * (argc, argv) where argv[0] is the subcommand's name; it returns the process
 * exit status (0 ok, 1 failure, 2 usage error) and writes errors to stderr.
 * This header also has the helpers they share: flag parsing, finding and
 * loading the model folder, the training data reader. Single-threaded (the
 * engine's OpenBLAS uses --threads threads inside each call).
 */
#ifndef CEL_CLI_H
#define CEL_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "../../common/err.h"
#include "../model.h"
#include "../tokenizer.h"

#define CEL_CLI_PATH_MAX 4096

/* Exit statuses. */
enum { CEL_CLI_OK = 0, CEL_CLI_FAIL = 1, CEL_CLI_USAGE = 2 };

/* A loaded model folder: the base model, its tokenizer (bos/eos set from
 * config.json), and optionally an adapter. */
typedef struct cel_cli_lm {
    char dir[CEL_CLI_PATH_MAX];
    cel_model_t *model;
    cel_tokenizer_t *tok;
    cel_lora_t *lora;
} cel_cli_lm_t;

/* Subcommands. */
int cel_cli_score(int argc, char **argv);
int cel_cli_sample(int argc, char **argv);
int cel_cli_train(int argc, char **argv);
int cel_cli_tokenize(int argc, char **argv);
int cel_cli_decode(int argc, char **argv);
int cel_cli_bench(int argc, char **argv);

/* Prints "celeriac-lm CMD: message" to stderr (printf-style). */
void cel_cli_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Reports an unknown flag or a missing flag value found by getopt_long
 * (opt is getopt's '?' or ':'); returns CEL_CLI_USAGE. */
int cel_cli_bad_flag(const char *cmd, char **argv);

/* Parse a flag's value; on error print "--flag: ..." and return CEL_EINVAL. */
int cel_cli_parse_long(const char *cmd, const char *flag, const char *s, long lo, long hi,
                       long *out);
int cel_cli_parse_double(const char *cmd, const char *flag, const char *s, double lo, double hi,
                         double *out);
int cel_cli_parse_u64(const char *cmd, const char *flag, const char *s, uint64_t *out);

/* The model folder to use: arg (--model) if not NULL, else $CELERIAC_MODEL,
 * else the bundled model next to the binary (<bindir>/../model/tiny, or
 * <bindir>/../../../model/tiny for build/asan/bin). OUT: out (cap bytes). */
int cel_cli_model_dir(const char *arg, char *out, size_t cap, cel_err_t *err);

/* Loads the folder dir (NULL: the default above): config.json +
 * model.safetensors unless weights is 0, tokenizer.json, and adapter_dir's
 * adapter when not NULL. On failure everything is freed. */
int cel_cli_lm_open(const char *dir, const char *adapter_dir, int weights, cel_cli_lm_t *lm,
                    cel_err_t *err);
void cel_cli_lm_close(cel_cli_lm_t *lm);

/* Moves lm's model to the device spec (auto, cpu, cuda, cuda:N; NULL =
 * auto) and prints "celeriac-lm CMD: device: ..." to stderr. */
int cel_cli_lm_device(cel_cli_lm_t *lm, const char *cmd, const char *spec, cel_err_t *err);

/* The --device line every subcommand's help shows. */
#define CEL_CLI_DEVICE_HELP \
    "  --device D         auto (a GPU when one is visible; the default), cpu, cuda, cuda:N\n"

/* Encodes text with bos prepended when the model has one (add_bos). */
int cel_cli_encode(const cel_cli_lm_t *lm, const char *text, int add_bos, int32_t **ids, size_t *n,
                   cel_err_t *err);

/* Writes s as a JSON string (quotes and escapes, UTF-8 kept) to f. */
void cel_cli_json_str(FILE *f, const char *s, size_t len);

/* Training data: one token stream. A .jsonl file is one {"text": ...} object
 * per line, each document encoded as bos + text + eos (when the model has
 * them); any other file is UTF-8 text encoded the same way as one document. */
typedef struct cel_cli_data {
    int32_t *ids;
    size_t n;
    size_t docs;
} cel_cli_data_t;

int cel_cli_data_load(const cel_cli_lm_t *lm, const char *path, cel_cli_data_t *out,
                      cel_err_t *err);
void cel_cli_data_free(cel_cli_data_t *d);

/* Fills B windows of T+1 consecutive tokens (inputs tokens[b*T..], targets
 * shifted by one) at random offsets drawn from *rng. Needs d->n >= T + 1. */
void cel_cli_data_batch(const cel_cli_data_t *d, int B, int T, uint64_t *rng, int32_t *tokens,
                        int32_t *targets);

/* Monotonic clock in seconds, for rates. */
double cel_cli_now(void);

/* Makes dir and its parents (mkdir -p). */
int cel_cli_mkdirs(const char *dir, cel_err_t *err);

/* Copies file src to dst. */
int cel_cli_copy_file(const char *src, const char *dst, cel_err_t *err);

#endif
