#!/usr/bin/python3
"""run.py -- every CUDA check that can run without a GPU, through the CUDA emulator.

Called by scripts/run-tests (so by `make test`) after `make cuda-emu`; by hand:
/usr/bin/python3 tests/cuda-emu/run.py [--only NAME,...]. The checks, each against
build/cuda-emu/ (the real model/cuda sources built for the emulator):

  runtime   build/cuda-emu/test_emu_runtime: the emulator's own semantics and checks
  ops       build/cuda-emu/test_cuda_ops: every op against its CPU twin (tests/gpu)
  attention build/cuda-emu/test_cuda_attention: attention, decode, KV append, sampling
  planted   tests/cuda-emu/planted.py: deliberately broken kernels, each must be caught
  model     tests/gpu/check_oracle.py's check c with the emulated backend: two small
            odd-sized Llamas on the CPU and on "cuda" (logits, log-probs, losses, every LoRA
            gradient, AdamW after three steps, scores; greedy samples reported), within the
            bf16 tolerances tests/gpu/check.py uses on a GPU
  packed    build/asan/tests/test_model_jobs with CELERIAC_TEST_DEVICE=cuda (packed
            multi-adapter passes equal one at a time), and check_oracle's check g
  lm        bin/celeriac-lm --device cuda on model/tiny: score, greedy and seeded samples,
            LoRA training, the trained adapter on the CPU, all against --device cpu
  worker    tests/integration/test_gpu.py with CELERIAC_GPU_TEST_EMU=1: bin/celeriac
            --device cuda with the stock Celery client (two adapters trained in packed jobs,
            scores, samples; the main process maps no CUDA backend, an executor does)

Every program runs with CELERIAC_CUDA_LIB=build/cuda-emu/libceleriac-cuda.so; any report of
the emulator's checker fails the program (exit 97). Prints one line per check and the
programs' own lines when something fails, then "N passed, N failed, N skipped".
"""
import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMU = os.path.join(REPO, "build", "cuda-emu")
LIB = os.path.join(EMU, "libceleriac-cuda.so")
PY = "/usr/bin/python3"
LM = os.path.join(REPO, "bin", "celeriac-lm")
# bf16 against fp32 on the tiny model, as tests/integration/test_gpu.py allows on a GPU
TOL_TOKEN, TOL_MEAN, TOL_LOSS = 0.25, 0.05, 2e-2

totals = {"passed": 0, "failed": 0, "skipped": 0}


def say(msg):
    print(msg, flush=True)


def env_emu(**extra):
    return dict(os.environ, CELERIAC_CUDA_LIB=LIB, **extra)


def count(name, passed, failed, detail, log=""):
    totals["passed"] += passed
    totals["failed"] += failed
    say(f"cuda-emu {name}: {passed} passed, {failed} failed [{'ok' if not failed else 'FAILED'}]"
        + (f" {detail}" if detail else ""))
    if failed and log:
        say(log[-6000:])


def run_counted(name, cmd, env=None, timeout=600):
    """A program that ends with 'N passed, N failed' (tests/gpu, the emulator's own)."""
    t = time.monotonic()
    if not os.access(cmd[0], os.X_OK):
        count(name, 0, 1, f"({os.path.relpath(cmd[0], REPO)} missing: make cuda-emu)")
        return
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env or env_emu(), capture_output=True, text=True,
                           errors="replace", timeout=timeout)
        out, code = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired:
        out, code = f"timed out after {timeout} s", 1
    m = re.findall(r"(\d+) passed, (\d+) failed", out)
    p, f = (int(m[-1][0]), int(m[-1][1])) if m else (0, 1)
    if code != 0 and f == 0:
        f = 1
    count(name, p, f, f"({time.monotonic() - t:.0f} s)", out)


def check_model(work):
    try:
        import torch  # noqa: F401  (check_oracle builds the models with it)
    except ImportError as e:
        totals["skipped"] += 1
        say(f"cuda-emu model: skipped (python3-torch is not importable: {e})")
        return
    sys.path.insert(0, os.path.join(REPO, "tests", "gpu"))
    import check_oracle
    from gpucommon import Fail, Missing
    ctx = {"helper": os.path.join(REPO, "build", "oracle", "model_oracle_helper"),
           "bin_env": env_emu(), "work": work, "helper_timeout": 900}
    for name, fn in (("model", check_oracle.child_c), ("packed-oracle", check_oracle.child_g)):
        t = time.monotonic()
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                got = fn(ctx, "cuda", buf)
            n = re.search(r"^(\d+) compared", got)
            count(name, int(n.group(1)) if n else 1, 0, f"({time.monotonic() - t:.0f} s) {got}")
        except (Fail, Missing, Exception) as e:
            n = re.search(r"(\d+) compared", str(e))
            bad = re.match(r"(\d+) over tolerance", str(e))
            f = int(bad.group(1)) if bad else 1
            count(name, (int(n.group(1)) - f) if n else 0, f,
                  f"({time.monotonic() - t:.0f} s) {type(e).__name__}: {e}", buf.getvalue())


