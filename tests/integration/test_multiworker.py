"""test_multiworker.py -- many workers behind one front end (issue 15): homes, failover, /workers.

Front end alone (Flask test client, real Redis, no worker): nodes are simulated by sending their
worker-heartbeat / worker-offline events with the stock EventDispatcher, and a create's result
(naming its node) is written as a worker would. Checks that an adapter's jobs go to its home's
direct queue (`<node>.dq2`, exchange C.dq2, routing key = node) and stateless tasks to their
routed shared queue; that a silent node's adapters are re-homed before the next job is sent,
with the jobs waiting in its direct queue (and the ones it took and never acked) moved, in
order and unchanged, ahead of that job; that a worker-offline re-homes without any request;
and GET /workers (403 without the admin role).

Real workers (celeriac, the bundled tiny model, one --state-dir, real Gunicorn): see the
tests further down.
All waits are bounded and wait on the thing itself.
"""

import base64
import json
import sys
import threading
import time

import pytest

from conftest import REPO, both_brokers, scaled, wait_until
from http_fixtures import KEYS, KEYS_ENV, ApiCalls, err, table_config

sys.path.insert(0, REPO)
from flask_app import cluster as cluster_mod  # noqa: E402
from flask_app import config as config_mod  # noqa: E402
from flask_app import create_app  # noqa: E402

ADMIN_KEY = "ops-key-4242424242"
ADMIN_ENV = f"ops:{ADMIN_KEY}"


# --------------------------------------------------------------------------------------------
# Front end alone: simulated nodes


class AppApi(ApiCalls):
    def __init__(self, app):
        self.app = app
        self.client = app.test_client()

    def call(self, method, path, user="alice", json=None, headers=None, **kw):
        return self.client.open(path, method=method, json=json,
                                headers=self.headers_for(user, headers), **kw)

    def json_of(self, r):
        return r.get_json()

    def finish(self, future_id, value, state="SUCCESS"):
        self.app.extensions["celeriac"]["celery"].backend.store_result(future_id, value, state)


@pytest.fixture
def make_api(broker_url, backend_url, monkeypatch):
    table = table_config()
    for name in config_mod.from_env({}):
        monkeypatch.delenv(name, raising=False)
    apps = []

    def make(**config):
        cfg = {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url,
               "CELERIAC_REDIS_URL": backend_url,
               "CELERIAC_API_KEYS": KEYS_ENV, "CELERIAC_ADMIN_KEYS": ADMIN_ENV,
               "CELERIAC_RATE_LIMIT": "off", "CELERIAC_POLL_RATE_LIMIT": "off", **table}
        cfg.update(config)
        app = create_app(cfg)
        apps.append(app)
        return AppApi(app)

    yield make
    for app in apps:
        cl = app.extensions["celeriac"].get("cluster")
        if cl is not None:
            cl.close()
        app.extensions["celeriac"]["redis"].close()


class FakeNodes:
    """Sends worker events for named nodes, as a worker would (heartbeats every 0.3 s while
    the node is 'up')."""

    def __init__(self, celery_app):
        self.celery = celery_app
        self.up = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True)
        self.thread.start()

    def _send(self, node, kind, **fields):
        with self.celery.connection_for_write() as conn:
            d = self.celery.events.Dispatcher(conn, hostname=node, enabled=True)
            d.send(kind, freq=1.0, active=0, processed=0, loadavg=[0.0, 0.0, 0.0],
                   sw_ident="fake", sw_ver="0", sw_sys="Linux", **fields)
            d.close()

    def _beat(self):
        while not self.stop.wait(0.3):
            for node in list(self.up):
                try:
                    self._send(node, "worker-heartbeat")
                except Exception:  # noqa: BLE001 - the test's Redis is going away
                    pass

    def start(self, node):
        self._send(node, "worker-online")
        self.up.add(node)

    def silence(self, node):
        self.up.discard(node)

    def offline(self, node):
        self.up.discard(node)
        self._send(node, "worker-offline")

    def close(self):
        self.stop.set()
        self.thread.join(5)


