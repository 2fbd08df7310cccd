"""The Query API over named and sparse vectors: prefetch, fusion, re-scoring and MMR.

``vdb.http.query_api`` parses the bodies; this module runs them against a
collection (``Collection.search(..., using=name)``) and shapes Qdrant's
``ScoredPoint``. A request is a tree: a node with ``prefetch`` first runs its
sub-queries (each with its own ``using``, ``filter`` and ``limit``; a parent's
filter applies to its prefetches too), then

* ``query: {"fusion": "rrf" | "dbsf"}`` (or ``{"rrf": {"k", "weights"}}``)
  fuses their results with ``vdb.fusion`` (scores made bigger-is-better
  first: Euclid distances are negated);
* ``query: {"nearest": v}`` re-scores the prefetched points with the node's
  own ``using`` vector (an exact search restricted to them);
* no ``query`` returns the prefetched points as they came.

A leaf node is one nearest search (``{"nearest": v, "mmr": {...}}`` picks
``limit`` of the ``candidates_limit`` nearest by maximal marginal relevance,
as Qdrant: ``(1 - diversity) * sim(q, c) - diversity * max sim(c, chosen)``,
each returned with its similarity to the query), or, without a query, the
points in id order (score 0). Payloads and vectors are read once, for the
final page.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vdb.errors import InvalidInput, PointNotFound
from vdb.fusion import DEFAULT_RRF_K, dbsf, rrf
from vdb.http import parsing as p
from vdb.http import query_api as qa

Hits = list[tuple[Any, float]]  # (point id, score as Qdrant reports it), best first


def vectors_config(col: Any) -> qa.VectorsConfig:
    """The collection's vector names in the parser's terms (for ``check_query_vectors`` and
    ``parse_point_vector``)."""
    config = col.config
    dense: dict[str, qa.DenseVectorConfig] = {}
    if config.get("default_vector", True):
        dense[""] = qa.DenseVectorConfig("", int(col.dim), col.metric)
    for name, spec in (config.get("vectors") or {}).items():
        dense[name] = qa.DenseVectorConfig(name, int(spec["dim"]), spec["metric"])
    sparse = {
        name: qa.SparseVectorConfig(name, spec.get("modifier"))
        for name, spec in (config.get("sparse_vectors") or {}).items()
    }
    return qa.VectorsConfig(dense, sparse)


def metric_of(col: Any, using: str) -> str:
    """``"l2"`` | ``"ip"`` | ``"cosine"`` of a dense name; sparse names score by dot product."""
    if using == "" and col.config.get("default_vector", True):
        return col.metric
    spec = (col.config.get("vectors") or {}).get(using)
    return spec["metric"] if spec else "ip"


def with_vector_spec(col: Any, value: Any, where: str = "with_vector") -> Any:
    """``with_vector``: a bool, or a list of existing names (a tuple)."""
    spec = qa.parse_with_vector(value, where)
    if isinstance(spec, tuple):
        config = vectors_config(col)
        for name in spec:
            if name not in config.dense and name not in config.sparse:
                raise InvalidInput(f"Wrong input: Not existing vector name error: {name}")
        if not col.config.get("named"):
            return bool(spec)  # one unnamed vector: returned bare, as before
        return list(spec)
    return spec


def vector_out(value: Any) -> Any:
    """A record's vector(s) in Qdrant's JSON shape (sparse: ``{"indices", "values"}``)."""
    if isinstance(value, dict):
        if set(value) == {"indices", "values"} and isinstance(value["indices"], np.ndarray):
            return {"indices": value["indices"].tolist(), "values": value["values"].tolist()}
        return {name: vector_out(v) for name, v in value.items()}
    return value


def _and(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None:
        return b
    if b is None:
        return a
    return {"must": [a, b]}


def _display(score: float, l2: bool) -> float:
    """vdb's score → Qdrant's (Euclid: the distance, the root of vdb's squared one)."""
    if math.isnan(score):
        return float(np.finfo(np.float32).max) if l2 else -float(np.finfo(np.float32).max)
    return math.sqrt(max(score, 0.0)) if l2 else score


def _passes(score: float, threshold: float | None, l2: bool) -> bool:
    return threshold is None or (score <= threshold if l2 else score >= threshold)


def _query_vector(col: Any, nearest: qa.Nearest, using: str) -> Any:
    """The query vector of ``nearest`` (a point id: that point's vector of ``using``)."""
    vector = nearest.vector
    if vector is None:
        records = col.get([nearest.point_id], with_payload=False, with_vectors=[using])
        got = None
        if records:
            got = records[0].vector
            if isinstance(got, dict):
                got = got.get(using)
        if got is None:
            raise PointNotFound(f"Not found: No point with id {nearest.point_id} found")
        vector = got
    if isinstance(vector, qa.SparseVector):
        return {"indices": vector.indices, "values": vector.values}
    return vector


class Runner:
    """Runs one parsed request (and its prefetches) against one collection."""

    def __init__(self, col: Any, partitions: Any = None) -> None:
        self.col = col
        self.partitions = partitions

    def search(
        self,
        vector: Any,
        using: str,
        k: int,
        flt: dict[str, Any] | None,
        params: qa.SearchParams,
        *,
        with_vectors: Any = False,
    ) -> list[Any]:
        if k <= 0:
            return []
        return self.col.search(
            vector,
            k=k,
            ef=params.hnsw_ef,
            filter=flt,
            with_payload=False,
            with_vectors=with_vectors,
            exact=bool(params.exact),
            partitions=self.partitions,
            using=using,
        )

    def node(
        self, node: Any, parent_filter: dict[str, Any] | None, limit: int
    ) -> tuple[Hits, bool]:
        """Hits of a request or prefetch node (best first) and whether smaller is better."""
        flt = _and(parent_filter, node.filter)
        query = node.query
        l2 = metric_of(self.col, node.using) == "l2"
        if node.prefetch:
            subs = [self.node(sub, flt, sub.limit) for sub in node.prefetch]
            if isinstance(query, qa.Fusion):
                lists = [[(i, -s if asc else s) for i, s in hits] for hits, asc in subs]
                if query.method == "rrf":
                    k = DEFAULT_RRF_K if query.k is None else query.k
                    fused = rrf(lists, k=k, weights=query.weights)
                else:
                    fused = dbsf(lists)
                fused = [(i, float(s)) for i, s in fused if _passes(s, node.score_threshold, False)]
                return fused[:limit], False
            candidates = list(dict.fromkeys(i for hits, _ in subs for i, _ in hits))
            if query is None:
                merged: dict[Any, float] = {}
                for hits, _ in subs:
                    for i, s in hits:
                        merged.setdefault(i, s)
                return list(merged.items())[:limit], subs[0][1] if subs else False
            if not candidates:
                return [], l2
            restrict = _and(flt, {"must": [{"has_id": candidates}]})
            return self.nearest(query, node, restrict, limit, len(candidates), exact=True), l2
        if query is None:
            records, _ = self.col.scroll(
                filter=flt, limit=max(1, limit), with_payload=False, partitions=self.partitions
            )
            return [(r.id, 0.0) for r in records[:limit]], False
        if isinstance(query, qa.Fusion):
            raise InvalidInput("Bad request: a fusion query needs `prefetch`")
        return self.nearest(query, node, flt, limit, limit, exact=False), l2

    def nearest(
        self,
        query: qa.Nearest,
        node: Any,
        flt: dict[str, Any] | None,
        limit: int,
        pool: int,
        *,
        exact: bool,
    ) -> Hits:
        using = node.using
        l2 = metric_of(self.col, using) == "l2"
        vector = _query_vector(self.col, query, using)
        params = node.params
        if exact and not params.exact:
            params = qa.SearchParams(params.hnsw_ef, True)
        by_id = query.vector is None
        extra = 1 if by_id else 0
        if query.mmr is not None:
            if isinstance(vector, dict):
                raise InvalidInput("Bad request: `mmr` works on dense vectors only")
            fetch = max(limit, query.mmr.candidates_limit or limit)
            found = self.search(
                vector, using, min(fetch, pool) + extra, flt, params, with_vectors=[using]
            )
            if by_id:
                found = [h for h in found if h.id != query.point_id]
            hits = mmr_select(found, vector, using, metric_of(self.col, using), query.mmr, limit)
        else:
            found = self.search(vector, using, min(limit, pool) + extra, flt, params)
            hits = [(h.id, float(h.score)) for h in found if not (by_id and h.id == query.point_id)]
        out = []
        for point_id, score in hits:
            score = _display(score, l2)
            if _passes(score, node.score_threshold, l2):
                out.append((point_id, score))
        return out[:limit]


def mmr_select(
    found: list[Any], query: Any, using: str, metric: str, mmr: qa.Mmr, limit: int
) -> Hits:
    """Maximal marginal relevance over ``found`` (hits with their ``using`` vectors)."""
    if not found:
        return []
    vecs = np.stack([np.asarray(_named(h.vector, using), np.float32) for h in found])
    q = np.asarray(query, np.float32)
    if metric == "cosine":
        q = q / max(float(np.linalg.norm(q)), 1e-30)
    if metric == "l2":
        rel = -((vecs - q) ** 2).sum(axis=1)
        diff = vecs[:, None, :] - vecs[None, :, :]
        pair = -(diff**2).sum(axis=2)
    else:
        rel = vecs @ q
        pair = vecs @ vecs.T
    lam = 1.0 - float(mmr.diversity)
    chosen: list[int] = []
    left = list(range(len(found)))
    best_pair = np.full(len(found), -np.inf)
    while left and len(chosen) < limit:
        if chosen:
            scores = lam * rel[left] - (1.0 - lam) * best_pair[left]
        else:
            scores = rel[left]
        j = left[int(np.argmax(scores))]
        chosen.append(j)
        left.remove(j)
        best_pair = np.maximum(best_pair, pair[j])
    return [(found[j].id, float(found[j].score)) for j in chosen]


def _named(vector: Any, using: str) -> Any:
    return vector.get(using) if isinstance(vector, dict) else vector


def run(col: Any, request: qa.QueryRequest, partitions: Any = None) -> list[dict[str, Any]]:
    """One ``QueryRequest`` → Qdrant's ``ScoredPoint`` dicts (``limit`` after ``offset``)."""
    qa.check_query_vectors(request, vectors_config(col))
    runner = Runner(col, partitions)
    hits, _ = runner.node(request, None, request.limit + request.offset)
    hits = hits[request.offset : request.offset + request.limit]
    fetch_payload, selector = p.parse_with_payload(request.with_payload, "with_payload", False)
    spec = with_vector_spec(
        col,
        list(request.with_vector)
        if isinstance(request.with_vector, tuple)
        else request.with_vector,
    )
    records = {}
    if hits and (fetch_payload or spec):
        for r in col.get([i for i, _ in hits], with_payload=fetch_payload, with_vectors=spec):
            records[r.id] = r
    out = []
    for point_id, score in hits:
        point: dict[str, Any] = {"id": p.id_out(point_id), "version": 0, "score": float(score)}
        if fetch_payload or spec:
            record = records.get(point_id)
            if record is None:  # deleted meanwhile
                continue
            if fetch_payload:
                point["payload"] = selector(record.payload) if selector else (record.payload or {})
            if spec and record.vector is not None:
                point["vector"] = vector_out(record.vector)
        out.append(point)
    return out


def from_search_request(body: dict[str, Any], where: str) -> qa.QueryRequest:
    """A legacy ``SearchRequest`` (``vector`` maybe ``{"name", "vector"}``) as a query."""
    p.check_fields(
        body,
        where,
        ("vector", "filter", "params", "score_threshold", "limit", "offset", "with_vector", "with_payload"),
        ("shard_key",),
    )  # fmt: skip
    if body.get("vector") is None:
        raise InvalidInput("Format error in JSON body: missing field `vector`")
    if body.get("limit") is None:
        raise InvalidInput("Format error in JSON body: missing field `limit`")
    name, vector = qa.parse_named_vector(body["vector"], "vector")
    rest = {k: v for k, v in body.items() if k != "vector"}
    request = qa.parse_query_request({**rest, "using": name}, where)
    return qa.QueryRequest(
        query=qa.Nearest(vector=vector),
        using=name,
        filter=request.filter,
        limit=request.limit,
        offset=request.offset,
        score_threshold=request.score_threshold,
        params=request.params,
        prefetch=(),
        with_vector=request.with_vector,
        with_payload=request.with_payload,
    )
