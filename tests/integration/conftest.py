"""conftest.py -- fixtures for celeriac's integration tests: Redis, workers, Celery clients.

One redis-server per pytest session on a free loopback port (no persistence, 1000 databases);
each test gets its own database number, so tests never see each other's keys or pidbox/event
channels (kombu prefixes fanout channels with the db number).

Fixtures:
  redis_server      the session's server (host, port, url(db))
  db, broker_url    the test's database number and redis://127.0.0.1:PORT/DB
  redis_client      redis.Redis on the test's database (raw access for wire-level checks)
  make_app          factory for celery.Celery clients (broker, backend, conf overrides); closed
  celery_app        make_app() for the test's database
  worker            factory: starts bin/celeriac with extra args, waits for "ready.", stops it
  pyworker          factory: starts the stock Python worker (`celery -A pydiag worker`)
  tmp_redis         factory: a private extra redis-server (password, restart tests)
  redis_monitor     MONITOR on the session's server, in a thread (what a worker sends, in order)

Helpers for waiting on the thing itself rather than sleeping: wait_until, wait_active (a task
is executing), wait_subscribed (a client listens on a database's pubsub), wait_held_older_than
(a dead worker's messages passed a visibility timeout), RedisMonitor.wait_for (a command).

Environment:
  CELERIAC_BIN_DIR  directory holding celeriac (default <repo>/bin, or build/asan/bin)
  CELERIAC_ASAN=1   use <repo>/build/asan/bin and scale timeouts for the slower build
  CELERIAC_WORKER=python  run the `worker` fixture on the stock Python worker instead (used to
                    validate the tests themselves; celeriac-only checks are skipped there)
  CELERIAC_TEST_TIMEOUT   per-test hard limit in seconds (default 120)

Every worker's stderr goes to a per-test log file; when a test fails, the tail of each of its
workers' logs is attached to the pytest report. Sanitizer reports in a log fail the test.
"""

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
PYTHON = "/usr/bin/python3"

ASAN = os.environ.get("CELERIAC_ASAN", "") not in ("", "0")
WORKER_KIND = os.environ.get("CELERIAC_WORKER", "celeriac")
# Timeouts in tests are multiplied by this (ASan is several times slower).
SCALE = float(os.environ.get("CELERIAC_TIMEOUT_SCALE", "3" if ASAN else "1"))
TEST_TIMEOUT = int(float(os.environ.get("CELERIAC_TEST_TIMEOUT", "120")) * SCALE)

READY_RE = re.compile(r"\bready\.")
SUCCEEDED_RE = re.compile(r"Task ([^\s\[]+)\[([0-9A-Za-z-]+)\] succeeded in")
# "Received task: NAME[ID]" (celery 4 and celeriac) or "Task NAME[ID] received" (celery 5.2).
RECEIVED_RE = re.compile(
    r"(?:Received task: ([^\s\[]+)\[([0-9A-Za-z-]+)\])"
    r"|(?:Task ([^\s\[]+)\[([0-9A-Za-z-]+)\] received)")
SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer)|runtime error: ")


def scaled(seconds):
    """A timeout for this build (ASan runs get more time)."""
    return seconds * SCALE


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Polls predicate() until it returns a true value (returned) or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def wait_active(app, task_id, timeout=10):
    """Waits until the worker reports task_id among its executing tasks (inspect active)."""
    i = app.control.inspect(timeout=scaled(2), limit=1)
    wait_until(lambda: any(r["id"] == task_id for v in (i.active() or {}).values() for r in v),
               scaled(timeout), interval=0.1, what=f"{task_id} active")


def subscribers(client, db):
    """Connections on database db that are in subscribe mode (SUBSCRIBE or PSUBSCRIBE)."""
    return [c for c in client.client_list()
            if int(c.get("db", -1)) == db and int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]


def wait_subscribed(client, db, count=1, timeout=10, what="a pubsub subscriber"):
    """Waits until at least count connections on db listen to pubsub (an event receiver, a
    `celery events` process): a message published before that would be lost to them."""
    wait_until(lambda: len(subscribers(client, db)) >= count, scaled(timeout), what=what)


def wait_held_older_than(client, seconds, timeout=15):
    """Waits until every message held in kombu's unacked_index (by a worker that died) was
    taken more than seconds ago by the Redis clock, i.e. a worker with --visibility-timeout
    seconds restores them all."""
    def old():
        now = client.time()
        now = now[0] + now[1] / 1e6
        held = client.zrange("unacked_index", 0, -1, withscores=True)
        return held and all(score < now - seconds for _, score in held)
    wait_until(old, scaled(timeout) + seconds, interval=0.1,
               what=f"held messages older than {seconds}s")


