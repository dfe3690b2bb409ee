"""celeriac_client.py -- a small HTTP client for the celeriac front end (standard library only).

Used by examples/concurrent_users.py and bench/users.py. Every model operation returns a
future; Client.wait() asks /retrieve_future with a wait of up to `long_poll` seconds, so the
server answers when the task is done (a server that answers at once is polled every
`poll_interval` seconds). A 429 (rate limit) or a 503 QueueFull (backpressure: nothing was
queued) is retried after its Retry-After.

    c = Client("http://127.0.0.1:8000", api_key)
    adapter = c.call("/add_lora", {"rank": 8})["adapter_id"]
    f1 = c.submit("/fwdbwd", {"adapter_id": adapter, "data": [{"text": "..."}]})
    f2 = c.submit("/optim_step", {"adapter_id": adapter})
    loss = c.wait(f1)["loss"]; step = c.wait(f2)["step"]
"""

import json
import os
import time
import urllib.error
import urllib.request

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

    def request(self, method, path, body=None):
        """-> (status, parsed JSON). Waits and retries on 429 and 503 QueueFull (Retry-After)."""
        while True:
            data = None if body is None else json.dumps(body).encode()
            req = urllib.request.Request(self.base + path, data=data, method=method)
            req.add_header("Authorization", f"Bearer {self.key}")
            if data is not None:
                req.add_header("Content-Type", "application/json")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return resp.status, json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as e:
                raw = e.read()
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = {"error": {"type": "HTTP", "message": raw[:200].decode("latin-1")}}
                kind = parsed.get("error", {}).get("type") if isinstance(parsed, dict) else None
                if e.code == 429 or (e.code == 503 and kind == "QueueFull"):
                    # rate limit, or backpressure (the queue is full; nothing was queued)
                    time.sleep(float(e.headers.get("Retry-After", "1")))
                    continue
                return e.code, parsed

    def submit(self, path, body=None, method="POST"):
        """Sends a task-submitting request; returns its future id."""
        status, parsed = self.request(method, path, body)
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
            status, parsed = self.request("POST", "/retrieve_future", body)
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
        req = urllib.request.Request(self.base + "/healthz")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
