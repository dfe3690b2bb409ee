"""celeriac_client.py -- a small HTTP client for the celeriac front end (standard library only).

Used by examples/concurrent_users.py and bench/users.py. Every model operation returns a
future; Client.wait() asks /retrieve_future with a wait of up to `long_poll` seconds, so the
server answers when the task is done (a server that answers at once is polled every
`poll_interval` seconds). A 429 (rate limit) or a 503 QueueFull (backpressure: nothing was
queued) is retried after its Retry-After. Each thread keeps its HTTP connection open between
requests (keep-alive, as requests.Session does): no TCP connect per request, and the server
parses no new connection. A connection the server closed while it was idle (Gunicorn's
keepalive) is noticed before it is used and replaced. A kept connection can still be closed
just as a request goes out on it (a Gunicorn worker restarting after max_requests closes its
idle keep-alive connections). A request whose writing fails so is sent again on a new
connection (the server never had it), and so is one whose answer never comes when sending it
twice changes nothing: a /retrieve_future (it only reads) and a submit, which carries an
Idempotency-Key of its own (the server gives a repeat the first one's future and queues
nothing). Other network failures are an OSError.

    c = Client("http://127.0.0.1:8000", api_key)
    adapter = c.call("/add_lora", {"rank": 8})["adapter_id"]
    f1 = c.submit("/fwdbwd", {"adapter_id": adapter, "data": [{"text": "..."}]})
    f2 = c.submit("/optim_step", {"adapter_id": adapter})
    loss = c.wait(f1)["loss"]; step = c.wait(f2)["step"]
"""

import http.client
import json
import os
import select
import threading
import time
import urllib.parse
import uuid

# The development keys `make run` configures when CELERIAC_API_KEYS is not set.
DEV_KEYS = "alice:dev-key-alice,bob:dev-key-bob,carol:dev-key-carol,dave:dev-key-dave"


def api_keys():
    """{user: key} from CELERIAC_API_KEYS ("alice:KEY1,bob:KEY2"), else the dev keys."""
    spec = os.environ.get("CELERIAC_API_KEYS") or DEV_KEYS
    out = {}
    for item in spec.split(","):
        user, _, key = item.strip().partition(":")
        if user and key:
            out[user.strip()] = key.strip()
    return out


