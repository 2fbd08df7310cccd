"""Named dense vectors and sparse vectors: several vectors per point, over the same slots.

Qdrant's model: a collection declares dense vectors by name (``""`` is the
default, unnamed one), each with its own size, distance, HNSW settings and
quantization, and sparse vectors by name; a point carries any subset of them.
In vdb every name is one more index over the collection's SAME slots, so ids,
payloads, filters, deletes and partitions are shared: a dense name is an
(HNSW, Segments) pair like the default vector's, a sparse name a
:class:`vdb.index.sparse.SparseIndex`; a point that lacks a name is simply
absent from that name's index.

The default vector stays where it always was (``Collection._index`` /
``_segs`` and the collection's ``dim`` / ``metric``), and its Segments keeps
allocating the slots; the other dense names' Segments hold a slot while they
store a vector in it (``Segments(owner=...)``), so a slot is reused only once
every graph gave it up. A collection without a default vector keeps a
placeholder there (dimension 1, never written), so the checkpoint layout of
the default vector and everything that reads it do not change.

This module holds the rest: the durable configuration, the spaces of a
collection, the WAL encoding of a batch's named vectors, and their
checkpoint blobs (``d{i}/index/*``, ``d{i}/fresh/*``, ``s{i}/*``, ``i`` the
position of the name among the sorted names, fixed at creation).

Durable config keys (``col.config``): ``named`` (True: created with the
named-vectors API; records return vectors as ``{name: vector}``),
``default_vector`` (False: the default vector is the placeholder),
``vectors`` (``{name: {"dim", "metric", "M", "ef_construction",
"quantization"?, "on_disk"?}}``, the named dense vectors other than ``""``)
and ``sparse_vectors`` (``{name: {"modifier": None | "idf"}}``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vdb.errors import InvalidInput
from vdb.segments import Segments

DEFAULT = ""
METRICS = ("cosine", "ip", "l2")
_METRIC_ALIASES = {"Cosine": "cosine", "Dot": "ip", "Euclid": "l2"}
_MAX_NAME = 255


# -- configuration -------------------------------------------------------------------------


def bounded_int(value: Any, what: str, low: int = 1, high: int = 1 << 31) -> int:
    """``value`` as an int if it is one (not a bool) in ``[low, high]``; else InvalidInput."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise InvalidInput(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or len(value) > _MAX_NAME:
        raise InvalidInput(f"{what}: a vector name is a string of at most {_MAX_NAME} characters")
    return value


def dense_spec(value: Any, name: str, M: int, ef_construction: int) -> dict[str, Any]:  # noqa: N803
    """One named dense vector's settings: ``{"dim" | "size", "metric" | "distance", "M",
    "ef_construction", "quantization", "on_disk"}`` → the stored form (InvalidInput)."""
    what = f"vectors[{name!r}]"
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a dict of settings, got {type(value).__name__}")
    known = {"dim", "size", "metric", "distance", "M", "ef_construction", "quantization", "on_disk"}
    unknown = sorted(set(value) - known)
    if unknown:
        raise InvalidInput(f"{what}: unknown setting {unknown[0]!r}")
    dim = value.get("dim", value.get("size"))
    if dim is None:
        raise InvalidInput(f"{what}: dim is required")
    metric = value.get("metric", value.get("distance", "cosine"))
    metric = _METRIC_ALIASES.get(metric, metric)
    if metric not in METRICS:
        raise InvalidInput(f"{what}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    spec: dict[str, Any] = {
        "dim": bounded_int(dim, f"{what}.dim", 1, 65536),
        "metric": metric,
        "M": bounded_int(value.get("M", M), f"{what}.M", 2, 512),
        "ef_construction": bounded_int(
            value.get("ef_construction", ef_construction), f"{what}.ef_construction", 1, 1 << 20
        ),
    }
    from vdb.index.quantizer import parse_config

    try:
        quant = parse_config(value.get("quantization"))
    except ValueError as exc:
        raise InvalidInput(f"{what}: {exc}") from None
    if quant is not None:
        spec["quantization"] = quant
    on_disk = value.get("on_disk", False)
    if not isinstance(on_disk, bool):
        raise InvalidInput(f"{what}.on_disk must be a boolean, got {on_disk!r}")
    if on_disk:
        spec["on_disk"] = True
    return spec


