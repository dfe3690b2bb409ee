"""test_multiworker.py -- many workers behind one front end (issue 15): homes, failover, /workers.

Front end alone (Flask test client, real Redis, no worker): nodes are simulated by sending their
worker-heartbeat / worker-offline events with the stock EventDispatcher, and a create's result
(naming its node) is written as a worker would. Checks that an adapter's jobs go to its home's
direct queue (`<node>.dq2`, through the default exchange as the stock client sends to
worker_direct) and stateless tasks to their
routed shared queue; that a silent node's adapters are re-homed before the next job is sent,
with the jobs waiting in its direct queue (and the ones it took and never acked, and the one
its idle wait had moved into its in-flight list) moved, in order and unchanged, ahead of that
job; that a worker-offline re-homes without any request;
and GET /workers (403 without the admin role).

Real workers (bin/celeriac -c 1 --prefetch-multiplier 1 with distinct -n names, the bundled
tiny model, one --state-dir, one Redis, real Gunicorn with two web workers): six users train
at once (create, then fwdbwd + optim_step back to back, fixed seeds and data) and each one's
losses equal a one-worker run of the same seed and data; a fourth worker joins mid-run; the
home of the fewest users is killed (SIGKILL to its process group: the machine is lost) while
they hold pending gradients: each of them gets AdapterStateLost once, for that step, redoes
it and ends with every step it was told succeeded applied, on a new home (the new worker
among them), and nobody else sees anything; new adapters land on the new worker too; a warm
shutdown re-homes its users' adapters, pending gradients included, with no error at all;
GET /workers shows the nodes (403 without the admin role). A failover with jobs in flight
(kill -9 of a main process, back-to-back jobs) runs on Redis and RabbitMQ: at most one
AdapterStateLost per lost step.
All waits are bounded and wait on the thing itself.
"""

import base64
import json
import os
import signal
import sys
import threading
import time

import pytest

from conftest import REPO, WORKER_KIND, both_brokers, scaled, wait_until
from http_fixtures import KEYS, KEYS_ENV, app_factory, err
from test_http import gunicorn  # noqa: F401 (fixture: Gunicorn on the test's database)

sys.path.insert(0, REPO)
from flask_app import backpressure  # noqa: E402
from flask_app import cluster as cluster_mod  # noqa: E402

ADMIN_KEY = "ops-key-4242424242"
ADMIN_ENV = f"ops:{ADMIN_KEY}"


# --------------------------------------------------------------------------------------------
# Front end alone: simulated nodes


@pytest.fixture
def make_api(broker_url, backend_url, monkeypatch):
    make, close = app_factory(
        {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url,
         "CELERIAC_REDIS_URL": backend_url, "CELERIAC_API_KEYS": KEYS_ENV,
         "CELERIAC_ADMIN_KEYS": ADMIN_ENV, "CELERIAC_RATE_LIMIT": "off",
         "CELERIAC_POLL_RATE_LIMIT": "off"}, monkeypatch)
    yield make
    close()


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
        # as the stock client sends to worker_direct(n1): the default exchange, the queue's
        # name as routing key (no lookup of C.dq2's bindings per send)
        assert m[3]["exchange"] == "" and m[3]["routing_key"] == f"{n1}.dq2", m
    assert [m[0] for m in _messages(redis_client, "score")] == [base]
    assert redis_client.llen("celery") == 0 and redis_client.llen("train") == 0

    # n1 takes f1 (kombu's unacked record, as celeriac keeps it) and then falls silent
    raw = redis_client.rpop(f"{n1}.dq2")
    env = json.loads(raw)
    tag = env["properties"]["delivery_tag"]
    redis_client.hset("unacked", tag, json.dumps([env, "C.dq2", n1]))
    redis_client.zadd("unacked_index", {tag: time.time()})
    # ... and its idle wait moved f2 into its in-flight list (worker/redis_wait.c), not taken yet
    uid = "00000000-0000-0000-0000-000000000001"
    in_flight = f"_celeriac.wait.{uid}.{n1}.dq2"
    redis_client.execute_command("LMOVE", f"{n1}.dq2", in_flight, "RIGHT", "LEFT")
    redis_client.sadd("_celeriac.waits", uid)
    redis_client.sadd(f"_celeriac.lists.{uid}", in_flight)
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
    # the moved ones go out again through C.dq2 (routing key n2), the new one as any send
    assert all(m[3]["exchange"] == "C.dq2" and m[3]["routing_key"] == n2 for m in moved[:3])
    assert moved[3][3]["exchange"] == "" and moved[3][3]["routing_key"] == f"{n2}.dq2"
    assert redis_client.llen(f"{n1}.dq2") == 0 and redis_client.hlen("unacked") == 0
    assert redis_client.llen(in_flight) == 0
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
    # backpressure counts the jobs of a shared queue's adapters waiting in its nodes' direct
    # queues, as it counted them in the one queue before
    with api.app.app_context():
        assert redis_client.llen("train") == 2  # bob's and carol's creates
        assert backpressure.depth("train", fresh=True) == 2 + 5
        assert backpressure.depth("score", fresh=True) == 1
    # delete: the adapter has no home any more
    api.submit("/adapters/a1", None, method="DELETE")
    assert not redis_client.exists("celeriac:adapter:a1")
    assert "a1" not in redis_client.smembers(f"celeriac:homes:{n2}")
    assert KEYS  # the plain users are still API keys


