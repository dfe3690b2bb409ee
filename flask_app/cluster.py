"""cluster.py -- the workers as Flower judges them, seen from one web worker process.

Each Gunicorn worker process listens to the workers' events itself: a daemon thread holds an
EventReceiver on the broker (routing key "worker.#": worker-online/-heartbeat/-offline only,
no task events) and feeds a celery.events.state.State. A node is

  alive    it sent a heartbeat less than CELERIAC_HEARTBEAT_EXPIRY (3) times its interval ago
           (State's Worker.alive with expire_window 300 %: Flower's judgement; the interval is
           the heartbeat's freq, 2 s, but 5 s for one sent on request, as the stock worker
           answers the `heartbeat` broadcast, so a node killed just after one lives 15 s);
  dead     it sent worker-offline (a warm shutdown), or it is silent past that expiry while the
           receiver has been listening for at least the expiry window (3 x 2 s);
  unknown  the receiver is not connected or has listened for less than the window (a web
           worker that just started, or a broker connection that just came back): callers
           then keep sending to the recorded home, as with one worker, and never re-home
           on their own blindness.

The thread starts lazily after the fork (the first call in a process) and reconnects when its
connection drops (a second later, over and over); on connect it asks every worker for a
heartbeat at once (the `heartbeat` broadcast, EventReceiver's wakeup). A second daemon thread
sweeps dead nodes every CELERIAC_SWEEP_INTERVAL seconds, or at once after a worker-offline
event (placement.sweep_dead()). CELERIAC_WORKER_EVENTS=0 turns both off (every node unknown).

inspect() caches `control.inspect(timeout=1.0)` answers (stats, active_queues) for
CELERIAC_INSPECT_TTL seconds, asking only the live nodes when some are known (kombu then stops
at the last reply instead of waiting the whole second).
"""

import logging
import os
import threading
import time

from celery.events.receiver import EventReceiver
from celery.events.state import State, Worker

log = logging.getLogger("flask_app")

FREQ = 2.0  # the heartbeat interval of celeriac and of the stock worker (celery Heart)


def _state(factor):
    """A State whose workers expire after `factor` x their heartbeat interval."""
    worker = type("Worker", (Worker,), {"expire_window": factor * 100})
    return type("State", (State,), {"Worker": worker})()


class _Receiver(EventReceiver):
    """EventReceiver that says when its consumer is ready (the connection is up)."""

    def __init__(self, *a, on_ready=None, **kw):
        super().__init__(*a, **kw)
        self._on_ready = on_ready

    def on_consume_ready(self, connection, channel, consumers, **kwargs):
        super().on_consume_ready(connection, channel, consumers, **kwargs)
        if self._on_ready:
            self._on_ready()


