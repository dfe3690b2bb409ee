#!/usr/bin/python3
"""planted.py -- proof that a green emulated run means something: planted bugs must be caught.

Each entry below takes one real kernel file of model/cuda/, changes one exact piece of it (the
piece must occur exactly once, so the test follows the source or fails loudly), rebuilds that
file as the Makefile builds it for the emulator, relinks one of tests/gpu's tests with it
(or the backend library, for a model/ unit test that loads it), runs the relevant cases
(CELERIAC_GPU_TEST_ONLY) and requires the run to fail the way the bug
should be caught: by the emulator's checker (an out-of-bounds access, a race) or by the
comparison with the CPU twin (numbers). Needs `make cuda-emu` (build/cuda-emu/build.json says
how things are built). Prints one line per bug and "N passed, N failed"; exits 1 when a bug
went unnoticed or could not be built. Variants are built under build/cuda-emu/planted/.
"""
import concurrent.futures
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMU = os.path.join(REPO, "build", "cuda-emu")
OUT = os.path.join(EMU, "planted")

FWD_TILE = ("        for (int e = tid; e < 32 * HS; e += NT) {\n"
            "            int j = e / HS, d = e - j * HS, t = k0 + j;\n"
            "            Ks[j * (HS + 1) + d] = t < T ? kb[(size_t)t * ldk + d] : 0.0f;\n"
            "            Vs[e] = t < T ? vb[(size_t)t * ldk + d] : 0.0f;\n")

# name, file, old, new, test, CELERIAC_GPU_TEST_ONLY, how it must be caught
PLANTED = [
    ("off-by-one in attention's K/V tile loop: one element past the shared tile",
     "model/cuda/attention.cu", FWD_TILE, FWD_TILE.replace("e < 32 * HS", "e <= 32 * HS"),
     "test_cuda_attention", "attention B=2 T=7 NH=4 NKV=2 HS=64", "out-of-bounds shared access"),
    ("off-by-one in attention's K tile bound: a key row past the sequence",
     "model/cuda/attention.cu", FWD_TILE,
     FWD_TILE.replace("Ks[j * (HS + 1) + d] = t < T", "Ks[j * (HS + 1) + d] = t <= T"),
     "test_cuda_attention", "attention B=2 T=7 NH=4 NKV=2 HS=64", "out-of-bounds device access"),
    ("missing __syncthreads after attention's K/V tile load",
     "model/cuda/attention.cu",
     "        __syncthreads();\n        if (k0 > row0 + R - 1) continue; /* every key after every row",
     "        if (k0 > row0 + R - 1) continue; /* every key after every row",
     "test_cuda_attention", "attention B=2 T=70 NH=4 NKV=2 HS=64", "shared-memory race"),
    ("missing __syncwarp between a warp's P writes and its reads",
     "model/cuda/attention.cu",
     "            Pw[r * 32 + lane] = p;\n        }\n        __syncwarp();\n",
     "            Pw[r * 32 + lane] = p;\n        }\n",
     "test_cuda_attention", "attention B=2 T=70 NH=4 NKV=2 HS=64", "shared-memory race"),
    ("wrong lane in attention's warp-sum butterfly (down instead of xor)",
     "model/cuda/attention.cu",
     "    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);",
     "    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(FULL_MASK, v, o);",
     "test_cuda_attention", "attention B=2 T=70 NH=4 NKV=2 HS=64", "numbers"),
    ("a bf16 conversion that truncates instead of rounding to nearest even",
     "model/cuda/cast.cu",
     "        out[i] = __float2bfloat16_rn(inp[i]);",
     "        out[i] = __float2bfloat16_rz(inp[i]);",
     "test_cuda_ops", "cast", "numbers"),
    ("a pass returns before its stream is synchronised: the host reads its log-probs early",
     "model/cuda/engine.cu",
     "    return cel_gpu_check(g, do_backward ? \"forward_backward\" : \"forward\", err);",
     "    return CEL_OK;",
     "lib:test_model_jobs", "", "numbers"),
]


def slug(name):
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48]