def proc_pids(ppid=None, pgrp=None):
    """Live (not zombie) pids from /proc whose parent is ppid and/or whose process
    group is pgrp."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # state, ppid, pgrp, ...
        if len(fields) < 3 or fields[0] == "Z":
            continue
        if ppid is not None and int(fields[1]) != ppid:
            continue
        if pgrp is not None and int(fields[2]) != pgrp:
            continue
        pids.append(int(entry))
    return pids


def free_port():
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def celeriac_bin_dir():
    if os.environ.get("CELERIAC_BIN_DIR"):
        return os.environ["CELERIAC_BIN_DIR"]
    if ASAN:
        return os.path.join(REPO, "build", "asan", "bin")
    return os.path.join(REPO, "bin")


# --------------------------------------------------------------------------------------------
# Redis servers


class RedisServer:
    """A redis-server child process on 127.0.0.1:port."""

    def __init__(self, workdir, password=None, port=None):
        self.workdir = workdir
        self.password = password
        self.port = port
        self.proc = None

    def start(self, attempts=5):
        os.makedirs(self.workdir, exist_ok=True)
        fixed_port = self.port is not None
        last_err = None
        for _ in range(attempts):
            port = self.port if fixed_port else free_port()
            cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                   "--save", "", "--appendonly", "no", "--databases", "1000",
                   "--dir", self.workdir, "--logfile", os.path.join(self.workdir, "redis.log"),
                   "--daemonize", "no"]
            if self.password:
                cmd += ["--requirepass", self.password]
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            self.port = port
            try:
                wait_until(self._pings, 10, what=f"redis-server on port {port}")
                return self
            except AssertionError as e:
                last_err = e
                self.stop()
                if fixed_port:
                    time.sleep(0.5)  # back-off before retrying the same port, not a wait
        raise RuntimeError(f"could not start redis-server: {last_err}")

    def _pings(self):
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited with {self.proc.returncode}; "
                                 f"see {self.workdir}/redis.log")
        try:
            return self.client(0).ping()
        except redis.exceptions.ConnectionError:
            return False

    def client(self, db):
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           socket_timeout=30, socket_connect_timeout=5)

    def url(self, db):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make deps installs it)")
    server = RedisServer(str(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


_db_numbers = itertools.count(1)


@pytest.fixture
def db(redis_server):
    n = next(_db_numbers)
    if n >= 1000:
        pytest.fail("ran out of redis databases (more than 999 tests in one session)")
    return n


@pytest.fixture
def fresh_db(redis_server):
    """Factory: another unused database number, for tests that need two (broker vs backend)."""
    def make():
        n = next(_db_numbers)
        if n >= 1000:
            pytest.fail("ran out of redis databases")
        return n
    return make


@pytest.fixture
def broker_url(redis_server, db):
    return redis_server.url(db)


@pytest.fixture
def redis_client(redis_server, db):
    client = redis_server.client(db)
    yield client
    client.close()


@pytest.fixture
def tmp_redis(tmp_path):
    """Factory for a private redis-server (for a password or a restart): tmp_redis(password=)."""
    servers = []

    def start(password=None, port=None):
        server = RedisServer(str(tmp_path / f"redis{len(servers)}"), password, port).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


class RedisMonitor:
    """MONITOR on a server, read in a thread: every command as (db, "CMD arg arg ...") in the
    order the server ran them (a Lua script's own calls have db and "lua" client: kept too)."""

    def __init__(self, server):
        self.client = server.client(0)
        self.commands = []
        self._mon = self.client.monitor()
        self._mon.__enter__()  # MONITOR is on once this returns
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for c in self._mon.listen():
                self.commands.append((c["db"], c["command"]))
        except Exception:  # the connection closed under us at close()
            pass

    def mark(self):
        """A position in the stream: wait_for(start=mark) looks only at later commands."""
        return len(self.commands)

    def wait_for(self, predicate, start=0, timeout=10, what="a command"):
        """Waits for the first command from position start on with predicate(db, command)
        true; returns its position."""
        def find():
            for i in range(start, len(self.commands)):
                if predicate(*self.commands[i]):
                    return i + 1  # never 0, so a match at the start is truthy
            return None
        return wait_until(find, scaled(timeout), what=what) - 1

    def close(self):
        try:
            self._mon.connection.disconnect()
        except Exception:
            pass
        self._thread.join(5)
        self.client.close()


@pytest.fixture
def redis_monitor(redis_server):
    mon = RedisMonitor(redis_server)
    yield mon
    mon.close()


# --------------------------------------------------------------------------------------------
# Celery clients


@pytest.fixture
def make_app():
    """Factory: make_app(broker, backend=None, **conf) -> celery.Celery (closed at teardown)."""
    from celery import Celery

    apps = []

    def make(broker, backend=None, **conf):
        app = Celery(f"client{len(apps)}", broker=broker, backend=backend or broker,
                     set_as_current=False)
        app.conf.update(broker_connection_retry_on_startup=True,
                        redis_socket_timeout=30, redis_socket_connect_timeout=5,
                        result_expires=86400,
                        result_backend_transport_options={"retry_policy": {"max_retries": 2}})
        app.conf.update(conf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        # Drop the result pubsub now: AsyncResult.__del__ would otherwise try to UNSUBSCRIBE
        # at interpreter exit, retrying for a minute against a server that is gone.
        try:
            consumer = app.backend.result_consumer
            if consumer is not None and consumer._pubsub is not None:
                consumer._pubsub.close()
                consumer._pubsub = None
        except Exception:
            pass
        try:
            app.close()
        except Exception:
            pass


@pytest.fixture
def celery_app(make_app, broker_url):
    return make_app(broker_url)


# --------------------------------------------------------------------------------------------
# Worker processes


class WorkerProc:
    """A running worker (celeriac or the stock Python one) and its log file."""

    def __init__(self, kind, cmd, env, cwd, log_path):
        self.kind = kind
        self.cmd = cmd
        self.log_path = log_path
        self.log_file = open(log_path, "wb")
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=self.log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pid = self.proc.pid
        self.pgid = self.pid  # start_new_session: the worker leads its own process group

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def log_tail(self, lines=150):
        text = self.log().splitlines()
        cut = text[-lines:]
        head = ""
        if len(text) > lines:
            head = f"[{len(text) - len(cut)} earlier lines in {self.log_path}]\n"
        return head + "\n".join(cut)

    def alive(self):
        return self.proc.poll() is None

    def wait_log(self, pattern, timeout=10, count=1):
        """Waits until the log matches pattern (regex str or compiled) count times; returns
        the matches. Fails early, with the log tail, if the worker exits first."""
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + scaled(timeout)
        while True:
            found = rx.findall(self.log())
            if len(found) >= count:
                return found
            if not self.alive():
                found = rx.findall(self.log())
                if len(found) >= count:
                    return found
                raise AssertionError(f"{self.kind} worker exited with {self.proc.returncode} "
                                     f"before its log matched {rx.pattern!r}:\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {scaled(timeout):.1f}s waiting for "
                                     f"{rx.pattern!r} x{count} (have {len(found)}) in the "
                                     f"{self.kind} log:\n{self.log_tail()}")
            time.sleep(0.05)

    def wait_ready(self, timeout):
        self.wait_log(READY_RE, timeout)

    def succeeded(self):
        """[(task name, task id)] of every 'Task NAME[ID] succeeded in' line."""
        return SUCCEEDED_RE.findall(self.log())

    def received(self):
        """[(task name, task id)] of every received-task line, in either wording."""
        return [(a or c, b or d) for a, b, c, d in RECEIVED_RE.findall(self.log())]

    def signal(self, sig):
        if self.alive():
            self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        """Waits (bounded) for the main process to exit; returns its status or None."""
        try:
            return self.proc.wait(scaled(timeout))
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILL to the main process only (its executors must notice by themselves)."""
        self.signal(signal.SIGKILL)
        self.proc.wait(10)

    def group_pids(self):
        """Pids still in the worker's process group (executors outliving the main process)."""
        return proc_pids(pgrp=self.pgid)

    def child_pids(self):
        """Pids of the main process's live children (its executors)."""
        return proc_pids(ppid=self.pid)

    def stop(self, timeout=15):
        """Warm shutdown (SIGTERM), bounded; then SIGKILL. Returns the exit status."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(scaled(timeout))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reap_group()
        return self.proc.returncode

    def reap_group(self):
        """SIGKILLs whatever is left of the process group this fixture created."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if not self.log_file.closed:
            self.log_file.close()

    def sanitizer_report(self):
        m = SANITIZER_RE.search(self.log())
        return m is not None


def _attach_logs(item, report):
    for i, w in enumerate(getattr(item, "_celeriac_workers", [])):
        report.sections.append((f"{w.kind} worker #{i} log ({w.log_path}), pid {w.pid}, "
                                f"cmd {' '.join(w.cmd)}", w.log_tail()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        _attach_logs(item, report)


# Fixtures whose tests get the SIGALRM safety net (other files in this directory, such as
# the executor and model tests, keep their own time budgets).
_TIMED_FIXTURES = {"worker", "pyworker", "redis_server", "make_app", "tmp_redis", "redis_monitor"}


@pytest.fixture(autouse=True)
def _hard_timeout(request):
    """A per-test safety net for worker tests: SIGALRM fails one stuck past TEST_TIMEOUT."""
    if not _TIMED_FIXTURES & set(request.fixturenames):
        yield
        return

    def on_alarm(signum, frame):
        pytest.fail(f"test exceeded the hard limit of {TEST_TIMEOUT}s", pytrace=True)

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TEST_TIMEOUT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _worker_env(extra=None):
    env = dict(os.environ)
    # The tests decide broker and backend explicitly; never inherit them by accident.
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    env.setdefault("ASAN_OPTIONS", "abort_on_error=0:detect_leaks=1")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    if extra:
        env.update(extra)
    return env


def _python_worker_cmd(args, hostname_default, concurrency_default=2):
    """Translates celeriac's CLI into `celery -A pydiag worker` arguments plus environment."""
    cmd = [PYTHON, "-m", "celery", "-A", "pydiag", "worker", "-P", "prefork",
           "--without-mingle", "--without-gossip"]
    env = {}
    have = set()
    it = iter(args)
    for a in it:
        if a in ("-b", "--broker"):
            env["CELERY_BROKER_URL"] = next(it)
        elif a == "--result-backend":
            env["CELERY_RESULT_BACKEND"] = next(it)
        elif a == "--visibility-timeout":
            env["PYDIAG_VISIBILITY_TIMEOUT"] = next(it)
        elif a == "--result-expires":
            env["PYDIAG_RESULT_EXPIRES"] = next(it)
        elif a in ("--state-dir", "--executor"):
            next(it)
        elif a in ("-c", "--concurrency", "-n", "--hostname", "-Q", "--queues", "-l",
                   "--loglevel", "-f", "--logfile", "--pidfile", "--time-limit",
                   "--soft-time-limit", "--max-tasks-per-child", "--prefetch-multiplier"):
            have.add({"--concurrency": "-c", "--hostname": "-n", "--loglevel": "-l"}.get(a, a))
            cmd += [a, next(it)]
        else:
            cmd.append(a)
    if "-c" not in have:
        cmd += ["-c", str(concurrency_default)]
    if "-n" not in have:
        cmd += ["-n", hostname_default]
    return cmd, env


def _start_worker(request, tmp_path, kind, args, broker, env, ready, ready_timeout,
                  hostname_default="py@%h"):
    """Starts one worker; kind is 'celeriac' or 'python'."""
    workers = request.node.__dict__.setdefault("_celeriac_workers", [])
    n = len(workers)
    log_path = str(tmp_path / f"{kind}{n}.log")
    args = list(args)
    if not any(a in ("-l", "--loglevel") for a in args):
        args = ["-l", "info"] + args
    if broker is not None and not any(a in ("-b", "--broker") for a in args):
        args = ["-b", broker] + args
    if kind == "celeriac":
        bindir = celeriac_bin_dir()
        binary = os.path.join(bindir, "celeriac")
        if not os.access(binary, os.X_OK):
            pytest.fail(f"celeriac binary not found or not executable: {binary}\n"
                        f"build it with `make` (`make asan` for CELERIAC_ASAN=1), or point "
                        f"CELERIAC_BIN_DIR at the directory holding it")
        cmd = [binary] + args
        w = WorkerProc("celeriac", cmd, _worker_env(env), tmp_path, log_path)
    else:
        cmd, penv = _python_worker_cmd(args, hostname_default)
        full_env = _worker_env(env)
        full_env.update(penv)
        full_env["PYTHONPATH"] = HERE
        w = WorkerProc("python", cmd, full_env, HERE, log_path)
    workers.append(w)
    if ready:
        w.wait_ready(ready_timeout)
    return w


@pytest.fixture
def worker(request, tmp_path, broker_url):
    """Factory: worker(*args, broker=<test db url>|None, env=None, ready=True) -> WorkerProc.

    Starts bin/celeriac (or the Python worker under CELERIAC_WORKER=python) with `-b broker`
    and `-l info` unless the args say otherwise, and waits for its "ready." line. At teardown
    every worker still running gets SIGTERM, a bounded wait, then SIGKILL; its leftover
    process group is killed; a sanitizer report in its log fails the test."""
    started = []

    def start(*args, broker=broker_url, env=None, ready=True, ready_timeout=20):
        kind = "python" if WORKER_KIND == "python" else "celeriac"
        timeout = ready_timeout * (2 if kind == "python" else 1)
        w = _start_worker(request, tmp_path, kind, args, broker, env, ready, timeout,
                          hostname_default="pyceleriac@%h")
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()
    bad = [w for w in started if w.sanitizer_report()]
    if bad:
        pytest.fail("sanitizer report in worker log:\n" + "\n\n".join(w.log_tail() for w in bad))


@pytest.fixture
def pyworker(request, tmp_path, broker_url):
    """Factory: the stock Python worker (prefork, -c 2, -n py@%h) on the test's broker."""
    started = []

    def start(*args, broker=broker_url, env=None, ready=True, ready_timeout=40):
        w = _start_worker(request, tmp_path, "python", args, broker, env, ready, ready_timeout)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


celeriac_only = pytest.mark.skipif(
    WORKER_KIND == "python",
    reason="celeriac-specific behaviour (the stock Python worker does otherwise)")
