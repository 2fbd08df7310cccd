"""The Qdrant-compatible REST routes.

Each endpoint parses its request (``vdb.http.parsing``), calls the core in
the thread pool (searches and reads share one limiter, writes another; the
event loop never blocks on the database), and shapes the answer exactly as
Qdrant does: ``{"result": ..., "status": "ok", "time": ...}``. Errors are
raised as ``vdb.errors`` types and turned into Qdrant's error body by the
handlers in ``vdb.http.app``.

Distances map as Cosine → ``cosine``, Euclid → ``l2`` (vdb scores squared
distance; Qdrant answers the distance, so the square root is taken here),
Dot → ``ip``.

Server-side inference: wherever a vector is accepted in an upsert or a
``query`` (plain or ``nearest``), a document ``{"text": ..., "model": ...}``
(what qdrant-client sends for ``models.Document`` with
``cloud_inference=True``) is embedded with the named model (``vdb.embed``),
one batched call per request and model, in the worker thread that runs the
request, never on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import itertools
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from vdb import telemetry
from vdb.embed.documents import Document, embed_documents, parse_document
from vdb.errors import CollectionNotFound, InvalidInput, NotFound, PointNotFound
from vdb.http import hybrid
from vdb.http import parsing as p
from vdb.http import query_api as qa
from vdb.http.codec import EncodedResponse, encode, envelope, parse_body, wants_msgpack

log = logging.getLogger(__name__)

PEER_ID = 0
QDRANT_DEFAULT_M = 16
QDRANT_DEFAULT_EF_CONSTRUCT = 100
_SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.snapshot$")
_QUERY_TYPES = (
    "nearest",
    "recommend",
    "discover",
    "context",
    "order_by",
    "fusion",
    "rrf",
    "formula",
    "sample",
    "relevance_feedback",
)
_SHARD = ("shard_key",)

PARTITIONS_PARAM = "vdb_partitions"
"""Node-internal query parameter (sent by the cluster router, never in a Qdrant body):
``?vdb_partitions=0,2`` restricts a search, count, scroll or retrieve to points whose
source partition is listed (an empty value: none)."""


def partitions_param(request: Request) -> tuple[int, ...] | None:
    """The ``vdb_partitions`` restriction of a request; ``None`` when absent."""
    raw = request.query_params.get(PARTITIONS_PARAM)
    if raw is None:
        return None
    out = []
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) > 2**31 - 1:
            raise InvalidInput(
                f"Bad request: `{PARTITIONS_PARAM}` must be comma-separated partition numbers, "
                f"got {raw[:100]!r}"
            )
        out.append(int(item))
    return tuple(sorted(set(out)))


def _in_partitions(col: Any, records: list[Any], partitions: tuple[int, ...] | None) -> list[Any]:
    if partitions is None:
        return records
    wanted = set(partitions)
    out = []
    for r in records:
        try:
            if col.source_partition(r.id) in wanted:
                out.append(r)
        except NotFound:
            continue
    return out


class CollectionView:
    """What a request needs to know of a collection: the handle, its dimension and metric."""

    __slots__ = ("col", "dim", "metric")

    def __init__(self, col: Any, dim: int, metric: str):
        self.col = col
        self.dim = dim
        self.metric = metric


class QdrantApi:
    """The routes; holds only references to the database and the settings."""

    def __init__(self, db: Any, config: Any):
        self.db = db
        self.config = config
        self.read_limiter = anyio.CapacityLimiter(config.search_concurrency)
        self.write_limiter = anyio.CapacityLimiter(config.write_threads)
        self._operation_ids = itertools.count(1)
        self._pending: dict[tuple, list[tuple[Query, asyncio.Future]]] = {}

    # -- plumbing -----------------------------------------------------------

    async def run(
        self,
        request: Request,
        job: Callable[[Any], Any],
        *,
        write: bool = False,
        body: bool | None = None,
        status_code: int = 200,
    ) -> Response:
        """Run ``job(body)`` in the thread pool and answer with its result in the envelope.

        The body is read here but decoded, validated, executed and encoded in
        the worker thread, so the event loop never spends time on a big
        request. ``body``: True = required, False = optional (``{}`` when
        empty), None = no body expected.
        """
        started = time.perf_counter()
        raw = await request.body() if body is not None else b""
        content_type = request.headers.get("content-type")
        msgpack_out = wants_msgpack(request)

        def work() -> tuple[bytes, str]:
            decoded = None
            if body is not None:
                with telemetry.span("vdb.http.parse"):
                    decoded = parse_body(raw, content_type, required=body)
                if decoded is None:
                    decoded = {}
            result = job(decoded)
            with telemetry.span("vdb.http.encode"):
                return encode(envelope(result, started), msgpack_out=msgpack_out)

        limiter = self.write_limiter if write else self.read_limiter
        content, media_type = await anyio.to_thread.run_sync(work, limiter=limiter)
        return Response(content, status_code=status_code, media_type=media_type)

    async def run_search(
        self,
        request: Request,
        name: str,
        parse: Callable[[dict[str, Any]], Query],
        shape: Callable[[list[dict[str, Any]]], Any],
        *,
        body_required: bool,
    ) -> Response:
        """One search: run on the event loop when it is cheap, else in the thread pool.

        Handing a request to a worker thread and back costs more than a small
        graph search itself, so a small body is decoded and parsed inline and a
        query that ``is_light`` (no filter, not exact, modest ``limit`` and
        ``ef``) runs inline too. Anything else, and every big body, goes to the
        thread pool so the event loop is never held up for long. Errors and
        answers are the same either way. ``shape`` wraps the hits for the
        route's result.
        """

        def execute(query: Query) -> Any:
            with telemetry.span("vdb.search", search_attributes(name, query)) as span:
                points = run_query(self.view(name), query)
                span.set_attribute("db.response.returned_rows", len(points))
            return shape(points)

        def decode_query() -> Query:
            with telemetry.span("vdb.http.parse"):
                decoded = parse_body(raw, content_type, required=body_required)
                return parse({} if decoded is None else decoded)

        def respond(result: Any) -> tuple[bytes, str]:
            with telemetry.span("vdb.http.encode"):
                return encode(envelope(result, started), msgpack_out=msgpack_out)

        started = time.perf_counter()
        raw = await request.body()
        content_type = request.headers.get("content-type")
        msgpack_out = wants_msgpack(request)
        if len(raw) <= INLINE_BODY_MAX:
            query = decode_query()
            if is_light(query):
                with telemetry.span("vdb.search", search_attributes(name, query)) as span:
                    points = await self.search_together(name, query)
                    span.set_attribute("db.response.returned_rows", len(points))
                content, media_type = respond(shape(points))
                return Response(content, media_type=media_type)

            def work() -> tuple[bytes, str]:
                return respond(execute(query))

        else:

            def work() -> tuple[bytes, str]:
                return respond(execute(decode_query()))

        content, media_type = await anyio.to_thread.run_sync(work, limiter=self.read_limiter)
        return Response(content, media_type=media_type)

    async def search_together(self, name: str, query: Query) -> list[dict[str, Any]]:
        """Run a light query on the event loop, batched with the like queries that are ready.

        Queries that reach this point in the same turn of the event loop (the
        requests that arrived together) and agree on collection, ``k``,
        ``ef`` and what to return share one ``Collection.search`` call, which
        pays the per-call cost once. Each query gets exactly the hits it would
        get alone; if the shared call fails, each runs alone for its own answer.
        """
        view = self.view(name)
        check_dim(view, query)
        key = (name, id(view.col), query.limit + query.offset, query.ef)
        key += (query.fetch_payload, query.with_vector, query.partitions)
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        group = self._pending.get(key)
        if group is None:
            group = self._pending[key] = []
            loop.call_soon(self._search_group, key, view)
        group.append((query, future))
        return await future

    def _search_group(self, key: tuple, view: CollectionView) -> None:
        group = self._pending.pop(key, [])
        rows = None
        if len(group) > 1:
            first = group[0][0]
            try:
                rows = view.col.search(
                    np.stack([q.vector for q, _ in group]),
                    k=first.limit + first.offset,
                    ef=first.ef,
                    with_payload=first.fetch_payload,
                    with_vectors=first.with_vector,
                    partitions=first.partitions,
                )
            except Exception:  # each query alone below gets its own answer or error
                rows = None
        for i, (query, future) in enumerate(group):
            if future.done():
                continue  # the request went away
            try:
                if rows is None:
                    future.set_result(run_query(view, query))
                else:
                    future.set_result(_shape_hits(view, query, rows[i]))
            except Exception as exc:
                future.set_exception(exc)

    def update_result(self) -> dict[str, Any]:
        # vdb applies every write before answering, so "completed" is true even for wait=false
        return {"operation_id": next(self._operation_ids), "status": "completed"}

    def view(self, name: str) -> CollectionView:
        """The collection ``name`` (404 in Qdrant's words when missing). Runs in a worker thread."""
        try:
            col = self.db.collection(name)
        except CollectionNotFound:
            raise CollectionNotFound(f"Not found: Collection `{name}` doesn't exist!") from None
        return CollectionView(col, int(col.dim), str(col.metric))

    # -- service ------------------------------------------------------------

    async def root(self, request: Request) -> Response:
        from vdb.version import __version__

        return EncodedResponse(
            {
                "title": "qdrant - vector search engine",
                "version": self.config.qdrant_version,
                "vdb_version": __version__,
            }
        )

    # -- collections --------------------------------------------------------

    async def list_collections(self, request: Request) -> Response:
        def job(_: Any) -> dict[str, Any]:
            return {"collections": [{"name": n} for n in self.db.list_collections()]}

        return await self.run(request, job)

    async def collection_exists(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self.run(request, lambda _: {"exists": bool(self.db.has_collection(name))})

    async def get_collection(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self.run(request, lambda _: collection_info(self.view(name).col.info()))

    async def create_collection(self, request: Request) -> Response:
        name = request.path_params["name"]
        check_collection_name(name)

        def job(body: dict[str, Any]) -> bool:
            if is_named_create(body):
                self.db.create_collection(name, **parse_named_create(body))
            else:
                if body.get("sparse_vectors") == {}:  # "no sparse vectors", as in Qdrant
                    body = {k: v for k, v in body.items() if k != "sparse_vectors"}
                self.db.create_collection(name, **parse_create_collection(body))
            return True

        return await self.run(request, job, write=True, body=True)

    async def update_collection(self, request: Request) -> Response:
        """``PATCH /collections/{name}`` (``update_collection``): metadata merges; the rest
        is accepted only where vdb has the same setting (or the value does not change)."""
        name = request.path_params["name"]

        def job(body: dict[str, Any]) -> bool:
            col = self.view(name).col
            update = parse_update_collection(body, col.info())
            if update:
                col.update(**update)
            return True

        return await self.run(request, job, write=True, body=False)

    async def delete_collection(self, request: Request) -> Response:
        name = request.path_params["name"]
        return await self.run(request, lambda _: bool(self.db.drop_collection(name)), write=True)

    # -- points: writes -----------------------------------------------------

    async def upsert_points(self, request: Request) -> Response:
        p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]

        def job(body: dict[str, Any]) -> dict[str, Any]:
            view = self.view(name)
            if view.col.config.get("named") or has_named_vectors(body):
                ids, columns, payloads = parse_named_upsert(body, view.col)
                if ids:
                    view.col.upsert(ids, columns, payloads)
                return self.update_result()
            ids, vectors, payloads = parse_upsert(body, view.dim)
            if ids:
                view.col.upsert(ids, vectors, payloads)
            return self.update_result()

        return await self.run(request, job, write=True, body=True)

    async def update_vectors(self, request: Request) -> Response:
        """``PUT /collections/{name}/points/vectors``: replace some named vectors of points."""
        p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]

        def job(body: dict[str, Any]) -> dict[str, Any]:
            col = self.view(name).col
            points = qa.parse_update_vectors(body, hybrid.vectors_config(col))
            if points:
                ids = [pv.id for pv in points]
                columns: dict[str, list[Any]] = {}
                for j, pv in enumerate(points):
                    for vname, vector in pv.vectors.items():
                        columns.setdefault(vname, [None] * len(ids))[j] = _core_vector(vector)
                col.update_vectors(ids, columns)
            return self.update_result()

        return await self.run(request, job, write=True, body=True)

    async def delete_vectors(self, request: Request) -> Response:
        """``POST /collections/{name}/points/vectors/delete``: drop named vectors of points."""
        p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]

        def job(body: dict[str, Any]) -> dict[str, Any]:
            col = self.view(name).col
            spec = qa.parse_delete_vectors(body, hybrid.vectors_config(col))
            if spec.ids is not None:
                if spec.ids:
                    col.delete_vectors(spec.ids, spec.names)
            else:
                col.delete_vectors(None, spec.names, filter=spec.filter)
            return self.update_result()

        return await self.run(request, job, write=True, body=True)

    async def delete_points(self, request: Request) -> Response:
        p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]

        def job(body: dict[str, Any]) -> dict[str, Any]:
            ids, flt = parse_selector(body, "PointsSelector")
            col = self.view(name).col
            if ids is not None:
                if ids:
                    col.delete(ids)
            else:
                col.delete(filter=flt)
            return self.update_result()

        return await self.run(request, job, write=True, body=True)

    async def set_payload(self, request: Request) -> Response:
        return await self._payload_op(request, "set")

    async def overwrite_payload(self, request: Request) -> Response:
        return await self._payload_op(request, "overwrite")

    async def delete_payload(self, request: Request) -> Response:
        return await self._payload_op(request, "delete")

    async def clear_payload(self, request: Request) -> Response:
        return await self._payload_op(request, "clear")

    async def _payload_op(self, request: Request, op: str) -> Response:
        p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]

        def job(body: dict[str, Any]) -> dict[str, Any]:
            apply_payload_op(self.view(name).col, op, body)
            return self.update_result()

        return await self.run(request, job, write=True, body=True)

    # -- points: reads ------------------------------------------------------

    async def retrieve_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        partitions = partitions_param(request)

        def job(body: dict[str, Any]) -> list[dict[str, Any]]:
            p.check_fields(body, "PointRequest", ("ids", "with_payload", "with_vector"), _SHARD)
            if "ids" not in body:
                raise InvalidInput("Format error in JSON body: missing field `ids`")
            ids = p.parse_ids(body["ids"], "ids")
            fetch_payload, selector = p.parse_with_payload(
                body.get("with_payload"), "with_payload", True
            )
            view = self.view(name)
            with_vector = vector_spec(view.col, body.get("with_vector"))
            records = view.col.get(ids, with_payload=fetch_payload, with_vectors=with_vector)
            records = _in_partitions(view.col, records, partitions)
            return [record_out(r, fetch_payload, selector, with_vector) for r in records]

        return await self.run(request, job, body=True)

    async def get_point(self, request: Request) -> Response:
        raw = request.path_params["id"]
        point_id = p.parse_id(int(raw) if raw.isdigit() else raw, "id")
        name = request.path_params["name"]
        partitions = partitions_param(request)

        def job(_: Any) -> dict[str, Any]:
            col = self.view(name).col
            records = col.get([point_id], with_payload=True, with_vectors=True)
            records = _in_partitions(col, records, partitions)
            if not records:
                raise PointNotFound(f"Not found: No point with id {point_id} found")
            return record_out(records[0], True, None, True)

        return await self.run(request, job)

    async def scroll_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        max_limit = self.config.max_limit
        partitions = partitions_param(request)

        def job(body: dict[str, Any]) -> dict[str, Any]:
            p.check_fields(
                body,
                "ScrollRequest",
                ("offset", "limit", "filter", "with_payload", "with_vector"),
                (*_SHARD, "order_by"),
            )
            offset = None if body.get("offset") is None else p.parse_id(body["offset"], "offset")
            limit = p.parse_limit(body.get("limit"), "limit", 10, max_limit)
            flt = p.parse_filter(body.get("filter"))
            fetch_payload, selector = p.parse_with_payload(
                body.get("with_payload"), "with_payload", True
            )
            with_vector = vector_spec(self.view(name).col, body.get("with_vector"))
            records, next_offset = self.view(name).col.scroll(
                filter=flt,
                limit=limit,
                offset=offset,
                with_payload=fetch_payload,
                with_vectors=with_vector,
                partitions=partitions,
            )
            return {
                "points": [record_out(r, fetch_payload, selector, with_vector) for r in records],
                "next_page_offset": None if next_offset is None else p.id_out(next_offset),
            }

        return await self.run(request, job, body=False)

    async def count_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        partitions = partitions_param(request)

        def job(body: dict[str, Any]) -> dict[str, Any]:
            p.check_fields(body, "CountRequest", ("filter", "exact"), _SHARD)
            flt = p.parse_filter(body.get("filter"))
            if body.get("exact") is not None:
                p.parse_bool(body["exact"], "exact")
            return {"count": int(self.view(name).col.count(filter=flt, partitions=partitions))}

        return await self.run(request, job, body=False)

    # -- search -------------------------------------------------------------

    async def query_points(self, request: Request) -> Response:
        name = request.path_params["name"]
        max_limit = self.config.max_limit
        partitions = partitions_param(request)

        def parse(body: dict[str, Any]) -> Query:
            query = parse_query_request(body, "QueryRequest", max_limit)
            query.partitions = partitions
            return query

        def shape(points: list[dict[str, Any]]) -> dict[str, Any]:
            return {"points": points}

        if await self.general_query(request, name):

            def job(body: dict[str, Any]) -> dict[str, Any]:
                request_ = qa.parse_query_request(body)
                check_limit(request_, max_limit)
                return {"points": hybrid.run(self.view(name).col, request_, partitions)}

            return await self.run(request, job, body=False)
        return await self.run_search(request, name, parse, shape, body_required=False)

    async def general_query(self, request: Request, name: str) -> bool:
        """Whether a query takes the general path (``vdb.http.hybrid``): the collection has
        named or sparse vectors, or the body uses prefetch, fusion, MMR or a sparse vector.
        Everything else keeps the fast single-vector path."""
        try:
            if self.db.collection(name).config.get("named"):
                return True
        except CollectionNotFound:
            return False  # the usual path answers the 404
        raw = await request.body()
        return any(marker in raw for marker in _GENERAL_MARKERS)

    async def query_batch(self, request: Request) -> Response:
        name = request.path_params["name"]
        partitions = partitions_param(request)

        general = await self.general_query(request, name)

        def job(body: dict[str, Any]) -> list[dict[str, Any]]:
            searches = parse_batch(body, "QueryRequestBatch", self.config.max_batch)
            if general:
                col = self.view(name).col
                out = []
                for request_ in qa.parse_query_batch(body):
                    check_limit(request_, self.config.max_limit)
                    out.append({"points": hybrid.run(col, request_, partitions)})
                return out
            queries = [
                parse_query_request(s, f"searches[{i}]", self.config.max_limit)
                for i, s in enumerate(searches)
            ]
            for query in queries:
                query.partitions = partitions
            return [{"points": points} for points in run_queries(self.view(name), queries)]

        return await self.run(request, job, body=True)

    async def search_points(self, request: Request) -> Response:
        """Legacy ``/points/search`` (removed from Qdrant 1.19, still used by old clients)."""
        name = request.path_params["name"]

        max_limit = self.config.max_limit
        partitions = partitions_param(request)

        def parse(body: dict[str, Any]) -> Query:
            query = parse_search_request(body, "SearchRequest", max_limit)
            query.partitions = partitions
            return query

        if await self.general_search(request, name):

            def job(body: dict[str, Any]) -> list[dict[str, Any]]:
                request_ = hybrid.from_search_request(body, "SearchRequest")
                check_limit(request_, max_limit)
                return hybrid.run(self.view(name).col, request_, partitions)

            return await self.run(request, job, body=True)
        return await self.run_search(request, name, parse, list, body_required=True)

    async def general_search(self, request: Request, name: str) -> bool:
        """A legacy search on the general path: named collection or a named vector."""
        try:
            if self.db.collection(name).config.get("named"):
                return True
        except CollectionNotFound:
            return False
        return b'"name"' in await request.body()

    async def search_batch(self, request: Request) -> Response:
        name = request.path_params["name"]
        partitions = partitions_param(request)

        general = await self.general_search(request, name)

        def job(body: dict[str, Any]) -> list[list[dict[str, Any]]]:
            searches = parse_batch(body, "SearchRequestBatch", self.config.max_batch)
            if general:
                col = self.view(name).col
                out = []
                for i, s in enumerate(searches):
                    request_ = hybrid.from_search_request(
                        p.check_object(s, f"searches[{i}]"), f"searches[{i}]"
                    )
                    check_limit(request_, self.config.max_limit)
                    out.append(hybrid.run(col, request_, partitions))
                return out
            queries = [
                parse_search_request(s, f"searches[{i}]", self.config.max_limit)
                for i, s in enumerate(searches)
            ]
            for query in queries:
                query.partitions = partitions
            return run_queries(self.view(name), queries)

        return await self.run(request, job, body=True)

    # -- payload indexes ----------------------------------------------------

    async def create_field_index(self, request: Request) -> Response:
        """``PUT /collections/{name}/index``: a durable explicit payload index."""
        p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]

        def job(body: dict[str, Any]) -> dict[str, Any]:
            p.check_fields(body, "CreateFieldIndex", ("field_name", "field_schema"))
            if "field_name" not in body:
                raise InvalidInput("Format error in JSON body: missing field `field_name`")
            field = p.parse_str(body["field_name"], "field_name")
            if not field:
                raise InvalidInput("`field_name` must not be empty")
            col = self.view(name).col
            schema = parse_field_schema(body.get("field_schema"), field, col)
            col.create_payload_index(field, schema)
            return self.update_result()

        return await self.run(request, job, write=True, body=True)

    async def delete_field_index(self, request: Request) -> Response:
        """``DELETE /collections/{name}/index/{field}``: forget an explicit payload index."""
        p.parse_wait(request.query_params.get("wait"))
        name = request.path_params["name"]
        field = request.path_params["field"]

        def job(_: Any) -> dict[str, Any]:
            self.view(name).col.delete_payload_index(field)
            return self.update_result()

        return await self.run(request, job, write=True)

    # -- snapshots ----------------------------------------------------------

    def _snapshot_dir(self, name: str | None) -> Path:
        base = self.config.snapshot_path
        return base / "full" if name is None else base / "collections" / name

    async def create_snapshot(self, request: Request) -> Response:
        name = request.path_params.get("name")
        wait = p.parse_wait(request.query_params.get("wait"))

        def job(_: Any) -> dict[str, Any]:
            if name is not None:
                self.view(name)
            folder = self._snapshot_dir(name)
            folder.mkdir(parents=True, exist_ok=True)
            stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d-%H-%M-%S")
            prefix = f"{name}-{PEER_ID}" if name is not None else "full-snapshot"
            path = folder / f"{prefix}-{stamp}.snapshot"
            n = 1
            while path.exists():
                path = folder / f"{prefix}-{stamp}-{n}.snapshot"
                n += 1
            partial = path.with_name(path.name + ".partial")
            self.db.snapshot(str(partial))
            checksum = sha256_file(partial)
            partial.rename(path)
            path.with_name(path.name + ".checksum").write_text(checksum)
            return snapshot_description(path)

        if not wait:
            # vdb takes the snapshot before answering either way; Qdrant's 202 has no result
            started = time.perf_counter()
            await anyio.to_thread.run_sync(job, None, limiter=self.write_limiter)
            return EncodedResponse(
                {"status": "accepted", "time": time.perf_counter() - started}, status_code=202
            )
        return await self.run(request, job, write=True)

    async def list_snapshots(self, request: Request) -> Response:
        name = request.path_params.get("name")

        def job(_: Any) -> list[dict[str, Any]]:
            if name is not None:
                self.view(name)
            folder = self._snapshot_dir(name)
            if not folder.is_dir():
                return []
            files = sorted(f for f in folder.iterdir() if f.suffix == ".snapshot" and f.is_file())
            return [snapshot_description(f) for f in files]

        return await self.run(request, job)

    def _snapshot_file(self, name: str | None, snapshot: str) -> Path:
        if not _SNAPSHOT_NAME.match(snapshot) or ".." in snapshot:
            raise InvalidInput(f"Wrong input: invalid snapshot name {snapshot!r}")
        if name is not None:
            self.view(name)
        path = self._snapshot_dir(name) / snapshot
        if not path.is_file():
            raise NotFound(f"Not found: Snapshot {snapshot} not found")
        return path

    async def download_snapshot(self, request: Request) -> Response:
        name = request.path_params.get("name")
        snapshot = request.path_params["snapshot"]
        path = await anyio.to_thread.run_sync(
            self._snapshot_file, name, snapshot, limiter=self.read_limiter
        )
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    async def delete_snapshot(self, request: Request) -> Response:
        name = request.path_params.get("name")
        snapshot = request.path_params["snapshot"]
        p.parse_wait(request.query_params.get("wait"))

        def job(_: Any) -> bool:
            path = self._snapshot_file(name, snapshot)
            path.unlink()
            path.with_name(path.name + ".checksum").unlink(missing_ok=True)
            return True

        return await self.run(request, job, write=True)

    # -- routes -------------------------------------------------------------

    def routes(self) -> list[Route]:
        c = "/collections/{name}"
        return [
            # the hot search routes first: the router tries routes in order
            Route(c + "/points/query", self.query_points, methods=["POST"]),
            Route(c + "/points/search", self.search_points, methods=["POST"]),
            Route("/", self.root, methods=["GET"]),
            Route("/collections", self.list_collections, methods=["GET"]),
            Route(c, self.get_collection, methods=["GET"]),
            Route(c, self.create_collection, methods=["PUT"]),
            Route(c, self.update_collection, methods=["PATCH"]),
            Route(c, self.delete_collection, methods=["DELETE"]),
            Route(c + "/exists", self.collection_exists, methods=["GET"]),
            Route(c + "/points", self.upsert_points, methods=["PUT"]),
            Route(c + "/points", self.retrieve_points, methods=["POST"]),
            Route(c + "/points/delete", self.delete_points, methods=["POST"]),
            Route(c + "/points/payload", self.set_payload, methods=["POST"]),
            Route(c + "/points/payload", self.overwrite_payload, methods=["PUT"]),
            Route(c + "/points/payload/delete", self.delete_payload, methods=["POST"]),
            Route(c + "/points/payload/clear", self.clear_payload, methods=["POST"]),
            Route(c + "/points/scroll", self.scroll_points, methods=["POST"]),
            Route(c + "/points/vectors", self.update_vectors, methods=["PUT"]),
            Route(c + "/points/vectors/delete", self.delete_vectors, methods=["POST"]),
            Route(c + "/points/count", self.count_points, methods=["POST"]),
            Route(c + "/points/query/batch", self.query_batch, methods=["POST"]),
            Route(c + "/points/search/batch", self.search_batch, methods=["POST"]),
            Route(c + "/points/{id}", self.get_point, methods=["GET"]),
            Route(c + "/index", self.create_field_index, methods=["PUT"]),
            Route(c + "/index/{field}", self.delete_field_index, methods=["DELETE"]),
            Route(c + "/snapshots", self.create_snapshot, methods=["POST"]),
            Route(c + "/snapshots", self.list_snapshots, methods=["GET"]),
            Route(c + "/snapshots/{snapshot}", self.download_snapshot, methods=["GET"]),
            Route(c + "/snapshots/{snapshot}", self.delete_snapshot, methods=["DELETE"]),
            Route("/snapshots", self.create_snapshot, methods=["POST"]),
            Route("/snapshots", self.list_snapshots, methods=["GET"]),
            Route("/snapshots/{snapshot}", self.download_snapshot, methods=["GET"]),
            Route("/snapshots/{snapshot}", self.delete_snapshot, methods=["DELETE"]),
        ]


