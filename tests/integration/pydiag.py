"""pydiag -- the diag.* tasks of celeriac's executor, written for the stock Python worker.

The integration tests run it as a peer of celeriac (mixed-worker test) and as the reference
worker that the tests are validated against (CELERIAC_WORKER=python). Started as
`/usr/bin/python3 -m celery -A pydiag worker ...` with tests/integration as the cwd.

Configuration comes from the environment only:
  CELERY_BROKER_URL          broker (default redis://127.0.0.1:6379/0)
  CELERY_RESULT_BACKEND      result backend (default: the broker URL)
  PYDIAG_VISIBILITY_TIMEOUT  kombu visibility_timeout in seconds (default 3600)
  PYDIAG_RESULT_EXPIRES      result_expires in seconds (default 86400, 0 = never)
  PYDIAG_RESULT_EXTENDED     "1": result_extended (metas carry name, args, kwargs, ...)
  PYDIAG_MAX_PRIORITY        task_queue_max_priority (AMQP queues' x-max-priority; default none)
  PYDIAG_WORKER_DIRECT       "1": worker_direct (also consume <node>.dq2, as celeriac does)
"""

import os
import signal
import time

from celery import Celery

_broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
_backend = os.environ.get("CELERY_RESULT_BACKEND") or _broker

app = Celery("pydiag", broker=_broker, backend=_backend)
_expires = int(os.environ.get("PYDIAG_RESULT_EXPIRES", "86400"))
app.conf.update(
    accept_content=["json", "msgpack"],
    result_expires=_expires if _expires > 0 else None,
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("PYDIAG_VISIBILITY_TIMEOUT", "3600")),
    },
    worker_hijack_root_logger=True,
    result_extended=os.environ.get("PYDIAG_RESULT_EXTENDED") == "1",
)
if os.environ.get("PYDIAG_WORKER_DIRECT") == "1":  # <node>.dq2 as celeriac consumes it
    app.conf.worker_direct = True
if os.environ.get("PYDIAG_MAX_PRIORITY"):
    app.conf.task_queue_max_priority = int(os.environ["PYDIAG_MAX_PRIORITY"])


@app.task(name="diag.noop")
def noop():
    return None


@app.task(name="diag.echo")
def echo(*args, **kwargs):
    return [args, kwargs]


@app.task(name="diag.add")
def add(a, b):
    return a + b


@app.task(name="diag.sleep")
def sleep(seconds):
    time.sleep(seconds)
    return seconds


@app.task(name="diag.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="diag.crash")
def crash():
    # Die the way a segfaulting executor would: no cleanup, no reply.
    os.kill(os.getpid(), signal.SIGKILL)
