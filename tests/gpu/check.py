#!/usr/bin/env python3
"""check.py -- every GPU check of celeriac in one command, ending with a summary table.

On the GPU machine, from the repository root, after `scripts/gpu-bundle` here and with the
device call carrying .gpu:        python3 tests/gpu/check.py   (about 5-9 minutes)
Here, as a plumbing dry run:      python3 tests/gpu/check.py --device cpu
(scripts/gpu-check is the same command under its old name.)
Options: --only a,c,g  --skip b,i  --budget SECONDS (570: one device command is 10 minutes at
most)  --full-bench  --keep  --env (print the shell exports for the bundle and exit).

It takes everything from .gpu/ (see scripts/gpu-bundle): the programs, the libraries (unpacked
to /tmp, outside the repository, and put on LD_LIBRARY_PATH only of the processes that run
celeriac's programs, never of a python that imports torch), redis-server and the zipped
Celery client (PYTHONPATH of the pytest run). The checks, each in its own process group with
a time limit; a check whose needed piece is not built yet says "missing: ..." (FAIL on a GPU,
skip in the --device cpu dry run):

  a  build/gpu/test_cuda_ops, test_cuda_attention: each CUDA op against its CPU twin
  b  the same under compute-sanitizer --tool memcheck (skip where it is absent)
  c  CPU vs CUDA on two small random Llamas with odd sizes (C 320 and C 200 with head_dim
     64 != C/NH, V 997/1009, I 600/536, T 37/23, padded and weighted batches), through
     build/oracle/model_oracle_helper run with "device": "cpu" and "device": "cuda":
     logits, target log-probs, losses, every LoRA gradient, the grad norm, the adapter and
     AdamW moments after three steps, scores after the steps; greedy samples (reported)
  d  PyTorch + PEFT on the GPU (transformers LlamaForCausalLM from the same config.json and
     bf16 model.safetensors, sdpa, peft.LoraConfig(r, lora_alpha, all 7, dropout 0), fp32
     LoRA, bf16 autocast) against celeriac cuda: logits and loss (LoRA grads and torch against
     celeriac cpu reported)
  e  the adapters celeriac saved (the helper's final/: adapter_config.json +
     adapter_model.safetensors) loaded with peft.PeftModel.from_pretrained: fp32 logits on
     the GPU against celeriac cpu (tight) and against celeriac cuda (bf16 tolerance)
  f  the tokenizer: byte-level BPE tokenizers trained with `tokenizers` (GPT-2, GPT-2 with
     prefix space, SmolLM digits, Llama 3 styles) and model/tiny/tokenizer.json; `celeriac-lm
     tokenize` ids == tokenizers' encode ids on ~330 strings each, `celeriac-lm decode` ==
     tokenizers' decode
  g  batched multi-adapter == one at a time: the helper with "compare_batched": true writes
     out/batched.json {"ok", "max_abs_diff"}; on cuda and on cpu
  h  the worker end to end: tests/integration/test_gpu.py under pytest (redis-server from the
     bundle, bin/celeriac --device cuda, the stock Celery client; /proc/PID/maps of the main
     process has no CUDA library, an executor's has libcuda)
  i  bench/gpu.py --quick (a ~0.4B Llama-shaped model: celeriac vs PyTorch+PEFT)

Tolerances (bf16 with fp32 accumulation against fp32; "of max" = relative to the largest
|value| of the reference tensor, positions past a row's length left out):
  logits, target log-probs, losses, scores   max|diff| <= 2e-2 of max
  every LoRA gradient, grad norm, AdamW m    max|diff| <= 5e-2 of max   (AdamW v: 1e-1 of max)
  adapter after 3 AdamW steps (lr 1e-3, eps 0.1)  max|diff| <= 6e-3 = 2*lr*steps (the most
      an element can move apart, whatever the gradients), and ||update_cuda - update_cpu|| <=
      0.25 ||update_cpu|| (update = final - initial adapter), so a missing, mis-scaled or
      wrong-signed update fails; a 1e-3 absolute bound alone could not tell (3 steps of 1e-3)
  PyTorch bf16 vs celeriac cuda (d)          max|diff| <= 3e-2 of max (two bf16 sides whose
                                             errors add; torch alone is ~1.2e-2 off fp32)
  PEFT fp32 vs celeriac cpu (e)              max|diff| <= 1e-3 of max(1, max)
  CPU vs CPU (the --device cpu dry run)      the same bounds (the results are identical)

Output: a table (check, result, seconds, detail) and "N passed, N failed, N skipped"; exit 1
on any failure. With $OUT set: summary.txt and summary.json (rewritten after every check),
checks.log (each check's log, tail), bench.md, logs.tar.gz (the whole work folder's logs).
"""
import argparse
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time


