"""SparseIndex: an exact inverted index over sparse vectors, addressed by the caller's slots.

A sparse vector is a pair ``(indices, values)``: distinct non-negative integer
indices below 2**32 (any order; they are sorted on write) and as many finite
float32 values. The score of a document for a query is their dot product over
the shared indices; ``search`` returns the exact top-k by that score. A
document is a candidate only when it shares at least one index with the query
(as in Qdrant, whose sparse search walks the query's posting lists), so an
empty query or an empty document never matches.

``modifier="idf"`` multiplies each query weight, at query time, by Qdrant's
inverse document frequency of that index (Qdrant documentation, "Indexing",
section "IDF Modifier"):

    IDF(q_i) = ln((N - n(q_i) + 0.5) / (n(q_i) + 0.5) + 1)

where ``N`` is the number of documents (live slots holding a vector, empty
ones included) and ``n(q_i)`` the number of live documents whose vector holds
index ``q_i``, both counted from the live data of the search's snapshot (as
Qdrant counts posting-list lengths; the allowed mask does not change them).

The slots are the caller's: ``put`` gives slots vectors (a slot holding one is
replaced), ``remove`` takes them away; the index never allocates slots.

Layout
------
* The forward store: every vector written, appended to ``fwd_idx uint32`` /
  ``fwd_val float32``; a slot's current vector is ``fwd[off[slot] :
  off[slot] + length[slot]]``. Regions are never rewritten, only left behind
  (the store is compacted by a merge).
* Two posting sets, CSR by dimension (see ``sparse_kernels.py``): the *base*,
  built by a merge from every live vector, and the *delta*, the vectors written
  since the last merge: each ``put`` builds a new delta from the old one's
  postings of untouched slots and the new vectors' postings (a linear merge).
* ``loc[slot]``: whether a slot's current vector is indexed in the base, in the
  delta, or not at all. A posting counts only when ``loc`` of its slot names
  the set it sits in: a replaced vector's base postings stop counting the
  moment its slot moves to the delta, a removed slot's the moment it is absent.
* A merge (writer's call, when the delta or the stale share of the base grows
  past its bound, see ``_merge_due``) compacts the forward store and rebuilds
  the base from all live vectors; the delta becomes empty. A write copies the
  slot arrays (13 bytes per slot of capacity) and rebuilds the delta, O(delta);
  a merge costs O(all postings) (a linear radix sort). With the delta bound
  growing as the square root of the postings, a stream of one-vector writes
  costs O(capacity + sqrt(postings)) each, amortised; batches amortise better.

Concurrency: one writer, many readers
-------------------------------------
The caller guarantees one writer at a time (``put`` and ``remove`` also take
an internal lock); any number of threads may call ``search`` and ``get`` while
it writes. The search kernel runs with the GIL released.

* Everything a reader uses sits in one immutable ``_State`` (``loc``, ``off``,
  ``length``, the forward arrays, both posting sets, the live count). A reader
  takes the current state once at the start of a call and uses nothing else.
* A write never changes anything a published state reads: it builds the new
  ``loc``/``off``/``length`` as copies, writes to the forward arrays only past
  every published state's ``fwd_used`` (or into a grown copy), builds new
  posting sets, and then publishes the new state by replacing one reference. Old states stay
  valid for readers that hold them and are freed when the last one lets go.
* So a reader sees each write completely or not at all: every slot it returns
  was live in its snapshot, with the score of exactly the vector it had there
  (never a mix of an old and a new vector), and postings of removed or
  replaced vectors never count.

Each searching thread has its own accumulator arrays, so searches share
nothing writable. Bad input raises ``ValueError`` naming the vector and field.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from vdb.index import sparse_kernels as kernels

MODIFIERS = {None: 0, "idf": 1}
_MODIFIER_NAMES = {v: k for k, v in MODIFIERS.items()}
_FORMAT_VERSION = 1
_MAX_INDEX = (1 << 32) - 1
_MAX_SLOT = (1 << 31) - 2
# The delta is merged into the base when it holds more than max(_DELTA_MIN, 64 * sqrt(nnz))
# postings (nnz: all live postings), or when the base's stale postings (of replaced or removed
# vectors) exceed max(_DELTA_MIN, half the base), or the forward store's garbage exceeds its
# live data. At 3.2M postings (100k vectors x 32 random indices) the bound is ~115k postings and
# a merge comes every ~3,500 one-vector puts. Measured there on a 2-core box under load ~17:
# one-vector put p50 6 ms (the delta merge ~4 ms of it, about one posting per dimension), mean
# 9 ms with the merges; bulk put of the 100k vectors 10 s.
_DELTA_MIN = 8192
_DELTA_SQRT = 64.0

_EMPTY_U32 = np.zeros(0, np.uint32)
_EMPTY_I32 = np.zeros(0, np.int32)
_EMPTY_F32 = np.zeros(0, np.float32)


def _empty_postings() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return _EMPTY_U32, np.zeros(1, np.int64), _EMPTY_I32, _EMPTY_F32


class _State:
    """One published generation of the index (never written after publication)."""

    __slots__ = (
        "loc", "off", "length", "fwd_idx", "fwd_val", "fwd_used", "base", "delta", "live",
        "live_nnz", "base_nnz", "base_stale",
    )  # fmt: skip

    def __init__(self, **values: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, values[name])

    @property
    def capacity(self) -> int:
        return self.loc.shape[0]


def _grow_to(current: int, needed: int) -> int:
    size = max(16, current)
    while size < needed:
        size *= 2
    return size


class SparseIndex:
    """Exact top-k dot-product search over sparse vectors keyed by int32 slots.

    ``SparseIndex(modifier=None, capacity=1024)``; ``modifier`` is ``None`` (plain dot
    product) or ``"idf"`` (query weights scaled by Qdrant's IDF, see the module docstring).
    Capacity grows to the largest slot written.
    """

    def __init__(self, modifier: str | None = None, capacity: int = 1024) -> None:
        if modifier not in MODIFIERS:
            raise ValueError(f"unknown modifier {modifier!r}; expected None or 'idf'")
        if isinstance(capacity, bool) or not isinstance(capacity, int | np.integer):
            raise ValueError(f"capacity must be an integer, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._modifier = modifier
        cap = int(capacity)
        self._state = _State(
            loc=np.zeros(cap, np.uint8),
            off=np.full(cap, -1, np.int64),
            length=np.zeros(cap, np.int32),
            fwd_idx=np.zeros(4096, np.uint32),
            fwd_val=np.zeros(4096, np.float32),
            fwd_used=0,
            base=_empty_postings(),
            delta=_empty_postings(),
            live=0,
            live_nnz=0,
            base_nnz=0,
            base_stale=0,
        )
        self._write_lock = threading.Lock()
        self._tls = threading.local()
        self._no_mask = np.zeros(1, np.uint8)

    # -- properties -------------------------------------------------------------------------

    @property
    def modifier(self) -> str | None:
        return self._modifier

    @property
    def capacity(self) -> int:
        return self._state.capacity

    def __len__(self) -> int:
        """Number of slots holding a vector."""
        return self._state.live

    def __repr__(self) -> str:
        st = self._state
        return (
            f"SparseIndex(modifier={self._modifier!r}, len={st.live}, postings={st.live_nnz}, "
            f"capacity={st.capacity})"
        )

    # -- writes -----------------------------------------------------------------------------

    def put(self, slots: Any, vectors: Sequence[Any]) -> None:
        """Give each slot its vector (``vectors[i]`` for ``slots[i]``), replacing any vector the
        slot held. A slot repeated in one call keeps its last vector. Everything is validated
        before anything is written: a bad batch writes nothing."""
        arr = _slots(slots)
        ptr, idx, val = parse_vectors(vectors, "vectors")
        if ptr.shape[0] - 1 != arr.shape[0]:
            raise ValueError(f"got {arr.shape[0]} slots but {ptr.shape[0] - 1} vectors")
        if arr.shape[0] == 0:
            return
        # last one wins: keep the last occurrence of every slot, in slot order
        rev = arr[::-1]
        uniq, first = np.unique(rev, return_index=True)
        rows = (arr.shape[0] - 1 - first).astype(np.int64)
        lengths = (ptr[rows + 1] - ptr[rows]).astype(np.int32)
        row_ptr, row_idx, row_val = kernels.gather_rows(ptr[rows], lengths, idx, val)
        with self._write_lock:
            st = self._state
            cap = st.capacity
            need = int(uniq[-1]) + 1
            if need > cap:
                cap = _grow_to(cap, need)
            loc = _copy_grown(st.loc, cap, 0)
            off = _copy_grown(st.off, cap, -1)
            length = _copy_grown(st.length, cap, 0)
            old_loc = loc[uniq]
            old_len = length[uniq].astype(np.int64)
            added = int(row_ptr[-1])
            fwd_idx, fwd_val = st.fwd_idx, st.fwd_val
            start = st.fwd_used
            if start + added > fwd_idx.shape[0]:
                size = _grow_to(fwd_idx.shape[0], start + added)
                fwd_idx = _copy_grown(fwd_idx[:start], size, 0)
                fwd_val = _copy_grown(fwd_val[:start], size, 0)
            fwd_idx[start : start + added] = row_idx
            fwd_val[start : start + added] = row_val
            off[uniq] = start + row_ptr[:-1]
            length[uniq] = lengths
            loc[uniq] = kernels.IN_DELTA
            live = st.live + int(np.count_nonzero(old_loc == kernels.ABSENT))
            live_nnz = st.live_nnz - int(old_len.sum()) + added
            base_stale = st.base_stale + int(old_len[old_loc == kernels.IN_BASE].sum())
            new = _State(
                loc=loc, off=off, length=length, fwd_idx=fwd_idx, fwd_val=fwd_val,
                fwd_used=start + added, base=st.base, delta=st.delta, live=live,
                live_nnz=live_nnz, base_nnz=st.base_nnz, base_stale=base_stale,
            )  # fmt: skip
            keep = loc == kernels.IN_DELTA
            delta_nnz = int(length[keep].sum())
            if self._merge_due(new, delta_nnz):
                new = _merged(new)
            else:
                # the old delta's postings of untouched delta slots, merged with the new ones
                keep = keep.view(np.uint8)
                keep[uniq] = 0
                fresh = kernels.build_postings(uniq.astype(np.int32), row_ptr, row_idx, row_val)
                new.delta = kernels.merge_postings(*st.delta, keep, *fresh)
            self._state = new

    def remove(self, slots: Any) -> None:
        """Take the vectors of ``slots`` away; slots without one are ignored."""
        arr = _slots(slots)
        if arr.shape[0] == 0:
            return
        with self._write_lock:
            st = self._state
            arr = np.unique(arr[arr < st.capacity])
            arr = arr[st.loc[arr] != kernels.ABSENT]
            if arr.shape[0] == 0:
                return
            loc = st.loc.copy()
            off = st.off.copy()
            length = st.length.copy()
            old_len = length[arr].astype(np.int64)
            base_stale = st.base_stale + int(old_len[loc[arr] == kernels.IN_BASE].sum())
            loc[arr] = kernels.ABSENT
            off[arr] = -1
            length[arr] = 0
            new = _State(
                loc=loc, off=off, length=length, fwd_idx=st.fwd_idx, fwd_val=st.fwd_val,
                fwd_used=st.fwd_used, base=st.base, delta=st.delta, live=st.live - arr.shape[0],
                live_nnz=st.live_nnz - int(old_len.sum()), base_nnz=st.base_nnz,
                base_stale=base_stale,
            )  # fmt: skip
            if self._merge_due(new, 0):
                new = _merged(new)
            self._state = new

    @staticmethod
    def _merge_due(st: _State, delta_nnz: int) -> bool:
        bound = max(_DELTA_MIN, _DELTA_SQRT * math.sqrt(st.live_nnz))
        if delta_nnz > bound:
            return True
        if st.base_stale > max(_DELTA_MIN, st.base_nnz // 2):
            return True
        garbage = st.fwd_used - st.live_nnz
        return garbage > max(_DELTA_MIN, st.live_nnz)

    # -- reads ------------------------------------------------------------------------------

    def search(
        self, queries: Sequence[Any], k: int, allowed: Any = None, idf: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` of each query: ``(slots int64[nq, k], scores float32[nq, k])``.

        ``queries`` is a sequence of sparse vectors (validated like ``put``'s). ``allowed`` is
        an optional boolean mask over slots (shorter masks mean "not allowed" beyond their
        end), applied inside the kernel. Rows hold the hits best first (equal scores: smaller
        slot first), then slot ``-1`` with score ``-inf``. ``idf`` overrides the modifier for
        this call (``None``: the index's own); a caller holding several indexes (segments)
        scales the query itself with ``idf_weights`` over their summed ``document_frequencies``
        and passes ``idf=False``."""
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise ValueError(f"k must be an integer, got {type(k).__name__}")
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        use_idf = self._modifier == "idf" if idf is None else bool(idf)
        q_ptr, q_idx, q_val = parse_vectors(queries, "queries")
        st = self._state
        cap = st.capacity
        if allowed is None:
            mask, use_mask = self._no_mask, False
        else:
            mask, use_mask = _mask(allowed, cap), True
        acc, seen, touched = self._buffers(cap)
        nq = q_ptr.shape[0] - 1
        out_slots = np.empty((nq, k), np.int64)
        out_scores = np.empty((nq, k), np.float32)
        b, d = st.base, st.delta
        kernels.search_batch(
            q_ptr, q_idx, q_val, k, b[0], b[1], b[2], b[3], d[0], d[1], d[2], d[3], st.loc,
            mask, use_mask, use_idf, float(st.live), acc, seen, touched,
            out_slots, out_scores,
        )  # fmt: skip
        return out_slots, out_scores

    def _buffers(self, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        buf = getattr(self._tls, "buf", None)
        if buf is None or buf[0].shape[0] < cap:
            size = _grow_to(0, cap)
            buf = (np.zeros(size, np.float32), np.zeros(size, np.uint8), np.empty(size, np.int32))
            self._tls.buf = buf
        return buf

    def document_frequencies(self, indices: Any) -> np.ndarray:
        """int64[n]: how many live documents hold each of ``indices`` (the ``n(q_i)`` of idf)."""
        ind = np.asarray(indices)
        if ind.ndim != 1 or (ind.size and ind.dtype.kind not in "iu"):
            raise ValueError("indices must be a 1-D array of integers")
        if ind.size and (int(ind.min()) < 0 or int(ind.max()) > _MAX_INDEX):
            raise ValueError(f"indices must be in [0, {_MAX_INDEX}]")
        st = self._state
        b, d = st.base, st.delta
        return kernels.doc_freq(
            np.ascontiguousarray(ind, np.uint32), b[0], b[1], b[2], d[0], d[1], d[2], st.loc
        )

    def get(self, slots: Any) -> list[tuple[np.ndarray, np.ndarray] | None]:
        """The stored vectors of ``slots`` as ``(indices uint32, values float32)`` copies
        (indices ascending), ``None`` for a slot without a vector."""
        arr = _slots(slots)
        st = self._state
        out: list[tuple[np.ndarray, np.ndarray] | None] = []
        for slot in arr.tolist():
            if slot >= st.capacity or st.loc[slot] == kernels.ABSENT:
                out.append(None)
                continue
            o = int(st.off[slot])
            n = int(st.length[slot])
            out.append((st.fwd_idx[o : o + n].copy(), st.fwd_val[o : o + n].copy()))
        return out

    def contains(self, slot: int) -> bool:
        """Whether ``slot`` holds a vector."""
        st = self._state
        s = int(_slots(slot)[0])
        return s < st.capacity and st.loc[s] != kernels.ABSENT

    def live_mask(self) -> np.ndarray:
        """bool[capacity]: True for slots holding a vector."""
        return self._state.loc != kernels.ABSENT

    def memory_bytes(self) -> int:
        """Bytes held by the current state: slot arrays, forward store, both posting sets."""
        st = self._state
        total = st.loc.nbytes + st.off.nbytes + st.length.nbytes
        total += st.fwd_idx.nbytes + st.fwd_val.nbytes
        for part in (st.base, st.delta):
            total += sum(a.nbytes for a in part)
        return int(total)

    # -- checkpoint -------------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The whole index as named numpy arrays (copies), for ``SparseIndex.from_arrays``."""
        with self._write_lock:
            st = self._state
            present = np.flatnonzero(st.loc != kernels.ABSENT)
            ptr, idx, val = kernels.gather_rows(
                st.off[present], st.length[present], st.fwd_idx, st.fwd_val
            )
            params = np.array(
                [_FORMAT_VERSION, MODIFIERS[self._modifier], st.capacity, st.live], np.int64
            )
            return {
                "params": params,
                "slots": present.astype(np.int32),
                "ptr": ptr,
                "indices": idx,
                "values": val,
            }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> SparseIndex:
        """Rebuild an index saved by ``to_arrays``; it answers searches identically."""
        try:
            params = np.asarray(arrays["params"], np.int64)
            version, modifier, cap, live = (int(v) for v in params[:4])
            slots = np.ascontiguousarray(arrays["slots"], np.int32)
            ptr = np.ascontiguousarray(arrays["ptr"], np.int64)
            idx = np.ascontiguousarray(arrays["indices"], np.uint32)
            val = np.ascontiguousarray(arrays["values"], np.float32)
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"not a sparse index checkpoint: {e}") from e
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported sparse index checkpoint version {version}")
        if modifier not in _MODIFIER_NAMES:
            raise ValueError(f"unknown modifier code {modifier} in sparse index checkpoint")
        if (
            ptr.shape[0] != slots.shape[0] + 1
            or live != slots.shape[0]
            or int(ptr[-1]) != idx.shape[0]
            or idx.shape != val.shape
            or (slots.shape[0] and (int(slots.max()) >= cap or int(slots.min()) < 0))
        ):
            raise ValueError("sparse index checkpoint arrays do not fit together")
        h = cls(_MODIFIER_NAMES[modifier], capacity=max(cap, 1))
        st = h._state
        loc = st.loc
        off = st.off
        length = st.length
        loc[slots] = kernels.IN_BASE
        off[slots] = ptr[:-1]
        length[slots] = np.diff(ptr).astype(np.int32)
        nnz = int(ptr[-1])
        h._state = _State(
            loc=loc, off=off, length=length, fwd_idx=idx.copy(), fwd_val=val.copy(),
            fwd_used=nnz, base=kernels.build_postings(slots, ptr, idx, val),
            delta=_empty_postings(), live=live, live_nnz=nnz, base_nnz=nnz, base_stale=0,
        )  # fmt: skip
        return h

    # -- warm-up ----------------------------------------------------------------------------

    def warm(self) -> None:
        """Load (from Numba's cache, or compile) every kernel on a throw-away index."""
        _warm()


def _merged(st: _State) -> _State:
    """A state with the forward store compacted and every live vector in the base (``st`` is
    the unpublished state being built; its slot arrays are updated in place)."""
    present = np.flatnonzero(st.loc != kernels.ABSENT)
    ptr, idx, val = kernels.gather_rows(st.off[present], st.length[present], st.fwd_idx, st.fwd_val)
    nnz = int(ptr[-1])
    size = _grow_to(0, max(nnz + nnz // 4, 4096))
    fwd_idx = _copy_grown(idx, size, 0)
    fwd_val = _copy_grown(val, size, 0)
    loc = st.loc  # the state being built: not published yet
    loc[present] = kernels.IN_BASE
    off = np.full(st.capacity, -1, np.int64)
    off[present] = ptr[:-1]
    return _State(
        loc=loc, off=off, length=st.length, fwd_idx=fwd_idx, fwd_val=fwd_val, fwd_used=nnz,
        base=kernels.build_postings(present.astype(np.int32), ptr, idx, val),
        delta=_empty_postings(), live=st.live, live_nnz=nnz, base_nnz=nnz, base_stale=0,
    )  # fmt: skip


def idf_weights(n_docs: int, df: Any) -> np.ndarray:
    """Qdrant's IDF ``ln((N - n + 0.5) / (n + 0.5) + 1)`` of each document frequency ``n``
    (float32), for ``N = n_docs`` documents; the same formula the search kernel applies."""
    n = np.asarray(df, np.float64)
    return np.log((n_docs - n + 0.5) / (n + 0.5) + 1.0).astype(np.float32)


def _copy_grown(a: np.ndarray, size: int, fill: Any) -> np.ndarray:
    if size == a.shape[0]:
        return a.copy()
    out = np.empty(size, a.dtype)
    out[: a.shape[0]] = a
    out[a.shape[0] :] = fill
    return out


def _mask(allowed: Any, cap: int) -> np.ndarray:
    mask = np.asarray(allowed)
    if mask.ndim != 1:
        raise ValueError(f"allowed must be a 1-D mask over slots, got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if mask.dtype.kind not in "iu":
            raise ValueError(f"allowed must be a boolean mask, got dtype {mask.dtype}")
        mask = mask != 0
    if mask.shape[0] >= cap:
        mask = mask[:cap]
    else:
        full = np.zeros(cap, np.bool_)
        full[: mask.shape[0]] = mask
        mask = full
    return np.ascontiguousarray(mask).view(np.uint8)


def _slots(slots: Any) -> np.ndarray:
    arr = np.asarray(slots)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"slots must be a 1-D array, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"slots must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    bad = (arr < 0) | (arr > _MAX_SLOT)
    if bad.any():
        raise ValueError(f"slot {int(arr[bad][0])} out of range [0, {_MAX_SLOT}]")
    return arr


# -- validation of sparse vectors ----------------------------------------------------------


def _pair(vector: Any, where: str) -> tuple[Any, Any]:
    if isinstance(vector, dict):
        missing = [f for f in ("indices", "values") if f not in vector]
        if missing:
            raise ValueError(f"{where}.{missing[0]}: missing")
        extra = set(vector) - {"indices", "values"}
        if extra:
            raise ValueError(f"{where}: unknown field {sorted(extra)[0]!r}")
        return vector["indices"], vector["values"]
    if isinstance(vector, tuple | list) and len(vector) == 2:
        return vector[0], vector[1]
    indices = getattr(vector, "indices", None)
    values = getattr(vector, "values", None)
    if indices is not None and values is not None:
        return indices, values
    raise ValueError(f"{where} must be a pair (indices, values), got {type(vector).__name__}")


def _check_one(indices: Any, values: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The slow, precise check of one vector (names the field at fault)."""
    try:
        ind = np.asarray(indices)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}.indices cannot be read as an array: {e}") from None
    if ind.ndim != 1:
        raise ValueError(f"{where}.indices must be a 1-D array of integers")
    if ind.size and ind.dtype.kind not in "iu":
        raise ValueError(f"{where}.indices must be integers, got dtype {ind.dtype}")
    try:
        vals = np.asarray(values)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}.values cannot be read as an array: {e}") from None
    if vals.ndim != 1:
        raise ValueError(f"{where}.values must be a 1-D array of numbers")
    if vals.size and vals.dtype.kind not in "fiu":
        raise ValueError(f"{where}.values must be numbers, got dtype {vals.dtype}")
    if ind.shape[0] != vals.shape[0]:
        raise ValueError(
            f"{where}: indices and values must be the same length, got {ind.shape[0]} indices "
            f"and {vals.shape[0]} values"
        )
    if ind.size:
        if int(ind.min()) < 0:
            raise ValueError(f"{where}.indices: negative index {int(ind.min())}")
        if int(ind.max()) > _MAX_INDEX:
            raise ValueError(f"{where}.indices: index {int(ind.max())} exceeds 2**32 - 1")
    with np.errstate(over="ignore"):
        v32 = vals.astype(np.float32)
    if not np.isfinite(v32).all():
        raise ValueError(
            f"{where}.values: NaN or infinity (or a number beyond float32 range) at position "
            f"{int(np.argmin(np.isfinite(v32)))}"
        )
    return ind.astype(np.uint32), v32


def parse_vectors(vectors: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate a sequence of sparse vectors into one CSR row set ``(ptr, idx, val)`` with every
    row sorted by index. ``ValueError`` names the vector and field, e.g.
    ``vectors[3].indices: duplicate index 17``. Accepted vector forms: ``(indices, values)``
    pairs, ``{"indices": [...], "values": [...]}`` dicts, objects with those attributes."""
    if isinstance(vectors, dict) or not isinstance(vectors, Sequence | np.ndarray):
        raise ValueError(f"{name} must be a sequence of sparse vectors")
    n = len(vectors)
    index_lists = []
    value_lists = []
    for i, v in enumerate(vectors):
        a, b = _pair(v, f"{name}[{i}]")
        index_lists.append(a)
        value_lists.append(b)
    try:
        lengths = np.fromiter((len(a) for a in index_lists), np.int64, n)
        vlengths = np.fromiter((len(b) for b in value_lists), np.int64, n)
        if (lengths != vlengths).any():
            raise ValueError
        nonempty = [i for i in range(n) if lengths[i]]
        if nonempty:
            ind = np.concatenate([index_lists[i] for i in nonempty])
            vals = np.concatenate([value_lists[i] for i in nonempty])
        else:
            ind = np.zeros(0, np.int64)
            vals = np.zeros(0, np.float32)
        if ind.ndim != 1 or vals.ndim != 1 or ind.shape[0] != int(lengths.sum()):
            raise ValueError
        if ind.dtype.kind not in "iu" or vals.dtype.kind not in "fiu":
            raise ValueError
        if ind.size and (int(ind.min()) < 0 or int(ind.max()) > _MAX_INDEX):
            raise ValueError
        with np.errstate(over="ignore"):
            v32 = np.ascontiguousarray(vals, np.float32)
        if not np.isfinite(v32).all():
            raise ValueError
        idx = np.ascontiguousarray(ind, np.uint32)
    except (ValueError, TypeError):
        rows = [_check_one(a, b, f"{name}[{i}]") for i, (a, b) in enumerate(zip(index_lists, value_lists, strict=True))]  # fmt: skip
        lengths = np.fromiter((r[0].shape[0] for r in rows), np.int64, n)
        idx = np.concatenate([r[0] for r in rows]) if n else np.zeros(0, np.uint32)
        v32 = np.concatenate([r[1] for r in rows]) if n else np.zeros(0, np.float32)
        idx = np.ascontiguousarray(idx, np.uint32)
        v32 = np.ascontiguousarray(v32, np.float32)
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=ptr[1:])
    bad = kernels.sort_rows(ptr, idx, v32)
    if bad >= 0:
        row = idx[ptr[bad] : ptr[bad + 1]]
        dup = int(row[np.flatnonzero(row[1:] == row[:-1])[0]])
        raise ValueError(f"{name}[{bad}].indices: duplicate index {dup}")
    return ptr, idx, v32


_warm_lock = threading.Lock()
_warmed = [False]


def _warm() -> None:
    with _warm_lock:
        if _warmed[0]:
            return
        h = SparseIndex("idf", capacity=8)
        h.put([0, 1, 2], [([3, 1], [1.0, 2.0]), ([1], [0.5]), ([], [])])
        h.search([([1, 3], [1.0, 1.0])], 2)
        h.search([([1], [1.0])], 2, allowed=np.ones(3, bool))
        h.document_frequencies([1, 3])
        h.remove([1])
        SparseIndex.from_arrays(h.to_arrays())
        _warmed[0] = True
