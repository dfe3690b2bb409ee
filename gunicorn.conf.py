"""gunicorn.conf.py -- production settings for the celeriac front end.

  gunicorn -c gunicorn.conf.py 'flask_app:create_app()'

Every setting can be changed from the environment (GUNICORN_*; gunicorn's own GUNICORN_CMD_ARGS
and command-line flags still override this file). Web workers only validate, publish a task
and read results, so they are light: threads (gthread) make a slow client or a slow Redis cost
a thread, not a process. The app is not preloaded: each worker opens its own Redis and broker
connections after the fork.

Metrics (flask_app/metrics.py): prometheus_client's multiprocess mode needs one directory the
workers share, named by PROMETHEUS_MULTIPROC_DIR before any of them imports the library. This
file sets it (a fresh private directory unless the environment names one), empties it when
Gunicorn starts (stale files would add old counts), marks each worker that exits (its live
gauges go), and removes the directory it made at exit. A Gunicorn killed outright (SIGKILL, the
OOM killer) runs no exit hook, so each one holds a shared flock on a lock file in the directory
it uses (its workers inherit it) and, when it starts, removes the directories of earlier ones
that nobody holds any more: killed Gunicorns leave no directories behind for good, and a live
one's directory is never taken.
"""

import fcntl
import glob
import os
import shutil
import stat
import tempfile


def _int(name, default):
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# Loopback unless told otherwise: put a TLS-terminating proxy (nginx) in front for the outside.
bind = [b.strip() for b in os.environ.get("GUNICORN_BIND", "127.0.0.1:8000").split(",")
        if b.strip()]

# The classic 2*cores+1, capped: the work is I/O (Redis), and each worker holds connections.
workers = _int("GUNICORN_WORKERS", _int("WEB_CONCURRENCY",
                                        min(2 * _cores() + 1, _int("GUNICORN_MAX_WORKERS", 9))))
threads = _int("GUNICORN_THREADS", 4)
worker_class = "gthread"
worker_connections = _int("GUNICORN_WORKER_CONNECTIONS", 1000)

# No request waits for a task, so 30 s is generous; a stuck worker is killed and replaced.
timeout = _int("GUNICORN_TIMEOUT", 30)
graceful_timeout = _int("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = _int("GUNICORN_KEEPALIVE", 5)

# Recycle workers now and then (bounded memory growth); jitter keeps them from all
# restarting at once.
max_requests = _int("GUNICORN_MAX_REQUESTS", 2000)
max_requests_jitter = _int("GUNICORN_MAX_REQUESTS_JITTER", 200)

# Request-line and header limits (bodies are limited by the app: MAX_CONTENT_LENGTH -> 413).
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 8190

# GUNICORN_ACCESS_LOG="" turns the access log off.
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None
errorlog = os.environ.get("GUNICORN_ERROR_LOG") or "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
capture_output = True
proc_name = "celeriac-web"

# Trust X-Forwarded-* only from a proxy on this host.
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")
preload_app = False
pidfile = os.environ.get("GUNICORN_PIDFILE") or None


# ---- Prometheus multiprocess metrics --------------------------------------------------------

METRICS_PREFIX = "celeriac-prometheus-"
METRICS_LOCK = ".celeriac-lock"  # flock'ed shared by every Gunicorn using the directory
_LOCK_ENV = "CELERIAC_METRICS_LOCK"  # "<pid>:<fd>": a config reload (HUP) keeps its lock


def _share_lock(d, create=False):
    """Takes a shared lock on directory d's lock file (made when create) for this process and
    notes its fd in the environment (on_exit reads it)."""
    flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT if create else 0)
    fd = os.open(os.path.join(d, METRICS_LOCK), flags, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)
    os.environ[_LOCK_ENV] = f"{os.getpid()}:{fd}"


def _make_metrics_dir():
    """A fresh directory named METRICS_PREFIX..., its lock file held before it has that name
    (a sweeper never sees it unlocked)."""
    tmp = tempfile.mkdtemp(prefix="." + METRICS_PREFIX)
    _share_lock(tmp, create=True)
    final = os.path.join(os.path.dirname(tmp), os.path.basename(tmp)[1:])
    os.rename(tmp, final)
    return final


def _hold_metrics_dir(d):
    """Shares the lock of a directory another Gunicorn made (a re-exec'd master), once per
    process."""
    pid, _, fd = os.environ.get(_LOCK_ENV, "").partition(":")
    if pid == str(os.getpid()) and fd.isdigit():
        return  # this process holds it already (the config was reloaded)
    try:
        _share_lock(d)
    except OSError:
        pass


def sweep_metrics_dirs(parent):
    """Removes the METRICS_PREFIX directories in parent whose lock nobody holds (their
    Gunicorns were killed); returns how many. Directories without the lock file are left."""
    gone = 0
    for d in glob.glob(os.path.join(parent, METRICS_PREFIX + "*")):
        try:
            st = os.lstat(d)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(d, METRICS_LOCK), os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # held: a live Gunicorn's
            continue
        shutil.rmtree(d, ignore_errors=True)
        os.close(fd)
        gone += 1
    return gone


_made_metrics_dir = None
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _made_metrics_dir = _make_metrics_dir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _made_metrics_dir
elif os.path.basename(os.environ["PROMETHEUS_MULTIPROC_DIR"]).startswith(METRICS_PREFIX):
    _hold_metrics_dir(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_starting(server):
    d = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    os.makedirs(d, exist_ok=True)
    for f in glob.glob(os.path.join(d, "*.db")):
        os.remove(f)
    if _made_metrics_dir:
        n = sweep_metrics_dirs(os.path.dirname(_made_metrics_dir))
        if n:
            server.log.info("removed %d metrics directories of Gunicorns that were killed", n)


def child_exit(server, worker):
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    """Removes the directory this Gunicorn uses unless another one (a re-exec'd master)
    still holds it."""
    d = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    pid, _, fd = os.environ.get(_LOCK_ENV, "").partition(":")
    if not os.path.basename(d).startswith(METRICS_PREFIX) or pid != str(os.getpid()):
        return
    try:
        fcntl.flock(int(fd), fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours alone (workers are gone)
    except (OSError, ValueError):
        return
    shutil.rmtree(d, ignore_errors=True)
