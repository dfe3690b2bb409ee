#!/usr/bin/python3
"""frontend.py -- the Flask front end's CPU per training step, per route and per part.

Issue 17's "4 users at once" row is bound by the CPU a step costs on two cores, and the
front end's Python is a large share of it. This bench starts redis-server and celeriac (as
bench/users.py does, without Gunicorn) and runs the front end in this process through Flask's
test client (no HTTP server: the Flask app's own work), one user doing --steps steps of the
example client's calls (POST /fwdbwd, /optim_step, then /retrieve_future with a wait for each,
Idempotency-Key on the submits). It prints the process's CPU per step, the CPU of each route
per request, and the thread CPU spent inside each part of a request (self time: the parts'
own CPU, Redis round trips included, nested parts excluded). The rest of a request's CPU is
Flask's and werkzeug's (the test client's environ building stands in for Gunicorn's parsing).

  /usr/bin/python3 bench/frontend.py [--steps 40] [--batch 4] [--bin-dir DIR]

Prints tables; never fails on timing.
"""

import argparse
import collections
import functools
import importlib
import os
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)
import users  # noqa: E402 (bench/users.py: the stack)

# (module, function): each is timed where the routes call it
PARTS = {
    "flask_app.auth": ["authenticate"],
    "flask_app.validation": ["task_kwargs", "validate_future", "json_body"],
    "flask_app.ownership": ["require_adapter", "future_of", "record_future"],
    "flask_app.idempotency": ["queue_claim", "settle_claim", "digest"],
    "flask_app.backpressure": ["check"],
    "flask_app.inflight": ["queue_reserve", "settle_reserve", "release"],
    "flask_app.celery_client": ["send", "task_meta"],
    "flask_app.placement": ["destination", "after_send"],
    "flask_app.waiting": ["final_or_timeout"],
}
# modules that imported a part by name: rebound to the timed one
USERS_OF = {
    "flask_app.routes.common": ["send", "require_adapter", "record_future"],
    "flask_app.routes.futures": ["task_meta", "future_of"],
}

spent = collections.defaultdict(lambda: [0, 0.0])  # part -> [calls, self thread-CPU s]
_stack = []


def timed(key, f):
    @functools.wraps(f)
    def run(*a, **k):
        t = time.thread_time()
        _stack.append(0.0)
        try:
            return f(*a, **k)
        finally:
            inner = _stack.pop()
            d = time.thread_time() - t
            spent[key][0] += 1
            spent[key][1] += d - inner
            if _stack:
                _stack[-1] += d
    return run


def install():
    wrapped = {}
    for mod, names in PARTS.items():
        m = importlib.import_module(mod)
        for n in names:
            w = timed(f"{mod.split('.')[-1]}.{n}", getattr(m, n))
            setattr(m, n, w)
            wrapped[n] = w
    for mod, names in USERS_OF.items():
        m = importlib.import_module(mod)
        for n in names:
            setattr(m, n, wrapped[n])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--bin-dir", default=os.environ.get("CELERIAC_BIN_DIR") or
                    os.path.join(REPO, "bin"))
    a = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="celeriac-frontend-")
    stack = users.Stack(workdir, 2, 1, 1, a.bin_dir, web=False)
    try:
        run(stack, a)
    finally:
        stack.stop()


def run(stack, a):
    key = stack.keys["user0"]
    os.environ.update({"CELERY_BROKER_URL": stack.url, "CELERIAC_API_KEYS": f"user0:{key}",
                       "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off"})
    for k in ("CELERY_RESULT_BACKEND", "CELERIAC_REDIS_URL"):
        os.environ.pop(k, None)
    install()
    from flask_app import create_app
    client = create_app().test_client()
    per_route = collections.defaultdict(list)

    def post(path, body):
        headers = {"Authorization": f"Bearer {key}"}
        if path != "/retrieve_future":
            headers["Idempotency-Key"] = uuid.uuid4().hex
        t = time.thread_time()
        r = client.post(path, json=body, headers=headers)
        per_route[path].append(time.thread_time() - t)
        if r.status_code >= 300:
            raise RuntimeError(f"{path}: HTTP {r.status_code}: {r.get_data(as_text=True)}")
        return r.status_code, r.get_json()

    def wait(fid):
        while True:
            status, body = post("/retrieve_future", {"future_id": fid, "wait": 10})
            if status == 200:
                return body["result"]

    def step(aid):
        f1 = post("/fwdbwd", {"adapter_id": aid,
                              "data": [{"text": users.TEXT}] * a.batch})[1]["future_id"]
        f2 = post("/optim_step", {"adapter_id": aid,
                                  "adam_params": {"learning_rate": 1e-3}})[1]["future_id"]
        wait(f1)
        wait(f2)

    aid = wait(post("/add_lora", {"rank": 8, "alpha": 16})[1]["future_id"])["adapter_id"]
    for _ in range(3):  # warm-up: connections made, the adapter loaded
        step(aid)
    per_route.clear()
    spent.clear()
    c0, w0 = time.process_time(), time.monotonic()
    for _ in range(a.steps):
        step(aid)
    cpu, wall = time.process_time() - c0, time.monotonic() - w0
    print(f"bench/frontend.py: {a.steps} steps, {a.batch} x {len(users.TEXT)}-char text per "
          f"fwdbwd, rank 8, one user, Flask test client (no HTTP server)")
    print(f"\nfront end CPU per step {cpu / a.steps * 1e3:.2f} ms "
          f"(wall per step {wall / a.steps * 1e3:.2f} ms)\n")
    print(f"{'route':20s} {'requests':>8s} {'CPU ms/request':>15s}")
    for path, v in per_route.items():
        print(f"{path:20s} {len(v):8d} {sum(v) / len(v) * 1e3:15.3f}")
    print(f"\n{'part (self time)':32s} {'calls/step':>10s} {'CPU ms/step':>12s} "
          f"{'us/call':>8s}")
    total = 0.0
    for k, (n, s) in sorted(spent.items(), key=lambda kv: -kv[1][1]):
        total += s
        print(f"{k:32s} {n / a.steps:10.1f} {s / a.steps * 1e3:12.3f} {s / n * 1e6:8.1f}")
    print(f"{'(Flask, werkzeug, the rest)':32s} {'':10s} "
          f"{(sum(sum(v) for v in per_route.values()) - total) / a.steps * 1e3:12.3f}")


if __name__ == "__main__":
    main()
