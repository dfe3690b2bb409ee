"""config.py -- the front end's settings, read from the environment once per app.

Everything the app needs comes from here (never from module globals), so create_app(config)
can override any key in tests. Keys and their environment variables are listed in
flask_app/README.md. Parsing errors raise ValueError at start-up, not at the first request.
"""

import os

MiB = 1024 * 1024


def _int(env, name, default, lo=0):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None
    if value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return value


def parse_api_keys(spec):
    """'alice:KEY1,bob:KEY2' -> {"KEY1": "alice", "KEY2": "bob"}. Whitespace is ignored;
    a key may contain ':' after the first one (user names may not)."""
    keys = {}
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, key = item.partition(":")
        user, key = user.strip(), key.strip()
        if not sep or not user or not key:
            raise ValueError(f"CELERIAC_API_KEYS: expected user:key, got {item!r}")
        if key in keys and keys[key] != user:
            raise ValueError(f"CELERIAC_API_KEYS: one key given to two users ({keys[key]}, {user})")
        keys[key] = user
    return keys


def parse_task_routes(spec):
    """'model.score=score, lora.*=train' -> [("model.score", "score"), ("lora.*", "train")]:
    fnmatch patterns of task names and the queue each goes to, first match wins ('' -> [])."""
    routes = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        pattern, sep, queue = item.partition("=")
        pattern, queue = pattern.strip(), queue.strip()
        if not sep or not pattern or not queue:
            raise ValueError(f"CELERIAC_TASK_ROUTES: expected task-pattern=queue, got {item!r}")
        routes.append((pattern, queue))
    return routes


