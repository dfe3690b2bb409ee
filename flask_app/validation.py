"""validation.py -- request bodies checked against schemas made from the worker's task table.

init_app() builds, for every task a route sends, a JSON Schema of the request body from the
task's parameters in the task table (tasks.py, schemas.py): names, types, bounds, lengths,
choices, known dict keys, all as the worker itself binds and checks them. What the front end
adds is only HTTP's own, declared in HTTP_TASKS below:

  - parameters the server fills in (lora.create's owner), which clients may not send;
  - CELERIAC_MAX_* settings, which can only lower a limit of the table (min of the two):
    per parameter (rank, data, prompts, sampling_params.max_tokens), plus two general ones,
    CELERIAC_MAX_TEXT_CHARS for every string and CELERIAC_MAX_TOKENS for every list of numbers;
  - the seed's spellings: model_id for the task's adapter parameter (the table's
    adapter_param), request_id for future_id, and base_model, accepted and ignored;
  - the form of ids the front end records (ownership.ID_RX), and future ids.

task_kwargs() returns exactly the kwargs to send, or raises a 400 ApiError whose message names
the field and what was wrong ("data[2].tokens[5]: must be >= 0, got -1"). Unknown fields are
refused so typos do not pass silently. Rules the table cannot state (tokens and target_tokens
of equal length, a chat with an assistant turn) and limits only the running worker knows (the
vocabulary, --max-input-tokens) are the worker's: its ValueError/TypeError comes back as a 400
through the future. A name in HTTP_TASKS missing from the table stops the app at start-up.
"""

import json

from flask import current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from . import schemas
from .errors import bad_request
from .ownership import FUTURE_RX, ID_RX


class HttpTask:
    """How the front end sends one task. body: its kwargs come from a JSON body (else from
    the URL or the server); server: parameters the server sets; caps: parameter path ->
    config key of a tighter limit; ignored: HTTP-only body fields accepted and dropped."""

    def __init__(self, body=True, server=(), caps=None, ignored=None):
        self.body = body
        self.server = tuple(server)
        self.caps = dict(caps or {})
        self.ignored = dict(ignored or {})


HTTP_TASKS = {
    "lora.create": HttpTask(server=("owner",), caps={"rank": "CELERIAC_MAX_RANK"},
                            ignored={"base_model": {"type": ["string", "null"],
                                                    "maxLength": 256}}),
    "lora.forward_backward": HttpTask(caps={"data": "CELERIAC_MAX_EXAMPLES"}),
    "lora.optim_step": HttpTask(),
    "lora.sample": HttpTask(caps={"prompts": "CELERIAC_MAX_PROMPTS",
                                  "sampling_params.max_tokens": "CELERIAC_MAX_SAMPLE_TOKENS"}),
    "model.score": HttpTask(),
    "lora.info": HttpTask(body=False),
    "lora.delete": HttpTask(body=False),
    "lora.list": HttpTask(body=False, server=("owner",)),
}
TEXT_CAP = "CELERIAC_MAX_TEXT_CHARS"      # every string
NUMBER_LIST_CAP = "CELERIAC_MAX_TOKENS"   # every list of numbers (token ids, weights)
ADAPTER_ALIAS = "model_id"
ADAPTER_INVALID = "not a valid adapter id (letters, digits, '_.:-', at most 128 characters)"
# diag.* tasks are reachable with CELERIAC_ENABLE_DIAG=1, all but these; sleeps are capped.
DIAG_HIDDEN = ("diag.crash",)
DIAG_MAX_SLEEP = 60

FUTURE_MAX_WAIT = 30  # seconds /retrieve_future may hold a request (waiting.py)
FUTURE_SCHEMA = {
    "type": "object", "required": ["future_id"], "additionalProperties": False,
    "properties": {"future_id": {"type": "string", "pattern": FUTURE_RX.pattern,
                                 "invalid": "not a valid future id",
                                 "description": "the id a task-submitting route answered"},
                   "wait": {"type": "number", "minimum": 0, "maximum": FUTURE_MAX_WAIT,
                            "description": "seconds to wait for the task to finish before "
                                           "answering 202 (default 0: answer at once)"}}}
DIAG_SCHEMA = {
    "type": "object", "additionalProperties": False,
    "properties": {"args": {"type": "array"}, "kwargs": {"type": "object"}}}


class TaskBody:
    """The checker of one task's request body, built from the table."""

    def __init__(self, name, task, http, config):
        self.name = name
        self.task = task
        self.http = http
        self.adapter = task.get("adapter_param")
        params = {p["name"]: p for p in task["params"]}
        for s in http.server:
            if s not in params:
                raise ValueError(f"the task table's {name} has no parameter {s!r} "
                                 f"(the front end sets it)")
        if not http.body:
            if not http.server and self.adapter is None:
                raise ValueError(f"the task table's {name} names no adapter parameter "
                                 f"(the front end takes it from the URL)")
            self.params = {}
            return
        used = set()

        def cap(path, spec):
            limits = []
            if path in http.caps:
                used.add(path)
                limits.append(config[http.caps[path]])
            if spec.get("type") == "str":
                limits.append(config[TEXT_CAP])
            elif spec.get("type") == "list" and spec.get("items", {}).get("type") in (
                    "int", "number"):
                limits.append(config[NUMBER_LIST_CAP])
            return min(limits) if limits else None

        self.params = {n: p for n, p in params.items() if n not in http.server}
        props, required = {}, []
        for n, p in self.params.items():
            s = schemas.to_schema(p, n, cap)
            if n == self.adapter:
                s.update({"pattern": ID_RX.pattern, "invalid": ADAPTER_INVALID})
            props[n] = s
            # A nullable adapter may be left out: null (the base model) is sent.
            if p.get("required") and not (n == self.adapter and p.get("nullable")):
                required.append(n)
        props.update(http.ignored)
        missing = set(http.caps) - used
        if missing:
            raise ValueError(f"the task table's {name} has no parameter "
                             f"{', '.join(sorted(missing))} (capped by "
                             f"{', '.join(http.caps[m] for m in sorted(missing))})")
        self.schema = {"type": "object", "properties": props, "required": required,
                       "additionalProperties": False}
        schemas.Validator.check_schema(self.schema)
        self.validator = schemas.Validator(self.schema)

    def kwargs(self, body, server):
        """The task's kwargs from a parsed body and the server's values; 400 if invalid."""
        if set(server) != set(self.http.server):
            raise RuntimeError(f"{self.name}: the server sets {self.http.server}, not "
                               f"{tuple(server)}")
        if self.adapter is not None:
            _alias(body, self.adapter, ADAPTER_ALIAS)
        check(self.validator, body)
        kw = {n: v for n, v in body.items() if n in self.params}
        if self.adapter in self.params and self.adapter not in kw:
            kw[self.adapter] = None
        kw.update(server)
        return kw


