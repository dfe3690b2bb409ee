"""ratelimit.py -- per-user fixed-window rate limits shared by all Gunicorn workers via Redis.

A limit is "N/unit" (unit: second, minute, hour, day; also "N/30s"-style seconds), several
separated by ';' (e.g. "10/second;300/minute"); "", "0" or "off" disables it. Each window is one
Redis counter celeriac:rl:<budget>:<user>:<window>:<index>, raised with INCR and given an
EXPIRE on first use, so every process sees the same count. Over the limit -> 429 with
Retry-After (seconds to the end of the window). Fixed windows allow up to 2N in a short span
across a boundary; that is accepted for simplicity.
"""

import re
import time

from flask import current_app

from .errors import ApiError
from .store import store

UNITS = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "m": 60, "min": 60, "minute": 60,
         "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400,
         "days": 86400}
_RX = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


def parse(spec):
    """'60/minute;5/second' -> [(60, 60), (5, 1)] as (count, window seconds); [] = no limit.
    Raises ValueError on a malformed spec."""
    if spec is None or spec.strip().lower() in ("", "0", "off", "none"):
        return []
    out = []
    for part in spec.split(";"):
        if not part.strip():
            continue
        m = _RX.match(part.lower())
        if not m or m.group(3) not in UNITS:
            raise ValueError(f"bad rate limit {part.strip()!r} (expected e.g. '60/minute')")
        count = int(m.group(1))
        window = int(m.group(2) or 1) * UNITS[m.group(3)]
        if count < 1 or window < 1:
            raise ValueError(f"bad rate limit {part.strip()!r}")
        out.append((count, window))
    return out


def charge(user, budget):
    """Counts one request of `user` against the limits in config[budget]; raises a 429
    ApiError when any window is full."""
    limits = current_app.extensions["celeriac"]["limits"].get(budget) or []
    if not limits:
        return
    r = store()
    now = time.time()
    pipe = r.pipeline(transaction=False)
    keys = []
    for count, window in limits:
        index = int(now // window)
        key = f"celeriac:rl:{budget}:{user}:{window}:{index}"
        keys.append((key, count, window, index))
        pipe.incr(key)
        # Refreshed on every hit; the key name holds the window index, so a later expiry
        # only keeps an old counter a little longer.
        pipe.expire(key, window + 1)
    results = pipe.execute()
    retry = 0
    for i, (key, count, window, index) in enumerate(keys):
        used = results[2 * i]
        if used > count:
            retry = max(retry, int((index + 1) * window - now) + 1)
    if retry:
        raise ApiError(429, "RateLimited",
                       f"rate limit exceeded for this API key; retry in {retry} s",
                       {"Retry-After": str(retry)})

