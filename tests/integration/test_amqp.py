"""test_amqp.py -- celeriac on RabbitMQ: what only the AMQP transport does.

The tests shared with Redis run over both brokers from their own files (conftest.py's
`both_brokers`); these are the AMQP ones: kombu's declarations (a stock Python worker on the
same vhost and queue, either started first, no PRECONDITION_FAILED), every -Q queue consumed,
add/cancel_consumer, the basic.qos window (concurrency x multiplier, raised by eta tasks),
messages given back on warm shutdown and after a kill -9, garbage that is settled once and
never requeued in a loop, heartbeats and the pyamqp:// alias, and TLS (amqps://). Each test
has its own vhost on the session's rabbitmq-server.
"""

import re
import signal
import ssl
import time
import uuid

import kombu
import pytest
from celery.exceptions import TaskRevokedError

from conftest import scaled, wait_active, wait_until

pytestmark = pytest.mark.brokers("amqp")

GET = 10


def depth(broker_url, queue="celery"):
    """Messages ready in queue (a passive declare), None when the queue does not exist."""
    with kombu.Connection(broker_url, connect_timeout=5) as c:
        try:
            return c.default_channel.queue_declare(queue, passive=True).message_count
        except c.channel_errors:
            return None


def publish_raw(broker_url, body, headers=None, content_type="application/json",
                content_encoding="utf-8", queue="celery", **props):
    """One message as a hostile or broken client would send it (py-amqp, no Celery)."""
    with kombu.Connection(broker_url, connect_timeout=5) as c:
        producer = c.Producer()
        producer.publish(body, routing_key=queue, exchange="", headers=headers or {},
                         content_type=content_type, content_encoding=content_encoding,
                         delivery_mode=2, **props)


def task_headers(name="diag.add", task_id=None):
    tid = task_id or str(uuid.uuid4())
    return tid, {"lang": "py", "task": name, "id": tid, "shadow": None, "eta": None,
                 "expires": None, "group": None, "group_index": None, "retries": 0,
                 "timelimit": [None, None], "root_id": tid, "parent_id": None,
                 "argsrepr": "()", "kwargsrepr": "{}", "origin": "test@h",
                 "ignore_result": False}


def received(w, task_id, timeout=GET):
    w.wait_log(rf"Received task: \S+\[{re.escape(task_id)}\]", timeout)


# --------------------------------------------------------------------------------------------
# Declarations and queues


@pytest.mark.parametrize("first", ["celeriac", "python"])
def test_stock_worker_shares_the_vhost(worker, pyworker, make_app, rabbit_server, broker_url,
                                       first):
    """kombu's declarations, byte for byte where RabbitMQ compares them: the stock worker,
    the stock client and celeriac declare the same exchanges, queues and arguments in either
    order (x-max-priority on all three), and both workers consume the queue."""
    celery_app = make_app(broker_url, task_queue_max_priority=10)
    start = [lambda: worker("-n", "c1@%h", "--max-priority", "10"),
             lambda: pyworker("-n", "py1@%h", "--max-priority", "10")]
    ws = [f() for f in (start if first == "celeriac" else start[::-1])]
    rs = [celery_app.send_task("diag.add", args=[i, i], priority=i % 10) for i in range(40)]
    assert [r.get(timeout=scaled(GET)) for r in rs] == [2 * i for i in range(40)]
    for w in ws:
        assert "PRECONDITION_FAILED" not in w.log(), w.log_tail()
        assert "inequivalent" not in w.log()
    vhost = broker_url.rsplit("/", 1)[1]
    r = rabbit_server.ctl("list_queues", "-p", vhost, "name", "durable", "auto_delete",
                          "arguments", "consumers", "--no-table-headers", "--quiet")
    rows = {line.split("\t")[0]: line.split("\t")[1:] for line in r.stdout.splitlines()}
    assert rows["celery"][:2] == ["true", "false"] and "x-max-priority" in rows["celery"][2]
    assert rows["celery"][3] == "2"  # both workers consume it
    mine = [q for q in rows if q.startswith("c1@") and q.endswith(".celery.pidbox")][0]
    theirs = [q for q in rows if q.startswith("py1@") and q.endswith(".celery.pidbox")][0]
    assert rows[mine][:3] == rows[theirs][:3]  # non-durable, auto-delete, same ttl/expires
    assert '"x-expires",10000' in rows[mine][2] and '"x-message-ttl",300000' in rows[mine][2]
    # remote control reaches both through the same exchange
    pong = celery_app.control.inspect(timeout=scaled(2)).ping() or {}
    assert {n.split("@")[0] for n in pong} == {"c1", "py1"}


