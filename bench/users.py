#!/usr/bin/python3
"""users.py -- N users training their own LoRA adapters at once through HTTP.

Starts its own stack on free loopback ports (redis-server without persistence, celeriac with
--concurrency executors and a temporary state dir, Gunicorn with flask_app), unless --url
points at a running one (then CELERIAC_API_KEYS must name at least max(N) users). For N = 1, 2,
4 (--users), N users each create an adapter and run --steps training steps (one fwdbwd of
--batch copies of a sentence + one optim_step, both futures polled through /retrieve_future):

  concurrent   wall time of the N users at once (threads)
  sequential   wall time of the same N sessions one after another
  speedup      sequential / concurrent
(after an untimed warm-up of 2 steps by all max(N) users at once: the model loaded in the
executors, every user's connections made).

Then the cost of a step along the path, for one user:
  engine       `bin/celeriac-lm train --threads 1` for the same steps, batch and sentence
               (in-process, no worker; one thread, as each executor computes), per step:
               from its own step lines, the first step and the load excluded (median of 3,
               before and after the celery row, the two averaged)
  celery       the same step through the worker with the Celery client directly
               (send_task + AsyncResult.get), no HTTP
  http         the same step through Gunicorn (N = 1 run above)
and the overhead per task (2 tasks per step) of celery and http against the engine.

Then where the celery row's step goes inside the executor (and the celery row's cost per task
beyond the step's own compute as the executor measured it, which moves less between runs than
the engine row): the worker runs with
CELERIAC_PHASE_TIMES=1, so each optim_step and forward_backward logs its phases (ms, averaged
over the celery run): adapter lookup, gradient hold, the AdamW step, the checkpoint (files
written, sync, record switch, prune), and the forward_backward's building of its examples
(prepare), its passes through the model (pass: the same work as the engine's step less the
AdamW step) and its gradient-holder marker. And the legs of a celery row step (medians): the
client's send of the forward_backward, from then until the worker stored its result
(date_done), until it stored the optim_step's, until the client has that.

Prints tables; never fails on timing. Run with /usr/bin/python3:
  bench/users.py [--steps 10] [--users 1,2,4] [--concurrency 4] [--batch 4] [--url URL]
                 [--worker-args '--batch-max-tasks 4']  (more celeriac options)
                 [--long-poll 10]  (0: the client polls /retrieve_future every 20 ms instead)
"""

import argparse
import datetime
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "examples"))
from celeriac_client import Client, api_keys  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout, interval=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return None


class Stack:
    """redis-server + celeriac + gunicorn in a temporary directory (worker_args: more celeriac
    options; web_env: more Gunicorn/front-end environment, e.g. GUNICORN_MAX_REQUESTS; web=False:
    no Gunicorn)."""

    def __init__(self, workdir, concurrency, web_workers, users, bindir, worker_args=(),
                 web_env=None, web=True):
        self.workdir = workdir
        self.procs = []
        self.redis_port = free_port()
        self.url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.keys = {f"user{i}": f"bench-key-{i}" for i in range(users)}
        self._start("redis", ["redis-server", "--port", str(self.redis_port), "--bind",
                              "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", workdir])
        import redis
        r = redis.Redis(port=self.redis_port)
        if not wait_until(lambda: self._ping(r), 10):
            raise RuntimeError("redis-server did not start")
        self.worker = self._start("celeriac", [
            os.path.join(bindir, "celeriac"), "-b", self.url, "-c", str(concurrency),
            "-l", "info", "--state-dir", os.path.join(workdir, "state"), *worker_args],
            {"CELERIAC_PHASE_TIMES": "1"})
        if not wait_until(lambda: b"ready." in self._log("celeriac"), 60):
            raise RuntimeError("celeriac did not get ready:\n" + self._log("celeriac")[-2000:]
                               .decode("utf-8", "replace"))
        if web:
            self._start_web(web_workers, web_env)

    def _start_web(self, web_workers, web_env):
        self.http_port = free_port()
        env = {"GUNICORN_BIND": f"127.0.0.1:{self.http_port}",
               "GUNICORN_WORKERS": str(web_workers), "GUNICORN_ACCESS_LOG": "",
               "GUNICORN_LOG_LEVEL": "warning", "GUNICORN_GRACEFUL_TIMEOUT": "5",
               "CELERY_BROKER_URL": self.url,
               "CELERIAC_API_KEYS": ",".join(f"{u}:{k}" for u, k in self.keys.items()),
               "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off",
               **(web_env or {})}
        self._start("gunicorn", [shutil.which("gunicorn") or "/usr/bin/gunicorn", "-c",
                                 "gunicorn.conf.py", "flask_app:create_app()"], env)
        self.base = f"http://127.0.0.1:{self.http_port}"
        c = Client(self.base, "x")
        if not wait_until(lambda: self._healthy(c), 30, 0.1):
            raise RuntimeError("gunicorn did not answer:\n" +
                               self._log("gunicorn")[-2000:].decode("utf-8", "replace"))

    @staticmethod
    def _ping(r):
        try:
            return r.ping()
        except Exception:
            return False

    @staticmethod
    def _healthy(c):
        try:
            return c.healthz()[0] == 200
        except OSError:
            return False

    def _log(self, name):
        with open(os.path.join(self.workdir, f"{name}.log"), "rb") as f:
            return f.read()

    def _start(self, name, cmd, extra_env=None):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CELERY_", "CELERIAC_", "GUNICORN_"))}
        env.update(extra_env or {})
        log = open(os.path.join(self.workdir, f"{name}.log"), "wb")
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p, log))
        return p

    def stop(self):
        for name, p, log in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    pass
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            p.wait(10)
            log.close()


