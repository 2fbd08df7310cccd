"""A collection's vectors in two segments: a fresh one (flat rows) and the graph.

A write is acknowledged once it is durable and its points are appended to
the **fresh segment**: flat arrays (``vectors``, ``slots``) that a search
scans with a nogil kernel (``vdb.index.flat``; exactly while they are few,
on int8 codes by coarse lists once they are many: see "Searching the fresh
rows" below). A background
**indexer** (``Indexer``, one thread per database) moves fresh points into the
**indexed segment**, the HNSW graph, in large batches with the parallel bulk
build, and deletes from the graph the points that were removed or replaced.
A search asks both and merges the top-k by score, without duplicates.

Slots: the collection numbers its points with dense int32 slots (the id
map, the payload index and filter masks are indexed by them); the graph
stores a point at the same slot (``HNSW.add(vectors, slots=...)``). Every
upsert takes a new slot (smallest free first) and every remove or replace
gives the old slot up, so a slot's vector never changes while it is
occupied. A slot is in one of these states:

* free: in ``_free`` (or at or beyond ``_next``), allocatable;
* fresh: a row of the fresh buffer (``buffer.pos[slot]``);
* indexed: linked and live in the graph;
* doomed: removed by the writer but still in the graph (hidden at once when
  it was fully indexed: ``HNSW.hide``), deleted from the graph by the indexer
  at the start of its next cycle, and only then free again.

Publication (one writer, one indexer, one upkeep thread, any number of readers):

* Rows are only appended to a ``_Buffer``; its row count ``n`` is published
  after the rows are written: the float row, the slot, and (once the buffer
  has them) the row's int8 codes and term in ``buffer.coding`` and its list in
  ``buffer.part``. A reader takes ``self.view`` once (a buffer and the first
  row that is still fresh), reads ``n`` once, and only then ``coding``,
  ``part`` and ``pack`` (once each).
* ``coding`` and ``part`` are set by the upkeep thread and replaced whole,
  never changed in place (except rows at or above ``n``, which the writer fills):
  the new object's rows are coded / assigned outside the apply lock, the rows
  appended meanwhile under it, and it is published under it, so every row
  below ``n`` is in the object a reader reads after ``n``, and the writer codes
  and assigns new rows into that object from then on. A reader holding an older
  ``part`` sees the rows appended after the swap unassigned (``-1``: scanned by
  every query), never assigned to the wrong centroids. ``pack`` is immutable
  and names the ``coding`` and ``part`` it was built from; a reader uses it only
  when those are the ones it read, and only for its rows in ``[start, n)``.
* Growth copies the fresh rows (floats, slots, codes, lists) into a new buffer
  and swaps ``self.view``; readers that hold the old view keep a consistent,
  older picture. An upkeep that finds its buffer replaced when it publishes
  starts again on the new one.
* The indexer copies a prefix of the fresh rows, links them into the graph
  (holding ``index_lock``), and only then publishes a view that starts after
  them. A search takes the view before it searches the graph, so a point
  being moved is found in the fresh rows it holds, in the graph, or in both
  (merged by slot): never in neither. After each link call of a cycle the
  indexer publishes ``_linked`` (its buffer and the row below which every row
  of the cycle is linked); a search that reads it, before the graph, with its
  view's buffer scans the fresh rows from that row on only (those below are in
  the graph it is about to search). It is cleared when the view moves past them. While moved points that were removed
  meanwhile may still be live in the graph (``has_doomed_linking``), graph
  searches are given the live mask.
* Removal of a fresh row writes ``-1`` into its slot cell; the kernel also
  checks the id map's live flags, and the collection's seqlock (generation
  marks on changed slots) makes a search that raced a change run again.

Searching the fresh rows (``flat.scan`` / ``flat.scan_codes``):

* Fewer than ``EXACT_BELOW`` (2,048) fresh rows, or no codes yet, or the
  query's ``ignore_quantization``: the exact float32 scan.
* Codes: once the fresh rows reach ``EXACT_BELOW``, the upkeep thread codes
  them in int8 (``_Coding``) with a ``ScalarQuantizer``: a copy of the int8
  graph's when the collection is int8-quantized and its graph's quantizer is
  fitted, else one fitted on the live fresh rows then (at most ``FIT_SAMPLE``
  of them). From then on the writer codes each appended batch (one vectorised
  numpy pass); values outside the learned range are clipped to +-127. Refit
  rule: once more than ``CLIP_REFIT`` (5%) of the values coded since the fit
  were clipped (counted over at least ``CLIP_MIN_VALUES``): the graph's current
  quantizer is copied if it is fitted and differs from the one in use, else
  one is fitted on the fresh rows; every fresh row is coded into a new
  ``_Coding`` (published whole). Not ``ScalarQuantizer``'s growth rule: a fit
  on the first 2,048 rows ranks as well as one on more (the candidates are
  rescored), and refitting in the middle of a burst measured 2 s of the
  upkeep thread's time before the lists could be trained.
* Lists: once the fresh rows reach ``LISTS_FROM`` (4,096), the upkeep thread
  trains ``FIRST_LISTS`` (256) k-means centroids on up to ``TRAIN_SAMPLE`` live rows
  (``vdb.index.coarse``, ``KMEANS_ITERATIONS``) and assigns every row to its
  nearest one (``_Lists``). Rows appended later are assigned by the upkeep
  too, in place, once ``ASSIGN_BATCH`` (2,048) of them are waiting or before a
  pack is built (one matrix product against the centroids, 4 bytes per row);
  until then their list is ``-1`` and every query scans them. Not the writer:
  its acknowledgements wait for the work it does, and measured right after a
  debian-minilm burst the search rate rose from 0.27-0.33x to 0.41-0.43x of
  the indexed collection's once the writer stopped assigning. Retrain rule: when the
  fresh rows grow to ``RETRAIN_GROWTH`` times the rows the centroids were
  trained on, while those were fewer than ``TRAIN_SAMPLE``, and when a first
  partition holds ``LARGE_LISTS_FROM`` (16,384) rows: the second training makes
  ``FRESH_LISTS`` (1,024) lists, of which a query probes ``FRESH_PROBES`` (147;
  the constants' comment has the figures). So at most twice on a burst into
  an empty segment, the first time small whatever the rows by then. The upkeep assigns the rows there are
  when it publishes lists; a reader that holds older lists sees the rows
  appended since unassigned (scanned by every query).
* Pack (``_Pack``, ``buffer.pack``): the rows' codes copied in list order (with
  their row numbers and one offset per list), so a query reads each probed
  list in one run instead of picking its rows out of the whole buffer (half
  the time on debian-minilm). Built by the upkeep from one coding and one
  partition, used only with those two, never changed; built again when the
  rows appended since reach ``max(PACK_TAIL, fresh rows / 8)`` (4,096; ~30 ms
  of the upkeep thread per 50k rows packed), or more than
  half of its rows were moved into the graph. Rows after the pack are read by
  row (their list checked per row).
* A search without a payload filter scores, on the codes, the rows of the
  ``probes`` lists whose centroids are nearest the query (64 of 256, 147 of 1,024) and every
  unassigned row; with a filter every admitted row (the filter may keep only
  rows of other lists). The best ``max(MIN_CANDIDATES, k * FRESH_OVERSAMPLING)``
  (or ``k * oversampling`` when the query asks for more) are rescored with the
  float rows, so the scores are exact and the same as the exact scan's; when
  at most that many rows are admitted, the result is the exact scan's. A
  stored point's own vector finds it first: its list is the one nearest to it.
  ``exact=True`` never comes here (the collection scans the float vectors).
  Measured on debian-minilm (see ``bench/segments.py`` ``burst``).
* Who: the ``Indexer``'s second thread (``_run_upkeep``), woken with the
  indexer after every append, also while indexing is paused (it moves no
  point); not the indexer thread itself, whose link calls take seconds on a
  loaded box (measured: a whole 50k burst was acknowledged while the first
  cycle linked its first 2,000 rows), and
  never the writer, which only codes its own batch.
* The codes, lists and pack are not checkpointed: ``restore`` appends the
  fresh float rows, and the upkeep codes and partitions them again (the same
  work as after a burst).
* Memory per row of the buffer's capacity: ``dim`` bytes of codes, 4 of term,
  4 of list, and ``dim + 8`` more in the pack (about half of the float rows'
  ``4 * dim`` in all), twice the codes while a refit is built.
* Centroids trained on earlier rows partition rows of a different
  distribution poorly: on a synthetic set whose later points came from other
  clusters recall fell to 0.88 (ip); the retrain rule follows growth only.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vdb.graphs import DEFAULT_SEAL_SIZE, Graphs, merge_top_k
from vdb.index import coarse, flat, quantizer
from vdb.index.hnsw import set_thread_nice
from vdb.index.quantizer import ScalarQuantizer

log = logging.getLogger(__name__)

DEFAULT_FRESH_LIMIT = 50_000
INDEX_BATCH = 16_384  # points moved into the graph per indexer cycle
# The indexer waits for this many points (or this long) before a cycle: linking a few points
# at a time costs far more per point (a reachability check, thread hand-offs) and fresh points
# are searchable anyway.
INDEX_MIN_BATCH = 1_024
INDEX_MAX_WAIT_S = 0.2
LINK_CHUNK = 2_048  # points per HNSW.add call (a checkpoint waits at most one of these)

# The approximate fresh scan (module docstring, "Searching the fresh rows").
EXACT_BELOW = 2_048  # fewer fresh rows than this: the exact float scan
LISTS_FROM = 4_096  # fresh rows from which the rows are partitioned into lists
# lists of the partition and the lists a query scans: a first partition of fewer rows is small
# and quick to train, so a burst is searched by list soon after it starts; once the centroids
# are trained again on a larger sample (from LARGE_LISTS_FROM fresh rows) there are four
# times the lists and a query probes a seventh of them. debian-minilm, 50k fresh rows,
# centroids trained on 8,192: 1,024 lists probed 147 hold 0.967 of the true top-10 in 9.2k
# rows per query, 256 probed 64 held 0.962 in 14.6k, and the single-query rate was 1.5x (the
# scan reads the codes from memory: fewer rows is faster); the larger partition costs 0.8 s
# of training and assigning 48k rows alone against 0.2 s, too long for the first one
FIRST_LISTS = 256
FIRST_PROBES = 64
FRESH_LISTS = 1_024
FRESH_PROBES = 147
FRESH_OVERSAMPLING = 4  # candidates rescored with the float rows: k * this (at least 40)
MIN_CANDIDATES = 40
# rows the centroids are trained on (at most). debian-minilm, 48k fresh rows, 256 lists, 64 probes:
# recall 0.963 / 0.967 / 0.961 trained on 16,384 / 8,192 / 4,096 rows; a training during a
# burst shares the cores and the GIL with the writer and the indexer (measured: 1 s for
# 16,384 rows, 0.15 s alone), so the smaller sample
TRAIN_SAMPLE = 8_192
RETRAIN_GROWTH = 4  # train again once the fresh rows are this many times those trained on
LARGE_LISTS_FROM = LISTS_FROM * RETRAIN_GROWTH  # fresh rows from which FRESH_LISTS are trained
ASSIGN_BATCH = 2_048  # unassigned fresh rows that make the upkeep assign them
PACK_TAIL = 4_096  # rows appended after the pack that make it worth building again (at least)
UPKEEP_BACKOFF_S = 1.0  # after an upkeep that left work due (all rows removed, a race)


class _Coding:
    """int8 codes of a buffer's rows under one quantizer. Replaced whole (a refit codes the
    rows into a new one), never re-coded in place: a reader's codes and constants agree."""

    __slots__ = ("quantizer", "consts", "codes", "terms", "borrowed")

    def __init__(self, quantizer: ScalarQuantizer, capacity: int, dim: int, borrowed: bool):
        self.quantizer = quantizer
        self.consts = quantizer.constants()
        self.codes = np.zeros((capacity, dim), np.int8)
        self.terms = np.zeros(capacity, np.float32)
        self.borrowed = borrowed  # a copy of the int8 graph's quantizer

    def encode(self, vectors: np.ndarray, lo: int, count: bool = True) -> None:
        """Code rows ``[lo, lo + len(vectors))`` (clipped values counted when ``count``)."""
        hi = lo + vectors.shape[0]
        self.quantizer.encode(vectors, self.codes[lo:hi], self.terms[lo:hi], count)

    def stale(self) -> bool:
        """The refit rule (module docstring): too many clipped values."""
        q = self.quantizer
        return (
            q.values_added >= quantizer.CLIP_MIN_VALUES
            and q.values_clipped > quantizer.CLIP_REFIT * q.values_added
        )

    def moved(self, capacity: int, lo: int, hi: int) -> _Coding:
        """A copy of rows ``[lo, hi)`` at rows ``[0, hi - lo)`` of a bigger buffer."""
        out = _Coding.__new__(_Coding)
        out.quantizer, out.consts, out.borrowed = self.quantizer, self.consts, self.borrowed
        out.codes = np.zeros((capacity, self.codes.shape[1]), np.int8)
        out.terms = np.zeros(capacity, np.float32)
        out.codes[: hi - lo] = self.codes[lo:hi]
        out.terms[: hi - lo] = self.terms[lo:hi]
        return out


