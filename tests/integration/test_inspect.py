"""test_inspect.py -- `celery inspect` and app.control.inspect() against celeriac.

Runs the real `celery -A pydiag inspect ...` command and the Python API and checks the printed
output and the reply dicts: field names and types as the stock worker gives them (see
../shared/celery-wire.md section 6.3). Also: ping while every executor is busy, destination and
pattern filtering across two celeriac workers and one stock Python worker, and garbage on the
pidbox and events channels. On Redis, "ready." (and a reconnected mailbox's "connected" line)
comes only once the server confirmed the mailbox's PSUBSCRIBE, so a broadcast sent the moment it
shows is answered: the worker's Redis user is denied PSUBSCRIBE by an ACL, which holds the
subscription back while every other connection is up, then allowed it.
"""

import json
import re
import socket
import time

from conftest import READY_RE, both_brokers, celeriac_only, redis_only, scaled, wait_until
from remote import cli, only

# Remote control on both brokers (conftest.py); raw garbage is pushed on Redis only.
pytestmark = both_brokers

T = 2.0  # inspect reply timeout


def inspector(app, **kw):
    return app.control.inspect(timeout=scaled(T), limit=1, **kw)


@celeriac_only
def test_cli_inspect_commands(worker, broker_url):
    w = worker("-n", "ci1@%h", "-c", "2")
    node = "-d", f"ci1@{socket.gethostname()}"  # with a destination the CLI stops at its reply
    p = cli(broker_url, "inspect", "ping")
    assert p.returncode == 0, p.stderr
    assert "pong" in p.stdout and "1 node online" in p.stdout
    for cmd in ("stats", "active", "reserved", "scheduled", "registered", "active_queues",
                "revoked", "conf", "report", "clock"):
        p = cli(broker_url, "inspect", cmd, *node)
        assert p.returncode == 0, (cmd, p.stdout, p.stderr)
        assert "ci1@" in p.stdout and "OK" in p.stdout, (cmd, p.stdout)
    p = cli(broker_url, "inspect", "stats", "--json", *node)
    stats = next(iter(json.loads(p.stdout).values()))
    assert stats["pid"] == w.pid
    assert isinstance(stats["clock"], str) and int(stats["clock"]) > 0
    assert isinstance(stats["uptime"], int)
    pool = stats["pool"]
    assert pool["max-concurrency"] == 2 and len(pool["processes"]) == 2
    assert pool["max-tasks-per-child"] == "N/A" and pool["put-guarded-by-semaphore"] is False
    assert set(pool["writes"]) >= {"total", "avg", "all", "raw", "strategy", "inqueues"}
    assert stats["prefetch_count"] == 8
    assert stats["broker"]["transport"] == ("amqp" if broker_url.startswith("amqp") else "redis")
    assert {"utime", "stime", "maxrss", "nvcsw"} <= set(stats["rusage"])
    p = cli(broker_url, "inspect", "registered", "--json", *node)
    reg = next(iter(json.loads(p.stdout).values()))
    assert "diag.add" in reg and reg == sorted(reg)
    p = cli(broker_url, "inspect", "active_queues", "--json", *node)
    q = next(iter(json.loads(p.stdout).values()))
    assert q[0]["name"] == "celery" and q[0]["exchange"]["type"] == "direct"
    p = cli(broker_url, "inspect", "report", "--json", *node)
    assert "celeriac" in next(iter(json.loads(p.stdout).values()))["ok"]


def test_inspect_api_busy_worker(worker, celery_app):
    w = worker("-c", "1")
    sleeper = celery_app.send_task("diag.sleep", args=[8])
    i = inspector(celery_app)
    active = wait_until(lambda: [r for v in (i.active() or {}).values() for r in v],
                        scaled(10), interval=0.2, what="diag.sleep in inspect active")
    assert active[0]["id"] == sleeper.id and active[0]["name"] == "diag.sleep"
    assert active[0]["args"] == [8] and active[0]["kwargs"] == {}
    assert isinstance(active[0]["time_start"], float) and isinstance(active[0]["worker_pid"], int)
    # Every executor is busy: ping must still answer within Flower's 1 s timeout.
    t0 = time.monotonic()
    replies = celery_app.control.ping(timeout=1.0)
    assert len(replies) == 1 and only(replies) == {"ok": "pong"}
    assert time.monotonic() - t0 < 1.6
    queued = celery_app.send_task("diag.add", args=[7, 7])
    later = celery_app.send_task("diag.add", args=[8, 8], countdown=60)
    reserved = wait_until(lambda: [r for v in (i.reserved() or {}).values() for r in v],
                          scaled(5), interval=0.2, what="reserved task")
    assert reserved[0]["id"] == queued.id and reserved[0]["args"] == [7, 7]
    assert reserved[0]["time_start"] is None and reserved[0]["worker_pid"] is None
    sched = wait_until(lambda: [r for v in (i.scheduled() or {}).values() for r in v],
                       scaled(5), interval=0.2, what="scheduled task")
    assert sched[0]["request"]["id"] == later.id and sched[0]["eta"].endswith("+00:00")
    q = i.query_task(sleeper.id, queued.id)
    info = next(iter(q.values()))
    assert info[sleeper.id][0] == "active" and info[queued.id][0] == "reserved"
    assert next(iter(i.clock().values()))["clock"] > 0
    assert sleeper.get(timeout=scaled(12)) == 8 and queued.get(timeout=scaled(10)) == 14
    stats = next(iter(i.stats().values()))
    assert stats["total"].get("diag.sleep") == 1 and stats["total"].get("diag.add") == 1
    celery_app.control.revoke(later.id)
    assert w.alive()


