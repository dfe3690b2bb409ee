"""test_executor.py -- drives bin/celeriac-executor over its frame channel.

Spawns the executor as the main process does (a socketpair end passed as --fd,
stdin /dev/null), speaks the EXECUTOR PROTOCOL of protocol/frame.h with msgpack,
and checks each diag.* task against the equivalent Python function: results,
exception type/module/args and messages must be what CPython produces.
Binary directory: $CELERIAC_BIN_DIR (default bin/).
"""
import math
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import traceback

import msgpack
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN_DIR = os.environ.get("CELERIAC_BIN_DIR", os.path.join(ROOT, "bin"))
EXECUTOR = os.path.join(BIN_DIR, "celeriac-executor")
TIMEOUT = 10.0


# The Python twins of the diag tasks: expected outcomes come from running these.
def py_noop():
    return None


def py_echo(*args, **kwargs):
    return [list(args), kwargs]


def py_add(a, b):
    return a + b


def py_fail(message):
    raise ValueError(message)


py_noop.__name__ = py_noop.__qualname__ = "noop"
py_echo.__name__ = py_echo.__qualname__ = "echo"
py_add.__name__ = py_add.__qualname__ = "add"
py_fail.__name__ = py_fail.__qualname__ = "fail"


def py_sleep(seconds):
    time.sleep(0)  # type checks only; the real sleep is tested separately
    if isinstance(seconds, (int, float)) and seconds < 0:
        raise ValueError("sleep length must be non-negative")
    if not isinstance(seconds, (int, float)):
        time.sleep(seconds)  # raises Python's TypeError
    return seconds


py_sleep.__name__ = py_sleep.__qualname__ = "sleep"


def python_outcome(fn, args, kwargs):
    """(status, value): ("SUCCESS", result) or ("FAILURE", (type, module, args, last_tb_line))."""
    try:
        return "SUCCESS", fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        last = traceback.format_exception_only(exc)[-1]
        return "FAILURE", (type(exc).__name__, type(exc).__module__, list(exc.args), last)


class Executor:
    def __init__(self, loglevel="debug"):
        self.sock, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.log = tempfile.TemporaryFile()  # a file, not a pipe: logging never blocks
        self.proc = subprocess.Popen(
            [EXECUTOR, "--fd", str(child.fileno()), "--index", "7", "--loglevel", loglevel],
            stdin=subprocess.DEVNULL, stderr=self.log, pass_fds=(child.fileno(),))
        child.close()
        self.sock.settimeout(TIMEOUT)
        self.buf = b""

    def send_raw(self, data):
        self.sock.sendall(data)

    def send(self, obj):
        payload = msgpack.packb(obj, use_bin_type=True)
        self.send_raw(struct.pack(">I", len(payload)) + payload)

    def _read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        hdr = self._read_exact(4)
        if hdr is None:
            return None
        (n,) = struct.unpack(">I", hdr)
        payload = self._read_exact(n)
        assert payload is not None, "EOF inside a frame"
        return msgpack.unpackb(payload, raw=False, strict_map_key=False)

    def run(self, task, args=(), kwargs=None, tid="t-1"):
        self.send({"op": "run", "id": tid, "task": task, "args": list(args),
                   "kwargs": kwargs or {}, "soft_time_limit": 0.0, "retries": 0})
        reply = self.recv()
        assert reply is not None, "executor closed the channel"
        assert reply["op"] == "result" and reply["id"] == tid
        assert isinstance(reply["runtime"], float) and reply["runtime"] >= 0
        return reply

    def log_text(self):
        """The executor's log so far. Read with pread: the child writes at the file offset it
        shares with self.log, so a seek here would send its next line over the start."""
        fd = self.log.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    def wait_log(self, text, timeout=TIMEOUT):
        """Waits until the executor's log holds text (it logs at debug here)."""
        deadline = time.monotonic() + timeout
        while True:
            if text in self.log_text():
                return
            assert time.monotonic() < deadline, f"no {text!r} in the executor log"
            time.sleep(0.01)

    def wait_signal_taken(self, sig, timeout=TIMEOUT):
        """Waits until no thread has sig pending any more (/proc ShdPnd and each thread's
        SigPnd): its handler has run, wherever the kernel delivered it."""
        bit = 1 << (sig - 1)
        deadline = time.monotonic() + timeout
        while True:
            pending = 0
            for status in [f"/proc/{self.proc.pid}/status"] + [
                    f"/proc/{self.proc.pid}/task/{t}/status"
                    for t in os.listdir(f"/proc/{self.proc.pid}/task")]:
                try:
                    with open(status) as f:
                        for line in f:
                            if line.startswith(("ShdPnd:", "SigPnd:")):
                                pending |= int(line.split()[1], 16)
                except FileNotFoundError:  # a thread that just exited
                    pass
            if not pending & bit:
                return
            assert time.monotonic() < deadline, f"signal {sig} still pending"
            time.sleep(0.01)

    def wait(self):
        rc = self.proc.wait(TIMEOUT)
        self.stderr = self.log_text()
        return rc

    def close(self):
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()
        self.log.close()
        # Sanitizer builds report leaks and errors on stderr at exit.
        assert "Sanitizer" not in self.stderr, self.stderr


