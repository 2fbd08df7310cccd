"""A collection: points (id, vector, payload) in one HNSW index.

Reads (search, get, scroll, count) run in the caller's thread and never
wait for a commit. Writes are validated and encoded here, in the caller's
thread, then handed to the database's single writer, which makes them
durable (one LMDB transaction per group of writes) and applies them to the
index, the id map and the payloads; the call returns after both. The point
writes of one group (and of a batch of replayed WAL records) are applied
as one merged operation: one index ``add`` for new ids, one batched
``replace`` for existing ones, in WAL order (the last operation on an id
wins).

Consistency for readers: the writer bumps the collection's generation and
marks every slot whose occupant changes (a point deleted from it or placed
in it) before it changes it. A search checks after the fact whether any slot
it returns changed occupant while it ran; if so it runs again (and after a
few tries runs once under the apply lock), so a hit never pairs one point's
score with another point's id or payload. While a write is being applied,
searches admit only slots whose write was applied. A point that is itself
being upserted while it is found is returned in its old or its new version
(its score may be computed from either vector).

Duplicate ids in one batch: the last occurrence wins (for ``apply`` the
last operation on an id wins, so an upsert followed by a delete of the same
id deletes it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from vdb.errors import CollectionNotFound, DimensionMismatch, InvalidInput, PointNotFound
from vdb.graphs import DEFAULT_SEAL_SIZE
from vdb.ids import IdMap, normalize_id, normalize_ids, sort_key
from vdb.segments import DEFAULT_FRESH_LIMIT, Segments
from vdb.types import DeadLetter, Delete, Hit, PointId, Record, Upsert
from vdb.vectors import SparseSpace, _named_row, _sparse_row, main_row
from vdb.wal.store import pack, unpack

if TYPE_CHECKING:
    from vdb.writer import Writer

log = logging.getLogger(__name__)

METRICS = ("cosine", "ip", "l2")
SEARCH_RETRIES = 3
_F32_MAX = float(np.finfo(np.float32).max)
# l2/ip vectors must keep |x|^2 <= _MAX_SQ_NORM: then |x - y|^2 <= (|x| + |y|)^2 and
# |x . y| <= |x| |y| stay within float32 for any two of them (and every partial sum
# of the kernels too), so no score is ever infinite.
MAX_SQUARED_NORM = _F32_MAX / 4


@dataclass
class WriteRequest:
    """One unit of work for the writer: a WAL record plus what commits with it."""

    kind: str  # "record" | "create" | "drop" | "config"
    collection: Collection | None = None
    record: dict[str, Any] | None = None
    data: bytes | None = None
    source_offsets: dict[tuple[str, str, int], int] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    forget_offsets: list[tuple[str, str, int]] = field(default_factory=list)
    n_ops: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    future: Future = field(default_factory=Future)


def index_metric(metric: str) -> str:
    """The metric the index computes: cosine is stored normalised and searched as ip."""
    return "ip" if metric == "cosine" else metric


def canonical_payload(payload: Any, where: str) -> dict[str, Any] | None:
    """Validate a payload and return its msgpack round trip (what replay will see)."""
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise InvalidInput(
            f"{where}: a payload must be a JSON object (dict), not {type(payload).__name__}"
        )
    try:
        _check_keys(payload, where)
        return unpack(pack(payload))
    except InvalidInput:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidInput(f"{where}: payload cannot be stored: {exc}") from None


def _check_keys(value: Any, where: str, depth: int = 0) -> None:
    if depth > 64:
        raise InvalidInput(f"{where}: payload nested deeper than 64 levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidInput(f"{where}: payload keys must be strings, got {key!r}")
            _check_keys(item, where, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_keys(item, where, depth + 1)


class Collection:
    """Points in one index. Get one from :meth:`vdb.db.Database.collection`."""

    def __init__(self, db: Writer, config: dict[str, Any], index: Any, ids: IdMap, payloads: Any):
        self._db = db
        self.config = config
        self.name: str = config["name"]
        self.uid: int = config["uid"]
        self.dim: int = int(config["dim"])
        self.metric: str = config["metric"]
        self._segs = Segments(
            index,
            int(config.get("fresh_limit") or DEFAULT_FRESH_LIMIT),
            make=lambda gid: self._named_index(config, -1, gid),
            seal_size=int(config.get("graph_seal_size") or DEFAULT_SEAL_SIZE),
            partitioned=bool(config.get("partition_segments")),
        )
        self._index = self._segs.index  # the default vector's graphs (vdb.graphs.Graphs)
        self._ids = ids
        # the source partition of every slot: the key of per-partition graphs, shared by
        # every vector name's segments
        self._segs.partition_of = lambda: self._ids.partitions
        from vdb.vectors import Spaces

        # every vector name over the same slots (the default one is _index / _segs)
        self._spaces = Spaces(config, self._index, self._segs, self._named_index)
        self._payloads = payloads
        self._generation = 0
        self.search_retries = 0  # searches that ran again because a write raced them
        self.search_locked = 0  # ... and that finally ran under the apply lock
        self._apply_lock = threading.RLock()
        self._dropped = False
        self.applied_seq = 0
        self._sorted_cache: tuple[int, list[PointId], list[tuple[int, Any]]] | None = None

    def __repr__(self) -> str:
        return f"Collection({self.name!r}, dim={self.dim}, metric={self.metric!r}, count={len(self._ids)})"

    # -- helpers -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._dropped:
            raise CollectionNotFound(f"collection {self.name!r} was dropped")
        self._db._check_open()

    def _named_index(self, spec: dict[str, Any], i: int, gid: int = 0) -> Any:
        """A new, empty graph for the named dense vector ``spec`` (the ``i``-th name; ``-1``:
        the default vector, ``spec`` the collection's config), its ``gid``-th graph."""
        from vdb.index import HNSW

        quant = spec.get("quantization")
        path = getattr(self._db, "path", None)
        return HNSW(
            int(spec["dim"]),
            metric=index_metric(spec["metric"]),
            M=int(spec["M"]),
            ef_construction=int(spec["ef_construction"]),
            capacity=1024,
            seed=int(self.uid) * 131 + i + 1 + 7919 * gid,
            ef=int(self.config.get("ef", 64)),
            quantization=quant["type"] if quant else None,
            quantile=quant.get("quantile") if quant else None,
            on_disk=str(path) if spec.get("on_disk") and path is not None else False,
        )

    def _check_dense(self, space: Any, rows: Any, n: int, what: str) -> np.ndarray:
        return self._vectors(rows, n, what, space=space)

    def _vectors(
        self, vectors: Any, n: int | None, what: str = "vectors", *, space: Any = None
    ) -> np.ndarray:
        """Validate vectors: ``[n, dim]`` float32, finite (normalised for cosine).

        For l2 and ip the squared norm must be at most ``MAX_SQUARED_NORM``
        (float32 max / 4, a norm of about 9.2e18), so that every score between
        two accepted vectors is finite in float32. ``space``: a named dense
        vector (its dimension and metric), default the collection's own.
        """
        dim = self.dim if space is None else space.dim
        metric = self.metric if space is None else space.metric
        try:
            arr = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{what}: not a numeric array ({exc})") from None
        if arr.ndim == 1 and (n is None or n == 1) and arr.size == dim:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2:
            if arr.ndim == 1 and arr.size != dim:
                raise DimensionMismatch(
                    f"{what}: collection {self.name!r} has dimension {dim}, got a vector of {arr.size}"
                )
            raise InvalidInput(f"{what}: expected a 2-D array [n, {dim}], got shape {arr.shape}")
        if arr.shape[1] != dim:
            raise DimensionMismatch(
                f"{what}: collection {self.name!r} has dimension {dim}, got {arr.shape[1]}"
            )
        if n is not None and arr.shape[0] != n:
            raise InvalidInput(f"{what}: {arr.shape[0]} vectors for {n} ids")
        if metric == "cosine":
            # one float64 pass gives the norms and the finiteness check (a float32 value
            # squared is finite in float64, so a row's sum is finite iff its values are);
            # the norms are linalg.norm's (sqrt of add.reduce of the squares)
            wide = arr.astype(np.float64)
            squared = np.add.reduce(wide * wide, axis=1)
            if len(squared) == 1:  # one query: Python floats cost less than numpy calls
                one = float(squared[0])
                if 0.0 < one < math.inf:
                    return (arr / np.float64(math.sqrt(one))).astype(np.float32)
            if not np.isfinite(squared).all():
                bad = int(np.flatnonzero(~np.isfinite(squared))[0])
                raise InvalidInput(f"{what}: vector {bad} contains NaN or infinity")
            if (squared == 0).any():
                bad = int(np.flatnonzero(squared == 0)[0])
                raise InvalidInput(f"{what}: vector {bad} is all zeros (cosine needs a direction)")
            return (arr / np.sqrt(squared)[:, None]).astype(np.float32)
        if not np.isfinite(arr).all():
            bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
            raise InvalidInput(f"{what}: vector {bad} contains NaN or infinity")
        if arr.size and _too_big(arr, dim):
            squared = np.einsum("ij,ij->i", arr.astype(np.float64), arr.astype(np.float64))
            if (squared > MAX_SQUARED_NORM).any():
                bad = int(np.flatnonzero(squared > MAX_SQUARED_NORM)[0])
                raise InvalidInput(
                    f"{what}: vector {bad} is too large for {metric}: its squared norm "
                    f"{squared[bad]:.3g} exceeds {MAX_SQUARED_NORM:.3g} (a quarter of the float32 "
                    "maximum), so its distances would overflow float32"
                )
        return np.ascontiguousarray(arr, dtype=np.float32)

    def _filter(self, filter: Any) -> Any:
        from vdb.filters import parse_filter

        if filter is not None and self._spaces.named:
            from vdb.vectors import rewrite_has_vector

            filter = rewrite_has_vector(filter, self._ids_with_vector)
        return parse_filter(filter)

    def _ids_with_vector(self, name: str) -> list[PointId]:
        """The ids of the points that have the vector ``name`` (``has_vector`` filters)."""
        space = self._spaces.resolve(name)
        capacity = self._capacity()
        live = self._ids.live_mask(capacity)
        if isinstance(space, SparseSpace):
            mask = np.zeros(capacity, bool)
            have = space.index.live_mask()[:capacity]
            mask[: len(have)] = have
        else:
            mask = space.has_mask(capacity)
            if mask is None:
                mask = live
        id_list = self._ids.ids
        return [id_list[s] for s in np.flatnonzero(mask & live).tolist() if id_list[s] is not None]

    def _resolve(self, point_id: Any) -> int | None:
        try:
            return self._ids.get(normalize_id(point_id))
        except InvalidInput:
            return None

    def _allowed(
        self, parsed: Any, capacity: int, restrict: np.ndarray | None = None
    ) -> np.ndarray:
        live = self._ids.live_mask(capacity)
        if restrict is not None:
            live = live & restrict[:capacity]
        if parsed is None:
            return live
        return np.asarray(self._payloads.mask(parsed, capacity, live, self._resolve), dtype=bool)

    # -- partition restriction (scale-out): one allowed-mask term ---------------

    def _partition_mask(self, partitions: Any, capacity: int) -> np.ndarray | None:
        """Slots whose source partition is in ``partitions``; ``None`` = no restriction.

        ``None`` is also returned when the list excludes no live point (the id map's
        count per partition says so), so a node asked for every partition it holds
        searches without a mask.
        """
        if partitions is None:
            return None
        try:
            wanted = np.asarray(sorted({int(p) for p in partitions}), dtype=np.int32)
        except (TypeError, ValueError):
            raise InvalidInput(
                f"partitions must be a list of integers, got {partitions!r}"
            ) from None
        if self._ids.partitions_held() <= set(wanted.tolist()):
            return None  # every live point is in a wanted partition: no mask, no filter cost
        parts = self._ids.partitions[:capacity]
        mask = np.zeros(capacity, dtype=bool)
        mask[: len(parts)] = np.isin(parts, wanted)
        return mask

    def _partition_slots(self, segments: Sequence[Segments], wanted: set[int]) -> np.ndarray:
        """Live slots (sorted, each once) of points of partitions ``wanted`` held by
        ``segments``, found in those partitions' graphs and fresh rows: time proportional to
        the partitions' points, no mask over every slot. Every segment's graphs must be
        per partition (``Graphs.keyed``)."""
        found = [segs.partition_slots(wanted) for segs in segments]
        slots = found[0] if len(found) == 1 else np.unique(np.concatenate(found))
        live, parts = self._ids.live, self._ids.partitions
        slots = slots[slots < min(live.shape[0], parts.shape[0])]
        keep = live[slots] & np.isin(parts[slots], np.fromiter(wanted, np.int32, len(wanted)))
        return slots[keep]

    def _partition_candidates(
        self, segs: Segments, wanted: set[int], allowed: np.ndarray | None
    ) -> np.ndarray:
        """The points of ``wanted`` in ``segs`` that ``allowed`` (a mask over slots, or
        ``None``) admits: the candidates of a restricted exact scan."""
        slots = self._partition_slots([segs], wanted)
        if allowed is not None:
            slots = slots[slots < allowed.shape[0]]
            slots = slots[allowed[slots]]
        return slots

    def _vector_of(self, slot: int) -> np.ndarray:
        return self._segs.get_vectors(np.array([slot]))[0]

    def _vector_out(self, slot: int, spec: Any) -> Any:
        """What a record returns for ``with_vectors``: False → None; True → the vector (a
        collection with named vectors: ``{name: vector}``); a list of names → those names."""
        if spec is None or spec is False:
            return None
        if spec is True:
            return self._spaces.vectors_of(slot) if self._spaces.named else self._vector_of(slot)
        if isinstance(spec, str):
            spec = [spec]
        if not self._spaces.named:
            return {name: self._vector_of(slot) for name in spec if name == ""}
        return self._spaces.vectors_of(slot, [n for n in spec if n in self._spaces.names()])

    def _search_sparse(
        self,
        space: SparseSpace,
        vectors: Any,
        k: int,
        filter: Any,
        with_payload: bool,
        with_vectors: Any,
        score_threshold: float | None,
        partitions: Sequence[int] | None,
    ) -> list[Hit] | list[list[Hit]]:
        """Exact dot-product top-k over a sparse vector name (see ``search``)."""
        if vectors is None:
            raise InvalidInput("search needs a sparse query vector")
        single = not isinstance(vectors, list)
        queries = [vectors] if single else list(vectors)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        k = min(int(k), max(1, len(self._ids)))
        parsed = self._filter(filter)
        if score_threshold is not None:
            score_threshold = float(score_threshold)
        index = space.index
        result = None
        for attempt in range(SEARCH_RETRIES + 1):
            locked = attempt == SEARCH_RETRIES
            lock = self._apply_lock if locked else contextlib.nullcontext()
            with lock:
                generation = None if locked else self._generation
                capacity = self._capacity()
                restrict = self._partition_mask(partitions, capacity)
                allowed = None
                if parsed is not None or restrict is not None:
                    allowed = self._allowed(parsed, capacity, restrict)
                elif generation is not None and generation % 2:
                    allowed = self._ids.live_mask(capacity)
                try:
                    slots, scores = index.search(queries, k, allowed=allowed)
                except ValueError as exc:
                    raise InvalidInput(f"query: {exc}") from None
                result = self._hits(
                    slots, scores, with_payload, with_vectors, score_threshold, generation, False
                )
            if result is not None:
                break
            if attempt == 0:
                self.search_retries += 1
        assert result is not None
        return result[0] if single else result

    def _capacity(self) -> int:
        """Slots the id map covers (masks over slots have this length)."""
        return len(self._ids.ids)

    def _submit(self, request: WriteRequest) -> Any:
        self._check_open()
        request.collection = self
        return self._db._submit(request)

    # -- writes ----------------------------------------------------------------

    def upsert(
        self,
        ids: Any,
        vectors: Any = None,
        payloads: Any = None,
        *,
        documents: Any = None,
        store_documents: bool = True,
    ) -> int:
        """Insert or replace points; returns the WAL sequence number once durable and searchable.

        ``ids``: unsigned ints or strings (a single id is accepted);
        ``vectors``: ``[n, dim]`` array or list of lists; ``payloads``: a list
        of dicts/None (or one dict for a single id). An existing id gets the
        new vector and payload (the old payload is replaced, not merged).
        ``documents``: texts instead of vectors (a collection with an
        embedder): embedded in one batched call before the WAL record, which
        holds the vectors; each text is kept in its payload under
        ``"document"`` unless ``store_documents=False``.
        """
        point_ids = normalize_ids(ids)
        n = len(point_ids)
        if isinstance(payloads, dict) and n == 1:
            payloads = [payloads]
        if payloads is not None:
            payloads = list(payloads)
            if len(payloads) != n:
                raise InvalidInput(f"payloads: {len(payloads)} payloads for {n} ids")
        if n == 0:
            return self._db.last_seq
        if documents is not None or vectors is None:
            vectors, payloads = _embed_documents(
                self, vectors, documents, payloads, n, store_documents
            )
        if isinstance(vectors, dict) or self._spaces.named:
            # named vectors: {name: column}; a bare array is the default vector's column
            columns = vectors if isinstance(vectors, dict) else {"": vectors}
            return self._write_named(point_ids, columns, payloads)
        arr = self._vectors(vectors, n)
        keep = range(n)
        if len(set(point_ids)) < n:  # the last one of an id wins, as in ``apply``
            keep = sorted({point_id: i for i, point_id in enumerate(point_ids)}.values())
            point_ids = [point_ids[i] for i in keep]
            arr = np.ascontiguousarray(arr[keep])
        # The record ``apply`` would build, without an ``Upsert`` per point (the single-point
        # write of a thread per client spends most of its own time here).
        record = {
            "t": "w",
            "c": self.uid,
            "u": point_ids,
            "v": arr.tobytes(),
            "p": [None] * len(point_ids)
            if payloads is None
            else [canonical_payload(payloads[i], f"operation {i}") for i in keep],
            "pt": None,
            "d": [],
        }
        return self._submit_record(record, len(point_ids))["seq"]

    def _write_named(
        self, point_ids: list[PointId], columns: dict[str, Any], payloads: list[Any] | None
    ) -> int:
        """Upsert points with named vectors (``{name: column}``, see ``Spaces.encode``)."""
        n = len(point_ids)
        fields = self._named_fields(columns, n)
        last = {point_id: i for i, point_id in enumerate(point_ids)}  # the last one wins
        keep = sorted(last.values())
        if len(keep) < n:
            fields = self._named_fields(_take_columns(columns, keep), len(keep))
            point_ids = [point_ids[i] for i in keep]
            if payloads is not None:
                payloads = [payloads[i] for i in keep]
        record = {
            "t": "w",
            "c": self.uid,
            "u": point_ids,
            "p": [
                canonical_payload(None if payloads is None else payloads[i], f"payloads[{i}]")
                for i in range(len(point_ids))
            ],
            "pt": None,
            "d": [],
            **fields,
        }
        return self._submit_record(record, len(point_ids))["seq"]

    def _named_fields(self, columns: dict[str, Any], n: int) -> dict[str, Any]:
        """Validated WAL fields of named vectors; a collection without named vectors stores
        its records exactly as before (every point must then have the default vector)."""
        fields = self._spaces.encode(columns, n, self._check_dense)
        if not self._spaces.named:
            if len(fields["dm"]) != n or fields.get("nv") or fields.get("sv"):
                raise InvalidInput(
                    f"vectors: collection {self.name!r} has one vector per point; every point "
                    "needs it"
                )
            del fields["dm"]
        return fields

    def _submit_record(self, record: dict[str, Any], n_ops: int, **options: Any) -> Any:
        """Pack (without the decoded copies, keys starting with ``_``) and submit a record."""
        try:
            data = pack({k: v for k, v in record.items() if not k.startswith("_")})
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"batch cannot be encoded: {exc}") from None
        if "_vectors" not in record and record.get("t") == "w":
            record["_vectors"] = np.frombuffer(record["v"], np.float32).reshape(-1, self.dim)
        return self._submit(
            WriteRequest("record", record=record, data=data, n_ops=n_ops, **options)
        )

    def update_vectors(self, ids: Any, vectors: dict[str, Any]) -> int:
        """Replace the given named vectors of existing points, keeping their other vectors and
        payload (Qdrant's ``update_vectors``); returns how many points were updated.
        ``vectors``: ``{name: column}`` as for ``upsert``; missing ids are skipped."""
        point_ids = normalize_ids(ids)
        if not point_ids:
            self._check_open()
            return 0
        fields = self._spaces.encode(vectors, len(point_ids), self._check_dense)
        if not self._spaces.named and len(fields["dm"]) != len(point_ids):
            raise InvalidInput("vectors: every point needs the default vector")
        record = {"t": "uv", "c": self.uid, "ids": point_ids, "del": [], **fields}
        return self._submit_record(record, len(point_ids))["updated"]

    def delete_vectors(
        self, ids: Any = None, names: Sequence[str] = (), *, filter: Any = None
    ) -> int:
        """Take the named vectors ``names`` away from points (by ids and/or filter), keeping the
        points, their payloads and other vectors (Qdrant's ``delete_vectors``)."""
        if isinstance(names, str):
            names = [names]
        names = list(names)
        for name in names:
            self._spaces.resolve(name)
        if not self._spaces.named and names:
            raise InvalidInput(
                f"collection {self.name!r} has one vector per point: it cannot be deleted"
            )
        point_ids = self._ids_for(ids, filter)
        if not point_ids or not names:
            self._check_open()
            return 0
        record = {"t": "uv", "c": self.uid, "ids": point_ids, "del": names, "dm": []}
        record["v"] = b""
        return self._submit_record(record, len(point_ids))["updated"]

    def apply(
        self,
        ops: Sequence[Upsert | Delete],
        source_offsets: dict[tuple[str, str, int], int] | None = None,
        dead_letters: Iterable[DeadLetter] | None = None,
    ) -> int:
        """Apply upserts and deletes, the source offsets and dead letters in ONE durable transaction.

        This is the ingest path: the offsets are stored with the records, so
        a consumer that resumes from ``db.source_offsets(source)`` never
        applies a message twice or loses one. The last operation on an id
        wins. Returns the WAL sequence number (of the last record written).
        """
        offsets: dict[tuple[str, str, int], int] = {}
        for key, offset in (source_offsets or {}).items():
            if not (isinstance(key, tuple) and len(key) == 3):
                raise InvalidInput(
                    f"source_offsets keys must be (source, topic, partition), got {key!r}"
                )
            source, topic, partition = key
            try:
                offsets[(str(source), str(topic), int(partition))] = int(offset)
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"source_offsets: partition and offset must be integers, got {key!r}: {offset!r}"
                ) from None
        letters = list(dead_letters or [])
        for letter in letters:
            if not isinstance(letter, DeadLetter):
                raise InvalidInput(
                    f"dead_letters must be DeadLetter objects, got {type(letter).__name__}"
                )

        last: dict[PointId, int] = {}
        normalized_ids: list[PointId] = []
        for i, op in enumerate(ops):
            if not isinstance(op, Upsert | Delete):
                raise InvalidInput(
                    f"operation {i}: expected Upsert or Delete, got {type(op).__name__}"
                )
            point_id = normalize_id(op.id)
            normalized_ids.append(point_id)
            last[point_id] = i
        keep = sorted(last.values())
        up_pos = [i for i in keep if isinstance(ops[i], Upsert)]
        del_ids = [normalized_ids[i] for i in keep if isinstance(ops[i], Delete)]

        record: dict[str, Any] | None = None
        named = self._spaces.named or any(isinstance(ops[i].vector, dict) for i in up_pos)
        if named and up_pos:
            columns: dict[str, list[Any]] = {}
            for j, i in enumerate(up_pos):
                vec = ops[i].vector
                for name, value in (vec if isinstance(vec, dict) else {"": vec}).items():
                    columns.setdefault(name, [None] * len(up_pos))[j] = value
            record = {
                "t": "w",
                "c": self.uid,
                "u": [normalized_ids[i] for i in up_pos],
                "p": [canonical_payload(ops[i].payload, f"operation {i}") for i in up_pos],
                "pt": None,
                "d": del_ids,
                **self._named_fields(columns, len(up_pos)),
            }
            partitions = [_partition(ops[i].partition, i) for i in up_pos]
            record["pt"] = partitions if any(p is not None for p in partitions) else None
            return self._submit_record(
                record, len(keep), source_offsets=offsets, dead_letters=letters
            )["seq"]
        if up_pos or del_ids:
            up_ids = [normalized_ids[i] for i in up_pos]
            if up_pos:
                arr = None
                try:
                    stacked = np.asarray([ops[i].vector for i in up_pos], dtype=np.float32)
                    if stacked.ndim == 2 and stacked.shape[1] == self.dim:
                        arr = self._vectors(stacked, len(up_pos))
                except (InvalidInput, TypeError, ValueError):
                    arr = None
                if arr is None:  # find the bad one and name it
                    rows = [
                        self._vectors(ops[i].vector, 1, what=f"operation {i} vector")[0]
                        for i in up_pos
                    ]
                    arr = np.ascontiguousarray(np.stack(rows), dtype=np.float32)
                payloads = [canonical_payload(ops[i].payload, f"operation {i}") for i in up_pos]
                partitions = [_partition(ops[i].partition, i) for i in up_pos]
            else:
                arr = np.zeros((0, self.dim), np.float32)
                payloads, partitions = [], []
            record = {
                "t": "w",
                "c": self.uid,
                "u": up_ids,
                "v": arr.tobytes(),
                "p": payloads,
                "pt": partitions if any(p is not None for p in partitions) else None,
                "d": del_ids,
            }
        try:
            data = pack(record) if record is not None else None
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"batch cannot be encoded: {exc}") from None
        if record is not None:
            record["_vectors"] = np.frombuffer(record["v"], dtype=np.float32).reshape(-1, self.dim)
        request = WriteRequest(
            "record",
            record=record,
            data=data,
            source_offsets=offsets,
            dead_letters=letters,
            n_ops=len(keep),
        )
        return self._submit(request)["seq"]

    def delete(self, ids: Any = None, *, filter: Any = None) -> int:
        """Delete points by id and/or by filter; returns how many existed and were deleted."""
        point_ids = self._ids_for(ids, filter)
        if not point_ids:
            self._check_open()
            return 0
        record = {"t": "w", "c": self.uid, "u": [], "v": b"", "p": [], "pt": None, "d": point_ids}
        request = WriteRequest("record", record=record, data=pack(record), n_ops=len(point_ids))
        record["_vectors"] = np.zeros((0, self.dim), np.float32)
        return self._submit(request)["deleted"]

    def drop_partition(
        self,
        partition: int,
        source_offsets_to_forget: Iterable[tuple[str, str, int]] = (),
    ) -> int:
        """Delete every point of source ``partition`` and forget stored offsets, in ONE txn.

        Scale-out: a node that loses a partition frees its points, and the
        offsets named in ``source_offsets_to_forget`` (``(source, topic,
        partition)``) are deleted in the same durable transaction, so a later
        assignment of the partition rebuilds it from the topic's earliest
        offset. Returns how many points were deleted.
        """
        self._check_open()
        if isinstance(partition, bool) or not isinstance(partition, int | np.integer):
            raise InvalidInput(f"partition must be an integer, got {partition!r}")
        forget = []
        for key in source_offsets_to_forget:
            if not (isinstance(key, tuple) and len(key) == 3):
                raise InvalidInput(f"offsets to forget are (source, topic, partition), got {key!r}")
            forget.append((str(key[0]), str(key[1]), int(key[2])))
        with self._apply_lock:
            slots = None
            segments = self._all_segments()
            if all(segs.index.keyed() for segs in segments):
                # graphs per partition (every dense vector name): that partition's graphs and
                # the fresh rows, not a scan of every slot
                slots = self._partition_slots(segments, {int(partition)})
                if len(slots) != self._ids.per_partition.get(int(partition), 0):
                    slots = None  # points in no dense segment (sparse vectors only)
            if slots is None:
                capacity = len(self._ids.ids)
                slots = np.flatnonzero(
                    self._ids.live_mask(capacity)
                    & (self._ids.partitions[:capacity] == int(partition))
                )
            point_ids = [self._ids.ids[s] for s in slots.tolist()]
        if not point_ids:
            request = WriteRequest("record", forget_offsets=forget)
            self._submit(request)
            return 0
        record = {"t": "w", "c": self.uid, "u": [], "v": b"", "p": [], "pt": None, "d": point_ids}
        request = WriteRequest(
            "record", record=record, data=pack(record), n_ops=len(point_ids), forget_offsets=forget
        )
        record["_vectors"] = np.zeros((0, self.dim), np.float32)
        return self._submit(request)["deleted"]

    def _ids_for(self, ids: Any, filter: Any) -> list[PointId]:
        if ids is None and filter is None:
            raise InvalidInput("give ids or a filter")
        out: list[PointId] = []
        if ids is not None:
            out.extend(normalize_ids(ids))
        if filter is not None:
            parsed = self._filter(filter)
            with self._apply_lock:
                capacity = len(self._ids.ids)
                if parsed is None:
                    allowed = self._ids.live_mask(capacity)
                else:
                    allowed = self._allowed(parsed, capacity)
                id_list = self._ids.ids
                out.extend(id_list[s] for s in np.flatnonzero(allowed).tolist())
        return list(dict.fromkeys(out))

    def _payload_op(self, op: str, ids: Any, filter: Any, **fields: Any) -> int:
        point_ids = self._ids_for(ids, filter)
        if not point_ids:
            self._check_open()
            return 0
        record = {"t": "pl", "c": self.uid, "op": op, "ids": point_ids, **fields}
        try:
            data = pack(record)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"payload cannot be stored: {exc}") from None
        return self._submit(WriteRequest("record", record=record, data=data, n_ops=len(point_ids)))[
            "updated"
        ]

    def set_payload(
        self, ids: Any, payload: dict[str, Any], *, filter: Any = None, key: str | None = None
    ) -> int:
        """Merge ``payload`` into the payload of each point (at the nested ``key`` if given)."""
        payload = canonical_payload(payload, "set_payload") or {}
        if key is not None and (not isinstance(key, str) or not key):
            raise InvalidInput("set_payload: key must be a non-empty string path")
        return self._payload_op("set", ids, filter, payload=payload, key=key)

    def overwrite_payload(self, ids: Any, payload: dict[str, Any], *, filter: Any = None) -> int:
        """Replace the whole payload of each point."""
        payload = canonical_payload(payload, "overwrite_payload") or {}
        return self._payload_op("overwrite", ids, filter, payload=payload)

    def delete_payload(self, ids: Any, keys: Sequence[str], *, filter: Any = None) -> int:
        """Remove ``keys`` (top-level or dotted paths) from the payload of each point."""
        if isinstance(keys, str):
            keys = [keys]
        keys = list(keys)
        if not all(isinstance(k, str) and k for k in keys):
            raise InvalidInput("delete_payload: keys must be non-empty strings")
        return self._payload_op("delete", ids, filter, keys=keys)

    def clear_payload(self, ids: Any, *, filter: Any = None) -> int:
        """Remove the whole payload of each point."""
        return self._payload_op("clear", ids, filter)

    def update(
        self,
        *,
        ef: int | None = None,
        merge_metadata: dict[str, Any] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Change the default search ``ef`` and/or merge ``extra`` options (``None`` removes a key).

        ``merge_metadata`` is merged key by key into the ``metadata`` option
        (a ``None`` value removes that key; Qdrant's ``update_collection``),
        atomically with respect to other updates; ``metadata=...`` in
        ``extra`` replaces it whole. Durable; returns the new configuration.
        ``dim``, ``metric``, ``M`` and ``ef_construction`` are fixed when the
        collection is created.
        """
        if ef is not None and (
            isinstance(ef, bool) or not isinstance(ef, int | np.integer) or ef < 1
        ):
            raise InvalidInput(f"ef must be a positive integer, got {ef!r}")
        if merge_metadata is not None:
            merge_metadata = canonical_payload(merge_metadata, "merge_metadata")
        try:
            pack(extra)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"collection options cannot be stored: {exc}") from None
        request = WriteRequest(
            "config",
            extra={
                "ef": None if ef is None else int(ef),
                "extra": extra,
                "merge_metadata": merge_metadata,
            },
            n_ops=1,
        )
        return dict(self._submit(request))

    def create_payload_index(self, field: str, schema: Any = "keyword") -> int:
        """Declare an explicit payload index on ``field`` (Qdrant's ``create_payload_index``).

        Every payload path is indexed automatically; an explicit index is
        remembered (durably) and reported in ``info()["payload_schema"]``.
        """
        from vdb.filters import PayloadIndex

        if not isinstance(field, str) or not field:
            raise InvalidInput("payload index: field must be a non-empty string")
        PayloadIndex().create_index(field, schema)  # validates, raising InvalidInput
        if isinstance(schema, dict):
            schema = schema.get("type")
        schema = getattr(schema, "value", schema)
        record = {"t": "ix", "c": self.uid, "op": "create", "field": field, "schema": schema}
        return self._submit(WriteRequest("record", record=record, data=pack(record), n_ops=1))[
            "seq"
        ]

    def delete_payload_index(self, field: str) -> int:
        """Forget an explicit payload index (filters on the field keep working)."""
        if not isinstance(field, str) or not field:
            raise InvalidInput("payload index: field must be a non-empty string")
        record = {"t": "ix", "c": self.uid, "op": "drop", "field": field}
        return self._submit(WriteRequest("record", record=record, data=pack(record), n_ops=1))[
            "seq"
        ]

    # -- applying (writer thread only) ---------------------------------------------

    def _apply_record(self, record: dict[str, Any], seq: int) -> dict[str, Any]:
        """Apply one committed WAL record to memory. Called by the writer and by recovery."""
        with self._apply_lock:
            # Seqlock: odd while applying. Slots are marked with this odd
            # generation before they change; a reader that started at
            # generation g sees a change made after it started as a mark >= g.
            self._generation += 1
            generation = self._generation
            try:
                return self._apply_locked(record, seq, generation)
            finally:
                self._generation += 1

    def _apply_records(self, items: Sequence[tuple[dict[str, Any], int]]) -> list[dict[str, Any]]:
        """Apply committed records (in seq order) to memory; one result per record.

        Runs of consecutive point writes (``"w"`` records) are merged into ONE
        index operation: the last operation on an id in the run wins, new ids
        go to one ``index.add`` and existing ones to one batched
        ``index.replace``, under one generation bump. The end state equals
        applying the records one by one. Called by the writer (one group
        commit) and by recovery (a batch of replayed records).
        """
        results: list[dict[str, Any]] = []
        with self._apply_lock:
            i = 0
            while i < len(items):
                j = i
                while j < len(items) and items[j][0]["t"] == "w":
                    j += 1
                if j == i:
                    results.append(self._apply_record(*items[i]))
                    i += 1
                    continue
                self._generation += 1
                generation = self._generation
                try:
                    results.extend(self._apply_writes(items[i:j], generation))
                finally:
                    self._generation += 1
                self.applied_seq = items[j - 1][1]
                self._sorted_cache = None
                i = j
        return results

    def _apply_writes(
        self, items: Sequence[tuple[dict[str, Any], int]], generation: int
    ) -> list[dict[str, Any]]:
        """Merge consecutive write records into one remove pass and one append.

        Every upsert takes a new slot in the fresh segment (an existing id gives its old
        slot up), so applying is a memory copy; the graph follows in the background.
        """
        idmap, payloads, segs = self._ids, self._payloads, self._segs
        exists: dict[PointId, bool] = {}
        final: dict[PointId, tuple[int, int] | None] = {}  # None: deleted
        results: list[dict[str, Any]] = []
        for r, (record, seq) in enumerate(items):
            deleted = 0
            for point_id in record["d"]:
                present = exists.get(point_id)
                if present is None:
                    present = point_id in idmap
                if present:
                    deleted += 1
                exists[point_id] = False
                final[point_id] = None
            for pos, point_id in enumerate(record["u"]):
                exists[point_id] = True
                final[point_id] = (r, pos)
            results.append({"deleted": deleted, "upserted": len(record["u"]), "seq": seq})

        gone: list[int] = []
        new_ids: list[PointId] = []
        new_src: list[tuple[int, int]] = []
        old_slots: list[int | None] = []
        for point_id, src in final.items():
            if src is None:
                slot = idmap.remove(point_id, generation)
                if slot is not None:
                    gone.append(slot)
                    payloads.remove(slot)
                continue
            new_ids.append(point_id)
            new_src.append(src)
            old_slots.append(idmap.get(point_id))
        spaces = self._spaces
        if not new_src:
            if gone:
                segs.remove(gone)
                spaces.main.mark(gone, False)
                spaces.remove(gone)
            return results

        # one matrix of every record's vectors; a (record, position) pair is a row of it
        mats = []
        starts = []
        total = 0
        for record, _ in items:
            vectors = record.get("_vectors")
            if vectors is None:
                vectors = np.frombuffer(record["v"], dtype=np.float32).reshape(-1, self.dim)
            mats.append(vectors)
            starts.append(total)
            total += len(vectors)
        allvec = np.concatenate(mats) if len(mats) > 1 else mats[0]
        slots = segs.allocate(len(new_src))
        if any("dm" in record for record, _ in items):  # named vectors: some lack the default
            rows = np.fromiter(
                (
                    starts[r] + row if (row := main_row(items[r][0], pos)) >= 0 else -1
                    for r, pos in new_src
                ),
                np.int64,
                len(new_src),
            )
            have = rows >= 0
            segs.append(slots[have], allvec[rows[have]])
            spaces.main.mark(slots[have], True)
            spaces.append(items, new_src, slots)
        else:
            rows = np.fromiter((starts[r] + pos for r, pos in new_src), np.int64, len(new_src))
            segs.append(slots, allvec[rows])
        # points that are new and have no payload (a bulk load) in one pass each, the rest
        # one by one (each id once: the order between them does not matter)
        fast = [
            i
            for i, ((r, pos), old) in enumerate(zip(new_src, old_slots, strict=True))
            if old is None and items[r][0]["p"][pos] is None
        ]
        if len(fast) == len(new_src):
            new_src_rest: list[int] = []
            fast_slots = slots
        else:
            taken = set(fast)
            new_src_rest = [i for i in range(len(new_src)) if i not in taken]
            fast_slots = slots[np.asarray(fast, np.int64)]
        if fast:
            payloads.set_absent(fast_slots)
            parts = None
            if any(record.get("pt") for record, _ in items):
                parts = [
                    pt[pos] if (pt := items[r][0].get("pt")) else None
                    for r, pos in (new_src[i] for i in fast)
                ]
            idmap.assign_new([new_ids[i] for i in fast], fast_slots, parts, generation)
        listed = slots.tolist()
        for i in new_src_rest:
            point_id, (r, pos), slot, old = new_ids[i], new_src[i], listed[i], old_slots[i]
            record = items[r][0]
            pt = record.get("pt")
            payloads.set(slot, record["p"][pos])
            # the id moves to its new slot at once (a reader by id never misses it), then
            # the old slot is given up; both are marked, so a search that saw either reruns
            idmap.assign(point_id, slot, pt[pos] if pt else None, generation)
            if old is not None:
                idmap.release(old, generation)
                payloads.remove(old)
                gone.append(old)
        if gone:
            segs.remove(gone)
            spaces.main.mark(gone, False)
            spaces.remove(gone)
        return results

    def _apply_vector_update(
        self, record: dict[str, Any], seq: int, generation: int
    ) -> dict[str, Any]:
        """A ``"uv"`` record (update_vectors / delete_vectors): each existing point is written
        again at a new slot with its payload, its other vectors and the changed ones, as one
        upsert (so the segments' rule holds: a slot's vectors never change)."""
        spaces = self._spaces
        names = spaces.names()
        dropped = set(record.get("del") or ())
        ids, payloads, parts, current = [], [], [], []
        for pos, point_id in enumerate(record["ids"]):
            slot = self._ids.get(point_id)
            if slot is None:
                continue
            vecs = spaces.vectors_of(slot) if spaces.named else {"": self._vector_of(slot)}
            for name in dropped:
                vecs.pop(name, None)
            for name in names:
                if name == "":
                    row = main_row(record, pos)
                    if row >= 0:
                        vecs[""] = record["_vectors"][row]
                    continue
                got = (
                    _sparse_row(record, name, pos)
                    if name in spaces.sparse
                    else _named_row(record, name, pos, spaces.dense[name].dim)
                )
                if got is not None:
                    vecs[name] = got
            ids.append(point_id)
            payloads.append(self._payloads.get(slot))
            part = int(self._ids.partitions[slot])
            parts.append(None if part < 0 else part)
            current.append(vecs)
        if not ids:
            return {"updated": 0}
        columns: dict[str, list[Any]] = {}
        for j, vecs in enumerate(current):
            for name, value in vecs.items():
                columns.setdefault(name, [None] * len(ids))[j] = value
        fields = spaces.encode(columns, len(ids), None)  # stored vectors: valid already
        if not spaces.named:
            del fields["dm"]
        write = {
            "t": "w", "u": ids, "p": payloads, "d": [],
            "pt": parts if any(p is not None for p in parts) else None, **fields,
        }  # fmt: skip
        self._apply_writes([(write, seq)], generation)
        return {"updated": len(ids)}

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Block until every point written so far is in the graph (the fresh segment is
        empty and removed points are deleted from the graph); ``False`` on timeout.

        Never needed for correctness (fresh points are searched exactly); useful before
        measuring the graph, or to make a search's cost predictable.
        """
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        for segs in self._all_segments():
            while segs.has_work() or segs.has_doomed_linking:
                self._check_open()  # CollectionNotFound / DatabaseClosed: nothing to wait for
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                segs.wake()
                time.sleep(0.005)
        return True

    def _index_once(self, segs: Segments | None = None) -> int:
        """One indexer cycle of ``segs`` (default: the default vector's), called by the
        database's indexer thread."""
        return (segs or self._segs).index_once(self._apply_lock)

    def _fresh_upkeep(self, segs: Segments) -> bool:
        """Codes and lists of ``segs``' fresh rows (``Segments.upkeep``), called by the
        database's indexer thread."""
        return segs.upkeep(self._apply_lock)

    def _all_segments(self) -> list[Segments]:
        """The segments of every dense vector name (the indexer works through them)."""
        return self._spaces.all_segments()

    def _vectors_dirty(self) -> bool:
        """A graph changed since the last checkpoint capture."""
        return self._segs.dirty or self._spaces.dirty()

    def _apply_locked(self, record: dict[str, Any], seq: int, generation: int) -> dict[str, Any]:
        if record["t"] == "w":
            result = self._apply_writes([(record, seq)], generation)[0]
        elif record["t"] == "pl":
            result = self._apply_payload(record, generation)
        elif record["t"] == "uv":
            if "_vectors" not in record:
                record["_vectors"] = np.frombuffer(record["v"], np.float32).reshape(-1, self.dim)
            result = self._apply_vector_update(record, seq, generation)
        elif record["t"] == "ix":
            if record["op"] == "create":
                self._payloads.create_index(record["field"], record["schema"])
            else:
                self._payloads.drop_index(record["field"])
            result = {}
        else:
            raise ValueError(f"unknown record type {record['t']!r}")
        self.applied_seq = seq
        self._sorted_cache = None
        result["seq"] = seq
        return result

    def _apply_payload(self, record: dict[str, Any], generation: int) -> dict[str, Any]:
        op = record["op"]
        updated = 0
        for point_id in record["ids"]:
            slot = self._ids.get(point_id)
            if slot is None:
                continue
            current = self._payloads.get(slot)
            if op == "set":
                new = copy.deepcopy(current) if current else {}
                target = new
                if record.get("key"):
                    for part in record["key"].split("."):
                        nxt = target.get(part)
                        if not isinstance(nxt, dict):
                            nxt = {}
                            target[part] = nxt
                        target = nxt
                target.update(copy.deepcopy(record["payload"]))
            elif op == "overwrite":
                new = copy.deepcopy(record["payload"])
            elif op == "delete":
                new = copy.deepcopy(current) if current else {}
                for key in record["keys"]:
                    _delete_path(new, key.split("."))
            elif op == "clear":
                new = None
            else:
                raise ValueError(f"unknown payload op {op!r}")
            self._payloads.set(slot, new or None)
            updated += 1
        return {"updated": updated}

    # -- reads -------------------------------------------------------------------

    def search(
        self,
        vectors: Any = None,
        k: int = 10,
        ef: int | None = None,
        filter: Any = None,
        with_payload: bool = True,
        with_vectors: bool = False,
        score_threshold: float | None = None,
        *,
        exact: bool = False,
        text: Any = None,
        partitions: Sequence[int] | None = None,
        quantization: dict[str, Any] | None = None,
        using: str | None = None,
    ) -> list[Hit] | list[list[Hit]]:
        """Nearest points to one query (1-D: a list of hits) or a batch (2-D: a list of lists).

        Hits are best first (highest similarity for cosine/ip, smallest
        squared distance for l2). With a filter, only matching points are
        returned and there are ``min(k, matching)`` hits. ``exact=True``
        scans every live (and filter-allowed) point instead of walking the
        graph: the true top-k (ties broken by slot), slower, same hits format;
        ``ef`` is then ignored. ``text`` (a collection with an embedder): a
        string (one query) or a list of strings (a batch) instead of vectors.
        ``partitions``: only points whose source partition is in the list
        (scale-out: a node answers for the partitions a router asks of it).
        ``quantization`` (``{"ignore", "rescore", "oversampling"}``, each
        optional) tunes the search of an int8 collection; see ``HNSW.search``.
        ``using``: the vector name to search (default ``""``, the default vector); a
        sparse name takes sparse queries (``{"indices", "values"}``, an ``(indices,
        values)`` tuple or an object with those attributes; a list of them is a batch)
        and scores by dot product, exactly. ``with_vectors``: True or a list of names.
        """
        self._check_open()
        space = self._spaces.resolve(using) if (using or self._spaces.named) else None
        if space is not None and space is not self._spaces.main and isinstance(space, SparseSpace):
            return self._search_sparse(
                space, vectors, k, filter, with_payload, with_vectors, score_threshold, partitions
            )
        if space is self._spaces.main:
            space = None if not self._spaces.named else space
        qopts = _quantization_search(quantization)
        if text is not None or vectors is None:
            vectors = _embed_query(self, vectors, text)
        try:
            arr = np.asarray(vectors, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"query: not a numeric array ({exc})") from None
        single = arr.ndim == 1
        queries = self._vectors(
            arr.reshape(1, -1) if single else arr, None, what="query", space=space
        )
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InvalidInput(f"k must be a positive integer, got {k!r}")
        k = min(int(k), max(1, len(self._ids)))  # no point asking the index for more
        if ef is None:
            ef = int(self.config.get("ef", 64))
        if isinstance(ef, bool) or not isinstance(ef, int | np.integer) or ef < 1:
            raise InvalidInput(f"ef must be a positive integer, got {ef!r}")
        ef = max(int(ef), k)
        if score_threshold is not None:
            score_threshold = float(score_threshold)
        if not isinstance(exact, bool | np.bool_):
            raise InvalidInput(f"exact must be a boolean, got {exact!r}")
        parsed = None if filter is None else self._filter(filter)
        if partitions is not None:
            self._partition_mask(partitions, 0)  # validate before searching
        result = None
        for attempt in range(SEARCH_RETRIES):
            generation = self._generation
            result = self._search_once(
                queries, k, ef, parsed, with_payload, with_vectors, score_threshold, generation,
                exact, partitions, qopts, space,
            )  # fmt: skip
            if result is not None:
                break
            if attempt == 0:
                self.search_retries += 1
        if result is None:
            self.search_locked += 1
            with self._apply_lock:
                result = self._search_once(
                    queries, k, ef, parsed, with_payload, with_vectors, score_threshold, None,
                    exact, partitions, qopts, space,
                )  # fmt: skip
        return result[0] if single else result

    def _search_once(
        self,
        queries: np.ndarray,
        k: int,
        ef: int,
        parsed: Any,
        with_payload: bool,
        with_vectors: bool,
        score_threshold: float | None,
        generation: int | None,
        exact: bool = False,
        partitions: Sequence[int] | None = None,
        qopts: dict[str, Any] | None = None,
        space: Any = None,
    ) -> list[list[Hit]] | None:
        """One attempt; ``None`` when a returned slot changed after ``generation``.

        ``exact``: scan the live, filter-allowed slots instead of walking the graph.
        ``space``: a named dense vector (default: the default vector).
        """
        nq = len(queries)
        if len(self._ids) == 0:
            return [[] for _ in range(nq)]
        segs = self._segs if space is None else space.segs
        allowed = None
        n_allowed = None
        capacity = self._capacity()
        restrict = None
        # partitions whose graphs and fresh rows are searched (graphs per partition): no
        # partition mask over every slot; a filter's mask applies within them
        seg_parts = None
        if partitions is not None:
            wanted = {int(p) for p in partitions}
            held = self._ids.partitions_held()
            if not held & wanted:
                return [[] for _ in range(nq)]
            if not held <= wanted:  # else every live point is in a wanted partition
                if segs.index.keyed():
                    seg_parts = wanted
                else:
                    restrict = self._partition_mask(partitions, capacity)
        has = None
        if (
            seg_parts is None
            and space is not None
            and (exact or parsed is not None or restrict is not None)
        ):
            # points without this vector are never candidates of a masked or exact search
            # (a plain search needs no mask: they are in neither segment of this name; nor
            # does a search of some partitions' segments of this name)
            has = space.has_mask(capacity)
        if has is not None:
            restrict = has if restrict is None else restrict & has
        if exact and seg_parts is not None:
            allowed = None if parsed is None else self._allowed(parsed, capacity)
            candidates = self._partition_candidates(segs, seg_parts, allowed)
            if not candidates.size:
                return [[] for _ in range(nq)]
            slots, scores = self._exact(queries, k, None, space, candidates)
        elif exact:
            allowed = self._allowed(parsed, capacity, restrict)
            if not allowed.any():
                return [[] for _ in range(nq)]
            slots, scores = self._exact(queries, k, allowed, space)
        elif parsed is not None or restrict is not None:
            allowed = self._allowed(parsed, capacity, restrict)
            if seg_parts is None:
                n_allowed = int(allowed.sum())
                if n_allowed == 0:
                    return [[] for _ in range(nq)]
        elif generation is not None and generation % 2:
            # A write is being applied: admit only points whose write was
            # applied (the id map's live slots), so points being inserted or
            # deleted are not returned half-done and the search need not retry.
            allowed = self._ids.live_mask(capacity)
        if not exact:
            slots, scores = segs.search(
                queries, k, ef, allowed, self._ids.live, seg_parts,
                filtered=parsed is not None, **(qopts or {}),
            )  # fmt: skip
            # too few hits (a selective filter, small partitions): the exact scan
            short = []
            if n_allowed is not None or seg_parts is not None:
                short = [row for row in range(nq) if int((slots[row] >= 0).sum()) < k]
            if short:
                candidates = None
                if seg_parts is not None:  # counted only now, from the partitions' segments
                    candidates = self._partition_candidates(segs, seg_parts, allowed)
                    n_allowed = len(candidates)
                want = min(k, n_allowed)
                for row in short:
                    if int((slots[row] >= 0).sum()) < want:
                        row_slots, row_scores = self._exact(
                            queries[row : row + 1], k, allowed, space, candidates
                        )
                        slots[row], scores[row] = row_slots[0], row_scores[0]
        metric = self.metric if space is None else space.metric
        return self._hits(
            slots, scores, with_payload, with_vectors, score_threshold, generation, metric == "l2"
        )

    def _hits(
        self,
        slots: np.ndarray,
        scores: np.ndarray,
        with_payload: bool,
        with_vectors: Any,
        score_threshold: float | None,
        generation: int | None,
        ascending: bool,
    ) -> list[list[Hit]] | None:
        """Slots and scores of a search → hits (``None``: a slot changed, search again)."""
        id_list = self._ids.ids
        n_ids = len(id_list)
        payload_of = self._payloads.get if with_payload else None
        vectors = with_vectors is not None and with_vectors is not False
        out: list[list[Hit]] = []
        for slot_row, score_row in zip(slots.tolist(), scores.tolist(), strict=True):
            hits = []
            for slot, score in zip(slot_row, score_row, strict=True):
                if slot < 0:
                    continue
                point_id = id_list[slot] if slot < n_ids else None
                if point_id is None:
                    if generation is None:
                        continue
                    return None
                if score_threshold is not None and not (
                    score <= score_threshold if ascending else score >= score_threshold
                ):
                    continue
                hits.append(
                    Hit(
                        point_id,
                        score,
                        payload_of(slot) if payload_of is not None else None,
                        self._vector_out(slot, with_vectors) if vectors else None,
                    )
                )
            out.append(hits)
        if generation is not None and self._ids.changed_since(slots, generation):
            return None
        return out

    def _passes(self, score: float, threshold: float) -> bool:
        return score <= threshold if self.metric == "l2" else score >= threshold

    def _exact(
        self,
        queries: np.ndarray,
        k: int,
        allowed: np.ndarray | None,
        space: Any = None,
        candidates: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of each query over the allowed live slots, by brute force.

        Returns ``(slots int64[nq, k], scores float32[nq, k])``, best first
        (ties by slot), ``-1``/NaN padding when fewer than ``k`` are allowed.
        The stored vectors are read in chunks, so memory stays bounded on a
        big collection. ``candidates``: the live, allowed slots, given (some
        partitions' points, ``_partition_candidates``) instead of ``allowed``.
        """
        nq = len(queries)
        if candidates is None:
            live = self._ids.live_mask(len(allowed))
            candidates = np.flatnonzero(np.asarray(allowed, dtype=bool) & live)
        best_slots = np.full((nq, k), -1, dtype=np.int64)
        best_keys = np.full((nq, k), np.inf, dtype=np.float32)
        segs = self._segs if space is None else space.segs
        l2 = (self.metric if space is None else space.metric) == "l2"
        chunk = max(256, min(65536, (1 << 22) // (segs.dim + nq)))
        with np.errstate(over="ignore", invalid="ignore"):
            for start in range(0, candidates.size, chunk):
                cand = candidates[start : start + chunk]
                sub = segs.get_vectors(cand)
                if l2:  # squared distance, as the index computes it (smaller is better)
                    keys = np.empty((nq, cand.size), dtype=np.float32)
                    for row in range(nq):
                        diff = sub - queries[row]
                        keys[row] = np.einsum("ij,ij->i", diff, diff)
                else:  # similarity, negated so that smaller is better
                    keys = -(queries @ sub.T)
                # an overflowed score ranks at the far end but before padding
                np.nan_to_num(keys, copy=False, nan=_F32_MAX, posinf=_F32_MAX, neginf=-_F32_MAX)
                all_keys = np.concatenate([best_keys, keys], axis=1)
                all_slots = np.concatenate(
                    [best_slots, np.broadcast_to(cand.astype(np.int64), (nq, cand.size))], axis=1
                )
                if all_keys.shape[1] > k:
                    part = np.argpartition(all_keys, k - 1, axis=1)[:, :k]
                    all_keys = np.take_along_axis(all_keys, part, axis=1)
                    all_slots = np.take_along_axis(all_slots, part, axis=1)
                for row in range(nq):
                    # -1 padding sorts after every real slot with the same (infinite) key
                    tie = np.where(all_slots[row] < 0, np.iinfo(np.int64).max, all_slots[row])
                    order = np.lexsort((tie, all_keys[row]))
                    best_keys[row] = all_keys[row, order]
                    best_slots[row] = all_slots[row, order]
        scores = best_keys if l2 else -best_keys
        scores = scores.astype(np.float32)
        scores[best_slots < 0] = np.nan
        return best_slots, scores

    def get(self, ids: Any, with_payload: bool = True, with_vectors: bool = False) -> list[Record]:
        """The stored points for ``ids``, in the order asked; missing ids are omitted."""
        self._check_open()
        point_ids = normalize_ids(ids)
        for _ in range(SEARCH_RETRIES):
            generation = self._generation
            out = self._get_once(point_ids, with_payload, with_vectors, generation)
            if out is not None:
                return out
        with self._apply_lock:
            return self._get_once(point_ids, with_payload, with_vectors, None)

    def _get_once(
        self,
        point_ids: list[PointId],
        with_payload: bool,
        with_vectors: bool,
        generation: int | None,
    ) -> list[Record] | None:
        out = []
        slots = []
        for point_id in point_ids:
            slot = self._ids.get(point_id)
            if slot is None:
                continue
            slots.append(slot)
            out.append(
                Record(
                    point_id,
                    self._payloads.get(slot) if with_payload else None,
                    self._vector_out(slot, with_vectors),
                )
            )
        if generation is not None and self._ids.changed_since(
            np.array(slots, dtype=np.int64), generation
        ):
            return None
        return out

    def count(self, filter: Any = None, *, partitions: Sequence[int] | None = None) -> int:
        """How many points (matching ``filter`` if given; of ``partitions`` if given)."""
        self._check_open()
        parsed = self._filter(filter)
        if parsed is None and partitions is not None:
            # the live count per partition is kept: no mask over every slot
            try:
                wanted = {int(p) for p in partitions}
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"partitions must be a list of integers, got {partitions!r}"
                ) from None
            counts = dict(self._ids.per_partition)  # one C-level copy: safe beside the writer
            return sum(counts.get(p, 0) for p in wanted)
        restrict = self._partition_mask(partitions, len(self._ids.ids))
        if parsed is None and restrict is None:
            return len(self._ids)
        live = self._ids.live_mask(len(self._ids.ids))
        if restrict is not None:
            live = live & restrict
        if parsed is None:
            return int(live.sum())
        return int(self._payloads.count(parsed, live, self._resolve))

    def _sorted_ids(self) -> tuple[list[PointId], list[tuple[int, Any]]]:
        cache = self._sorted_cache
        if cache is not None and cache[0] == self._generation:
            return cache[1], cache[2]
        ids = sorted(self._ids.slot_of, key=sort_key)
        keys = [sort_key(i) for i in ids]
        self._sorted_cache = (self._generation, ids, keys)
        return ids, keys

    def scroll(
        self,
        filter: Any = None,
        limit: int = 10,
        offset: Any = None,
        with_payload: bool = True,
        with_vectors: bool = False,
        *,
        partitions: Sequence[int] | None = None,
    ) -> tuple[list[Record], PointId | None]:
        """Points in id order (ints ascending, then strings), from ``offset`` (an id) on.

        Returns the page and the id to pass as ``offset`` for the next page
        (``None`` at the end). ``partitions``: only points of these source
        partitions.
        """
        self._check_open()
        if isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 1:
            raise InvalidInput(f"limit must be a positive integer, got {limit!r}")
        parsed = self._filter(filter)
        start_key = sort_key(normalize_id(offset)) if offset is not None else None
        out: list[Record] = []
        next_offset: PointId | None = None
        with self._apply_lock:
            ids, keys = self._sorted_ids()
            allowed = None
            restrict = self._partition_mask(partitions, len(self._ids.ids))
            if parsed is not None or restrict is not None:
                allowed = self._allowed(parsed, len(self._ids.ids), restrict)
            start = bisect_left(keys, start_key) if start_key is not None else 0
            for point_id in ids[start:]:
                slot = self._ids.slot_of[point_id]
                if allowed is not None and not allowed[slot]:
                    continue
                if len(out) == limit:
                    next_offset = point_id
                    break
                out.append(
                    Record(
                        point_id,
                        self._payloads.get(slot) if with_payload else None,
                        self._vector_out(slot, with_vectors),
                    )
                )
        return out, next_offset

    def info(self) -> dict[str, Any]:
        """Configuration and figures of the collection."""
        self._check_open()
        schema = {}
        try:
            schema = self._payloads.schema()
        except Exception:  # the payload index may not offer a schema for everything
            log.debug("payload schema unavailable", exc_info=True)
        return {
            "name": self.name,
            "dim": self.dim,
            "metric": self.metric,
            "M": self.config["M"],
            "ef_construction": self.config["ef_construction"],
            "ef": self.config["ef"],
            "count": len(self._ids),
            "capacity": max(int(self._index.capacity), self._capacity()),
            "extra": dict(self.config.get("extra") or {}),
            "metadata": (self.config.get("extra") or {}).get("metadata"),
            "payload_schema": schema,
            "embedder": self.config.get("embedder"),
            "quantization": self.config.get("quantization"),
            "on_disk": bool(self.config.get("on_disk", False)),
            "applied_seq": self.applied_seq,
            # Qdrant's colours: yellow while points wait to be indexed (still searchable)
            "status": "yellow" if any(s.fresh_points for s in self._all_segments()) else "green",
            "segments": self._segs.stats(),
            **self._vectors_info(),
        }

    def _vectors_info(self) -> dict[str, Any]:
        """``vectors`` ({name: settings}, the default ``""`` included when it exists),
        ``sparse_vectors`` ({name: {"modifier"}}) and ``named`` of ``info()``."""
        config = self.config
        vectors: dict[str, Any] = {}
        if config.get("default_vector", True):
            main = {
                "dim": self.dim,
                "metric": self.metric,
                "M": config["M"],
                "ef_construction": config["ef_construction"],
            }
            if config.get("quantization"):
                main["quantization"] = config["quantization"]
            if config.get("on_disk"):
                main["on_disk"] = True
            vectors[""] = main
        for name, spec in (config.get("vectors") or {}).items():
            vectors[name] = dict(spec)
        sparse = {n: dict(spec) for n, spec in (config.get("sparse_vectors") or {}).items()}
        counts = {n: int(len(sp.index)) for n, sp in self._spaces.sparse.items()}
        return {
            "vectors": vectors,
            "sparse_vectors": sparse,
            "named": bool(config.get("named")),
            "vector_counts": {
                **{
                    n: int(len(d.index)) + d.segs.fresh_points
                    for n, d in self._spaces.dense.items()
                },
                **counts,
            },
        }

    def source_partition(self, point_id: Any) -> int | None:
        """The stream partition a point came from (``None`` if it did not come from a stream)."""
        slot = self._ids.get(normalize_id(point_id))
        if slot is None:
            raise PointNotFound(f"point {point_id!r} not found in {self.name!r}")
        partition = int(self._ids.partitions[slot])
        return None if partition < 0 else partition

    def payload_index(self) -> Any:
        """The collection's payload index (for creating/dropping explicit field indexes)."""
        return self._payloads

    def __len__(self) -> int:
        return len(self._ids)


def _embed_documents(
    col: Collection, vectors: Any, documents: Any, payloads: Any, n: int, store: bool
) -> tuple[Any, Any]:
    """Text in (``upsert(documents=...)``): ``(vectors, payloads)`` from the collection's model."""
    if vectors is not None:
        raise InvalidInput("upsert takes vectors or documents, not both")
    if documents is None:
        raise InvalidInput("upsert needs vectors or documents")
    from vdb.embed.documents import upsert_documents

    return upsert_documents(col.config, documents, payloads, n, store)


def _embed_query(col: Collection, vectors: Any, text: Any) -> Any:
    """Text queries (``search(text=...)``): the query vectors from the collection's model."""
    if vectors is not None:
        raise InvalidInput("search takes vectors or text, not both")
    if text is None:
        raise InvalidInput("search needs a query vector or text")
    from vdb.embed.documents import query_vectors

    return query_vectors(col.config, text)


def _take_columns(columns: dict[str, Any], keep: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, column in columns.items():
        if isinstance(column, np.ndarray):
            out[name] = column[keep]
        else:
            out[name] = [column[i] for i in keep]
    return out


def _too_big(arr: np.ndarray, dim: int) -> bool:
    """Cheap pre-check: could any row's squared norm exceed ``MAX_SQUARED_NORM``?"""
    peak = float(np.abs(arr).max())
    return peak * peak * dim > MAX_SQUARED_NORM


def _partition(value: Any, i: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < 2**31:
        raise InvalidInput(f"operation {i}: partition must be a non-negative int32, got {value!r}")
    return int(value)


def _delete_path(payload: dict[str, Any], parts: list[str]) -> None:
    target: Any = payload
    for part in parts[:-1]:
        if not isinstance(target, dict) or part not in target:
            return
        target = target[part]
    if isinstance(target, dict):
        target.pop(parts[-1], None)


def _quantization_search(value: Any) -> dict[str, Any]:
    """Per-query quantization options → ``HNSW.search`` keyword arguments (InvalidInput)."""
    if value is None:
        return {}
    from vdb.index.quantizer import search_options

    try:
        return search_options(value)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
