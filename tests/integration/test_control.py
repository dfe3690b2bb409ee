"""test_control.py -- `celery control` and app.control against celeriac.

revoke before and during execution (terminate), revoked ids surviving a restart with
--state-dir, rate_limit enforced, add/cancel_consumer, pool_grow/pool_shrink seen in stats,
pool_restart, the replies of the other commands, and shutdown.
"""

import time
import uuid

import pytest
from celery.exceptions import TaskRevokedError

from conftest import (both_brokers, celeriac_only, redis_only, scaled, wait_active,
                      wait_until)
from remote import cli, only

# Remote control on both brokers (conftest.py); add/cancel_consumer's check reads Redis's
# command stream, so it stays there.
pytestmark = both_brokers

T = 2.0


def stats(app):
    return next(iter((app.control.inspect(timeout=scaled(T), limit=1).stats() or {None: None}).values()))


def test_revoke_before_execution(worker, celery_app, broker_url):
    worker("-c", "1")
    early_id = str(uuid.uuid4())
    assert "flagged as revoked" in only(celery_app.control.revoke(early_id, reply=True,
                                                                 timeout=scaled(T)))["ok"]
    # The busy task must outlast the `celery control` CLI's start-up (over 1 s on
    # a loaded 2-core machine), or the queued task runs before its revoke arrives.
    busy = celery_app.send_task("diag.sleep", args=[5])
    wait_active(celery_app, busy.id)
    queued = celery_app.send_task("diag.add", args=[1, 1])
    p = cli(broker_url, "control", "revoke", queued.id)
    assert p.returncode == 0 and f"tasks {queued.id} flagged as revoked" in p.stdout, p.stdout
    with pytest.raises(TaskRevokedError):
        queued.get(timeout=scaled(5))
    early = celery_app.send_task("diag.add", args=[2, 2], task_id=early_id)
    with pytest.raises(TaskRevokedError):
        early.get(timeout=scaled(5))
    assert early.state == "REVOKED"
    assert busy.get(timeout=scaled(15)) == 5
    revoked = next(iter(celery_app.control.inspect(timeout=scaled(T), limit=1).revoked().values()))
    assert {early_id, queued.id} <= set(revoked)


@celeriac_only
def test_revoke_terminate_kills_and_respawns(worker, celery_app):
    worker("-c", "1")
    pids_before = stats(celery_app)["pool"]["processes"]
    r = celery_app.send_task("diag.sleep", args=[30])
    wait_active(celery_app, r.id)
    t0 = time.monotonic()
    reply = celery_app.control.revoke(r.id, terminate=True, reply=True, timeout=scaled(T))
    assert only(reply) == {"ok": f"terminate: {r.id}"}
    with pytest.raises(TaskRevokedError) as exc:
        r.get(timeout=scaled(10))
    assert "terminated" in str(exc.value)
    assert time.monotonic() - t0 < scaled(10)
    assert celery_app.send_task("diag.add", args=[2, 3]).get(timeout=scaled(10)) == 5
    pids_after = stats(celery_app)["pool"]["processes"]
    assert len(pids_after) == 1 and pids_after != pids_before


@celeriac_only
def test_revoke_terminate_refuses_bad_signals(worker, celery_app):
    # Numbers past int and past NSIG are refused, not truncated into some other signal.
    worker("-c", "1")
    r = celery_app.send_task("diag.sleep", args=[30])
    wait_active(celery_app, r.id)
    for sig in ("99999999999999999999", "4294967311", 4294967311, "65", "15x", "NOPE"):
        reply = only(celery_app.control.revoke(r.id, terminate=True, signal=sig, reply=True,
                                               timeout=scaled(T)))
        assert "error" in reply and "unknown signal" in reply["error"], (sig, reply)
    assert r.id in [t["id"] for t in next(iter(
        celery_app.control.inspect(timeout=scaled(T), limit=1).active().values()))]
    reply = celery_app.control.revoke(r.id, terminate=True, signal="9", reply=True,
                                      timeout=scaled(T))
    assert only(reply) == {"ok": f"terminate: {r.id}"}
    with pytest.raises(TaskRevokedError):
        r.get(timeout=scaled(10))


@celeriac_only
def test_revoked_survive_restart_with_state_dir(worker, celery_app, tmp_path):
    state = str(tmp_path / "state")
    w = worker("--state-dir", state)
    tid = str(uuid.uuid4())
    celery_app.control.revoke(tid, reply=True, timeout=scaled(T))
    assert w.stop() == 0
    worker("--state-dir", state)
    revoked = next(iter(celery_app.control.inspect(timeout=scaled(T), limit=1).revoked().values()))
    assert tid in revoked
    with pytest.raises(TaskRevokedError):
        celery_app.send_task("diag.add", args=[1, 1], task_id=tid).get(timeout=scaled(5))


def test_rate_limit_enforced(worker, celery_app):
    worker("-c", "2")
    reply = celery_app.control.rate_limit("diag.noop", "2/s", reply=True, timeout=scaled(T))
    assert only(reply) == {"ok": "new rate limit set successfully"}
    t0 = time.monotonic()
    rs = [celery_app.send_task("diag.noop") for _ in range(4)]
    for r in rs:
        r.get(timeout=scaled(10))
    assert time.monotonic() - t0 >= 1.3  # 4 tasks at 2/s: starts at 0, .5, 1, 1.5 s
    reg = next(iter(celery_app.control.inspect(timeout=scaled(T), limit=1).registered().values()))
    assert "diag.noop [rate_limit=2/s]" in reg
    reply = celery_app.control.rate_limit("diag.nope", "2/s", reply=True, timeout=scaled(T))
    assert only(reply) == {"error": "unknown task"}


