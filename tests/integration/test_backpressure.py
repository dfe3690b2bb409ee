"""test_backpressure.py -- bounded queues: the front end's 503s and the worker's eta bound.

Front end (real Gunicorn, 2 web workers): with CELERIAC_MAX_QUEUE_DEPTH=5 and no worker, five
tasks are accepted and the next submissions get 503 QueueFull with Retry-After while nothing
more reaches the queue; /healthz says "degraded" and /metrics counts the refusals; once a
worker drains the queue the front end says "ok" and accepts again, and every accepted future
finishes with its own result. Concurrent submitters around the bound lose nothing either.
Worker: with --eta-task-limit 3 it holds three countdown messages and leaves the rest (and a
task behind them) in the broker until those come due; then every one of them runs.
"""

import threading

from conftest import free_port, scaled, wait_until
from http_fixtures import err
from metrics_fixtures import scrape, total
from test_http import gunicorn  # noqa: F401 (fixture: Gunicorn on the test's database)

BOUND = 5


def test_queue_full_is_503_and_the_front_end_recovers(gunicorn, worker, redis_client):  # noqa: F811
    api = gunicorn(CELERIAC_MAX_QUEUE_DEPTH=str(BOUND), CELERIAC_QUEUE_DEPTH_TTL_MS="0")
    accepted = {api.submit("/diag/add", {"args": [i, 100]}): i + 100 for i in range(BOUND)}
    assert redis_client.llen("celery") == BOUND
    for _ in range(3):
        r = api.post("/diag/add", {"args": [0, 0]})
        e = err(r, 503, "QueueFull", "CELERIAC_MAX_QUEUE_DEPTH")
        assert "nothing was queued" in e["message"]
        assert int(r.headers["Retry-After"]) >= 1
    # the limit is the broker's queue, whoever asks: other routes that submit are refused too
    err(api.post("/add_lora", {}), 503, "QueueFull")
    assert redis_client.llen("celery") == BOUND  # refused requests queued nothing
    h = api.get("/healthz", user=None)
    assert h.status_code == 200, h.text
    body = h.json()
    assert body["status"] == "degraded" and body["queue_length"] == BOUND, body
    assert body["queues"] == {"celery": {"depth": BOUND, "max": BOUND}}, body
    assert body["degraded"], body
    # reads still work while degraded
    fid = next(iter(accepted))
    r = api.post("/retrieve_future", {"future_id": fid})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    page = scrape(api.base + "/metrics")
    assert total(page, "celeriac_http_refusals_total", reason="queue_full", status="503") == 4
    assert total(page, "celeriac_queue_length", queue_name="celery") == BOUND
    assert total(page, "celeriac_futures_outstanding") == BOUND

    worker("-c", "2")

    def healthy():
        return api.get("/healthz", user=None).json()["status"] == "ok"

    wait_until(healthy, scaled(20), interval=0.1, what="the queue to drain")
    accepted.update({api.submit("/diag/add", {"args": [i, 200]}): i + 200 for i in range(2)})
    for fid, want in accepted.items():
        r = api.wait(fid)
        assert r.json() == {"status": "done", "result": want}
    assert redis_client.llen("celery") == 0
    assert redis_client.hlen("unacked") == 0
    page = scrape(api.base + "/metrics")
    assert total(page, "celeriac_futures_outstanding") == 0
    assert total(page, "celeriac_http_requests_total", route="/diag/<name>", status="202") == \
        BOUND + 2


def test_concurrent_submitters_lose_nothing(gunicorn, worker):  # noqa: F811
    """Six clients submit at once against a bound of 4 while a slow worker drains: every 202
    future finishes with its own result, and each request got a 202 or a 503."""
    api = gunicorn(CELERIAC_MAX_QUEUE_DEPTH="4", CELERIAC_QUEUE_DEPTH_TTL_MS="0")
    worker("-c", "1")
    results, lock = {}, threading.Lock()
    statuses = []

    def client(k):
        for i in range(10):
            r = api.post("/diag/add", {"args": [k * 100, i]})
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 202:
                    results[r.json()["future_id"]] = k * 100 + i
                else:
                    assert r.status_code == 503 and r.json()["error"]["type"] == "QueueFull"

    threads = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(60))
    assert len(statuses) == 60 and set(statuses) <= {202, 503}, statuses
    assert results
    for fid, want in results.items():
        assert api.wait(fid).json() == {"status": "done", "result": want}


def test_worker_holds_at_most_eta_task_limit(worker, celery_app, redis_client):
    # Sent before the worker starts, so it takes them one by one (prefetch 1).
    etas = [celery_app.send_task("diag.add", args=(i, 1000), countdown=3) for i in range(6)]
    now = celery_app.send_task("diag.add", args=(1, 1))
    port = free_port()
    worker("-c", "1", "--prefetch-multiplier", "1", "--eta-task-limit", "3",
           "--metrics-port", str(port))
    url = f"http://127.0.0.1:{port}/metrics"

    def bounded():
        page = scrape(url)
        return (total(page, "celeriac_requests", state="scheduled") == 3 and
                redis_client.llen("celery") == 4)

    # three held for their countdown; three more and the plain task wait in the broker
    wait_until(bounded, scaled(10), interval=0.05, what="3 scheduled, 4 left in the queue")
    assert not now.ready()
    assert total(scrape(url), "celeriac_eta_task_limit") == 3
    assert [r.get(timeout=scaled(30)) for r in etas] == [i + 1000 for i in range(6)]
    assert now.get(timeout=scaled(30)) == 2
    assert redis_client.llen("celery") == 0
    page = scrape(url)
    assert total(page, "celeriac_task_succeeded_total", name="diag.add") == 7
    assert total(page, "celeriac_requests", state="scheduled") == 0
