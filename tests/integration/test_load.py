"""test_load.py -- many tasks in flight at once: every one answered, correctly, exactly once."""

import collections
import time

from conftest import scaled, wait_until

N = 1000


def send_many(app, name, arg_list):
    """Sends one task per args tuple through one producer (pipelined, no per-task connect)."""
    with app.producer_or_acquire() as producer:
        return [app.send_task(name, args=list(args), producer=producer) for args in arg_list]


def get_all(results, timeout):
    deadline = time.monotonic() + timeout
    values = []
    for r in results:
        values.append(r.get(timeout=max(0.5, deadline - time.monotonic())))
    return values


def test_1000_in_flight_answered_exactly_once(worker, celery_app, redis_client):
    w = worker("-c", "2")
    results = send_many(celery_app, "diag.add", [(i, i) for i in range(N)])
    values = get_all(results, scaled(60))
    bad = [(i, v) for i, v in enumerate(values) if v != 2 * i]
    assert not bad, f"{len(bad)} wrong results, first {bad[:5]}"
    ids = {r.id for r in results}
    wait_until(lambda: len(w.succeeded()) >= N, scaled(10), what=f"{N} succeeded lines")
    counts = collections.Counter(i for _, i in w.succeeded())
    dups = [i for i, c in counts.items() if c > 1]
    assert not dups, f"tasks executed more than once: {dups[:5]}"
    assert set(counts) == ids
    assert redis_client.llen("celery") == 0
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(10), what="unacked to drain")
    assert w.alive()


def test_backlog_queued_before_start(worker, celery_app, redis_client):
    """A backlog waiting in the queue before the worker starts (the prefetch path)."""
    results = send_many(celery_app, "diag.echo", [(i, "x" * (i % 50)) for i in range(300)])
    assert redis_client.llen("celery") == 300
    w = worker("-c", "2", "--prefetch-multiplier", "8")
    values = get_all(results, scaled(40))
    assert values == [[[i, "x" * (i % 50)], {}] for i in range(300)]
    wait_until(lambda: len(w.succeeded()) >= 300, scaled(10), what="300 succeeded lines")
    assert len(w.succeeded()) == 300
