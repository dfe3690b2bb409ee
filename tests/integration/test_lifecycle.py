"""test_lifecycle.py -- start-up options and shutdown: signals, SIGKILL recovery, pidfile, names.

Warm shutdown keeps running tasks' results and gives prefetched messages back; a SIGKILLed
worker's messages come back, through kombu's unacked/unacked_index emulation, to a worker
started later with a short visibility timeout; the broker going away is survived.
"""

import os
import re
import signal
import socket
import time

import pytest

from conftest import (REPO, WORKER_KIND, celeriac_bin_dir, celeriac_only, scaled, wait_active,
                      wait_held_older_than, wait_until, both_brokers)

GET = 10


def wait_received(w, task_id, timeout=GET):
    """Waits for the worker's received-task line for task_id (either wording)."""
    tid = re.escape(task_id)
    w.wait_log(rf"Received task: \S+\[{tid}\]|\[{tid}\] received", timeout)


@both_brokers
def test_warm_shutdown_keeps_running_result(worker, celery_app, redis_client):
    w = worker("-c", "1")
    running = celery_app.send_task("diag.sleep", args=[2])
    wait_active(celery_app, running.id)
    w.signal(signal.SIGTERM)
    rc = w.wait_exit(15)
    assert rc is not None, "worker did not exit within 15s of SIGTERM"
    assert rc == 0, f"warm shutdown exit status {rc}"
    # No other worker: the result can only come from this one, before it exited.
    assert running.get(timeout=scaled(3)) == 2
    assert redis_client.hlen("unacked") == 0


def test_warm_shutdown_returns_prefetched_messages(worker, celery_app, redis_client):
    w = worker("-c", "1")
    running = celery_app.send_task("diag.sleep", args=[2])
    wait_active(celery_app, running.id)
    queued = [celery_app.send_task("diag.add", args=[i, 100]) for i in range(3)]
    for r in queued:  # all three prefetched behind the running one
        wait_received(w, r.id)
    w.signal(signal.SIGTERM)
    assert w.wait_exit(15) == 0
    assert running.get(timeout=scaled(3)) == 2
    # The prefetched messages are back in the queue, not stuck in unacked.
    assert redis_client.llen("celery") == 3, redis_client.lrange("celery", 0, -1)
    assert redis_client.hlen("unacked") == 0
    for r in queued:
        assert r.state == "PENDING"
    worker()
    assert [r.get(timeout=scaled(GET)) for r in queued] == [100, 101, 102]


@both_brokers
def test_sigint_is_warm_shutdown(worker, celery_app):
    w = worker("-c", "1")
    running = celery_app.send_task("diag.sleep", args=[2])
    wait_active(celery_app, running.id)
    w.signal(signal.SIGINT)
    assert w.wait_exit(15) == 0
    assert running.get(timeout=scaled(3)) == 2


@both_brokers
def test_idle_warm_shutdown_is_quick(worker):
    w = worker()
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit(10) == 0
    assert time.monotonic() - t0 < scaled(5)
    wait_until(lambda: not w.group_pids(), scaled(5), what="executors to exit")


@celeriac_only
def test_second_sigterm_is_cold_shutdown(worker, celery_app, redis_client):
    w = worker("-c", "1")
    r = celery_app.send_task("diag.sleep", args=[30])
    wait_active(celery_app, r.id)
    w.signal(signal.SIGTERM)
    w.wait_log(r"Warm shutdown", 5)
    # What is tested: half a second after taking the first SIGTERM it still runs the task.
    assert w.wait_exit(0.5) is None, "exited at the first SIGTERM with a 30s task running"
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit(10) is not None, "second SIGTERM did not stop the worker"
    assert time.monotonic() - t0 < scaled(5)
    wait_until(lambda: not w.group_pids(), scaled(5), what="executors to exit")
    # The interrupted task was never acked: it is still held for redelivery.
    assert r.state == "PENDING"
    assert redis_client.hlen("unacked") + redis_client.llen("celery") >= 1


@both_brokers
def test_sigquit_is_cold_shutdown(worker, celery_app):
    w = worker("-c", "1")
    r = celery_app.send_task("diag.sleep", args=[30])
    wait_active(celery_app, r.id)
    t0 = time.monotonic()
    w.signal(signal.SIGQUIT)
    assert w.wait_exit(10) is not None, "SIGQUIT did not stop the worker"
    assert time.monotonic() - t0 < scaled(5)


