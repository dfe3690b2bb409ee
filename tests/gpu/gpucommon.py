"""gpucommon.py -- what every check of tests/gpu/check.py shares: paths, tolerances, errors, comparisons.

Imported by check.py and the check_*.py modules (and by tests/cuda-emu/run.py, which runs check
c's comparisons against the CUDA emulator). Nothing here runs a check by itself. torch is
imported inside the functions that need it, so a module can load where torch is absent.
"""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GPU = os.path.join(REPO, ".gpu")  # the bundle scripts/gpu-bundle makes
sys.path.insert(0, os.path.join(REPO, "tests", "unit"))  # st_pywrite

TOL_LOGITS = 2e-2
TOL_GRADS = 5e-2
TOL_V = 1e-1
TOL_UPDATE = 0.25
TOL_PEFT_FP32 = 1e-3
# d compares two bf16 computations: PyTorch's bf16 model rounds its residual stream, norm
# outputs and every linear's output to bf16 (measured ~1.2e-2 of max against fp32 on these
# models with a CPU emulation), celeriac's CUDA path keeps those in fp32 (~0.5e-2); their
# errors add, so d gets 3e-2 where one bf16 side against fp32 gets 2e-2.
TOL_TORCH_BF16 = 3e-2
# The losses are sums over ~150 tokens, so LoRA gradients are O(1) (rms ~3). eps 0.1 keeps
# AdamW's update continuous in g near zero: with a tiny eps every element moves +-lr whatever
# |g| is, and bf16 noise on a near-zero gradient would flip a whole +-lr step.
ADAMW = dict(lr=1e-3, beta1=0.9, beta2=0.95, eps=0.1, weight_decay=0.01)
STEPS = 3
TOL_WEIGHTS = 2 * ADAMW["lr"] * STEPS
MODS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PATHS = {m: ("self_attn." if m in MODS[:4] else "mlp.") + m for m in MODS}


class Missing(Exception):
    """A piece another change is building is not there yet (FAIL on a GPU, skip in the dry run)."""


class Skip(Exception):
    pass


class Fail(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def run_bin(ctx, cmd, timeout, logf=None, **kw):
    """Runs one of the bundle's programs with the bundle's environment; returns the result."""
    env = dict(ctx["bin_env"], **kw.pop("env_extra", {}))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace",
                       timeout=timeout, **kw)
    if logf is not None:
        logf.write(f"$ {' '.join(cmd)}\n-> exit {r.returncode}\n{r.stdout[-20000:]}{r.stderr[-20000:]}\n")
        logf.flush()
    return r


def cmp(name, got, ref, tol, mask=None, floor=0.0):
    """max|got - ref| <= tol * max(floor, max|ref|) over mask; prints and returns the ratio
    err/scale (<= tol passes) and the worst element's index."""
    import torch
    got = torch.as_tensor(got, dtype=torch.float32).reshape(ref.shape)
    ref = ref.detach().to(torch.float32).cpu()
    err = (got - ref).abs()
    mag = ref.abs()
    if mask is not None:
        err = err * mask
        mag = mag * mask
    if not bool(torch.isfinite(got if mask is None else got * mask).all()):
        log(f"  {name}: NON-FINITE values")
        return float("inf"), -1
    scale = max(floor, float(mag.max()) if mag.numel() else 0.0, 1e-30)
    i = int(err.flatten().argmax()) if err.numel() else 0
    worst = float(err.flatten()[i]) if err.numel() else 0.0
    rel = worst / scale
    log(f"  {name}: max|diff| {worst:.3g} at {i} (got {float(got.flatten()[i]) if got.numel() else 0:.6g},"
        f" ref {float(ref.flatten()[i]) if ref.numel() else 0:.6g}), max|ref| {scale:.3g}, "
        f"ratio {rel:.3g} (tol {tol:g}) {'ok' if rel <= tol else 'FAIL'}")
    return rel, i


class Tally:
    """Worst ratio per kind of quantity, and the failures."""

    def __init__(self):
        self.worst, self.fails, self.n = {}, [], 0

    def add(self, kind, name, ratio, tol):
        self.n += 1
        if ratio > self.worst.get(kind, (-1, ""))[0]:
            self.worst[kind] = (ratio, name)
        if not ratio <= tol:
            self.fails.append(f"{name} {ratio:.3g}>{tol:g}")

    def line(self, kinds):
        return ", ".join(f"{k} {self.worst[k][0]:.2g}" for k in kinds if k in self.worst)


def load_st(path):
    import st_pywrite
    return st_pywrite.load(path)[0]
