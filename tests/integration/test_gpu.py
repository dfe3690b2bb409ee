"""test_gpu.py -- the worker end to end on a GPU, through the stock Celery client.

bin/celeriac --device cuda -c 1 on the bundled model and a fresh --state-dir; the client
creates two adapters, trains each (forward_backward + optim_step, both adapters' jobs queued
together), scores, samples. Checked: what the client sees (losses fall, the tuned adapters
score their text better than the base model, the base model's per-token log-probs match
`celeriac-lm score` on the CPU within bf16 error), and the process model DESIGN.md asks for:
/proc/<main pid>/maps never holds libcuda, libcudart, libcublas (nor OpenBLAS) while an
executor's maps hold libcuda.

Skipped, with the reason, where there is no NVIDIA GPU (`nvidia-smi -L` or /dev/nvidia0) or
no CUDA backend (libceleriac-cuda.so beside bin/celeriac, or $CELERIAC_CUDA_LIB). On the GPU
machine tests/gpu/check.py (scripts/gpu-check) runs it with the binaries, libraries,
redis-server and Celery client of .gpu/ (scripts/gpu-bundle).
CELERIAC_GPU_TEST_DEVICE=cpu runs the same test on
the CPU (check.py's dry run here): then no process may map a CUDA library, and the scores
must equal the CLI's to 1e-4. CELERIAC_GPU_TEST_EMU=1 with $CELERIAC_CUDA_LIB pointing at
build/cuda-emu/libceleriac-cuda.so runs it on the CUDA emulator (tests/cuda-emu/run.py does):
no device needed, and the executor must map that library.
Run: /usr/bin/python3 -m pytest -q tests/integration/test_gpu.py
"""
import json
import math
import os
import shutil
import subprocess
import time

import pytest

from conftest import REPO, celeriac_bin_dir, scaled

DEVICE = os.environ.get("CELERIAC_GPU_TEST_DEVICE", "cuda")
# CELERIAC_GPU_TEST_EMU=1 (tests/cuda-emu/run.py): $CELERIAC_CUDA_LIB is the backend built
# against the CUDA emulator, so no NVIDIA device is needed and the executor maps that
# library instead of libcuda.
EMU = os.environ.get("CELERIAC_GPU_TEST_EMU", "") not in ("", "0") and DEVICE != "cpu"
TEXT = "The quick brown fox jumps over the lazy dog."
T = 90  # seconds for one result (the first CUDA task also pays for the context)
CUDA_LIBS = ("libcuda.so", "libcudart", "libcublas", "libceleriac-cuda")
EXECUTOR_GPU_LIB = "libceleriac-cuda.so" if EMU else "libcuda.so"
# bf16 weights and GEMM inputs vs the fp32 CPU engine on the tiny model: per-token log-prob
# differences of a few hundredths of a nat; the mean over the text is tighter.
TOL_TOKEN = 0.25 if DEVICE != "cpu" else 1e-4
TOL_MEAN = 0.05 if DEVICE != "cpu" else 1e-4


def _why_skip():
    if DEVICE == "cpu":
        return None
    lib = os.environ.get("CELERIAC_CUDA_LIB") or os.path.join(celeriac_bin_dir(),
                                                               "libceleriac-cuda.so")
    if not os.path.exists(lib):
        return f"no CUDA backend ({lib} not built: `make cuda` where nvcc is)"
    if EMU:
        return None
    seen = os.path.exists("/dev/nvidia0")
    if not seen and shutil.which("nvidia-smi"):
        try:
            r = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
            seen = r.returncode == 0 and "GPU" in r.stdout
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None if seen else "no NVIDIA GPU visible (nvidia-smi -L, /dev/nvidia0)"


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=str(_why_skip()))


def _maps(pid):
    try:
        with open(f"/proc/{pid}/maps") as f:
            return f.read()
    except OSError:
        return ""


def _libs(maps, names):
    return sorted({line.split()[-1] for line in maps.splitlines()
                   if any(n in line.split()[-1] for n in names)} if maps else set())


def _has_device_flag(binary):
    r = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20)
    return "--device" in r.stdout + r.stderr


def call(app, name, *args, timeout=T, **kwargs):
    return app.send_task(name, args=list(args), kwargs=kwargs).get(timeout=scaled(timeout))


@pytest.fixture
def model_dir(tmp_path):
    src = os.path.join(REPO, "model", "tiny")
    d = tmp_path / "tiny"
    d.mkdir()
    for f in ("config.json", "model.safetensors", "tokenizer.json"):
        shutil.copy(os.path.join(src, f), d / f)
    return str(d)


