"""conftest.py -- fixtures for celeriac's integration tests: Redis, RabbitMQ, workers, clients.

One redis-server per pytest session on a free loopback port (no persistence, 1000 databases);
each test gets its own database number, so tests never see each other's keys or pidbox/event
channels (kombu prefixes fanout channels with the db number). A rabbitmq-server is started the
first time a test asks for the AMQP broker (its own node name, ports, epmd port, data and log
directories under the session's tmp dir; once per session; stopped at the end) and each test
gets its own virtual host, the AMQP twin of the fresh database.

Brokers: a test runs on Redis unless it is marked `@both_brokers` (or its module sets
`pytestmark = both_brokers`): then it runs once per broker, as test[redis] and test[amqp]
(`@redis_only` inside such a module keeps one test on Redis, e.g. one that reads kombu's
`unacked` hash). The `broker` fixture names the broker of the run; `broker_url`, `celery_app`,
`make_app`, `worker` and `pyworker` follow it. On AMQP the result backend is the test's Redis
database (backend_url), so metas can still be read with redis_client. CELERIAC_BROKERS=redis
(or =amqp) runs only one of them.

Fixtures:
  redis_server      the session's server (host, port, url(db))
  rabbit_server     the session's rabbitmq-server (url(vhost), vhost(), ctl(...), restart())
  broker            "redis" or "amqp": the broker of this run
  db, broker_url    the test's database number, and its broker's URL (redis://.../DB, or
                    amqp://guest:guest@127.0.0.1:PORT/<fresh vhost>)
  backend_url       the result backend: redis://127.0.0.1:PORT/DB
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
  CELERIAC_BROKERS  brokers the @both_brokers tests run on (default "redis,amqp")

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
    """Connections on database db that are in subscribe mode (SUBSCRIBE or PSUBSCRIBE). On an
    AMQP run: the event receivers' queues (celeryev.*) with a consumer in the test's vhost."""
    if _ACTIVE["broker"] == "amqp" and _ACTIVE["rabbit"] is not None:
        qs = _ACTIVE["rabbit"].queues(_ACTIVE["vhost"])
        return [q for q, (_, consumers) in qs.items() if q.startswith("celeryev.") and consumers]
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


def _stat_fields(path):
    """The fields of a /proc stat file after the command name (state, ppid, pgrp, ...), or
    None when it is gone."""
    try:
        with open(path, "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:].split()


def _any_thread_running(pid):
    """Whether a thread of process pid has not exited. A killed multi-threaded process shows
    its first thread as a zombie while the others are still exiting, and the last of them
    is the one that closes its files (and so lets go of its flocks)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tids:
        fields = _stat_fields(f"/proc/{pid}/task/{tid}/stat")
        if fields and fields[0] not in ("Z", "X"):
            return True
    return False


