"""HNSW: the owner of the graph arrays; validation, growth, slots, and the calls into the kernels.

The graph is a handful of flat numpy arrays (see ``kernels.py`` for the layout)
held together by one ``_Graph`` object. Slots are dense int32 positions in
those arrays; the index knows nothing of user ids.

Scores returned by ``search``: for ``l2`` the squared Euclidean distance,
sorted ascending; for ``ip`` the inner product and for ``cosine`` the cosine
similarity, sorted descending. In both cases the best hit comes first. Rows
are padded with slot ``-1`` (score ``+inf`` for l2, ``-inf`` otherwise) only
when fewer than ``k`` admissible points exist.

Concurrency: one writer, many readers
-------------------------------------
The caller guarantees one writer at a time (``add``, ``delete``, ``replace``
also take an internal lock); any number of threads may call ``search`` at the
same time as the writer. Search kernels run with the GIL released.

* A reader takes one reference to the current ``_Graph`` at the start of a
  call and uses only its arrays. Growth (capacity doubling, more upper-layer
  rows) copies into a new ``_Graph`` and swaps the single reference; the old
  arrays stay alive for readers that still hold them and are never written
  again.
* A new point is written completely (vector, level, upper-row offset, empty
  link rows, deleted flag set) before any link to it exists; it becomes a
  search result only when its deleted flag is cleared after it is linked.
  So links only point to fully written slots.
* Points are linked in batches (``_link``): the batch's own rows are written
  first (no point has a link to them yet), then the reverse links to them are
  added, each target row by exactly one thread of the writer; only then are
  the batch's deleted flags cleared and the entry point raised.
* Neighbour rows are rewritten in place: the new neighbours are written
  first, the count (column 0) last. A reader reads the count once and clamps
  it to the row width, so a row under rewrite gives a mix of old and new
  neighbours, all of them valid slots: never a torn or out-of-range one.
* The entry point is published after the point is linked; readers take the
  entry point's level from ``levels`` (set before the point is linked), never
  from the separately stored max level.
* Delete is a flag: the slot is skipped in results but still walked through.
  ``replace`` writes the new vector in place, so a concurrent reader may score
  that one point with a half-written vector; it still returns valid slots.

Churn: re-linking a reused or replaced slot hands the in-links it gave its old
neighbours over to its other neighbours (``kernels.hand_over``), and after
writes the writer re-attaches any live point the entry point no longer reaches
on layer 0 (``HNSW._reattach``; after every write up to
``_CHECK_ALWAYS_MAX`` live points, amortised above). Both add links the same way
as inserts (row first, count last). The entry point is moved off a slot before
that slot is re-linked.

Each searching thread has its own visited array (generation-tagged uint16),
so searches share nothing writable.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from vdb.index import kernels, qkernels
from vdb.index.quantizer import KINDS as QUANTIZATION_KINDS
from vdb.index.quantizer import ScalarQuantizer

log = logging.getLogger(__name__)

METRICS = {"l2": kernels.L2, "ip": kernels.IP, "cosine": kernels.IP}
_METRIC_CODES = {"l2": 0, "ip": 1, "cosine": 2}
_METRIC_NAMES = {v: k for k, v in _METRIC_CODES.items()}
_FORMAT_VERSION = 1
_MAX_LEVEL = 30
# Points linked per batch: their candidate search and neighbour selection run in parallel
# against the graph as it was before the batch, plus an exact comparison with the batch members
# before them; then the links are written (see _link). The result does not depend on the number
# of threads. A batch holds half the points linked so far (this call's included: one large add
# into an empty index grows its batches too), within these bounds; each batch ends in a wait
# for the slowest thread. With both bounds at 1 this is the classic one-point-at-a-time build.
_CHUNK_MIN = 32
_CHUNK_MAX = 256
# Filtered search scans the allowed slots exactly when allowed_count**2 <= _EXACT_FACTOR * ef * live.
# The walk costs about ef * degree / selectivity distances, the scan allowed_count, so the
# crossover is at allowed_count**2 ~ c * ef * live. Measured on debian-minilm (20k, ef=64, k=10):
# the scan was faster at 20% allowed (281 vs 710 us/query, ratio 12.7) and slower at 50%
# (ratio 77); the crossover sits near 30.
_EXACT_FACTOR = 30.0
# Reachability check after writes (HNSW._reattach): a walk over layer 0 costs about
# 0.2 us per used slot (~8 ms at 40k on this class of machine, against ~0.1-1 ms to link one
# point). Up to _CHECK_ALWAYS_MAX live points it runs after every add/replace; above, once the
# points (re)linked since the last check reach 1/_CHECK_SHARE of the live points, which costs
# about 0.2 * _CHECK_SHARE us per written point.
_CHECK_ALWAYS_MAX = 4096
_CHECK_SHARE = 64
# The int8 walk keeps at least ceil(k * _POOL_FLOOR) candidates, all rescored, when no
# oversampling is given (HNSW._pool). Measured on the 128-d synthetic set (bench/ann.py
# --quantization int8): at ef = k = 10 a walk of 10 on the codes lost 0.015-0.017 recall@10
# against the float walk of ef 10 (see _pool for the rule).
_POOL_FLOOR = 2.0
_SEARCH_GRAIN = 16  # queries per parallel block of a batch search
_LINK_GRAIN = 16  # target slots a build thread takes at a time when adding reverse links

_FLOAT32 = np.dtype(np.float32)

_batch_lock = threading.Lock()
_batch_calls = [0]  # batch searches in progress (all indexes)
_pool_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}


def _nice() -> int:
    """The calling thread's scheduling priority (Linux: per thread; elsewhere 0)."""
    try:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    except (AttributeError, OSError):
        return 0


def set_thread_nice(nice: int) -> None:
    """Set the calling thread's scheduling priority (Linux; elsewhere, or not permitted:
    nothing)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except (AttributeError, OSError):  # not Linux, or not permitted
        pass


def _executor() -> ThreadPoolExecutor:
    """The pool of threads that share a parallel call's blocks, at the caller's priority: the
    background indexer lowers its own (``vdb.segments.Indexer``), and its helper threads must
    too, or they would take the cores from searches and the writer as the caller does not."""
    nice = _nice()
    with _pool_lock:
        pool = _pools.get(nice)
        if pool is None:
            pool = _pools[nice] = ThreadPoolExecutor(
                max_workers=max(2, os.cpu_count() or 1),
                thread_name_prefix="vdb-index" if nice == 0 else f"vdb-index-nice{nice}",
                initializer=set_thread_nice,
                initargs=(nice,),
            )
        return pool


class _Graph:
    """The arrays of one generation of the graph (replaced as a whole on growth or refit).

    With int8 quantization it also holds the codes, their per-vector terms and the quantizer
    constants they were made with (``qkernels``), so a reader always pairs codes with the
    constants that made them. ``disk`` is the directory of the memory-mapped float vectors
    (``None``: in RAM)."""

    __slots__ = (
        "vectors", "links0", "upper", "upper_off", "levels", "deleted", "state", "codes",
        "terms", "consts", "disk",
    )  # fmt: skip

    def __init__(
        self, vectors, links0, upper, upper_off, levels, deleted, state, codes=None, terms=None,
        consts=None, disk=None,
    ):  # fmt: skip
        self.vectors = vectors
        self.links0 = links0
        self.upper = upper
        self.upper_off = upper_off
        self.levels = levels
        self.deleted = deleted
        self.state = state
        self.codes = codes
        self.terms = terms
        self.consts = consts
        self.disk = disk

    @property
    def capacity(self) -> int:
        return self.vectors.shape[0]

    @classmethod
    def empty(
        cls, capacity: int, dim: int, M: int, upper_rows: int, quantized: bool = False,
        disk: str | None = None,
    ) -> _Graph:  # fmt: skip
        state = np.zeros(4, np.int64)
        state[0] = -1
        g = cls(
            _float_storage((capacity, dim), disk),
            np.zeros((capacity, 2 * M + 1), np.int32),
            np.zeros((upper_rows, M + 1), np.int32),
            np.zeros(capacity, np.int32),
            np.zeros(capacity, np.int8),
            np.zeros(capacity, np.uint8),
            state,
            disk=disk,
        )
        if quantized:
            g.codes = _aligned_zeros((capacity, dim), np.int8)
            g.terms = np.zeros(capacity, np.float32)
            g.consts = np.zeros(3 + dim, np.float32)
            g.consts[2] = 1.0
        return g

    def grown(self, capacity: int, upper_rows: int) -> _Graph:
        """A copy with at least ``capacity`` slots and ``upper_rows`` upper rows."""
        new = _Graph.empty(
            max(capacity, self.capacity),
            self.vectors.shape[1],
            self.upper.shape[1] - 1,
            max(upper_rows, self.upper.shape[0]),
            self.codes is not None,
            self.disk,
        )
        n = self.capacity
        new.vectors[:n] = self.vectors
        new.links0[:n] = self.links0
        new.upper[: self.upper.shape[0]] = self.upper
        new.upper_off[:n] = self.upper_off
        new.levels[:n] = self.levels
        new.deleted[:n] = self.deleted
        new.state[:] = self.state
        if self.codes is not None:
            new.codes[:n] = self.codes
            new.terms[:n] = self.terms
            new.consts[:] = self.consts
        return new

    def recoded(self, codes: np.ndarray, terms: np.ndarray, consts: np.ndarray) -> _Graph:
        """The same graph with new codes (a refit); every other array is shared."""
        return _Graph(
            self.vectors, self.links0, self.upper, self.upper_off, self.levels, self.deleted,
            self.state, codes, terms, consts, self.disk,
        )  # fmt: skip


def _parallel(work: Callable[[int, int], None], n: int, grain: int, threads: int) -> None:
    """Run ``work(lo, hi)`` over ``[0, n)`` in blocks of up to ``grain`` items, taken dynamically
    by the calling thread and up to ``threads - 1`` pool threads (the kernels release the GIL).
    Blocks shrink towards the end (down to one item), so the threads finish close together and
    a stalled thread delays at most one small block. The caller waits for the blocks, not for
    the pool threads: a pool thread that starts only after every block was taken (the OS was
    slow to run it, as on a loaded host) just ends. Exceptions are re-raised in the caller."""
    helpers = min(threads, (n + grain - 1) // grain) - 1
    if helpers <= 0:
        work(0, n)
        return
    lock = threading.Lock()
    finished = threading.Event()
    taken = [0, 0]  # items handed out, items done
    errors: list[BaseException] = []
    share = 2 * threads

    def drain() -> None:
        while True:
            with lock:
                lo = taken[0]
                if lo >= n:
                    return
                hi = lo + max(1, min(grain, (n - lo) // share))
                taken[0] = hi
            try:
                work(lo, hi)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller
                errors.append(e)
                with lock:  # hand out nothing more
                    hi += n - taken[0]
                    taken[0] = n
            with lock:
                taken[1] += hi - lo
                if taken[1] == n:
                    finished.set()

    pool = _executor()
    for _ in range(helpers):
        pool.submit(drain)
    drain()
    finished.wait()
    if errors:
        raise errors[0]


def _aligned_zeros(shape: tuple[int, int], dtype: Any, align: int = 64) -> np.ndarray:
    """Zeros whose first element sits on a cache-line boundary (malloc gives 16 bytes), so each
    vector of a 64-byte multiple spans the fewest cache lines."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(nbytes + align, np.uint8)
    start = (-raw.ctypes.data) % align
    return raw[start : start + nbytes].view(dtype).reshape(shape)


