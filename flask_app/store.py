"""store.py -- the app's Redis connection for its own small state.

Owners, futures and rate-limit counters live in CELERIAC_REDIS_URL (default: the result
backend). One redis.Redis (a thread-safe connection pool) per app per process, created lazily
after Gunicorn forks, with short socket timeouts so a dead Redis costs a request at most a few
seconds (and becomes a 503) instead of hanging a web worker.
"""

import threading

import redis
from flask import current_app

_lock = threading.Lock()


def store():
    """The current app's redis.Redis (decode_responses=True)."""
    ext = current_app.extensions["celeriac"]
    client = ext.get("redis")
    if client is None:
        with _lock:
            client = ext.get("redis")
            if client is None:
                client = redis.Redis.from_url(
                    current_app.config["CELERIAC_REDIS_URL"], decode_responses=True,
                    socket_timeout=5, socket_connect_timeout=3, health_check_interval=30)
                ext["redis"] = client
    return client
