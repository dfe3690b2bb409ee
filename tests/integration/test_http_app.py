"""test_http_app.py -- the Flask front end through app.test_client(): auth, validation, errors.

No Gunicorn and no worker: each test builds the app with create_app() against its own database
of the session's real redis-server (Flask-Limiter, the ownership records and the Celery client
all use it). What a route published is read back from the Redis queue; what a worker would
have answered is written into the result backend with the stock Celery backend (store_result),
so the mapping of every task state and exception to an HTTP answer is checked exactly, without
waiting for anything. test_http.py keeps the end-to-end runs through Gunicorn and celeriac.
"""

import io
import json
import sys
import threading
import time
import uuid

import pytest
from billiard.exceptions import TimeLimitExceeded, WorkerLostError

from conftest import REPO, scaled, wait_until
from http_fixtures import KEYS, KEYS_ENV, app_factory, body_of, err, queued, table_config

sys.path.insert(0, REPO)
from flask_app import config as config_mod  # noqa: E402
from flask_app import waiting  # noqa: E402


@pytest.fixture
def make_api(redis_server, db, monkeypatch):
    """Factory: make_api(**config) -> AppApi on the test's database; closed at teardown."""
    url = redis_server.url(db)
    make, close = app_factory(
        {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "CELERIAC_REDIS_URL": url,
         "CELERIAC_API_KEYS": KEYS_ENV, "CELERIAC_ENABLE_DIAG": True,
         "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off"}, monkeypatch)
    yield make
    close()


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
    err(api.post("/diag/nope", data=b"{not json"), 404, "NotFound", "no diag task")
    err(api.post("/diag/crash", {}), 404, "NotFound")  # kills an executor: not over HTTP
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
    ("/fwdbwd", {"adapter_id": "a", "data": [{"txt": "x"}]}, "data[0]: expected {text} | {tokens"),
    ("/fwdbwd", {"adapter_id": "a", "data": [7]}, "data[0]: expected"),
    ("/fwdbwd", {"adapter_id": "a", "data": [[{"role": "robot", "content": "hi"}]]},
     "data[0][0].role: must be one of"),
    ("/fwdbwd", {"adapter_id": "a", "data": [[{"role": "user"}]]}, "data[0][0].content: required"),
    ("/fwdbwd", {"adapter_id": "a", "data": [[{"role": "assistant", "content": 1}]]},
     "data[0][0].content: expected a string"),
    ("/fwdbwd", {"adapter_id": "a", "data": [{"tokens": [1, 2]}]},
     "data[0].target_tokens: required"),
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
    ("/api/v1/sample", {"prompts": 5}, "prompts: expected an array or a string"),
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
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"stop": ""}},
     "sampling_params.stop: must not be empty"),
    ("/score", {}, "text: required"),
    ("/score", {"text": ["a"]}, "text: expected a string"),
    ("/score", {"text": "x" * 201}, "text: longer"),
    ("/score", {"text": "a", "adapter_id": ""}, "not a valid adapter id"),
    ("/retrieve_future", {}, "future_id: required"),
    ("/retrieve_future", {"future_id": 12}, "future_id: expected a string"),
    ("/retrieve_future", {"future_id": "a b"}, "not a valid future id"),
    ("/retrieve_future", {"future_id": "a", "x": 1}, "unknown field"),
    ("/retrieve_future", {"future_id": "a", "wait": "1"}, "wait: expected a finite number"),
    ("/retrieve_future", {"future_id": "a", "wait": -1}, "wait: must be >= 0"),
    ("/retrieve_future", {"future_id": "a", "wait": 31}, "wait: must be <= 30"),
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


# What the worker accepts and the hand-written checks refused, or did not know. Each is sent
# on as it is (the worker takes each of these as it comes).
NOW_ACCEPTED = [
    ("/optim_step", {"adam_params": {"grad_clip_norm": 1.0}}),
    ("/api/v1/sample", {"prompts": "a bare prompt"}),
    ("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"stop": "x", "seed": None}}),
    ("/fwdbwd", {"data": [{"tokens": [1, 2], "target_tokens": [2, 3]}]}),
    ("/fwdbwd", {"data": [{"messages": [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "ho"}]}]}),
    ("/fwdbwd", {"data": [[{"role": "assistant", "content": ""}]]}),
    ("/add_lora", {"rank": None, "target_modules": ["q_proj", "v_proj"]}),
]