def from_env(env=None):
    """The settings dict for create_app(), from env (default os.environ)."""
    env = os.environ if env is None else env
    broker = env.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
    # On a Redis broker the results default to that Redis; on RabbitMQ (amqp://, amqps://,
    # pyamqp://) to CELERIAC_REDIS_URL's Redis: futures are polled by any web worker, which
    # rpc:// cannot serve (its replies go to the one client process that sent the task).
    own_redis = env.get("CELERIAC_REDIS_URL")
    if broker.startswith(("amqp://", "amqps://", "pyamqp://")):
        default_backend = own_redis or "redis://127.0.0.1:6379/0"
    else:
        default_backend = broker
    backend = env.get("CELERY_RESULT_BACKEND") or default_backend
    return {
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": backend,
        # Where the front end keeps its own small state (owners, futures, rate-limit counters).
        "CELERIAC_REDIS_URL": own_redis or (backend if backend.startswith(("redis://",
                                                                           "rediss://"))
                                            else "redis://127.0.0.1:6379/0"),
        "CELERIAC_API_KEYS": parse_api_keys(env.get("CELERIAC_API_KEYS", "")),
        # Keys with the admin role (GET /workers), "ops:KEY3"; they are API keys as well.
        "CELERIAC_ADMIN_KEYS": parse_api_keys(env.get("CELERIAC_ADMIN_KEYS", "")),
        # Task-submitting routes and the polling route have separate budgets: a client polls
        # /retrieve_future many times per task.
        "CELERIAC_RATE_LIMIT": env.get("CELERIAC_RATE_LIMIT", "120/minute"),
        "CELERIAC_POLL_RATE_LIMIT": env.get("CELERIAC_POLL_RATE_LIMIT", "1200/minute"),
        # /retrieve_future requests that may wait for their task at once, per Gunicorn worker
        # (waiting.py): its threads less one by default, so one thread always answers.
        "CELERIAC_MAX_WAITERS": _int(env, "CELERIAC_MAX_WAITERS",
                                     max(1, _int(env, "GUNICORN_THREADS", 4, 1) - 1), 1),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 8 * MiB, 1),
        "CELERIAC_MAX_PROMPTS": _int(env, "CELERIAC_MAX_PROMPTS", 32, 1),
        "CELERIAC_MAX_EXAMPLES": _int(env, "CELERIAC_MAX_EXAMPLES", 64, 1),
        "CELERIAC_MAX_TEXT_CHARS": _int(env, "CELERIAC_MAX_TEXT_CHARS", 32768, 1),
        "CELERIAC_MAX_TOKENS": _int(env, "CELERIAC_MAX_TOKENS", 4096, 1),
        "CELERIAC_MAX_SAMPLE_TOKENS": _int(env, "CELERIAC_MAX_SAMPLE_TOKENS", 1024, 1),
        "CELERIAC_MAX_RANK": _int(env, "CELERIAC_MAX_RANK", 256, 1),
        "CELERIAC_FUTURE_TTL": _int(env, "CELERIAC_FUTURE_TTL", 86400, 1),
        # Failed API keys per client address and minute before every request from it is a 429
        # (0: no throttling), and tasks one user may have queued or running at once (429 past
        # it; 0: no limit).
        "CELERIAC_AUTH_FAILURES": _int(env, "CELERIAC_AUTH_FAILURES", 100, 0),
        # CELERIAC_MAX_INFLIGHT_PER_USER is the same setting under issue 18's name; it wins.
        "CELERIAC_MAX_INFLIGHT": _int(env, "CELERIAC_MAX_INFLIGHT_PER_USER",
                                      _int(env, "CELERIAC_MAX_INFLIGHT", 256, 0), 0),
        "CELERIAC_QUEUE": env.get("CELERIAC_QUEUE") or "celery",
        # Many workers (placement.py, cluster.py): task name patterns -> queue ("model.score=
        # score,lora.*=train"; a task no pattern names goes to CELERIAC_QUEUE). Jobs for an
        # adapter go to its home node's direct queue whatever the routes say.
        "CELERIAC_TASK_ROUTES": parse_task_routes(env.get("CELERIAC_TASK_ROUTES", "")),
        # Listen to the workers' events (liveness for failover, GET /workers); "0": never, so
        # a home node is always taken to be alive.
        "CELERIAC_WORKER_EVENTS": env.get("CELERIAC_WORKER_EVENTS", "1") not in (
            "", "0", "no", "false"),
        # A node with no heartbeat for this many times its interval is dead (Flower: 3 x).
        "CELERIAC_HEARTBEAT_EXPIRY": _int(env, "CELERIAC_HEARTBEAT_EXPIRY", 3, 1),
        # Seconds between two sweeps of dead nodes' direct queues (per web worker).
        "CELERIAC_SWEEP_INTERVAL": _int(env, "CELERIAC_SWEEP_INTERVAL", 5, 1),
        # Seconds GET /workers trusts what it asked the workers (stats, active_queues).
        "CELERIAC_INSPECT_TTL": _int(env, "CELERIAC_INSPECT_TTL", 5, 0),
        # The worker's task table (request schemas are made from it): a file holding the output
        # of `celeriac --describe-tasks`, else that command run on this binary.
        "CELERIAC_TASKS_JSON": env.get("CELERIAC_TASKS_JSON") or None,
        "CELERIAC_WORKER_BIN": env.get("CELERIAC_WORKER_BIN") or None,
        # Lets the tests and operators reach the worker's diag.* tasks through the API.
        "CELERIAC_ENABLE_DIAG": env.get("CELERIAC_ENABLE_DIAG", "0") not in ("", "0", "no",
                                                                           "false"),
        # Backpressure (backpressure.py): the deepest a queue may be before submitting routes
        # answer 503 ("N" for every queue, "queue=N,..." per queue, "off"), how long a web
        # worker trusts a depth it read, and the Retry-After it gives.
        "CELERIAC_MAX_QUEUE_DEPTH": env.get("CELERIAC_MAX_QUEUE_DEPTH", "10000"),
        "CELERIAC_QUEUE_DEPTH_TTL_MS": _int(env, "CELERIAC_QUEUE_DEPTH_TTL_MS", 500),
        "CELERIAC_RETRY_AFTER": _int(env, "CELERIAC_RETRY_AFTER", 5, 1),
        "CELERIAC_RETRY_AFTER_MAX": _int(env, "CELERIAC_RETRY_AFTER_MAX", 60, 1),
        # GET /metrics (metrics.py); "0" turns the route off (requests are still counted).
        "CELERIAC_METRICS": env.get("CELERIAC_METRICS", "1") not in ("", "0", "no", "false"),
    }