def sparse_spec(value: Any, name: str) -> dict[str, Any]:
    what = f"sparse_vectors[{name!r}]"
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a dict of settings, got {type(value).__name__}")
    unknown = sorted(set(value) - {"modifier"})
    if unknown:
        raise InvalidInput(f"{what}: unknown setting {unknown[0]!r}")
    modifier = value.get("modifier")
    if modifier not in (None, "none", "idf"):
        raise InvalidInput(f'{what}.modifier must be None or "idf", got {modifier!r}')
    return {"modifier": "idf" if modifier == "idf" else None}


def split_config(
    vectors: Any,
    sparse_vectors: Any,
    M: int,  # noqa: N803
    ef_construction: int,
) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``create_collection(vectors=..., sparse_vectors=...)`` → (the default vector's spec or
    ``None``, the other dense names' specs, the sparse names' specs); InvalidInput."""
    if vectors is not None and not isinstance(vectors, dict):
        raise InvalidInput("vectors must be a dict {name: settings}")
    if sparse_vectors is not None and not isinstance(sparse_vectors, dict):
        raise InvalidInput("sparse_vectors must be a dict {name: settings}")
    dense = {
        _name(n, "vectors"): dense_spec(v, n, M, ef_construction)
        for n, v in (vectors or {}).items()
    }
    sparse = {
        _name(n, "sparse_vectors"): sparse_spec(v, n) for n, v in (sparse_vectors or {}).items()
    }
    both = sorted(set(dense) & set(sparse))
    if both:
        raise InvalidInput(f"vector name {both[0]!r} is both dense and sparse")
    if not dense and not sparse:
        raise InvalidInput("a collection needs at least one dense or sparse vector")
    default = dense.pop(DEFAULT, None)
    return default, dict(sorted(dense.items())), dict(sorted(sparse.items()))


# -- spaces ---------------------------------------------------------------------------------


class DenseSpace:
    """One dense vector name: its graph, its segments and which slots hold a vector.

    ``has`` (a bool mask over slots, written by the writer under the apply lock) is kept only
    when points may lack this vector (``None``: every live point has it).
    """

    def __init__(
        self, name: str, dim: int, metric: str, index: Any, segs: Segments, partial: bool
    ) -> None:
        self.name = name
        self.dim = int(dim)
        self.metric = metric
        self.index = segs.index  # its graphs (vdb.graphs.Graphs), which wrap ``index``
        self.segs = segs
        segs.partial = partial
        self.has: np.ndarray | None = np.zeros(256, bool) if partial else None

    def mark(self, slots: Any, value: bool) -> None:
        if self.has is None:
            return
        slots = np.asarray(slots, np.int64)
        if not slots.size:
            return
        need = int(slots.max()) + 1
        if need > self.has.shape[0]:
            grown = np.zeros(max(need, 2 * self.has.shape[0]), bool)
            grown[: self.has.shape[0]] = self.has
            self.has = grown  # a new array: readers keep the one they took
        self.has[slots] = value

    def has_mask(self, capacity: int) -> np.ndarray | None:
        has = self.has
        if has is None:
            return None
        out = np.zeros(capacity, bool)
        n = min(capacity, has.shape[0])
        out[:n] = has[:n]
        return out

    def rebuild_has(self) -> None:
        """After a checkpoint was loaded: the slots of the graph and the fresh rows."""
        if self.has is None:
            return
        live = self.index.live_mask()[: int(self.index.used)]
        view = self.segs.view
        fresh = view.buffer.slots[view.start : view.buffer.n]
        fresh = fresh[fresh >= 0]
        size = max(256, live.shape[0], int(fresh.max()) + 1 if fresh.size else 0)
        has = np.zeros(size, bool)
        has[: live.shape[0]] = live
        has[fresh] = True
        self.has = has


class SparseSpace:
    """One sparse vector name: its exact inverted index."""

    def __init__(self, name: str, modifier: str | None, index: Any) -> None:
        self.name = name
        self.modifier = modifier
        self.index = index


class Spaces:
    """Every vector name of a collection (the default one included, when it exists)."""

    def __init__(
        self,
        config: dict[str, Any],
        index: Any,
        segs: Segments,
        make_index: Callable[..., Any],  # (spec, i, gid=0) -> an empty HNSW
    ) -> None:
        self.named = bool(config.get("named"))
        self.has_default = bool(config.get("default_vector", True))
        self.main = DenseSpace(
            DEFAULT, int(config["dim"]), config["metric"], index, segs, partial=self.named
        )
        self.dense: dict[str, DenseSpace] = {}
        if self.has_default:
            self.dense[DEFAULT] = self.main
        self.extra: dict[str, DenseSpace] = {}  # the dense names other than ""
        self._make_index = make_index
        self._specs = dict(config.get("vectors") or {})
        for i, (name, spec) in enumerate(self._specs.items()):
            self.extra[name] = self._dense_space(name, spec, make_index(spec, i), None, i)
        self.dense.update(self.extra)
        from vdb.index.sparse import SparseIndex

        self.sparse: dict[str, SparseSpace] = {
            name: SparseSpace(name, spec.get("modifier"), SparseIndex(spec.get("modifier")))
            for name, spec in (config.get("sparse_vectors") or {}).items()
        }

    def _dense_space(
        self, name: str, spec: dict[str, Any], index: Any, segs: Segments | None, i: int
    ) -> DenseSpace:
        if segs is None:
            make = self._make_index
            main = self.main.segs
            segs = Segments(
                index,
                main.fresh_limit,
                owner=main,
                make=lambda gid: make(spec, i, gid),
                seal_size=main.index.seal_size,
                partitioned=main.index.partitioned,  # graphs per partition, as the default's
            )
            segs.wake = lambda: main.wake()
            segs.partition_of = main.partition_of
        return DenseSpace(name, spec["dim"], spec["metric"], index, segs, partial=True)

    def names(self) -> list[str]:
        return [*self.dense, *self.sparse]

    def resolve(self, using: str | None) -> DenseSpace | SparseSpace:
        name = DEFAULT if using is None else using
        space = self.dense.get(name) or self.sparse.get(name)
        if space is None:
            raise InvalidInput(f"Wrong input: Not existing vector name error: {name}")
        return space

    def all_segments(self) -> list[Segments]:
        return [self.main.segs, *(s.segs for s in self.extra.values())]

    # -- checkpoints ---------------------------------------------------------------------

    def graph_segments(self) -> list[tuple[str, Segments]]:
        """``(key prefix, segments)`` of every extra dense name: its graph arrays are the
        checkpoint's ``x/d{i}/index/*`` blobs, captured as the default vector's are
        (``vdb.checkpointer.capture_graph``: a sealed graph is written once, then carried)."""
        return [(f"d{i}/index/", space.segs) for i, space in enumerate(self.extra.values())]

    def capture_rest(self) -> dict[str, np.ndarray]:
        """The extra fresh rows and the sparse indexes (the caller holds the apply lock)."""
        out: dict[str, np.ndarray] = {}
        for i, space in enumerate(self.extra.values()):
            for key, arr in space.segs.capture_fresh().arrays().items():
                out[f"d{i}/fresh/{key}"] = arr
        for i, space in enumerate(self.sparse.values()):
            for key, arr in space.index.to_arrays().items():
                out[f"s{i}/{key}"] = arr
        return out

    def restore(self, blobs: dict[str, Any] | None, live_slots: np.ndarray, path: Any) -> None:
        """Load the extra spaces from a checkpoint's blobs (``None``: none were saved)."""
        from vdb.graphs import Graphs
        from vdb.index.sparse import SparseIndex

        blobs = blobs or {}
        for i, (name, spec) in enumerate(self._specs.items()):
            prefix = f"d{i}/index/"
            arrays = {k[len(prefix) :]: v for k, v in blobs.items() if k.startswith(prefix)}
            if arrays:
                index = Graphs.from_arrays(
                    arrays,
                    on_disk=str(path) if spec.get("on_disk") else False,
                    seal_size=self.main.segs.index.seal_size,
                    partitioned=self.main.segs.index.partitioned,
                    template=self._make_index(spec, i),
                )
                space = self._dense_space(name, spec, index, None, i)
                self.extra[name] = space
                self.dense[name] = space
            space = self.extra[name]
            prefix = f"d{i}/fresh/"
            fresh = {k[len(prefix) :]: v for k, v in blobs.items() if k.startswith(prefix)}
            space.segs.restore(fresh or None, live_slots)
            space.rebuild_has()
        self.main.rebuild_has()
        for i, (name, space) in enumerate(self.sparse.items()):
            prefix = f"s{i}/"
            arrays = {k[len(prefix) :]: v for k, v in blobs.items() if k.startswith(prefix)}
            if arrays:
                index = SparseIndex.from_arrays(arrays)
                live = np.zeros(index.capacity, bool)
                live_slots = live_slots[live_slots < index.capacity]
                live[live_slots] = True
                stale = np.flatnonzero(index.live_mask()[: index.capacity] & ~live)
                if stale.size:
                    index.remove(stale)
                self.sparse[name] = SparseSpace(name, space.modifier, index)

    def dirty(self) -> bool:
        return any(s.segs.dirty for s in self.extra.values())

    # -- writes --------------------------------------------------------------------------

    def encode(
        self,
        columns: dict[str, Any],
        n: int,
        check_dense: Callable[[DenseSpace, Any, int, str], np.ndarray] | None,
    ) -> dict[str, Any]:
        """A batch's vectors ``{name: column}`` → the fields of its ``"w"`` WAL record.

        A dense column is ``[n, dim]`` (array or list of rows) or a list of ``n`` rows with
        ``None`` for points without that vector; a sparse column a list of ``n`` sparse vectors
        (``{"indices", "values"}``, ``(indices, values)`` or objects with those attributes) or
        ``None``. ``check_dense(space, rows, count, what)`` validates dense rows (``None``: the
        rows are already valid, as when re-encoding stored vectors).
        """
        from vdb.index.sparse import parse_vectors

        if not isinstance(columns, dict):
            raise InvalidInput("vectors must be a dict {name: vectors}")
        fields: dict[str, Any] = {"nv": {}, "sv": {}}
        main_pos: list[int] = []
        main_rows = np.zeros((0, self.main.dim), np.float32)
        for name, column in columns.items():
            if not isinstance(name, str):
                raise InvalidInput(f"vectors: vector names are strings, got {name!r}")
            space = self.resolve(name)
            what = f"vectors[{name!r}]"
            if isinstance(space, SparseSpace):
                items = _column(column, n, what, sparse=True)
                pos = [i for i, v in enumerate(items) if v is not None]
                try:
                    ptr, idx, val = parse_vectors([items[i] for i in pos], what)
                except ValueError as exc:
                    raise InvalidInput(str(exc)) from None
                if pos:
                    fields["sv"][name] = [pos, ptr.tobytes(), idx.tobytes(), val.tobytes()]
                    fields.setdefault("_sv", {})[name] = (pos, ptr, idx, val)
                continue
            items = _column(column, n, what, sparse=False)
            if isinstance(items, np.ndarray):
                pos = list(range(n))
                rows = items
            else:
                pos = [i for i, v in enumerate(items) if v is not None]
                rows = [items[i] for i in pos]
            if check_dense is not None:
                arr = check_dense(space, rows, len(pos), what) if pos else None
            else:
                arr = np.asarray(rows, np.float32).reshape(len(pos), space.dim) if pos else None
            if arr is None:
                arr = np.zeros((0, space.dim), np.float32)
            if space is self.main:
                main_pos, main_rows = pos, arr
            elif pos:
                fields["nv"][name] = [pos, arr.tobytes()]
                fields.setdefault("_nv", {})[name] = (pos, arr)
        fields["dm"] = main_pos
        fields["v"] = np.ascontiguousarray(main_rows, np.float32).tobytes()
        fields["_vectors"] = np.ascontiguousarray(main_rows, np.float32).reshape(-1, self.main.dim)
        if not fields["nv"]:
            del fields["nv"]
        if not fields["sv"]:
            del fields["sv"]
        return fields

    def append(
        self,
        items: Sequence[tuple[dict[str, Any], int]],
        sources: list[tuple[int, int]],
        slots: np.ndarray,
    ) -> None:
        """Store the named vectors of the points written at ``slots`` (``sources[i]`` =
        (record, position) of slot ``i``): the writer, under the apply lock."""
        slot_list = slots.tolist()
        for name, space in self.extra.items():
            at, rows = [], []
            for (r, pos), slot in zip(sources, slot_list, strict=True):
                found = _named_row(items[r][0], name, pos, space.dim)
                if found is not None:
                    at.append(slot)
                    rows.append(found)
            if at:
                arr = np.ascontiguousarray(np.stack(rows), np.float32)
                sl = np.asarray(at, np.int32)
                space.segs.append(sl, arr)
                space.mark(sl, True)
        for name, space in self.sparse.items():
            at, vecs = [], []
            for (r, pos), slot in zip(sources, slot_list, strict=True):
                found = _sparse_row(items[r][0], name, pos)
                if found is not None:
                    at.append(slot)
                    vecs.append(found)
            if at:
                space.index.put(np.asarray(at, np.int64), vecs)

    def remove(self, slots: list[int]) -> None:
        """Points gave these slots up: take their named vectors away (the writer)."""
        if not slots:
            return
        for space in self.extra.values():
            has = space.has
            held = [s for s in slots if s < has.shape[0] and has[s]]
            if held:
                space.segs.remove(held)
                space.mark(held, False)
        for space in self.sparse.values():
            space.index.remove(np.asarray(slots, np.int64))

    def vectors_of(self, slot: int, names: Sequence[str] | None = None) -> dict[str, Any]:
        """``{name: vector}`` of one occupied slot: dense as float32 arrays, sparse as
        ``{"indices": uint32[], "values": float32[]}``; names the point lacks are left out."""
        out: dict[str, Any] = {}
        for name in self.names() if names is None else names:
            space = self.dense.get(name)
            if space is not None:
                if space.has is not None and not (slot < space.has.shape[0] and space.has[slot]):
                    continue
                out[name] = space.segs.get_vectors(np.array([slot]))[0]
                continue
            sp = self.sparse.get(name)
            if sp is None:
                raise InvalidInput(f"Wrong input: Not existing vector name error: {name}")
            got = sp.index.get([slot])[0]
            if got is not None:
                out[name] = {"indices": got[0], "values": got[1]}
        return out


