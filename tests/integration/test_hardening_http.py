"""test_hardening_http.py -- issue 12 in the front end: failed API keys, tasks per user.

Row 9: thousands of wrong API keys from one address are throttled (429 past
CELERIAC_AUTH_FAILURES a minute, for any key from that address, the right one included, so
the answer tells a guesser nothing), while other addresses are not; the key comparison is
constant-time over equal-length digests. The in-flight quota: a user with
CELERIAC_MAX_INFLIGHT tasks queued or running gets a 429, and finished tasks (seen or not)
make room. Through app.test_client() on the session's Redis, without a worker (task states
are written with the stock Celery backend, as test_http_app.py does).
"""

import hmac
import sys

import pytest

from conftest import REPO
from http_fixtures import KEYS, KEYS_ENV, AppApi, app_factory, err

sys.path.insert(0, REPO)
from flask_app import auth as auth_mod  # noqa: E402
from flask_app import config as config_mod  # noqa: E402


class Api(AppApi):
    """AppApi whose post names the key and the client address."""

    def post(self, path, body, key=None, user="alice", addr="127.0.0.1"):
        h = {"Authorization": f"Bearer {key if key is not None else KEYS[user]}"}
        return self.client.post(path, json=body, headers=h, environ_base={"REMOTE_ADDR": addr})

    def finish(self, task_id, value=1, state="SUCCESS"):
        super().finish(task_id, value, state)


@pytest.fixture
def make_api(redis_server, db, monkeypatch):
    url = redis_server.url(db)
    make, close = app_factory(
        {"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": url, "CELERIAC_REDIS_URL": url,
         "CELERIAC_API_KEYS": KEYS_ENV, "CELERIAC_ENABLE_DIAG": True,
         "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off"}, monkeypatch, Api)
    yield make
    close()


def test_row9_failed_keys_are_throttled_per_address(make_api):
    api = make_api()  # the default: 100 failures a minute
    codes = [api.post("/diag/noop", {}, key=f"wrong-{i}").status_code for i in range(3000)]
    assert codes[:100] == [401] * 100
    assert set(codes[100:]) == {429}, set(codes[100:])
    # the right key from the same address answers the same: nothing to learn by guessing on
    e = err(api.post("/diag/noop", {}), 429, "TooManyFailedLogins")
    assert "too many failed API keys" in e["message"]
    r = api.post("/diag/noop", {})
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    # a missing or malformed header counts as a failure too, and is refused as well
    r = api.client.post("/diag/noop", json={}, environ_base={"REMOTE_ADDR": "127.0.0.1"})
    assert r.status_code == 429
    # another address is not throttled
    assert api.post("/diag/noop", {}, addr="10.0.0.7").status_code == 202
    assert api.post("/diag/noop", {}, key="wrong", addr="10.0.0.7").status_code == 401


def test_auth_throttle_can_be_configured_off(make_api):
    api = make_api(CELERIAC_AUTH_FAILURES=3)
    assert [api.post("/diag/noop", {}, key="x").status_code for _ in range(4)] == \
        [401, 401, 401, 429]
    api = make_api(CELERIAC_AUTH_FAILURES=0)
    assert all(api.post("/diag/noop", {}, key="x", addr="10.1.1.1").status_code == 401
               for _ in range(200))


def test_key_comparison_does_not_depend_on_lengths(monkeypatch):
    """Every configured key is compared, always as two 32-byte digests: how long or how
    right a guess is does not change the work done."""
    seen = []
    real = hmac.compare_digest

    def spy(a, b):
        seen.append((len(a), len(b)))
        return real(a, b)
    monkeypatch.setattr(auth_mod.hmac, "compare_digest", spy)
    keys = {"short": "u1", "a-much-longer-key-" * 5: "u2", "k3": "u3"}
    for guess in ("", "s", "short", "x" * 500, "a-much-longer-key-"):
        seen.clear()
        auth_mod.user_for_key(keys, guess)
        assert seen == [(32, 32)] * 3, (guess, seen)
    assert auth_mod.user_for_key(keys, "short") == "u1"
    assert auth_mod.user_for_key(keys, "shor") is None


def test_inflight_quota_per_user(make_api):
    api = make_api(CELERIAC_MAX_INFLIGHT=5)
    ids = []
    for _ in range(5):
        r = api.post("/diag/noop", {})
        assert r.status_code == 202, r.text
        ids.append(r.get_json()["future_id"])
    e = err(api.post("/diag/noop", {}), 429, "TooManyTasks")
    assert "CELERIAC_MAX_INFLIGHT" in e["message"]
    # other users are not affected
    assert api.post("/diag/noop", {}, user="bob").status_code == 202
    # a task that finished makes room, even if its owner never polled it
    api.finish(ids[0])
    assert api.post("/diag/noop", {}).status_code == 202
    err(api.post("/diag/noop", {}), 429, "TooManyTasks")
    # polling a finished one releases it too
    api.finish(ids[1], state="FAILURE", value=ValueError("x"))
    r = api.post("/retrieve_future", {"future_id": ids[1]})
    assert r.status_code == 400
    assert api.post("/diag/noop", {}).status_code == 202


def test_inflight_quota_off(make_api):
    api = make_api(CELERIAC_MAX_INFLIGHT=0)
    assert all(api.post("/diag/noop", {}).status_code == 202 for _ in range(300))


def test_inflight_setting_names():
    """Issue 12 names the limit CELERIAC_MAX_INFLIGHT, issue 18 CELERIAC_MAX_INFLIGHT_PER_USER:
    either sets it, the second wins, and a bad value is refused at start-up."""
    def limit(env):
        return config_mod.from_env(env)["CELERIAC_MAX_INFLIGHT"]
    assert limit({}) == 256
    assert limit({"CELERIAC_MAX_INFLIGHT": "7"}) == 7
    assert limit({"CELERIAC_MAX_INFLIGHT_PER_USER": "9"}) == 9
    assert limit({"CELERIAC_MAX_INFLIGHT": "7", "CELERIAC_MAX_INFLIGHT_PER_USER": "0"}) == 0
    with pytest.raises(ValueError, match="CELERIAC_MAX_INFLIGHT_PER_USER"):
        limit({"CELERIAC_MAX_INFLIGHT_PER_USER": "-1"})
