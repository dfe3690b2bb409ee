"""waiting.py -- /retrieve_future's optional wait: answer when the task is done, not before.

A client that sends {"future_id", "wait": seconds} gets its answer as soon as the task's
final state (SUCCESS, FAILURE, REVOKED) is stored, or after `wait` seconds with the usual
202, instead of polling every few milliseconds and finding out up to a poll interval late.
On the Redis result backend the wait listens on the channel Celery publishes every stored
meta on (celery-task-meta-<id>, what AsyncResult.get() listens to) and reads the meta once
after the subscription has taken effect, so a result stored in between is not missed. "Taken
effect" is Redis's answer to a PING sent behind the SUBSCRIBE on the subscriber connection:
the read goes out on another connection, and Redis need not serve two connections' commands
in the order they were sent (sending SUBSCRIBE and reading at once missed a result stored
between a read served first and the subscription: about one wait in 1,000 ran to its
timeout when tasks ended just as their waits began; scripts/wait-race). A final state that
arrives on the channel is the answer as it came (the stored meta, decoded as a read decodes it:
no second read); after any other message (a progress report, something undecodable) the meta is
read again, so a wait that ends on its timeout answers with the freshest progress. Each Gunicorn
thread keeps one subscriber connection for its waits (subscribe, wait, unsubscribe), instead of
a new connection per wait (redis-py's PubSub.close() disconnects): a wait then costs three
commands (SUBSCRIBE, PING, UNSUBSCRIBE), not a TCP connect and close. A message left over from
an earlier wait (another channel) is skipped. Other backends are read again after a growing
pause (2 ms, doubling to 50 ms). A Redis error ends the wait: the request answers with what it
can read, as without `wait`.

Each Gunicorn worker lets at most CELERIAC_MAX_WAITERS requests wait at once (default: its
threads less one), so waiting requests never hold every thread; past that a request answers
at once, as without `wait`. The wait is bounded by MAX_WAIT seconds (validation.py).
"""

import itertools
import threading
import time

import redis
from celery.backends.redis import RedisBackend

FINAL = {"SUCCESS", "FAILURE", "REVOKED"}
PAUSE_FIRST, PAUSE_MAX = 0.002, 0.05


def slots(n):
    """The per-process bound on waiting requests (one per app)."""
    return threading.BoundedSemaphore(max(1, n))


def final_or_timeout(celery_app, task_id, seconds, sem, read):
    """read() -> the task's meta ({"status", "result", ...}). Returns the meta once it is
    final, or the latest one after `seconds` (at once when seconds <= 0 or every slot is
    taken)."""
    meta = read()
    if seconds <= 0 or meta.get("status") in FINAL or not sem.acquire(blocking=False):
        return meta
    try:
        deadline = time.monotonic() + seconds
        backend = celery_app.backend
        if isinstance(backend, RedisBackend):
            try:
                return _listen(backend, task_id, deadline, read)
            except redis.RedisError:
                return read()
        return _poll(deadline, read, meta)
    finally:
        sem.release()


_local = threading.local()


def _pubsub(backend):
    """This thread's subscriber connection for backend (made on first use)."""
    ps = getattr(_local, "pubsub", None)
    if ps is None or getattr(_local, "backend", None) is not backend:
        if ps is not None:
            ps.close()
        ps = _local.pubsub = backend.client.pubsub(ignore_subscribe_messages=True)
        _local.backend = backend
    return ps


def _drop_pubsub():
    ps = getattr(_local, "pubsub", None)
    _local.pubsub = None
    if ps is not None:
        try:
            ps.close()
        except redis.RedisError:
            pass


_tokens = itertools.count()


def _listen(backend, task_id, deadline, read):
    ps = _pubsub(backend)
    channel = backend.get_key_for_task(task_id)
    want = _name(channel)
    ok = False
    try:
        ps.subscribe(channel)
        # Redis answers this PING after it has run the SUBSCRIBE; only then is the read below
        # sure to come after it (a message on the channel may come first: it is the answer)
        token = f"celeriac-wait-{next(_tokens)}"
        ps.ping(token)
        meta, confirmed = None, False  # meta: None until the PING's answer or a final message
        while meta is None or meta.get("status") not in FINAL:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            msg = ps.get_message(timeout=left)
            if msg is None:
                continue
            if not confirmed and msg.get("type") == "pong" and _name(msg.get("data")) == token:
                confirmed = True
                meta = read()  # stored before the subscription took effect
            elif msg.get("type") == "message" and _name(msg.get("channel")) == want:
                # a final state is the answer; anything else: read it again (once confirmed)
                meta = _final(backend, msg.get("data")) or (read() if confirmed else meta)
        if meta is None:  # no answer to the PING in time: what is stored now
            meta = read()
        ps.unsubscribe(channel)
        ok = True
        return meta
    finally:
        if not ok:  # an error midway: the connection's state is unknown
            _drop_pubsub()


def _name(channel):
    return channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel


def _final(backend, payload):
    """The final meta a published payload holds, decoded as get_task_meta decodes a read;
    None when it is not final (a read then gives the freshest progress) or not decodable."""
    try:
        meta = backend.decode_result(payload)
    except Exception:  # not what a worker stores: read the stored meta instead
        return None
    return meta if isinstance(meta, dict) and meta.get("status") in FINAL else None


def _poll(deadline, read, meta):
    pause = PAUSE_FIRST
    while meta.get("status") not in FINAL:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(pause, left))
        pause = min(pause * 2, PAUSE_MAX)
        meta = read()
    return meta
