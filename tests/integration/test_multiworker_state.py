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
import socket

import pytest
from kombu import Exchange, Queue

from conftest import WORKER_KIND, both_brokers, scaled, wait_until

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
