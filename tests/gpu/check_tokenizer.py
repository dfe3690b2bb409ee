"""check_tokenizer.py -- check f of tests/gpu/check.py: celeriac's tokenizer against `tokenizers`.

Byte-level BPE tokenizers trained here with the `tokenizers` library (GPT-2, GPT-2 with prefix
space, SmolLM digits, Llama 3 styles) and model/tiny/tokenizer.json: `celeriac-lm tokenize`
must give tokenizers' ids on ~330 strings each, and `celeriac-lm decode` its text.
"""
import glob
import json
import os
import random
import shutil
import subprocess

from gpucommon import REPO, Fail, Missing, Skip, log, run_bin


LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}|"
             " ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def tokenizer_strings(seed=5):
    """~330 varied strings: words, contractions, digits, whitespace runs, scripts, emoji, code."""
    fixed = [
        "", " ", "a", "Hello, world!", "The quick brown fox jumps over the lazy dog.",
        "I'm sure they'll say it's fine; we've DONE it, haven't we? SHE'LL", "don't  DON'T  Don'T",
        "1", "12", "123", "1234", "1234567890", "3.14159", "2024-01-01T12:34:56Z", "x=10000;y=-7",
        "$1,000,000.00", "version 1.2.3-rc4", "0x7fffffff", "1e-10", "٣٤٥ ١٢", "Ⅻ ½ ² ³",
        "a  b", "a   b", "   leading", "trailing   ", "\t\ttabs\tinside", "\n", "\n\n\nnewlines",
        " \n \n ", "line1\r\nline2\r\n", "mixed \t \n\t whitespace", "a\u00a0b", "a\u3000b",
        "a\u2009b\u200bc", "  \n  indented\n    more", "\x0b\x0c form feeds",
        "café naïve résumé", "Ærøskøbing Ångström", "straße STRASSE", "日本語のテキストです。",
        "中文字符测试，标点！", "한국어 문장입니다.", "Привет, мир! Ёлка", "Γειά σου Κόσμε", "שלום עולם",
        "مرحبا بالعالم", "नमस्ते दुनिया", "สวัสดีชาวโลก", "Tiếng Việt có dấu", "e\u0301 vs é",
        "👍", "👍🏽 thumbs", "👨‍👩‍👧‍👦 family", "🇯🇵🇺🇸 flags", "emoji🙂inside🙃words", "🤖🤖🤖",
        "♥ ★ ☃ ✓ ✗", "→ ⇒ ∀x ∃y: x≠y ∧ y≤z", "«quotes» „German“ “curly” ‘single’",
        "em—dash en–dash …ellipsis", "!!!???...", "((()))[[{{}}]]", "@#$%^&*_+-=|\\/<>~`",
        "def f(x):\n    return x ** 2  # square\n", "int main(void) { return 0; }",
        "for (int i = 0; i < n; i++) {\n\tsum += a[i];\n}",
        "{\"key\": [1, 2, {\"nested\": null}], \"s\": \"v\\n\"}",
        "<div class=\"x\">Hello &amp; bye</div>", "SELECT * FROM t WHERE id = 42;",
        "https://example.com/path?q=1&r=two#frag", "user@example.org", "C:\\Program Files\\x",
        "snake_case camelCase PascalCase kebab-case SCREAMING_CASE", "'s 't 're 've 'm 'll 'd",
        "''quoted'' \"double\"", "<|endoftext|>", "a<|endoftext|>b", "<|begin_of_text|>Hi<|end_of_text|>",
        "<|im_start|>user\nhi<|im_end|>", "--flag -x", "-", "-1", "--",
    ]
    rng = random.Random(seed)
    pool = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + " " * 12
            + "\n\t.,;:!?'\"-_()[]{}<>/\\@#$%^&*+=|~`" + "éèçàüöäßñøåæœ" + "日本語中文한국어"
            + "Привет" + "👍🙂🎉🇯" + "\u00a0\u3000\u200d\u0301")
    rand = []
    for _ in range(240):
        n = rng.randint(1, 60)
        rand.append("".join(rng.choice(pool) for _ in range(n)))
    words = ["the", "The", " of", "and", "don't", "I'll", "2023", "12345", "naïve", "日本", "🙂",
             "  ", "\n", "x", "hello", "HELLO", "foo_bar", "(", ")", "..."]
    for _ in range(40):
        rand.append("".join(rng.choice(words) + rng.choice(["", " ", "  ", "\n"]) for _ in range(rng.randint(1, 12))))
    return fixed + rand


