"""Checkpoints: capture a collection's state, write it beside the WAL, install it.

``Checkpointer.checkpoint`` captures every changed collection (the graphs
of each dense vector name under that name's indexer lock, the rest with the
writer paused between two groups), copying only what changed since the
previous checkpoint (``capture_graph``, ``capture``: the id-map and payload
parts touched, the growing graphs' chunks of relinked rows and their link
arrays whole; of a sealed graph written before, only its deleted flags: its
other blobs are carried by name, ``GraphCapture.carry``), encodes
and writes the blobs outside both locks
(``vdb.wal.checkpoint``: only chunks that changed are written), then
installs the new manifests and removes the WAL records they cover in one
LMDB transaction. A background thread (``start``) runs it every
``interval_s`` seconds or every ``wal_bytes`` of WAL. It works on the
``vdb.state.State`` it is given and needs nothing of ``vdb.db``.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

import lmdb
import numpy as np

from vdb.collection import Collection
from vdb.errors import StorageError, VdbError
from vdb.filters import COLUMNS_PREFIX
from vdb.state import State
from vdb.types import PART_SHIFT
from vdb.wal import checkpoint as ckpt
from vdb.wal.store import from_u64, pack, u64, unpack

log = logging.getLogger(__name__)


class Checkpointer:
    """When and how a database checkpoints (see the module docstring)."""

    def __init__(
        self,
        state: State,
        *,
        interval_s: float | None,
        wal_bytes: int | None,
        wal_ratio: float,
        name: str,
    ) -> None:
        self._state = state
        self._store = state.store
        self._write_lock = state.write_lock
        self._stats = state.stats
        self._collections = state.collections
        self._by_uid = state.by_uid
        self._covered = state.covered
        self._manifests = state.manifests
        self.checkpoint_interval_s = interval_s
        self.checkpoint_wal_bytes = wal_bytes
        self.checkpoint_wal_ratio = wal_ratio
        self._checkpoint_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._checkpoint_loop, name=name, daemon=True)
        self._last_checkpoint_mono = time.monotonic()

    def start(self) -> None:
        """Run background checkpoints until :meth:`stop`."""
        self._last_checkpoint_mono = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        """End the background thread (after a checkpoint it is running)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _checkpoint_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                if self.due():
                    self.checkpoint()
            except Exception:
                log.exception("background checkpoint failed")

    def _checkpoint_bytes(self) -> int:
        """Size of the current checkpoints (what the next one will roughly write)."""
        total = 0
        for manifest in list(self._manifests.values()):
            for meta in (manifest.get("blobs") or {}).values():
                total += int(meta["size"])
        return total

    def _changed(self, col: Collection) -> bool:
        """Written to (WAL) or re-indexed since its last checkpoint."""
        return col.applied_seq > self._covered.get(col.uid, 0) or col._vectors_dirty()

    def due(self, any_change: bool = False) -> bool:
        if not any(self._changed(col) for col in list(self._collections.values())):
            return False
        if any_change:
            return True
        if self.checkpoint_wal_bytes is not None and self._stats.wal_bytes_since_checkpoint >= max(
            self.checkpoint_wal_bytes, self.checkpoint_wal_ratio * self._checkpoint_bytes()
        ):
            return True
        if self.checkpoint_interval_s is not None:
            return time.monotonic() - self._last_checkpoint_mono >= self.checkpoint_interval_s
        return False

    def checkpoint(self) -> dict[str, Any]:
        """Checkpoint every changed collection now and remove the WAL records it covers.

        The writer is paused only while the in-memory state is copied;
        searches are never paused. Returns figures of the run.
        """
        if self._state.poisoned:
            raise StorageError(
                f"no checkpoint: memory may differ from the WAL ({self._state.poisoned}); reopen"
            )
        with self._checkpoint_lock:
            started = time.perf_counter()
            changed = [col for col in list(self._collections.values()) if self._changed(col)]
            with contextlib.ExitStack() as held:
                # The graphs first, each under its indexer lock only (the writer never
                # writes a graph, so it keeps running); the indexer waits until the
                # collection state is captured too, so graph and state agree.
                graphs: list[list[GraphCapture]] = []  # per collection: default, named
                for col in changed:
                    old = (self._manifests.get(col.uid) or {}).get("blobs") or {}
                    taken = []
                    for root, prefix, segs in graph_segments(col):
                        held.enter_context(segs.index_lock)
                        segs.dirty = False
                        taken.append(capture_graph(segs, old, root, prefix))
                    graphs.append(taken)
                with self._write_lock:
                    # the writer's pause: from when it is held (until then the writer may
                    # still be finishing a group, which is not a pause)
                    pause_start = time.perf_counter()
                    seq = self._state.last_seq
                    captured = [
                        capture(
                            col,
                            seq,
                            taken[0].arrays,
                            full=not _has_parts(self._manifests.get(col.uid)),
                            extra={k: v for named in taken[1:] for k, v in named.arrays.items()},
                            columns_full=not _has_columns(self._manifests.get(col.uid)),
                        )
                        for col, taken in zip(changed, graphs, strict=True)
                    ]
                    uids = [col.uid for col in self._collections.values()]
                    wal_bytes = self._stats.wal_bytes_since_checkpoint
                pause = time.perf_counter() - pause_start
            try:
                installed, new_manifests = self._write(
                    captured, uids, seq, started, [[n for g in t for n in g.carry] for t in graphs]
                )
            except BaseException:
                # what was captured is still to be written by the next checkpoint
                for col, cap, taken in zip(changed, captured, graphs, strict=True):
                    col._ids.dirty.update(cap.id_parts)
                    col._payloads.mark_dirty(cap.payload_parts)
                    for graph in taken:
                        graph.segs.mark_graph_rows(graph.rows)
                raise
            for taken in graphs:  # sealed graphs now in the checkpoint: carried from now on
                for graph in taken:
                    for g, params, saved in graph.sealed:
                        g.params, g.saved, g.persisted = params, saved, True
            with self._write_lock:
                for uid, manifest in installed.items():
                    if uid in self._by_uid:
                        self._covered[uid] = int(manifest["covered_seq"])
                        self._manifests[uid] = manifest
            duration = time.perf_counter() - started

            stats = self._stats
            with stats.lock:
                stats.checkpoints += 1
                stats.wal_bytes_since_checkpoint = max(
                    0, stats.wal_bytes_since_checkpoint - wal_bytes
                )
                stats.last_checkpoint_at = time.time()
                stats.last_checkpoint_s = duration
                stats.last_checkpoint_pause_s = pause
                stats.last_checkpoint_bytes_written = sum(
                    int(meta.get("written_bytes", meta["size"]))
                    for manifest in new_manifests.values()
                    for meta in manifest["blobs"].values()
                )
                stats.last_checkpoint_bytes = sum(
                    int(meta["size"])
                    for manifest in new_manifests.values()
                    for meta in manifest["blobs"].values()
                )
                stats.max_checkpoint_pause_s = max(stats.max_checkpoint_pause_s, pause)
            self._last_checkpoint_mono = time.monotonic()
            log.info(
                "checkpoint at seq %d: %d collections written in %.3fs (writer paused %.4fs)",
                seq,
                len(captured),
                duration,
                pause,
            )
            return {
                "seq": seq,
                "collections": len(captured),
                "duration_s": duration,
                "pause_s": pause,
            }

    def _write(
        self,
        captured: list[ckpt.Captured],
        uids: list[int],
        seq: int,
        started: float,
        carries: list[list[str]],
    ) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, Any]]]:
        """Encode and write the captured states (no lock held), then install the manifests
        and truncate the WAL in one transaction. Returns (installed, new manifests)."""
        store = self._store
        new_manifests: dict[int, dict[str, Any]] = {}
        with store.read() as txn:
            gen_raw = txn.get(b"ckpt_gen", db=store.db("meta"))
        gen_base = from_u64(gen_raw) if gen_raw else 0
        try:
            for i, cap in enumerate(captured):
                gen = gen_base + 1 + i
                table = ckpt.write_blobs(
                    store,
                    cap.uid,
                    gen,
                    ckpt.encode(cap),
                    previous=self._manifests.get(cap.uid),
                    # exact blob names of sealed graphs: a prefix of no other blob's name
                    carry=(*ckpt.PART_PREFIXES, *carries[i]),
                )
                new_manifests[cap.uid] = ckpt.new_manifest(gen, cap, table, started)
        except BaseException:
            # e.g. the disk filled up: give the space of the partial checkpoint back
            try:
                ckpt.remove_orphans(store)
            except VdbError:
                log.warning("could not remove a partial checkpoint", exc_info=True)
            raise

        def install(txn: lmdb.Transaction) -> dict[int, dict[str, Any]]:
            installed = {}
            txn.put(b"ckpt_gen", u64(gen_base + len(captured)), db=store.db("meta"))
            live = {unpack(v)["uid"] for _, v in txn.cursor(db=store.db("collections"))}
            for uid in uids:
                if uid not in live:
                    continue
                manifest = new_manifests.get(uid)
                if manifest is not None:
                    ckpt.delete_unreferenced(txn, store, uid, ckpt.referenced_keys(uid, manifest))
                else:
                    raw = txn.get(u64(uid), db=store.db("ckptman"))
                    manifest = (
                        unpack(raw) if raw else {"gen": 0, "data_seq": 0, "count": 0, "blobs": None}
                    )
                    manifest["covered_seq"] = seq
                txn.put(u64(uid), pack(manifest), db=store.db("ckptman"))
                installed[uid] = manifest
            # Chunks of collections dropped meanwhile.
            for uid in new_manifests:
                if uid not in live:
                    ckpt.delete_prefix(txn, store.db("ckpt"), u64(uid))
            ckpt.truncate_wal(txn, store, seq)
            return installed

        return store.write(install), new_manifests


