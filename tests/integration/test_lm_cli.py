"""test_lm_cli.py -- the celeriac-lm program: score, sample, train, tokenize, errors.

Runs bin/celeriac-lm (directory from $CELERIAC_BIN_DIR, default <repo>/bin) as a
subprocess against the bundled model in model/tiny/ (the binary finds it by
default, which one test checks; the others pass --model). Checks the score JSON
(shape and arithmetic), that real English scores clearly better per token than
the same words shuffled, sampling determinism / stop strings / max-tokens, a
short LoRA training run whose adapter then loads and lowers its training text's
loss, full training from --init, and clear non-zero exits on bad input. Each
command uses one BLAS thread; the whole file runs in well under a minute.
"""

import json
import math
import os
import pty
import random
import re
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BIN_DIR = os.environ.get("CELERIAC_BIN_DIR", os.path.join(ROOT, "bin"))
LM = os.path.join(BIN_DIR, "celeriac-lm")
TINY = os.path.join(ROOT, "model", "tiny")
SCALE = 4.0 if "asan" in BIN_DIR else 1.0

pytestmark = pytest.mark.skipif(not os.path.exists(LM), reason=f"{LM} not built")

SENTENCES = [
    "The best way to predict the future is to invent it.",
    "A fool and his money are soon parted.",
    "There is no place like home.",
    "Never put off until tomorrow what you can do today.",
    "If at first you don't succeed, try, try again.",
    "All that glitters is not gold.",
]


