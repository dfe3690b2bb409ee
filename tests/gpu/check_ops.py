"""check_ops.py -- checks a and b of tests/gpu/check.py: the CUDA op tests, plain and under memcheck.

a runs build/gpu/test_cuda_ops and test_cuda_attention from the bundle (each CUDA op against
its CPU twin); b runs them again under compute-sanitizer --tool memcheck (skipped where the
tool is absent, and in the --device cpu dry run).
"""
import glob
import os
import re
import shutil
import subprocess

from gpucommon import GPU, REPO, Fail, Missing, Skip, run_bin


def child_a(ctx, dev, logf):
    tests = [("test_cuda_ops", 40), ("test_cuda_attention", 40)]
    return run_gpu_tests(ctx, dev, logf, tests, sanitizer=None)


def child_b(ctx, dev, logf):
    if dev == "cpu":
        raise Skip("cpu dry run: memcheck needs the GPU")
    san = shutil.which("compute-sanitizer") or next(
        (p for p in ["/usr/local/cuda/bin/compute-sanitizer"] + sorted(glob.glob(
            "/usr/local/cuda-*/bin/compute-sanitizer")) if os.access(p, os.X_OK)), None)
    if not san:
        raise Skip("compute-sanitizer is not installed")
    return run_gpu_tests(ctx, dev, logf, [("test_cuda_ops", 85), ("test_cuda_attention", 85)],
                         sanitizer=san)


def run_gpu_tests(ctx, dev, logf, tests, sanitizer):
    parts, bad, missing = [], [], []
    for name, limit in tests:
        exe = os.path.join(GPU, "build", "gpu", name)
        if not os.access(exe, os.X_OK):
            missing.append(f"build/gpu/{name}")
            continue
        cmd = [exe] if not sanitizer else [sanitizer, "--tool", "memcheck", "--error-exitcode",
                                           "97", "--print-limit", "20", exe]
        try:
            r = run_bin(ctx, cmd, limit, logf, cwd=REPO,
                        env_extra={"CELERIAC_GPU_TEST_QUICK": "1"} if sanitizer else {})
        except subprocess.TimeoutExpired:
            bad.append(f"{name} timed out after {limit}s")
            continue
        out = r.stdout + r.stderr
        counts = re.findall(r"^(\d+) passed, (\d+) failed", out, re.M)
        errs = re.findall(r"ERROR SUMMARY: (\d+) error", out)
        if re.search(r"^skipped:", out, re.M):
            if dev == "cpu":
                parts.append(f"{name}: skipped (no GPU)")
                continue
            bad.append(f"{name}: " + re.search(r"^skipped:.*", out, re.M).group(0)[:100])
            continue
        p, f = (int(counts[-1][0]), int(counts[-1][1])) if counts else (0, 0)
        tag = f"{name} {p}/{p + f}"
        if sanitizer:
            tag += f" memcheck {errs[-1] if errs else '?'} err"
        if r.returncode != 0 or not counts or f or (sanitizer and (not errs or errs[-1] != "0")):
            fails = re.findall(r"^FAIL.*", out, re.M)[:3]
            bad.append(tag + f" exit {r.returncode}" + (": " + "; ".join(x[:60] for x in fails)
                                                        if fails else ""))
        else:
            parts.append(tag)
    if bad:
        raise Fail("; ".join(bad + parts + ([f"missing {', '.join(missing)}"] if missing else [])))
    if missing:
        raise Missing(", ".join(missing) + " (make cuda; scripts/gpu-bundle)"
                      + ("; ran " + "; ".join(parts) if parts else ""))
    if all("skipped" in p for p in parts):
        raise Skip("; ".join(parts))
    return "; ".join(parts)
