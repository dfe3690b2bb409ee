"""test_compression.py -- issue 19: compressed messages, result_compression, STARTED.

Through the stock client against the real worker, on Redis and RabbitMQ: every compression
kombu 5.2 ships (task_compression through send_task's compression=), msgpack + compression,
a 5 MB argument, a 1 GB decompression bomb (a LimitExceeded FAILURE; the main process's peak
RSS stays far below the bomb and the worker keeps serving), a client configured with
result_compression (Celery 5.2 compresses task messages with it and stores results plain),
the compression of the messages the worker publishes for a canvas (the signature's own, else
--result-compression; never the parent's, as the stock worker), and --task-track-started
(STARTED with pid and hostname while diag.sleep runs, SUCCESS after; the HTTP future
"running" from it).
"""

import base64
import json
import uuid
import zlib

import kombu
import pytest
from kombu import compression as kcomp

from conftest import both_brokers, redis_only, scaled, wait_active, wait_until
from test_http_app import make_api  # noqa: F401 (fixture)

pytestmark = both_brokers

GET = 20
METHODS = ["gzip", "zlib", "bzip2", "lzma", "xz", "zstd", "brotli"]
EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


def vm_hwm_kb(pid):
    """Peak resident set size of a process (VmHWM, kB)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def task_headers(name, tid):
    return {"lang": "py", "task": name, "id": tid, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [None, None], "root_id": tid, "parent_id": None,
            "argsrepr": "()", "kwargsrepr": "{}", "origin": "test@h", "ignore_result": False}


_BOMB = {}


def gzip_bomb(gib=1):
    """A protocol-2 body [["000...0"], {}, embed] holding gib GiB of zeros, zlib-compressed
    as kombu's gzip method writes it (~1 MB), built in chunks (never 1 GB in memory)."""
    if gib not in _BOMB:
        z = zlib.compressobj(9)
        parts = [z.compress(b'[["')]
        chunk = b"0" * (16 << 20)
        for _ in range((gib << 30) // len(chunk)):
            parts.append(z.compress(chunk))
        parts.append(z.compress(b'"], {}, ' + json.dumps(EMBED).encode() + b"]"))
        parts.append(z.flush())
        _BOMB[gib] = b"".join(parts)
    return _BOMB[gib]


def publish_compressed(broker_url, name, body, ctype):
    """A task message whose body is already compressed (kombu names the method in the
    compression header); kombu itself would have compressed it in memory first. On AMQP the
    queue must exist already (a task sent by the client declares it)."""
    tid = str(uuid.uuid4())
    h = task_headers(name, tid)
    h["compression"] = ctype
    with kombu.Connection(broker_url, connect_timeout=5) as c:
        c.Producer().publish(body, routing_key="celery", exchange="", headers=h,
                             content_type="application/json", content_encoding="utf-8",
                             delivery_mode=2)
    return tid


def held_message(broker_url, queue="held"):
    """The next message in a queue no worker consumes: (headers, decoded payload). kombu's
    Message undoes the compression; the header stays as it came."""
    with kombu.Connection(broker_url, connect_timeout=5) as c:
        q = c.SimpleQueue(queue, no_ack=True)
        try:
            m = q.get(timeout=scaled(GET))
            return m.headers, m.payload
        finally:
            q.close()


# --------------------------------------------------------------------------------------------
# Compressed task messages


@pytest.mark.parametrize("method", METHODS)
def test_each_compression(worker, celery_app, method):
    worker("-c", "1")
    r = celery_app.send_task("diag.add", args=(2, 3), compression=method)
    assert r.get(timeout=scaled(GET)) == 5


def test_msgpack_and_compression(worker, make_app, broker_url):
    worker("-c", "1")
    app = make_app(broker_url, task_serializer="msgpack", accept_content=["json", "msgpack"])
    for method in ("gzip", "bzip2", "zstd"):
        r = app.send_task("diag.echo", args=(1, "two", [3.5]), kwargs={"k": None},
                          compression=method)
        assert r.get(timeout=scaled(GET)) == [[1, "two", [3.5]], {"k": None}]


def test_five_megabyte_argument(worker, celery_app):
    worker("-c", "1")
    big = "".join(f"{i:08d}" for i in range(5 * 1024 * 1024 // 8))
    for method in ("gzip", "lzma"):
        r = celery_app.send_task("diag.add", args=(big, "!"), compression=method)
        assert r.get(timeout=scaled(60)) == big + "!"


def test_corrupt_and_unknown_compression_is_decode_error(worker, celery_app, broker_url):
    worker("-c", "1")
    assert celery_app.send_task("diag.add", args=(1, 2)).get(timeout=scaled(GET)) == 3
    body = b'[[1, 2], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'
    bad = publish_compressed(broker_url, "diag.add", body, "application/x-gzip")  # not zlib
    unknown = publish_compressed(broker_url, "diag.add", body, "application/x-snappy")
    for tid, text in ((bad, "application/x-gzip"), (unknown, "unsupported compression")):
        r = celery_app.AsyncResult(tid)
        with pytest.raises(Exception) as exc:
            r.get(timeout=scaled(GET))
        assert type(exc.value).__name__ == "DecodeError" and text in str(exc.value)
    assert celery_app.send_task("diag.add", args=(1, 1), compression="gzip").get(
        timeout=scaled(GET)) == 2


def test_decompression_bomb_is_limit_exceeded(worker, celery_app, broker_url):
    bomb = gzip_bomb()
    assert len(bomb) < 4 << 20
    w = worker("-c", "1")
    assert celery_app.send_task("diag.add", args=(1, 2)).get(timeout=scaled(GET)) == 3
    before = vm_hwm_kb(w.pid)
    tid = publish_compressed(broker_url, "diag.echo", bomb, kcomp.get_encoder("gzip")[1])
    r = celery_app.AsyncResult(tid)
    with pytest.raises(Exception) as exc:
        r.get(timeout=scaled(60))
    assert type(exc.value).__name__ == "LimitExceeded", exc.value
    assert "8388608 byte limit" in str(exc.value)
    assert r.state == "FAILURE"
    # the worker keeps serving, and decoding held at most the 8 MiB limit (plus the message)
    assert celery_app.send_task("diag.add", args=(2, 2), compression="gzip").get(
        timeout=scaled(GET)) == 4
    grown = vm_hwm_kb(w.pid) - before
    assert grown < 64 * 1024, f"peak RSS grew by {grown} kB decoding the bomb"
    assert w.alive()


def test_max_message_size_applies_to_the_decompressed_body(worker, celery_app):
    worker("-c", "1", "--max-message-size", str(64 * 1024))
    small = "y" * (32 * 1024)
    assert celery_app.send_task("diag.add", args=(small, "z"), compression="bzip2").get(
        timeout=scaled(GET)) == small + "z"
    r = celery_app.send_task("diag.add", args=("x" * (100 * 1024), "z"), compression="bzip2")
    with pytest.raises(Exception) as exc:
        r.get(timeout=scaled(GET))
    assert type(exc.value).__name__ == "LimitExceeded"


# --------------------------------------------------------------------------------------------
# result_compression and the messages the worker publishes


def test_client_with_result_compression(worker, make_app, broker_url):
    """Celery 5.2 reads result_compression when it sends a task (send_task_message's default
    compressor) and never compresses results: such a client's messages come compressed and
    it reads the plain results; a worker given the same setting compresses its canvas
    messages with it."""
    worker("-c", "2", "--result-compression", "gzip")
    app = make_app(broker_url, result_compression="bzip2")
    assert app.send_task("diag.add", args=(20, 22)).get(timeout=scaled(GET)) == 42
    chain = app.signature("diag.add", args=(1, 2)) | app.signature("diag.add", args=(10,))
    assert chain.apply_async().get(timeout=scaled(GET)) == 13
    # a chain link sent to a queue no one consumes: compressed with --result-compression
    chain = app.signature("diag.add", args=(1, 2)) | app.signature(
        "diag.add", args=(10,), queue="held")
    chain.apply_async()
    headers, payload = held_message(broker_url)
    assert headers["compression"] == "application/x-gzip"
    assert payload[0] == [3, 10]


def test_canvas_messages_keep_the_signatures_compression(worker, make_app, broker_url):
    """As the stock worker: a callback's own compression option wins; otherwise, without
    --result-compression, the message goes uncompressed whatever the parent's was."""
    worker("-c", "1")
    app = make_app(broker_url)
    link = app.signature("diag.add", args=(100,), queue="held", compression="xz")
    app.send_task("diag.add", args=(1, 1), compression="gzip", link=link)
    headers, payload = held_message(broker_url)
    assert headers["compression"] == "application/x-lzma" and payload[0] == [2, 100]
    link = app.signature("diag.add", args=(5,), queue="held")
    app.send_task("diag.add", args=(2, 2), compression="gzip", link=link)
    headers, payload = held_message(broker_url)
    assert "compression" not in headers and payload[0] == [4, 5]


def test_unknown_result_compression_is_refused(worker):
    w = worker("--result-compression", "snappy", ready=False)
    assert w.wait_exit(scaled(10)) != 0
    assert "--result-compression: unknown method 'snappy'" in w.log()


# --------------------------------------------------------------------------------------------
# STARTED


def test_track_started(worker, celery_app):
    w = worker("-c", "1", "--task-track-started", "-n", "tracker@%h")
    r = celery_app.send_task("diag.sleep", args=[3])
    wait_until(lambda: r.state == "STARTED", scaled(GET), what="STARTED")
    assert set(r.info) == {"pid", "hostname"}
    assert r.info["hostname"].startswith("tracker@") and r.info["hostname"] != "tracker@%h"
    assert r.info["pid"] in w.child_pids(), (r.info, w.child_pids())
    assert r.get(timeout=scaled(GET)) == 3
    assert r.state == "SUCCESS"
    # a failure after STARTED is stored as the failure
    f = celery_app.send_task("diag.fail", args=["boom"])
    with pytest.raises(ValueError):
        f.get(timeout=scaled(GET))
    assert f.state == "FAILURE"


def test_no_started_without_the_option(worker, celery_app):
    worker("-c", "1")
    r = celery_app.send_task("diag.sleep", args=[2])
    wait_active(celery_app, r.id)
    assert r.state == "PENDING"
    assert r.get(timeout=scaled(GET)) == 2


@redis_only
def test_http_future_running_from_started(worker, make_api, celery_app):  # noqa: F811
    api = make_api()
    worker("-c", "1", "--task-track-started")
    fid = api.submit("/diag/sleep", {"args": [3]})
    wait_until(lambda: celery_app.AsyncResult(fid).state == "STARTED", scaled(GET),
               what="STARTED")
    r = api.poll(fid)
    assert r.status_code == 202 and r.get_json() == {"status": "running", "progress": None}
    r = api.wait(fid)
    assert r.status_code == 200 and r.get_json() == {"status": "done", "result": 3}
