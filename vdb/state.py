"""What the writer, recovery and the checkpointer of one database share.

``State`` holds the LMDB store, the writer's lock, the collection registry
(by name and by uid, with the WAL position each collection's checkpoint
covers and its current manifest), the last committed sequence number and the
figures. ``vdb.db.Database`` creates it and hands it to ``vdb.commit``,
``vdb.recovery`` and ``vdb.checkpointer``, none of which imports ``vdb.db``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from vdb.collection import Collection
    from vdb.wal.store import Store

GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, float("inf"))


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.wal_records = 0
        self.wal_bytes = 0
        self.wal_bytes_since_checkpoint = 0
        self.txns = 0
        self.txn_failures = 0
        self.group_sizes: list[int] = []
        self.group_max = 0
        self.group_total = 0
        self.group_ops_max = 0
        self.group_buckets = dict.fromkeys(GROUP_BUCKETS, 0)
        self.checkpoints = 0
        self.last_checkpoint_at: float | None = None
        self.last_checkpoint_s: float | None = None
        self.last_checkpoint_pause_s: float | None = None
        self.max_checkpoint_pause_s = 0.0
        self.last_checkpoint_bytes: int | None = None
        self.last_checkpoint_bytes_written: int | None = None
        self.recovery_s = 0.0
        self.recovered_records = 0
        self.snapshots = 0

    def figures(self) -> dict[str, Any]:
        """The counters as ``Database.stats()`` reports them (one consistent read)."""
        s = self
        with s.lock:
            sizes = list(s.group_sizes)
            figures = {
                "wal_records_written": s.wal_records,
                "wal_bytes_written": s.wal_bytes,
                "wal_bytes_since_checkpoint": s.wal_bytes_since_checkpoint,
                "wal_txns_committed": s.txns,
                "wal_txn_failures": s.txn_failures,
                "group_commit_requests_total": s.group_total,
                "group_commit_max": s.group_max,
                "group_commit_mean": (s.group_total / s.txns) if s.txns else 0.0,
                "group_commit_max_ops": s.group_ops_max,
                # cumulative: transactions that grouped at most `le` requests
                "group_commit_requests": cumulative(s.group_buckets),
                "group_commit_recent_mean": float(np.mean(sizes)) if sizes else 0.0,
                "checkpoints": s.checkpoints,
                "last_checkpoint_at": s.last_checkpoint_at,
                "last_checkpoint_duration_s": s.last_checkpoint_s,
                "last_checkpoint_pause_s": s.last_checkpoint_pause_s,
                "max_checkpoint_pause_s": s.max_checkpoint_pause_s,
                "last_checkpoint_bytes": s.last_checkpoint_bytes,
                "last_checkpoint_bytes_written": s.last_checkpoint_bytes_written,
                "recovery_s": s.recovery_s,
                "recovered_records": s.recovered_records,
                "snapshots": s.snapshots,
            }
        return figures


class State:
    """The shared state of one open database (see the module docstring).

    ``write_lock`` is held by the writer for a whole group commit; holding it
    pauses the writer between two groups (the checkpointer's capture, the
    snapshot's read transaction). ``poisoned`` names why writes are refused
    (memory may differ from the WAL); ``closed`` is set once by ``close``.
    """

    def __init__(self, path: Path, store: Store) -> None:
        self.path = path
        self.store = store
        self.stats = Stats()
        self.write_lock = threading.Lock()
        self.collections: dict[str, Collection] = {}
        self.by_uid: dict[int, Collection] = {}
        self.covered: dict[int, int] = {}  # uid -> WAL seq its checkpoint covers
        self.manifests: dict[int, dict[str, Any]] = {}  # uid -> current checkpoint manifest
        self.last_seq = 0
        self.poisoned: str | None = None
        self.closed = False


def cumulative(buckets: dict[float, int]) -> dict[str, int]:
    out, total = {}, 0
    for bound, count in buckets.items():
        total += count
        out["+Inf" if bound == float("inf") else str(int(bound))] = total
    return out