def kill_with_prefetched(w, app, redis_client, n=5, seconds=0.5):
    """-c 1 worker: sends n sleeps (the first of 2 s, so it still runs when looked at) and
    SIGKILLs the main process once the first is running and the next are prefetched.
    Returns [(AsyncResult, expected result)] for the messages that must come back."""
    lengths = [2.0] + [seconds] * (n - 1)
    rs = [app.send_task("diag.sleep", args=[s]) for s in lengths]
    wait_active(app, rs[0].id)
    wait_received(w, rs[1].id)
    wait_until(lambda: redis_client.hlen("unacked") >= 1, scaled(5),
               what="unacked to record the messages the worker holds")
    w.kill()
    held = list(zip(rs, lengths))
    if WORKER_KIND == "python":
        # The Python worker acks a message when it hands it to the pool (acks_late=False),
        # so the running one is lost with it; celeriac acks after storing the result.
        return held[1:]
    return held


def test_sigkill_then_redelivery_after_visibility_timeout(worker, celery_app, redis_client):
    """Restore at start-up: the held messages are older than the visibility timeout when
    the next worker starts (what kombu does in QoS.restore_visible on poll init)."""
    rs = kill_with_prefetched(worker("-c", "1"), celery_app, redis_client)
    wait_held_older_than(redis_client, 2)
    worker("-c", "2", "--visibility-timeout", "2")
    assert [r.get(timeout=scaled(20)) for r, _ in rs] == [s for _, s in rs]
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(10), what="unacked to drain")


@celeriac_only
def test_sigkill_then_periodic_restore(worker, celery_app, redis_client):
    """Restore while running: the next worker starts at once, before the held messages are
    older than its visibility timeout, and must pick them up when they become visible
    (kombu rechecks only about every 100 s, so this is celeriac-only)."""
    rs = kill_with_prefetched(worker("-c", "1"), celery_app, redis_client)
    worker("-c", "2", "--visibility-timeout", "2")
    assert [r.get(timeout=scaled(20)) for r, _ in rs] == [s for _, s in rs]
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(10), what="unacked to drain")


def test_sigkill_restore_by_python_worker(worker, pyworker, celery_app, redis_client):
    """Messages a SIGKILLed celeriac held are restored and run by a stock Python worker."""
    w = worker("-c", "1")
    rs = [celery_app.send_task("diag.add", args=[i, 1]) for i in range(3)]
    assert [r.get(timeout=scaled(GET)) for r in rs] == [1, 2, 3]
    rs2 = kill_with_prefetched(w, celery_app, redis_client, n=4, seconds=1)
    wait_held_older_than(redis_client, 2)
    pyworker("--visibility-timeout", "2")
    assert [r.get(timeout=scaled(30)) for r, _ in rs2] == [s for _, s in rs2]


@celeriac_only
def test_sigkill_while_waiting_for_a_message_loses_nothing(worker, celery_app, redis_client):
    """An idle worker waits for the next message on its queues. A worker killed just as a
    message reached it (in the socket, before the worker registered it in `unacked`) lost
    that message for good: kombu's BRPOP takes it off the queue on delivery (a stock worker
    has the same window). Frozen while waiting (SIGSTOP), sent a task, then killed: the
    task must still run on the next worker."""
    db = redis_client.connection_pool.connection_kwargs["db"]

    def blocked():
        return [c for c in redis_client.client_list()
                if "b" in c.get("flags", "") and int(c.get("db", -1)) == db]

    w = worker("-c", "1")
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    for _ in range(50):  # frozen while its wait is in the server (it times out every second)
        w.signal(signal.SIGSTOP)
        time.sleep(0.05)
        if blocked():
            break
        w.signal(signal.SIGCONT)
        time.sleep(0.2)
    assert blocked(), "the worker never waited for a message"
    r = celery_app.send_task("diag.add", args=[2, 3])
    time.sleep(0.3)  # the server hands the wake-up to the frozen worker's socket
    os.killpg(w.pgid, signal.SIGKILL)
    w.proc.wait(10)
    w2 = worker("-c", "1")
    assert r.get(timeout=scaled(30)) == 5
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(10), what="unacked to drain")
    # the dead worker is forgotten once its lists are empty; a clean stop leaves nothing behind
    wait_until(lambda: redis_client.scard("_celeriac.waits") == 1, scaled(20),
               what="the dead worker forgotten")
    assert w2.stop() == 0
    left = [k for k in redis_client.keys("_celeriac.*") if not k.startswith(b"_celeriac.pop.")]
    assert left == [], left