class Cluster:
    """Liveness, load and queues of the workers, for one Flask app in one process."""

    def __init__(self, flask_app):
        cfg = flask_app.config
        self.flask_app = flask_app
        self.celery = flask_app.extensions["celeriac"]["celery"]
        self.enabled = cfg["CELERIAC_WORKER_EVENTS"]
        self.factor = cfg["CELERIAC_HEARTBEAT_EXPIRY"]
        self.sweep_every = cfg["CELERIAC_SWEEP_INTERVAL"]
        self.inspect_ttl = cfg["CELERIAC_INSPECT_TTL"]
        self.lock = threading.Lock()
        self.pid = None
        self.closed = False
        self.receiver = None
        self._reset()

    def _reset(self):
        self.state = _state(self.factor)
        self.listening_since = None   # time.time() of the current connection's start
        self.offline = set()          # nodes whose last word was worker-offline
        self.wake = threading.Event()  # wakes the sweeper early
        self.cache = {}               # what -> (monotonic time, value)

    # ---- threads -----------------------------------------------------------------------------

    def ensure(self):
        """Starts the listener and the sweeper in this process, once (after the fork)."""
        if not self.enabled or self.pid == os.getpid():
            return
        with self.lock:
            if self.pid == os.getpid():
                return
            self._reset()  # a forked child inherits no threads, only their stale state
            self.pid = os.getpid()
        threading.Thread(target=self._listen, name="celeriac-events", daemon=True).start()
        threading.Thread(target=self._sweep, name="celeriac-sweep", daemon=True).start()

    def _ready(self):
        with self.lock:
            self.listening_since = time.time()

    def _on_event(self, event):
        kind = event.get("type", "")
        if not kind.startswith("worker-"):
            return
        node = event.get("hostname")
        with self.lock:
            if kind == "worker-offline":
                self.offline.add(node)
            else:
                self.offline.discard(node)
        self.state.event(event)
        if kind == "worker-offline":
            self.wake.set()

    def close(self):
        """Stops this process's threads (tests; a web worker just exits)."""
        self.closed = True
        recv = self.receiver
        if recv is not None:
            recv.should_stop = True
        self.wake.set()

    def _listen(self):
        while not self.closed:
            try:
                with self.celery.connection_for_read() as conn:
                    recv = _Receiver(conn, handlers={"*": self._on_event}, routing_key="worker.#",
                                     app=self.celery, on_ready=self._ready)
                    self.receiver = recv
                    if self.closed:
                        break
                    for _ in recv.consume(limit=None, timeout=None, safety_interval=1,
                                          wakeup=True):
                        pass
            except Exception as e:  # noqa: BLE001 - any broker trouble: reconnect
                if not self.closed:
                    log.warning("worker events: %s; reconnecting in 1 s", e)
            with self.lock:
                self.listening_since = None
            time.sleep(1)

    def _sweep(self):
        from . import placement  # placement imports this module
        while not self.closed:
            self.wake.wait(self.sweep_every)
            self.wake.clear()
            if self.closed:
                break
            try:
                with self.flask_app.app_context():
                    placement.sweep_dead()
            except Exception:  # noqa: BLE001 - logged; the next round tries again
                log.exception("sweeping dead nodes failed")

    # ---- judgement ---------------------------------------------------------------------------

    def window(self):
        return self.factor * FREQ

    def judge(self, node):
        """True: alive; False: dead (offline, or silent past the expiry); None: unknown."""
        if not self.enabled:
            return None
        self.ensure()
        with self.lock:
            since = self.listening_since
            if node in self.offline:
                return False
            with self.state._mutex:
                w = self.state.workers.get(node)
                alive = w is not None and w.alive
        if alive:
            return True
        if since is None or time.time() - since < self.window():
            return None
        return False

    def nodes(self):
        """{node: {"alive", "last_heartbeat", "freq", "active", "processed", "loadavg"}} of every
        node the events told of."""
        self.ensure()
        out = {}
        with self.lock:
            offline = set(self.offline)
            with self.state._mutex:
                workers = list(self.state.workers.values())
        for w in workers:
            out[w.hostname] = {
                "alive": bool(w.alive) and w.hostname not in offline,
                "last_heartbeat": w.heartbeats[-1] if w.heartbeats else None,
                "freq": w.freq, "active": w.active, "processed": w.processed,
                "loadavg": w.loadavg}
        return out

    def alive_nodes(self):
        return sorted(n for n, info in self.nodes().items() if info["alive"])

    # ---- asking the workers ------------------------------------------------------------------

    def inspect(self, what, nodes=None):
        """{node: reply} of control.inspect().<what>() (stats, active_queues), cached."""
        key = (what, tuple(nodes or ()))
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(key)
        if hit is not None and now - hit[0] < self.inspect_ttl:
            return hit[1]
        try:
            ins = self.celery.control.inspect(timeout=1.0, destination=list(nodes) or None)
            value = getattr(ins, what)() or {}
        except Exception as e:  # noqa: BLE001 - no answer is an empty answer
            log.warning("inspect %s failed: %s", what, e)
            value = {}
        with self.lock:
            self.cache[key] = (time.monotonic(), value)
        return value

    def queues_of(self, nodes):
        """{node: [queue names it consumes]} for the given nodes (active_queues, cached)."""
        replies = self.inspect("active_queues", nodes)
        return {n: [q.get("name") for q in (qs or []) if isinstance(q, dict)]
                for n, qs in replies.items()}


def get(flask_app):
    """The app's Cluster (made on first use)."""
    ext = flask_app.extensions["celeriac"]
    if "cluster" not in ext:
        with _MAKE:
            if "cluster" not in ext:
                ext["cluster"] = Cluster(flask_app)
    return ext["cluster"]


_MAKE = threading.Lock()
