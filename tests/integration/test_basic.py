"""test_basic.py -- task results, arguments, failures and message options through the stock client.

Each test starts one worker on its own Redis database and drives it with celery's send_task /
AsyncResult.get(), asserting only what the client (and, for result layout, the raw result key)
sees. This is the file the test runner also runs against the ASan build (CELERIAC_ASAN=1), so
it carries the input-handling cases: unicode, NUL, big numbers, msgpack and garbage messages.
"""

import base64
import json
import math
import re
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery.exceptions import NotRegistered, TaskRevokedError, TimeoutError as CeleryTimeout

from conftest import both_brokers, celeriac_only, redis_only, scaled, wait_until

# Every test here runs on Redis and on RabbitMQ (conftest.py), but those that push raw
# messages into a Redis list.
pytestmark = both_brokers

GET = 10  # seconds allowed for one result in these tests (scaled for ASan)


def call(app, name, *args, **kwargs):
    """send_task(name, args, kwargs) and wait for the result (raises the task's exception)."""
    return app.send_task(name, args=list(args), kwargs=kwargs).get(timeout=scaled(GET))


def raw_meta(redis_client, task_id):
    raw = redis_client.get(f"celery-task-meta-{task_id}")
    return None if raw is None else json.loads(raw)


# --------------------------------------------------------------------------------------------
# Results of every diag task


def test_diag_tasks_positional(worker, celery_app):
    worker()
    assert call(celery_app, "diag.noop") is None
    assert call(celery_app, "diag.add", 2, 3) == 5
    assert call(celery_app, "diag.add", -7, 7) == 0
    assert call(celery_app, "diag.add", 1.5, 2.25) == 3.75
    assert call(celery_app, "diag.add", 1, 0.5) == 1.5
    assert call(celery_app, "diag.add", 0.1, 0.2) == 0.1 + 0.2  # shortest repr round trip
    assert call(celery_app, "diag.sleep", 0) == 0
    assert call(celery_app, "diag.sleep", 0.05) == 0.05
    assert call(celery_app, "diag.echo") == [[], {}]
    assert call(celery_app, "diag.echo", 1, "two", None, True, False, 2.5) == \
        [[1, "two", None, True, False, 2.5], {}]


def test_add_keeps_int_type(worker, celery_app):
    worker()
    r = call(celery_app, "diag.add", 2, 3)
    assert r == 5 and type(r) is int  # not 5.0
    r = call(celery_app, "diag.add", 2.0, 3)
    assert r == 5.0 and type(r) is float
    assert call(celery_app, "diag.add", 2**62, 2**62 - 1) == 2**63 - 1
    assert call(celery_app, "diag.add", -2**62, -2**62) == -2**63


def test_add_int64_overflow_is_exact_or_fails(worker, celery_app):
    """2**62 + 2**62 leaves int64: Python gives 2**63. A C worker must give that exact value
    or a clear FAILURE, never a wrapped (negative) number."""
    worker()
    r = celery_app.send_task("diag.add", args=[2**62, 2**62])
    try:
        value = r.get(timeout=scaled(GET))
    except CeleryTimeout:
        raise
    except Exception as e:  # a clear FAILURE is acceptable
        assert str(e), "FAILURE without a message"
        return
    assert value == 2**63


def test_diag_tasks_keyword(worker, celery_app):
    worker()
    assert call(celery_app, "diag.add", a=2, b=40) == 42
    assert call(celery_app, "diag.add", 2, b=40) == 42
    assert call(celery_app, "diag.sleep", seconds=0.01) == 0.01
    assert call(celery_app, "diag.echo", 1, x="y", n=None, l=[1, 2]) == \
        [[1], {"x": "y", "n": None, "l": [1, 2]}]
    with pytest.raises(ValueError, match="^kw boom$"):
        call(celery_app, "diag.fail", message="kw boom")


UNICODE_VALUES = [
    "héllo wörld",
    "日本語テキスト",
    "😀🎉𝄞",                 # non-BMP: surrogate pairs in Python's JSON
    "a\x00b",                 # NUL inside a string
    "\x00",
    "\u2028\u2029",
    "tab\tnew\nline\r\"quote\"\\back",
    "\x01\x1f\x7f",
    "",
    "ü" * 1000,
]


