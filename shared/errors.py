"""The contract's error shape: ``{"error": {"code", "message", "details"}}`` with a fitting 4xx."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ApiError(Exception):
    """A refusal a client can act on. ``code`` is stable; ``message`` is for people."""

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.headers = headers


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """Every 4xx (and the rare 5xx) response body."""

    error: ErrorDetail


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


def not_found(what: str, details: Any = None) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found", details)


def conflict(code: str, message: str, details: Any = None) -> ApiError:
    return ApiError(409, code, message, details)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Bad request", 401: "Missing or invalid bearer token", 403: "Not allowed for this caller",
        404: "Not found", 409: "Conflict", 413: "Request body too large", 422: "Invalid input",
        429: "Too many requests",
    }.items()
}
