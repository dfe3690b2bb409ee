"""metrics.py -- GET /metrics: the front end's Prometheus metrics, counted across web workers.

prometheus_client (python3-prometheus-client) in its multiprocess mode when the environment
names PROMETHEUS_MULTIPROC_DIR (gunicorn.conf.py sets it before any worker starts and marks
dead workers' files), so a scrape of any Gunicorn worker sees the counts of all of them; without
it (app.test_client(), a single process) the process's own registry. Per request, by the URL
rule (not the raw path, so clients cannot make new series) and method:

  celeriac_http_requests_total{method, route, status}
  celeriac_http_request_duration_seconds{method, route}       histogram
  celeriac_http_refusals_total{route, status, reason}         429s and 503s, and why

and read from shared state at scrape time (the same for every web worker):

  celeriac_futures_outstanding        futures handed out whose final state no client has read
                                      (ownership.py's open set; dropped after CELERIAC_FUTURE_TTL)
  celeriac_queue_length{queue_name}   messages waiting in the broker (backpressure.py, kombu)
  celeriac_queue_length_limit{queue_name}   CELERIAC_MAX_QUEUE_DEPTH for it (0: none)

Names follow Prometheus conventions and the worker's own (worker/metrics.c); queue_name is
celery-exporter's label. No key is needed (like /healthz); the app listens on loopback by
default. CELERIAC_METRICS=0 turns the route off.
"""

import os
import time

import redis
from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest)
from prometheus_client.core import GaugeMetricFamily

from . import backpressure
from .ownership import open_futures

bp = Blueprint("metrics", __name__)

# Seconds: from a cheap poll to a slow broker.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

REQUESTS = Counter("celeriac_http_requests", "HTTP requests answered, by route, method and status.",
                   ["method", "route", "status"])
DURATION = Histogram("celeriac_http_request_duration_seconds",
                     "Seconds from a request's arrival to its response, by route and method.",
                     ["method", "route"], buckets=BUCKETS)
REFUSALS = Counter("celeriac_http_refusals",
                   "Requests refused with 429 or 503, by why: rate_limited (per-key rate limit), "
                   "queue_full (backpressure), unavailable (broker or Redis down), "
                   "inflight_quota (a user's unfinished tasks), auth_failures, other.",
                   ["route", "status", "reason"])

UNMATCHED = "<unmatched>"
# error type of a 429/503 body -> reason label (issue 12's quotas answer the last two)
REASONS = {"RateLimited": "rate_limited", "QueueFull": "queue_full",
           "ServiceUnavailable": "unavailable", "TooManyTasks": "inflight_quota",
           "TooManyFailedLogins": "auth_failures"}


def multiprocess_dir():
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.environ.get("prometheus_multiproc_dir")


def _route():
    rule = request.url_rule
    return rule.rule if rule is not None else UNMATCHED


def _before():
    g.celeriac_t0 = time.perf_counter()


def _after(response):
    t0 = getattr(g, "celeriac_t0", None)
    if t0 is None:
        return response
    route, method, status = _route(), request.method, response.status_code
    REQUESTS.labels(method, route, str(status)).inc()
    DURATION.labels(method, route).observe(time.perf_counter() - t0)
    if status in (429, 503):
        REFUSALS.labels(route, str(status), getattr(g, "celeriac_refusal", None) or
                        _reason(response)).inc()
    return response


def _reason(response):
    """Why a 429/503 was given, from the error type the handlers put in the body."""
    try:
        kind = (response.get_json(silent=True) or {}).get("error", {}).get("type")
    except (AttributeError, TypeError, ValueError):
        kind = None
    return REASONS.get(kind, "other")


class _SharedState:
    """Gauges read at scrape time from what every web worker shares (Redis, the broker)."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        with self.app.app_context():
            futures = GaugeMetricFamily(
                "celeriac_futures_outstanding",
                "Futures handed out whose final state no client has read yet.")
            try:
                futures.add_metric([], open_futures())
                yield futures
            except (redis.exceptions.RedisError, OSError):
                pass  # Redis down: the family is absent rather than wrong
            length = GaugeMetricFamily("celeriac_queue_length",
                                       "Messages waiting in a broker queue.",
                                       labels=["queue_name"])
            limit = GaugeMetricFamily("celeriac_queue_length_limit",
                                      "CELERIAC_MAX_QUEUE_DEPTH of a queue (0: no bound).",
                                      labels=["queue_name"])
            for queue in backpressure.queues():
                try:
                    depth = backpressure.depth(queue, fresh=True)
                except backpressure.BrokerError:
                    continue
                length.add_metric([queue], depth)
                limit.add_metric([queue], backpressure.bound(queue))
            yield length
            yield limit


@bp.get("/metrics")
def metrics():
    ext = current_app.extensions["celeriac"]
    if multiprocess_dir():
        from prometheus_client import multiprocess
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        page = generate_latest(registry)
    else:
        from prometheus_client import REGISTRY
        page = generate_latest(REGISTRY)
    page += generate_latest(ext["metrics_registry"])
    return Response(page, mimetype=None, headers={"Content-Type": CONTENT_TYPE_LATEST})


def init_app(app):
    """Counts every request of app; registers /metrics unless CELERIAC_METRICS is off."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SharedState(app))
    app.extensions["celeriac"]["metrics_registry"] = registry
    app.before_request(_before)
    app.after_request(_after)
    if app.config.get("CELERIAC_METRICS", True):
        app.register_blueprint(bp)
