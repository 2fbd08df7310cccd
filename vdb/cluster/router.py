"""The router: Qdrant's REST subset in front of a cluster of vdb nodes.

Reads fan out to one healthy replica per partition (``Membership``), run
concurrently under one deadline per request, and are merged into the answer
one node holding every point would give (``vdb.cluster.merge``). Choosing
replicas: one replica group per request in turn (spreading load over the
groups), within it the replica of each partition; partitions the group does
not serve go to another group; a replica more than ``LAG_SLACK`` records
behind the best one is skipped. A replica that fails (connection error,
timeout, 5xx) is marked failed until its next heartbeat and its partitions are
retried on another replica before the answer is given. Partitions left with
no replica make the request fail with 503 naming them, unless the request
says ``?partial=true`` (the header ``x-vdb-missing-partitions`` lists them).
A node's 4xx answer (bad input) is forwarded as it is, so errors keep the
single-node shapes.

Writes are produced to the collection's topic keyed by point id (Kafka's
default murmur2 partitioner, ``vdb.cluster.partitioner``) as JSON messages;
deletes are tombstones. With ``wait=true`` (the default, as in Qdrant) the
answer comes once, for every partition written, a replica reports the last
offset applied (``/cluster/v1/applied``) and the other live replicas of that
partition did too or had ``settle_s`` more to do so: read-your-writes on
whichever replica the next read picks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import parse_qs, urlencode

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vdb.cluster.client import ClientError, NodeClient
from vdb.cluster.membership import Membership, NodeView
from vdb.cluster.merge import merge_by_id, merge_hits, merge_scroll
from vdb.cluster.partitioner import point_key
from vdb.cluster.remote import CollectionShape, RemoteCollection
from vdb.errors import (
    AlreadyExists,
    CollectionNotFound,
    InvalidInput,
    PointNotFound,
    Unavailable,
    VdbError,
)
from vdb.http import parsing as p
from vdb.http.codec import envelope, parse_body
from vdb.http.errors import error_response

log = logging.getLogger(__name__)

LAG_SLACK = 1000
"""A replica this many records behind the best replica of its partition is not chosen."""

MAX_LIMIT = 10_000
"""``limit + offset`` of a query the router runs itself (prefetch, MMR): the nodes' default."""

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5)


class NodeFailed(Exception):
    """A replica did not answer usefully (connection, timeout, 5xx): retry elsewhere."""


