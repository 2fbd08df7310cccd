"""Checkpoints: capture a collection's state, write it beside the WAL, install it.

``Checkpointer.checkpoint`` captures every changed collection (its graph
under the collection's indexer lock, the rest with the writer paused
between two groups), encodes and writes the blobs outside both locks
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
from vdb.state import State
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
        return col.applied_seq > self._covered.get(col.uid, 0) or col._segs.dirty

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
                graphs = []
                for col in changed:
                    held.enter_context(col._segs.index_lock)
                    col._segs.dirty = False
                    graphs.append(col._index.to_arrays())  # copies
                pause_start = time.perf_counter()
                with self._write_lock:
                    seq = self._state.last_seq
                    captured = [
                        capture(col, seq, arrays)
                        for col, arrays in zip(changed, graphs, strict=True)
                    ]
                    uids = [col.uid for col in self._collections.values()]
                    wal_bytes = self._stats.wal_bytes_since_checkpoint
                pause = time.perf_counter() - pause_start
            store = self._store
            new_manifests: dict[int, dict[str, Any]] = {}
            with store.read() as txn:
                gen_raw = txn.get(b"ckpt_gen", db=store.db("meta"))
            gen_base = from_u64(gen_raw) if gen_raw else 0
            try:
                for i, cap in enumerate(captured):
                    gen = gen_base + 1 + i
                    table = ckpt.write_blobs(
                        store, cap.uid, gen, ckpt.encode(cap), previous=self._manifests.get(cap.uid)
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
                        ckpt.delete_unreferenced(
                            txn, store, uid, ckpt.referenced_keys(uid, manifest)
                        )
                    else:
                        raw = txn.get(u64(uid), db=store.db("ckptman"))
                        manifest = (
                            unpack(raw)
                            if raw
                            else {"gen": 0, "data_seq": 0, "count": 0, "blobs": None}
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

            installed = store.write(install)
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


def capture(col: Collection, seq: int, arrays: dict[str, np.ndarray]) -> ckpt.Captured:
    """Copy a collection's state (the writer is paused by the caller; ``arrays`` is its
    graph, captured just before under the collection's indexer lock)."""
    with col._apply_lock:
        fresh = col._segs.capture_fresh()
        state = col._ids.to_state()
        payloads = _payload_copy(col._payloads)
        return ckpt.Captured(
            uid=col.uid,
            seq=seq,
            arrays=arrays,
            slots=state["slots"],
            ids=state["ids"],
            partitions=state["partitions"],
            payloads=payloads,
            count=len(col._ids),
            payload_indexes=col._payloads.indexes(),
            fresh=fresh,
        )


def _payload_copy(index: Any) -> dict[int, Any] | list[tuple[int, Any]]:
    """The payloads as ``{slot: payload}``: a shallow copy (one quick C-level dict copy).

    Payloads are replaced, never mutated, once handed to the payload index, so
    a shallow copy is a consistent capture; sorting and encoding happen later,
    outside the writer pause (``ckpt.encode``).
    """
    raw = getattr(index, "_payloads", None)
    if isinstance(raw, dict):
        return dict(raw)
    return list(index.items())
