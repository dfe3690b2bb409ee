"""test_hardening.py -- issue 12: Redis faults, shutdown, sizes and secrets, as a hostile user
and an unlucky operator would try them.

Each test of a numbered row failed before the fix: 1 SCRIPT FLUSH, 2 a 300-byte task id,
3 SIGTERM with a result that cannot be stored, 7 a huge message, 8 a password in a bad URL.
The class tests go past the instance: every Redis error reply injected under load (CLIENT
KILL, SCRIPT FLUSH, maxmemory + noeviction, DEBUG SLEEP, FLUSHALL, a restart without
persistence) ends with every task done and none lost; ids, queue names, routing keys,
exception messages and node names of 10,000 bytes work or are refused clearly. Tests that
break Redis get their own server (hardening_fixtures.own_redis); the others use the session's.
"""

import json
import os
import re
import signal
import subprocess
import time
import uuid

import pytest
from celery.exceptions import NotRegistered

from conftest import celeriac_bin_dir, celeriac_only, scaled, wait_active, wait_until
from hardening_fixtures import own_redis, peak_rss_kib  # noqa: F401 (fixture)
from test_basic import envelope

pytestmark = celeriac_only

GET = 20
BIG = 10_000


def sends(app, n, start=0):
    return [app.send_task("diag.add", args=[i, 1000]) for i in range(start, start + n)]


def all_done(results, timeout=GET):
    """Every result arrives, with its right value."""
    for i, r in enumerate(results):
        assert r.get(timeout=scaled(timeout)) == r.args_expected, r.id


def add_tasks(app, n, start=0):
    rs = []
    for i in range(start, start + n):
        r = app.send_task("diag.add", args=[i, 1000])
        r.args_expected = i + 1000
        rs.append(r)
    return rs


def lines(w, pattern):
    return len(re.findall(pattern, w.log()))


# --------------------------------------------------------------------------------------------
# Row 1: SCRIPT FLUSH


def test_row1_script_flush_recovers(worker, make_app, own_redis):
    srv = own_redis()
    app = make_app(srv.url())
    w = worker("-c", "1", broker=srv.url())
    assert app.send_task("diag.add", args=[1, 2]).get(timeout=scaled(GET)) == 3
    srv.client().script_flush()
    # a task running while the scripts go: its result is stored, its message acked
    running = app.send_task("diag.sleep", args=[0.5])
    wait_active(app, running.id)
    srv.client().script_flush()
    rs = add_tasks(app, 30)
    assert running.get(timeout=scaled(GET)) == 0.5
    all_done(rs)
    c = srv.client()
    wait_until(lambda: c.hlen("unacked") == 0, scaled(5), what="unacked to drain")
    # one line per distinct error per 10 s and connection, not one per attempt
    assert lines(w, r"NOSCRIPT") <= 4, w.log_tail()


# --------------------------------------------------------------------------------------------
# Row 2 and the id class: long task ids


@pytest.mark.parametrize("n", [300, BIG])
def test_row2_long_task_id(worker, celery_app, redis_client, n):
    worker("-c", "1")
    tid = "a" * n
    assert celery_app.send_task("diag.add", args=(1, 2), task_id=tid).get(
        timeout=scaled(GET)) == 3
    assert redis_client.exists(f"celery-task-meta-{tid}")
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(5), what="unacked to drain")
    with pytest.raises(ValueError) as e:
        celery_app.send_task("diag.fail", args=("x",), task_id="b" * n).get(timeout=scaled(GET))
    assert str(e.value) == "x"


def test_long_exception_message_and_routing_key(worker, make_app, broker_url, redis_client):
    queue = "q" + "r" * (BIG - 1)
    w = worker("-c", "1", "-Q", f"celery,{queue}")
    app = make_app(broker_url)
    msg = "m" * BIG
    with pytest.raises(ValueError) as e:
        app.send_task("diag.fail", args=(msg,)).get(timeout=scaled(GET))
    assert str(e.value) == msg
    # a message routed to a 10,000-byte queue name (routing_key) is consumed like any other
    r = app.send_task("diag.echo", args=("routed",), queue=queue)
    assert r.get(timeout=scaled(GET)) == [["routed"], {}]
    # add_consumer with a 10,000-byte name works; the reply carries the whole name
    other = "s" * BIG
    reply = app.control.add_consumer(other, reply=True, timeout=scaled(3))
    assert any(v.get("ok") == f"add consumer {other}" for d in reply for v in d.values()), reply
    assert app.send_task("diag.add", args=(2, 2), queue=other).get(timeout=scaled(GET)) == 4
    assert w.alive()


