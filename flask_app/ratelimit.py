"""ratelimit.py -- per-user rate limits on Flask-Limiter, counted in Redis for all web workers.

Two budgets, each a config key: CELERIAC_RATE_LIMIT (the task-submitting routes, together) and
CELERIAC_POLL_RATE_LIMIT (/retrieve_future). A route names its budget in require_user (auth.py);
create_app() calls init_app(), which gives every such view one Flask-Limiter *shared* limit
whose scope is the budget's name, keyed by the authenticated user: all routes of a budget draw
on one count per user. The counts live in the app's Redis (CELERIAC_REDIS_URL, the app's own
connection pool), so every Gunicorn worker sees the same numbers. Strategy: limits' fixed
window (a counter with a TTL set at its first hit).

A limit is "N/unit" (unit: second, minute, hour, day, plural or abbreviated: s, sec, m, min,
h, d; "N/30s"-style multiples), several separated by ';' (e.g. "10/second;300/minute"); "", "0",
"none" or "off" disables the budget. A malformed one raises ValueError at start-up.

Limits are checked by check(), called after authentication (a request without a valid key is a
401 and costs nothing) and before validation (a flood of bad requests is still a flood). Over
the limit: 429 {"error": {"type": "RateLimited", ...}} with Retry-After, the seconds until the
breached window's counter expires.
"""

import math
import re
import time

import limits
from flask import current_app, g, request
from flask_limiter import Limiter, RateLimitExceeded

from .errors import ApiError

BUDGETS = ("CELERIAC_RATE_LIMIT", "CELERIAC_POLL_RATE_LIMIT")
UNITS = {"s": "second", "sec": "second", "second": "second", "seconds": "second",
         "m": "minute", "min": "minute", "minute": "minute", "minutes": "minute",
         "h": "hour", "hour": "hour", "hours": "hour",
         "d": "day", "day": "day", "days": "day"}
_RX = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


def parse(spec):
    """'60/minute;5/30s' -> '60/1 minute;5/30 second' (limits' notation, checked by limits),
    or None when the spec disables the budget. Raises ValueError on a malformed spec."""
    if spec is None or spec.strip().lower() in ("", "0", "off", "none"):
        return None
    out = []
    for part in spec.split(";"):
        if not part.strip():
            continue
        m = _RX.match(part.lower())
        if not m or m.group(3) not in UNITS or int(m.group(1)) < 1 or m.group(2) == "0":
            raise ValueError(f"bad rate limit {part.strip()!r} (expected e.g. '60/minute')")
        out.append(f"{int(m.group(1))}/{int(m.group(2) or 1)} {UNITS[m.group(3)]}")
    if not out:
        return None
    normal = ";".join(out)
    limits.parse_many(normal)  # the library's own check of what it will be given
    return normal


def _user():
    return g.user


def init_app(app, redis_client):
    """Creates the app's Limiter (Redis storage on redis_client's pool) and attaches each
    budgeted view's limit. Call after the routes are registered."""
    specs = {name: parse(app.config[name]) for name in BUDGETS}
    limiter = Limiter(
        key_func=_user, auto_check=False, strategy="fixed-window", key_prefix="celeriac",
        storage_uri=app.config["CELERIAC_REDIS_URL"],
        storage_options={"connection_pool": redis_client.connection_pool},
        headers_enabled=False, swallow_errors=False)
    limiter.init_app(app)
    limited = set()
    for endpoint, view in list(app.view_functions.items()):
        budget = getattr(view, "rate_budget", None)
        if budget is None:
            continue
        if budget not in specs:
            raise ValueError(f"view {endpoint} names an unknown rate-limit budget {budget!r}")
        if specs[budget]:
            # Registers the limit for this view with this app's limiter (auto_check is off:
            # the returned wrapper only calls the view; check() below does the counting).
            app.view_functions[endpoint] = limiter.shared_limit(specs[budget], scope=budget)(view)
            limited.add(endpoint)
    app.extensions["celeriac"].update({"limiter": limiter, "limited": limited})
    return limiter


def check():
    """Counts the current request against its view's budget for g.user; raises a 429 ApiError
    when a window is full."""
    ext = current_app.extensions["celeriac"]
    if request.endpoint not in ext["limited"]:  # its budget is off
        return
    limiter = ext["limiter"]
    try:
        limiter.check()
    except RateLimitExceeded:
        breached = limiter.current_limit
        retry = max(1, math.ceil(breached.reset_at - time.time())) if breached else 1
        raise ApiError(429, "RateLimited",
                       f"rate limit exceeded for this API key; retry in {retry} s",
                       {"Retry-After": str(retry)}) from None
