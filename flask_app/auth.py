"""auth.py -- bearer API keys: `Authorization: Bearer <key>` names the calling user.

Keys come from CELERIAC_API_KEYS ("alice:KEY1,bob:KEY2"). A missing, malformed or unknown key
is a 401 with a WWW-Authenticate header. The key is compared against every configured key in
constant time (SHA-256 digests of equal length, hmac.compare_digest, every key compared), so
response timing does not tell how much of a guess was right, nor how long a key is.

Roles: a key listed in CELERIAC_ADMIN_KEYS (same "user:KEY" form; such a key is an API key
too) has the admin role, which GET /workers needs (require_admin: 403 Forbidden for any other
valid key).

Failed keys are throttled per client address (request.remote_addr; behind a proxy, set
GUNICORN_FORWARDED_ALLOW_IPS so that it is the client's): past CELERIAC_AUTH_FAILURES failures
in a minute (a fixed window from the first failure, counted in the app's Redis and shared by
every Gunicorn worker), every request from that address is a 429 with Retry-After until the
window ends, whatever key it carries -- a right key must not answer differently, or the
guessing would go on. The check costs one Redis read per request, made before the key is
looked at.
"""

import functools
import hashlib
import hmac

from flask import current_app, g, request

from . import ratelimit
from .errors import ApiError
from .store import store

AUTH_WINDOW = 60  # seconds of one failure-counting window


def _unauthorized(message):
    return ApiError(401, "Unauthorized", message,
                    {"WWW-Authenticate": 'Bearer realm="celeriac"'})


def _digest(text):
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()


def user_for_key(keys, presented):
    """The user owning key `presented`, or None; constant-time over all configured keys."""
    found = None
    given = _digest(presented)
    for key, user in keys.items():
        if hmac.compare_digest(_digest(key), given):
            found = user
    return found


def _failure_key():
    return f"celeriac:authfail:{request.remote_addr or '-'}"


def _check_throttle():
    """429 when this address had CELERIAC_AUTH_FAILURES failed keys in its current window."""
    limit = current_app.config.get("CELERIAC_AUTH_FAILURES", 0)
    if not limit:
        return
    count = store().get(_failure_key())
    if count is not None and int(count) >= limit:
        retry = max(1, store().ttl(_failure_key()))
        raise ApiError(429, "TooManyFailedLogins",
                       f"too many failed API keys from this address; retry in {retry} s",
                       {"Retry-After": str(retry)})


def _count_failure():
    """One more failure in the address's window (started by its first failure)."""
    if not current_app.config.get("CELERIAC_AUTH_FAILURES", 0):
        return
    pipe = store().pipeline(transaction=False)
    pipe.set(_failure_key(), 0, ex=AUTH_WINDOW, nx=True)
    pipe.incr(_failure_key())
    pipe.execute()


def authenticate():
    """Sets g.user from the request's bearer key or raises a 401 (or 429) ApiError."""
    _check_throttle()
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        _count_failure()
        raise _unauthorized("missing Authorization header (expected 'Bearer <api key>')")
    if scheme.lower() != "bearer" or not token.strip():
        _count_failure()
        raise _unauthorized("malformed Authorization header (expected 'Bearer <api key>')")
    user = user_for_key(current_app.config["CELERIAC_API_KEYS"], token.strip())
    if user is None:
        _count_failure()
        raise _unauthorized("invalid API key")
    g.user = user
    return user


def is_admin():
    """Whether the request's key (already authenticated) has the admin role."""
    header = request.headers.get("Authorization", "")
    token = header.partition(" ")[2].strip()
    return user_for_key(current_app.config.get("CELERIAC_ADMIN_KEYS") or {}, token) is not None


def require_admin(limit="CELERIAC_RATE_LIMIT"):
    """Route decorator: require_user(limit), then a 403 unless the key has the admin role."""
    def wrap(view):
        @functools.wraps(view)
        def admin_only(*args, **kwargs):
            if not is_admin():
                raise ApiError(403, "Forbidden", "this route needs an admin key "
                                                 "(CELERIAC_ADMIN_KEYS)")
            return view(*args, **kwargs)
        return require_user(limit)(admin_only)
    return wrap


def require_user(limit="CELERIAC_RATE_LIMIT"):
    """Route decorator: authenticate, then count the request against the user's rate-limit
    budget named `limit` (a config key, see ratelimit.py; None counts nothing)."""
    def wrap(view):
        @functools.wraps(view)
        def inner(*args, **kwargs):
            authenticate()
            if limit is not None:
                ratelimit.check()
            return view(*args, **kwargs)
        # Read by ratelimit.init_app(), which attaches the budget's limit to this view.
        inner.rate_budget = limit
        return inner
    return wrap
