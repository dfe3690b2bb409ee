"""idempotency.py -- `Idempotency-Key`: a submit sent twice queues its task once.

A client that loses its connection after sending a submit whole cannot tell whether the server
queued the task (a Gunicorn worker restarting after max_requests resets kept connections, so
this happens in normal operation). Sending it again is only safe if the server can recognise
it: an optim_step applied twice is a second training step. A submit may carry the header
`Idempotency-Key: <1-200 printable ASCII characters>`, chosen by the client per request; the
first request with a key (per user) claims it in Redis before its task is sent
(`celeriac:idem:<sha256(user, key)>` -> {"future_id", "task", "digest"}, SET NX), and a later
one with the same key gets the first one's future instead of a new task:

- the same task and body (digest): 202 with the first's future_id, nothing sent;
- a different task or body: 422 IdempotencyKeyReused;
- the first not sent yet (its future not recorded): 409 IdempotentRequestInProgress with
  Retry-After: 1.

The claim lives CLAIM_TTL seconds until the send succeeds, then the futures' TTL
(CELERIAC_FUTURE_TTL), extended in the pipeline that records the future; a send that fails
gives the key up at once, and a web worker that dies between the claim and the send leaves it
for at most CLAIM_TTL seconds. Keys are per user: another user's key never matches.
"""

import hashlib
import json

from flask import current_app, request

from .errors import ApiError, bad_request
from .store import store

HEADER = "Idempotency-Key"
CLAIM_TTL = 30  # seconds a claim lives before its task is sent
MAX_KEY = 200


def key_of(user):
    """The Redis key for this request's Idempotency-Key, or None when it has none; 400 for a
    malformed one."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    if not 1 <= len(raw) <= MAX_KEY or not all(0x21 <= ord(c) <= 0x7E for c in raw):
        raise bad_request(f"{HEADER}: must be 1 to {MAX_KEY} printable ASCII characters "
                          "without spaces")
    h = hashlib.sha256(f"{user}\0{raw}".encode()).hexdigest()
    return f"celeriac:idem:{h}"


def digest(task, kwargs, args):
    """What a repeated request must match: the task and its arguments."""
    doc = json.dumps({"task": task, "args": args, "kwargs": kwargs}, sort_keys=True, default=str)
    return hashlib.sha256(doc.encode()).hexdigest()


def _record(task_id, task, dig):
    return json.dumps({"future_id": task_id, "task": task, "digest": dig})


def queue_claim(pipe, key, task_id, task, dig):
    """Queues the claim of key for future task_id on pipe (a Redis pipeline); its reply goes
    to settle_claim. (The submit sends it with its in-flight count: one round trip.)"""
    pipe.set(key, _record(task_id, task, dig), nx=True, ex=CLAIM_TTL)


def settle_claim(claimed, key, task_id, task, dig):
    """After queue_claim's SET NX replied `claimed`: None when key is now claimed for task_id,
    else the first request's future_id (ApiError 422 when that request was another, 409
    while it is not sent yet)."""
    if claimed:
        return None
    r = store()
    rec = _record(task_id, task, dig)
    raw = r.get(key)
    if raw is None:  # given up (its send failed) between the two commands: claim it now
        if r.set(key, rec, nx=True, ex=CLAIM_TTL):
            return None
        raw = r.get(key) or b"{}"
    first = json.loads(raw)
    if first.get("task") != task or first.get("digest") != dig:
        raise ApiError(422, "IdempotencyKeyReused",
                       f"{HEADER} was used for another request (task {first.get('task')!r} "
                       "or other arguments); use a new key per request")
    fid = first.get("future_id", "")
    if not r.exists(f"celeriac:future:{fid}"):
        raise ApiError(409, "IdempotentRequestInProgress",
                       f"the first request with this {HEADER} is still being sent; "
                       "send it again in a moment", headers={"Retry-After": "1"})
    return fid


def confirm(pipe, key):
    """The claim's task was sent: keep the key as long as its future (queued on pipe)."""
    pipe.expire(key, current_app.config["CELERIAC_FUTURE_TTL"])


def release(key):
    """The claim's task was not sent: a request with the key may send it again."""
    store().delete(key)
