"""A clustered collection as one collection: the Query API's runner over the router's fan-out.

A query with ``prefetch`` (fusion, re-scoring) or MMR cannot be answered by
merging each node's final top-k: RRF and DBSF fuse whole ranked lists, a
re-scoring node ranks the union of its prefetches' hits, MMR picks among the
candidates with their vectors. So the router runs the same tree a single
node runs (``vdb.http.hybrid.Runner``), the way Qdrant runs it across
shards: every leaf search, scroll and point read of the tree is one fan-out
to the partitions merged into the answer one node holding every point gives
(``RemoteCollection.search`` / ``scroll`` / ``get``), and the fusion,
re-scoring and MMR steps run once, in the router, on those merged lists.
Each step's result therefore equals the single node's, and so does the
answer.

The runner is synchronous (it is the node's own code); the router runs it in
a worker thread and each remote call hands its fan-out to the router's event
loop and waits for it.

``CollectionShape`` is the collection as the heartbeats describe it
(``dim``, ``metric``, ``config`` with the named and sparse vectors), which is
all the Query API's parsers need to check a request as a node would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from vdb.cluster.merge import merge_hits, merge_scroll
from vdb.errors import InvalidInput, Unavailable
from vdb.types import Hit, Record

_METRICS = {"Cosine": "cosine", "Euclid": "l2", "Dot": "ip"}


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


class CollectionShape:
    """What the Query API's parsers read of a collection (``dim``, ``metric``, ``config``),
    from the collection's heartbeat metadata."""

    def __init__(self, meta: dict[str, Any]) -> None:
        metric = meta.get("metric") or _METRICS.get(str(meta.get("distance")), "cosine")
        vectors = meta.get("vectors")
        if vectors is None:  # a node that does not report its vectors: the default one only
            vectors = {"": {"dim": int(meta["dim"]), "metric": metric}}
        self.dim = int(meta["dim"])
        self.metric = str(metric)
        self.vectors: dict[str, dict[str, Any]] = dict(vectors)
        self.sparse: dict[str, dict[str, Any]] = dict(meta.get("sparse_vectors") or {})
        self.named = bool(meta.get("named"))
        self.config = {
            "named": self.named,
            "default_vector": "" in self.vectors,
            "vectors": {n: s for n, s in self.vectors.items() if n != ""},
            "sparse_vectors": self.sparse,
        }

    def metric_of(self, using: str) -> str:
        """The metric of vector ``using`` (sparse vectors score by dot product)."""
        spec = self.vectors.get(using)
        return str(spec["metric"]) if spec else "ip"

    def check_sparse(self, using: str) -> None:
        """Refuse a sparse search the partitions cannot answer as one node would: IDF."""
        spec = self.sparse.get(using)
        if spec and spec.get("modifier") == "idf":
            raise InvalidInput(
                f"Bad request: sparse vector `{using}` has the idf modifier, which the vdb "
                "router does not support: IDF weighs a query by how many points of the whole "
                "collection hold each index, and each node knows only its own partitions, so "
                "merged scores would differ from one node's. Query a node holding every "
                "partition, or use a sparse vector without a modifier"
            )

    def with_vector(self, spec: Any) -> Any:
        """``with_vector`` as a node takes it: names only for a collection with named vectors."""
        if isinstance(spec, list | tuple):
            return list(spec) if self.named else bool(spec)
        return bool(spec)


Read = Callable[[str, bytes], Awaitable[tuple[list[Any], list[int]]]]
"""``read(path, body)``: one fan-out of ``POST path`` to the partitions: node results, missing."""


class RemoteCollection(CollectionShape):
    """The ``search`` / ``scroll`` / ``get`` a ``hybrid.Runner`` calls, each a fan-out.

    Called from a worker thread; ``read`` runs on ``loop``. ``missing`` collects
    the partitions without a live replica (only with partial results allowed).
    """

    def __init__(
        self,
        meta: dict[str, Any],
        name: str,
        read: Read,
        loop: asyncio.AbstractEventLoop,
        timeout_s: float,
    ) -> None:
        super().__init__(meta)
        self.name = name
        self._read = read
        self._loop = loop
        self._timeout_s = timeout_s
        self.missing: set[int] = set()

    def _call(self, path: str, body: dict[str, Any]) -> list[Any]:
        future = asyncio.run_coroutine_threadsafe(
            self._read(f"/collections/{self.name}{path}", _dumps(body)), self._loop
        )
        try:
            answers, missing = future.result(timeout=self._timeout_s + 1.0)
        except TimeoutError:
            future.cancel()
            raise Unavailable(
                f"Service unavailable: no answer from the nodes of `{self.name}` within "
                f"{self._timeout_s:.1f}s"
            ) from None
        self.missing.update(missing)
        return answers

    def search(
        self,
        vector: Any,
        *,
        k: int,
        ef: int | None = None,
        filter: dict[str, Any] | None = None,  # noqa: A002 - the core's keyword
        with_payload: bool = False,
        with_vectors: Any = False,
        exact: bool = False,
        partitions: Any = None,
        using: str = "",
    ) -> list[Hit]:
        """The collection's top ``k`` (vdb's scores: squared distances for l2), merged."""
        self.check_sparse(using)
        params: dict[str, Any] = {"exact": bool(exact)}
        if ef is not None:
            params["hnsw_ef"] = int(ef)
        body = {
            "query": vector,
            "limit": int(k),
            "filter": filter,
            "params": params,
            "with_payload": bool(with_payload),
            "with_vector": self.with_vector(with_vectors),
        }
        if using:
            body["using"] = using
        l2 = self.metric_of(using) == "l2"
        lists = [a["points"] for a in self._call("/points/query", body)]
        hits = merge_hits(lists, ascending=l2, offset=0, limit=int(k))
        return [
            Hit(
                h["id"],
                float(h["score"]) ** 2 if l2 else float(h["score"]),
                h.get("payload"),
                h.get("vector"),
            )
            for h in hits
        ]

    def scroll(
        self,
        *,
        filter: dict[str, Any] | None = None,  # noqa: A002
        limit: int = 10,
        offset: Any = None,
        with_payload: bool = True,
        partitions: Any = None,
    ) -> tuple[list[Record], Any]:
        body = {"filter": filter, "limit": int(limit), "with_payload": bool(with_payload)}
        if offset is not None:
            body["offset"] = offset
        answers = self._call("/points/scroll", body)
        points, next_offset = merge_scroll(
            ((a["points"], a.get("next_page_offset")) for a in answers), limit=int(limit)
        )
        return [Record(r["id"], r.get("payload"), r.get("vector")) for r in points], next_offset

    def get(self, ids: list[Any], *, with_payload: bool = True, with_vectors: Any = False) -> list:
        body = {
            "ids": list(ids),
            "with_payload": bool(with_payload),
            "with_vector": self.with_vector(with_vectors),
        }
        found: dict[tuple[type, Any], Record] = {}
        for records in self._call("/points", body):
            for r in records:
                record = Record(r["id"], r.get("payload"), r.get("vector"))
                found.setdefault((type(r["id"]), r["id"]), record)
        return list(found.values())
