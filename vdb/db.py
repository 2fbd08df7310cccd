"""The database: collections, and the parts that keep them durable, wired together.

``Database(path)`` opens or creates a data directory (an LMDB environment).
Its rooms, each in a module of its own that knows nothing of this one:

* ``vdb.recovery``: on open, each collection's latest checkpoint is loaded and
  the WAL records after it are replayed;
* ``vdb.commit``: writes from any thread go through one bounded queue to one
  writer thread, which writes each group as ONE durable LMDB transaction,
  applies it in memory and only then resolves the callers' futures (a write
  that returned is durable and searchable);
* ``vdb.checkpointer``: a background thread checkpoints collections (every
  ``checkpoint_interval_s`` seconds or every ``checkpoint_wal_bytes`` of WAL)
  and removes the WAL records the checkpoint covers;
* ``vdb.segments.Indexer``: moves fresh points into the graphs.

They share one ``vdb.state.State`` (store, writer lock, collection registry).
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lmdb

from vdb import recovery, telemetry
from vdb.checkpointer import Checkpointer
from vdb.collection import METRICS, Collection, WriteRequest
from vdb.commit import STOP, GroupCommit
from vdb.errors import (
    CollectionNotFound,
    DatabaseClosed,
    InvalidInput,
    StorageError,
    VdbError,
)
from vdb.graphs import DEFAULT_SEAL_SIZE
from vdb.segments import DEFAULT_FRESH_LIMIT, Indexer
from vdb.state import State
from vdb.types import DeadLetter
from vdb.vectors import bounded_int
from vdb.wal import checkpoint as ckpt
from vdb.wal.store import DEFAULT_MAP_SIZE, Store, from_i64, pack, unpack

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
index_storage = recovery.index_storage  # re-exported: callers that build index options


def validate_name(name: Any) -> str:
    """Collection names: 1-255 of letters, digits, ``_ . -``; no path characters."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise InvalidInput(
            f"invalid collection name {name!r}: use 1-255 letters, digits, '_', '.', '-' "
            "(not starting with '.' or '-', no '/' or other path characters)"
        )
    return name


def storage_config(quantization: Any, on_disk: Any) -> dict[str, Any]:
    """The collection config keys of the index storage options (none when both are default)."""
    from vdb.index.quantizer import parse_config

    try:
        quant = parse_config(quantization)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if not isinstance(on_disk, bool):
        raise InvalidInput(f"on_disk must be a boolean, got {on_disk!r}")
    out: dict[str, Any] = {}
    if quant is not None:
        out["quantization"] = quant
    if on_disk:
        out["on_disk"] = True
    return out