@pytest.fixture
def ex():
    e = Executor()
    ready = e.recv()
    # the ready frame names the device the model went to (auto: the CPU here, no GPU)
    assert ready.pop("device", "").startswith(("cpu", "cuda")), ready
    assert ready == {"op": "ready", "pid": e.proc.pid}
    yield e
    e.close()


def check_failure(reply, exc_type, exc_module, exc_message, last_line=None):
    assert reply["status"] == "FAILURE", reply
    assert reply["exc_type"] == exc_type
    assert reply["exc_module"] == exc_module
    assert reply["exc_message"] == exc_message
    tb = reply["traceback"]
    assert tb.startswith("Traceback (most recent call last):\n")
    if last_line is not None:
        assert tb.endswith("\n" + last_line), (tb, last_line)


def check_like_python(reply, fn, args, kwargs):
    status, value = python_outcome(fn, args, kwargs)
    if status == "SUCCESS":
        assert reply["status"] == "SUCCESS", reply
        assert reply["result"] == value and type(reply["result"]) is type(value), (reply, value)
    else:
        check_failure(reply, *value)


def test_ready_and_eof_exit(ex):
    ex.sock.shutdown(socket.SHUT_WR)
    assert ex.wait() == 0
    assert ex.recv() is None


def test_noop(ex):
    r = ex.run("diag.noop")
    assert r["status"] == "SUCCESS" and r["result"] is None
    assert set(r) == {"op", "id", "status", "result", "runtime"}


ECHO_CASES = [
    ((), {}),
    ((1, -2, 2**63 - 1, -2**63, 1.5, True, False, None, "x", "ünï\u0000code"), {}),
    (([1, [2, {"a": None}]], {"k": [1.25, "v"]}), {"a": 1, "b": {"c": [True]}}),
]


@pytest.mark.parametrize("args,kwargs", ECHO_CASES)
def test_echo(ex, args, kwargs):
    r = ex.run("diag.echo", args, kwargs)
    assert r["status"] == "SUCCESS"
    assert r["result"] == [list(args), kwargs]


ADD_CASES = [
    ((1, 2), {}), ((1, 2.5), {}), ((0.1, 0.2), {}), ((True, 1), {}), ((True, True), {}),
    ((False, 1.5), {}), ((-5, 3), {}), ((2**62, 2**62 - 1), {}),
    ((), {"a": 1, "b": 2}), ((1,), {"b": 2}), (("a", "b"), {}), (([1], [2, "x"]), {}),
    (("a", 1), {}), ((1, "a"), {}), (([1], 1), {}), ((None, None), {}), (({}, {}), {}),
    ((1, [1]), {}), ((True, "x"), {}), ((1.0, None), {}), (("a", [1]), {}),
    ((1,), {}), ((), {}), ((1, 2, 3), {}), ((1,), {"a": 2}), ((1, 2, 3), {"c": 4}),
    ((1, 2), {"c": 4}), ((1, 2, 3), {"a": 1}), ((), {"b": 1}),
    ((1,), {"zz": 1, "a": 2}), ((1,), {"a": 2, "zz": 1}), ((), {"b": 1, "a": 2}),
]


@pytest.mark.parametrize("args,kwargs", ADD_CASES)
def test_add_like_python(ex, args, kwargs):
    check_like_python(ex.run("diag.add", args, kwargs), py_add, args, kwargs)


def test_add_int64_overflow(ex):
    r = ex.run("diag.add", (2**63 - 1, 1))
    check_failure(r, "OverflowError", "builtins", ["integer result out of range"],
                  "OverflowError: integer result out of range\n")
    r = ex.run("diag.add", (-2**63, -1))
    assert r["exc_type"] == "OverflowError"


