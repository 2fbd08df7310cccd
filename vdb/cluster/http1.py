"""A small HTTP/1.1 server for the router's ASGI app: what uvicorn does, minus h11.

Profiled under load, uvicorn's pure-Python HTTP layer (h11 and its cycle
objects) was a third of the router's CPU per query. This server does only
what the router's clients need, on one ``asyncio.Protocol`` per connection:
requests one at a time per connection (pipelined ones wait their turn),
``Content-Length`` bodies (a chunked request body is a 411), ``Expect:
100-continue``, keep-alive (HTTP/1.1 default, ``Connection: close``,
HTTP/1.0), HEAD answered without a body, responses with ``Content-Length``
or chunked when the app streams. Limits: header block 64 KiB (431), body
``max_body`` (413); a malformed request line or header is a 400 and the
connection closes. ``http.disconnect`` is delivered when the client goes.

It speaks ASGI 3 to the app (``scope`` as uvicorn builds it, no lifespan:
``serve`` opens and closes the router itself) and stops on SIGTERM / SIGINT
after the requests in flight finish (at most ``grace_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
_REASONS = {s.value: s.phrase.encode("latin-1") for s in HTTPStatus}


def _status_line(status: int) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))


def _plain(status: int, text: str) -> bytes:
    body = ('{"status":{"error":"' + text + '"},"time":0.0}').encode()
    return (
        _status_line(status)
        + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % len(body)
        + body
    )


class _Connection(asyncio.Protocol):
    def __init__(self, app: Any, max_body: int, server: tuple[str, int], live: set) -> None:
        self.app = app
        self.max_body = max_body
        self.server = server
        self.live = live
        self.transport: Any = None
        self.client: tuple[str, int] | None = None
        self.buffer = bytearray()
        self.task: asyncio.Task | None = None
        self.continued = False
        self.gone = asyncio.Event()

    # -- protocol ------------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.client = (str(peer[0]), int(peer[1])) if peer else None
        self.live.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone.set()
        self.live.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.task is None:
            self._next()

    def _refuse(self, status: int, text: str) -> None:
        self.transport.write(_plain(status, text))
        self.transport.close()
        self.buffer.clear()

    def _next(self) -> None:
        """Start the next complete request in the buffer, if there is one."""
        if self.transport.is_closing():
            return
        buffer = self.buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                self._refuse(431, "Request header fields too large")
            return
        lines = bytes(buffer[:end]).split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._refuse(400, "Bad request: malformed request line")
            return
        method, target, version = parts
        headers = []
        length = 0
        keep_alive = version == b"HTTP/1.1"
        expect = False
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                self._refuse(400, "Bad request: malformed header")
                return
            name = name.lower()
            value = value.strip()
            headers.append((name, value))
            if name == b"content-length":
                if not value.isdigit():
                    self._refuse(400, "Bad request: bad content-length")
                    return
                length = int(value)
            elif name == b"transfer-encoding":
                self._refuse(411, "Length required: send the body with a content-length")
                return
            elif name == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            elif name == b"expect" and value.lower() == b"100-continue":
                expect = True
        if length > self.max_body:
            self._refuse(413, f"Payload too large: the body is above {self.max_body} bytes")
            return
        start = end + 4
        if len(buffer) < start + length:
            if expect and not self.continued:
                self.continued = True
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        body = bytes(buffer[start : start + length])
        del buffer[: start + length]
        self.continued = False
        self.task = asyncio.get_running_loop().create_task(
            self._run(method, target, version, headers, body, keep_alive)
        )

    # -- one request ---------------------------------------------------------------------

    async def _run(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
    ) -> None:
        raw_path, _, query = target.partition(b"?")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": version[5:].decode("latin-1"),
            "method": method.decode("latin-1"),
            "scheme": "http",
            "path": unquote(raw_path.decode("latin-1")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": self.client,
            "server": self.server,
        }
        head_only = method == b"HEAD"
        transport = self.transport
        state: dict[str, Any] = {
            "received": False, "head": None, "chunked": False, "done": False, "wrote": False
        }

        async def receive() -> dict[str, Any]:
            if not state["received"]:
                state["received"] = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                out = [_status_line(int(message["status"]))]
                sized = False
                for name, value in message.get("headers") or ():
                    lowered = name.lower()
                    if lowered == b"content-length":
                        sized = True
                    elif lowered == b"connection" and b"close" in value.lower():
                        state["close"] = True
                    out.append(name + b": " + value + b"\r\n")
                state["head"] = out
                state["sized"] = sized
                return
            if kind != "http.response.body" or state["done"] or transport.is_closing():
                return
            chunk = message.get("body", b"")
            more = bool(message.get("more_body", False))
            out = state["head"]
            data = b""
            if out is not None:  # the first body message: the head goes with it, in one write
                state["head"] = None
                if not state["sized"]:
                    if more:
                        state["chunked"] = True
                        out.append(b"transfer-encoding: chunked\r\n")
                    else:
                        out.append(b"content-length: %d\r\n" % len(chunk))
                if not keep_alive or state.get("close"):
                    out.append(b"connection: close\r\n")
                out.append(b"\r\n")
                data = b"".join(out)
                state["wrote"] = True
            if not head_only:
                if state["chunked"]:
                    if chunk:
                        data += b"%x\r\n%s\r\n" % (len(chunk), chunk)
                    if not more:
                        data += b"0\r\n\r\n"
                else:
                    data += chunk
            if data:
                transport.write(data)
            if not more:
                state["done"] = True

        try:
            await self.app(scope, receive, send)
        except Exception:
            log.exception("%s %s failed", scope["method"], scope["path"])
        finally:
            self.task = None
        if not state["done"]:  # the app failed or gave no answer
            if state["head"] is not None or not state["wrote"]:
                if not transport.is_closing():
                    transport.write(_plain(500, "Internal server error"))
            transport.close()
            return
        if not keep_alive or state.get("close"):
            transport.close()
        elif self.buffer:
            self._next()


async def serve_app(
    app: Any,
    host: str,
    port: int,
    *,
    max_body: int = 32 * 1024 * 1024,
    grace_s: float = 10.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve ``app`` on ``host:port`` until ``stop`` is set (default: SIGTERM or SIGINT)."""
    loop = asyncio.get_running_loop()
    live: set[_Connection] = set()
    server = await loop.create_server(
        lambda: _Connection(app, max_body, (host, port), live), host, port, backlog=1024
    )
    if stop is None:
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    log.info("router listening on http://%s:%d", host, port)
    try:
        await stop.wait()
    finally:
        server.close()
        deadline = loop.time() + grace_s
        while any(c.task is not None for c in live) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        for c in list(live):
            if c.transport is not None:
                c.transport.close()
        await server.wait_closed()
