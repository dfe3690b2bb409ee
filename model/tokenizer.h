/* tokenizer.h -- byte-level BPE tokenizer (Hugging Face tokenizer.json): the public header.
 *
 * Loads the byte-level BPE tokenizers of GPT-2, Llama 3 and SmolLM (model.type "BPE",
 * ByteLevel pre-tokenizer alone or after a Split/Digits, ByteLevel decoder, added/special
 * tokens, a TemplateProcessing bos) and encodes/decodes exactly as the `tokenizers` library
 * does. Pure: the only I/O is reading the file in cel_tokenizer_load. A loaded tokenizer is
 * read-only, so any number of threads may encode and decode with it at once.
 */
#ifndef CEL_TOKENIZER_H
#define CEL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../common/err.h"

/* Limits checked while loading and encoding. */
#define CEL_TOKENIZER_MAX_FILE_BYTES  (128u * 1024 * 1024) /* tokenizer.json size */
#define CEL_TOKENIZER_MAX_VOCAB       (1u << 20)           /* token ids are in [0, this) */
#define CEL_TOKENIZER_MAX_MERGES      (1u << 21)           /* entries of model.merges */
#define CEL_TOKENIZER_MAX_ADDED       65536u               /* entries of added_tokens */
#define CEL_TOKENIZER_MAX_TOKEN_BYTES 4096u                /* one token string, UTF-8 bytes */
#define CEL_TOKENIZER_MAX_INPUT_BYTES (64u * 1024 * 1024)  /* text given to encode */
#define CEL_TOKENIZER_MAX_DECODE_IDS  (16u * 1024 * 1024)  /* ids given to decode */

typedef struct cel_tokenizer cel_tokenizer_t;

/* Loads a tokenizer.json from path. On success *out is a new tokenizer (cel_tokenizer_free).
 * Errors (on failure *out is NULL): CEL_EIO unreadable file, CEL_ELIMIT a named limit passed,
 * CEL_EPROTO not JSON or a wrong shape/type (missing model, merge of unknown tokens, ...),
 * CEL_EINVAL a valid file using a feature this tokenizer does not implement (non-BPE model,
 * a normalizer, an unknown split pattern, byte_fallback), CEL_ENOMEM. */
int cel_tokenizer_load(const char *path, cel_tokenizer_t **out, cel_err_t *err);

/* Same as cel_tokenizer_load, from the file's bytes (borrowed). */
int cel_tokenizer_load_buf(const char *json, size_t len, cel_tokenizer_t **out, cel_err_t *err);

/* Frees tok; NULL is a no-op. */
void cel_tokenizer_free(cel_tokenizer_t *tok);

/* Encodes len bytes of UTF-8 text (need not be NUL-terminated) as HF's
 * tokenizer.encode(text, add_special_tokens=add_bos) would: added tokens are matched first,
 * the rest pre-tokenized and merged. With add_bos and a bos id set, the ids start with bos.
 * OUT: *ids (malloc'd, caller frees; non-NULL even when *n is 0) and *n.
 * Errors: CEL_EINVAL text is not valid UTF-8 (HF takes only strings), CEL_ELIMIT len past
 * CEL_TOKENIZER_MAX_INPUT_BYTES, CEL_ENOMEM; on failure *ids is NULL and *n 0. */
int cel_tokenizer_encode(const cel_tokenizer_t *tok, const char *text, size_t len, int add_bos,
                         int32_t **ids, size_t *n, cel_err_t *err);

/* Decodes n ids to text as HF's decode(ids, skip_special_tokens=False): each token's
 * byte-level characters become bytes, the bytes are read as UTF-8 with each invalid
 * sequence replaced by U+FFFD (Rust's from_utf8_lossy). OUT: *text, malloc'd and
 * NUL-terminated, caller frees; *text_len (may be NULL) its length without the NUL.
 * Errors: CEL_EINVAL an id outside the vocabulary, CEL_ELIMIT n past
 * CEL_TOKENIZER_MAX_DECODE_IDS or text past CEL_TOKENIZER_MAX_INPUT_BYTES, CEL_ENOMEM. */
int cel_tokenizer_decode(const cel_tokenizer_t *tok, const int32_t *ids, size_t n, char **text,
                         size_t *text_len, cel_err_t *err);

/* The size of an embedding table that covers every id: the largest id + 1. */
size_t cel_tokenizer_vocab_size(const cel_tokenizer_t *tok);

/* The token's string as written in tokenizer.json (byte-level form, "Ġthe"), borrowed and
 * valid until cel_tokenizer_free; NULL for an id that names no token. */
const char *cel_tokenizer_token_str(const cel_tokenizer_t *tok, int32_t id);

/* The id of a token string (added tokens first, then the BPE vocabulary), or -1. */
int32_t cel_tokenizer_find(const cel_tokenizer_t *tok, const char *token);

/* 1 when id is an added token marked special (<|endoftext|>), else 0. */
int cel_tokenizer_is_special(const cel_tokenizer_t *tok, int32_t id);

/* The bos/eos ids, -1 when unknown. bos comes from a TemplateProcessing post-processor;
 * eos from the first added token among <|end_of_text|>, <|endoftext|>, </s>, <eos>. The
 * model's config.json knows better: pass its ids to the setters. */
int32_t cel_tokenizer_bos(const cel_tokenizer_t *tok);
int32_t cel_tokenizer_eos(const cel_tokenizer_t *tok);

/* Set bos/eos (-1 for none). Errors: CEL_EINVAL id outside the vocabulary. Not to be called
 * while another thread encodes with tok. */
int cel_tokenizer_set_bos(cel_tokenizer_t *tok, int32_t id, cel_err_t *err);
int cel_tokenizer_set_eos(cel_tokenizer_t *tok, int32_t id, cel_err_t *err);

#endif