def check_jobs():
    exe = os.path.join(REPO, "build", "asan", "tests", "test_model_jobs")
    t = time.monotonic()
    if not os.access(exe, os.X_OK):
        count("packed", 0, 1, "(build/asan/tests/test_model_jobs missing: make asan)")
        return
    r = subprocess.run([exe], cwd=REPO, env=env_emu(CELERIAC_TEST_DEVICE="cuda",
                                                    ASAN_OPTIONS="detect_leaks=1"),
                       capture_output=True, text=True, errors="replace", timeout=600)
    out = r.stdout + r.stderr
    p = sum(int(x) for x in re.findall(r"\[  PASSED  \] (\d+) test", out))
    f = sum(int(x) for x in re.findall(r"\[  FAILED  \] (\d+) test", out))
    if r.returncode != 0 and f == 0:
        f = 1
    count("packed", p, f, f"(test_model_jobs on the emulated GPU, {time.monotonic() - t:.0f} s)",
          out)


def lm(args, device, timeout=300):
    r = subprocess.run([LM, *args, "--model", os.path.join(REPO, "model", "tiny"), "--device",
                        device], cwd=REPO, env=env_emu(), capture_output=True, text=True,
                       errors="replace", timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"celeriac-lm {args[0]} --device {device}: exit {r.returncode}: "
                           + r.stderr[-3000:])
    return r.stdout


