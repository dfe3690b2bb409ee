"""auth.py -- bearer API keys: `Authorization: Bearer <key>` names the calling user.

Keys come from CELERIAC_API_KEYS ("alice:KEY1,bob:KEY2"). A missing, malformed or unknown key
is a 401 with a WWW-Authenticate header. The key is compared against every configured key in
constant time, so response timing does not tell how much of a guess was right.
"""

import functools
import hmac

from flask import current_app, g, request

from . import ratelimit
from .errors import ApiError


def _unauthorized(message):
    return ApiError(401, "Unauthorized", message,
                    {"WWW-Authenticate": 'Bearer realm="celeriac"'})


def user_for_key(keys, presented):
    """The user owning key `presented`, or None; constant-time over all configured keys."""
    found = None
    given = presented.encode("utf-8", "surrogatepass")
    for key, user in keys.items():
        if hmac.compare_digest(key.encode("utf-8"), given):
            found = user
    return found


def authenticate():
    """Sets g.user from the request's bearer key or raises a 401 ApiError."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if not header:
        raise _unauthorized("missing Authorization header (expected 'Bearer <api key>')")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("malformed Authorization header (expected 'Bearer <api key>')")
    user = user_for_key(current_app.config["CELERIAC_API_KEYS"], token.strip())
    if user is None:
        raise _unauthorized("invalid API key")
    g.user = user
    return user


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
