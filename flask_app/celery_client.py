"""celery_client.py -- the Celery client through which the front end reaches the worker.

Configured only from the environment (CELERY_BROKER_URL, CELERY_RESULT_BACKEND; create_app
passes the values it read from there). The app sends tasks by name with send_task and reads
results with one backend read (get_task_meta, what AsyncResult uses); it registers no tasks
and never imports the model, so this process needs neither a GPU nor the engine. Publishing
retries a bounded number of times, then raises kombu's OperationalError (a 503).

On a Redis result backend the stock send_task also subscribes to each task's result channel
(for a later AsyncResult.get()) and unsubscribes when the result object goes away. The front
end never waits that way (waiting.py has its own subscriber), and nobody read the replies of
those two commands: they piled up unread, about 170 bytes a submit, in the socket's buffer
and then in Redis's output buffer for that connection, for the life of a Gunicorn thread.
The client's Redis backend (SendOnlyRedisBackend) does not subscribe; everything else is the
stock one.
"""

import os

from celery import Celery
from celery.backends.redis import RedisBackend

PUBLISH_RETRY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2,
                 "interval_max": 0.5}


class SendOnlyRedisBackend(RedisBackend):
    """The stock Redis result backend without the per-task subscription of send_task."""

    def on_task_call(self, producer, task_id):
        pass


SEND_ONLY = f"{__name__}:SendOnlyRedisBackend"


def make_celery(broker=None, backend=None):
    """A Celery client app; broker/backend default to the environment."""
    broker = broker or os.environ.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0"
    backend = backend or os.environ.get("CELERY_RESULT_BACKEND") or broker
    app = Celery("celeriac_client", broker=broker, backend=backend, set_as_current=False)
    # redis://, rediss:// and redis+socket:// results go through SendOnlyRedisBackend
    app.loader.override_backends = {"redis": SEND_ONLY, "rediss": SEND_ONLY}
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_accept_content=["json"],
        result_serializer="json",
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options={"socket_timeout": 5, "socket_connect_timeout": 3,
                                  "max_retries": 3},
        redis_socket_timeout=5, redis_socket_connect_timeout=3,
        result_backend_transport_options={"retry_policy": {"max_retries": 2}},
        task_publish_retry=True, task_publish_retry_policy=PUBLISH_RETRY,
    )
    return app


def send(app, name, kwargs, queue="celery", args=None, task_id=None, **route):
    """Enqueues task `name` with keyword arguments (as task_id when given); returns the task
    id (the future id). queue is a name or a kombu.Queue; route may add exchange and
    routing_key (a node's direct queue, placement.py)."""
    result = app.send_task(name, args=args or [], kwargs=kwargs, queue=queue, retry=True,
                           retry_policy=PUBLISH_RETRY, task_id=task_id, **route)
    return result.id


def task_meta(app, task_id):
    """The stored state of task_id in one read: {"status", "result", ...}, never waiting.
    (AsyncResult.state then .info would be two reads that may straddle a state change.)"""
    return app.backend.get_task_meta(task_id)
