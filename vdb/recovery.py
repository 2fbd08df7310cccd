"""Opening a database: collections built from their checkpoints, then the WAL replayed.

``recover`` reads every collection's config and latest checkpoint (index
arrays, id map, payloads, fresh rows), builds the collections with
``new_collection``, and replays the WAL records after the oldest checkpoint
in large batches per collection (appended to the fresh segments; the
background indexer links them into the graphs later). It fills the
``vdb.state.State`` it is given and needs nothing of ``vdb.db``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vdb.collection import Collection, index_metric
from vdb.errors import CorruptData
from vdb.graphs import DEFAULT_SEAL_SIZE, Graphs
from vdb.ids import IdMap
from vdb.state import State
from vdb.wal import checkpoint as ckpt
from vdb.wal.store import from_u64, u64, unpack
from vdb.writer import Writer

log = logging.getLogger(__name__)

REPLAY_BATCH_OPS = 50_000  # ops per merged apply during WAL replay


def index_storage(config: dict[str, Any], path: Any) -> dict[str, Any]:
    """HNSW keyword arguments from a collection config: quantization and the directory of the
    memory-mapped float vectors (the data directory)."""
    quant = config.get("quantization")
    return {
        "quantization": quant["type"] if quant else None,
        "quantile": quant["quantile"] if quant else None,
        "on_disk": str(path) if config.get("on_disk") else False,
    }


def new_collection(
    db: Writer,
    config: dict[str, Any],
    loaded: ckpt.Loaded | None,
    *,
    path: Path,
    fresh_limit: int,
    wake: Callable[[], None],
    seal_size: int = DEFAULT_SEAL_SIZE,
) -> Collection:
    """A collection from its durable config and its checkpoint (``None``: a new, empty one).

    ``path`` is the data directory (memory-mapped float vectors live there),
    ``fresh_limit`` the database's default bound of the fresh segment,
    ``seal_size`` its default ``graph_seal_size`` (points linked into a graph before it is
    sealed) and ``wake`` the indexer's wake-up call. Raises ``CorruptData`` when the
    checkpoint cannot be loaded or its parts disagree.
    """
    from vdb.filters import PayloadIndex
    from vdb.index import HNSW

    seal = int(config.get("graph_seal_size") or seal_size)
    partitioned = bool(config.get("partition_segments"))

    def empty() -> HNSW:
        return HNSW(
            int(config["dim"]),
            metric=index_metric(config["metric"]),
            M=int(config["M"]),
            ef_construction=int(config["ef_construction"]),
            capacity=1024,
            seed=int(config["uid"]),
            ef=int(config["ef"]),
            **index_storage(config, path),  # quantization, floats on disk
        )

    if loaded is None:
        index = Graphs(empty(), seal_size=seal, partitioned=partitioned)
        ids = IdMap()
        payloads = PayloadIndex()
    else:
        try:
            index = Graphs.from_arrays(
                loaded.arrays,
                on_disk=index_storage(config, path)["on_disk"],
                adopt=True,
                seal_size=seal,
                partitioned=partitioned,
                template=empty() if "graphs" in loaded.arrays else None,
            )
            ids = IdMap.from_state(loaded.slots, loaded.ids, loaded.partitions)
            payloads = PayloadIndex.from_checkpoint(
                loaded.payloads, loaded.payload_indexes, loaded.extra
            )
            payloads.take_dirty()  # as checkpointed: the next checkpoint carries its parts
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise CorruptData(
                f"checkpoint of collection {config['name']!r} cannot be loaded: {exc}"
            ) from exc
    col = Collection(db, config, index, ids, payloads)
    col._segs.fresh_limit = int(config.get("fresh_limit") or fresh_limit)
    col._segs.wake = wake
    for segs in col._all_segments():  # named vectors' segments share the bound
        segs.fresh_limit = col._segs.fresh_limit
    if loaded is not None:
        try:
            col._segs.restore(loaded.fresh, np.asarray(loaded.slots, np.int64))
            col._spaces.restore(loaded.extra, np.asarray(loaded.slots, np.int64), path)
        except (ValueError, KeyError, TypeError, IndexError) as exc:
            raise CorruptData(
                f"checkpoint of collection {config['name']!r} is inconsistent: {exc}"
            ) from exc
    return col


def recover(
    state: State,
    new_collection: Callable[[dict[str, Any], ckpt.Loaded | None], Collection],
) -> None:
    """Load every collection's latest checkpoint into ``state`` and replay the WAL after it.

    ``new_collection(config, loaded)`` builds each collection. Replayed
    records are appended to the fresh segments (a memory copy); the indexer
    links them afterwards.
    """
    started = time.perf_counter()
    ckpt.remove_orphans(state.store)
    store = state.store
    with store.read(buffers=True) as txn:  # checkpoint chunks: no copy per get
        state.last_seq = store.last_seq(txn)
        configs = [unpack(v) for _, v in txn.cursor(db=store.db("collections"))]
        manifests = ckpt.read_manifests(store, txn)
        for config in configs:
            uid = int(config["uid"])
            manifest = manifests.get(uid)
            loaded = ckpt.load(store, txn, uid, manifest) if manifest else None
            col = new_collection(config, loaded)
            covered = int(manifest["covered_seq"]) if manifest else int(config["created_seq"])
            col.applied_seq = covered
            state.covered[uid] = covered
            if manifest:
                state.manifests[uid] = manifest
            state.collections[config["name"]] = col
            state.by_uid[uid] = col
    start = min(state.covered.values(), default=state.last_seq)
    replayed = 0
    # Replayed records are applied in big batches per collection (one merged,
    # parallel index operation per batch), not record by record.
    batch: list[tuple[dict[str, Any], int]] = []
    batch_col: Collection | None = None
    batch_ops = 0

    def flush() -> None:
        nonlocal batch, batch_col, batch_ops
        if batch_col is not None and batch:
            batch_col._apply_records(batch)
        batch, batch_col, batch_ops = [], None, 0

    with store.read() as txn:
        cursor = txn.cursor(db=store.db("wal"))
        if cursor.set_range(u64(start + 1)):
            for key, value in cursor:
                seq = from_u64(key)
                record = unpack(value)
                col = state.by_uid.get(record.get("c"))
                if col is None or seq <= state.covered[col.uid]:
                    continue
                if col is not batch_col or batch_ops >= REPLAY_BATCH_OPS:
                    flush()
                    batch_col = col
                batch.append((record, seq))
                batch_ops += len(record.get("u") or ()) + len(record.get("d") or ()) + 1
                replayed += 1
        flush()
    state.stats.recovery_s = time.perf_counter() - started
    state.stats.recovered_records = replayed
    log.info(
        "opened %s: %d collections, replayed %d WAL records in %.3fs",
        state.path,
        len(state.collections),
        replayed,
        state.stats.recovery_s,
    )