def _cli_score(model_dir, text):
    """The CPU engine's numbers for text, from celeriac-lm (no GPU involved)."""
    lm = os.path.join(celeriac_bin_dir(), "celeriac-lm")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    r = subprocess.run([lm, "score", "--model", model_dir, text], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_worker_trains_two_adapters_on_the_gpu(worker, celery_app, model_dir, tmp_path):
    binary = os.path.join(celeriac_bin_dir(), "celeriac")
    args = ["-c", "1", "--model", model_dir, "--state-dir", str(tmp_path / "state")]
    if _has_device_flag(binary):
        args += ["--device", DEVICE]
    elif DEVICE != "cpu":
        pytest.fail("missing: bin/celeriac has no --device option (the CUDA worker is not in "
                    "this build)")
    w = worker(*args, ready_timeout=90)
    main_pid = w.pid
    t0 = time.monotonic()

    def check_main():
        bad = _libs(_maps(main_pid), CUDA_LIBS + ("libopenblas",))
        assert not bad, f"the main process maps {bad}"

    check_main()
    base = call(celery_app, "model.score", TEXT)
    assert base["tokens"] > 0 and math.isfinite(base["logprob"])
    ref = _cli_score(model_dir, TEXT)
    assert ref["tokens"] == base["tokens"]
    diffs = [abs(a - b) for a, b in zip(base["token_logprobs"], ref["token_logprobs"])]
    assert max(diffs) <= TOL_TOKEN, (max(diffs), base["token_logprobs"], ref["token_logprobs"])
    assert abs(base["mean_logprob"] - ref["mean_logprob"]) <= TOL_MEAN, (base, ref)

    a = call(celery_app, "lora.create", rank=8, alpha=16, seed=0, owner="gpu-a")["adapter_id"]
    b = call(celery_app, "lora.create", rank=4, alpha=8, seed=1, owner="gpu-b",
             target_modules=["q_proj", "v_proj", "down_proj"])["adapter_id"]
    texts = {a: TEXT, b: "Pack my box with five dozen liquor jugs."}
    losses = {a: [], b: []}
    executor_cuda = set()
    for step in range(6):
        # both adapters' jobs queued at once: the executor may run them in one batch
        fb = {aid: celery_app.send_task("lora.forward_backward", args=[aid, [{"text": texts[aid]}]])
              for aid in (a, b)}
        check_main()
        for aid, r in fb.items():
            out = r.get(timeout=scaled(T))
            assert math.isfinite(out["loss"]) and out["tokens"] > 0, out
            losses[aid].append(out["loss"])
        steps = {aid: celery_app.send_task("lora.optim_step", args=[aid, {"learning_rate": 2e-2}])
                 for aid in (a, b)}
        for aid, r in steps.items():
            got = r.get(timeout=scaled(T))
            assert got["step"] == step + 1 and math.isfinite(got["grad_norm"]), got
        for pid in w.child_pids():
            executor_cuda.update(_libs(_maps(pid), CUDA_LIBS))
        check_main()
    for aid in (a, b):
        assert losses[aid][-1] < losses[aid][0] - 0.3, (aid, losses[aid])
        tuned = call(celery_app, "model.score", texts[aid], adapter_id=aid)
        plain = call(celery_app, "model.score", texts[aid])
        assert tuned["logprob"] > plain["logprob"] + 1, (tuned, plain)
        s = call(celery_app, "lora.sample", aid, "The quick", {"max_tokens": 16, "temperature": 0})
        assert len(s["samples"]) == 1 and isinstance(s["samples"][0], str)
    info = call(celery_app, "lora.info", a)
    assert info["step"] == 6
    path = call(celery_app, "lora.save", a)
    assert os.path.isfile(os.path.join(path, "adapter_model.safetensors"))
    check_main()
    if DEVICE == "cpu":
        assert not executor_cuda, f"a CPU executor maps {sorted(executor_cuda)}"
    else:
        assert any(EXECUTOR_GPU_LIB in x for x in executor_cuda), \
            f"no executor maps {EXECUTOR_GPU_LIB} (they map {sorted(executor_cuda)})"
    # one line tests/gpu/check.py puts in its summary
    print(f"\nGPU-E2E: {DEVICE}{' (emulated)' if EMU else ''}: losses {losses[a][0]:.2f}->{losses[a][-1]:.2f} and "
          f"{losses[b][0]:.2f}->{losses[b][-1]:.2f}, base mean logprob diff vs CPU "
          f"{abs(base['mean_logprob'] - ref['mean_logprob']):.2g}, executor maps "
          f"{', '.join(os.path.basename(x) for x in sorted(executor_cuda)) or 'no CUDA'}, "
          f"{time.monotonic() - t0:.0f}s")