@both_brokers
@pytest.mark.parametrize("seconds", [1, pytest.param(300, marks=celeriac_only)])
def test_executors_exit_when_main_is_killed(worker, celery_app, seconds):
    """Orphaned executors would hold memory (and a GPU) forever: they must notice and exit.
    One in the middle of a 300 s task does not finish it first (it used to: the result could
    no longer be stored, and a model task kept its adapter's lock, so the node adopting the
    adapter answered AdapterBusy)."""
    w = worker("-c", "2")
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    r = celery_app.send_task("diag.sleep", args=[seconds])
    if seconds > 1:
        wait_active(celery_app, r.id)  # running, not only received
    else:
        wait_received(w, r.id)
    w.kill()
    wait_until(lambda: not w.group_pids(), scaled(10),
               what="executors to exit after their main process was SIGKILLed")


def models_loaded(w):
    """How many executors of worker w have said their model is loaded (replacements count)."""
    return len(re.findall(r"executor \d+ \(pid \d+\): model on", w.log()))


@celeriac_only
@both_brokers
def test_executors_that_cannot_start_stop_the_worker(worker, celery_app, tmp_path):
    """A wrong --model: every executor fails to load it, and none ever started. The worker used
    to restart them every second for good while the tasks it had fetched waited; it now says
    why and exits with status 1, and what it fetched goes back to the broker for a good one."""
    queued = celery_app.send_task("diag.add", args=[2, 3])
    w = worker("-c", "2", "--model", str(tmp_path / "no-such-model"), ready=False)
    assert w.wait_exit(15) == 1, w.log_tail()
    log = w.log()
    assert re.search(r"Cannot load the model from \S*no-such-model", log), log
    assert "could not start (exit status 3" in log and "Stopping the worker." in log, log
    assert queued.state == "PENDING"
    worker()
    assert queued.get(timeout=scaled(GET)) == 5


@celeriac_only
def test_executor_that_cannot_restart_leaves_the_worker_serving(worker, celery_app, tmp_path):
    """Once an executor has started, one that cannot be replaced (its model gone meanwhile) is
    not the end of the worker: the other executor goes on serving, and the slot is refilled
    once the model is back (a restart after a second)."""
    model = tmp_path / "model"
    model.symlink_to(os.path.join(REPO, "model", "tiny"))
    w = worker("-c", "2", "--model", str(model))
    wait_until(lambda: models_loaded(w) == 2, scaled(20), what="both executors' models")
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    model.unlink()
    os.kill(w.child_pids()[0], signal.SIGKILL)
    w.wait_log(r"Cannot load the model from", 20)
    assert w.alive() and "could not start" not in w.log()
    assert celery_app.send_task("diag.add", args=[2, 2]).get(timeout=scaled(GET)) == 4
    model.symlink_to(os.path.join(REPO, "model", "tiny"))
    wait_until(lambda: models_loaded(w) == 3, scaled(20), what="the replaced executor's model")
    assert w.stop() == 0


@celeriac_only
def test_executor_failing_while_another_starts_leaves_the_worker_serving(worker, celery_app,
                                                                         tmp_path):
    """The worker stops only when every slot's executor failed to start: one that exits with
    status 3 while the other starts (here the first one spawned, through a wrapper) is
    retried after a second, as before, and the worker serves."""
    wrapper = tmp_path / "executor.sh"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"if mkdir {tmp_path / 'first'} 2>/dev/null; then\n"
        "  echo 'test: this executor cannot load its model' >&2; exit 3\n"
        "fi\n"
        f"exec {os.path.join(celeriac_bin_dir(), 'celeriac-executor')} \"$@\"\n")
    wrapper.chmod(0o755)
    w = worker("-c", "2", "--executor", str(wrapper))
    wait_until(lambda: models_loaded(w) == 2, scaled(20), what="both executors' models")
    assert "test: this executor cannot load its model" in w.log()
    assert w.alive() and "could not start" not in w.log()
    assert celery_app.send_task("diag.add", args=[3, 4]).get(timeout=scaled(GET)) == 7