def _column(column: Any, n: int, what: str, sparse: bool) -> Any:
    if sparse:
        if not isinstance(column, list | tuple):
            raise InvalidInput(f"{what}: expected a list of {n} sparse vectors (or None)")
        if len(column) != n:
            raise InvalidInput(f"{what}: {len(column)} vectors for {n} ids")
        return list(column)
    if isinstance(column, np.ndarray):
        arr = column.reshape(1, -1) if column.ndim == 1 and n == 1 else column
        if arr.ndim != 2 or arr.shape[0] != n:
            raise InvalidInput(
                f"{what}: expected {n} vectors, got an array of shape {column.shape}"
            )
        return arr
    if not isinstance(column, list | tuple):
        raise InvalidInput(f"{what}: expected a list of {n} vectors (or None), or an array")
    if (
        n == 1
        and column
        and not isinstance(column[0], list | tuple | np.ndarray)
        and column[0] is not None
    ):
        column = [column]  # one point, one bare vector
    if len(column) != n:
        raise InvalidInput(f"{what}: {len(column)} vectors for {n} ids")
    return list(column)


def _pos_map(record: dict[str, Any], key: str, name: str) -> dict[int, int]:
    cache = record.setdefault("_maps", {})
    got = cache.get((key, name))
    if got is None:
        entry = (record.get(key) or {}).get(name)
        got = {} if entry is None else {p: i for i, p in enumerate(entry[0])}
        cache[(key, name)] = got
    return got