Progress = Callable[[int, int], None]
"""``progress(done, total)``: a caller's callback for a long ``add``/``replace`` (the index
draws nothing itself; the command line turns it into a progress bar)."""


def _offset(progress: Progress | None, before: int, total: int) -> Callable[[int], None] | None:
    """``progress`` for a part of a write that starts after ``before`` of ``total`` points."""
    if progress is None:
        return None
    return lambda done: progress(before + done, total)


def _float_storage(shape: tuple[int, int], disk: str | None) -> np.ndarray:
    """Zeroed float32 storage for the vectors: aligned RAM, or (``disk``) a memory-mapped file in
    that directory. The file is unlinked at once (it holds a copy only: checkpoints carry the
    vectors), so it disappears with the last array that maps it."""
    if disk is None:
        return _aligned_zeros(shape, np.float32)
    nbytes = max(1, int(np.prod(shape)) * 4)
    with tempfile.TemporaryFile(prefix="vdb-vectors-", dir=disk) as f:
        f.truncate(nbytes)
        mm = np.memmap(f, dtype=np.float32, mode="r+", shape=shape)
    return np.asarray(mm)  # a plain ndarray over the mapping: the kernels' one array type


def _upper_rows(capacity: int, M: int, rows: int = 0, slots: int = 0) -> int:  # noqa: N803
    """Upper-layer rows to allocate for ``capacity`` slots when ``slots`` of them hold ``rows``
    rows: those plus 5% over the expected count for the free slots (a point has
    ``sum((1/M)**l, l >= 1) = 1/(M-1)`` upper rows on average), plus 16. Sizing to the
    expectation rather than doubling cut the index's RAM by ~4 bytes per point (M=16)."""
    return rows + math.ceil(max(0, capacity - slots) * 1.05 / (M - 1)) + 16


def _grow_to(current: int, needed: int) -> int:
    size = max(1, current)
    while size < needed:
        size *= 2
    return size


