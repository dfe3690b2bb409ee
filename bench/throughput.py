#!/usr/bin/python3
"""throughput.py -- celeriac vs the stock Python Celery worker and celery-node: throughput, latency.

Starts its own redis-server on a free loopback port, then for each worker in turn (celeriac
with -c 2, `celery worker -P prefork -c 2` running tests/integration/pydiag.py, and
celery-node (npm; installed into the git-ignored bench/node/ when missing, skipped with the
reason printed when npm cannot install it)), on the same Redis with the database flushed in
between:

  (a) throughput: N diag.noop tasks are enqueued while no worker runs, the worker is started,
      and the clock runs from its "ready." log line until every result key exists. Also
      reported: N / (max(date_done) - min(date_done)) from the stored results, which leaves
      out start-up and polling, and the worker's CPU seconds (all its processes) per 1000 tasks.
  (b) latency: after a warm-up, M sequential send_task('diag.add').get() round trips;
      p50/p99/mean in milliseconds.
  (c) worker turnaround: M round trips with a bare redis-py client (LPUSH the envelope,
      wait for the result's PUBLISH), interleaved with M round trips of the client's own
      floor: the same client LPUSHes to a list no worker reads and PUBLISHes the result
      itself, so the floor is all the client and Redis cost without a worker.

Prints a table with the workers and the ratios celeriac/python and celeriac/node. Never fails on timing; a
worker that cannot be measured shows "n/a" and the reason. Run with /usr/bin/python3:
  bench/throughput.py [--tasks 20000] [--latency-n 1000] [--only celeriac|python|node]
"""

import argparse
import base64
import json
import uuid
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime

import redis
from celery import Celery

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NODE_DIR = os.path.join(HERE, "node")
PYDIAG_DIR = os.path.join(REPO, "tests", "integration")
PYTHON = "/usr/bin/python3"
READY_RE = re.compile(rb"\bready\.")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return None