# -- request parsing ----------------------------------------------------------------


_GENERAL_MARKERS = (b"prefetch", b"mmr", b"fusion", b"rrf", b"indices")


def check_limit(request: qa.QueryRequest, max_limit: int) -> None:
    if request.limit + request.offset > max_limit:
        raise InvalidInput(f"Bad request: `limit` + `offset` must be at most {max_limit}")


def vector_spec(col: Any, value: Any) -> Any:
    """``with_vector`` of a read: a bool, or (named vectors) the list of names."""
    if col.config.get("named"):
        return hybrid.with_vector_spec(col, value)
    return p.parse_with_vector(value, "with_vector", False)


def is_named_create(body: dict[str, Any]) -> bool:
    """A ``CreateCollection`` with sparse vectors, or dense vectors by names other than ``""``."""
    if not isinstance(body, dict):
        return False
    if isinstance(body.get("sparse_vectors"), dict) and body["sparse_vectors"]:
        return True
    vectors = body.get("vectors")
    if isinstance(vectors, dict) and "size" not in vectors and "distance" not in vectors:
        return list(vectors) != [""]
    return False


def parse_named_create(body: dict[str, Any]) -> dict[str, Any]:
    """``CreateCollection`` with named / sparse vectors → ``db.create_collection`` keywords."""
    vectors = body.get("vectors")
    vectors = {} if vectors is None else p.check_object(vectors, "vectors")
    if "size" in vectors or "distance" in vectors:
        vectors = {"": vectors}
    quantization: dict[str, Any] = {}
    stripped = {}
    for vname, params in vectors.items():
        params = p.check_object(params, f"vectors.{vname}")
        if params.get("quantization_config") is not None:
            quantization[vname] = parse_quantization_config(
                params["quantization_config"], f"vectors.{vname}.quantization_config"
            )
        stripped[vname] = {k: v for k, v in params.items() if k != "quantization_config"}
    config = qa.parse_collection_vectors(
        {"vectors": stripped, "sparse_vectors": body.get("sparse_vectors")}
    )
    rest = {k: v for k, v in body.items() if k not in ("vectors", "sparse_vectors")}
    # the top-level settings (hnsw_config, metadata, quantization ...) as for one vector
    options = parse_create_collection({**rest, "vectors": {"size": 1, "distance": "Dot"}})
    for key in ("dim", "metric", "on_disk"):
        options.pop(key, None)
    default_quant = options.pop("quantization", None)
    dense = {}
    for vname, cfg in config.dense.items():
        spec: dict[str, Any] = {
            "dim": cfg.size,
            "metric": cfg.metric,
            "M": cfg.M or options["M"],
            "ef_construction": cfg.ef_construction or options["ef_construction"],
        }
        quant = quantization.get(vname, default_quant)
        if quant is not None:
            spec["quantization"] = quant
        dense[vname] = spec
    sparse = {vname: {"modifier": cfg.modifier} for vname, cfg in config.sparse.items()}
    return {**options, "vectors": dense, "sparse_vectors": sparse}


