#!/usr/bin/python3
"""rabbitmq.py -- celeriac on RabbitMQ vs the stock Python worker and celery-node, same run, same broker.

Starts its own rabbitmq-server node (tests/integration/conftest.py's RabbitServer: private
node name, ports, data dir) and redis-server (the result backend of all three workers), then
for each worker in turn -- celeriac -c 2, `celery worker -P prefork -c 2` (pydiag), and
celery-node (npm; installed into the git-ignored bench/node/ when missing; skipped with the
reason printed when npm cannot install it) -- in a vhost of its own:

  (a) drain: N diag.noop tasks are queued while no worker runs; the worker is started and
      the clock runs from the first stored result to the last (DBSIZE, then EXISTS);
  (b) round trip: M sequential send_task('diag.add').get() through the Redis backend.

A fourth column, "bare", is the broker's ceiling: the same N tasks queued the same way and
drained by build/bench/amqp_ceiling, a consumer that only acks (no task, no result).

Then build/bench/amqp_designs (make bench builds it) compares the two ways of driving
librabbitmq from a libuv loop (see its opening comment). Prints tables; never fails on timing.
  bench/rabbitmq.py [--tasks 20000] [--latency-n 500] [--only celeriac|python|node|bare] [--no-designs]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))

from celery import Celery  # noqa: E402

import throughput as tp  # noqa: E402  (Redis, Worker, wait_until, result helpers)
from conftest import RabbitServer  # noqa: E402

NODE_DIR = tp.NODE_DIR
CEILING = os.path.join(REPO, "build", "bench", "amqp_ceiling")
ensure_celery_node = tp.ensure_celery_node  # installs celery-node into bench/node/ if missing


def start_worker(kind, broker, backend, args, workdir):
    env = dict(os.environ, CELERY_BROKER_URL=broker, CELERY_RESULT_BACKEND=backend)
    log = os.path.join(workdir, f"{kind}.log")
    if kind == "celeriac":
        cmd = [os.path.join(args.bin_dir, "celeriac"), "-b", broker, "--result-backend", backend,
               "-c", str(args.concurrency), "-l", "warning"] + args.celeriac_args.split()
        return tp.Worker(kind, cmd, env, REPO, log)
    if kind == "python":
        env["PYTHONPATH"] = tp.PYDIAG_DIR
        cmd = [tp.PYTHON, "-m", "celery", "-A", "pydiag", "worker", "-P", "prefork",
               "-c", str(args.concurrency), "-l", "warning", "-n", "py@%h",
               "--without-mingle", "--without-gossip"]
        return tp.Worker(kind, cmd, env, tp.PYDIAG_DIR, log)
    env["NODE_PATH"] = os.path.join(NODE_DIR, "node_modules")
    return tp.Worker(kind, ["node", os.path.join(HERE, "celery_node_worker.js"), broker, backend],
                     env, HERE, log)


def enqueue(broker, n):
    app = Celery("bench-sender", broker=broker, set_as_current=False)
    ids = []
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            ids.append(app.send_task("diag.noop", producer=producer).id)
    elapsed = time.perf_counter() - t0
    app.close()
    return ids, elapsed


def measure_bare(rabbit, args):
    """The broker's ceiling: build/bench/amqp_ceiling acks the same N queued tasks and does
    nothing else (no decoding, no task, no result); prefetch as celeriac's default window."""
    vhost = rabbit.vhost()
    out = {}
    _, out["enqueue_s"] = enqueue(rabbit.url(vhost), args.tasks)
    b0 = tp.group_cpu_seconds(rabbit.proc.pid)
    r = subprocess.run([CEILING, "127.0.0.1", str(rabbit.port), vhost, "celery", str(args.tasks),
                        str(args.bare_prefetch or args.concurrency * 4)], capture_output=True, text=True,
                       timeout=args.timeout)
    words = r.stdout.split()
    if r.returncode != 0 or len(words) != 3 or words[0] != "ceiling":
        out["error"] = f"amqp_ceiling: rc {r.returncode}: {r.stdout}{r.stderr}"
        return out
    out["tput"] = float(words[1])
    out["wall_s"] = args.tasks / out["tput"] if out["tput"] else None
    out["cpu_per_1k"] = float(words[2])
    out["broker_cpu_per_1k"] = (tp.group_cpu_seconds(rabbit.proc.pid) - b0) / args.tasks * 1000
    return out


