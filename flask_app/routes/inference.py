"""inference.py -- POST /api/v1/sample and POST /score as futures.

adapter_id null (or absent) means the base model, which every user may use; a given adapter
must be the caller's (404 otherwise).
"""

from flask import Blueprint, current_app, g

from .. import validation as v
from ..auth import require_user
from ..ownership import require_adapter
from .common import submit

bp = Blueprint("inference", __name__)


@bp.post("/api/v1/sample")
@require_user()
def sample():
    kwargs = v.validate_sample(v.json_body(), current_app.config)
    if kwargs["adapter_id"] is not None:
        require_adapter(kwargs["adapter_id"], g.user)
    return submit("lora.sample", kwargs)


@bp.post("/score")
@require_user()
def score():
    kwargs = v.validate_score(v.json_body(), current_app.config)
    if kwargs["adapter_id"] is not None:
        require_adapter(kwargs["adapter_id"], g.user)
    return submit("model.score", kwargs)
