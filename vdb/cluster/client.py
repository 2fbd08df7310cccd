"""A small keep-alive HTTP/1.1 client over asyncio streams, for router -> node calls.

The router's cost per query is mostly its calls to nodes; a general-purpose
async client spent several times more CPU per call than the node took to
search (measured on this box: 27-104 vs 345-480 calls/s on one connection).
This one does only what the node API needs: one request at a time per
connection, ``Content-Length`` or chunked bodies, a pool of idle connections
per node, a deadline per call. A reused connection the node closed meanwhile
is retried once on a new one (the router's node calls are idempotent reads,
and the writes it sends, ``/cluster/v1/applied``, are reads too).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict, deque
from typing import Any
from urllib.parse import urlencode, urlsplit


class ClientError(Exception):
    """The call did not complete (connection refused or lost, timeout, bad answer)."""


class NodeClient:
    """``await client.request(base_url, method, path, params, body, timeout) -> (status, body)``."""

    def __init__(self, max_idle_per_node: int = 64) -> None:
        self.max_idle = max_idle_per_node
        self._idle: dict[tuple[str, str, int], deque] = defaultdict(deque)
        self._ssl: ssl.SSLContext | None = None
        self._targets: dict[str, tuple[tuple[str, str, int], bytes]] = {}

    def _target(self, base_url: str) -> tuple[tuple[str, str, int], bytes]:
        """``(scheme, host, port)`` and the ``Host`` header of ``base_url`` (parsed once)."""
        found = self._targets.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            scheme = parts.scheme or "http"
            host = parts.hostname or "127.0.0.1"
            port = parts.port or (443 if scheme == "https" else 80)
            found = ((scheme, host, port), f"Host: {host}:{port}\r\n".encode("latin-1"))
            if len(self._targets) > 4096:
                self._targets.clear()
            self._targets[base_url] = found
        return found

    async def request(
        self,
        base_url: str,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        timeout: float = 5.0,
        query: str | None = None,
    ) -> tuple[int, bytes]:
        """``query``: an encoded query string, used instead of ``params`` when given."""
        key, host = self._target(base_url)
        if query is None and params:
            query = urlencode(params)
        target = path + ("?" + query if query else "")
        head = f"{method} {target} HTTP/1.1\r\n".encode("latin-1") + host
        if body is not None:
            head += b"Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        payload = head + b"\r\n" + (body or b"")
        try:
            # asyncio.timeout, unlike wait_for, runs the exchange in this task (no task per call)
            async with asyncio.timeout(timeout):
                return await self._exchange(key, payload)
        except TimeoutError:
            raise ClientError(f"no answer from {base_url} within {timeout:.3f}s") from None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise ClientError(f"{base_url}: {type(exc).__name__}: {exc}") from None

    async def _exchange(self, key: tuple[str, str, int], payload: bytes) -> tuple[int, bytes]:
        idle = self._idle[key]
        while idle:
            reader, writer = idle.pop()
            if writer.is_closing() or reader.at_eof():
                writer.close()
                continue
            try:
                return await self._once(key, reader, writer, payload)
            except (OSError, asyncio.IncompleteReadError):
                writer.close()  # closed by the node while idle: a new connection below
        reader, writer = await self._connect(key)
        return await self._once(key, reader, writer, payload)

    async def _connect(self, key: tuple[str, str, int]) -> tuple[asyncio.StreamReader, Any]:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        return await asyncio.open_connection(host, port, ssl=context)

    async def _once(
        self, key: tuple[str, str, int], reader: asyncio.StreamReader, writer: Any, payload: bytes
    ) -> tuple[int, bytes]:
        ok = False
        try:
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head[:-4].split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            length = None
            chunked = close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            if chunked:
                data = await _read_chunked(reader)
            elif length is not None:
                data = await reader.readexactly(length)
            else:
                data = await reader.read()
                close = True
            ok = not close
            return status, data
        finally:
            idle = self._idle[key]
            if ok and len(idle) < self.max_idle:
                idle.append((reader, writer))
            else:
                writer.close()

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                _, writer = idle.pop()
                writer.close()
        self._idle.clear()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
