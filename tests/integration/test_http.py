"""test_http.py -- the Flask front end through real Gunicorn, real Redis and a celeriac worker.

Each test starts `gunicorn -c gunicorn.conf.py 'flask_app:create_app()'` (2 workers, on a free
loopback port, configured only through the environment) against the test's own Redis database,
and drives it over HTTP with requests, asserting only what an HTTP client sees. Tests that need
the worker start it with the conftest `worker` fixture (`-c 2`, a state dir). Tests of the model
routes (lora.*, model.score) are skipped, with the reason, when the worker does not have those
tasks yet; everything else (auth, validation, 413, 404s, rate limits, futures through the diag
tasks, /healthz) runs regardless. All waits are bounded.
"""

import glob
import os
import shutil
import signal
import subprocess
import threading
import time

import pytest
import requests

from conftest import REPO, free_port, scaled, wait_until

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-9876543210",
        "carol": "carol-key-5555555555"}
KEYS_ENV = ",".join(f"{u}:{k}" for u, k in KEYS.items())
HTTP_TIMEOUT = 10
TEXT = "The quick brown fox jumps over the lazy dog."


def _worker_has_model_tasks():
    """True when the worker's sources name the model tasks (lora.create, model.score)."""
    text = ""
    for path in glob.glob(os.path.join(REPO, "worker", "*.c")):
        with open(path, encoding="utf-8", errors="replace") as f:
            text += f.read()
    return '"lora.create"' in text and '"model.score"' in text


needs_model = pytest.mark.skipif(
    not _worker_has_model_tasks(),
    reason="the worker has no model tasks yet (no \"lora.create\"/\"model.score\" in worker/*.c)")


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


class Api:
    """requests against one Gunicorn, with a user's key."""

    def __init__(self, base):
        self.base = base
        self.http = requests.Session()

    def call(self, method, path, user="alice", json=None, headers=None, **kw):
        h = dict(headers or {})
        if user is not None:
            h.setdefault("Authorization", f"Bearer {KEYS.get(user, user)}")
        return self.http.request(method, self.base + path, json=json, headers=h,
                                 timeout=HTTP_TIMEOUT, **kw)

    def post(self, path, json=None, user="alice", **kw):
        return self.call("POST", path, user, json, **kw)

    def get(self, path, user="alice", **kw):
        return self.call("GET", path, user, **kw)

    def delete(self, path, user="alice", **kw):
        return self.call("DELETE", path, user, **kw)

    def submit(self, path, body, user="alice", method="POST"):
        """Sends a task-submitting request; asserts 202 and returns the future id."""
        r = self.call(method, path, user, body)
        assert r.status_code == 202, (path, r.status_code, r.text)
        fid = r.json()["future_id"]
        assert isinstance(fid, str) and fid
        return fid

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
def gunicorn(request, tmp_path, broker_url):
    """Factory: gunicorn(**env) -> Api for a started Gunicorn (2 workers) on the test's db."""
    started, apis = [], []

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
            "CELERY_BROKER_URL": broker_url, "CELERIAC_API_KEYS": KEYS_ENV,
            "CELERIAC_ENABLE_DIAG": "1",
            "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off",
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


