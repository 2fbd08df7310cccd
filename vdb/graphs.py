"""The indexed segments of one vector name: several HNSW graphs over subsets of the slots.

``Graphs`` presents to ``vdb.segments.Segments`` the part of the HNSW API it uses
(``search``, ``add``, ``hide``, ``delete``, ``live_mask``, ``is_deleted``, ``holds``,
``used``, ``capacity``, ``get_vectors``, ``len``, ``warm``, ``to_arrays`` /
``from_arrays``), over any number of graphs:

* Each ``Graph`` is one HNSW with its own local ids. ``labels`` (int32, local -> slot)
  maps them to the collection's slots; the first graph of a collection keeps
  ``labels is None`` (local id == slot, as before there were several graphs), so a
  collection with one graph searches and checkpoints exactly as it did (no remap, no
  mask copy). Other graphs only append locals (a deleted local is never reused), so a
  label never changes once written.
* ``where_g`` / ``where_l`` (slot -> graph id, local) say where a slot's live point is.
* The indexer links into a **growing** graph (one per source partition when the
  collection has ``partition_segments``, else one); when it holds ``seal_size``
  linked points it is **sealed**: its vectors and links never change again (deletes
  set its deleted flags only) and a new growing graph starts at the next link.
* A sealed graph whose live points fall below half the points linked into it is
  **compacted** (``Segments`` re-links its live points into the growing graph, then
  ``retire`` drops it); a graph left without live points is dropped at once.

Publication: ``self.graphs`` is a tuple replaced (never changed in place) when a graph
is created or dropped; a reader takes it once. A new graph is published empty (searches
skip it). Labels are written before the locals they name are linked and a grown label
array is published before use; readers read ``labels`` after the search, so every local
a search returns has its label. ``where_*`` are written by the indexer (links,
deletes) and read by the writer (``hide``) and by ``get_vectors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

DEFAULT_SEAL_SIZE = 1 << 20
NO_KEY = -2  # the partition of a graph in a collection without partition segments


class Graph:
    """One HNSW of a ``Graphs`` and what maps it to slots."""

    __slots__ = (
        "gid", "index", "labels", "partition", "sealed", "linked", "rows", "persisted", "params",
        "saved",
    )  # fmt: skip

    def __init__(
        self,
        gid: int,
        index: Any,
        labels: np.ndarray | None,
        partition: int | None,
        sealed: bool = False,
        linked: int = 0,
    ) -> None:
        self.gid = gid
        self.index = index
        self.labels = labels  # None: local == slot
        self.partition = partition  # the source partition it holds (None: any)
        self.sealed = sealed
        self.linked = linked  # points ever linked into it (the seal criterion)
        self.rows: list[np.ndarray] = []  # locals (re)linked since the last checkpoint capture
        self.persisted = False  # sealed, and its immutable arrays are in the last checkpoint
        self.params: np.ndarray | None = None  # its HNSW parameters as checkpointed once sealed
        self.saved: list[str] = []  # the names of its arrays in that checkpoint

    @property
    def identity(self) -> bool:
        return self.labels is None

    def prefix(self) -> str:
        """Its arrays' names in checkpoints: the first graph keeps the names of one graph."""
        return "" if self.labels is None else f"g{self.gid}/"

    def slots_of(self, local: np.ndarray) -> np.ndarray:
        if self.labels is None:
            return local.astype(np.int64)
        return self.labels[local].astype(np.int64)

    def live_locals(self) -> np.ndarray:
        index = self.index
        return np.flatnonzero(index.live_mask()[: index.used])

    def info(self) -> dict[str, Any]:
        return {
            "id": self.gid,
            "points": int(self.linked),
            "live": int(len(self.index)),
            "partition": self.partition,
            "sealed": self.sealed,
        }


