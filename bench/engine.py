#!/usr/bin/python3
"""engine.py -- celeriac's CPU model engine (bin/celeriac-lm) against plain torch.

Same run, same thread count, same model, same batch/seq. Three measurements:

1. LoRA training (rank 8, alpha 16, all seven target modules, base frozen): forward +
   backward + grad-norm clip 1 + AdamW, tokens/s. celeriac: wall time of
   `celeriac-lm train --lora 8 --steps N` minus that of `--steps 1` (model load,
   tokenizing the data, the first step and saving cancel), over (N-1)*B*T tokens.
   torch: the reference Llama of tests/integration/test_model_oracle.py (copied here,
   with a position offset and a KV cache added) with a hand-written LoRA (A, B per target, torch.optim.AdamW on them), one warm-up step,
   then N-1 timed steps.
2. Scoring (forward only, log-probs of every token): celeriac: `celeriac-lm score` on K
   texts of ~T tokens (it packs them, about 512 tokens a forward) minus `score` of one
   short text; torch: per text forward + log_softmax + gather under torch.no_grad() (as the
   reference model and the oracle tests run it).
Training and scoring are also run with celeriac's `--precision bf16` (bf16 products with
the frozen weights, fp32 sums; CPUs with AVX512-BF16 only) as extra rows against the same
fp32 torch figure; fp32 is celeriac's default and the like-for-like race.
3. Greedy sampling, batch 1, KV cache: celeriac: `celeriac-lm sample --temperature 0
   --max-tokens M` minus `--max-tokens 1` (load and prefill cancel) over the generated
   tokens - 1 (greedy may stop at eos earlier than M: the JSON output says how many);
   torch: the same number of decode steps with a preallocated KV cache, and (third
   figure) without a cache (full recompute per token).

Models: the bundled model/tiny (3.4M params) and, unless --no-large, a random Llama of
~24M params (hidden 512, 8 layers, 8 heads / 4 KV heads, intermediate 1376, the tiny
tokenizer's vocab 2048) written from torch into a temporary folder.

Prints a table (metric, celeriac, torch, ratio = celeriac / torch; above 1 = celeriac
faster). Never fails on timing. Run: /usr/bin/python3 bench/engine.py [--threads N]
[--steps N] [--seq T] [--batch B] [--score-texts K] [--max-tokens M] [--reps R]
[--large-steps N] [--no-large] [--omp-active] [--only train,score,sample] [--no-bf16]. Each timing is repeated --reps times (3) and
the best kept; for training and scoring the repetitions interleave celeriac and torch, so
load from other jobs on a shared machine hits both sides of a ratio alike (figures still
vary by +-30% or more from run to run there).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
MODS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PATHS = {m: ("self_attn." if m in MODS[:4] else "mlp.") + m for m in MODS}

LARGE_CFG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
    "vocab_size": 2048, "hidden_size": 512, "intermediate_size": 1376,
    "num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4,
    "head_dim": 64, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0, "tie_word_embeddings": True, "attention_bias": False,
    "mlp_bias": False, "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1,
}


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--steps", type=int, default=8, help="training steps (>= 2)")
    p.add_argument("--seq", type=int, default=128, help="training window and score text tokens")
    p.add_argument("--batch", type=int, default=8, help="training windows per step")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--reps", type=int, default=3, help="repeat each timing, keep the best")
    p.add_argument("--score-texts", type=int, default=24)
    p.add_argument("--max-tokens", type=int, default=200, help="greedy sampling tokens")
    p.add_argument("--omp-active", action="store_true",
                   help="leave OMP_WAIT_POLICY unset for torch (libgomp spins: slower here)")
    p.add_argument("--no-large", action="store_true", help="only the bundled model")
    p.add_argument("--no-bf16", action="store_true", help="skip celeriac's --precision bf16 rows")
    p.add_argument("--only", default="train,score,sample",
                   help="comma-separated measurements to run (train, score, sample)")
    p.add_argument("--large-steps", type=int, default=5, help="training steps, large model")
    p.add_argument("--bin-dir", default=os.environ.get("CELERIAC_BIN_DIR", os.path.join(REPO, "bin")))
    a = p.parse_args()
    a.steps = max(2, a.steps)
    a.large_steps = max(2, a.large_steps)
    a.reps = max(1, a.reps)
    return a


ARGS = parse()


def bf16_cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512_bf16" in f.read()
    except OSError:
        return False


# celeriac's precisions: fp32 (the default, the race), and --precision bf16 where the CPU
# has AVX512-BF16 (an extra row against the same fp32 torch figure; --no-bf16 skips it)
PRECISIONS = ["fp32"] + (["bf16"] if bf16_cpu() and not ARGS.no_bf16 else [])
# torch.set_num_threads sets OpenMP; the BLAS (Debian's torch uses the same OpenBLAS as
# celeriac) reads its own variable, so set both before torch is imported.
os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
os.environ["OPENBLAS_NUM_THREADS"] = str(ARGS.threads)
# libgomp's default (active spinning) makes torch's OpenMP threads fight OpenBLAS's own
# pthreads for the cores between ops: 2.5-4x slower forwards on this 2-core machine.
# PASSIVE is torch's best setting here; --omp-active measures the default.
if not ARGS.omp_active:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
import st_pywrite  # noqa: E402

torch.set_num_threads(ARGS.threads)
LM = os.path.join(ARGS.bin_dir, "celeriac-lm")


# ---------------------------------------------------------------- reference Llama (torch)

class Ref:
    """The oracle test's plain-torch Llama (HF LlamaForCausalLM eager), with a position
    offset and an optional preallocated KV cache; LoRA as y += s * (x A^T) B^T."""

    def __init__(self, cfg, W):
        self.cfg, self.W = cfg, W
        self.C, self.L = cfg["hidden_size"], cfg["num_hidden_layers"]
        self.NH, self.NKV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.HS = cfg.get("head_dim") or self.C // self.NH
        self.eps = cfg["rms_norm_eps"]
        maxpos = cfg["max_position_embeddings"]
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, self.HS, 2).float() / self.HS))
        fr = torch.outer(torch.arange(maxpos).float(), inv)
        emb = torch.cat((fr, fr), -1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self.head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
        self.lw = [{m: W[f"model.layers.{l}.{PATHS[m]}.weight"] for m in MODS} for l in range(self.L)]
        self.lora, self.scaling = None, 1.0

    @staticmethod
    def rms(x, w, eps):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    @staticmethod
    def rot(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), -1)

    def lin(self, x, l, m):
        y = F.linear(x, self.lw[l][m])
        if self.lora is not None:
            A, B = self.lora[(l, m)]
            y = y + self.scaling * F.linear(F.linear(x, A), B)
        return y

    def forward(self, tokens, pos0=0, cache=None):
        """tokens (B,T) at positions pos0.. -> logits (B,T,V). cache: list of (K, V)
        tensors (B, NKV, maxlen, HS) filled up to pos0, written here."""
        W, B, T = self.W, tokens.shape[0], tokens.shape[1]
        NH, NKV, HS, eps = self.NH, self.NKV, self.HS, self.eps
        cos, sin = self.cos[pos0:pos0 + T], self.sin[pos0:pos0 + T]
        S = pos0 + T
        mask = None if T == 1 else torch.full((T, S), float("-inf")).triu(pos0 + 1)
        x = W["model.embed_tokens.weight"][tokens]
        for l in range(self.L):
            h = self.rms(x, W[f"model.layers.{l}.input_layernorm.weight"], eps)
            q = self.lin(h, l, "q_proj").view(B, T, NH, HS).transpose(1, 2)
            k = self.lin(h, l, "k_proj").view(B, T, NKV, HS).transpose(1, 2)
            v = self.lin(h, l, "v_proj").view(B, T, NKV, HS).transpose(1, 2)
            q = q * cos + self.rot(q) * sin
            k = k * cos + self.rot(k) * sin
            if cache is not None:
                K, V = cache[l]
                K[:, :, pos0:S] = k
                V[:, :, pos0:S] = v
                k, v = K[:, :, :S], V[:, :, :S]
            k = k.repeat_interleave(NH // NKV, dim=1)
            v = v.repeat_interleave(NH // NKV, dim=1)
            s = q @ k.transpose(2, 3) / math.sqrt(HS)
            if mask is not None:
                s = s + mask
            y = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, NH * HS)
            x = x + self.lin(y, l, "o_proj")
            h = self.rms(x, W[f"model.layers.{l}.post_attention_layernorm.weight"], eps)
            x = x + self.lin(F.silu(self.lin(h, l, "gate_proj")) * self.lin(h, l, "up_proj"), l, "down_proj")
        x = self.rms(x, W["model.norm.weight"], eps)
        return F.linear(x, self.head)

    def new_cache(self, B, maxlen):
        return [(torch.zeros(B, self.NKV, maxlen, self.HS), torch.zeros(B, self.NKV, maxlen, self.HS))
                for _ in range(self.L)]


def load_model(d):
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    W, _ = st_pywrite.load(os.path.join(d, "model.safetensors"))
    return cfg, W


def write_large_model(d, tok_json):
    """Random ~24M-param Llama (HF init: normal(0, 0.02), norms 1) + the tiny tokenizer."""
    os.makedirs(d, exist_ok=True)
    c = LARGE_CFG
    g = torch.Generator().manual_seed(1)
    V, C, I, L = c["vocab_size"], c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    HS, NH, NKV = c["head_dim"], c["num_attention_heads"], c["num_key_value_heads"]
    dims = {"q_proj": (NH * HS, C), "k_proj": (NKV * HS, C), "v_proj": (NKV * HS, C),
            "o_proj": (C, NH * HS), "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}
    W = {"model.embed_tokens.weight": torch.randn(V, C, generator=g) * 0.02,
         "model.norm.weight": torch.ones(C)}
    for l in range(L):
        W[f"model.layers.{l}.input_layernorm.weight"] = torch.ones(C)
        W[f"model.layers.{l}.post_attention_layernorm.weight"] = torch.ones(C)
        for m in MODS:
            W[f"model.layers.{l}.{PATHS[m]}.weight"] = torch.randn(*dims[m], generator=g) * 0.02
    st_pywrite.save(os.path.join(d, "model.safetensors"), W, {"format": "pt"})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    shutil.copy(tok_json, os.path.join(d, "tokenizer.json"))


# ---------------------------------------------------------------- helpers

def timed_run(cmd, reps=1):
    """Best wall time of reps runs of cmd; returns (seconds, stdout) or (None, error)."""
    best, out = None, ""
    for _ in range(reps):
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        dt = time.perf_counter() - t
        if r.returncode != 0:
            return None, (r.stderr or r.stdout).strip()[-300:]
        if best is None or dt < best:
            best, out = dt, r.stdout + r.stderr
    return best, out


def rate(n, dt):
    return n / dt if dt and dt > 0 and n > 0 else None


def corpus_docs():
    """Fortunes (Debian's fortunes package) when installed, else generated sentences."""
    docs = []
    d = "/usr/share/games/fortunes"
    if os.path.isdir(d):
        for fn in sorted(os.listdir(d)):
            if fn.endswith(".u8") and fn != "ascii-art.u8":
                try:
                    with open(os.path.join(d, fn), encoding="utf-8", errors="replace") as f:
                        docs += [x.strip() for x in f.read().split("\n%\n") if x.strip()]
                except OSError:
                    pass
    if len(docs) < 200:
        words = ("the of and to a in is it you that he was for on are with as his they be at one "
                 "have this from or had by word but what some we can out other were all there when "
                 "up use your how said an each she which do their time if will way about many").split()
        g = torch.Generator().manual_seed(0)
        for _ in range(2000):
            idx = torch.randint(0, len(words), (40,), generator=g).tolist()
            docs.append(" ".join(words[i] for i in idx).capitalize() + ".")
    return docs


def tokenize(model_dir, text):
    r = subprocess.run([LM, "tokenize", "--model", model_dir, "--bos", text],
                       capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


# ---------------------------------------------------------------- the three measurements

def prec_flags(prec):
    """celeriac-lm's flag for a precision (none for fp32: the default, and older builds)."""
    return [] if prec == "fp32" else ["--precision", prec]


def bench_train(name, mdir, ref, data, tmp, steps):
    B, T, R, th = ARGS.batch, ARGS.seq, ARGS.rank, ARGS.threads
    rows = []
    base = [LM, "train", "--model", mdir, "--data", data, "--lora", str(R), "--lr", "1e-3",
            "--batch", str(B), "--seq", str(T), "--threads", str(th)]
    # torch: hand-written LoRA on the frozen reference
    cfg = ref.cfg
    g = torch.Generator().manual_seed(0)
    lora = {}
    for l in range(ref.L):
        for m in MODS:
            o, i = ref.lw[l][m].shape
            A = ((torch.rand(R, i, generator=g) * 2 - 1) / math.sqrt(i)).requires_grad_()
            Bm = torch.zeros(o, R).requires_grad_()
            lora[(l, m)] = (A, Bm)
    params = [p for ab in lora.values() for p in ab]
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    ref.lora, ref.scaling = lora, 2.0  # alpha 2R / R
    toks = torch.randint(0, cfg["vocab_size"], (steps, B, T + 1), generator=g)

    def step(i):
        x, y = toks[i, :, :-1], toks[i, :, 1:]
        logits = ref.forward(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    step(0)  # warm-up, as celeriac's 1-step run
    # repetitions interleave celeriac and torch, so a burst of load on the shared machine
    # hits both sides of a ratio alike; each side keeps its best
    t1s, tns, failed, best = {}, {}, {}, None
    for _ in range(ARGS.reps):
        for prec in PRECISIONS:
            if prec in failed:
                continue
            b = base + prec_flags(prec)
            t1, o1 = timed_run(b + ["--steps", "1", "--out", os.path.join(tmp, "a1")])
            tn, on = timed_run(b + ["--steps", str(steps), "--out", os.path.join(tmp, "an")])
            if t1 is None or tn is None:
                failed[prec] = o1 if t1 is None else on
                continue
            if "T=%d" % T not in on and prec not in tns:
                print(f"  note: celeriac shortened the window: {on.splitlines()[:1]}")
            t1s[prec] = min(t1, t1s.get(prec, t1))
            tns[prec] = min(tn, tns.get(prec, tn))
        t = time.perf_counter()
        for i in range(1, steps):
            step(i)
        dt = time.perf_counter() - t
        best = dt if best is None or dt < best else best
    for prec, why in failed.items():
        print(f"  celeriac train ({prec}) failed: {why}")
    cs = {p: rate((steps - 1) * B * T, tns[p] - t1s[p]) if p in tns else None for p in PRECISIONS}
    tt = rate((steps - 1) * B * T, best)
    ref.lora = None
    rows.append((f"{name}: LoRA r{R} train tok/s (B={B} T={T})", cs["fp32"], tt))
    if "bf16" in cs:
        rows.append((f"{name}: LoRA r{R} train, celeriac bf16", cs["bf16"], tt))
    return rows


def bench_score(name, mdir, ref, docs):
    K, T, th = ARGS.score_texts, ARGS.seq, ARGS.threads
    # texts of ~T tokens: fortunes joined until the (approximate) length is reached
    texts, i = [], 0
    while len(texts) < K:
        s = ""
        while len(s) < 3.6 * T and i < 100000:
            s += docs[i % len(docs)] + "\n\n"
            i += 1
        texts.append(s)
    ids = []
    for s in texts:  # trim each text to at most T scored tokens (+ bos)
        t = tokenize(mdir, s)
        ids.append(t[:T + 1])
    # celeriac gets text, so give it texts whose tokenization is exactly ids (decode round trip)
    texts = []
    for t in ids:
        r = subprocess.run([LM, "decode", "--model", mdir] + [str(x) for x in t[1:]],
                           capture_output=True, text=True)
        texts.append(r.stdout if r.returncode == 0 else "")
    ok = all(texts)
    if not ok:
        print("  celeriac decode failed; no score figure")
    x0 = torch.tensor(ids[0])[None]
    with torch.no_grad():
        ref.forward(x0[:, :-1])  # warm-up
    # interleaved repetitions, each side's best (see bench_train)
    t0s, tks, got, failed, best = {}, {}, {}, {}, None
    for _ in range(ARGS.reps):
        for prec in PRECISIONS if ok else []:
            if prec in failed:
                continue
            cmd = [LM, "score", "--model", mdir, "--threads", str(th)] + prec_flags(prec)
            t0, o0 = timed_run(cmd + ["Hello."])
            tk, ok_ = timed_run(cmd + texts)
            if t0 is None or tk is None:
                failed[prec] = o0 if t0 is None else ok_
                continue
            got[prec] = sum(json.loads(line)["tokens"] for line in ok_.splitlines()
                            if line.startswith("{"))
            t0s[prec] = min(t0, t0s.get(prec, t0))
            tks[prec] = min(tk, tks.get(prec, tk))
        with torch.no_grad():
            t = time.perf_counter()
            for tk_ in ids:
                x = torch.tensor(tk_)[None]
                lp = torch.log_softmax(ref.forward(x[:, :-1]), -1).gather(-1, x[:, 1:, None])
                float(lp.sum())
            dt = time.perf_counter() - t
            best = dt if best is None or dt < best else best
    for prec, why in failed.items():
        print(f"  celeriac score ({prec}) failed: {why}")
    # "Hello." scores ~1-2 tokens: negligible
    cs = {p: rate(got[p] - 1, tks[p] - t0s[p]) if p in tks else None for p in PRECISIONS}
    tt = rate(sum(len(t) - 1 for t in ids), best)
    rows = [(f"{name}: score tok/s ({K} texts x ~{T} tok)", cs.get("fp32"), tt)]
    if "bf16" in cs:
        rows.append((f"{name}: score, celeriac bf16", cs["bf16"], tt))
    return rows


PROMPTS = ["Q: What", "1. ", "Q:", "Once upon a time", "The best way to predict the future is"]


def bench_sample(name, mdir, ref):
    M, th = ARGS.max_tokens, ARGS.threads
    cmd = [LM, "sample", "--model", mdir, "--temperature", "0", "--json", "--threads", str(th)]
    # greedy stops at eos: take the candidate prompt that generates the most tokens
    _, o = timed_run(cmd + ["--max-tokens", str(M)] + PROMPTS)
    try:
        n_by = [json.loads(line)["tokens"] for line in o.splitlines() if line.startswith("{")]
        prompt = PROMPTS[n_by.index(max(n_by))]
    except (ValueError, KeyError):
        prompt = PROMPTS[0]
    t1, _ = timed_run(cmd + ["--max-tokens", "1", prompt], ARGS.reps)
    tm, om = timed_run(cmd + ["--max-tokens", str(M), prompt], ARGS.reps)
    c, n = None, M
    if t1 is not None and tm is not None:
        n = [json.loads(x) for x in om.splitlines() if x.startswith("{")][0]["tokens"]
        c = rate(n - 1, tm - t1)
    else:
        print(f"  celeriac sample failed: {om}")
    n = max(n, 2)
    pids = torch.tensor(tokenize(mdir, prompt))[None]
    P = pids.shape[1]

    def gen_cache():
        cache = ref.new_cache(1, P + n)
        nxt = ref.forward(pids, 0, cache)[:, -1].argmax(-1, keepdim=True)  # prefill: token 1
        t = time.perf_counter()
        for j in range(1, n):
            nxt = ref.forward(nxt, P + j - 1, cache)[:, -1].argmax(-1, keepdim=True)
        return time.perf_counter() - t

    def gen_nocache():
        seq = pids
        seq = torch.cat([seq, ref.forward(seq)[:, -1].argmax(-1, keepdim=True)], 1)
        t = time.perf_counter()
        for j in range(1, n):
            seq = torch.cat([seq, ref.forward(seq)[:, -1].argmax(-1, keepdim=True)], 1)
        return time.perf_counter() - t

    with torch.no_grad():
        dc = min(gen_cache() for _ in range(ARGS.reps))
        dn = gen_nocache()
    return [(f"{name}: greedy sample tok/s (KV cache, {n} tok)", c, rate(n - 1, dc)),
            (f"{name}: greedy sample, torch w/o cache", c, rate(n - 1, dn))]


# ---------------------------------------------------------------- main

def fmt(v):
    return "-" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")


def main():
    t_start = time.perf_counter()
    if not os.access(LM, os.X_OK):
        print(f"{LM} not found: run `make` first")
        return 0
    print(f"celeriac-lm vs torch {torch.__version__} (fp32, CPU), threads {ARGS.threads} "
          f"(torch.set_num_threads + celeriac-lm --threads), OpenBLAS for both, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    tmp = tempfile.mkdtemp(prefix="celeriac-bench-engine-")
    docs = corpus_docs()
    data = os.path.join(tmp, "data.jsonl")
    with open(data, "w") as f:
        for d in docs[:3000]:
            f.write(json.dumps({"text": d}) + "\n")
    tiny = os.path.join(REPO, "model", "tiny")
    models = [("tiny", tiny, ARGS.steps)]
    if not ARGS.no_large:
        large = os.path.join(tmp, "large")
        write_large_model(large, os.path.join(tiny, "tokenizer.json"))
        models.append(("large", large, ARGS.large_steps))
    rows = []
    for name, mdir, steps in models:
        try:
            cfg, W = load_model(mdir)
            ref = Ref(cfg, W)
            npar = sum(t.numel() for t in W.values())
            print(f"[{name}] {mdir}: {npar / 1e6:.1f}M params", flush=True)
            for fn, args in ((bench_train, (name, mdir, ref, data, tmp, steps)),
                             (bench_score, (name, mdir, ref, docs)),
                             (bench_sample, (name, mdir, ref))):
                if fn.__name__[len("bench_"):] not in ARGS.only.split(","):
                    continue
                t = time.perf_counter()
                try:
                    rows += fn(*args)
                except Exception as e:  # never fail on one measurement
                    print(f"  {fn.__name__} failed: {e!r}")
                print(f"  {fn.__name__}: {time.perf_counter() - t:.1f} s", flush=True)
        except Exception as e:
            print(f"[{name}] failed: {e!r}")
    shutil.rmtree(tmp, ignore_errors=True)
    w = max([len(r[0]) for r in rows] + [6])
    print()
    print(f"{'metric':<{w}}  {'celeriac':>10}  {'torch':>10}  {'ratio c/t':>9}")
    print("-" * (w + 35))
    for m, c, t in rows:
        ratio = f"{c / t:.2f}" if c and t else "-"
        print(f"{m:<{w}}  {fmt(c):>10}  {fmt(t):>10}  {ratio:>9}")
    print(f"\n(ratio above 1: celeriac faster; total bench time {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