def proc_pids(ppid=None, pgrp=None):
    """Live pids from /proc whose parent is ppid and/or whose process group is pgrp: not a
    zombie, or a zombie with a thread still exiting."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(f"/proc/{entry}/stat")
        if fields is None or len(fields) < 3:
            continue
        if fields[0] == "Z" and not _any_thread_running(entry):
            continue
        if ppid is not None and int(fields[1]) != ppid:
            continue
        if pgrp is not None and int(fields[2]) != pgrp:
            continue
        pids.append(int(entry))
    return pids


def free_port():
    """A loopback TCP port that was free a moment ago."""
    return free_ports(1)[0]


def free_ports(n):
    """n different loopback TCP ports that were free a moment ago (all held bound until all
    are chosen: separate free_port() calls can hand out the same port twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


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
def backend_url(redis_server, db):
    """The result backend of the test: its Redis database (on either broker)."""
    return redis_server.url(db)


@pytest.fixture
def broker_url(request, broker, redis_server, db):
    _ACTIVE.update(broker=broker, rabbit=None, vhost=None)
    if broker == "amqp":
        rabbit = request.getfixturevalue("rabbit_server")
        vhost = rabbit.vhost()
        _ACTIVE.update(rabbit=rabbit, vhost=vhost)
        return rabbit.url(vhost)
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
# RabbitMQ


RABBIT_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBIT_CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
BROKERS = [b for b in os.environ.get("CELERIAC_BROKERS", "redis,amqp").split(",") if b]
VHOST_BATCH = 25

both_brokers = pytest.mark.brokers("redis", "amqp")
redis_only = pytest.mark.brokers("redis")


class RabbitServer:
    """A private rabbitmq-server node: own node name, AMQP/TLS/distribution/epmd ports, data
    and log directories, Erlang cookie (HOME), all under workdir. The packaged wrapper is not
    used (it switches to the rabbitmq user); /usr/lib/rabbitmq/bin's scripts run as we are."""

    def __init__(self, workdir, tls=None, conf=()):
        self.workdir = workdir
        self.tls = tls  # (ca, cert, key) for a TLS listener, or None
        self.extra_conf = list(conf)  # more rabbitmq.conf lines (the benchmarks' --rabbit-conf)
        self.node = f"celeriac-test-{os.getpid()}@localhost"
        self.port = self.tls_port = self.dist_port = self.epmd_port = None
        self.proc = None
        self._vhosts = []
        self._used = []
        self._next_vhost = itertools.count(1)

    def _env(self):
        w = self.workdir
        env = dict(os.environ)
        env.update({
            "HOME": w, "RABBITMQ_NODENAME": self.node, "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": f"{w}/mnesia", "RABBITMQ_MNESIA_DIR": f"{w}/mnesia/node",
            "RABBITMQ_FEATURE_FLAGS_FILE": f"{w}/mnesia/feature_flags",
            "RABBITMQ_PLUGINS_EXPAND_DIR": f"{w}/mnesia/plugins",
            "RABBITMQ_QUORUM_DIR": f"{w}/mnesia/quorum", "RABBITMQ_STREAM_DIR": f"{w}/mnesia/stream",
            "RABBITMQ_LOG_BASE": f"{w}/log", "RABBITMQ_CONFIG_FILE": f"{w}/rabbitmq",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{w}/advanced.config",
            "RABBITMQ_CONF_ENV_FILE": f"{w}/rabbitmq-env.conf",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{w}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{w}/rabbit.pid",
            # two schedulers: the test machine has two cores shared with everything else
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+S 2:2 +sbwt none +sbwtdcpu none",
        })
        return env

    def start(self):
        if not (os.access(RABBIT_SERVER, os.X_OK) and os.access(RABBIT_CTL, os.X_OK)):
            pytest.skip(f"rabbitmq-server is not installed ({RABBIT_SERVER} missing; "
                        f"`make deps` installs the Debian package)")
        os.makedirs(f"{self.workdir}/log", exist_ok=True)
        os.makedirs(f"{self.workdir}/mnesia", exist_ok=True)
        # four different ports: the TLS listener once got the TCP one's (an SSL handshake
        # against the plain listener failed both amqps tests)
        self.port, self.dist_port, self.epmd_port, tls_port = free_ports(4)
        conf = [f"listeners.tcp.default = 127.0.0.1:{self.port}",
                "log.console = false", "log.file.level = info",
                "disk_free_limit.absolute = 10MB"]
        if self.tls:
            self.tls_port = tls_port
            ca, cert, key = self.tls
            conf += [f"listeners.ssl.default = 127.0.0.1:{self.tls_port}",
                     f"ssl_options.cacertfile = {ca}", f"ssl_options.certfile = {cert}",
                     f"ssl_options.keyfile = {key}", "ssl_options.verify = verify_peer",
                     "ssl_options.fail_if_no_peer_cert = false"]
        conf += self.extra_conf
        with open(f"{self.workdir}/rabbitmq.conf", "w") as f:
            f.write("\n".join(conf) + "\n")
        with open(f"{self.workdir}/enabled_plugins", "w") as f:
            f.write("[].\n")
        self.log = open(f"{self.workdir}/server.out", "ab")
        self.proc = subprocess.Popen([RABBIT_SERVER], env=self._env(), stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        r = self.ctl("wait", f"{self.workdir}/rabbit.pid", "--timeout", "120", timeout=150)
        if r.returncode != 0:
            self.stop()
            raise RuntimeError(f"rabbitmq-server did not start: {r.stdout}{r.stderr}; "
                               f"see {self.workdir}/server.out and {self.workdir}/log")
        return self

    def ctl(self, *args, timeout=60):
        """Runs rabbitmqctl against this node; returns the CompletedProcess."""
        return subprocess.run([RABBIT_CTL, "-n", self.node, *args], env=self._env(),
                              capture_output=True, text=True, timeout=timeout)

    def eval(self, expr):
        r = self.ctl("eval", expr)
        if r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl eval failed: {r.stdout}{r.stderr}")
        return r.stdout.strip()

    def vhost(self):
        """A fresh virtual host (guest may do anything there). Made VHOST_BATCH at a time in
        one `rabbitmqctl eval`, which also deletes the ones handed out before."""
        if not self._vhosts:
            new = [f"t{next(self._next_vhost)}" for _ in range(VHOST_BATCH)]
            old, self._used = self._used, []
            q = lambda names: "[" + ",".join(f'<<"{n}">>' for n in names) + "]"
            self.eval(
                f"lists:foreach(fun(V) -> catch rabbit_vhost:delete(V, <<\"test\">>) end, {q(old)}),"
                f"lists:foreach(fun(V) -> ok = rabbit_vhost:add(V, <<\"test\">>),"
                f" rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, <<\".*\">>,"
                f" <<\".*\">>, <<\".*\">>, <<\"test\">>) end, {q(new)}), ok.")
            self._vhosts = new
        v = self._vhosts.pop(0)
        self._used.append(v)
        return v

    def url(self, vhost, scheme="amqp"):
        port = self.tls_port if scheme == "amqps" else self.port
        return f"{scheme}://guest:guest@127.0.0.1:{port}/{vhost}"

    def queues(self, vhost):
        """{queue name: (messages, consumers)} in vhost, from rabbitmqctl (about a second)."""
        r = self.ctl("list_queues", "-p", vhost, "name", "messages", "consumers", "--no-table-headers",
                     "--quiet")
        out = {}
        for line in r.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].isdigit():
                out[parts[0]] = (int(parts[1]), int(parts[2]))
        return out

    def restart(self):
        """stop_app + start_app: every connection is closed, durable queues and persistent
        messages survive, the node (ports, vhosts) stays: a broker restart as clients see it."""
        for cmd in ("stop_app", "start_app"):
            r = self.ctl(cmd, timeout=120)
            if r.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {cmd}: {r.stdout}{r.stderr}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.ctl("stop", timeout=60)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait(10)
        if self.epmd_port:  # the epmd our node started on its private port
            subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"],
                           capture_output=True, timeout=10)


