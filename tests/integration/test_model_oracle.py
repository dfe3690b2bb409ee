"""test_model_oracle.py -- the model engine against PyTorch (python3-torch, CPU) as oracle.

A small random Llama (V=97, C=32, L=2, NH=4, NKV=2, I=64) is built here in plain torch
following HF's LlamaModel (RMSNorm, rotate_half RoPE, repeat_kv GQA, SwiGLU, tied or
untied head), saved as safetensors with a hand-written writer, and run through
tests/unit/model_oracle_helper.c. Compared per tensor, with the worst element printed:
logits and target log-probs (with padding and per-token weights), the weighted loss,
EVERY LoRA gradient (A and B of every target module, gradients accumulated over two
batches), the adapter and its AdamW moments after three steps of torch.optim.AdamW,
full-parameter gradients and weights after three steps, scoring, and greedy sampling
through the KV cache against full recomputation.

Tolerances (fp32 throughout): logits/log-probs/loss 1e-4 abs + 1e-4 rel; gradients,
weights and AdamW moments 1e-3 rel of the element + 1e-4 x max(1, max |tensor|) abs
(the largest LoRA gradients here are ~9, and torch's own fp32 result differs from a
float64 run by up to 4e-4 on them: C's error measured the same way is of the same size).
AdamW eps is 1e-6 so that float-noise-sized gradients cannot flip an update's sign.

The helper is the Makefile's build/oracle/model_oracle_helper (made here if missing);
CEL_ORACLE_ASAN=1 takes build/asan/oracle/model_oracle_helper (AddressSanitizer + UBSan).
Run: /usr/bin/python3 -m pytest -q tests/integration/test_model_oracle.py
"""
import json
import math
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "unit"))
import st_pywrite  # noqa: E402

MODS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PATHS = {m: ("self_attn." if m in MODS[:4] else "mlp.") + m for m in MODS}

torch.set_num_threads(1)


# ---------------------------------------------------------------- building the helper

@pytest.fixture(scope="module")
def helper():
    target = ("build/asan/oracle/model_oracle_helper" if os.environ.get("CEL_ORACLE_ASAN")
              else "build/oracle/model_oracle_helper")
    r = subprocess.run(["make", "--no-print-directory", "-s", target], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, f"make {target} failed:\n{r.stdout}{r.stderr}"
    return os.path.join(REPO, target)


# ---------------------------------------------------------------- the reference model

CFG = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
           num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5, rope_theta=10000.0,
           max_position_embeddings=64)