def lm(*args, check=True, timeout=60, env=None):
    """Runs celeriac-lm with args; returns the CompletedProcess (text mode)."""
    e = {k: v for k, v in os.environ.items() if k != "CELERIAC_MODEL"}
    e.update(env or {})
    p = subprocess.run([LM, *args], capture_output=True, text=True, timeout=timeout * SCALE,
                       env=e)
    if check and p.returncode != 0:
        raise AssertionError(f"celeriac-lm {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


def score(*texts, model=TINY, adapter=None):
    args = ["score", "--threads", "1", "--model", model]
    if adapter:
        args += ["--adapter", adapter]
    out = lm(*args, *texts).stdout.splitlines()
    assert len(out) == len(texts)
    return [json.loads(line) for line in out]


def sample(*prompts, **kw):
    args = ["sample", "--threads", "1", "--model", TINY, "--json"]
    for k, v in kw.items():
        if k == "stop":
            for s in v:
                args += ["--stop", s]
        else:
            args += ["--" + k.replace("_", "-"), str(v)]
    out = lm(*args, *prompts).stdout.splitlines()
    assert len(out) == len(prompts)
    return [json.loads(line) for line in out]


def tokenize(text, *flags):
    return json.loads(lm("tokenize", "--model", TINY, *flags, text).stdout)


# ---------------------------------------------------------------------------- score

def test_score_json_shape_and_arithmetic():
    res = score("Hello, world.", "A cat sat on the mat.")
    for r, text in zip(res, ["Hello, world.", "A cat sat on the mat."]):
        assert set(r) == {"text", "tokens", "logprob", "mean_logprob", "perplexity",
                          "token_logprobs"}
        assert r["text"] == text
        # bos is prepended and not scored: every token of the text is scored
        assert r["tokens"] == len(tokenize(text)) == len(r["token_logprobs"])
        assert all(lp <= 0 for lp in r["token_logprobs"])
        assert math.isclose(r["logprob"], sum(r["token_logprobs"]), abs_tol=1e-4)
        assert math.isclose(r["mean_logprob"], r["logprob"] / r["tokens"], rel_tol=1e-5)
        assert math.isclose(r["perplexity"], math.exp(-r["mean_logprob"]), rel_tol=1e-4)


def test_score_unicode_and_quotes_round_trip_in_json():
    text = 'He said "naïve" — ok\ttab\nnewline \\ 🎉'
    (r,) = score(text)
    assert r["text"] == text


def test_real_sentences_beat_shuffled():
    rng = random.Random(4)
    shuffled = []
    for s in SENTENCES:
        words = s.split()
        while True:
            w = words[:]
            rng.shuffle(w)
            if w != words:
                break
        shuffled.append(" ".join(w))
    real = score(*SENTENCES)
    shuf = score(*shuffled)
    margins = [a["mean_logprob"] - b["mean_logprob"] for a, b in zip(real, shuf)]
    assert all(m > 0 for m in margins), margins
    assert sum(margins) / len(margins) > 0.5, margins  # nats per token


def test_default_model_found_next_to_binary():
    p = lm("score", "--threads", "1", "Good morning.", env={"CELERIAC_MODEL": ""})
    a = json.loads(p.stdout)
    (b,) = score("Good morning.")
    assert a["token_logprobs"] == b["token_logprobs"]


# ---------------------------------------------------------------------------- sample

def test_sample_same_seed_same_text_and_batch_independent():
    prompts = ["The meaning of life is", "Q: Why did the chicken cross the road?\nA:"]
    a = sample(*prompts, seed=7, max_tokens=24)
    b = sample(*prompts, seed=7, max_tokens=24)
    assert a == b
    alone = sample(prompts[0], seed=7, max_tokens=24)
    assert alone[0] == a[0]
    c = sample(*prompts, seed=8, max_tokens=24)
    assert [x["text"] for x in c] != [x["text"] for x in a]


def test_sample_max_tokens():
    for r in sample("Once upon a time", "Love is", seed=1, max_tokens=5):
        assert r["tokens"] <= 5
        assert r["finish_reason"] in ("length", "stop")
        if r["finish_reason"] == "length":
            assert r["tokens"] == 5


def test_sample_stop_string_cuts_text():
    (full,) = sample("It was a dark and stormy night", temperature=0, max_tokens=40)
    text = full["text"]
    assert len(text) > 12, text
    stop = text[8:11]
    (cut,) = sample("It was a dark and stormy night", temperature=0, max_tokens=40, stop=[stop])
    assert cut["text"] == text[:text.find(stop)]
    assert cut["finish_reason"] == "stop"
    assert cut["tokens"] <= full["tokens"]


def test_sample_plain_output_is_english_like():
    prompts = ["The", "A man", "Love is", "When the"]
    p = lm("sample", "--threads", "1", "--model", TINY, "--seed", "3", "--max-tokens", "40",
           "--temperature", "0.8", *prompts)
    samples = p.stdout.split("\n%\n")
    assert len(samples) == len(prompts)
    for s, prompt in zip(samples, prompts):
        assert s.startswith(prompt)
    words = p.stdout.split()
    assert len(words) >= 12, p.stdout
    # mostly alphabetic words, not byte soup
    alpha = sum(1 for w in words if any(c.isalpha() for c in w))
    assert alpha >= 0.7 * len(words), p.stdout


# ---------------------------------------------------------------------------- tokenize

def test_tokenize_and_decode_round_trip():
    text = "Hello, world! naïve café 🎉"
    ids = tokenize(text)
    assert ids and all(isinstance(i, int) for i in ids)
    assert tokenize(text, "--bos") == [0] + ids  # <|begin_of_text|> is id 0
    back = lm("decode", "--model", TINY, *map(str, ids)).stdout
    assert back == text + "\n"


# ---------------------------------------------------------------------------- train

TRAIN_TEXT = ("The celeriac is a root vegetable with a knobbly skin.\n"
              "It tastes of celery and parsley, and it keeps all winter.\n"
              "Peel it thickly, then roast it with butter and thyme.\n")


def test_lora_train_then_score_with_adapter(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text(TRAIN_TEXT)
    out = tmp_path / "adapter"
    p = lm("train", "--threads", "1", "--model", TINY, "--data", str(data), "--lora", "8",
           "--steps", "12", "--lr", "1e-2", "--batch", "4", "--seq", "32", "--seed", "1",
           "--out", str(out))
    steps = [line for line in p.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 12
    losses = [float(line.split()[3]) for line in steps]
    assert [line.split()[1] for line in steps] == [f"{i}/12" for i in range(1, 13)]
    assert losses[-1] < losses[0]
    for f in ("adapter_model.safetensors", "adapter_config.json", "optimizer.safetensors"):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 16
    assert set(cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj",
                                          "gate_proj", "up_proj", "down_proj"}
    lines = [line for line in TRAIN_TEXT.splitlines()]
    base = score(*lines)
    tuned = score(*lines, adapter=str(out))
    for b, t in zip(base, tuned):
        assert t["mean_logprob"] > b["mean_logprob"] + 0.3, (b["mean_logprob"], t["mean_logprob"])


def test_train_progress_plain_and_on_a_terminal(tmp_path):
    """Progress for people: each plain line ends with the time left; on a terminal one line
    is rewritten in place (\\r, erase to the end) with a bar, percent and ETA."""
    data = tmp_path / "train.txt"
    data.write_text(TRAIN_TEXT)
    args = ["train", "--threads", "1", "--model", TINY, "--data", str(data), "--lora", "4",
            "--steps", "4", "--lr", "1e-2", "--batch", "2", "--seq", "16"]
    p = lm(*args, "--out", str(tmp_path / "a"))
    steps = [line for line in p.stdout.splitlines() if line.startswith("step ")]
    assert len(steps) == 4 and all(re.search(r" tok/s \d+ eta \d+s$", x) for x in steps), steps
    master, slave = pty.openpty()
    proc = subprocess.Popen([LM, *args, "--out", str(tmp_path / "b")], stdout=slave,
                            stderr=subprocess.DEVNULL)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    assert proc.wait(60 * SCALE) == 0
    text = out.decode("utf-8", "replace")
    frames = [f for f in text.split("\r") if f.startswith("step ")]
    assert len(frames) == 4, text
    assert all(f.split("\x1b[K")[0].split()[1] == f"{i}/4" for i, f in enumerate(frames, 1))
    assert "[##########..........]  50%" in frames[1] and " eta " in frames[1], frames[1]
    assert "100%" in frames[3] and "saved " in text


def test_full_train_from_init(tmp_path):
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 2048,
           "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
           "hidden_act": "silu", "bos_token_id": 0, "eos_token_id": 1}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"text": s}) for s in SENTENCES) + "\n")
    out = tmp_path / "m"
    p = lm("train", "--threads", "1", "--model", TINY, "--init", str(tmp_path / "config.json"),
           "--full", "--data", str(data), "--steps", "3", "--lr", "1e-3", "--batch", "2",
           "--seq", "16", "--out", str(out))
    assert len([x for x in p.stdout.splitlines() if x.startswith("step ")]) == 3
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (out / f).is_file()
    (r,) = score("A cat.", model=str(out))
    assert r["tokens"] == len(tokenize("A cat."))


