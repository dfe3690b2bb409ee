"""test_metrics.py -- the worker's and the front end's Prometheus metrics, read by Prometheus.

A real `prometheus` (Debian's, on a loopback port, 1 s scrape interval) scrapes a celeriac
worker (--metrics-port) and the Flask front end under Gunicorn (2 web workers, prometheus_client
in multiprocess mode) during a short mixed run: diag tasks that succeed, fail, expire and are not
registered, a LoRA adapter trained and scored, and HTTP requests that are accepted, polled,
refused (401) and unrouted (404). Every count is then read back through Prometheus's query API
and must equal what the test sent: counters exactly, histograms' _count and +Inf bucket
exactly, tokens trained and scored equal to the sum the tasks' results report. The worker's page
also passes `promtool check metrics`. Waits poll the query API until the value is there.
"""

import datetime
import re
import shutil
import socket
import subprocess

import pytest
import requests

from conftest import free_port, wait_until, scaled
from http_fixtures import TEXT
from metrics_fixtures import prometheus, samples, scrape, total  # noqa: F401 (fixture)
from test_http import gunicorn  # noqa: F401 (fixture: Gunicorn on the test's database)

ADD, FAIL, EXPIRED, HTTP_ADD, UNAUTH, UNROUTED = 20, 5, 2, 10, 3, 2
FWDBWD, SCORES = 3, 2


def q(metric, **labels):
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"sum({metric}{{{sel}}})"


