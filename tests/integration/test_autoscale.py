"""test_autoscale.py -- --autoscale, the autoscale command and mingle, through the stock tools.

Executors grow under a burst of diag.sleep and are retired once idle (seen in `celery inspect
stats` and in /proc); `app.control.autoscale` and `celery control autoscale` move the range
and the prefetch window; pool_grow/pool_shrink answer as the stock worker does under
autoscale; an executor holding an adapter is never retired (by the autoscaler nor by a
manual pool_shrink) and the adapter still works after the idle period; a stock Python worker
starting beside celeriac syncs with it (mingle); the celery worker flags accepted as no-ops,
and an unknown flag named in the error.
AUTOSCALE_KEEPALIVE (read as Celery reads it) is 1 s here so the shrink comes quickly.
"""

import os
import subprocess

from conftest import (REPO, both_brokers, celeriac_bin_dir, celeriac_only, scaled, wait_active,
                      wait_until)
from remote import cli, only

pytestmark = [both_brokers, celeriac_only]

T = 2.0
FAST = {"AUTOSCALE_KEEPALIVE": "1"}


def stats(app):
    replies = app.control.inspect(timeout=scaled(T), limit=1).stats() or {}
    return next(iter(replies.values()), None)


def first_stats(app):
    """stats once the worker's mailbox answers (on RabbitMQ it may come just after ready.)"""
    got = []
    wait_until(lambda: got.append(stats(app)) or got[-1] is not None, scaled(15),
               what="a stats reply")
    return got[-1]


def procs(app):
    s = stats(app)
    return s["pool"]["processes"] if s else None


def wait_procs(app, n, what=None):
    wait_until(lambda: (p := procs(app)) is not None and len(p) == n, scaled(20), interval=0.2,
               what=what or f"{n} executor(s)")


def test_autoscale_grows_under_load_and_shrinks_when_idle(worker, celery_app):
    w = worker("--autoscale", "3,1", env=FAST)
    s = first_stats(celery_app)
    assert s["autoscaler"] == {"max": 3, "min": 1, "current": 1, "qty": 0}
    assert len(s["pool"]["processes"]) == 1 and s["prefetch_count"] == 12  # max x 4, as Celery
    rs = [celery_app.send_task("diag.sleep", args=[3]) for _ in range(3)]
    wait_procs(celery_app, 3, "the pool grown to 3 under the burst")
    s = stats(celery_app)
    assert s["autoscaler"]["current"] == 3 and s["autoscaler"]["qty"] >= 1
    wait_until(lambda: len(w.child_pids()) == 3, scaled(10), what="3 executor processes")
    assert [r.get(timeout=scaled(20)) for r in rs] == [3, 3, 3]
    wait_procs(celery_app, 1, "the pool back at min once idle")
    wait_until(lambda: len(w.child_pids()) == 1, scaled(10), what="1 executor process")
    w.wait_log(r"Scaling up \d+ processes\.")
    w.wait_log(r"Scaling down \d+ processes\.")
    assert celery_app.send_task("diag.add", args=[2, 3]).get(timeout=scaled(10)) == 5


def test_autoscale_command_and_pool_grow_shrink(worker, celery_app, broker_url):
    w = worker("--autoscale", "2,1", "-n", "scaler@%h", env=FAST)
    first_stats(celery_app)
    node = [n for n in celery_app.control.ping(timeout=scaled(T))[0]][0]
    reply = celery_app.control.autoscale(4, 2, destination=[node], reply=True,
                                         timeout=scaled(T))
    assert reply == [{node: {"ok": "autoscale now max=4 min=2"}}]
    wait_procs(celery_app, 2, "the pool grown to the new min")
    s = stats(celery_app)
    assert s["autoscaler"]["max"] == 4 and s["autoscaler"]["min"] == 2
    assert s["prefetch_count"] == 16  # follows max
    # the CLI: max below the pool retires idle executors at once
    p = cli(broker_url, "control", "autoscale", "1", "1", "-d", node)
    assert p.returncode == 0 and "autoscale now max=1 min=1" in p.stdout, p.stdout + p.stderr
    wait_procs(celery_app, 1, "the pool shrunk to the new max")
    assert stats(celery_app)["prefetch_count"] == 4
    wait_until(lambda: len(w.child_pids()) == 1, scaled(10), what="1 executor process")
    grow = celery_app.control.pool_grow(1, reply=True, timeout=scaled(T))
    assert only(grow) == {"error": "pool_grow is not supported with autoscale. Adjust "
                                   "autoscale range instead."}
    shrink = celery_app.control.pool_shrink(1, reply=True, timeout=scaled(T))
    assert "not supported with autoscale" in only(shrink)["error"]
    assert celery_app.send_task("diag.add", args=[1, 2]).get(timeout=scaled(10)) == 3