class _Lists:
    """The coarse partition of a buffer's rows: centroids and each row's list (``-1``: not
    assigned, scanned by every query). Replaced whole when the centroids are trained again."""

    __slots__ = ("centroids", "lists", "trained_rows", "upto", "large")

    def __init__(
        self, centroids: np.ndarray, capacity: int, trained_rows: int, large: bool
    ) -> None:
        self.centroids = centroids
        self.large = large  # FRESH_LISTS (else FIRST_LISTS)
        self.lists = np.full(capacity, -1, np.int32)
        self.trained_rows = trained_rows  # fresh rows when the centroids were trained
        self.upto = 0  # rows below it are assigned (raised by the upkeep thread only)

    @property
    def probes(self) -> int:
        """Lists a query scans."""
        return min(FRESH_PROBES if self.large else FIRST_PROBES, self.centroids.shape[0])

    def stale(self, rows: int) -> bool:
        """The retrain rule (module docstring)."""
        if not self.large and rows >= LARGE_LISTS_FROM:
            return True
        return self.trained_rows < TRAIN_SAMPLE and rows >= RETRAIN_GROWTH * self.trained_rows

    def moved(self, capacity: int, lo: int, hi: int) -> _Lists:
        upto = self.upto  # read before the copy: rows it covers are assigned in the copy
        out = _Lists(self.centroids, capacity, self.trained_rows, self.large)
        out.lists[: hi - lo] = self.lists[lo:hi]
        out.upto = max(0, min(upto, hi) - lo)
        return out

    def unassigned(self, n: int) -> int:
        """Rows below ``n`` the upkeep has not assigned yet."""
        return max(0, n - self.upto)


