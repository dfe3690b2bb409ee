#!/usr/bin/python3
"""train-tokenizer.py -- trains a byte-level BPE and writes a Hugging Face tokenizer.json.

Standard library only. The text is pre-tokenized exactly as the C tokenizer
(model/tokenizer.c) and Hugging Face `tokenizers` do -- the GPT-2 split pattern
  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
(or, with --style llama3, Llama 3's) implemented by hand over unicodedata categories, since
Python's `re` has no \\p{L} -- then mapped to GPT-2's byte alphabet, and pairs are merged by
count (ties: the smaller pair) until the vocabulary reaches --vocab-size. Special tokens come
first (<|endoftext|> is id 0), then the 256 byte tokens, then one token per merge. Special
tokens found in the corpus are cut out before counting.

  /usr/bin/python3 scripts/train-tokenizer.py --vocab-size 2048 --chat \\
      --out model/tiny/tokenizer.json /usr/share/games/fortunes/*.u8
"""
import argparse
import collections
import heapq
import json
import sys
import unicodedata

LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
                " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")

# Unicode White_Space (what \s means to Oniguruma, HF's regex engine).
WHITE_SPACE = frozenset([0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
                        + list(range(0x2000, 0x200B))
                        + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000])

LETTER, NUMBER, SPACE, OTHER = "L", "N", "S", "O"


def char_class(ch):
    if ord(ch) in WHITE_SPACE:
        return SPACE
    c = unicodedata.category(ch)[0]
    if c == "L":
        return LETTER
    if c == "N":
        return NUMBER
    return OTHER


