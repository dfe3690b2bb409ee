"""test_canvas.py -- canvases through the stock client: link, link_error, chain, group, chord.

The worker is the one that moves a canvas on: it sends the callbacks, the next chain link, the
errbacks and the chord body, and counts chord parts in the result backend. Each test builds a
canvas with celery's own signatures (diag.* tasks), applies it as a Flask app would, and checks
what the client sees: AsyncResult.get(), parents and children, GroupResult, ChordError, the
raw result metas where Celery's layout is the point. Run with CELERIAC_WORKER=python every
test here also passes against the stock Python worker (pydiag.py), which is what makes them a
reference. Errbacks are diag.fail signatures with a known task id: fail(task_id) stores a
ValueError carrying the id the errback was given (a one-argument task, so the Python worker
sends it as a message too, as celeriac always does). Every test runs on both brokers (Redis
and RabbitMQ; on RabbitMQ the result backend is still Redis, where chords are counted), but
those that read Redis's queues or events.
"""

import json
import re
import time
import uuid

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError
from celery.result import AsyncResult, GroupResult, ResultSet

from conftest import (WORKER_KIND, both_brokers, celeriac_only, redis_only, scaled, wait_active,
                      wait_until)

pytestmark = both_brokers

GET = 20  # seconds for one canvas result (scaled for ASan)


def sigs(app):
    """The diag task signatures, as a client would write them."""
    return (app.signature("diag.add"), app.signature("diag.echo"), app.signature("diag.fail"),
            app.signature("diag.sleep"))


def get(result):
    return result.get(timeout=scaled(GET))


def raw_meta(redis_client, task_id):
    raw = redis_client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else json.loads(raw)


def errback(app, fail):
    """An errback whose result says which task id it was called with."""
    tid = str(uuid.uuid4())
    return fail.clone().set(task_id=tid), app.AsyncResult(tid)


def errback_arg(res):
    """The task id an errback (diag.fail) was called with: its ValueError's message."""
    with pytest.raises(ValueError) as e:
        get(res)
    return e.value.args[0]


def succeeded_ids(*workers):
    return [tid for w in workers for _, tid in w.succeeded()]


# --------------------------------------------------------------------------------------------
# link / link_error on single tasks


def test_link_callback_gets_the_result(worker, celery_app, redis_client):
    worker()
    add, echo, fail, _ = sigs(celery_app)
    parent = add.clone((2, 2)).apply_async(link=add.clone((10,)))
    assert get(parent) == 4
    # the callback is the parent's child, sent before the parent's result was stored
    wait_until(lambda: parent.children, scaled(GET), what="children in the parent's meta")
    child = parent.children[0]
    assert get(child) == 14
    meta = raw_meta(redis_client, child.id)
    assert meta["parent_id"] == parent.id
    assert raw_meta(redis_client, parent.id)["children"] == [[[child.id, None], None]]


def test_several_links_go_as_a_group(worker, celery_app):
    worker()
    add, echo, _, _ = sigs(celery_app)
    parent = add.clone((1, 2)).apply_async(link=[add.clone((10,)), echo.clone((7,))])
    assert get(parent) == 3
    wait_until(lambda: parent.children, scaled(GET), what="children")
    grp = parent.children[0]
    assert isinstance(grp, GroupResult)
    assert sorted(map(str, get(grp))) == sorted(map(str, [13, [[3, 7], {}]]))


def test_immutable_link_keeps_its_args(worker, celery_app):
    worker()
    add, echo, _, _ = sigs(celery_app)
    parent = add.clone((1, 1)).apply_async(link=celery_app.signature("diag.echo", ("x",),
                                                                      immutable=True))
    assert get(parent) == 2
    wait_until(lambda: parent.children, scaled(GET), what="children")
    assert get(parent.children[0]) == [["x"], {}]


def test_link_error_gets_the_failed_task_id(worker, celery_app, redis_client):
    worker()
    add, echo, fail, _ = sigs(celery_app)
    eb, eb_res = errback(celery_app, fail)
    res = fail.clone(("boom",)).apply_async(link_error=eb, link=add.clone((1,)))
    with pytest.raises(ValueError):
        get(res)
    assert errback_arg(eb_res) == res.id
    # errbacks go as a group, parent and root the failed task
    meta = raw_meta(redis_client, eb_res.id)
    assert meta["parent_id"] == res.id and meta.get("group_id")
    # the success callback never ran
    assert raw_meta(redis_client, res.id)["children"] == []


# --------------------------------------------------------------------------------------------
# chains


def test_chain_of_three(worker, celery_app):
    worker()
    add, _, _, _ = sigs(celery_app)
    res = chain(add.clone((1, 2)), add.clone((10,)), add.clone((100,))).apply_async()
    assert get(res) == 113
    # parents let the client walk back to the first task
    assert get(res.parent) == 13 and get(res.parent.parent) == 3
    assert res.parent.parent.parent is None


