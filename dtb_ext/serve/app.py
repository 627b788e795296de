"""The ASGI application: GET /health, POST /answer, GET /metrics.

POST /answer checks the request on the event loop (JSON, keys, budget; the question and context are tokenised
into windows there, which is also what tells a too-long question), admits it through the Batcher (503 past
capacity) and awaits the model thread's answer. Every error is JSON `{"error": message, "field": name or null}`.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dtb_ext.answering.answerer import QuestionAnswerer
from dtb_ext.answering.budget import InputError
from dtb_ext.serve.batcher import Batcher, Overloaded
from dtb_ext.serve.metrics import CONTENT_TYPE, ServerMetrics
from dtb_ext.serve.requests import RequestError, parse_answer_request, read_body
from dtb_ext.serve.settings import SETTINGS_ENVIRONMENT_VARIABLE, ServeSettings

logger = logging.getLogger(__name__)
ROUTES = ("/health", "/answer", "/metrics")


class _Server:
    """What the routes share: the answerer (loaded at startup unless given), the batcher, the metrics."""

    def __init__(self, settings: ServeSettings, answerer: QuestionAnswerer | None) -> None:
        self.settings = settings
        self.answerer = answerer
        self.batcher: Batcher | None = None
        self.metrics = ServerMetrics(
            queue_depth=lambda: 0 if self.batcher is None else self.batcher.queue_depth,
            in_flight=lambda: 0 if self.batcher is None else self.batcher.in_flight,
            backlog_ms=lambda: 0.0 if self.batcher is None else self.batcher.backlog_ms,
            ms_per_gmac=lambda: (self.answerer.latency_model.ms_per_gmac or 0.0) if self.answerer else 0.0,
        )

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        """Load and calibrate the model before the port opens; on shutdown answer every admitted request."""
        settings = self.settings
        # Bad questions get a 422 naming the field; the featuriser's warning about each would only repeat it.
        logging.getLogger("dtb_ext.qa.data").setLevel(logging.ERROR)
        if self.answerer is None:
            self.answerer = answerer_for(settings)
        if not self.answerer.latency_model.calibrated:
            self.answerer.calibrate()
        self.batcher = Batcher(self.answerer, settings.max_batch_size, settings.max_wait_ms, settings.slo_ms,
                               settings.max_queue, self.metrics)
        self.batcher.start()
        try:
            yield
        finally:
            self.batcher.stop()

    def respond(
        self, path: str, status: int, content: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        self.metrics.requests.inc(path=path if path in ROUTES else "other", code=str(status))
        return JSONResponse(content, status_code=status, headers=headers)

    def error(self, path: str, status: int, field: str | None, message: str,
              headers: dict[str, str] | None = None) -> Response:
        return self.respond(path, status, {"error": message, "field": field}, headers)

    async def health(self, request: Request) -> Response:
        answerer = self.answerer
        return self.respond("/health", 200, {
            "status": "ok",
            "model": os.path.abspath(answerer.model_dir),
            "precision": answerer.precision,
            "front": answerer.front is not None,
            "patched": answerer.patched,
            "slo_ms": self.settings.slo_ms,
        })

    async def metrics_text(self, request: Request) -> Response:
        self.metrics.requests.inc(path="/metrics", code="200")
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    async def answer(self, request: Request) -> Response:
        arrived = time.perf_counter()
        settings = self.settings
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"), settings.max_body_bytes)
            parsed = parse_answer_request(body, settings.max_context_chars)
            prepared = self.answerer.prepare(parsed.question, parsed.context)
            ladder = self.answerer.configs_for(parsed.budget, prepared)
        except RequestError as error:
            return self.error("/answer", error.status, error.field, error.message)
        except InputError as error:
            return self.error("/answer", 422, error.field, error.message)
        budget = parsed.budget.name
        try:
            admitted = self.batcher.submit(prepared, ladder)
        except Overloaded as error:
            self.metrics.shed.inc(budget=budget)
            return self.error("/answer", 503, None, str(error), {"Retry-After": str(error.retry_after_s)})
        try:
            result = await admitted.future
        except Exception:
            logger.exception("answering a request failed")
            return self.error("/answer", 500, None, "the model failed on this request")
        seconds = time.perf_counter() - arrived
        self.metrics.latency.observe(seconds, budget=budget)
        if admitted.degraded:
            self.metrics.degraded.inc(budget=budget)
        return self.respond("/answer", 200, {**result.to_json(), "ms": round(1e3 * seconds, 3),
                                             "degraded": admitted.degraded})

    async def internal_error(self, request: Request, error: Exception) -> Response:
        logger.error("unhandled error on %s", request.url.path, exc_info=error)
        return self.error(request.url.path, 500, None, "internal server error")

    async def http_error(self, request: Request, error: HTTPException) -> Response:
        """Starlette's own errors (unknown path, wrong method) as JSON too."""
        headers = dict(error.headers) if error.headers else None
        return self.error(request.url.path, error.status_code, None, str(error.detail), headers)


def answerer_for(settings: ServeSettings) -> QuestionAnswerer:
    """The QuestionAnswerer `settings` describe (loads the model)."""
    return QuestionAnswerer(settings.model_dir, settings.precision, settings.front,
                            batch_size=settings.max_batch_size, patched=not settings.unpatched,
                            runtime=settings.runtime)


def create_app(settings: ServeSettings | None = None, answerer: QuestionAnswerer | None = None) -> Starlette:
    """The server application. `answerer`: an already loaded QuestionAnswerer (else loaded from `settings` when the
    application starts)."""
    server = _Server(settings or ServeSettings(), answerer)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/answer", server.answer, methods=["POST"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
    ]
    handlers = {HTTPException: server.http_error, Exception: server.internal_error}
    app = Starlette(routes=routes, lifespan=server.lifespan, exception_handlers=handlers)
    app.state.server = server
    return app


def app_from_environment() -> Starlette:
    """The application factory each uvicorn worker process calls (`dtb serve --workers N`): settings from the
    DTB_SERVE_SETTINGS environment variable."""
    text = os.environ.get(SETTINGS_ENVIRONMENT_VARIABLE)
    if text is None:
        raise ValueError(f"{SETTINGS_ENVIRONMENT_VARIABLE} is not set: start the workers with `dtb serve --workers N`")
    return create_app(ServeSettings.from_json(text))
