"""``build_app(db, config)``: the Starlette app — routes, middleware, error handlers.

Errors are mapped to status codes in exactly one place,
``vdb.http.errors.error_response``; the exception handlers here and the
middlewares answer through it.

Middleware, outermost first: tracing (only while ``vdb.telemetry`` is on when
the app is built), metrics (times everything, including refusals), auth,
rate limit, body size limit.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from vdb import telemetry
from vdb.config import ServerConfig
from vdb.errors import InvalidInput, VdbError
from vdb.http import dashboard as dashboard_mod
from vdb.http import metrics as metrics_mod
from vdb.http.auth import OPEN_PATHS, AuthMiddleware
from vdb.http.codec import EncodedResponse, envelope, wants_msgpack
from vdb.http.errors import error_response, status_of
from vdb.http.limits import BodyLimitMiddleware, RateLimitMiddleware
from vdb.http.qdrant import QdrantApi

log = logging.getLogger(__name__)


async def handle_error(request: Request, exc: Exception) -> Response:
    """Every error, whatever the request's format, answers in Qdrant's JSON error shape."""
    if status_of(exc) == 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(exc, request.scope.get("state", {}).get("vdb_started"))


class Service:
    """Health, readiness, metrics and vdb's own routes (``/dead-letters``)."""

    def __init__(self, db: Any, config: ServerConfig, ingest_handles: Sequence[Any]):
        self.db = db
        self.config = config
        self.ingest_handles = list(ingest_handles)
        self.ready = threading.Event()
        self.registry = CollectorRegistry()
        self.http_metrics = metrics_mod.HttpMetrics(self.registry)
        self.registry.register(metrics_mod.StatsCollector(self.stats_sources))

    def stats_sources(self) -> list[tuple[tuple[str, ...], dict, dict]]:
        out: list[tuple[tuple[str, ...], dict, dict]] = []
        stats = self.db.stats()
        out.append(((), {}, stats))
        if "collections" not in stats:
            points = {}
            for name in self.db.list_collections():
                try:
                    points[name] = {"points": len(self.db.collection(name))}
                except VdbError:
                    continue  # dropped while we looked
            out.append(((), {}, {"collections": points}))
        for i, handle in enumerate(self.ingest_handles):
            try:
                stats = handle.stats()
            except Exception:  # one broken handle must not hide the others
                log.exception("ingest handle %d stats() failed", i)
                continue
            out.append((("ingest",), {"handle": str(i)}, stats))
        return out

    def warm(self) -> None:
        """Compile the search kernels of every metric, then report ready.

        The data directory's own collections were warmed when it was opened;
        this covers collections created later, so that no request pays for
        compilation. It goes through the public API on a throw-away database.
        """
        if self.config.warm:
            started = time.perf_counter()
            try:
                warm_kernels()
                log.info("kernels warm in %.2f s", time.perf_counter() - started)
            except Exception:  # warming is an optimisation only
                log.exception("warming the kernels failed; serving anyway")
        self.ready.set()
        log.info("ready")

    async def healthz(self, request: Request) -> Response:
        return PlainTextResponse("healthz check passed")

    async def readyz(self, request: Request) -> Response:
        if self.ready.is_set():
            return PlainTextResponse("all shards are ready")
        return PlainTextResponse("warming up", status_code=503)

    async def metrics(self, request: Request) -> Response:
        import anyio.to_thread

        body = await anyio.to_thread.run_sync(metrics_mod.render, self.registry)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def dead_letters(self, request: Request) -> Response:
        import anyio.to_thread

        started = time.perf_counter()
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 0 < int(raw) <= self.config.max_limit:
            raise InvalidInput(
                f"query parameter `limit` must be an integer in 1..{self.config.max_limit}"
            )
        source = request.query_params.get("source")
        letters = await anyio.to_thread.run_sync(
            lambda: self.db.dead_letters(limit=int(raw), source=source)
        )
        return EncodedResponse(
            envelope([dead_letter_out(d) for d in letters], started),
            msgpack_out=wants_msgpack(request),
        )

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/livez", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
            Route("/dead-letters", self.dead_letters, methods=["GET"]),
        ]


