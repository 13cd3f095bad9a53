"""The same app as a Ray Serve deployment with N replicas (``dvn serve RUN --replicas N``).

Each replica is a Ray actor holding its own ``Service`` (one copy of the weights per replica:
every task and level of the run) behind the FastAPI app of ``dvn.serve.app``; Ray Serve's
proxy listens on (host, port) and spreads requests over the replicas. Usable from Python too:

    from dvn.serve.replicas import application
    from ray import serve
    serve.run(application("runs/fmnist-joint", replicas=2), route_prefix="/")

Ray starts with no dashboard and few CPUs (``num_cpus``), for small machines.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

import dvn

#: the folder that holds the dvn package (and dvn_kernels), for Ray's worker processes
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(dvn.__file__)))


def application(run: str, *, replicas: int = 2, options: Optional[dict] = None,
                cpus_per_replica: float = 0.5, threads: Optional[int] = None):
    """A Ray Serve application: ``replicas`` replicas of the app serving ``run``."""
    from ray import serve

    @serve.ingress()
    class DvnReplica:
        def __init__(self, run: str, options: dict, threads: Optional[int]) -> None:
            if threads:
                import torch
                torch.set_num_threads(threads)
            from dvn.serve.service import Service, tune_process
            self.service = Service(run, **options)
            tune_process()  # a replica's process serves, as dvn serve's does

        def __serve_build_asgi_app__(self):
            from dvn.serve.app import create_app
            return create_app(self.service, close_on_shutdown=False)

        def __del__(self) -> None:
            service = getattr(self, "service", None)
            if service is not None:
                service.close(drain=True, timeout=10)

    deployment = serve.deployment(DvnReplica, name="dvn", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus_per_replica},
                                  max_ongoing_requests=(options or {}).get("max_queue", 256))
    return deployment.bind(os.path.abspath(run), dict(options or {}), threads)


def start(run: str, host: str, port: int, replicas: int, options: dict, *,
          threads: Optional[int] = None, num_cpus: Optional[int] = None) -> None:
    """Starts Ray (local, no dashboard) and the application; returns when it is ready."""
    import ray
    from ray import serve
    env = {"PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    # Ray's own processes talk over the loopback only (not the machine's network address).
    ray.init(num_cpus=num_cpus or max(2, replicas), include_dashboard=False,
             runtime_env={"env_vars": env}, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": host, "port": port},
                    logging_config={"log_level": "WARNING"})
    except ray.exceptions.ActorDiedError:
        # On a busy machine Ray Serve's proxy actor can be cancelled before it ever runs;
        # one more try with a fresh controller.
        serve.shutdown()
        serve.start(http_options={"host": host, "port": port},
                    logging_config={"log_level": "WARNING"})
    serve.run(application(run, replicas=replicas, options=options,
                          cpus_per_replica=min(1.0, (num_cpus or max(2, replicas)) / (replicas + 1)),
                          threads=threads), name="dvn", route_prefix="/")


def stop() -> None:
    import ray
    from ray import serve
    serve.shutdown()
    ray.shutdown()


def serve_replicas(run: str, host: str, port: int, replicas: int, options: dict, *,
                   threads: Optional[int] = None) -> int:
    """``dvn serve --replicas N``: runs until Ctrl-C or SIGTERM, then shuts Ray down."""
    from .service import log
    if port == 0:
        from .net import bind
        sock = bind(host, 0)
        port = sock.getsockname()[1]
        sock.close()
    done = threading.Event()
    previous = {s: signal.signal(s, lambda *_: done.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        log(f"starting Ray Serve with {replicas} replicas of {run}")
        start(run, host, port, replicas, options, threads=threads)
        for s in previous:  # ray.init installs its own SIGTERM handler (it aborts): ours again
            signal.signal(s, lambda *_: done.set())
        log(f"listening on http://{host}:{port} ({replicas} replicas; POST /v1/predict, "
            "GET /v1/models, /healthz, /metrics per replica; Ctrl-C to stop)")
        while not done.wait(0.5):
            pass
    finally:
        log("stopping Ray Serve")
        stop()
        for s, h in previous.items():
            signal.signal(s, h)
    log("stopped")
    return 0
