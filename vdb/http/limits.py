"""Request limits: body size (413 before the body is read) and a per-key token bucket (429).

The size limit is checked on ``Content-Length`` before anything is read and
again while the body streams in (chunked uploads), so an oversized body is
refused without being buffered. The rate limit keys on the API key when one
is presented and on the client address otherwise, and answers 429 with
``Retry-After`` (whole seconds, as Qdrant and qdrant-client expect).
"""

from __future__ import annotations

import math
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vdb.errors import InvalidInput
from vdb.http.errors import PayloadTooLarge, RateLimited, error_response


class BodyLimitMiddleware:
    """Refuses bodies larger than ``max_bytes`` with 413, before reading them whole."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                break
        if declared is not None and (declared < 0 or declared > self.max_bytes):
            if declared < 0:
                exc: Exception = InvalidInput("Bad request: invalid Content-Length")
            else:
                exc = PayloadTooLarge(self._message(declared))
            await error_response(exc)(scope, receive, send)
            return

        received = 0
        max_bytes = self.max_bytes

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise PayloadTooLarge(self._message(received))
            return message

        await self.app(scope, limited_receive, send)

    def _message(self, size: int) -> str:
        return (
            f"Payload too large: the request body ({size} bytes or more) exceeds the limit of "
            f"{self.max_bytes} bytes"
        )


class TokenBucket:
    """Classic token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float):
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Take one token; return 0 if allowed, else the seconds until one is available."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimitMiddleware:
    """Per-key (or per-client-address) token bucket; 429 + ``Retry-After`` when empty."""

    MAX_KEYS = 10_000

    def __init__(self, app: ASGIApp, rate: float, burst: int = 0, exempt=frozenset()):
        self.app = app
        self.rate = rate
        self.burst = float(burst or max(1.0, 2.0 * rate))
        self.exempt = exempt
        self.buckets: dict[str, TokenBucket] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.rate <= 0 or scope.get("path") in self.exempt:
            await self.app(scope, receive, send)
            return
        key = scope.get("state", {}).get("client_key")
        if key is None:
            client = scope.get("client")
            key = "addr:" + (client[0] if client else "?")
        now = time.monotonic()
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= self.MAX_KEYS:
                self.buckets.clear()
            bucket = self.buckets[key] = TokenBucket(self.rate, self.burst, now)
        wait = bucket.take(now)
        if wait > 0:
            exc = RateLimited(
                f"Too many requests: rate limit of {self.rate:g}/s exceeded, "
                f"retry after {max(1, math.ceil(wait))} s",
                retry_after=wait,
            )
            await error_response(exc)(scope, receive, send)
            return
        await self.app(scope, receive, send)
