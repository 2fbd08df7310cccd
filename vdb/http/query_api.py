"""Parsing of Qdrant's multi-vector shapes: named dense vectors, sparse vectors, the Query API.

Pure functions from request-body JSON to small typed dataclasses; no routes and
no calls into the core. The shapes are those an unmodified qdrant-client
(1.20) sends: ``CreateCollection.vectors`` (one ``VectorParams`` or a map of
names to them, ``""`` being the default vector), ``sparse_vectors`` (a map of
names to ``SparseVectorParams``; an empty map means none), point vectors (a
dense list, or a map of names to dense lists or ``{"indices", "values"}``),
``QueryRequest`` with ``using``, ``prefetch`` (one or a list, nested) and
``query`` (a vector, a point id, ``{"nearest": ...}``, ``{"fusion": "rrf" |
"dbsf"}`` or ``{"rrf": {"k", "weights"}}``), and ``QueryRequestBatch``.

Every function raises ``vdb.errors.InvalidInput`` naming the field path at
fault, e.g. ```points[0].vector.text-sparse.indices`: duplicate index 7``.
Unknown fields are refused; fields Qdrant has and vdb does not implement are
refused with a message saying so. Sparse vectors are checked as Qdrant's
models check them: indices distinct, non-negative integers below 2**32; as
many values as indices, finite; unsorted indices are accepted (the index sorts
them on write); an empty vector is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vdb.errors import DimensionMismatch
from vdb.http import parsing as p

DEFAULT_VECTOR = ""
"""The name of the unnamed (default) dense vector."""
MAX_PREFETCH_DEPTH = 8
MAX_INDEX = (1 << 32) - 1
DEFAULT_LIMIT = 10
_MAX_NAME = 255

_QUERY_KINDS = frozenset(
    {
        "nearest", "recommend", "discover", "context", "order_by", "fusion", "rrf", "formula",
        "sample", "relevance_feedback", "text",
    }
)  # fmt: skip
_INFERENCE_KEYS = (frozenset({"text", "model"}), frozenset({"image", "model"}))


_type_name = p._type_name  # the JSON type names the parsing errors use


# -- results ------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseVectorConfig:
    """One named dense vector of a collection (``VectorParams``)."""

    name: str
    size: int
    metric: str  # "cosine" | "l2" | "ip"
    M: int | None = None
    ef_construction: int | None = None


@dataclass(frozen=True)
class SparseVectorConfig:
    """One named sparse vector of a collection (``SparseVectorParams``)."""

    name: str
    modifier: str | None = None  # None | "idf"
    full_scan_threshold: int | None = None


@dataclass(frozen=True)
class VectorsConfig:
    """All vectors of a collection: dense and sparse, by name (names never repeat)."""

    dense: dict[str, DenseVectorConfig] = field(default_factory=dict)
    sparse: dict[str, SparseVectorConfig] = field(default_factory=dict)


@dataclass(frozen=True)
class SparseVector:
    """A sparse vector as sent: ``indices`` uint32 and ``values`` float32 of equal length."""

    indices: np.ndarray
    values: np.ndarray


Vector = np.ndarray | SparseVector
"""A dense float32 vector or a sparse one."""


@dataclass(frozen=True)
class Nearest:
    """``nearest``: the hits closest to ``vector`` (dense or sparse) or to the stored vector of
    point ``point_id``; ``mmr`` re-ranking when given."""

    vector: Vector | None = None
    point_id: int | str | None = None
    mmr: Mmr | None = None


@dataclass(frozen=True)
class Mmr:
    """Maximal marginal relevance: ``diversity`` in [0, 1] (Qdrant's default 0.5),
    ``candidates_limit`` (default: the request's limit)."""

    diversity: float = 0.5
    candidates_limit: int | None = None


@dataclass(frozen=True)
class Fusion:
    """``fusion``: combine the prefetches' results; ``method`` "rrf" or "dbsf". ``k`` and
    ``weights`` come from ``{"rrf": {...}}`` (``k`` None: Qdrant's default 2)."""

    method: str
    k: int | None = None
    weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SearchParams:
    hnsw_ef: int | None = None
    exact: bool = False


@dataclass(frozen=True)
class Prefetch:
    """One sub-query of a ``prefetch``: its own query, vector name, filter, limit and nested
    prefetches. ``query`` None with prefetches means "pass them through"."""

    query: Nearest | Fusion | None
    using: str
    filter: dict[str, Any] | None
    limit: int
    score_threshold: float | None
    params: SearchParams
    prefetch: tuple[Prefetch, ...] = ()


@dataclass(frozen=True)
class QueryRequest:
    """A ``QueryRequest``: a ``Prefetch`` at the top plus paging and what to return.
    ``with_vector`` is a bool or a tuple of vector names; ``with_payload`` is the raw value
    (``parsing.parse_with_payload`` reads it)."""

    query: Nearest | Fusion | None
    using: str
    filter: dict[str, Any] | None
    limit: int
    offset: int
    score_threshold: float | None
    params: SearchParams
    prefetch: tuple[Prefetch, ...]
    with_vector: bool | tuple[str, ...]
    with_payload: Any


# -- collection config ------------------------------------------------------------------------


def parse_name(value: Any, where: str) -> str:
    """A vector name: a string of at most 255 characters (``""`` is the default vector)."""
    name = p.parse_str(value, where)
    if len(name) > _MAX_NAME:
        raise p.fail(f"`{where}`: vector names are at most {_MAX_NAME} characters")
    p.check_json(name, where)
    return name


def parse_vector_params(value: Any, where: str, name: str) -> DenseVectorConfig:
    params = p.check_object(value, where)
    p.check_fields(
        params,
        f"VectorParams `{where}`",
        ("size", "distance", "hnsw_config", "on_disk", "datatype"),
        ("quantization_config", "multivector_config", "memory"),
    )
    for key in ("size", "distance"):
        if key not in params:
            raise p.fail(f"Format error in JSON body: `{where}.{key}` is required")
    size = p.parse_int(params["size"], f"{where}.size", minimum=1, maximum=65536)
    distance = params["distance"]
    if distance not in p.DISTANCES:
        raise p.fail(
            f"Bad request: `{where}.distance` {distance!r} is not supported by vdb "
            f"(one of {', '.join(p.DISTANCES)})"
        )
    if params.get("on_disk"):
        raise p.fail(f"Bad request: `{where}.on_disk` is not supported by vdb")
    if params.get("datatype") not in (None, "float32"):
        raise p.fail(f"Bad request: `{where}.datatype` other than float32 is not supported")
    M = ef_construction = None
    hnsw = params.get("hnsw_config")
    if hnsw is not None:
        hnsw_where = f"{where}.hnsw_config"
        hnsw = p.check_object(hnsw, hnsw_where)
        p.check_fields(
            hnsw,
            hnsw_where,
            ("m", "ef_construct", "max_indexing_threads", "full_scan_threshold"),
            ("on_disk", "payload_m", "memory", "inline_storage"),
        )
        if hnsw.get("m") is not None:
            M = p.parse_int(hnsw["m"], f"{hnsw_where}.m", minimum=2, maximum=512)
        if hnsw.get("ef_construct") is not None:
            ef_construction = p.parse_int(
                hnsw["ef_construct"], f"{hnsw_where}.ef_construct", minimum=4, maximum=4096
            )
        for key in ("max_indexing_threads", "full_scan_threshold"):
            if hnsw.get(key) is not None:
                p.parse_int(hnsw[key], f"{hnsw_where}.{key}", minimum=0)
    return DenseVectorConfig(name, size, p.DISTANCES[distance], M, ef_construction)


def parse_vectors_config(value: Any, where: str = "vectors") -> dict[str, DenseVectorConfig]:
    """``CreateCollection.vectors``: one ``VectorParams`` (the default vector ``""``) or a map
    of names to ``VectorParams``; ``None`` or ``{}`` means no dense vectors."""
    if value is None:
        return {}
    body = p.check_object(value, where)
    if "size" in body or "distance" in body:
        return {DEFAULT_VECTOR: parse_vector_params(body, where, DEFAULT_VECTOR)}
    out = {}
    for raw_name, params in body.items():
        name = parse_name(raw_name, f"{where} name")
        out[name] = parse_vector_params(params, f"{where}.{name}", name)
    return out


def parse_sparse_vectors_config(
    value: Any, where: str = "sparse_vectors"
) -> dict[str, SparseVectorConfig]:
    """``CreateCollection.sparse_vectors``: a map of names to ``SparseVectorParams``
    (``{"modifier": "idf" | "none", "index": {...}}``); ``None`` or ``{}`` means none."""
    if value is None:
        return {}
    body = p.check_object(value, where)
    out = {}
    for raw_name, params in body.items():
        name = parse_name(raw_name, f"{where} name")
        here = f"{where}.{name}"
        params = p.check_object({} if params is None else params, here)
        p.check_fields(params, f"SparseVectorParams `{here}`", ("modifier", "index"))
        modifier = params.get("modifier")
        if modifier not in (None, "none", "idf"):
            raise p.fail(
                f'Format error in JSON body: `{here}.modifier` must be "none" or "idf", '
                f"got {modifier!r}"
            )
        threshold = None
        index = params.get("index")
        if index is not None:
            index_where = f"{here}.index"
            index = p.check_object(index, index_where)
            p.check_fields(
                index, index_where, ("full_scan_threshold", "on_disk", "datatype"), ("memory",)
            )
            if index.get("full_scan_threshold") is not None:
                threshold = p.parse_int(
                    index["full_scan_threshold"], f"{index_where}.full_scan_threshold", minimum=0
                )
            if index.get("on_disk") is not None and p.parse_bool(
                index["on_disk"], f"{index_where}.on_disk"
            ):
                raise p.fail(f"Bad request: `{index_where}.on_disk` is not supported by vdb")
            if index.get("datatype") not in (None, "float32"):
                raise p.fail(
                    f"Bad request: `{index_where}.datatype` other than float32 is not supported"
                )
        out[name] = SparseVectorConfig(name, "idf" if modifier == "idf" else None, threshold)
    return out


def parse_collection_vectors(body: dict[str, Any]) -> VectorsConfig:
    """The ``vectors`` and ``sparse_vectors`` of a ``CreateCollection`` body, checked
    together: a name is dense or sparse, never both; at least one vector exists."""
    dense = parse_vectors_config(body.get("vectors"))
    sparse = parse_sparse_vectors_config(body.get("sparse_vectors"))
    both = sorted(set(dense) & set(sparse))
    if both:
        raise p.fail(
            f"Wrong input: vector name {both[0]!r} is both in `vectors` and `sparse_vectors`"
        )
    if not dense and not sparse:
        raise p.fail("Bad request: a collection needs `vectors` or `sparse_vectors`")
    return VectorsConfig(dense, sparse)


# -- vectors ---------------------------------------------------------------------------------


def parse_sparse_vector(value: Any, where: str) -> SparseVector:
    """``{"indices": [...], "values": [...]}`` checked as Qdrant's ``SparseVector`` model."""
    body = p.check_object(value, where)
    p.check_fields(body, f"SparseVector `{where}`", ("indices", "values"))
    for key in ("indices", "values"):
        if key not in body:
            raise p.fail(f"Format error in JSON body: `{where}.{key}` is required")
    raw_indices = body["indices"]
    raw_values = body["values"]
    if not isinstance(raw_indices, list):
        raise p.fail(f"`{where}.indices` must be an array of integers")
    if not isinstance(raw_values, list):
        raise p.fail(f"`{where}.values` must be an array of numbers")
    for i, x in enumerate(raw_indices):
        if type(x) is not int:
            raise p.fail(f"`{where}.indices[{i}]` must be an integer, got {_type_name(x)}")
        if x < 0 or x > MAX_INDEX:
            raise p.fail(f"`{where}.indices[{i}]`: {x} is not a valid index (0 to {MAX_INDEX})")
    for i, x in enumerate(raw_values):
        if type(x) is not float and type(x) is not int:
            raise p.fail(f"`{where}.values[{i}]` must be a number, got {_type_name(x)}")
    if len(raw_indices) != len(raw_values):
        raise p.fail(
            f"Validation error: `{where}`: indices and values must be the same length, got "
            f"{len(raw_indices)} indices and {len(raw_values)} values"
        )
    indices = np.array(raw_indices, dtype=np.uint32)
    with np.errstate(over="ignore"):
        values = np.array(raw_values, dtype=np.float32)
    if values.size and not np.isfinite(values).all():
        bad = int(np.argmin(np.isfinite(values)))
        raise p.fail(
            f"`{where}.values[{bad}]`: values must be finite (no NaN or infinity) and within "
            "float32 range"
        )
    if indices.size > 1:
        ordered = np.sort(indices)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if repeated.size:
            raise p.fail(
                f"Validation error: `{where}.indices`: indices must be unique, index "
                f"{int(repeated[0])} is repeated"
            )
    return SparseVector(indices, values)


def _is_sparse(value: Any) -> bool:
    return isinstance(value, dict) and ("indices" in value or "values" in value)


def _refuse_inference(value: Any, where: str) -> None:
    if isinstance(value, dict):
        keys = frozenset(value)
        if any(need <= keys for need in _INFERENCE_KEYS) or "object" in keys:
            raise p.fail(
                f"Bad request: `{where}`: documents, images and inference objects are not "
                "supported by vdb (send vectors)"
            )


def parse_one_vector(value: Any, where: str, config: VectorsConfig | None, name: str) -> Vector:
    """One vector under ``name``: dense (list of numbers) or sparse. With ``config`` the name
    must exist, with the right kind, and dense vectors must have its size."""
    _refuse_inference(value, where)
    if config is not None and name not in config.dense and name not in config.sparse:
        raise p.fail(f"Wrong input: Not existing vector name error: {name} (`{where}`)")
    if _is_sparse(value):
        if config is not None and name not in config.sparse:
            raise p.fail(f"Wrong input: `{where}`: vector {name!r} is dense, got a sparse vector")
        return parse_sparse_vector(value, where)
    if config is not None and name in config.sparse:
        raise p.fail(
            f"Wrong input: `{where}`: vector {name!r} is sparse, expected "
            '{"indices": [...], "values": [...]}'
        )
    if isinstance(value, dict):
        raise p.fail(f"`{where}` must be an array of numbers or a sparse vector")
    dim = config.dense[name].size if config is not None else None
    return p.parse_vector(value, where, dim)


def parse_point_vector(
    value: Any, where: str, config: VectorsConfig | None = None
) -> dict[str, Vector]:
    """A point's ``vector``: a dense list (the default vector) or a map of names to dense
    lists or sparse vectors. A point may lack some of the collection's names."""
    if isinstance(value, dict) and not _is_sparse(value):
        _refuse_inference(value, where)
        out = {}
        for raw_name, vector in value.items():
            name = parse_name(raw_name, f"{where} name")
            out[name] = parse_one_vector(vector, f"{where}.{name}", config, name)
        return out
    if _is_sparse(value):
        raise p.fail(
            f"Wrong input: `{where}`: a sparse vector needs a name, e.g. "
            '{"text": {"indices": [...], "values": [...]}}'
        )
    return {DEFAULT_VECTOR: parse_one_vector(value, where, config, DEFAULT_VECTOR)}


def parse_batch_vectors(
    value: Any, where: str, count: int, config: VectorsConfig | None = None
) -> list[dict[str, Vector]]:
    """``Batch.vectors``: a list of dense vectors (default vector), or a map of names to a
    list of ``count`` vectors each. Returns one name -> vector map per point."""
    if isinstance(value, list):
        if len(value) != count:
            raise p.fail(f"`{where}` has {len(value)} vectors but there are {count} ids")
        return [
            {DEFAULT_VECTOR: parse_one_vector(v, f"{where}[{i}]", config, DEFAULT_VECTOR)}
            for i, v in enumerate(value)
        ]
    body = p.check_object(value, where)
    out: list[dict[str, Vector]] = [{} for _ in range(count)]
    for raw_name, vectors in body.items():
        name = parse_name(raw_name, f"{where} name")
        here = f"{where}.{name}"
        if not isinstance(vectors, list):
            raise p.fail(f"`{here}` must be an array of vectors, got {_type_name(vectors)}")
        if len(vectors) != count:
            raise p.fail(f"`{here}` has {len(vectors)} vectors but there are {count} ids")
        for i, v in enumerate(vectors):
            out[i][name] = parse_one_vector(v, f"{here}[{i}]", config, name)
    return out


def parse_with_vector(value: Any, where: str = "with_vector") -> bool | tuple[str, ...]:
    """``true | false | [names]``."""
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, list):
        return tuple(parse_name(n, f"{where}[{i}]") for i, n in enumerate(value))
    raise p.fail(f"`{where}` must be a boolean or an array of vector names")


def parse_named_vector(value: Any, where: str = "vector") -> tuple[str, Vector]:
    """The legacy ``/points/search`` vector: a dense list, ``{"name", "vector"}`` with a dense
    vector (``NamedVector``) or a sparse one (``NamedSparseVector``)."""
    if isinstance(value, dict) and set(value) == {"name", "vector"}:
        name = parse_name(value["name"], f"{where}.name")
        inner = value["vector"]
        if _is_sparse(inner):
            return name, parse_sparse_vector(inner, f"{where}.vector")
        return name, p.parse_vector(inner, f"{where}.vector")
    if isinstance(value, dict):
        raise p.fail(f"`{where}` must be an array of numbers or a {{name, vector}} object")
    return DEFAULT_VECTOR, p.parse_vector(value, where)


@dataclass(frozen=True)
class PointVectors:
    """One entry of ``update_vectors``: the point and the vectors it gets (others kept)."""

    id: int | str
    vectors: dict[str, Vector]


@dataclass(frozen=True)
class DeleteVectors:
    """``delete_vectors``: drop the vectors ``names`` of the points ``ids`` or of the points
    matching ``filter`` (exactly one of the two is set)."""

    names: tuple[str, ...]
    ids: list[int | str] | None
    filter: dict[str, Any] | None


def parse_update_vectors(body: Any, config: VectorsConfig | None = None) -> list[PointVectors]:
    """A ``PUT /collections/{c}/points/vectors`` body (``UpdateVectors``)."""
    body = p.check_object(body, "UpdateVectors")
    p.check_fields(body, "UpdateVectors", ("points",), ("shard_key", "update_filter"))
    points = body.get("points")
    if not isinstance(points, list):
        raise p.fail("Format error in JSON body: `points` must be an array of point vectors")
    out = []
    for i, point in enumerate(points):
        where = f"points[{i}]"
        point = p.check_object(point, where)
        p.check_fields(point, f"PointVectors `{where}`", ("id", "vector"))
        for key in ("id", "vector"):
            if key not in point:
                raise p.fail(f"Format error in JSON body: `{where}.{key}` is required")
        vectors = parse_point_vector(point["vector"], f"{where}.vector", config)
        if not vectors:
            raise p.fail(f"Validation error: `{where}.vector` must hold at least one vector")
        out.append(PointVectors(p.parse_id(point["id"], f"{where}.id"), vectors))
    return out


def parse_delete_vectors(body: Any, config: VectorsConfig | None = None) -> DeleteVectors:
    """A ``POST /collections/{c}/points/vectors/delete`` body (``DeleteVectors``)."""
    body = p.check_object(body, "DeleteVectors")
    p.check_fields(body, "DeleteVectors", ("points", "filter", "vector"), ("shard_key",))
    raw = body.get("vector")
    if not isinstance(raw, list):
        raise p.fail("Format error in JSON body: `vector` must be an array of vector names")
    names = tuple(parse_name(n, f"vector[{i}]") for i, n in enumerate(raw))
    if config is not None:
        for name in names:
            if name not in config.dense and name not in config.sparse:
                raise p.fail(f"Wrong input: Not existing vector name error: {name}")
    ids = None if body.get("points") is None else p.parse_ids(body["points"], "points")
    flt = p.parse_filter(body.get("filter"))
    if (ids is None) == (flt is None):
        raise p.fail("Bad request: `delete_vectors` needs exactly one of `points` or `filter`")
    return DeleteVectors(names, ids, flt)


# -- Query API --------------------------------------------------------------------------------


def parse_params(value: Any, where: str) -> SearchParams:
    if value is None:
        return SearchParams()
    params = p.check_object(value, where)
    p.check_fields(
        params, f"SearchParams `{where}`", ("hnsw_ef", "exact", "indexed_only"), ("quantization", "acorn", "idf")
    )  # fmt: skip
    ef = None
    if params.get("hnsw_ef") is not None:
        ef = p.parse_int(params["hnsw_ef"], f"{where}.hnsw_ef", minimum=1, maximum=65536)
    exact = False
    if params.get("exact") is not None:
        exact = p.parse_bool(params["exact"], f"{where}.exact")
    if params.get("indexed_only") is not None:
        p.parse_bool(params["indexed_only"], f"{where}.indexed_only")
    return SearchParams(ef, exact)


def parse_mmr(value: Any, where: str) -> Mmr:
    body = p.check_object(value, where)
    p.check_fields(body, f"Mmr `{where}`", ("diversity", "candidates_limit"))
    diversity = 0.5
    if body.get("diversity") is not None:
        diversity = p.parse_float(body["diversity"], f"{where}.diversity")
        if not 0.0 <= diversity <= 1.0:
            raise p.fail(f"Validation error: `{where}.diversity` must be in [0, 1]")
    limit = None
    if body.get("candidates_limit") is not None:
        limit = p.parse_int(body["candidates_limit"], f"{where}.candidates_limit", minimum=1)
    return Mmr(diversity, limit)


def parse_query(value: Any, where: str = "query") -> Nearest | Fusion | None:
    """A ``QueryInterface``: a vector (dense list or sparse), a point id, ``{"nearest": ...,
    "mmr"?: ...}``, ``{"fusion": "rrf" | "dbsf"}`` or ``{"rrf": {"k"?, "weights"?}}``."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise p.fail(f"`{where}` must be a vector, a point id or a query object")
    if isinstance(value, int | str):
        return Nearest(point_id=p.parse_id(value, where))
    if isinstance(value, list):
        return Nearest(vector=p.parse_vector(value, where))
    body = p.check_object(value, where)
    if _is_sparse(body):
        return Nearest(vector=parse_sparse_vector(body, where))
    _refuse_inference(body, where)
    kinds = [k for k in body if k in _QUERY_KINDS]
    unknown = [k for k in body if k not in _QUERY_KINDS and k != "mmr"]
    if unknown:
        raise p.fail(f"Format error in JSON body: unknown query type `{unknown[0]}` in `{where}`")
    if len(kinds) != 1 or ("mmr" in body and kinds != ["nearest"]):
        raise p.fail(f"Format error in JSON body: `{where}` must hold exactly one query type")
    kind = kinds[0]
    if kind == "nearest":
        inner = parse_query(body["nearest"], f"{where}.nearest")
        if not isinstance(inner, Nearest):
            raise p.fail(f"`{where}.nearest` must be a vector or a point id")
        mmr = parse_mmr(body["mmr"], f"{where}.mmr") if body.get("mmr") is not None else None
        return Nearest(vector=inner.vector, point_id=inner.point_id, mmr=mmr)
    if kind == "fusion":
        method = body["fusion"]
        if method not in ("rrf", "dbsf"):
            raise p.fail(
                f'Format error in JSON body: `{where}.fusion` must be "rrf" or "dbsf", '
                f"got {method!r}"
            )
        return Fusion(method)
    if kind == "rrf":
        rrf = p.check_object(body["rrf"], f"{where}.rrf")
        p.check_fields(rrf, f"Rrf `{where}.rrf`", ("k", "weights"))
        k = None
        if rrf.get("k") is not None:
            k = p.parse_int(rrf["k"], f"{where}.rrf.k", minimum=1)
        weights = None
        if rrf.get("weights") is not None:
            raw = rrf["weights"]
            if not isinstance(raw, list):
                raise p.fail(f"`{where}.rrf.weights` must be an array of numbers")
            weights = tuple(
                p.parse_float(w, f"{where}.rrf.weights[{i}]") for i, w in enumerate(raw)
            )
            if any(w < 0 for w in weights):
                raise p.fail(f"Validation error: `{where}.rrf.weights` must not be negative")
        return Fusion("rrf", k, weights)
    raise p.fail(f"Bad request: query type `{kind}` is not supported by vdb")


def _parse_prefetches(value: Any, where: str, depth: int) -> tuple[Prefetch, ...]:
    if value is None:
        return ()
    if depth > MAX_PREFETCH_DEPTH:
        raise p.fail(f"`{where}`: prefetches nest at most {MAX_PREFETCH_DEPTH} levels")
    if isinstance(value, dict):
        return (_parse_prefetch(value, where, depth),)
    if not isinstance(value, list):
        raise p.fail(f"`{where}` must be a prefetch object or an array of them")
    return tuple(_parse_prefetch(v, f"{where}[{i}]", depth) for i, v in enumerate(value))


def _parse_using(value: Any, where: str) -> str:
    return DEFAULT_VECTOR if value is None else parse_name(value, where)


def _check_fusion(query: Any, prefetch: tuple, where: str) -> None:
    if isinstance(query, Fusion):
        if not prefetch:
            raise p.fail(f"Bad request: `{where}`: a fusion query needs `prefetch`")
        if query.weights is not None and len(query.weights) != len(prefetch):
            raise p.fail(
                f"Bad request: `{where}.rrf.weights`: Number of weights in RRF should match "
                f"number of pre-fetches: got {len(query.weights)}, expected {len(prefetch)}"
            )


def _check_limit(value: Any, where: str) -> int:
    return p.parse_limit(value, where, DEFAULT_LIMIT, 1 << 31, minimum=0)


def _parse_threshold(value: Any, where: str) -> float | None:
    return None if value is None else p.parse_float(value, where)


def _parse_prefetch(value: Any, where: str, depth: int) -> Prefetch:
    body = p.check_object(value, where)
    p.check_fields(
        body,
        f"Prefetch `{where}`",
        ("prefetch", "query", "using", "filter", "params", "score_threshold", "limit"),
        ("lookup_from",),
    )
    prefetch = _parse_prefetches(body.get("prefetch"), f"{where}.prefetch", depth + 1)
    query = parse_query(body.get("query"), f"{where}.query")
    _check_fusion(query, prefetch, f"{where}.query")
    return Prefetch(
        query=query,
        using=_parse_using(body.get("using"), f"{where}.using"),
        filter=p.parse_filter(body.get("filter"), f"{where}.filter"),
        limit=_check_limit(body.get("limit"), f"{where}.limit"),
        score_threshold=_parse_threshold(body.get("score_threshold"), f"{where}.score_threshold"),
        params=parse_params(body.get("params"), f"{where}.params"),
        prefetch=prefetch,
    )


def parse_query_request(body: Any, where: str = "QueryRequest") -> QueryRequest:
    """A ``POST /collections/{c}/points/query`` body (or one ``searches[i]`` of a batch)."""
    body = p.check_object(body, where)
    p.check_fields(
        body,
        where,
        (
            "prefetch", "query", "using", "filter", "params", "score_threshold", "limit",
            "offset", "with_vector", "with_payload",
        ),
        ("shard_key", "lookup_from"),
    )  # fmt: skip
    prefix = "" if where == "QueryRequest" else f"{where}."
    prefetch = _parse_prefetches(body.get("prefetch"), f"{prefix}prefetch", 1)
    query = parse_query(body.get("query"), f"{prefix}query")
    _check_fusion(query, prefetch, f"{prefix}query")
    offset = p.parse_limit(body.get("offset"), f"{prefix}offset", 0, 1 << 31, minimum=0)
    return QueryRequest(
        query=query,
        using=_parse_using(body.get("using"), f"{prefix}using"),
        filter=p.parse_filter(body.get("filter"), f"{prefix}filter"),
        limit=_check_limit(body.get("limit"), f"{prefix}limit"),
        offset=offset,
        score_threshold=_parse_threshold(body.get("score_threshold"), f"{prefix}score_threshold"),
        params=parse_params(body.get("params"), f"{prefix}params"),
        prefetch=prefetch,
        with_vector=parse_with_vector(body.get("with_vector"), f"{prefix}with_vector"),
        with_payload=body.get("with_payload"),
    )


def parse_query_batch(body: Any) -> list[QueryRequest]:
    """A ``POST /collections/{c}/points/query/batch`` body: ``{"searches": [QueryRequest]}``."""
    body = p.check_object(body, "QueryRequestBatch")
    p.check_fields(body, "QueryRequestBatch", ("searches",))
    searches = body.get("searches")
    if not isinstance(searches, list):
        raise p.fail("Format error in JSON body: `searches` must be an array of query requests")
    return [parse_query_request(s, f"searches[{i}]") for i, s in enumerate(searches)]


def check_query_vectors(
    request: QueryRequest | Prefetch, config: VectorsConfig, where: str = ""
) -> None:
    """Check every query of a request against the collection's vectors: ``using`` names an
    existing vector, a sparse query goes to a sparse vector and a dense one, of the right
    size, to a dense vector. Nested prefetches are checked too."""
    name = request.using
    query = request.query
    here = f"{where}query" if where else "query"
    if isinstance(query, Nearest) or (query is None and not request.prefetch):
        if name not in config.dense and name not in config.sparse:
            raise p.fail(f"Wrong input: Not existing vector name error: {name}")
    if isinstance(query, Nearest) and query.vector is not None:
        vector = query.vector
        if isinstance(vector, SparseVector):
            if name not in config.sparse:
                raise p.fail(f"Wrong input: `{here}`: vector {name!r} is dense, got a sparse query")
        else:
            if name not in config.dense:
                raise p.fail(f"Wrong input: `{here}`: vector {name!r} is sparse, got a dense query")
            size = config.dense[name].size
            if vector.shape[0] != size:
                raise DimensionMismatch(
                    f"Wrong input: Vector dimension error: expected dim: {size}, got "
                    f"{vector.shape[0]} (`{here}`)"
                )
    for i, sub in enumerate(request.prefetch):
        check_query_vectors(sub, config, f"{where}prefetch[{i}].")


__all__ = [
    "DEFAULT_VECTOR",
    "DeleteVectors",
    "DenseVectorConfig",
    "Fusion",
    "Mmr",
    "Nearest",
    "PointVectors",
    "Prefetch",
    "QueryRequest",
    "SearchParams",
    "SparseVector",
    "SparseVectorConfig",
    "Vector",
    "VectorsConfig",
    "check_query_vectors",
    "parse_batch_vectors",
    "parse_collection_vectors",
    "parse_delete_vectors",
    "parse_named_vector",
    "parse_one_vector",
    "parse_point_vector",
    "parse_query",
    "parse_query_batch",
    "parse_query_request",
    "parse_sparse_vector",
    "parse_sparse_vectors_config",
    "parse_update_vectors",
    "parse_vector_params",
    "parse_vectors_config",
    "parse_with_vector",
]
