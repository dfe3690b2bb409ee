"""placement.py -- which queue a task goes to: task routes, adapter homes, failover.

Routes. CELERIAC_TASK_ROUTES ("model.score=score,lora.*=train", fnmatch patterns, first match
wins; else CELERIAC_QUEUE) names the shared queue of each task, so an operator can send scoring
to CPU workers (-Q score) and training to GPU workers (-Q train).

Homes. lora.create / lora.load go to their shared queue and run on whichever worker takes them;
their result names that worker ("node"). The front end records it when it reads the result
(ownership.creation_done: the client's /retrieve_future, or the next request naming the
adapter, which resolves the user's pending creations first):

  hash celeriac:adapter:<id>   node (the home), queue (the shared queue it was created from)
  set  celeriac:homes:<node>   the adapters homed there (GET /workers; the failover balance)
  hash celeriac:nodes          node -> its shared queue, every node that is or was a home

Every later job for the adapter (fwdbwd, optim_step, sample, score with it, info, save,
delete) is sent to the home node's direct queue as Celery's worker_direct names it, queue
"<node>.dq2" (bound to exchange "C.dq2" with routing key = node), the way the stock client
sends to a worker_direct queue: through the default exchange, routing key "<node>.dq2"; the
queue is declared with the send, exactly as the worker declares it. An adapter with no recorded
home (made before homes were recorded) keeps the shared queue. Tasks with no adapter keep the
shared queue. The Redis record is the one truth every web worker reads; only a failover changes
it (a compare-and-set, so two web workers that both saw the home die agree on one new home).

Failover. When the home is dead (cluster.py: worker-offline, or no heartbeat for 3 x its
interval), sweep(node) runs before the job is sent, under a Redis lock per dead node (other web
workers wait for it, bounded):
  1. every adapter homed there gets a new home: a live node, preferring nodes that consume the
     adapter's shared queue (or did not answer active_queues in time), then the fewest homed
     adapters, then the fewest active tasks (the heartbeat's `active`), then the name; the
     worker there adopts the adapter from its latest checkpoint in the shared state directory
     (a lost forward_backward makes the next optim_step fail with AdapterStateLost, which the
     client sees as the future's error);
  2. on Redis, the messages the dead node had taken from its direct queue and not acked (its
     prefetched tasks and the one it was running: celeriac acks after storing the result) are
     put back at the head of "<node>.dq2" at once, instead of after the visibility timeout,
     behind the ones its idle wait had moved into its in-flight list (redis_wait.c);
     on RabbitMQ the broker requeued them when the connection died;
  3. every message waiting in "<node>.dq2" is moved, oldest first, to the direct queue of its
     adapter's (new) home: taken with basic_get, published again unchanged (body, headers,
     properties: same task id, same arguments) to that node's direct queue, then acked.
Moving the messages (rather than sending the tasks again through the client) keeps each message
exactly as its sender made it, on Redis and AMQP alike through kombu, and keeps one adapter's
jobs in their order: step 3 runs before the job that found the home dead is sent. A send that
raced a failover (it read the old home just before the compare-and-set) is caught after the
send: the home is read again and, if it moved, the old node is swept again before the request
answers, so the client's next job still queues behind it.
A sweeper thread per web worker also sweeps every dead node on record every
CELERIAC_SWEEP_INTERVAL seconds (at once after a worker-offline), so adapters whose users are
idle are re-homed too and late arrivals do not stay stranded; a node is dropped from
celeriac:nodes when a sweep leaves nothing homed or queued there.
While no node is alive, nothing moves: jobs wait in the home's direct queue, and the first
sweep after a node comes back moves them.
Limit: messages a dead node took from a SHARED queue (lora.create, scoring) and did not finish
are not moved by the front end: on RabbitMQ the broker requeues them at once; on Redis they go
back to that shared queue when the visibility timeout passes (kombu's and celeriac's
--visibility-timeout, 1 hour by default), and any live worker runs them then.
"""

import fnmatch
import json
import logging
import time
import uuid

from celery.utils.nodenames import worker_direct
from flask import current_app
from kombu import Producer

from . import cluster
from .store import store

log = logging.getLogger("flask_app")

NODES = "celeriac:nodes"
DIRECT_EXCHANGE = "C.dq2"
LOCK_TTL = 60       # seconds a sweep lock lives if its holder dies
LOCK_WAIT = 15.0    # seconds a request waits for another web worker's sweep
MOVE_MAX = 100000   # messages one sweep moves at most

