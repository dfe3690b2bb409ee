"""test_multiworker_state.py -- several celeriac workers on one broker and one state directory.

Issue 15, the worker side: every worker also consumes its own direct queue as Celery's
worker_direct names it (`<node>.dq2`, exchange `C.dq2`, routing key = node name), so the
front end can send an adapter's jobs to the node that holds it; a worker that gets a job for
an adapter it does not hold adopts it from the shared state directory; gradients lost with a
dead node are reported (AdapterStateLost) rather than silently dropped; a warm shutdown hands
pending gradients over by checkpoint; workers never overwrite or prune each other's files.

Real processes: two or three `bin/celeriac -c 1` with distinct -n names, one Redis (one
RabbitMQ case), one --state-dir, the stock Celery client.
"""
import filecmp
import json
import os
import shutil
import signal
import socket
import struct
import zlib

import pytest
from kombu import Exchange, Queue

from conftest import WORKER_KIND, both_brokers, scaled, wait_until
from test_model_tasks import TEXT, model_dir  # noqa: F401 (a session fixture)

pytestmark = pytest.mark.skipif(WORKER_KIND == "python",
                                reason="several celeriac workers (the stock worker is the "
                                       "reference in the active_queues test only)")

T = 60  # seconds for one result
HOST = socket.gethostname()


def node(name):
    return f"{name}@{HOST}"


def direct(name):
    """The stock client's route to one node: celery.utils.nodenames.worker_direct."""
    n = node(name)
    return Queue(f"{n}.dq2", Exchange("C.dq2"), routing_key=n)


def ran_on(workers, task_id):
    """Names of the workers whose log says task_id succeeded there."""
    return [name for name, w in workers.items() if any(i == task_id for _, i in w.succeeded())]


# --------------------------------------------------------------------------------------------
# direct queues


@both_brokers
def test_direct_queue_reaches_only_its_node(worker, celery_app):
    """A task sent to <node>.dq2 (as a kombu Queue, or as exchange C.dq2 + routing key) runs
    on that node only; the shared queue still feeds both."""
    ws = {"dqa": worker("-c", "1", "-n", "dqa@%h"), "dqb": worker("-c", "1", "-n", "dqb@%h")}
    for target in ("dqa", "dqb", "dqb", "dqa"):
        r = celery_app.send_task("diag.add", args=[2, 3], queue=direct(target))
        assert r.get(timeout=scaled(T)) == 5
        wait_until(lambda: ran_on(ws, r.id), scaled(10), what="the success log line")
        assert ran_on(ws, r.id) == [target]
        r = celery_app.send_task("diag.add", args=[4, 5], exchange="C.dq2",
                                 routing_key=node(target))
        assert r.get(timeout=scaled(T)) == 9
        wait_until(lambda: ran_on(ws, r.id), scaled(10), what="the success log line")
        assert ran_on(ws, r.id) == [target]
    shared = [celery_app.send_task("diag.add", args=[i, i]) for i in range(6)]
    assert [r.get(timeout=scaled(T)) for r in shared] == [2 * i for i in range(6)]


@both_brokers
def test_direct_queue_in_active_queues_as_the_stock_worker(worker, pyworker, celery_app):
    """inspect active_queues shows the direct queue exactly as the stock worker with
    worker_direct=True shows its own (names aside); --without-direct-queue leaves it out."""
    worker("-c", "1", "-n", "aqc@%h")
    pyworker("-c", "1", "-n", "aqp@%h", env={"PYDIAG_WORKER_DIRECT": "1"})
    worker("-c", "1", "-n", "aqn@%h", "--without-direct-queue")
    replies = celery_app.control.inspect(timeout=scaled(5)).active_queues()
    assert set(replies) == {node("aqc"), node("aqp"), node("aqn")}

    def dq(n):
        return [q for q in replies[node(n)] if q["name"].endswith(".dq2")]

    mine, stock = dq("aqc"), dq("aqp")
    assert len(mine) == 1 and len(stock) == 1, replies
    assert mine[0]["name"] == f"{node('aqc')}.dq2" and mine[0]["routing_key"] == node("aqc")
    assert mine[0]["exchange"]["name"] == "C.dq2"
    stock[0].update(name=mine[0]["name"], routing_key=mine[0]["routing_key"])
    assert mine[0] == stock[0]
    assert dq("aqn") == []
    assert [q["name"] for q in replies[node("aqc")]] == ["celery", f"{node('aqc')}.dq2"]


# --------------------------------------------------------------------------------------------
# adapters on several workers: homes, adoption, lost and handed-over gradients