class _Pack:
    """Rows ``[lo, hi)`` of a buffer grouped by list: their row numbers, codes and terms in
    list order (``offsets[l]:offsets[l + 1]`` is list ``l``), so a query reads each probed
    list's codes in one run. Built from one ``coding`` and ``part`` and used only with them;
    never changed once published."""

    __slots__ = ("coding", "part", "lo", "hi", "rows", "codes", "terms", "offsets")

    def __init__(self, coding: _Coding, part: _Lists, lo: int, hi: int) -> None:
        lists = part.lists[lo:hi]
        order = np.argsort(lists, kind="stable")
        self.coding, self.part, self.lo, self.hi = coding, part, lo, hi
        self.rows = (order + lo).astype(np.int32)
        self.codes = coding.codes[self.rows]
        self.terms = coding.terms[self.rows]
        self.offsets = np.zeros(part.centroids.shape[0] + 1, np.int64)
        np.cumsum(np.bincount(lists, minlength=part.centroids.shape[0]), out=self.offsets[1:])

    def due(self, coding: _Coding, part: _Lists, start: int, n: int) -> bool:
        """Build again: other codes or lists, or many rows appended since, or most of its rows
        moved into the graph."""
        if self.coding is not coding or self.part is not part:
            return True
        if n - max(self.hi, start) >= max(PACK_TAIL, (n - start) // 8):
            return True
        return start - self.lo > (self.hi - self.lo) // 2


class _Buffer:
    """Append-only flat rows of the fresh segment (one generation of its arrays)."""

    __slots__ = (
        "vectors", "slots", "stamps", "pos", "n", "coding", "part", "pack", "successor"
    )  # fmt: skip

    def __init__(self, capacity: int, dim: int) -> None:
        self.vectors = np.zeros((capacity, dim), np.float32)
        self.slots = np.full(capacity, -1, np.int32)
        self.stamps = np.zeros(capacity, np.float64)  # when each row was appended
        self.pos: dict[int, int] = {}  # slot -> row, for the rows that are still fresh
        self.n = 0
        self.coding: _Coding | None = None  # every row below n is coded once it is set
        self.part: _Lists | None = None  # rows appended after it is set are assigned
        self.pack: _Pack | None = None  # rows grouped by list (built from coding and part)
        # (buffer, shift): the buffer that replaced this one; row r is row r - shift there
        self.successor: tuple[_Buffer, int] | None = None

    @property
    def capacity(self) -> int:
        return self.slots.shape[0]


class _View:
    __slots__ = ("buffer", "start")

    def __init__(self, buffer: _Buffer, start: int) -> None:
        self.buffer = buffer
        self.start = start


class Segments:
    """The fresh segment and the graph of one collection, and the slots they share."""

    def __init__(
        self,
        index: Any,
        fresh_limit: int = DEFAULT_FRESH_LIMIT,
        owner: Segments | None = None,
        *,
        make: Callable[[int], Any] | None = None,
        seal_size: int = DEFAULT_SEAL_SIZE,
        partitioned: bool = False,
    ) -> None:
        if not isinstance(index, Graphs):
            index = Graphs(index, make, seal_size, partitioned)
        elif make is not None:
            index.make = make
        self.index: Graphs = index  # the indexed segments (vdb.graphs)
        # the source partition of every slot (the id map's array), when graphs are per partition
        self.partition_of: Callable[[], np.ndarray] | None = None
        # Several vectors per point (named vectors): each name has its own Segments over the
        # SAME slots. The first (the owner) allocates them; the others (owner=...) hold a slot
        # while they store a vector in it, and the owner frees a slot only once every holder
        # gave it up, so a slot is never reused while any graph still has its old vector.
        self.owner = owner
        self._holds: dict[int, int] = {}  # owner: slot -> other Segments still holding it
        self._pending_free: set[int] = set()  # owner: given up here, still held elsewhere
        self.partial = False  # points may lack this vector (named vectors)
        self.dim = int(index.dim)
        self.metric = str(index.metric)
        self.metric_code = flat.L2 if index.metric == "l2" else flat.IP
        self._qlevels = flat.query_levels(self.dim)
        self._no_lists = np.zeros(0, np.int32)
        self._no_centroids = np.zeros((0, self.dim), np.float32)
        self._no_pack = (
            np.zeros(0, np.int32),
            np.zeros((0, self.dim), np.int8),
            np.zeros(0, np.float32),
            np.zeros(1, np.int64),
            0,
        )
        self._upkeep_after = 0.0  # monotonic time before which upkeep_due says no
        self._upkeep_lock = threading.Lock()  # one upkeep at a time
        self.upkeeps = 0
        self.fresh_limit = int(fresh_limit)
        self.view = _View(_Buffer(256, self.dim), 0)
        self.index_lock = threading.Lock()  # the indexer holds it while it writes the graph
        self._free: list[int] = []
        self._next = int(index.used)
        self._doomed: list[int] = []  # to delete from the graph, then free
        self._doomed_linking: set[int] = set()  # removed while being linked
        self._linking = 0  # rows from view.start being linked by the indexer
        self._linked: tuple[_Buffer, int] | None = None  # (buffer, row): rows below are linked
        self.dirty = False  # graph changed since the last checkpoint capture
        self._compact_due = False  # a graph to compact or drop (see Graphs.to_compact)
        self._compacting: _Compaction | None = None
        self.compactions = 0
        self._work_since: float | None = None  # monotonic time work became pending
        self.wake: Callable[[], None] = _nothing  # the database points it at its indexer
        self.indexed_total = 0
        self.index_seconds = 0.0
        self.last_rate = 0.0
        self.cycles = 0

    # -- figures ---------------------------------------------------------------------------

    @property
    def fresh_rows(self) -> int:
        """Rows held by the fresh segment (removed rows included until they are moved)."""
        view = self.view
        return view.buffer.n - view.start

    @property
    def fresh_points(self) -> int:
        return len(self.view.buffer.pos)

    @property
    def has_doomed_linking(self) -> bool:
        return bool(self._doomed_linking)

    def backlog_age(self) -> float:
        view = self.view
        buf = view.buffer
        if buf.n <= view.start:
            return 0.0
        return max(0.0, time.time() - float(buf.stamps[view.start]))

    def has_work(self) -> bool:
        return self.fresh_rows > 0 or bool(self._doomed) or self._compact_due

    def ready(self, now: float) -> float:
        """0 when a cycle is worth running now, else the seconds to wait for one."""
        if not self.has_work():
            return INDEX_MAX_WAIT_S
        enough = min(INDEX_MIN_BATCH, self.fresh_limit)
        if self.fresh_rows >= enough or len(self._doomed) >= enough or self._compact_due:
            return 0.0
        since = self._work_since if self._work_since is not None else now
        return max(0.0, since + INDEX_MAX_WAIT_S - now)

    def stats(self) -> dict[str, Any]:
        return {
            "fresh_points": self.fresh_points,
            "fresh_rows": self.fresh_rows,
            "fresh_limit": self.fresh_limit,
            "indexed_points": len(self.index),
            "doomed_points": len(self._doomed),
            "indexing_rate": self.last_rate,
            "indexed_total": self.indexed_total,
            "index_cycles": self.cycles,
            "backlog_age_s": self.backlog_age(),
            "graph_seal_size": self.index.seal_size,
            "graph_compactions": self.compactions,
            "fresh_scan": self.fresh_scan(),
            "fresh_upkeeps": self.upkeeps,
            "graphs": [g.info() for g in self.index.graphs],
        }

    # -- the writer (the caller holds the collection's apply lock) ------------------------

    def allocate(self, n: int) -> np.ndarray:
        """``n`` free slots, smallest first."""
        out = np.empty(n, np.int32)
        free = self._free
        reused = min(n, len(free))
        for i in range(reused):
            out[i] = heapq.heappop(free)
        out[reused:] = np.arange(self._next, self._next + n - reused)
        self._next += n - reused
        return out

    @property
    def slot_bound(self) -> int:
        """Every slot ever allocated is below this."""
        return self._next

    def append(self, slots: np.ndarray, vectors: np.ndarray) -> None:
        """Make points searchable in the fresh segment (rows written, then published)."""
        n = len(slots)
        if n == 0:
            return
        view = self.view
        buf = view.buffer
        if buf.n + n > buf.capacity:
            buf = self._regrow(n)
        lo, hi = buf.n, buf.n + n
        buf.vectors[lo:hi] = vectors
        buf.slots[lo:hi] = slots
        buf.stamps[lo:hi] = time.time()
        coding = buf.coding
        if coding is not None:  # the codes of a row are written before n
            coding.encode(buf.vectors[lo:hi], lo)
        # the rows' lists are left to the upkeep thread (-1: scanned by every query)
        buf.pos.update(zip(slots.tolist(), range(lo, hi), strict=True))
        buf.n = hi
        if self.owner is not None:
            self.owner.hold(slots)
        if self._work_since is None:
            self._work_since = time.monotonic()

    def hold(self, slots: np.ndarray) -> None:
        """(owner) Another vector of these points is stored elsewhere: keep the slots."""
        holds = self._holds
        for slot in slots.tolist():
            holds[slot] = holds.get(slot, 0) + 1

    def unhold(self, slot: int) -> None:
        """(owner) Another holder gave ``slot`` up; free it if this one did already."""
        left = self._holds.get(slot, 0) - 1
        if left > 0:
            self._holds[slot] = left
            return
        self._holds.pop(slot, None)
        if slot in self._pending_free:
            self._pending_free.discard(slot)
            heapq.heappush(self._free, slot)

    def _give_back(self, slot: int) -> None:
        """This segment no longer uses ``slot``."""
        if self.owner is not None:
            self.owner.unhold(slot)
        elif self._holds.get(slot):
            self._pending_free.add(slot)
        else:
            heapq.heappush(self._free, slot)

    def holds_slot(self, slot: int) -> bool:
        """Whether this segment stores a vector at ``slot`` (fresh or live in the graph)."""
        if slot in self.view.buffer.pos:
            return True
        return self.index.holds(slot)

    def _regrow(self, extra: int) -> _Buffer:
        """Copy the fresh rows into a new buffer with room for ``extra`` more; swap the view."""
        view = self.view
        old = view.buffer
        keep = old.n - view.start
        capacity = max(256, 1 << int(np.ceil(np.log2(max(1, 2 * (keep + extra))))))
        new = _Buffer(capacity, self.dim)
        new.vectors[:keep] = old.vectors[view.start : old.n]
        new.slots[:keep] = old.slots[view.start : old.n]
        new.stamps[:keep] = old.stamps[view.start : old.n]
        if old.coding is not None:
            new.coding = old.coding.moved(capacity, view.start, old.n)
        if old.part is not None:
            new.part = old.part.moved(capacity, view.start, old.n)
        shift = view.start
        new.pos = dict(old.pos) if shift == 0 else {s: r - shift for s, r in old.pos.items()}
        new.n = keep
        old.successor = (new, view.start)  # before the swap: an upkeep follows it
        self.view = _View(new, 0)
        return new

    def remove(self, slots: list[int]) -> None:
        """Give up the slots of removed or replaced points."""
        view = self.view
        buf = view.buffer
        linking_end = view.start + self._linking
        hide = []
        index = self.index
        for slot in slots:
            row = buf.pos.pop(slot, None)
            if row is None and self.partial and not index.holds(slot):
                # the point had no vector here
                self._give_back(slot)
                continue
            if row is None:  # indexed: hidden now, deleted from the graph by the indexer
                hide.append(slot)
                self._doomed.append(slot)
                continue
            buf.slots[row] = -1
            if row < linking_end:  # being linked right now: the indexer deletes it after
                self._doomed_linking.add(slot)
                self._doomed.append(slot)
            else:
                self._give_back(slot)
        if hide:
            self.index.hide(np.asarray(hide, np.int64))
        if self._work_since is None:
            self._work_since = time.monotonic()

    # -- reads -----------------------------------------------------------------------------

    def search(
        self,
        queries: np.ndarray,
        k: int,
        ef: int,
        allowed: np.ndarray | None,
        live: np.ndarray,
        partitions: set[int] | None = None,
        *,
        filtered: bool | None = None,
        **options: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merged top-``k`` of the graph and the fresh rows: ``(slots, scores float32)``.

        ``allowed`` (a mask over slots, or ``None``) restricts both; ``live`` is the id map's
        live flags (fresh rows of points whose write is not applied are skipped). Rows are
        best first, padded with ``-1`` / NaN. ``options`` go to the graph's search (the
        quantization settings of an int8 index). ``partitions`` (graphs per partition only):
        search those partitions' graphs and fresh rows, with no mask over every slot.
        ``filtered``: ``allowed`` holds a payload filter (default: whenever ``allowed`` is
        given), so the fresh rows are not probed by list (see "Searching the fresh rows");
        ``options["ignore_quantization"]`` scans them exactly in float32, ``oversampling``
        raises the fresh rows' rescored candidates to ``k * oversampling``.
        """
        view = self.view  # before the graph: see the module docstring
        buf = view.buffer
        start, stop = view.start, buf.n
        coding, part, pack = buf.coding, buf.part, buf.pack  # after n: rows below stop coded
        linked = self._linked  # before the graph too: rows below it are found there
        if linked is not None and linked[0] is buf and linked[1] > start:
            start = min(linked[1], stop)
        graph_allowed = allowed
        if graph_allowed is None and self._doomed_linking:
            graph_allowed = live
        nq = len(queries)
        # each graph's list, merged once below with the fresh rows' (not twice)
        graphs = self.index.search_each(
            queries, k, ef=ef, allowed=graph_allowed, partitions=partitions, **options
        )
        ascending = self.metric_code == flat.L2
        if stop <= start:
            if not graphs:
                return np.full((nq, k), -1, np.int64), np.full((nq, k), np.nan, np.float32)
            if len(graphs) == 1:
                return graphs[0]  # int32 slots: the common case pays no conversion
            return merge_top_k(graphs, k, ascending)
        fs = np.empty((nq, k), np.int64)
        fd = np.empty((nq, k), np.float32)
        use = allowed is not None
        mask = allowed if use else live
        vectors, rows = buf.vectors, buf.slots
        if coding is None or stop - start < EXACT_BELOW or options.get("ignore_quantization"):
            if partitions is not None:
                vectors, rows = vectors[start:stop], self._rows_of(rows[start:stop], partitions)
                start, stop = 0, stop - start
            flat.scan(
                self.metric_code, vectors, rows, start, stop, queries, k, live, mask, use, fs, fd
            )
        else:
            codes, terms = coding.codes, coding.terms
            lists, centroids, probes = self._no_lists, self._no_centroids, 0
            packed = self._no_pack
            if part is not None and not (use if filtered is None else filtered):
                lists, centroids, probes = part.lists, part.centroids, part.probes
                if pack is not None and pack.coding is coding and pack.part is part:
                    packed = (pack.rows, pack.codes, pack.terms, pack.offsets, pack.hi)
            if partitions is not None:
                rows = self._rows_of_all(rows, start, stop, partitions)
            over = max(float(options.get("oversampling") or 0.0), FRESH_OVERSAMPLING)
            flat.scan_codes(
                self.metric_code, vectors, codes, terms, coding.consts, self._qlevels, lists,
                centroids, probes, *packed, rows, start, stop,
                queries, k, max(MIN_CANDIDATES, int(np.ceil(k * over))), live, mask, use, fs, fd,
            )  # fmt: skip
        if not graphs:
            return fs, fd
        return merge_top_k([*graphs, (fs, fd)], k, ascending)

    def _rows_of(self, rows: np.ndarray, partitions: set[int]) -> np.ndarray:
        """Fresh rows' slot column with the rows of other partitions marked ``-1`` (a copy
        as long as the fresh rows, not a mask over every slot)."""
        parts = self.partition_of() if self.partition_of is not None else None
        out = rows.copy()
        if parts is None:
            return out
        inside = (out >= 0) & (out < parts.shape[0])
        keep = np.zeros(out.shape[0], bool)
        keep[inside] = np.isin(parts[out[inside]], np.fromiter(partitions, np.int64))
        out[~keep] = -1
        return out

    def _rows_of_all(
        self, rows: np.ndarray, start: int, stop: int, partitions: set[int]
    ) -> np.ndarray:
        """The slot column with rows ``[start, stop)`` of other partitions marked ``-1`` (and
        the rows outside that range too): row numbers stay those of the codes and the pack."""
        out = np.full(stop, -1, np.int32)
        out[start:stop] = self._rows_of(rows[start:stop], partitions)
        return out

    def partition_slots(self, partitions: int | set[int]) -> np.ndarray:
        """Slots of points of ``partitions`` (one or a set) in this segment, sorted, each
        once (graphs per partition: time proportional to those partitions' points and the
        fresh rows). The view is taken before the graphs, as a search does."""
        wanted = {int(partitions)} if isinstance(partitions, int | np.integer) else partitions
        view = self.view
        rows = self._rows_of(view.buffer.slots[view.start : view.buffer.n], wanted)
        fresh = rows[rows >= 0].astype(np.int64)
        return np.union1d(self.index.partition_slots(wanted), fresh)

    def get_vectors(self, slots: np.ndarray) -> np.ndarray:
        """Stored vectors of occupied ``slots`` (fresh or indexed)."""
        slots = np.asarray(slots, np.int64).reshape(-1)
        out = np.empty((len(slots), self.dim), np.float32)
        buf = self.view.buffer
        pos = buf.pos
        rows = np.fromiter((pos.get(s, -1) for s in slots.tolist()), np.int64, len(slots))
        fresh = rows >= 0
        if fresh.any():
            out[fresh] = buf.vectors[rows[fresh]]
        if not fresh.all():
            out[~fresh] = self.index.get_vectors(slots[~fresh])
        return out

    # -- the fresh rows' codes and lists (the indexer thread) -----------------------------

    def upkeep_due(self) -> bool:
        """Whether the fresh rows need codes or lists, or new ones (module docstring)."""
        if time.monotonic() < self._upkeep_after:
            return False
        view = self.view
        buf = view.buffer
        rows = buf.n - view.start
        if rows < EXACT_BELOW:
            return False
        coding = buf.coding
        if coding is None or coding.stale():
            return True
        part = buf.part
        if rows < LISTS_FROM:
            return False
        if part is None or part.stale(rows):
            return True
        if part.unassigned(buf.n) >= ASSIGN_BATCH:
            return True
        return buf.pack is None or buf.pack.due(coding, part, view.start, buf.n)

    def upkeep(self, apply_lock: Any) -> bool:
        """Code the fresh rows (fit a quantizer, or take the int8 graph's) and partition them
        (train centroids, assign every row) when ``upkeep_due``; the work is done outside the
        apply lock, only the rows appended meanwhile are coded and assigned under it, and the
        new arrays are published whole. Returns whether anything was published."""
        with self._upkeep_lock:
            return self._upkeep(apply_lock)

    def _upkeep(self, apply_lock: Any) -> bool:
        self._upkeep_after = time.monotonic() + UPKEEP_BACKOFF_S  # cleared when all is done
        done = False
        for _ in range(4):  # codes, lists, pack; a regrow meanwhile: again
            view = self.view
            buf, lo, hi = view.buffer, view.start, view.buffer.n
            coding = buf.coding
            if hi - lo < EXACT_BELOW:
                break
            if coding is None or coding.stale():
                new = self._coding_for(buf, lo, hi, coding)
                if new is None:
                    break
                if not self._publish(apply_lock, buf, hi, new, "coding"):
                    continue
                done = True
                continue
            part = buf.part
            if hi - lo >= LISTS_FROM and (part is None or part.stale(hi - lo)):
                lists = self._lists_for(buf, lo, hi)
                if lists is None:
                    break
                if not self._publish(apply_lock, buf, hi, lists, "part"):
                    continue
                done = True
                continue
            if part is None or hi - lo < LISTS_FROM:
                self._upkeep_after = 0.0
                break
            pack = buf.pack
            pack_due = pack is None or pack.due(coding, part, lo, hi)
            if part.unassigned(hi) >= (1 if pack_due else ASSIGN_BATCH):
                self._assign(buf, part, hi)
                done = True
                continue
            if pack_due:
                if (part.lists[lo:hi] < 0).any():
                    break  # not every row is assigned (never, but a pack would lose them)
                buf.pack = _Pack(coding, part, lo, hi)  # immutable: no lock to publish it
                done = True
                continue
            self._upkeep_after = 0.0
            break
        if done:
            self.upkeeps += 1
        return done

    def _coding_for(self, buf: _Buffer, lo: int, hi: int, old: _Coding | None) -> _Coding | None:
        """Codes of rows ``[lo, hi)`` under a quantizer fitted on their live rows, or a copy of
        the int8 graph's when it is fitted (and is not the one ``old`` was stale with)."""
        x = buf.vectors[lo:hi][buf.slots[lo:hi] >= 0]
        if x.shape[0] == 0:
            return None
        template = getattr(self.index, "template", None)
        graph_q = getattr(template, "quantizer", None)
        q = None
        borrowed = False
        if graph_q is not None and graph_q.fitted:
            mine = old.quantizer if old is not None and old.borrowed else None
            if (
                mine is None
                or mine.scale != graph_q.scale
                or not np.array_equal(mine.offset, graph_q.offset)
            ):
                q = ScalarQuantizer.from_array(self.dim, self.metric, graph_q.to_array())
                q.n_added = q.values_added = q.values_clipped = 0
                borrowed = True
        if q is None:
            q = ScalarQuantizer(
                self.dim, self.metric, graph_q.quantile if graph_q is not None else None
            )
            q.fit(x)
        new = _Coding(q, buf.capacity, self.dim, borrowed)
        new.encode(buf.vectors[lo:hi], lo, count=False)
        return new

    def _lists_for(self, buf: _Buffer, lo: int, hi: int) -> _Lists | None:
        """Centroids trained on (a sample of) the live rows ``[lo, hi)``, every row assigned."""
        live_rows = np.flatnonzero(buf.slots[lo:hi] >= 0) + lo
        if live_rows.size == 0:
            return None
        if live_rows.size > TRAIN_SAMPLE:
            rng = np.random.default_rng(hi)
            live_rows = np.sort(rng.choice(live_rows, TRAIN_SAMPLE, replace=False))
        # the first partition is the small one, however many rows there are by then
        large = buf.part is not None and hi - lo >= LARGE_LISTS_FROM
        n_lists = FRESH_LISTS if large else FIRST_LISTS
        centroids = coarse.train(buf.vectors[live_rows], n_lists, self.metric, seed=hi)
        part = _Lists(centroids, buf.capacity, hi - lo, large)
        part.upto = lo  # the rows below it are the graph's
        self._assign(buf, part, hi)
        return part

    def _assign(self, buf: _Buffer, part: _Lists, hi: int) -> None:
        """Assign rows ``[part.upto, hi)`` in place, without the apply lock: the writer never
        writes a row's list, and a reader that reads ``-1`` scans the row whatever it probes,
        so either value it reads finds the row once."""
        lo = part.upto
        if hi > lo:
            part.lists[lo:hi] = coarse.assign(buf.vectors[lo:hi], part.centroids, self.metric)
            part.upto = hi

    def _publish(self, apply_lock: Any, buf: _Buffer, hi: int, new: Any, field: str) -> bool:
        """Code or assign the rows appended since ``hi`` into ``new`` (outside the lock while
        many are, the last ones under it) and publish it as ``<buffer>.<field>``. When the
        buffer grew meanwhile, ``new`` follows the rows into the new buffer (``_follow``);
        ``False`` when it was replaced otherwise (``restore``)."""
        for _ in range(64):
            buf, hi, new = self._follow(buf, hi, new)
            n = buf.n
            if n - hi < 1024:
                break
            self._fill(buf, hi, n, new, field)
            hi = n
        with apply_lock:
            buf, hi, new = self._follow(buf, hi, new)
            if self.view.buffer is not buf:
                return False
            self._fill(buf, hi, buf.n, new, field)
            setattr(buf, field, new)
        return True

    @staticmethod
    def _follow(buf: _Buffer, hi: int, new: Any) -> tuple[_Buffer, int, Any]:
        """``new`` (filled for rows below ``hi`` of ``buf``) moved along the buffers that
        replaced ``buf`` as it grew: rows ``[shift, hi)`` become rows ``[0, hi - shift)``."""
        while buf.successor is not None:
            nxt, shift = buf.successor
            covered = min(max(hi, shift), buf.n)
            new = new.moved(nxt.capacity, shift, covered)
            buf, hi = nxt, covered - shift
        return buf, hi, new

    def _fill(self, buf: _Buffer, lo: int, hi: int, new: Any, field: str) -> None:
        if hi <= lo:
            return
        if field == "coding":
            new.encode(buf.vectors[lo:hi], lo)
        else:  # lo is new.upto: ``new`` was filled up to it
            self._assign(buf, new, hi)

    def fresh_scan(self) -> str:
        """How a search scans the fresh rows now: ``exact``, ``int8`` or ``int8_lists``."""
        view = self.view
        buf = view.buffer
        if buf.coding is None or buf.n - view.start < EXACT_BELOW:
            return "exact"
        return "int8" if buf.part is None else "int8_lists"

    # -- the indexer -----------------------------------------------------------------------

    def index_once(self, apply_lock: Any, max_rows: int = INDEX_BATCH) -> int:
        """One indexer cycle: delete doomed slots from the graph, link up to ``max_rows``
        fresh rows, publish. Returns the points linked."""
        started = time.perf_counter()
        with apply_lock:
            doomed, self._doomed = self._doomed, []
            self._work_since = None
            self._linked = None  # (a cycle that failed may have left one)
            view = self.view
            buf = view.buffer
            rows = min(max_rows, buf.n - view.start)
            self._linking = rows
            sl = buf.slots[view.start : view.start + rows]
            keep = sl >= 0
            slots = sl[keep].copy()
            vectors = buf.vectors[view.start : view.start + rows][keep].copy()
            link_buf, kept_rows = buf, np.flatnonzero(keep) + view.start
            keys = None
            if self.index.partitioned and self.partition_of is not None:
                keys = self.partition_of()[slots].copy()
        index = self.index
        if doomed:
            with self.index_lock:
                if index.delete(np.asarray(doomed, np.int64)):
                    self._compact_due = True
                self.dirty = True
            with apply_lock:
                for slot in doomed:
                    self._give_back(slot)
        for lo in range(0, len(slots), LINK_CHUNK):
            hi = lo + LINK_CHUNK
            with self.index_lock:
                index.add(vectors[lo:hi], slots[lo:hi], None if keys is None else keys[lo:hi])
                self.dirty = True
            # the rows below this one are in the graph now: searches need not scan them
            self._linked = (link_buf, int(kept_rows[min(hi, len(kept_rows)) - 1]) + 1)
        with apply_lock:
            view = self.view  # may have been regrown: row numbers are relative to view.start
            buf = view.buffer
            end = view.start + rows
            pos = buf.pos
            for slot in buf.slots[view.start : end].tolist():
                if slot >= 0:
                    pos.pop(slot, None)
            self.view = _View(buf, end)
            self._linked = None
            self._linking = 0
            linked = set(slots.tolist())
            hide = [s for s in self._doomed_linking if s in linked]
            self._doomed_linking.clear()
            if hide:
                index.hide(np.asarray(hide, np.int64))
        if self._compact_due:
            self._compact(apply_lock)
        with apply_lock:
            if self.has_work() and self._work_since is None:
                self._work_since = time.monotonic()
        elapsed = time.perf_counter() - started
        if len(slots):
            self.indexed_total += len(slots)
            self.index_seconds += elapsed
            self.last_rate = len(slots) / elapsed if elapsed > 0 else 0.0
        self.cycles += 1
        return len(slots)

    def _compact(self, apply_lock: Any, budget: int = INDEX_BATCH) -> None:
        """Compaction work of one cycle: re-link up to ``budget`` live points of graphs due
        for compaction into the growing graph (in ``LINK_CHUNK`` calls, as fresh points are,
        so fresh rows are still indexed every cycle); once a graph's points are all
        re-linked, drop it (``Graphs.retire``). Meanwhile a point may be live in both
        graphs; searches drop the duplicate by slot."""
        index = self.index
        while budget > 0:
            job = self._compacting
            if job is None:
                due = index.to_compact()
                if not due:
                    break
                old = due[0]
                with apply_lock:
                    local = old.live_locals()
                    slots = old.slots_of(local)
                    vectors = old.index.get_vectors(local) if local.size else None
                job = self._compacting = _Compaction(old, slots, vectors)
            lo = job.done
            hi = min(len(job.slots), lo + min(LINK_CHUNK, budget))
            if hi > lo:
                with self.index_lock:
                    job.moved += index.link(
                        job.vectors[lo:hi], job.slots[lo:hi], job.old.partition, place=False
                    )
                    self.dirty = True
                job.done = hi
                budget -= hi - lo
            if job.done >= len(job.slots):
                with self.index_lock, apply_lock:  # the checkpointer's order
                    index.retire(job.old, job.moved)
                    self.dirty = True
                self._compacting = None
                self.compactions += 1
        # after the work, not before: wait_indexed waits for compactions too
        self._compact_due = self._compacting is not None or bool(index.to_compact())

    # -- checkpoints -------------------------------------------------------------------------

    def capture_fresh(self) -> FreshCapture:
        """The fresh rows that hold points (the caller holds the apply lock).

        Only the slot column is copied here; rows are append-only and a row's vector
        never changes once written, so the vectors are referenced and gathered later
        (``FreshCapture.arrays()``, outside the locks).
        """
        view = self.view
        buf = view.buffer
        return FreshCapture(buf.vectors, view.start, buf.slots[view.start : buf.n].copy())

    def take_graph_rows(self) -> dict[int, np.ndarray]:
        """Locals (re)linked into each graph since the last call, by graph id (the caller
        holds ``index_lock``): the only rows of the graphs' per-point arrays that changed."""
        return self.index.take_rows()

    def mark_graph_rows(self, rows: dict[int, np.ndarray]) -> None:
        """Give back rows taken by a checkpoint that failed."""
        with self.index_lock:
            self.index.give_rows(rows)
            self.dirty = True

    def restore(self, fresh: dict[str, np.ndarray] | None, live_slots: np.ndarray) -> None:
        """Rebuild the slot states after loading a checkpoint (before any reader exists).

        Graph points that the id map no longer holds are deleted (they were doomed at the
        capture); fresh rows already linked into the graph are dropped (they were being
        moved); every other slot below the bound is free.
        """
        index = self.index
        live = np.zeros(
            max(int(index.used), int(live_slots.max()) + 1 if live_slots.size else 0), bool
        )
        live[live_slots] = True
        index.dedup()
        graph_live = index.live_mask()[: index.used]
        doomed = np.flatnonzero(graph_live & ~live[: len(graph_live)])
        if doomed.size:
            index.delete(doomed)
        self._compact_due = bool(index.to_compact())
        graph_live = index.live_mask()[: index.used]
        slots = np.zeros(0, np.int32)
        vectors = np.zeros((0, self.dim), np.float32)
        if fresh is not None and len(fresh["slots"]):
            slots = np.asarray(fresh["slots"], np.int32)
            vectors = np.asarray(fresh["vectors"], np.float32).reshape(-1, self.dim)
            in_graph = np.zeros(len(slots), bool)
            below = slots < len(graph_live)
            in_graph[below] = graph_live[slots[below]]
            keep = ~in_graph & (slots < len(live))
            keep[keep] = live[slots[keep]]
            slots, vectors = slots[keep], vectors[keep]
        occupied = np.zeros(len(live), bool)
        occupied[: len(graph_live)] = graph_live
        occupied[slots] = True
        missing = live & ~occupied
        if missing.any() and not self.partial:
            raise ValueError(
                f"{int(missing.sum())} points of the id map are in neither segment "
                f"(first slot {int(np.flatnonzero(missing)[0])})"
            )
        self._next = len(live)
        self._free = np.flatnonzero(~live).astype(np.int64).tolist()
        heapq.heapify(self._free)
        self._holds, self._pending_free = {}, set()
        if self.owner is not None:
            self.owner.hold(np.flatnonzero(graph_live))
        self.view = _View(_Buffer(256, self.dim), 0)
        self.append(slots, vectors)


class _Compaction:
    """A graph being compacted: its live points when it started, how many are re-linked."""

    __slots__ = ("old", "slots", "vectors", "done", "moved")

    def __init__(self, old: Any, slots: np.ndarray, vectors: np.ndarray | None) -> None:
        self.old, self.slots, self.vectors = old, slots, vectors
        self.done = 0
        self.moved: list[Any] = []  # (graph, slots, locals) of the re-linked points


class FreshCapture:
    """A checkpoint's view of the fresh rows: the slot column copied, the vectors referenced."""

    __slots__ = ("vectors", "start", "slots")

    def __init__(self, vectors: np.ndarray, start: int, slots: np.ndarray) -> None:
        self.vectors, self.start, self.slots = vectors, start, slots

    def arrays(self) -> dict[str, np.ndarray]:
        keep = self.slots >= 0
        rows = self.vectors[self.start : self.start + len(self.slots)]
        return {"slots": self.slots[keep], "vectors": rows[keep]}


def _nothing() -> None:
    pass


class Indexer:
    """One background thread per database that moves fresh points into the graphs, and one
    that keeps the fresh rows' codes and lists (``Segments.upkeep``).

    The indexer works on the collection with the oldest backlog, one cycle at a time, and
    sleeps while there is nothing to do. ``wake()`` is called by the writer after it
    appended. The indexer thread lowers its own scheduling priority (Linux), so searches and
    the writer get the cores first when both want them. The upkeep thread is a second thread
    because a cycle's link calls take seconds on a loaded box, and the fresh rows of a burst
    need their codes and lists within that time; its work is bounded (a few fits, trainings
    and packs per burst, each of them linear in the fresh rows), it runs while indexing is
    paused (it moves no point), and it never holds the apply lock longer than it takes to
    code or assign the rows appended while it worked.
    """

    def __init__(self, collections: Any, name: str) -> None:
        self._collections = collections  # callable -> list of collections
        self._wake = threading.Event()
        self._upkeep_wake = threading.Event()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._drained = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._upkeeper = threading.Thread(
            target=self._run_upkeep, name=f"{name}-fresh", daemon=True
        )
        self.failures = 0

    def start(self) -> None:
        self._thread.start()
        self._upkeeper.start()

    def wake(self) -> None:
        self._wake.set()
        self._upkeep_wake.set()

    def pause(self) -> None:
        """Stop moving points into the graphs after the current cycle (writes go on)."""
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._upkeep_wake.set()
        self._thread.join()
        if self._upkeeper.is_alive():
            self._upkeeper.join()

    def wait_below(self, segs: Segments, limit: int, timeout: float) -> bool:
        """Block until ``segs`` holds fewer than ``limit`` fresh rows (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._drained:
            while segs.fresh_rows >= limit and not self._stop.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.set()
                self._drained.wait(min(left, 0.1))
        return True

    def _run(self) -> None:
        set_thread_nice(5)
        while not self._stop.is_set():
            busy = []
            wait = 0.5
            if not self._paused.is_set():
                now = time.monotonic()
                for c in self._collections():
                    for segs in c._all_segments():
                        left = segs.ready(now)
                        if left == 0.0:
                            busy.append((c, segs))
                        elif segs.has_work():
                            wait = min(wait, left)
            if not busy:
                self._wake.wait(wait)
                self._wake.clear()
                continue
            col, segs = max(busy, key=lambda cs: cs[1].backlog_age())
            try:
                col._index_once(segs)
            except Exception:
                self.failures += 1
                log.exception("indexing collection %s failed", col.name)
                self._stop.wait(1.0)
            with self._drained:
                self._drained.notify_all()

    def _run_upkeep(self) -> None:
        set_thread_nice(5)  # as the indexer: the writer gets the cores first (its acks)
        while not self._stop.is_set():
            due = [
                (c, segs)
                for c in self._collections()
                for segs in c._all_segments()
                if segs.upkeep_due()
            ]
            if not due:
                self._upkeep_wake.wait(0.2)
                self._upkeep_wake.clear()
                continue
            for col, segs in due:
                try:
                    col._fresh_upkeep(segs)
                except Exception:
                    self.failures += 1
                    log.exception("fresh rows of collection %s: upkeep failed", col.name)