def has_named_vectors(body: Any) -> bool:
    """An upsert whose vectors are maps of names (``{"": [...]}`` included)."""
    if not isinstance(body, dict):
        return False
    batch = body.get("batch")
    if isinstance(batch, dict):
        return isinstance(batch.get("vectors"), dict)
    points = body.get("points")
    if not isinstance(points, list):
        return False
    return any(
        isinstance(pt, dict) and isinstance(pt.get("vector"), dict) and "text" not in pt["vector"]
        for pt in points
    )


def _core_vector(vector: Any) -> Any:
    if isinstance(vector, qa.SparseVector):
        return {"indices": vector.indices, "values": vector.values}
    return vector


def parse_named_upsert(body: dict[str, Any], col: Any) -> tuple[list[Any], dict[str, Any], Any]:
    """``PointsList`` / ``PointsBatch`` with named vectors → (ids, {name: column}, payloads)."""
    config = hybrid.vectors_config(col)
    if "batch" in body:
        p.check_fields(body, "PointsBatch", ("batch",), (*_SHARD, "update_filter", "update_mode"))
        batch = p.check_object(body["batch"], "batch")
        p.check_fields(batch, "Batch", ("ids", "vectors", "payloads"))
        if "ids" not in batch or "vectors" not in batch:
            raise InvalidInput("Format error in JSON body: `batch` needs `ids` and `vectors`")
        ids = p.parse_ids(batch["ids"], "batch.ids")
        per_point = qa.parse_batch_vectors(batch["vectors"], "batch.vectors", len(ids), config)
        payloads = batch.get("payloads")
        if payloads is not None:
            if not isinstance(payloads, list) or len(payloads) != len(ids):
                raise InvalidInput(
                    "`batch.payloads` must be an array with one payload (or null) per id"
                )
            payloads = [p.parse_payload(x, f"batch.payloads[{i}]") for i, x in enumerate(payloads)]
    else:
        p.check_fields(body, "PointsList", ("points",), (*_SHARD, "update_filter", "update_mode"))
        points = body.get("points")
        if not isinstance(points, list):
            raise InvalidInput("Format error in JSON body: expected `points` (an array) or `batch`")
        ids, per_point, payloads = [], [], []
        for i, point in enumerate(points):
            point = p.check_object(point, f"points[{i}]")
            p.check_fields(point, "PointStruct", ("id", "vector", "payload"))
            if "id" not in point:
                raise InvalidInput(f"Format error in JSON body: `points[{i}]` needs `id`")
            ids.append(p.parse_id(point["id"], f"points[{i}].id"))
            vector = point.get("vector")
            per_point.append(
                {}
                if vector is None
                else qa.parse_point_vector(vector, f"points[{i}].vector", config)
            )
            payloads.append(p.parse_payload(point.get("payload"), f"points[{i}].payload"))
    columns: dict[str, list[Any]] = {}
    for j, vecs in enumerate(per_point):
        for vname, vector in vecs.items():
            columns.setdefault(vname, [None] * len(ids))[j] = _core_vector(vector)
    if not col.config.get("named") and (
        set(columns) - {""} or any(v is None for v in columns.get("", [None]))
    ):
        raise InvalidInput("Wrong input: every point needs the collection's vector")
    return ids, columns, payloads


