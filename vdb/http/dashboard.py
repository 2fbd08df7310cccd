"""``GET /dashboard``: a page shipped inside the package, and ``GET /stats``, the figures it draws.

The page is three static files (``vdb/http/static/``: HTML, CSS, plain
JavaScript; no build step, no CDN, no external fonts). It reads only the
server's own JSON routes: ``/stats`` (below), ``/dead-letters``,
``/collections/{name}/points/query`` and ``/collections/{name}/points/{id}``.
It never writes, so a read-only API key sees all of it. The page and its
two assets are served without a key (they hold no data); the page asks for
the key and sends it as the ``api-key`` header.

``/stats`` (the read key is enough) answers, in Qdrant's envelope::

    {"server_time": epoch s, "vdb_version": str,
     "database": db.stats() without its "collections",
     "collections": [{"name", "points", "dim", "metric", "status", "M", "ef_construction",
                      "ef", "embedder": {"model": str} | None, ...every other figure
                      db.stats()["collections"][name] has, e.g. fresh_points,
                      indexed_points, indexing_rate, backlog_age_s}],
     "ingest": [handle.stats() for each pipeline feeding this database]}
"""

from __future__ import annotations

import logging
import time
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vdb.errors import VdbError
from vdb.http.codec import EncodedResponse, envelope

log = logging.getLogger(__name__)

ASSETS = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("dashboard.css", "text/css; charset=utf-8"),
}
PATHS = frozenset(ASSETS)
"""The page and its assets: answered without a key (they hold no data)."""

_HEADERS = {
    "cache-control": "no-cache",
    "x-content-type-options": "nosniff",
    # the page may talk to its own origin only, and load nothing from elsewhere
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
}


def embedder_of(info: dict[str, Any]) -> dict[str, Any] | None:
    """The collection's embedder as ``{"model": name, ...}`` when its info names one."""
    for value in (
        info.get("embedder"),
        (info.get("extra") or {}).get("embedder"),
        (info.get("extra") or {}).get("embed"),
    ):
        if isinstance(value, str) and value:
            return {"model": value}
        if isinstance(value, dict) and value:
            model = value.get("model") or value.get("name")
            return {**value, "model": str(model)} if model else None
    return None


class Dashboard:
    """The page's routes; holds only references (the database, the ingest handles)."""

    def __init__(self, db: Any, ingest_handles: list[Any]):
        self.db = db
        self.ingest_handles = ingest_handles
        self._assets: dict[str, bytes] = {}

    def asset(self, path: str) -> bytes:
        body = self._assets.get(path)
        if body is None:
            name = ASSETS[path][0]
            body = resources.files("vdb.http").joinpath("static", name).read_bytes()
            self._assets[path] = body
        return body

    async def page(self, request: Request) -> Response:
        path = request.url.path
        return Response(self.asset(path), media_type=ASSETS[path][1], headers=_HEADERS)

    def handles(self) -> list[Any]:
        """The pipelines feeding this database: the server's, and any started in-process."""
        found = list(self.ingest_handles)
        try:
            from vdb.ingest.pipeline import handles

            found += [h for h in handles() if getattr(h, "db", None) is self.db]
        except ImportError:
            pass
        unique: dict[int, Any] = {}
        for handle in found:
            unique.setdefault(id(handle), handle)
        return list(unique.values())

    def figures(self) -> dict[str, Any]:
        from vdb.version import __version__

        stats = dict(self.db.stats())
        per_collection = stats.pop("collections", None) or {}
        collections = []
        for name in self.db.list_collections():
            try:
                info = self.db.collection(name).info()
            except VdbError:
                continue  # dropped while we looked
            entry = {
                "name": name,
                "points": int(info.get("count", 0)),
                "dim": int(info["dim"]),
                "metric": str(info.get("metric")),
                "status": info.get("status"),
                "M": info.get("M"),
                "ef_construction": info.get("ef_construction"),
                "ef": info.get("ef"),
                "embedder": embedder_of(info),
            }
            for key, value in (per_collection.get(name) or {}).items():
                entry.setdefault(key, value)
            collections.append(entry)
        ingest = []
        for i, handle in enumerate(self.handles()):
            try:
                ingest.append(handle.stats())
            except Exception:  # one broken handle must not hide the others
                log.exception("ingest handle %d stats() failed", i)
        return {
            "server_time": time.time(),
            "vdb_version": __version__,
            "database": stats,
            "collections": collections,
            "ingest": ingest,
        }

    async def stats(self, request: Request) -> Response:
        import anyio.to_thread

        started = time.perf_counter()
        figures = await anyio.to_thread.run_sync(self.figures)
        return EncodedResponse(envelope(figures, started))

    def routes(self) -> list[Route]:
        return [
            Route("/dashboard", self.page, methods=["GET"]),
            Route("/dashboard/app.js", self.page, methods=["GET"]),
            Route("/dashboard/style.css", self.page, methods=["GET"]),
            Route("/stats", self.stats, methods=["GET"]),
        ]
