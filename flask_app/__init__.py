"""flask_app -- celeriac's HTTP front end: create_app() for Gunicorn.

`gunicorn -c gunicorn.conf.py 'flask_app:create_app()'`. The app authenticates users by API
key, validates requests against schemas made from the worker's task table (read once here,
from `celeriac --describe-tasks`), sends them to the celeriac worker with celery.send_task and
hands back futures that /retrieve_future reads (at once, or when the task is done with its
optional wait: waiting.py); no other route waits for a task. It imports neither
the model nor any task code. Configuration comes from the environment (see config.py and
README.md); create_app(config) overrides keys for tests. A setting or a task table the app
cannot use raises at start-up (ValueError, tasks.TaskTableError), never at the first request.
"""

import logging

from flask import Flask

from . import backpressure
from . import config as config_mod
from . import errors, metrics, ratelimit, routes, store, tasks, validation, waiting
from .celery_client import make_celery


def create_app(config=None):
    """The Flask app. `config` (a dict) overrides what config.from_env() reads."""
    app = Flask(__name__, static_folder=None)
    settings = config_mod.from_env()
    if config:
        settings.update(config)
    for name in ("CELERIAC_API_KEYS", "CELERIAC_ADMIN_KEYS"):
        if isinstance(settings.get(name), str):
            settings[name] = config_mod.parse_api_keys(settings[name])
    settings.setdefault("CELERIAC_ADMIN_KEYS", {})
    # an admin key is an API key too (its user may also train)
    settings["CELERIAC_API_KEYS"] = {**settings["CELERIAC_API_KEYS"],
                                     **settings["CELERIAC_ADMIN_KEYS"]}
    if isinstance(settings.get("CELERIAC_TASK_ROUTES"), str):
        settings["CELERIAC_TASK_ROUTES"] = config_mod.parse_task_routes(
            settings["CELERIAC_TASK_ROUTES"])
    if not isinstance(settings.get("CELERIAC_MAX_QUEUE_DEPTH"), dict):
        settings["CELERIAC_MAX_QUEUE_DEPTH"] = backpressure.parse_bounds(
            settings.get("CELERIAC_MAX_QUEUE_DEPTH"))
    app.config.update(settings)
    app.json.sort_keys = False
    app.extensions["celeriac"] = {
        "celery": make_celery(app.config["CELERY_BROKER_URL"],
                              app.config["CELERY_RESULT_BACKEND"]),
        "redis": store.connect(app.config["CELERIAC_REDIS_URL"]),
        "waiters": waiting.slots(app.config["CELERIAC_MAX_WAITERS"]),
    }
    if not app.config["CELERIAC_API_KEYS"]:
        logging.getLogger("flask_app").warning(
            "CELERIAC_API_KEYS is empty: every authenticated route will answer 401")
    validation.init_app(app, tasks.load(app.config))
    errors.register(app)
    metrics.init_app(app)
    routes.register(app)
    ratelimit.init_app(app, app.extensions["celeriac"]["redis"])
    return app
