"""health.py -- GET /healthz: is the broker reachable? (no key needed, not rate-limited)

200 {"status": "ok", "redis": "ok", "queue_length": N} when Redis answers PING (and the
broker's queue length -- a Redis list, or a RabbitMQ queue's message count -- a hint whether a
worker keeps up); 503 {"status": "unavailable", ...} otherwise. It does not ask workers (a broadcast ping would wait); see README.md.
"""

import kombu.exceptions
import redis
from flask import Blueprint, current_app, jsonify

from ..store import store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    try:
        r = store()
        r.ping()
        broker = current_app.config["CELERY_BROKER_URL"]
        queue_length = None
        if broker == current_app.config["CELERIAC_REDIS_URL"]:
            queue_length = r.llen(current_app.config["CELERIAC_QUEUE"])
        elif broker.startswith(("amqp://", "amqps://", "pyamqp://")):
            queue_length = _amqp_queue_length(current_app.config["CELERIAC_QUEUE"])
        else:
            with redis.Redis.from_url(broker, socket_timeout=3,
                                      socket_connect_timeout=2) as b:
                b.ping()
                queue_length = b.llen(current_app.config["CELERIAC_QUEUE"])
    except (redis.exceptions.RedisError, OSError, kombu.exceptions.OperationalError) as e:
        return jsonify({"status": "unavailable", "redis": f"error: {e}"}), 503
    return jsonify({"status": "ok", "redis": "ok", "queue_length": queue_length})


def _amqp_queue_length(queue):
    """Messages waiting in queue on a RabbitMQ broker (a passive declare), None when the queue
    does not exist yet; the connection errors of an unreachable broker propagate."""
    app = current_app.extensions["celeriac"]["celery"]
    with app.connection_for_read() as conn:
        conn.ensure_connection(max_retries=1, timeout=3)
        try:
            return conn.default_channel.queue_declare(queue, passive=True).message_count
        except conn.channel_errors:
            return None