def measure(kind, rabbit, rs, args, workdir):
    if kind == "bare":
        return measure_bare(rabbit, args)
    out = {}
    rs.client.flushdb()
    broker = rabbit.url(rabbit.vhost())
    ids, out["enqueue_s"] = enqueue(broker, args.tasks)
    keys = [f"celery-task-meta-{i}" for i in ids]
    w = start_worker(kind, broker, rs.url, args, workdir)
    try:
        if not tp.wait_until(lambda: rs.client.dbsize() > 0, 120, 0.005):
            raise RuntimeError(f"no result within 120 s of start: {w.tail()}")
        t0 = time.perf_counter()
        cpu0 = w.cpu_seconds()
        b0 = tp.group_cpu_seconds(rabbit.proc.pid)

        def done():
            return rs.client.dbsize() >= args.tasks and \
                tp.all_results_exist(rs.client, keys) == args.tasks
        if not tp.wait_until(done, args.timeout, 0.01):
            raise RuntimeError(f"only {tp.all_results_exist(rs.client, keys)}/{args.tasks} "
                               f"results after {args.timeout}s")
        out["wall_s"] = time.perf_counter() - t0
        out["tput"] = args.tasks / out["wall_s"]
        out["cpu_per_1k"] = (w.cpu_seconds() - cpu0) / args.tasks * 1000
        out["broker_cpu_per_1k"] = (tp.group_cpu_seconds(rabbit.proc.pid) - b0) / args.tasks * 1000
        app = Celery("bench-client", broker=broker, backend=rs.url, set_as_current=False)
        out.update(tp.add_round_trips(app, args.latency_n, 20))
        tp.close_client(app)
    except Exception as e:
        out["error"] = f"{type(e).__name__}: {e}"
    finally:
        w.stop()
    return out


ROWS = [("enqueue_s", "enqueue {n} tasks (s, client)", "{:.2f}"),
        ("wall_s", "drain {n} noop (s, first to last result)", "{:.2f}"),
        ("tput", "drain throughput (tasks/s)", "{:,.0f}"),
        ("cpu_per_1k", "worker CPU per 1000 tasks (s)", "{:.3f}"),
        ("broker_cpu_per_1k", "RabbitMQ CPU per 1000 tasks (s)", "{:.3f}"),
        ("p50_ms", "add round trip p50 (ms)", "{:.2f}"),
        ("p99_ms", "add round trip p99 (ms)", "{:.2f}")]


