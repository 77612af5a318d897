"""HTTP errors of the embedding API: a status, a stable code and a message naming the problem, as JSON."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """A request the service refuses: ``status`` (4xx, or 503/504), ``code`` (stable, for clients), ``message``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """``{"error": code, "detail": message}`` with ``status``."""
    return JSONResponse({"error": code, "detail": message, **extra}, status_code=status, headers=headers)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid_input", message)


def too_large(message: str) -> ApiError:
    return ApiError(413, "too_large", message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)
