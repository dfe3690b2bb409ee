"""test_config.py -- queues, priorities, broker/backend URLs from options and environment."""

import json

from conftest import scaled, wait_until

GET = 10


def add(app, a, b, **options):
    return app.send_task("diag.add", args=[a, b], **options)


def test_two_queues(worker, celery_app, redis_client):
    worker("-Q", "alpha,beta")
    ra = add(celery_app, 1, 2, queue="alpha")
    rb = add(celery_app, 3, 4, queue="beta")
    rc = add(celery_app, 5, 6, queue="gamma")
    rd = add(celery_app, 7, 8)  # default queue 'celery', not consumed either
    assert ra.get(timeout=scaled(GET)) == 3
    assert rb.get(timeout=scaled(GET)) == 7
    more = [add(celery_app, i, 0, queue="alpha" if i % 2 else "beta") for i in range(20)]
    assert [r.get(timeout=scaled(GET)) for r in more] == list(range(20))
    assert redis_client.llen("gamma") == 1 and rc.state == "PENDING"
    assert redis_client.llen("celery") == 1 and rd.state == "PENDING"


def test_default_queue_is_celery(worker, celery_app, redis_client):
    worker()
    other = add(celery_app, 1, 1, queue="other")
    assert add(celery_app, 2, 2).get(timeout=scaled(GET)) == 4
    assert redis_client.llen("other") == 1 and other.state == "PENDING"


def test_priority_subqueues_are_consumed(worker, celery_app, redis_client):
    # Sent while no worker runs, so the list each one lands in can be checked.
    keys = {0: b"celery", 2: b"celery", 3: b"celery\x06\x163", 5: b"celery\x06\x163",
            6: b"celery\x06\x166", 8: b"celery\x06\x166", 9: b"celery\x06\x169"}
    results = {p: add(celery_app, p, 100, priority=p) for p in keys}
    assert redis_client.llen(b"celery") == 2
    assert redis_client.llen(b"celery\x06\x163") == 2
    assert redis_client.llen(b"celery\x06\x166") == 2
    assert redis_client.llen(b"celery\x06\x169") == 1
    worker()
    for p, r in results.items():
        assert r.get(timeout=scaled(GET)) == p + 100
    for key in set(keys.values()):
        assert redis_client.llen(key) == 0
    # And while the worker runs.
    assert add(celery_app, 1, 2, priority=5).get(timeout=scaled(GET)) == 3
    assert add(celery_app, 1, 3, priority=9).get(timeout=scaled(GET)) == 4


def test_priority_order_on_redis(worker, celery_app):
    """kombu serves priority 0 first on Redis (the 'celery' list before 'celery\\x06\\x169')."""
    low = [add(celery_app, i, 0, priority=9) for i in range(3)]
    high = [add(celery_app, i, 0, priority=0) for i in range(3)]
    worker("-c", "1", "--prefetch-multiplier", "1")
    for r in low + high:
        r.get(timeout=scaled(GET))
    last_high = max(r.date_done for r in high)
    first_low = min(r.date_done for r in low)
    assert last_high <= first_low, (last_high, first_low)


def test_priority_with_two_queues(worker, celery_app):
    worker("-Q", "q1,q2")
    rs = [add(celery_app, i, 1, queue="q1" if i % 2 else "q2", priority=i % 10)
          for i in range(20)]
    assert [r.get(timeout=scaled(GET)) for r in rs] == [i + 1 for i in range(20)]


def test_env_broker_and_backend(worker, make_app, redis_server, fresh_db):
    broker_db, backend_db = fresh_db(), fresh_db()
    broker, backend = redis_server.url(broker_db), redis_server.url(backend_db)
    worker(broker=None, env={"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": backend})
    app = make_app(broker, backend)
    r = add(app, 20, 22)
    assert r.get(timeout=scaled(GET)) == 42
    key = f"celery-task-meta-{r.id}"
    assert redis_server.client(backend_db).exists(key) == 1
    assert redis_server.client(broker_db).exists(key) == 0


def test_env_broker_backend_defaults_to_broker(worker, make_app, redis_server, fresh_db):
    broker_db = fresh_db()
    broker = redis_server.url(broker_db)
    worker(broker=None, env={"CELERY_BROKER_URL": broker})
    app = make_app(broker)
    r = add(app, 1, 2)
    assert r.get(timeout=scaled(GET)) == 3
    assert redis_server.client(broker_db).exists(f"celery-task-meta-{r.id}") == 1


def test_broker_option_beats_env(worker, make_app, broker_url):
    worker(env={"CELERY_BROKER_URL": "redis://127.0.0.1:1/0"})  # -b <test db> is also given
    app = make_app(broker_url)
    assert add(app, 2, 3).get(timeout=scaled(GET)) == 5


def test_result_backend_option(worker, make_app, redis_server, broker_url, db, fresh_db):
    backend_db = fresh_db()
    backend = redis_server.url(backend_db)
    worker("--result-backend", backend)
    app = make_app(broker_url, backend)
    r = add(app, 4, 5)
    assert r.get(timeout=scaled(GET)) == 9
    meta = json.loads(redis_server.client(backend_db).get(f"celery-task-meta-{r.id}"))
    assert meta["status"] == "SUCCESS" and meta["result"] == 9
    assert redis_server.client(db).exists(f"celery-task-meta-{r.id}") == 0


def test_broker_with_password(worker, tmp_redis, make_app):
    server = tmp_redis(password="s3cret-pw")
    url = server.url(3)
    assert url.startswith("redis://:s3cret-pw@127.0.0.1:")
    worker(broker=url)
    app = make_app(url)
    assert add(app, 6, 7).get(timeout=scaled(GET)) == 13
    assert app.send_task("diag.echo", args=["pw"]).get(timeout=scaled(GET)) == [["pw"], {}]
    assert server.client(3).exists("celery") == 0


def test_wrong_password_is_reported(worker, tmp_redis):
    """A broker that refuses the password: the worker says so, and does not claim ready."""
    server = tmp_redis(password="right")
    bad = f"redis://:wrong@127.0.0.1:{server.port}/0"
    w = worker(broker=bad, ready=False)
    wait_until(lambda: not w.alive() or "ERROR" in w.log() or "CRITICAL" in w.log(),
               scaled(15), what="an error about the broker password")
    assert "ready." not in w.log()
