"""metrics_fixtures.py -- a real Prometheus server for the metrics tests, and page readers.

`prometheus` (a fixture factory) starts Debian's `prometheus` on a free loopback port with a
1 s scrape interval over the targets it is given, waits until it is ready and every target has
been scraped once, and stops it at teardown. Values are read back through its HTTP query API
(/api/v1/query), the way a dashboard reads them; wait_value polls a query until it has the
wanted value or a deadline passes (each poll is a new query: no sleep-then-assert). `scrape`
and `samples` read a /metrics page directly, with prometheus_client's own parser.
"""

import math
import os
import shutil
import signal
import subprocess

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import free_port, scaled, wait_until


class Prometheus:
    def __init__(self, workdir, targets, log_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        os.makedirs(workdir, exist_ok=True)
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: [{', '.join(repr(t) for t in hosts)}]\n"
            for job, hosts in targets.items())
        cfg = os.path.join(workdir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                    "  evaluation_interval: 1s\nscrape_configs:\n" + jobs)
        exe = shutil.which("prometheus") or "/usr/bin/prometheus"
        self.cmd = [exe, f"--config.file={cfg}", f"--storage.tsdb.path={workdir}/data",
                    f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"]
        self.kind = "prometheus"
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid
        self.targets = targets

    def log_tail(self, lines=60):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])

    def _ready(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")
        try:
            return requests.get(self.base + "/-/ready", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def wait_ready(self):
        wait_until(self._ready, scaled(30), interval=0.1, what="prometheus to be ready")
        n = sum(len(h) for h in self.targets.values())
        self.wait_value("count(up == 1)", n, timeout=30)

    def query(self, q):
        """The instant vector of PromQL q: [(labels dict, float value)]."""
        r = requests.get(self.base + "/api/v1/query", params={"query": q}, timeout=5)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (q, r.text)
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def value(self, q):
        """The single value of q, or None when q has no sample (yet)."""
        res = self.query(q)
        assert len(res) <= 1, (q, res)
        return res[0][1] if res else None

    def wait_value(self, q, want, timeout=20):
        """Waits until q's value is want (scrapes come every second); fails with the last one."""
        seen = []

        def ok():
            v = self.value(q)
            seen.append(v)
            return v is not None and math.isclose(v, want, rel_tol=1e-9, abs_tol=1e-9)

        try:
            wait_until(ok, scaled(timeout), interval=0.2, what=f"{q} == {want}")
        except AssertionError:
            raise AssertionError(f"{q}: want {want}, last value {seen[-1] if seen else None}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(10))
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self.log_file.close()


@pytest.fixture
def prometheus(request, tmp_path):
    """Factory: prometheus({job: ["host:port", ...]}) -> a ready Prometheus scraping them."""
    if shutil.which("prometheus") is None and not os.access("/usr/bin/prometheus", os.X_OK):
        pytest.fail("prometheus is not installed (scripts/install-deps installs it)")
    started = []

    def start(targets):
        p = Prometheus(str(tmp_path / f"prometheus{len(started)}"), targets,
                       str(tmp_path / f"prometheus{len(started)}.log"))
        started.append(p)
        request.node.__dict__.setdefault("_celeriac_workers", []).append(p)
        p.wait_ready()
        return p

    yield start
    for p in started:
        p.stop()


def scrape(url):
    """The text of a /metrics page."""
    r = requests.get(url, timeout=5)
    assert r.status_code == 200, (url, r.status_code, r.text[:500])
    assert r.headers["Content-Type"].startswith("text/plain"), r.headers
    return r.text


def samples(text):
    """{(sample name, frozenset(labels)): value} of a /metrics page."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def total(text, metric, **labels):
    """The sum of the samples called metric whose labels include the given ones."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == metric and want <= ls)