_REHOME = """
local cur = redis.call('HGET', KEYS[1], 'node')
if cur ~= ARGV[1] then return cur end
redis.call('HSET', KEYS[1], 'node', ARGV[2])
redis.call('SREM', KEYS[2], ARGV[3])
redis.call('SADD', KEYS[3], ARGV[3])
return ARGV[2]
"""


def _adapter_key(adapter_id):
    return f"celeriac:adapter:{adapter_id}"


def _homes_key(node):
    return f"celeriac:homes:{node}"


def direct_queue(node):
    return f"{node}.dq2"


def routed_queue(task):
    """The shared queue task goes to (CELERIAC_TASK_ROUTES, else CELERIAC_QUEUE)."""
    for pattern, queue in current_app.config["CELERIAC_TASK_ROUTES"]:
        if fnmatch.fnmatchcase(task, pattern):
            return queue
    return current_app.config["CELERIAC_QUEUE"]


def shared_queues():
    """Every shared queue the app may send to."""
    names = {current_app.config["CELERIAC_QUEUE"]}
    names.update(q for _, q in current_app.config["CELERIAC_TASK_ROUTES"])
    return names


def _cluster():
    return cluster.get(current_app._get_current_object())


# ---- records ---------------------------------------------------------------------------------


def home_of(adapter_id):
    """(node, queue) recorded for the adapter; (None, None) when it has no home."""
    node, queue = store().hmget(_adapter_key(adapter_id), "node", "queue")
    return node, queue


def queue_home_of(pipe, adapter_id):
    """Queues home_of's read on pipe (a Redis pipeline): its reply is [node, queue]."""
    pipe.hmget(_adapter_key(adapter_id), "node", "queue")


def record_home(adapter_id, node, queue):
    """The adapter was created (or loaded) on node, from shared queue `queue`."""
    if not isinstance(node, str) or not node:
        return
    r = store()
    old = r.hget(_adapter_key(adapter_id), "node")
    pipe = r.pipeline(transaction=False)
    if old and old != node:
        pipe.srem(_homes_key(old), adapter_id)
    pipe.hset(_adapter_key(adapter_id), mapping={"node": node, "queue": queue})
    pipe.sadd(_homes_key(node), adapter_id)
    pipe.hsetnx(NODES, node, queue)
    pipe.execute()


def forget(adapter_id):
    """The adapter was deleted: it has no home any more."""
    r = store()
    node = r.hget(_adapter_key(adapter_id), "node")
    pipe = r.pipeline(transaction=False)
    pipe.delete(_adapter_key(adapter_id))
    if node:
        pipe.srem(_homes_key(node), adapter_id)
    pipe.execute()


def homed(node):
    """Ids of the adapters homed on node, sorted."""
    return sorted(store().smembers(_homes_key(node)))


def known_nodes():
    """{node: shared queue} of every node that is or was a home."""
    return store().hgetall(NODES)


# ---- where a task goes -----------------------------------------------------------------------


class Destination:
    """Where one task is sent: `queue` is the shared queue whose bound applies (backpressure),
    `node` the home node when it goes to a direct queue."""

    def __init__(self, queue, node=None):
        self.queue = queue
        self.node = node

    def send_options(self):
        if self.node is None:
            return {"queue": self.queue}
        # the queue alone, as the stock client sends to worker_direct(node): Celery publishes
        # it through the default exchange with the queue's name as routing key (one LPUSH on
        # Redis; naming exchange C.dq2 made kombu read the exchange's bindings first, one more
        # round trip per task), and declares the queue as the worker does
        return {"queue": worker_direct(self.node)}


def destination(task, spec, adapter_id, home=None):
    """The Destination of task (its task-table entry `spec`) for adapter_id (or None); home:
    the adapter's (node, queue) when the caller read it already (else it is read here)."""
    queue = routed_queue(task)
    if adapter_id is None or spec.get("adapter_effect") == "create":
        return Destination(queue)
    node, home_queue = home if home is not None else home_of(adapter_id)
    if node is None:
        return Destination(queue)
    if _cluster().judge(node) is False:
        sweep(node)
        node, home_queue = home_of(adapter_id)
        if node is None:
            return Destination(queue)
    return Destination(home_queue or queue, node)


