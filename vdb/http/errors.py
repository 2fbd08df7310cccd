"""Errors to HTTP answers, in one place.

``error_response(exc)`` is the only mapping of exceptions to status codes:
every ``vdb.errors`` type carries its ``status_code`` (the HTTP-only ones
below too); Starlette's HTTP errors (unknown route 404, wrong method 405)
keep theirs; a client that hung up gets 499; anything else is a 500. The
body is always Qdrant's JSON error shape ``{"status": {"error": msg},
"time": t}``. The app's exception handlers and the middlewares (auth,
limits) both answer through it.
"""

from __future__ import annotations

import math

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from vdb.errors import VdbError
from vdb.http.codec import EncodedResponse, error_body

CLIENT_CLOSED = 499  # nginx's code: the client went away before the answer

_PREFIX = {400: "Wrong input: ", 404: "Not found: "}
_KNOWN_PREFIXES = (
    "Wrong input",
    "Not found",
    "Bad request",
    "Format error",
    "Validation error",
    "Service internal error",
    "Payload too large",
    "Too many requests",
    "Deserialize error",
    "Unauthorized",
    "Forbidden",
)


class Unauthorized(VdbError):
    """No API key, or one that matches neither configured key."""

    status_code = 401


class PayloadTooLarge(VdbError):
    """The request body is larger than the configured limit."""

    status_code = 413


class RateLimited(VdbError):
    """Too many requests for this key; retry after ``retry_after`` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def status_of(exc: BaseException) -> int:
    """The HTTP status for an exception."""
    if isinstance(exc, ClientDisconnect):
        return CLIENT_CLOSED
    if isinstance(exc, VdbError):
        return int(exc.status_code)
    if isinstance(exc, HTTPException):
        return int(exc.status_code)
    return 500


def message_of(exc: BaseException, status: int) -> str:
    if isinstance(exc, HTTPException):
        return f"{exc.detail}"
    if status >= 500 and not isinstance(exc, VdbError):
        return f"Service internal error: {type(exc).__name__}"
    text = str(exc) or type(exc).__name__
    if not text.startswith(_KNOWN_PREFIXES) and status in _PREFIX:
        text = _PREFIX[status] + text
    return text


def error_response(exc: BaseException, started: float | None = None) -> Response:
    """The answer for ``exc``: status code, Qdrant error body, and the headers it needs."""
    status = status_of(exc)
    if status == CLIENT_CLOSED:
        return Response(status_code=status)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    elif isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, PayloadTooLarge):
        headers["Connection"] = "close"
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)
    return EncodedResponse(
        error_body(message_of(exc, status), started), status_code=status, headers=headers or None
    )
