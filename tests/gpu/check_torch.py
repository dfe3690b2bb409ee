"""check_torch.py -- checks d and e of tests/gpu/check.py: PyTorch + PEFT against celeriac.

d: transformers' LlamaForCausalLM (bf16 weights, sdpa) with a PEFT LoRA of the same adapter
under bf16 autocast, against celeriac on the device: logits and losses (LoRA gradients against
celeriac reported). e: the adapters celeriac saved, loaded with PeftModel.from_pretrained in
fp32: logits against celeriac cpu (tight) and celeriac on the device (bf16 tolerance). Both run
in one process (one torch + transformers import) on check_oracle's models and results.
"""
import json
import os

from check_oracle import prepare_oracle, valid_mask
from gpucommon import (TOL_GRADS, TOL_LOGITS, TOL_PEFT_FP32, TOL_TORCH_BF16, Fail, Missing, Skip,
                       Tally, cmp, load_st, log)


def _hf_imports():
    try:
        import transformers  # noqa: F401
        import peft  # noqa: F401
    except Exception as e:
        raise Skip(f"transformers/peft not importable here ({type(e).__name__}: {e})"[:150])
    return transformers, peft


def _hf_model(model_dir, dtype, device):
    from transformers import LlamaForCausalLM
    try:
        m = LlamaForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    except TypeError:
        m = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation="sdpa")
    if next(m.parameters()).dtype != dtype:  # a transformers that ignored dtype=
        m = m.to(dtype)
    for p in m.parameters():
        p.requires_grad_(False)
    # transformers 5 reads config.json's rope_theta into rope_parameters; say if it did not
    with open(os.path.join(model_dir, "config.json")) as f:
        want = json.load(f)["rope_theta"]
    rp = getattr(m.config, "rope_parameters", None) or {}
    got = rp.get("rope_theta") if isinstance(rp, dict) else None
    got = got if got is not None else getattr(m.config, "rope_theta", None)
    if got is not None and abs(float(got) - want) > 1e-6 * want:
        raise Fail(f"transformers read rope_theta {got}, config.json says {want}")
    return m.to(device).eval() if device != "cpu" else m.eval()


def _exact_fp32():
    """No TF32 in fp32 matmuls (the default). Only the legacy setter: torch >= 2.9 raises when
    code reads the legacy flags after the new fp32_precision API was written."""
    import torch
    try:
        torch.set_float32_matmul_precision("highest")
    except Exception as e:
        log(f"  (set_float32_matmul_precision: {e})")


def _loss_from_logits(logits, b):
    import torch
    tgt = torch.tensor(b["targets"]).view(b["B"], b["T"]).to(logits.device)
    logp = torch.log_softmax(logits.float(), -1).gather(-1, tgt[..., None])[..., 0].cpu()
    v = valid_mask(b)
    w = torch.tensor(b["weights"]).view(b["B"], b["T"]) if b["weights"] else torch.ones(b["B"], b["T"])
    return float(-(w * v * logp.double()).sum()), logp


