"""diag.py -- POST /diag/<name> {args?, kwargs?}: the worker's diag.* tasks as futures.

Only registered when CELERIAC_ENABLE_DIAG=1 (tests, smoke checks of a deployment): it lets the
future machinery be exercised (diag.sleep -> 202 then 200, diag.fail -> 400) without the model.
"""

from flask import Blueprint

from .. import validation as v
from ..auth import require_user
from ..errors import not_found
from .common import submit

bp = Blueprint("diag", __name__)

DIAG = ("noop", "add", "echo", "sleep", "fail")


@bp.post("/diag/<name>")
@require_user()
def diag(name):
    if name not in DIAG:
        raise not_found(f"no diag task {name!r}")
    body = v.json_body()
    v._only(body, ("args", "kwargs"))
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise v.bad_request("args must be an array and kwargs an object")
    if name == "sleep" and args and v.is_num(args[0]) and args[0] > 60:
        raise v.bad_request("args[0]: diag.sleep is limited to 60 s here")
    return submit(f"diag.{name}", kwargs, args=args)
