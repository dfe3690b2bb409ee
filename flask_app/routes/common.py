"""common.py -- what every task-submitting route does: send the task, record the future.

submit() is the only place a route talks to Celery for writing: it publishes the task by name
(send_task, never waits), stores future -> owner in Redis with a TTL, and returns the 202 body.
"""

from flask import current_app, g, jsonify

from ..celery_client import send
from ..ownership import record_future


def submit(task, kwargs, pending_create=False, extra=None, args=None):
    """Sends `task` with kwargs for g.user; returns a 202 response {"future_id", "task"}."""
    ext = current_app.extensions["celeriac"]
    task_id = send(ext["celery"], task, kwargs, queue=current_app.config["CELERIAC_QUEUE"],
                   args=args)
    record_future(task_id, g.user, task, pending_create=pending_create)
    body = {"future_id": task_id, "task": task}
    if extra:
        body.update(extra)
    resp = jsonify(body)
    resp.status_code = 202
    return resp
