"""common.py -- what every task-submitting route does: check ownership, send, record the future.

submit() is the only place a route talks to Celery for writing. When the task names an adapter
(the task table's adapter_param) that it does not create, the adapter must be the caller's
(404 otherwise, the same answer as for an id that does not exist); placement.py picks the
queue: the task's shared queue (CELERIAC_TASK_ROUTES), or the adapter's home node's direct
queue, re-homing it first when that node is dead; a queue at its bound is a 503
(backpressure.py: a shared queue counts the direct queues of the nodes homed from it) and
nothing is sent; the task counts against the user's
CELERIAC_MAX_INFLIGHT (429 past it, inflight.py); then it is published by name (send_task,
never waits), future -> owner is stored in Redis with a TTL, and the 202 body is returned.
Redis round trips of a submit naming an adapter: the owner and the home (one pipeline), the
in-flight count with the Idempotency-Key's claim when there is one (one pipeline;
idempotency.py: a repeat of a submit gets the first one's future, and gives back the in-flight
place it took), the publish, the future's record and the home again (one pipeline).
"""

import uuid

from flask import current_app, g, jsonify

from .. import backpressure, idempotency, inflight, placement
from ..celery_client import send
from ..ownership import record_future, require_adapter
from ..store import store


def submit(task, kwargs, pending_create=False, extra=None, args=None):
    """Sends `task` with kwargs for g.user; returns a 202 response {"future_id", "task"}."""
    ext = current_app.extensions["celeriac"]
    spec = ext["tasks"].get(task, {})
    adapter = kwargs.get(spec.get("adapter_param") or "")
    home = None
    if adapter is not None and spec.get("adapter_effect") != "create":
        home = require_adapter(adapter, g.user, home=True)  # owner and home: one round trip
    dest = placement.destination(task, spec, adapter, home)
    task_id = str(uuid.uuid4())
    idem = idempotency.key_of(g.user)
    dig = idempotency.digest(task, kwargs, args) if idem is not None else None
    # the key's claim and the in-flight record: one round trip
    pipe = store().pipeline(transaction=False)
    if idem is not None:
        idempotency.queue_claim(pipe, idem, task_id, task, dig)
    n_inflight = inflight.queue_reserve(pipe, g.user, task_id)
    claimed = False  # the key is this request's: given up if it sends nothing
    try:
        got = pipe.execute() if len(pipe) else []
        if idem is not None:
            first = idempotency.settle_claim(got[0], idem, task_id, task, dig)
            if first is not None:  # a repeat: the first request's future, nothing sent
                if n_inflight:
                    inflight.release(g.user, task_id)
                return _accepted(first, task, extra)
            claimed = True
        if n_inflight:
            inflight.settle_reserve(g.user, task_id, got[-n_inflight:])  # 429 past the limit
        backpressure.check(dest.queue)  # 503 while the queue is at its bound: nothing is sent
        send(ext["celery"], task, kwargs, args=args, task_id=task_id, **dest.send_options())
    except BaseException:  # nothing was sent: give back what was taken for it
        if n_inflight:
            inflight.release(g.user, task_id)
        if claimed:
            idempotency.release(idem)
        raise
    # the future's record and the home read again for after_send: one round trip
    pipe = store().pipeline(transaction=False)
    record_future(task_id, g.user, task, pending_create=pending_create, pipe=pipe)
    if idem is not None:
        idempotency.confirm(pipe, idem)
    recheck = dest.node is not None and adapter is not None
    if recheck:
        placement.queue_home_of(pipe, adapter)
    got = pipe.execute()
    placement.after_send(dest, adapter, tuple(got[-1]) if recheck else None)
    return _accepted(task_id, task, extra)


def _accepted(task_id, task, extra):
    body = {"future_id": task_id, "task": task}
    if extra:
        body.update(extra)
    resp = jsonify(body)
    resp.status_code = 202
    return resp
