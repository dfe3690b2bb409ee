"""futures.py -- POST /retrieve_future: a future's state, at once or when the task is done.

{"future_id", "wait"?}: with wait (seconds, at most 30) the answer comes as soon as the task
is done, failed or revoked, or after wait seconds as 202 (waiting.py); without, at once.

  202 {"status": "pending", "progress": null}      queued, not started
  202 {"status": "running", "progress": {...}}     started; progress is the task's PROGRESS
                                                    meta ({"done", "total"}) when it sent one
  200 {"status": "done", "result": ...}
  4xx/5xx {"status": "failed", "error": {"type", "message"}}: the task raised. ValueError and
      TypeError (bad input the worker caught) -> 400; KeyError/LookupError (e.g. the adapter
      was deleted meanwhile) -> 404; the worker itself failing (WorkerLostError, time limits,
      MemoryError) -> 502; a revoked task -> 409; AdapterStateLost (the adapter's home node
      died holding gradients no checkpoint had: the worker that adopted it says which step and
      what to redo, i.e. forward_backward again, then optim_step) and AdapterBusy (the job
      reached a node while the adapter's gradients are held on another, live one) -> 409;
      anything else -> 500.
Only the future's owner may read it; any other key gets 404. A done lora.create or lora.list
records the adapters it names as the caller's.
"""

from flask import Blueprint, current_app, g, jsonify

from .. import inflight, waiting
from .. import validation as v
from ..auth import require_user
from ..celery_client import task_meta
from ..ownership import creation_done, future_finished, future_of, set_owner
from ..store import store

bp = Blueprint("futures", __name__)

CLIENT_ERRORS = {"ValueError", "TypeError"}
MISSING_ERRORS = {"KeyError", "LookupError"}
WORKER_ERRORS = {"WorkerLostError", "TimeLimitExceeded", "SoftTimeLimitExceeded",
                 "MemoryError"}


CONFLICT_ERRORS = {"AdapterStateLost", "AdapterBusy"}


def failure_status(exc):
    """HTTP status for a task's exception, by its class or any base class name."""
    names = {c.__name__ for c in type(exc).__mro__} if isinstance(exc, BaseException) else set()
    if names & CONFLICT_ERRORS:
        return 409
    if names & CLIENT_ERRORS:
        return 400
    if names & MISSING_ERRORS:
        return 404
    if names & WORKER_ERRORS:
        return 502
    return 500


def _message(exc):
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])  # KeyError's str() adds quotes
    return str(exc) if str(exc) else type(exc).__name__


def _on_success(meta, value):
    task = meta.get("task")
    if task == "lora.create":
        creation_done(g.future_id, g.user, value)
    elif task == "lora.list" and isinstance(value, list):
        for item in value:
            aid = item.get("adapter_id") if isinstance(item, dict) else item
            set_owner(aid, g.user)


@bp.post("/retrieve_future")
@require_user("CELERIAC_POLL_RATE_LIMIT")
def retrieve_future():
    task_id, wait = v.validate_future(v.json_body())
    meta = future_of(task_id, g.user)
    g.future_id = task_id
    # One read of the stored meta: state and result must come from the same version (reading
    # AsyncResult.state, then .info, could pair PROGRESS with the final result).
    ext = current_app.extensions["celeriac"]
    stored = waiting.final_or_timeout(ext["celery"], task_id, wait, ext["waiters"],
                                      lambda: task_meta(ext["celery"], task_id))
    state, value = stored.get("status"), stored.get("result")
    if state in inflight.FINISHED:  # both records in one round trip
        pipe = store().pipeline(transaction=False)
        inflight.release(g.user, task_id, pipe)
        future_finished(task_id, pipe)
        pipe.execute()
    if state == "SUCCESS":
        _on_success(meta, value)
        return jsonify({"status": "done", "result": value})
    if state == "FAILURE":
        exc = value
        status = failure_status(exc)
        body = {"status": "failed",
                "error": {"type": type(exc).__name__, "message": _message(exc)}}
        return jsonify(body), status
    if state == "REVOKED":
        return jsonify({"status": "failed", "error": {"type": "TaskRevokedError",
                                                      "message": "the task was revoked"}}), 409
    if state == "PENDING":
        return jsonify({"status": "pending", "progress": None}), 202
    progress = None
    if state == "PROGRESS" and isinstance(value, dict):
        progress = value
    return jsonify({"status": "running", "progress": progress}), 202