def test_every_queue_and_add_cancel_consumer(worker, celery_app, rabbit_server, broker_url):
    worker("-Q", "alpha,beta")
    a = celery_app.send_task("diag.add", args=[1, 2], queue="alpha")
    b = celery_app.send_task("diag.add", args=[3, 4], queue="beta")
    assert (a.get(timeout=scaled(GET)), b.get(timeout=scaled(GET))) == (3, 7)
    reply = celery_app.control.add_consumer("gamma", reply=True, timeout=scaled(2))
    assert "gamma" in str(reply)
    assert celery_app.send_task("diag.add", args=[5, 5], queue="gamma").get(
        timeout=scaled(GET)) == 10
    celery_app.control.cancel_consumer("gamma", reply=True, timeout=scaled(2))
    vhost = broker_url.rsplit("/", 1)[1]
    wait_until(lambda: rabbit_server.queues(vhost).get("gamma", (0, 1))[1] == 0, scaled(10),
               what="the consumer of gamma to be cancelled")
    waiting = celery_app.send_task("diag.add", args=[6, 6], queue="gamma")
    wait_until(lambda: depth(broker_url, "gamma") == 1, scaled(5), what="gamma to keep it")
    assert waiting.state == "PENDING"
    queues = celery_app.control.inspect(timeout=scaled(2)).active_queues()
    names = {q["name"] for v in queues.values() for q in v if not q["name"].endswith(".dq2")}
    assert names == {"alpha", "beta"}


def test_prefetch_window_and_eta_tasks(worker, celery_app, rabbit_server, broker_url):
    """basic.qos is global and starts at concurrency x multiplier; eta tasks held for later
    do not take the window's places (Celery raises qos for them): with room for 2, ten
    scheduled tasks are held and a plain task still runs at once."""
    worker("-c", "1", "--prefetch-multiplier", "2")
    vhost = broker_url.rsplit("/", 1)[1]

    def windows():
        r = rabbit_server.ctl("list_channels", "-p", vhost, "consumer_count",
                              "global_prefetch_count", "--no-table-headers", "--quiet")
        # the consumer channel: celery and the node's direct queue (issue 15)
        return [int(c.split("\t")[1]) for c in r.stdout.splitlines()
                if int(c.split("\t")[0]) >= 1 and int(c.split("\t")[1]) > 0]
    assert wait_until(lambda: windows(), scaled(5), what="the consumer channel") == [2]
    later = [celery_app.send_task("diag.add", args=[i, 0], countdown=30) for i in range(10)]
    wait_until(lambda: sum(len(v) for v in (celery_app.control.inspect(
        timeout=scaled(1)).scheduled() or {}).values()) == 10, scaled(10),
        what="ten scheduled tasks held")
    assert celery_app.send_task("diag.add", args=[1, 1]).get(timeout=scaled(GET)) == 2
    assert windows()[0] >= 12  # 10 held + the 2 free places
    stats = next(iter(celery_app.control.inspect(timeout=scaled(2)).stats().values()))
    assert stats["prefetch_count"] == 2 and stats["broker"]["transport"] == "amqp"
    for r in later:
        celery_app.control.revoke(r.id)
    assert depth(broker_url) == 0


def test_pyamqp_alias_and_heartbeat(worker, celery_app, rabbit_server, broker_url):
    url = broker_url.replace("amqp://", "pyamqp://", 1)
    worker("--broker-heartbeat", "5", broker=url)
    assert celery_app.send_task("diag.add", args=[20, 22]).get(timeout=scaled(GET)) == 42
    vhost = broker_url.rsplit("/", 1)[1]
    r = rabbit_server.ctl("list_connections", "vhost", "timeout", "client_properties",
                          "--no-table-headers", "--quiet")
    ours = [line for line in r.stdout.splitlines()
            if line.startswith(vhost + "\t") and "celeriac" in line]
    assert ours and all(line.split("\t")[1] == "5" for line in ours), r.stdout


# --------------------------------------------------------------------------------------------
# Acks