def test_long_node_name_is_refused_clearly(tmp_path, broker_url):
    binary = os.path.join(celeriac_bin_dir(), "celeriac")
    r = subprocess.run([binary, "-b", broker_url, "-n", "n" * BIG + "@h"], capture_output=True,
                       text=True, timeout=scaled(20))
    assert r.returncode == 2
    assert "node name too long" in r.stderr


def test_long_queue_name_on_the_command_line(worker, make_app, broker_url):
    queue = "c" * BIG
    worker("-c", "1", "-Q", queue)
    app = make_app(broker_url)
    assert app.send_task("diag.add", args=(3, 4), queue=queue).get(timeout=scaled(GET)) == 7


# --------------------------------------------------------------------------------------------
# Row 3: shutdown always ends


def fill_memory(client, mb=4):
    """Puts mb MiB of data in the server, so that maxmemory below it refuses every write."""
    client.set("ballast", b"x" * (mb << 20))


def test_row3_sigterm_with_an_unstorable_result(worker, make_app, own_redis):
    """The result backend refuses writes (maxmemory + noeviction) for good: the warm shutdown
    gives up after --shutdown-timeout and puts the message back in its queue."""
    brk, bk = own_redis(), own_redis()
    fill_memory(bk.client())
    bk.client().config_set("maxmemory-policy", "noeviction")
    bk.client().config_set("maxmemory", "1mb")
    app = make_app(brk.url(), bk.url())
    w = worker("-c", "1", "--shutdown-timeout", "3", "--result-backend", bk.url(),
               broker=brk.url())
    r = app.send_task("diag.add", args=[1, 2])
    w.wait_log(r"could not store the result", 10)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit(20) is not None, "warm shutdown never ended"
    assert time.monotonic() - t0 < scaled(15)
    c = brk.client()
    # nothing acked that was not finished: the message is back in its queue
    assert c.hlen("unacked") == 0
    assert c.llen("celery") == 1
    bk.client().config_set("maxmemory", "0")
    worker("-c", "1", "--result-backend", bk.url(), broker=brk.url())
    assert r.get(timeout=scaled(GET)) == 3


def test_row3_store_retries_then_gives_back(worker, make_app, own_redis):
    """Without a shutdown: a result that cannot be stored is retried with backoff and, past
    the bound, its message goes back to the queue (it is not held forever)."""
    brk, bk = own_redis(), own_redis()
    fill_memory(bk.client())
    bk.client().config_set("maxmemory-policy", "noeviction")
    bk.client().config_set("maxmemory", "1mb")
    app = make_app(brk.url(), bk.url())
    w = worker("-c", "1", "--result-backend", bk.url(), broker=brk.url())
    r = app.send_task("diag.add", args=[5, 5])
    w.wait_log(r"giving its message back to the queue", 60)
    bk.client().config_set("maxmemory", "0")
    assert r.get(timeout=scaled(GET + 30)) == 10
    # bounded logging: far fewer lines than store attempts
    assert lines(w, r"OOM command not allowed") <= 8, w.log_tail()