def init_app(app, table):
    """Builds the body checkers of HTTP_TASKS from the task table (a dict name -> TASK);
    raises ValueError when the table lacks something the routes need."""
    missing = [n for n in HTTP_TASKS if n not in table]
    if missing:
        raise ValueError(f"the task table has no {', '.join(missing)} (the HTTP routes send "
                         f"them); is the worker binary current?")
    bodies = {n: TaskBody(n, table[n], http, app.config) for n, http in HTTP_TASKS.items()}
    hidden = [n for n in DIAG_HIDDEN if n not in table]
    if hidden:
        raise ValueError(f"the task table has no {', '.join(hidden)} (DIAG_HIDDEN)")
    app.extensions["celeriac"].update({
        "tasks": table, "bodies": bodies,
        "future": schemas.Validator(FUTURE_SCHEMA), "diag": schemas.Validator(DIAG_SCHEMA)})


def _ext():
    return current_app.extensions["celeriac"]


def check(validator, body):
    """Raises a 400 naming the first problem of body under validator's schema."""
    errors = list(validator.iter_errors(body))
    if errors:
        raise bad_request(schemas.message(schemas.first(errors, validator.schema)))


def _alias(body, name, alias):
    """Moves body[alias] to body[name] (the seed's spelling); both given -> 400."""
    if alias in body:
        if name in body:
            raise bad_request(f"give either {name!r} or {alias!r}, not both")
        body[name] = body.pop(alias)


# --------------------------------------------------------------------------------------------
# Bodies


def read_body():
    """The raw request body, at most MAX_CONTENT_LENGTH bytes, else 413.

    Read here, not by werkzeug: werkzeug 2.2 enforces MAX_CONTENT_LENGTH only against a
    Content-Length header, so a chunked body (Transfer-Encoding: chunked, which Gunicorn
    passes through with wsgi.input_terminated) would be read whole, however large."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None and request.content_length > limit:
        raise RequestEntityTooLarge()
    stream = request.stream
    parts, size = [], 0
    while size <= limit:
        chunk = stream.read(min(1 << 16, limit + 1 - size))
        if not chunk:
            break
        parts.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestEntityTooLarge()
    return b"".join(parts)


def json_body():
    """The request's JSON object; 400 unless the body is a JSON object."""
    raw = read_body()
    if not raw.strip():
        raise bad_request("request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise bad_request("request body is not valid JSON (UTF-8)") from None
    if not isinstance(data, dict):
        raise bad_request(f"request body must be a JSON object, not {schemas.tname(data)}")
    return data


def task_kwargs(task, **server):
    """The kwargs of `task` from the request's JSON body plus the server's values (e.g.
    owner=user); 400 ApiError if the body does not fit the task."""
    return _ext()["bodies"][task].kwargs(json_body(), server)


def adapter_param(task):
    """The name of the parameter of `task` that names an adapter (the table's), or None."""
    return _ext()["bodies"][task].adapter


def url_kwargs(task, adapter_id):
    """{adapter parameter: adapter_id} for a task whose adapter comes from the URL."""
    return {adapter_param(task): check_adapter_id(adapter_id)}


def check_adapter_id(v, where="adapter_id"):
    if not isinstance(v, str):
        raise bad_request(f"{where}: expected a string, got {schemas.tname(v)}")
    if not ID_RX.match(v):
        raise bad_request(f"{where}: {ADAPTER_INVALID}")
    return v


def validate_future(body):
    """(future id, seconds to wait) of a /retrieve_future body (request_id is the seed's
    spelling of future_id)."""
    _alias(body, "future_id", "request_id")
    check(_ext()["future"], body)
    return body["future_id"], float(body.get("wait", 0))


def diag_call(name):
    """(task name, args, kwargs) of POST /diag/<name> from its body; None for a name that
    is no task (the body is not read then)."""
    task = f"diag.{name}"
    if task not in _ext()["tasks"] or task in DIAG_HIDDEN:
        return None
    body = json_body()
    check(_ext()["diag"], body)
    args, kwargs = body.get("args", []), body.get("kwargs", {})
    if task == "diag.sleep":
        params = _ext()["tasks"][task]["params"]
        seconds = args[0] if args else kwargs.get(params[0]["name"] if params else "", 0)
        if isinstance(seconds, (int, float)) and seconds > DIAG_MAX_SLEEP:
            raise bad_request(f"diag.sleep is limited to {DIAG_MAX_SLEEP} s here")
    return task, args, kwargs