def test_unicode_arguments_round_trip(worker, celery_app):
    worker()
    assert call(celery_app, "diag.echo", *UNICODE_VALUES) == [UNICODE_VALUES, {}]
    kwargs = {"ключ": "значение", "emoji😀": "🎉", "nul": "v\x00v"}
    assert call(celery_app, "diag.echo", **kwargs) == [[], kwargs]
    for value in UNICODE_VALUES:
        assert call(celery_app, "diag.echo", value) == [[value], {}], repr(value)
    assert call(celery_app, "diag.echo", {v: v for v in UNICODE_VALUES if "\x00" not in v}) \
        == [[{v: v for v in UNICODE_VALUES if "\x00" not in v}], {}]


def test_unicode_failure_message(worker, celery_app):
    worker()
    msg = "boom 😀 ünïcode \x00 nul"
    with pytest.raises(ValueError) as info:
        call(celery_app, "diag.fail", msg)
    assert info.value.args == (msg,)


def nest(depth):
    value = "bottom"
    for i in range(depth):
        value = [i, {"level": value}]
    return value


def test_nested_structures_echo(worker, celery_app):
    worker()
    payload = {
        "list": [1, [2, [3, [4, []]]], {}],
        "dict": {"a": {"b": {"c": None}}},
        "mixed": [None, True, False, 0, -1, 1.25, -0.5, "s", {"k": [{}]}],
        "empty": ["", [], {}],
        "deep": nest(20),
        "ints": list(range(5000)),
        "floats": [1e300, -1e-300, 5e-324, 0.1, 123456789.125, 2.0**53],
        "big": [2**63 - 1, -2**63, 2**53 + 1],
    }
    assert call(celery_app, "diag.echo", payload, k=payload) == [[payload], {"k": payload}]


HARD_VALUES = {
    "uint64_max": 2**64 - 1, "2**70": 2**70, "-2**70": -2**70, "10**40": 10**40,
    "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "-0.0": -0.0,
    "lone_high_surrogate": "\ud800",               # Python's json allows lone surrogates
    "lone_low_surrogate": "\udfff x",
    "nul_in_key": {"nul\x00key": 1},
    "nest80": nest(40), "nest400": nest(200),       # JSON depth 80 and 400
}


@pytest.mark.parametrize("value", list(HARD_VALUES.values()), ids=list(HARD_VALUES))
def test_hard_values_round_trip_or_fail_clearly(worker, celery_app, value):
    """Values C's JSON has trouble with: exact round trip, or a clear FAILURE; never a hang
    (a message dropped without a result), never a silently different value, and the worker
    keeps serving."""
    worker()
    for value in [value]:
        r = celery_app.send_task("diag.echo", args=[value])
        try:
            got = r.get(timeout=scaled(GET))
        except CeleryTimeout:
            raise AssertionError(f"no result for echo({value!r})")
        except Exception as e:
            assert r.state == "FAILURE"
            assert str(e), f"FAILURE without a message for {value!r}"
            continue
        (back,), kwargs = got
        assert kwargs == {}
        if isinstance(value, float) and math.isnan(value):
            assert isinstance(back, float) and math.isnan(back)
        elif isinstance(value, float):
            assert back == value and type(back) is float
            assert math.copysign(1, back) == math.copysign(1, value)
        else:
            assert back == value and type(back) is type(value), (value, back)
    assert call(celery_app, "diag.add", 1, 1) == 2


def test_large_argument(worker, celery_app):
    worker()
    blob = "x" * (1 << 20)  # 1 MiB string: well under any sane message limit
    assert call(celery_app, "diag.echo", blob) == [[blob], {}]


# --------------------------------------------------------------------------------------------
# Serializers


def test_msgpack_task_json_result(worker, make_app, broker_url, redis_client):
    worker()
    app = make_app(broker_url, task_serializer="msgpack",
                   accept_content=["json", "msgpack"], result_serializer="json")
    assert call(app, "diag.add", 20, 22) == 42
    assert call(app, "diag.add", 0.5, 0.25) == 0.75
    value = {"s": "ünï😀\x00", "l": [1, -1, 2**63 - 1, -2**63, 1.5, None, True], "d": {"k": []}}
    assert call(app, "diag.echo", value, kw=value) == [[value], {"kw": value}]
    with pytest.raises(ValueError, match="^packed$"):
        call(app, "diag.fail", "packed")
    # The result itself is JSON, whatever the task's content type was.
    r = app.send_task("diag.add", args=[1, 2])
    assert r.get(timeout=scaled(GET)) == 3
    assert json.loads(redis_client.get(f"celery-task-meta-{r.id}"))["result"] == 3