def test_executor_with_adapter_is_not_retired(worker, celery_app, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    w = worker("--autoscale", "2,0", "-l", "debug", "--state-dir", str(state), env=FAST,
               ready_timeout=40)
    assert first_stats(celery_app)["pool"]["processes"] == []  # MIN 0: no executor until work comes
    aid = celery_app.send_task("lora.create", kwargs={"rank": 4, "seed": 1}).get(
        timeout=scaled(60))["adapter_id"]
    holder = procs(celery_app)
    assert len(holder) == 1
    # a burst grows the pool to 2; once idle the one without adapters goes, the holder stays
    rs = [celery_app.send_task("diag.sleep", args=[2]) for _ in range(2)]
    wait_procs(celery_app, 2)
    assert [r.get(timeout=scaled(30)) for r in rs] == [2, 2]
    wait_procs(celery_app, 1, "the executor without adapters retired")
    assert procs(celery_app) == holder
    # the autoscaler wants 0 now (MIN 0, nothing held) and keeps refusing
    mark = w.log().count("won't scale down")
    w.wait_log(r"Autoscaler won't scale down", count=mark + 2)
    assert procs(celery_app) == holder and holder[0] in w.child_pids()
    score = celery_app.send_task("model.score", args=["The quick brown fox."],
                                 kwargs={"adapter_id": aid}).get(timeout=scaled(60))
    assert score["tokens"] > 0
    info = celery_app.send_task("lora.info", args=[aid]).get(timeout=scaled(60))
    assert info["adapter_id"] == aid
    assert procs(celery_app) == holder


def test_python_worker_mingle_syncs_with_celeriac(worker, pyworker, celery_app):
    w = worker("-n", "celeriac-mingle@%h")
    py = pyworker("--with-mingle", "-n", "pymingle@%h")
    py.wait_log(r"mingle: sync with 1 nodes", timeout=20)
    py.wait_log(r"mingle: sync complete")
    w.wait_log(r"sync with pymingle@")


def test_celery_worker_flags_accepted(worker, celery_app):
    worker("--without-mingle", "--without-gossip", "--without-heartbeat", "-O", "fair", "-P",
           "prefork")
    assert celery_app.send_task("diag.add", args=[4, 4]).get(timeout=scaled(10)) == 8


def test_unknown_flag_is_named():
    binary = os.path.join(celeriac_bin_dir(), "celeriac")
    for flag, name in (("--purge", "--purge"), ("--beat=yes", "--beat"), ("-B", "-B")):
        p = subprocess.run([binary, flag], cwd=REPO, capture_output=True, text=True,
                           timeout=scaled(10))
        assert p.returncode != 0
        assert f"unknown option {name} " in p.stderr, p.stderr


def test_pool_shrink_keeps_executors_with_adapters(worker, celery_app, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    w = worker("-c", "2", "--state-dir", str(state), ready_timeout=40)
    first_stats(celery_app)
    # both executors ready first (else the sleep goes to whichever loads first); then the sleep
    # takes executor 1, and the adapter is made on executor 2 (the one a shrink retires)
    w.wait_log(r"executor \d+ \(pid \d+\): model on", timeout=40, count=2)
    busy = celery_app.send_task("diag.sleep", args=[3])
    wait_active(celery_app, busy.id)
    aids = [celery_app.send_task("lora.create", kwargs={"rank": 4, "seed": 1}).get(
        timeout=scaled(60))["adapter_id"]]
    w.wait_log(r"Executor-2\] Created adapter", timeout=10)
    reply = only(celery_app.control.pool_shrink(1, reply=True, timeout=scaled(T)))
    assert reply == {"error": "ValueError('Cannot shrink pool: an executor it would retire "
                              "holds adapters')"}
    assert len(procs(celery_app)) == 2
    for aid in aids:
        celery_app.send_task("lora.delete", args=[aid]).get(timeout=scaled(60))
    assert only(celery_app.control.pool_shrink(1, reply=True, timeout=scaled(T))) == \
        {"ok": "pool will shrink"}
    wait_procs(celery_app, 1)
    assert busy.get(timeout=scaled(10)) == 3
