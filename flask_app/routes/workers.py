"""workers.py -- GET /workers: every worker node as the front end sees it (admin keys only).

  200 {"workers": [{"node", "alive", "last_heartbeat", "heartbeat_age_s", "device",
                    "executors": {"total", "busy", "free"}, "active", "processed", "loadavg",
                    "adapters": [ids homed there], "adapters_resident": N|null,
                    "queues": {name: depth}}, ...]}

Sources: the web worker's event State (cluster.py: alive, last heartbeat, the heartbeat's
active/processed/loadavg), `inspect().stats()` and `inspect().active_queues()` of the live
nodes (cached CELERIAC_INSPECT_TTL seconds; a node that does not answer within 1 s has nulls),
and the front end's own records (placement.py: the adapters homed on each node, the nodes
that were homes). executors come from stats' pool (max-concurrency, and the busy count in
writes.inqueues.active). device and adapters_resident are read from stats when the worker
reports them ("device", "adapters_resident" or "adapters") and are null otherwise. queues are
the node's direct queue and every queue it consumes, with the messages waiting in each (the
broker's count, backpressure.py). Nodes are listed by name; the dead ones the front end still
knows stay listed with alive false until their adapters are re-homed.
"""

import time

from flask import Blueprint, current_app, jsonify

from .. import backpressure, cluster, placement
from ..auth import require_admin

bp = Blueprint("workers", __name__)


def _executors(stats):
    pool = (stats or {}).get("pool") or {}
    total = pool.get("max-concurrency")
    busy = (((pool.get("writes") or {}).get("inqueues")) or {}).get("active")
    if not isinstance(total, int):
        return {"total": None, "busy": None, "free": None}
    busy = busy if isinstance(busy, int) else None
    return {"total": total, "busy": busy, "free": None if busy is None else max(0, total - busy)}


def _resident(stats):
    for key in ("adapters_resident", "adapters"):
        v = (stats or {}).get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, list):
            return len(v)
    return None


def _depth(queue):
    try:
        return backpressure._measure(queue)
    except backpressure.BrokerError:
        return None


@bp.get("/workers")
@require_admin()
def workers():
    cl = cluster.get(current_app._get_current_object())
    seen = cl.nodes()
    alive = sorted(n for n, info in seen.items() if info["alive"])
    stats = cl.inspect("stats", alive) if alive or not seen else {}
    queues = cl.queues_of(alive) if alive or not seen else {}
    names = sorted(set(seen) | set(placement.known_nodes()) | set(stats))
    now = time.time()
    out = []
    for node in names:
        info = seen.get(node, {})
        st = stats.get(node)
        last = info.get("last_heartbeat")
        qnames = [placement.direct_queue(node)]
        qnames += [q for q in queues.get(node, []) if q and q not in qnames]
        device = (st or {}).get("device")
        out.append({
            "node": node,
            "alive": bool(info.get("alive")),
            "last_heartbeat": last,
            "heartbeat_age_s": None if last is None else round(max(0.0, now - last), 3),
            "device": device if isinstance(device, str) else None,
            "executors": _executors(st),
            "active": info.get("active"),
            "processed": info.get("processed"),
            "loadavg": info.get("loadavg"),
            "adapters": placement.homed(node),
            "adapters_resident": _resident(st),
            "queues": {q: _depth(q) for q in qnames},
        })
    return jsonify({"workers": out})