class HNSW:
    """Hierarchical navigable small world graph over float32 vectors addressed by int32 slots.

    ``HNSW(dim, metric="l2", M=16, ef_construction=128, capacity=1024, seed=None, ef=64)``.
    ``metric`` is ``"l2"`` (squared Euclidean), ``"ip"`` (distance ``1 - dot``) or
    ``"cosine"`` (vectors and queries normalised, then ``ip``). Layer 0 keeps up to ``2*M``
    links, upper layers ``M``; levels are drawn with multiplier ``1/ln(M)`` from a generator
    seeded with ``seed`` (reproducible builds: the graph depends on the seed and the data only,
    not on ``n_threads``). ``add`` links large batches with ``n_threads`` threads (default: all
    cores); batch searches of 32 or more queries are split the same way. Bad input raises
    ``ValueError``.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "l2",
        M: int = 16,
        ef_construction: int = 128,
        capacity: int = 1024,
        seed: int | None = None,
        ef: int = 64,
        n_threads: int | None = None,
        *,
        quantization: str | None = None,
        quantile: float | None = None,
        on_disk: bool | str = False,
        oversampling: float | None = None,
    ) -> None:
        dim = _positive_int(dim, "dim")
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; expected one of l2, ip, cosine")
        M = _positive_int(M, "M")
        if M < 2:
            raise ValueError(f"M must be >= 2, got {M}")
        self._dim = dim
        self._metric = metric
        self._code = METRICS[metric]
        self._cosine = metric == "cosine"
        self._M = M
        self._efc = _positive_int(ef_construction, "ef_construction")
        self._ef = _positive_int(ef, "ef")
        capacity = _positive_int(capacity, "capacity")
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (2**63))
        self._seed = int(seed)
        self._draws = 0
        self._rng = np.random.Generator(np.random.PCG64(self._seed))
        self._mult = 1.0 / math.log(M)
        if quantization is not None and quantization not in QUANTIZATION_KINDS:
            raise ValueError(
                f"unknown quantization {quantization!r}; expected None or one of "
                f"{', '.join(QUANTIZATION_KINDS)}"
            )
        self._quantization = quantization
        self._quantizer = (
            ScalarQuantizer(dim, metric, quantile) if quantization is not None else None
        )
        if isinstance(on_disk, bool):
            self._disk = tempfile.gettempdir() if on_disk else None
        elif isinstance(on_disk, (str, os.PathLike)):
            self._disk = os.fspath(on_disk)
            if not os.path.isdir(self._disk):
                raise ValueError(f"on_disk directory {self._disk!r} does not exist")
        else:
            raise ValueError(f"on_disk must be a bool or a directory, got {on_disk!r}")
        # Default None: rescore every candidate of the walk (max(ef, 2k) float distances,
        # against the walk's several hundred; see _pool). Measured on the MiniLM fixture (10k, ef 16-128): 1.0 (no
        # extra candidates) lost 0.02-0.03 recall@10, 2.0 matched rescoring every candidate.
        self._oversampling = _oversampling(oversampling)
        self._pool_floor = _POOL_FLOOR
        self._pool_k = [0, 0]  # the lean path's last k and its default pool
        self._qlevels = qkernels.query_levels(dim)
        # Candidate search and neighbour selection of the build on the codes (see _link).
        # Measured, recall@10 at ef 16/32/64, build on codes vs on floats (same int8 search):
        # MiniLM fixture 10k 0.934/0.973/0.992 vs 0.928/0.977/0.992, build 5.3 s vs 6.7 s;
        # 48-d Gaussian mixture 6k, cosine 0.982/0.996/1.0 vs 0.984/0.999/1.0, ip
        # 0.990/0.991/0.993 vs 0.993/0.995/0.995, l2 0.987/1.0/1.0 vs 0.987/1.0/1.0.
        self._build_on_codes = True
        self._g = _Graph.empty(
            capacity, dim, M, _upper_rows(capacity, M), quantization is not None, self._disk
        )
        self._free: list[int] = []
        self._live = 0
        self._hidden: set[int] = set()  # hidden by ``hide``, not yet deleted
        self._swap_lock = threading.Lock()  # ``hide`` against the growth swap
        self._unchecked = 0  # points (re)linked since the last reachability check
        # marks the slots being re-linked (replace, reuse of deleted slots) for the candidate
        # search to skip; allocated on the first re-link (new points are skipped through their
        # deleted flag, so an index only ever added to does without: 1 byte per slot)
        self._pending: np.ndarray | None = None
        self._write_lock = threading.RLock()
        self._tls = threading.local()
        self._n_threads = max(1, int(n_threads or os.cpu_count() or 1))
        self._no_mask = np.zeros(1, np.uint8)
        self._one_query = (1, dim)

    # -- properties -------------------------------------------------------------------------

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def M(self) -> int:
        return self._M

    @property
    def ef_construction(self) -> int:
        return self._efc

    @property
    def ef(self) -> int:
        """Default ``ef`` of ``search`` (settable)."""
        return self._ef

    @ef.setter
    def ef(self, value: int) -> None:
        self._ef = _positive_int(value, "ef")

    @property
    def capacity(self) -> int:
        return self._g.capacity

    @property
    def quantization(self) -> str | None:
        """``None`` (float32 walk) or ``"int8"`` (walk on codes, rescored with the floats)."""
        return self._quantization

    @property
    def quantizer(self) -> ScalarQuantizer | None:
        return self._quantizer

    @property
    def on_disk(self) -> bool:
        """True when the float vectors live in a memory-mapped file (codes and graph in RAM)."""
        return self._disk is not None

    @property
    def oversampling(self) -> float | None:
        """Default oversampling of ``search`` (settable; ``None``: rescore every candidate)."""
        return self._oversampling

    @oversampling.setter
    def oversampling(self, value: float | None) -> None:
        self._oversampling = _oversampling(value)

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by the index arrays: ``ram`` (graph, codes, and the floats unless they are
        memory-mapped) and ``mapped`` (the memory-mapped float vectors)."""
        g = self._g
        arrays = [g.links0, g.upper, g.upper_off, g.levels, g.deleted, g.state]
        if self._pending is not None:
            arrays.append(self._pending)
        if g.codes is not None:
            arrays += [g.codes, g.terms, g.consts]
        ram = sum(a.nbytes for a in arrays)
        mapped = 0
        if self._disk is None:
            ram += g.vectors.nbytes
        else:
            mapped = g.vectors.nbytes
        return {"ram": int(ram), "mapped": int(mapped)}

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def used(self) -> int:
        """Slots in use: every slot below this was allocated once (live, deleted or a hole)."""
        return int(self._g.state[2])

    def __len__(self) -> int:
        """Number of live (added and not deleted or hidden) points."""
        return self._live - len(self._hidden)

    def __repr__(self) -> str:
        return (
            f"HNSW(dim={self._dim}, metric={self._metric!r}, M={self._M}, "
            f"ef_construction={self._efc}, len={len(self)}, capacity={self.capacity})"
        )

    # -- input checks -----------------------------------------------------------------------

    def _matrix(
        self, x: Any, name: str, normalize: bool = True, check_values: bool = True
    ) -> np.ndarray:
        """``x`` as a C-contiguous float32 [n, dim] array of finite numbers; for cosine the rows
        are non-zero and (when ``normalize``) scaled to unit length."""
        if not (
            isinstance(x, np.ndarray)
            and x.dtype == np.float32
            and x.ndim == 2
            and x.flags.c_contiguous
        ):
            x = _numeric(x, name)
            if x.ndim != 2:
                raise ValueError(
                    f"{name} must be a 2-D array [n, {self._dim}], got shape {tuple(x.shape)}"
                )
            with np.errstate(over="ignore"):
                x = np.ascontiguousarray(x, dtype=np.float32)
        if x.shape[1] != self._dim:
            raise ValueError(f"expected {self._dim} dimensions, got {x.shape[1]}")
        if not check_values:
            return x
        flat = x.reshape(-1)
        total = float(flat @ flat)
        if not math.isfinite(total):
            # NaN/inf make the sum of squares non-finite; huge finite values only overflow it
            if not np.isfinite(x).all():
                raise ValueError(f"{name} contain NaN or inf (or values beyond float32 range)")
            if self._metric == "cosine":
                x = x / np.abs(x).max(axis=1, keepdims=True)
                total = 1.0
        if self._metric == "cosine":
            if x.shape[0] > 1:
                zero = np.einsum("ij,ij->i", x, x).min() == 0.0
            else:
                zero = x.shape[0] == 1 and total == 0.0
            if zero:
                raise ValueError(f"{name} contain a zero vector, which has no cosine direction")
            if normalize:
                norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))
                x = (x / norms[:, None]).astype(np.float32)
        return x

    def _slots(self, slots: Any) -> np.ndarray:
        if np.asarray(slots).dtype.kind == "b":
            raise ValueError("slots must be integers, not booleans")
        arr = _numeric(slots, "slots")
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if arr.ndim != 1:
            raise ValueError(f"slots must be a 1-D array, got shape {tuple(arr.shape)}")
        if arr.size and arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
                raise ValueError("slots must be integers")
        arr = arr.astype(np.int64)
        n_used = int(self._g.state[2])
        bad = (arr < 0) | (arr >= n_used)
        if bad.any():
            raise ValueError(f"slot {int(arr[bad][0])} out of range [0, {n_used})")
        return arr

    # -- writes -----------------------------------------------------------------------------

    def add(self, vectors: Any, slots: Any = None, progress: Progress | None = None) -> np.ndarray:
        """Insert ``vectors`` ([n, dim]); returns their slots (int32[n]). Freed slots are reused
        first (smallest first), then new slots are appended; capacity doubles as needed.

        ``slots`` (distinct ints, one per vector) places the points at those slots instead:
        each must be a deleted slot or one at or beyond the end of the used range (the slots
        skipped on the way there are allocated as deleted, free slots). A caller that keeps
        its own slot numbering (the collection's segments) uses this.

        ``progress(done, n)`` is called from the writing thread after each linked chunk
        (the last call has ``done == n``), so a caller can show a long build advancing."""
        x = self._matrix(vectors, "vectors")
        n = x.shape[0]
        if not _warm_done[group := self._build_group()]:
            _warm_group(group)  # waits for a background warm() still loading the group
        if self._quantizer is not None and not self._quantizer.fitted and n:
            self._fit(x)
        if slots is not None:
            return self._add_at(x, self._target_slots(slots, n), progress)
        if n == 0:
            return np.empty(0, np.int32)
        with self._write_lock:
            n_reuse = min(n, len(self._free))
            reuse = np.array([heapq.heappop(self._free) for _ in range(n_reuse)], np.int32)
            n_new = n - n_reuse
            new = np.empty(0, np.int32)
            if n_new:
                new = self._allocate(x[n_reuse:])
            if n_reuse:
                self._relink(reuse, x[:n_reuse], _offset(progress, 0, n))
            if n_new:
                self._link(new, on_chunk=_offset(progress, n_reuse, n))
            self._live += n
            self._repair(n)
        return np.concatenate([reuse, new]) if n_reuse else new

    def _target_slots(self, slots: Any, n: int) -> np.ndarray:
        if np.asarray(slots).dtype.kind == "b":
            raise ValueError("slots must be integers, not booleans")
        arr = _numeric(slots, "slots").reshape(-1)
        if arr.size and arr.dtype.kind == "f" and not np.all(arr == np.floor(arr)):
            raise ValueError("slots must be integers")
        arr = arr.astype(np.int64)
        if arr.shape[0] != n:
            raise ValueError(f"got {arr.shape[0]} slots for {n} vectors")
        if n and (arr.min() < 0 or arr.max() >= 2**31 - 1):
            raise ValueError("slots must be in [0, 2**31 - 1)")
        if np.unique(arr).shape[0] != n:
            raise ValueError("slots to add must be distinct")
        return arr

    def _add_at(
        self, x: np.ndarray, slots: np.ndarray, progress: Progress | None = None
    ) -> np.ndarray:
        n = x.shape[0]
        if n == 0:
            return np.empty(0, np.int32)
        with self._write_lock:
            g = self._g
            n_used = int(g.state[2])
            old = slots < n_used
            reuse = slots[old]
            if reuse.size and not np.all(g.deleted[reuse] != 0):
                live = reuse[g.deleted[reuse] == 0]
                raise ValueError(f"slot {int(live[0])} is live; delete it first")
            new_pos = np.flatnonzero(~old)
            if new_pos.size:
                top = int(slots[new_pos].max()) + 1
                rows = np.zeros((top - n_used, self._dim), np.float32)
                rows[slots[new_pos] - n_used] = x[new_pos]
                self._allocate(rows)
                wanted = np.zeros(top - n_used, bool)
                wanted[slots[new_pos] - n_used] = True
                holes = np.flatnonzero(~wanted) + n_used
                for slot in holes.tolist():
                    heapq.heappush(self._free, slot)
            if reuse.size:
                taken = set(reuse.tolist())
                self._free = [s for s in self._free if s not in taken]
                heapq.heapify(self._free)
                self._relink(reuse.astype(np.int32), x[old], _offset(progress, 0, n))
            if new_pos.size:
                self._link(
                    slots[new_pos].astype(np.int32), on_chunk=_offset(progress, reuse.size, n)
                )
            self._live += n
            self._repair(n)
        return slots.astype(np.int32)

    def _allocate(self, x: np.ndarray) -> np.ndarray:
        """Write new points (hidden: deleted flag set) into fresh slots; returns the slots."""
        n = x.shape[0]
        g = self._g
        start = int(g.state[2])
        levels = self._draw_levels(n)
        rows_needed = int(g.state[3]) + int(levels.sum(dtype=np.int64))
        if start + n > g.capacity or rows_needed > g.upper.shape[0]:
            cap = _grow_to(g.capacity, start + n)
            rows = max(_upper_rows(cap, self._M, rows_needed, start + n), g.upper.shape[0] * 9 // 8)
            with self._swap_lock:  # no ``hide`` between the copy and the swap
                g = g.grown(cap, rows)
                self._g = g
            log.debug("index grown to capacity %d, %d upper rows", cap, rows)
        slots = np.arange(start, start + n, dtype=np.int32)
        offsets = int(g.state[3]) + np.cumsum(levels, dtype=np.int64) - levels
        g.vectors[start : start + n] = x
        self._encode(g, slots, x)
        g.levels[start : start + n] = levels
        g.upper_off[start : start + n] = offsets
        g.links0[start : start + n, 0] = 0
        g.deleted[start : start + n] = 1
        g.state[3] = rows_needed
        g.state[2] = start + n
        return slots

    def _draw_levels(self, n: int) -> np.ndarray:
        u = self._rng.random(n)
        self._draws += n
        levels = np.floor(-np.log1p(-u) * self._mult)
        return np.minimum(levels, _MAX_LEVEL).astype(np.int8)

    def _relink(
        self, slots: np.ndarray, x: np.ndarray, on_chunk: Callable[[int], None] | None = None
    ) -> None:
        """Give existing slots new vectors and re-link them into the graph."""
        g = self._g
        self._move_entry_off(g, slots)
        slots32 = slots.astype(np.int32)
        if self._pending is None or self._pending.shape[0] < g.capacity:
            self._pending = np.zeros(g.capacity, np.uint8)  # all zeros between writes
        pending = self._pending
        pending[slots32] = 1
        kernels.hand_over(self._code, g.vectors, g.links0, g.upper_off, slots32, pending)
        pending[slots32] = 0
        kernels.unlink(self._code, g.vectors, g.links0, g.upper, g.upper_off, g.levels, slots32)
        g.vectors[slots] = x
        self._encode(g, slots, x)
        # top up the re-linked lists (see kernels.build_select): measured on debian-minilm 20k
        # after replacing 50%, recall@10 at ef=32 went from 0.013 below a fresh build to 0.003
        self._link(slots.astype(np.int32), fill=self._M + self._M // 2, on_chunk=on_chunk)

    def _move_entry_off(self, g: _Graph, slots: np.ndarray) -> None:
        """When the entry point is among ``slots`` (about to get new vectors), make the highest
        slot outside them the entry point first, so that no search or insert starts from a
        point whose links are being rebuilt; the re-linked point takes the entry back in
        ``build_publish`` when its level is higher."""
        entry = int(g.state[0])
        if entry < 0 or not np.any(slots == entry):
            return
        n = int(g.state[2])
        levels = g.levels[:n].astype(np.int16)
        levels[slots] = -1
        levels[g.deleted[:n] != 0] -= 64  # prefer live slots, but any slot outside is walkable
        best = int(np.argmax(levels))
        if levels[best] == -1 or best == entry or np.any(slots == best):
            return
        g.state[1] = g.levels[best]
        g.state[0] = best

    # -- quantization -----------------------------------------------------------------------

    def _fit(self, x: np.ndarray) -> None:
        """First fit of the quantizer, on the first points added (the index is empty)."""
        q = self._quantizer
        q.fit(x, self._seed)
        self._g.consts[:] = q.constants()

    def _encode(self, g: _Graph, slots: np.ndarray, x: np.ndarray) -> None:
        """Write the codes and terms of ``x`` for ``slots`` (written with the float vectors,
        before the points are linked)."""
        if g.codes is None:
            return
        codes = np.empty((x.shape[0], self._dim), np.int8)
        terms = np.empty(x.shape[0], np.float32)
        self._quantizer.encode(x, codes, terms)
        g.codes[slots] = codes
        g.terms[slots] = terms

    def _maybe_refit(self) -> None:
        """Apply the quantizer's refit rule (``quantizer.py``) after a write: refit on the live
        vectors, re-code every slot into new arrays and publish them with their constants in
        one reference swap, so readers never pair codes with the wrong constants."""
        q = self._quantizer
        if q is None or not q.needs_refit():
            return
        g = self._g
        n = int(g.state[2])
        live = np.flatnonzero(g.deleted[:n] == 0)
        if live.size == 0:
            return
        q.fit(g.vectors[live], self._seed)
        codes = _aligned_zeros((g.capacity, self._dim), np.int8)
        terms = np.zeros(g.capacity, np.float32)
        step = 65536
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            q.encode(g.vectors[lo:hi], codes[lo:hi], terms[lo:hi], count=False)
        self._g = g.recoded(codes, terms, q.constants())
        log.debug("int8 quantizer refitted on %d points", live.size)

    def _repair(self, written: int) -> None:
        """Re-attach live slots that the entry point no longer reaches (see
        ``_reattach``) after ``written`` points were (re)linked; on large
        indexes the check is amortised over several writes (see ``_CHECK_SHARE``). Also the
        point where a quantized index applies its refit rule (every write ends here)."""
        self._maybe_refit()
        self._unchecked += written
        if self._live > _CHECK_ALWAYS_MAX and self._unchecked * _CHECK_SHARE < self._live:
            return
        self._unchecked = 0
        fixed = self._reattach()
        if fixed:
            log.debug("re-attached %d unreachable points", fixed)

    def _reattach(self) -> int:
        """Make every live slot reachable on layer 0 from the entry point; returns how many
        slots were re-attached. ``kernels.reach`` marks what the entry point reaches; each live
        slot left unmarked is searched for (the index's own layer-0 search, admitting marked
        slots only: no kernel of its own to compile) and linked from the nearest reached slot
        (``kernels.attach``). A link added with pruning may cut a path, so the marking is then
        redone (at most 4 rounds)."""
        g = self._g
        n = int(g.state[2])
        if n == 0:
            return 0
        seen = np.zeros(n, np.uint8)
        stack = np.empty(n, np.int32)
        if not kernels.reach(g.links0, g.deleted, g.state, seen, stack):
            return 0
        k = self._efc
        hosts = np.empty((1, k), np.int32)
        scores = np.empty((1, k), np.float32)
        fixed = 0
        for _round in range(4):
            pruned = False
            for u in np.flatnonzero((seen == 0) & (g.deleted[:n] == 0)).tolist():
                if seen[u]:  # reached through a slot attached before it
                    continue
                self._search_rows(
                    g, g.vectors[u : u + 1], k, k, seen, kernels.ADMIT_MASK, 0, False, hosts,
                    scores, g.codes is not None, 0,
                )  # fmt: skip
                got = kernels.attach(
                    self._code, g.vectors, g.links0, g.upper_off, u, hosts[0], seen, stack
                )
                pruned |= got == kernels.ATTACH_PRUNED
                fixed += got != kernels.ATTACH_NONE
            if not pruned or not kernels.reach(g.links0, g.deleted, g.state, seen, stack):
                break
        return fixed

    def _link(
        self, slots: np.ndarray, fill: int = 0, on_chunk: Callable[[int], None] | None = None
    ) -> None:
        """Link written slots into the graph in chunks: candidate search and neighbour selection
        for a chunk run in parallel (nogil, ``build_select``); this thread writes the chunk's own
        rows and sorts the reverse links by target (``build_forward``), the reverse links are
        added in parallel, each target's rows by one thread (``build_reverse``), and this thread
        clears the deleted flags and raises the entry point (``build_publish``). The graph is
        the one the classic point-by-point linking of the chunk would give, whatever the
        thread count. ``on_chunk(linked so far)`` follows each chunk."""
        pos = 0
        total = slots.shape[0]
        M = self._M
        while pos < total:
            g = self._g
            size = min(total - pos, _CHUNK_MAX, max(_CHUNK_MIN, (self._live + pos) // 2))
            chunk = np.ascontiguousarray(slots[pos : pos + size])
            pos += size
            # the candidate search skips the chunk: new points through their deleted flag,
            # re-linked ones (fill > 0, live or not) through the re-link mask
            skip = self._pending if fill > 0 else g.deleted
            if fill > 0:
                skip[chunk] = 1
            top = int(g.levels[chunk].max())
            sel = np.zeros((size, top + 1, max(M, fill)), np.int32)
            sel_n = np.zeros((size, top + 1), np.int32)
            entry = int(g.state[0])

            next_point = np.zeros(1, np.int64)  # the next chunk position to select for

            def select(_lo, _hi, g=g, chunk=chunk, sel=sel, sel_n=sel_n, entry=entry, skip=skip,
                       counter=next_point) -> None:  # fmt: skip
                visited, vgen = self._visited(g.capacity)
                if g.codes is not None and self._build_on_codes:
                    qkernels.build_select_q(
                        g.codes, g.terms, g.consts, g.links0, g.upper, g.upper_off, g.levels,
                        g.deleted, skip, entry, chunk, counter, self._efc, M, fill,
                        visited, vgen, sel, sel_n,
                    )  # fmt: skip
                    return
                kernels.build_select(
                    self._code, g.vectors, g.links0, g.upper, g.upper_off, g.levels, g.deleted,
                    skip, entry, chunk, counter, self._efc, M, fill, visited, vgen, sel, sel_n,
                )  # fmt: skip

            # one kernel call per thread: the threads take the points (and below the targets)
            # from a shared counter inside the kernel, so a late thread finds less or nothing
            threads = min(self._n_threads, size)
            _parallel(select, threads, 1, threads)
            keys = np.empty(sel.size, np.int64)
            starts = np.empty(sel.size + 1, np.int64)
            targets = kernels.build_forward(
                g.links0, g.upper, g.upper_off, g.levels, chunk, sel, sel_n, keys, starts
            )
            next_target = np.zeros(1, np.int64)  # the next target to add reverse links to

            def reverse(_lo, _hi, g=g, chunk=chunk, keys=keys, starts=starts, targets=targets,
                        counter=next_target) -> None:  # fmt: skip
                kernels.build_reverse(
                    self._code, g.vectors, g.links0, g.upper, g.upper_off, chunk, keys, starts,
                    targets, counter, _LINK_GRAIN, M,
                )  # fmt: skip

            threads = min(self._n_threads, -(-targets // _LINK_GRAIN))
            _parallel(reverse, threads, 1, threads)
            kernels.build_publish(g.levels, g.deleted, g.state, chunk)
            if fill > 0:
                skip[chunk] = 0
            if on_chunk is not None:
                on_chunk(pos)

    def delete(self, slots: Any) -> None:
        """Delete slots: they stop appearing in results (but are still walked through) and are
        reused by later ``add`` calls. Deleting a deleted slot does nothing."""
        arr = self._slots(slots)
        with self._write_lock:
            g = self._g
            hidden = self._hidden
            for slot in np.unique(arr).tolist():
                if slot in hidden:
                    hidden.discard(slot)
                    heapq.heappush(self._free, slot)
                    self._live -= 1
                elif not g.deleted[slot]:
                    g.deleted[slot] = 1
                    heapq.heappush(self._free, slot)
                    self._live -= 1

    def hide(self, slots: Any) -> None:
        """Stop returning live, linked ``slots`` at once, without waiting for the writer.

        Only the deleted flags are written (searches walk through hidden slots as through
        deleted ones), so a second thread may call this while the writer links other points;
        the caller guarantees that ``slots`` are linked and not being (re)linked. A later
        ``delete`` of the same slots frees them for reuse."""
        arr = self._slots(slots)
        with self._swap_lock:
            g = self._g
            for slot in np.unique(arr).tolist():
                if not g.deleted[slot] and slot not in self._hidden:
                    g.deleted[slot] = 1
                    self._hidden.add(slot)

    def replace(self, slot: Any, vector: Any, progress: Progress | None = None) -> None:
        """Give live ``slot`` a new vector and re-link it. Also accepts a 1-D array of slots with
        a 2-D array of vectors (one row per slot); ``progress(done, n)`` as in ``add``."""
        arr = self._slots(slot)
        v = _numeric(vector, "vector")
        if v.ndim == 1:
            v = v.reshape(1, -1)
        x = self._matrix(v, "vector")
        if x.shape[0] != arr.shape[0]:
            raise ValueError(f"got {arr.shape[0]} slots but {x.shape[0]} vectors")
        if np.unique(arr).shape[0] != arr.shape[0]:
            raise ValueError("slots to replace must be distinct")
        with self._write_lock:
            dead = self._g.deleted[arr] != 0
            if dead.any():
                raise ValueError(f"slot {int(arr[dead][0])} is deleted; add a new point instead")
            self._relink(arr.astype(np.int32), x, _offset(progress, 0, arr.shape[0]))
            self._repair(arr.shape[0])

    # -- reads ------------------------------------------------------------------------------

    def _visited(self, capacity: int) -> tuple[np.ndarray, np.ndarray]:
        tls = self._tls
        v = getattr(tls, "v", None)
        if v is None or v[0].shape[0] < capacity:
            v = (np.zeros(capacity, np.uint16), np.zeros(1, np.int64))
            tls.v = v
        return v

    def search(
        self,
        queries: Any,
        k: int,
        ef: int | None = None,
        allowed: Any = None,
        *,
        rescore: bool = True,
        oversampling: float | None = None,
        ignore_quantization: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of each query row: ``(slots int32[nq, k], scores float32[nq, k])``.

        ``ef`` (default ``self.ef``) is the search breadth; ``max(ef, k)`` is used.
        ``allowed`` is an optional boolean mask over slots (shorter masks mean "not allowed"
        beyond their end); it is applied inside the graph walk, and very selective masks are
        scanned exactly. Every row holds ``min(k, admissible live points)`` hits, best first,
        then ``-1`` padding.

        On an int8 index the walk runs on the codes with breadth ``max(ef, pool)``, where
        ``pool = ceil(k * oversampling)``; ``rescore`` (default) re-ranks the walk's best
        ``pool`` candidates by their float vectors, so scores are exact distances; without it
        the scores are the quantized estimates. When ``oversampling`` and the index default
        are ``None``, ``pool = 2 * k`` and every candidate of the walk is rescored (see
        ``_pool``). ``ignore_quantization`` walks the float vectors instead. All three are
        ignored on a float index.
        """
        g = self._g
        if (
            allowed is None
            and g.codes is not None
            and rescore is True
            and oversampling is None
            and not ignore_quantization
            and self._oversampling is None
            and type(queries) is np.ndarray
            and type(k) is int
            and k > 0
            and queries.shape == self._one_query
            and queries.dtype is _FLOAT32
        ):
            # the same lean path for one query on the codes, with the default pool (see _pool):
            # measured on the MiniLM fixture (10k, ef 24), 64-68 us per query through the
            # general path against 50 us in the kernel
            flags = queries.flags
            if flags.c_contiguous and flags.aligned and flags.writeable:
                if ef is None:
                    ef = self._ef
                elif type(ef) is not int or ef < 1:
                    ef = _positive_int(ef, "ef")
                pool = self._pool_k
                if pool[0] != k:
                    pool[0] = k
                    pool[1] = max(k, int(math.ceil(k * self._pool_floor)))
                v = getattr(self._tls, "v", None)
                if v is None or v[0].shape[0] < g.vectors.shape[0]:
                    v = self._visited(g.vectors.shape[0])
                out_slots = np.empty((1, k), np.int32)
                out_scores = np.empty((1, k), np.float32)
                if qkernels.search_batch_q(
                    self._code, g.vectors, g.codes, g.terms, g.consts, g.links0, g.upper,
                    g.upper_off, g.levels, g.deleted, g.state, queries, self._cosine, k,
                    ef if ef > pool[1] else pool[1], self._no_mask, kernels.ADMIT_ALL,
                    min(k, self._live - len(self._hidden)), False, 0, self._qlevels, v[0], v[1],
                    out_slots, out_scores,
                ):  # fmt: skip
                    self._bad_queries(queries)
                return out_slots, out_scores
        elif (
            allowed is None
            and g.codes is None
            and type(queries) is np.ndarray
            and type(k) is int
            and k > 0
            and queries.shape == self._one_query
            and queries.dtype is _FLOAT32
        ):
            # the lean path of one float32 query (per-call cost matters most at low ef): an
            # array the kernels take as it is goes straight to the kernel, which checks its
            # values and normalises it for cosine. (A separate one-query kernel with fewer
            # arguments saved no measurable time and cost ~2 s more of cold compile.)
            flags = queries.flags
            if flags.c_contiguous and flags.aligned and flags.writeable:
                if ef is None:
                    ef = self._ef
                elif type(ef) is not int or ef < 1:
                    ef = _positive_int(ef, "ef")
                v = getattr(self._tls, "v", None)
                if v is None or v[0].shape[0] < g.vectors.shape[0]:
                    v = self._visited(g.vectors.shape[0])
                out_slots = np.empty((1, k), np.int32)
                out_scores = np.empty((1, k), np.float32)
                if kernels.search_batch(
                    self._code, g.vectors, g.links0, g.upper, g.upper_off, g.levels, g.deleted,
                    g.state, queries, self._cosine, k, ef, self._no_mask, kernels.ADMIT_ALL,
                    min(k, self._live - len(self._hidden)), False, v[0], v[1], out_slots,
                    out_scores,
                ):  # fmt: skip
                    self._bad_queries(queries)
                return out_slots, out_scores
        if type(k) is not int:
            if not isinstance(k, np.integer):
                raise ValueError(f"k must be an integer, got {type(k).__name__}")
            k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if ef is None:
            ef = self._ef
        elif type(ef) is not int or ef < 1:
            ef = _positive_int(ef, "ef")
        q = queries
        if type(q) is np.ndarray:
            flags = q.flags
            fast = (
                q.dtype is _FLOAT32
                and q.ndim == 2
                and q.shape[1] == self._dim
                and flags.c_contiguous
                and flags.aligned
                and flags.writeable
            )
        else:
            fast = False
        if not fast:
            q = self._matrix(q, "queries", check_values=False)
            if not _kernel_ready(q.flags):
                q = q.copy()
        g = self._g
        nq = q.shape[0]
        out_slots = np.empty((nq, k), np.int32)
        out_scores = np.empty((nq, k), np.float32)
        if allowed is None:
            mask = self._no_mask
            mode = kernels.ADMIT_ALL
            need = min(k, len(self))
            exact = False
        else:
            mask = self._mask(allowed, g)
            mode = kernels.ADMIT_MASK
            n_used = int(g.state[2])
            count = int(np.count_nonzero(mask[:n_used] > g.deleted[:n_used]))
            need = min(k, count)
            exact = count * count <= _EXACT_FACTOR * max(ef, k) * max(len(self), 1)
        quant = g.codes is not None and not ignore_quantization
        if quant:
            n_rescore, ef = self._pool(k, ef, rescore, oversampling)
            if nq < 2 * _SEARCH_GRAIN or self._n_threads == 1:
                if nq:
                    v = getattr(self._tls, "v", None)
                    if v is None or v[0].shape[0] < g.vectors.shape[0]:
                        v = self._visited(g.vectors.shape[0])
                    if qkernels.search_batch_q(
                        self._code, g.vectors, g.codes, g.terms, g.consts, g.links0, g.upper,
                        g.upper_off, g.levels, g.deleted, g.state, q, self._cosine, k, ef, mask,
                        mode, need, exact, n_rescore, self._qlevels, v[0], v[1], out_slots, out_scores,
                    ):  # fmt: skip
                        self._bad_queries(q)
                return out_slots, out_scores
        else:
            n_rescore = -1
        if nq < 2 * _SEARCH_GRAIN or self._n_threads == 1:
            if nq:
                v = getattr(self._tls, "v", None)
                if v is None or v[0].shape[0] < g.vectors.shape[0]:
                    v = self._visited(g.vectors.shape[0])
                if kernels.search_batch(
                    self._code, g.vectors, g.links0, g.upper, g.upper_off, g.levels, g.deleted,
                    g.state, q, self._cosine, k, ef, mask, mode, need, exact, v[0], v[1],
                    out_slots, out_scores,
                ):  # fmt: skip
                    self._bad_queries(q)
            return out_slots, out_scores
        if kernels.query_status(q, self._cosine):
            self._bad_queries(q)

        def rows(lo: int, hi: int) -> None:
            self._search_rows(
                g, q[lo:hi], k, ef, mask, mode, need, exact, out_slots[lo:hi], out_scores[lo:hi],
                quant, n_rescore,
            )  # fmt: skip

        # batch searches running at the same time share the cores instead of each taking all
        with _batch_lock:
            _batch_calls[0] += 1
            threads = max(1, self._n_threads - _batch_calls[0] + 1)
        try:
            _parallel(rows, nq, _SEARCH_GRAIN, threads)
        finally:
            with _batch_lock:
                _batch_calls[0] -= 1
        return out_slots, out_scores

    def _bad_queries(self, q: np.ndarray) -> None:
        """Raise the ValueError that explains why the kernel refused ``q``."""
        self._matrix(q, "queries")
        raise ValueError("queries contain NaN, inf or (for cosine) a zero vector")

    def _pool(self, k: int, ef: int, rescore: bool, oversampling: float | None) -> tuple[int, int]:
        """The int8 walk's ``(n_rescore, ef)`` for the kernel (``n_rescore``: -1 no rescoring,
        0 every candidate of the walk, else a count).

        The rule (Qdrant's ``oversampling``): the walk on the codes keeps a pool of
        ``ceil(k * oversampling)`` candidates at least, so its breadth is
        ``max(ef, pool)``; with ``rescore`` the pool's best ``pool`` by quantized distance are
        rescored with the float vectors. Without an oversampling (the default) every candidate
        of the walk is rescored and the pool is ``ceil(k * _POOL_FLOOR)``: at an ef near ``k``
        the codes' error would otherwise cost recall against the float walk of the same ef."""
        over = self._oversampling if oversampling is None else _oversampling(oversampling)
        pool = max(k, int(math.ceil(k * (self._pool_floor if over is None else over))))
        ef = max(ef, pool)
        if not rescore:
            return -1, ef
        return (0 if over is None else pool), ef

    def _search_rows(
        self, g, q, k, ef, mask, mode, need, exact, out_slots, out_scores, quant=False, n_rescore=-1
    ) -> int:
        v = getattr(self._tls, "v", None)
        if v is None or v[0].shape[0] < g.vectors.shape[0]:
            v = self._visited(g.vectors.shape[0])
        if quant:
            return qkernels.search_batch_q(
                self._code, g.vectors, g.codes, g.terms, g.consts, g.links0, g.upper, g.upper_off,
                g.levels, g.deleted, g.state, q, self._cosine, k, ef, mask, mode, need, exact,
                n_rescore, self._qlevels, v[0], v[1], out_slots, out_scores,
            )  # fmt: skip
        return kernels.search_batch(
            self._code, g.vectors, g.links0, g.upper, g.upper_off, g.levels, g.deleted, g.state,
            q, self._cosine, k, ef, mask, mode, need, exact, v[0], v[1], out_slots, out_scores,
        )  # fmt: skip

    def _mask(self, allowed: Any, g: _Graph) -> np.ndarray:
        mask = np.asarray(allowed)
        if mask.ndim != 1:
            raise ValueError(f"allowed must be a 1-D mask over slots, got shape {mask.shape}")
        if mask.dtype != np.bool_:
            if mask.dtype.kind not in "iu":
                raise ValueError(f"allowed must be a boolean mask, got dtype {mask.dtype}")
            mask = mask != 0
        cap = g.capacity
        if mask.shape[0] > cap:
            if mask[cap:].any():
                raise ValueError(
                    f"allowed marks slot {cap + int(np.argmax(mask[cap:]))} but the index "
                    f"has capacity {cap}"
                )
            mask = mask[:cap]
        if mask.shape[0] < cap:
            full = np.zeros(cap, np.bool_)
            full[: mask.shape[0]] = mask
            mask = full
        mask = np.ascontiguousarray(mask)
        if not _kernel_ready(mask.flags):
            mask = mask.copy()
        return mask.view(np.uint8)

    def is_deleted(self, slot: int) -> bool:
        """True when ``slot`` was deleted (or is not linked yet)."""
        arr = self._slots(slot)
        return bool(self._g.deleted[int(arr[0])])

    def live_mask(self) -> np.ndarray:
        """bool[capacity]: True for live slots."""
        g = self._g
        live = g.deleted == 0
        live[int(g.state[2]) :] = False
        return live

    def get_vectors(self, slots: Any) -> np.ndarray:
        """Stored vectors of ``slots`` (float32 [n, dim]; unit length for cosine)."""
        arr = self._slots(slots)
        return self._g.vectors[arr].copy()

    # -- checkpoint -------------------------------------------------------------------------

    def to_arrays(self, views: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """The whole index as named numpy arrays (copies), for ``HNSW.from_arrays``.

        ``views`` names per-point arrays (``vectors``, ``codes``, ``terms``) returned as
        views of the live arrays instead of copies: a slot's row changes only when the
        slot is (re)linked, so a caller that keeps writers out while it reads them (a
        checkpoint copying only the rows it knows changed) needs no full copy."""

        def copy(name: str, arr: np.ndarray) -> np.ndarray:
            return arr if name in views else arr.copy()

        with self._write_lock, self._swap_lock:
            g = self._g
            n = int(g.state[2])
            rows = int(g.state[3])
            params = np.array(
                [
                    _FORMAT_VERSION, self._dim, _METRIC_CODES[self._metric], self._M, self._efc,
                    self._ef, self._seed, self._draws, g.state[0], g.state[1], n, rows,
                    g.capacity, self._live - len(self._hidden),
                ],
                dtype=np.int64,
            )  # fmt: skip
            if self._quantizer is not None or self._disk is not None:
                # optional tail (older checkpoints end at 14): quantization kind, floats on disk
                tail = [QUANTIZATION_KINDS.index(self._quantization) + 1 if self._quantizer else 0]
                params = np.concatenate([params, np.array(tail + [int(self.on_disk)], np.int64)])
            out = {
                "params": params,
                "vectors": copy("vectors", g.vectors[:n]),
                "links0": g.links0[:n].copy(),
                "upper": g.upper[:rows].copy(),
                "upper_off": g.upper_off[:n].copy(),
                "levels": g.levels[:n].copy(),
                "deleted": g.deleted[:n].copy(),
                "free": np.array(sorted([*self._free, *self._hidden]), np.int32),
            }
            if g.codes is not None:
                out["codes"] = copy("codes", g.codes[:n])
                out["terms"] = copy("terms", g.terms[:n])
                out["quantizer"] = self._quantizer.to_array()
            return out

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], on_disk: bool | str | None = None, adopt: bool = False
    ) -> HNSW:
        """Rebuild an index saved by ``to_arrays``; it answers searches identically.
        ``on_disk`` (default: as saved) places the float vectors in a memory-mapped file.
        ``adopt``: the index may keep the given arrays as its own instead of copying them
        (the caller hands them over: arrays just read from a checkpoint)."""
        try:
            params = np.asarray(arrays["params"], np.int64)
            version, dim, metric, M, efc, ef, seed, draws, entry, max_level, n, rows, cap, live = (
                int(v) for v in params[:14]
            )
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"not an index checkpoint: {e}") from e
        if version != _FORMAT_VERSION:
            raise ValueError(f"unsupported index checkpoint version {version}")
        kind = int(params[14]) if params.shape[0] > 14 else 0
        saved_disk = bool(params[15]) if params.shape[0] > 15 else False
        if not 0 <= kind <= len(QUANTIZATION_KINDS):
            raise ValueError(f"unknown quantization code {kind} in index checkpoint")
        quantization = QUANTIZATION_KINDS[kind - 1] if kind else None
        h = cls(
            dim, _METRIC_NAMES[metric], M=M, ef_construction=efc, capacity=cap, seed=seed, ef=ef,
            quantization=quantization, on_disk=saved_disk if on_disk is None else on_disk,
        )  # fmt: skip
        bitgen = np.random.PCG64(seed)
        bitgen.advance(draws)
        h._rng = np.random.Generator(bitgen)
        h._draws = draws
        if adopt and quantization is None and h._disk is None and _adoptable(arrays, n, dim, M):
            # the arrays become the graph (capacity n: the next add grows it): an open
            # that read them from a checkpoint copies nothing more
            upper = arrays["upper"]
            if rows < 16:
                upper = np.zeros((16, M + 1), np.int32)
                upper[:rows] = arrays["upper"]
            state = np.array((entry, max_level, n, rows), np.int64)
            h._g = _Graph(
                arrays["vectors"], arrays["links0"], upper, arrays["upper_off"],
                arrays["levels"], arrays["deleted"], state,
            )  # fmt: skip
            h._free = [int(s) for s in np.asarray(arrays["free"]).tolist()]
            heapq.heapify(h._free)
            h._live = live
            return h
        g = _Graph.empty(
            cap, dim, M, _upper_rows(cap, M, rows, n), quantization is not None, h._disk
        )
        if quantization is not None:
            try:
                h._quantizer = ScalarQuantizer.from_array(dim, h._metric, arrays["quantizer"])
                g.codes[:n] = arrays["codes"]
                g.terms[:n] = arrays["terms"]
            except KeyError as e:
                raise ValueError(f"quantized index checkpoint lacks {e}") from e
            g.consts[:] = h._quantizer.constants()
        g.vectors[:n] = arrays["vectors"]
        g.links0[:n] = arrays["links0"]
        g.upper[:rows] = arrays["upper"]
        g.upper_off[:n] = arrays["upper_off"]
        g.levels[:n] = arrays["levels"]
        g.deleted[:n] = arrays["deleted"]
        g.state[:] = (entry, max_level, n, rows)
        h._g = g
        h._free = [int(s) for s in np.asarray(arrays["free"]).tolist()]
        heapq.heapify(h._free)
        h._live = live
        return h

    # -- warm-up ----------------------------------------------------------------------------

    def warm(self, writes: bool = True, background: bool = True) -> None:
        """Load (from Numba's cache, or compile) the kernels this index needs before its first
        query: the search kernels of its kind (float32 or int8) now, and when ``writes`` the
        kernels of ``add`` (candidate search, linking, reachability repair), in a daemon thread
        when ``background`` (the default: a first query does not wait for kernels only writes
        use; a write that comes first waits for that thread), else now.

        Only what the index uses is loaded: an int8 index loads the int8 walk, not the float32
        one (``ignore_quantization`` compiles that on first use), and the kernels of
        ``replace`` and of re-adding into deleted slots load on their first use. The kernels
        are typed on array dtypes only, not on ``dim`` or the metric, so each group loads once
        per process: later calls return at once."""
        search = "qsearch" if self._quantization is not None else "search"
        group = self._build_group()
        if writes:
            # nothing cached (a cold start) and VDB_COMPILE_CHILD=1: a child process compiles
            # the build group into Numba's cache while this one compiles the search group
            _compile_in_child([group], unless_cached=[search, group])
        _warm_group(search)
        if not writes:
            return
        if background and not _warm_done[group]:
            threading.Thread(
                target=_warm_group, args=(group,), name="vdb-warm", daemon=True
            ).start()
        else:
            _warm_group(group)

    def _build_group(self) -> str:
        return "qbuild" if self._quantization is not None else "build"


def _warm_search(quantization: str | None) -> None:
    """Run the search kernels (one query, a masked search, a batch's status check) on an
    empty index: nothing is walked, but the whole kernel is loaded."""
    h = HNSW(8, "cosine", capacity=64, seed=0, quantization=quantization)
    q = np.full((1, 8), 0.5, np.float32)
    h.search(q, 3)
    h.search(q, 3, allowed=np.ones(8, bool))
    kernels.query_status(np.repeat(q, 2 * _SEARCH_GRAIN, axis=0), True)


def _warm_build(quantization: str | None) -> None:
    """Run the kernels of ``add`` (and the reachability repair) on a tiny throw-away index.

    The kernels no search uses come first (linking, reachability: nothing to do on an empty
    index, but each is loaded): a child process compiling this group while this process
    compiles the search group (``_compile_in_child``) then finds the callees both groups share
    (the layer search and greedy walk) in the cache by the time the candidate search needs
    them, instead of compiling them a second time."""
    rng = np.random.default_rng(0)
    h = HNSW(
        8, "cosine", M=4, ef_construction=16, capacity=64, seed=0, n_threads=1,
        quantization=quantization,
    )  # fmt: skip
    g = h._g
    none = np.empty(0, np.int32)
    sel, sel_n = np.zeros((0, 1, h._M), np.int32), np.zeros((0, 1), np.int32)
    keys, starts = np.empty(0, np.int64), np.zeros(1, np.int64)
    targets = kernels.build_forward(
        g.links0, g.upper, g.upper_off, g.levels, none, sel, sel_n, keys, starts
    )
    kernels.build_reverse(
        h._code, g.vectors, g.links0, g.upper, g.upper_off, none, keys, starts, targets,
        np.zeros(1, np.int64), _LINK_GRAIN, h._M,
    )  # fmt: skip
    kernels.build_publish(g.levels, g.deleted, g.state, none)
    seen = np.ones(64, np.uint8)  # nothing to attach (no hosts): loads the kernel only
    stack = np.empty(64, np.int32)
    kernels.reach(g.links0, g.deleted, g.state, seen, stack)
    kernels.attach(h._code, g.vectors, g.links0, g.upper_off, 0, np.full(1, -1, np.int32), seen,
                   stack)  # fmt: skip
    h.add(rng.standard_normal((40, 8)).astype(np.float32) + 0.1)


def _warm_relink() -> None:
    """Run the kernels of ``replace`` and of re-adding into deleted slots."""
    rng = np.random.default_rng(0)
    h = HNSW(8, "cosine", M=4, ef_construction=16, capacity=64, seed=0, n_threads=1)
    h.add(rng.standard_normal((40, 8)).astype(np.float32) + 0.1)
    h.delete([1, 2])
    h.add(rng.standard_normal((1, 8)).astype(np.float32) + 0.1)
    h.replace(3, rng.standard_normal(8).astype(np.float32) + 0.1)


# Kernel groups, each loaded (or compiled) as a whole by one throw-away run.
_WARM_GROUPS: dict[str, Callable[[], None]] = {
    "search": lambda: _warm_search(None),
    "qsearch": lambda: _warm_search("int8"),
    "build": lambda: _warm_build(None),
    "qbuild": lambda: _warm_build("int8"),
    "relink": _warm_relink,
}
_warm_locks = {name: threading.RLock() for name in _WARM_GROUPS}
_warm_done = dict.fromkeys(_WARM_GROUPS, False)
_warm_active: set[str] = set()  # groups being loaded (by the thread holding their lock)


def _warm_group(name: str) -> None:
    """Load kernel group ``name`` once per process (a second caller waits for the first; the
    throw-away run's own writes, in the loading thread, pass through). When a child process
    is compiling the group (``_compile_in_child``), wait for it first, then load from the
    cache it wrote (or compile here if it failed)."""
    if _warm_done[name]:
        return
    with _warm_locks[name]:
        if _warm_done[name] or name in _warm_active:
            return
        _warm_active.add(name)
        try:
            _wait_child(name)
            _WARM_GROUPS[name]()
        except Exception:  # warming is an optimisation only; the first use compiles instead
            log.warning("warming the index kernels (%s) failed", name, exc_info=True)
        finally:
            _warm_active.discard(name)
        _warm_done[name] = True


def warm_all() -> None:
    """Load every kernel group (tests and tools that fill Numba's cache for child processes).
    On a cold cache a child process compiles part of the groups meanwhile (``_CHILD_SHARE``)."""
    _compile_in_child(list(_CHILD_SHARE), unless_cached=list(_WARM_GROUPS))
    for name in _WARM_GROUPS:
        _warm_group(name)


# Parallel cold compile (opt-in, see _CHILD_ENV)
# ----------------------------------------------
# Numba compiles one function at a time per process (a global compiler lock), and a cold start
# compiles every kernel group of an index (about 20 s of CPU for float32 or int8, search and
# build). With nothing in the cache, ``warm()`` can start one child process that compiles the
# build group into Numba's on-disk cache while this process compiles the search group; the
# first user of the build group here waits for the child, then loads the group from the cache
# (~0.1 s). On two cores the wall time is about the larger group instead of the sum.
#
# Cache races: Numba writes each cache index and data file to a temporary name and renames it
# (atomic), an entry is keyed by signature, source bytecode and CPU, and each kernel has one
# signature (the kernels pass int64 values, see kernels.py; tests/index/test_kernels.py checks
# it), so a function compiled by both processes (a callee shared by the groups, such as
# kernels.search_layer) is written twice with the same key and the same code: the last rename
# wins and either copy is right. Two different signatures of one function written at once could
# take the same data file name, which is why one signature per kernel matters here.
# Opt-in (VDB_COMPILE_CHILD=1): measured on the shared 2-core box (load 2.5-9, bench/ann.py
# --compile-child on,off, alternating), python -m vdb serve on a cold cache was ready later
# with the child in 5 of 7 pairs (e.g. 17.3 and 17.6 s against 8.1 and 9.5 s at load 2.5-4:
# the child takes the second core's share from this process's search compile) and linked its
# first write earlier in 3 of 7; it pays on a machine whose second core is idle.
_CHILD_ENV = "VDB_COMPILE_CHILD"  # "1": start a child on a cold cache ("0" in the child)
# Kernels whose cache entries show whether a group is compiled (the ones Python calls; their
# entries hold the code of every callee)
_GROUP_ROOTS: dict[str, tuple[str, ...]] = {
    "search": ("kernels.search_batch",),
    "qsearch": ("qkernels.search_batch_q",),
    "build": ("kernels.build_select", "kernels.build_reverse"),
    "qbuild": ("qkernels.build_select_q", "kernels.build_reverse"),
    "relink": ("kernels.hand_over", "kernels.unlink"),
}
# What warm_all leaves to the child on a cold cache (about half of the compile time)
_CHILD_SHARE = ("build", "qbuild")
_CHILD_SCRIPT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from vdb.index import hnsw; "
    "[hnsw._warm_group(n) for n in sys.argv[2:]]"
)
_children: dict[str, Any] = {}  # group -> the child process compiling it (until waited for)
_children_started = [0]  # child processes started (tests check a cached start starts none)
_children_lock = threading.Lock()


def _cached(name: str) -> bool:
    """Whether Numba's cache holds an entry of every root kernel of group ``name`` (fresh for
    the source as it is now). Unknown (a Numba without these internals, caching off): True,
    so nothing is started and this process compiles as before."""
    for path in _GROUP_ROOTS[name]:
        module, attr = path.split(".")
        dispatcher = getattr(qkernels if module == "qkernels" else kernels, attr)
        try:
            if not dispatcher._cache._cache_file._load_index():
                return False
        except Exception:
            return True
    return True


def _compile_in_child(names: list[str], unless_cached: list[str]) -> None:
    """With ``VDB_COMPILE_CHILD=1``, start one child process compiling groups ``names`` into
    Numba's cache, unless any group of ``unless_cached`` is cached already (then this is not a
    cold start, and loading here is cheaper than starting a process), a group is loaded or being
    compiled, or there is one core."""
    if os.environ.get(_CHILD_ENV) != "1" or (os.cpu_count() or 1) < 2:
        return
    with _children_lock:
        if any(_warm_done[n] or n in _warm_active or n in _children for n in names):
            return
        if any(_cached(n) for n in unless_cached):
            return
        import subprocess
        import sys

        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_SCRIPT, root, *names],
                env={**os.environ, _CHILD_ENV: "0"},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            log.warning("could not start a process to compile the index kernels", exc_info=True)
            return
        _children_started[0] += 1
        for n in names:
            _children[n] = proc


def _wait_child(name: str) -> None:
    """Wait for the child process compiling group ``name``, if there is one."""
    with _children_lock:
        proc = _children.get(name)
    if proc is None:
        return
    code = proc.wait()
    with _children_lock:
        _children.pop(name, None)
    if code != 0:
        log.warning("compiling the index kernels (%s) in a child process failed (%s)", name, code)


def _kernel_ready(flags: Any) -> bool:
    """C-contiguous, aligned and writeable: the one array type the kernels are compiled for
    (a read-only or unaligned array would make Numba compile another specialization)."""
    return flags.c_contiguous and flags.aligned and flags.writeable


def _oversampling(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"oversampling must be a number >= 1 or None, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 1.0):
        raise ValueError(f"oversampling must be a number >= 1 or None, got {value}")
    return value


def _adoptable(arrays: dict[str, np.ndarray], n: int, dim: int, M: int) -> bool:  # noqa: N803
    """Whether ``from_arrays`` can use the saved arrays as they are: writable, C-ordered,
    of the graph's dtypes and shapes, not shared with each other (read from a checkpoint)."""
    want = {
        "vectors": (np.float32, (n, dim)),
        "links0": (np.int32, (n, 2 * M + 1)),
        "upper_off": (np.int32, (n,)),
        "levels": (np.int8, (n,)),
        "deleted": (np.uint8, (n,)),
    }
    if n == 0:
        return False
    for name, (dtype, shape) in want.items():
        arr = arrays.get(name)
        if (
            not isinstance(arr, np.ndarray)
            or arr.dtype != dtype
            or arr.shape != shape
            or not arr.flags.c_contiguous
            or not arr.flags.writeable
            or not arr.flags.owndata
        ):
            return False
    upper = arrays.get("upper")
    return isinstance(upper, np.ndarray) and upper.dtype == np.int32 and upper.ndim == 2


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _numeric(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name} cannot be read as an array: {e}") from e
    if arr.dtype.kind in "fiu":
        return arr
    if arr.dtype.kind == "b":
        return arr.astype(np.float32)
    if arr.dtype.kind == "O":
        try:
            return arr.astype(np.float64)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{name} must hold numbers: {e}") from e
    raise ValueError(f"{name} must hold numbers, got dtype {arr.dtype}")
