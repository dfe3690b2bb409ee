"""ownership.py -- who owns which adapter and which future, kept in Redis.

Adapters: hash celeriac:owners (adapter_id -> user) and set celeriac:adapters:<user>. The
worker makes the id, so an adapter is recorded when its lora.create future is seen done
(retrieve_future, or a lookup that misses: the user's not-yet-resolved creations sit in set
celeriac:creating:<user> and are resolved then by reading their results, which never waits).
The worker is also told owner=user. The create's result also names the adapter's home node,
recorded then too (placement.record_home).
Futures: key celeriac:future:<task_id> -> JSON {"owner", "task"} with a TTL (CELERIAC_FUTURE_TTL).
Open futures (for the celeriac_futures_outstanding metric): sorted set celeriac:futures:open of
ids scored by when they were handed out, left when a client reads a final state, pruned after
CELERIAC_FUTURE_TTL.
Anything not owned by the caller is reported as 404, the same answer as for an unknown id, so
ids of other users cannot be probed.
"""

import json
import re
import time

from flask import current_app

from . import placement
from .celery_client import task_meta
from .errors import not_found
from .store import store

OWNERS = "celeriac:owners"
OPEN = "celeriac:futures:open"
ID_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
FUTURE_RX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def _celery():
    return current_app.extensions["celeriac"]["celery"]


def _ttl():
    return current_app.config["CELERIAC_FUTURE_TTL"]


def record_future(task_id, user, task, pending_create=False, pipe=None):
    """Notes that future task_id (of task name `task`) belongs to user. With pipe (a Redis
    pipeline), the commands are only queued there."""
    own = pipe is None
    if own:
        pipe = store().pipeline(transaction=False)
    pipe.set(f"celeriac:future:{task_id}", json.dumps({"owner": user, "task": task}),
             ex=_ttl())
    pipe.zadd(OPEN, {task_id: time.time()})
    if pending_create:
        key = f"celeriac:creating:{user}"
        pipe.sadd(key, task_id)
        pipe.expire(key, _ttl())
    if own:
        pipe.execute()


def future_finished(task_id, pipe=None):
    """A client read future task_id's final state: it is no longer outstanding. With pipe
    (a Redis pipeline), the command is only queued there."""
    (pipe if pipe is not None else store()).zrem(OPEN, task_id)


def open_futures():
    """How many futures were handed out and their final state not read yet (within the TTL)."""
    r = store()
    pipe = r.pipeline(transaction=False)
    pipe.zremrangebyscore(OPEN, "-inf", time.time() - _ttl())
    pipe.zcard(OPEN)
    return pipe.execute()[1]


def future_of(task_id, user):
    """The future's record {"owner", "task"}; 404 ApiError if unknown, expired or not user's."""
    raw = store().get(f"celeriac:future:{task_id}")
    if raw is None:
        raise not_found(f"unknown future {task_id!r}")
    meta = json.loads(raw)
    if meta.get("owner") != user:
        raise not_found(f"unknown future {task_id!r}")
    return meta


def set_owner(adapter_id, user):
    """Records adapter_id as user's (first writer wins: ids are unique, made by the worker)."""
    if isinstance(adapter_id, str) and ID_RX.match(adapter_id):
        r = store()
        if r.hsetnx(OWNERS, adapter_id, user):
            r.sadd(f"celeriac:adapters:{user}", adapter_id)


def drop_owner(adapter_id, user):
    r = store()
    pipe = r.pipeline(transaction=False)
    pipe.hdel(OWNERS, adapter_id)
    pipe.srem(f"celeriac:adapters:{user}", adapter_id)
    pipe.execute()


def creation_done(task_id, user, value):
    """A lora.create future of user finished with `value`: record the owner, forget it."""
    if isinstance(value, dict) and "adapter_id" in value:
        set_owner(value["adapter_id"], user)
        if ID_RX.match(str(value["adapter_id"])):
            placement.record_home(value["adapter_id"], value.get("node"),
                                  placement.routed_queue("lora.create"))
    store().srem(f"celeriac:creating:{user}", task_id)


def resolve_creations(user):
    """Reads the results of user's unresolved lora.create futures and records finished ones."""
    r = store()
    key = f"celeriac:creating:{user}"
    for task_id in r.smembers(key):
        stored = task_meta(_celery(), task_id)
        state = stored.get("status")
        if state == "SUCCESS":
            creation_done(task_id, user, stored.get("result"))
        elif state in ("FAILURE", "REVOKED"):
            r.srem(key, task_id)


def require_adapter(adapter_id, user, home=False):
    """Returns adapter_id if user owns it; 404 ApiError otherwise (unknown or someone else's).
    With home=True it returns the adapter's home instead, (node, queue) as placement.home_of
    gives it, read in the same round trip as the owner."""
    r = store()
    pipe = r.pipeline(transaction=False)
    pipe.hget(OWNERS, adapter_id)
    if home:
        placement.queue_home_of(pipe, adapter_id)
    got = pipe.execute()
    owner = got[0]
    if owner is None:
        resolve_creations(user)  # a creation seen done records the owner and the home
        owner = r.hget(OWNERS, adapter_id)
        if home and owner == user:
            got[1] = placement.home_of(adapter_id)
    if owner != user:
        raise not_found(f"unknown adapter {adapter_id!r}")
    return tuple(got[1]) if home else adapter_id


def adapters_of(user):
    """Ids of the adapters recorded as user's, sorted."""
    resolve_creations(user)
    return sorted(store().smembers(f"celeriac:adapters:{user}"))