def build(spec, cfg):
    """Builds the variant's test program; returns (path, None) or (None, error text)."""
    name, path, old, new, test, _, _ = spec
    with open(os.path.join(REPO, path)) as f:
        src = f.read()
    n = src.count(old)
    if n != 1:
        return None, f"the piece to change occurs {n} times in {path} (update planted.py)"
    d = os.path.join(OUT, slug(name))
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    base = os.path.splitext(os.path.basename(path))[0]
    cu, cpp, obj = (os.path.join(d, base + x) for x in (".cu", ".cpp", ".o"))
    with open(cu, "w") as f:
        f.write(src.replace(old, new))
    steps = [
        ["/usr/bin/python3", os.path.join(REPO, "tests/cuda-emu/cu2cpp.py"), cu, cpp],
        [cfg["cxx"], *shlex.split(cfg["flags"]), *shlex.split(cfg["checked"]), "-fvisibility=hidden",
         "-iquote", os.path.join(EMU, "src", "model", "cuda"), "-iquote", "model/cuda", "-c", cpp,
         "-o", obj],
    ]
    own = f"build/cuda-emu/obj/{os.path.splitext(path)[0]}.o"
    objs = [obj if o == own else o for o in cfg["cu_obj"].split()]
    if test.startswith("lib:"):  # the backend library, for a program that dlopens it
        exe = os.path.join(d, "libceleriac-cuda.so")
        steps.append([cfg["cxx"], "-shared", "-Wl,--no-undefined", "-o", exe, *objs,
                      *cfg["rt_obj"].split(), *cfg["lib_obj"].split(), "-ldl", "-lm"])
    else:
        exe = os.path.join(d, test)
        steps.append([cfg["cxx"], "-o", exe, f"build/cuda-emu/obj/tests/gpu/{test}.o", *objs,
                      *cfg["rt_obj"].split(), *cfg["host_obj"].split(),
                      *shlex.split(cfg["libs"])])
    for cmd in steps:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        if r.returncode != 0:
            return None, f"{' '.join(cmd[:3])}...: {(r.stdout + r.stderr)[-1500:]}"
    return exe, None


def run(spec, exe):
    """Runs the variant; returns (caught, how)."""
    name, _, _, _, test, only, want = spec
    env = dict(os.environ, CELERIAC_GPU_TEST_ONLY=only)
    cmd = [exe]
    if test.startswith("lib:"):  # a unit test of model/ on the variant backend
        cmd = [os.path.join(REPO, "build", "asan", "tests", test[4:])]
        env.update(CELERIAC_CUDA_LIB=exe, CELERIAC_TEST_DEVICE="cuda")
    try:
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           errors="replace", timeout=300)
    except subprocess.TimeoutExpired:
        return False, "timed out"
    out = r.stdout + r.stderr
    kinds = sorted(set(re.findall(r"^cuda-emu: ERROR \(([^)]+)\)", out, re.M)))
    fails = len(re.findall(r"^FAIL|^\[  FAILED  \]", out, re.M))
    how = "; ".join(([f"checker: {', '.join(kinds)}"] if kinds else [])
                    + ([f"numbers: {fails} checks failed"] if fails else [])
                    + [f"exit {r.returncode}"])
    caught = r.returncode != 0 and (fails > 0 if want == "numbers" else want in kinds)
    return caught, how


def main():
    cfg_path = os.path.join(EMU, "build.json")
    if not os.path.exists(cfg_path):
        print("planted.py: build/cuda-emu/build.json is missing (make cuda-emu)")
        print("0 passed, 1 failed")
        return 1
    with open(cfg_path) as f:
        cfg = json.load(f)
    passed = failed = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        built = list(pool.map(lambda s: build(s, cfg), PLANTED))
    for spec, (exe, err) in zip(PLANTED, built):
        if err:
            print(f"FAIL planted: {spec[0]}: not built: {err}", flush=True)
            failed += 1
            continue
        caught, how = run(spec, exe)
        print(f"{'ok  ' if caught else 'FAIL'} planted: {spec[0]}: "
              f"{'caught' if caught else 'NOT caught as ' + spec[6]} ({how})", flush=True)
        passed += caught
        failed += not caught
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
