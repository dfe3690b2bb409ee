"""test_http_app.py -- the Flask front end through app.test_client(): auth, validation, errors.

No Gunicorn and no worker: each test builds the app with create_app() against its own database
of the session's real redis-server (Flask-Limiter, the ownership records and the Celery client
all use it). What a route published is read back from the Redis queue; what a worker would
have answered is written into the result backend with the stock Celery backend (store_result),
so the mapping of every task state and exception to an HTTP answer is checked exactly, without
waiting for anything. test_http.py keeps the end-to-end runs through Gunicorn and celeriac.
"""

import io
import sys

import pytest
from billiard.exceptions import TimeLimitExceeded, WorkerLostError

from conftest import REPO
from http_fixtures import KEYS, KEYS_ENV, body_of, err, queued

sys.path.insert(0, REPO)
from flask_app import config as config_mod  # noqa: E402
from flask_app import create_app  # noqa: E402


class AppApi:
    """app.test_client() with a user's key; the same calls as test_http.Api."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def call(self, method, path, user="alice", json=None, headers=None, **kw):
        h = dict(headers or {})
        if user is not None:
            h.setdefault("Authorization", f"Bearer {KEYS.get(user, user)}")
        return self.client.open(path, method=method, json=json, headers=h, **kw)

    def post(self, path, json=None, user="alice", **kw):
        return self.call("POST", path, user, json, **kw)

    def get(self, path, user="alice", **kw):
        return self.call("GET", path, user, **kw)

    def delete(self, path, user="alice", **kw):
        return self.call("DELETE", path, user, **kw)

    def submit(self, path, body, user="alice", method="POST"):
        r = self.call(method, path, user, body)
        assert r.status_code == 202, (path, r.status_code, r.text)
        return r.get_json()["future_id"]

    def poll(self, future_id, user="alice"):
        return self.post("/retrieve_future", {"future_id": future_id}, user)

    def finish(self, future_id, value, state="SUCCESS"):
        """Writes the task's state as a worker would (the stock Celery result backend)."""
        self.app.extensions["celeriac"]["celery"].backend.store_result(future_id, value, state)


@pytest.fixture
def make_api(redis_server, db, monkeypatch):
    """Factory: make_api(**config) -> AppApi on the test's database; closed at teardown."""
    for name in config_mod.from_env({}):
        monkeypatch.delenv(name, raising=False)
    apps = []

    def make(**config):
        url = redis_server.url(db)
        cfg = {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "CELERIAC_REDIS_URL": url,
               "CELERIAC_API_KEYS": KEYS_ENV, "CELERIAC_ENABLE_DIAG": True,
               "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off"}
        cfg.update(config)
        app = create_app(cfg)
        apps.append(app)
        return AppApi(app)

    yield make
    for app in apps:
        ext = app.extensions["celeriac"]
        ext["redis"].close()
        ext["celery"].close()


@pytest.fixture
def api(make_api):
    return make_api()


# --------------------------------------------------------------------------------------------
# Health, auth, routing


def test_healthz(api, make_api, redis_client):
    redis_client.rpush("celery", "x", "y")
    r = api.get("/healthz", user=None)
    assert r.status_code == 200, r.text
    assert r.get_json() == {"status": "ok", "redis": "ok", "queue_length": 2}
    # Redis down: /healthz says so, and a route that needs Redis is a 503 with Retry-After.
    from conftest import free_port
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    dead = make_api(CELERY_BROKER_URL=dead_url, CELERY_RESULT_BACKEND=dead_url,
                    CELERIAC_REDIS_URL=dead_url, CELERIAC_RATE_LIMIT="5/minute")
    r = dead.get("/healthz", user=None)
    assert r.status_code == 503 and r.get_json()["status"] == "unavailable"
    r = dead.post("/add_lora", {})
    err(r, 503, "ServiceUnavailable")
    assert r.headers["Retry-After"] == "5"


AUTH_ROUTES = [
    ("POST", "/add_lora"), ("POST", "/fwdbwd"), ("POST", "/optim_step"),
    ("POST", "/api/v1/sample"), ("POST", "/score"), ("POST", "/retrieve_future"),
    ("GET", "/adapters"), ("GET", "/adapters/x"), ("DELETE", "/adapters/x"),
    ("POST", "/diag/noop"),
]
BAD_AUTH = ({}, {"Authorization": "Basic YWxpY2U6eA=="}, {"Authorization": "Bearer"},
            {"Authorization": "Bearer not-a-key"},
            {"Authorization": "Bearer " + KEYS["alice"] + "x"},
            {"Authorization": "Bearer " + KEYS["alice"][:-1]})


