#!/usr/bin/python3
"""gen-unicode-tables.py -- writes model/unicode_tables.c and model/unicode_tables.h.

The tokenizer's pre-tokenizers (GPT-2 and Llama 3 split patterns) need the regex classes
\\p{L} (general category L*), \\p{N} (N*) and \\s (the Unicode White_Space property, which
is what Oniguruma, the regex engine of Hugging Face `tokenizers`, uses for \\s). This script
turns Python's unicodedata into compact sorted range tables so the C side needs no regex or
ICU library. White_Space is not exposed by unicodedata, so its 25 code points are listed
here from PropList.txt (unchanged since Unicode 6.3).

Run: /usr/bin/python3 scripts/gen-unicode-tables.py   (from the repository root)
"""
import os
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# PropList.txt White_Space (Unicode 6.3 and later).
WHITE_SPACE = ([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
               + list(range(0x2000, 0x200B)) + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000])


def ranges(pred):
    out = []
    start = None
    for cp in range(0x110000):
        if pred(cp):
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def emit(name, rs):
    lines = [f"static const uint32_t {name}[][2] = {{"]
    row = "   "
    for lo, hi in rs:
        item = f" {{0x{lo:x}, 0x{hi:x}}},"
        if len(row) + len(item) > 96:
            lines.append(row)
            row = "   "
        row += item
    lines.append(row)
    lines.append("};")
    return "\n".join(lines)


def main():
    ws = set(WHITE_SPACE)
    cat = [unicodedata.category(chr(cp))[0] for cp in range(0x110000)]
    letters = ranges(lambda cp: cat[cp] == "L")
    numbers = ranges(lambda cp: cat[cp] == "N")
    spaces = ranges(lambda cp: cp in ws)
    for cp in ws:
        assert cat[cp] not in "LN"
    latin1 = []
    for cp in range(256):
        if cp in ws:
            latin1.append("CEL_UC_SPACE")
        elif cat[cp] == "L":
            latin1.append("CEL_UC_LETTER")
        elif cat[cp] == "N":
            latin1.append("CEL_UC_NUMBER")
        else:
            latin1.append("CEL_UC_OTHER")
    ver = unicodedata.unidata_version
    h = f"""/* unicode_tables.h -- character classes for the tokenizer's pre-tokenizers (generated).
 *
 * Written by scripts/gen-unicode-tables.py from Python's unicodedata (Unicode {ver}); do not
 * edit. Classes match the regex classes of Hugging Face's split patterns: \\p{{L}}, \\p{{N}} and
 * \\s (White_Space). Pure, no state; any thread.
 */
#ifndef CEL_UNICODE_TABLES_H
#define CEL_UNICODE_TABLES_H

#include <stdint.h>

enum {{
    CEL_UC_OTHER = 0,  /* none of the below: [^\\s\\p{{L}}\\p{{N}}] */
    CEL_UC_LETTER = 1, /* general category L* */
    CEL_UC_NUMBER = 2, /* general category N* */
    CEL_UC_SPACE = 3,  /* White_Space property */
}};

/* The class of code point cp (CEL_UC_*); values past U+10FFFF are CEL_UC_OTHER. */
int cel_unicode_class(uint32_t cp);

#endif
"""
    c = [f"""/* unicode_tables.c -- range tables for \\p{{L}}, \\p{{N}} and \\s (generated).
 *
 * Written by scripts/gen-unicode-tables.py from Python's unicodedata (Unicode {ver}); do not
 * edit. {len(letters)} letter ranges, {len(numbers)} number ranges, {len(spaces)} space ranges;
 * Latin-1 is a direct table, the rest a binary search. Pure; any thread.
 */
#include "unicode_tables.h"

#include <stddef.h>
""",
         "static const unsigned char latin1[256] = {"]
    for i in range(0, 256, 4):
        c.append("    " + " ".join(x + "," for x in latin1[i:i + 4]))
    c.append("};\n")
    c.append(emit("letter_ranges", letters) + "\n")
    c.append(emit("number_ranges", numbers) + "\n")
    c.append(emit("space_ranges", spaces) + "\n")
    c.append("""/* True when cp lies in one of the n sorted, disjoint ranges r. */
static int in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < r[mid][0])
            hi = mid;
        else if (cp > r[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

int cel_unicode_class(uint32_t cp) {
    if (cp < 256)
        return latin1[cp];
    if (in_ranges(letter_ranges, sizeof(letter_ranges) / sizeof(letter_ranges[0]), cp))
        return CEL_UC_LETTER;
    if (in_ranges(number_ranges, sizeof(number_ranges) / sizeof(number_ranges[0]), cp))
        return CEL_UC_NUMBER;
    if (in_ranges(space_ranges, sizeof(space_ranges) / sizeof(space_ranges[0]), cp))
        return CEL_UC_SPACE;
    return CEL_UC_OTHER;
}
""")
    with open(os.path.join(ROOT, "model", "unicode_tables.h"), "w") as f:
        f.write(h)
    with open(os.path.join(ROOT, "model", "unicode_tables.c"), "w") as f:
        f.write("\n".join(c))
    print(f"unicode {ver}: {len(letters)} letter, {len(numbers)} number, "
          f"{len(spaces)} space ranges", file=sys.stderr)


if __name__ == "__main__":
    main()