def hang(srv, seconds):
    """Starts DEBUG SLEEP on srv (redis-cli, killed by the caller) and returns once the server
    no longer answers."""
    import redis
    p = subprocess.Popen(["redis-cli", "-p", str(srv.port), "DEBUG", "SLEEP", str(seconds)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def hung():
        c = redis.Redis(host="127.0.0.1", port=srv.port, socket_timeout=0.2,
                        socket_connect_timeout=0.2)
        try:
            c.ping()
            return False
        except redis.exceptions.TimeoutError:
            return True
        finally:
            c.close()
    wait_until(hung, scaled(5), what="DEBUG SLEEP to start")
    return p


def test_row3_second_signal_and_sigquit_with_a_hung_backend(worker, make_app, own_redis):
    """The backend hangs (DEBUG SLEEP) while a result is being stored: SIGTERM waits, a
    second SIGTERM goes cold, and the worker exits even though the backend never answers."""
    brk, bk = own_redis(), own_redis()
    app = make_app(brk.url(), bk.url())
    w = worker("-c", "1", "--result-backend", bk.url(), broker=brk.url())
    assert app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    sleeper = hang(bk, 60)
    try:
        app.send_task("diag.add", args=[2, 2])
        w.wait_log(r"Task diag.add\[[^\]]+\] succeeded", 10, count=2)
        w.signal(signal.SIGTERM)
        w.wait_log(r"Warm shutdown", 5)
        assert w.wait_exit(1) is None
        t0 = time.monotonic()
        w.signal(signal.SIGTERM)
        assert w.wait_exit(20) is not None, "cold shutdown never ended with a hung backend"
        assert time.monotonic() - t0 < scaled(15)
        assert not w.group_pids()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_row3_sigquit_twice_exits_at_once(worker, make_app, own_redis):
    brk, bk = own_redis(), own_redis()
    app = make_app(brk.url(), bk.url())
    w = worker("-c", "1", "--result-backend", bk.url(), broker=brk.url())
    assert app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    sleeper = hang(bk, 60)
    try:
        app.send_task("diag.add", args=[2, 2])
        w.wait_log(r"Task diag.add\[[^\]]+\] succeeded", 10, count=2)
        w.signal(signal.SIGQUIT)
        w.wait_log(r"Cold shutdown", 5)
        t0 = time.monotonic()
        w.signal(signal.SIGQUIT)
        assert w.wait_exit(5) is not None, "a second SIGQUIT did not exit"
        assert time.monotonic() - t0 < scaled(3)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_shutdown_timeout_gives_back_running_tasks(worker, celery_app, redis_client):
    w = worker("-c", "1", "--shutdown-timeout", "1")
    r = celery_app.send_task("diag.sleep", args=[30])
    wait_active(celery_app, r.id)
    t0 = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit(15) is not None
    assert time.monotonic() - t0 < scaled(8)
    wait_until(lambda: not w.group_pids(), scaled(5), what="executors to exit")
    assert r.state == "PENDING"
    assert redis_client.hlen("unacked") == 0
    assert redis_client.llen("celery") == 1
    assert "--shutdown-timeout" in w.log()


# --------------------------------------------------------------------------------------------
# Row 7: oversized messages cost O(limit)


def push_big(client, task_id, mb):
    """LPUSHes a kombu envelope whose body is mb MiB (what a client could send), built like
    kombu's: body first, then the headers with the id."""
    import base64
    import json
    body = base64.b64encode(json.dumps([["x" * (mb << 20)], {}, {}]).encode()).decode()
    env = {"body": body, "content-encoding": "utf-8", "content-type": "application/json",
           "headers": {"lang": "py", "task": "diag.echo", "id": task_id, "root_id": task_id,
                       "parent_id": None, "group": None, "argsrepr": "...", "kwargsrepr": "{}",
                       "origin": "test"},
           "properties": {"correlation_id": task_id, "reply_to": str(uuid.uuid4()),
                          "delivery_mode": 2,
                          "delivery_info": {"exchange": "", "routing_key": "celery"},
                          "priority": 0, "body_encoding": "base64",
                          "delivery_tag": str(uuid.uuid4())}}
    client.lpush("celery", json.dumps(env))


def check_limit_failure(app, task_id):
    from celery.result import AsyncResult
    r = AsyncResult(task_id, app=app)
    with pytest.raises(Exception) as e:
        r.get(timeout=scaled(60))
    assert type(e.value).__name__ == "LimitExceeded"
    assert "exceeds the worker's limit" in str(e.value)


@pytest.mark.parametrize("path", ["wait", "pop"])
def test_row7_big_message_costs_o_limit(worker, celery_app, redis_client, path):
    """A 64 MiB message with --max-message-size 1 MiB: the main process's peak memory grows
    by a few MiB at most (before: about five times the message), the FAILURE is stored.
    'wait' sends it while the worker waits (its wait connection reads only a little of it,
    through the bulk filter; the POP script takes it), 'pop' while it is busy; either way the
    POP script cuts it down in Redis."""
    w = worker("-c", "1", "--prefetch-multiplier", "1", "--max-message-size", str(1 << 20))
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    before = peak_rss_kib(w.pid)
    tid = str(uuid.uuid4())
    if path == "pop":
        busy = celery_app.send_task("diag.sleep", args=[1.0])
        wait_active(celery_app, busy.id)
        push_big(redis_client, tid, 64)
    else:
        push_big(redis_client, tid, 64)
    check_limit_failure(celery_app, tid)
    grown = peak_rss_kib(w.pid) - before
    assert grown < 16 * 1024, f"main process peak grew by {grown} KiB for a 64 MiB message"
    wait_until(lambda: redis_client.hlen("unacked") == 0, scaled(5), what="unacked to drain")
    assert celery_app.send_task("diag.add", args=[2, 2]).get(timeout=scaled(GET)) == 4


# --------------------------------------------------------------------------------------------
# Row 8 and the secrets class


def test_row8_bad_url_hides_the_password(tmp_path):
    binary = os.path.join(celeriac_bin_dir(), "celeriac")
    for args in (["-b", "redis://:hunter2secret@host:notaport/0"],
                 ["-b", "redis://user:hunter2secret@host/notadb"],
                 ["--result-backend", "rediss://:hunter2secret@host:1/0"],
                 ["-b", "redis://hunter2secret@host:99999/0"]):
        r = subprocess.run([binary] + args, capture_output=True, text=True,
                           timeout=scaled(20))
        assert r.returncode == 2, (args, r.stderr)
        assert "hunter2secret" not in r.stderr + r.stdout, r.stderr
        assert "**" in r.stderr, r.stderr


def test_no_password_in_inspect_ps_or_logs(worker, make_app, own_redis, tmp_path):
    srv = own_redis(password="s3cr3t-pass")
    url = srv.url()
    bare = url.replace(":s3cr3t-pass@", "s3cr3t-pass@")  # redis-py's reading: a password
    w = worker("-c", "1", "-l", "debug", broker=url, env=None)
    w2 = worker("-c", "1", "-n", "bare@%h", "-l", "debug", broker=bare)
    app = make_app(url)
    assert app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    conf = app.control.inspect(timeout=scaled(3)).conf()
    report = app.control.inspect(timeout=scaled(3)).report()
    assert conf and report and len(conf) == 2
    text = repr(conf) + repr(report)
    assert "s3cr3t-pass" not in text
    assert ":**@127.0.0.1" in text
    for proc in (w, w2):
        with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
            assert b"s3cr3t-pass" not in f.read()
        assert "s3cr3t-pass" not in proc.log()


def test_broker_url_from_a_file(worker, make_app, own_redis, tmp_path):
    srv = own_redis(password="file-pass")
    path = tmp_path / "broker.url"
    path.write_text(srv.url() + "\n")
    os.chmod(path, 0o600)
    w = worker("-c", "1", "--broker-file", str(path), broker=None)
    app = make_app(srv.url())
    assert app.send_task("diag.add", args=[2, 3]).get(timeout=scaled(GET)) == 5
    with open(f"/proc/{w.pid}/cmdline", "rb") as f:
        assert b"file-pass" not in f.read()


# --------------------------------------------------------------------------------------------
# The Redis error replies class, under load


def load(app, n=150):
    return add_tasks(app, n)


def test_class_client_kill_under_load(worker, make_app, own_redis):
    srv = own_redis()
    app = make_app(srv.url())
    worker("-c", "2", broker=srv.url())
    rs = load(app)
    for _ in range(3):
        srv.client().client_kill_filter(_type="normal", skipme=True)
        time.sleep(0.2)  # spacing of the injected faults, not a wait for a result
    rs += load(app, 50)
    all_done(rs, 60)


@pytest.mark.parametrize("results", ["same-db", "other-db"])
def test_class_client_kill_while_fetching(worker, own_redis, results):
    """A fetch (the POP script) whose answer the kill took had already moved its messages into
    `unacked`: they used to stay there, their tasks never run, until the visibility timeout
    (an hour) restored them. The script records what it took; after the reconnect the worker
    gives those back. Acks and registrations whose answers were lost are made again, so no
    finished task stays in `unacked` to run a second time. The queue is filled first, so the
    worker fetches with POP throughout (the idle wait is covered by
    test_class_wait_moves_while_the_taking_connection_is_down). Results in the broker's database
    are stored and acked in one script; in another database the ack is its own command."""
    srv = own_redis()
    c = srv.client()
    meta = srv.client(1) if results == "other-db" else c
    ids = []
    pipe = c.pipeline(transaction=False)
    for i in range(6000):
        tid, raw = envelope("diag.add", body=json.dumps([[i, 1000], {}, {}]).encode())
        ids.append(tid)
        pipe.lpush("celery", raw)
    pipe.execute()
    extra = ("--result-backend", srv.url(1)) if results == "other-db" else ()
    w = worker("-c", "2", *extra, broker=srv.url())
    killer = srv.client()
    kills = 0
    # Kills until the queue is drained, bounded in count and time.
    deadline = time.monotonic() + scaled(60)
    while c.llen("celery") and kills < 3000 and time.monotonic() < deadline:
        killer.client_kill_filter(_type="normal", skipme=True)
        kills += 1
        time.sleep(0.002)  # spacing of the injected faults, not a wait for a result

    def left():
        return [i for i, v in zip(ids, meta.mget([f"celery-task-meta-{i}" for i in ids])) if not v]
    wait_until(lambda: not left(), scaled(60), interval=0.5, what="every task's result")
    wait_until(lambda: c.hlen("unacked") == 0 and c.zcard("unacked_index") == 0, scaled(20),
               what="an empty unacked")
    values = meta.mget([f"celery-task-meta-{i}" for i in ids])
    assert all(json.loads(v)["status"] == "SUCCESS" for v in values)
    assert [json.loads(v)["result"] for v in values] == [i + 1000 for i in range(len(ids))]
    assert not [k for k in c.keys("_celeriac.pop.*") if c.ttl(k) < 0], "a record without expiry"
    print(f"{kills} kills; fetches given back: {lines(w, r'gave back')}")


def test_class_wait_moves_while_the_taking_connection_is_down(worker, make_app, own_redis):
    """An idle worker waits with one connection per queue key (BLMOVE into its in-flight list);
    its command connection takes the message from there (POP). A message moved while that
    connection is down (a CLIENT KILL while new connections are refused: ACL default user off)
    stays in the in-flight list, safe, and runs once the connection is back. (With kombu's
    BRPOP it sat only in the worker's memory: it used to be dropped, "cannot give back", and
    later run unregistered.) Results go to db 1, whose connection stays."""
    srv = own_redis()
    app = make_app(srv.url(0), backend=srv.url(1))
    w = worker("-c", "1", "--result-backend", srv.url(1), broker=srv.url(0))
    assert app.send_task("diag.add", args=[1, 2]).get(timeout=scaled(GET)) == 3
    c, meta = srv.client(0), srv.client(1)
    meta.ping()  # connected before new connections are refused
    me = c.client_id()

    def broker_clients():
        return [x for x in c.client_list() if int(x["id"]) != me and x["db"] == "0"]

    def in_flight():
        return sum(c.llen(k) for k in c.keys("_celeriac.wait.*"))

    wait_until(lambda: any(x["cmd"] == "blmove" for x in broker_clients()), scaled(10),
               what="the worker waiting in BLMOVE")
    c.execute_command("ACL", "SETUSER", "default", "off")
    try:
        for x in broker_clients():
            if x["cmd"] != "blmove":
                c.client_kill_filter(_id=x["id"])
        w.wait_log(r"broker: connection to redis://\S+ lost", scaled(10))
        tid, raw = envelope("diag.add", body=b"[[40, 2], {}, {}]")
        c.lpush("celery", raw)
        wait_until(lambda: in_flight() == 1, scaled(GET), what="the message in the in-flight list")
        assert c.llen("celery") == 0 and meta.get(f"celery-task-meta-{tid}") is None
    finally:
        c.execute_command("ACL", "SETUSER", "default", "on")
    got = wait_until(lambda: meta.get(f"celery-task-meta-{tid}"), scaled(GET),
                     what="the result of the task the wait moved")
    assert json.loads(got)["result"] == 42
    # the ack goes to db 0 after the store's reply from db 1: the result can be seen first
    wait_until(lambda: in_flight() == 0 and c.hlen("unacked") == 0, scaled(5),
               what="the task's message acked")
    assert app.send_task("diag.add", args=[2, 3]).get(timeout=scaled(GET)) == 5


def test_class_wait_without_blmove(worker, make_app, own_redis):
    """Redis before 6.2 has no BLMOVE (here: renamed away): the idle wait makes the same move
    with BRPOPLPUSH, and says so once."""
    srv = own_redis(extra=["--rename-command", "BLMOVE", ""])
    app = make_app(srv.url())
    w = worker("-c", "1", broker=srv.url())
    for i in range(5):
        assert app.send_task("diag.add", args=[i, 1]).get(timeout=scaled(GET)) == i + 1
        time.sleep(0.05)  # idle between tasks: each one comes through the wait
    assert len(re.findall("waiting with BRPOPLPUSH", w.log())) == 1, w.log_tail()
    assert "waiting for a message" not in w.log(), w.log_tail()  # no error, no backoff
    assert srv.client().keys("_celeriac.wait.*") == []


def test_class_script_flush_under_load(worker, make_app, own_redis):
    srv = own_redis()
    app = make_app(srv.url())
    w = worker("-c", "2", broker=srv.url())
    rs = load(app)
    for _ in range(5):
        srv.client().script_flush()
        time.sleep(0.1)  # spacing of the injected faults, not a wait for a result
    all_done(rs, 60)
    assert lines(w, r"NOSCRIPT") <= 6, w.log_tail()


def test_class_maxmemory_noeviction_under_load(worker, make_app, own_redis):
    srv = own_redis()
    app = make_app(srv.url())
    w = worker("-c", "2", broker=srv.url())
    c = srv.client()
    rs = load(app)
    # and work that lasts ~1 s, so results are still being stored when the fault starts (150
    # diag.add alone may all be done by then)
    for _ in range(20):
        r = app.send_task("diag.sleep", args=[0.1])
        r.args_expected = 0.1
        rs.append(r)
    fill_memory(c)
    c.config_set("maxmemory-policy", "noeviction")
    c.config_set("maxmemory", "1mb")
    w.wait_log(r"OOM command not allowed", 20)
    time.sleep(2)  # the fault lasts a while: what is measured is the recovery after it
    c.config_set("maxmemory", "0")
    c.delete("ballast")
    all_done(rs, 90)
    wait_until(lambda: c.hlen("unacked") == 0, scaled(30), what="unacked to drain")
    assert lines(w, r"OOM command not allowed") <= 20, w.log_tail()


def test_class_debug_sleep_under_load(worker, make_app, own_redis):
    srv = own_redis()
    app = make_app(srv.url())
    worker("-c", "2", broker=srv.url())
    rs = load(app)
    srv.client().execute_command("DEBUG", "SLEEP", "2")
    rs += load(app, 50)
    all_done(rs, 60)


def held_by(c):
    return c.hlen("unacked")


def test_class_flushall_under_load_loses_no_held_task(worker, make_app, own_redis):
    """FLUSHALL while the worker holds tasks: it registers them in unacked again, so after a
    kill -9 of the worker the next one still runs every one of them."""
    srv = own_redis()
    app = make_app(srv.url())
    w = worker("-c", "1", "--prefetch-multiplier", "4", broker=srv.url())
    c = srv.client()
    rs = [app.send_task("diag.sleep", args=[12])]
    for r in rs:
        r.args_expected = 12
    wait_active(app, rs[0].id)
    more = [app.send_task("diag.sleep", args=[0.2]) for _ in range(4)]
    for r in more:
        r.args_expected = 0.2
    rs += more
    wait_until(lambda: held_by(c) == 5, scaled(10), what="5 messages held")
    c.flushall()
    assert held_by(c) == 0
    wait_until(lambda: held_by(c) == 5, scaled(15), what="the worker to register its messages again")
    w.kill()
    worker("-c", "2", "--visibility-timeout", "1", broker=srv.url())
    all_done(rs, 60)


def test_class_restart_without_persistence_loses_no_held_task(worker, make_app, own_redis):
    srv = own_redis()
    app = make_app(srv.url())
    w = worker("-c", "1", "--prefetch-multiplier", "4", broker=srv.url())
    c = srv.client()
    rs = [app.send_task("diag.sleep", args=[4])]
    wait_active(app, rs[0].id)
    rs += [app.send_task("diag.sleep", args=[0.2]) for _ in range(3)]
    # held: registered in unacked *and* in the worker's hands (a fetch's answer still on its
    # way when the server dies is lost with everything else the server had)
    ids = {r.id for r in rs}
    wait_until(lambda: held_by(c) == 4 and ids <= {t for _, t in w.received()}, scaled(10),
               what="4 messages held")
    srv.restart()  # kill -9 and start again: no persistence, nothing left
    c = srv.client()
    wait_until(lambda: held_by(c) == 4, scaled(20), what="the worker to register its messages again")
    w.kill()
    worker("-c", "2", "--visibility-timeout", "1", broker=srv.url())
    assert [r.get(timeout=scaled(60)) for r in rs] == [4, 0.2, 0.2, 0.2]
