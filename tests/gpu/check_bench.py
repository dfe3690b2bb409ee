"""check_bench.py -- check i of tests/gpu/check.py: bench/gpu.py, celeriac against PyTorch + PEFT.

--quick by default (a ~0.4B Llama-shaped model), --full-bench for the whole table; figures in
the work folder's bench.json and bench.md. A benchmark: it fails only when a run breaks.
"""
import json
import os
import subprocess
import sys

from gpucommon import REPO, Fail, Missing, log


def child_i(ctx, dev, logf, full=False, deadline=190):
    out_json = os.path.join(ctx["work"], "bench.json")
    out_md = os.path.join(ctx["work"], "bench.md")
    cmd = [sys.executable, os.path.join(REPO, "bench", "gpu.py"), "--json", out_json, "--md", out_md,
           "--bin-dir", ctx["bindir"], "--deadline", str(deadline - 25)]
    if not full:
        cmd.append("--quick")
    if dev == "cpu":
        cmd += ["--device", "cpu"]
    env = dict(os.environ)  # the image's own LD_LIBRARY_PATH (the driver's) stays as it is
    env["CELERIAC_GPU_LD_LIBRARY_PATH"] = ctx["bin_env"]["LD_LIBRARY_PATH"]
    if "CELERIAC_CUDA_LIB" in ctx["bin_env"]:
        env["CELERIAC_CUDA_LIB"] = ctx["bin_env"]["CELERIAC_CUDA_LIB"]
    env["PYTHONUNBUFFERED"] = "1"
    log("$ " + " ".join(cmd))
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, errors="replace",
                           timeout=deadline - 5)
        log(r.stdout[-60000:])
    except subprocess.TimeoutExpired as e:
        log((e.stdout or b"")[-60000:].decode("utf-8", "replace") if isinstance(e.stdout, bytes)
            else (e.stdout or "")[-60000:])
        if not os.path.exists(out_json):
            raise Fail(f"bench/gpu.py timed out after {deadline - 5:.0f}s with no figures")
        with open(out_json) as f:
            b = json.load(f)
        raise Fail(f"bench/gpu.py timed out; so far: {b.get('summary') or 'nothing'}"[:200])
    if r.returncode != 0 or not os.path.exists(out_json):
        raise Fail(f"bench/gpu.py exit {r.returncode}: " + (r.stdout.strip().splitlines() or [""])[-1][:150])
    with open(out_json) as f:
        b = json.load(f)
    s = b.get("summary", "")
    miss = b.get("missing") or []
    errors = [f"{k}: {v['error']}" for k, v in b.get("celeriac", {}).items()
              if isinstance(v, dict) and "error" in v]
    cel_missing = [m for m in miss if "celeriac-lm" in m]
    if cel_missing:
        raise Missing("; ".join(cel_missing)[:120] + (" | " + s if s else ""))
    if errors:
        raise Fail(f"{len(errors)} celeriac-lm bench runs failed: " + "; ".join(errors[:2])[:160]
                   + (" | " + s if s else ""))
    broken = [m for m in miss if m.startswith("torch run failed")]
    if broken:
        raise Fail(broken[0][:150] + (" | " + s if s else ""))
    return (s or "ran") + (" | " + "; ".join(miss)[:100] if miss else "")
