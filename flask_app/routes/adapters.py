"""adapters.py -- GET /adapters, GET /adapters/<id>, DELETE /adapters/<id>.

GET /adapters sends lora.list(owner=user) and answers 202 {"future_id", "adapter_ids"}: the
future holds the worker's full list; adapter_ids is the front end's own record, available at
once. GET /adapters/<id> is lora.info, DELETE is lora.delete (the adapter stops being the
caller's at once, so later requests for it get 404). Someone else's adapter is a 404.
"""

from flask import Blueprint, g

from .. import placement
from .. import validation as v
from ..auth import require_user
from ..ownership import adapters_of, drop_owner
from .common import submit

bp = Blueprint("adapters", __name__)


@bp.get("/adapters")
@require_user()
def list_adapters():
    return submit("lora.list", {"owner": g.user}, extra={"adapter_ids": adapters_of(g.user)})


@bp.get("/adapters/<path:adapter_id>")
@require_user()
def adapter_info(adapter_id):
    return submit("lora.info", v.url_kwargs("lora.info", adapter_id))


@bp.delete("/adapters/<path:adapter_id>")
@require_user()
def delete_adapter(adapter_id):
    resp = submit("lora.delete", v.url_kwargs("lora.delete", adapter_id))
    drop_owner(adapter_id, g.user)
    placement.forget(adapter_id)
    return resp