def test_out_of_order_finishes_are_all_acked(worker, celery_app, rabbit_server, broker_url):
    """Acks go out as one basic.ack with multiple=1 for a run of finished tags and singly above
    a tag still running (worker/amqp_acks.h): with four executors and tasks of uneven lengths
    finishing out of order, and a message no one can decode in the middle (its FAILURE stored,
    then acked), every message is settled while the worker stays connected (an ack for a tag the broker no longer holds
    would close the channel: PRECONDITION_FAILED, unknown delivery tag)."""
    w = worker("-c", "4")
    lengths = [0.3, 0.0, 0.15, 0.0, 0.05, 0.25, 0.0, 0.1] * 5
    rs = [celery_app.send_task("diag.sleep", args=[s]) for s in lengths[:20]]
    _, h = task_headers()
    publish_raw(broker_url, b"[[1, 2], {}, {}]", h, content_type="application/x-unknown")
    rs += [celery_app.send_task("diag.sleep", args=[s]) for s in lengths[20:]]
    assert [r.get(timeout=scaled(GET)) for r in rs] == lengths
    vhost = broker_url.rsplit("/", 1)[1]
    wait_until(lambda: rabbit_server.queues(vhost).get("celery", (1, 0))[0] == 0, scaled(10),
               what="every message acked (none left unacked)")
    log = w.log()
    assert "unknown delivery tag" not in log and "channel closed" not in log, w.log_tail()
    assert "connection lost" not in log


def test_confirms_out_of_order_send_nothing_twice(worker, celery_app, broker_url):
    """RabbitMQ confirms a transient message at once and a persistent one on a durable queue
    only when it is on disk, so the worker's publishes are confirmed out of order. A link
    callback whose confirm comes after a newer one's is still sent once: none is reported
    failed and sent again (worker/amqp_confirms.h; it used to resend, and store the parent's
    result only after the retry)."""
    w = worker()
    add = celery_app.signature("diag.add")
    held = f"held-{uuid.uuid4().hex[:8]}"  # persistent, no consumer: confirmed from the disk
    with kombu.Connection(broker_url, connect_timeout=5) as c:
        c.default_channel.queue_declare(held, durable=True, auto_delete=False)
    links = []
    for i in range(20):
        links.append(add.clone((i,)).set(queue=held))
        links.append(add.clone((i,)).set(delivery_mode=1))  # transient: confirmed at once
    rs = [celery_app.send_task("diag.add", args=[1, 1], link=links) for _ in range(5)]
    assert [r.get(timeout=scaled(GET)) for r in rs] == [2] * 5
    wait_until(lambda: depth(broker_url, held) == 100, scaled(GET),
               what="every persistent link in the held queue")
    time.sleep(0.5)  # a resend would come RETRY_MS (200 ms) after the first round
    assert depth(broker_url, held) == 100
    assert "retrying" not in w.log(), w.log_tail()


# --------------------------------------------------------------------------------------------
# Giving messages back


def test_warm_shutdown_gives_back_prefetched(worker, celery_app, broker_url):
    w = worker("-c", "1")
    running = celery_app.send_task("diag.sleep", args=[2])
    wait_active(celery_app, running.id)
    queued = [celery_app.send_task("diag.add", args=[i, 100]) for i in range(3)]
    for r in queued:
        received(w, r.id)
    assert depth(broker_url) == 0  # all three are with the worker
    w.signal(signal.SIGTERM)
    assert w.wait_exit(15) == 0
    assert running.get(timeout=scaled(3)) == 2
    assert depth(broker_url) == 3  # rejected with requeue, not acked, not lost
    assert all(r.state == "PENDING" for r in queued)
    worker()
    assert [r.get(timeout=scaled(GET)) for r in queued] == [100, 101, 102]


def test_cold_shutdown_acks_nothing_more(worker, celery_app, broker_url):
    w = worker("-c", "1")
    r = celery_app.send_task("diag.sleep", args=[30])
    wait_active(celery_app, r.id)
    w.signal(signal.SIGTERM)
    w.wait_log(r"Warm shutdown", 5)
    w.signal(signal.SIGTERM)
    assert w.wait_exit(10) is not None
    assert r.state == "PENDING"
    assert wait_until(lambda: depth(broker_url) == 1, scaled(5), what="the message back")