def after_send(dest, adapter_id, home=None):
    """A send to a home raced a failover when the home moved meanwhile: sweep the old one.
    home: the adapter's (node, queue) read after the send (else it is read here)."""
    if dest.node is None or adapter_id is None:
        return
    node, _ = home if home is not None else home_of(adapter_id)
    if node is not None and node != dest.node:
        sweep(dest.node)


# ---- failover --------------------------------------------------------------------------------


def _pick(cl, queue, exclude):
    """A live node for an adapter of shared queue `queue`, or None when none is alive."""
    nodes = [n for n in cl.alive_nodes() if n not in exclude]
    if not nodes:
        return None
    serving = cl.queues_of(nodes)
    # a node that did not answer in time is not ruled out: only one that says it does not
    # consume the queue is
    prefer = [n for n in nodes if n not in serving or queue in serving[n]]
    pool = prefer or nodes
    pipe = store().pipeline(transaction=False)
    for n in pool:
        pipe.scard(_homes_key(n))
    counts = dict(zip(pool, pipe.execute()))
    info = cl.nodes()
    return min(pool, key=lambda n: (counts[n], info.get(n, {}).get("active") or 0, n))


def rehome(adapter_id, old, cl=None):
    """Moves adapter_id from dead node `old` to a live node (compare-and-set); returns its home
    now (None when no node is alive: it stays on `old`)."""
    cl = cl or _cluster()
    r = store()
    node, queue = home_of(adapter_id)
    if node != old:
        return node
    new = _pick(cl, queue or routed_queue("lora.create"), {old})
    if new is None:
        return None
    got = r.eval(_REHOME, 3, _adapter_key(adapter_id), _homes_key(old), _homes_key(new), old,
                 new, adapter_id)
    if got == new:
        r.hsetnx(NODES, new, queue or "")
        log.warning("adapter %s re-homed from %s (dead) to %s", adapter_id, old, new)
    return got


def _lock(node):
    """Takes the sweep lock of node; returns its token, or None after LOCK_WAIT."""
    r = store()
    token = uuid.uuid4().hex
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        if r.set(f"celeriac:lock:sweep:{node}", token, nx=True, ex=LOCK_TTL):
            return token
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def sweep(node):
    """Re-homes node's adapters and moves its direct queue's messages to their new homes
    (module comment); returns how many messages moved. Waits for another web worker's sweep
    of the same node instead of doubling it."""
    token = _lock(node)
    if token is None:
        log.warning("sweep of %s: another web worker holds its lock past %.0f s", node,
                    LOCK_WAIT)
        return 0
    try:
        return _sweep_locked(node)
    finally:
        store().eval(_UNLOCK, 1, f"celeriac:lock:sweep:{node}", token)


def _adapter_of(headers, body):
    """The adapter a task message names (the task table's adapter_param), or None."""
    spec = current_app.extensions["celeriac"]["tasks"].get(headers.get("task"), {})
    param = spec.get("adapter_param")
    try:
        kwargs = body[1] if isinstance(body, (list, tuple)) else {}
    except IndexError:
        kwargs = {}
    value = kwargs.get(param) if param and isinstance(kwargs, dict) else None
    return value if isinstance(value, str) else None


# KEYS[1] an in-flight list, KEYS[2] its queue key: what redis_wait.c's give_back does
_GIVE_BACK = """
local n = 0
while true do
  local m = redis.call('LPOP', KEYS[1])
  if not m then break end
  redis.call('RPUSH', KEYS[2], m)
  n = n + 1
end
return n
"""


def _restore_in_flight(client, queue):
    """Redis: moves what a celeriac worker's idle wait moved from queue (or its priority keys)
    into its in-flight list and did not take yet back to the head of queue (the worker's own
    lease would, about 12 s after its death). Returns how many."""
    prefix = len("_celeriac.wait.") + 36 + 1
    q = queue.encode()
    n = 0
    for uid in client.smembers("_celeriac.waits"):
        uid = uid.decode() if isinstance(uid, bytes) else uid
        for name in client.smembers(f"_celeriac.lists.{uid}"):
            name = name if isinstance(name, bytes) else name.encode()
            key = name[prefix:]
            if key != q and not key.startswith(q + b"\x06\x16"):
                continue
            # newest first to the head (RPOP side): the oldest ends up taken first
            n += client.eval(_GIVE_BACK, 2, name, key)
    return n