def _maybe_reexec():
    """Here `python3` may be a pyenv without torch: use Debian's /usr/bin/python3 then."""
    if os.environ.get("CELERIAC_GPU_CHECK_REEXEC"):
        return
    try:
        import torch  # noqa: F401
        return
    except Exception:
        pass
    for cand in ("/usr/bin/python3",):
        if os.path.realpath(cand) == os.path.realpath(sys.executable) or not os.access(cand, os.X_OK):
            continue
        if subprocess.run([cand, "-c", "import torch"], capture_output=True).returncode == 0:
            os.environ["CELERIAC_GPU_CHECK_REEXEC"] = "1"
            os.execv(cand, [cand] + sys.argv)


_maybe_reexec()

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_bench import child_i  # noqa: E402
from check_ops import child_a, child_b  # noqa: E402
from check_oracle import child_c, child_g  # noqa: E402
from check_tokenizer import child_f  # noqa: E402
from check_torch import child_de  # noqa: E402
from check_worker import child_h  # noqa: E402
from gpucommon import GPU, REPO, Fail, Missing, Skip, log  # noqa: E402

CHECKS = [  # id, title, child process that computes it, time limit (s)
    ("a", "CUDA ops vs CPU twins", "a", 90),
    ("c", "CPU vs CUDA (oracle helper)", "c", 150),
    ("g", "batched == one at a time", "g", 90),
    ("d", "torch+PEFT vs celeriac cuda", "de", 150),
    ("e", "PEFT loads celeriac adapters", "de", 150),
    ("f", "tokenizer vs `tokenizers`", "f", 90),
    ("h", "worker end to end (test_gpu.py)", "h", 180),
    ("i", "benchmark (bench/gpu.py --quick)", "i", 200),
    ("b", "compute-sanitizer memcheck", "b", 180),
]


# ------------------------------------------------------------------------------ environment


def nvidia_smi():
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None, "nvidia-smi not found"
    try:
        r = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return None, "nvidia-smi -L timed out"
    out = (r.stdout + r.stderr).strip()
    return (out if r.returncode == 0 and "GPU" in out else None), out


def ldd_missing(path, env):
    try:
        r = subprocess.run(["ldd", path], capture_output=True, text=True, timeout=60, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [f"ldd failed: {e}"]
    return [line.split()[0] for line in r.stdout.splitlines() if "not found" in line]


def cuda_lib_dirs():
    """Folders that may hold libcublas.so.13 when the dynamic linker does not find it."""
    dirs = ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib",
            "/usr/local/cuda/lib"]
    dirs += sorted(glob.glob("/usr/local/cuda-*/lib64")) + sorted(glob.glob("/usr/local/cuda-*/lib"))
    for p in sys.path:
        dirs += sorted(glob.glob(os.path.join(p, "nvidia", "*", "lib")))
    return [d for d in dirs if glob.glob(os.path.join(d, "libcublas.so*"))]