def make_weights(cfg, tied, seed):
    g = torch.Generator().manual_seed(seed)
    V, C, I, L = cfg["vocab_size"], cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    NH, NKV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    HS = C // NH
    W = {"model.embed_tokens.weight": torch.randn(V, C, generator=g) * 0.5,
         "model.norm.weight": 1 + 0.1 * torch.randn(C, generator=g)}
    dims = {"q_proj": (NH * HS, C), "k_proj": (NKV * HS, C), "v_proj": (NKV * HS, C),
            "o_proj": (C, NH * HS), "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}
    for l in range(L):
        W[f"model.layers.{l}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        W[f"model.layers.{l}.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        for m in MODS:
            o, i = dims[m]
            W[f"model.layers.{l}.{PATHS[m]}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
    if not tied:
        W["lm_head.weight"] = torch.randn(V, C, generator=g) * 0.2
    return W, dims


def rmsnorm(x, w, eps):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def bf16_round(t):
    return t.to(torch.bfloat16).to(torch.float32)


class BF16Product(torch.autograd.Function):
    """x @ w^T with x and the frozen w rounded to bf16 and fp32 sums, and its input
    gradient rounded the same way: what --precision bf16 computes for a base weight."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(w)
        return bf16_round(x) @ bf16_round(w).T

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        return bf16_round(g) @ bf16_round(w), None


def llama_forward(cfg, W, tokens, lora=None, scaling=1.0, bf16=False):
    """HF LlamaForCausalLM.forward (eager attention), fp32. tokens (B,T) -> logits (B,T,V).
    bf16: the base weights' products as BF16Product (the engine's bf16 precision)."""
    B, T = tokens.shape
    C, L = cfg["hidden_size"], cfg["num_hidden_layers"]
    NH, NKV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    HS, eps = C // NH, cfg["rms_norm_eps"]
    inv_freq = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, HS, 2).float() / HS))
    freqs = torch.outer(torch.arange(T).float(), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    mask = torch.full((T, T), float("-inf")).triu(1)

    def lin(x, l, m):
        w = W[f"model.layers.{l}.{PATHS[m]}.weight"]
        y = BF16Product.apply(x, w) if bf16 else x @ w.T
        if lora is not None and (l, m) in lora:
            A, Bm = lora[(l, m)]
            y = y + scaling * ((x @ A.T) @ Bm.T)
        return y

    x = W["model.embed_tokens.weight"][tokens]
    for l in range(L):
        h = rmsnorm(x, W[f"model.layers.{l}.input_layernorm.weight"], eps)
        q = lin(h, l, "q_proj").view(B, T, NH, HS).transpose(1, 2)
        k = lin(h, l, "k_proj").view(B, T, NKV, HS).transpose(1, 2)
        v = lin(h, l, "v_proj").view(B, T, NKV, HS).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(NH // NKV, dim=1)
        v = v.repeat_interleave(NH // NKV, dim=1)
        att = torch.softmax(q @ k.transpose(2, 3) / math.sqrt(HS) + mask, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, NH * HS)
        x = x + lin(y, l, "o_proj")
        h = rmsnorm(x, W[f"model.layers.{l}.post_attention_layernorm.weight"], eps)
        x = x + lin(F.silu(lin(h, l, "gate_proj")) * lin(h, l, "up_proj"), l, "down_proj")
    x = rmsnorm(x, W["model.norm.weight"], eps)
    head = W.get("lm_head.weight", W["model.embed_tokens.weight"])
    return BF16Product.apply(x, head) if bf16 else x @ head.T


def batch_loss(cfg, W, b, lora=None, scaling=1.0, bf16=False):
    """Tinker cross-entropy: -sum(weights * logp(target)) over valid slots; also logits, logp."""
    tok = torch.tensor(b["tokens"]).view(b["B"], b["T"])
    tgt = torch.tensor(b["targets"]).view(b["B"], b["T"])
    logits = llama_forward(cfg, W, tok, lora, scaling, bf16)
    logp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
    valid = torch.zeros(b["B"], b["T"])
    for i, n in enumerate(b["lens"] or [b["T"]] * b["B"]):
        valid[i, :n] = 1
    w = torch.tensor(b["weights"]).view(b["B"], b["T"]) if b["weights"] else torch.ones(b["B"], b["T"])
    return -(w * valid * logp).sum(), logits, logp, valid


def make_batch(g, V, B, T, lens, weighted):
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    for i, n in enumerate(lens or []):  # padding slots hold junk the engine must ignore
        tokens[i, n:] = 0
        targets[i, n:] = 0
    weights = None
    if weighted:
        w = torch.rand(B, T, generator=g) * 2
        w[w < 0.4] = 0.0  # some zero-weight (prompt) tokens
        weights = [float(x) for x in w.flatten()]
    return dict(B=B, T=T, tokens=tokens.flatten().tolist(), targets=targets.flatten().tolist(),
                weights=weights, lens=lens)


def save_model(d, cfg, W, tied):
    os.makedirs(d, exist_ok=True)
    c = dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
             tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f)
    st_pywrite.save(os.path.join(d, "model.safetensors"), W, {"format": "pt"})


def save_adapter(d, lora, r, alpha, targets):
    os.makedirs(d, exist_ok=True)
    T = {}
    for (l, m), (A, Bm) in lora.items():
        pre = f"base_model.model.model.layers.{l}.{PATHS[m]}"
        T[pre + ".lora_A.weight"] = A
        T[pre + ".lora_B.weight"] = Bm
    st_pywrite.save(os.path.join(d, "adapter_model.safetensors"), T, {"format": "pt"})
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": alpha, "target_modules": targets,
                   "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "bias": "none",
                   "fan_in_fan_out": False, "base_model_name_or_path": "oracle"}, f)


# ---------------------------------------------------------------- comparison

def compare(name, got, want, atol, rtol, mask=None, scaled=False):
    """Fails when any |got - want| > atol + rtol*|want|; prints the worst element. With
    scaled, atol is multiplied by max(1, max|want|) of the tensor (norm-wise error)."""
    got = torch.as_tensor(got, dtype=torch.float32).reshape(want.shape)
    want = want.detach().to(torch.float32)
    err = (got - want).abs()
    if scaled:
        atol = atol * max(1.0, float(want.abs().max()))
    bound = atol + rtol * want.abs()
    if mask is not None:
        err = err * mask
    ratio = err / bound
    i = int(ratio.flatten().argmax())
    worst = (float(err.flatten()[i]), float(got.flatten()[i]), float(want.flatten()[i]))
    print(f"{name}: worst |diff| {worst[0]:.3g} at {i} (celeriac {worst[1]:.7g}, torch {worst[2]:.7g}),"
          f" max abs diff {float(err.max()):.3g}")
    assert float(ratio.max()) <= 1.0, f"{name}: worst element {i}: |{worst[1]} - {worst[2]}| = {worst[0]:.3g}"
    return float(err.max())


def run_helper(helper, tmp, spec):
    path = os.path.join(tmp, "spec.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    r = subprocess.run([helper, path], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with open(os.path.join(spec["out"], "result.json")) as f:
        return json.load(f)


def torch_greedy(cfg, W, prompt, n, lora=None, scaling=1.0):
    toks = list(prompt)
    for _ in range(n):
        logits = llama_forward(cfg, W, torch.tensor([toks]), lora, scaling)
        toks.append(int(logits[0, -1].argmax()))
    return toks[len(prompt):]


ADAMW = dict(lr=1e-2, beta1=0.9, beta2=0.95, eps=1e-6, weight_decay=0.1)
LOGIT_TOL = dict(atol=1e-4, rtol=1e-4)
GRAD_TOL = dict(atol=1e-4, rtol=1e-3, scaled=True)
# AdamW's moments after three steps, norm-wise: the steps' gradients carry the last bits of
# every product before them, and on this ill-conditioned little model those move the moments
# by a few 1e-4 of the tensor's largest value between fp32 summation orders. Against torch in
# float64, torch fp32 itself (and celeriac with OpenBLAS, whose rounding torch shares) is
# ~6e-4 away in exp_avg, celeriac's AVX-512 products (model/cpu/gemm.c) ~4e-4; with GRAD_TOL
# (and 1e-5 for exp_avg_sq) only the run sharing torch's library passed.
MOMENT_TOL = dict(atol=1e-3, rtol=1e-3, scaled=True)


# ---------------------------------------------------------------- tests

@pytest.mark.parametrize("tied,targets,rank,alpha", [
    (True, MODS, 4, 8), (False, ["q_proj", "v_proj", "down_proj"], 3, 16)])
def test_lora_against_torch(helper, tmp_path, tied, targets, rank, alpha):
    tmp = str(tmp_path)
    torch.manual_seed(0)
    cfg = dict(CFG)
    W, dims = make_weights(cfg, tied, seed=1)
    save_model(os.path.join(tmp, "model"), cfg, W, tied)
    g = torch.Generator().manual_seed(2)
    lora = {}
    for l in range(cfg["num_hidden_layers"]):
        for m in targets:
            o, i = dims[m]
            # nonzero B so every gradient (A's too) is exercised
            lora[(l, m)] = (torch.randn(rank, i, generator=g) * 0.3,
                            torch.randn(o, rank, generator=g) * 0.3)
    save_adapter(os.path.join(tmp, "adapter"), lora, rank, alpha, targets)
    scaling = alpha / rank
    batches = [make_batch(g, cfg["vocab_size"], 3, 9, [9, 6, 2], True),
               make_batch(g, cfg["vocab_size"], 1, 5, None, False)]
    score_toks = torch.randint(0, cfg["vocab_size"], (12,), generator=g).tolist()
    prompts = [[5, 17, 3], [40, 2, 2, 9, 11, 60, 1], [88]]
    out = os.path.join(tmp, "out")
    os.makedirs(out)
    res = run_helper(helper, tmp, dict(model=os.path.join(tmp, "model"), out=out,
                                       lora={"load": os.path.join(tmp, "adapter")},
                                       batches=batches, adamw=ADAMW, steps=3,
                                       score=[score_toks], compare_batched=True,
                                       sample=dict(prompts=prompts, max_tokens=6, temperature=0,
                                                   top_k=0, top_p=1, seed=7)))
    assert res["device"] == "cpu"
    # both batches with their own adapters, packed into one pass = each alone
    with open(os.path.join(out, "batched.json")) as f:
        batched = json.load(f)
    assert batched["ok"], batched
    fwd, _ = st_pywrite.load(os.path.join(out, "forward.safetensors"))
    for i, b in enumerate(batches):
        with torch.no_grad():
            loss, logits, logp, valid = batch_loss(cfg, W, b, lora, scaling)
        compare(f"logits_{i}", fwd[f"logits_{i}"], logits, mask=valid[..., None], **LOGIT_TOL)
        compare(f"logprobs_{i}", fwd[f"logprobs_{i}"], logp * valid, **LOGIT_TOL)
        compare(f"loss_{i}", torch.tensor(res["forward_loss"][i]), loss, **LOGIT_TOL)

    # gradients of the summed loss of both batches, every A and B
    params = {k: (A.clone().requires_grad_(), Bm.clone().requires_grad_()) for k, (A, Bm) in lora.items()}
    total = sum(batch_loss(cfg, W, b, params, scaling)[0] for b in batches)
    total.backward()
    compare("step-1 loss", torch.tensor(res["loss"][0]), total.detach(), **LOGIT_TOL)
    grads, _ = st_pywrite.load(os.path.join(out, "grads.safetensors"))
    assert len(grads) == 2 * len(lora)
    worst = 0.0
    for (l, m), (A, Bm) in params.items():
        pre = f"base_model.model.model.layers.{l}.{PATHS[m]}"
        worst = max(worst, compare(pre + ".lora_A grad", grads[pre + ".lora_A.weight"], A.grad, **GRAD_TOL))
        worst = max(worst, compare(pre + ".lora_B grad", grads[pre + ".lora_B.weight"], Bm.grad, **GRAD_TOL))
    print(f"worst LoRA gradient abs diff: {worst:.3g}")
    norm = math.sqrt(sum(float((p.grad ** 2).sum()) for pair in params.values() for p in pair))
    compare("grad norm", torch.tensor(res["grad_norm"][0]), torch.tensor(norm), **GRAD_TOL)

    # three AdamW steps, each on the accumulated gradient of both batches
    flat = [p for pair in params.values() for p in pair]
    opt = torch.optim.AdamW(flat, lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    for s in range(3):
        if s > 0:
            opt.zero_grad()
            total = sum(batch_loss(cfg, W, b, params, scaling)[0] for b in batches)
            compare(f"step-{s + 1} loss", torch.tensor(res["loss"][s]), total.detach(), **LOGIT_TOL)
            total.backward()
        opt.step()
    final, meta = st_pywrite.load(os.path.join(out, "final", "adapter_model.safetensors"))
    optst, ometa = st_pywrite.load(os.path.join(out, "final", "optimizer.safetensors"))
    assert ometa["step"] == "3" and ometa["last_task"] == "task-123"
    for (l, m), (A, Bm) in params.items():
        pre = f"base_model.model.model.layers.{l}.{PATHS[m]}"
        for nm, p in (("lora_A", A), ("lora_B", Bm)):
            key = f"{pre}.{nm}.weight"
            compare(key + " after 3 AdamW steps", final[key], p, **GRAD_TOL)
            st = opt.state[p]
            compare(key + " exp_avg", optst[key + ".exp_avg"], st["exp_avg"], **MOMENT_TOL)
            compare(key + " exp_avg_sq", optst[key + ".exp_avg_sq"], st["exp_avg_sq"],
                    **MOMENT_TOL)
    with open(os.path.join(out, "final", "adapter_config.json")) as f:
        ac = json.load(f)
    assert ac["peft_type"] == "LORA" and ac["r"] == rank and ac["lora_alpha"] == alpha
    assert sorted(ac["target_modules"]) == sorted(targets) and ac["task_type"] == "CAUSAL_LM"

    # scoring and greedy sampling after the steps, under the trained adapter
    trained = {k: (A.detach(), Bm.detach()) for k, (A, Bm) in params.items()}
    with torch.no_grad():
        lg = llama_forward(cfg, W, torch.tensor([score_toks[:-1]]), trained, scaling)
        tl = torch.log_softmax(lg, -1)[0].gather(-1, torch.tensor(score_toks[1:])[:, None])[:, 0]
    sc = res["score"][0]
    compare("score token_logprobs", torch.tensor(sc["token_logprobs"]), tl, **LOGIT_TOL)
    compare("score logprob", torch.tensor(sc["logprob"]), tl.sum(), **LOGIT_TOL)
    assert abs(sc["perplexity"] - math.exp(-float(tl.mean()))) < 1e-3 * sc["perplexity"]
    with torch.no_grad():
        for p, got in zip(prompts, res["sample"]):
            assert got == torch_greedy(cfg, W, p, 6, trained, scaling), (p, got)


def test_full_parameter_against_torch(helper, tmp_path):
    tmp = str(tmp_path)
    cfg = dict(CFG, rope_theta=500000.0)
    W, _ = make_weights(cfg, tied=False, seed=3)
    save_model(os.path.join(tmp, "model"), cfg, W, tied=False)
    g = torch.Generator().manual_seed(4)
    batches = [make_batch(g, cfg["vocab_size"], 2, 8, [8, 4], True),
               make_batch(g, cfg["vocab_size"], 2, 3, None, True)]
    out = os.path.join(tmp, "out")
    os.makedirs(out)
    res = run_helper(helper, tmp, dict(model=os.path.join(tmp, "model"), out=out, batches=batches,
                                       adamw=ADAMW, steps=3))
    P = {k: v.clone().requires_grad_() for k, v in W.items()}
    opt = torch.optim.AdamW(list(P.values()), lr=ADAMW["lr"], betas=(ADAMW["beta1"], ADAMW["beta2"]),
                            eps=ADAMW["eps"], weight_decay=ADAMW["weight_decay"])
    for s in range(3):
        opt.zero_grad()
        total = sum(batch_loss(cfg, P, b)[0] for b in batches)
        compare(f"step-{s + 1} loss", torch.tensor(res["loss"][s]), total.detach(), **LOGIT_TOL)
        total.backward()
        if s == 0:
            grads, _ = st_pywrite.load(os.path.join(out, "grads.safetensors"))
            assert set(grads) == set(P)
            for k, p in P.items():
                compare(k + " grad", grads[k], p.grad, **GRAD_TOL)
        opt.step()
    final, _ = st_pywrite.load(os.path.join(out, "final", "model.safetensors"))
    for k, p in P.items():
        compare(k + " after 3 AdamW steps", final[k], p, **GRAD_TOL)


def test_full_parameter_tied_one_step(helper, tmp_path):
    """Tied head: the embedding's gradient sums the lookup and the head."""
    tmp = str(tmp_path)
    cfg = dict(CFG)
    W, _ = make_weights(cfg, tied=True, seed=5)
    save_model(os.path.join(tmp, "model"), cfg, W, tied=True)
    g = torch.Generator().manual_seed(6)
    batches = [make_batch(g, cfg["vocab_size"], 2, 10, [10, 7], True)]
    out = os.path.join(tmp, "out")
    os.makedirs(out)
    run_helper(helper, tmp, dict(model=os.path.join(tmp, "model"), out=out, batches=batches,
                                 adamw=ADAMW, steps=1))
    P = {k: v.clone().requires_grad_() for k, v in W.items()}
    batch_loss(cfg, P, batches[0])[0].backward()
    grads, _ = st_pywrite.load(os.path.join(out, "grads.safetensors"))
    assert "lm_head.weight" not in grads
    for k, p in P.items():
        compare(k + " grad", grads[k], p.grad, **GRAD_TOL)


def bf16_supported():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512_bf16" in f.read()
    except OSError:
        return False


# --precision bf16 against torch with the same bf16 roundings (BF16Product): what is left is
# fp32 summation order and the rare bf16 rounding it flips, amplified by this deliberately
# sharp model (measured: log-probs 0.009, LoRA gradients 0.13% of the largest). Against
# plain fp32 torch the same run is 0.45 nats and 25% off on this model; printed, not held
# to a bound (the GPU's bf16 is alike).
BF16_LOGIT_TOL = dict(atol=0.05, rtol=0.01)
BF16_GRAD_TOL = dict(atol=1e-2, rtol=0.05, scaled=True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_lora_long_padded_against_torch(helper, tmp_path, precision):
    """Sequences past the attention's 32-row query blocks, with padding: the
    blocked, padding-skipping attention (forward and backward) against torch; and
    the same run with --precision bf16 against torch rounding as the engine does."""
    if precision == "bf16" and not bf16_supported():
        pytest.skip("no AVX512-BF16 on this CPU")
    bf16 = precision == "bf16"
    ltol, gtol = (BF16_LOGIT_TOL, BF16_GRAD_TOL) if bf16 else (LOGIT_TOL, GRAD_TOL)
    tmp = str(tmp_path)
    cfg = dict(CFG)
    W, dims = make_weights(cfg, tied=True, seed=11)
    save_model(os.path.join(tmp, "model"), cfg, W, tied=True)
    g = torch.Generator().manual_seed(12)
    lora = {(l, m): (torch.randn(4, dims[m][1], generator=g) * 0.3,
                     torch.randn(dims[m][0], 4, generator=g) * 0.3)
            for l in range(cfg["num_hidden_layers"]) for m in MODS}
    save_adapter(os.path.join(tmp, "adapter"), lora, 4, 8, MODS)
    batches = [make_batch(g, cfg["vocab_size"], 4, 64, [64, 41, 33, 7], True)]
    out = os.path.join(tmp, "out")
    os.makedirs(out)
    res = run_helper(helper, tmp, dict(model=os.path.join(tmp, "model"), out=out,
                                       lora={"load": os.path.join(tmp, "adapter")},
                                       batches=batches, adamw=ADAMW, steps=1, precision=precision,
                                       threads=2))
    fwd, _ = st_pywrite.load(os.path.join(out, "forward.safetensors"))
    params = {k: (A.clone().requires_grad_(), Bm.clone().requires_grad_()) for k, (A, Bm) in lora.items()}
    if bf16:
        with torch.no_grad():
            _, _, lp32, valid = batch_loss(cfg, W, batches[0], lora, 2.0)
        d = float(((fwd["logprobs_0"].reshape(lp32.shape) - lp32) * valid).abs().max())
        print(f"bf16 vs fp32 torch: log-probs within {d:.3g}")
    loss, logits, logp, valid = batch_loss(cfg, W, batches[0], params, 2.0, bf16)
    compare("logits", fwd["logits_0"], logits.detach(), mask=valid[..., None], **ltol)
    compare("logprobs", fwd["logprobs_0"], (logp * valid).detach(), **ltol)
    compare("loss", torch.tensor(res["forward_loss"][0]), loss.detach(),
            atol=ltol["atol"] * 10, rtol=ltol["rtol"])
    loss.backward()
    grads, _ = st_pywrite.load(os.path.join(out, "grads.safetensors"))
    for (l, m), (A, Bm) in params.items():
        pre = f"base_model.model.model.layers.{l}.{PATHS[m]}"
        compare(pre + ".lora_A grad", grads[pre + ".lora_A.weight"], A.grad, **gtol)
        compare(pre + ".lora_B grad", grads[pre + ".lora_B.weight"], Bm.grad, **gtol)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cli_score_packed_against_torch(precision):
    """`celeriac-lm score` packs its texts into one pass (sorted by length, right-padded):
    texts of 2 to ~230 tokens, each against torch alone and against the CLI scoring it
    alone (bundled model, whose head_dim is hidden / heads as llama_forward assumes);
    with --precision bf16 against torch rounding as the engine does."""
    if precision == "bf16" and not bf16_supported():
        pytest.skip("no AVX512-BF16 on this CPU")
    bf16 = precision == "bf16"
    lm = os.path.join(os.environ.get("CELERIAC_BIN_DIR", os.path.join(REPO, "bin")), "celeriac-lm")
    if not os.access(lm, os.X_OK):
        pytest.skip("bin/celeriac-lm not built")
    mdir = os.path.join(REPO, "model", "tiny")
    with open(os.path.join(mdir, "config.json")) as f:
        cfg = json.load(f)
    hs = cfg["hidden_size"] // cfg["num_attention_heads"]
    assert cfg.get("head_dim", hs) == hs
    W, _ = st_pywrite.load(os.path.join(mdir, "model.safetensors"))
    words = ("the quick brown fox jumps over a lazy dog while seven wise owls count "
             "stars above quiet hills and rivers").split()
    texts = ["Hi"] + [" ".join(words[i % len(words)] for i in range(n)) for n in (9, 30, 47, 120)]
    r = subprocess.run([lm, "score", "--model", mdir, "--threads", "2", "--precision", precision]
                       + texts,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    packed = [json.loads(line) for line in r.stdout.splitlines()]
    assert [p["text"] for p in packed] == texts
    assert max(p["tokens"] for p in packed) > 64  # several attention blocks
    for t, p in zip(texts, packed):
        ids = json.loads(subprocess.run([lm, "tokenize", "--model", mdir, "--bos", t],
                                        capture_output=True, text=True, check=True).stdout)
        assert p["tokens"] == len(ids) - 1
        with torch.no_grad():
            lg = llama_forward(cfg, W, torch.tensor([ids[:-1]]), bf16=bf16)
            tl = torch.log_softmax(lg, -1)[0].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        compare(f"packed score ({p['tokens']} tokens)", torch.tensor(p["token_logprobs"]), tl,
                **(BF16_LOGIT_TOL if bf16 else LOGIT_TOL))
        compare(f"packed logprob ({p['tokens']} tokens)", torch.tensor(p["logprob"]), tl.sum(),
                atol=0.5 if bf16 else 1e-3, rtol=1e-3 if bf16 else 1e-4)
        alone = subprocess.run([lm, "score", "--model", mdir, "--threads", "1", "--precision",
                                precision, t], capture_output=True, text=True, check=True)
        a = json.loads(alone.stdout)
        # bf16: fp32 noise of other shapes flips a rare bf16 rounding, as against torch
        compare(f"packed vs alone ({p['tokens']} tokens)", torch.tensor(p["token_logprobs"]),
                torch.tensor(a["token_logprobs"]),
                **(BF16_LOGIT_TOL if bf16 else dict(atol=2e-5, rtol=1e-5)))
