"""Node-internal routes a cluster router calls (``serve --cluster``); not part of Qdrant's API.

``GET /cluster/v1/node``: the heartbeat document this node would send now.
``GET /cluster/v1/applied?collection=C&partition=P&offset=O&timeout_ms=T``: wait
(at most ``T`` ms, default 5,000, at most 60,000) until the record at offset ``O``
of partition ``P`` of the topic feeding ``C`` is durable and searchable here;
answers ``{"reached": bool, "offset": last applied or null, "assigned": bool}``.
The router's ``wait=true`` writes use it for read-your-writes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vdb.errors import CollectionNotFound, InvalidInput
from vdb.http.codec import encode, envelope


def _int(request: Request, name: str, default: int | None = None, high: int = 2**63 - 1) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise InvalidInput(f"Bad request: missing query parameter `{name}`")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"Bad request: `{name}` must be an integer, got {raw[:40]!r}") from None
    if not 0 <= value <= high:
        raise InvalidInput(f"Bad request: `{name}` out of range: {value}")
    return value


class ClusterRoutes:
    """The routes over one ``ClusterNode``."""

    def __init__(self, node: Any) -> None:
        self.node = node

    async def node_document(self, request: Request) -> Response:
        started = time.perf_counter()
        doc = await asyncio.to_thread(self.node.document)
        content, media_type = encode(envelope(doc, started), msgpack_out=False)
        return Response(content, media_type=media_type)

    async def applied(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.query_params.get("collection") or ""
        partition = _int(request, "partition", high=2**31 - 1)
        offset = _int(request, "offset")
        timeout_ms = _int(request, "timeout_ms", 5000, high=60_000)
        handle = self.node.handle_for(name)
        if handle is None:
            raise CollectionNotFound(
                f"Not found: Collection `{name}` is not fed by a cluster topic"
            )
        tp = (handle.source.topics[0], partition)
        deadline = time.monotonic() + timeout_ms / 1000.0
        delay = 0.001
        while True:
            applied = handle.applied_offsets().get(tp)
            reached = applied is not None and applied >= offset
            if reached or time.monotonic() >= deadline:
                break
            await asyncio.sleep(delay)
            delay = min(0.01, delay * 2)
        result: dict[str, Any] = {
            "reached": reached,
            "offset": applied,
            "assigned": tp in handle.source.assignment(),
        }
        content, media_type = encode(envelope(result, started), msgpack_out=False)
        return Response(content, media_type=media_type)

    def routes(self) -> list[Route]:
        return [
            Route("/cluster/v1/node", self.node_document, methods=["GET"]),
            Route("/cluster/v1/applied", self.applied, methods=["GET"]),
        ]