def setup_env(work):
    """Unpacks the bundle's libraries and works out the environments; returns (ctx, problems)."""
    problems, notes = [], []
    man_path = os.path.join(GPU, "MANIFEST.json")
    if not os.path.exists(man_path):
        return None, ["no .gpu/ bundle: run scripts/gpu-bundle here, and carry [\".gpu\"] "
                      "in the device call"]
    with open(man_path) as f:
        man = json.load(f)
    unpack = os.path.join(tempfile.gettempdir(), f"celeriac-gpu-{os.getuid()}", man["id"])
    if not os.path.exists(os.path.join(unpack, ".done")):
        shutil.rmtree(unpack, ignore_errors=True)
        os.makedirs(unpack)
        with tarfile.open(os.path.join(GPU, "lib.tar.xz")) as tar:
            try:
                tar.extractall(unpack, filter="data")  # 3.12: no deprecation warning
            except TypeError:
                tar.extractall(unpack)
        open(os.path.join(unpack, ".done"), "w").close()
    bindir = os.path.join(GPU, "bin")
    for rel in man["elves"]:  # in case the copy to the device lost the modes
        p = os.path.join(GPU, rel)
        if os.path.exists(p) and not os.access(p, os.X_OK):
            os.chmod(p, 0o755)
    base = {k: v for k, v in os.environ.items() if k not in ("LD_LIBRARY_PATH", "PYTHONPATH")}
    ld = [os.path.join(unpack, "lib")]
    orig_ld = os.environ.get("LD_LIBRARY_PATH", "")
    elves = [os.path.join(GPU, e) for e in man["elves"]]

    def env_with(dirs):
        return dict(base, LD_LIBRARY_PATH=":".join(dirs + ([orig_ld] if orig_ld else [])))

    miss = {e: ldd_missing(e, env_with(ld)) for e in elves}
    if any(m for m in miss.values() if any(not n.startswith("libcu") for n in m)):
        ld.append(os.path.join(unpack, "lib", "fallback"))
        notes.append("using lib/fallback")
        miss = {e: ldd_missing(e, env_with(ld)) for e in elves}
    if any(n.startswith("libcu") for m in miss.values() for n in m):
        for d in cuda_lib_dirs():
            miss2 = {e: ldd_missing(e, env_with(ld + [d])) for e in elves}
            if not any(n.startswith("libcu") for m in miss2.values() for n in m):
                ld.append(d)
                notes.append(f"cuBLAS from {d}")
                miss = miss2
                break
    for e, m in miss.items():
        if m:
            problems.append(f"{os.path.relpath(e, REPO)}: libraries not found: {', '.join(m)}")
    env = env_with(ld)
    env["PATH"] = bindir + ":" + os.environ.get("PATH", "/usr/bin:/bin")
    env["CELERIAC_BIN_DIR"] = bindir
    cuda_so = os.path.join(bindir, "libceleriac-cuda.so")
    if os.path.exists(cuda_so):
        env["CELERIAC_CUDA_LIB"] = cuda_so
    env["PYTHONPATH"] = os.path.join(GPU, "py.zip") + (
        ":" + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    ctx = {"manifest": man, "bin_env": env, "bindir": bindir, "unpack": unpack,
           "work": work, "notes": notes}
    with open(os.path.join(work, "env.json"), "w") as f:
        json.dump(ctx, f, indent=1)
    return ctx, problems


def load_ctx(work):
    with open(os.path.join(work, "env.json")) as f:
        return json.load(f)


# ------------------------------------------------------------------------------ one check per process


CHILDREN = {"a": child_a, "b": child_b, "c": child_c, "g": child_g, "de": child_de, "f": child_f,
            "h": child_h, "i": child_i}


def child_main(args):
    """One check in this process: result to WORK/<child>.result.json."""
    ctx = load_ctx(args.work)
    ctx["child_timeout"] = args.child_timeout
    logf = sys.stdout
    fn = CHILDREN[args.child]
    t0 = time.monotonic()
    try:
        if args.child == "i":
            got = fn(ctx, args.device, logf, full=args.full_bench, deadline=args.child_timeout)
        else:
            got = fn(ctx, args.device, logf)
        results = got if isinstance(got, dict) else {args.child: ("ok", got)}
    except Missing as e:
        st = "skip" if args.device == "cpu" else "FAIL"
        results = {args.child: (st, f"missing: {e}")}
    except Skip as e:
        results = {args.child: ("skip", str(e))}
    except Fail as e:
        results = {args.child: ("FAIL", str(e))}
    except subprocess.TimeoutExpired as e:
        results = {args.child: ("FAIL", f"timed out: {' '.join(map(str, e.cmd))[:100]}")}
    except Exception as e:
        import traceback
        traceback.print_exc()
        results = {args.child: ("FAIL", f"{type(e).__name__}: {e}"[:200])}
    for k, (st, det) in results.items():
        log(f"RESULT {k}: {st}: {det}")
    with open(os.path.join(args.work, f"{args.child}.result.json"), "w") as f:
        json.dump({k: list(v) for k, v in results.items()} | {"_seconds": time.monotonic() - t0}, f)


# ------------------------------------------------------------------------------ the parent


RUN_ID = f"{os.getpid()}-{int(time.time())}"


def kill_leftovers():
    """Ends processes this run started that outlived their check (a worker or redis-server a
    killed pytest could not stop): found by the run id in their environment, ended by pid."""
    me = os.getpid()
    tag = f"CELERIAC_GPU_CHECK_RUN={RUN_ID}".encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag not in f.read().split(b"\0"):
                    continue
            os.kill(int(pid), signal.SIGKILL)
            log(f"gpu-check: killed leftover pid {pid}")
        except (OSError, ProcessLookupError):
            pass


def run_child(args, child, timeout, logpath):
    env = dict(os.environ)  # unchanged: a child that imports torch gets no bundle library
    env["CELERIAC_GPU_CHECK_RUN"] = RUN_ID
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", child, "--work", args.work,
           "--device", args.device, "--child-timeout", str(int(timeout))]
    if args.full_bench:
        cmd.append("--full-bench")
    with open(logpath, "wb") as lf:
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=lf, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            # SIGINT first: pytest then runs its fixtures' teardown (stops worker and redis)
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
                try:
                    os.killpg(p.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    p.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            kill_leftovers()
            return None
    kill_leftovers()
    rp = os.path.join(args.work, f"{child}.result.json")
    if not os.path.exists(rp):
        return {}
    with open(rp) as f:
        return json.load(f)


def tail_file(path, nbytes=60000):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - nbytes))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def table(rows, header):
    out = [header]
    out.append(f"| {'check':36} | {'result':6} | {'s':>5} | detail")
    out.append(f"|{'-' * 38}|{'-' * 8}|{'-' * 7}|{'-' * 60}")
    for r in rows:
        out.append(f"| {r['id'] + ' ' + r['title']:36} | {r['result']:6} | {r['seconds']:5.0f} | {r['detail']}")
    n_ok = sum(r["result"] == "ok" for r in rows)
    n_fail = sum(r["result"] == "FAIL" for r in rows)
    n_skip = sum(r["result"] == "skip" for r in rows)
    out.append("")
    out.append(f"{n_ok} passed, {n_fail} failed, {n_skip} skipped")
    return "\n".join(out), n_fail


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                    help="cuda on the GPU machine; cpu: the plumbing dry run here")
    ap.add_argument("--only", default="", help="comma-separated check ids (a-i)")
    ap.add_argument("--skip", default="", help="comma-separated check ids to leave out")
    ap.add_argument("--budget", type=float, default=570.0,
                    help="seconds for everything (one device command may run 600)")
    ap.add_argument("--full-bench", action="store_true", help="check i runs the full benchmark")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--env", action="store_true", help="print the bundle's shell exports and exit")
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-timeout", type=float, default=200, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(args)

    t_start = time.monotonic()
    os.chdir(REPO)
    out_dir = os.environ.get("OUT") or None
    args.work = tempfile.mkdtemp(prefix="celeriac-gpu-check-")
    rows, logs = [], []
    gpu_line, smi = nvidia_smi()
    header = [f"celeriac gpu-check --device {args.device}   {time.strftime('%Y-%m-%d %H:%M:%S')}",
              f"nvidia-smi -L: {gpu_line or smi or '-'}"]
    try:
        import torch
        tv = f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}"
    except Exception as e:
        tv = f"torch not importable ({e})"
    header.append(f"python {sys.version.split()[0]} ({sys.executable}); {tv}")
    t0 = time.monotonic()
    ctx, problems = setup_env(args.work)
    if args.env:
        if not ctx:
            print("\n".join(problems), file=sys.stderr)
            return 1
        for k in ("PATH", "LD_LIBRARY_PATH", "PYTHONPATH", "CELERIAC_BIN_DIR", "CELERIAC_CUDA_LIB"):
            if k in ctx["bin_env"]:
                print(f"export {k}='{ctx['bin_env'][k]}'")
        shutil.rmtree(args.work, ignore_errors=True)
        return 0
    if ctx:
        man = ctx["manifest"]
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=REPO).stdout.strip()
        header.append(f"bundle {man['id']} built {man['created']} from {man['git']}"
                      + ("" if not head or man["git"].startswith(head) else f" (repo is at {head[:12]})")
                      + (f"; {', '.join(ctx['notes'])}" if ctx["notes"] else ""))
        # the zipped Celery client imports under this python (3.12 on the GPU machine)
        r = subprocess.run([sys.executable, "-c", "import celery, kombu, redis, celery.result, "
                            "kombu.transport.redis; print(celery.__version__, kombu.__version__)"],
                           env=ctx["bin_env"], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            problems.append("the bundle's Celery client does not import: "
                            + (r.stderr.strip().splitlines() or ["?"])[-1][:150])
        else:
            header.append(f"celery/kombu from py.zip: {r.stdout.strip()}")
    if args.device == "cuda" and not gpu_line:
        problems.append(f"no GPU: {smi}")
    rows.append({"id": "0", "title": "setup (bundle, libraries, client)",
                 "result": "FAIL" if problems else "ok", "seconds": time.monotonic() - t0,
                 "detail": "; ".join(problems)[:300] if problems else
                 f"{len(ctx['manifest']['elves'])} programs resolve their libraries"})
    head_txt = "\n".join(header)
    log(head_txt)

    only = set(filter(None, args.only.split(",")))
    skip = set(filter(None, args.skip.split(",")))
    cache = {}

    def publish(final=False):
        text, n_fail = table(rows, head_txt)
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            with open(os.path.join(out_dir, "summary.txt"), "w") as f:
                f.write(text + ("\n" if final else "\n(still running)\n"))
            with open(os.path.join(out_dir, "summary.json"), "w") as f:
                json.dump({"header": header, "rows": rows, "final": final}, f, indent=1)
            with open(os.path.join(out_dir, "checks.log"), "w") as f:
                for title, path in logs:
                    f.write(f"\n{'=' * 100}\n== {title}\n{'=' * 100}\n{tail_file(path)}\n")
            bm = os.path.join(args.work, "bench.md")
            if os.path.exists(bm):
                shutil.copy(bm, os.path.join(out_dir, "bench.md"))
        return text, n_fail

    for cid, title, child, limit in CHECKS:
        if (only and cid not in only) or cid in skip:
            continue
        t0 = time.monotonic()
        left = args.budget - (t0 - t_start) - 10
        if ctx is None:
            rows.append({"id": cid, "title": title, "result": "FAIL" if args.device == "cuda" else "skip",
                         "seconds": 0, "detail": "no bundle (scripts/gpu-bundle)"})
            continue
        ran_now = child not in cache
        if not ran_now:
            res = cache[child]
        elif left < 20:
            res = {cid: ["skip", f"out of time budget ({args.budget:.0f}s): run again with --only {cid}"]}
        else:
            timeout = min(limit, left)
            logpath = os.path.join(args.work, f"{child}.log")
            logs.append((f"{cid}: {title}", logpath))
            log(f"-- {cid}: {title} (limit {timeout:.0f}s)")
            got = run_child(args, child, timeout, logpath)
            if got is None:
                res = {c: ["FAIL", f"timed out after {timeout:.0f}s (see checks.log)"]
                       for c in ([cid, "e"] if child == "de" else [cid])}
            elif not got:
                res = {cid: ["FAIL", "the check crashed: " + tail_file(logpath, 300).strip()
                             .replace("\n", " | ")[-200:]]}
            else:
                res = got
            cache[child] = res
        st, det = res.get(cid, res.get(child, ["FAIL", "no result"]))
        secs = time.monotonic() - t0 if ran_now else 0.0
        rows.append({"id": cid, "title": title, "result": st, "seconds": secs, "detail": det})
        log(f"   {cid}: {st} ({secs:.0f}s) {det}")
        publish()

    text, n_fail = publish(final=True)
    if out_dir:
        with tarfile.open(os.path.join(out_dir, "logs.tar.gz"), "w:gz") as tar:
            for root, dirs, files in os.walk(args.work):
                for fn in files:
                    p = os.path.join(root, fn)
                    if fn.endswith((".log", ".json", ".md", ".xml")) and os.path.getsize(p) < 4 << 20:
                        tar.add(p, arcname=os.path.relpath(p, args.work))
        if os.path.getsize(os.path.join(out_dir, "logs.tar.gz")) > 15 << 20:
            os.remove(os.path.join(out_dir, "logs.tar.gz"))
    print()
    print(text, flush=True)
    if args.keep or not out_dir:
        print(f"\nwork folder (logs, models, helper outputs): {args.work}")
    else:
        shutil.rmtree(args.work, ignore_errors=True)
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main() or 0)


if __name__ == "__main__":
    sys.exit(main() or 0)
