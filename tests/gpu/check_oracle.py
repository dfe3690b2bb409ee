"""check_oracle.py -- checks c and g of tests/gpu/check.py: CPU against CUDA on two small Llamas.

c: two random Llamas with odd sizes (bf16 weights, so both devices start from the same values)
and a PEFT adapter each go through the oracle helper (build/oracle/model_oracle_helper) with
"device": "cpu" and with the device under test; logits, target log-probs, losses, every LoRA
gradient, the grad norm, the adapter and AdamW moments after three steps and scores must agree
within gpucommon's bf16 tolerances; greedy samples are reported. g: the helper's packed
multi-adapter pass against one adapter at a time ("compare_batched"). The helper comes from
ctx["helper"] when set (tests/cuda-emu/run.py) or the bundle; ctx["bin_env"] is the
environment it runs in (CELERIAC_CUDA_LIB selects the backend).
"""
import json
import math
import os
import re
import shutil
import subprocess

from gpucommon import (ADAMW, GPU, MODS, PATHS, STEPS, TOL_GRADS, TOL_LOGITS, TOL_UPDATE, TOL_V,
                       TOL_WEIGHTS, Fail, Missing, Tally, cmp, load_st, log, run_bin)


ORACLE_CFGS = {
    # C = NH * HS, untied head, one KV head
    "A": dict(vocab_size=997, hidden_size=320, intermediate_size=600, num_hidden_layers=2,
              num_attention_heads=5, num_key_value_heads=1, head_dim=64, rms_norm_eps=1e-5,
              rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=False),
    # head_dim 64 with C = 200 (q_proj 256 x 200), tied head, Llama 3 rope theta
    "B": dict(vocab_size=1009, hidden_size=200, intermediate_size=536, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=64, rms_norm_eps=1e-5,
              rope_theta=500000.0, max_position_embeddings=128, tie_word_embeddings=True),
}


ORACLE_LORA = {"A": (8, 16.0, MODS), "B": (5, 10.0, ["q_proj", "v_proj", "o_proj", "down_proj"])}