class AdapterStateLost(Exception):
    pass


class AdapterBusy(Exception):
    pass


@pytest.mark.parametrize("exc", [AdapterStateLost("adapter a: gradients from 1 forward_backward "
                                                  "call(s) since step 2 were lost with node n; "
                                                  "run forward_backward again"),
                                 AdapterBusy("adapter a is held by node n (n.dq2)")])
def test_adapter_errors_are_409(make_api, exc):
    api = make_api(CELERIAC_WORKER_EVENTS=False, CELERIAC_ENABLE_DIAG=True)
    fid = api.submit("/diag/noop", {})
    api.finish(fid, exc, "FAILURE")
    r = api.post("/retrieve_future", {"future_id": fid})
    assert r.status_code == 409, r.get_data(as_text=True)
    assert r.get_json() == {"status": "failed",
                            "error": {"type": type(exc).__name__, "message": str(exc)}}


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


# --------------------------------------------------------------------------------------------
# Real workers: three celeriac workers (-c 1, distinct -n, one --state-dir) behind one Gunicorn

real_workers = pytest.mark.skipif(WORKER_KIND == "python",
                                  reason="adapters exist only in celeriac")

STEPS = 8
KILL_AT = 3   # the victims' step during which their home is killed
# (seed, data) of the adapters: two kinds; user i trains kind i % 2
KINDS = [(11, [{"text": "The quick brown fox jumps over the lazy dog."}] * 2),
         (12, [{"text": "Pack my box with five dozen liquor jugs, said the sphinx."}] * 2)]
USERS = {f"user{i}": f"user{i}-key-{i:012d}" for i in range(6)}
USERS_ENV = ",".join(f"{u}:{k}" for u, k in USERS.items())
STATE_LOST = "AdapterStateLost"


def _front_end(gunicorn, **env):  # noqa: F811
    return gunicorn(CELERIAC_API_KEYS=USERS_ENV + "," + KEYS_ENV, CELERIAC_ADMIN_KEYS=ADMIN_ENV,
                    CELERIAC_SWEEP_INTERVAL=1, CELERIAC_INSPECT_TTL=1, **env)


def _start(worker, state, name, *extra):
    return worker("-c", "1", "-n", f"{name}@%h", "--state-dir", str(state),
                  "--prefetch-multiplier", "1", *extra, ready_timeout=60)


def _lost(r):
    return r.status_code == 409 and r.json()["error"]["type"] == STATE_LOST