@pytest.fixture
def nodes(worker, model_dir, tmp_path):
    """Factory: nodes(*names) -> {name: WorkerProc}, celeriac -c 1 workers named <name>@host
    on the test model and one shared --state-dir."""
    state = tmp_path / "shared-state"
    state.mkdir()

    def start(*names, extra=()):
        return {n: worker("-c", "1", "-n", f"{n}@%h", "--model", model_dir, "--state-dir",
                          str(state), *extra, ready_timeout=40) for n in names}
    start.state = str(state)
    return start


def on(app, name, task, *args, task_id=None, **kwargs):
    """Sends task to node name's direct queue; returns the AsyncResult."""
    return app.send_task(task, args=list(args), kwargs=kwargs, queue=direct(name),
                         task_id=task_id)


def run(app, name, task, *args, **kwargs):
    return on(app, name, task, *args, **kwargs).get(timeout=scaled(T))


def fails(app, name, task, *args, **kwargs):
    """(exception type name, message) of a task expected to fail on node name."""
    r = on(app, name, task, *args, **kwargs)
    with pytest.raises(Exception) as ei:
        r.get(timeout=scaled(T))
    assert r.state == "FAILURE"
    return type(ei.value).__name__, str(ei.value)


def kill_node(w):
    """kill -9 of the whole worker (main process and executors), as a machine that dies."""
    os.killpg(w.pgid, signal.SIGKILL)
    w.proc.wait(10)
    wait_until(lambda: not w.group_pids(), scaled(10), what="the worker's processes to die")


ADAM = {"learning_rate": 1e-2}


@both_brokers
def test_kill9_home_gradients_reported_lost_once(nodes, celery_app):
    """Create on one node, train through its direct queue, kill -9 it after a forward_backward:
    while it lives another node refuses the adapter's optimizer step (AdapterBusy, naming the
    home); once it is dead the other node adopts the adapter from its checkpoint and says once
    that the gradients were lost (AdapterStateLost); training then goes on there, and the step
    count is the number of steps that succeeded."""
    ws = nodes("ka", "kb")
    created = run(celery_app, "ka", "lora.create", rank=4, seed=3)
    aid = created["adapter_id"]
    assert created["node"] == node("ka")
    steps = 0
    for _ in range(2):
        fb = run(celery_app, "ka", "lora.forward_backward", aid, [{"text": TEXT}])
        assert fb["node"] == node("ka")
        steps += 1
        r = run(celery_app, "ka", "lora.optim_step", aid, ADAM)
        assert (r["step"], r["node"]) == (steps, node("ka")) and r["grad_norm"] > 0
    run(celery_app, "ka", "lora.forward_backward", aid, [{"text": TEXT}])  # pending
    typ, msg = fails(celery_app, "kb", "lora.optim_step", aid, ADAM)
    assert typ == "AdapterBusy", msg
    assert node("ka") in msg and f"{node('ka')}.dq2" in msg
    # reads need no gradients: they run anywhere
    assert run(celery_app, "kb", "lora.info", aid)["step"] == 2
    kill_node(ws["ka"])
    typ, msg = fails(celery_app, "kb", "lora.optim_step", aid, ADAM)
    assert typ == "AdapterStateLost", msg
    assert msg == (f"adapter {aid}: gradients from 1 forward_backward call(s) since step 2 were "
                   f"lost with node {node('ka')}; run forward_backward again")
    typ, msg = fails(celery_app, "kb", "lora.optim_step", aid, ADAM)  # once only
    assert typ == "ValueError" and "has no accumulated gradients" in msg
    run(celery_app, "kb", "lora.forward_backward", aid, [{"text": TEXT}])
    r = run(celery_app, "kb", "lora.optim_step", aid, ADAM)
    assert (r["step"], r["node"]) == (3, node("kb"))
    assert run(celery_app, "kb", "lora.info", aid)["step"] == 3