def is_fetch(command):
    """A worker taking or waiting for messages: BRPOP (kombu), celeriac's POP script (the one
    whose arguments name its record, _celeriac.pop.<uuid>) or its idle wait (BLMOVE)."""
    # (not the client's BRPOP on its pidbox reply queue, which may still be in flight when a
    # broadcast has all its replies)
    if ".reply.celery.pidbox" in command:
        return False
    return command.startswith(("BRPOP ", "BLMOVE ")) or (
        command.startswith("EVALSHA ") and "_celeriac.pop." in command)


@redis_only
def test_add_and_cancel_consumer(worker, celery_app, redis_client, redis_monitor, db):
    worker()
    reply = celery_app.control.add_consumer("extra", reply=True, timeout=scaled(T))
    assert only(reply) == {"ok": "add consumer extra"}
    assert celery_app.send_task("diag.add", args=[3, 4], queue="extra").get(timeout=scaled(10)) == 7
    queues = next(iter(celery_app.control.inspect(timeout=scaled(T), limit=1).active_queues().values()))
    # (and the node's direct queue, <node>.dq2, issue 15)
    assert sorted(q["name"] for q in queues if not q["name"].endswith(".dq2")) == ["celery", "extra"]
    mark = redis_monitor.mark()
    reply = celery_app.control.cancel_consumer("extra", reply=True, timeout=scaled(T))
    assert only(reply) == {"ok": "no longer consuming from extra"}
    # The cancel ends the wait on "extra" (CLIENT UNBLOCK) before the worker's next POP, on
    # the same connection: its first fetch without "extra" means that wait is over.
    mine = lambda d, c: d == db and is_fetch(c)  # noqa: E731
    first = redis_monitor.wait_for(lambda d, c: mine(d, c) and "extra" not in c, start=mark,
                                   what="a fetch without the cancelled queue")
    celery_app.send_task("diag.add", args=[1, 1], queue="extra")
    pushed = redis_monitor.wait_for(lambda d, c: d == db and c.startswith("LPUSH extra "),
                                    start=mark, what="the LPUSH to extra")
    # The worker's next fetch after the message landed: it must not take it.
    redis_monitor.wait_for(mine, start=pushed + 1, what="the next fetch")
    later = [c for d, c in redis_monitor.commands[first:] if mine(d, c)]
    assert not any("extra" in c for c in later), later
    assert redis_client.llen("extra") == 1


@celeriac_only
def test_pool_grow_shrink_restart(worker, celery_app):
    worker("-c", "1")
    assert only(celery_app.control.pool_grow(2, reply=True, timeout=scaled(T))) == \
        {"ok": "pool will grow"}
    wait_until(lambda: len(stats(celery_app)["pool"]["processes"]) == 3, scaled(10),
               interval=0.2, what="3 executors")
    s = stats(celery_app)
    assert s["pool"]["max-concurrency"] == 3 and s["prefetch_count"] == 12
    assert only(celery_app.control.pool_shrink(2, reply=True, timeout=scaled(T))) == \
        {"ok": "pool will shrink"}
    wait_until(lambda: len(stats(celery_app)["pool"]["processes"]) == 1, scaled(10),
               interval=0.2, what="1 executor")
    before = stats(celery_app)["pool"]["processes"]
    reply = celery_app.control.broadcast("pool_restart", reply=True, timeout=scaled(T))
    assert only(reply) == {"ok": "reload started"}
    wait_until(lambda: (p := stats(celery_app)["pool"]["processes"]) and p != before,
               scaled(10), interval=0.2, what="a restarted executor")
    assert celery_app.send_task("diag.add", args=[2, 2]).get(timeout=scaled(10)) == 4


@celeriac_only
def test_other_command_replies(worker, celery_app):
    worker()
    c = celery_app.control

    def call(cmd, **kw):
        return only(c.broadcast(cmd, arguments=kw, reply=True, timeout=scaled(T)))

    assert call("enable_events") == {"ok": "task events enabled"}
    assert call("enable_events") == {"ok": "task events already enabled"}
    assert call("disable_events") == {"ok": "task events disabled"}
    assert call("disable_events") == {"ok": "task events already disabled"}
    assert call("time_limit", task_name="diag.sleep", soft=1, hard=2) == \
        {"ok": "time limits set successfully"}
    assert call("autoscale", max=2, min=1) == {"error": "ValueError('Autoscale not enabled')"}
    assert call("election", id="x", topic="t") is None
    hello = call("hello", from_node="other@host", revoked={})
    assert hello["revoked"] == {} and isinstance(hello["clock"], int)
    # time_limit applies: a 5 s sleep is killed at the 2 s hard limit
    r = celery_app.send_task("diag.sleep", args=[5])
    with pytest.raises(Exception) as exc:
        r.get(timeout=scaled(10))
    assert type(exc.value).__name__ in ("TimeLimitExceeded", "SoftTimeLimitExceeded")


def test_shutdown_command(worker, celery_app, broker_url):
    w = worker()
    p = cli(broker_url, "control", "shutdown")
    assert "No nodes replied" in p.stdout + p.stderr  # as with the stock worker: no reply
    assert w.wait_exit(15) == 0
    w.wait_log(r"Got shutdown from remote")