# --------------------------------------------------------------------------------------------
# Failures


def test_failure_round_trip(worker, celery_app, redis_client):
    worker()
    r = celery_app.send_task("diag.fail", args=["boom"])
    with pytest.raises(ValueError) as info:
        r.get(timeout=scaled(GET))
    assert type(info.value) is ValueError
    assert info.value.args == ("boom",)
    assert r.state == "FAILURE"
    assert r.traceback and "ValueError" in r.traceback
    meta = raw_meta(redis_client, r.id)
    assert meta["result"] == {"exc_type": "ValueError", "exc_message": ["boom"],
                              "exc_module": "builtins"}
    # The worker keeps serving after a failure.
    assert call(celery_app, "diag.add", 1, 2) == 3


TYPE_ERROR_CASES = [
    ("diag.add", [1], {}),
    ("diag.add", [1, 2, 3], {}),
    ("diag.add", [], {}),
    ("diag.add", [1], {"c": 2}),
    ("diag.add", [1, 2], {"a": 3}),
    ("diag.add", ["a", 1], {}),
    ("diag.add", [None, 1], {}),
    ("diag.add", [[1], 2], {}),
    ("diag.add", [{"a": 1}, 2], {}),
    ("diag.noop", [1], {}),
    ("diag.noop", [], {"x": 1}),
    ("diag.fail", [], {}),
    ("diag.sleep", [], {}),
    ("diag.sleep", ["x"], {}),
    ("diag.sleep", [0.01, 0.01], {}),
]


def test_type_errors(worker, celery_app):
    """Wrong argument counts or types: FAILURE TypeError (builtins) with a message."""
    worker()
    sent = [(case, celery_app.send_task(case[0], args=case[1], kwargs=case[2]))
            for case in TYPE_ERROR_CASES]
    for case, r in sent:
        with pytest.raises(TypeError) as info:
            r.get(timeout=scaled(GET))
        assert type(info.value) is TypeError, case
        assert str(info.value).strip(), f"TypeError without a message for {case}"
    assert call(celery_app, "diag.add", 1, 2) == 3


def test_not_registered_and_worker_keeps_serving(worker, celery_app):
    worker()
    for name in ["diag.nope", "tasks.unknown", "ünï😀", "x" * 300, "diag.add "]:
        r = celery_app.send_task(name, args=[1])
        with pytest.raises(NotRegistered) as info:
            r.get(timeout=scaled(GET))
        assert info.value.args == (name,)
        assert r.state == "FAILURE"
    assert call(celery_app, "diag.add", 2, 2) == 4


def test_empty_task_name_is_not_registered(worker, celery_app):
    """send_task('') reaches the Python worker as NotRegistered(''), with a FAILURE stored."""
    worker()
    r = celery_app.send_task("", args=[1])
    with pytest.raises(NotRegistered):
        r.get(timeout=scaled(GET))
    assert call(celery_app, "diag.add", 2, 2) == 4


# --------------------------------------------------------------------------------------------
# Message options: countdown, eta, expires, ignore_result


def test_countdown_is_held_until_due(worker, celery_app):
    worker()
    t0 = time.monotonic()
    sent_at = datetime.utcnow()
    r = celery_app.send_task("diag.add", args=[1, 2], countdown=2)
    quick = celery_app.send_task("diag.add", args=[3, 4])
    assert quick.get(timeout=scaled(GET)) == 7          # a countdown does not block others
    assert r.get(timeout=scaled(GET)) == 3
    assert time.monotonic() - t0 >= 1.9
    done = r.date_done.replace(tzinfo=None)
    assert done >= sent_at + timedelta(seconds=1.9), (sent_at, done)
    assert done <= sent_at + timedelta(seconds=scaled(GET)), (sent_at, done)


