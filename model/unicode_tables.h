/* unicode_tables.h -- character classes for the tokenizer's pre-tokenizers (generated).
 *
 * Written by scripts/gen-unicode-tables.py from Python's unicodedata (Unicode 14.0.0); do not
 * edit. Classes match the regex classes of Hugging Face's split patterns: \p{L}, \p{N} and
 * \s (White_Space). Pure, no state; any thread.
 */
#ifndef CEL_UNICODE_TABLES_H
#define CEL_UNICODE_TABLES_H

#include <stdint.h>

enum {
    CEL_UC_OTHER = 0,  /* none of the below: [^\s\p{L}\p{N}] */
    CEL_UC_LETTER = 1, /* general category L* */
    CEL_UC_NUMBER = 2, /* general category N* */
    CEL_UC_SPACE = 3,  /* White_Space property */
};

/* The class of code point cp (CEL_UC_*); values past U+10FFFF are CEL_UC_OTHER. */
int cel_unicode_class(uint32_t cp);

#endif