def make_tls_files(d):
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (openssl),
    or None when openssl is missing."""
    if shutil.which("openssl") is None:
        return None
    os.makedirs(d, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=celeriac-test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")
    with open(os.path.join(d, "san.cnf"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for who in ("server", "client"):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout", f"{who}.key",
            "-out", f"{who}.csr")
        run("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-out", f"{who}.pem", "-extfile", "san.cnf")
    return {k: os.path.join(d, f) for k, f in (("ca", "ca.pem"), ("cert", "server.pem"),
                                                 ("key", "server.key"), ("client_cert", "client.pem"),
                                                 ("client_key", "client.key"))}


@pytest.fixture(scope="session")
def rabbit_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("rabbit")
    tls = make_tls_files(str(base / "tls"))
    server = RabbitServer(str(base), (tls["ca"], tls["cert"], tls["key"]) if tls else None)
    server.tls_files = tls
    server.start()
    yield server
    server.stop()


# What the current test runs on, for helpers that look at the broker (subscribers).
_ACTIVE = {"broker": "redis", "rabbit": None, "vhost": None}


def pytest_configure(config):
    config.addinivalue_line("markers", "brokers(*names): run the test once per broker named "
                            "(redis, amqp); see conftest.py")


def pytest_generate_tests(metafunc):
    if "broker" not in metafunc.fixturenames:
        return
    mark = metafunc.definition.get_closest_marker("brokers")
    if mark is None:
        return  # a plain test: Redis, its id unchanged
    metafunc.parametrize("broker", [b for b in mark.args if b in BROKERS], indirect=True)


@pytest.fixture
def broker(request):
    """The broker of this run: "redis" unless the test is parametrized over brokers."""
    return getattr(request, "param", "redis")


# --------------------------------------------------------------------------------------------
# Celery clients


def is_amqp(url):
    return url.startswith(("amqp://", "amqps://", "pyamqp://"))


@pytest.fixture
def make_app(request):
    """Factory: make_app(broker, backend=None, **conf) -> celery.Celery (closed at teardown).
    The backend defaults to the broker on Redis and to the test's Redis database on AMQP."""
    from celery import Celery

    apps = []

    def make(broker, backend=None, **conf):
        if backend is None:
            backend = request.getfixturevalue("backend_url") if is_amqp(broker) else broker
        app = Celery(f"client{len(apps)}", broker=broker, backend=backend,
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
_TIMED_FIXTURES = {"worker", "pyworker", "redis_server", "make_app", "tmp_redis", "redis_monitor",
                   "rabbit_server"}


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


@pytest.fixture(autouse=True)
def _broadcast_limit(request, monkeypatch):
    """A broadcast with replies and no destination, pattern or limit waits its whole timeout for
    replies that might still come. Within a test that started its workers through the fixtures,
    it stops at one reply per live worker instead, as kombu stops at len(destination) for an
    explicit destination: the same replies, without the wait. A test in which a live worker does
    not answer still waits the whole timeout and sees what it saw before."""
    from celery.app.control import Control
    orig = Control.broadcast

    def broadcast(self, command, arguments=None, destination=None, connection=None, reply=False,
                  timeout=1.0, limit=None, callback=None, channel=None, pattern=None,
                  matcher=None, **extra):
        if reply and limit is None and not destination and pattern is None:
            live = [w for w in request.node.__dict__.get("_celeriac_workers", []) if w.alive()]
            if live:
                limit = len(live)
        return orig(self, command, arguments=arguments, destination=destination,
                    connection=connection, reply=reply, timeout=timeout, limit=limit,
                    callback=callback, channel=channel, pattern=pattern, matcher=matcher, **extra)

    monkeypatch.setattr(Control, "broadcast", broadcast)


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
    # "--with-mingle" (not a celery flag) leaves mingle on, for the mingle test
    mingle = "--with-mingle" in args
    args = [a for a in args if a != "--with-mingle"]
    cmd = [PYTHON, "-m", "celery", "-A", "pydiag", "worker", "-P", "prefork",
           "--without-gossip"] + ([] if mingle else ["--without-mingle"])
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
        elif a == "--max-priority":
            env["PYDIAG_MAX_PRIORITY"] = next(it)
        elif a in ("--state-dir", "--executor"):
            next(it)
        elif a == "--without-direct-queue":  # worker_direct is off unless PYDIAG_WORKER_DIRECT
            pass
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
                  hostname_default="py@%h", started=None):
    """Starts one worker; kind is 'celeriac' or 'python'. It joins `started` (the fixture's
    list, stopped at teardown) before its ready wait, so one that never gets ready is
    stopped too."""
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
    if started is not None:
        started.append(w)
    if ready:
        w.wait_ready(ready_timeout)
    return w


