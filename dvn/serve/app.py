"""The HTTP API (FastAPI) over a ``Service``:

* ``POST /v1/predict``: one request object or a list (see ``dvn.serve.inputs``); answers one
  object or a list, each ``{"task", "level", "class", "label", "top5", "latency_ms",
  "queued_ms", ...}``.
* ``GET /v1/models``: tasks, labels, levels with parameters, memory and profiled latency.
* ``GET /healthz``; ``GET /metrics`` (Prometheus text).

Errors are JSON ``{"error": {"field", "message"}}``: 400/404/413/422 for bad input, 503 with
``Retry-After`` when the bounded queue is full or the server is shutting down.
"""

import asyncio
import json
import math
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .service import Service

#: seconds a call waits for its answers before a 504 (a bound, never reached in normal use)
ANSWER_TIMEOUT_S = 120.0


def error(status: int, field: str, message: str, headers: "dict | None" = None):
    from fastapi.responses import JSONResponse
    return JSONResponse({"error": {"field": field, "message": message}}, status,
                        headers=headers)


async def read_body(request, limit: int) -> bytes:
    """The request's body, refused (413, naming ``body``) past ``limit`` bytes without reading
    the rest."""
    from .inputs import InputError
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InputError("body", f"payload of {int(declared)} bytes; at most {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InputError("body", f"payload over {limit} bytes", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(service: "Service", *, close_on_shutdown: bool = True) -> "FastAPI":
    """The FastAPI app serving ``service``; on shutdown it drains the queue and closes it."""
    import time

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, PlainTextResponse

    from .inputs import InputError, parse
    from .scheduler import Closing, QueueFull

    @asynccontextmanager
    async def lifespan(app):
        yield
        if close_on_shutdown:
            # the batcher answers what is queued, off the event loop
            await asyncio.get_running_loop().run_in_executor(None, service.close)

    app = FastAPI(title="dvn serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    @app.exception_handler(InputError)
    async def input_error(request: Request, e: InputError):
        service.metrics.error(e.status)
        return JSONResponse(e.body(), e.status)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, e: Exception):
        service.metrics.error(500)
        return JSONResponse({"error": {"field": "server", "message":
                                       f"internal error: {type(e).__name__}: {e}"}}, 500)

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        arrived = time.perf_counter()
        body = await read_body(request, service.max_body_bytes)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError("body", f"invalid JSON ({e})", 400) from None
        except RecursionError:
            raise InputError("body", "JSON nested too deeply", 400) from None
        requests, many = parse(data, service.tasks, service.levels, now=arrived,
                               max_items=service.scheduler.max_queue)
        try:
            service.scheduler.submit(requests)
        except QueueFull as e:
            service.metrics.error(503)
            return error(503, "queue", str(e),
                         {"Retry-After": str(max(1, math.ceil(e.retry_after_s)))})
        except Closing as e:
            service.metrics.error(503)
            return error(503, "server", str(e), {"Retry-After": "5"})
        try:
            answers = await asyncio.wait_for(asyncio.gather(
                *(asyncio.wrap_future(r.future) for r in requests)), ANSWER_TIMEOUT_S)
        except asyncio.TimeoutError:
            service.metrics.error(504)
            return error(504, "server", f"no answer within {ANSWER_TIMEOUT_S:g} s")
        except Closing as e:
            service.metrics.error(503)
            return error(503, "server", str(e), {"Retry-After": "5"})
        except Exception as e:  # a batch that raised: the server keeps running
            service.metrics.error(500)
            return error(500, "server", f"inference failed: {type(e).__name__}: {e}")
        # serialised here: FastAPI's encoder and validation of the returned dicts add work
        # to every answer on the event loop
        return JSONResponse(answers if many else answers[0])

    @app.get("/v1/models")
    async def models() -> Any:
        return service.models()

    @app.get("/healthz")
    async def healthz() -> Any:
        return {"status": "ok", "queue_depth": service.scheduler.depth}

    @app.get("/metrics")
    async def metrics() -> Any:
        return PlainTextResponse(service.metrics.text(),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    return app