@celeriac_only
def test_unknown_command_gets_keyerror(worker, celery_app):
    worker()
    replies = celery_app.control.broadcast("no_such_cmd", reply=True, timeout=scaled(T))
    assert only(replies) == {"error": "KeyError('no_such_cmd')"}


@celeriac_only
def test_three_workers_destination_and_pattern(worker, pyworker, celery_app):
    worker("-n", "ca@%h", "-c", "1")
    worker("-n", "cb@%h", "-c", "1")
    pyworker("-n", "py@%h")
    replies = celery_app.control.ping(timeout=scaled(T))
    names = sorted(n.split("@")[0] for r in replies for n in r)
    assert names == ["ca", "cb", "py"], replies
    target = [n for r in replies for n in r if n.startswith("cb@")][0]
    replies = celery_app.control.ping(destination=[target], timeout=scaled(T))
    assert [list(r) for r in replies] == [[target]]
    replies = celery_app.control.broadcast("ping", reply=True, timeout=scaled(T),
                                           pattern="ca@.*", matcher="pcre")
    assert [n.split("@")[0] for r in replies for n in r] == ["ca"]
    replies = celery_app.control.broadcast("ping", reply=True, timeout=scaled(T),
                                           pattern="c?@*", matcher="glob")
    assert sorted(n.split("@")[0] for r in replies for n in r) == ["ca", "cb"]


@redis_only
@celeriac_only
def test_garbage_on_pidbox_and_events_channels(worker, celery_app, redis_client, db):
    w = worker()
    redis_client.publish(f"/{db}.celery.pidbox", b"not json at all")
    redis_client.publish(f"/{db}.celery.pidbox", json.dumps({"body": "!!!", "properties": {
        "body_encoding": "base64"}, "content-type": "application/json", "headers": {}}))
    redis_client.publish(f"/{db}.celery.pidbox", json.dumps({"body": "[1, 2]", "properties": {},
                                                             "headers": {"clock": "x"}}))
    redis_client.publish(f"/{db}.celery.pidbox", json.dumps(
        {"body": json.dumps({"method": "ping", "destination": "oops", "pattern": 5}),
         "properties": {}, "headers": {}}))
    redis_client.publish(f"/{db}.celeryev/worker.heartbeat", b"\xff\xfe garbage")
    w.wait_log(r"pidbox: dropping", count=2)
    assert only(celery_app.control.ping(timeout=scaled(T))) == {"ok": "pong"}
    assert celery_app.send_task("diag.add", args=[1, 2]).get(timeout=scaled(10)) == 3


# --------------------------------------------------------------------------------------------
# "up" means subscribed (Redis)

REFUSED_RE = re.compile(r"pidbox-sub: .*NOPERM")
SUB_UP_RE = re.compile(r"pidbox-sub: connected to")


def acl_user(srv, psubscribe):
    """A Redis user "w" (password "pw") allowed everything but, unless psubscribe, PSUBSCRIBE;
    returns the worker's broker URL for it."""
    srv.client(0).execute_command("ACL", "SETUSER", "w", "reset", "on", ">pw", "~*", "&*",
                                  "+@all", *([] if psubscribe else ["-psubscribe"]))
    return f"redis://w:pw@127.0.0.1:{srv.port}/0"


@redis_only
@celeriac_only
def test_ready_waits_for_the_pidbox_subscription(worker, make_app, tmp_redis):
    """A worker whose mailbox subscription is refused is not ready, however well its other
    connections are; once allowed, a ping sent the moment "ready." shows is answered."""
    srv = tmp_redis()
    url = acl_user(srv, psubscribe=False)
    app = make_app(srv.url(0))
    w = worker("-c", "1", broker=url, ready=False)
    w.wait_log(REFUSED_RE)
    assert not READY_RE.search(w.log()), w.log_tail()
    srv.client(0).execute_command("ACL", "SETUSER", "w", "+psubscribe")
    w.wait_ready(20)
    assert only(app.control.ping(timeout=scaled(T))) == {"ok": "pong"}


@redis_only
@celeriac_only
def test_resubscribed_mailbox_answers_at_once(worker, make_app, tmp_redis):
    """The mailbox's subscriber connection is killed and its new subscription refused for a
    while: the worker must not say that connection is back ("connected to") until the server
    confirmed the PSUBSCRIBE; a ping sent the moment it does is answered."""
    srv = tmp_redis()
    url = acl_user(srv, psubscribe=True)
    app = make_app(srv.url(0))
    w = worker("-c", "1", broker=url)
    assert only(app.control.ping(timeout=scaled(T))) == {"ok": "pong"}
    admin = srv.client(0)
    up_lines = len(SUB_UP_RE.findall(w.log()))
    admin.execute_command("ACL", "SETUSER", "w", "-psubscribe")
    assert admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "USER", "w") == 1
    w.wait_log(REFUSED_RE)
    assert len(SUB_UP_RE.findall(w.log())) == up_lines, w.log_tail()
    admin.execute_command("ACL", "SETUSER", "w", "+psubscribe")
    w.wait_log(SUB_UP_RE, count=up_lines + 1)
    assert only(app.control.ping(timeout=scaled(T))) == {"ok": "pong"}
