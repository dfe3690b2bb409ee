#!/usr/bin/python3
"""sweep.py -- an Optuna hyperparameter sweep whose trials train LoRA adapters on celeriac at once.

Each trial creates a LoRA adapter (rank, alpha and learning rate chosen by Optuna's TPE sampler,
the adapter's seed derived from --seed and the trial number), trains it for --steps steps on the
training text (lora.forward_backward + lora.optim_step, sent back to back: the worker runs one
adapter's jobs in order), and reports the held-out score as its objective: the mean per-token
log-probability that model.score gives the validation text under the adapter (higher is
better). --jobs trials run at once (Optuna's n_jobs threads); the worker spreads their adapters
over its executors, so trials really train side by side. While it runs, one line says how many
trials run, finished and failed, the best value so far, each running trial's step (and the
PROGRESS of its current forward_backward), and an ETA; on a terminal the line is rewritten in
place, otherwise a plain line is printed when something changes. A trial that fails (a worker
error, a refused request) is recorded as FAIL and the study goes on. Each trial's adapter is
kept: its checkpoint (PEFT files) under the worker's --state-dir, named in the summary; with
--api celery it is also exported with lora.save and the folder is listed.

At the end the same trials (same parameters, same seeds) run again one at a time, and the
summary table ends with both wall times and the speedup of running --jobs at once, measured in
the same run (--no-sequential skips that). --out FILE writes everything as JSON.

    make run                                         # in one terminal
    examples/sweep.py [--trials 12] [--jobs 2] [--steps 8] [--url http://127.0.0.1:8000]
    examples/sweep.py --api celery [--broker redis://127.0.0.1:6379/0]

Keys for --api http come from CELERIAC_API_KEYS (the first user's, or --user), else the
development keys that `make run` sets up. --train-file / --valid-file (one text per line) replace
the built-in texts. --fail-trial N makes trial N train an adapter that does not exist (a test of
failure isolation). Needs python3-optuna.
"""

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time

import optuna

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from celeriac_client import ApiError, Client, api_keys  # noqa: E402

TRAIN = [
    "Peel the celeriac thickly, cut it into cubes and roast it with butter and thyme.",
    "Celeriac keeps all winter in a cool cellar, wrapped in paper.",
    "Grate raw celeriac into a salad with apple, lemon juice and a little mustard.",
    "Simmer celeriac with potatoes, then mash them together with cream.",
    "The knobbly root of celeriac tastes of celery and parsley.",
    "Slice celeriac thinly and bake it in layers with cream and garlic.",
]
VALID = [
    "Roast the celeriac cubes with thyme and a little butter until golden.",
    "Mash the celeriac with cream and potatoes for a winter supper.",
    "Grate the celeriac and toss it with apple and lemon juice.",
]
NO_SUCH_ADAPTER = "lora_0000000000000000"
PLAIN_EVERY = 2.0  # seconds between plain progress lines that only report steps


# ---------------------------------------------------------------------------------------------
# Two ways to reach the worker: the HTTP API (Flask front end) or the Celery client directly.


class HttpApi:
    """Through the front end (examples/celeriac_client.py): futures polled over HTTP."""

    name = "http"

    def __init__(self, url, key, timeout):
        self.c = Client(url, key, timeout=30)
        self.timeout = timeout

    def check(self):
        status, body = self.c.healthz()
        if status != 200:
            raise RuntimeError(f"front end not healthy: {status} {body}")

    def create(self, rank, alpha, seed):
        return self.c.call("/add_lora", {"rank": rank, "alpha": alpha, "seed": seed},
                           timeout=self.timeout)["adapter_id"]

    def train_step(self, aid, data, lr, on_progress):
        f_fb = self.c.submit("/fwdbwd", {"adapter_id": aid, "data": data})
        f_opt = self.c.submit("/optim_step", {"adapter_id": aid,
                                              "adam_params": {"learning_rate": lr}})
        loss = self.c.wait(f_fb, self.timeout, on_progress)["loss"]
        self.c.wait(f_opt, self.timeout)
        return loss

    def score(self, text, aid):
        body = {"text": text}
        if aid is not None:
            body["adapter_id"] = aid
        return self.c.call("/score", body, timeout=self.timeout)

    def save(self, aid):
        return None  # lora.save is not on the HTTP API: the adapter's checkpoint is its copy

    def delete(self, aid):
        self.c.call(f"/adapters/{aid}", method="DELETE", timeout=self.timeout)


