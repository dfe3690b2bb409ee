"""training.py -- POST /add_lora, /fwdbwd, /optim_step: LoRA training as futures.

Each validates its body against the task's schema (validation.py), checks that the caller owns
the adapter (404 otherwise) and sends one task (lora.create / lora.forward_backward /
lora.optim_step); the answer is 202 {"future_id"}. The worker runs one adapter's jobs in
arrival order, so a client may send fwdbwd and then optim_step without waiting in between, as
in the seed.
"""

from flask import Blueprint, g

from .. import validation as v
from ..auth import require_user
from .common import submit

bp = Blueprint("training", __name__)


@bp.post("/add_lora")
@require_user()
def add_lora():
    kwargs = v.task_kwargs("lora.create", owner=g.user)
    return submit("lora.create", kwargs, pending_create=True)


@bp.post("/fwdbwd")
@require_user()
def fwdbwd():
    return submit("lora.forward_backward", v.task_kwargs("lora.forward_backward"))


@bp.post("/optim_step")
@require_user()
def optim_step():
    return submit("lora.optim_step", v.task_kwargs("lora.optim_step"))