class Graphs:
    """Every graph of one vector name (see the module docstring)."""

    def __init__(
        self,
        first: Any,
        make: Callable[[int], Any] | None = None,
        seal_size: int = DEFAULT_SEAL_SIZE,
        partitioned: bool = False,
    ) -> None:
        self.template = first  # the collection's parameters (dim, metric, ...)
        self.make = make  # gid -> a new, empty HNSW with the collection's parameters
        self.seal_size = int(seal_size)
        self.partitioned = bool(partitioned)
        self.graphs: tuple[Graph, ...] = ()
        self._by_gid: dict[int, Graph] = {}
        self._growing: dict[int | None, Graph] = {}
        self._next_gid = 0
        self.where_g = np.full(0, -1, np.int32)
        self.where_l = np.full(0, -1, np.int32)
        self._bound = 0  # every placed slot is below this
        if first is not None and not (partitioned and len(first) == 0 and first.used == 0):
            g = Graph(0, first, None, None, linked=int(first.used))
            self._install([g])
            self._growing[None] = g
            live = np.flatnonzero(first.live_mask()[: first.used])
            self._place(live, 0, live)
        self._next_gid = max(self._next_gid, 1)

    # -- the HNSW surface used by Segments --------------------------------------------------

    @property
    def dim(self) -> int:
        return int(self.template.dim)

    @property
    def metric(self) -> str:
        return str(self.template.metric)

    @property
    def quantization(self) -> str | None:
        return self.template.quantization

    @property
    def on_disk(self) -> bool:
        return bool(self.template.on_disk)

    @property
    def used(self) -> int:
        """Every slot placed in a graph is below this."""
        return self._bound

    @property
    def capacity(self) -> int:
        return max([self.where_g.shape[0], *(int(g.index.capacity) for g in self.graphs)])

    def __len__(self) -> int:
        return sum(len(g.index) for g in self.graphs)

    def warm(self, writes: bool = True, background: bool = False) -> None:
        self.template.warm(writes=writes, background=background)

    def memory_bytes(self) -> dict[str, int]:
        out = {"ram": 0, "mapped": 0}
        for g in self.graphs:
            for key, value in g.index.memory_bytes().items():
                out[key] = out.get(key, 0) + int(value)
        return out

    def holds(self, slot: int) -> bool:
        """Whether ``slot`` is live in a graph."""
        where_g = self.where_g
        if slot >= where_g.shape[0] or where_g[slot] < 0:
            return False
        g = self._by_gid.get(int(where_g[slot]))
        if g is None:
            return False
        return not g.index.is_deleted(int(self.where_l[slot]))

    def is_deleted(self, slot: int) -> bool:
        return not self.holds(int(slot))

    def live_mask(self) -> np.ndarray:
        """bool[capacity] over slots: live in some graph."""
        out = np.zeros(self.capacity, bool)
        for g in self.graphs:
            out[g.slots_of(g.live_locals())] = True
        return out

    def search(
        self,
        queries: np.ndarray,
        k: int,
        ef: int | None = None,
        allowed: np.ndarray | None = None,
        partitions: Sequence[int] | set[int] | None = None,
        **options: Any,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Merged top-``k`` slots of every graph (of ``partitions`` only, when given);
        ``None`` when no graph holds a point. ``allowed`` is a mask over slots."""
        results = self.search_each(queries, k, ef, allowed, partitions, **options)
        if not results:
            return None
        if len(results) == 1:
            return results[0]
        return merge_top_k(results, k, self.metric == "l2")

    def search_each(
        self,
        queries: np.ndarray,
        k: int,
        ef: int | None = None,
        allowed: np.ndarray | None = None,
        partitions: Sequence[int] | set[int] | None = None,
        **options: Any,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each graph's top-``k`` slots, unmerged (for a caller that merges them with more
        lists in one pass); graphs without points are left out."""
        results = []
        for g in self.graphs:
            if partitions is not None and g.partition not in partitions:
                continue
            index = g.index
            if not len(index):
                continue
            if g.labels is None:
                mask = allowed
                if mask is not None:
                    mask = mask[: index.capacity]
                results.append(index.search(queries, k, ef=ef, allowed=mask, **options))
                continue
            mask = None
            if allowed is not None:
                used = int(index.used)
                lab = g.labels[:used]
                mask = np.zeros(used, bool)
                inside = lab < allowed.shape[0]
                mask[inside] = allowed[lab[inside]]
            local, scores = index.search(queries, k, ef=ef, allowed=mask, **options)
            labels = g.labels  # after the search: it names every local the search returned
            slots = np.where(local >= 0, labels[np.maximum(local, 0)], -1)
            results.append((slots, scores))
        return results

    def get_vectors(self, slots: np.ndarray) -> np.ndarray:
        """Vectors of ``slots``; zeros for a slot no graph holds (a point deleted while a
        reader looked at it: the collection's seqlock makes that reader search again)."""
        slots = np.asarray(slots, np.int64).reshape(-1)
        out = np.zeros((len(slots), self.dim), np.float32)
        for _ in range(3):  # a graph retired meanwhile: its points were placed elsewhere
            where_g, where_l = self.where_g, self.where_l
            inside = slots < where_g.shape[0]
            gids = np.full(len(slots), -1, np.int64)
            gids[inside] = where_g[slots[inside]]
            missing = False
            for gid in np.unique(gids[gids >= 0]).tolist():
                g = self._by_gid.get(gid)
                if g is None:
                    missing = True
                    continue
                sel = gids == gid
                out[sel] = g.index.get_vectors(where_l[slots[sel]])
            if not missing:
                break
        return out

    def hide(self, slots: np.ndarray) -> None:
        """Stop returning live, linked slots at once (the writer; see ``HNSW.hide``)."""
        for g, local in self._group(np.asarray(slots, np.int64)):
            g.index.hide(local)

    def delete(self, slots: Sequence[int] | np.ndarray) -> list[Graph]:
        """Delete slots from their graphs (the indexer, holding ``index_lock``); slots no
        graph holds are skipped. Returns the graphs now to compact or drop."""
        slots = np.asarray(slots, np.int64)
        slots = slots[slots < self.where_g.shape[0]]
        touched = []
        for g, local in self._group(slots):
            g.index.delete(local)
            self.where_g[g.slots_of(local)] = -1
            touched.append(g)
        return [g for g in touched if self._wants_compaction(g)]

    def add(self, vectors: np.ndarray, slots: np.ndarray, keys: np.ndarray | None = None) -> None:
        """Link points (the indexer, holding ``index_lock``) into the growing graph of their
        key (source partition), sealing graphs that fill up on the way."""
        for local_slots, local_vectors, key in self._split(slots, vectors, keys):
            self.link(local_vectors, local_slots, key, place=True)

    def link(
        self, vectors: np.ndarray, slots: np.ndarray, key: int | None, place: bool
    ) -> list[tuple[Graph, np.ndarray, np.ndarray]]:
        """Link points of one key into its growing graph(s); ``place``: publish their
        ``where_*`` now (else the caller does, ``retire``). Returns (graph, slots, locals)."""
        out = []
        lo = 0
        n = len(slots)
        while lo < n:
            g = self._growing_graph(key)
            if g.linked >= self.seal_size:
                self.seal(g)
                continue
            take = max(1, min(n - lo, self.seal_size - g.linked))
            sl = np.asarray(slots[lo : lo + take], np.int64)
            local = self._link_into(g, vectors[lo : lo + take], sl)
            if place:
                self._place(sl, g.gid, local)
            out.append((g, sl, local))
            lo += take
            if g.linked >= self.seal_size:
                self.seal(g)
        return out

    def seal(self, g: Graph) -> None:
        g.sealed = True
        if self._growing.get(g.partition) is g:
            del self._growing[g.partition]

    # -- compaction ----------------------------------------------------------------------

    def _wants_compaction(self, g: Graph) -> bool:
        live = len(g.index)
        if live == 0 and (g.sealed or (self.partitioned and g.linked)):
            return True  # nothing left: dropped (a dropped partition's graphs)
        return g.sealed and 2 * live < g.linked

    def to_compact(self) -> list[Graph]:
        return [g for g in self.graphs if self._wants_compaction(g)]

    def retire(self, old: Graph, moved: list[tuple[Graph, np.ndarray, np.ndarray]]) -> None:
        """Drop ``old`` after its live points were linked elsewhere (``moved``, from
        ``link(place=False)``); the caller holds the apply lock and ``index_lock``. A point
        removed meanwhile (hidden in ``old``) is hidden in its new graph too."""
        old_live = old.index.live_mask()
        for g, sl, local in moved:
            gone = ~old_live[self.where_l[sl]]
            if gone.any():
                g.index.hide(local[gone])
            self._place(sl, g.gid, local)  # a hidden one is deleted there by its doomed entry
        self._drop(old)

    def _drop(self, g: Graph) -> None:
        self.graphs = tuple(x for x in self.graphs if x is not g)
        self._by_gid.pop(g.gid, None)
        if self._growing.get(g.partition) is g:
            del self._growing[g.partition]
        stale = g.slots_of(np.arange(int(g.index.used)))
        if stale.size:  # slots still pointing at it (hidden points, whose doomed entries wait)
            stale = stale[(stale >= 0) & (stale < self.where_g.shape[0])]
            self.where_g[stale[self.where_g[stale] == g.gid]] = -1

    # -- partitions ----------------------------------------------------------------------

    def partition_slots(self, partitions: int | Sequence[int] | set[int]) -> np.ndarray:
        """Slots live in the graphs of ``partitions`` (one or several; time proportional to
        those graphs). A slot live in two graphs (a compaction under way) is listed twice."""
        if isinstance(partitions, int | np.integer):
            partitions = (int(partitions),)
        wanted = set(partitions)
        parts = [g.slots_of(g.live_locals()) for g in self.graphs if g.partition in wanted]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def keyed(self) -> bool:
        """Whether every graph belongs to one partition (restricted searches need no mask)."""
        return self.partitioned and all(g.partition is not None for g in self.graphs)

    # -- checkpoints ---------------------------------------------------------------------

    def take_rows(self) -> dict[int, np.ndarray]:
        """Locals (re)linked per graph since the last call (the caller holds ``index_lock``)."""
        out = {}
        for g in self.graphs:
            rows, g.rows = g.rows, []
            out[g.gid] = np.concatenate(rows).astype(np.int64) if rows else np.zeros(0, np.int64)
        return out

    def give_rows(self, rows: dict[int, np.ndarray]) -> None:
        for gid, r in rows.items():
            g = self._by_gid.get(gid)
            if g is not None and r.size:
                g.rows.append(r)

    def meta(self) -> np.ndarray:
        """One row per graph: gid, partition (``NO_KEY``: none), sealed, identity, linked."""
        return np.array(
            [
                [g.gid, NO_KEY if g.partition is None else g.partition, int(g.sealed),
                 int(g.identity), g.linked]
                for g in self.graphs
            ],
            np.int64,
        ).reshape(-1, 5)  # fmt: skip

    def to_arrays(self, views: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        """Every graph's arrays (one identity graph: exactly ``HNSW.to_arrays``)."""
        graphs = self.graphs
        if len(graphs) == 1 and graphs[0].identity and not graphs[0].sealed:
            return graphs[0].index.to_arrays(views=views)
        out: dict[str, np.ndarray] = {"graphs": self.meta()}
        for g in graphs:
            out.update(self.graph_arrays(g, views))
        return out

    def graph_arrays(self, g: Graph, views: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
        p = g.prefix()
        out = {p + k: v for k, v in g.index.to_arrays(views=views).items()}
        if g.labels is not None:
            out[p + "labels"] = g.labels[: int(g.index.used)].copy()
        return out

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, np.ndarray],
        *,
        on_disk: Any = None,
        adopt: bool = False,
        make: Callable[[int], Any] | None = None,
        seal_size: int = DEFAULT_SEAL_SIZE,
        partitioned: bool = False,
        template: Any = None,
    ) -> Graphs:
        """Rebuild from ``to_arrays`` (or one HNSW's arrays, as every checkpoint before
        several graphs held). ``template``: an empty HNSW with the collection's parameters,
        used when no graph is left."""
        from vdb.index import HNSW

        if "graphs" not in arrays:
            first = HNSW.from_arrays(arrays, on_disk=on_disk, adopt=adopt)
            return cls(first, make, seal_size, partitioned)
        meta = np.asarray(arrays["graphs"], np.int64).reshape(-1, 5)
        graphs = []
        for gid, partition, sealed, identity, linked in meta.tolist():
            p = "" if identity else f"g{gid}/"
            own = {
                k[len(p) :]: v
                for k, v in arrays.items()
                if k.startswith(p) and "/" not in k[len(p) :] and k != "graphs"
            }
            saved = sorted(own)
            params = np.asarray(own["params"], np.int64).copy() if "params" in own else None
            labels = own.pop("labels", None)
            index = HNSW.from_arrays(own, on_disk=on_disk, adopt=adopt)
            if labels is not None:
                grown = np.full(max(1024, int(index.used)), -1, np.int32)
                grown[: len(labels)] = labels
                labels = grown
            g = Graph(gid, index, labels, None if partition == NO_KEY else partition,
                      bool(sealed), int(linked))  # fmt: skip
            g.params, g.saved = params, saved
            g.persisted = g.sealed  # its arrays are in the checkpoint just read
            graphs.append(g)
        first = template if template is not None else (graphs[0].index if graphs else None)
        out = cls(None, make, seal_size, partitioned)
        out.template = first
        out._install(graphs)
        for g in graphs:
            local = g.live_locals()
            out._place(g.slots_of(local), g.gid, local)
            if not g.sealed:
                out._growing[g.partition] = g
        return out

    def dedup(self) -> None:
        """After a load: a slot live in two graphs (a compaction was under way) keeps one."""
        seen = np.zeros(self._bound, bool)
        for g in self.graphs:
            local = g.live_locals()
            slots = g.slots_of(local)
            twice = seen[slots]
            if twice.any():
                g.index.delete(local[twice])
            seen[slots] = True
        for g in self.graphs:
            local = g.live_locals()
            self._place(g.slots_of(local), g.gid, local)

    # -- internals -----------------------------------------------------------------------

    def _install(self, graphs: list[Graph]) -> None:
        for g in graphs:
            self._by_gid[g.gid] = g
            self._next_gid = max(self._next_gid, g.gid + 1)
        self.graphs = (*self.graphs, *graphs)

    def _growing_graph(self, key: int | None) -> Graph:
        g = self._growing.get(key)
        if g is not None:
            return g
        if (
            not self.graphs
            and not self.partitioned
            and self.template is not None
            and (self.template.used == 0)
        ):
            g = Graph(0, self.template, None, None)  # the first graph: local == slot
        else:
            if self.make is None:
                raise ValueError("no factory for new graphs")
            gid = self._next_gid
            g = Graph(gid, self.make(gid), np.full(1024, -1, np.int32), key)
        self._install([g])
        self._growing[key] = g
        return g

    def _link_into(self, g: Graph, vectors: np.ndarray, slots: np.ndarray) -> np.ndarray:
        index = g.index
        n = len(slots)
        if g.labels is None:
            index.add(vectors, slots=slots)
            local = slots
        else:
            used = int(index.used)
            local = np.arange(used, used + n, dtype=np.int64)
            labels = g.labels
            if used + n > labels.shape[0]:
                grown = np.full(max(used + n, 2 * labels.shape[0]), -1, np.int32)
                grown[: labels.shape[0]] = labels
                g.labels = labels = grown  # published before any local beyond the old end
            labels[used : used + n] = slots
            index.add(vectors, slots=local)
        g.linked += n
        g.rows.append(np.asarray(local, np.int64))
        return local

    def _place(self, slots: np.ndarray, gid: int, local: np.ndarray) -> None:
        slots = np.asarray(slots, np.int64)
        if not slots.size:
            return
        need = int(slots.max()) + 1
        if need > self.where_g.shape[0]:
            size = max(need, 2 * self.where_g.shape[0], 1024)
            wg = np.full(size, -1, np.int32)
            wl = np.full(size, -1, np.int32)
            wg[: self.where_g.shape[0]] = self.where_g
            wl[: self.where_l.shape[0]] = self.where_l
            self.where_l = wl
            self.where_g = wg
        self.where_l[slots] = local
        self.where_g[slots] = gid
        self._bound = max(self._bound, need)

    def _group(self, slots: np.ndarray) -> list[tuple[Graph, np.ndarray]]:
        """``slots`` grouped by the graph that holds them: (graph, locals)."""
        if not slots.size:
            return []
        where_g, where_l = self.where_g, self.where_l
        slots = slots[slots < where_g.shape[0]]
        gids = where_g[slots]
        out = []
        for gid in np.unique(gids).tolist():
            g = self._by_gid.get(gid)
            if g is None:
                continue
            out.append((g, where_l[slots[gids == gid]].astype(np.int64)))
        return out

    def _split(self, slots: np.ndarray, vectors: np.ndarray, keys: np.ndarray | None):
        if keys is None or not self.partitioned:
            return [(slots, vectors, None)]
        out = []
        for key in np.unique(keys).tolist():
            sel = keys == key
            out.append((slots[sel], vectors[sel], int(key)))
        return out


def merge_top_k(
    lists: Sequence[tuple[np.ndarray, np.ndarray]], k: int, ascending: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge best-first top-k lists per row (``-1`` padded), dropping duplicate slots."""
    nq = lists[0][0].shape[0]
    slots = np.concatenate([np.asarray(s, np.int64) for s, _ in lists], axis=1)
    scores = np.concatenate([d for _, d in lists], axis=1).astype(np.float32)
    keys = scores if ascending else -scores
    keys = np.where(slots < 0, np.inf, keys)
    out_slots = np.full((nq, k), -1, np.int64)
    out_scores = np.full((nq, k), np.nan, np.float32)
    for row in range(nq):
        order = np.lexsort((slots[row], keys[row]))
        taken = 0
        seen: set[int] = set()
        for j in order.tolist():
            slot = int(slots[row, j])
            if slot < 0:
                break
            # a point being moved is in two lists; its two scores may differ in the last
            # bit (the kernels sum in different orders), so duplicates need not be adjacent
            if slot in seen:
                continue
            seen.add(slot)
            out_slots[row, taken] = slot
            out_scores[row, taken] = scores[row, j]
            taken += 1
            if taken == k:
                break
    return out_slots, out_scores
