"""A collection's vectors in two segments: a fresh one (flat, scanned exactly) and the graph.

A write is acknowledged once it is durable and its points are appended to
the **fresh segment**: flat arrays (``vectors``, ``slots``) that a search
scans exactly with a nogil kernel (``vdb.index.flat``). A background
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

Publication (one writer, one indexer, any number of readers):

* Rows are only appended to a ``_Buffer``; its row count ``n`` is published
  after the rows are written. A reader takes ``self.view`` once (a buffer and
  the first row that is still fresh) and reads ``n`` once.
* Growth copies the fresh rows into a new buffer and swaps ``self.view``;
  readers that hold the old view keep a consistent, older picture.
* The indexer copies a prefix of the fresh rows, links them into the graph
  (holding ``index_lock``), and only then publishes a view that starts after
  them. A search takes the view before it searches the graph, so a point
  being moved is found in the fresh rows it holds, in the graph, or in both
  (merged by slot): never in neither. While moved points that were removed
  meanwhile may still be live in the graph (``has_doomed_linking``), graph
  searches are given the live mask.
* Removal of a fresh row writes ``-1`` into its slot cell; the kernel also
  checks the id map's live flags, and the collection's seqlock (generation
  marks on changed slots) makes a search that raced a change run again.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vdb.graphs import DEFAULT_SEAL_SIZE, Graphs, merge_top_k
from vdb.index import flat

log = logging.getLogger(__name__)

DEFAULT_FRESH_LIMIT = 50_000
INDEX_BATCH = 16_384  # points moved into the graph per indexer cycle
# The indexer waits for this many points (or this long) before a cycle: linking a few points
# at a time costs far more per point (a reachability check, thread hand-offs) and fresh points
# are searchable anyway.
INDEX_MIN_BATCH = 1_024
INDEX_MAX_WAIT_S = 0.2
LINK_CHUNK = 2_048  # points per HNSW.add call (a checkpoint waits at most one of these)


class _Buffer:
    """Append-only flat rows of the fresh segment (one generation of its arrays)."""

    __slots__ = ("vectors", "slots", "stamps", "pos", "n")

    def __init__(self, capacity: int, dim: int) -> None:
        self.vectors = np.zeros((capacity, dim), np.float32)
        self.slots = np.full(capacity, -1, np.int32)
        self.stamps = np.zeros(capacity, np.float64)  # when each row was appended
        self.pos: dict[int, int] = {}  # slot -> row, for the rows that are still fresh
        self.n = 0

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
        self.metric_code = flat.L2 if index.metric == "l2" else flat.IP
        self.fresh_limit = int(fresh_limit)
        self.view = _View(_Buffer(256, self.dim), 0)
        self.index_lock = threading.Lock()  # the indexer holds it while it writes the graph
        self._free: list[int] = []
        self._next = int(index.used)
        self._doomed: list[int] = []  # to delete from the graph, then free
        self._doomed_linking: set[int] = set()  # removed while being linked
        self._linking = 0  # rows from view.start being linked by the indexer
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
            "graphs": [g.info() for g in self.index.graphs],
        }

    # -- the writer (the caller holds the collection's apply lock) ------------------------

    def allocate(self, n: int) -> np.ndarray:
        """``n`` free slots, smallest first."""
        out = np.empty(n, np.int32)
        free = self._free
        for i in range(n):
            if free:
                out[i] = heapq.heappop(free)
            else:
                out[i] = self._next
                self._next += 1
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
        pos = buf.pos
        for row, slot in enumerate(slots.tolist(), lo):
            pos[slot] = row
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
        new.pos = {slot: row - view.start for slot, row in old.pos.items()}
        new.n = keep
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
        **options: Any,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Merged top-``k`` of the graph and the fresh rows: ``(slots, scores float32)``.

        ``allowed`` (a mask over slots, or ``None``) restricts both; ``live`` is the id map's
        live flags (fresh rows of points whose write is not applied are skipped). Rows are
        best first, padded with ``-1`` / NaN. ``options`` go to the graph's search (the
        quantization settings of an int8 index); the fresh rows are always scanned in float32.
        ``partitions`` (graphs per partition only): search those partitions' graphs and fresh
        rows, with no mask over every slot.
        """
        view = self.view  # before the graph: see the module docstring
        buf = view.buffer
        start, stop = view.start, buf.n
        graph_allowed = allowed
        if graph_allowed is None and self._doomed_linking:
            graph_allowed = live
        nq = len(queries)
        # each graph's list, merged once below with the fresh rows' (not twice)
        graphs = self.index.search_each(
            queries, k, ef=ef, allowed=graph_allowed, partitions=partitions, **options
        )
        vectors, rows = buf.vectors, buf.slots
        if partitions is not None and stop > start:
            vectors, rows = vectors[start:stop], self._rows_of(rows[start:stop], partitions)
            start, stop = 0, stop - start
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
        flat.scan(
            self.metric_code, vectors, rows, start, stop, queries, k, live,
            allowed if use else live, use, fs, fd,
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

    # -- the indexer -----------------------------------------------------------------------

    def index_once(self, apply_lock: Any, max_rows: int = INDEX_BATCH) -> int:
        """One indexer cycle: delete doomed slots from the graph, link up to ``max_rows``
        fresh rows, publish. Returns the points linked."""
        started = time.perf_counter()
        with apply_lock:
            doomed, self._doomed = self._doomed, []
            self._work_since = None
            view = self.view
            buf = view.buffer
            rows = min(max_rows, buf.n - view.start)
            self._linking = rows
            sl = buf.slots[view.start : view.start + rows]
            keep = sl >= 0
            slots = sl[keep].copy()
            vectors = buf.vectors[view.start : view.start + rows][keep].copy()
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
        with apply_lock:
            view = self.view  # may have been regrown: row numbers are relative to view.start
            buf = view.buffer
            end = view.start + rows
            pos = buf.pos
            for slot in buf.slots[view.start : end].tolist():
                if slot >= 0:
                    pos.pop(slot, None)
            self.view = _View(buf, end)
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
    """One background thread per database that moves fresh points into the graphs.

    It works on the collection with the oldest backlog, one cycle at a time, and sleeps
    while there is nothing to do. ``wake()`` is called by the writer after it appended.
    The thread lowers its own scheduling priority (Linux), so searches and the writer
    get the cores first when both want them.
    """

    def __init__(self, collections: Any, name: str) -> None:
        self._collections = collections  # callable -> list of collections
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._drained = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

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
        self._thread.join()

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
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 5)
        except (AttributeError, OSError):  # not Linux, or not permitted
            pass
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