def test_chain_of_fifty(worker, celery_app, redis_client):
    worker()
    add, _, _, _ = sigs(celery_app)
    res = chain([add.clone((0, 1))] + [add.clone((i,)) for i in range(2, 51)]).apply_async()
    assert get(res) == sum(range(51))
    ids, node = [], res
    while node is not None:
        ids.append(node.id)
        node = node.parent
    assert len(ids) == 50
    # each link's parent is the one before it. A link's result is stored after
    # the next link was sent (and, on RabbitMQ, confirmed), as Celery does, so
    # the last link may finish before the confirm lets the one before it store.
    for child, parent in zip(ids, ids[1:]):
        meta = wait_until(lambda: raw_meta(redis_client, child), scaled(GET),
                          what=f"the meta of chain link {child}")
        assert meta["parent_id"] == parent


def test_chain_failing_in_the_middle(worker, celery_app, redis_client):
    w = worker()
    add, _, fail, _ = sigs(celery_app)
    eb, eb_res = errback(celery_app, fail)
    res = chain(add.clone((1, 1)), fail.clone(), add.clone((5,)), add.clone((6,))).on_error(
        eb).apply_async()
    failed = res.parent.parent
    # the final result raises the error rather than hanging: the later links are marked failed
    with pytest.raises(ValueError) as e:
        get(res)
    assert e.value.args == (2,)
    with pytest.raises(ValueError):
        get(res.parent)
    assert errback_arg(eb_res) == failed.id
    assert get(failed.parent) == 2
    # the later links never ran
    assert res.id not in succeeded_ids(w) and res.parent.id not in succeeded_ids(w)
    assert raw_meta(redis_client, res.id)["status"] == "FAILURE"


def test_chain_with_immutable_link(worker, celery_app):
    worker()
    add, echo, _, _ = sigs(celery_app)
    res = chain(add.clone((1, 1)), celery_app.signature("diag.add", (5, 5), immutable=True),
                echo.clone()).apply_async()
    assert get(res) == [[10], {}]


def test_chain_routed_to_another_queue(worker, celery_app):
    w1 = worker("-Q", "celery", "-n", "w1@%h")
    w2 = worker("-Q", "canvas-q2", "-n", "w2@%h")
    add, _, _, _ = sigs(celery_app)
    res = chain(add.clone((1, 1)), add.clone((2,)).set(queue="canvas-q2"),
                add.clone((3,))).apply_async()
    assert get(res) == 7
    middle = res.parent.id
    wait_until(lambda: middle in succeeded_ids(w2), scaled(GET), what="the middle link on w2")
    assert middle not in succeeded_ids(w1)
    assert res.id in succeeded_ids(w1) and res.parent.parent.id in succeeded_ids(w1)


def test_chain_into_group_and_chord(worker, celery_app):
    """chain(a, group(b, c), d) becomes a chord the worker applies when a finishes."""
    worker()
    add, echo, _, _ = sigs(celery_app)
    res = chain(add.clone((1, 1)), group(add.clone((1,)), add.clone((2,))),
                echo.clone()).apply_async()
    assert get(res) == [[[3, 4]], {}]
    res2 = chain(add.clone((1, 1)), group(add.clone((1,)), add.clone((2,)))).apply_async()
    assert get(res2) == [3, 4]


# --------------------------------------------------------------------------------------------
# groups


def test_group_of_one_hundred(worker, celery_app, redis_client):
    worker("-c", "2")
    add, _, _, _ = sigs(celery_app)
    res = group(add.clone((i, i)) for i in range(100)).apply_async()
    assert get(res) == [2 * i for i in range(100)]
    assert res.join(timeout=scaled(GET)) == [2 * i for i in range(100)]
    rs = ResultSet([celery_app.AsyncResult(r.id) for r in res.results])
    assert rs.get(timeout=scaled(GET)) == [2 * i for i in range(100)]
    for r in res.results[:10]:
        meta = raw_meta(redis_client, r.id)
        assert meta["group_id"] == res.id


def test_nested_chain_in_group(worker, celery_app):
    worker()
    add, _, _, _ = sigs(celery_app)
    res = group(chain(add.clone((1, 1)), add.clone((10,))), add.clone((2, 2))).apply_async()
    assert get(res) == [12, 4]


# --------------------------------------------------------------------------------------------
# chords


def _callback_runs(workers, cb_id):
    return [w for w in workers for _, tid in w.succeeded() if tid == cb_id]


