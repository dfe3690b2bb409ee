"""inflight.py -- how many tasks one user has queued or running: at most CELERIAC_MAX_INFLIGHT.

Each submitted task is recorded in the sorted set celeriac:inflight:<user> (member: task id,
score: when it was sent) before it is sent; it leaves the set when /retrieve_future sees it
finished. When a new task would pass the limit, the set is pruned first: the stored state of
every member is read in one MGET of the result backend (finished ones -- SUCCESS, FAILURE,
REVOKED -- leave, whether or not their owner ever asked), and members older than
CELERIAC_FUTURE_TTL leave too; only if the user still has CELERIAC_MAX_INFLIGHT unfinished
tasks is the request a 429 (type TooManyTasks, Retry-After: 1). The record is taken before the
send, so concurrent requests of one user on several Gunicorn workers cannot all pass. The
worker enforces its own quotas (adapters and bytes per owner); this one keeps one user from
filling the queue in front of everyone else.
"""

import json
import time

from flask import current_app

from .errors import ApiError
from .store import store

FINISHED = {"SUCCESS", "FAILURE", "REVOKED"}


def _key(user):
    return f"celeriac:inflight:{user}"


def _states(task_ids):
    """The stored status of each task id (None when nothing is stored), in one read."""
    backend = current_app.extensions["celeriac"]["celery"].backend
    client = getattr(backend, "client", None)
    if client is not None and hasattr(backend, "get_key_for_task"):
        raws = client.mget([backend.get_key_for_task(t) for t in task_ids])
        out = []
        for raw in raws:
            try:
                out.append(json.loads(raw).get("status") if raw else None)
            except (ValueError, AttributeError):
                out.append(None)
        return out
    return [backend.get_task_meta(t).get("status") for t in task_ids]


def prune(user):
    """Drops the user's finished and expired tasks from the record; returns how many stay."""
    r = store()
    key = _key(user)
    entries = r.zrange(key, 0, -1, withscores=True)
    if not entries:
        return 0
    oldest = time.time() - current_app.config["CELERIAC_FUTURE_TTL"]
    ids = [tid for tid, _ in entries]
    gone = [tid for (tid, score), state in zip(entries, _states(ids))
            if state in FINISHED or score < oldest]
    if gone:
        r.zrem(key, *gone)
    return len(entries) - len(gone)


def queue_reserve(pipe, user, task_id):
    """Queues the record of task_id as the user's on pipe (a Redis pipeline); returns how many
    replies settle_reserve takes from the end of pipe's, 0 when there is no limit (nothing
    queued). (The submit sends it with its Idempotency-Key claim: one round trip.)"""
    if not current_app.config.get("CELERIAC_MAX_INFLIGHT", 0):
        return 0
    key = _key(user)
    pipe.zadd(key, {task_id: time.time()})
    pipe.zcard(key)
    pipe.expire(key, current_app.config["CELERIAC_FUTURE_TTL"])
    return 3


def settle_reserve(user, task_id, replies):
    """After queue_reserve's commands replied: past the limit (after a prune) the record of
    task_id is taken back and a 429 ApiError raised."""
    limit = current_app.config.get("CELERIAC_MAX_INFLIGHT", 0)
    count = replies[1]
    if count <= limit or prune(user) <= limit:
        return
    store().zrem(_key(user), task_id)
    raise ApiError(429, "TooManyTasks",
                   f"this API key has {limit} tasks queued or running (CELERIAC_MAX_INFLIGHT); "
                   f"retry when some have finished",
                   {"Retry-After": "1"})


def release(user, task_id, pipe=None):
    """The task finished (or was never sent): it no longer counts. With pipe (a Redis
    pipeline), the command is only queued there."""
    if current_app.config.get("CELERIAC_MAX_INFLIGHT", 0):
        (pipe if pipe is not None else store()).zrem(_key(user), task_id)