@pytest.mark.parametrize("task,fn,args,kwargs", [
    ("diag.noop", py_noop, (1,), {}), ("diag.noop", py_noop, (), {"x": 1}),
    ("diag.fail", py_fail, (), {}), ("diag.fail", py_fail, ("a", "b"), {}),
    ("diag.sleep", py_sleep, (1, 2), {}), ("diag.sleep", py_sleep, (), {}),
    ("diag.echo", py_echo, (1, 2), {"anything": [1]}),
])
def test_binding_like_python(ex, task, fn, args, kwargs):
    check_like_python(ex.run(task, args, kwargs), fn, args, kwargs)


@pytest.mark.parametrize("message", ["boom: bad value", "", 42, 1.5, None, True,
                                     [1, "two"], {"k": "v"}, "it's \"quoted\""])
def test_fail(ex, message):
    r = ex.run("diag.fail", (message,))
    check_like_python(r, py_fail, (message,), {})
    assert '  File "celeriac/diag", line 1, in diag.fail\n' in r["traceback"]


def test_fail_kwarg(ex):
    check_like_python(ex.run("diag.fail", (), {"message": "kw"}), py_fail, (), {"message": "kw"})


@pytest.mark.parametrize("seconds", [0, 0.05, True, 0.0])
def test_sleep_returns_value(ex, seconds):
    t0 = time.monotonic()
    r = ex.run("diag.sleep", (seconds,))
    assert r["status"] == "SUCCESS"
    assert r["result"] == seconds and type(r["result"]) is type(seconds)
    assert time.monotonic() - t0 >= float(seconds) * 0.9
    assert r["runtime"] >= float(seconds) * 0.9


@pytest.mark.parametrize("seconds", [-1, -0.5, "x", None, [1]])
def test_sleep_errors_like_python(ex, seconds):
    check_like_python(ex.run("diag.sleep", (seconds,)), py_sleep, (seconds,), {})


def test_sleep_too_large(ex):
    r = ex.run("diag.sleep", (1e300,))
    check_failure(r, "OverflowError", "builtins",
                  ["timestamp too large to convert to C _PyTime_t"])


def test_soft_time_limit(ex):
    sent = time.monotonic()
    ex.send({"op": "run", "id": "soft", "task": "diag.sleep", "args": [30], "kwargs": {},
             "soft_time_limit": 0.2, "retries": 0})
    ex.wait_log("Task diag.sleep[soft] starting")  # a signal before the task would be cleared
    t0 = time.monotonic()
    os.kill(ex.proc.pid, signal.SIGUSR1)
    r = ex.recv()
    assert time.monotonic() - t0 < 2.0
    assert r["id"] == "soft"
    check_failure(r, "SoftTimeLimitExceeded", "billiard.exceptions", [],
                  "billiard.exceptions.SoftTimeLimitExceeded: SoftTimeLimitExceeded()\n")
    assert 0 < r["runtime"] <= time.monotonic() - sent  # the run, not more
    # The flag is cleared for the next task, even if the signal came between tasks.
    os.kill(ex.proc.pid, signal.SIGUSR1)
    ex.wait_signal_taken(signal.SIGUSR1)  # handled between the tasks, not during the next
    r = ex.run("diag.sleep", (0.05,), tid="after")
    assert r["status"] == "SUCCESS" and r["result"] == 0.05


def test_sigusr1_between_tasks_is_harmless(ex):
    for _ in range(5):
        os.kill(ex.proc.pid, signal.SIGUSR1)
    assert ex.run("diag.add", (1, 2))["result"] == 3
    assert ex.proc.poll() is None


def test_not_registered(ex):
    r = ex.run("diag.nope", (1,))
    assert r["status"] == "FAILURE"
    assert (r["exc_type"], r["exc_module"], r["exc_message"]) == (
        "NotRegistered", "celery.exceptions", ["diag.nope"])
    assert r["traceback"] is None  # as the Python worker stores it


def test_crash(ex):
    ex.send({"op": "run", "id": "c", "task": "diag.crash", "args": [], "kwargs": {}})
    assert ex.recv() is None
    assert ex.wait() == -signal.SIGKILL