def err(r, status, type_=None, contains=None):
    """Asserts an error response: status, JSON {"error": {"type", "message"}}."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    e = r.json()["error"]
    assert isinstance(e["type"], str) and isinstance(e["message"], str) and e["message"]
    if type_ is not None:
        assert e["type"] == type_, e
    if contains is not None:
        assert contains in e["message"], e
    return e


# --------------------------------------------------------------------------------------------
# Health, auth


def test_healthz(api, gunicorn, redis_client):
    r = api.get("/healthz", user=None)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "ok" and r.json()["redis"] == "ok"
    # A front end whose Redis is down says so (and does not hang).
    dead = gunicorn(CELERY_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    r = dead.get("/healthz", user=None)
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    r = dead.post("/add_lora", {})
    err(r, 503, "ServiceUnavailable")


AUTH_ROUTES = [
    ("POST", "/add_lora"), ("POST", "/fwdbwd"), ("POST", "/optim_step"),
    ("POST", "/api/v1/sample"), ("POST", "/score"), ("POST", "/retrieve_future"),
    ("GET", "/adapters"), ("GET", "/adapters/x"), ("DELETE", "/adapters/x"),
    ("POST", "/diag/noop"),
]


def test_auth_401(api):
    for method, path in AUTH_ROUTES:
        for headers in ({}, {"Authorization": "Basic YWxpY2U6eA=="},
                        {"Authorization": "Bearer"}, {"Authorization": "Bearer not-a-key"},
                        {"Authorization": "Bearer " + KEYS["alice"] + "x"},
                        {"Authorization": "Bearer " + KEYS["alice"][:-1]}):
            r = api.call(method, path, user=None, json={}, headers=headers)
            err(r, 401, "Unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
    # The same requests with a key get past auth (to validation or a 202).
    assert api.post("/diag/noop", {}).status_code == 202
    assert api.post("/add_lora", {"rank": "x"}).status_code == 400


def test_unknown_route_and_method_are_json(api):
    err(api.get("/nope"), 404)
    err(api.get("/add_lora"), 405)


# --------------------------------------------------------------------------------------------
# Validation


BAD = [
    # (path, body, text expected in the message)
    ("/add_lora", None, "empty"),
    ("/add_lora", "[1]", "JSON object"),
    ("/add_lora", "{not json", "not valid JSON"),
    ("/add_lora", {"rank": "8"}, "rank: expected an integer"),
    ("/add_lora", {"rank": 0}, "rank: must be >= 1"),
    ("/add_lora", {"rank": True}, "rank: expected an integer"),
    ("/add_lora", {"rank": 100000}, "rank: must be <="),
    ("/add_lora", {"alpha": -1}, "alpha: must be >"),
    ("/add_lora", {"alpha": "x"}, "alpha: expected a finite number"),
    ("/add_lora", {"target_modules": "q_proj"}, "target_modules: expected an array"),
    ("/add_lora", {"target_modules": ["q_proj", "zz"]}, "target_modules[1]: unknown module"),
    ("/add_lora", {"target_modules": ["q_proj", "q_proj"]}, "duplicate"),
    ("/add_lora", {"seed": -1}, "seed: must be >= 0"),
    ("/add_lora", {"seed": 1.5}, "seed: expected an integer"),
    ("/add_lora", {"rnak": 8}, "unknown field(s) 'rnak'"),
    ("/fwdbwd", {"data": [{"text": "a"}]}, "adapter_id: required"),
    ("/fwdbwd", {"adapter_id": 5, "data": [{"text": "a"}]}, "adapter_id: expected a string"),
    ("/fwdbwd", {"adapter_id": "../../etc", "data": [{"text": "a"}]}, "not a valid adapter id"),
    ("/fwdbwd", {"adapter_id": "a", "model_id": "b", "data": []}, "either"),
    ("/fwdbwd", {"adapter_id": "a"}, "data: required"),
    ("/fwdbwd", {"adapter_id": "a", "data": []}, "data: needs at least 1"),
    ("/fwdbwd", {"adapter_id": "a", "data": {"text": "x"}}, "data: expected an array"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"text": "x"}] * 9}, "data: more than the limit"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"text": 3}]}, "data[0].text: expected a string"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"text": ""}]}, "data[0].text: must not be empty"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"text": "x" * 201}]}, "data[0].text: longer"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"txt": "x"}]}, "data[0]: an example needs"),
    ("/fwdbwd", {"adapter_id": "a", "data": [7]}, "data[0]: expected"),
    ("/fwdbwd", {"adapter_id": "a", "data": [[{"role": "user", "content": "hi"}]]},
     "at least one assistant"),
    ("/fwdbwd", {"adapter_id": "a", "data": [[{"role": "robot", "content": "hi"}]]},
     "data[0][0].role: must be one of"),
    ("/fwdbwd", {"adapter_id": "a", "data": [[{"role": "user"}]]}, "data[0][0].content: required"),
    ("/fwdbwd", {"adapter_id": "a", "data": [[{"role": "assistant", "content": 1}]]},
     "data[0][0].content: expected a string"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"tokens": [1, 2]}]},
     "data[0].target_tokens: required"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"tokens": [1, 2], "target_tokens": [2],
                                              "weights": [1, 1]}]}, "same length"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"tokens": [1, -2], "target_tokens": [2, 3],
                                              "weights": [1, 1]}]}, "data[0].tokens[1]"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"tokens": [1, 2], "target_tokens": [2, 3],
                                              "weights": [1, "x"]}]}, "data[0].weights[1]"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"text": "x"}], "loss_fn": "mse"}, "loss_fn"),
    ("/optim_step", {}, "adapter_id: required"),
    ("/optim_step", {"adapter_id": "a", "adam_params": 1}, "adam_params: expected an object"),
    ("/optim_step", {"adapter_id": "a", "adam_params": {"lr": 1}}, "unknown field(s) 'lr'"),
    ("/optim_step", {"adapter_id": "a", "adam_params": {"learning_rate": 0}},
     "adam_params.learning_rate: must be >"),
    ("/optim_step", {"adapter_id": "a", "adam_params": {"beta1": 1.0}}, "adam_params.beta1"),
    ("/optim_step", {"adapter_id": "a", "adam_params": {"beta2": -0.1}}, "adam_params.beta2"),
    ("/optim_step", {"adapter_id": "a", "adam_params": {"eps": 0}}, "adam_params.eps"),
    ("/optim_step", {"adapter_id": "a", "adam_params": {"weight_decay": -1}},
     "adam_params.weight_decay"),
    ("/optim_step", '{"adapter_id": "a", "adam_params": {"learning_rate": NaN}}',
     "adam_params.learning_rate: expected a finite number"),
    ("/api/v1/sample", {}, "prompts: required"),
    ("/api/v1/sample", {"prompts": "hi"}, "prompts: expected an array"),
    ("/api/v1/sample", {"prompts": []}, "prompts: needs at least 1"),
    ("/api/v1/sample", {"prompts": ["a"] * 5}, "prompts: more than the limit of 4"),
    ("/api/v1/sample", {"prompts": [1]}, "prompts[0]: expected a string"),
    ("/api/v1/sample", {"prompts": ["x" * 201]}, "prompts[0]: longer"),
    ("/api/v1/sample", {"prompts": ["a"], "adapter_id": 3}, "adapter_id: expected a string"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": []}, "sampling_params: expected"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"max_tokens": 0}},
     "sampling_params.max_tokens: must be >= 1"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"max_tokens": 10**6}},
     "sampling_params.max_tokens: must be <="),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"temperature": -1}},
     "sampling_params.temperature"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"top_p": 0}},
     "sampling_params.top_p"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"top_k": -1}},
     "sampling_params.top_k"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"seed": "1"}},
     "sampling_params.seed"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"stop": [1]}},
     "sampling_params.stop[0]"),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"temp": 1}}, "unknown field"),
    ("/score", {}, "text: required"),
    ("/score", {"text": ["a"]}, "text: expected a string"),
    ("/score", {"text": "x" * 201}, "text: longer"),
    ("/score", {"text": "a", "adapter_id": ""}, "not a valid adapter id"),
    ("/retrieve_future", {}, "future_id: required"),
    ("/retrieve_future", {"future_id": 12}, "future_id: expected a string"),
    ("/retrieve_future", {"future_id": "a b"}, "not a valid future id"),
    ("/retrieve_future", {"future_id": "a", "x": 1}, "unknown field"),
]


@pytest.fixture
def small_api(gunicorn):
    return gunicorn(CELERIAC_MAX_EXAMPLES=8, CELERIAC_MAX_PROMPTS=4,
                    CELERIAC_MAX_TEXT_CHARS=200, CELERIAC_MAX_RANK=64)


def test_validation_400(small_api):
    failures = []
    for path, body, text in BAD:
        if body is None or isinstance(body, str):
            r = small_api.post(path, data=(body or "").encode(),
                               headers={"Content-Type": "application/json"})
        else:
            r = small_api.post(path, body)
        try:
            err(r, 400, "ValidationError", text)
        except AssertionError as ex:
            failures.append(f"{path} {body!r:.80}: {ex}")
    assert not failures, "\n".join(failures)


def test_adapter_path_validation(api):
    err(api.get("/adapters/a%20b"), 400, "ValidationError")
    err(api.delete("/adapters/" + "a" * 200), 400, "ValidationError")


def test_body_too_large_413(gunicorn):
    api = gunicorn(MAX_CONTENT_LENGTH=65536)
    big = {"text": "x" * 70000}
    r = api.post("/score", big)
    e = err(r, 413, "PayloadTooLarge", "65536")
    # Chunked (no Content-Length): werkzeug does not limit these by itself.

    def chunks():
        for _ in range(20):
            yield b" " * 8192
        yield b'{"text": "x"}'

    r = api.post("/score", data=chunks(), headers={"Content-Type": "application/json"})
    err(r, 413, "PayloadTooLarge")
    # Just under the limit is fine (it gets past the size check to validation).
    r = api.post("/score", {"text": "x" * 100, "pad": " " * 60000})
    err(r, 400, "ValidationError", "unknown field")
    assert e


# --------------------------------------------------------------------------------------------
# Ownership and futures (no model needed)


def test_unknown_adapter_and_future_404(api):
    for path, body in (("/fwdbwd", {"adapter_id": "nope", "data": [{"text": "x"}]}),
                       ("/optim_step", {"adapter_id": "nope"}),
                       ("/api/v1/sample", {"adapter_id": "nope", "prompts": ["x"]}),
                       ("/score", {"adapter_id": "nope", "text": "x"})):
        err(api.post(path, body), 404, "NotFound", "unknown adapter")
    err(api.get("/adapters/nope"), 404, "NotFound")
    err(api.delete("/adapters/nope"), 404, "NotFound")
    err(api.post("/retrieve_future", {"future_id": "0e1d3a8c-0000-4000-8000-000000000000"}),
        404, "NotFound", "unknown future")


def test_futures_belong_to_their_creator(api, worker):
    worker("-c", "2")
    fid = api.submit("/diag/add", {"args": [2, 3]}, user="alice")
    for user in ("bob", "carol"):
        err(api.post("/retrieve_future", {"future_id": fid}, user=user), 404, "NotFound")
    r = api.wait(fid, "alice")
    assert r.json() == {"status": "done", "result": 5}
    # The seed's spelling of the field works too.
    r = api.post("/retrieve_future", {"request_id": fid}, user="alice")
    assert r.status_code == 200 and r.json()["result"] == 5
    err(api.post("/retrieve_future", {"request_id": fid}, user="bob"), 404)


def test_future_202_then_200_and_failures(api, worker):
    worker("-c", "2")
    fid = api.submit("/diag/sleep", {"args": [1.0]})
    r = api.post("/retrieve_future", {"future_id": fid})
    assert r.status_code == 202, r.text
    assert r.json()["status"] in ("pending", "running")
    r = api.wait(fid, timeout=15)
    assert r.json() == {"status": "done", "result": 1.0}
    # A ValueError raised by the task is the client's fault: 400 with the type and message.
    fid = api.submit("/diag/fail", {"args": ["bad input here"]})
    r = api.wait(fid, expect=400)
    assert r.json()["status"] == "failed"
    assert r.json()["error"] == {"type": "ValueError", "message": "bad input here"}
    # A TypeError from a wrong call, too.
    fid = api.submit("/diag/add", {"args": [1]})
    r = api.wait(fid, expect=400)
    assert r.json()["error"]["type"] == "TypeError"


def test_futures_pending_without_worker(api):
    # No worker: the task waits in the queue; the future is pending and the route did not wait.
    t0 = time.monotonic()
    fid = api.submit("/add_lora", {"rank": 4})
    assert time.monotonic() - t0 < 2
    r = api.post("/retrieve_future", {"future_id": fid})
    assert r.status_code == 202 and r.json() == {"status": "pending", "progress": None}
    r = api.get("/adapters")
    assert r.status_code == 202 and r.json()["adapter_ids"] == []


# --------------------------------------------------------------------------------------------
# Rate limits


def test_rate_limit_429(gunicorn):
    api = gunicorn(CELERIAC_RATE_LIMIT="5/minute", CELERIAC_POLL_RATE_LIMIT="8/minute")
    codes = [api.post("/add_lora", {"rank": 4}, user="alice").status_code for _ in range(5)]
    assert codes == [202] * 5
    r = api.post("/add_lora", {"rank": 4}, user="alice")
    err(r, 429, "RateLimited")
    retry = int(r.headers["Retry-After"])
    assert 1 <= retry <= 61
    # Other keys have their own budget; bad requests count too (validation comes after).
    assert api.post("/add_lora", {"rank": 4}, user="bob").status_code == 202
    err(api.post("/add_lora", {"rank": "x"}, user="alice"), 429)
    # Polling has its own, separate budget.
    r = api.post("/retrieve_future", {"future_id": "x"}, user="alice")
    assert r.status_code == 404
    # Shared across the 2 Gunicorn workers: a fresh connection per request spreads them.
    codes = []
    for _ in range(10):
        with requests.Session() as s:
            codes.append(s.post(api.base + "/retrieve_future", json={"future_id": "x"},
                                headers={"Authorization": f"Bearer {KEYS['carol']}"},
                                timeout=HTTP_TIMEOUT).status_code)
    assert codes == [404] * 8 + [429] * 2, codes
    # /healthz is never limited.
    assert all(api.get("/healthz", user=None).status_code == 200 for _ in range(20))


# --------------------------------------------------------------------------------------------
# The model routes


def _model_worker(worker, tmp_path):
    return worker("-c", "2", "--state-dir", str(tmp_path / "state"), ready_timeout=60)


@needs_model
def test_score_base_model(api, worker, tmp_path):
    _model_worker(worker, tmp_path)
    res = api.result("/score", {"text": TEXT})
    for k in ("tokens", "logprob", "mean_logprob", "perplexity", "token_logprobs"):
        assert k in res, res
    assert res["logprob"] < 0 and res["perplexity"] > 1


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


@needs_model
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
    tuned = api.result("/score", {"text": TEXT, "adapter_id": b}, user="bob")
    assert tuned["logprob"] > base["logprob"]

    # Delete: alice's adapter is gone for her too; bob's is untouched.
    fid = api.submit(f"/adapters/{a}", None, user="alice", method="DELETE")
    api.wait(fid, "alice")
    err(api.post("/optim_step", {"adapter_id": a}, user="alice"), 404)
    assert api.get("/adapters", user="alice").json()["adapter_ids"] == []
    assert api.get("/adapters", user="bob").json()["adapter_ids"] == [b]


@needs_model
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


@needs_model
def test_task_value_error_is_400(api, worker, tmp_path):
    _model_worker(worker, tmp_path)
    aid = api.result("/add_lora", {}, user="carol")["adapter_id"]
    # A token id outside the vocabulary passes the front end's checks; the worker refuses it.
    fid = api.submit("/fwdbwd", {"adapter_id": aid, "data": [
        {"tokens": [1, 10**9], "target_tokens": [10**9, 1], "weights": [1, 1]}]}, "carol")
    r = api.wait(fid, "carol", expect=None)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] in ("ValueError", "TypeError")