def test_auth_401(api, redis_client):
    for method, path in AUTH_ROUTES:
        for headers in BAD_AUTH:
            r = api.call(method, path, user=None, json={}, headers=headers)
            err(r, 401, "Unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
    assert queued(redis_client) == []
    # The same requests with a key get past auth (to validation or a 202).
    assert api.post("/diag/noop", {}).status_code == 202
    err(api.post("/add_lora", {"rank": "x"}), 400, "ValidationError")
    for user in KEYS:
        assert api.post("/diag/noop", {}, user=user).status_code == 202


def test_unknown_route_and_method_are_json(api):
    err(api.get("/nope"), 404, "NotFound")
    err(api.get("/add_lora"), 405, "MethodNotAllowed")
    err(api.get("/nope", user=None), 404, "NotFound")


def test_diag_routes_only_when_enabled(make_api):
    err(make_api(CELERIAC_ENABLE_DIAG=False).post("/diag/noop", {}), 404)
    api = make_api()
    err(api.post("/diag/nope", {}), 404, "NotFound", "no diag task")
    err(api.post("/diag/sleep", {"args": [61]}), 400, "ValidationError", "60 s")
    err(api.post("/diag/add", {"args": {}}), 400, "ValidationError")


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
def small_api(make_api):
    return make_api(CELERIAC_MAX_EXAMPLES=8, CELERIAC_MAX_PROMPTS=4,
                    CELERIAC_MAX_TEXT_CHARS=200, CELERIAC_MAX_RANK=64)


def test_validation_400(small_api, redis_client):
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
    assert queued(redis_client) == [], "a refused request published a task"


def test_adapter_path_validation(api):
    err(api.get("/adapters/a%20b"), 400, "ValidationError", "not a valid adapter id")
    err(api.delete("/adapters/" + "a" * 200), 400, "ValidationError")


def test_body_too_large_413(make_api):
    api = make_api(MAX_CONTENT_LENGTH=65536)
    err(api.post("/score", {"text": "x" * 70000}), 413, "PayloadTooLarge", "65536")
    # A chunked body (no Content-Length; the server marks its end with wsgi.input_terminated,
    # as Gunicorn does) is read only up to the limit by read_body.
    r = api.post("/score", input_stream=io.BytesIO(b" " * 70000 + b'{"text": "x"}'),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                 environ_overrides={"wsgi.input_terminated": True})
    err(r, 413, "PayloadTooLarge")
    r = api.post("/score", input_stream=io.BytesIO(b'{"text": "x", "pad": 1}'),
                 headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                 environ_overrides={"wsgi.input_terminated": True})
    err(r, 400, "ValidationError", "unknown field")
    # Just under the limit is fine (it gets past the size check to validation).
    err(api.post("/score", {"text": "x" * 100, "pad": " " * 60000}), 400, "ValidationError",
        "unknown field")


# --------------------------------------------------------------------------------------------
# What the routes send


def test_routes_send_their_tasks(api, redis_client):
    """Each route publishes exactly one task, by name, with the kwargs of the task contract
    (aliases resolved, owner added); nothing else reaches the queue."""
    create = api.submit("/add_lora", {"rank": 4, "alpha": 8, "base_model": "any"})
    api.finish(create, {"adapter_id": "lora_a1", "rank": 4, "alpha": 8.0, "step": 0})
    adam = {"learning_rate": 0.01, "beta1": 0.9}
    api.submit("/fwdbwd", {"model_id": "lora_a1", "data": [{"text": "hi"}]})
    api.submit("/optim_step", {"adapter_id": "lora_a1", "adam_params": adam})
    api.submit("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"stop": "x"}})
    api.submit("/score", {"text": "t", "adapter_id": "lora_a1"})
    api.submit("/adapters/lora_a1", None, method="GET")
    assert queued(redis_client) == [
        ("lora.create", [], {"rank": 4, "alpha": 8, "owner": "alice"}),
        ("lora.forward_backward", [], {"adapter_id": "lora_a1", "data": [{"text": "hi"}]}),
        ("lora.optim_step", [], {"adapter_id": "lora_a1", "adam_params": adam}),
        ("lora.sample", [], {"adapter_id": None, "prompts": ["a"],
                             "sampling_params": {"stop": ["x"]}}),
        ("model.score", [], {"text": "t", "adapter_id": "lora_a1"}),
        ("lora.info", [], {"adapter_id": "lora_a1"}),
    ]


def test_futures_pending_without_worker(api, redis_client):
    # No worker: the task waits in the queue; the route answered without waiting for it.
    fid = api.submit("/add_lora", {"rank": 4})
    assert [name for name, _, _ in queued(redis_client)] == ["lora.create"]
    r = api.poll(fid)
    assert r.status_code == 202 and r.get_json() == {"status": "pending", "progress": None}
    r = api.get("/adapters")
    assert r.status_code == 202 and r.get_json()["adapter_ids"] == []


# --------------------------------------------------------------------------------------------
# Ownership


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


def test_futures_belong_to_their_creator(api):
    fid = api.submit("/diag/add", {"args": [2, 3]}, user="alice")
    api.finish(fid, 5)
    for user in ("bob", "carol"):
        err(api.poll(fid, user=user), 404, "NotFound", "unknown future")
    r = api.poll(fid, "alice")
    assert r.status_code == 200 and r.get_json() == {"status": "done", "result": 5}
    # The seed's spelling of the field works too.
    r = api.post("/retrieve_future", {"request_id": fid}, user="alice")
    assert r.status_code == 200 and r.get_json()["result"] == 5
    err(api.post("/retrieve_future", {"request_id": fid}, user="bob"), 404)


def test_adapter_ownership(api, redis_client):
    """An adapter is its creator's once the creation is seen done (lazily, on the next lookup);
    it is a 404 for everyone else, and for its owner after DELETE."""
    create = api.submit("/add_lora", {}, user="alice")
    other = api.submit("/add_lora", {}, user="bob")
    api.finish(create, {"adapter_id": "lora_alice", "step": 0})
    api.finish(other, {"adapter_id": "lora_bob", "step": 0})
    # No /retrieve_future of the creation: the first lookup resolves it.
    assert api.submit("/optim_step", {"adapter_id": "lora_alice"}, user="alice")
    for path, body in (("/fwdbwd", {"adapter_id": "lora_alice", "data": [{"text": "x"}]}),
                       ("/optim_step", {"adapter_id": "lora_alice"}),
                       ("/api/v1/sample", {"adapter_id": "lora_alice", "prompts": ["x"]}),
                       ("/score", {"adapter_id": "lora_alice", "text": "x"})):
        err(api.post(path, body, user="bob"), 404, "NotFound")
    err(api.get("/adapters/lora_alice", user="bob"), 404)
    err(api.delete("/adapters/lora_alice", user="bob"), 404)
    r = api.get("/adapters", user="alice")
    assert r.status_code == 202 and r.get_json()["adapter_ids"] == ["lora_alice"]
    assert api.get("/adapters", user="bob").get_json()["adapter_ids"] == ["lora_bob"]
    # lora.list(owner=user) is what the worker is asked for.
    assert queued(redis_client)[-1] == ("lora.list", [], {"owner": "bob"})
    # A done lora.list records what it names (e.g. adapters made before a front-end restart).
    api.finish(r.get_json()["future_id"], [{"adapter_id": "lora_old"}, "lora_older"])
    assert api.poll(r.get_json()["future_id"]).status_code == 200
    assert api.get("/adapters").get_json()["adapter_ids"] == ["lora_alice", "lora_old",
                                                               "lora_older"]
    # Delete: gone for its owner at once; bob's is untouched.
    api.submit("/adapters/lora_alice", None, method="DELETE")
    assert queued(redis_client)[-1] == ("lora.delete", [], {"adapter_id": "lora_alice"})
    err(api.post("/optim_step", {"adapter_id": "lora_alice"}), 404)
    assert api.get("/adapters", user="bob").get_json()["adapter_ids"] == ["lora_bob"]


def test_failed_creation_is_forgotten(api, redis_client):
    fid = api.submit("/add_lora", {})
    api.finish(fid, ValueError("rank too big"), "FAILURE")
    assert api.get("/adapters").get_json()["adapter_ids"] == []
    assert redis_client.scard("celeriac:creating:alice") == 0


# --------------------------------------------------------------------------------------------
# Future states and error mapping


class AdapterGone(KeyError):
    pass


@pytest.mark.parametrize("exc, status", [
    (ValueError("bad input here"), 400),
    (TypeError("f() takes 1 positional argument"), 400),
    (KeyError("lora_x"), 404),
    (LookupError("no such adapter"), 404),
    (AdapterGone("lora_y"), 404),
    (WorkerLostError("Worker exited prematurely: signal 9 (SIGKILL)."), 502),
    (TimeLimitExceeded(3.0), 502),
    (MemoryError(), 502),
    (RuntimeError("CUDA error"), 500),
])
def test_failure_status(api, exc, status):
    fid = api.submit("/diag/noop", {})
    api.finish(fid, exc, "FAILURE")
    r = api.poll(fid)
    assert r.status_code == status, r.text
    body = r.get_json()
    assert body["status"] == "failed"
    assert body["error"]["type"] == type(exc).__name__
    if isinstance(exc, KeyError):
        assert body["error"]["message"] == exc.args[0]  # without KeyError's quotes
    elif str(exc):
        assert body["error"]["message"] == str(exc)


def test_future_states(api):
    fid = api.submit("/diag/noop", {})
    assert body_of(api.poll(fid)) == {"status": "pending", "progress": None}
    api.finish(fid, None, "STARTED")
    r = api.poll(fid)
    assert r.status_code == 202 and r.get_json() == {"status": "running", "progress": None}
    api.finish(fid, {"done": 3, "total": 8}, "PROGRESS")
    r = api.poll(fid)
    assert r.status_code == 202
    assert r.get_json() == {"status": "running", "progress": {"done": 3, "total": 8}}
    api.finish(fid, {"x": [1, 2]})
    r = api.poll(fid)
    assert r.status_code == 200 and r.get_json() == {"status": "done", "result": {"x": [1, 2]}}
    fid = api.submit("/diag/noop", {})
    api.finish(fid, None, "REVOKED")
    r = api.poll(fid)
    assert r.status_code == 409
    assert r.get_json()["error"]["type"] == "TaskRevokedError"


# --------------------------------------------------------------------------------------------
# Rate limits


def test_rate_limit_429(make_api, redis_client):
    api = make_api(CELERIAC_RATE_LIMIT="5/minute", CELERIAC_POLL_RATE_LIMIT="8/minute")
    # Requests without a valid key are refused before they are counted.
    for _ in range(10):
        err(api.post("/add_lora", {"rank": 4}, user="nobody"), 401)
    codes = [api.post("/add_lora", {"rank": 4}, user="alice").status_code for _ in range(5)]
    assert codes == [202] * 5
    r = api.post("/add_lora", {"rank": 4}, user="alice")
    err(r, 429, "RateLimited", "retry in")
    assert 1 <= int(r.headers["Retry-After"]) <= 61
    # The submitting routes share one budget; the refused request published nothing.
    err(api.post("/score", {"text": "x"}, user="alice"), 429)
    assert len(queued(redis_client)) == 5
    # Other keys have their own budget; bad requests count too (validation comes after).
    assert api.post("/add_lora", {"rank": 4}, user="bob").status_code == 202
    err(api.post("/add_lora", {"rank": "x"}, user="alice"), 429)
    # Polling has its own, separate budget.
    codes = [api.poll("x", user="alice").status_code for _ in range(10)]
    assert codes == [404] * 8 + [429] * 2, codes
    # /healthz is never limited.
    assert all(api.get("/healthz", user=None).status_code == 200 for _ in range(20))


def test_rate_limit_specs(make_api):
    # Several windows: the smallest full one answers.
    api = make_api(CELERIAC_RATE_LIMIT="2/10s;100/hour")
    assert [api.post("/diag/noop", {}).status_code for _ in range(3)] == [202, 202, 429]
    r = api.post("/diag/noop", {})
    assert 1 <= int(r.headers["Retry-After"]) <= 11
    for spec in ("off", "", "0", "none"):
        api = make_api(CELERIAC_RATE_LIMIT=spec)
        assert all(api.post("/diag/noop", {}).status_code == 202 for _ in range(5))
    for spec in ("5", "x/minute", "5/fortnight", "0/minute", "5/0s", "5/minute;;x"):
        with pytest.raises(ValueError, match="rate limit"):
            make_api(CELERIAC_RATE_LIMIT=spec)


def test_config_errors_fail_at_start(make_api):
    with pytest.raises(ValueError, match="CELERIAC_API_KEYS"):
        make_api(CELERIAC_API_KEYS="alice")
    with pytest.raises(ValueError, match="CELERIAC_MAX_RANK"):
        config_mod.from_env({"CELERIAC_MAX_RANK": "many"})
