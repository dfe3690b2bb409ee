"""backpressure.py -- refuse new work while a queue is deeper than its bound (503 + Retry-After).

CELERIAC_MAX_QUEUE_DEPTH bounds the messages waiting in a broker queue: "N" for every queue the
app sends to, "celery=1000,hipri=50" per queue (a queue not named has no bound), "0"/"off" for
none. check(queue), called by routes/common.submit() after a request is authenticated, counted
and validated and before its task is published, raises a 503 QueueFull with Retry-After while
the queue holds more than its bound; nothing is published then, so a client that retries later
loses nothing, and every task that was accepted (202) stays in its queue until a worker takes
it. The worker has its own bound on what it holds (--prefetch-multiplier, --eta-task-limit).

Depth is read through the Celery app's broker connection pool (kombu), so it works on Redis
(LLEN of the queue and its priority lists) and on AMQP (a passive queue.declare's
message_count; a queue that does not exist yet is empty). With many workers (placement.py) a
shared queue's depth also counts the direct queues ("<node>.dq2") of the nodes its adapters
are homed on, so a bound counts what it counted with one worker: every job waiting for a
worker that came in through that queue. A job for an adapter is checked against the bound of
the shared queue the adapter was created from. Each web worker caches a queue's depth
for CELERIAC_QUEUE_DEPTH_TTL_MS (default 500), so a burst costs one broker round trip per
worker per interval; a burst can pass the bound by what arrives in one interval. Retry-After
is the time the queue took to drain the excess at the rate it last fell, between 1 and
CELERIAC_RETRY_AFTER_MAX seconds, or CELERIAC_RETRY_AFTER (5) when it is not falling.
/healthz reports a queue over its bound as "degraded".
"""

import math
import threading
import time

from flask import current_app
from kombu.exceptions import OperationalError as KombuOperationalError

from .errors import ApiError


class BrokerError(Exception):
    """The broker could not be asked for a queue's depth."""


def parse_bounds(spec):
    """'1000' -> {"*": 1000}; 'celery=1000, hipri=50' -> {"celery": 1000, "hipri": 50};
    '', '0', 'off', 'none' -> {}. Raises ValueError on anything else."""
    if spec is None:
        return {}
    if isinstance(spec, int):
        return {"*": spec} if spec > 0 else {}
    text = str(spec).strip()
    if text.lower() in ("", "0", "off", "none"):
        return {}
    out = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.rpartition("=")
        name = name.strip() if sep else "*"
        try:
            n = int(value.strip())
        except ValueError:
            raise ValueError(f"CELERIAC_MAX_QUEUE_DEPTH: bad bound {part!r} (expected N or "
                             f"queue=N)") from None
        if n < 0 or (sep and not name):
            raise ValueError(f"CELERIAC_MAX_QUEUE_DEPTH: bad bound {part!r}")
        if n > 0:
            out[name] = n
    return out


def bound(queue):
    """The queue's bound (0: none)."""
    bounds = current_app.config["CELERIAC_MAX_QUEUE_DEPTH"]
    return bounds.get(queue, bounds.get("*", 0))


def queues():
    """The queues the app sends to and those with a bound of their own, sorted."""
    from . import placement
    names = placement.shared_queues()
    names.update(q for q in current_app.config["CELERIAC_MAX_QUEUE_DEPTH"] if q != "*")
    return sorted(names)


class _Cache:
    """Per web worker: queue -> (when measured, depth), and the last fall rate seen."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seen = {}   # queue -> (t, depth)
        self.rate = {}   # queue -> messages/s the queue last fell at (0: not falling)


def _cache():
    ext = current_app.extensions["celeriac"]
    if "depth_cache" not in ext:
        ext["depth_cache"] = _Cache()
    return ext["depth_cache"]


def _measure(queue):
    app = current_app.extensions["celeriac"]["celery"]
    try:
        conn = app.pool.acquire(block=True, timeout=5)
    except (KombuOperationalError, OSError) as e:
        raise BrokerError(str(e)) from e
    try:
        errors = tuple(conn.connection_errors) + (KombuOperationalError, OSError)
        try:
            conn.ensure_connection(max_retries=1)
            if conn.transport.driver_type == "redis":
                # kombu's virtual declare: no passive check (an empty Redis queue has no key)
                return conn.default_channel.queue_declare(queue=queue).message_count
            with conn.channel() as ch:
                try:
                    return ch.queue_declare(queue=queue, passive=True).message_count
                except conn.channel_errors:
                    return 0  # NOT_FOUND: nobody declared it yet, so nothing waits in it
        except errors as e:
            conn.collect()  # a broken connection is not handed out again
            raise BrokerError(str(e)) from e
    finally:
        conn.release()


def _measure_all(queue):
    """The queue's own messages plus those waiting in the direct queues of the nodes homed
    from it (placement.py): the jobs of its adapters, which one worker took from it alone."""
    from . import placement  # placement -> ownership -> ... imports this module's users
    n = _measure(queue)
    for node, home_queue in placement.known_nodes().items():
        if home_queue == queue:
            n += _measure(placement.direct_queue(node))
    return n


def depth(queue, fresh=False):
    """Messages waiting in queue; cached for CELERIAC_QUEUE_DEPTH_TTL_MS unless fresh.
    Raises BrokerError when the broker cannot be reached."""
    c = _cache()
    ttl = current_app.config["CELERIAC_QUEUE_DEPTH_TTL_MS"] / 1000.0
    now = time.monotonic()
    with c.lock:
        last = c.seen.get(queue)
    if last is not None and not fresh and now - last[0] < ttl:
        return last[1]
    n = _measure_all(queue)
    now = time.monotonic()
    with c.lock:
        last = c.seen.get(queue)
        if last is not None and now > last[0]:
            fell = last[1] - n
            c.rate[queue] = fell / (now - last[0]) if fell > 0 else 0.0
        c.seen[queue] = (now, n)
    return n


def retry_after(queue, over):
    """Seconds a client should wait before sending to a queue `over` messages past its bound."""
    cfg = current_app.config
    rate = _cache().rate.get(queue, 0.0)
    if rate <= 0:
        return cfg["CELERIAC_RETRY_AFTER"]
    return max(1, min(cfg["CELERIAC_RETRY_AFTER_MAX"], math.ceil(over / rate)))


def check(queue):
    """Raises 503 QueueFull (Retry-After) while queue is over its bound, 503
    ServiceUnavailable when the broker cannot be asked."""
    limit = bound(queue)
    if limit <= 0:
        return
    try:
        n = depth(queue)
    except BrokerError:
        raise ApiError(503, "ServiceUnavailable",
                       "the task broker is not reachable; try again later",
                       {"Retry-After": str(current_app.config["CELERIAC_RETRY_AFTER"])}) from None
    if n >= limit:
        wait = retry_after(queue, n - limit + 1)
        raise ApiError(503, "QueueFull",
                       f"queue {queue!r} holds {n} tasks, at its bound of {limit} "
                       f"(CELERIAC_MAX_QUEUE_DEPTH); nothing was queued, retry in {wait} s",
                       {"Retry-After": str(wait)})


def status():
    """{"queue": {"depth", "max"}} for /healthz, and whether any queue is over its bound.
    Raises BrokerError when the broker cannot be asked."""
    out, over = {}, False
    for queue in queues():
        limit = bound(queue)
        n = depth(queue, fresh=True)
        out[queue] = {"depth": n, "max": limit}
        over |= limit > 0 and n >= limit
    return out, over