class Trainer(threading.Thread):
    """One user's create + STEPS x (fwdbwd, optim_step sent back to back) loop. A step whose
    optim_step fails with AdapterStateLost is redone (fwdbwd again, then optim_step), as a
    client is told to; every other failure is recorded and ends the loop."""

    def __init__(self, api, key, kind, steps=STEPS, pause_at=None):
        super().__init__(daemon=True)
        self.pause_at = pause_at  # step whose optim_step waits for resume (after its fwdbwd)
        self.paused, self.resume = threading.Event(), threading.Event()
        self.api, self.key, self.steps = api, key, steps
        self.seed, self.data = KINDS[kind]
        self.kind = kind
        self.losses, self.lost, self.failures, self.told_ok = [], [], [], 0
        self.adapter = self.node = None
        self.created = threading.Event()
        self.at_step = {k: threading.Event() for k in range(1, steps + 2)}

    def _wait(self, fid):
        return self.api.wait(fid, self.key, timeout=90, expect=None)

    def run(self):
        try:
            info = self.api.result("/add_lora", {"rank": 4, "alpha": 8, "seed": self.seed},
                                   user=self.key)
            self.adapter, self.node = info["adapter_id"], info.get("node")
            self.created.set()
            while len(self.losses) < self.steps:
                step = len(self.losses) + 1
                f1 = self.api.submit("/fwdbwd", {"adapter_id": self.adapter, "data": self.data},
                                     self.key)
                if step == self.pause_at and not self.paused.is_set():
                    # the gradients are only in the home's memory while we wait
                    r1 = self._wait(f1)
                    self.paused.set()
                    assert self.resume.wait(scaled(120)), "never resumed"
                f2 = self.api.submit("/optim_step", {"adapter_id": self.adapter,
                                                     "adam_params": {"learning_rate": 1e-2}},
                                     self.key)
                self.at_step[step].set()
                r1, r2 = self._wait(f1), self._wait(f2)
                if _lost(r1):
                    # the gradients died with the home before this fwdbwd: the adopter says so
                    # on the first job it gets, and the optim_step sent with it has nothing to
                    # apply (a consequence of sending both at once, not a second report)
                    self.lost.append((step, r1.json()["error"]["message"]))
                    if r2.status_code != 200 and not (
                            r2.status_code == 400 and "no accumulated gradients"
                            in r2.json()["error"]["message"]):
                        self.failures.append(("optim_step after lost", step, r2.json()))
                        return
                    continue
                if r1.status_code != 200:
                    self.failures.append(("fwdbwd", step, r1.status_code, r1.json()))
                    return
                if _lost(r2):
                    self.lost.append((step, r2.json()["error"]["message"]))
                    continue
                if r2.status_code != 200:
                    self.failures.append(("optim_step", step, r2.status_code, r2.json()))
                    return
                assert r2.json()["result"]["step"] == step, (r2.json(), step)
                self.told_ok += 1
                self.losses.append(r1.json()["result"]["loss"])
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.failures.append(("exception", repr(e)))
        finally:
            self.created.set()
            self.paused.set()
            for ev in self.at_step.values():
                ev.set()


def _run_all(trainers, timeout):
    for t in trainers:
        t.start()
    for t in trainers:
        t.join(scaled(timeout))
        assert not t.is_alive(), f"{t.key} did not finish"


def _unacked_on(redis_url, node):
    """How many messages node took from its direct queue and has not acked (the Redis
    transport's "unacked" hash, which kombu and celeriac share)."""
    import redis
    client = redis.Redis.from_url(redis_url)
    try:
        n = 0
        for _, raw in client.hscan_iter("unacked"):
            _, exchange, routing_key = json.loads(raw)
            n += routing_key in (node.encode(), node, f"{node}.dq2")
        return n
    finally:
        client.close()


def _launch(trainers):
    """Starts the trainers and waits for each one's adapter; returns {home node: [trainers]}."""
    for t in trainers:
        t.start()
    for t in trainers:
        assert t.created.wait(scaled(60)) and t.adapter, t.failures
    by_node = {}
    for t in trainers:
        by_node.setdefault(t.node, []).append(t)
    return by_node


def _reference(api):
    """Losses of each kind trained alone on one worker (the one-worker run). Its adapters are
    deleted after: left homed on that worker, they would count in the failover balance and
    could take the new worker's places ahead of the users' adapters."""
    refs = [Trainer(api, KEYS["alice"], kind) for kind in range(len(KINDS))]
    _run_all(refs, 60)
    for t in refs:
        assert not t.failures and not t.lost, (t.failures, t.lost)
        api.result(f"/adapters/{t.adapter}", None, user=KEYS["alice"], method="DELETE")
    return [t.losses for t in refs]