def test_chord_of_three(worker, celery_app, redis_client):
    w = worker()
    add, echo, _, _ = sigs(celery_app)
    res = chord(add.clone((i, i)) for i in range(3))(echo.clone())
    assert get(res) == [[[0, 2, 4]], {}]
    w.wait_log(re.escape(res.id) + r"\] succeeded", timeout=GET)
    assert len(_callback_runs([w], res.id)) == 1
    gid = res.parent.id
    # the counting keys go once the body is sent (Python: just after)
    wait_until(lambda: not redis_client.exists(f"celery-taskset-meta-{gid}.j",
                                               f"celery-taskset-meta-{gid}.s"),
               scaled(GET), what="the chord's keys deleted")


def test_chord_of_two_hundred(worker, celery_app):
    w = worker("-c", "2")
    add, echo, _, _ = sigs(celery_app)
    res = chord(add.clone((i, 1)) for i in range(200))(echo.clone())
    assert get(res) == [[[i + 1 for i in range(200)]], {}]  # in header order
    # the body ran exactly once (give a duplicate time to show up)
    w.wait_log(re.escape(res.id) + r"\] succeeded", timeout=GET)
    time.sleep(0.5)
    assert len(_callback_runs([w], res.id)) == 1


def test_chord_with_a_failing_member(worker, celery_app, redis_client):
    w = worker()
    add, echo, fail, _ = sigs(celery_app)
    eb, eb_res = errback(celery_app, fail)
    res = chord([add.clone((1, 1)), fail.clone(("boom",)), add.clone((2, 2))])(
        echo.clone().on_error(eb))
    # through its parent (the header) the client raises the member's own error ...
    with pytest.raises(ValueError):
        get(res)
    # ... and the body itself failed with ChordError naming it. (Not a second .get() on the
    # body's id: the client still holds `res` as the pending result for that id, and a FAILURE
    # that arrives after the first get() fulfils that object, leaving a new one waiting.)
    body = celery_app.AsyncResult(res.id)
    wait_until(lambda: body.state == "FAILURE", scaled(GET), what="the body's FAILURE")
    assert isinstance(body.result, ChordError), body.result
    failed = res.parent.results[1]
    assert f"Dependency {failed.id} raised ValueError('boom')" in str(body.result)
    if WORKER_KIND == "python":
        # the 5.2 prefork pool sends it, but the errback, run while the part's own error is
        # being handled in the same process, often dies as ExceptionWithTraceback() and
        # stores nothing: only check that it was sent
        w.wait_log(r"diag\.fail\[" + re.escape(eb_res.id) + r"\]", timeout=GET)
    else:
        assert errback_arg(eb_res) == res.id
    assert res.id not in succeeded_ids(w)
    assert raw_meta(redis_client, res.id)["result"]["exc_type"] == "ChordError"


# --------------------------------------------------------------------------------------------
# result_extended


def test_result_extended(worker, celery_app, redis_client):
    if WORKER_KIND == "python":
        w = worker("-n", "ext@%h", env={"PYDIAG_RESULT_EXTENDED": "1"})
    else:
        w = worker("-n", "ext@%h", "--result-extended")
    add, _, _, _ = sigs(celery_app)
    res = add.clone((20, 22)).apply_async()
    assert get(res) == 42
    meta = raw_meta(redis_client, res.id)
    assert meta["name"] == "diag.add" and meta["args"] == [20, 22] and meta["kwargs"] == {}
    assert meta["worker"].startswith("ext@") and meta["retries"] == 0
    assert meta["queue"] == "celery"
    assert list(meta)[-7:] == ["name", "args", "kwargs", "worker", "retries", "queue",
                               "task_id"]
    # what the client reads back from an extended meta
    r = celery_app.AsyncResult(res.id)
    assert r.name == "diag.add" and r.args == [20, 22] and r.queue == "celery"


@redis_only
def test_chord_with_list_parts(worker, celery_app, redis_monitor, db):
    """--result-chord-ordered no: the parts go in a list (RPUSH/LLEN), in arrival order, as
    Celery's result_chord_ordered=False; the body still gets every result."""
    if WORKER_KIND == "python":
        pytest.skip("pydiag has no switch for result_chord_ordered")
    worker("--result-chord-ordered", "no")
    add, echo, _, _ = sigs(celery_app)
    start = redis_monitor.mark()
    res = chord(add.clone((i, i)) for i in range(5))(echo.clone())
    assert sorted(get(res)[0][0]) == [0, 2, 4, 6, 8]
    gid = res.parent.id
    redis_monitor.wait_for(lambda d, c: d == db and "RPUSH" in c.split(" ")[0].upper()
                           and f"celery-taskset-meta-{gid}.j" in c, start,
                           what="an RPUSH of a part")


# --------------------------------------------------------------------------------------------
# celeriac and the stock Python worker on one canvas