def _with_backend(args, broker, request):
    """On an AMQP broker the worker stores results in the test's Redis database unless the
    args name a backend (the client's default, see make_app)."""
    if broker is None or not is_amqp(broker) or "--result-backend" in args:
        return args
    return ("--result-backend", request.getfixturevalue("backend_url")) + tuple(args)


@pytest.fixture
def worker(request, tmp_path, broker_url):
    """Factory: worker(*args, broker=<test db url>|None, env=None, ready=True) -> WorkerProc.

    Starts bin/celeriac (or the Python worker under CELERIAC_WORKER=python) with `-b broker`
    and `-l info` unless the args say otherwise, and waits for its "ready." line. At teardown
    every worker still running gets SIGTERM, a bounded wait, then SIGKILL; its leftover
    process group is killed; a sanitizer report in its log fails the test."""
    started = []

    def start(*args, broker=broker_url, env=None, ready=True, ready_timeout=20):
        args = _with_backend(args, broker, request)
        kind = "python" if WORKER_KIND == "python" else "celeriac"
        timeout = ready_timeout * (2 if kind == "python" else 1)
        return _start_worker(request, tmp_path, kind, args, broker, env, ready, timeout,
                             hostname_default="pyceleriac@%h", started=started)

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
        args = _with_backend(args, broker, request)
        return _start_worker(request, tmp_path, "python", args, broker, env, ready,
                             ready_timeout, started=started)

    yield start
    for w in started:
        w.stop()


celeriac_only = pytest.mark.skipif(
    WORKER_KIND == "python",
    reason="celeriac-specific behaviour (the stock Python worker does otherwise)")