def check_collection_name(name: str) -> None:
    if not name or len(name) > 255 or name in (".", "..") or "\x00" in name:
        raise InvalidInput(f"Wrong input: invalid collection name {name!r}")
    p.parse_payload({"name": name}, "collection name")


def parse_create_collection(body: dict[str, Any]) -> dict[str, Any]:
    """``CreateCollection`` → keyword arguments of ``db.create_collection``.

    Unset HNSW parameters take Qdrant's defaults (m 16, ef_construct 100) and
    the default search beam ``ef`` is ``ef_construct``, as in Qdrant.
    """
    p.check_fields(
        body,
        "CreateCollection",
        (
            "vectors",
            "hnsw_config",
            "shard_number",
            "replication_factor",
            "write_consistency_factor",
            "on_disk_payload",
            "metadata",
            "quantization_config",
        ),
        (
            "sharding_method",
            "payload",
            "id_tracker",
            "wal_config",
            "optimizers_config",
            "sparse_vectors",
            "strict_mode_config",
            "init_from",
        ),
    )
    for key in ("shard_number", "replication_factor", "write_consistency_factor"):
        if body.get(key) is not None and p.parse_int(body[key], key) != 1:
            raise InvalidInput(f"Bad request: `{key}` other than 1 is not supported by vdb")
    if body.get("on_disk_payload") is not None:
        p.parse_bool(body["on_disk_payload"], "on_disk_payload")  # payloads live in LMDB either way
    vectors = body.get("vectors")
    if vectors is None:
        raise InvalidInput(
            "Bad request: `vectors` is required (vdb has no vector-less collections)"
        )
    vectors = p.check_object(vectors, "vectors")
    if "size" not in vectors and "distance" not in vectors:
        if list(vectors) == [""]:
            vectors = p.check_object(vectors[""], "vectors.")
        else:
            raise InvalidInput("Bad request: named vectors are not supported by vdb")
    p.check_fields(
        vectors,
        "VectorParams",
        ("size", "distance", "hnsw_config", "on_disk", "datatype", "quantization_config"),
        ("multivector_config", "memory"),
    )
    if "size" not in vectors or "distance" not in vectors:
        raise InvalidInput("Format error in JSON body: `vectors` needs `size` and `distance`")
    size = p.parse_int(vectors["size"], "vectors.size", minimum=1, maximum=65536)
    distance = vectors["distance"]
    if distance not in p.DISTANCES:
        raise InvalidInput(
            f"Bad request: distance {distance!r} is not supported by vdb "
            f"(one of {', '.join(p.DISTANCES)})"
        )
    options: dict[str, Any] = {"dim": size, "metric": p.DISTANCES[distance]}
    if vectors.get("on_disk") is not None and p.parse_bool(vectors["on_disk"], "vectors.on_disk"):
        options["on_disk"] = True  # float vectors memory-mapped; graph (and codes) in RAM
    for where, value in (
        ("quantization_config", body.get("quantization_config")),
        ("vectors.quantization_config", vectors.get("quantization_config")),
    ):
        if value is not None:
            options["quantization"] = parse_quantization_config(value, where)
    if vectors.get("datatype") not in (None, "float32"):
        raise InvalidInput("Bad request: `vectors.datatype` other than float32 is not supported")
    for where, hnsw in (
        ("hnsw_config", body.get("hnsw_config")),
        ("vectors.hnsw_config", vectors.get("hnsw_config")),
    ):
        if hnsw is None:
            continue
        hnsw = p.check_object(hnsw, where)
        p.check_fields(
            hnsw,
            where,
            ("m", "ef_construct", "max_indexing_threads"),
            ("full_scan_threshold", "on_disk", "payload_m", "memory", "inline_storage"),
        )
        if hnsw.get("m") is not None:
            options["M"] = p.parse_int(hnsw["m"], f"{where}.m", minimum=2, maximum=512)
        if hnsw.get("ef_construct") is not None:
            options["ef_construction"] = p.parse_int(
                hnsw["ef_construct"], f"{where}.ef_construct", minimum=4, maximum=4096
            )
        if hnsw.get("max_indexing_threads") is not None:
            p.parse_int(hnsw["max_indexing_threads"], f"{where}.max_indexing_threads", minimum=0)
    if body.get("metadata") is not None:
        options["metadata"] = p.parse_payload(body["metadata"], "metadata")
    # Qdrant's defaults, and its default search beam: ef_construct
    options.setdefault("M", QDRANT_DEFAULT_M)
    options.setdefault("ef_construction", QDRANT_DEFAULT_EF_CONSTRUCT)
    options["ef"] = options["ef_construction"]
    return options


