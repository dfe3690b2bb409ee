"""health.py -- GET /healthz: can the front end take work? (no key needed, not rate-limited)

200 {"status": "ok", "redis": "ok", "queue_length": N} when Redis answers PING and every queue
is under its bound (queue_length: the app's queue, a hint whether workers keep up);
200 {"status": "degraded", ..., "queues": {name: {"depth", "max"}}, "degraded": [why, ...]} when
a queue is at its CELERIAC_MAX_QUEUE_DEPTH (submitting routes answer 503 until it drains; the
app still serves polls and reads); 503 {"status": "unavailable", ...} when Redis or the broker
cannot be reached. Depths are read through the Celery app's broker connection (kombu), so this
works on Redis and AMQP brokers alike. It does not ask workers (a broadcast ping would wait).
"""

import redis
from flask import Blueprint, current_app, jsonify

from .. import backpressure
from ..store import store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        store().ping()
        queues, over = backpressure.status()
    except (redis.exceptions.RedisError, OSError, backpressure.BrokerError) as e:
        return jsonify({"status": "unavailable", "redis": f"error: {e}"}), 503
    body = {"status": "ok", "redis": "ok",
            "queue_length": queues[current_app.config["CELERIAC_QUEUE"]]["depth"]}
    if over:
        body["status"] = "degraded"
        body["queues"] = queues
        body["degraded"] = [f"queue {q!r} holds {s['depth']} tasks, at its bound of {s['max']}"
                            for q, s in queues.items() if s["max"] and s["depth"] >= s["max"]]
    return jsonify(body)
