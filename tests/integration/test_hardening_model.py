"""test_hardening_model.py -- issue 12 in the executors: quotas, non-finite numbers, hostile files.

Rows: 4 one owner creating adapters without end (a count quota, a byte quota, rank <= 256 also
for lora.load, and no eviction that drops accumulated gradients), 5 loss weights that overflow
float32 and an adapter whose step would be NaN (refused; NaN results written as Python's json
writes them, never MemoryError), 6 lora.load of a folder with a FIFO in it (refused at once;
--model-time-limit behind it). The class test opens every user-openable path as a FIFO, a
directory, a symlink to /dev/zero and a 2 GB sparse file. Each test runs one worker on the
bundled model with its own --state-dir and import root.
"""

import json
import math
import os
import shutil
import struct
import time

import pytest

from conftest import celeriac_only, scaled

pytestmark = celeriac_only

GET = 60
TEXT = "The quick brown fox jumps over the lazy dog."


def call(app, name, *args, **kwargs):
    return app.send_task(name, args=list(args), kwargs=kwargs).get(timeout=scaled(GET))


def failure(app, name, *args, **kwargs):
    """(exception type name, message) of a task that must fail."""
    r = app.send_task(name, args=list(args), kwargs=kwargs)
    with pytest.raises(Exception) as e:
        r.get(timeout=scaled(GET))
    return type(e.value).__name__, str(e.value)


@pytest.fixture
def dirs(tmp_path):
    state, root = tmp_path / "state", tmp_path / "imports"
    state.mkdir()
    root.mkdir()
    return state, root


@pytest.fixture
def mworker(worker, dirs):
    state, root = dirs

    def start(*args, c=1):
        return worker("-c", str(c), "--state-dir", str(state), "--import-root", str(root),
                      *args, ready_timeout=40)
    return start


def train(app, aid, weights=None):
    data = [{"text": TEXT}] if weights is None else \
        [{"tokens": [1, 2, 3, 4], "target_tokens": [2, 3, 4, 5], "weights": weights}]
    return call(app, "lora.forward_backward", aid, data)


# --------------------------------------------------------------------------------------------
# Row 4: quotas


def test_row4_adapters_per_owner(mworker, celery_app):
    mworker("--max-adapters-per-owner", "3")
    ids = [call(celery_app, "lora.create", rank=2, owner="mallory")["adapter_id"]
           for _ in range(3)]
    typ, msg = failure(celery_app, "lora.create", rank=2, owner="mallory")
    assert typ == "ValueError" and "--max-adapters-per-owner" in msg, msg
    # other owners (and adapters without one) have their own count
    call(celery_app, "lora.create", rank=2, owner="alice")
    call(celery_app, "lora.create", rank=2)
    # deleting one makes room again
    call(celery_app, "lora.delete", ids[0])
    call(celery_app, "lora.create", rank=2, owner="mallory")
    assert len(call(celery_app, "lora.list", "mallory")) == 3


def test_row4_bytes_per_owner(mworker, celery_app):
    """A rank-256 adapter of the bundled model is about 57 MB on disk (weights and AdamW
    moments): a 70 MB quota takes one, not two, and not its export on top."""
    mworker("--max-adapter-bytes-per-owner", str(70 << 20), "--max-adapters-per-owner", "0")
    a = call(celery_app, "lora.create", rank=256, owner="mallory")["adapter_id"]
    typ, msg = failure(celery_app, "lora.create", rank=256, owner="mallory")
    assert typ == "ValueError" and "--max-adapter-bytes-per-owner" in msg, msg
    assert [x["adapter_id"] for x in call(celery_app, "lora.list", "mallory")] == [a]
    # lora.save adds an export: counted too
    small = call(celery_app, "lora.create", rank=1, owner="bob")["adapter_id"]
    call(celery_app, "lora.save", small)
    typ, msg = failure(celery_app, "lora.save", a)
    assert typ == "ValueError" and "--max-adapter-bytes-per-owner" in msg, msg


def export_copy(app, aid, root, name):
    """lora.save's folder of aid, copied to root/name (returned)."""
    path = call(app, "lora.save", aid)
    dst = os.path.join(root, name)
    shutil.copytree(path, dst)
    return dst