class CeleryApi:
    """Straight to the broker with the stock Celery client (send_task by name)."""

    name = "celery"

    def __init__(self, broker, backend, timeout):
        from celery import Celery
        self.app = Celery("sweep", broker=broker, backend=backend or broker,
                          set_as_current=False)
        self.timeout = timeout

    def check(self):
        self.app.connection_for_write().ensure_connection(max_retries=2)

    def _wait(self, r, on_progress=None):
        deadline = time.monotonic() + self.timeout
        while not r.ready():
            if on_progress and r.state == "PROGRESS" and isinstance(r.info, dict):
                on_progress(r.info)
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {r.id} not done after {self.timeout} s")
            time.sleep(0.02)
        return r.get(timeout=self.timeout)

    def _call(self, name, *args, **kwargs):
        return self._wait(self.app.send_task(name, args=args, kwargs=kwargs))

    def create(self, rank, alpha, seed):
        return self._call("lora.create", rank=rank, alpha=alpha, seed=seed)["adapter_id"]

    def train_step(self, aid, data, lr, on_progress):
        fb = self.app.send_task("lora.forward_backward", args=(aid, data))
        opt = self.app.send_task("lora.optim_step", args=(aid,),
                                 kwargs={"adam_params": {"learning_rate": lr}})
        loss = self._wait(fb, on_progress)["loss"]
        self._wait(opt)
        return loss

    def score(self, text, aid):
        return self._call("model.score", text, adapter_id=aid)

    def save(self, aid):
        return self._call("lora.save", aid)

    def delete(self, aid):
        self._call("lora.delete", aid)


# ---------------------------------------------------------------------------------------------
# The live line: trials running / finished / failed, best so far, per-trial step, ETA.


def fmt_secs(s):
    if s is None or not math.isfinite(s):
        return "?"
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Aggregates what every trial thread reports; prints one line (thread-safe)."""

    def __init__(self, label, total, jobs, steps, tty, out=sys.stdout):
        self.label, self.total, self.jobs, self.steps = label, total, jobs, steps
        self.tty, self.out = tty, out
        self.lock = threading.Lock()
        self.running = {}      # trial number -> {"t0", "step", "examples"}
        self.durations = []    # seconds of finished trials
        self.done = self.failed = 0
        self.best = None       # (value, trial number)
        self.t0 = time.monotonic()
        self.last_plain = None
        self.last_print = 0.0
        self.stop_event = threading.Event()
        self.ticker = None

    def start(self):
        # the ticker refreshes the line on a terminal, else prints step progress now and then
        self.ticker = threading.Thread(target=self._tick, daemon=True)
        self.ticker.start()

    def _tick(self):
        while not self.stop_event.wait(0.5):
            with self.lock:
                self._show(force=True)

    def trial_started(self, n):
        with self.lock:
            self.running[n] = {"t0": time.monotonic(), "step": 0, "examples": None}
            self._show()

    def trial_step(self, n, step):
        with self.lock:
            if n in self.running:
                self.running[n]["step"] = step
                self.running[n]["examples"] = None
            self._show()

    def trial_examples(self, n, info):
        with self.lock:
            if n in self.running and "done" in info and "total" in info:
                self.running[n]["examples"] = (info["done"], info["total"])
                self._show()

    def trial_finished(self, n, value=None, failed=False):
        with self.lock:
            r = self.running.pop(n, None)
            if r:
                self.durations.append(time.monotonic() - r["t0"])
            if failed:
                self.failed += 1
            else:
                self.done += 1
                if value is not None and (self.best is None or value > self.best[0]):
                    self.best = (value, n)
            self._show()

    def eta(self):
        """Seconds left: mean trial time x the trials' remaining share, over the jobs."""
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
        else:  # none finished yet: from how far the running ones got in how long
            now = time.monotonic()
            guesses = [(now - r["t0"]) * self.steps / r["step"]
                       for r in self.running.values() if r["step"] > 0]
            if not guesses:
                return None
            mean = sum(guesses) / len(guesses)
        left = self.total - self.done - self.failed - len(self.running)
        work = left * mean
        for r in self.running.values():
            frac = r["step"] / self.steps if self.steps else 0
            work += max(0.0, mean * (1 - frac))
        return work / max(1, min(self.jobs, left + len(self.running)))

    def line(self):
        parts = [f"{self.label}: {self.done + self.failed}/{self.total} finished "
                 f"({self.failed} failed), {len(self.running)} running"]
        if self.running:
            def one(n, r):
                ex = f" ex {r['examples'][0]}/{r['examples'][1]}" if r["examples"] else ""
                return f"#{n} step {r['step']}/{self.steps}{ex}"
            parts.append(", ".join(one(n, r) for n, r in sorted(self.running.items())))
        if self.best:
            parts.append(f"best {self.best[0]:.4f} (#{self.best[1]})")
        parts.append(f"elapsed {fmt_secs(time.monotonic() - self.t0)} eta {fmt_secs(self.eta())}")
        return " | ".join(parts)

    def _show(self, force=False):
        text = self.line()
        if self.tty:
            width = shutil.get_terminal_size((120, 24)).columns - 1
            self.out.write("\r" + text[:width] + "\x1b[K")  # rewrite the line in place
            self.out.flush()
        else:
            # a plain line when a trial starts or ends (or the best changes), and for step
            # progress at most every PLAIN_EVERY seconds
            key = (self.done, self.failed, tuple(sorted(self.running)), self.best)
            now = time.monotonic()
            if key != self.last_plain or (force and now - self.last_print >= PLAIN_EVERY):
                self.last_plain, self.last_print = key, now
                print(text, file=self.out, flush=True)

    def finish(self):
        self.stop_event.set()
        if self.ticker:
            self.ticker.join()
        with self.lock:
            if self.tty:
                self._show(force=True)
                self.out.write("\n")
                self.out.flush()
            else:
                print(self.line(), file=self.out, flush=True)