def test_prometheus_reads_worker_and_front_end(worker, gunicorn, celery_app,  # noqa: F811
                                              prometheus):  # noqa: F811
    wport = free_port()
    w = worker("-c", "2", "--metrics-port", str(wport), "-n", "metrics@%h")
    w.wait_log(rf"metrics at http://127\.0\.0\.1:{wport}/metrics")
    api = gunicorn()
    web = api.base.split("://", 1)[1]
    prom = prometheus({"celeriac": [f"127.0.0.1:{wport}"], "web": [web]})

    # ---- the mixed run ------------------------------------------------------------------
    adds = [celery_app.send_task("diag.add", args=(i, 1)) for i in range(ADD)]
    fails = [celery_app.send_task("diag.fail", args=(f"boom {i}",)) for i in range(FAIL)]
    past = datetime.datetime.utcnow() - datetime.timedelta(seconds=30)
    expired = [celery_app.send_task("diag.noop", expires=past) for _ in range(EXPIRED)]
    unknown = celery_app.send_task("nope.not_registered")
    created = celery_app.send_task("lora.create", kwargs={"rank": 4, "seed": 7}).get(timeout=60)
    aid = created["adapter_id"]
    trained = [celery_app.send_task("lora.forward_backward",
                                    args=(aid, [{"text": TEXT[: 20 + 7 * i]}]))
               for i in range(FWDBWD)]
    scored = [celery_app.send_task("model.score", args=(TEXT[: 30 + 5 * i],))
              for i in range(SCORES)]
    futures = [api.submit("/diag/add", {"args": [i, 2]}) for i in range(HTTP_ADD)]
    for _ in range(UNAUTH):
        assert api.post("/diag/add", {"args": [1, 1]}, user="nobody-key").status_code == 401
    for i in range(UNROUTED):
        assert api.get(f"/no/such/route/{i}").status_code == 404

    assert [r.get(timeout=30) for r in adds] == [i + 1 for i in range(ADD)]
    for r in fails + expired + [unknown]:
        with pytest.raises(Exception):
            r.get(timeout=30)
    assert [r.state for r in expired] == ["REVOKED"] * EXPIRED
    tokens_trained = sum(r.get(timeout=60)["tokens"] for r in trained)
    tokens_scored = sum(r.get(timeout=60)["tokens"] for r in scored)
    assert tokens_trained > 0 and tokens_scored > 0
    for fid in futures:
        assert api.wait(fid).json()["status"] == "done"

    # ---- what Prometheus read from the worker --------------------------------------------
    job = {"job": "celeriac"}
    expect = [
        (q("celeriac_task_received_total", name="diag.add", queue_name="celery", **job),
         ADD + HTTP_ADD),
        (q("celeriac_task_started_total", name="diag.add", **job), ADD + HTTP_ADD),
        (q("celeriac_task_succeeded_total", name="diag.add", **job), ADD + HTTP_ADD),
        (q("celeriac_task_failed_total", name="diag.add", **job), 0),
        (q("celeriac_task_failed_total", name="diag.fail", **job), FAIL),
        (q("celeriac_task_received_total", name="diag.fail", **job), FAIL),
        (q("celeriac_task_revoked_total", name="diag.noop", **job), EXPIRED),
        (q("celeriac_task_started_total", name="diag.noop", **job), 0),
        (q("celeriac_task_failed_total", name="nope.not_registered", **job), 1),
        (q("celeriac_task_succeeded_total", name="lora.forward_backward", **job), FWDBWD),
        (q("celeriac_task_succeeded_total", name="model.score", **job), SCORES),
        (q("celeriac_task_succeeded_total", name="lora.create", **job), 1),
        # histograms: every task that ran is one observation, in the +Inf bucket too
        (q("celeriac_task_runtime_seconds_count", name="diag.add", **job), ADD + HTTP_ADD),
        (q("celeriac_task_runtime_seconds_bucket", name="diag.add", le="+Inf", **job),
         ADD + HTTP_ADD),
        (q("celeriac_task_runtime_seconds_count", name="diag.fail", **job), FAIL),
        (q("celeriac_task_runtime_seconds_count", name="diag.noop", **job), 0),
        (q("celeriac_task_queue_wait_seconds_count", name="diag.add", **job), ADD + HTTP_ADD),
        (q("celeriac_tokens_trained_total", **job), tokens_trained),
        (q("celeriac_tokens_scored_total", **job), tokens_scored),
        (q("celeriac_batch_tasks_count", **job), FWDBWD + SCORES),
        (q("celeriac_batch_tasks_bucket", le="1", **job), FWDBWD + SCORES),  # CPU: alone
        (q("celeriac_adapters_resident", tier="memory", **job), 1),
        (q("celeriac_executor_slots", **job), 2),
        (q("celeriac_executors", **job), 2),
        (q("celeriac_requests", **job), 0),
        (q("celeriac_queue_consumed", queue_name="celery", **job), 1),
        (q("celeriac_broker_up", **job), 1),
        (q("celeriac_broker_reconnects_total", **job), 0),
        (q("celeriac_worker_up", hostname=w_hostname(w), **job), 1),
    ]
    # ---- and from the front end (all Gunicorn workers in one page) -----------------------
    web_job = {"job": "web"}
    expect += [
        (q("celeriac_http_requests_total", route="/diag/<name>", status="202", **web_job),
         HTTP_ADD),
        (q("celeriac_http_requests_total", route="/diag/<name>", status="401", **web_job),
         UNAUTH),
        (q("celeriac_http_requests_total", route="<unmatched>", status="404", **web_job),
         UNROUTED),
        (q("celeriac_http_requests_total", route="/retrieve_future", status="200", **web_job),
         HTTP_ADD),
        (q("celeriac_http_request_duration_seconds_count", route="/diag/<name>", **web_job),
         HTTP_ADD + UNAUTH),
        (q("celeriac_http_request_duration_seconds_bucket", route="/diag/<name>", le="+Inf",
           **web_job), HTTP_ADD + UNAUTH),
        (q("celeriac_futures_outstanding", **web_job), 0),
        (q("celeriac_queue_length", queue_name="celery", **web_job), 0),
        (q("celeriac_queue_length_limit", queue_name="celery", **web_job), 10000),
    ]
    for query, want in expect:
        prom.wait_value(query, want)
    # nothing was refused with 429/503 in this run
    assert prom.value("sum(celeriac_http_refusals_total)") in (None, 0)

    # The worker's page is well-formed for Prometheus's own linter too.
    page = scrape(f"http://127.0.0.1:{wport}/metrics")
    if shutil.which("promtool"):
        r = subprocess.run(["promtool", "check", "metrics"], input=page, text=True,
                           capture_output=True, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr


def w_hostname(w):
    """The worker's node name, from its banner line."""
    m = re.search(r"celeriac (\S+) starting", w.log())
    assert m, w.log_tail()
    return m.group(1)


def test_metrics_port_off_by_default_and_errors(worker):
    w = worker("-c", "1")
    assert "metrics at" not in w.log()
    # a port in use: the worker says why and exits 2 at once
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        bad = worker("-c", "1", "--metrics-port", str(port), ready=False)
        assert bad.wait_exit(20) == 2, bad.log_tail()
        assert "--metrics-port: cannot listen" in bad.log()


def test_metrics_responder_is_not_blocked_by_executors(worker, celery_app):
    """Every executor busy in a long task: /metrics still answers at once, and shows it."""
    wport = free_port()
    worker("-c", "2", "--metrics-port", str(wport))
    sleeps = [celery_app.send_task("diag.sleep", args=(3,)) for _ in range(2)]

    def busy():
        return total(scrape(f"http://127.0.0.1:{wport}/metrics"), "celeriac_executors",
                     state="busy") == 2

    wait_until(busy, scaled(10), interval=0.05, what="both executors busy")
    r = requests.get(f"http://127.0.0.1:{wport}/metrics", timeout=1)
    assert r.status_code == 200 and r.elapsed.total_seconds() < 0.5
    page = r.text
    assert total(page, "celeriac_worker_tasks_active") == 2
    assert total(page, "celeriac_requests", state="active") == 2
    for s in sleeps:
        assert s.get(timeout=30) == 3
    page = scrape(f"http://127.0.0.1:{wport}/metrics")
    assert total(page, "celeriac_task_runtime_seconds_bucket", name="diag.sleep", le="2.5") == 0
    assert total(page, "celeriac_task_runtime_seconds_bucket", name="diag.sleep", le="5") == 2
    assert samples(page)  # parses