GRAPH_VIEWS = ("vectors", "codes", "terms")  # per-point rows that change only when relinked


def _has_parts(manifest: dict[str, Any] | None) -> bool:
    """Whether ``manifest`` keeps the id map and payloads in parts of this size (so the
    parts not touched since can be carried over)."""
    return bool(manifest and manifest.get("blobs")) and manifest.get("parts") == PART_SHIFT


def _has_columns(manifest: dict[str, Any] | None) -> bool:
    """Whether ``manifest`` holds the payload-index columns (older checkpoints do not)."""
    blobs = (manifest or {}).get("blobs") or {}
    return f"x/{COLUMNS_PREFIX}meta" in blobs and manifest.get("parts") == PART_SHIFT


class GraphCapture:
    """What ``capture_graph`` took of one vector name's graphs: the arrays, the segments
    and rows to give back if the checkpoint fails, the blob names carried unchanged
    (sealed graphs written before) and the sealed graphs written whole (carried from the
    next checkpoint on)."""

    __slots__ = ("segs", "arrays", "rows", "carry", "sealed")

    def __init__(
        self, segs: Any, arrays: dict[str, Any], rows: Any, carry: list[str], sealed: list[Any]
    ) -> None:
        self.segs, self.arrays, self.rows, self.carry, self.sealed = (
            segs, arrays, rows, carry, sealed,
        )  # fmt: skip


