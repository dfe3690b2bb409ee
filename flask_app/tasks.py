"""tasks.py -- the worker's task table, read once at start-up.

The C worker's task table (protocol/) is the single source of every task's parameters: names,
types, defaults, limits, which parameter names an adapter. `celeriac --describe-tasks` prints it
as one JSON document:

    {"format": "celeriac-tasks/1",
     "tasks": [{"name", "params": [SPEC, ...], "varargs", "varkw", "adapter_param",
                "adapter_effect", "batchable", "needs_model", "doc"}, ...]}
    SPEC = {"name"?, "type": any|int|number|str|bool|list|dict|one_of, "required", "default"?,
            "nullable", "min"?, "max"?, "min_exclusive"?, "max_exclusive"?, "min_len"?,
            "max_len"?, "choices"?, "unique"?, "items"?, "fields"?, "extra_fields"?, "one_of"?,
            "also_str"?, "doc"}

load() reads it from the file CELERIAC_TASKS_JSON when that is set, else runs the worker binary
CELERIAC_WORKER_BIN (default: the repository's bin/celeriac) with --describe-tasks. Anything
wrong (no binary, a bad exit, not JSON, another format) raises TaskTableError, so the app
refuses to start instead of serving requests it cannot check. The request schemas
(validation.py) are built from what this returns; no task's field names or limits are kept
by hand on the Python side.
"""

import json
import os
import subprocess

FORMAT = "celeriac-tasks/1"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKER_BIN = os.path.join(REPO, "bin", "celeriac")
DESCRIBE_TIMEOUT = 20


class TaskTableError(RuntimeError):
    """The task table could not be read; the message says from where and why."""


def _from_binary(binary):
    if not os.access(binary, os.X_OK):
        raise TaskTableError(
            f"cannot read the task table: {binary} is not an executable (build it with `make`, "
            f"or set CELERIAC_WORKER_BIN to the celeriac binary, or CELERIAC_TASKS_JSON to the "
            f"output of `celeriac --describe-tasks`)")
    try:
        done = subprocess.run([binary, "--describe-tasks"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=DESCRIBE_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TaskTableError(f"cannot read the task table: `{binary} --describe-tasks`: "
                             f"{e}") from None
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()[-500:]
        raise TaskTableError(f"cannot read the task table: `{binary} --describe-tasks` exited "
                             f"with {done.returncode}: {err}")
    return done.stdout, f"`{binary} --describe-tasks`"


def parse(raw, source="the task table"):
    """{task name: TASK} from the JSON text `raw`; TaskTableError if it is not the format."""
    try:
        doc = json.loads(raw)
    except ValueError as e:
        raise TaskTableError(f"{source} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise TaskTableError(f"{source}: expected format {FORMAT!r}, got {got!r}")
    tasks = doc.get("tasks")
    if not isinstance(tasks, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str)
            and isinstance(t.get("params"), list) for t in tasks):
        raise TaskTableError(f"{source}: 'tasks' must be a list of {{name, params, ...}}")
    return {t["name"]: t for t in tasks}


def load(config):
    """The task table for an app's config (see the module comment)."""
    path = config.get("CELERIAC_TASKS_JSON")
    if path:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise TaskTableError(f"cannot read the task table CELERIAC_TASKS_JSON={path}: "
                                 f"{e.strerror}") from None
        return parse(raw, path)
    raw, source = _from_binary(config.get("CELERIAC_WORKER_BIN") or DEFAULT_WORKER_BIN)
    return parse(raw, source)