def test_many_frames_in_one_write(ex):
    data = b""
    for i in range(20):
        p = msgpack.packb({"op": "run", "id": "m%d" % i, "task": "diag.add", "args": [i, i],
                           "kwargs": {}})
        data += struct.pack(">I", len(p)) + p
    ex.send_raw(data)
    for i in range(20):
        r = ex.recv()
        assert (r["id"], r["result"]) == ("m%d" % i, 2 * i)


def test_byte_by_byte(ex):
    p = msgpack.packb({"op": "run", "id": "bb", "task": "diag.echo", "args": ["x" * 300],
                       "kwargs": {}})
    for b in struct.pack(">I", len(p)) + p:
        ex.send_raw(bytes([b]))
    r = ex.recv()
    assert r["result"] == [["x" * 300], {}]


def test_large_payload(ex):
    big = "y" * (3 * 1024 * 1024)
    r = ex.run("diag.echo", (big,))
    assert r["result"] == [[big], {}]


def test_missing_args_fields_default_empty(ex):
    ex.send({"op": "run", "id": "d", "task": "diag.noop"})
    r = ex.recv()
    assert (r["id"], r["status"], r["result"]) == ("d", "SUCCESS", None)


@pytest.mark.parametrize("frame,why", [
    ({"op": "run", "id": "x"}, "no task name"),
    ({"op": "run", "id": "x", "task": "diag.noop", "args": {}}, "args is not an array"),
    ({"op": "run", "id": "x", "task": "diag.noop", "kwargs": []}, "kwargs is not a map"),
    ({"op": "bogus", "id": "x"}, "unknown op"),
    ({"id": "x", "task": "diag.noop"}, "no op"),
])
def test_bad_run_with_id_fails_task(ex, frame, why):
    ex.send(frame)
    r = ex.recv()
    assert r["id"] == "x" and r["status"] == "FAILURE"
    assert (r["exc_type"], r["exc_module"], r["exc_message"]) == (
        "DecodeError", "kombu.exceptions", [why])
    assert ex.run("diag.add", (1, 1))["result"] == 2  # still serving


@pytest.mark.parametrize("raw", [
    b"\xc1",                                    # never-used msgpack byte
    msgpack.packb([1, 2]),                      # not a map
    msgpack.packb({"op": "run", "task": "diag.noop"}),  # no id
    msgpack.packb({"op": "run", "id": 5, "task": "diag.noop"}),  # id not a string
    b"",                                        # empty payload
])
def test_malformed_frame_exits_2(ex, raw):
    ex.send_raw(struct.pack(">I", len(raw)) + raw)
    assert ex.wait() == 2
    assert ex.recv() is None
    assert "ERROR/Executor-7" in ex.stderr


def test_oversized_length_exits_2(ex):
    ex.send_raw(struct.pack(">I", 0xFFFFFFFF))
    assert ex.wait() == 2


def test_eof_mid_frame_exits_0(ex):
    ex.send_raw(struct.pack(">I", 100) + b"abc")
    ex.sock.shutdown(socket.SHUT_WR)
    assert ex.wait() == 0


@pytest.mark.parametrize("argv", [[], ["--fd"], ["--fd", "x", "--index", "1"],
                                  ["--fd", "3", "--index", "1", "--bogus", "1"],
                                  ["--fd", "99", "--index", "1"]])
def test_bad_command_line(argv):
    p = subprocess.run([EXECUTOR] + argv, stdin=subprocess.DEVNULL, capture_output=True,
                       timeout=TIMEOUT)
    assert p.returncode == 2
    assert b"usage" in p.stderr


def test_sigint_ignored(ex):
    os.kill(ex.proc.pid, signal.SIGINT)
    assert ex.run("diag.noop")["status"] == "SUCCESS"


def test_log_lines_name_the_executor(ex):
    ex.run("diag.noop")
    ex.sock.close()
    assert ex.wait() == 0
    assert "DEBUG/Executor-7]" in ex.stderr


def test_float_results_round_trip(ex):
    for a, b in [(1e308, 1e307), (-0.0, -0.0), (1e-320, 0)]:
        r = ex.run("diag.add", (a, b))
        assert r["status"] == "SUCCESS" and r["result"] == a + b
        assert math.copysign(1, r["result"]) == math.copysign(1, a + b)


def test_float_overflow_is_overflow_error(ex):
    # Python would return inf; JSON cannot carry it, so the task fails clearly.
    r = ex.run("diag.add", (1e308, 1e308))
    check_failure(r, "OverflowError", "builtins", ["float result out of range"],
                  "OverflowError: float result out of range\n")
