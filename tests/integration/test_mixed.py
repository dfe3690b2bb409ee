"""test_mixed.py -- celeriac and a stock Python Celery worker consuming one queue together.

Both see the same kombu Redis queue and ack emulation: every task runs exactly once, on one
of the two, and every result is right whichever ran it.
"""

import collections
import uuid

from conftest import scaled, wait_until

N_ECHO = 220
N_ADD = 60
N_SLEEP = 20


def test_celeriac_and_python_share_a_queue(worker, pyworker, celery_app, redis_client):
    py = pyworker("-c", "2")
    ce = worker("-c", "2")
    expected = {}
    with celery_app.producer_or_acquire() as producer:
        for i in range(N_ECHO + N_ADD + N_SLEEP):
            if i % 15 == 0 and N_SLEEP:
                r = celery_app.send_task("diag.sleep", args=[0.02], producer=producer)
                expected[r.id] = (r, 0.02)
            elif i % 4 == 0:
                r = celery_app.send_task("diag.add", args=[i, 0.5], producer=producer)
                expected[r.id] = (r, i + 0.5)
            else:
                token = f"{uuid.uuid4()}-ü😀-{i}"
                r = celery_app.send_task("diag.echo", args=[token], kwargs={"i": i},
                                         producer=producer)
                expected[r.id] = (r, [[token], {"i": i}])
    for task_id, (r, want) in expected.items():
        assert r.get(timeout=scaled(30)) == want, task_id

    total = len(expected)
    wait_until(lambda: len(py.succeeded()) + len(ce.succeeded()) >= total, scaled(10),
               what=f"{total} succeeded lines across both logs")
    py_ids = collections.Counter(i for _, i in py.succeeded())
    ce_ids = collections.Counter(i for _, i in ce.succeeded())
    both = set(py_ids) & set(ce_ids)
    assert not both, f"{len(both)} tasks ran on both workers, e.g. {sorted(both)[:3]}"
    dups = [i for c in (py_ids, ce_ids) for i, n in c.items() if n > 1]
    assert not dups, f"tasks ran twice on one worker: {dups[:3]}"
    assert set(py_ids) | set(ce_ids) == set(expected)
    assert ce_ids and py_ids, \
        f"one worker did nothing: celeriac {len(ce_ids)}, python {len(py_ids)}"
    assert redis_client.llen("celery") == 0
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(10), what="unacked to drain")