def child_de(ctx, dev, logf):
    """d and e in one process (one torch + transformers import). Writes both results."""
    results = {}
    try:
        _hf_imports()
    except Skip as e:
        return {"d": ("skip", str(e)), "e": ("skip", str(e))}
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    device = "cuda" if dev != "cpu" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        msg = "torch sees no CUDA device"
        return {"d": ("FAIL", msg), "e": ("FAIL", msg)}
    _exact_fp32()
    data = prepare_oracle(ctx, dev, logf)
    # ---- d: bf16 base + fp32 LoRA (PEFT) under bf16 autocast, against celeriac on dev
    tally, info = Tally(), []
    try:
        for name, res in data.items():
            d = res["dir"]
            log(f"== d, model {name}")
            model = _hf_model(os.path.join(d, "model"), torch.bfloat16, device)
            pm = get_peft_model(model, LoraConfig(r=res["rank"], lora_alpha=res["alpha"],
                                                  target_modules=res["targets"], lora_dropout=0.0,
                                                  bias="none", task_type="CAUSAL_LM"))
            ad = load_st(os.path.join(d, "adapter", "adapter_model.safetensors"))
            params = dict(pm.named_parameters())
            loaded = 0
            for k, t in ad.items():
                pk = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                    ".lora_B.weight", ".lora_B.default.weight")
                if pk not in params:
                    raise Fail(f"PEFT has no parameter {pk}")
                with torch.no_grad():
                    params[pk].data = t.to(device=device, dtype=torch.float32).reshape(params[pk].shape)
                params[pk].requires_grad_(True)
                loaded += 1
            n_lora = sum(1 for k in params if ".lora_" in k)
            if loaded != n_lora:
                raise Fail(f"loaded {loaded} of PEFT's {n_lora} LoRA tensors")
            fd = load_st(os.path.join(d, "dev", "forward.safetensors"))
            fc = load_st(os.path.join(d, "cpu", "forward.safetensors"))
            total = None
            for i, b in enumerate(res["batches"]):
                tok = torch.tensor(b["tokens"]).view(b["B"], b["T"]).to(device)
                with torch.autocast(device_type=device, dtype=torch.bfloat16):
                    logits = pm(input_ids=tok).logits.float()
                loss, logp = _loss_from_logits(logits, b)
                v = valid_mask(b)
                lg = logits.detach().cpu()
                tally.add("logits", f"{name}.logits_{i}", cmp(f"{name} torch vs celeriac-{dev} logits_{i}", lg, fd[f"logits_{i}"], TOL_TORCH_BF16, v[..., None])[0], TOL_TORCH_BF16)
                r, _ = cmp(f"{name} torch vs celeriac-cpu logits_{i} (info)", lg, fc[f"logits_{i}"], TOL_TORCH_BF16, v[..., None])
                info.append(r)
                tally.add("loss", f"{name}.loss_{i}", cmp(f"{name} loss_{i}", torch.tensor(loss), torch.tensor(res["dev"]["forward_loss"][i], dtype=torch.float64), TOL_TORCH_BF16)[0], TOL_TORCH_BF16)
                # gradients of the summed loss (the helper's step-1 gradients), reported only
                tgt = torch.tensor(b["targets"]).view(b["B"], b["T"]).to(device)
                w = (torch.tensor(b["weights"]).view(b["B"], b["T"]) if b["weights"] else torch.ones(b["B"], b["T"])) * v
                lp = torch.log_softmax(logits, -1).gather(-1, tgt[..., None])[..., 0]
                part = -(w.to(device) * lp).sum()
                total = part if total is None else total + part
            total.backward()
            gd = load_st(os.path.join(d, "dev", "grads.safetensors"))
            gworst = 0.0
            for k, t in gd.items():
                pk = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                    ".lora_B.weight", ".lora_B.default.weight")
                r, _ = cmp(f"{name} torch grad {k} (info)", params[pk].grad.float().cpu(), t, TOL_GRADS)
                gworst = max(gworst, r)
            info.append(("grads", gworst))
            del pm, model
            if device == "cuda":
                torch.cuda.empty_cache()
        gw = max((x[1] for x in info if isinstance(x, tuple)), default=0)
        cw = max((x for x in info if not isinstance(x, tuple)), default=0)
        line = (tally.line(["logits", "loss"]) + f" | info: torch vs celeriac-cpu logits {cw:.2g},"
                f" LoRA grads vs celeriac-{dev} {gw:.2g}")
        results["d"] = ("FAIL", f"{len(tally.fails)} over: " + "; ".join(tally.fails[:3]) + " | " + line) \
            if tally.fails else ("ok", line)
    except (Fail, Missing) as e:
        results["d"] = ("FAIL" if isinstance(e, Fail) or dev != "cpu" else "skip",
                        ("missing: " if isinstance(e, Missing) else "") + str(e))
    except Exception as e:  # transformers or PEFT refusing our model is this check's finding
        import traceback
        traceback.print_exc()
        results["d"] = ("FAIL", f"{type(e).__name__}: {e}"[:200])
    # ---- e: celeriac's saved adapters through PeftModel.from_pretrained, fp32
    tally = Tally()
    try:
        for name, res in data.items():
            d = res["dir"]
            log(f"== e, model {name}")
            for label, tol, floor in (("cpu", TOL_PEFT_FP32, 1.0), ("dev", TOL_LOGITS, 0.0)):
                final = os.path.join(d, label, "final")
                with open(os.path.join(final, "adapter_config.json")) as f:
                    acfg = json.load(f)
                if acfg.get("peft_type") != "LORA" or acfg.get("r") != res["rank"]:
                    raise Fail(f"{name}/{label}: adapter_config.json {acfg}")
                base = _hf_model(os.path.join(d, "model"), torch.float32, device)
                pm = PeftModel.from_pretrained(base, final)
                pm.eval()
                # every tensor of the file must have landed in PEFT's modules, unchanged
                saved = load_st(os.path.join(final, "adapter_model.safetensors"))
                params = {k: v for k, v in pm.named_parameters() if ".lora_" in k}
                for k, t in saved.items():
                    pk = k.replace(".lora_A.weight", ".lora_A.default.weight").replace(
                        ".lora_B.weight", ".lora_B.default.weight")
                    if pk not in params:
                        raise Fail(f"{name}/{label}: PEFT has no {pk} (from {k})")
                    if not torch.equal(params[pk].detach().float().cpu(), t.reshape(params[pk].shape)):
                        raise Fail(f"{name}/{label}: PEFT's {pk} differs from the file's")
                if len(saved) != len(params):
                    raise Fail(f"{name}/{label}: the file has {len(saved)} LoRA tensors, PEFT made "
                               f"{len(params)}")
                ref = load_st(os.path.join(d, label + "-reload", "forward.safetensors"))
                for i, b in enumerate(res["batches"]):
                    tok = torch.tensor(b["tokens"]).view(b["B"], b["T"]).to(device)
                    with torch.no_grad():
                        lg = pm(input_ids=tok).logits.float().cpu()
                    v = valid_mask(b)
                    what = f"celeriac-{'cpu' if label == 'cpu' else dev}"
                    r, _ = cmp(f"{name} PEFT fp32 vs {what} logits_{i} (adapter saved by {what})",
                               lg, ref[f"logits_{i}"], tol, v[..., None], floor=floor)
                    tally.add(f"vs {what}", f"{name}.{label}.logits_{i}", r, tol)
                del pm, base
                if device == "cuda":
                    torch.cuda.empty_cache()
        line = tally.line(["vs celeriac-cpu", f"vs celeriac-{dev}"])
        results["e"] = ("FAIL", "; ".join(tally.fails[:3]) + " | " + line) if tally.fails else ("ok", line)
    except (Fail, Missing) as e:
        results["e"] = ("FAIL" if isinstance(e, Fail) or dev != "cpu" else "skip",
                        ("missing: " if isinstance(e, Missing) else "") + str(e))
    except Exception as e:  # PEFT refusing the folder is this check's finding
        import traceback
        traceback.print_exc()
        results["e"] = ("FAIL", f"{type(e).__name__}: {e}"[:200])
    return results
