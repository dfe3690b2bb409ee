"""http_fixtures.py -- what the HTTP tests share: API keys, an error-shape check, queue reading.

test_http_app.py drives flask_app through app.test_client() (no Gunicorn); test_http.py drives
it through real Gunicorn with requests. Both use the same users and keys, the same check of
the error shape, the same task table, and read what a route published from the Redis queue
the same way.
"""

import base64
import json
import os

from conftest import celeriac_bin_dir

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