def test_redelivered_forward_backward_after_its_home_died(nodes, celery_app):
    """A home that dies after storing a forward_backward's result and before acking its
    message gets that message delivered again elsewhere (one task id): the adopter runs it
    again and reports nothing lost, since the gradients that died were only that call's; the
    optimizer step after it matches a run where nothing died. A call that is not the lost one
    is still told its gradients were lost."""
    ws = nodes("da", "db", "dc")
    ref = run(celery_app, "dc", "lora.create", rank=2, seed=6)["adapter_id"]
    fb_ref = run(celery_app, "dc", "lora.forward_backward", ref, [{"text": TEXT}])
    step_ref = run(celery_app, "dc", "lora.optim_step", ref, ADAM)

    aid = run(celery_app, "da", "lora.create", rank=2, seed=6)["adapter_id"]
    first = run(celery_app, "da", "lora.forward_backward", aid, [{"text": TEXT}],
                task_id="fb-redelivered-1")
    kill_node(ws["da"])
    on(celery_app, "db", "lora.forward_backward", aid, [{"text": TEXT}],
       task_id="fb-redelivered-1")
    # the first result stays stored (a SUCCESS is never overwritten, as in Celery's backends)
    done = lambda: [ln for ln in ws["db"].log().splitlines()  # noqa: E731
                    if "[fb-redelivered-1] succeeded" in ln or "[fb-redelivered-1] raised" in ln]
    wait_until(done, scaled(T), what="db to run the redelivered forward_backward")
    assert "succeeded" in done()[0], done()
    assert "runs again (its gradients died with node" in ws["db"].log()
    assert first["loss"] == fb_ref["loss"]
    r = run(celery_app, "db", "lora.optim_step", aid, ADAM)
    assert (r["step"], r["grad_norm"]) == (1, step_ref["grad_norm"])

    # the same on a home that dies with a call another task id follows: reported
    run(celery_app, "db", "lora.forward_backward", aid, [{"text": TEXT}], task_id="fb-2")
    kill_node(ws["db"])
    typ, msg = fails(celery_app, "dc", "lora.forward_backward", aid, [{"text": TEXT}],
                     task_id="fb-3")
    assert typ == "AdapterStateLost" and "since step 1" in msg, msg


@pytest.mark.parametrize("how", ["machine", "main-only"])
def test_lost_gradients_fail_the_next_forward_backward_too(nodes, celery_app, how):
    """Two forward_backward calls on a home that dies: the next forward_backward on the
    adopter fails with AdapterStateLost (else the following step would silently apply only
    part of what the user was told succeeded); the one after it succeeds. Killing only the
    main process is the same: its executor, orphaned, hands nothing back (the dead main
    process's tasks may run again elsewhere) and exits (SIGKILLed by its main process's death,
    or at its channel's EOF, whichever comes first)."""
    ws = nodes("fa", "fb")
    aid = run(celery_app, "fa", "lora.create", rank=2, seed=4)["adapter_id"]
    for _ in range(2):
        run(celery_app, "fa", "lora.forward_backward", aid, [{"text": TEXT}])
    if how == "machine":
        kill_node(ws["fa"])
    else:
        ws["fa"].kill()
        wait_until(lambda: not ws["fa"].group_pids(), scaled(20),
                   what="the orphaned executor to exit")
        assert "handed back with gradients" not in ws["fa"].log()
    typ, msg = fails(celery_app, "fb", "lora.forward_backward", aid, [{"text": TEXT}])
    assert typ == "AdapterStateLost" and "from 2 forward_backward call(s) since step 0" in msg
    run(celery_app, "fb", "lora.forward_backward", aid, [{"text": TEXT}])
    assert run(celery_app, "fb", "lora.optim_step", aid, ADAM)["step"] == 1


def test_redelivered_optim_step_applied_once_across_nodes(nodes, celery_app):
    """The same optim_step message (one task id) run again on another node returns the first
    result and applies nothing: the checkpoint's step history guards every worker."""
    nodes("ra", "rb")
    aid = run(celery_app, "ra", "lora.create", rank=2, seed=5)["adapter_id"]
    run(celery_app, "ra", "lora.forward_backward", aid, [{"text": TEXT}])
    first = run(celery_app, "ra", "lora.optim_step", aid, ADAM, task_id="step-once-1")
    assert (first["step"], first["node"]) == (1, node("ra"))
    run(celery_app, "rb", "lora.forward_backward", aid, [{"text": TEXT}])  # pending on rb
    again = on(celery_app, "rb", "lora.optim_step", aid, ADAM, task_id="step-once-1")
    assert again.get(timeout=scaled(T)) == first
    assert run(celery_app, "rb", "lora.info", aid)["step"] == 1
    # rb's pending gradients are still there for the next real step
    r = run(celery_app, "rb", "lora.optim_step", aid, ADAM)
    assert (r["step"], r["node"]) == (2, node("rb"))


