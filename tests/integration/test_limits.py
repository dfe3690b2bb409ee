"""test_limits.py -- executor crashes, time limits and executor recycling, seen by the client.

A crashed or killed executor must cost only its own task (WorkerLostError / TimeLimitExceeded)
and the worker must keep serving with a fresh executor.
"""

import time

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError

from conftest import both_brokers, scaled, wait_until

# Executor crashes and time limits, on Redis and on RabbitMQ (conftest.py).
pytestmark = both_brokers

GET = 10


def add_ok(app, a=1, b=2):
    assert app.send_task("diag.add", args=[a, b]).get(timeout=scaled(GET)) == a + b


def test_executor_crash_is_worker_lost_and_worker_recovers(worker, celery_app):
    w = worker("-c", "1")
    r = celery_app.send_task("diag.crash")
    with pytest.raises(WorkerLostError):
        r.get(timeout=scaled(GET))
    assert r.state == "FAILURE"
    add_ok(celery_app)
    # A second crash, right after a respawn, is handled the same way.
    r = celery_app.send_task("diag.crash")
    with pytest.raises(WorkerLostError):
        r.get(timeout=scaled(GET))
    add_ok(celery_app, 5, 6)
    assert w.alive()


def test_crash_costs_only_its_own_task(worker, celery_app):
    worker("-c", "2")
    sleepers = [celery_app.send_task("diag.sleep", args=[0.5]) for _ in range(4)]
    crash = celery_app.send_task("diag.crash")
    adds = [celery_app.send_task("diag.add", args=[i, i]) for i in range(10)]
    with pytest.raises(WorkerLostError):
        crash.get(timeout=scaled(GET))
    assert [r.get(timeout=scaled(GET)) for r in sleepers] == [0.5] * 4
    assert [r.get(timeout=scaled(GET)) for r in adds] == [2 * i for i in range(10)]


def test_hard_time_limit_option(worker, celery_app):
    worker("-c", "1", "--time-limit", "1")
    t0 = time.monotonic()
    r = celery_app.send_task("diag.sleep", args=[5])
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=scaled(GET))
    assert time.monotonic() - t0 < 4.5, "the task was not stopped at its time limit"
    assert r.state == "FAILURE"
    add_ok(celery_app)
    # A task within the limit is unaffected.
    assert celery_app.send_task("diag.sleep", args=[0.2]).get(timeout=scaled(GET)) == 0.2


def test_soft_time_limit_option(worker, celery_app):
    worker("-c", "1", "--soft-time-limit", "1")
    t0 = time.monotonic()
    r = celery_app.send_task("diag.sleep", args=[5])
    with pytest.raises(SoftTimeLimitExceeded):
        r.get(timeout=scaled(GET))
    assert time.monotonic() - t0 < 4.5
    assert r.state == "FAILURE"
    add_ok(celery_app)


def test_per_task_time_limits(worker, celery_app):
    worker("-c", "2")
    t0 = time.monotonic()
    hard = celery_app.send_task("diag.sleep", args=[5], time_limit=1)
    soft = celery_app.send_task("diag.sleep", args=[5], soft_time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=scaled(GET))
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=scaled(GET))
    assert time.monotonic() - t0 < 4.5
    # Limits belong to their task only: the next sleep runs to completion.
    assert celery_app.send_task("diag.sleep", args=[1.2]).get(timeout=scaled(GET)) == 1.2
    add_ok(celery_app)


def test_per_task_limit_overrides_worker_limit(worker, celery_app):
    """apply_async(time_limit=) wins over --time-limit (as in celery's Request)."""
    worker("-c", "1", "--time-limit", "10")
    r = celery_app.send_task("diag.sleep", args=[5], time_limit=1)
    t0 = time.monotonic()
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=scaled(GET))
    assert time.monotonic() - t0 < 4.5


def test_max_tasks_per_child(worker, celery_app):
    w = worker("-c", "1", "--max-tasks-per-child", "2")
    results = []
    for i in range(9):
        results.append(celery_app.send_task("diag.add", args=[i, 1]).get(timeout=scaled(GET)))
    assert results == [i + 1 for i in range(9)]
    # And a burst, so recycling happens with work queued behind it.
    burst = [celery_app.send_task("diag.add", args=[i, 2]) for i in range(20)]
    assert [r.get(timeout=scaled(GET)) for r in burst] == [i + 2 for i in range(20)]
    # (the log line may trail the stored result by a moment)
    wait_until(lambda: len(w.succeeded()) >= 29, scaled(5), what="29 succeeded lines")
    assert len(w.succeeded()) == 29
    assert w.alive()