def print_table(args, results):
    kinds = list(results)
    print(f"\nRabbitMQ broker, Redis results; -c {args.concurrency} for celeriac and the stock "
          f"worker; {args.tasks} noop tasks, {args.latency_n} round trips, {os.cpu_count()} CPUs")
    header = f"{'':<44}" + "".join(f"{k:>12}" for k in kinds)
    print(header)
    print("-" * len(header))
    for key, label, spec in ROWS:
        line = f"{label.format(n=args.tasks):<44}"
        for k in kinds:
            v = results[k].get(key)
            line += f"{'n/a' if v is None else spec.format(v):>12}"
        print(line)
    mine = results.get("celeriac", {}).get("tput")
    ratios = [f"{mine / results[k]['tput']:.2f}x {name}" for k, name in
              (("python", "the stock worker"), ("node", "celery-node"))
              if mine and results.get(k, {}).get("tput")]
    if ratios:  # issue 14's target: >= 10x the stock worker and ahead of celery-node
        print(f"celeriac drains {', '.join(ratios)}")
    bare, py = results.get("bare", {}).get("tput"), results.get("python", {}).get("tput")
    if bare:
        print(f"a consumer that only acks drains {bare:,.0f}/s"
              + (f" = {bare / py:.2f}x the stock worker" if py else "")
              + (f"; celeriac reaches {mine / bare:.0%} of it" if mine else ""))
    for k in kinds:
        if "error" in results[k]:
            print(f"{k}: not measured completely: {results[k]['error']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=20000)
    ap.add_argument("--latency-n", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--only", choices=["celeriac", "python", "node", "bare"])
    ap.add_argument("--no-designs", action="store_true")
    ap.add_argument("--celeriac-args", default="", help="more celeriac options, e.g. "
                    "'--prefetch-multiplier 16'")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--bare-prefetch", type=int, default=0, help="the ceiling consumer's "
                    "prefetch (default: -c x 4, celeriac's and the stock worker's window)")
    ap.add_argument("--rabbit-conf", action="append", default=[], metavar="LINE",
                    help="a rabbitmq.conf line for the private node, e.g. "
                    "'classic_queue.default_version = 2' (repeatable)")
    ap.add_argument("--bin-dir", default=os.environ.get("CELERIAC_BIN_DIR",
                                                        os.path.join(REPO, "bin")))
    args = ap.parse_args()
    kinds = [args.only] if args.only else ["celeriac", "python", "node", "bare"]
    if "bare" in kinds and not os.access(CEILING, os.X_OK):
        print(f"bench: the broker's ceiling skipped: no {CEILING} (`make bench` builds it)",
              file=sys.stderr)
        kinds.remove("bare")
    if "node" in kinds:
        _, why = ensure_celery_node()
        if why:
            print(f"bench: celery-node skipped: {why}", file=sys.stderr)
            kinds.remove("node")
    workdir = tempfile.mkdtemp(prefix="celeriac-bench-amqp-")
    rabbit = RabbitServer(os.path.join(workdir, "rabbit"), conf=args.rabbit_conf)
    try:
        rabbit.start()
    except BaseException as e:  # pytest.skip when the package is missing
        print(f"bench: cannot start rabbitmq-server: {e}", file=sys.stderr)
        return 2
    rs = tp.Redis(workdir)
    results = {}
    try:
        for kind in kinds:
            print(f"bench: {kind}: enqueue {args.tasks}, drain, {args.latency_n} round trips...",
                  file=sys.stderr, flush=True)
            results[kind] = measure(kind, rabbit, rs, args, workdir)
        print_table(args, results)
        designs = os.path.join(REPO, "build", "bench", "amqp_designs")
        if not args.no_designs and os.access(designs, os.X_OK):
            ctl = (f"{RABBIT_ENV(rabbit)} /usr/lib/rabbitmq/bin/rabbitmqctl -q -n {rabbit.node} "
                   f"set_vm_memory_high_watermark")
            env = dict(os.environ, BLOCK_CMD=f"{ctl} 0 >/dev/null",
                       UNBLOCK_CMD=f"{ctl} 0.4 >/dev/null")
            print("\nlibrabbitmq under the loop: A = uv_poll + noblock reads on the loop thread, "
                  "B = a connection thread (worker/amqp_conn.c)")
            sys.stdout.flush()
            subprocess.run([designs, "127.0.0.1", str(rabbit.port), rabbit.vhost(),
                            str(args.tasks), str(args.latency_n)], env=env, timeout=600)
        elif not args.no_designs:
            print(f"\n(no {designs}: `make build/bench/amqp_designs` for the design comparison)")
    finally:
        rs.stop()
        rabbit.stop()
    print(f"\nlogs: {workdir}")
    return 0


def RABBIT_ENV(rabbit):
    """The environment rabbitmqctl needs for the private node, as a shell prefix."""
    keep = ("HOME", "ERL_EPMD_PORT", "RABBITMQ_NODENAME", "RABBITMQ_USE_LONGNAME")
    env = rabbit._env()
    return "env " + " ".join(f"{k}={env[k]}" for k in keep)


if __name__ == "__main__":
    sys.exit(main())