def graph_segments(col: Collection) -> list[tuple[str, str, Any]]:
    """``(root, prefix, segments)`` of every dense vector name of ``col``: its graph arrays
    are the blobs ``root + prefix + name``. The default vector's are ``index/<name>``
    (``Captured.arrays``), the other names' ``x/d{i}/index/<name>`` (``Captured.extra``,
    ``vdb.vectors``)."""
    return [("index/", "", col._segs)] + [
        ("x/", prefix, segs) for prefix, segs in col._spaces.graph_segments()
    ]


def capture_graph(
    segs: Any, old: dict[str, Any], root: str = "index/", prefix: str = ""
) -> GraphCapture:
    """The graph arrays of one vector name (the caller holds ``segs.index_lock``, so no
    link changes), keyed ``prefix + name``; ``old``: the previous manifest's blob table,
    where they are ``root + prefix + name``.

    A sealed graph already in the previous checkpoint is carried: its vectors, links and
    labels are neither copied nor written again, only its deleted flags, free list and
    parameters (a few bytes per point). Of a growing graph the per-point arrays
    (``GRAPH_VIEWS``, labels) are not copied whole: only the chunks holding rows relinked
    since the previous checkpoint, and its last chunk onwards (appends), are copied; the
    rest are that checkpoint's chunks. Its link arrays are copied whole (inserts rewrite
    neighbours' lists all over the graph). One graph keeps the names it always had.
    """
    graphs = segs.index
    rows = segs.take_graph_rows()
    arrays: dict[str, Any] = {}
    carry: list[str] = []
    sealed: list[Any] = []
    listed = graphs.graphs
    if not (len(listed) == 1 and listed[0].identity and not listed[0].sealed):
        arrays[prefix + "graphs"] = graphs.meta()
    for g in listed:
        p = prefix + g.prefix()
        if g.sealed and g.persisted and g.params is not None:
            names = [f"{root}{p}{n}" for n in (*IMMUTABLE, "labels") if n in g.saved]
            if all(name in old for name in names):
                live = g.index.live_mask()[: int(g.index.used)]
                params = g.params.copy()
                params[13] = len(g.index)  # live points: what deletes change of the parameters
                arrays[p + "params"] = params
                arrays[p + "deleted"] = (~live).astype(np.uint8)
                arrays[p + "free"] = np.flatnonzero(~live).astype(np.int32)
                carry.extend(names)
                continue
        own = g.index.to_arrays(views=GRAPH_VIEWS)
        if g.labels is not None:
            own["labels"] = g.labels[: int(g.index.used)]
        _partial(own, root + p, rows.get(g.gid, np.zeros(0, np.int64)), old)
        if g.sealed:
            sealed.append((g, own["params"].copy(), sorted(own)))
        arrays.update({p + k: v for k, v in own.items()})
    return GraphCapture(segs, arrays, rows, carry, sealed)