def test_warm_shutdown_hands_gradients_over(nodes, celery_app):
    """SIGTERM of the home with pending gradients: the other node's optim_step succeeds with
    no error, and the adapter is exactly what one node training it alone makes (same losses,
    gradient norms, scores after)."""
    ws = nodes("wa", "wb")
    texts = [TEXT, "A second sentence to learn from.", "And a third one, a little longer."]
    # the reference: one node trains an adapter alone
    ref = run(celery_app, "wb", "lora.create", rank=4, seed=7)["adapter_id"]
    want = []
    for t in texts[:2]:
        want.append(run(celery_app, "wb", "lora.forward_backward", ref, [{"text": t}])["loss"])
        want.append(run(celery_app, "wb", "lora.optim_step", ref, ADAM)["grad_norm"])
    want.append(run(celery_app, "wb", "model.score", texts[2], adapter_id=ref)["logprob"])
    # the same seed and data, handed from wa to wb in the middle of a step
    aid = run(celery_app, "wa", "lora.create", rank=4, seed=7)["adapter_id"]
    got = [run(celery_app, "wa", "lora.forward_backward", aid, [{"text": texts[0]}])["loss"],
           run(celery_app, "wa", "lora.optim_step", aid, ADAM)["grad_norm"],
           run(celery_app, "wa", "lora.forward_backward", aid, [{"text": texts[1]}])["loss"]]
    assert ws["wa"].stop() == 0
    assert "handed back with gradients of 1 forward_backward call(s)" in ws["wa"].log()
    r = run(celery_app, "wb", "lora.optim_step", aid, ADAM)
    assert (r["step"], r["node"]) == (2, node("wb"))
    got.append(r["grad_norm"])
    got.append(run(celery_app, "wb", "model.score", texts[2], adapter_id=aid)["logprob"])
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert "AdapterStateLost" not in ws["wb"].log()


def _checkpoints(state, aid):
    """What holds checkpoints in the adapter's directory: the checkpoint file, and checkpoint
    directories (only a store from before the file has them)."""
    d = os.path.join(state, "adapters", aid)
    return sorted(n for n in os.listdir(d) if n.startswith("ckpt-") or n == "checkpoint")


def _current_checkpoint(state, aid):
    """The name in the current record of the adapter's checkpoint file (_current_record)."""
    return _current_record(state, aid)[0]


def _current_record(state, aid):
    """(name, logged steps) of the current record of the adapter's checkpoint file, read here
    on its own
    from the layout executor/adapters_file.c documents: two 512-byte records at 0 and 4096
    ("CELCKPT1", version, slot, seq, cap, len, name[64], in version 2 the step log's nlog,
    klog, ecap and lhash, then the crc32 of the rest), the valid one with the higher seq is
    current."""
    with open(os.path.join(state, "adapters", aid, "checkpoint"), "rb") as f:
        head = f.read(8192)
    best = None
    for at in (0, 4096):
        rec = head[at:at + 512]
        if len(rec) < 132 or rec[:8] != b"CELCKPT1":
            continue
        crc_at = {1: 104, 2: 128}.get(struct.unpack_from("<I", rec, 8)[0])
        if crc_at is None or zlib.crc32(rec[:crc_at]) != struct.unpack_from("<I", rec, crc_at)[0]:
            continue
        version, _slot, seq, _cap, _length = struct.unpack_from("<IIQQQ", rec, 8)
        nlog = struct.unpack_from("<I", rec, 104)[0] if version == 2 else 0
        if best is None or seq > best[0]:
            best = (seq, rec[40:104].rstrip(b"\0").decode(), nlog)
    assert best is not None, f"{aid}: no valid record"
    return best[1:]


def test_three_nodes_share_one_state_dir(nodes, celery_app):
    """Three nodes train their own adapters at once in one state directory: every step lands,
    each adapter keeps exactly its checkpoint file (its current record names step 3), no temp
    file is left, and lora.list on any node lists every adapter."""
    nodes("sa", "sb", "sc")
    names = ["sa", "sb", "sc"]
    ids = {n: [run(celery_app, n, "lora.create", rank=2, seed=i, owner="team")["adapter_id"]
               for i in range(2)] for n in names}
    rounds = 3
    for _ in range(rounds):
        pending = []
        for n in names:
            for aid in ids[n]:
                pending.append(on(celery_app, n, "lora.forward_backward", aid, [{"text": TEXT}]))
                pending.append(on(celery_app, n, "lora.optim_step", aid, ADAM))
        for r in pending:
            r.get(timeout=scaled(T))
    every = sorted(a for n in names for a in ids[n])
    for n in names:
        listed = run(celery_app, n, "lora.list")
        assert [x["adapter_id"] for x in listed] == every
        assert all(x["step"] == rounds for x in listed)
        assert [x["adapter_id"] for x in run(celery_app, n, "lora.list", owner="team")] == every
    state = nodes.state
    for aid in every:
        cur = _current_checkpoint(state, aid)
        wait_until(lambda: _checkpoints(state, aid) == ["checkpoint"], scaled(10),
                   what=f"{aid}: only the checkpoint file, not {_checkpoints(state, aid)}")
        assert cur.startswith(f"ckpt-{rounds:06d}-")
        left = [f for f in os.listdir(os.path.join(state, "adapters", aid)) if ".tmp" in f]
        assert left == [], left
        # the gradients marker stays, rewritten in place: nothing pending
        with open(os.path.join(state, "adapters", aid, "grads.json")) as f:
            marker = json.load(f)
        assert marker["count"] == 0 and marker["ckpt"] == cur, marker


