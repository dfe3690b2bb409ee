"""http_fixtures.py -- what the HTTP tests share: API keys, an error-shape check, queue reading.

test_http_app.py drives flask_app through app.test_client() (no Gunicorn); test_http.py drives
it through real Gunicorn with requests. Both use the same users and keys, the same check of
the error shape, the same task table, and read what a route published from the Redis queue
the same way. The test_client() side (AppApi, app_factory) is shared by every file that builds
the app in-process (test_http_app, test_hardening_http, test_multiworker, test_compression).
"""

import base64
import json
import os
import sys

from conftest import REPO, celeriac_bin_dir, scaled, wait_until

KEYS = {"alice": "alice-key-0123456789", "bob": "bob-key-9876543210",
        "carol": "carol-key-5555555555"}
KEYS_ENV = ",".join(f"{u}:{k}" for u, k in KEYS.items())
TEXT = "The quick brown fox jumps over the lazy dog."



class ApiCalls:
    """The verbs both HTTP test clients share; a subclass supplies call(method, path, user,
    json, headers, **kw) and json_of(response)."""

    def headers_for(self, user, headers):
        h = dict(headers or {})
        if user is not None:
            h.setdefault("Authorization", f"Bearer {KEYS.get(user, user)}")
        return h

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
        fid = self.json_of(r)["future_id"]
        assert isinstance(fid, str) and fid
        return fid

def table_config():
    """Where the app under test reads the task table: the celeriac binary under test
    (`--describe-tasks`), or the file CELERIAC_TASKS_JSON names when that is set."""
    cfg = {"CELERIAC_WORKER_BIN": os.path.join(celeriac_bin_dir(), "celeriac")}
    if os.environ.get("CELERIAC_TASKS_JSON"):
        cfg["CELERIAC_TASKS_JSON"] = os.environ["CELERIAC_TASKS_JSON"]
    return cfg


def body_of(r):
    """The JSON body of a requests.Response or a werkzeug TestResponse."""
    return r.get_json() if hasattr(r, "get_json") else r.json()


def err(r, status, type_=None, contains=None):
    """Asserts an error response: status, JSON {"error": {"type", "message"}}; returns it."""
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    e = body_of(r)["error"]
    assert isinstance(e["type"], str) and isinstance(e["message"], str) and e["message"]
    if type_ is not None:
        assert e["type"] == type_, e
    if contains is not None:
        assert contains in e["message"], e
    return e


def queued(redis_client, queue="celery"):
    """[(task name, args, kwargs)] of the messages waiting in a Redis queue, oldest first
    (kombu's Redis transport LPUSHes; the body is base64 JSON [args, kwargs, embed])."""
    out = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        msg = json.loads(raw)
        args, kwargs, _ = json.loads(base64.b64decode(msg["body"]))
        out.append((msg["headers"]["task"], args, kwargs))
    return out


class AppApi(ApiCalls):
    """app.test_client() with a user's key; the same calls as test_http.Api."""

    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def call(self, method, path, user="alice", json=None, headers=None, **kw):
        return self.client.open(path, method=method, json=json,
                                headers=self.headers_for(user, headers), **kw)

    def json_of(self, r):
        return r.get_json()

    def poll(self, future_id, user="alice"):
        return self.post("/retrieve_future", {"future_id": future_id}, user)

    def wait(self, future_id, user="alice", timeout=60):
        """Polls the future until it is no longer 202; returns the final response."""
        def done():
            r = self.poll(future_id, user)
            return None if r.status_code == 202 else [r]
        return wait_until(done, scaled(timeout), interval=0.02, what=f"future {future_id}")[0]

    def finish(self, future_id, value, state="SUCCESS"):
        """Writes the task's state as a worker would (the stock Celery result backend)."""
        self.app.extensions["celeriac"]["celery"].backend.store_result(future_id, value, state)


def app_factory(base, monkeypatch, api_class=AppApi):
    """(make, close) for an app fixture: make(**config) -> api_class over create_app(base, the
    task table, config), with the environment's settings removed first; close() closes what
    every app made opened (its events receiver, Redis and Celery connections)."""
    sys.path.insert(0, REPO)
    from flask_app import config as config_mod
    from flask_app import create_app
    table = table_config()
    for name in config_mod.from_env({}):
        monkeypatch.delenv(name, raising=False)
    apps = []

    def make(**config):
        app = create_app({**base, **table, **config})
        apps.append(app)
        return api_class(app)

    def close():
        for app in apps:
            ext = app.extensions["celeriac"]
            if ext.get("cluster") is not None:
                ext["cluster"].close()
            ext["redis"].close()
            ext["celery"].close()

    return make, close