def scores(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def check_lm(work):
    t = time.monotonic()
    results, log = [], []

    def res(name, ok, detail):
        results.append(ok)
        log.append(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")

    texts = ["The quick brown fox jumps over the lazy dog.",
             "In the beginning there was nothing but a small model and a long test."]
    try:
        for dev_out, cpu_out in zip(scores(lm(["score", *texts], "cuda")),
                                    scores(lm(["score", *texts], "cpu"))):
            d = [abs(a - b) for a, b in zip(dev_out["token_logprobs"], cpu_out["token_logprobs"])]
            dm = abs(dev_out["mean_logprob"] - cpu_out["mean_logprob"])
            res(f"score {dev_out['text'][:20]!r}", len(d) == cpu_out["tokens"] and max(d) <= TOL_TOKEN
                and dm <= TOL_MEAN, f"worst token {max(d):.3g} (tol {TOL_TOKEN}), mean {dm:.3g} "
                f"(tol {TOL_MEAN})")
        greedy = ["--temperature", "0", "--max-tokens", "16", "--json", "Once upon a time", "The cat"]
        g_dev, g_cpu = scores(lm(["sample", *greedy], "cuda")), scores(lm(["sample", *greedy], "cpu"))
        res("greedy samples equal the CPU's", [x["text"] for x in g_dev] == [x["text"] for x in g_cpu],
            f"{[x['text'][:24] for x in g_dev]}")
        seeded = ["--temperature", "0.8", "--top-k", "40", "--top-p", "0.9", "--seed", "7",
                  "--max-tokens", "12", "--json", "A"]
        s1, s2 = scores(lm(["sample", *seeded], "cuda")), scores(lm(["sample", *seeded], "cuda"))
        res("seeded top-k/top-p sample repeats", s1 == s2 and s1[0]["tokens"] == 12,
            repr(s1[0]["text"][:30]))
        data = os.path.join(work, "data.txt")
        shutil.copy(os.path.join(REPO, "model", "tiny", "README.md"), data)
        losses = {}
        for dev in ("cuda", "cpu"):
            out = lm(["train", "--data", data, "--lora", "4", "--steps", "3", "--lr", "1e-3",
                      "--batch", "2", "--seq", "48", "--seed", "3", "--out",
                      os.path.join(work, "ad-" + dev)], dev, timeout=600)
            losses[dev] = [float(x) for x in re.findall(r"step \d+/\d+ loss ([0-9.]+)", out)]
        worst = max((abs(a - b) / max(abs(b), 1e-9) for a, b in zip(losses["cuda"], losses["cpu"])),
                    default=1.0)
        res("LoRA training losses", len(losses["cuda"]) == 3 and worst <= TOL_LOSS,
            f"cuda {losses['cuda']} cpu {losses['cpu']} (worst relative {worst:.2g}, tol {TOL_LOSS})")
        a_dev = scores(lm(["score", "--adapter", os.path.join(work, "ad-cuda"), texts[0]], "cpu"))[0]
        a_cpu = scores(lm(["score", "--adapter", os.path.join(work, "ad-cpu"), texts[0]], "cpu"))[0]
        dm = abs(a_dev["mean_logprob"] - a_cpu["mean_logprob"])
        res("the adapter trained on cuda scores on the CPU", dm <= TOL_MEAN,
            f"mean log-prob {a_dev['mean_logprob']:.4f} vs {a_cpu['mean_logprob']:.4f}")
        a_gpu = scores(lm(["score", "--adapter", os.path.join(work, "ad-cuda"), texts[0]], "cuda"))[0]
        dm = abs(a_gpu["mean_logprob"] - a_dev["mean_logprob"])
        res("... and on cuda", dm <= TOL_MEAN, f"mean log-prob {a_gpu['mean_logprob']:.4f}")
    except (RuntimeError, subprocess.TimeoutExpired, ValueError, KeyError, IndexError) as e:
        res("celeriac-lm", False, str(e))
    count("lm", sum(results), len(results) - sum(results),
          f"(celeriac-lm --device cuda on model/tiny, {time.monotonic() - t:.0f} s)",
          "\n".join(log))


def check_worker():
    t = time.monotonic()
    xml = os.path.join(tempfile.mkdtemp(prefix="celeriac-emu-worker-"), "junit.xml")
    # an executor's exit status is not the test's: make a report end it, failing its task
    env = env_emu(CELERIAC_GPU_TEST_EMU="1", CELERIAC_BIN_DIR=os.path.join(REPO, "bin"),
                  CELERIAC_CUDA_EMU_FATAL="1", PYTHONDONTWRITEBYTECODE="1")
    r = subprocess.run([PY, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-s", "-rfEs",
                        f"--junitxml={xml}", "tests/integration/test_gpu.py"], cwd=REPO, env=env,
                       capture_output=True, text=True, errors="replace", timeout=600)
    out = r.stdout + r.stderr
    m = re.search(r"(\d+) passed", out)
    f = re.search(r"(\d+) (failed|error)", out)
    p, f = (int(m.group(1)) if m else 0), (int(f.group(1)) if f else 0)
    if r.returncode != 0 and f == 0:
        f = 1
    if "skipped" in out and not p and not f:
        f = 1  # the emulated run must not skip
    info = re.findall(r"^GPU-E2E: (.*)$", out, re.M)
    shutil.rmtree(os.path.dirname(xml), ignore_errors=True)
    count("worker", p, f, f"({time.monotonic() - t:.0f} s) " + (info[-1] if info else ""), out)


CHECKS = ["runtime", "ops", "attention", "planted", "model", "packed", "lm", "worker"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated: " + ", ".join(CHECKS))
    args = ap.parse_args()
    only = set(filter(None, args.only.split(",")))
    t0 = time.monotonic()
    if not os.path.exists(LIB):
        say(f"cuda-emu: {os.path.relpath(LIB, REPO)} is not built (make cuda-emu)")
        say("0 passed, 1 failed, 0 skipped")
        return 1
    work = tempfile.mkdtemp(prefix="celeriac-cuda-emu-")
    try:
        for name in CHECKS:
            if only and name not in only:
                continue
            if name == "runtime":
                run_counted(name, [os.path.join(EMU, "test_emu_runtime")])
            elif name in ("ops", "attention"):
                run_counted(name, [os.path.join(EMU, f"test_cuda_{name}")])
            elif name == "planted":
                run_counted(name, [PY, os.path.join(REPO, "tests", "cuda-emu", "planted.py")])
            elif name == "model":
                check_model(os.path.join(work, "oracle"))
            elif name == "packed":
                check_jobs()
            elif name == "lm":
                check_lm(work)
            elif name == "worker":
                check_worker()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p, f, s = totals["passed"], totals["failed"], totals["skipped"]
    say(f"cuda-emu: {time.monotonic() - t0:.0f} s")
    say(f"{p} passed, {f} failed, {s} skipped")
    return 0 if f == 0 and p > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