def main_row(record: dict[str, Any], pos: int) -> int:
    """Row of the default vector of position ``pos`` in the record's ``v`` (-1: none)."""
    dm = record.get("dm")
    if dm is None:
        return pos
    cache = record.setdefault("_maps", {})
    got = cache.get("dm")
    if got is None:
        got = cache["dm"] = {p: i for i, p in enumerate(dm)}
    return got.get(pos, -1)


def _named_row(record: dict[str, Any], name: str, pos: int, dim: int) -> np.ndarray | None:
    row = _pos_map(record, "nv", name).get(pos)
    if row is None:
        return None
    decoded = record.setdefault("_nv", {})
    got = decoded.get(name)
    if got is None:
        entry = record["nv"][name]
        got = decoded[name] = (entry[0], np.frombuffer(entry[1], np.float32).reshape(-1, dim))
    return got[1][row]


def _sparse_row(
    record: dict[str, Any], name: str, pos: int
) -> tuple[np.ndarray, np.ndarray] | None:
    row = _pos_map(record, "sv", name).get(pos)
    if row is None:
        return None
    decoded = record.setdefault("_sv", {})
    got = decoded.get(name)
    if got is None:
        entry = record["sv"][name]
        got = decoded[name] = (
            entry[0],
            np.frombuffer(entry[1], np.int64),
            np.frombuffer(entry[2], np.uint32),
            np.frombuffer(entry[3], np.float32),
        )
    _, ptr, idx, val = got
    lo, hi = int(ptr[row]), int(ptr[row + 1])
    return idx[lo:hi], val[lo:hi]


def strip_cache(record: dict[str, Any]) -> None:
    """Drop the decoded copies before a record is packed (they are not part of it)."""
    for key in ("_maps", "_nv", "_sv", "_vectors"):
        record.pop(key, None)


def rewrite_has_vector(spec: Any, ids_with: Callable[[str], list[Any]]) -> Any:
    """A filter of a named collection with ``{"has_vector": name}`` conditions turned into
    ``{"has_id": [the points that have that vector]}`` (the filter grammar itself knows one
    unnamed vector only); everything else is left as it is."""
    if isinstance(spec, list):
        return [rewrite_has_vector(item, ids_with) for item in spec]
    if not isinstance(spec, dict):
        return spec
    if len(spec) == 1 and isinstance(spec.get("has_vector"), str):
        return {"has_id": ids_with(spec["has_vector"])}
    out = {}
    for key, value in spec.items():
        if key in ("must", "should", "must_not"):
            out[key] = rewrite_has_vector(value, ids_with)
        elif key == "min_should" and isinstance(value, dict) and "conditions" in value:
            out[key] = {**value, "conditions": rewrite_has_vector(value["conditions"], ids_with)}
        else:
            out[key] = value
    return out