@pytest.fixture
def fake_nodes(make_app, broker_url):
    nodes = FakeNodes(make_app(broker_url))
    yield nodes
    nodes.close()


@pytest.fixture
def rc(redis_server, db):
    """The test's Redis database, answering str."""
    import redis
    client = redis.Redis.from_url(redis_server.url(db), decode_responses=True)
    yield client
    client.close()


def _messages(redis_client, queue):
    """[(task id, task name, kwargs, delivery_info)] waiting in a Redis list, oldest first."""
    out = []
    for raw in reversed(redis_client.lrange(queue, 0, -1)):
        msg = json.loads(raw)
        _, kwargs, _ = json.loads(base64.b64decode(msg["body"]))
        out.append((msg["headers"]["id"], msg["headers"]["task"], kwargs,
                    msg["properties"]["delivery_info"]))
    return out


def _create(api, user, adapter_id, node):
    fid = api.submit("/add_lora", {"rank": 4}, user)
    api.finish(fid, {"adapter_id": adapter_id, "rank": 4, "alpha": 8, "step": 0, "node": node})
    r = api.post("/retrieve_future", {"future_id": fid}, user)
    assert r.status_code == 200 and r.get_json()["result"]["node"] == node, r.get_json()
    return fid


def test_homes_routes_and_failover(make_api, fake_nodes, rc):
    redis_client = rc
    api = make_api(CELERIAC_TASK_ROUTES="model.score=score,lora.*=train",
                   CELERIAC_HEARTBEAT_EXPIRY=1, CELERIAC_SWEEP_INTERVAL=3600,
                   CELERIAC_INSPECT_TTL=60)
    cl = cluster_mod.get(api.app)
    n1, n2, n3 = "n1@box", "n2@box", "n3@box"
    for n in (n1, n2):
        fake_nodes.start(n)
    cl.ensure()
    wait_until(lambda: cl.judge(n1) and cl.judge(n2), scaled(10), what="the nodes alive")

    # create goes to the routed shared queue; its result records the home
    create = api.submit("/add_lora", {"rank": 4})
    assert [m[1] for m in _messages(redis_client, "train")] == ["lora.create"]
    redis_client.delete("train")
    api.finish(create, {"adapter_id": "a1", "rank": 4, "alpha": 8, "step": 0, "node": n1})
    # the next job for the adapter resolves the pending creation by itself
    f1 = api.submit("/fwdbwd", {"adapter_id": "a1", "data": [{"text": "x"}]})
    assert redis_client.hget("celeriac:adapter:a1", "node") == n1
    f2 = api.submit("/optim_step", {"adapter_id": "a1"})
    f3 = api.submit("/score", {"text": "x", "adapter_id": "a1"})
    base = api.submit("/score", {"text": "x"})
    waiting = _messages(redis_client, f"{n1}.dq2")
    assert [m[0] for m in waiting] == [f1, f2, f3]
    for m in waiting:
        assert m[3]["exchange"] == "C.dq2" and m[3]["routing_key"] == n1, m
    assert [m[0] for m in _messages(redis_client, "score")] == [base]
    assert redis_client.llen("celery") == 0 and redis_client.llen("train") == 0

    # n1 takes f1 (kombu's unacked record, as celeriac keeps it) and then falls silent
    raw = redis_client.rpop(f"{n1}.dq2")
    env = json.loads(raw)
    tag = env["properties"]["delivery_tag"]
    redis_client.hset("unacked", tag, json.dumps([env, "C.dq2", n1]))
    redis_client.zadd("unacked_index", {tag: time.time()})
    # a second adapter of bob's on n2 stays where it is
    _create(api, "bob", "b1", n2)
    fake_nodes.silence(n1)
    wait_until(lambda: cl.judge(n1) is False, scaled(15), what="n1 judged dead")

    # the next job for a1 re-homes it on n2 and moves n1's jobs ahead of itself, unchanged
    f4 = api.submit("/fwdbwd", {"adapter_id": "a1", "data": [{"text": "y"}]})
    assert redis_client.hget("celeriac:adapter:a1", "node") == n2
    moved = _messages(redis_client, f"{n2}.dq2")
    assert [m[0] for m in moved] == [f1, f2, f3, f4], moved
    assert [m[2] for m in moved[:3]] == [m[2] for m in waiting]
    assert all(m[3]["routing_key"] == n2 for m in moved)
    assert redis_client.llen(f"{n1}.dq2") == 0 and redis_client.hlen("unacked") == 0
    assert redis_client.hget("celeriac:adapter:b1", "node") == n2
    assert not redis_client.hexists("celeriac:nodes", n1)  # nothing is homed there any more

    # worker-offline: n3's adapter is re-homed by the sweeper, with no request for it
    fake_nodes.start(n3)
    wait_until(lambda: cl.judge(n3), scaled(10), what="n3 alive")
    _create(api, "carol", "c1", n3)
    f5 = api.submit("/optim_step", {"adapter_id": "c1"}, "carol")
    fake_nodes.offline(n3)
    wait_until(lambda: redis_client.hget("celeriac:adapter:c1", "node") == n2, scaled(15),
               what="c1 re-homed on n2")
    wait_until(lambda: f5 in [m[0] for m in _messages(redis_client, f"{n2}.dq2")], scaled(15),
               what="n3's job moved to n2")

    # GET /workers: admin only
    err(api.get("/workers", user="alice"), 403, "Forbidden")
    r = api.get("/workers", user=ADMIN_KEY)
    assert r.status_code == 200, r.get_data(as_text=True)
    nodes = {w["node"]: w for w in r.get_json()["workers"]}
    assert nodes[n2]["alive"] and sorted(nodes[n2]["adapters"]) == ["a1", "b1", "c1"]
    assert nodes[n2]["queues"][f"{n2}.dq2"] == 5
    assert nodes[n2]["last_heartbeat"] is not None
    assert n3 in nodes and nodes[n3]["alive"] is False
    # delete: the adapter has no home any more
    api.submit("/adapters/a1", None, method="DELETE")
    assert not redis_client.exists("celeriac:adapter:a1")
    assert "a1" not in redis_client.smembers(f"celeriac:homes:{n2}")
    assert KEYS  # the plain users are still API keys