_QUANTIZATION_KINDS = ("scalar", "product", "binary", "turbo")


def parse_quantization_config(value: Any, where: str) -> dict[str, Any]:
    """Qdrant's ``ScalarQuantization`` (``{"scalar": {"type": "int8", "quantile", "always_ram"}}``)
    → the core's ``quantization`` option. Product, binary and turbo quantization get a 400
    naming them; every malformed field is named."""
    value = p.check_object(value, where)
    if len(value) != 1 or next(iter(value)) not in _QUANTIZATION_KINDS:
        raise InvalidInput(
            f"Format error in JSON body: `{where}` must hold one of "
            f"{', '.join(_QUANTIZATION_KINDS)}, got {sorted(value) or 'nothing'}"
        )
    kind = next(iter(value))
    if kind != "scalar":
        raise InvalidInput(
            f"Bad request: `{where}.{kind}`: {kind} quantization is not supported by vdb "
            "(only scalar int8)"
        )
    scalar = p.check_object(value["scalar"], f"{where}.scalar")
    p.check_fields(scalar, f"{where}.scalar", ("type", "quantile", "always_ram"), ("memory",))
    if scalar.get("type") != "int8":
        raise InvalidInput(
            f'Format error in JSON body: `{where}.scalar.type` must be "int8", '
            f"got {scalar.get('type')!r}"
        )
    out: dict[str, Any] = {"type": "int8"}
    if scalar.get("quantile") is not None:
        q = p.parse_float(scalar["quantile"], f"{where}.scalar.quantile")
        if not 0.5 <= q <= 1.0:
            raise InvalidInput(
                f"Bad request: `{where}.scalar.quantile` must be in [0.5, 1], got {q}"
            )
        out["quantile"] = q
    if scalar.get("always_ram") is not None:
        out["always_ram"] = p.parse_bool(scalar["always_ram"], f"{where}.scalar.always_ram")
    return out


def parse_quantization_params(value: Any, where: str) -> dict[str, Any] | None:
    """Qdrant's ``QuantizationSearchParams`` → the core's per-query ``quantization`` option."""
    if value is None:
        return None
    params = p.check_object(value, where)
    p.check_fields(params, where, ("ignore", "rescore", "oversampling"))
    out: dict[str, Any] = {}
    for key in ("ignore", "rescore"):
        if params.get(key) is not None:
            out[key] = p.parse_bool(params[key], f"{where}.{key}")
    if params.get("oversampling") is not None:
        over = p.parse_float(params["oversampling"], f"{where}.oversampling")
        if not 1.0 <= over <= 1e6:
            raise InvalidInput(f"Bad request: `{where}.oversampling` must be >= 1, got {over}")
        out["oversampling"] = over
    return out or None