@celeriac_only
def test_private_state_folders_are_removed(worker, celery_app):
    """Without --state-dir each executor keeps its adapters in a folder of its own, under one
    folder of the worker's. A killed executor cannot remove its folder: the main process
    does; a clean stop removes the worker's. (Each killed executor used to leave a
    /tmp/celeriac-state-XXXXXX behind: thousands after a day of tests.)"""
    w = worker("-c", "2")
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2

    def folders():
        return dict((int(m.group(2)), m.group(1) + f"/executor-{m.group(2)}") for m in
                    re.finditer(r"adapters live in (\S+)/executor-(\d+) ", w.log()))
    got = wait_until(lambda: len(folders()) == 2 and folders(), scaled(10),
                     what="both executors' private folders")
    parent = os.path.dirname(next(iter(got.values())))
    assert parent.startswith("/tmp/celeriac-state-")
    assert all(os.path.isdir(f) for f in got.values())
    victim = next(iter(got))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not os.path.exists(got[victim]), scaled(10),
               what="the killed executor's folder to be removed")
    wait_until(lambda: len(folders()) == 3, scaled(20), what="the new executor's folder")
    assert celery_app.send_task("diag.add", args=[2, 2]).get(timeout=scaled(GET)) == 4
    assert w.stop() == 0
    assert not os.path.exists(parent), os.listdir(parent)


@celeriac_only
def test_private_state_of_a_killed_worker_is_removed_by_the_next(worker, celery_app):
    """A worker killed with -9 cannot remove its private state folder. It holds a lock on the
    folder's `owner` file for its life; the next worker to start removes every such folder
    whose lock is free, and leaves a live worker's alone."""
    def parent_of(w):
        got = wait_until(lambda: re.search(r"adapters live in (\S+)/executor-\d+ ", w.log()),
                         scaled(10), what="the executor's private folder")
        return got.group(1)

    live = worker("-c", "1")
    doomed = worker("-c", "1")
    live_parent, doomed_parent = parent_of(live), parent_of(doomed)
    assert os.path.isfile(os.path.join(doomed_parent, "owner"))
    os.killpg(doomed.pgid, signal.SIGKILL)
    doomed.proc.wait(10)
    assert os.path.isdir(doomed_parent)
    nxt = worker("-c", "1")
    assert not os.path.exists(doomed_parent)
    assert os.path.isdir(live_parent) and os.path.isdir(parent_of(nxt))
    assert celery_app.send_task("diag.add", args=[2, 2]).get(timeout=scaled(GET)) == 4
    assert live.stop() == 0 and nxt.stop() == 0


def test_pidfile_written_and_removed(worker, tmp_path):
    pidfile = tmp_path / "celeriac.pid"
    w = worker("--pidfile", str(pidfile))
    assert int(pidfile.read_text().strip()) == w.pid
    assert w.stop() == 0
    assert not pidfile.exists(), "pidfile left behind after a clean shutdown"


def test_hostname_expansion(worker):
    host = socket.gethostname()
    short, _, domain = host.partition(".")
    w = worker("-n", "alpha-%n@%h")
    w.wait_log(re.escape(f"alpha-{short}@{host} ready."), 5)
    w = worker("-n", "beta@%h")
    w.wait_log(re.escape(f"beta@{host} ready."), 5)
    if domain:
        w = worker("-n", "gamma@%d")
        w.wait_log(re.escape(f"gamma@{domain} ready."), 5)


@celeriac_only
def test_default_hostname(worker):
    w = worker()
    w.wait_log(re.escape(f"celeriac@{socket.gethostname()} ready."), 5)


def test_logfile_option(worker, celery_app, tmp_path):
    logfile = tmp_path / "worker-file.log"
    w = worker("-f", str(logfile), ready=False)
    wait_until(lambda: logfile.exists() and "ready." in logfile.read_text(errors="replace"),
               scaled(20), what="ready. in the --logfile file")
    r = celery_app.send_task("diag.add", args=[3, 4])
    assert r.get(timeout=scaled(GET)) == 7
    wait_until(lambda: f"[{r.id}] succeeded" in logfile.read_text(errors="replace"),
               scaled(5), what="the succeeded line in the --logfile file")
    assert w.alive()


def test_loglevel_warning_is_quiet(worker, celery_app):
    w = worker("-l", "warning", ready=False)
    r = celery_app.send_task("diag.add", args=[1, 2])
    assert r.get(timeout=scaled(20)) == 3
    assert not w.succeeded(), "INFO lines at -l warning"


def test_survives_broker_restart(worker, tmp_redis, make_app):
    server = tmp_redis()
    url = server.url(0)
    w = worker("-c", "1", broker=url)
    app = make_app(url)
    assert app.send_task("diag.add", args=[1, 2]).get(timeout=scaled(GET)) == 3
    port = server.port
    server.stop()
    # the worker has noticed (celeriac's wording, then Celery's)
    w.wait_log(r"connection to redis://\S+ lost|Connection to broker lost", 10)
    tmp_redis(port=port)
    app2 = make_app(url)
    r = app2.send_task("diag.add", args=[2, 3])
    assert r.get(timeout=scaled(30)) == 5, "worker did not reconnect to the restarted broker"