def _applied_steps(api, t):
    return api.result(f"/adapters/{t.adapter}", None, user=t.key, method="GET")["step"]


def _workers(api):
    r = api.get("/workers", user=ADMIN_KEY)
    assert r.status_code == 200, r.text
    return {w["node"]: w for w in r.json()["workers"]}


def _check_lost(t):
    """At most one AdapterStateLost per lost step, each naming the adapter and what to redo."""
    steps = [s for s, _ in t.lost]
    assert len(steps) == len(set(steps)), t.lost
    for _, message in t.lost:
        assert t.adapter in message and "forward_backward" in message, message


@real_workers
def test_six_users_three_workers_kill_and_join(gunicorn, worker, tmp_path, broker_url):  # noqa: F811
    state = tmp_path / "state"
    api = _front_end(gunicorn)
    w = {"w0": _start(worker, state, "w0")}
    ref = _reference(api)
    w["w1"] = _start(worker, state, "w1")
    w["w2"] = _start(worker, state, "w2")
    wait_until(lambda: sum(x["alive"] for x in _workers(api).values()) == 3, scaled(20),
               what="three live workers in GET /workers")
    err(api.get("/workers", user="alice"), 403, "Forbidden")

    # every user pauses after the fwdbwd of step KILL_AT until told to go on: the victims'
    # gradients are then certainly only in their home's memory when it is killed
    trainers = [Trainer(api, key, i % 2, pause_at=KILL_AT) for i, key in enumerate(USERS.values())]
    by_node = _launch(trainers)
    assert set(by_node) <= {x for x in _workers(api)}, by_node
    # a fourth worker joins mid-run
    for t in trainers:
        t.at_step[2].wait(scaled(60))
    w["w3"] = _start(worker, state, "w3")
    wait_until(lambda: any(n.startswith("w3@") and x["alive"]
                           for n, x in _workers(api).items()),
               scaled(20), what="w3 alive in GET /workers")
    new = next(n for n in _workers(api) if n.startswith("w3@"))
    # kill -9 the home of the fewest users (someone else keeps training untouched)
    dead = min(by_node, key=lambda n: (len(by_node[n]), n))
    victims = by_node[dead]
    for t in trainers:
        assert t.paused.wait(scaled(60)), t.key
    for t in trainers:
        if t not in victims:
            t.resume.set()
    # the victims' paused fwdbwd acked (a result is stored before its ack: one killed in
    # between is delivered again and runs again, losing nothing -- test_multiworker_state)
    wait_until(lambda: _unacked_on(broker_url, dead) == 0, scaled(20),
               what=f"{dead} to ack its last messages")
    # the whole worker at once, executors included, as when its machine is lost (a main
    # process killed alone may leave an executor time to hand its gradients back)
    gone = w[dead.split("@")[0]]
    os.killpg(gone.pgid, signal.SIGKILL)
    gone.proc.wait(10)
    for t in victims:
        t.resume.set()
    for t in trainers:
        t.join(scaled(120))
        assert not t.is_alive(), f"{t.key} did not finish"

    for t in trainers:
        assert not t.failures, (t.key, t.node, t.failures)
        assert t.losses == ref[t.kind], (t.key, t.node, t.losses, ref[t.kind])
        assert _applied_steps(api, t) == t.told_ok == STEPS
        if t in victims:
            _check_lost(t)
            assert [step for step, _ in t.lost] == [KILL_AT], t.lost
            assert f"since step {KILL_AT - 1} were lost with node {dead}" in t.lost[0][1]
        else:
            assert t.lost == [], (t.key, t.lost)
    seen = _workers(api)
    homes = {t.adapter: n for n, x in seen.items() for t in trainers if t.adapter in x["adapters"]}
    for t in victims:
        assert homes.get(t.adapter) not in (None, dead), (t.adapter, homes)
    assert any(homes.get(t.adapter) == new for t in victims), (new, homes)
    assert seen[new]["alive"] and seen[new]["executors"]["total"] == 1, seen[new]
    assert seen[new]["queues"][f"{new}.dq2"] == 0, seen[new]
    # what the worker's stats say (cached by the front end a few seconds): its device and
    # the adapters its executor holds -- the victims re-homed there trained on it
    def described():
        x = _workers(api)[new]
        return ((x.get("device") or "").startswith("cpu")
                and isinstance(x.get("adapters_resident"), int) and x["adapters_resident"] >= 1)
    wait_until(described, scaled(20), what=f"{new}'s device and resident adapters")
    # the dead node shows as such everywhere (a heartbeat it sent on request counts 3 x 5 s)
    wait_until(lambda: not _workers(api).get(dead, {}).get("alive"), scaled(20),
               what=f"{dead} shown dead")
    # new adapters go to the new worker too: with the three live workers idle, three creates
    # in a row are taken by each of them in turn (Redis serves blocked BLMOVEs first come,
    # first served), and each new adapter's jobs run on its home
    live = {n for n, x in _workers(api).items() if x["alive"]}
    assert new in live and len(live) == 3, live
    made = []
    for _ in range(3):
        info = api.result("/add_lora", {"rank": 4, "seed": 5}, user="carol")
        made.append(info)
        assert api.result("/fwdbwd", {"adapter_id": info["adapter_id"], "data": KINDS[0][1]},
                          user="carol")["node"] == info["node"]
    assert {m["node"] for m in made} == live, made