class ApiError(Exception):
    def __init__(self, status, body):
        err = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status}: {err.get('type', '?')}: {err.get('message', body)}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, base_url, api_key, timeout=30, poll_interval=0.02, long_poll=10):
        self.base = base_url.rstrip("/")
        self.key = api_key
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.long_poll = long_poll  # seconds the server may hold /retrieve_future (0: never)
        url = urllib.parse.urlsplit(self.base)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https, self._host, self._port = url.scheme == "https", url.hostname, url.port
        self._prefix = url.path
        self._local = threading.local()  # this thread's connection

    def _connection(self):
        """This thread's connection, a new one when the server closed the kept one."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None:
            poll = select.poll()  # (select.select fails on descriptors past 1023)
            poll.register(conn.sock, select.POLLIN)
            if poll.poll(0):  # nothing is owed between requests: the server closed it
                conn.close()
                conn = None
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = self._local.conn = cls(self._host, self._port, timeout=self.timeout)
        return conn

    def _exchange(self, method, path, data, repeatable=False, idem_key=None):
        """One request on this thread's connection -> (status, headers, raw body). A kept
        connection that fails while the request is written (the server had closed it) is
        replaced and the request sent again, once; when repeatable (sending it twice changes
        nothing) also one that the server resets or closes before any answer (it may have
        read the request). idem_key: the request's Idempotency-Key."""
        kept = getattr(self._local, "conn", None)
        conn = self._connection()
        reused = conn is kept and conn.sock is not None  # open before, not a new one
        headers = {"Authorization": f"Bearer {self.key}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if idem_key is not None:
            headers["Idempotency-Key"] = idem_key
        again = (method, path, data, repeatable, idem_key)
        try:
            conn.request(method, self._prefix + path, body=data, headers=headers)
        except (OSError, http.client.HTTPException) as e:
            # failing while written: the server had closed the kept connection and never had
            # the request whole
            return self._lost(e, reused, again)
        try:
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as e:
            # reset or closed before any answer: the server may have read the request
            return self._lost(e, reused and repeatable, again)
        if resp.will_close:
            self.close()
        return resp.status, resp.headers, raw

    def _lost(self, err, resend, again):
        """The connection failed with err: closes it; sends the request again (the
        _exchange arguments `again`) on a new one when resend and the server closed it
        (reset, broken pipe, closed before an answer: http.client.RemoteDisconnected is a
        ConnectionResetError), else raises."""
        self.close()
        if resend and isinstance(err, (ConnectionResetError, BrokenPipeError)):
            return self._exchange(*again)
        if isinstance(err, http.client.HTTPException):
            raise ConnectionError(f"{again[0]} {again[1]}: {type(err).__name__}: {err}") from err
        raise err

    def request(self, method, path, body=None, repeatable=False, idem_key=None):
        """-> (status, parsed JSON). Waits and retries on 429, 503 QueueFull and 409
        IdempotentRequestInProgress (Retry-After). repeatable: sending the request twice
        changes nothing (a /retrieve_future, or a submit with idem_key, its
        Idempotency-Key), so it may go out again on a new connection (_exchange)."""
        data = None if body is None else json.dumps(body).encode()
        while True:
            status, headers, raw = self._exchange(method, path, data, repeatable, idem_key)
            if 200 <= status < 300:
                return status, json.loads(raw or b"null")
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {"error": {"type": "HTTP", "message": raw[:200].decode("latin-1")}}
            kind = parsed.get("error", {}).get("type") if isinstance(parsed, dict) else None
            if (status == 429 or (status == 503 and kind == "QueueFull")
                    or (status == 409 and kind == "IdempotentRequestInProgress")):
                # rate limit, backpressure (the queue is full; nothing was queued), or this
                # submit's first sending is still being queued
                time.sleep(float(headers.get("Retry-After", "1")))
                continue
            return status, parsed

    def submit(self, path, body=None, method="POST"):
        """Sends a task-submitting request; returns its future id. It carries an
        Idempotency-Key of its own, so it is sent again when its connection is lost before
        the answer: the server queues it once."""
        status, parsed = self.request(method, path, body, repeatable=True,
                                      idem_key=uuid.uuid4().hex)
        if status != 202:
            raise ApiError(status, parsed)
        return parsed["future_id"]

    def wait(self, future_id, timeout=600, on_progress=None):
        """Polls the future until done; returns its result or raises ApiError."""
        deadline = time.monotonic() + timeout
        while True:
            wait = max(0.0, min(self.long_poll, deadline - time.monotonic()))
            if on_progress:
                wait = min(wait, 1.0)  # progress is only seen between answers
            body = {"future_id": future_id}
            if wait > 0:
                body["wait"] = round(wait, 3)
            t0 = time.monotonic()
            status, parsed = self.request("POST", "/retrieve_future", body, repeatable=True)
            if status == 200:
                return parsed["result"]
            if status != 202:
                raise ApiError(status, parsed)
            if on_progress and parsed.get("progress"):
                on_progress(parsed["progress"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"future {future_id} not done after {timeout} s")
            if time.monotonic() - t0 < wait / 2:  # answered at once: no wait slot was free
                time.sleep(self.poll_interval)

    def call(self, path, body=None, method="POST", timeout=600):
        """submit + wait."""
        return self.wait(self.submit(path, body, method), timeout)

    def healthz(self):
        status, _, raw = self._exchange("GET", "/healthz", None)
        return status, json.loads(raw or b"{}")

    def close(self):
        """Closes this thread's connection (others close when their threads' objects go)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            conn.close()