def _restore_unacked(channel, node):
    """Redis: puts the messages node took from its direct queue and never acked back at the
    head of that queue (what the visibility timeout would do an hour later), first in line,
    then behind them those its idle wait had moved and it had not taken yet (taken later, so
    newer: _restore_in_flight)."""
    client = channel.client
    queue = direct_queue(node)
    moved = _restore_in_flight(client, queue)
    back = []
    for tag, raw in client.hscan_iter("unacked"):
        try:
            envelope, exchange, routing_key = json.loads(raw)
        except (ValueError, TypeError):
            continue
        if isinstance(exchange, bytes):
            exchange = exchange.decode()
        if isinstance(routing_key, bytes):
            routing_key = routing_key.decode()
        if (exchange == DIRECT_EXCHANGE and routing_key == node) or (
                not exchange and routing_key == queue):
            back.append((tag, envelope))
    if not back:
        return moved
    # the oldest taken first: RPUSH puts each at the head (consumers RPOP), in taken order
    back.sort(key=lambda tb: client.zscore("unacked_index", tb[0]) or 0, reverse=True)
    pipe = client.pipeline()
    for tag, envelope in back:
        pipe.rpush(queue, json.dumps(envelope))
        pipe.zrem("unacked_index", tag)
        pipe.hdel("unacked", tag)
    pipe.execute()
    return moved + len(back)


def _sweep_locked(node):
    cl = _cluster()
    if not [n for n in cl.alive_nodes() if n != node]:
        return 0  # nowhere to go: the jobs wait where they are until a node is back
    for adapter_id in homed(node):
        rehome(adapter_id, node, cl)
    app = current_app.extensions["celeriac"]["celery"]
    moved = 0
    queue = direct_queue(node)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=2)
        channel = conn.channel()
        try:
            if conn.transport.driver_type == "redis":
                restored = _restore_unacked(channel, node)
                if restored:
                    log.warning("%d unacked message(s) of dead node %s put back in %s",
                                restored, node, queue)
            else:
                try:
                    channel.queue_declare(queue=queue, passive=True)
                except conn.channel_errors:
                    channel = conn.channel()  # NOT_FOUND closed it: nothing ever queued there
                    return _finish(node, 0)
            producer = Producer(channel)
            virtual = conn.transport.driver_type == "redis"
            while moved < MOVE_MAX:
                msg = channel.basic_get(queue=queue, no_ack=False)
                if msg is None:
                    break
                if not virtual:  # py-amqp hands back its own message type
                    msg = channel.message_to_python(msg)
                try:
                    body = msg.decode()
                except Exception:  # noqa: BLE001 - not ours to read: move it as it is
                    body = None
                adapter_id = _adapter_of(msg.headers or {}, body)
                target = home_of(adapter_id)[0] if adapter_id else None
                if target is None or target == node:
                    target = (rehome(adapter_id, node, cl) if adapter_id else None) or \
                        _pick(cl, routed_queue(msg.headers.get("task", "")), {node})
                if target is None or target == node:
                    msg.requeue()
                    log.warning("no live node to take %s's direct queue", node)
                    break
                have = msg.properties or {}
                props = {k: have[k] for k in ("correlation_id", "reply_to", "priority")
                         if have.get(k) is not None}
                producer.publish(msg.body, exchange=DIRECT_EXCHANGE, routing_key=target,
                                 headers=msg.headers, content_type=msg.content_type,
                                 content_encoding=msg.content_encoding,
                                 delivery_mode=have.get("delivery_mode") or 2,
                                 declare=[worker_direct(target)], retry=True, **props)
                msg.ack()
                moved += 1
        finally:
            try:
                channel.close()
            except Exception:  # noqa: BLE001
                pass
    if moved:
        log.warning("moved %d message(s) from dead node %s's %s", moved, node, queue)
    return _finish(node, moved)


def _finish(node, moved):
    """Forgets node when nothing is homed there any more."""
    r = store()
    if not r.scard(_homes_key(node)):
        r.hdel(NODES, node)
    return moved


def sweep_dead():
    """Sweeps every node on record that is dead now (the sweeper thread)."""
    cl = _cluster()
    for node in known_nodes():
        if cl.judge(node) is False:
            sweep(node)