def test_accepted_as_the_table_says(api, redis_client):
    create = api.submit("/add_lora", {})
    api.finish(create, {"adapter_id": "lora_a1", "step": 0})
    sent = []
    for path, body in NOW_ACCEPTED:
        if path in ("/optim_step", "/fwdbwd"):
            body = {"adapter_id": "lora_a1", **body}
        api.submit(path, body)
        sent.append(body)
    got = queued(redis_client)[1:]
    assert len(got) == len(sent)
    for (task, args, kwargs), body in zip(got, sent):
        want = dict(body, owner="alice") if task == "lora.create" else body
        if task == "lora.sample":
            want = {"adapter_id": None, **want}
        assert args == [] and kwargs == want, (task, kwargs)


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
    api.submit("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"stop": ["x"]}})
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


def test_idempotency_key_queues_a_submit_once(api, redis_client):
    """A submit sent again with the same Idempotency-Key (a client whose connection was lost
    before the answer) gets the first one's future and queues nothing; the same key with
    another body is a 422, another user's same key is a request of its own, a malformed key a
    400, and a key whose first request failed to send (here: a full queue) may send again."""
    create = api.submit("/add_lora", {"rank": 4})
    api.finish(create, {"adapter_id": "lora_i1", "rank": 4, "alpha": 8.0, "step": 0})
    redis_client.delete("celery")
    key = {"Idempotency-Key": "step-7-" + uuid.uuid4().hex}
    r1 = api.post("/optim_step", {"adapter_id": "lora_i1"}, headers=key)
    r2 = api.post("/optim_step", {"adapter_id": "lora_i1"}, headers=key)
    assert r1.status_code == r2.status_code == 202, (r1.text, r2.text)
    assert r1.get_json() == r2.get_json()
    assert [n for n, _, _ in queued(redis_client)] == ["lora.optim_step"]
    fid = r1.get_json()["future_id"]

    def in_flight():  # alice's tasks counted against CELERIAC_MAX_INFLIGHT
        return set(redis_client.zrange("celeriac:inflight:alice", 0, -1))
    # the repeat took an in-flight place with its claim (one round trip) and gave it back
    assert in_flight() == {create.encode(), fid.encode()}
    assert r1.get_json()["task"] == "lora.optim_step"
    api.finish(fid, {"step": 1, "grad_norm": 0.5})
    r = api.poll(fid)
    assert r.status_code == 200 and r.get_json()["result"]["step"] == 1
    # the key outlives the first answer as long as the future does
    assert api.post("/optim_step", {"adapter_id": "lora_i1"}, headers=key).get_json() == \
        r1.get_json()
    err(api.post("/optim_step", {"adapter_id": "lora_i1", "adam_params": {"beta1": 0.5}},
                 headers=key), 422, "IdempotencyKeyReused")
    err(api.post("/score", {"text": "t"}, headers=key), 422, "IdempotencyKeyReused")
    assert in_flight() <= {create.encode(), fid.encode()}  # refused: nothing kept
    # keys are per user: bob's same key is his own request (his own task)
    fb = api.post("/diag/add", {"args": [1, 2]}, user="bob", headers=key)
    assert fb.status_code == 202 and fb.get_json()["future_id"] != fid
    for bad in ("", "x" * 201, "has space"):
        err(api.post("/diag/add", {"args": [1, 2]}, headers={"Idempotency-Key": bad}), 400,
            "ValidationError", "Idempotency-Key")
    assert len(queued(redis_client)) == 2
    # a first request still being sent: its future not recorded yet
    pending = {"Idempotency-Key": "pending-" + uuid.uuid4().hex}
    api.post("/diag/add", {"args": [5, 6]}, headers=pending)
    redis_client.delete(*redis_client.keys("celeriac:future:*"))
    before = in_flight()
    r = api.post("/diag/add", {"args": [5, 6]}, headers=pending)
    err(r, 409, "IdempotentRequestInProgress")
    assert r.headers["Retry-After"] == "1"
    assert in_flight() == before


def test_idempotency_key_free_again_after_a_failed_send(make_api, redis_client):
    """A keyed submit refused before it was sent (503 QueueFull) gives its key up: the same
    request sent again once the queue has room is queued."""
    api = make_api(CELERIAC_MAX_QUEUE_DEPTH=1, CELERIAC_QUEUE_DEPTH_TTL_MS=0)
    redis_client.delete("celery")
    key = {"Idempotency-Key": "k-" + uuid.uuid4().hex}
    first = api.post("/diag/add", {"args": [1, 1]})
    assert first.status_code == 202
    err(api.post("/diag/add", {"args": [2, 2]}, headers=key), 503, "QueueFull")
    redis_client.delete("celery")
    r = api.post("/diag/add", {"args": [2, 2]}, headers=key)
    assert r.status_code == 202, r.text
    assert [a for _, a, _ in queued(redis_client)] == [[2, 2]]


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


# --------------------------------------------------------------------------------------------
# The HTTP API and the task table agree (issue 11): every field a route accepts is a parameter
# of its task, every parameter a client may set is accepted, with the table's types and limits
# or a CELERIAC_MAX_* setting's tighter one. Checked from the outside: boundary values made
# from the task table (read here on its own, as the worker prints it) are sent through the
# routes, and what reaches the queue is compared with what was sent.

ROUTE_OF = {"lora.create": "/add_lora", "lora.forward_backward": "/fwdbwd",
            "lora.optim_step": "/optim_step", "lora.sample": "/api/v1/sample",
            "model.score": "/score"}
ADAPTER = "lora_agree1"
SMALL_CAPS = {"CELERIAC_MAX_TEXT_CHARS": 64, "CELERIAC_MAX_EXAMPLES": 4,
              "CELERIAC_MAX_PROMPTS": 4, "CELERIAC_MAX_TOKENS": 16,
              "CELERIAC_MAX_SAMPLE_TOKENS": 8, "CELERIAC_MAX_RANK": 32}
NO_CAPS = {k: 10**9 for k in SMALL_CAPS}
BIG = 1 << 16  # lists and strings longer than this are left to the worker's own tests


@pytest.fixture(scope="module")
def table():
    from flask_app import tasks
    return tasks.load(table_config())


def _ok(spec, v):
    """Whether number v is inside spec's bounds."""
    lo, hi = spec.get("min"), spec.get("max")
    return ((lo is None or (v > lo if spec.get("min_exclusive") else v >= lo))
            and (hi is None or (v < hi if spec.get("max_exclusive") else v <= hi)))


def minimal(spec):
    """The smallest valid value of a SPEC (strings with choices take the last choice: for chat
    roles that is 'assistant', a turn the loss is computed on)."""
    t = spec["type"]
    if t in ("int", "number"):
        return next(v for v in (1, 0, 0.5, spec.get("min"), spec.get("max"))
                    if v is not None and _ok(spec, v))
    if t == "str":
        return spec["choices"][-1] if "choices" in spec else "x" * max(spec.get("min_len", 0), 1)
    if t == "bool":
        return True
    if t == "list":
        n = spec.get("min_len", 0)
        if spec.get("unique") and "choices" in spec["items"]:
            return list(spec["items"]["choices"][:n])
        return [minimal(spec["items"]) for _ in range(n)]
    if t == "dict":
        return {f["name"]: minimal(f) for f in spec.get("fields", []) if f.get("required")}
    if t == "one_of":
        return minimal(spec["one_of"][0])
    return None


def _near(bound, toward):
    """A number a millionth past an exclusive bound, toward `toward` (+1 or -1)."""
    return bound + toward * max(abs(bound) * 1e-6, 1e-6)


def limit_cases(spec, cap):
    """[(what, value at the limit or None, value past it or None)] for one SPEC alone; `cap`
    is the HTTP setting that lowers its max / max_len (None: the table's own)."""
    t, out = spec["type"], []
    if t in ("int", "number"):
        step = 1 if t == "int" else None
        if "min" in spec:
            lo = spec["min"]
            if spec.get("min_exclusive"):
                out.append(("min", lo + 1 if step else _near(lo, +1), lo))
            else:
                out.append(("min", lo, lo - 1 if step else _near(lo, -1)))
        hi, open_ = spec.get("max"), spec.get("max_exclusive")
        if cap is not None and (hi is None or cap < hi):
            hi, open_ = cap, False
        if hi is not None:
            if open_:
                out.append(("max", hi - 1 if step else _near(hi, -1), hi))
            else:
                out.append(("max", hi, hi + 1 if step else _near(hi, +1)))
        out.append(("type", None, "1" if t == "int" else "x"))
        if t == "int":
            out += [("type", None, True), ("type", None, minimal(spec) + 0.5)]
    elif t == "str":
        if spec.get("min_len"):
            n = spec["min_len"]
            out.append(("min_len", "x" * n, "x" * (n - 1)))
        hi = min(x for x in (spec.get("max_len"), cap, 1 << 62) if x is not None)
        if hi < BIG and "choices" not in spec:
            out.append(("max_len", "x" * hi, "x" * (hi + 1)))
        if "choices" in spec:
            out += [("choice", c, None) for c in spec["choices"]]
            out.append(("choice", None, spec["choices"][0] + "_not"))
        out.append(("type", None, 1))
    elif t == "list":
        item = minimal(spec["items"])
        if spec.get("min_len"):
            n = spec["min_len"]
            out.append(("min_len", minimal(spec), [item] * (n - 1)))
        hi = min(x for x in (spec.get("max_len"), cap, 1 << 62) if x is not None)
        if hi <= BIG:
            if spec.get("unique") and "choices" in spec["items"]:
                at = list(spec["items"]["choices"][:hi])
            else:
                at = [item] * hi
            out.append(("max_len", at, at + [at[0]]))
        if spec.get("unique"):
            out.append(("unique", None, [item, item]))
        out.append(("type", None, {"x": item}))
        if spec.get("also_str") and spec["items"]["type"] == "str":
            out.append(("also_str", minimal(spec["items"]), None))
    elif t == "dict":
        if not spec.get("extra_fields"):
            out.append(("unknown key", None, dict(minimal(spec), zz_unknown=1)))
        out.append(("type", None, [minimal(spec)]))
    elif t == "bool":
        out.append(("type", None, 1))
    if t != "any":
        out.append(("null", None, None) if spec.get("nullable") else ("null", None, "NULL"))
    return out


def walk(spec, path, steps):
    """(spec path, steps, SPEC) of a SPEC and everything under it; steps lead a value there
    ('alt', k) / ('item',) / ('field', name)."""
    yield path, steps, spec
    t = spec["type"]
    if t == "list" and "items" in spec:
        yield from walk(spec["items"], path + "[]", steps + [("item",)])
    elif t == "dict":
        for f in spec.get("fields", []):
            yield from walk(f, f"{path}.{f['name']}", steps + [("field", f["name"])])
    elif t == "one_of":
        for k, alt in enumerate(spec["one_of"]):
            yield from walk(alt, path, steps + [("alt", k)])


def put(spec, steps, leaf):
    """spec's minimal value with `leaf` at the end of steps."""
    if not steps:
        return leaf
    step, rest = steps[0], steps[1:]
    if step[0] == "alt":
        return put(spec["one_of"][step[1]], rest, leaf)
    if step[0] == "item":
        value = minimal(spec) or [minimal(spec["items"])]
        value[0] = put(spec["items"], rest, leaf)
        return value
    value = minimal(spec)
    field = next(f for f in spec["fields"] if f["name"] == step[1])
    value[step[1]] = put(field, rest, leaf)
    return value


def http_path(name, steps):
    out = name
    for s in steps:
        out += "[0]" if s[0] == "item" else f".{s[1]}" if s[0] == "field" else ""
    return out


def cap_of(task, spec_path, spec, config):
    """The CELERIAC_MAX_* limit the front end declares for this parameter, or None."""
    from flask_app import validation
    keys = []
    if spec_path in validation.HTTP_TASKS[task].caps:
        keys.append(validation.HTTP_TASKS[task].caps[spec_path])
    if spec["type"] == "str":
        keys.append(validation.TEXT_CAP)
    if spec["type"] == "list" and spec["items"]["type"] in ("int", "number"):
        keys.append(validation.NUMBER_LIST_CAP)
    return min((config[k] for k in keys), default=None)


def base_body(task):
    """A minimal valid body for the task's route (server-set parameters left out)."""
    from flask_app import validation
    body = {}
    for p in task["params"]:
        if p["name"] in validation.HTTP_TASKS[task["name"]].server or not p.get("required"):
            continue
        body[p["name"]] = ADAPTER if p["name"] == task.get("adapter_param") else minimal(p)
    return body


def boundary_cases(table, config):
    """[(task name, http path, spec path, what, body at the limit or None, body past it or
    None)] for every parameter a route lets a client set."""
    from flask_app import validation
    cases = []
    for name in ROUTE_OF:
        task = table[name]
        server = validation.HTTP_TASKS[name].server
        for p in task["params"]:
            if p["name"] in server or p["name"] == task.get("adapter_param"):
                continue
            for spec_path, steps, spec in walk(p, p["name"], []):
                cap = cap_of(name, spec_path, spec, config)
                for what, at, past in limit_cases(spec, cap):
                    def body(leaf):
                        b = base_body(task)
                        b[p["name"]] = put(p, steps, None if leaf == "NULL" else leaf)
                        return b
                    at_body = body(at) if at is not None or what == "null" else None
                    if what == "null" and past == "NULL":
                        at_body, past_body = None, body("NULL")
                    else:
                        past_body = body(past) if past is not None else None
                    cases.append((name, http_path(p["name"], steps), spec_path, what,
                                  at_body, past_body))
    return cases


def test_routes_cover_the_tasks_they_send(table):
    from flask_app import validation
    body_tasks = {n for n, h in validation.HTTP_TASKS.items() if h.body}
    assert body_tasks == set(ROUTE_OF)
    # The HTTP-only fields are the documented ones (README: model_id, base_model).
    assert {n: set(h.ignored) for n, h in validation.HTTP_TASKS.items() if h.ignored} == {
        "lora.create": {"base_model"}}
    assert validation.ADAPTER_ALIAS == "model_id"
    for name, http in validation.HTTP_TASKS.items():
        params = {p["name"] for p in table[name]["params"]}
        assert set(http.server) <= params, (name, http.server)
        for path in http.caps:
            assert path.split(".")[0].split("[")[0] in params, (name, path)


def _own_adapter(api):
    fid = api.submit("/add_lora", {})
    api.finish(fid, {"adapter_id": ADAPTER, "step": 0})


@pytest.mark.parametrize("caps", [SMALL_CAPS, NO_CAPS], ids=["small-caps", "table-limits"])
def test_http_limits_are_the_tables(make_api, redis_client, table, caps):
    api = make_api(MAX_CONTENT_LENGTH=64 << 20, **caps)
    _own_adapter(api)
    cases = boundary_cases(table, api.app.config)
    assert len(cases) > 100
    failures = []
    for name, where, spec_path, what, at, past in cases:
        route = ROUTE_OF[name]
        label = f"{route} {spec_path} {what}"
        if at is not None:
            redis_client.delete("celery")
            r = api.post(route, at)
            if r.status_code != 202:
                failures.append(f"{label}: at the limit refused: {r.status_code} {r.text:.300}")
            else:
                sent = queued(redis_client)[-1]
                want = dict(at, owner="alice") if name == "lora.create" else at
                adapter = next((p for p in table[name]["params"]
                                if p["name"] == table[name].get("adapter_param")), None)
                if adapter and adapter.get("nullable") and adapter["name"] not in at:
                    want = dict(want, **{adapter["name"]: None})  # absent = the base model
                if sent != (name, [], want):
                    failures.append(f"{label}: sent {sent!r:.300}, not the body")
        if past is not None:
            r = api.post(route, past)
            msg = body_of(r).get("error", {}).get("message", "")
            if r.status_code != 400 or not (msg.startswith(where + ":")
                                             or msg.startswith(where + "[")
                                             or msg.startswith(where + ".")):
                failures.append(f"{label}: past the limit: {r.status_code} {msg or r.text:.300}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def test_http_fields_are_the_task_parameters(api, redis_client, table):
    """Top level: a route takes exactly its task's parameters (less those the server sets)
    plus the declared HTTP-only fields, and sends them under the table's names."""
    from flask_app import validation
    _own_adapter(api)
    for name, route in ROUTE_OF.items():
        task, http = table[name], validation.HTTP_TASKS[name]
        params = {p["name"]: p for p in task["params"]}
        http_only = set(http.ignored) | ({validation.ADAPTER_ALIAS}
                                         if task.get("adapter_param") else set())
        for field in sorted(set(params) | http_only | {"zz_unknown"}):
            body = base_body(task)
            if field == validation.ADAPTER_ALIAS:
                body.pop(task["adapter_param"], None)
                body[field] = ADAPTER
            elif field == task.get("adapter_param"):
                body[field] = ADAPTER
            elif field in params:
                body[field] = minimal(params[field])
            else:
                body[field] = None if field in http.ignored else 1
            redis_client.delete("celery")
            r = api.post(route, body)
            settable = field in http_only or (field in params and field not in http.server)
            if settable:
                assert r.status_code == 202, (route, field, r.text)
                (sent_name, _, kwargs), = queued(redis_client)
                assert sent_name == name and set(kwargs) <= set(params), (route, kwargs)
                if field in params:
                    assert kwargs[field] == body[field], (route, field, kwargs)
            else:
                err(r, 400, "ValidationError", f"unknown field(s) '{field}'")



# --------------------------------------------------------------------------------------------
# The task table at start-up


def test_task_table_unreadable_stops_start_up(make_api, tmp_path):
    from flask_app.tasks import TaskTableError
    with pytest.raises(TaskTableError, match="not an executable"):
        make_api(CELERIAC_WORKER_BIN=str(tmp_path / "no-celeriac"))
    with pytest.raises(TaskTableError, match="no-such.json"):
        make_api(CELERIAC_TASKS_JSON=str(tmp_path / "no-such.json"))
    (tmp_path / "bad.json").write_text('{"format": "celeriac-tasks/0", "tasks": []}')
    with pytest.raises(TaskTableError, match="celeriac-tasks/1"):
        make_api(CELERIAC_TASKS_JSON=str(tmp_path / "bad.json"))
    fails = tmp_path / "fails.sh"
    fails.write_text("#!/bin/sh\necho 'unknown option' >&2\nexit 2\n")
    fails.chmod(0o755)
    with pytest.raises(TaskTableError, match="exited with 2: unknown option"):
        make_api(CELERIAC_WORKER_BIN=str(fails))


def _edited_table(tmp_path, table, edit):
    import copy
    import json
    tasks = copy.deepcopy(table)
    edit(tasks)
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"format": "celeriac-tasks/1",
                                "tasks": sorted(tasks.values(), key=lambda t: t["name"])}))
    return str(path)


