"""API keys, accepted as Qdrant does (``api-key`` header) and as ``Authorization: Bearer``.

Two keys: the read-write key may do anything; the read-only key may read
(GET, and the POST routes that only read: retrieve, scroll, count, query,
search) and gets 403 for a write. Without a key: 401. With no key
configured, every request is allowed. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from vdb.errors import ReadOnly
from vdb.http.errors import Unauthorized, error_response

OPEN_PATHS = frozenset(
    {
        "/",
        "/healthz",
        "/livez",
        "/readyz",
        "/dashboard",
        "/dashboard/app.js",
        "/dashboard/style.css",
    }
)
"""Paths answered without a key (Qdrant whitelists the first four; the dashboard page and its
assets hold no data: the page asks for the key and sends it with its JSON requests)."""

_READ_POST = re.compile(
    r"^/collections/[^/]+/(points|points/scroll|points/count|points/query|points/query/batch"
    r"|points/query/groups|points/search|points/search/batch|facet)$"
)

ROLE_WRITE = "write"
ROLE_READ = "read"


def is_write(method: str, path: str) -> bool:
    """Whether a request changes data (the read-only key may not send it)."""
    if method in ("GET", "HEAD", "OPTIONS"):
        return False
    if method == "POST" and _READ_POST.match(path):
        return False
    return True


def presented_key(scope: Scope) -> str | None:
    """The key a request carries: ``api-key`` header, else ``Authorization: Bearer``."""
    api_key = bearer = None
    for name, value in scope.get("headers", ()):
        if name == b"api-key":
            api_key = value.decode("latin-1")
        elif name == b"authorization":
            text = value.decode("latin-1")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer":
                bearer = token.strip()
    return api_key if api_key is not None else bearer


def _matches(given: str, expected: str | None) -> bool:
    if not expected:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


class AuthMiddleware:
    """Checks the key and records the caller's role in ``scope["state"]``."""

    def __init__(self, app: ASGIApp, api_key: str | None, read_only_api_key: str | None):
        self.app = app
        self.api_key = api_key
        self.read_only_api_key = read_only_api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.api_key or self.read_only_api_key):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        key = presented_key(scope)
        if key is None:
            missing = "Unauthorized: must provide an API key or an Authorization bearer token"
            await _deny(scope, receive, send, Unauthorized(missing))
            return
        # evaluate both comparisons so timing does not tell which key was close
        is_rw = _matches(key, self.api_key)
        is_ro = _matches(key, self.read_only_api_key)
        if not (is_rw or is_ro):
            await _deny(
                scope, receive, send, Unauthorized("Unauthorized: invalid API key or bearer token")
            )
            return
        if not is_rw and is_write(scope["method"], path):
            forbidden = "Forbidden: the read-only API key cannot write"
            await _deny(scope, receive, send, ReadOnly(forbidden))
            return
        state = scope.setdefault("state", {})
        state["role"] = ROLE_WRITE if is_rw else ROLE_READ
        state["client_key"] = "key:" + ("rw" if is_rw else "ro")
        await self.app(scope, receive, send)


async def _deny(scope: Scope, receive: Receive, send: Send, exc: Exception) -> None:
    await error_response(exc)(scope, receive, send)
