"""hardening_fixtures.py -- what the hardening and chaos tests share: a private Redis, sizes.

The robustness tests do things to Redis that the session's shared server must not see
(SCRIPT FLUSH, FLUSHALL, CONFIG SET maxmemory, DEBUG SLEEP, a restart, kill -9), so each gets
its own redis-server (DEBUG enabled, optional append-only persistence, restartable on the same
port) from the `own_redis` fixture. Helpers read a process's memory and open files from /proc.
"""

import os
import signal
import subprocess
import time

import pytest
import redis

from conftest import free_port, scaled, wait_until


class OwnRedis:
    """A redis-server child on 127.0.0.1:port that a test may break and restart."""

    def __init__(self, workdir, port=None, aof=False, password=None, extra=()):
        self.workdir = workdir
        self.extra = list(extra)  # more redis-server options
        self.port = port or free_port()
        self.aof = aof
        self.password = password
        self.proc = None
        os.makedirs(workdir, exist_ok=True)

    def cmd(self):
        c = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--databases", "16", "--dir", self.workdir,
             "--logfile", os.path.join(self.workdir, "redis.log"), "--daemonize", "no",
             "--enable-debug-command", "yes"]
        if self.aof:
            c += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            c += ["--appendonly", "no"]
        if self.password:
            c += ["--requirepass", self.password]
        return c + self.extra

    def start(self):
        for attempt in range(20):
            self.proc = subprocess.Popen(self.cmd(), stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            try:
                wait_until(self._pings, 10, what=f"redis-server on port {self.port}")
                return self
            except AssertionError:
                self.stop()
                time.sleep(0.2)  # the port may still be in TIME_WAIT: a back-off, not a wait
        raise RuntimeError(f"could not start redis-server on port {self.port}")

    def _pings(self):
        if self.proc.poll() is not None:
            return False
        try:
            return self.client().ping()
        except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
            return False

    def client(self, db=0, **kw):
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password,
                           socket_timeout=30, socket_connect_timeout=5, **kw)

    def url(self, db=0):
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def kill(self):
        """kill -9: what the server had not written is gone."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def restart(self):
        self.kill()
        return self.start()

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path):
    """Factory: own_redis(aof=False, password=None, extra=()) -> a started OwnRedis (extra:
    more redis-server options), stopped at teardown."""
    servers = []

    def start(aof=False, password=None, extra=()):
        s = OwnRedis(str(tmp_path / f"own-redis{len(servers)}"), aof=aof,
                     password=password, extra=extra).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def rss_kib(pid):
    """Resident set size of pid in KiB (VmRSS), or 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_kib(pid):
    """The high-water mark of pid's resident set (VmHWM) in KiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def open_fds(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def wait_gone(predicate, timeout, what):
    """wait_until for a condition expressed as 'this is no longer so'."""
    wait_until(lambda: not predicate(), scaled(timeout), what=what)
