"""``dvn serve RUN``: the run's every task and level behind HTTP on one copy of the weights.

    dvn serve runs/small/fmnist-joint                      # http://127.0.0.1:8000
    dvn serve RUN --port 0 --max-batch 16 --max-queue 256  # port 0: any free port (printed)
    dvn serve RUN --replicas 2                              # Ray Serve, 2 replicas

fastapi and uvicorn (and ray for ``--replicas``) are an optional extra:
``pip install -e .[serve]``.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .net import bind

#: what to install for the server
INSTALL = "pip install -e '.[serve]' (or: pip install fastapi uvicorn ray[serve])"


def add_command(sub, positive) -> None:
    """Adds ``serve`` to the CLI's subparsers (``positive``: its int type)."""
    p = sub.add_parser("serve", help="serve every task and level of a run over HTTP, one copy "
                       "of the weights, each request at the highest level its deadline allows",
                       description="Loads the run's unit file once (every task at every "
                       "level on shared weights) and serves POST /v1/predict, GET /v1/models, "
                       "GET /healthz and GET /metrics. Requests are batched per (task, level); "
                       "a request with deadline_ms and no level runs at the highest level "
                       "whose profiled batch latency fits the slack of the most urgent "
                       "waiting request. The profile is the run's profile.json (dvn profile) "
                       "or measured at start-up. Ctrl-C or SIGTERM answers what is queued "
                       "and exits. --runtime compiled or onnxruntime runs each (task, level) "
                       "alone on that runtime instead (one copy of the weights per level).")
    p.add_argument("run", help="run folder (its unit file deploy.safetensors is written from "
                   "checkpoint.pt on first use), a model saved with dvn.save or a unit file "
                   "(.safetensors)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                   "127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free "
                   "port, printed)")
    p.add_argument("--max-batch", type=positive, default=16, help="largest batch (default 16)")
    p.add_argument("--max-queue", type=positive, default=256,
                   help="requests waiting before 503 (default 256)")
    p.add_argument("--max-body-mb", type=float, default=8.0,
                   help="largest request body, MB (default 8)")
    p.add_argument("--margin-ms", type=float, default=1.0, help="time kept for the answer's "
                   "way back when fitting a level to a deadline (default 1 ms)")
    p.add_argument("--profile", help="profile table (default: profile.json beside the unit "
                   "file when current, else measured at start-up)")
    p.add_argument("--replicas", type=positive, help="serve with Ray Serve, this many replicas "
                   "(each holds one copy of the weights)")
    p.add_argument("--separate-models", action="store_true", help="load every (task, level) "
                   "alone, k x k copies of the weights (the baseline bench.serve compares with)")
    p.add_argument("--runtime", default="torch", choices=("torch", "compiled", "onnxruntime"),
                   help="torch (default: eager PyTorch on one shared copy of the weights), "
                   "compiled (Inductor) or onnxruntime (the [deploy] extra): each "
                   "(task, level) loaded alone on that runtime")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--threads", type=positive, help="torch CPU threads")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")


def _needs(*modules: str) -> None:
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError(f"serve: needs {', '.join(missing)}; install them: {INSTALL}")


def options(a) -> dict:
    """The Service's keyword arguments from the command line."""
    from ..host import resolve_device
    if not a.max_body_mb > 0:
        raise ValueError(f"max-body-mb: must be positive, got {a.max_body_mb}")
    if not a.margin_ms >= 0:
        raise ValueError(f"margin-ms: must be zero or more, got {a.margin_ms}")
    return dict(device=str(resolve_device(a.device)), max_batch=a.max_batch,
                max_queue=a.max_queue, profile=a.profile, margin_ms=a.margin_ms,
                max_body_bytes=int(a.max_body_mb * 1e6), separate=a.separate_models,
                runtime=a.runtime)


def serve(a: argparse.Namespace) -> int:
    """Runs the server until Ctrl-C or SIGTERM."""
    if a.replicas:
        _needs("fastapi", "uvicorn", "ray")
        from .replicas import serve_replicas
        return serve_replicas(a.run, a.host, a.port, a.replicas, options(a),
                              threads=a.threads)
    _needs("fastapi", "uvicorn", *(("onnxruntime", "onnx") if a.runtime == "onnxruntime" else ()))
    import uvicorn

    from .app import create_app
    from .service import Service, log, tune_process
    if not 0 <= a.port < 65536:
        raise ValueError(f"port: expected 0-65535, got {a.port}")
    sock = bind(a.host, a.port)
    service = Service(a.run, say=log, **options(a))
    app = create_app(service)
    host, port = sock.getsockname()[:2]
    held = service.dep.bytes_held() / 1e6
    copies = "one copy of the weights" if not (a.separate_models or a.runtime != "torch") \
        else f"separate copies on {a.runtime}"
    log(f"{service.path}: {len(service.tasks)} tasks x levels {service.levels} on {copies} "
        f"({service.dep.parameters_held():,} parameters, {held:.2f} MB), loaded in "
        f"{service.startup_s:.1f} s")
    where = f"[{host}]" if ":" in host else host
    log(f"listening on http://{where}:{port} (POST /v1/predict, GET /v1/models, /healthz, "
        "/metrics; Ctrl-C to stop)")
    tune_process()
    config = uvicorn.Config(app, log_level="warning", access_log=a.access_log,
                            timeout_graceful_shutdown=30, lifespan="on")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM (the lifespan drains the queue), then
    # raises the signal again under the handlers it found: these make that a clean exit
    stop = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        for sig, handler in stop.items():
            signal.signal(sig, handler)
    log("stopped: the queue was drained")
    return 0