@real_workers
def test_warm_shutdown_rehomes_without_error(gunicorn, worker, tmp_path):  # noqa: F811
    state = tmp_path / "state"
    api = _front_end(gunicorn)
    w = {"w0": _start(worker, state, "w0")}
    ref = _reference(api)
    w["w1"] = _start(worker, state, "w1")
    wait_until(lambda: sum(x["alive"] for x in _workers(api).values()) == 2, scaled(20),
               what="two live workers")
    keys = list(USERS.values())[:4]
    # each pauses after a fwdbwd: the stopped node holds pending gradients of its users
    trainers = [Trainer(api, key, i % 2, pause_at=KILL_AT) for i, key in enumerate(keys)]
    by_node = _launch(trainers)
    stopped = max(by_node, key=lambda n: (len(by_node[n]), n))
    for t in trainers:
        assert t.paused.wait(scaled(60)), t.key
    assert w[stopped.split("@")[0]].stop() == 0
    for t in trainers:
        t.resume.set()
    for t in trainers:
        t.join(scaled(120))
        assert not t.is_alive(), f"{t.key} did not finish"
    for t in trainers:
        assert not t.failures and not t.lost, (t.key, t.node, t.failures, t.lost)
        assert t.losses == ref[t.kind], (t.key, t.losses, ref[t.kind])
        assert _applied_steps(api, t) == STEPS
    wait_until(lambda: not _workers(api).get(stopped, {}).get("alive"), scaled(20),
               what=f"{stopped} shown gone")
    assert not _workers(api).get(stopped, {}).get("adapters")


@real_workers
@both_brokers
def test_kill_one_of_two(gunicorn, worker, tmp_path, broker):  # noqa: F811
    """The failover on either broker: two workers, four users, one worker killed mid-run."""
    state = tmp_path / "state"
    api = _front_end(gunicorn)
    w = {"w0": _start(worker, state, "w0"), "w1": _start(worker, state, "w1")}
    wait_until(lambda: sum(x["alive"] for x in _workers(api).values()) == 2, scaled(20),
               what="two live workers")
    trainers = [Trainer(api, key, 0) for key in list(USERS.values())[:4]]
    by_node = _launch(trainers)
    dead = max(by_node, key=lambda n: (len(by_node[n]), n))
    for t in by_node[dead]:
        t.at_step[KILL_AT].wait(scaled(60))
    w[dead.split("@")[0]].kill()
    for t in trainers:
        t.join(scaled(120))
        assert not t.is_alive(), f"{t.key} did not finish"
    first = trainers[0].losses
    for t in trainers:
        assert not t.failures, (t.key, t.node, t.failures)
        assert _applied_steps(api, t) == t.told_ok == STEPS
        assert t.losses == first, (t.key, t.losses, first)
        if t.node == dead:
            _check_lost(t)
            assert len(t.lost) <= 1
        else:
            assert t.lost == []
