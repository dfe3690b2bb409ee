"""inference.py -- POST /api/v1/sample and POST /score as futures.

adapter_id null (or absent) means the base model, which every user may use; a given adapter
must be the caller's (404 otherwise).
"""

from flask import Blueprint

from .. import validation as v
from ..auth import require_user
from .common import submit

bp = Blueprint("inference", __name__)


@bp.post("/api/v1/sample")
@require_user()
def sample():
    return submit("lora.sample", v.task_kwargs("lora.sample"))


@bp.post("/score")
@require_user()
def score():
    return submit("model.score", v.task_kwargs("model.score"))
