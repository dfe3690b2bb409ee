"""store.py -- the app's Redis connection for its own small state.

Owners, futures and rate-limit counters live in CELERIAC_REDIS_URL (default: the result
backend). One redis.Redis (a thread-safe connection pool) per app, made by create_app(); it
opens no connection until first used, and redis-py's pool starts afresh in a forked process, so
each Gunicorn worker gets its own connections. Short socket timeouts make a dead Redis cost a
request at most a few seconds (and become a 503) instead of hanging a web worker. The rate
limiter (ratelimit.py) counts through the same pool.
"""

import redis
from flask import current_app


def connect(url):
    """A redis.Redis for url (decode_responses=True), not yet connected."""
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=5,
                                socket_connect_timeout=3, health_check_interval=30)


def store():
    """The current app's redis.Redis."""
    return current_app.extensions["celeriac"]["redis"]
