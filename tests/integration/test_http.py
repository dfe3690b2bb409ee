"""test_http.py -- the Flask front end end to end: real Gunicorn, real Redis, a celeriac worker.

Each test starts `gunicorn -c gunicorn.conf.py 'flask_app:create_app()'` (2 workers, on a free
loopback port, configured only through the environment) against the test's own Redis database,
and drives it over HTTP with requests, asserting only what an HTTP client sees. Tests that need
the worker start it with the conftest `worker` fixture. These are the few things only a real
server shows: the adapter life cycle of two users at once, progress of a running task, rate
limits shared by the web workers, chunked bodies. Auth, validation and the mapping of every
task state to an answer are tested faster through app.test_client() in test_http_app.py.
All waits are bounded and wait on the thing itself (a future's state, a log line).
"""

import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from conftest import REPO, both_brokers, free_port, scaled, wait_until
from http_fixtures import KEYS, KEYS_ENV, TEXT, ApiCalls, err, table_config

HTTP_TIMEOUT = 10


# --------------------------------------------------------------------------------------------
# Gunicorn fixture and an HTTP client


class GunicornProc:
    """A running Gunicorn; looks like conftest's WorkerProc to its failure-log hook."""

    def __init__(self, cmd, env, log_path):
        self.kind = "gunicorn"
        self.cmd = cmd
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines=80):
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(15))
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self.log_file.close()


class Api(ApiCalls):
    """requests against one Gunicorn, with a user's key."""

    def __init__(self, base):
        self.base = base
        self.http = requests.Session()

    def call(self, method, path, user="alice", json=None, headers=None, **kw):
        return self.http.request(method, self.base + path, json=json,
                                 headers=self.headers_for(user, headers), timeout=HTTP_TIMEOUT,
                                 **kw)

    def json_of(self, r):
        return r.json()

    def wait(self, future_id, user="alice", timeout=30, expect=200):
        """Polls /retrieve_future until it is no longer 202; returns the final response."""
        seen = []

        def done():
            r = self.post("/retrieve_future", {"future_id": future_id}, user)
            seen.append(r.status_code)
            if r.status_code == 202:
                body = r.json()
                assert body["status"] in ("pending", "running"), body
                assert "progress" in body
                return None
            return [r]  # a list: a 4xx Response is falsy

        r = wait_until(done, scaled(timeout), interval=0.02, what=f"future {future_id}")[0]
        if expect is not None:
            assert r.status_code == expect, (r.status_code, r.text)
        return r

    def result(self, path, body, user="alice", timeout=30, method="POST"):
        """submit + wait; returns the task's result."""
        fid = self.submit(path, body, user, method)
        r = self.wait(fid, user, timeout)
        body = r.json()
        assert body["status"] == "done", body
        return body["result"]


@pytest.fixture
def gunicorn(request, tmp_path, broker_url, backend_url):
    """Factory: gunicorn(**env) -> Api for a started Gunicorn (2 workers) on the test's db."""
    started, apis = [], []
    table = table_config()

    def start(**env):
        port = free_port()
        full = dict(os.environ)
        for k in list(full):
            if k.startswith(("CELERY_", "CELERIAC_", "GUNICORN_")) or k in (
                    "MAX_CONTENT_LENGTH", "WEB_CONCURRENCY"):
                del full[k]
        full.update({
            "GUNICORN_BIND": f"127.0.0.1:{port}", "GUNICORN_WORKERS": "2",
            "GUNICORN_THREADS": "4", "GUNICORN_LOG_LEVEL": "warning",
            "GUNICORN_GRACEFUL_TIMEOUT": "5",
            "CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url,
            "CELERIAC_API_KEYS": KEYS_ENV,
            "CELERIAC_ENABLE_DIAG": "1",
            "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off", **table,
        })
        full.update({k: str(v) for k, v in env.items()})
        exe = shutil.which("gunicorn") or "/usr/bin/gunicorn"
        cmd = [exe, "-c", "gunicorn.conf.py", "flask_app:create_app()"]
        g = GunicornProc(cmd, full, str(tmp_path / f"gunicorn{len(started)}.log"))
        started.append(g)
        request.node.__dict__.setdefault("_celeriac_workers", []).append(g)
        api = Api(f"http://127.0.0.1:{port}")
        apis.append(api)

        def up():
            if g.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {g.proc.returncode}:\n"
                                     f"{g.log_tail()}")
            try:
                return api.get("/healthz", user=None).status_code in (200, 503)
            except requests.ConnectionError:
                return False

        wait_until(up, scaled(20), interval=0.1, what="gunicorn to answer /healthz")
        return api

    yield start
    for api in apis:
        api.http.close()  # idle keep-alive connections would hold up a graceful stop
    for g in started:
        g.stop()


