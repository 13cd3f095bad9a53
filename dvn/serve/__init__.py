"""Serving a run over HTTP: one copy of the weights for every task and level, requests batched
per (task, level), each at the highest level its deadline allows (``dvn serve``).

* ``Service(run)``: the run loaded once, the profile, the batcher (``scheduler``) and metrics.
* ``create_app(service)``: the FastAPI app (``app``); ``command``: the CLI; ``replicas``: Ray
  Serve with N replicas.

fastapi, uvicorn and ray are optional (``pip install -e .[serve]``) and imported only when a
server is built, so ``import dvn`` and ``import dvn.serve`` work without them.
"""

from .policy import LatencyModel, slack_fit
from .service import Service

__all__ = ["LatencyModel", "Service", "create_app", "slack_fit"]


def create_app(service, **kwargs):
    """The FastAPI app serving ``service`` (see ``dvn.serve.app``)."""
    from .app import create_app as make
    return make(service, **kwargs)