# ---------------------------------------------------------------------------------------------
# The study


def make_objective(api, args, progress, made):
    data = [{"text": t} for t in args.train]

    def objective(trial):
        seed = args.seed * 1000 + trial.number  # per-trial seed: same trial, same adapter
        lr = trial.suggest_float("lr", args.lr_min, args.lr_max, log=True)
        rank = trial.suggest_categorical("rank", [2, 4, 8])
        alpha = rank * trial.suggest_categorical("alpha_per_rank", [1, 2, 4])
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("alpha", alpha)
        progress.trial_started(trial.number)
        t0 = time.monotonic()
        try:
            aid = api.create(rank, alpha, seed)
            made.append(aid)
            trial.set_user_attr("adapter_id", aid)
            target = NO_SUCH_ADAPTER if trial.number in args.fail_trial else aid
            loss = None
            for step in range(1, args.steps + 1):
                loss = api.train_step(target, data, lr,
                                      lambda info: progress.trial_examples(trial.number, info))
                progress.trial_step(trial.number, step)
            trial.set_user_attr("train_loss", loss)
            scores = [api.score(text, aid)["mean_logprob"] for text in args.valid]
            value = sum(scores) / len(scores)
            path = api.save(aid)
            if path:
                trial.set_user_attr("adapter_path", path)
            trial.set_user_attr("seconds", time.monotonic() - t0)
        except BaseException as e:
            trial.set_user_attr("seconds", time.monotonic() - t0)
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            progress.trial_finished(trial.number, failed=True)
            raise
        progress.trial_finished(trial.number, value)
        return value

    return objective


def run_study(api, args, label, tty, params=None):
    """Runs the trials (Optuna picks the parameters, or they are params, in order); returns
    (study, wall seconds, adapters made)."""
    jobs = args.jobs if params is None else 1
    sampler = optuna.samplers.TPESampler(seed=args.seed, n_startup_trials=min(4, args.trials))
    study = optuna.create_study(direction="maximize", sampler=sampler,
                                study_name=f"celeriac-{label}")
    for p in params or []:
        study.enqueue_trial(p)
    progress = Progress(label, args.trials, jobs, args.steps, tty)
    made = []
    t0 = time.monotonic()
    progress.start()
    study.optimize(make_objective(api, args, progress, made), n_trials=args.trials, n_jobs=jobs,
                   catch=(Exception,))
    wall = time.monotonic() - t0
    progress.finish()
    return study, wall, made


def trial_row(t, base):
    a = t.user_attrs
    value = t.value if t.state == optuna.trial.TrialState.COMPLETE else None
    return {
        "number": t.number, "state": t.state.name, "params": dict(t.params),
        "lr": t.params.get("lr"), "rank": t.params.get("rank"), "alpha": a.get("alpha"),
        "seed": a.get("seed"), "value": value,
        "gain": None if value is None else value - base,
        "train_loss": a.get("train_loss"), "seconds": a.get("seconds"),
        "adapter_id": a.get("adapter_id"), "adapter_path": a.get("adapter_path"),
        "error": a.get("error"),
    }


