"""FastAPI pieces every service uses: the contract's error shape for every 4xx, health,
readiness, Prometheus metrics, request context for logs and traces, a body-size limit."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pymongo.errors import ConnectionFailure
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import metrics
from shared.errors import ApiError, error_body
from shared.events.envelope import TRACEPARENT_PATTERN

log = structlog.stdlib.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024

_STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    406: "not_acceptable", 409: "conflict", 410: "gone", 413: "payload_too_large", 415: "unsupported_media_type",
    422: "validation_error", 429: "rate_limited",
}


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.details), status_code=exc.status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg"), "type": err.get("type")}
            for err in exc.errors()[:20]
        ]
        return JSONResponse(error_body("validation_error", "the request is invalid", _json_safe(details)),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return JSONResponse(error_body(code, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(ConnectionFailure)
    async def store_unavailable(_: Request, exc: ConnectionFailure) -> JSONResponse:
        log.warning("store unavailable during a request", error=repr(exc)[:300])
        return JSONResponse(error_body("unavailable", "the service cannot reach its store; retry shortly"),
                            status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in request")
        return JSONResponse(error_body("internal_error", "an unexpected error occurred"), status_code=500)


class RequestContextMiddleware:
    """Binds a trace id (from W3C ``traceparent`` or a new one) for logs and the events a request
    causes; counts requests by route template; refuses bodies over the limit with 413."""

    def __init__(self, app: ASGIApp, service: str, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.service = service
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        traceparent = headers.get("traceparent", "")
        if re.match(TRACEPARENT_PATTERN, traceparent):
            trace_id = traceparent.split("-")[1]
            child = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        else:
            trace_id = secrets.token_hex(16)
            child = f"00-{trace_id}-{secrets.token_hex(8)}-01"
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            response = JSONResponse(
                error_body("payload_too_large", f"the body must be at most {self.max_body_bytes} bytes"),
                status_code=413)
            await response(scope, receive, send)
            return
        status_holder = {"status": 500}
        received = 0
        overflowed = False

        async def limited_receive() -> Message:
            nonlocal received, overflowed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    overflowed = True
                    raise ApiError(413, "payload_too_large",
                                   f"the body must be at most {self.max_body_bytes} bytes")
            return message

        async def send_wrapper(message: Message) -> None:
            if overflowed:
                # A streamed body (no Content-Length) went over the limit while the app read it: the
                # framework reports that as a body parse error (400); the client gets the 413 instead.
                if message["type"] == "http.response.start":
                    status_holder["status"] = 413
                    too_large = JSONResponse(
                        error_body("payload_too_large", f"the body must be at most {self.max_body_bytes} bytes"),
                        status_code=413, headers={"traceparent": child})
                    await too_large(scope, receive, send)
                return
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"].append((b"traceparent", child.encode()))
            await send(message)

        started = time.perf_counter()
        with structlog.contextvars.bound_contextvars(trace_id=trace_id, traceparent=child):
            try:
                await self.app(scope, limited_receive, send_wrapper)
            finally:
                route = scope.get("route")
                template = getattr(route, "path", "unmatched")
                method = scope.get("method", "")
                metrics.HTTP_REQUESTS.labels(self.service, template, method, str(status_holder["status"])).inc()
                metrics.HTTP_LATENCY.labels(self.service, template, method).observe(time.perf_counter() - started)


ReadinessCheck = Callable[[], Awaitable[bool]]


def install_health_routes(app: FastAPI, checks: dict[str, ReadinessCheck]) -> None:
    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Kafka and MongoDB are reachable",
             responses={503: {"description": "a dependency is unreachable"}})
    async def readyz() -> JSONResponse:
        # concurrently: with two dependencies down the probe still answers within one check's bound
        outcomes = await asyncio.gather(*(check() for check in checks.values()))
        results = dict(zip(checks, outcomes, strict=True))
        ready = all(results.values())
        return JSONResponse({"status": "ready" if ready else "not_ready", "checks": results},
                            status_code=200 if ready else 503)

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
