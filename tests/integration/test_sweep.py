"""test_sweep.py -- examples/sweep.py, the Optuna sweep over celeriac, run as a user runs it.

Against a real worker (2 executors, --state-dir) and the front end under Gunicorn: 6 trials on
the bundled tiny model, 2 at once, one of them made to fail. The study must go on past the
failure, finish with a best trial whose held-out score beats the untrained base model, keep each
trial's adapter (the front end still knows it, at the step the trial reached), give each trial
its own seed (the sequential rerun reproduces every value exactly), spread the trials over both
executors, print its live progress with an ETA and a summary with the measured speedup. A short
run through the Celery client instead of HTTP exports each adapter with lora.save.
"""

import json
import os
import subprocess

from conftest import REPO, free_port, scaled
from http_fixtures import KEYS_ENV
from metrics_fixtures import samples, scrape, total
from test_http import gunicorn  # noqa: F401 (fixture: Gunicorn on the test's database)

SWEEP = os.path.join(REPO, "examples", "sweep.py")
TRIALS, JOBS, STEPS, FAILING = 6, 2, 5, 2


def run_sweep(args, env=None, timeout=240):
    full = dict(os.environ, CELERIAC_API_KEYS=KEYS_ENV, **(env or {}))
    p = subprocess.run(["/usr/bin/python3", SWEEP] + args, cwd=REPO, env=full, text=True,
                       capture_output=True, timeout=scaled(timeout))
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return p


def test_sweep_over_http(worker, gunicorn, tmp_path):  # noqa: F811
    mport = free_port()
    w = worker("-c", "2", "--state-dir", str(tmp_path / "state"), "--metrics-port", str(mport))
    api = gunicorn()
    out = tmp_path / "sweep.json"
    p = run_sweep(["--url", api.base, "--trials", str(TRIALS), "--jobs", str(JOBS),
                   "--steps", str(STEPS), "--seed", "3", "--fail-trial", str(FAILING),
                   "--out", str(out)])
    res = json.loads(out.read_text())
    rows = {r["number"]: r for r in res["trials"]}
    assert sorted(rows) == list(range(TRIALS))
    # one trial failed, the study went on
    assert rows[FAILING]["state"] == "FAIL" and "NotFound" in rows[FAILING]["error"]
    done = [r for r in rows.values() if r["state"] == "COMPLETE"]
    assert len(done) == TRIALS - 1
    # per-trial seeds; the same trials one at a time give exactly the same scores
    assert [rows[n]["seed"] for n in range(TRIALS)] == [3000 + n for n in range(TRIALS)]
    assert res["sequential_values"] == [rows[n]["value"] for n in range(TRIALS)]
    # the best trial beats the untrained base model on the held-out text
    best = res["best"]
    assert best["value"] == max(r["value"] for r in done)
    assert best["value"] > res["base"], (best, res["base"])
    assert res["speedup"] and res["speedup"] > 0 and res["jobs"] == JOBS
    # each trial's adapter was kept, at the step its trial reached
    for r in done:
        info = api.result(f"/adapters/{r['adapter_id']}", None, method="GET")
        assert info["step"] == STEPS and info["rank"] == r["rank"], info
    # the trials ran on both executors (each made adapters there); the metrics page reports
    # both executors' resident adapters (how many stay depends on which trials each one got
    # and which the sequential rerun deleted, so only that they are reported)
    log = w.log()
    assert "Executor-1] Created adapter" in log and "Executor-2] Created adapter" in log
    page = scrape(f"http://127.0.0.1:{mport}/metrics")
    reported = {dict(ls).get("executor") for (n, ls) in samples(page)
                if n == "celeriac_adapters_resident"}
    assert {"1", "2"} <= reported, page
    assert sum(total(page, "celeriac_adapters_resident", executor=ex, tier="memory")
               for ex in ("1", "2")) >= len(done), page
    # what a person sees: progress with an ETA while it runs, then the summary
    text = p.stdout
    assert "concurrent: " in text and "running" in text and " eta " in text
    assert f"best trial #{best['number']}" in text
    assert "speedup:" in text and "sequential: the same trials one at a time" in text


def test_sweep_through_celery_saves_adapters(worker, broker_url, tmp_path):
    state = tmp_path / "state"
    worker("-c", "2", "--state-dir", str(state))
    out = tmp_path / "sweep.json"
    run_sweep(["--api", "celery", "--broker", broker_url, "--trials", "2", "--jobs", "2",
               "--steps", "2", "--no-sequential", "--out", str(out)], timeout=120)
    res = json.loads(out.read_text())
    assert res["speedup"] is None and len(res["trials"]) == 2
    for r in res["trials"]:
        assert r["state"] == "COMPLETE", r
        path = r["adapter_path"]
        assert path.startswith(str(state)), path
        for f in ("adapter_model.safetensors", "adapter_config.json"):
            assert os.path.isfile(os.path.join(path, f)), (path, f)
