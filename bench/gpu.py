#!/usr/bin/env python3
"""gpu.py -- celeriac's CUDA backend against PyTorch + PEFT on one GPU, in one run.

Runs on the GPU machine (its python3 has torch, transformers, peft, safetensors); not a test,
never fails on timing. Builds a ~1.1B-parameter Llama-shaped model with random weights (hidden
2048, 16 layers, 32 heads / 8 KV heads, intermediate 8192, vocab 32000, untied head; nothing
downloaded), saved as bf16 model.safetensors + config.json (+ model/tiny's tokenizer.json,
which celeriac-lm opens) in a temporary folder, then measures on the same GPU:

1. LoRA training, rank 16 (alpha 32) on all seven linear layers, forward + backward + AdamW,
   --batch x --seq tokens per step: tokens/s and MFU. celeriac: `celeriac-lm bench --mode
   train`; PyTorch: transformers LlamaForCausalLM (bf16 weights, sdpa attention) wrapped by
   peft.get_peft_model (fp32 LoRA weights), bf16 autocast, cross-entropy on fp32 logits,
   torch.optim.AdamW (fused) over the LoRA parameters; --warmup untimed steps, then --steps
   timed ones between two cuda synchronisations.
2. 1, 2, 4, 8, 16 adapters training at once, each with its own --multi-batch x --multi-seq
   batch per step: celeriac packed into one pass (`--adapters K`) vs one after another
   (`--adapters K --sequential`); aggregate tokens/s and the ratio.
3. Scoring (forward, log-probs of every token) and greedy sampling (--sample-prompt tokens of
   prompt, then exactly --max-tokens new tokens, KV cache; time includes the prefill) at
   batch 1 and 32, base model: celeriac `--mode score|sample --adapters 0` vs transformers
   (no_grad forward + log_softmax + gather; generate(do_sample=False, use_cache=True,
   min_new_tokens = max_new_tokens, no eos)).
4. Peak GPU memory for 1 and 16 adapters (celeriac's own peak_gpu_bytes; torch's
   max_memory_allocated for its 1-adapter training).

MFU = tokens/s x FLOPs per token / peak dense bf16 FLOP/s (989e12 for H100 SXM and H200;
--peak-flops to override). FLOPs per token, with N = the parameters of every matrix product
(the seven projections of each layer and the LM head; not the embedding table or norms),
N_lora = the LoRA parameters, L layers, T the sequence length, d = heads x head size:
  MFU (6N)   6 N + 6 N_lora + 12 L T d      the usual 6N + attention (PaLM appendix B),
                                            counting weight gradients the frozen base never needs
  MFU (LoRA) 4 N + 6 N_lora + 12 L T d      what LoRA training has to compute: forward 2N,
                                            input gradients 2N, no base weight gradients
Attention is counted as full T x T matmuls (QK^T and AV: 4 T d forward, 8 T d backward), as
PaLM does, although a causal kernel does about half of that work.

celeriac-lm comes from --bin-dir (default .gpu/bin when there, else bin/); its libraries from
$CELERIAC_GPU_LD_LIBRARY_PATH (set by scripts/gpu-check) or the unpacked .gpu bundle.
Run:  python3 bench/gpu.py                 (full, ~5-8 min on an H100)
      python3 bench/gpu.py --quick         (4 layers, fewer steps and shapes; scripts/gpu-check)
      python3 bench/gpu.py --device cpu    (plumbing only, a tiny model; here)
Options: --json FILE, --md FILE (the table), --deadline S (stop starting measurements after
S seconds), --skip-torch, --skip-celeriac, --keep, shape flags (--hidden ...; see --help).
"""
import argparse
import glob
import json
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
PEAK = {"H100": 989e12, "H200": 989e12, "H800": 989e12, "GH200": 989e12, "A100": 312e12,
        "L40S": 362e12}
NM = "not measured yet"
T_START = time.monotonic()