class Forwarded(Exception):
    """A replica refused the request (4xx): its answer goes back to the client as it is."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value: Any) -> bool:
    return _is_int(value) or isinstance(value, str)


class RouterMetrics:
    """The router's Prometheus figures (``GET /metrics``)."""

    def __init__(self, members: Membership) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "vdb_router_requests_total", "Requests by route and status", ["route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "vdb_router_request_seconds", "Request latency by route", ["route"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.node_latency = Histogram(
            "vdb_router_node_request_seconds", "Latency of requests to each node", ["node"],
            buckets=_LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.node_errors = Counter(
            "vdb_router_node_failures_total", "Failed requests to each node", ["node"],
            registry=self.registry,
        )  # fmt: skip
        self.fanout = Histogram(
            "vdb_router_fanout_nodes", "Nodes asked per read", buckets=(1, 2, 3, 4, 6, 8, 16, 32),
            registry=self.registry,
        )  # fmt: skip
        self.retries = Counter(
            "vdb_router_retries_total", "Partitions retried on another replica",
            registry=self.registry,
        )  # fmt: skip
        self.missing = Counter(
            "vdb_router_missing_partitions_total", "Partitions with no live replica, per read",
            ["collection"], registry=self.registry,
        )  # fmt: skip
        self.produced = Counter(
            "vdb_router_produced_total", "Records produced (upserts and tombstones)",
            registry=self.registry,
        )  # fmt: skip
        self.healthy = Gauge(
            "vdb_router_nodes_healthy", "Nodes with a fresh heartbeat", registry=self.registry
        )
        self.healthy.set_function(lambda: len(members.healthy_nodes()))
        self.registry.register(_LagCollector(members))
        self._node_children: dict[str, tuple[Any, Any]] = {}
        self._route_children: dict[str, tuple[Any, Any]] = {}

    def node(self, node_id: str) -> tuple[Any, Any]:
        """The node's (latency, failures) series; ``labels()`` is looked up once per node."""
        found = self._node_children.get(node_id)
        if found is None:
            found = (self.node_latency.labels(node_id), self.node_errors.labels(node_id))
            self._node_children[node_id] = found
        return found

    def route(self, route: str) -> tuple[Any, Any]:
        """The route's (200 count, latency) series."""
        found = self._route_children.get(route)
        if found is None:
            found = (self.requests.labels(route, "200"), self.latency.labels(route))
            self._route_children[route] = found
        return found


class _LagCollector:
    def __init__(self, members: Membership) -> None:
        self.members = members

    def collect(self) -> Any:
        lag = GaugeMetricFamily(
            "vdb_router_replica_lag", "Lag (records) each replica reports",
            labels=["collection", "partition", "node", "state"],
        )  # fmt: skip
        age = GaugeMetricFamily(
            "vdb_router_heartbeat_age_seconds", "Age of each node's last heartbeat", labels=["node"]
        )
        for node in self.members.nodes():
            age.add_metric([node.node_id], node.age_s())
            for name, meta in node.collections.items():
                for key, part in (meta.get("partitions") or {}).items():
                    if part.get("lag") is not None:
                        labels = [name, str(key), node.node_id, str(part.get("state"))]
                        lag.add_metric(labels, float(part["lag"]))
        yield lag
        yield age


class Router:
    """The router over cluster ``cluster`` (heartbeats on ``NAME.vdb-nodes`` at ``bootstrap``).

    ``router.app`` is the ASGI app; ``start()`` begins reading heartbeats,
    ``close()`` stops. Options: ``stale_s`` (2.0) heartbeat age after which a
    node is not used, ``timeout_s`` (5.0) deadline of one read, ``retries``
    (2) rounds of retry on other replicas, ``wait_timeout_s`` (30.0) longest
    wait of a ``wait=true`` write, ``settle_s`` (1.0) extra wait for the other
    replicas of a written partition, ``lean`` (True) serve ``query`` and
    ``search`` as raw ASGI (False: through Starlette like every other route,
    the same answers).
    """

    def __init__(
        self,
        bootstrap: str | list[str],
        cluster: str,
        *,
        stale_s: float = 2.0,
        timeout_s: float = 5.0,
        retries: int = 2,
        wait_timeout_s: float = 30.0,
        settle_s: float = 1.0,
        producer_options: dict[str, Any] | None = None,
        lean: bool = True,
    ) -> None:
        self.bootstrap = bootstrap
        self.cluster = cluster
        self.members = Membership(bootstrap, cluster, stale_s=stale_s)
        self.timeout_s = timeout_s
        self.retries = retries
        self.wait_timeout_s = wait_timeout_s
        self.settle_s = settle_s
        self.producer_options = dict(producer_options or {})
        self.lean = lean
        self.metrics = RouterMetrics(self.members)
        self._round_robin = itertools.count()
        self._producer: Any = None
        self._client: NodeClient | None = None
        self._shapes: dict[str, tuple[dict[str, Any], CollectionShape]] = {}
        self.app = self._build_app()

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> Router:
        self.members.start()
        return self

    def close(self) -> None:
        self.members.close()
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=5)

    async def aclose(self) -> None:
        """Close the connections to the nodes (the server's shutdown; ``close()`` the rest)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer

            options = {
                "bootstrap_servers": self.bootstrap,
                "acks": "all",
                "linger_ms": 1,
                "client_id": f"vdb-router-{self.cluster}",
            }
            options.update(self.producer_options)
            self._producer = KafkaProducer(**options)
        return self._producer

    # -- the map -------------------------------------------------------------

    def meta(self, collection: str) -> dict[str, Any]:
        meta = self.members.collection_meta(collection)
        if meta is None:
            raise CollectionNotFound(f"Not found: Collection `{collection}` doesn't exist!")
        return meta

    def shape(self, collection: str) -> CollectionShape:
        """The collection's vectors as its heartbeats describe them (rebuilt when they change)."""
        meta = self.meta(collection)
        cached = self._shapes.get(collection)
        if cached is None or cached[0] is not meta:
            cached = (meta, CollectionShape(meta))
            self._shapes[collection] = cached
        return cached[1]

    def _total(self, collection: str, meta: dict[str, Any]) -> int:
        total = meta.get("partitions_total")
        if total:
            return int(total)
        seen = self.members.replicas(collection, include_catching_up=True)
        return max(seen) + 1 if seen else 0

    def plan(
        self, collection: str, needed: set[int], exclude: set[str]
    ) -> tuple[dict[str, tuple[NodeView, list[int]]], list[int]]:
        """Which node answers for which of ``needed``; the partitions nobody can serve."""
        replicas = self.members.replicas(collection)
        groups = self.members.groups(collection)
        preferred = groups[next(self._round_robin) % len(groups)] if groups else None
        chosen: dict[str, tuple[NodeView, list[int]]] = {}
        missing = []
        for partition in sorted(needed):
            candidates = [r for r in replicas.get(partition, ()) if r.node.node_id not in exclude]
            if not candidates:
                missing.append(partition)
                continue
            best = min(r.lag or 0 for r in candidates)
            good = [r for r in candidates if (r.lag or 0) <= best + LAG_SLACK]
            pick = min(
                good,
                key=lambda r: (
                    r.group != preferred,
                    r.node.node_id not in chosen,
                    r.lag or 0,
                    r.node.node_id,
                ),
            )
            chosen.setdefault(pick.node.node_id, (pick.node, []))[1].append(partition)
        return chosen, missing

    # -- talking to nodes ------------------------------------------------------

    async def call_node(
        self,
        node: NodeView,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
        query: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One request to one node; its ``result``. ``NodeFailed`` / ``Forwarded`` otherwise."""
        if self._client is None:
            self._client = NodeClient()
        latency, errors = self.metrics.node(node.node_id)
        started = time.perf_counter()
        try:
            status, content = await self._client.request(
                node.url,
                method,
                path,
                params=params,
                query=query,
                body=body,
                timeout=self.timeout_s if timeout is None else max(0.05, timeout),
            )
        except ClientError as exc:
            errors.inc()
            raise NodeFailed(f"{node.node_id}: {exc}") from None
        finally:
            latency.observe(time.perf_counter() - started)
        if status >= 500 or status == 429:
            errors.inc()
            raise NodeFailed(f"{node.node_id}: HTTP {status}")
        if status >= 400:
            raise Forwarded(status, content)
        try:
            return orjson.loads(content)["result"]
        except (ValueError, KeyError, TypeError):
            raise NodeFailed(f"{node.node_id}: unreadable answer") from None

    async def fan_out(
        self,
        collection: str,
        call: Callable[[NodeView, list[int], float], Awaitable[Any]],
        *,
        partial: bool = False,
        partitions: set[int] | None = None,
    ) -> tuple[list[tuple[list[int], Any]], list[int]]:
        """Run ``call(node, partitions, timeout)`` so that every partition is answered once.

        The request's deadline (``timeout_s``) is split over the rounds: each
        round gets an equal share of what is left.

        Returns the answers and the partitions with no replica (only when
        ``partial``; otherwise those raise ``Unavailable`` naming them).
        """
        meta = self.meta(collection)
        deadline = time.monotonic() + self.timeout_s
        needed = set(range(self._total(collection, meta))) if partitions is None else partitions
        exclude: set[str] = set()
        missing: list[int] = []
        results: list[tuple[list[int], Any]] = []
        first_round = True
        for attempt in range(self.retries + 1):
            chosen, uncovered = self.plan(collection, needed, exclude)
            missing.extend(uncovered)
            needed -= set(uncovered)
            if not chosen:
                break
            if first_round:
                self.metrics.fanout.observe(len(chosen))
            else:
                self.metrics.retries.inc(sum(len(parts) for _, parts in chosen.values()))
            first_round = False
            # Each round gets its share of what is left, so a replica that hangs leaves
            # time to ask another one within the request's deadline.
            remaining = (deadline - time.monotonic()) / (self.retries + 1 - attempt)
            plan = list(chosen.values())
            outcomes = await _all(call(node, parts, remaining) for node, parts in plan)
            for (node, parts), outcome in zip(plan, outcomes, strict=True):
                if isinstance(outcome, Forwarded):
                    raise outcome
                if isinstance(outcome, BaseException):
                    if not isinstance(outcome, NodeFailed):
                        log.warning("request to %s failed: %r", node.node_id, outcome)
                    else:
                        log.info("%s", outcome)
                    self.members.mark_failed(node.node_id)
                    exclude.add(node.node_id)
                    continue
                results.append((parts, outcome))
                needed -= set(parts)
            if not needed or time.monotonic() >= deadline:
                break
        missing = sorted(set(missing) | needed)
        if missing:
            self.metrics.missing.labels(collection).inc(len(missing))
            if not partial:
                names = ", ".join(str(m) for m in missing)
                raise Unavailable(
                    f"Service unavailable: partition(s) {names} of collection `{collection}` "
                    "have no live replica (retry later, or ask for partial results with "
                    "?partial=true)"
                )
        return results, missing

    async def read(
        self,
        request: Request,
        collection: str,
        method: str,
        path: str,
        body: bytes | None,
        extra_params: dict[str, str] | None = None,
    ) -> tuple[list[Any], list[int]]:
        """Fan ``method path`` out (restricted per node by ``vdb_partitions``); node results."""
        partial = _flag(request.query_params.get("partial"))
        return await self._read(collection, method, path, body, partial, extra_params)

    async def _read(
        self,
        collection: str,
        method: str,
        path: str,
        body: bytes | None,
        partial: bool,
        extra_params: dict[str, str] | None = None,
    ) -> tuple[list[Any], list[int]]:
        async def call(node: NodeView, parts: list[int], timeout: float) -> Any:
            query = _partitions_query(parts)
            if extra_params:
                query += "&" + urlencode(extra_params)
            return await self.call_node(node, method, path, body=body, query=query, timeout=timeout)

        answers, missing = await self.fan_out(collection, call, partial=partial)
        return [result for _, result in answers], missing

    # -- the app -------------------------------------------------------------------

    def _build_app(self) -> Any:
        c = "/collections/{name}"
        routes = [
            # the searches first: Starlette tries the routes in order
            Route(c + "/points/query", self.query_points, methods=["POST"]),
            Route(c + "/points/search", self.search_points, methods=["POST"]),
            Route(c + "/points/query/batch", self.query_batch, methods=["POST"]),
            Route(c + "/points/search/batch", self.search_batch, methods=["POST"]),
            Route("/", self.root, methods=["GET"]),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics_route, methods=["GET"]),
            Route("/cluster", self.cluster_map, methods=["GET"]),
            Route("/collections", self.list_collections, methods=["GET"]),
            Route(c, self.get_collection, methods=["GET"]),
            Route(c + "/exists", self.collection_exists, methods=["GET"]),
            Route(c + "/points", self.retrieve_points, methods=["POST"]),
            Route(c + "/points", self.upsert_points, methods=["PUT"]),
            Route(c + "/points/delete", self.delete_points, methods=["POST"]),
            Route(c + "/points/scroll", self.scroll_points, methods=["POST"]),
            Route(c + "/points/count", self.count_points, methods=["POST"]),
            Route(c + "/points/{id}", self.get_point, methods=["GET"]),
            Route(c, self.create_collection, methods=["PUT"]),
            Route(c, self.drop_collection, methods=["DELETE"]),
            Route(c + "/points/payload", self.payload_update, methods=["POST", "PUT"]),
            Route(c + "/points/payload/delete", self.payload_update, methods=["POST"]),
            Route(c + "/points/payload/clear", self.payload_update, methods=["POST"]),
            Route(
                "/{path:path}",
                self.unsupported,
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            try:
                yield
            finally:
                await self.aclose()

        async def on_error(request: Request, exc: Exception) -> Response:
            return await self._failure(request.method, request.url.path, exc)

        starlette = Starlette(
            routes=routes,
            lifespan=lifespan,
            exception_handlers={Exception: on_error, Forwarded: on_error, VdbError: on_error},
        )
        if not self.lean:
            return starlette

        async def app(scope: Any, receive: Any, send: Any) -> None:
            # POST /collections/{name}/points/query | search: the lean path; the rest: Starlette
            if scope["type"] == "http" and scope["method"] == "POST":
                path = scope["path"]
                if path.startswith("/collections/"):
                    name, _, tail = path[13:].partition("/")
                    if name and tail in _LEAN_ROUTES:
                        await self._lean(scope, receive, send, name, _LEAN_ROUTES[tail])
                        return
            await starlette(scope, receive, send)

        return app

    async def _failure(self, method: str, path: str, exc: BaseException) -> Response:
        """The error answer for ``exc`` (a node's 4xx is passed on as it is)."""
        if isinstance(exc, Forwarded):
            return Response(exc.body, status_code=exc.status, media_type="application/json")
        if not isinstance(exc, VdbError):
            log.error("%s %s failed", method, path, exc_info=exc)
        return error_response(exc)

    def _answer(self, route: str, result: Any, started: float, missing: list[int] = ()) -> Response:
        headers = {"x-vdb-missing-partitions": ",".join(map(str, missing))} if missing else None
        count, latency = self.metrics.route(route)
        count.inc()
        latency.observe(time.perf_counter() - started)
        return Response(
            _dumps(envelope(result, started)), media_type="application/json", headers=headers
        )

    async def _body(self, request: Request, required: bool) -> dict[str, Any]:
        raw = await request.body()
        body = parse_body(raw, request.headers.get("content-type"), required=required)
        return {} if body is None else body

    # -- service routes ----------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        from vdb import __version__
        from vdb.config import QDRANT_COMPAT_VERSION

        result = {"title": "vdb router", "version": QDRANT_COMPAT_VERSION, "vdb": __version__}
        return Response(_dumps(result), media_type="application/json")

    async def healthz(self, request: Request) -> Response:
        return Response(_dumps({"status": "ok"}), media_type="application/json")

    async def readyz(self, request: Request) -> Response:
        ready = self.members.ready.is_set()
        return Response(
            _dumps({"ready": ready, "nodes": len(self.members.healthy_nodes())}),
            status_code=200 if ready else 503,
            media_type="application/json",
        )

    async def metrics_route(self, request: Request) -> Response:
        body = await asyncio.to_thread(generate_latest, self.metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def cluster_map(self, request: Request) -> Response:
        """The map as the router sees it: nodes, health, partitions (for people and tests)."""
        now = time.monotonic()
        nodes = []
        for n in self.members.nodes():
            nodes.append(
                {
                    "node_id": n.node_id,
                    "url": n.url,
                    "state": n.state,
                    "healthy": n.healthy(self.members.stale_s, now),
                    "age_s": round(n.age_s(now), 3),
                    "sent_ts_ms": n.ts_ms,
                    "failures": n.failures,
                    "collections": n.collections,
                }
            )
        served = {}
        for name in self.members.collections():
            replicas = self.members.replicas(name)
            served[name] = {
                str(part): sorted(r.node.node_id for r in reps)
                for part, reps in sorted(replicas.items())
            }
        result = {"cluster": self.cluster, "nodes": nodes, "serving": served}
        return Response(
            _dumps(envelope(result, time.perf_counter())), media_type="application/json"
        )

    async def unsupported(self, request: Request) -> Response:
        raise InvalidInput(
            f"Bad request: {request.method} {request.url.path} is not supported through the vdb "
            "router (collections are created by the nodes; send it to a node)"
        )

    async def payload_update(self, request: Request) -> Response:
        """Set, overwrite, delete or clear payload: refused, naming why and what to do.

        A cluster's writes are records on the topic, and a record carries a
        whole point (id, vector, payload) or a tombstone; there is no record
        that changes part of a point. Doing it here would be a read-modify-write
        (read the point from a replica, produce it with the new payload), and
        the topic has no compare-and-set: a write of the same point by another
        producer between the read and the produce would be silently undone, or
        would undo this one. The client that owns the point upserts it whole.
        """
        raise InvalidInput(
            f"Bad request: {request.method} {request.url.path}: payload updates are not "
            "supported through the vdb router. The cluster's writes are records of whole "
            "points on its topic; a partial update would be a read-modify-write that a "
            "concurrent write of the same point could silently undo. Upsert the whole point "
            "(its vector and the new payload) instead"
        )

    async def create_collection(self, request: Request) -> Response:
        """``PUT /collections/{name}``: a cluster's collections are made by its nodes.

        An existing collection answers as a node does (409, already exists), so
        clients that create and then tolerate "already exists" work unchanged;
        any other name is a 400 that says how a collection joins the cluster.
        """
        name = request.path_params["name"]
        if self.members.collection_meta(name) is not None:
            raise AlreadyExists(f"Wrong input: Collection `{name}` already exists!")
        raise InvalidInput(
            f"Bad request: collection `{name}` cannot be created through the vdb router: a "
            "cluster's collections are made by its nodes (python -m vdb serve --cluster "
            f"{self.cluster} --collection {name} --create-dim D --kafka-topic T --kafka-group G "
            "...); the router serves a collection once a node's heartbeat names it"
        )

    async def drop_collection(self, request: Request) -> Response:
        """``DELETE /collections/{name}``: refused; the router holds no data to drop."""
        name = request.path_params["name"]
        self.meta(name)  # an unknown collection is a 404, as on a node
        raise InvalidInput(
            f"Bad request: collection `{name}` cannot be dropped through the vdb router: its "
            "points live in its topic and on its nodes. Stop the nodes serving it (they leave "
            "the cluster at once) and delete the topic"
        )

    # -- collections ----------------------------------------------------------------

    async def list_collections(self, request: Request) -> Response:
        started = time.perf_counter()
        result = {"collections": [{"name": n} for n in self.members.collections()]}
        return self._answer("collections", result, started)

    async def collection_exists(self, request: Request) -> Response:
        started = time.perf_counter()
        exists = self.members.collection_meta(request.path_params["name"]) is not None
        return self._answer("exists", {"exists": exists}, started)

    async def get_collection(self, request: Request) -> Response:
        """One node's answer, with the cluster's point count."""
        started = time.perf_counter()
        name = request.path_params["name"]
        self.meta(name)
        info = None
        for node in self.members.healthy_nodes():
            if name in node.collections:
                try:
                    info = await self.call_node(node, "GET", f"/collections/{name}")
                    break
                except NodeFailed:
                    self.members.mark_failed(node.node_id)
        if info is None:
            raise Unavailable(f"Service unavailable: no live node serves collection `{name}`")
        counts, missing = await self.read(
            request, name, "POST", f"/collections/{name}/points/count", b"{}"
        )
        total = sum(int(c["count"]) for c in counts)
        info["points_count"] = total
        if "indexed_vectors_count" in info:
            info["indexed_vectors_count"] = total
        return self._answer("collection", info, started, missing)

    # -- reads ------------------------------------------------------------------------

    async def _resolve_query(
        self, partial: bool, name: str, query: Any, using: str
    ) -> tuple[Any, Any]:
        """A query by point id becomes a query by that point's vector ``using``:
        (query, id to exclude)."""
        target = query.get("nearest") if isinstance(query, dict) and len(query) == 1 else query
        if not _is_id(target):
            return query, None
        shape = self.shape(name)
        body = _dumps(
            {"ids": [target], "with_payload": False, "with_vector": shape.with_vector([using])}
        )
        answers, _ = await self._read(name, "POST", f"/collections/{name}/points", body, partial)
        for records in answers:
            for record in records:
                vector = record.get("vector")
                if isinstance(vector, dict) and shape.named:
                    vector = vector.get(using)
                if vector is not None:
                    return vector, record["id"]
        raise PointNotFound(f"Not found: No point with id {target} found")

    async def _prepare(
        self, partial: bool, name: str, search: dict[str, Any], has_query: bool, legacy: bool
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The body each node gets (``limit + offset`` hits, no offset) and how to merge."""
        limit, offset = search.get("limit", 10), search.get("offset", 0)
        limit = 10 if limit is None else limit
        offset = 0 if offset is None else offset
        post = {"by_score": has_query, "limit": 10, "offset": 0, "exclude": None}
        if legacy:
            vector = search.get("vector")
            using = vector.get("name") if isinstance(vector, dict) else ""
        else:
            using = search.get("using") or ""
        if isinstance(using, str) and has_query:
            shape = self.shape(name)
            shape.check_sparse(using)
            post["ascending"] = shape.metric_of(using) == "l2"
        if not (_is_int(limit) and _is_int(offset) and limit >= 1 and offset >= 0):
            return search, post  # the nodes name the problem
        node_search = dict(search)
        if has_query and "query" in search and isinstance(using, str):
            node_search["query"], post["exclude"] = await self._resolve_query(
                partial, name, search["query"], using
            )
        extra = 1 if post["exclude"] is not None else 0
        node_search["limit"] = limit + offset + extra
        node_search["offset"] = 0
        post.update(limit=limit, offset=offset)
        return node_search, post

    def _merge(self, lists: list[list[dict[str, Any]]], post: dict[str, Any]) -> Any:
        if not post["by_score"]:
            return merge_by_id(lists, offset=post["offset"], limit=post["limit"])
        return merge_hits(
            lists,
            ascending=post.get("ascending", False),
            offset=post["offset"],
            limit=post["limit"],
            exclude=post["exclude"],
        )

    async def _search_one(
        self, partial: bool, name: str, body: dict[str, Any], legacy: bool
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """One query (or legacy search) answered by merging the nodes' top hits."""
        has_query = legacy or body.get("query") is not None
        node_body, post = await self._prepare(partial, name, body, has_query, legacy)
        path = f"/collections/{name}/points/{'search' if legacy else 'query'}"
        answers, missing = await self._read(name, "POST", path, _dumps(node_body), partial)
        return self._merge([a if legacy else a["points"] for a in answers], post), missing

    async def _run_tree(
        self, partial: bool, name: str, query: Any
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """A query with prefetch or MMR, run here over merged fan-outs (``vdb.cluster.remote``)."""
        from vdb.http import hybrid
        from vdb.http.qdrant import check_limit

        check_limit(query, MAX_LIMIT)

        def read(path: str, body: bytes) -> Awaitable[tuple[list[Any], list[int]]]:
            return self._read(name, "POST", path, body, partial)

        remote = RemoteCollection(
            self.meta(name), name, read, asyncio.get_running_loop(), self.timeout_s
        )
        points = await asyncio.to_thread(hybrid.run, remote, query)
        return points, sorted(remote.missing)

    async def _points(
        self, name: str, body: dict[str, Any], legacy: bool, partial: bool
    ) -> tuple[Any, list[int]]:
        """The result of one ``query`` (or legacy ``search``) and the partitions left out."""
        if not legacy and _runs_here(body):
            from vdb.http import query_api as qa

            self.meta(name)  # an unknown collection is a 404 before the body's errors
            points, missing = await self._run_tree(partial, name, qa.parse_query_request(body))
        else:
            points, missing = await self._search_one(partial, name, body, legacy)
        return (points if legacy else {"points": points}), missing

    async def _search(self, request: Request, route: str, legacy: bool) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        body = await self._body(request, required=legacy)
        partial = _flag(request.query_params.get("partial"))
        result, missing = await self._points(name, body, legacy, partial)
        return self._answer(route, result, started, missing)

    async def query_points(self, request: Request) -> Response:
        return await self._search(request, "query", legacy=False)

    async def search_points(self, request: Request) -> Response:
        return await self._search(request, "search", legacy=True)

    async def _lean(self, scope: Any, receive: Any, send: Any, name: str, legacy: bool) -> None:
        """``query`` / ``search`` as raw ASGI: the same answer as ``_search`` without
        Starlette's middleware, routing, request and response objects (the hot path)."""
        started = time.perf_counter()
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        content_type = None
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
                break
        query_string = scope.get("query_string") or b""
        partial = b"partial=" in query_string and _flag(
            parse_qs(query_string.decode("latin-1")).get("partial", [None])[-1]
        )
        try:
            body = parse_body(b"".join(chunks), content_type, required=legacy) or {}
            result, missing = await self._points(name, body, legacy, partial)
        except Exception as exc:
            response = await self._failure(scope["method"], scope["path"], exc)
            await response(scope, receive, send)
            return
        route = "search" if legacy else "query"
        content = _dumps(envelope(result, started))
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(content)),
        ]
        if missing:
            headers.append((b"x-vdb-missing-partitions", ",".join(map(str, missing)).encode()))
        count, latency = self.metrics.route(route)
        count.inc()
        latency.observe(time.perf_counter() - started)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _search_batch(self, request: Request, route: str, legacy: bool) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        body = await self._body(request, required=True)
        searches = body.get("searches")
        if not isinstance(searches, list) or not all(isinstance(s, dict) for s in searches):
            node_bodies, posts = body, None  # the nodes name the problem
        elif not legacy and any(_runs_here(s) for s in searches):
            return await self._query_batch_here(request, route, name, body, started)
        else:
            partial = _flag(request.query_params.get("partial"))
            prepared = [
                await self._prepare(partial, name, s, legacy or s.get("query") is not None, legacy)
                for s in searches
            ]
            node_bodies = {**body, "searches": [nb for nb, _ in prepared]}
            posts = [post for _, post in prepared]
        path = f"/collections/{name}/points/{'search' if legacy else 'query'}/batch"
        answers, missing = await self.read(request, name, "POST", path, _dumps(node_bodies))
        out = []
        for i, post in enumerate(posts or []):
            points = self._merge([a[i] if legacy else a[i]["points"] for a in answers], post)
            out.append(points if legacy else {"points": points})
        return self._answer(route, out, started, missing)

    async def _query_batch_here(
        self, request: Request, route: str, name: str, body: dict[str, Any], started: float
    ) -> Response:
        """A batch with a prefetch or MMR query: each search on its own, concurrently."""
        from vdb.http import query_api as qa

        self.meta(name)
        parsed = qa.parse_query_batch(body)  # every search checked first, as on a node
        partial = _flag(request.query_params.get("partial"))
        runs = [
            self._run_tree(partial, name, query)
            if _runs_here(raw)
            else self._search_one(partial, name, raw, legacy=False)
            for raw, query in zip(body["searches"], parsed, strict=True)
        ]
        done = await asyncio.gather(*runs)
        missing = sorted({m for _, ms in done for m in ms})
        return self._answer(route, [{"points": points} for points, _ in done], started, missing)

    async def query_batch(self, request: Request) -> Response:
        return await self._search_batch(request, "query_batch", legacy=False)

    async def search_batch(self, request: Request) -> Response:
        return await self._search_batch(request, "search_batch", legacy=True)

    async def retrieve_points(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        raw = await request.body()
        body = await self._body(request, required=True)
        answers, missing = await self.read(
            request, name, "POST", f"/collections/{name}/points", _dumps(body) if body else raw
        )
        found: dict[tuple[type, Any], dict[str, Any]] = {}
        for records in answers:
            for record in records:
                found.setdefault((type(record["id"]), record["id"]), record)
        order = body.get("ids") if isinstance(body.get("ids"), list) else []
        out, seen = [], set()
        for point_id in order:
            key = (type(point_id), point_id)
            if key in found and key not in seen:
                seen.add(key)
                out.append(found[key])
        out.extend(r for k, r in found.items() if k not in seen)
        return self._answer("retrieve", out, started, missing)

    async def get_point(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        raw = request.path_params["id"]
        path = f"/collections/{name}/points/{raw}"
        point_id = int(raw) if raw.isdigit() else raw
        partial = _flag(request.query_params.get("partial"))

        async def call(node: NodeView, parts: list[int], timeout: float) -> Any:
            params = {"vdb_partitions": ",".join(str(x) for x in parts)}
            try:
                return await self.call_node(node, "GET", path, params=params, timeout=timeout)
            except Forwarded as exc:
                if exc.status == 404:
                    return None
                raise

        answers, missing = await self.fan_out(name, call, partial=partial)
        for _, record in answers:
            if record is not None:
                return self._answer("point", record, started, missing)
        raise PointNotFound(f"Not found: No point with id {point_id} found")

    async def scroll_points(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        body = await self._body(request, required=False)
        limit = body.get("limit", 10)
        limit = 10 if limit is None else limit
        answers, missing = await self.read(
            request, name, "POST", f"/collections/{name}/points/scroll", _dumps(body)
        )
        if not _is_int(limit):
            limit = 10
        points, next_offset = merge_scroll(
            ((a["points"], a.get("next_page_offset")) for a in answers), limit=limit
        )
        result = {"points": points, "next_page_offset": next_offset}
        return self._answer("scroll", result, started, missing)

    async def count_points(self, request: Request) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        body = await self._body(request, required=False)
        answers, missing = await self.read(
            request, name, "POST", f"/collections/{name}/points/count", _dumps(body)
        )
        total = sum(int(a["count"]) for a in answers)
        return self._answer("count", {"count": total}, started, missing)

    # -- writes -----------------------------------------------------------------------

    async def upsert_points(self, request: Request) -> Response:
        from vdb.http.qdrant import has_named_vectors, parse_named_upsert, parse_upsert

        started = time.perf_counter()
        wait = p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]
        body = await self._body(request, required=True)
        meta = self.meta(name)
        shape = self.shape(name)
        if shape.named or has_named_vectors(body):
            # the node's parser over the heartbeat's vectors: the same checks, the same errors
            ids, columns, payloads = parse_named_upsert(body, shape)
            for vname, column in columns.items():
                rows = [v for v in column if v is not None]
                if vname in shape.vectors and rows:
                    where = "vectors" if vname == "" else f"vectors[{vname!r}]"
                    _check_vectors(np.stack(rows), shape.metric_of(vname), where)
            if shape.named:
                vectors: Any = [
                    {vname: column[i] for vname, column in columns.items() if column[i] is not None}
                    for i in range(len(ids))
                ]
            else:
                vectors = columns[""]
        else:
            ids, vectors, payloads = parse_upsert(body, int(meta["dim"]))
            _check_vectors(vectors, shape.metric)
        records = [
            (
                point_key(point_id),
                _dumps(
                    {
                        "id": point_id,
                        "vector": vectors[i],
                        "payload": None if payloads is None else payloads[i],
                    }
                ),
            )
            for i, point_id in enumerate(ids)
        ]
        return await self._write(request, name, meta, records, wait, started)

    async def delete_points(self, request: Request) -> Response:
        from vdb.http.qdrant import parse_selector

        started = time.perf_counter()
        wait = p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]
        body = await self._body(request, required=True)
        meta = self.meta(name)
        ids, flt = parse_selector(body, "PointsSelector")
        if ids is None:
            ids = await self._ids_matching(request, name, flt)
        records = [(point_key(point_id), None) for point_id in ids]
        return await self._write(request, name, meta, records, wait, started)

    async def _ids_matching(self, request: Request, name: str, flt: Any) -> list[Any]:
        """Every id matching ``flt`` (a delete by filter becomes tombstones of these)."""
        ids: list[Any] = []
        offset = None
        while True:
            body = {"filter": flt, "limit": 1000, "with_payload": False, "with_vector": False}
            if offset is not None:
                body["offset"] = offset
            answers, _ = await self.read(
                request, name, "POST", f"/collections/{name}/points/scroll", _dumps(body)
            )
            points, offset = merge_scroll(
                ((a["points"], a.get("next_page_offset")) for a in answers), limit=1000
            )
            ids.extend(point["id"] for point in points)
            if offset is None:
                return ids

    async def _write(
        self,
        request: Request,
        name: str,
        meta: dict[str, Any],
        records: list[tuple[bytes, bytes | None]],
        wait: bool,
        started: float,
    ) -> Response:
        topic = str(meta["topic"])
        written = await asyncio.to_thread(self._produce, topic, records)
        if wait and written:
            await self.wait_applied(name, written)
        result = {"operation_id": 0, "status": "completed" if wait else "acknowledged"}
        return self._answer("write", result, started)

    def _produce(self, topic: str, records: list[tuple[bytes, bytes | None]]) -> dict[int, int]:
        """Send and wait for the log's acknowledgement; the last offset per partition."""
        producer = self.producer()
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush(timeout=30)
        written: dict[int, int] = {}
        for future in futures:
            try:
                meta = future.get(timeout=30)
            except Exception as exc:
                raise Unavailable(
                    f"Service unavailable: the topic did not take the write: {exc}"
                ) from None
            if meta.offset > written.get(meta.partition, -1):
                written[meta.partition] = meta.offset
        self.metrics.produced.inc(len(records))
        return written

    async def wait_applied(self, name: str, written: dict[int, int]) -> None:
        """Return once each written partition's offset is applied on its replicas (see above)."""
        deadline = time.monotonic() + self.wait_timeout_s
        waits = [self._wait_partition(name, part, off, deadline) for part, off in written.items()]
        await asyncio.gather(*waits)

    async def _wait_partition(
        self, name: str, partition: int, offset: int, deadline: float
    ) -> None:
        path = "/cluster/v1/applied"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"Service unavailable: the write is in the topic but partition {partition} of "
                    f"`{name}` has no live replica that applied offset {offset} yet"
                )
            replicas = self.members.replicas(name, include_catching_up=True).get(partition, [])
            if not replicas:
                await asyncio.sleep(min(0.1, remaining))
                continue
            timeout_ms = int(min(remaining, 5.0) * 1000)
            params = {
                "collection": name,
                "partition": str(partition),
                "offset": str(offset),
                "timeout_ms": str(timeout_ms),
            }

            async def ask(
                node: NodeView, params: dict[str, str] = params, wait_s: float = timeout_ms / 1000
            ) -> bool:
                try:
                    result = await self.call_node(
                        node, "GET", path, params=params, timeout=wait_s + 1.0
                    )
                except NodeFailed:
                    self.members.mark_failed(node.node_id)
                    return False
                except Forwarded:
                    return False
                return bool(result.get("reached"))

            tasks = [asyncio.ensure_future(ask(r.node)) for r in replicas]
            reached = False
            pending = set(tasks)
            while pending and not reached:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                reached = any(t.result() for t in done)
            if reached and pending:
                await asyncio.wait(pending, timeout=self.settle_s)
            for t in pending:
                t.cancel()
            if reached:
                return


_LEAN_ROUTES = {"points/query": False, "points/search": True}
"""The hot routes served as raw ASGI (``Router._lean``): tail of the path -> legacy search."""


async def _all(calls: Iterable[Awaitable[Any]]) -> list[Any]:
    """``gather(*calls, return_exceptions=True)`` with one task fewer: the last call runs in
    this task (a query to one node makes no task at all)."""
    calls = list(calls)
    tasks = [asyncio.ensure_future(c) for c in calls[:-1]]
    try:
        try:
            last = await calls[-1]
        except Exception as exc:
            last = exc
        outcomes = []
        for task in tasks:
            try:
                outcomes.append(await task)
            except Exception as exc:
                outcomes.append(exc)
    finally:
        for task in tasks:
            task.cancel()
    outcomes.append(last)
    return outcomes


def _runs_here(body: Any) -> bool:
    """A query the nodes' top hits cannot answer merged: prefetch (fusion, re-scoring) or MMR."""
    if not isinstance(body, dict):
        return False
    query = body.get("query")
    return bool(body.get("prefetch")) or (isinstance(query, dict) and query.get("mmr") is not None)


_PARTITIONS_QUERIES: dict[tuple[int, ...], str] = {}


def _partitions_query(parts: list[int]) -> str:
    """``vdb_partitions=0%2C2`` for ``[0, 2]`` (made once per set of partitions)."""
    key = tuple(parts)
    found = _PARTITIONS_QUERIES.get(key)
    if found is None:
        found = urlencode({"vdb_partitions": ",".join(map(str, parts))})
        if len(_PARTITIONS_QUERIES) < 4096:
            _PARTITIONS_QUERIES[key] = found
    return found


def _flag(raw: str | None) -> bool:
    return raw is not None and raw.lower() in ("1", "true", "yes")


def _check_vectors(vectors: np.ndarray, metric: str, what: str = "vectors") -> None:
    """What the node's core would refuse (ingest would make it a dead letter): refuse it here."""
    from vdb.collection import MAX_SQUARED_NORM

    if len(vectors) == 0:
        return
    squared = np.einsum("ij,ij->i", vectors.astype(np.float64), vectors.astype(np.float64))
    if metric == "cosine":
        bad = np.flatnonzero(squared == 0)
        if bad.size:
            raise InvalidInput(
                f"{what}: vector {int(bad[0])} is all zeros (cosine needs a direction)"
            )
    else:
        bad = np.flatnonzero(squared > MAX_SQUARED_NORM)
        if bad.size:
            raise InvalidInput(
                f"{what}: vector {int(bad[0])} is too large "
                f"(squared norm above {MAX_SQUARED_NORM:.3g})"
            )