def print_table(rows, base, best):
    print("\n" + "=" * 100)
    print(f"{'trial':>5}  {'state':<8} {'lr':>9} {'rank':>4} {'alpha':>5} {'seed':>6} "
          f"{'score':>9} {'vs base':>8} {'secs':>6}  adapter")
    print("-" * 100)
    for r in rows:
        score = f"{r['value']:.4f}" if r["value"] is not None else "-"
        gain = f"{r['gain']:+.4f}" if r["gain"] is not None else "-"
        lr = f"{r['lr']:.2e}" if r["lr"] is not None else "-"
        secs = f"{r['seconds']:.1f}" if r["seconds"] is not None else "-"
        where = r["adapter_path"] or r["adapter_id"] or "-"
        if r["error"]:
            where = f"{where}  ({r['error'][:60]})"
        mark = "*" if best is not None and r["number"] == best["number"] else " "
        print(f"{r['number']:>4}{mark}  {r['state']:<8} {lr:>9} {r['rank'] or '-':>4} "
              f"{r['alpha'] or '-':>5} {r['seed'] if r['seed'] is not None else '-':>6} "
              f"{score:>9} {gain:>8} {secs:>6}  {where}")
    print("-" * 100)
    print(f"base model (no adapter): score {base:.4f}")
    if best is not None:
        print(f"best trial #{best['number']}: score {best['value']:.4f} ({best['gain']:+.4f} vs "
              f"base), lr {best['lr']:.3e}, rank {best['rank']}, alpha {best['alpha']}, "
              f"adapter {best['adapter_path'] or best['adapter_id']}")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        sys.exit(f"{path}: no text")
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api", choices=("http", "celery"), default="http")
    ap.add_argument("--url", default=os.environ.get("CELERIAC_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--user", default=None, help="whose key (CELERIAC_API_KEYS) to use")
    ap.add_argument("--broker", default=os.environ.get("CELERY_BROKER_URL",
                                                       "redis://127.0.0.1:6379/0"))
    ap.add_argument("--backend", default=os.environ.get("CELERY_RESULT_BACKEND"))
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=2, help="trials at once")
    ap.add_argument("--steps", type=int, default=8, help="optimizer steps per trial")
    ap.add_argument("--lr-min", type=float, default=2e-3)
    ap.add_argument("--lr-max", type=float, default=5e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-file")
    ap.add_argument("--valid-file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per task")
    ap.add_argument("--no-sequential", action="store_true",
                    help="skip the one-at-a-time rerun that measures the speedup")
    ap.add_argument("--fail-trial", type=int, action="append", default=[],
                    help="make trial N fail (train an adapter that does not exist)")
    ap.add_argument("--out", help="write the results as JSON to this file")
    args = ap.parse_args()
    if args.trials < 1 or args.jobs < 1 or args.steps < 1:
        sys.exit("--trials, --jobs and --steps must be >= 1")
    args.train = read_lines(args.train_file) if args.train_file else TRAIN
    args.valid = read_lines(args.valid_file) if args.valid_file else VALID
    tty = sys.stdout.isatty()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    if args.api == "http":
        keys = api_keys()
        user = args.user or next(iter(keys))
        if user not in keys:
            sys.exit(f"no API key for {user!r} in CELERIAC_API_KEYS")
        api = HttpApi(args.url, keys[user], args.timeout)
        where = f"{args.url} as {user}"
    else:
        api = CeleryApi(args.broker, args.backend, args.timeout)
        where = args.broker
    try:
        api.check()
    except Exception as e:  # noqa: BLE001 -- any way of not reaching it ends here
        sys.exit(f"cannot reach celeriac through {args.api} ({where}): {e}")

    print(f"sweep: {args.trials} trials, {args.jobs} at once, {args.steps} steps each, "
          f"through {args.api} ({where}); objective: mean log-prob of {len(args.valid)} "
          f"held-out texts", flush=True)
    base_scores = [api.score(t, None)["mean_logprob"] for t in args.valid]
    base = sum(base_scores) / len(base_scores)
    print(f"base model score {base:.4f}", flush=True)

    study, wall, made = run_study(api, args, "concurrent", tty)
    rows = [trial_row(t, base) for t in study.trials]
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    result = {"api": args.api, "trials": rows, "base": base, "best": best, "jobs": args.jobs,
              "steps": args.steps, "concurrent_seconds": wall, "sequential_seconds": None,
              "speedup": None}

    if not args.no_sequential:
        params = [t.params for t in study.trials]
        seq, seq_wall, seq_made = run_study(api, args, "sequential", tty, params)
        result["sequential_seconds"] = seq_wall
        result["speedup"] = seq_wall / wall if wall > 0 else None
        result["sequential_values"] = [t.value for t in seq.trials]
        for aid in seq_made:  # only a timing run: its adapters go
            try:
                api.delete(aid)
            except (ApiError, OSError, Exception):  # noqa: BLE001 -- best effort
                pass

    print_table(rows, base, best)
    print(f"concurrent: {len(rows)} trials, {args.jobs} at once: {wall:.1f} s")
    if result["speedup"] is not None:
        print(f"sequential: the same trials one at a time: {result['sequential_seconds']:.1f} s")
        print(f"speedup:    {result['speedup']:.2f}x with {args.jobs} trials at once")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results written to {args.out}")
    if best is None:
        sys.exit("no trial completed")


if __name__ == "__main__":
    main()
