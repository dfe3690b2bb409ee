"""diag.py -- POST /diag/<name> {args?, kwargs?}: the worker's diag.* tasks as futures.

Only registered when CELERIAC_ENABLE_DIAG=1 (tests, smoke checks of a deployment): it lets the
future machinery be exercised (diag.sleep -> 202 then 200, diag.fail -> 400) without the model.
The names are the task table's diag.* tasks but validation.DIAG_HIDDEN; args and kwargs go to
the worker as given (binding them is the worker's job, and what these tasks test).
"""

from flask import Blueprint

from .. import validation as v
from ..auth import require_user
from ..errors import not_found
from .common import submit

bp = Blueprint("diag", __name__)


@bp.post("/diag/<name>")
@require_user()
def diag(name):
    call = v.diag_call(name)
    if call is None:
        raise not_found(f"no diag task {name!r}")
    task, args, kwargs = call
    return submit(task, kwargs, args=args)