def test_eta_is_held_until_due(worker, celery_app):
    worker()
    eta = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    r = celery_app.send_task("diag.echo", args=["eta"], eta=eta)
    assert r.get(timeout=scaled(GET)) == [["eta"], {}]
    assert r.date_done.replace(tzinfo=None) >= eta.replace(tzinfo=None) - timedelta(seconds=0.1)


def test_already_expired_is_revoked(worker, celery_app):
    worker()
    past = datetime.now(timezone.utc) - timedelta(seconds=30)
    r = celery_app.send_task("diag.add", args=[1, 2], expires=past)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=scaled(GET))
    assert r.state == "REVOKED"
    assert call(celery_app, "diag.add", 1, 2) == 3


def test_expires_in_future_runs(worker, celery_app):
    worker()
    r = celery_app.send_task("diag.add", args=[1, 2], expires=60)
    assert r.get(timeout=scaled(GET)) == 3
    future = datetime.now(timezone.utc) + timedelta(minutes=5)
    r = celery_app.send_task("diag.add", args=[2, 2], expires=future)
    assert r.get(timeout=scaled(GET)) == 4


def test_expires_before_countdown_is_revoked(worker, celery_app):
    """A task whose expiry passes while it waits for its eta is revoked, not run."""
    worker()
    r = celery_app.send_task("diag.add", args=[1, 2], countdown=2, expires=1)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=scaled(GET))


@redis_only
def test_idle_worker_leaves_nothing_in_unacked(worker, celery_app, redis_client):
    """On an idle worker each message comes through the wait (BLMOVE into the worker's
    in-flight list, then POP) and is registered in `unacked`
    before it runs; every one of them (successes, a failure, an unknown task) is acked after
    that: nothing stays in `unacked` to run again after the visibility timeout."""
    worker("-c", "2")
    for i in range(100):
        assert celery_app.send_task("diag.add", args=[i, 1]).get(timeout=scaled(GET)) == i + 1
    with pytest.raises(Exception):
        celery_app.send_task("diag.fail", args=["x"]).get(timeout=scaled(GET))
    with pytest.raises(Exception):
        celery_app.send_task("no.such.task").get(timeout=scaled(GET))
    wait_until(lambda: redis_client.hlen("unacked") == 0 and
               redis_client.zcard("unacked_index") == 0, scaled(5), what="an empty unacked")
    assert redis_client.keys("_celeriac.wait.*") == []  # no in-flight list holds anything


@celeriac_only
@redis_only
def test_a_full_worker_gives_back_what_its_wait_moved(worker, celery_app, redis_client):
    """An idle worker waits on every queue key at once (BLMOVE into its in-flight lists). When
    it fills up (one running, one prefetched, -c 1 --prefetch-multiplier 1), the waits on the
    other keys are still there; a message one of them moves must go back to its queue, for
    another worker, not wait in this worker's list until it has room."""
    a = worker("-c", "1", "--prefetch-multiplier", "1")
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    long = celery_app.send_task("diag.sleep", args=[60])
    wait_until(lambda: any(t == long.id for _, t in a.received()), scaled(GET),
               what="the long task taken")
    queued = celery_app.send_task("diag.add", args=[2, 2])  # prefetched: now the worker is full
    wait_until(lambda: any(t == queued.id for _, t in a.received()), scaled(GET),
               what="the second task prefetched")
    urgent = celery_app.send_task("diag.add", args=[3, 3], priority=9)
    key = "celery\x06\x169"
    wait_until(lambda: redis_client.llen(key) == 1 and not redis_client.keys("_celeriac.wait.*"),
               scaled(GET), what="the moved message back in its queue")
    assert not any(t == urgent.id for _, t in a.received())
    worker("-c", "1")
    assert urgent.get(timeout=scaled(GET)) == 6
    long.revoke(terminate=True)


def test_ignore_result(worker, celery_app, redis_client):
    w = worker("-c", "1")
    r = celery_app.send_task("diag.echo", args=["ignored"], ignore_result=True)
    w.wait_log(re.escape(f"diag.echo[{r.id}] succeeded"), timeout=GET)
    after = celery_app.send_task("diag.add", args=[1, 1])
    assert after.get(timeout=scaled(GET)) == 2
    assert redis_client.exists(f"celery-task-meta-{r.id}") == 0
    # (A *failing* ignore_result task: the Python worker still stores its FAILURE, since
    # celery's mark_as_failure ignores the request flag; not asserted either way here.)