@pytest.fixture
def api(gunicorn):
    return gunicorn()


# --------------------------------------------------------------------------------------------
# Through the server: bodies, futures, rate limits


def test_healthz_and_a_refusal(api, gunicorn):
    r = api.get("/healthz", user=None)
    assert r.status_code == 200 and r.json()["redis"] == "ok", r.text
    err(api.post("/add_lora", {"rank": "x"}), 400, "ValidationError", "rank: expected an integer")
    err(api.post("/add_lora", {}, user=None), 401, "Unauthorized")
    # A front end whose Redis is down says so (and does not hang).
    dead = gunicorn(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    r = dead.get("/healthz", user=None)
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    err(dead.post("/add_lora", {}), 503, "ServiceUnavailable")


def test_body_too_large_413(gunicorn):
    api = gunicorn(MAX_CONTENT_LENGTH=65536)
    err(api.post("/score", {"text": "x" * 70000}), 413, "PayloadTooLarge", "65536")

    # Chunked (no Content-Length): werkzeug 2.2 does not limit these by itself; read_body does.
    def chunks(n):
        for _ in range(n):
            yield b" " * 8192
        yield b'{"text": "x", "pad": 1}'

    r = api.post("/score", data=chunks(20), headers={"Content-Type": "application/json"})
    err(r, 413, "PayloadTooLarge")
    r = api.post("/score", data=chunks(2), headers={"Content-Type": "application/json"})
    err(r, 400, "ValidationError", "unknown field")


@both_brokers
def test_futures_through_the_worker(api, worker):
    # Sent before any worker runs: certainly pending, and the route did not wait for it.
    fid = api.submit("/diag/add", {"args": [2, 3]})
    r = api.post("/retrieve_future", {"future_id": fid})
    assert r.status_code == 202 and r.json() == {"status": "pending", "progress": None}
    worker("-c", "2")
    assert api.wait(fid).json() == {"status": "done", "result": 5}
    err(api.post("/retrieve_future", {"future_id": fid}, user="bob"), 404, "NotFound")
    # A ValueError raised by the task is the client's fault: 400 with the type and message.
    fid = api.submit("/diag/fail", {"args": ["bad input here"]})
    r = api.wait(fid, expect=400)
    assert r.json() == {"status": "failed",
                        "error": {"type": "ValueError", "message": "bad input here"}}
    # A TypeError from a wrong call, too.
    fid = api.submit("/diag/add", {"args": [1]})
    assert api.wait(fid, expect=400).json()["error"]["type"] == "TypeError"


@both_brokers
def test_retrieve_future_waits_for_the_task(api, worker):
    """With "wait", /retrieve_future answers when the task is done, failed or revoked: one
    request instead of a poll loop. Past the wait it answers 202 as usual; another user's
    future is 404 at once."""
    worker("-c", "2")
    fid = api.submit("/diag/sleep", {"args": [0.5]})
    r = api.post("/retrieve_future", {"future_id": fid, "wait": 8})
    assert r.status_code == 200 and r.json() == {"status": "done", "result": 0.5}, r.text
    long_fid = api.submit("/diag/sleep", {"args": [3]})
    r = api.post("/retrieve_future", {"future_id": long_fid, "wait": 0.2})
    assert r.status_code == 202 and r.json()["status"] in ("pending", "running"), r.text
    err(api.post("/retrieve_future", {"future_id": long_fid, "wait": 8}, user="bob"), 404,
        "NotFound")
    fid = api.submit("/diag/fail", {"args": ["no such thing"]})
    r = api.post("/retrieve_future", {"future_id": fid, "wait": 8})
    assert r.status_code == 400 and r.json()["error"]["message"] == "no such thing", r.text
    r = api.post("/retrieve_future", {"future_id": long_fid, "wait": 8})
    assert r.status_code == 200 and r.json()["result"] == 3, r.text


def test_example_client_keeps_its_connection(gunicorn, worker):
    """examples/celeriac_client.py keeps one connection per thread from request to request
    (keep-alive), and one the server closed while it was idle (Gunicorn's keepalive, 1 s
    here) is replaced before it is used: the next request answers as usual."""
    import sys
    sys.path.insert(0, os.path.join(REPO, "examples"))
    from celeriac_client import Client
    api = gunicorn(GUNICORN_KEEPALIVE=1)
    worker("-c", "2")
    c = Client(api.base, KEYS["alice"], timeout=HTTP_TIMEOUT)
    assert c.healthz()[0] == 200
    local = c._local.conn.sock.getsockname()  # (the client's side of its one connection)
    fids = [c.submit("/diag/add", {"args": [i, 1]}) for i in range(5)]
    assert [c.wait(f, timeout=30) for f in fids] == [i + 1 for i in range(5)]
    assert c._local.conn.sock.getsockname() == local
    time.sleep(2.5)  # past the server's keepalive: it closes the idle connection
    assert c.call("/diag/add", {"args": [40, 2]}, timeout=30) == 42
    assert c._local.conn.sock.getsockname() != local
    status, body = c.request("POST", "/retrieve_future", {"future_id": "nope"})
    assert status == 404 and body["error"]["type"] == "NotFound", body
    c.close()


def test_a_submit_sent_again_with_its_key_runs_once(gunicorn, worker, broker_url):
    """Through Gunicorn (two web workers) and the worker: the same keyed submit sent three times,
    each on a new connection (so any web worker may take it), is one future and one message;
    the worker runs it once and the future has its result."""
    import redis as redis_mod
    api = gunicorn(GUNICORN_WORKERS=2)
    r = redis_mod.Redis.from_url(broker_url)
    r.delete("celery")
    key = {"Idempotency-Key": "add-40-2"}
    fids = set()
    for _ in range(3):
        one = Api(api.base)
        resp = one.post("/diag/add", {"args": [40, 2]}, headers=key)
        assert resp.status_code == 202, resp.text
        fids.add(resp.json()["future_id"])
        one.http.close()
    assert len(fids) == 1 and r.llen("celery") == 1
    worker("-c", "1")
    assert api.wait(fids.pop()).json()["result"] == 42
    assert r.llen("celery") == 0


def test_example_client_sends_again_only_what_is_safe():
    """A kept connection that the server resets instead of answering the next request (a
    Gunicorn worker restarting after max_requests closes its idle keep-alive connections, and
    a request may be on its way): examples/celeriac_client.py sends a /retrieve_future again on
    a new connection and gets its answer, and a submit too, with the same Idempotency-Key (each
    submit has its own), so the server can queue it once (test_http_app checks that side); a
    request without a key, which the server may have taken, is not sent twice: the caller gets
    the ConnectionError. (A request whose writing fails is sent again whatever it is: the
    server never had it whole.)"""
    import socket
    import struct
    import sys
    sys.path.insert(0, os.path.join(REPO, "examples"))
    from celeriac_client import Client
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(scaled(10))
    seen, keys = [], []  # request lines answered; Idempotency-Keys of all requests read

    def read_request(c):
        buf = b""
        while b"\r\n\r\n" not in buf:
            buf += c.recv(65536)
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        n = int([ln.split(b":")[1] for ln in lines if ln.lower().startswith(b"content-length:")][0])
        while len(rest) < n:
            rest += c.recv(65536)
        seen.append(lines[0].decode())
        keys.append(([ln.split(b":", 1)[1].strip().decode() for ln in lines
                      if ln.lower().startswith(b"idempotency-key:")] or [None])[0])

    def answer(c, status, body):
        raw = json.dumps(body).encode()
        c.sendall(b"HTTP/1.1 %s\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (status, len(raw), raw))

    def reset_when_the_next_request_comes(c):
        n = len(seen)
        read_request(c)  # whole, so the client's writing cannot fail: only its read
        del seen[n:]
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # linger 0: a reset instead of an answer

    def serve(status, body):
        c, _ = srv.accept()
        read_request(c)
        answer(c, status, body)
        reset_when_the_next_request_comes(c)
        return c

    def serve_twice(status, body):
        serve(status, body)
        c, _ = srv.accept()  # the client's new connection
        read_request(c)
        answer(c, status, body)
        c.close()

    done = {"status": "done", "result": 7}
    t = threading.Thread(target=serve_twice, args=(b"200 OK", done))
    t.start()
    c = Client(f"http://127.0.0.1:{srv.getsockname()[1]}", "k", timeout=scaled(10))
    assert c.wait("f1") == 7
    assert c.wait("f2") == 7  # reset on the kept connection, then sent on a new one
    t.join()
    assert seen == ["POST /retrieve_future HTTP/1.1"] * 2, seen  # (the reset one not counted)

    seen.clear(), keys.clear()
    t = threading.Thread(target=serve_twice, args=(b"202 Accepted", {"future_id": "f3"}))
    t.start()
    assert c.submit("/diag/add", {"args": [1, 2]}) == "f3"
    assert c.submit("/diag/add", {"args": [3, 4]}) == "f3"  # reset, then sent on a new one
    t.join()
    assert seen == ["POST /diag/add HTTP/1.1"] * 2, seen
    assert len(keys) == 3 and None not in keys, keys  # first, the reset one, its resend
    assert keys[1] == keys[2] != keys[0], keys

    seen.clear(), keys.clear()
    t = threading.Thread(target=serve, args=(b"202 Accepted", {"future_id": "f4"}))
    t.start()
    assert c.request("POST", "/diag/add", {"args": [1, 2]}) == (202, {"future_id": "f4"})
    with pytest.raises(ConnectionError):
        c.request("POST", "/diag/add", {"args": [3, 4]})  # no key: may have been taken
    t.join()
    srv.settimeout(0.5)
    with pytest.raises(socket.timeout):
        srv.accept()  # not sent again
    assert seen == ["POST /diag/add HTTP/1.1"], seen
    srv.close()


def test_waiting_requests_are_bounded(gunicorn, worker):
    """CELERIAC_MAX_WAITERS=1: while one request waits for its task, a second one answers at
    once (202) instead of taking another thread; the first still gets its result."""
    api = gunicorn(GUNICORN_WORKERS=1, CELERIAC_MAX_WAITERS=1)
    worker("-c", "1")
    fid = api.submit("/diag/sleep", {"args": [4]})
    first = {}
    other = Api(api.base)
    t = threading.Thread(target=lambda: first.update(
        r=other.post("/retrieve_future", {"future_id": fid, "wait": 8})))
    t.start()
    try:
        time.sleep(0.5)  # spacing: the first request has reached its wait
        r = api.post("/retrieve_future", {"future_id": fid, "wait": 8})
        assert r.status_code == 202 and t.is_alive(), r.text
    finally:
        t.join(scaled(15))
        other.http.close()
    assert first["r"].status_code == 200 and first["r"].json()["result"] == 4


def test_rate_limit_shared_by_web_workers(gunicorn):
    """The poll budget (8/minute) is one count per user for every web worker process: the
    requests alternate between two Gunicorns of one worker each on the same Redis (so which
    process serves each one is certain; a Gunicorn's own workers are such processes too, but
    the kernel picks which one accepts). Counts kept per process would let 16 through."""
    one = gunicorn(CELERIAC_POLL_RATE_LIMIT="8/minute", CELERIAC_RATE_LIMIT="8/minute",
                   GUNICORN_WORKERS=1)
    two = gunicorn(CELERIAC_POLL_RATE_LIMIT="8/minute", CELERIAC_RATE_LIMIT="8/minute",
                   GUNICORN_WORKERS=1)
    codes = [(one, two)[i % 2].post("/retrieve_future", {"future_id": "x"}, user="carol")
             for i in range(12)]
    assert [r.status_code for r in codes] == [404] * 8 + [429] * 4, codes
    for r in codes[8:]:
        err(r, 429, "RateLimited")
        assert 1 <= int(r.headers["Retry-After"]) <= 61
    # Another user's budget is untouched, and so is carol's budget for submitting.
    assert two.post("/retrieve_future", {"future_id": "x"}, user="alice").status_code == 404
    assert one.post("/diag/noop", {}, user="carol").status_code == 202


# --------------------------------------------------------------------------------------------
# The model routes


def _model_worker(worker, tmp_path):
    return worker("-c", "2", "--state-dir", str(tmp_path / "state"), ready_timeout=60)


def _train_user(api, user, steps, out):
    """One user's whole life cycle; fills out[user] with what it saw."""
    info = api.result("/add_lora", {"rank": 8, "alpha": 16, "seed": 7}, user=user)
    aid = info["adapter_id"]
    assert info["step"] == 0 and info["rank"] == 8
    losses = []
    for step in range(steps):
        # fwdbwd and optim_step are sent back to back; the worker keeps their order.
        f1 = api.submit("/fwdbwd", {"adapter_id": aid, "data": [{"text": TEXT}] * 2}, user)
        f2 = api.submit("/optim_step", {"adapter_id": aid,
                                        "adam_params": {"learning_rate": 1e-2}}, user)
        fb = api.wait(f1, user, timeout=60).json()["result"]
        op = api.wait(f2, user, timeout=60).json()["result"]
        assert fb["examples"] == 2 and fb["tokens"] > 0
        assert op["step"] == step + 1
        losses.append(fb["loss"])
    sample = api.result("/api/v1/sample", {
        "adapter_id": aid, "prompts": ["The quick brown"],
        "sampling_params": {"max_tokens": 16, "temperature": 0}}, user=user, timeout=60)
    out[user] = {"adapter_id": aid, "losses": losses, "sample": sample}


@both_brokers
def test_adapter_life_cycle_two_users(api, worker, tmp_path):
    _model_worker(worker, tmp_path)
    out, errors = {}, []

    def run(user):
        try:
            _train_user(api, user, 20, out)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(f"{user}: {e!r}")

    threads = [threading.Thread(target=run, args=(u,)) for u in ("alice", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(100))
    assert not errors, errors
    assert set(out) == {"alice", "bob"}
    a, b = out["alice"]["adapter_id"], out["bob"]["adapter_id"]
    assert a != b
    for user in ("alice", "bob"):
        losses = out[user]["losses"]
        assert losses[-1] < losses[0] * 0.5, (user, losses)
        text = out[user]["sample"]["samples"][0]
        text = text["text"] if isinstance(text, dict) else text
        assert "fox jumps over the lazy dog" in text, (user, text)

    # Ownership: bob cannot train, sample, read or delete alice's adapter (404, as unknown).
    for path, body in (("/fwdbwd", {"adapter_id": a, "data": [{"text": "x"}]}),
                       ("/optim_step", {"adapter_id": a}),
                       ("/api/v1/sample", {"adapter_id": a, "prompts": ["x"]}),
                       ("/score", {"adapter_id": a, "text": "x"})):
        err(api.post(path, body, user="bob"), 404, "NotFound")
    err(api.get(f"/adapters/{a}", user="bob"), 404)
    err(api.delete(f"/adapters/{a}", user="bob"), 404)

    # Each user lists only their own.
    r = api.get("/adapters", user="alice")
    assert r.status_code == 202 and r.json()["adapter_ids"] == [a]
    listed = api.wait(r.json()["future_id"], "alice").json()["result"]
    ids = [x["adapter_id"] if isinstance(x, dict) else x for x in listed]
    assert a in ids and b not in ids
    info = api.result(f"/adapters/{a}", None, user="alice", method="GET")
    assert info["step"] == 20

    # The base model is everyone's; scoring with the adapter makes the text more likely.
    base = api.result("/score", {"text": TEXT}, user="bob")
    for k in ("tokens", "logprob", "mean_logprob", "perplexity", "token_logprobs"):
        assert k in base, base
    assert base["logprob"] < 0 and base["perplexity"] > 1
    tuned = api.result("/score", {"text": TEXT, "adapter_id": b}, user="bob")
    assert tuned["logprob"] > base["logprob"]

    # Delete: alice's adapter is gone for her too; bob's is untouched.
    fid = api.submit(f"/adapters/{a}", None, user="alice", method="DELETE")
    api.wait(fid, "alice")
    err(api.post("/optim_step", {"adapter_id": a}, user="alice"), 404)
    assert api.get("/adapters", user="alice").json()["adapter_ids"] == []
    assert api.get("/adapters", user="bob").json()["adapter_ids"] == [b]


@both_brokers
def test_progress_of_running_future(api, worker, tmp_path):
    """A long fwdbwd reports PROGRESS; /retrieve_future shows it as 202 running + progress."""
    _model_worker(worker, tmp_path)
    aid = api.result("/add_lora", {"rank": 4})["adapter_id"]
    n = 48
    fid = api.submit("/fwdbwd", {"adapter_id": aid, "data": [{"text": TEXT * 12}] * n})
    seen = []

    def done():
        r = api.post("/retrieve_future", {"future_id": fid})
        if r.status_code == 202:
            seen.append(r.json())
            return None
        return [r]

    r = wait_until(done, scaled(120), interval=0.01, what="the long fwdbwd")[0]
    assert r.status_code == 200, r.text
    assert r.json()["result"]["examples"] == n
    progress = [b["progress"] for b in seen if b["status"] == "running" and b["progress"]]
    assert progress, f"no running future with progress seen in {len(seen)} polls: {seen[-3:]}"
    for p in progress:
        assert p["total"] == n and 0 <= p["done"] <= n, p


def _metrics_dirs(parent):
    return sorted(p for p in os.listdir(parent) if p.startswith("celeriac-prometheus-"))


def _unlocked(path):
    """Whether nobody holds the flock of path (a killed Gunicorn's workers may take a moment
    to die after their master)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_killed_gunicorns_leave_no_metrics_directories(gunicorn, request, tmp_path):
    """gunicorn.conf.py makes a private prometheus_client directory per Gunicorn and removes it
    at exit; one killed with SIGKILL runs no exit hook, so the next Gunicorn to start removes
    its directory -- and never the directory of one that is still running."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    gunicorn(TMPDIR=str(tmp))
    procs = request.node.__dict__["_celeriac_workers"]  # the fixture's processes, in order
    killed = procs[-1]
    (first,) = _metrics_dirs(tmp)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.proc.wait(scaled(10))
    wait_until(lambda: _unlocked(tmp / first / ".celeriac-lock"), scaled(10),
               what="the killed Gunicorn's workers to die")
    assert _metrics_dirs(tmp) == [first]  # no exit hook ran

    second_api = gunicorn(TMPDIR=str(tmp))
    second = procs[-1]
    (kept,) = _metrics_dirs(tmp)
    assert kept != first  # the killed one's directory went when the next one started

    third_api = gunicorn(TMPDIR=str(tmp))
    assert kept in _metrics_dirs(tmp) and len(_metrics_dirs(tmp)) == 2  # a live one's stays
    for api in (second_api, third_api):
        r = api.get("/metrics", user=None)
        assert r.status_code == 200 and b"celeriac_http_requests_total" in r.content, r.text

    second_api.http.close()
    second.stop()  # SIGTERM: its exit hook removes its own directory, not the third's
    (left,) = _metrics_dirs(tmp)
    assert left not in (first, kept)