def linear_dims(cfg):
    C, I = cfg["hidden_size"], cfg["intermediate_size"]
    HS = cfg.get("head_dim") or C // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * HS, cfg["num_key_value_heads"] * HS
    return {"q_proj": (q, C), "k_proj": (kv, C), "v_proj": (kv, C), "o_proj": (C, q),
            "gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}


def write_config(d, cfg, **extra):
    c = dict(cfg, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu",
             attention_bias=False, mlp_bias=False, bos_token_id=0, eos_token_id=1,
             initializer_range=0.02, **extra)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(c, f, indent=1)


def make_model(d, cfg, seed):
    """A random Llama with bf16 weights (so CPU, CUDA and torch all start from the same values)."""
    import torch
    import st_pywrite
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    V, C, L = cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"]
    # scales keep the logits' spread near a trained model's (a few units), tied or not
    emb = 0.15 if cfg["tie_word_embeddings"] else 0.5
    W = {"model.embed_tokens.weight": torch.randn(V, C, generator=g) * emb,
         "model.norm.weight": 1 + 0.1 * torch.randn(C, generator=g)}
    for l in range(L):
        W[f"model.layers.{l}.input_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        W[f"model.layers.{l}.post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(C, generator=g)
        for m, (o, i) in linear_dims(cfg).items():
            W[f"model.layers.{l}.{PATHS[m]}.weight"] = torch.randn(o, i, generator=g) / math.sqrt(i)
    if not cfg["tie_word_embeddings"]:
        W["lm_head.weight"] = torch.randn(V, C, generator=g) * 0.1
    W = {k: v.to(torch.bfloat16) for k, v in W.items()}
    st_pywrite.save(os.path.join(d, "model.safetensors"), W, {"format": "pt"})
    write_config(d, cfg, torch_dtype="bfloat16")


def make_adapter(d, cfg, rank, alpha, targets, seed):
    """A PEFT folder with nonzero A and B (so every gradient is exercised), fp32."""
    import torch
    import st_pywrite
    os.makedirs(d, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    T = {}
    for l in range(cfg["num_hidden_layers"]):
        for m in targets:
            o, i = linear_dims(cfg)[m]
            pre = f"base_model.model.model.layers.{l}.{PATHS[m]}"
            T[pre + ".lora_A.weight"] = torch.randn(rank, i, generator=g) / math.sqrt(i)
            T[pre + ".lora_B.weight"] = torch.randn(o, rank, generator=g) * 0.05
    st_pywrite.save(os.path.join(d, "adapter_model.safetensors"), T, {"format": "pt"})
    with open(os.path.join(d, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": targets,
                   "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "bias": "none",
                   "fan_in_fan_out": False, "base_model_name_or_path": None}, f)


def make_batch(g, V, B, T, lens, weighted):
    import torch
    tokens = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    for i, n in enumerate(lens or []):
        tokens[i, n:] = 0
        targets[i, n:] = 0
    weights = None
    if weighted:
        w = torch.rand(B, T, generator=g) * 2
        w[w < 0.4] = 0.0
        weights = [float(x) for x in w.flatten()]
    return dict(B=B, T=T, tokens=tokens.flatten().tolist(), targets=targets.flatten().tolist(),
                weights=weights, lens=lens)


def valid_mask(b):
    import torch
    v = torch.zeros(b["B"], b["T"])
    for i, n in enumerate(b["lens"] or [b["T"]] * b["B"]):
        v[i, :n] = 1
    return v


def helper_path(ctx):
    """ctx["helper"] when given (a build here), else the bundle's."""
    return ctx.get("helper") or os.path.join(GPU, "build", "oracle", "model_oracle_helper")


def run_helper(ctx, spec, logf, timeout=None):
    """Runs the helper on spec (written beside spec["out"]); returns result.json or raises.
    The time limit is ctx["helper_timeout"] (120 s when absent) unless given."""
    timeout = timeout or ctx.get("helper_timeout", 120)
    os.makedirs(spec["out"], exist_ok=True)
    path = spec["out"].rstrip("/") + ".spec.json"
    with open(path, "w") as f:
        json.dump(spec, f)
    exe = helper_path(ctx)
    if not os.access(exe, os.X_OK):
        raise Missing("build/oracle/model_oracle_helper is not in the bundle")
    try:
        r = run_bin(ctx, [exe, path], timeout, logf)
    except subprocess.TimeoutExpired:
        raise Fail(f"the helper timed out after {timeout}s ({os.path.basename(spec['out'])})")
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or ["(no message)"])[-1][:160]
        if spec.get("device", "cpu") != "cpu" and re.search(r"CUDA|backend|device", r.stderr, re.I):
            raise Fail(f"helper on {spec['device']}: {tail}")
        raise Fail(f"helper failed: {tail}")
    with open(os.path.join(spec["out"], "result.json")) as f:
        return json.load(f)


def prepare_oracle(ctx, dev, logf):
    """Builds the two models, adapters and batches, and runs the helper on cpu and on dev
    (3 AdamW steps), then again on the saved final/ adapters (0 steps: their logits). Cached
    on disk, so c, d and e share it. Returns {cfg: paths and results}."""
    import torch
    root = os.path.join(ctx["work"], "oracle")
    out = {}
    for name, cfg in ORACLE_CFGS.items():
        d = os.path.join(root, name)
        rank, alpha, targets = ORACLE_LORA[name]
        if not os.path.exists(os.path.join(d, "batches.json")):
            make_model(os.path.join(d, "model"), cfg, seed=11 if name == "A" else 12)
            make_adapter(os.path.join(d, "adapter"), cfg, rank, alpha, targets, seed=21)
            g = torch.Generator().manual_seed(31)
            V = cfg["vocab_size"]
            batches = [make_batch(g, V, 3, 37, [37, 20, 5], True), make_batch(g, V, 2, 23, None, False)]
            score = [torch.randint(0, V, (41,), generator=g).tolist()]
            with open(os.path.join(d, "batches.json"), "w") as f:
                json.dump({"batches": batches, "score": score}, f)
        with open(os.path.join(d, "batches.json")) as f:
            bs = json.load(f)
        res = {"dir": d, "cfg": cfg, "rank": rank, "alpha": alpha, "targets": targets, **bs}
        for label, device in (("cpu", "cpu"), ("dev", dev)):
            o = os.path.join(d, label)
            if not os.path.exists(os.path.join(o, "result.json")):
                run_helper(ctx, dict(model=os.path.join(d, "model"), out=o, device=device,
                                     lora={"load": os.path.join(d, "adapter")},
                                     batches=bs["batches"], adamw=ADAMW, steps=STEPS,
                                     score=bs["score"],
                                     sample=dict(prompts=[[5, 17, 3], [40, 2, 2, 9, 11, 60, 1], [88]],
                                                 max_tokens=8, temperature=0, top_k=0, top_p=1,
                                                 seed=7)), logf)
            ro = os.path.join(d, label + "-reload")
            if not os.path.exists(os.path.join(ro, "result.json")):
                run_helper(ctx, dict(model=os.path.join(d, "model"), out=ro, device=device,
                                     lora={"load": os.path.join(o, "final")},
                                     batches=bs["batches"], adamw=ADAMW, steps=0), logf)
            with open(os.path.join(o, "result.json")) as f:
                res[label] = json.load(f)
        out[name] = res
    return out


def child_c(ctx, dev, logf):
    import torch
    data = prepare_oracle(ctx, dev, logf)
    tally = Tally()
    notes = []
    for name, res in data.items():
        d = res["dir"]
        log(f"== model {name}: {json.dumps(res['cfg'])}")
        cpu_r, dev_r = res["cpu"], res["dev"]
        if "device" in dev_r:
            notes.append(f"{name} ran on {str(dev_r['device']).split(' (')[0]}")
        fc = load_st(os.path.join(d, "cpu", "forward.safetensors"))
        fd = load_st(os.path.join(d, "dev", "forward.safetensors"))
        if dev != "cpu" and all(torch.equal(fc[k], fd[k]) for k in fc):
            raise Missing('the helper\'s "device" key: its cuda run gave results bit-identical '
                          'to the CPU run')
        for i, b in enumerate(res["batches"]):
            v = valid_mask(b)
            k = f"logits_{i}"
            tally.add("logits", f"{name}.{k}", cmp(f"{name} {k}", fd[k], fc[k], TOL_LOGITS, v[..., None])[0], TOL_LOGITS)
            k = f"logprobs_{i}"
            tally.add("logits", f"{name}.{k}", cmp(f"{name} {k}", fd[k], fc[k], TOL_LOGITS, v)[0], TOL_LOGITS)
        for key in ("forward_loss", "loss"):
            ref = torch.tensor(cpu_r[key], dtype=torch.float64)
            tally.add("loss", f"{name}.{key}", cmp(f"{name} {key}", dev_r[key], ref, TOL_LOGITS)[0], TOL_LOGITS)
        tally.add("grads", f"{name}.grad_norm", cmp(f"{name} grad_norm", dev_r["grad_norm"],
                                                     torch.tensor(cpu_r["grad_norm"]), TOL_GRADS)[0], TOL_GRADS)
        gc = load_st(os.path.join(d, "cpu", "grads.safetensors"))
        gd = load_st(os.path.join(d, "dev", "grads.safetensors"))
        if set(gc) != set(gd):
            raise Fail(f"{name}: gradient names differ: {sorted(set(gc) ^ set(gd))[:4]}")
        for k in sorted(gc):
            tally.add("grads", f"{name}.{k}", cmp(f"{name} grad {k}", gd[k], gc[k], TOL_GRADS)[0], TOL_GRADS)
        w0 = load_st(os.path.join(d, "adapter", "adapter_model.safetensors"))
        wc = load_st(os.path.join(d, "cpu", "final", "adapter_model.safetensors"))
        wd = load_st(os.path.join(d, "dev", "final", "adapter_model.safetensors"))
        for k in sorted(wc):
            r, _ = cmp(f"{name} weight {k}", wd[k], wc[k], TOL_WEIGHTS, floor=1.0)
            tally.add("weights", f"{name}.{k}", r, TOL_WEIGHTS)
            du, dc = wd[k] - w0[k], wc[k] - w0[k]
            upd = float((du - dc).norm() / max(float(dc.norm()), 1e-30))
            log(f"  {name} update {k}: ||du - dc|| / ||dc|| = {upd:.3g} (tol {TOL_UPDATE})")
            tally.add("update", f"{name}.{k}", upd, TOL_UPDATE)
        oc_p = os.path.join(d, "cpu", "final", "optimizer.safetensors")
        od_p = os.path.join(d, "dev", "final", "optimizer.safetensors")
        if os.path.exists(oc_p) and os.path.exists(od_p):
            oc, od = load_st(oc_p), load_st(od_p)
            for k in sorted(oc):
                tol = TOL_V if k.endswith("exp_avg_sq") else TOL_GRADS
                if k in od:
                    tally.add("adamw", f"{name}.{k}", cmp(f"{name} {k}", od[k], oc[k], tol)[0], tol)
                else:
                    tally.fails.append(f"{name}: {k} missing from the device run's optimizer state")
        for j, (sc, sd) in enumerate(zip(cpu_r.get("score", []), dev_r.get("score", []))):
            tally.add("logits", f"{name}.score{j}", cmp(f"{name} score {j}", sd["token_logprobs"],
                                                        torch.tensor(sc["token_logprobs"]), TOL_LOGITS)[0], TOL_LOGITS)
        same = tot = 0
        for pc, pd in zip(cpu_r.get("sample", []), dev_r.get("sample", [])):
            tot += len(pc)
            for x, y in zip(pc, pd):
                if x != y:
                    break
                same += 1
        log(f"  {name} greedy samples: {same}/{tot} tokens agree before the first divergence")
        notes.append(f"{name} greedy {same}/{tot}")
    summary = (f"{tally.n} compared: " + tally.line(["logits", "loss", "grads", "adamw", "weights", "update"])
               + (" | " + "; ".join(notes) if notes else ""))
    if tally.fails:
        raise Fail(f"{len(tally.fails)} over tolerance: " + "; ".join(tally.fails[:4]) + " | " + summary)
    return summary


def child_g(ctx, dev, logf):
    import torch
    root = os.path.join(ctx["work"], "batched")
    cfg = ORACLE_CFGS["A"]
    if not os.path.exists(os.path.join(root, "model")):
        make_model(os.path.join(root, "model"), cfg, seed=41)
        make_adapter(os.path.join(root, "a0"), cfg, 8, 16.0, MODS, seed=42)
    g = torch.Generator().manual_seed(45)
    V = cfg["vocab_size"]
    batches = [make_batch(g, V, 2, 37, [37, 19], True), make_batch(g, V, 3, 23, None, False),
               make_batch(g, V, 1, 11, [11], True)]
    devices = ["cpu"] if dev == "cpu" else [dev, "cpu"]
    parts = []
    for device in devices:
        out = os.path.join(root, f"out-{device}")
        shutil.rmtree(out, ignore_errors=True)
        # the helper gives each batch a fresh adapter of its own (ranks 2, 4, 6), runs them
        # one at a time and then packed (cel_model_run_jobs); it needs "lora" to do so
        run_helper(ctx, dict(model=os.path.join(root, "model"), out=out, device=device,
                             compare_batched=True, lora={"load": os.path.join(root, "a0")},
                             batches=batches, adamw=ADAMW, steps=1), logf)
        p = os.path.join(out, "batched.json")
        if not os.path.exists(p):
            raise Missing('the helper\'s "compare_batched" key (no out/batched.json written)')
        with open(p) as f:
            bj = json.load(f)
        log(f"  {device}: {json.dumps(bj)}")
        diffs = bj.get("max_abs_diff", {})
        txt = ", ".join(f"{k} {v:.2g}" for k, v in diffs.items() if isinstance(v, (int, float)))
        if isinstance(bj.get("tolerance"), (int, float)):
            txt += f"; tol {bj['tolerance']:g}"
        if bj.get("ok") is not True:
            raise Fail(f"{device}: batched.json ok={bj.get('ok')} ({txt})")
        parts.append(f"{device} ok ({txt})")
    return "; ".join(parts)