IMMUTABLE = ("vectors", "links0", "upper", "upper_off", "levels", "codes", "terms", "quantizer")


def _partial(own: dict[str, Any], p: str, rows: np.ndarray, old: dict[str, Any]) -> None:
    """Replace the per-point arrays of one graph (blobs ``p + name``) by their changed
    chunks (see above)."""
    refit = False
    if "quantizer" in own:  # a refit re-codes every slot
        meta = old.get(f"{p}quantizer")
        refit = meta is None or meta.get("chunk_digests") != [
            ckpt.digest(np.ascontiguousarray(own["quantizer"]).tobytes())
        ]
    for name in (*GRAPH_VIEWS, "labels"):
        arr = own.get(name)
        if arr is None:
            continue
        meta = old.get(f"{p}{name}")
        if (
            meta is None
            or meta.get("hash") != ckpt.HASH
            or meta.get("dtype") != arr.dtype.str
            or list(meta.get("shape", [])[1:]) != list(arr.shape[1:])
            or (name in ("codes", "terms") and refit)
        ):
            own[name] = arr.copy()
        else:
            own[name] = ckpt.partial_array(arr, rows, int(meta["chunks"]))


def capture(
    col: Collection,
    seq: int,
    arrays: dict[str, Any],
    full: bool = False,
    extra: dict[str, Any] | None = None,
    columns_full: bool = True,
) -> ckpt.Captured:
    """Copy what changed of a collection's state since its last checkpoint (the writer is
    paused by the caller; ``arrays`` is its graph, captured just before under the
    collection's indexer lock). ``full``: every part (no previous checkpoint to carry from).

    O(changed): the id-map and payload parts touched since the last capture (slices and
    references), the fresh rows' slot column; nothing is encoded here. ``extra``: the named
    vectors' graphs (``capture_graph`` of each, under its own indexer lock), to which their
    fresh rows and the sparse indexes are added here, and the payload-index columns of the payload parts
    taken (every part when ``columns_full``: the previous checkpoint has none).
    """
    with col._apply_lock:
        fresh = col._segs.capture_fresh()
        id_parts = col._ids.take_dirty()
        payload_parts = col._payloads.take_dirty()
        if full:
            id_parts |= col._ids.all_parts()
            payload_parts |= id_parts
        return ckpt.Captured(
            uid=col.uid,
            seq=seq,
            arrays=arrays,
            count=len(col._ids),
            id_parts=col._ids.capture_parts(id_parts),
            payload_parts=col._payloads.capture_parts(payload_parts, ckpt.MISSING),
            payload_indexes=col._payloads.indexes(),
            fresh=fresh,  # its rows are gathered by ``encode``, outside the locks
            part_shift=PART_SHIFT,
            extra={
                **(extra or {}),
                **col._spaces.capture_rest(),
                **col._payloads.capture_columns(payload_parts, full=full or columns_full),
            },
        )