class Database:
    """An open vdb data directory. Use as a context manager or call :meth:`close`.

    Options: ``map_size`` (initial LMDB map, grows by itself), ``max_map_size``
    (hard limit; beyond it writes raise ``StorageFull``),
    ``checkpoint_interval_s`` / ``checkpoint_wal_bytes`` (when background
    checkpoints run; ``None`` disables either trigger). By default the WAL
    trigger is a fixed bound (16 MB), whatever the size of the database, so
    the WAL a crash leaves to replay stays bounded (a few seconds); a
    checkpoint writes only the chunks that changed. ``checkpoint_wal_ratio``
    (default 0) makes the WAL trigger wait for at least that fraction of the
    last checkpoint's size instead (fewer checkpoints of a big database, a
    longer replay after a crash),
    ``queue_size`` (bound of the apply queue), ``max_group_ops`` (ops per
    group commit), ``dead_letter_limit`` (the oldest dead letters beyond it
    are dropped), ``warm`` (compile the index kernels on open),
    ``fresh_limit`` (default bound of a collection's fresh segment, in points:
    writes are durable and searchable at once and indexed in the background;
    at the bound writers wait for the indexer; ``create_collection(...,
    fresh_limit=n)`` sets it per collection), ``graph_seal_size`` (default points linked
    into one graph of a collection before it is sealed and a new one started; see
    ``vdb.graphs``; ``create_collection(..., graph_seal_size=n)`` sets it per collection),
    ``indexing`` (``False`` opens with the background indexer paused; see
    :meth:`pause_indexing`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int | None = None,
        checkpoint_interval_s: float | None = 60.0,
        checkpoint_wal_bytes: int | None = 16 << 20,
        checkpoint_wal_ratio: float = 0.0,
        queue_size: int = 1024,
        max_group_ops: int = 20000,
        dead_letter_limit: int = 100_000,
        warm: bool = True,
        fresh_limit: int = DEFAULT_FRESH_LIMIT,
        indexing: bool = True,
        graph_seal_size: int = DEFAULT_SEAL_SIZE,
    ) -> None:
        self.path = Path(path)
        self.fresh_limit = bounded_int(fresh_limit, "fresh_limit")
        self.graph_seal_size = bounded_int(graph_seal_size, "graph_seal_size")
        self._submit_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._store = Store(self.path, map_size=map_size, max_map_size=max_map_size)
        self._state = state = State(self.path, self._store)
        self._stats = state.stats
        self._write_lock = state.write_lock
        self._collections = state.collections
        self._by_uid = state.by_uid
        self._covered = state.covered
        self._manifests = state.manifests
        self._indexer = Indexer(
            lambda: list(self._by_uid.values()), name=f"vdb-indexer:{self.path.name}"
        )
        self._checkpointer = Checkpointer(
            state,
            interval_s=checkpoint_interval_s,
            wal_bytes=checkpoint_wal_bytes,
            wal_ratio=checkpoint_wal_ratio,
            name=f"vdb-checkpoint:{self.path.name}",
        )
        self._commit = GroupCommit(
            state,
            self._queue,
            self._indexer,
            lambda config: self._new_collection(config, None),
            max_group_ops=max_group_ops,
            dead_letter_limit=dead_letter_limit,
        )
        try:
            recovery.recover(state, self._new_collection)
            if warm:
                for col in self._collections.values():
                    # search kernels now; write kernels in the background, so that the
                    # first query after open does not wait for them (the index first: with
                    # VDB_COMPILE_CHILD=1 a child process compiles them on a cold cache, see
                    # vdb.index.hnsw, while this one compiles the fresh segments' scan)
                    col._index.warm(background=True)
                if self._collections:
                    _warm_scan()
        except BaseException:
            self._store.close()
            raise
        if not indexing:
            self._indexer.pause()
        self._indexer.start()
        self._writer = threading.Thread(
            target=self._commit.run, name=f"vdb-writer:{self.path.name}", daemon=True
        )
        self._writer.start()
        self._checkpointer.start()

    # -- the state the rooms share -----------------------------------------------------

    @property
    def _closed(self) -> bool:
        return self._state.closed

    @property
    def _poisoned(self) -> str | None:
        return self._state.poisoned

    @property
    def _last_seq(self) -> int:
        return self._state.last_seq

    @property
    def checkpoint_interval_s(self) -> float | None:
        return self._checkpointer.checkpoint_interval_s

    @property
    def checkpoint_wal_bytes(self) -> int | None:
        return self._checkpointer.checkpoint_wal_bytes

    @property
    def checkpoint_wal_ratio(self) -> float:
        return self._checkpointer.checkpoint_wal_ratio

    @property
    def max_group_ops(self) -> int:
        return self._commit.max_group_ops

    @property
    def dead_letter_limit(self) -> int:
        return self._commit.dead_letter_limit

    # -- context manager ---------------------------------------------------------

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Database({str(self.path)!r}, {state}, collections={sorted(self._collections)})"

    def _check_open(self) -> None:
        if self._closed:
            raise DatabaseClosed(f"database {self.path} is closed")

    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed WAL record."""
        return self._last_seq

    # -- recovery ------------------------------------------------------------------

    def _new_collection(self, config: dict[str, Any], loaded: ckpt.Loaded | None) -> Collection:
        return recovery.new_collection(
            self,
            config,
            loaded,
            path=self.path,
            fresh_limit=self.fresh_limit,
            wake=self._indexer.wake,
            seal_size=self.graph_seal_size,
        )

    # -- background indexing -------------------------------------------------------------

    def pause_indexing(self) -> None:
        """Stop moving fresh points into the graphs (after the current cycle).

        Writes stay durable and searchable (fresh points are scanned exactly) until a
        collection's fresh segment reaches its bound; then writers wait. For bulk loads
        that index afterwards, and for tests that need a fixed graph.
        """
        self._indexer.pause()

    def resume_indexing(self) -> None:
        self._indexer.resume()

    # -- collections ------------------------------------------------------------------

    def create_collection(
        self,
        name: str,
        dim: int | None = None,
        metric: str | None = None,
        M: int = 16,  # noqa: N803 - the HNSW parameter's usual name
        ef_construction: int = 128,
        ef: int = 64,
        fresh_limit: int | None = None,
        *,
        graph_seal_size: int | None = None,
        partition_segments: bool = False,
        embedder: str | None = None,
        quantization: Any = None,
        on_disk: bool = False,
        vectors: dict[str, Any] | None = None,
        sparse_vectors: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Collection:
        """Create a collection; raises ``AlreadyExists`` if the name is taken.

        ``metric`` defaults to cosine. ``embedder`` (e.g. ``"minilm"``, see
        ``vdb.embed``) lets the collection take text: ``dim`` and ``metric``
        then come from the model (explicit ones must agree) and the name is
        kept in the durable config. ``fresh_limit``: bound of the collection's
        fresh segment (points written but not yet indexed; default: the
        database's). ``graph_seal_size``: points linked into one graph before it is
        sealed (default: the database's). ``partition_segments``: each source partition of
        the points gets its own graphs, so a search restricted to partitions walks only
        theirs and ``drop_partition`` costs that partition's points. ``quantization``:
        ``None``, ``"int8"`` or ``{"type": "int8", "quantile": 0.99, "always_ram": True}``:
        the graph walk runs on
        int8 codes, rescored with the float vectors. ``on_disk``: keep the
        float vectors in a memory-mapped file (codes and graph stay in RAM).
        ``extra`` keyword arguments are stored with the collection's
        configuration (returned by ``info()["extra"]``). ``vectors`` /
        ``sparse_vectors``: named vectors (``vdb.vectors``), ``{name: {"dim",
        "metric", "M", "ef_construction", "quantization", "on_disk"}}`` and
        ``{name: {"modifier": None | "idf"}}``; the name ``""`` is the default
        vector (then ``dim`` and ``metric`` must not be given).
        """
        self._check_open()
        validate_name(name)
        from vdb.embed.documents import collection_embedder

        named: dict[str, Any] | None = None
        if vectors is not None or sparse_vectors is not None:
            from vdb.vectors import split_config

            if dim is not None or embedder is not None:
                raise InvalidInput("give dim (one vector) or vectors (named vectors), not both")
            default, dense, sparse = split_config(vectors, sparse_vectors, M, ef_construction)
            named = {"named": True, "vectors": dense, "sparse_vectors": sparse}
            if default is None:  # a placeholder default vector: never written
                named["default_vector"] = False
                default = {"dim": 1, "metric": "ip", "M": M, "ef_construction": ef_construction}
            dim, metric = default["dim"], default["metric"]
            M, ef_construction = default["M"], default["ef_construction"]  # noqa: N806
            quantization = default.get("quantization", quantization)
            on_disk = default.get("on_disk", on_disk)
        embedder, dim, metric = collection_embedder(embedder, dim, metric)
        dim = bounded_int(dim, "dim", 1, 65536)
        if metric not in METRICS:
            raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        config = {
            "name": name,
            "dim": dim,
            "metric": metric,
            "M": bounded_int(M, "M", 2, 512),
            "ef_construction": bounded_int(ef_construction, "ef_construction", 1, 1 << 20),
            "ef": bounded_int(ef, "ef", 1, 1 << 20),
            "fresh_limit": None
            if fresh_limit is None
            else bounded_int(fresh_limit, "fresh_limit", 1, 1 << 31),
            "extra": extra,
            "created_at": time.time(),
        }
        if embedder is not None:
            config["embedder"] = embedder
        if graph_seal_size is not None:  # only keys that are set: older configs stay as they were
            config["graph_seal_size"] = bounded_int(graph_seal_size, "graph_seal_size", 1, 1 << 31)
        if not isinstance(partition_segments, bool):
            raise InvalidInput(f"partition_segments must be a boolean, got {partition_segments!r}")
        if partition_segments:
            config["partition_segments"] = True
        config.update(storage_config(quantization, on_disk))  # only keys that are set
        if named is not None:
            config.update(named)
        try:
            pack(config)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"collection options cannot be stored: {exc}") from None
        col = self._submit(WriteRequest("create", extra={"config": config}))
        try:
            # the search kernels now, not on the first query; the write kernels in the
            # background (writes land in the fresh segment; its indexer waits for them), and
            # the index first (with VDB_COMPILE_CHILD=1 a child process compiles the write
            # kernels on a cold cache while this one compiles the searches and the scan)
            col._index.warm(background=True)
            _warm_scan()
        except Exception:  # warming is an optimisation only
            log.warning("warming the index of %s failed", name, exc_info=True)
        return col

    def collection(self, name: str) -> Collection:
        """The collection called ``name``; raises ``CollectionNotFound``."""
        self._check_open()
        col = self._collections.get(name)
        if col is None:
            raise CollectionNotFound(f"collection {name!r} not found")
        return col

    def get_collection(self, name: str) -> Collection:
        return self.collection(name)

    def has_collection(self, name: str) -> bool:
        self._check_open()
        return name in self._collections

    def list_collections(self) -> list[str]:
        """Names of the collections, sorted."""
        self._check_open()
        return sorted(self._collections)

    def drop_collection(self, name: str) -> bool:
        """Drop a collection and its data; returns False if it did not exist."""
        self._check_open()
        if not isinstance(name, str):
            raise InvalidInput(f"invalid collection name {name!r}")
        return self._submit(WriteRequest("drop", extra={"name": name}))

    def __iter__(self) -> Iterator[Collection]:
        return iter(list(self._collections.values()))

    # -- the writer ---------------------------------------------------------------------

    def _submit(self, request: WriteRequest) -> Any:
        with self._submit_lock:
            if self._closed:
                raise DatabaseClosed(f"database {self.path} is closed")
            if self._poisoned:
                raise StorageError(
                    f"writes are refused until the database is reopened ({self._poisoned}); "
                    "every acknowledged write is in the WAL"
                )
            telemetry.carry(request)  # the writer's span is a child of the caller's
            self._queue.put(request)
        return request.future.result()

    # -- ingest-facing API -------------------------------------------------------------------

    def source_offsets(self, source: str) -> dict[tuple[str, int], int]:
        """The stored offsets of ``source``: ``{(topic, partition): last applied offset}``."""
        self._check_open()
        out = {}
        with self._store.read() as txn:
            for key, value in txn.cursor(db=self._store.db("offsets")):
                src, topic, partition = unpack(key)
                if src == source:
                    out[(topic, int(partition))] = from_i64(value)
        return out

    def dead_letters(self, limit: int = 100, source: str | None = None) -> list[DeadLetter]:
        """The most recent ``limit`` dead letters (of ``source`` if given), oldest first."""
        self._check_open()
        out: list[DeadLetter] = []
        with self._store.read() as txn:
            cursor = txn.cursor(db=self._store.db("deadletters"))
            if cursor.last():
                for _, value in cursor.iterprev():
                    d = unpack(value)
                    if source is not None and d["source"] != source:
                        continue
                    out.append(DeadLetter(**d))
                    if len(out) >= limit:
                        break
        out.reverse()
        return out

    def ingest(self, source: Any, collection: str, **options: Any) -> Any:
        """Start tailing ``source`` into ``collection`` (see ``vdb.ingest.pipeline``)."""
        from vdb.ingest.pipeline import start_ingest

        return start_ingest(self, source, collection, **options)

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint_due(self, any_change: bool = False) -> bool:
        return self._checkpointer.due(any_change)

    @telemetry.traced("vdb.checkpoint")
    def checkpoint(self) -> dict[str, Any]:
        """Checkpoint every changed collection now and remove the WAL records it covers.

        The writer is paused only while the in-memory state is copied;
        searches are never paused. Returns figures of the run.
        """
        return self._checkpointer.checkpoint()

    # -- snapshots ----------------------------------------------------------------------------

    @telemetry.traced(
        "vdb.snapshot", lambda self, path, progress=None: {"vdb.snapshot.path": str(path)}
    )
    def snapshot(self, path: str | os.PathLike[str], progress: Any = None) -> dict[str, Any]:
        """Write a consistent hot snapshot of the whole database to one file; return its manifest."""
        self._check_open()
        from vdb.wal.snapshot import create_snapshot

        if not self._poisoned and self._checkpoint_due(any_change=True):
            # a restored snapshot then opens from a checkpoint, not by replaying the WAL
            try:
                self.checkpoint()
            except VdbError:  # the snapshot is still complete: it holds the WAL
                log.warning("checkpoint before the snapshot failed", exc_info=True)
        manifest = create_snapshot(
            self._store,
            path,
            self._describe_for_snapshot,
            pause=self._write_lock,
            progress=progress,
        )
        with self._stats.lock:
            self._stats.snapshots += 1
        return manifest

    def _describe_for_snapshot(self, _txn: Any) -> tuple[dict[str, dict[str, Any]], int]:
        # Called with the writer paused (between two groups), so the counts and the sequence
        # number are those of the snapshot's read transaction.
        collections = {
            name: {
                "uid": col.uid,
                "dim": col.dim,
                "metric": col.metric,
                "count": len(col),
                "M": col.config["M"],
                "ef_construction": col.config["ef_construction"],
                "ef": col.config["ef"],
            }
            for name, col in sorted(self._collections.items())
        }
        return collections, self.last_seq

    # -- figures ----------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Figures for monitoring (the HTTP ``/metrics`` endpoint reads these)."""
        figures = self._stats.figures()
        figures["last_seq"] = self._last_seq
        figures["apply_queue_depth"] = self._queue.qsize()
        figures["collections"] = {
            name: {
                "points": len(col),
                "dim": col.dim,
                "metric": col.metric,
                "applied_seq": col.applied_seq,
                "search_retries": col.search_retries,
                "search_locked": col.search_locked,
                **col._segs.stats(),
            }
            for name, col in list(self._collections.items())
        }
        if not self._closed:
            try:
                with self._store.read() as txn:
                    figures["wal_records_pending"] = txn.stat(self._store.db("wal"))["entries"]
                    figures["dead_letters"] = txn.stat(self._store.db("deadletters"))["entries"]
                    figures["source_offsets"] = txn.stat(self._store.db("offsets"))["entries"]
                figures["disk_bytes"] = self._store.disk_bytes()
                figures["map_size"] = self._store.map_size()
            except lmdb.Error:
                log.debug("LMDB figures unavailable", exc_info=True)
        return figures

    # -- closing ------------------------------------------------------------------------------------

    def close(self, checkpoint: bool = True) -> None:
        """Finish queued writes, checkpoint (unless told not to), and release the data directory.

        ``checkpoint=False`` closes at once; the next open replays the WAL.
        """
        with self._submit_lock:
            if self._closed:
                return
            self._state.closed = True
            self._queue.put(STOP)
        self._writer.join()
        self._indexer.stop()
        self._checkpointer.stop()
        try:
            if checkpoint:
                self.checkpoint()
        except Exception:
            log.exception("final checkpoint failed; the WAL still holds every write")
        finally:
            self._store.close()


_scan_codes_loader: list[threading.Thread] = []  # at most one per process
_scan_codes_lock = threading.Lock()


def _warm_scan() -> None:
    """The fresh segments' exact scan now; their scan on codes in a daemon thread, once per
    process: fresh rows are scanned on codes only once thousands have codes, and on a cold
    cache it compiles for about 7 s that a first search need not wait for (a search that
    needs it meanwhile waits for Numba's compile as it would without the thread)."""
    from vdb.index import flat

    flat.warm(codes=False)
    with _scan_codes_lock:
        if not _scan_codes_loader:
            loader = threading.Thread(target=_warm_scan_codes, name="vdb-warm-scan", daemon=True)
            loader.start()
            _scan_codes_loader.append(loader)


def _warm_scan_codes() -> None:
    from vdb.index import flat

    try:
        flat.warm_codes()
    except Exception:  # warming is an optimisation only; the first use compiles instead
        log.warning("warming the fresh segments' scan on codes failed", exc_info=True)