def test_kill9_with_prefetched_messages(worker, celery_app, broker_url):
    """The broker takes back every unacked delivery when the connection dies: the running
    task and the prefetched ones all run on the next worker."""
    w = worker("-c", "1")
    lengths = [2.0, 0.2, 0.2, 0.2, 0.2]
    rs = [celery_app.send_task("diag.sleep", args=[s]) for s in lengths]
    wait_active(celery_app, rs[0].id)
    for r in rs[1:]:
        received(w, r.id)
    w.kill()
    wait_until(lambda: depth(broker_url) == 5, scaled(10), what="all five back in the queue")
    worker("-c", "2")
    assert [r.get(timeout=scaled(GET)) for r in rs] == lengths


# --------------------------------------------------------------------------------------------
# Messages that can never run


def test_garbage_is_settled_once(worker, celery_app, broker_url):
    w = worker("--max-message-size", str(8 * 1024 * 1024))
    body = b'[[1, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    # a content type no one decodes: FAILURE stored, message acked
    bad_type, h = task_headers()
    publish_raw(broker_url, body, h, content_type="application/x-python-serialize",
                content_encoding="binary")
    # a body that is not JSON
    broken, h = task_headers()
    publish_raw(broker_url, b'[[1, 2], {"a": ', h)
    # no headers at all, and a body that is not a protocol 1 task: dropped
    publish_raw(broker_url, body, {})
    # a task name that is not a string: no task can be made of it, dropped
    # (RabbitMQ itself refuses a NaN in headers: its channel dies parsing the table)
    publish_raw(broker_url, body, {"task": 5, "id": str(uuid.uuid4())})
    # 10 MB: refused by size, its id read from the headers, LimitExceeded stored
    big, h = task_headers()
    publish_raw(broker_url, b"[[" + b"1, " * (10 * 1024 * 1024 // 3) + b"1], {}, {}]", h)
    for tid, exc in ((bad_type, "DecodeError"), (broken, "DecodeError"),
                     (big, "LimitExceeded")):
        r = celery_app.AsyncResult(tid)
        with pytest.raises(Exception) as e:
            r.get(timeout=scaled(GET))
        assert type(e.value).__name__ == exc, (tid, e.value)
    # the worker keeps serving, nothing is left in the queue or held, nothing came back
    assert celery_app.send_task("diag.add", args=[2, 2]).get(timeout=scaled(GET)) == 4
    assert depth(broker_url) == 0
    # A message given back instead of settled would have come round again by now (the two
    # tasks above went through the same queue after it): each was handled exactly once.
    log = w.log()
    assert log.count("Can't decode message body from 'celery'") == 2, w.log_tail()
    assert log.count("Refusing a message of") == 1
    assert celery_app.send_task("diag.add", args=[3, 3]).get(timeout=scaled(GET)) == 6


# --------------------------------------------------------------------------------------------
# TLS


@pytest.fixture
def tls(rabbit_server):
    if not rabbit_server.tls_files:
        pytest.skip("openssl is not installed: no certificates for the TLS listener")
    return rabbit_server.tls_files


def test_amqps(worker, make_app, rabbit_server, broker_url, tls):
    vhost = broker_url.rsplit("/", 1)[1]
    # by name: the certificate's DNS:localhost is what librabbitmq's host check compares
    url = rabbit_server.url(vhost, scheme="amqps").replace("127.0.0.1", "localhost")
    app = make_app(url, broker_use_ssl={"ca_certs": tls["ca"], "cert_reqs": ssl.CERT_REQUIRED})
    # verified against the test CA, with a client certificate
    worker("--broker-ssl-ca", tls["ca"], "--broker-ssl-cert", tls["client_cert"],
           "--broker-ssl-key", tls["client_key"], broker=url)
    assert app.send_task("diag.add", args=[1, 2]).get(timeout=scaled(GET)) == 3


def test_amqps_refuses_an_unknown_ca(worker, rabbit_server, broker_url, tls):
    vhost = broker_url.rsplit("/", 1)[1]
    url = rabbit_server.url(vhost, scheme="amqps").replace("127.0.0.1", "localhost")
    # verify is on by default: the system bundle does not know the test CA
    w = worker(broker=url, ready=False)
    w.wait_log(r"amqp broker: cannot connect to amqps://", 10)
    assert not re.search(r"\bready\.", w.log())
    w.stop()
    # --broker-ssl-no-verify: encrypted, unchecked
    w2 = worker("--broker-ssl-no-verify", broker=url)
    assert w2.alive()