def train_tokenizers(d, corpus):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    made = {}
    styles = {
        "gpt2": (pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False, 800,
                 ["<|endoftext|>"]),
        "gpt2-prefix": (pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True), False, 800,
                        ["<|endoftext|>"]),
        "smollm": (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]),
                   False, 900, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]),
        "llama3": (pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True, 1200,
            ["<|begin_of_text|>", "<|end_of_text|>"]),
    }
    for name, (pre, ignore, vocab, specials) in styles.items():
        try:
            model = models.BPE(ignore_merges=ignore) if ignore else models.BPE()
        except TypeError:
            model = models.BPE()
        tok = Tokenizer(model)
        tok.pre_tokenizer = pre
        tok.decoder = decoders.ByteLevel()
        tr = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials, show_progress=False,
                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(corpus, trainer=tr)
        out = os.path.join(d, name)
        os.makedirs(out, exist_ok=True)
        tok.save(os.path.join(out, "tokenizer.json"))
        made[name] = out
    tiny = os.path.join(d, "tiny")
    os.makedirs(tiny, exist_ok=True)
    shutil.copy(os.path.join(REPO, "model", "tiny", "tokenizer.json"), tiny)
    made["tiny"] = tiny
    return made


def child_f(ctx, dev, logf):
    try:
        import tokenizers
        from tokenizers import Tokenizer
    except Exception as e:
        raise Skip(f"the `tokenizers` library is not importable here ({e})"[:150])
    lm = os.path.join(ctx["bindir"], "celeriac-lm")
    if not os.access(lm, os.X_OK):
        raise Missing("bin/celeriac-lm is not in the bundle")
    d = os.path.join(ctx["work"], "tokenizers")
    strings = tokenizer_strings()
    corpus = []
    for p in sorted(glob.glob(os.path.join(REPO, "*.md")) + glob.glob(os.path.join(REPO, "model", "*.c"))
                    + glob.glob(os.path.join(REPO, "worker", "*.c"))[:10]):
        with open(p, encoding="utf-8", errors="replace") as f:
            corpus.extend(f.read().split("\n\n"))
    corpus += strings[:120] * 3
    made = train_tokenizers(d, corpus)
    parts, fails = [], []
    for name, folder in made.items():
        tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
        bad = dec_bad = n = 0
        for s in strings:
            want = tok.encode(s, add_special_tokens=False).ids
            r = run_bin(ctx, [lm, "tokenize", "--model", folder, "--", s], 30)
            n += 1
            if r.returncode != 0:
                bad += 1
                if bad <= 3:
                    fails.append(f"{name}: tokenize {s!r:.40} exit {r.returncode}: {r.stderr.strip()[-120:]}")
                continue
            try:
                got = json.loads(r.stdout)
            except ValueError:
                got = None
            if got != want:
                bad += 1
                if bad <= 3:
                    fails.append(f"{name}: {s!r:.50} celeriac {str(got)[:60]} tokenizers {str(want)[:60]}")
                log(f"  MISMATCH {name}: {s!r}\n    celeriac   {got}\n    tokenizers {want}")
                continue
            r = subprocess.run([lm, "decode", "--model", folder, "--"] + [str(i) for i in want],
                               env=ctx["bin_env"], capture_output=True, timeout=30)
            text = r.stdout[:-1].decode("utf-8", "replace") if r.stdout.endswith(b"\n") else None
            hf = tok.decode(want, skip_special_tokens=False)
            if r.returncode != 0 or text != hf:
                dec_bad += 1
                if dec_bad <= 2:
                    fails.append(f"{name}: decode {want[:8]} celeriac {text!r:.40} tokenizers {hf!r:.40}")
                log(f"  DECODE MISMATCH {name}: {want}\n    celeriac   {text!r}\n    tokenizers {hf!r}")
        log(f"{name}: {n - bad}/{n} encodings equal, {n - bad - dec_bad}/{n - bad} decodings equal")
        parts.append(f"{name} {n - bad}/{n}" + (f" dec-{dec_bad}" if dec_bad else ""))
    summary = f"tokenizers {tokenizers.__version__}: " + ", ".join(parts)
    if fails:
        raise Fail("; ".join(fails[:3]) + " | " + summary)
    return summary