def session(client, steps, batch, lr=1e-3):
    """One user's adapter: create, `steps` steps, delete. Returns seconds for the steps."""
    aid = client.call("/add_lora", {"rank": 8, "alpha": 16})["adapter_id"]
    t0 = time.monotonic()
    for _ in range(steps):
        f1 = client.submit("/fwdbwd", {"adapter_id": aid, "data": [{"text": TEXT}] * batch})
        f2 = client.submit("/optim_step", {"adapter_id": aid,
                                           "adam_params": {"learning_rate": lr}})
        client.wait(f1)
        client.wait(f2)
    secs = time.monotonic() - t0
    client.call(f"/adapters/{aid}", method="DELETE")
    return secs


def run_concurrent(clients, steps, batch):
    errors = []

    def one(c):
        try:
            session(c, steps, batch)
        except Exception as e:  # noqa: BLE001 - reported
            errors.append(repr(e))

    t0 = time.monotonic()
    threads = [threading.Thread(target=one, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    return time.monotonic() - t0


def run_sequential(clients, steps, batch):
    t0 = time.monotonic()
    for c in clients:
        session(c, steps, batch)
    return time.monotonic() - t0


ENGINE_STEP_RE = re.compile(r"^step (\d+)/\d+ .* tok/s (\d+)", re.M)
ENGINE_BT_RE = re.compile(r"B=(\d+) T=(\d+)")


def engine_step_seconds(bindir, steps, batch, workdir, runs=3):
    """Per-step time of `celeriac-lm train` (load and first step excluded), or (None, reason):
    from its own step lines (each prints the tokens/s since its first step began), the time
    from the end of step 1 to the end of the last over steps - 1, median of `runs` runs.
    (Whole runs timed from outside, N steps less 1 step, carried the jitter of the load and
    the save into it: 9.3-16.0 ms a step in six runs a few seconds apart.)"""
    lm = os.path.join(bindir, "celeriac-lm")
    if not os.access(lm, os.X_OK):
        return None, "bin/celeriac-lm not built"
    data = os.path.join(workdir, "text.txt")
    with open(data, "w") as f:
        f.write(TEXT)
    n = max(steps, 2)
    cmd = [lm, "train", "--data", data, "--lora", "8", "--alpha", "16", "--steps", str(n),
           "--lr", "1e-3", "--batch", str(batch), "--threads", "1",
           "--out", os.path.join(workdir, "lm")]
    per_step = []
    try:
        for _ in range(runs):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise RuntimeError(p.stderr[-500:])
            bt = ENGINE_BT_RE.search(p.stderr)
            rate = {int(k): int(r) for k, r in ENGINE_STEP_RE.findall(p.stdout)}
            if not bt or 1 not in rate or n not in rate or min(rate[1], rate[n]) <= 0:
                raise RuntimeError(f"unexpected output: {p.stdout[-300:]!r}")
            tokens = int(bt.group(1)) * int(bt.group(2))
            # elapsed seconds at the end of step k: k * tokens / (tokens/s since step 1 began)
            per_step.append((n * tokens / rate[n] - tokens / rate[1]) / (n - 1))
    except Exception as e:  # noqa: BLE001 - shown in the table
        return None, f"celeriac-lm train failed: {e}"
    return statistics.median(per_step), None


def stamp(d):
    """A result's date_done (UTC, datetime or ISO text) as a time.time() value."""
    if not isinstance(d, datetime.datetime):
        d = datetime.datetime.fromisoformat(str(d))
    if d.tzinfo is None:
        d = d.replace(tzinfo=datetime.timezone.utc)
    return d.timestamp()


def timeline(marks):
    """Medians (ms) of a step's legs from (sent, fwdbwd sent, fwdbwd done, optim done, got)."""
    legs = {"send fwdbwd (client)": [], "sent -> fwdbwd stored": [],
            "-> optim_step stored": [], "-> client has it": []}
    for w0, w1, d1, d2, w2 in marks:
        d1, d2 = stamp(d1), stamp(d2)
        for k, v in zip(legs, (w1 - w0, d1 - w0, d2 - d1, w2 - d2)):
            legs[k].append(v * 1e3)
    return {k: statistics.median(v) for k, v in legs.items() if v}


def celery_step_seconds(broker, steps, batch):
    """Per-step time through the worker with the Celery client directly (no HTTP)."""
    from celery import Celery
    app = Celery("bench", broker=broker, backend=broker, set_as_current=False)
    try:
        def call(name, **kw):
            return app.send_task(name, kwargs=kw).get(timeout=600)

        aid = call("lora.create", rank=8, alpha=16, owner="bench")["adapter_id"]
        t0 = time.monotonic()
        marks = []
        for _ in range(steps):
            w0 = time.time()
            r1 = app.send_task("lora.forward_backward",
                               kwargs={"adapter_id": aid, "data": [{"text": TEXT}] * batch})
            w1 = time.time()
            r2 = app.send_task("lora.optim_step",
                               kwargs={"adapter_id": aid,
                                       "adam_params": {"learning_rate": 1e-3}})
            r1.get(timeout=600)
            r2.get(timeout=600)
            marks.append((w0, w1, r1.date_done, r2.date_done, time.time()))
        secs = (time.monotonic() - t0) / steps
        call("lora.delete", adapter_id=aid)
        return secs, None, timeline(marks)
    except Exception as e:  # noqa: BLE001 - shown in the table
        return None, f"celery client failed: {e!r}", None
    finally:
        # Drop the result pubsub now, or AsyncResult.__del__ retries it at exit against a
        # Redis that is gone (as tests/integration/conftest.py does).
        try:
            consumer = app.backend.result_consumer
            if consumer is not None and consumer._pubsub is not None:
                consumer._pubsub.close()
                consumer._pubsub = None
        except Exception:  # noqa: BLE001
            pass
        app.close()


PHASE_RE = re.compile(rb"Phase times adapter \S+ (optim_step|checkpoint|forward_backward)\b[^:]*:"
                      rb"((?: \w+=[0-9.]+)+)")


def phase_times(log):
    """{phase: (mean ms, count)} from the executors' "Phase times" lines in log (bytes)."""
    sums, counts = {}, {}
    for m in PHASE_RE.finditer(log):
        for kv in m.group(2).split():
            k, v = kv.split(b"=")
            k = k.decode()
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: (sums[k] / counts[k], counts[k]) for k in sums}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4, help="copies of the sentence per fwdbwd")
    ap.add_argument("--users", default="1,2,4")
    ap.add_argument("--concurrency", type=int, default=4, help="celeriac executors")
    ap.add_argument("--worker-args", default="",
                    help="more celeriac options, e.g. '--batch-max-tasks 4'")
    ap.add_argument("--web-workers", type=int, default=4, help="gunicorn workers")
    ap.add_argument("--url", help="use a running front end instead of starting one")
    ap.add_argument("--long-poll", type=float, default=10,
                    help="seconds /retrieve_future may wait for a task (0: poll every 20 ms)")
    ap.add_argument("--bin-dir", default=os.environ.get("CELERIAC_BIN_DIR",
                                                        os.path.join(REPO, "bin")))
    args = ap.parse_args()
    ns = [int(x) for x in args.users.split(",") if x.strip()]
    workdir = tempfile.mkdtemp(prefix="celeriac-bench-users-")
    stack = None
    try:
        if args.url:
            base, keys = args.url, api_keys()
        else:
            if shutil.which("redis-server") is None:
                sys.exit("bench: redis-server is not installed (make deps)")
            stack = Stack(workdir, args.concurrency, args.web_workers, max(ns), args.bin_dir,
                          shlex.split(args.worker_args))
            base, keys = stack.base, stack.keys
        users = sorted(keys)
        if len(users) < max(ns):
            sys.exit(f"bench: need {max(ns)} API keys, have {len(users)}")
        clients = [Client(base, keys[u], long_poll=args.long_poll) for u in users]
        print(f"bench/users.py: {args.steps} steps per user, {args.batch} x "
              f"{len(TEXT)}-char text per fwdbwd, rank 8; "
              + f"futures waited for with wait={args.long_poll:g} s; "
              + (f"celeriac -c {args.concurrency} {args.worker_args}".rstrip()
                 + f", gunicorn {args.web_workers} workers"
                 if stack else f"server {base}"), flush=True)
        # warm-up, untimed: executors load the model, and every user's first requests
        # (Gunicorn workers' first Redis and broker connections) are not in the first
        # timed phase, which would otherwise be the concurrent one
        run_concurrent(clients[:max(ns)], 2, args.batch)
        rows = []
        for n in ns:
            conc = run_concurrent(clients[:n], args.steps, args.batch)
            seq = run_sequential(clients[:n], args.steps, args.batch)
            rows.append((n, conc, seq))
            print(f"  N={n}: concurrent {conc:.2f} s, sequential {seq:.2f} s", flush=True)

        print()
        print(f"{'users':>5}  {'concurrent s':>12}  {'sequential s':>12}  {'speedup':>7}  "
              f"{'steps/s':>7}")
        for n, conc, seq in rows:
            print(f"{n:>5}  {conc:>12.2f}  {seq:>12.2f}  {seq / conc:>6.2f}x  "
                  f"{n * args.steps / conc:>7.1f}")

        # Per-step cost along the path, one user, warm.
        http_step = session(clients[0], args.steps, args.batch) / args.steps
        engine, engine_why = engine_step_seconds(args.bin_dir, args.steps, args.batch, workdir)
        if stack:
            mark = len(stack._log("celeriac"))
            celery, celery_why, legs = celery_step_seconds(stack.url, args.steps, args.batch)
            log = stack._log("celeriac")[mark:]
            # the engine once more after the celery row, the two averaged: this machine's
            # speed drifts by a third over seconds, so the row is timed on both sides
            after, _ = engine_step_seconds(args.bin_dir, args.steps, args.batch, workdir)
            if engine is not None and after is not None:
                engine = (engine + after) / 2
            phases = phase_times(log)
            # how the checkpoints went (adapters_file.c): logged steps, and of those the
            # ones whose gradient the executor had written ahead after the forward_backward
            kinds = {k: log.count(f"({k}".encode()) for k in ("logged", "new file")}
            kinds["written ahead"] = log.count(b"gradient written ahead)")
        else:
            celery, celery_why, legs = None, "not measured with --url", None
        print()
        print(f"{'path':<8}  {'ms/step':>8}  {'overhead ms/task vs engine':>27}")
        print(f"{'engine':<8}  " + (f"{engine * 1e3:>8.2f}  {'-':>27}" if engine is not None
                                    else f"{'n/a':>8}  {engine_why}"))
        for name, v, why in (("celery", celery, celery_why), ("http", http_step, None)):
            if v is None:
                print(f"{name:<8}  {'n/a':>8}  {why}")
            elif engine is None:
                print(f"{name:<8}  {v * 1e3:>8.2f}  {'n/a':>27}")
            else:
                print(f"{name:<8}  {v * 1e3:>8.2f}  {(v - engine) / 2 * 1e3:>27.2f}")
        print("\n(a step is one fwdbwd + one optim_step: 2 tasks; the engine row is "
              "celeriac-lm train --threads 1, in one process)")
        if stack and phases:
            print("\nexecutor phases of the celery row, mean ms per task (n):")
            order = [("optim_step", ("lookup", "hold", "adamw", "commit")),
                     ("  checkpoint", ("ckpt_write", "ckpt_sync", "ckpt_switch", "ckpt_prune")),
                     ("forward_backward", ("prepare", "pass", "marker"))]
            for label, keys in order:
                print(f"  {label:<18}" + "  ".join(
                    f"{k} {phases[k][0]:.3f} ({phases[k][1]})" for k in keys if k in phases))
            print("  checkpoints: " + ", ".join(f"{k} {v}" for k, v in kinds.items()))
            compute = sum(phases[k][0] for k in ("prepare", "pass", "adamw") if k in phases)
            if celery is not None and all(k in phases for k in ("prepare", "pass", "adamw")):
                # the same step's own compute, measured in the executor: steadier than the
                # engine row, which is another process run at another moment
                print(f"  celery row less its own compute (prepare + pass + adamw "
                      f"{compute:.2f} ms): {(celery * 1e3 - compute) / 2:.2f} ms/task")
        if legs:
            print("\na celery row step's legs, median ms (both tasks sent, then waited for; the "
                  "worker's date_done):\n  " + "  ".join(f"{k} {v:.2f}" for k, v in legs.items()))
    finally:
        if stack:
            stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
