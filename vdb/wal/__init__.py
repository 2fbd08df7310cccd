"""Durable storage: the LMDB environment, WAL records, checkpoints and snapshots."""

from __future__ import annotations

from vdb.wal.store import Store

__all__ = ["Store"]