class Redis:
    def __init__(self, workdir):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--daemonize", "no",
             "--logfile", os.path.join(workdir, "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(host="127.0.0.1", port=self.port, db=0, socket_timeout=60)

        def pings():
            try:
                return self.client.ping()
            except redis.exceptions.ConnectionError:
                return False
        if not wait_until(pings, 10):
            raise RuntimeError("redis-server did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def group_cpu_seconds(pgid):
    """utime+stime of every live process in process group pgid."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 13 and int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class Worker:
    """A worker process in its own process group, logging to a file."""

    def __init__(self, kind, cmd, env, cwd, log_path):
        self.kind = kind
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout):
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}: "
                                   f"{self.tail()}")
            with open(self.log_path, "rb") as f:
                return READY_RE.search(f.read())
        if not wait_until(ready, timeout, 0.005):
            raise RuntimeError(f"{self.kind} not ready after {timeout}s: {self.tail()}")

    def tail(self, n=1500):
        with open(self.log_path, "rb") as f:
            return f.read()[-n:].decode("utf-8", "replace")

    def cpu_seconds(self):
        """utime+stime of every live process in the worker's process group."""
        return group_cpu_seconds(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self.log.close()


def ensure_celery_node():
    """Path of the celery-node package, installing it into bench/node/ if needed; or a reason."""
    pkg = os.path.join(NODE_DIR, "node_modules", "celery-node")
    if os.path.isdir(pkg):
        return pkg, None
    if shutil.which("npm") is None or shutil.which("node") is None:
        return None, "node/npm are not installed"
    os.makedirs(NODE_DIR, exist_ok=True)
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "celery-node"], cwd=NODE_DIR,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0 or not os.path.isdir(pkg):
        return None, f"npm install celery-node failed: {(r.stderr or r.stdout)[-300:]}"
    return pkg, None


def start_worker(kind, url, args, workdir):
    env = dict(os.environ, CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url)
    log_path = os.path.join(workdir, f"{kind}.log")
    if kind == "celeriac":
        cmd = [os.path.join(args.bin_dir, "celeriac"), "-b", url, "-c", str(args.concurrency),
               "-l", args.loglevel] + args.celeriac_args.split()
        return Worker(kind, cmd, env, REPO, log_path)
    if kind == "node":
        env["NODE_PATH"] = os.path.join(NODE_DIR, "node_modules")
        return Worker(kind, ["node", os.path.join(HERE, "celery_node_worker.js"), url, url],
                      env, HERE, log_path)
    env["PYTHONPATH"] = PYDIAG_DIR
    cmd = [PYTHON, "-m", "celery", "-A", "pydiag", "worker", "-P", "prefork",
           "-c", str(args.concurrency), "-l", args.loglevel, "-n", "py@%h",
           "--without-mingle", "--without-gossip"]
    return Worker(kind, cmd, env, PYDIAG_DIR, log_path)


def enqueue(url, name, n):
    """Sends n tasks with send_task through one producer; no result subscriptions."""
    app = Celery("bench-sender", broker=url, set_as_current=False)
    ids = []
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            ids.append(app.send_task(name, producer=producer).id)
    elapsed = time.perf_counter() - t0
    app.close()
    return ids, elapsed


def all_results_exist(client, keys, chunk=5000):
    return sum(client.exists(*keys[i:i + chunk]) for i in range(0, len(keys), chunk))


def date_done_spread(client, keys, chunk=2000):
    stamps = []
    for i in range(0, len(keys), chunk):
        for raw in client.mget(keys[i:i + chunk]):
            if raw is None:
                continue
            meta = json.loads(raw)
            if meta.get("date_done"):
                stamps.append(datetime.fromisoformat(meta["date_done"].replace("Z", "+00:00")
                                                     .replace("+00:00", "")))
    if len(stamps) < 2:
        return None, stamps
    return (max(stamps) - min(stamps)).total_seconds(), stamps


def add_round_trips(app, n, warmup):
    """n sequential diag.add round trips through the Celery client, after warmup ones:
    {"p50_ms", "p99_ms", "mean_ms"}. Raises on a wrong result."""
    for i in range(warmup):
        app.send_task("diag.add", args=[i, i]).get(timeout=10)
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        v = app.send_task("diag.add", args=[i, 1]).get(timeout=10)
        lat.append(time.perf_counter() - t0)
        if v != i + 1:
            raise RuntimeError(f"wrong result {v!r} for add({i}, 1)")
    lat.sort()
    return {"p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "mean_ms": 1000 * statistics.fmean(lat)}


def close_client(app):
    """Closes a client app, dropping its result pubsub first (else AsyncResult.__del__ would
    try to UNSUBSCRIBE at interpreter exit, retrying against a server that is gone)."""
    try:
        consumer = app.backend.result_consumer
        if consumer._pubsub is not None:
            consumer._pubsub.close()
            consumer._pubsub = None
    except Exception:
        pass
    app.close()


def measure(kind, rs, args, workdir):
    """Runs (a) and (b) for one worker kind; returns a dict of figures (or 'error')."""
    out = {}
    rs.client.flushdb()
    ids, out["enqueue_s"] = enqueue(rs.url, "diag.noop", args.tasks)
    keys = [f"celery-task-meta-{i}" for i in ids]
    w = start_worker(kind, rs.url, args, workdir)
    try:
        if args.loglevel.lower() in ("info", "debug"):
            w.wait_ready(60)
            t_ready = time.perf_counter()
        else:
            # No INFO "ready." line from the Python worker: start the clock at the
            # first stored result instead (start-up excluded either way).
            if not wait_until(lambda: rs.client.dbsize() > 0, 60, 0.005):
                raise RuntimeError("no result within 60 s of start")
            t_ready = time.perf_counter()
        cpu0 = w.cpu_seconds()

        # DBSIZE is O(1): cheap to poll; EXISTS over every key only once it looks complete.
        def done():
            if rs.client.dbsize() < args.tasks:
                return False
            return all_results_exist(rs.client, keys) == args.tasks
        if not wait_until(done, args.timeout, 0.01):
            have = all_results_exist(rs.client, keys)
            raise RuntimeError(f"only {have}/{args.tasks} results after {args.timeout}s")
        wall = time.perf_counter() - t_ready
        out["cpu_per_1k"] = (w.cpu_seconds() - cpu0) / args.tasks * 1000
        out["wall_s"] = wall
        out["tput_wall"] = args.tasks / wall
        try:
            spread, stamps = date_done_spread(rs.client, keys)
        except ValueError:  # a worker that writes date_done another way
            spread = None
        out["tput_spread"] = args.tasks / spread if spread else None
        out["spread_s"] = spread

        # (b) latency, on the warm worker.
        app = Celery("bench-client", broker=rs.url, backend=rs.url, set_as_current=False)
        app.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 2}}
        out.update(add_round_trips(app, args.latency_n, args.warmup))
        close_client(app)

        # (c) the worker's own turnaround: a lean redis-py client LPUSHes a
        # kombu envelope (the bytes send_task would push) and waits for the
        # result's PUBLISH. This leaves out the Celery client's own overhead,
        # which dominates (b) for a fast worker. Interleaved with it, the
        # client's floor: the same steps with the client publishing itself.
        raw, floor = raw_turnaround(rs.client, args.latency_n, args.warmup)
        out["raw_p50_ms"] = 1000 * raw[len(raw) // 2]
        out["raw_p99_ms"] = 1000 * raw[min(len(raw) - 1, int(len(raw) * 0.99))]
        out["floor_p50_ms"] = 1000 * floor[len(floor) // 2]
        out["floor_p99_ms"] = 1000 * floor[min(len(floor) - 1, int(len(floor) * 0.99))]
        out["over_floor_ms"] = out["raw_p50_ms"] - out["floor_p50_ms"]
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        w.stop()
    return out


def kombu_envelope(tid, name, args):
    """The JSON envelope send_task(name, args) LPUSHes (protocol 2, JSON body)."""
    body = base64.b64encode(json.dumps([args, {}, {"callbacks": None, "errbacks": None,
                                                   "chain": None, "chord": None}]).encode())
    return json.dumps({
        "body": body.decode(), "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": name, "id": tid, "shadow": None, "eta": None,
                    "expires": None, "group": None, "group_index": None, "retries": 0,
                    "timelimit": [None, None], "root_id": tid, "parent_id": None,
                    "argsrepr": repr(tuple(args)), "kwargsrepr": "{}", "origin": "bench@host",
                    "ignore_result": False},
        "properties": {"correlation_id": tid, "reply_to": "bench", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": "celery"},
                       "priority": 0, "body_encoding": "base64",
                       "delivery_tag": str(uuid.uuid4())}})


def raw_turnaround(client, n, warmup=0):
    """n sequential diag.add round trips with a bare Redis client, each followed by one
    round trip of the client's floor (the same LPUSH, to a list no worker reads, then the
    client PUBLISHes a result of the same size on the task's channel itself and waits for
    it as it waits for the worker's). Returns (worker, floor) sorted seconds."""
    ps = client.pubsub()
    lat, floor = [], []
    meta = json.dumps({"status": "SUCCESS", "result": 5, "traceback": None, "children": [],
                       "date_done": "2026-12-05T12:00:00.000000", "task_id": str(uuid.uuid4())})

    def wait_message(t0):
        deadline = t0 + 10
        while time.perf_counter() < deadline:
            m = ps.get_message(timeout=1)
            if m and m["type"] == "message":
                return time.perf_counter() - t0
        raise RuntimeError("no result within 10 s (raw turnaround)")

    for i in range(warmup + n):
        for own in (False, True):
            tid = str(uuid.uuid4())
            env = kombu_envelope(tid, "diag.add", [2, 3])
            channel = f"celery-task-meta-{tid}"
            ps.subscribe(channel)
            ps.get_message(timeout=1)
            t0 = time.perf_counter()
            if own:
                client.lpush("bench-floor", env)
                client.publish(channel, meta)
            else:
                client.lpush("celery", env)
            dt = wait_message(t0)
            if i >= warmup:
                (floor if own else lat).append(dt)
            ps.unsubscribe()
            ps.get_message(timeout=1)
    client.delete("bench-floor")
    ps.close()
    lat.sort()
    floor.sort()
    return lat, floor


ROWS = [
    ("enqueue_s", "enqueue {n} tasks (s, client)", "{:.2f}"),
    ("wall_s", "drain {n} noop (s, from ready)", "{:.2f}"),
    ("tput_wall", "throughput, wall (tasks/s)", "{:,.0f}"),
    ("tput_spread", "throughput, date_done spread (tasks/s)", "{:,.0f}"),
    ("cpu_per_1k", "worker CPU per 1000 tasks (s)", "{:.3f}"),
    ("p50_ms", "latency p50 (ms, add round trip)", "{:.2f}"),
    ("p99_ms", "latency p99 (ms)", "{:.2f}"),
    ("mean_ms", "latency mean (ms)", "{:.2f}"),
    ("raw_p50_ms", "worker turnaround p50 (ms, bare client)", "{:.2f}"),
    ("raw_p99_ms", "worker turnaround p99 (ms, bare client)", "{:.2f}"),
    ("floor_p50_ms", "client floor p50 (ms, no worker)", "{:.3f}"),
    ("floor_p99_ms", "client floor p99 (ms)", "{:.3f}"),
    ("over_floor_ms", "turnaround p50 - floor p50 (ms)", "{:.3f}"),
]


def fmt(results, key, spec):
    v = results.get(key)
    return "n/a" if v is None else spec.format(v)


def print_table(args, results):
    kinds = list(results)
    width = 42
    ratios = [(k, f"c/{k[:4]}") for k in ("python", "node") if "celeriac" in kinds and k in kinds]
    print()
    print(f"celeriac vs stock Celery {celery_version()} worker and celery-node, "
          f"-c {args.concurrency}, {args.tasks} noop tasks, {args.latency_n} latency samples, "
          f"{os.cpu_count()} CPUs, -l {args.loglevel}")
    header = f"{'':<{width}}" + "".join(f"{k:>12}" for k in kinds)
    header += "".join(f"{'ratio ' + name:>13}" for _, name in ratios)
    print(header)
    print("-" * len(header))
    for key, label, spec in ROWS:
        line = f"{label.format(n=args.tasks):<{width}}"
        line += "".join(f"{fmt(results[k], key, spec):>12}" for k in kinds)
        for other, _ in ratios:
            c, p = results["celeriac"].get(key), results[other].get(key)
            line += f"{c / p:>13.2f}" if c and p and key != "over_floor_ms" else f"{'n/a':>13}"
        print(line)
    for k in kinds:
        if "error" in results[k]:
            print(f"\n{k}: not measured completely: {results[k]['error']}")
    print("\nratios: above 1 is better for throughput, below 1 is better for time, CPU and "
          "latency. celery-node acks each message as it takes it and stores results without "
          "waiting; celeriac acks after the result is stored.")


def celery_version():
    import celery
    return celery.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=20000, help="noop tasks for throughput")
    ap.add_argument("--latency-n", type=int, default=1000, help="sequential add round trips")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--loglevel", default="warning",
                    help="both workers' -l (default warning, both workers' default: no "
                         "per-task log lines); below info the wall clock starts at the first "
                         "stored result")
    ap.add_argument("--only", choices=["celeriac", "python", "node"])
    ap.add_argument("--skip", choices=["celeriac", "python", "node"], action="append",
                    default=[], help="leave a worker out (repeatable)")
    ap.add_argument("--celeriac-args", default="", help="more celeriac options, e.g. "
                    "'--prefetch-multiplier 16'")
    ap.add_argument("--timeout", type=float, default=600, help="bound on each drain (s)")
    ap.add_argument("--bin-dir", default=os.environ.get("CELERIAC_BIN_DIR",
                                                        os.path.join(REPO, "bin")))
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        print("bench: redis-server is not installed (make deps)", file=sys.stderr)
        return 2
    kinds = [args.only] if args.only else ["celeriac", "python", "node"]
    kinds = [k for k in kinds if k not in args.skip]
    if "node" in kinds:
        _, why = ensure_celery_node()
        if why:
            print(f"bench: celery-node skipped: {why}", file=sys.stderr)
            kinds.remove("node")
    if "celeriac" in kinds and not os.access(os.path.join(args.bin_dir, "celeriac"), os.X_OK):
        print(f"bench: no celeriac binary in {args.bin_dir} (run make); measuring python only",
              file=sys.stderr)
        kinds.remove("celeriac")
    workdir = tempfile.mkdtemp(prefix="celeriac-bench-")
    rs = Redis(workdir)
    results = {}
    try:
        for kind in kinds:
            print(f"bench: {kind}: enqueue {args.tasks}, drain, {args.latency_n} round trips...",
                  file=sys.stderr, flush=True)
            results[kind] = measure(kind, rs, args, workdir)
    finally:
        rs.stop()
    print_table(args, results)
    print(f"\nlogs: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