# ---------------------------------------------------------------------------- errors

def fails(*args, match):
    p = lm(*args, check=False)
    assert p.returncode != 0, p.stdout
    assert match in p.stderr, p.stderr
    assert "Sanitizer" not in p.stderr and "runtime error" not in p.stderr, p.stderr
    assert p.stdout == ""
    return p


def test_errors_exit_nonzero_with_message(tmp_path):
    fails("score", "--model", str(tmp_path / "nope"), "x", match="not found")
    fails("score", "--model", TINY, "--adapter", str(tmp_path / "nope"), "x", match="not found")
    empty = tmp_path / "empty_adapter"
    empty.mkdir()
    fails("score", "--model", TINY, "--adapter", str(empty), "x", match="adapter_config.json")
    bad = tmp_path / "bad_adapter"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{not json")
    (bad / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    fails("score", "--model", TINY, "--adapter", str(bad), "x", match="adapter")
    fails("score", "--bogus", "x", match="--bogus")
    fails("sample", "--model", TINY, "--top-p", "2", "x", match="--top-p")
    fails("sample", "--model", TINY, "--max-tokens", "ten", "x", match="--max-tokens")
    fails("score", "--model", TINY, match="TEXT")
    fails("score", "--model", TINY, "", match="no token")
    fails("frobnicate", match="unknown command")
    fails("train", "--model", TINY, "--data", str(tmp_path / "none.txt"), "--lora", "4",
          "--steps", "1", "--lr", "1e-3", "--out", str(tmp_path / "o"), match="none.txt")
    fails("train", "--model", TINY, "--data", "x", "--steps", "1", "--lr", "1e-3",
          "--out", str(tmp_path / "o"), match="--lora")
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"text": "ok"}\n{"txt": 1}\n')
    fails("train", "--model", TINY, "--data", str(jl), "--lora", "4", "--steps", "1",
          "--lr", "1e-3", "--out", str(tmp_path / "o"), match="bad.jsonl:2")


@pytest.mark.parametrize("cmd", ["score", "sample", "train", "tokenize", "decode"])
def test_help(cmd):
    p = lm(cmd, "--help")
    assert p.stdout.startswith(f"usage: celeriac-lm {cmd}")
