"""test_amqp_interop.py -- celeriac on RabbitMQ beside the stock worker, through a broker
restart, and with the rpc:// result backend read by the stock client.

2,000 tasks shared by celeriac and the stock Python worker on one queue: every one answered,
none run twice. The broker restarted (stop_app/start_app: every connection dropped, durable
queue and persistent messages kept) while celeriac is busy: every task completes, and a task
whose result was stored before the restart is not run again when its message comes back.
rpc://: AsyncResult.get() sees SUCCESS, the exception of a FAILURE, NotRegistered, REVOKED
(expired) and PROGRESS states, as from a stock worker.
"""

import collections

import pytest
from celery import chain, group, signature
from celery.exceptions import NotRegistered, TaskRevokedError

from conftest import SUCCEEDED_RE, scaled, wait_until

pytestmark = pytest.mark.brokers("amqp")


def succeeded_ids(*workers):
    """Counter of task id -> 'succeeded' lines over the workers' logs."""
    return collections.Counter(tid for w in workers for _, tid in SUCCEEDED_RE.findall(w.log()))


def test_2000_tasks_shared_with_the_stock_worker(worker, pyworker, celery_app):
    c = worker("-c", "2", "-n", "cel@%h")
    p = pyworker("-c", "2", "-n", "py@%h")
    rs = [celery_app.send_task("diag.add", args=[i, 1]) for i in range(2000)]
    assert [r.get(timeout=scaled(120)) for r in rs] == [i + 1 for i in range(2000)]
    ran = succeeded_ids(c, p)
    ids = [r.id for r in rs]
    assert set(ids) <= set(ran), "a task answered without a 'succeeded' line"
    twice = [t for t in ids if ran[t] > 1]
    assert not twice, f"{len(twice)} tasks ran twice, e.g. {twice[:3]}"
    mine, theirs = succeeded_ids(c), succeeded_ids(p)
    print(f"celeriac ran {len(mine)}, the stock worker {len(theirs)}")
    assert mine and theirs, "one worker took everything: the queue was not shared"


def test_broker_restart_mid_run(worker, celery_app, rabbit_server):
    w = worker("-c", "2")
    first = [celery_app.send_task("diag.add", args=[i, 0]) for i in range(50)]
    assert [r.get(timeout=scaled(30)) for r in first] == list(range(50))
    busy = [celery_app.send_task("diag.sleep", args=[0.05]) for _ in range(200)]
    wait_until(lambda: sum(r.ready() for r in busy) >= 20, scaled(30),
               what="the worker to be busy")
    rabbit_server.restart()
    w.wait_log(r"amqp broker: connected to", 30, count=2)  # reconnected with backoff
    assert all(r.get(timeout=scaled(60)) == 0.05 for r in busy)
    after = celery_app.send_task("diag.add", args=[1, 1])  # a client reconnects too
    assert after.get(timeout=scaled(30)) == 2
    ran = succeeded_ids(w)
    assert all(ran[r.id] == 1 for r in first), "a task stored before the restart ran again"
    twice = sum(1 for r in busy if ran[r.id] > 1)
    # A task running when the connection dropped finishes, is stored, and its redelivered
    # message is adopted (acked, not run again): runs twice only when its ack was lost in
    # flight and the redelivery came after the done-set could know it (reported, not failed).
    print(f"{twice} of {len(busy)} in-flight tasks ran twice across the restart")
    assert twice <= 2


def test_rpc_backend_with_the_stock_client(worker, make_app, broker_url):
    app = make_app(broker_url, backend="rpc://")
    worker("--result-backend", "rpc://", "-c", "2")
    assert app.send_task("diag.add", args=[2, 3]).get(timeout=scaled(10)) == 5
    with pytest.raises(ValueError, match="boom"):
        app.send_task("diag.fail", args=["boom"]).get(timeout=scaled(10))
    with pytest.raises(NotRegistered):
        app.send_task("nope.nothing").get(timeout=scaled(10))
    with pytest.raises(TaskRevokedError):
        app.send_task("diag.add", args=[1, 1], expires=-1).get(timeout=scaled(10))
    rs = [app.send_task("diag.add", args=[i, i]) for i in range(100)]
    assert [r.get(timeout=scaled(20)) for r in rs] == [2 * i for i in range(100)]
    # every state the worker sends, PROGRESS included, reaches AsyncResult.get
    aid = app.send_task("lora.create", kwargs={"rank": 2}).get(timeout=scaled(30))["adapter_id"]
    states = []
    text = "The quick brown fox jumps over the lazy dog. " * 6
    r = app.send_task("lora.forward_backward", args=[aid, [{"text": text}] * 200])
    out = r.get(timeout=scaled(120), on_message=lambda m: states.append(m["status"]))
    assert out["examples"] == 200
    assert "PROGRESS" in states and states[-1] == "SUCCESS", states


def test_rpc_backend_canvas_and_started(worker, make_app, broker_url):
    """rpc:// with canvases and --task-track-started, read by the stock client: a chain's
    links pass their results along and the last one reaches the caller; a failing link's
    error does; a group's results come back in order; a running task is seen STARTED first."""
    app = make_app(broker_url, backend="rpc://")
    worker("--result-backend", "rpc://", "-c", "2", "--task-track-started")
    add = lambda *a: signature("diag.add", args=list(a), app=app)  # noqa: E731
    assert chain(add(1, 2), add(3), add(4)).apply_async().get(timeout=scaled(20)) == 10
    failing = chain(add(1, 2), signature("diag.fail", args=["link two"], app=app, immutable=True), add(4))
    with pytest.raises(ValueError, match="link two"):
        failing.apply_async().get(timeout=scaled(20))
    g = group(add(i, i) for i in range(5)).apply_async()
    assert g.get(timeout=scaled(20)) == [0, 2, 4, 6, 8]
    seen = []
    r = app.send_task("diag.sleep", args=[1])
    r.get(timeout=scaled(20), on_message=lambda m: seen.append(m["status"]))
    assert seen[0] == "STARTED" and seen[-1] == "SUCCESS", seen