# --------------------------------------------------------------------------------------------
# Result layout in Redis (what a Python worker writes)


ISO_NAIVE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?(\+00:00)?$")


def test_result_meta_layout_and_ttl(worker, celery_app, redis_client):
    worker()
    r = celery_app.send_task("diag.add", args=[2, 3])
    assert r.get(timeout=scaled(GET)) == 5
    key = f"celery-task-meta-{r.id}"
    meta = json.loads(redis_client.get(key))
    assert set(meta) == {"status", "result", "traceback", "children", "date_done", "task_id"}
    assert meta["status"] == "SUCCESS" and meta["result"] == 5
    assert meta["traceback"] is None and meta["children"] == []
    assert meta["task_id"] == r.id
    assert ISO_NAIVE.match(meta["date_done"]), meta["date_done"]
    done = datetime.fromisoformat(meta["date_done"].replace("+00:00", ""))
    assert abs((datetime.utcnow() - done).total_seconds()) < scaled(GET)
    assert 86000 < redis_client.ttl(key) <= 86400


def test_result_expires_option(worker, celery_app, redis_client):
    worker("--result-expires", "120")
    r = celery_app.send_task("diag.add", args=[2, 3])
    assert r.get(timeout=scaled(GET)) == 5
    assert 0 < redis_client.ttl(f"celery-task-meta-{r.id}") <= 120


def test_result_expires_zero_means_never(worker, celery_app, redis_client):
    worker("--result-expires", "0")
    r = celery_app.send_task("diag.add", args=[2, 3])
    assert r.get(timeout=scaled(GET)) == 5
    assert redis_client.ttl(f"celery-task-meta-{r.id}") == -1


def test_failure_meta_layout(worker, celery_app, redis_client):
    worker()
    r = celery_app.send_task("diag.nope", args=[])
    with pytest.raises(NotRegistered):
        r.get(timeout=scaled(GET))
    meta = raw_meta(redis_client, r.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"] == {"exc_type": "NotRegistered", "exc_message": ["diag.nope"],
                              "exc_module": "celery.exceptions"}
    assert meta["traceback"] is None


# --------------------------------------------------------------------------------------------
# Bad messages in the queue


