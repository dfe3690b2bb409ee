"""test_events.py -- celeriac's events as celery.events.EventReceiver and State (Flower) see them.

worker-online/heartbeat/offline, task-received -> started -> succeeded/failed with runtime,
task-revoked, enable_events at run time, and `celery events --dump` showing them.
"""

import os
import signal
import subprocess
import threading

from conftest import (HERE, PYTHON, both_brokers, celeriac_only, scaled, subscribers,
                      wait_subscribed, wait_until)

# Events on both brokers (conftest.py): celeryev is a topic exchange on RabbitMQ.
pytestmark = both_brokers


class Monitor:
    """An EventReceiver feeding a State in a thread, as Flower runs it."""

    def __init__(self, app, redis_client, db):
        self.app = app
        self.state = app.events.State()
        self.events = []
        self.conn = app.connection()
        self.recv = app.events.Receiver(self.conn, handlers={"*": self.on_event})
        before = len(subscribers(redis_client, db))
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        # events published before the receiver subscribes are lost to it
        wait_subscribed(redis_client, db, before + 1, what="the event receiver to subscribe")

    def on_event(self, event):
        self.events.append(event)
        self.state.event(event)

    def run(self):
        try:
            self.recv.capture(limit=None, timeout=None, wakeup=False)
        except Exception:
            pass

    def types(self, uuid=None):
        return [e["type"] for e in list(self.events) if uuid is None or e.get("uuid") == uuid]

    def close(self):
        self.recv.should_stop = True
        self.thread.join(5)
        self.conn.release()


def test_state_sees_worker_and_tasks(worker, celery_app, redis_client, db):
    mon = Monitor(celery_app, redis_client, db)
    try:
        w = worker("-E", "-n", "ev1@%h")
        node = wait_until(lambda: [n for n, wk in mon.state.workers.items() if wk.alive],
                          scaled(10), what="worker alive in State")[0]
        online = [e for e in mon.events if e["type"] == "worker-online"][0]
        assert online["freq"] == 2.0 and online["sw_ident"] == "celeriac"
        assert {"active", "processed", "loadavg", "sw_ver", "sw_sys", "clock", "utcoffset",
                "pid", "timestamp"} <= set(online)
        ok = celery_app.send_task("diag.add", args=[2, 3])
        bad = celery_app.send_task("diag.fail", args=["boom"])
        assert ok.get(timeout=scaled(10)) == 5
        try:
            bad.get(timeout=scaled(10))
        except Exception:
            pass
        wait_until(lambda: mon.state.tasks.get(ok.id) is not None and
                   mon.state.tasks[ok.id].state == "SUCCESS", scaled(5), what="SUCCESS in State")
        t = mon.state.tasks[ok.id]
        assert t.name == "diag.add" and t.args in ("(2, 3)", "[2, 3]") and t.result == "5"
        assert isinstance(t.runtime, float) and t.worker.hostname == node
        assert mon.types(ok.id) == ["task-received", "task-started", "task-succeeded"]
        wait_until(lambda: mon.state.tasks.get(bad.id) is not None and
                   mon.state.tasks[bad.id].state == "FAILURE", scaled(5), what="FAILURE")
        assert mon.state.tasks[bad.id].exception
        wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in mon.events), scaled(5),
                   what="a heartbeat")
        assert w.stop() == 0
        wait_until(lambda: not mon.state.workers[node].alive, scaled(5),
                   what="worker offline in State")
        assert any(e["type"] == "worker-offline" for e in mon.events)
    finally:
        mon.close()


@celeriac_only
def test_enable_events_at_run_time(worker, celery_app, redis_client, db):
    mon = Monitor(celery_app, redis_client, db)
    try:
        worker()
        wait_until(lambda: mon.state.workers, scaled(10), what="worker-online")
        quiet = celery_app.send_task("diag.noop")
        quiet.get(timeout=scaled(10))
        # Waited for: the broadcast and the next task travel apart (on AMQP the pidbox's
        # fanout and the task queue), so without the reply the task could run first.
        reply = celery_app.control.enable_events(reply=True, limit=1, timeout=scaled(10))
        assert [list(x.values())[0] for x in reply] == [{"ok": "task events enabled"}], reply
        r = celery_app.send_task("diag.noop")
        r.get(timeout=scaled(10))
        wait_until(lambda: "task-succeeded" in mon.types(r.id), scaled(5), what="task events")
        # The worker publishes its events in order on one connection: anything it sent
        # for the first task arrived before the second one's.
        assert mon.types(quiet.id) == []  # no -E: no task events
    finally:
        mon.close()


def test_events_dump_cli(worker, celery_app, broker_url, redis_client, db):
    env = dict(os.environ, CELERY_BROKER_URL=broker_url, PYTHONPATH=HERE, PYTHONUNBUFFERED="1")
    # The child writes in append mode and the test reads through its own descriptor: a shared
    # "w+" file's offset let the test's seek(0) send the child's next line to the file's start,
    # over the worker-online event it waits for (1 run in 6 failed so).
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"dump-{os.getpid()}.txt")
    open(path, "w").close()
    out = open(path, "a")
    before = len(subscribers(redis_client, db))
    dump = subprocess.Popen([PYTHON, "-m", "celery", "-A", "pydiag", "events", "--dump"],
                            cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_subscribed(redis_client, db, before + 1, timeout=20,
                        what="`celery events --dump` to subscribe")
        worker("-E")
        assert celery_app.send_task("diag.add", args=[4, 4]).get(timeout=scaled(10)) == 8

        def seen():
            with open(path) as f:
                text = f.read()
            return "task succeeded: diag.add" in text and "] started:" in text and text
        text = wait_until(seen, scaled(10), interval=0.2, what="events in celery events --dump")
        assert "diag.add" in text
    finally:
        os.killpg(dump.pid, signal.SIGKILL)
        dump.wait(10)
        out.close()
        os.unlink(path)
