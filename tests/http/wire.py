"""A recording Qdrant endpoint: keeps every request a client sends and answers minimally.

``Wire`` serves HTTP on a free port (stdlib ``http.server`` in a thread). It keeps
``(method, path, query, body)`` of every request, remembers the collections
created (so ``exists`` and ``GET /collections/{c}`` answer from the create body,
as frameworks check them before writing) and replies with the smallest valid
success envelope for each route. It stores no points: searches return no hits.
It is a recorder of what real clients put on the wire, not a stand-in for vdb.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = {"title": "qdrant - vector search engine", "version": "1.20.0"}
_UPDATE = {"operation_id": 1, "status": "completed"}


def collection_info(create: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {"vectors": create.get("vectors", {}), "shard_number": 1}
    if create.get("sparse_vectors"):
        params["sparse_vectors"] = create["sparse_vectors"]
    return {
        "status": "green",
        "optimizer_status": "ok",
        "segments_count": 1,
        "points_count": 0,
        "config": {
            "params": params,
            "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
            "optimizer_config": {
                "deleted_threshold": 0.2,
                "vacuum_min_vector_number": 1000,
                "default_segment_number": 0,
                "flush_interval_sec": 5,
            },
        },
        "payload_schema": {},
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _reply(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        url = urlsplit(self.path)
        path = url.path
        self.server.requests.append((self.command, path, parse_qs(url.query), body))
        parts = [p for p in path.split("/") if p]
        if path == "/":
            self._send(VERSION, envelope=False)
            return
        result: Any = True
        name = parts[1] if len(parts) > 1 and parts[0] == "collections" else None
        if name is not None and len(parts) == 2:
            if self.command == "PUT":
                self.server.collections[name] = body or {}
            elif self.command == "DELETE":
                result = self.server.collections.pop(name, None) is not None
            elif self.command == "GET":
                if name not in self.server.collections:
                    self._send({"error": f"Not found: Collection `{name}` doesn't exist!"}, 404)
                    return
                result = collection_info(self.server.collections[name])
        elif path.endswith("/exists"):
            result = {"exists": name in self.server.collections}
        elif path.endswith("/points/query/batch"):
            result = [{"points": []} for _ in body["searches"]]
        elif path.endswith("/points/query"):
            result = {"points": []}
        elif path.endswith("/points/scroll"):
            result = {"points": [], "next_page_offset": None}
        elif path.endswith("/points") and self.command == "POST":
            result = []
        elif path.endswith("/points") or "/points/" in path or path.endswith("/index"):
            result = _UPDATE
        self._send(result)

    def _send(self, result: Any, status: int = 200, envelope: bool = True) -> None:
        if not envelope:
            payload = result
        elif status == 200:
            payload = {"result": result, "status": "ok", "time": 0.0}
        else:
            payload = {"status": result, "time": 0.0}
        out = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _reply


class _Server(ThreadingHTTPServer):
    requests: list[tuple[str, str, dict[str, list[str]], Any]]
    collections: dict[str, dict[str, Any]]


class Wire:
    """``with Wire() as wire: ... wire.url ... wire.requests``; stopped on exit."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.requests = []
        self._server.collections = {}
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[tuple[str, str, dict[str, list[str]], Any]]:
        return self._server.requests

    def bodies(self, method: str, suffix: str) -> list[Any]:
        """Bodies of the requests with ``method`` whose path ends with ``suffix``."""
        return [b for m, p, _q, b in self.requests if m == method and p.endswith(suffix)]

    def __enter__(self) -> Wire:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