def say(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------------ the model


def shape_of(args):
    return dict(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                num_hidden_layers=args.layers, num_attention_heads=args.heads,
                num_key_value_heads=args.kv_heads, head_dim=args.hidden // args.heads,
                rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=4096,
                tie_word_embeddings=False)


def counts(cfg, rank, seq):
    C, I, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    HS = cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * HS, cfg["num_key_value_heads"] * HS
    dims = {"q_proj": (q, C), "k_proj": (kv, C), "v_proj": (kv, C), "o_proj": (C, q),
            "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}
    n_mm = L * sum(o * i for o, i in dims.values()) + V * C
    n_lora = L * sum(rank * (o + i) for o, i in dims.values())
    n_all = n_mm + V * C + (2 * L + 1) * C
    attn = 12 * L * seq * q
    return {"n_matmul": n_mm, "n_lora": n_lora, "n_params": n_all,
            "flops_6n": 6 * n_mm + 6 * n_lora + attn, "flops_lora": 4 * n_mm + 6 * n_lora + attn}


def build_model(d, cfg, device, seed=0):
    """Random bf16 weights (std 0.02, norms 1) with HF Llama names, saved as one safetensors."""
    import torch
    os.makedirs(d, exist_ok=True)
    g = torch.Generator(device=device).manual_seed(seed)
    V, C, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    HS = cfg["head_dim"]
    q, kv, I = cfg["num_attention_heads"] * HS, cfg["num_key_value_heads"] * HS, cfg["intermediate_size"]
    dims = {"q_proj": (q, C), "k_proj": (kv, C), "v_proj": (kv, C), "o_proj": (C, q),
            "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}

    def rnd(*shape):
        return (torch.randn(*shape, generator=g, device=device, dtype=torch.float32) * 0.02) \
            .to(torch.bfloat16).cpu()

    W = {"model.embed_tokens.weight": rnd(V, C), "lm_head.weight": rnd(V, C),
         "model.norm.weight": torch.ones(C, dtype=torch.bfloat16)}
    for l in range(L):
        W[f"model.layers.{l}.input_layernorm.weight"] = torch.ones(C, dtype=torch.bfloat16)
        W[f"model.layers.{l}.post_attention_layernorm.weight"] = torch.ones(C, dtype=torch.bfloat16)
        for m, (o, i) in dims.items():
            W[f"model.layers.{l}.{PATHS[m]}.weight"] = rnd(o, i)
    path = os.path.join(d, "model.safetensors")
    try:
        from safetensors.torch import save_file
        save_file(W, path, metadata={"format": "pt"})
    except ImportError:
        sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
        import st_pywrite
        st_pywrite.save(path, W, {"format": "pt"})
    c = dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
             attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=1,
             initializer_range=0.02, torch_dtype="bfloat16")
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=1)
    shutil.copy(os.path.join(REPO, "model", "tiny", "tokenizer.json"), d)
    del W


# ------------------------------------------------------------------------------ celeriac


class Celeriac:
    def __init__(self, args, model_dir):
        self.args = args
        self.model = model_dir
        bindir = args.bin_dir or (os.path.join(REPO, ".gpu", "bin")
                                  if os.path.isdir(os.path.join(REPO, ".gpu", "bin"))
                                  else os.path.join(REPO, "bin"))
        self.lm = os.path.join(bindir, "celeriac-lm")
        self.env = dict(os.environ)
        ld = os.environ.get("CELERIAC_GPU_LD_LIBRARY_PATH")
        if ld is None:  # a bundle unpacked by scripts/gpu-check
            ld = ":".join(sorted(glob.glob(os.path.join(tempfile.gettempdir(), "celeriac-gpu-*", "*", "lib"))))
        if ld:
            self.env["LD_LIBRARY_PATH"] = ld + (":" + os.environ["LD_LIBRARY_PATH"]
                                                if os.environ.get("LD_LIBRARY_PATH") else "")
        cuda_so = os.path.join(bindir, "libceleriac-cuda.so")
        if os.path.exists(cuda_so):
            self.env.setdefault("CELERIAC_CUDA_LIB", cuda_so)
        self.missing = None
        if not os.access(self.lm, os.X_OK):
            self.missing = f"{self.lm} not found"
        else:
            r = subprocess.run([self.lm, "bench", "--help"], capture_output=True, text=True,
                               env=self.env, timeout=30)
            if r.returncode != 0 or "--mode" not in r.stdout + r.stderr:
                self.missing = "celeriac-lm has no `bench` command"

    def run(self, mode, **kw):
        """One `celeriac-lm bench` run; returns its JSON object or {"error": ...}."""
        if self.missing:
            return {"error": self.missing}
        limit = self.args.run_timeout
        if self.args.deadline is not None:
            limit = max(10, min(limit, self.args.deadline - (time.monotonic() - T_START) + 5))
        cmd = [self.lm, "bench", "--model", self.model, "--device", self.args.device, "--mode", mode]
        for k, v in kw.items():
            if v is True:
                cmd.append("--" + k.replace("_", "-"))
            elif v is not False and v is not None:
                cmd += ["--" + k.replace("_", "-"), str(v)]
        say("$ " + " ".join(cmd))
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=limit)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {limit:.0f}s"}
        if r.stderr.strip():
            say("  " + r.stderr.strip().replace("\n", "\n  ")[-1500:])
        lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
        if r.returncode != 0 or not lines:
            return {"error": (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][:200]}
        out = json.loads(lines[-1])
        say("  " + lines[-1])
        return out