def test_schemas_follow_the_table(make_api, tmp_path, table, redis_client):
    """The routes take what the table says, whatever it says: nothing is kept by hand."""
    def param(tasks, task, name):
        return next(p for p in tasks[task]["params"] if p["name"] == name)

    def edit(tasks):
        param(tasks, "lora.create", "rank")["max"] = 16
        param(tasks, "lora.sample", "sampling_params")["fields"].append(
            {"name": "min_p", "type": "number", "required": False, "default": 0,
             "nullable": True, "min": 0, "max": 1, "doc": "a new sampling setting"})
        tasks["model.score"]["params"].append(
            {"name": "reduce", "type": "str", "required": False, "default": "sum",
             "nullable": False, "choices": ["sum", "mean"], "doc": "a new parameter"})

    api = make_api(CELERIAC_TASKS_JSON=_edited_table(tmp_path, table, edit))
    err(api.post("/add_lora", {"rank": 17}), 400, "ValidationError", "rank: must be <= 16, got 17")
    api.submit("/add_lora", {"rank": 16})
    api.submit("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"min_p": 0.5}})
    err(api.post("/api/v1/sample", {"prompts": ["a"], "sampling_params": {"min_p": 2}}), 400,
        "ValidationError", "sampling_params.min_p: must be <= 1, got 2")
    api.submit("/score", {"text": "a", "reduce": "mean"})
    err(api.post("/score", {"text": "a", "reduce": "max"}), 400, "ValidationError",
        "reduce: must be one of sum, mean; got 'max'")
    assert [kw for _, _, kw in queued(redis_client)][1:] == [
        {"prompts": ["a"], "sampling_params": {"min_p": 0.5}, "adapter_id": None},
        {"text": "a", "reduce": "mean", "adapter_id": None}]


def test_table_missing_what_a_route_needs_stops_start_up(make_api, tmp_path, table):
    def drop_task(tasks):
        del tasks["lora.sample"]
    with pytest.raises(ValueError, match="no lora.sample"):
        make_api(CELERIAC_TASKS_JSON=_edited_table(tmp_path, table, drop_task))

    def drop_rank(tasks):
        tasks["lora.create"]["params"] = [p for p in tasks["lora.create"]["params"]
                                          if p["name"] != "rank"]
    with pytest.raises(ValueError, match="rank .*CELERIAC_MAX_RANK"):
        make_api(CELERIAC_TASKS_JSON=_edited_table(tmp_path, table, drop_rank))

    def drop_owner(tasks):
        tasks["lora.list"]["params"] = []
    with pytest.raises(ValueError, match="lora.list has no parameter 'owner'"):
        make_api(CELERIAC_TASKS_JSON=_edited_table(tmp_path, table, drop_owner))



# At the boundary, with the real worker: a value at the HTTP limit passes the HTTP checks and
# the worker; one past the table's limit is refused by the worker too (sent straight to it with
# the Celery client), as the HTTP checks refuse it (test_http_limits_are_the_tables).
# Skipped at the limit, with the rule that makes them fail there, which the table leaves to
# the running worker (or cannot state):
E2E_SKIP_AT = {
    ("data[].tokens[]", "max"): "token ids are bounded by the model's vocabulary",
    ("data[].target_tokens[]", "max"): "token ids are bounded by the model's vocabulary",
    ("data[].tokens", "max_len"): "tokens, target_tokens and weights are equally long",
    ("data[].target_tokens", "max_len"): "tokens, target_tokens and weights are equally long",
    ("data[].weights", "max_len"): "tokens, target_tokens and weights are equally long",
    ("data[].weights[]", "min"): "a zero weight leaves the example nothing to learn",
    # (The minimal chat is one turn; 'assistant' is its role in every other chat case.)
    ("data[][].role", "choice"): "a chat needs an assistant turn",
    ("data[].messages[].role", "choice"): "a chat needs an assistant turn",
}
E2E_MAX_BODY = 4096  # longer inputs meet the model's context (--max-input-tokens)
# Rules the table cannot state: the front end lets these through, the worker refuses them,
# and the future says so with a 400 (they were refused by hand-written HTTP checks before).
WORKER_ONLY = [
    ("/fwdbwd", {"data": [[{"role": "user", "content": "hi"}]]}, "assistant"),
    ("/fwdbwd", {"data": [{"tokens": [1, 2], "target_tokens": [2], "weights": [1, 1]}]},
     "target_tokens"),
    ("/fwdbwd", {"data": [{"tokens": [1, 10**9], "target_tokens": [2, 3]}]}, "token"),
]


def test_boundaries_agree_with_the_worker(make_api, worker, celery_app, table, tmp_path):
    import json
    # one user creates an adapter per lora.create case: more than the default quota of 16
    worker("-c", "2", "--state-dir", str(tmp_path / "state"), "--max-adapters-per-owner", "0",
           ready_timeout=60)
    api = make_api(**SMALL_CAPS)
    adapters = {}
    for use in ("train", "optim"):
        r = api.wait(api.submit("/add_lora", {"rank": 4}))
        assert r.status_code == 200, r.text
        adapters[use] = r.get_json()["result"]["adapter_id"]

    def real(name, body):
        adapter = table[name].get("adapter_param")
        if body.get(adapter) == ADAPTER:
            body = dict(body, **{adapter: adapters["optim" if name == "lora.optim_step"
                                                    else "train"]})
        return body

    at_futures, skipped = [], []
    for name, where, spec_path, what, at, _ in boundary_cases(table, api.app.config):
        if at is None:
            continue
        if (spec_path, what) in E2E_SKIP_AT or len(json.dumps(at)) > E2E_MAX_BODY:
            skipped.append((spec_path, what))
            continue
        if name == "lora.optim_step":  # a step needs gradients: one fwdbwd before each
            grads = api.submit("/fwdbwd", {"adapter_id": adapters["optim"],
                                           "data": [{"text": "x"}]})
            at_futures.append(("the fwdbwd before an optim_step", grads))
        fid = api.submit(ROUTE_OF[name], real(name, at))
        at_futures.append((f"{name} {spec_path} {what} at {at!r:.120}", fid))
    refused = [(path, text, api.submit(path, dict(body, adapter_id=adapters["train"])))
               for path, body, text in WORKER_ONLY]
    past_results = []
    for name, where, spec_path, what, _, past in boundary_cases(table, NO_CAPS):
        if past is None or len(json.dumps(past)) > BIG:
            continue
        res = celery_app.send_task(name, kwargs=real(name, past))
        past_results.append((f"{name} {spec_path} {what} past {past!r:.120}", res))
    assert len(at_futures) > 40 and len(past_results) > 60, (len(at_futures), skipped)

    failures = []
    for label, fid in at_futures:
        r = api.wait(fid)
        if r.status_code != 200:
            failures.append(f"{label}: the worker refused it: {r.status_code} {r.text:.300}")
    for path, text, fid in refused:
        r = api.wait(fid)
        e = r.get_json().get("error", {})
        if r.status_code != 400 or e.get("type") not in ("TypeError", "ValueError") or (
                text not in e.get("message", "")):
            failures.append(f"{path}: a rule only the worker knows: {r.status_code} {r.text}")
    for label, res in past_results:
        wait_until(res.ready, scaled(60), interval=0.02, what=label)
        exc = res.result
        if res.state != "FAILURE" or type(exc).__name__ not in ("TypeError", "ValueError"):
            failures.append(f"{label}: the worker answered {res.state} {exc!r:.200}")
    assert not failures, (f"{len(failures)} of {len(at_futures) + len(past_results)}:\n"
                          + "\n".join(failures))


def test_wait_on_a_backend_that_cannot_publish():
    """waiting.py on a result backend without pubsub (Celery's in-memory cache backend here)
    reads the meta again after growing pauses: a result stored while it waits is answered;
    nothing stored: the pending meta after the wait; no free slot: at once."""
    from celery import Celery
    app = Celery("wait-test", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    tid, other = str(uuid.uuid4()), str(uuid.uuid4())

    def read(t):
        return lambda: app.backend.get_task_meta(t)

    timer = threading.Timer(0.3, lambda: app.backend.store_result(tid, 7, "SUCCESS"))
    timer.start()
    try:
        meta = waiting.final_or_timeout(app, tid, scaled(10), waiting.slots(1), read(tid))
    finally:
        timer.cancel()
    assert meta["status"] == "SUCCESS" and meta["result"] == 7
    assert waiting.final_or_timeout(app, other, 0.1, waiting.slots(1),
                                    read(other))["status"] == "PENDING"
    busy = waiting.slots(1)
    busy.acquire()
    calls = []
    waiting.final_or_timeout(app, other, 30, busy, lambda: calls.append(1) or {"status": "PENDING"})
    assert calls == [1]  # read once, no wait


class _SubscriberModel:
    """One subscriber connection as Redis may treat it at worst: a command sent on it runs only
    when the client next reads from it, and a PUBLISH reaches the channels subscribed at that
    moment; the stored meta is read on another connection, whose order against this one Redis
    does not keep. (The pubsub methods waiting.py uses, with ignore_subscribe_messages.)"""

    def __init__(self):
        self.sent, self.subs, self.inbox = [], set(), []

    def subscribe(self, ch):
        self.sent.append(("subscribe", ch))

    def unsubscribe(self, ch):
        self.sent.append(("unsubscribe", ch))

    def ping(self, message):
        self.sent.append(("ping", message))

    def publish(self, ch, data):
        if ch in self.subs:
            self.inbox.append({"type": "message", "channel": ch, "data": data})

    def get_message(self, timeout=0):
        for cmd, arg in self.sent:
            if cmd == "subscribe":
                self.subs.add(arg)
            elif cmd == "unsubscribe":
                self.subs.discard(arg)
            else:
                self.inbox.append({"type": "pong", "channel": None, "data": arg.encode()})
        self.sent.clear()
        if self.inbox:
            return self.inbox.pop(0)
        time.sleep(timeout)  # nothing more will come
        return None

    def close(self):
        pass


def test_a_result_stored_before_the_subscription_took_effect_is_answered(monkeypatch):
    """A wait reads the stored meta after subscribing; a result stored and published between
    that read and the moment Redis ran the SUBSCRIBE (the read went out on another connection
    and was served first) used to be missed: the wait ran to its timeout (about one wait in
    3,000 under bench/users.py). The read now waits for Redis's answer to a PING sent behind
    the SUBSCRIBE, so whatever is stored after it is published to this subscriber."""
    from celery import Celery
    app = Celery("wait-race", broker="memory://", backend="redis://127.0.0.1:1/0",
                 set_as_current=False)
    tid = str(uuid.uuid4())
    key = app.backend.get_key_for_task(tid)
    done = json.dumps({"status": "SUCCESS", "result": 7, "traceback": None, "children": [],
                       "date_done": "2026-01-01T00:00:00", "task_id": tid})
    model = _SubscriberModel()
    monkeypatch.setattr(waiting, "_pubsub", lambda backend: model)
    reads = []

    def read():
        reads.append(1)
        if len(reads) == 2:  # the read after subscribing: nothing yet, then the worker stores
            model.publish(key, done)
            return {"status": "PENDING", "result": None}
        return json.loads(done) if len(reads) > 2 else {"status": "PENDING", "result": None}

    t0 = time.monotonic()
    meta = waiting.final_or_timeout(app, tid, 3, waiting.slots(1), read)
    assert meta["status"] == "SUCCESS" and meta["result"] == 7, meta
    assert time.monotonic() - t0 < 1.5
    assert len(reads) == 2  # answered from the channel


def test_waits_of_one_thread_share_a_subscriber_connection(make_api, redis_client):
    """/retrieve_future with wait on the Redis backend: one thread's waits reuse one subscriber
    connection (subscribe, wait, unsubscribe) instead of connecting and disconnecting each
    time; a result stored during a later wait is still answered at once; when Redis drops
    that connection, the next wait answers anyway. (Worker events off: no other connection
    of this app comes and goes meanwhile.)"""
    api = make_api(CELERIAC_WORKER_EVENTS="0")
    fids = [api.submit("/add_lora", {"rank": 4}) for _ in range(3)]
    made = lambda: redis_client.info("stats")["total_connections_received"]  # noqa: E731
    for fid in fids:  # the thread's connections made once
        r = api.post("/retrieve_future", {"future_id": fid, "wait": 0.05})
        assert r.status_code == 202, r.text
    before = made()
    for _ in range(20):
        for fid in fids:
            assert api.post("/retrieve_future", {"future_id": fid, "wait": 0.02}).status_code == 202
    # (60 waits; the server counts every client, so another test's leftover thread may add one)
    assert made() - before <= 2, made() - before
    # stored while a wait listens on the reused connection: answered well before the wait ends
    timer = threading.Timer(0.2, lambda: api.finish(fids[0], {"adapter_id": "lora_w", "rank": 4}))
    timer.start()
    t0 = time.monotonic()
    r = api.post("/retrieve_future", {"future_id": fids[0], "wait": 20})
    timer.join()
    assert r.status_code == 200 and r.get_json()["result"]["adapter_id"] == "lora_w", r.text
    assert time.monotonic() - t0 < scaled(10)
    # Redis closes the subscriber connection (as on a restart): a wait still answers
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    killed = [redis_client.client_kill_filter(_id=c["id"]) for c in redis_client.client_list()
              if c.get("cmd") == "unsubscribe" and int(c.get("db", -1)) == db]
    assert killed and set(killed) == {1}, killed
    for fid in fids[1:]:
        r = api.post("/retrieve_future", {"future_id": fid, "wait": 0.05})
        assert r.status_code == 202, r.text


def test_submits_leave_no_result_subscription(make_api, redis_client):
    """The stock client's send_task subscribes to each task's result channel on a Redis
    backend (for an AsyncResult.get() the front end never makes) and unsubscribes when the
    result object goes; nobody read the two replies, so they piled up unread on a connection
    per Gunicorn thread (about 170 bytes a submit). Submits now send neither command; a wait
    still answers when the result is stored (test above)."""
    api = make_api(CELERIAC_WORKER_EVENTS="0")
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    before = {k: v["calls"] for k, v in redis_client.info("commandstats").items()}
    for _ in range(30):
        api.submit("/add_lora", {"rank": 4})
    after = {k: v["calls"] for k, v in redis_client.info("commandstats").items()}
    grew = {k for k in ("cmdstat_subscribe", "cmdstat_unsubscribe")
            if after.get(k, 0) > before.get(k, 0)}
    assert not grew, grew
    subscribers = [c for c in redis_client.client_list()
                   if int(c.get("db", -1)) == db and c.get("cmd") in ("subscribe", "unsubscribe")]
    assert subscribers == [], subscribers
    assert len(queued(redis_client)) == 30


def test_a_wait_answered_on_the_channel_reads_no_more(make_api, redis_client):
    """A wait that the task's final state ends answers with the state published on the
    channel (decoded as a read is) instead of reading it again; a failure comes back the same
    way."""
    api = make_api(CELERIAC_WORKER_EVENTS="0")
    calls = lambda: {k: v["calls"] for k, v in redis_client.info("commandstats").items()}  # noqa: E731

    def store(fid, value, state):
        if state != "SUCCESS":
            return api.finish(fid, value, state)
        # as a worker stores it, without the stock backend's read before its write
        key = f"celery-task-meta-{fid}"
        meta = json.dumps({"status": state, "result": value, "traceback": None, "children": [],
                           "date_done": "2026-01-01T00:00:00", "task_id": fid})
        redis_client.set(key, meta)
        redis_client.publish(key, meta)

    def retrieve(fid, wait, store_after=None, value=None, state="SUCCESS"):
        timer = None
        if store_after is not None:
            timer = threading.Timer(store_after, lambda: store(fid, value, state))
            timer.start()
        before = calls()
        r = api.post("/retrieve_future", {"future_id": fid, "wait": wait} if wait else
                     {"future_id": fid})
        if timer:
            timer.join()
        after = calls()
        spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
        return r, spent.get("cmdstat_get", 0) + spent.get("cmdstat_mget", 0)

    done = api.submit("/add_lora", {"rank": 4})
    api.finish(done, {"adapter_id": "lora_d", "rank": 4})
    r, plain_reads = retrieve(done, 0)
    assert r.status_code == 200, r.text
    waited = api.submit("/add_lora", {"rank": 4})
    r, wait_reads = retrieve(waited, 20, store_after=0.3, value={"adapter_id": "lora_e", "rank": 4})
    assert r.status_code == 200 and r.get_json()["result"]["adapter_id"] == "lora_e", r.text
    # one read more than a plain retrieve: the one right after subscribing (a state stored
    # before the subscription took effect); none after the message
    assert wait_reads == plain_reads + 1, (wait_reads, plain_reads)
    failing = api.submit("/add_lora", {"rank": 4})
    r, _ = retrieve(failing, 20, store_after=0.3, value=ValueError("rank too big"), state="FAILURE")
    assert r.status_code == 400, r.text
    assert r.get_json()["error"] == {"type": "ValueError", "message": "rank too big"}