def test_logged_steps_replay_on_another_node(nodes, celery_app, tmp_path):
    """An optim_step on the CPU goes into the checkpoint's step log (issue 17: the gradient it
    applied, not the whole adapter); a node that never held the adapter loads it by replaying
    the log: its lora.save export (weights, both AdamW moments, the step) is the same bytes as
    the one of the node that made the steps, clipped steps and changing hyper-parameters
    included, and training goes on from there on either node."""
    nodes("la", "lb")
    aid = run(celery_app, "la", "lora.create", rank=4, seed=5)["adapter_id"]
    for i in range(5):
        run(celery_app, "la", "lora.forward_backward", aid, [{"text": TEXT}])
        adam = {"learning_rate": 1e-2 / (i + 1), "weight_decay": 0.01 * i,
                "grad_clip_norm": 0.05 if i % 2 else 0.0}
        assert run(celery_app, "la", "lora.optim_step", aid, adam)["step"] == i + 1
    name, logged = _current_record(nodes.state, aid)
    assert name.startswith("ckpt-000005-") and logged == 5
    exported = {}
    for n in ("la", "lb"):
        path = run(celery_app, n, "lora.save", aid)
        exported[n] = shutil.copytree(path, tmp_path / n)
        shutil.rmtree(path)  # so that the other node writes its own
    files = sorted(os.listdir(exported["la"]))
    assert "optimizer.safetensors" in files and "adapter_model.safetensors" in files
    assert sorted(os.listdir(exported["lb"])) == files
    _, mismatch, errors = filecmp.cmpfiles(exported["la"], exported["lb"], files, shallow=False)
    assert mismatch == [] and errors == [], (mismatch, errors)
    # the next step on the other node continues from the replayed state
    run(celery_app, "lb", "lora.forward_backward", aid, [{"text": TEXT}])
    assert run(celery_app, "lb", "lora.optim_step", aid, ADAM)["step"] == 6
    assert _current_record(nodes.state, aid)[1] == 6


# --------------------------------------------------------------------------------------------
# one GPU per worker


@pytest.mark.skipif(os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"),
                    reason="a GPU is here: tests/integration/test_gpu.py runs on it")
def test_device_cuda_n_reaches_the_executor(worker, model_dir, tmp_path):
    """--device cuda:N is what each executor is started with (it opens GPU N); without a GPU
    the executor says so, naming the device, and the worker keeps running (and retrying)."""
    w = worker("-c", "1", "-n", "gpu1@%h", "--device", "cuda:1", "--model", model_dir,
               "--state-dir", str(tmp_path), ready_timeout=40)
    w.wait_log(r"Executor-1\] Cannot load the model from \S+ on device cuda:1: ", timeout=30)
    assert w.alive()


def test_owner_quota_holds_across_nodes(nodes, celery_app):
    """--max-adapters-per-owner counts the shared directory under one lock every node takes:
    creations racing on two nodes never pass it."""
    nodes("qa", "qb", extra=("--max-adapters-per-owner", "2"))
    sent = [on(celery_app, n, "lora.create", rank=1, owner="quota") for n in ["qa", "qb"] * 3]
    ok, refused = [], []
    for r in sent:
        try:
            ok.append(r.get(timeout=scaled(T))["adapter_id"])
        except Exception as e:  # noqa: BLE001
            assert type(e).__name__ == "ValueError" and "the limit is 2" in str(e), e
            refused.append(e)
    assert (len(ok), len(refused)) == (2, 4)
    listed = run(celery_app, "qb", "lora.list", owner="quota")
    assert sorted(x["adapter_id"] for x in listed) == sorted(ok)