def parse_update_collection(body: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    """``UpdateCollection`` → keyword arguments of ``col.update`` (empty: nothing changes).

    ``metadata`` is merged into the collection's metadata (``null`` removes
    a key). vdb builds its graph once, with the ``m`` and ``ef_construct``
    it was created with, so those are accepted only when they do not
    change; settings vdb does not have are refused, naming the field.
    """
    p.check_fields(
        body,
        "UpdateCollection",
        ("hnsw_config", "params", "metadata"),
        (
            "vectors",
            "optimizers_config",
            "quantization_config",
            "sparse_vectors",
            "strict_mode_config",
        ),
    )
    hnsw = body.get("hnsw_config")
    if hnsw is not None:
        hnsw = p.check_object(hnsw, "hnsw_config")
        p.check_fields(
            hnsw,
            "hnsw_config",
            ("m", "ef_construct", "max_indexing_threads"),
            ("full_scan_threshold", "on_disk", "payload_m", "memory", "inline_storage"),
        )
        for key, current in (("m", info["M"]), ("ef_construct", info["ef_construction"])):
            if hnsw.get(key) is None:
                continue
            value = p.parse_int(hnsw[key], f"hnsw_config.{key}", minimum=0)
            if value != int(current):
                raise InvalidInput(
                    f"Bad request: `hnsw_config.{key}` cannot be changed by vdb: the graph keeps "
                    f"the value it was built with ({current}); create a new collection instead"
                )
        if hnsw.get("max_indexing_threads") is not None:  # as on create: vdb picks its threads
            p.parse_int(hnsw["max_indexing_threads"], "hnsw_config.max_indexing_threads", minimum=0)
    params = body.get("params")
    if params is not None:
        params = p.check_object(params, "params")
        p.check_fields(
            params,
            "CollectionParamsDiff",
            ("replication_factor", "write_consistency_factor", "on_disk_payload"),
            ("read_fan_out_factor", "read_fan_out_delay_ms", "payload", "id_tracker"),
        )
        for key in ("replication_factor", "write_consistency_factor"):
            if params.get(key) is not None and p.parse_int(params[key], f"params.{key}") != 1:
                raise InvalidInput(
                    f"Bad request: `params.{key}` other than 1 is not supported by vdb"
                )
        if params.get("on_disk_payload") is not None:
            p.parse_bool(params["on_disk_payload"], "params.on_disk_payload")  # always in LMDB
    update: dict[str, Any] = {}
    metadata = p.parse_payload(body.get("metadata"), "metadata")
    if metadata:
        update["merge_metadata"] = metadata
    return update


def parse_field_schema(value: Any, field: str, col: Any) -> Any:
    """``field_schema`` (a type name or a params object with ``type``); when absent, the
    type vdb inferred from the values stored at ``field`` (400 when there is none)."""
    if value is None:
        inferred = col.payload_index().schema(include_auto=True).get(field, {}).get("data_type")
        if inferred not in _SCHEMA_TYPES:
            raise InvalidInput(
                f"Bad request: `field_schema` is required for `{field}` "
                "(no single type can be inferred from the stored values)"
            )
        return inferred
    if isinstance(value, dict):
        kind = value.get("type")
    else:
        kind = value
    if not isinstance(kind, str):
        raise InvalidInput(
            "Format error in JSON body: `field_schema` must be a type name or an object with `type`"
        )
    if kind not in _SCHEMA_TYPES:
        raise InvalidInput(f"Bad request: field_schema {kind!r} is not supported by vdb")
    return value


def parse_upsert(
    body: dict[str, Any], dim: int
) -> tuple[list[Any], np.ndarray, list[dict[str, Any] | None] | None]:
    """``PointsList`` or ``PointsBatch`` → (ids, vectors[n, dim], payloads)."""
    if "batch" in body:
        p.check_fields(body, "PointsBatch", ("batch",), (*_SHARD, "update_filter", "update_mode"))
        batch = p.check_object(body["batch"], "batch")
        p.check_fields(batch, "Batch", ("ids", "vectors", "payloads"))
        if "ids" not in batch or "vectors" not in batch:
            raise InvalidInput("Format error in JSON body: `batch` needs `ids` and `vectors`")
        ids = p.parse_ids(batch["ids"], "batch.ids")
        if _has_documents(batch["vectors"]):
            if len(batch["vectors"]) != len(ids):
                raise InvalidInput(
                    f"`batch.vectors` has {len(batch['vectors'])} vectors but there are "
                    f"{len(ids)} ids"
                )
            vectors = _rows(batch["vectors"], "batch.vectors", dim)
        else:
            vectors = p.parse_vectors(batch["vectors"], "batch.vectors", len(ids), dim)
        payloads = batch.get("payloads")
        if payloads is not None:
            if not isinstance(payloads, list) or len(payloads) != len(ids):
                raise InvalidInput(
                    "`batch.payloads` must be an array with one payload (or null) per id"
                )
            payloads = [p.parse_payload(x, f"batch.payloads[{i}]") for i, x in enumerate(payloads)]
        return ids, vectors, payloads
    p.check_fields(body, "PointsList", ("points",), (*_SHARD, "update_filter", "update_mode"))
    points = body.get("points")
    if not isinstance(points, list):
        raise InvalidInput("Format error in JSON body: expected `points` (an array) or `batch`")
    ids: list[Any] = []
    rows: list[np.ndarray | Document] = []
    payloads: list[dict[str, Any] | None] = []
    for i, point in enumerate(points):
        point = p.check_object(point, f"points[{i}]")
        p.check_fields(point, "PointStruct", ("id", "vector", "payload"))
        if "id" not in point or "vector" not in point:
            raise InvalidInput(f"Format error in JSON body: `points[{i}]` needs `id` and `vector`")
        ids.append(p.parse_id(point["id"], f"points[{i}].id"))
        where = f"points[{i}].vector"
        rows.append(
            parse_document(point["vector"], where) or p.parse_vector(point["vector"], where, dim)
        )
        payloads.append(p.parse_payload(point.get("payload"), f"points[{i}].payload"))
    vectors = p.stack(_embed_rows(rows, dim), "points", dim)
    return ids, vectors, payloads


def _has_documents(values: Any) -> bool:
    return isinstance(values, list) and any(isinstance(v, dict) for v in values)


def _rows(values: list[Any], where: str, dim: int) -> np.ndarray:
    """Vectors and documents → ``[n, dim]``, the documents embedded."""
    rows: list[np.ndarray | Document] = [
        parse_document(v, f"{where}[{i}]") or p.parse_vector(v, f"{where}[{i}]", dim)
        for i, v in enumerate(values)
    ]
    return p.stack(_embed_rows(rows, dim), where, dim)


def _embed_rows(rows: list[np.ndarray | Document], dim: int) -> list[np.ndarray]:
    """Embed the documents among ``rows`` (one batched call per model) in place."""
    at = [i for i, row in enumerate(rows) if isinstance(row, Document)]
    if at:
        vectors = embed_documents([rows[i] for i in at], dim)
        for j, i in enumerate(at):
            rows[i] = vectors[j]
    return rows  # type: ignore[return-value]


def parse_batch(body: dict[str, Any], where: str, max_batch: int) -> list[dict[str, Any]]:
    p.check_fields(body, where, ("searches",))
    searches = body.get("searches")
    if not isinstance(searches, list):
        raise InvalidInput("Format error in JSON body: `searches` must be an array")
    if len(searches) > max_batch:
        raise InvalidInput(
            f"Bad request: {len(searches)} searches in one batch; at most {max_batch} are accepted"
        )
    return [p.check_object(s, f"searches[{i}]") for i, s in enumerate(searches)]


def apply_payload_op(col: Any, op: str, body: dict[str, Any]) -> None:
    """set / overwrite / delete / clear payload on the points or filter the body names."""
    if op == "clear":
        ids, flt = parse_selector(body, "PointsSelector")
        col.clear_payload(ids, filter=flt)
        return
    where = "DeletePayload" if op == "delete" else "SetPayload"
    extra = {"set": ("payload", "key"), "overwrite": ("payload",), "delete": ("keys",)}[op]
    p.check_fields(body, where, ("points", "filter", *extra), _SHARD)
    ids, flt = parse_targets(body, where)
    if op == "delete":
        keys = body.get("keys")
        if not isinstance(keys, list):
            raise InvalidInput("`keys` must be an array of payload keys")
        keys = [p.parse_str(k, f"keys[{i}]") for i, k in enumerate(keys)]
        col.delete_payload(ids, keys, filter=flt)
        return
    payload = p.parse_payload(body.get("payload"), "payload")
    if payload is None:
        raise InvalidInput("Format error in JSON body: missing field `payload`")
    if op == "set":
        key = body.get("key")
        if key is not None:
            key = p.parse_str(key, "key")
        col.set_payload(ids, payload, filter=flt, key=key)
    else:
        col.overwrite_payload(ids, payload, filter=flt)


def parse_selector(body: dict[str, Any], where: str) -> tuple[list[Any] | None, dict | None]:
    """``{"points": [ids]}`` or ``{"filter": {...}}`` → (ids, None) or (None, filter)."""
    p.check_fields(body, where, ("points", "filter"), _SHARD)
    return parse_targets(body, where, need_one=True)


def parse_targets(
    body: dict[str, Any], where: str, need_one: bool = True
) -> tuple[list[Any] | None, dict | None]:
    has_points = body.get("points") is not None
    has_filter = body.get("filter") is not None
    if has_points and has_filter:
        raise InvalidInput(f"Bad request: {where} takes either `points` or `filter`, not both")
    if has_points:
        return p.parse_ids(body["points"], "points"), None
    if has_filter:
        return None, p.parse_filter(body["filter"])
    if need_one:
        raise InvalidInput(f"Format error in JSON body: {where} needs `points` or `filter`")
    return None, None


class Query:
    """One parsed search: a vector, a point id to search by, or nothing (id order)."""

    __slots__ = (
        "vector",
        "point_id",
        "filter",
        "limit",
        "offset",
        "ef",
        "exact",
        "quantization",
        "score_threshold",
        "fetch_payload",
        "selector",
        "with_vector",
        "document",
        "partitions",
    )

    def __init__(self, **values: Any):
        for name in self.__slots__:
            setattr(self, name, values.get(name))


def parse_params(value: Any, where: str) -> tuple[int | None, bool, dict[str, Any] | None]:
    """``SearchParams`` → (hnsw_ef, exact, quantization search options)."""
    if value is None:
        return None, False, None
    params = p.check_object(value, where)
    p.check_fields(
        params,
        "SearchParams",
        ("hnsw_ef", "exact", "indexed_only", "quantization"),
        ("acorn", "idf"),
    )
    ef = None
    if params.get("hnsw_ef") is not None:
        ef = p.parse_int(params["hnsw_ef"], f"{where}.hnsw_ef", minimum=1, maximum=65536)
    exact = False
    if params.get("exact") is not None:
        exact = p.parse_bool(params["exact"], f"{where}.exact")
    if params.get("indexed_only") is not None:
        p.parse_bool(params["indexed_only"], f"{where}.indexed_only")  # every vdb point is indexed
    quant = parse_quantization_params(params.get("quantization"), f"{where}.quantization")
    return ef, exact, quant


def _parse_query_value(value: Any, where: str) -> tuple[np.ndarray | None, Any, Document | None]:
    """The ``query`` of a QueryRequest → (vector, None, None), (None, point id, None)
    or (None, None, document)."""
    if isinstance(value, dict) and ("text" in value or "model" in value):
        return None, None, parse_document(value, where)  # a document instead of a vector
    if isinstance(value, dict):
        if len(value) != 1 and not ("nearest" in value and set(value) <= {"nearest", "mmr"}):
            raise InvalidInput(f"Format error in JSON body: `{where}` must hold one query type")
        kind = next(iter(value)) if "nearest" not in value else "nearest"
        if kind not in _QUERY_TYPES:
            raise InvalidInput(
                f"Format error in JSON body: unknown query type `{kind}` in `{where}`"
            )
        if kind != "nearest":
            raise InvalidInput(f"Bad request: query type `{kind}` is not supported by vdb")
        if value.get("mmr") is not None:
            raise InvalidInput("Bad request: `nearest.mmr` is not supported by vdb")
        value = value["nearest"]
        where = f"{where}.nearest"
    if isinstance(value, int | str) and not isinstance(value, bool):
        return None, p.parse_id(value, where), None
    document = parse_document(value, where)
    if document is not None:
        return None, None, document
    return p.parse_vector(value, where), None, None


def _common_query(body: dict[str, Any], max_limit: int, default_payload: bool) -> dict[str, Any]:
    limit = p.parse_limit(body.get("limit"), "limit", 10, max_limit)
    offset = p.parse_limit(body.get("offset"), "offset", 0, max_limit, minimum=0)
    if limit + offset > max_limit:
        raise InvalidInput(f"Bad request: `limit` + `offset` must be at most {max_limit}")
    ef, exact, quant = parse_params(body.get("params"), "params")
    threshold = body.get("score_threshold")
    fetch_payload, selector = p.parse_with_payload(
        body.get("with_payload"), "with_payload", default_payload
    )
    flt = body.get("filter")
    if flt is not None:
        with telemetry.span("vdb.http.filter"):
            flt = p.parse_filter(flt)
    return {
        "filter": flt,
        "limit": limit,
        "offset": offset,
        "ef": ef,
        "exact": exact,
        "quantization": quant,
        "score_threshold": None
        if threshold is None
        else p.parse_float(threshold, "score_threshold"),
        "fetch_payload": fetch_payload,
        "selector": selector,
        "with_vector": p.parse_with_vector(body.get("with_vector"), "with_vector", False),
    }


def parse_query_request(body: dict[str, Any], where: str, max_limit: int) -> Query:
    p.check_fields(
        body,
        where,
        (
            "query",
            "using",
            "filter",
            "params",
            "score_threshold",
            "limit",
            "offset",
            "with_vector",
            "with_payload",
        ),
        (*_SHARD, "prefetch", "lookup_from"),
    )
    using = body.get("using")
    if using not in (None, ""):
        raise InvalidInput(f"Wrong input: Not existing vector name error: {using}")
    vector = point_id = document = None
    if body.get("query") is not None:
        vector, point_id, document = _parse_query_value(body["query"], "query")
    return Query(
        vector=vector, point_id=point_id, document=document, **_common_query(body, max_limit, False)
    )


def parse_search_request(body: dict[str, Any], where: str, max_limit: int) -> Query:
    p.check_fields(
        body,
        where,
        (
            "vector",
            "filter",
            "params",
            "score_threshold",
            "limit",
            "offset",
            "with_vector",
            "with_payload",
        ),
        _SHARD,
    )
    if body.get("vector") is None:
        raise InvalidInput("Format error in JSON body: missing field `vector`")
    if body.get("limit") is None:
        raise InvalidInput("Format error in JSON body: missing field `limit`")
    vector = body["vector"]
    if isinstance(vector, dict) and set(vector) == {"name", "vector"}:
        if vector["name"] != "":
            raise InvalidInput(f"Wrong input: Not existing vector name error: {vector['name']}")
        vector = vector["vector"]
    return Query(
        vector=p.parse_vector(vector, "vector"),
        point_id=None,
        **_common_query(body, max_limit, False),
    )


# -- running searches ---------------------------------------------------------------


INLINE_BODY_MAX = 32 * 1024
"""Search bodies up to this size are decoded on the event loop (a 1,536-d vector is ~30 KB)."""
INLINE_MAX_K = 100
INLINE_MAX_EF = 256
INLINE_MAX_DIM = 4096


def is_light(query: Query) -> bool:
    """Whether a parsed query is cheap enough to run on the event loop.

    Only a plain graph search by vector qualifies: no filter (building the
    allowed set scans payloads), not exact (a full scan), not by point id
    (a storage read), ``limit + offset`` and ``ef`` within small bounds.
    """
    return (
        query.vector is not None
        and query.filter is None
        and not query.exact
        and query.quantization is None
        and query.limit + query.offset <= INLINE_MAX_K
        and (query.ef or 0) <= INLINE_MAX_EF
        and query.vector.size <= INLINE_MAX_DIM
    )


def search_attributes(name: str, query: Query) -> dict[str, Any] | None:
    """The ``vdb.search`` span's attributes (``None`` while tracing is off: nothing is built)."""
    if not telemetry.enabled():
        return None
    return {
        "db.system.name": "vdb",
        "db.operation.name": "search",
        "db.collection.name": name,
        "vdb.search.k": query.limit + query.offset,
        "vdb.search.ef": query.ef or 0,
        "vdb.search.exact": bool(query.exact),
        "vdb.search.filtered": query.filter is not None,
        "vdb.search.by": "id" if query.point_id is not None else "vector",
    }


def check_dim(view: CollectionView, q: Query) -> None:
    if q.vector.size != view.dim:
        raise InvalidInput(
            f"Wrong input: Vector dimension error: expected dim: {view.dim}, got {q.vector.size}"
        )


def run_query(view: CollectionView, query: Query) -> list[dict[str, Any]]:
    """One query; a plain vector query skips the batching of ``run_queries``."""
    q = query
    if q.vector is None or q.point_id is not None:
        return _run_queries(view, [q])[0]
    check_dim(view, q)
    hits = view.col.search(
        q.vector,
        k=q.limit + q.offset,
        ef=q.ef,
        filter=q.filter,
        with_payload=q.fetch_payload,
        with_vectors=q.with_vector,
        exact=bool(q.exact),
        partitions=q.partitions,
        quantization=q.quantization,
    )
    return _shape_hits(view, q, hits)


def run_queries(view: CollectionView, queries: list[Query]) -> list[list[dict[str, Any]]]:
    """Run parsed queries against one collection; similar queries share one batched search."""
    with telemetry.span("vdb.search", batch_attributes(view, queries)) as span:
        results = _run_queries(view, queries)
        span.set_attribute("db.response.returned_rows", sum(len(r) for r in results))
        return results


def batch_attributes(view: CollectionView, queries: list[Query]) -> dict[str, Any] | None:
    """The attributes of a batch's ``vdb.search`` span (``None`` while tracing is off)."""
    if not telemetry.enabled():
        return None
    return {
        "db.system.name": "vdb",
        "db.operation.name": "search",
        "db.collection.name": view.col.name,
        "db.operation.batch.size": len(queries),
    }


def _run_queries(view: CollectionView, queries: list[Query]) -> list[list[dict[str, Any]]]:
    col = view.col
    results: list[list[dict[str, Any]] | None] = [None] * len(queries)
    groups: dict[tuple, list[int]] = {}
    texts = [q for q in queries if q.document is not None]
    if texts:  # text queries: one batched model call per model, in this worker thread
        for q, vector in zip(
            texts, embed_documents([q.document for q in texts], view.dim), strict=True
        ):
            q.vector = vector
    for i, q in enumerate(queries):
        if q.vector is None and q.point_id is None:
            results[i] = _scroll_query(view, q)
            continue
        if q.point_id is not None:
            records = col.get([q.point_id], with_payload=False, with_vectors=True)
            if not records or records[0].vector is None:
                raise PointNotFound(f"Not found: No point with id {q.point_id} found")
            q.vector = np.asarray(records[0].vector, dtype=np.float32)
        if q.vector.size != view.dim:
            raise InvalidInput(
                f"Wrong input: Vector dimension error: expected dim: {view.dim}, got {q.vector.size}"
            )
        key = (
            _filter_key(q.filter),
            q.limit + q.offset + (1 if q.point_id is not None else 0),
            q.ef,
            bool(q.exact),
            q.fetch_payload,
            q.with_vector,
            q.partitions,
            tuple(sorted((q.quantization or {}).items())),
        )
        groups.setdefault(key, []).append(i)
    for (_, k, ef, exact, fetch_payload, with_vector, partitions, quant), members in groups.items():
        flt = queries[members[0]].filter
        vectors = np.stack([queries[i].vector for i in members])
        hits = col.search(
            vectors,
            k=k,
            ef=ef,
            filter=flt,
            with_payload=fetch_payload,
            with_vectors=with_vector,
            exact=exact,
            partitions=partitions,
            quantization=dict(quant) or None,
        )
        for i, row in zip(members, hits, strict=True):
            results[i] = _shape_hits(view, queries[i], row)
    return results  # type: ignore[return-value]


def _filter_key(flt: dict | None) -> Any:
    if flt is None:
        return None
    import json

    return json.dumps(flt, sort_keys=True)


F32_MAX = float(np.finfo(np.float32).max)


def finite_score(score: float, euclid: bool) -> float:
    """The score Qdrant reports, always a finite number (JSON has no inf or NaN).

    Euclid: the distance (square root of vdb's squared distance). Writes
    refuse vectors whose distances could overflow float32, so an infinite
    score can only come from data stored before that check; it is clamped
    to the float32 maximum on its own side (NaN counts as the worst score).
    """
    if math.isnan(score):
        return F32_MAX if euclid else -F32_MAX
    if euclid:
        score = math.sqrt(max(score, 0.0))
    return max(-F32_MAX, min(F32_MAX, score))


def _shape_hits(view: CollectionView, q: Query, hits: list[Any]) -> list[dict[str, Any]]:
    out = []
    euclid = view.metric == "l2"
    for hit in hits:
        if q.point_id is not None and hit.id == q.point_id:
            continue
        score = float(hit.score)
        if euclid or not -F32_MAX <= score <= F32_MAX:  # NaN fails the comparison too
            score = finite_score(score, euclid)
        if q.score_threshold is not None:
            if (score > q.score_threshold) if euclid else (score < q.score_threshold):
                continue
        point: dict[str, Any] = {"id": p.id_out(hit.id), "version": 0, "score": score}
        if q.fetch_payload:
            point["payload"] = q.selector(hit.payload) if q.selector else (hit.payload or {})
        if q.with_vector and hit.vector is not None:
            point["vector"] = hit.vector
        out.append(point)
    return out[q.offset : q.offset + q.limit]


def _scroll_query(view: CollectionView, q: Query) -> list[dict[str, Any]]:
    """A query without ``query``: points in id order, as Qdrant does (score 0)."""
    records, _ = view.col.scroll(
        filter=q.filter,
        limit=q.offset + q.limit,
        offset=None,
        with_payload=q.fetch_payload,
        with_vectors=q.with_vector,
        partitions=q.partitions,
    )
    out = []
    for r in records[q.offset :]:
        point: dict[str, Any] = {"id": p.id_out(r.id), "version": 0, "score": 0.0}
        if q.fetch_payload:
            point["payload"] = q.selector(r.payload) if q.selector else (r.payload or {})
        if q.with_vector and r.vector is not None:
            point["vector"] = r.vector
        out.append(point)
    return out


# -- response shapes ----------------------------------------------------------------


def record_out(
    record: Any, fetch_payload: bool, selector: p.PayloadSelector | None, with_vector: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": p.id_out(record.id)}
    if fetch_payload:
        out["payload"] = selector(record.payload) if selector else (record.payload or {})
    else:
        out["payload"] = None
    out["vector"] = hybrid.vector_out(record.vector) if with_vector else None
    return out


def collection_info(info: dict[str, Any]) -> dict[str, Any]:
    """``col.info()`` → Qdrant's ``CollectionInfo`` (every field the client requires)."""
    count = int(info.get("count", 0))
    metric = str(info.get("metric"))
    config: dict[str, Any] = {
        "params": {
            "vectors": {
                "size": int(info["dim"]),
                "distance": p.METRIC_TO_DISTANCE.get(metric, metric),
            },
            "shard_number": 1,
            "replication_factor": 1,
            "write_consistency_factor": 1,
            "on_disk_payload": True,
        },
        "hnsw_config": {
            "m": int(info.get("M", 16)),
            "ef_construct": int(info.get("ef_construction", 128)),
            "full_scan_threshold": 10000,
        },
        "optimizer_config": {
            "deleted_threshold": 0.2,
            "vacuum_min_vector_number": 1000,
            "default_segment_number": 0,
            "flush_interval_sec": 5,
        },
        "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
    }
    quant = info.get("quantization")
    if quant:
        scalar = {"type": quant["type"], "always_ram": quant["always_ram"]}
        if quant.get("quantile") is not None:
            scalar["quantile"] = quant["quantile"]
        config["quantization_config"] = {"scalar": scalar}
    if info.get("on_disk"):
        config["params"]["vectors"]["on_disk"] = True
    if info.get("named"):  # named vectors: Qdrant's maps of VectorParams / SparseVectorParams
        config["params"]["vectors"] = {
            name: named_vector_params(spec) for name, spec in (info.get("vectors") or {}).items()
        }
        config["params"]["sparse_vectors"] = {
            name: ({"modifier": "idf"} if spec.get("modifier") == "idf" else {})
            for name, spec in (info.get("sparse_vectors") or {}).items()
        }
    metadata = (info.get("extra") or {}).get("metadata")
    if metadata:
        config["metadata"] = metadata
    segments = info.get("segments") or {}
    return {
        "status": info.get("status", "green"),
        "optimizer_status": "ok",
        # the indexed segments (graphs) and the fresh one when it holds points
        "segments_count": max(1, len(segments.get("graphs") or ()))
        + (1 if segments.get("fresh_points") else 0),
        "points_count": count,
        "indexed_vectors_count": int(segments.get("indexed_points", count)),
        "config": config,
        "payload_schema": payload_schema_out(info.get("payload_schema") or {}),
    }


def named_vector_params(spec: dict[str, Any]) -> dict[str, Any]:
    """One named dense vector's settings in Qdrant's ``VectorParams`` shape."""
    out: dict[str, Any] = {
        "size": int(spec["dim"]),
        "distance": p.METRIC_TO_DISTANCE.get(spec["metric"], spec["metric"]),
        "hnsw_config": {"m": int(spec["M"]), "ef_construct": int(spec["ef_construction"])},
    }
    quant = spec.get("quantization")
    if quant:
        scalar = {"type": quant["type"], "always_ram": quant.get("always_ram", True)}
        if quant.get("quantile") is not None:
            scalar["quantile"] = quant["quantile"]
        out["quantization_config"] = {"scalar": scalar}
    if spec.get("on_disk"):
        out["on_disk"] = True
    return out


_SCHEMA_TYPES = frozenset(
    {"keyword", "integer", "float", "geo", "text", "bool", "datetime", "uuid"}
)


def payload_schema_out(schema: dict[str, Any]) -> dict[str, Any]:
    """The core's explicit payload indexes in Qdrant's ``payload_schema`` shape."""
    out = {}
    for key, entry in schema.items():
        data_type = entry.get("data_type") if isinstance(entry, dict) else None
        if data_type in _SCHEMA_TYPES:
            out[key] = {"data_type": data_type, "points": int(entry.get("points", 0))}
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def snapshot_description(path: Path) -> dict[str, Any]:
    stat = path.stat()
    checksum_file = path.with_name(path.name + ".checksum")
    checksum = checksum_file.read_text().strip() if checksum_file.exists() else None
    created = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    out: dict[str, Any] = {"name": path.name, "creation_time": created, "size": stat.st_size}
    if checksum:
        out["checksum"] = checksum
    return out