def test_celeriac_and_python_share_a_chord(worker, pyworker, celery_app):
    """Half the header on a queue only celeriac reads, half on one only the Python worker
    reads; both count parts under the same keys and the body runs once, on either."""
    ce = worker("-Q", "celery,canvas-qa", "-n", "ce@%h")
    py = pyworker("-Q", "celery,canvas-qb", "-n", "py@%h")
    add, echo, _, _ = sigs(celery_app)
    header = [add.clone((i, 100)).set(queue="canvas-qa" if i % 2 else "canvas-qb")
              for i in range(20)]
    res = chord(header)(echo.clone())
    assert get(res) == [[[i + 100 for i in range(20)]], {}]
    ids = [r.id for r in res.parent.results]
    wait_until(lambda: set(ids) <= set(succeeded_ids(ce, py)), scaled(GET),
               what="every part's succeeded line")
    assert {ids[i] for i in range(1, 20, 2)} <= set(succeeded_ids(ce))
    assert {ids[i] for i in range(0, 20, 2)} <= set(succeeded_ids(py))
    wait_until(lambda: len(_callback_runs([ce, py], res.id)) >= 1, scaled(GET),
               what="the body's succeeded line")
    time.sleep(0.5)
    assert len(_callback_runs([ce, py], res.id)) == 1


def test_celeriac_continues_a_python_chain(worker, pyworker, celery_app):
    """Links alternate between the two workers' queues: each sends the next one on."""
    worker("-Q", "canvas-qa", "-n", "ce@%h")
    pyworker("-Q", "canvas-qb", "-n", "py@%h")
    add, _, _, _ = sigs(celery_app)
    links = [add.clone((1, 1)).set(queue="canvas-qa")]
    links += [add.clone((i,)).set(queue="canvas-qb" if i % 2 else "canvas-qa")
              for i in range(1, 9)]
    res = chain(links).apply_async()
    assert get(res) == 2 + sum(range(1, 9))


# --------------------------------------------------------------------------------------------
# model tasks compose


TEXT = "The quick brown fox jumps over the lazy dog."


@celeriac_only
def test_training_chain(worker, celery_app):
    """forward_backward then optim_step then score, one chain: the Flask-free client."""
    worker("-c", "1")
    fb = celery_app.signature("lora.forward_backward")
    aid = get(celery_app.send_task("lora.create", kwargs={"rank": 4, "seed": 1}))["adapter_id"]
    base = get(celery_app.send_task("model.score", args=[TEXT]))
    res = chain(fb.clone((aid, [{"text": TEXT}])),
                celery_app.signature("lora.optim_step", (aid, {"learning_rate": 1e-2}),
                                     immutable=True),
                celery_app.signature("model.score", (TEXT,), {"adapter_id": aid},
                                     immutable=True)).apply_async()
    scored = get(res)
    assert get(res.parent)["step"] == 1
    assert get(res.parent.parent)["examples"] == 1
    assert scored["tokens"] == base["tokens"] and scored["logprob"] != base["logprob"]


@celeriac_only
def test_scoring_chord(worker, celery_app):
    worker("-c", "2")
    texts = [TEXT, "A second text.", "And a third one, longer than the others."]
    res = chord(celery_app.signature("model.score", (t,)) for t in texts)(
        celery_app.signature("diag.echo"))
    (scores,), kwargs = get(res)
    assert kwargs == {} and len(scores) == 3
    assert [s["tokens"] for s in scores] == [get(celery_app.send_task("model.score", args=[t]))
                                             ["tokens"] for t in texts]


# --------------------------------------------------------------------------------------------
# events around the canvas


@celeriac_only
@redis_only
def test_task_rejected_when_given_back(worker, celery_app, redis_client, db):
    """A request received but not started when the worker stops warm goes back to the
    broker: task-rejected with requeue, as celery's Request.reject(requeue=True) sends it."""
    from test_events import Monitor
    mon = Monitor(celery_app, redis_client, db)
    try:
        w = worker("-E", "-c", "1")
        busy = celery_app.send_task("diag.sleep", args=[1.5])
        queued = [celery_app.send_task("diag.noop") for _ in range(2)]
        wait_until(lambda: all("task-received" in mon.types(r.id) for r in queued),
                   scaled(GET), what="the queued tasks received")
        wait_active(celery_app, busy.id, timeout=scaled(GET))
        w.signal(__import__("signal").SIGTERM)
        assert get(busy) == 1.5
        for r in queued:
            wait_until(lambda: "task-rejected" in mon.types(r.id), scaled(GET),
                       what="task-rejected")
            ev = [e for e in mon.events if e.get("uuid") == r.id and e["type"] == "task-rejected"]
            assert ev[0]["requeue"] is True and ev[0]["hostname"] == mon.events[0]["hostname"]
        assert w.wait_exit(GET) == 0
        assert redis_client.llen("celery") == 2
    finally:
        mon.close()