def warm_kernels(dim: int = 8) -> None:
    """Create, fill and search a tiny collection of each metric in a temporary database.

    Its indexer is paused: the points stay in the fresh segment, so this waits for the search
    kernels (the graph's and the fresh scan) only. The kernels that link writes load in the
    background (see ``vdb.index.hnsw``); a write is durable and searchable in the fresh
    segment before it is linked, so no request waits for them."""
    import tempfile

    import numpy as np

    import vdb

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="vdb-warm-") as tmp:
        with vdb.open(tmp, checkpoint_interval_s=None, map_size=1 << 24, indexing=False) as db:
            for metric in ("cosine", "l2", "ip"):
                col = db.create_collection(f"warm-{metric}", dim=dim, metric=metric)
                vectors = rng.standard_normal((20, dim)).astype(np.float32) + 0.1
                col.upsert(list(range(20)), vectors, [{"k": i % 2} for i in range(20)])
                col.search(vectors[:2], k=3)
                col.search(vectors[0], k=3, filter={"must": [{"key": "k", "match": {"value": 1}}]})


def dead_letter_out(letter: Any) -> dict[str, Any]:
    """One dead letter as JSON, the same shape as ``python -m vdb dead-letters --json``."""

    def b64(raw: bytes | None) -> str | None:
        return None if raw is None else base64.b64encode(raw).decode("ascii")

    return {
        "source": letter.source,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "key": b64(letter.key),
        "value": b64(letter.value),
        "reason": letter.reason,
        "timestamp_ms": letter.timestamp_ms,
        "extra": letter.extra,
    }


def build_app(
    db: Any,
    config: ServerConfig | None = None,
    ingest_handles: Sequence[Any] = (),
    *,
    warm_in_background: bool = True,
    cluster_node: Any = None,
) -> Starlette:
    """The ASGI app over an open database. It holds no data of its own.

    ``cluster_node`` (a ``vdb.cluster.node.ClusterNode``) adds the node-internal
    routes of ``vdb.http.cluster``.
    """
    config = config or ServerConfig()
    service = Service(db, config, ingest_handles)
    api = QdrantApi(db, config)
    dashboard = dashboard_mod.Dashboard(db, service.ingest_handles)
    middleware = [
        Middleware(metrics_mod.MetricsMiddleware, metrics=service.http_metrics),
        Middleware(
            AuthMiddleware, api_key=config.api_key, read_only_api_key=config.read_only_api_key
        ),
        Middleware(
            RateLimitMiddleware,
            rate=config.rate_limit,
            burst=config.rate_burst,
            exempt=OPEN_PATHS | dashboard_mod.PATHS | {"/metrics"},
        ),
        Middleware(BodyLimitMiddleware, max_bytes=config.max_body_bytes),
    ]
    if telemetry.enabled():
        from vdb.http.tracing import TracingMiddleware

        middleware.insert(0, Middleware(TracingMiddleware))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if warm_in_background:
            threading.Thread(target=service.warm, name="vdb-warm", daemon=True).start()
        else:
            service.warm()
        yield

    app = Starlette(
        routes=service.routes() + _cluster_routes(cluster_node) + api.routes() + dashboard.routes(),
        middleware=middleware,
        exception_handlers={
            VdbError: handle_error,
            HTTPException: handle_error,
            ClientDisconnect: handle_error,
            Exception: handle_error,
        },
        lifespan=lifespan,
    )
    app.state.db = db
    app.state.config = config
    app.state.service = service
    app.state.api = api
    return app


def _cluster_routes(node: Any) -> list[Route]:
    if node is None:
        return []
    from vdb.http.cluster import ClusterRoutes

    return ClusterRoutes(node).routes()