# ------------------------------------------------------------------------------ torch


class Torch:
    """transformers + PEFT on the same folder; self.missing says why not."""

    def __init__(self, args, model_dir):
        self.args, self.model_dir, self.model, self.missing = args, model_dir, None, None
        try:
            import peft  # noqa: F401
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except Exception as e:
            self.missing = f"transformers/peft not importable ({type(e).__name__}: {e})"[:160]

    def load(self):
        import torch
        from transformers import LlamaForCausalLM
        if self.model is None:
            try:
                m = LlamaForCausalLM.from_pretrained(self.model_dir, dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
            except TypeError:
                m = LlamaForCausalLM.from_pretrained(self.model_dir, torch_dtype=torch.bfloat16,
                                                     attn_implementation="sdpa")
            if next(m.parameters()).dtype != torch.bfloat16:
                m = m.to(torch.bfloat16)
            self.model = m.to(self.args.device).eval()
            for p in self.model.parameters():
                p.requires_grad_(False)
        return self.model

    def sync(self):
        import torch
        if self.args.device == "cuda":
            torch.cuda.synchronize()

    def tokens(self, B, T):
        import torch
        g = torch.Generator(device="cpu").manual_seed(B * 1000 + T)
        return torch.randint(0, self.args.vocab, (B, T), generator=g).to(self.args.device)

    def autocast(self):
        import torch
        return torch.autocast(device_type=self.args.device, dtype=torch.bfloat16)

    def score(self, B, T, steps, warmup):
        import torch
        m = self.load()
        x = self.tokens(B, T + 1)
        with torch.no_grad():
            for s in range(warmup + steps):
                if s == warmup:
                    self.sync()
                    t0 = time.perf_counter()
                with self.autocast():
                    logits = m(input_ids=x[:, :-1]).logits
                lp = torch.log_softmax(logits.float(), -1).gather(-1, x[:, 1:, None])
                del logits, lp
            self.sync()
        secs = time.perf_counter() - t0
        return {"tokens": B * T * steps, "seconds": secs, "tokens_per_s": B * T * steps / secs}

    def sample(self, B, P, M, steps, warmup):
        import torch
        m = self.load()
        x = self.tokens(B, P)
        gc = m.generation_config
        gc.eos_token_id = None
        gc.pad_token_id = 0
        kw = dict(max_new_tokens=M, min_new_tokens=M, do_sample=False, use_cache=True,
                  attention_mask=torch.ones_like(x), pad_token_id=0, eos_token_id=None)
        with torch.no_grad():
            for s in range(warmup + steps):
                if s == warmup:
                    self.sync()
                    t0 = time.perf_counter()
                with self.autocast():
                    out = m.generate(input_ids=x, **kw)
            self.sync()
        secs = time.perf_counter() - t0
        new = (out.shape[1] - P) * B * steps
        return {"tokens": new, "seconds": secs, "tokens_per_s": new / secs}

    def train(self, B, T, steps, warmup, rank):
        import torch
        import torch.nn.functional as F
        from peft import LoraConfig, get_peft_model
        m = self.load()
        pm = get_peft_model(m, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=MODS,
                                          lora_dropout=0.0, bias="none", task_type="CAUSAL_LM"))
        params = [p for n, p in pm.named_parameters() if ".lora_" in n]
        for p in params:
            p.data = p.data.float()
            p.requires_grad_(True)
        kw = {"fused": True} if self.args.device == "cuda" else {}
        opt = torch.optim.AdamW(params, lr=1e-4, **kw)
        x = self.tokens(B, T + 1)
        pm.train()
        if self.args.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        for s in range(warmup + steps):
            if s == warmup:
                self.sync()
                t0 = time.perf_counter()
            with self.autocast():
                logits = pm(input_ids=x[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del logits, loss
        self.sync()
        secs = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if self.args.device == "cuda" else 0
        pm.unload() if hasattr(pm, "unload") else None
        del opt, params, pm
        self.model = None
        if self.args.device == "cuda":
            torch.cuda.empty_cache()
        return {"tokens": B * T * steps, "seconds": secs, "tokens_per_s": B * T * steps / secs,
                "peak_gpu_bytes": peak}


# ------------------------------------------------------------------------------ the run


def gpu_name(device):
    if device != "cuda":
        return "cpu (plumbing run)"
    try:
        import torch
        return torch.cuda.get_device_name(0)
    except Exception:
        pass
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=30)
        return r.stdout.strip().splitlines()[0] if r.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def fmt(x, digits=0):
    if x is None:
        return NM
    if isinstance(x, str):
        return x
    return f"{x:,.{digits}f}"


def gib(b):
    return f"{b / (1 << 30):.2f} GiB" if b else NM


def render(res, args, cnt, peak, ks, sbs, name, cfg):
    """The markdown table and a one-line summary of what res holds so far."""
    C, T_ = res["celeriac"], res["torch"]

    def tps(d, key):
        v = d.get(key)
        return v.get("tokens_per_s") if isinstance(v, dict) and "error" not in v else None

    def err(d, key):
        v = d.get(key)
        return f"error: {v['error']}"[:60] if isinstance(v, dict) and "error" in v else None

    def mfu(x, kind):
        return f"{100 * x * cnt[kind] / peak:.1f}%" if x and peak else NM

    rows = []
    ct, tt = tps(C, "train"), tps(T_, "train")
    rows.append((f"LoRA r{args.rank} train, B={args.batch} T={args.seq} (tokens/s)",
                 err(C, "train") or fmt(ct), err(T_, "train") or fmt(tt),
                 f"{ct / tt:.2f}" if ct and tt else ""))
    rows.append(("  MFU (6N + attention)", mfu(ct, "flops_6n"), mfu(tt, "flops_6n"), ""))
    rows.append(("  MFU (LoRA: 4N + attention)", mfu(ct, "flops_lora"), mfu(tt, "flops_lora"), ""))
    for b in sbs:
        cs, ts = tps(C, f"score{b}"), tps(T_, f"score{b}")
        rows.append((f"score, batch {b} x {args.score_seq} (tokens/s)", err(C, f"score{b}") or fmt(cs),
                     err(T_, f"score{b}") or fmt(ts), f"{cs / ts:.2f}" if cs and ts else ""))
    for b in sbs:
        cs, ts = tps(C, f"sample{b}"), tps(T_, f"sample{b}")
        rows.append((f"greedy sample, batch {b}, {args.sample_prompt}+{args.max_tokens} (new tokens/s)",
                     err(C, f"sample{b}") or fmt(cs), err(T_, f"sample{b}") or fmt(ts),
                     f"{cs / ts:.2f}" if cs and ts else ""))
    cpk = C.get("train", {}).get("peak_gpu_bytes") if isinstance(C.get("train"), dict) else None
    tpk = T_.get("train", {}).get("peak_gpu_bytes") if isinstance(T_.get("train"), dict) else None
    rows.append((f"peak GPU memory, 1 adapter (train B={args.batch} T={args.seq})", gib(cpk), gib(tpk), ""))
    kmax = max(ks)
    pb = C.get(f"multi{kmax}b", {}).get("peak_gpu_bytes") if isinstance(C.get(f"multi{kmax}b"), dict) else None
    ps = C.get(f"multi{kmax}s", {}).get("peak_gpu_bytes") if isinstance(C.get(f"multi{kmax}s"), dict) else None
    rows.append((f"peak GPU memory, {kmax} adapters (packed / sequential)",
                 f"{gib(pb)} / {gib(ps)}", "not run", ""))
    lines = [f"GPU: {name}; model {cnt['n_params'] / 1e9:.2f}B params (hidden {cfg['hidden_size']}, "
             f"{cfg['num_hidden_layers']} layers, {cfg['num_attention_heads']}/{cfg['num_key_value_heads']} "
             f"heads, intermediate {cfg['intermediate_size']}, vocab {cfg['vocab_size']}), bf16; "
             f"peak {peak / 1e12:.0f} TFLOP/s" if peak else f"GPU: {name}; peak FLOP/s unknown",
             "", "| metric | celeriac | PyTorch + PEFT | ratio c/t |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", f"Adapters training at once (each B={args.multi_batch} x T={args.multi_seq} per step; "
                  "aggregate tokens/s):", "",
              "| adapters | celeriac packed | celeriac one after another | packed / sequential | peak GPU memory packed |",
              "| --- | --- | --- | --- | --- |"]
    for k in ks:
        pbv, psv = tps(C, f"multi{k}b"), tps(C, f"multi{k}s")
        m = C.get(f"multi{k}b")
        lines.append(f"| {k} | {err(C, f'multi{k}b') or fmt(pbv)} | {err(C, f'multi{k}s') or fmt(psv)} | "
                     f"{f'{pbv / psv:.2f}' if pbv and psv else ''} | "
                     f"{gib(m.get('peak_gpu_bytes')) if isinstance(m, dict) else NM} |")
    if res["missing"]:
        lines += ["", "Not measured: " + "; ".join(res["missing"])]
    table = "\n".join(lines)
    bits = []
    if ct or tt:
        bits.append(f"train {fmt(ct)} vs torch {fmt(tt)} tok/s (MFU {mfu(ct, 'flops_6n')} vs {mfu(tt, 'flops_6n')})")
    if tps(C, f"multi{kmax}b") and tps(C, f"multi{kmax}s"):
        bits.append(f"{kmax} adapters packed/seq {tps(C, f'multi{kmax}b') / tps(C, f'multi{kmax}s'):.2f}x")
    b = max(sbs)
    if tps(C, f"sample{b}") or tps(T_, f"sample{b}"):
        bits.append(f"sample b{b} {fmt(tps(C, f'sample{b}'))} vs {fmt(tps(T_, f'sample{b}'))}")
    if pb:
        bits.append(f"mem {kmax}ad {gib(pb)}")
    return table, "; ".join(bits)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=None, help="16 (quick: 4)")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=None, help="timed steps (10; quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps (3; quick 1)")
    ap.add_argument("--adapters", default=None, help="adapter counts (1,2,4,8,16; quick 1,4,16)")
    ap.add_argument("--multi-batch", type=int, default=2)
    ap.add_argument("--multi-seq", type=int, default=512)
    ap.add_argument("--score-seq", type=int, default=512)
    ap.add_argument("--sample-prompt", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=None, help="sampled tokens (128; quick 32)")
    ap.add_argument("--sample-batches", default="1,32")
    ap.add_argument("--peak-flops", type=float, default=None)
    ap.add_argument("--bin-dir", default=None)
    ap.add_argument("--run-timeout", type=int, default=300, help="seconds per celeriac-lm run")
    ap.add_argument("--deadline", type=float, default=None,
                    help="start no measurement after this many seconds")
    ap.add_argument("--skip-torch", action="store_true")
    ap.add_argument("--skip-celeriac", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    q = args.quick
    if args.device == "cpu":  # plumbing only: a tiny shape
        args.hidden, args.heads, args.kv_heads, args.intermediate = 128, 4, 2, 344
        args.vocab, args.batch, args.seq, args.multi_batch, args.multi_seq = 2048, 2, 32, 1, 32
        args.score_seq, args.sample_prompt = 32, 8
        args.layers = args.layers or 2
        args.sample_batches = "1,4"
        q = True
    args.layers = args.layers or (4 if q else 16)
    args.steps = args.steps or (3 if q else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.max_tokens = args.max_tokens or (32 if q else 128)
    ks = [int(k) for k in (args.adapters or ("1,4,16" if q else "1,2,4,8,16")).split(",")]
    if args.device == "cpu":
        ks = [1, 2]
    sbs = [int(b) for b in args.sample_batches.split(",")]

    def time_left(reserve=0.0):
        return args.deadline is None or time.monotonic() - T_START < args.deadline - reserve

    cfg = shape_of(args)
    cnt = counts(cfg, args.rank, args.seq)
    name = gpu_name(args.device)
    if name is None:
        say("gpu.py: no GPU visible (torch.cuda and nvidia-smi see none); --device cpu runs the "
            "plumbing only")
        return 1
    peak = args.peak_flops or next((v for k, v in PEAK.items() if k in name), None)
    say(f"GPU: {name}; model: {cnt['n_params'] / 1e9:.3f}B params ({json.dumps(cfg)})")
    work = tempfile.mkdtemp(prefix="celeriac-bench-gpu-")
    mdir = os.path.join(work, "model")
    t0 = time.monotonic()
    try:
        import torch
        bdev = "cuda" if args.device == "cuda" and torch.cuda.is_available() else "cpu"
        build_model(mdir, cfg, bdev)
        if bdev == "cuda":
            torch.cuda.empty_cache()
    except Exception as e:
        say(f"gpu.py: cannot build the model: {type(e).__name__}: {e}")
        return 1
    say(f"model written to {mdir} in {time.monotonic() - t0:.0f}s")

    res = {"gpu": name, "config": cfg, "counts": cnt, "peak_flops": peak, "args": vars(args),
           "celeriac": {}, "torch": {}, "missing": []}
    cel = Celeriac(args, mdir)
    if cel.missing:
        res["missing"].append(cel.missing)
    tor = Torch(args, mdir)
    if tor.missing:
        res["missing"].append(tor.missing)
    C, T_ = res["celeriac"], res["torch"]
    do_cel = not args.skip_celeriac and not cel.missing
    do_tor = not args.skip_torch and not tor.missing
    common = dict(rank=args.rank, steps=args.steps, warmup=args.warmup)
    ctx = dict(args=args, cnt=cnt, peak=peak, ks=ks, sbs=sbs, name=name, cfg=cfg)

    def put(d, key, val):
        """Records one measurement and rewrites --json, so a killed run still leaves figures."""
        d[key] = val
        res["table"], res["summary"] = render(res, **ctx)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(res, partial=True), f, indent=1)

    # the torch side, when it runs, keeps this much of a --deadline for itself
    keep = (60 if q else 150) if do_tor else 0

    # celeriac first, while this process holds no GPU memory
    if do_cel:
        if time_left(keep):
            put(C, "train", cel.run("train", adapters=1, batch=args.batch, seq=args.seq, **common))
        for k in ks:
            for seqn in (False, True):
                key = f"multi{k}{'s' if seqn else 'b'}"
                if time_left(keep):
                    put(C, key, cel.run("train", adapters=k, batch=args.multi_batch,
                                        seq=args.multi_seq, sequential=seqn, **common))
        for b in sbs:
            if time_left(keep):
                put(C, f"score{b}", cel.run("score", adapters=0, batch=b, seq=args.score_seq,
                                            **common))
            if time_left(keep):
                put(C, f"sample{b}", cel.run("sample", adapters=0, batch=b, seq=args.sample_prompt,
                                             max_tokens=args.max_tokens, steps=1, warmup=1,
                                             rank=args.rank))
    if do_tor:
        try:
            if time_left():
                put(T_, "train", tor.train(args.batch, args.seq, args.steps, args.warmup, args.rank))
                say(f"torch train: {T_['train']}")
            for b in sbs:
                if time_left():
                    put(T_, f"score{b}", tor.score(b, args.score_seq, args.steps, args.warmup))
                    say(f"torch score batch {b}: {T_[f'score{b}']}")
                if time_left():
                    put(T_, f"sample{b}", tor.sample(b, args.sample_prompt, args.max_tokens, 1, 1))
                    say(f"torch sample batch {b}: {T_[f'sample{b}']}")
        except Exception as e:
            import traceback
            traceback.print_exc()
            res["missing"].append(f"torch run failed: {type(e).__name__}: {e}"[:200])

    res["celeriac_measured"] = any(isinstance(v, dict) and "error" not in v for v in C.values())
    table, res["summary"] = render(res, **ctx)
    res["table"] = table
    say("\n" + table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    if args.md:
        with open(args.md, "w") as f:
            f.write(table + "\n")
    if args.keep:
        say(f"model kept in {mdir}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