def envelope(task="diag.add", task_id=None, body=b"[[1, 2], {}, {}]", encode=True,
             content_type="application/json", headers=None, extra=None):
    """A kombu Redis envelope as the stock client writes it, with parts replaceable."""
    task_id = task_id or str(uuid.uuid4())
    h = {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None,
         "expires": None, "group": None, "group_index": None, "retries": 0,
         "timelimit": [None, None], "root_id": task_id, "parent_id": None,
         "argsrepr": "", "kwargsrepr": "", "origin": "gen0@test", "ignore_result": False}
    if headers is not None:
        h = headers
    env = {
        "body": base64.b64encode(body).decode() if encode else body,
        "content-encoding": "utf-8" if content_type == "application/json" else "binary",
        "content-type": content_type,
        "headers": h,
        "properties": {"correlation_id": task_id, "reply_to": str(uuid.uuid4()),
                       "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "celery"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())},
    }
    env.update(extra or {})
    return task_id, json.dumps(env)


@redis_only
@celeriac_only  # the stock worker dies on the first one: "Unrecoverable error: JSONDecodeError"
def test_bad_messages_are_dropped_and_worker_keeps_serving(worker, celery_app, redis_client):
    w = worker("-c", "1")
    known = {}  # task id -> description, for messages whose id the worker can read

    def push(raw):
        redis_client.lpush("celery", raw)

    push(b"not json at all")
    push(b"\xff\xfe\x00garbage")
    push(b"")
    push(b"[1, 2, 3]")
    push(b'"just a string"')
    push(b"{" * 100000)                       # deep nesting, truncated
    push(json.dumps({"body": "W10=", "content-type": "application/json",
                     "properties": {"delivery_tag": "x"}}))          # no headers
    push(json.dumps({"body": "W10=", "headers": {"task": "diag.add"},
                     "properties": {}}))                             # headers without id
    push(json.dumps({"body": "W10=", "headers": {"task": 5, "id": 7},
                     "properties": {}}))                             # wrong header types
    push(json.dumps({"body": "W10=", "headers": None, "properties": None}))
    tid, raw = envelope(body="!!!not base64 ***", encode=False)
    known[tid] = "bad base64 body"
    push(raw)
    tid, raw = envelope(body=b'{"a": 1}')
    known[tid] = "protocol-2 body that is not a list"
    push(raw)
    tid, raw = envelope(body=b"[1, 2, 3]")
    known[tid] = "body list of the wrong shape"
    push(raw)
    tid, raw = envelope(body=b"[[1, 2], {}, {}")
    known[tid] = "truncated JSON body"
    push(raw)
    tid, raw = envelope(body=b"[" * 100000 + b"]" * 100000)
    known[tid] = "body nested 100000 deep"
    push(raw)
    tid, raw = envelope(body=b"\xc1\xc1\xc1", content_type="application/x-msgpack")
    known[tid] = "invalid msgpack body"
    push(raw)
    big_id, raw = envelope(task="diag.echo",
                           body=json.dumps([["y" * (10 << 20)], {}, {}]).encode())
    push(raw)                                                        # a 10 MB body

    good = celery_app.send_task("diag.add", args=[20, 22])
    assert good.get(timeout=scaled(30)) == 42
    assert w.alive(), f"worker died on bad input:\n{w.log_tail()}"
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2

    # Everything was consumed, and nothing is left unacked.
    assert redis_client.llen("celery") == 0
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(10), what="unacked to empty")

    # The 10 MB message never succeeded; if anything was stored it is a FAILURE.
    big = raw_meta(redis_client, big_id)
    assert big is None or big["status"] == "FAILURE", big and big["status"]

    for task_id, what in known.items():
        r = celery_app.AsyncResult(task_id)
        try:
            r.get(timeout=scaled(5))
        except CeleryTimeout:
            raise AssertionError(f"{what}: no FAILURE stored for a message whose id is known")
        except Exception:
            assert r.state == "FAILURE", (what, r.state)
        else:
            raise AssertionError(f"{what}: succeeded with {r.result!r}")


@celeriac_only
@pytest.mark.parametrize("body", [b'{"a": 1}', b"42", b'"a string"', b"null", b"[]",
                                  b'[[1, 2], {"a": 1}, {}, "extra"]', b"[5, {}, {}]",
                                  b"[[1, 2], [], {}]"])
@redis_only
def test_body_not_a_list_fails_instead_of_hanging(worker, celery_app, redis_client, body):
    """A protocol-2 body that is not [args, kwargs, embed]: FAILURE stored for its id."""
    worker()
    tid, raw = envelope(body=body)
    redis_client.lpush("celery", raw)
    r = celery_app.AsyncResult(tid)
    with pytest.raises(Exception) as info:
        r.get(timeout=scaled(GET))
    assert not isinstance(info.value, CeleryTimeout), "get() hung on a body that is not a list"
    assert r.state == "FAILURE"
    assert celery_app.send_task("diag.add", args=[2, 3]).get(timeout=scaled(GET)) == 5


@redis_only
def test_hybrid_message_is_accepted(worker, celery_app, redis_client):
    """Protocol-2 headers with a protocol-1 style dict body holding 'args' (celery's
    hybrid_to_proto2) run with those args."""
    worker()
    tid, raw = envelope(body=b'{"args": [1, 2], "kwargs": {}}')
    redis_client.lpush("celery", raw)
    assert celery_app.AsyncResult(tid).get(timeout=scaled(GET)) == 3


@redis_only
def test_protocol1_message_is_accepted(worker, celery_app, redis_client):
    """A protocol-1 message (task fields in the body, no 'task' header) still runs."""
    worker()
    tid = str(uuid.uuid4())
    body = json.dumps({"task": "diag.add", "id": tid, "args": [4, 5], "kwargs": {},
                       "retries": 0, "eta": None, "expires": None, "utc": True,
                       "callbacks": None, "errbacks": None, "timelimit": [None, None],
                       "taskset": None, "chord": None}).encode()
    _, raw = envelope(task_id=tid, body=body, headers={})
    redis_client.lpush("celery", raw)
    assert celery_app.AsyncResult(tid).get(timeout=scaled(GET)) == 9