def _drain(celery_app, queue):
    """[(task id, task name)] taken (and acked) from a broker queue, oldest first."""
    out = []
    with celery_app.connection_for_write() as conn:
        ch = conn.channel()
        while True:
            raw = ch.basic_get(queue=queue, no_ack=False)
            if raw is None:
                break
            msg = raw if conn.transport.driver_type == "redis" else ch.message_to_python(raw)
            out.append((msg.headers["id"], msg.headers["task"]))
            msg.ack()
        ch.close()
    return out


@both_brokers
def test_dead_nodes_queue_moves_on_either_broker(make_api, fake_nodes, make_app, broker_url):
    """The move through kombu (basic_get, publish, ack) on Redis and RabbitMQ alike."""
    api = make_api(CELERIAC_HEARTBEAT_EXPIRY=1, CELERIAC_SWEEP_INTERVAL=3600,
                   CELERIAC_INSPECT_TTL=60)
    cl = cluster_mod.get(api.app)
    n1, n2 = "m1@box", "m2@box"
    for n in (n1, n2):
        fake_nodes.start(n)
    wait_until(lambda: cl.judge(n1) and cl.judge(n2), scaled(15), what="the nodes alive")
    _create(api, "alice", "a1", n1)
    sent = [api.submit("/fwdbwd", {"adapter_id": "a1", "data": [{"text": "x"}]}),
            api.submit("/optim_step", {"adapter_id": "a1"})]
    fake_nodes.silence(n1)
    wait_until(lambda: cl.judge(n1) is False, scaled(15), what="m1 judged dead")
    sent.append(api.submit("/optim_step", {"adapter_id": "a1"}))
    client = make_app(broker_url)
    assert _drain(client, f"{n2}.dq2") == list(zip(sent, ["lora.forward_backward",
                                                          "lora.optim_step",
                                                          "lora.optim_step"]))
    assert _drain(client, f"{n1}.dq2") == []