def bytes_to_unicode():
    """GPT-2's byte -> character table: printable Latin-1 maps to itself, the rest to U+0100+."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _run(cls, i, c, maxn=None):
    j = i
    while j < len(cls) and cls[j] == c and (maxn is None or j - i < maxn):
        j += 1
    return j


def _space_tail(cls, i):
    j = _run(cls, i, SPACE)
    if j == len(cls):
        return j
    return j - 1 if j - i >= 2 else j  # \s+(?!\S) gives back one space, else \s+


def _contraction(t, i, fold):
    if t[i] != "'" or i + 1 >= len(t):
        return i
    a = t[i + 1]
    b = t[i + 2] if i + 2 < len(t) else ""
    if fold:
        a = "s" if a == "\u017f" else a.lower() if a.isascii() else a
        b = b.lower() if b.isascii() else b
    if a in "stmd" and a:
        return i + 2
    if a + b in ("re", "ve", "ll"):
        return i + 3
    return i


def split_gpt2(t):
    """Pieces of t under the GPT-2 pattern (leftmost-first alternation, as the regex)."""
    cls = [char_class(ch) for ch in t]
    out, i = [], 0
    while i < len(t):
        j = _contraction(t, i, False)
        if j == i:
            if t[i] == " " and i + 1 < len(t) and cls[i + 1] != SPACE:
                j = _run(cls, i + 1, cls[i + 1])
            elif cls[i] != SPACE:
                j = _run(cls, i, cls[i])
            else:
                j = _space_tail(cls, i)
        out.append(t[i:j])
        i = j
    return out


def split_llama3(t, maxdig=3):
    """Pieces of t under the Llama 3 pattern."""
    cls = [char_class(ch) for ch in t]
    out, i, n = [], 0, len(t)
    while i < n:
        j = _contraction(t, i, True)
        if j > i:
            pass
        elif cls[i] == LETTER:
            j = _run(cls, i, LETTER)
        elif cls[i] != NUMBER and t[i] not in "\r\n" and i + 1 < n and cls[i + 1] == LETTER:
            j = _run(cls, i + 1, LETTER)
        elif cls[i] == NUMBER:
            j = _run(cls, i, NUMBER, maxdig)
        elif cls[i] == OTHER or (t[i] == " " and i + 1 < n and cls[i + 1] == OTHER):
            j = _run(cls, i + 1 if cls[i] != OTHER else i, OTHER)
            while j < n and t[j] in "\r\n":
                j += 1
        else:
            k = _run(cls, i, SPACE)
            nl = [p for p in range(i, k) if t[p] in "\r\n"]
            j = nl[-1] + 1 if nl else _space_tail(cls, i)
        out.append(t[i:j])
        i = j
    return out


def split_specials(text, specials):
    """Yields the parts of text between special tokens (the tokens themselves dropped)."""
    i = 0
    while True:
        best = None
        for s in specials:
            p = text.find(s, i)
            if p >= 0 and (best is None or p < best[0]):
                best = (p, s)
        if best is None:
            yield text[i:]
            return
        yield text[i:best[0]]
        i = best[0] + len(best[1])


def train(words, vocab_size, vocab, min_frequency):
    """words: {tuple of symbols: count}. Returns the merges [(a, b), ...] in rank order and
    adds their tokens to vocab (a merge whose string is already a token adds none, as in
    HF's BpeTrainer)."""
    syms = [list(w) for w in words]
    counts = list(words.values())
    pairs = collections.Counter()
    where = collections.defaultdict(set)
    for wi, w in enumerate(syms):
        for p in zip(w, w[1:]):
            pairs[p] += counts[wi]
            where[p].add(wi)
    heap = [(-c, p) for p, c in pairs.items()]
    heapq.heapify(heap)
    merges = []
    while len(vocab) < vocab_size and heap:
        negc, p = heapq.heappop(heap)
        if pairs.get(p, 0) != -negc:
            continue  # stale entry
        if -negc < min_frequency:
            break
        merges.append(p)
        new = p[0] + p[1]
        if new not in vocab:
            vocab[new] = len(vocab)
        touched = set()
        for wi in list(where[p]):
            w, c = syms[wi], counts[wi]
            for q in zip(w, w[1:]):
                pairs[q] -= c
                touched.add(q)
            out, k = [], 0
            while k < len(w):
                if k + 1 < len(w) and w[k] == p[0] and w[k + 1] == p[1]:
                    out.append(new)
                    k += 2
                else:
                    out.append(w[k])
                    k += 1
            syms[wi] = out
            for q in zip(out, out[1:]):
                pairs[q] += c
                where[q].add(wi)
                touched.add(q)
        del where[p]
        pairs.pop(p, None)
        for q in touched:
            if q == p:
                continue
            if pairs.get(q, 0) > 0:
                heapq.heappush(heap, (-pairs[q], q))
            else:
                pairs.pop(q, None)
    return merges


def added(i, content):
    return {"id": i, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def build(text, vocab_size, style="gpt2", chat=False, min_frequency=2, pair_merges=False):
    """Trains on text; returns the tokenizer.json document as a dict."""
    b2u = bytes_to_unicode()
    if style == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>"]
    else:
        specials = ["<|endoftext|>"]
    if chat:
        specials += ["<|im_start|>", "<|im_end|>"]
    split = split_llama3 if style == "llama3" else split_gpt2
    words = collections.Counter()
    for part in split_specials(text, specials):
        for piece in split(part):
            words[tuple(b2u[b] for b in piece.encode("utf-8"))] += 1
    vocab = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[b2u[b]] = len(vocab)
    merges = train(words, vocab_size, vocab, min_frequency)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    doc = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [added(vocab[s], s) for s in specials],
        "normalizer": None,
        "pre_tokenizer": byte_level,
        "post_processor": dict(byte_level, trim_offsets=False),
        "decoder": byte_level,
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None,
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": False, "byte_fallback": False, "ignore_merges": style == "llama3",
            "vocab": vocab,
            "merges": [[a, b] for a, b in merges] if pair_merges
            else [f"{a} {b}" for a, b in merges],
        },
    }
    if style == "llama3":
        doc["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated",
             "invert": False},
            dict(byte_level, use_regex=False)]}
        bos = specials[0]
        doc["post_processor"] = {"type": "Sequence", "processors": [
            dict(byte_level, trim_offsets=False, use_regex=True),
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": bos, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": bos, "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": bos, "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}}]}
    return doc


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus", nargs="+", help="UTF-8 text files (bad bytes are replaced)")
    ap.add_argument("--out", required=True, help="tokenizer.json to write")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--min-frequency", type=int, default=2)
    ap.add_argument("--chat", action="store_true", help="add <|im_start|> and <|im_end|>")
    ap.add_argument("--style", choices=["gpt2", "llama3"], default="gpt2",
                    help="pre-tokenizer: GPT-2 ByteLevel regex, or Llama 3 Split + ByteLevel")
    ap.add_argument("--pair-merges", action="store_true",
                    help="write merges as [a, b] pairs (tokenizers >= 0.20) not \"a b\"")
    args = ap.parse_args()
    if not 260 <= args.vocab_size <= 1 << 20:
        ap.error("--vocab-size must be in [260, 1048576]")
    text = []
    for path in args.corpus:
        with open(path, "rb") as f:
            text.append(f.read().decode("utf-8", errors="replace"))
    doc = build("\n".join(text), args.vocab_size, args.style, args.chat, args.min_frequency,
                args.pair_merges)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, indent=2)
        f.write("\n")
    print(f"train-tokenizer: {len(doc['model']['vocab'])} tokens, "
          f"{len(doc['model']['merges'])} merges -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