def test_row4_rank_limit_also_for_load(mworker, celery_app, dirs):
    _, root = dirs
    mworker()
    typ, msg = failure(celery_app, "lora.create", rank=257)
    assert typ == "ValueError" and "rank must be in [1, 256]" in msg
    aid = call(celery_app, "lora.create", rank=4)["adapter_id"]
    folder = export_copy(celery_app, aid, root, "big-rank")
    cfg_path = os.path.join(folder, "adapter_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["r"] = 512
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    typ, msg = failure(celery_app, "lora.load", folder)
    assert typ == "ValueError" and "rank r that is not an integer in [1, 256]" in msg, msg
    cfg["r"], cfg["lora_alpha"] = 4, 1e300
    with open(cfg_path, "w") as f:
        json.dump(cfg, f)
    typ, msg = failure(celery_app, "lora.load", folder)
    assert typ == "ValueError" and "lora_alpha" in msg, msg


def test_row4_gradients_are_never_evicted(mworker, celery_app):
    """One executor holds at most 64 adapters in memory: with 64 holding gradients, a 65th
    is refused clearly instead of silently dropping someone's gradients; once one is stepped,
    it fits, and every other adapter still has its gradients."""
    mworker("--max-adapters-per-owner", "0")
    ids = []
    for i in range(64):
        aid = call(celery_app, "lora.create", rank=1, seed=i, owner=f"user{i % 8}")["adapter_id"]
        train(celery_app, aid)
        ids.append(aid)
    typ, msg = failure(celery_app, "lora.create", rank=1, owner="late")
    assert typ == "RuntimeError" and "accumulated gradients" in msg, msg
    assert call(celery_app, "lora.optim_step", ids[0])["step"] == 1
    late = call(celery_app, "lora.create", rank=1, owner="late")["adapter_id"]
    train(celery_app, late)
    for aid in ids[1:] + [late]:
        assert call(celery_app, "lora.optim_step", aid)["step"] == 1, aid


# --------------------------------------------------------------------------------------------
# Row 5: non-finite numbers


def test_row5_overflowing_weights_are_refused(mworker, celery_app):
    mworker()
    aid = call(celery_app, "lora.create", rank=2, seed=1)["adapter_id"]
    typ, msg = failure(celery_app, "lora.forward_backward", aid,
                       [{"tokens": [1, 2], "target_tokens": [2, 3], "weights": [3e38, 1]}])
    assert typ == "ValueError" and "weights[0] must be in [0, 10000]" in msg, msg
    typ, msg = failure(celery_app, "lora.optim_step", aid)
    assert typ == "ValueError" and "no accumulated gradients" in msg
    assert call(celery_app, "lora.info", aid)["step"] == 0
    typ, msg = failure(celery_app, "lora.optim_step", aid, {"learning_rate": 1e39})
    assert typ == "ValueError"
    typ, msg = failure(celery_app, "lora.create", alpha=1e39)
    assert typ == "ValueError"


def poison(folder, value=1e30):
    """Sets every float of folder's adapter_model.safetensors (F32) to value: finite, but
    its products overflow float32 in a forward pass."""
    path = os.path.join(folder, "adapter_model.safetensors")
    with open(path, "rb") as f:
        data = bytearray(f.read())
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    for name, t in header.items():
        if name == "__metadata__":
            continue
        assert t["dtype"] == "F32"
        a, b = t["data_offsets"]
        count = (b - a) // 4
        data[8 + n + a:8 + n + b] = struct.pack(f"<{count}f", *([value] * count))
    with open(path, "wb") as f:
        f.write(bytes(data))


def test_row5_nan_step_is_refused_and_nan_results_are_json(mworker, celery_app, dirs):
    """An adapter whose weights overflow in the forward pass: scoring and forward_backward
    answer NaN/inf as Python's json writes them (before: MemoryError), and optim_step refuses
    the non-finite step, leaving the adapter as it was (before: NaN weights checkpointed)."""
    _, root = dirs
    mworker()
    aid = call(celery_app, "lora.create", rank=2, seed=3)["adapter_id"]
    folder = export_copy(celery_app, aid, root, "poisoned")
    poison(folder)
    bad = call(celery_app, "lora.load", folder)["adapter_id"]
    s = call(celery_app, "model.score", TEXT, adapter_id=bad)
    assert isinstance(s["logprob"], float) and not math.isfinite(s["logprob"]), s
    assert all(isinstance(x, float) for x in s["token_logprobs"])
    r = train(celery_app, bad)
    assert not math.isfinite(r["loss"]), r
    typ, msg = failure(celery_app, "lora.optim_step", bad)
    assert typ == "ValueError" and "gradient norm is" in msg and "not applied" in msg, msg
    assert call(celery_app, "lora.info", bad)["step"] == 0
    # the refused step dropped the gradients: nothing half-applied is left behind
    typ, msg = failure(celery_app, "lora.optim_step", bad)
    assert "no accumulated gradients" in msg
    # the checkpoint still holds the loaded weights (finite, as they were)
    again = call(celery_app, "lora.save", bad)
    with open(os.path.join(again, "adapter_model.safetensors"), "rb") as f, \
            open(os.path.join(folder, "adapter_model.safetensors"), "rb") as g:
        assert f.read()[-64:] == g.read()[-64:]


def test_row5_nan_weights_are_refused_at_load(mworker, celery_app, dirs):
    _, root = dirs
    mworker()
    aid = call(celery_app, "lora.create", rank=2)["adapter_id"]
    folder = export_copy(celery_app, aid, root, "nan")
    poison(folder, float("nan"))
    typ, msg = failure(celery_app, "lora.load", folder)
    assert typ == "ValueError" and "NaN or infinite" in msg, msg


# --------------------------------------------------------------------------------------------
# Row 6 and the hostile files class


FILES = ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors"]


def make_hostile(path, kind):
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "devzero":
        os.symlink("/dev/zero", path)
    elif kind == "sparse":
        with open(path, "wb") as f:
            f.truncate(2 << 30)


@pytest.mark.parametrize("kind", ["fifo", "dir", "devzero", "sparse"])
def test_row6_hostile_files_fail_fast(mworker, celery_app, dirs, kind):
    """Each file of an adapter folder (and the folder itself) as a FIFO, a directory, a
    symlink to /dev/zero and a 2 GB sparse file: every lora.load fails clearly within
    seconds (before: a FIFO blocked the executor forever) and the worker keeps serving."""
    _, root = dirs
    mworker()
    aid = call(celery_app, "lora.create", rank=2)["adapter_id"]
    good = call(celery_app, "lora.save", aid)
    for name in FILES:
        folder = os.path.join(root, f"{kind}-{name}")
        shutil.copytree(good, folder)
        make_hostile(os.path.join(folder, name), kind)
        t0 = time.monotonic()
        typ, msg = failure(celery_app, "lora.load", folder)
        assert time.monotonic() - t0 < scaled(15), (name, kind)
        assert typ in ("ValueError", "PermissionError"), (name, kind, typ, msg)
        assert msg, (name, kind)
    # the folder itself
    target = os.path.join(root, f"{kind}-folder")
    make_hostile(target, kind)
    typ, msg = failure(celery_app, "lora.load", target)
    assert typ in ("ValueError", "PermissionError"), (kind, typ, msg)
    # still serving, and a good folder still loads
    assert call(celery_app, "lora.load", good)["rank"] == 2


def test_row6_two_fifo_loads_do_not_stop_a_two_executor_worker(mworker, celery_app, dirs):
    _, root = dirs
    mworker(c=2)
    aid = call(celery_app, "lora.create", rank=2)["adapter_id"]
    good = call(celery_app, "lora.save", aid)
    folders = []
    for i in range(2):
        f = os.path.join(root, f"fifo{i}")
        shutil.copytree(good, f)
        make_hostile(os.path.join(f, "adapter_config.json"), "fifo")
        folders.append(f)
    rs = [celery_app.send_task("lora.load", args=[f]) for f in folders]
    for r in rs:
        with pytest.raises(ValueError):
            r.get(timeout=scaled(GET))
    assert call(celery_app, "diag.add", 1, 2) == 3


def test_model_time_limit(mworker, celery_app):
    """--model-time-limit: a model task without a time limit of its own is killed after it;
    diag tasks are not model tasks."""
    from billiard.exceptions import TimeLimitExceeded
    mworker("--model-time-limit", "1")
    aid = call(celery_app, "lora.create", rank=2)["adapter_id"]
    # about 30,000 tokens forward and backward: tens of seconds on the CPU
    data = [{"text": "the quick brown fox jumps over the lazy dog " * 30}] * 64
    r = celery_app.send_task("lora.forward_backward", args=[aid, data])
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=scaled(GET))
    assert time.monotonic() - t0 < scaled(15)
    assert call(celery_app, "diag.sleep", 1.5) == 1.5
    assert call(celery_app, "model.score", TEXT)["tokens"] > 0
