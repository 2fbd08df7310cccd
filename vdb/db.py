"""The database: collections, the single writer (group commit), checkpoints, recovery.

``Database(path)`` opens or creates a data directory (an LMDB environment).
On open it loads each collection's latest checkpoint and replays the WAL
records after it. Writes from any thread go through one bounded queue to one
writer thread, which drains whatever is queued, writes it as ONE LMDB
transaction (WAL records + source offsets + dead letters), commits it with
LMDB's durable sync, applies it to the in-memory collections and only then
resolves the callers' futures: a write that returned is durable and
searchable. A background thread checkpoints collections (every
``checkpoint_interval_s`` seconds or every ``checkpoint_wal_bytes`` of WAL)
and removes the WAL records the checkpoint covers.
"""

from __future__ import annotations

import contextlib
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
import numpy as np

from vdb import telemetry
from vdb.collection import METRICS, Collection, WriteRequest, index_metric
from vdb.errors import (
    AlreadyExists,
    CollectionNotFound,
    CorruptData,
    DatabaseClosed,
    InvalidInput,
    StorageError,
    VdbError,
)
from vdb.ids import IdMap
from vdb.segments import DEFAULT_FRESH_LIMIT, Indexer
from vdb.types import DeadLetter
from vdb.wal import checkpoint as ckpt
from vdb.wal.store import DEFAULT_MAP_SIZE, Store, from_i64, from_u64, i64, pack, u64, unpack

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_STOP = object()
REPLAY_BATCH_OPS = 50_000  # ops per merged apply during WAL replay
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, float("inf"))


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


def index_storage(config: dict[str, Any], path: Any) -> dict[str, Any]:
    """HNSW keyword arguments from a collection config: quantization and the directory of the
    memory-mapped float vectors (the data directory)."""
    quant = config.get("quantization")
    return {
        "quantization": quant["type"] if quant else None,
        "quantile": quant["quantile"] if quant else None,
        "on_disk": str(path) if config.get("on_disk") else False,
    }


def _positive_int(value: Any, what: str, low: int = 1, high: int = 1 << 31) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | np.integer)
        or not low <= value <= high
    ):
        raise InvalidInput(f"{what} must be an integer in [{low}, {high}], got {value!r}")
    return int(value)


class _Stats:
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
    fresh_limit=n)`` sets it per collection), ``indexing`` (``False`` opens
    with the background indexer paused; see :meth:`pause_indexing`).
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
    ) -> None:
        self.path = Path(path)
        self.checkpoint_interval_s = checkpoint_interval_s
        self.checkpoint_wal_bytes = checkpoint_wal_bytes
        self.checkpoint_wal_ratio = checkpoint_wal_ratio
        self.max_group_ops = max_group_ops
        self.dead_letter_limit = dead_letter_limit
        self.fresh_limit = _positive_int(fresh_limit, "fresh_limit")
        self._closed = False
        self._poisoned: str | None = None
        self._stats = _Stats()
        self._collections: dict[str, Collection] = {}
        self._by_uid: dict[int, Collection] = {}
        self._covered: dict[int, int] = {}
        self._manifests: dict[int, dict[str, Any]] = {}
        self._write_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._last_seq = 0
        self._store = Store(self.path, map_size=map_size, max_map_size=max_map_size)
        self._indexer = Indexer(
            lambda: list(self._by_uid.values()), name=f"vdb-indexer:{self.path.name}"
        )
        try:
            self._recover()
            if warm:
                if self._collections:
                    _warm_scan()
                for col in self._collections.values():
                    # search kernels now; write kernels in the background, so that the
                    # first query after open does not wait for them
                    col._index.warm(background=True)
        except BaseException:
            self._store.close()
            raise
        if not indexing:
            self._indexer.pause()
        self._indexer.start()
        self._writer = threading.Thread(
            target=self._writer_loop, name=f"vdb-writer:{self.path.name}", daemon=True
        )
        self._writer.start()
        self._stop_checkpointer = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_loop, name=f"vdb-checkpoint:{self.path.name}", daemon=True
        )
        self._last_checkpoint_mono = time.monotonic()
        self._checkpointer.start()

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
        from vdb.filters import PayloadIndex
        from vdb.index import HNSW

        if loaded is None:
            index = HNSW(
                int(config["dim"]),
                metric=index_metric(config["metric"]),
                M=int(config["M"]),
                ef_construction=int(config["ef_construction"]),
                capacity=1024,
                seed=int(config["uid"]),
                ef=int(config["ef"]),
                **index_storage(config, self.path),  # quantization, floats on disk
            )
            ids = IdMap()
            payloads = PayloadIndex()
        else:
            try:
                index = HNSW.from_arrays(
                    loaded.arrays, on_disk=index_storage(config, self.path)["on_disk"]
                )
                ids = IdMap.from_state(loaded.slots, loaded.ids, loaded.partitions)
                payloads = PayloadIndex.from_items(loaded.payloads, indexes=loaded.payload_indexes)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise CorruptData(
                    f"checkpoint of collection {config['name']!r} cannot be loaded: {exc}"
                ) from exc
        col = Collection(self, config, index, ids, payloads)
        col._segs.fresh_limit = int(config.get("fresh_limit") or self.fresh_limit)
        col._segs.wake = self._indexer.wake
        if loaded is not None:
            try:
                col._segs.restore(loaded.fresh, np.asarray(loaded.slots, np.int64))
                col._spaces.restore(loaded.extra, np.asarray(loaded.slots, np.int64), self.path)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise CorruptData(
                    f"checkpoint of collection {config['name']!r} is inconsistent: {exc}"
                ) from exc
        return col

    def _recover(self) -> None:
        started = time.perf_counter()
        ckpt.remove_orphans(self._store)
        store = self._store
        with store.read() as txn:
            self._last_seq = store.last_seq(txn)
            configs = [unpack(v) for _, v in txn.cursor(db=store.db("collections"))]
            manifests = ckpt.read_manifests(store, txn)
            for config in configs:
                uid = int(config["uid"])
                manifest = manifests.get(uid)
                loaded = ckpt.load(store, txn, uid, manifest) if manifest else None
                col = self._new_collection(config, loaded)
                covered = int(manifest["covered_seq"]) if manifest else int(config["created_seq"])
                col.applied_seq = covered
                self._covered[uid] = covered
                if manifest:
                    self._manifests[uid] = manifest
                self._collections[config["name"]] = col
                self._by_uid[uid] = col
        start = min(self._covered.values(), default=self._last_seq)
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
                    col = self._by_uid.get(record.get("c"))
                    if col is None or seq <= self._covered[col.uid]:
                        continue
                    if col is not batch_col or batch_ops >= REPLAY_BATCH_OPS:
                        flush()
                        batch_col = col
                    batch.append((record, seq))
                    batch_ops += len(record.get("u") or ()) + len(record.get("d") or ()) + 1
                    replayed += 1
            flush()
        self._stats.recovery_s = time.perf_counter() - started
        self._stats.recovered_records = replayed
        log.info(
            "opened %s: %d collections, replayed %d WAL records in %.3fs",
            self.path,
            len(self._collections),
            replayed,
            self._stats.recovery_s,
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
        database's). ``quantization``: ``None``, ``"int8"`` or ``{"type":
        "int8", "quantile": 0.99, "always_ram": True}``: the graph walk runs on
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
        dim = _positive_int(dim, "dim", 1, 65536)
        if metric not in METRICS:
            raise InvalidInput(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        config = {
            "name": name,
            "dim": dim,
            "metric": metric,
            "M": _positive_int(M, "M", 2, 512),
            "ef_construction": _positive_int(ef_construction, "ef_construction", 1, 1 << 20),
            "ef": _positive_int(ef, "ef", 1, 1 << 20),
            "fresh_limit": None
            if fresh_limit is None
            else _positive_int(fresh_limit, "fresh_limit", 1, 1 << 31),
            "extra": extra,
            "created_at": time.time(),
        }
        if embedder is not None:
            config["embedder"] = embedder
        config.update(storage_config(quantization, on_disk))  # only keys that are set
        if named is not None:
            config.update(named)
        try:
            pack(config)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidInput(f"collection options cannot be stored: {exc}") from None
        col = self._submit(WriteRequest("create", extra={"config": config}))
        try:
            _warm_scan()
            col._index.warm()  # compile (or load) the kernels now, not on the first query
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

    def _writer_loop(self) -> None:
        stop = False
        while not stop:
            request = self._queue.get()
            if request is _STOP:
                break
            group = [request]
            ops = request.n_ops
            while ops < self.max_group_ops:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                group.append(nxt)
                ops += nxt.n_ops
            self._wait_for_room(group)
            try:
                self._process(group)
            except BaseException as exc:  # never let the writer die silently
                log.exception("writer failed on a group of %d requests", len(group))
                for r in group:
                    if not r.future.done():
                        r.future.set_exception(
                            exc
                            if isinstance(exc, VdbError)
                            else StorageError(f"write failed: {exc}")
                        )

    def _wait_for_room(self, group: list[WriteRequest]) -> None:
        """Hold the group while a collection it writes has a full fresh segment.

        Writers (HTTP requests, ingest batches) wait for their futures meanwhile,
        so the bound holds memory without refusing anything; Kafka partitions
        pause through the ingest queue's back-pressure.
        """
        seen = set()
        for r in group:
            col = r.collection
            if r.kind != "record" or col is None or col.uid in seen:
                continue
            seen.add(col.uid)
            segs = col._segs
            while segs.fresh_rows >= segs.fresh_limit and not col._dropped and not self._closed:
                if self._indexer.wait_below(segs, segs.fresh_limit, timeout=1.0):
                    break

    @telemetry.group_commit
    def _process(self, group: list[WriteRequest]) -> None:
        store = self._store
        with self._write_lock:

            def txn_fn(txn: lmdb.Transaction) -> list[tuple[str, Any]]:
                seq = store.last_seq(txn)
                outcomes: list[tuple[str, Any]] = []
                db_cols = store.db("collections")
                checked: set[int] = set()  # collections seen live in this transaction
                for r in group:
                    try:
                        if r.kind == "record":
                            col = r.collection
                            if col.uid not in checked:  # once per collection and group
                                raw = txn.get(col.name.encode(), db=db_cols)
                                if raw is None or unpack(raw)["uid"] != col.uid:
                                    raise CollectionNotFound(f"collection {col.name!r} was dropped")
                                checked.add(col.uid)
                            rec_seq = None
                            if r.data is not None:
                                seq += 1
                                rec_seq = seq
                                txn.put(u64(seq), r.data, db=store.db("wal"))
                            for (source, topic, partition), offset in r.source_offsets.items():
                                txn.put(
                                    pack([source, topic, partition]),
                                    i64(offset),
                                    db=store.db("offsets"),
                                )
                            for source, topic, partition in r.forget_offsets:
                                txn.delete(pack([source, topic, partition]), db=store.db("offsets"))
                            if r.dead_letters:
                                dl_db = store.db("deadletters")
                                for letter in r.dead_letters:
                                    n = store.next_counter(txn, b"dead_letter_seq")
                                    txn.put(u64(n), pack(_letter_dict(letter)), db=dl_db)
                                _trim(txn, dl_db, self.dead_letter_limit)
                            outcomes.append(("ok", rec_seq))
                        elif r.kind == "create":
                            config = dict(r.extra["config"])
                            key = config["name"].encode()
                            if txn.get(key, db=db_cols) is not None:
                                raise AlreadyExists(f"collection {config['name']!r} already exists")
                            config["uid"] = store.next_counter(txn, b"next_uid")
                            config["created_seq"] = seq
                            txn.put(key, pack(config), db=db_cols)
                            outcomes.append(("ok", config))
                        elif r.kind == "drop":
                            key = r.extra["name"].encode()
                            raw = txn.get(key, db=db_cols)
                            if raw is None:
                                outcomes.append(("ok", None))
                                continue
                            uid = unpack(raw)["uid"]
                            checked.discard(uid)
                            txn.delete(key, db=db_cols)
                            txn.delete(u64(uid), db=store.db("ckptman"))
                            ckpt.delete_prefix(txn, store.db("ckpt"), u64(uid))
                            outcomes.append(("ok", uid))
                        elif r.kind == "config":
                            col = r.collection
                            raw = txn.get(col.name.encode(), db=db_cols)
                            if raw is None or unpack(raw)["uid"] != col.uid:
                                raise CollectionNotFound(f"collection {col.name!r} was dropped")
                            config = unpack(raw)
                            if r.extra.get("ef") is not None:
                                config["ef"] = r.extra["ef"]
                            merged = {**(config.get("extra") or {}), **r.extra.get("extra", {})}
                            config["extra"] = {k: v for k, v in merged.items() if v is not None}
                            patch = r.extra.get("merge_metadata")
                            if patch is not None:
                                meta = {**(config["extra"].get("metadata") or {}), **patch}
                                meta = {k: v for k, v in meta.items() if v is not None}
                                if meta:
                                    config["extra"]["metadata"] = meta
                                else:
                                    config["extra"].pop("metadata", None)
                            txn.put(col.name.encode(), pack(config), db=db_cols)
                            outcomes.append(("ok", config))
                        else:
                            raise ValueError(f"unknown request kind {r.kind!r}")
                    except VdbError as exc:
                        outcomes.append(("error", exc))
                txn.put(b"last_seq", u64(seq), db=store.db("meta"))
                return outcomes

            try:
                with telemetry.span("vdb.wal.commit", {"db.operation.batch.size": len(group)}):
                    outcomes = store.write(txn_fn)
            except VdbError as exc:
                with self._stats.lock:
                    self._stats.txn_failures += 1
                for r in group:
                    r.future.set_exception(exc)
                return

            stats = self._stats
            with stats.lock:
                stats.txns += 1
                n_records = sum(
                    1
                    for r, (s, v) in zip(group, outcomes, strict=True)
                    if s == "ok" and r.kind == "record" and v is not None
                )
                nbytes = sum(
                    len(r.data)
                    for r, (s, v) in zip(group, outcomes, strict=True)
                    if s == "ok" and r.kind == "record" and v is not None
                )
                stats.wal_records += n_records
                stats.wal_bytes += nbytes
                stats.wal_bytes_since_checkpoint += nbytes
                size = sum(r.n_ops for r in group)
                stats.group_sizes.append(len(group))
                for bound in GROUP_BUCKETS:
                    if len(group) <= bound:
                        stats.group_buckets[bound] += 1
                        break
                if len(stats.group_sizes) > 1000:
                    del stats.group_sizes[:500]
                stats.group_max = max(stats.group_max, len(group))
                stats.group_total += len(group)
                stats.group_ops_max = max(stats.group_ops_max, size)

            # Consecutive committed records of one collection are applied together
            # (one merged index operation); their futures resolve after it.
            run: list[tuple[WriteRequest, int]] = []
            for r, (status, value) in zip(group, outcomes, strict=True):
                if status == "error":
                    r.future.set_exception(value)
                    continue
                if r.kind == "record" and value is not None:
                    if run and run[0][0].collection is not r.collection:
                        self._apply_run(run)
                        run = []
                    run.append((r, value))
                    continue
                if run:
                    self._apply_run(run)
                    run = []
                try:
                    if r.kind == "record":
                        r.future.set_result(
                            {"seq": self._last_seq, "deleted": 0, "upserted": 0, "updated": 0}
                        )
                    elif r.kind == "create":
                        col = self._new_collection(value, None)
                        col.applied_seq = value["created_seq"]
                        self._covered[col.uid] = value["created_seq"]
                        self._collections[col.name] = col
                        self._by_uid[col.uid] = col
                        r.future.set_result(col)
                    elif r.kind == "config":
                        r.collection.config = value
                        r.future.set_result(value)
                    elif r.kind == "drop":
                        if value is None:
                            r.future.set_result(False)
                            continue
                        col = self._by_uid.pop(value, None)
                        if col is not None:
                            col._dropped = True
                            self._collections.pop(col.name, None)
                        self._covered.pop(value, None)
                        self._manifests.pop(value, None)
                        r.future.set_result(True)
                except BaseException as exc:
                    log.exception("applying a committed %s request failed", r.kind)
                    self._poisoned = f"applying a committed write in memory failed: {exc}"
                    r.future.set_exception(
                        StorageError(
                            f"the write is durable but applying it in memory failed: {exc}; reopen to recover"
                        )
                    )
            if run:
                self._apply_run(run)

    @telemetry.traced("vdb.apply", telemetry.apply_attributes)
    def _apply_run(self, run: list[tuple[WriteRequest, int]]) -> None:
        """Apply committed records of one collection (seq order) and resolve their futures."""
        col = run[0][0].collection
        try:
            results = col._apply_records([(r.record, seq) for r, seq in run])
        except BaseException as exc:
            log.exception("applying %d committed records failed", len(run))
            self._poisoned = f"applying a committed write in memory failed: {exc}"
            error = StorageError(
                f"the write is durable but applying it in memory failed: {exc}; reopen to recover"
            )
            for r, _ in run:
                r.future.set_exception(error)
            return
        self._last_seq = max(self._last_seq, run[-1][1])
        self._indexer.wake()
        for (r, _), result in zip(run, results, strict=True):
            r.future.set_result(result)

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

    def _checkpoint_loop(self) -> None:
        while not self._stop_checkpointer.wait(0.5):
            try:
                if self._checkpoint_due():
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

    def _checkpoint_due(self, any_change: bool = False) -> bool:
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

    @telemetry.traced("vdb.checkpoint")
    def checkpoint(self) -> dict[str, Any]:
        """Checkpoint every changed collection now and remove the WAL records it covers.

        The writer is paused only while the in-memory state is copied;
        searches are never paused. Returns figures of the run.
        """
        if self._poisoned:
            raise StorageError(
                f"no checkpoint: memory may differ from the WAL ({self._poisoned}); reopen"
            )
        with self._checkpoint_lock:
            started = time.perf_counter()
            changed = [col for col in list(self._collections.values()) if self._changed(col)]
            with contextlib.ExitStack() as held:
                # The graphs first, each under its indexer lock only (the writer never
                # writes a graph, so it keeps running); the indexer waits until the
                # collection state is captured too, so graph and state agree.
                graphs = []
                named = []  # the named vectors' graphs, each under its own indexer lock
                for col in changed:
                    held.enter_context(col._segs.index_lock)
                    col._segs.dirty = False
                    graphs.append(col._index.to_arrays())  # copies
                    named.append(col._spaces.capture_graphs(held))
                pause_start = time.perf_counter()
                with self._write_lock:
                    seq = self._last_seq
                    captured = [
                        _capture(col, seq, arrays, extra)
                        for col, arrays, extra in zip(changed, graphs, named, strict=True)
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
        s = self._stats
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
                "group_commit_requests": _cumulative(s.group_buckets),
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
            self._closed = True
            self._queue.put(_STOP)
        self._writer.join()
        self._indexer.stop()
        self._stop_checkpointer.set()
        self._checkpointer.join()
        try:
            if checkpoint:
                self.checkpoint()
        except Exception:
            log.exception("final checkpoint failed; the WAL still holds every write")
        finally:
            self._store.close()


def _capture(
    col: Collection,
    seq: int,
    arrays: dict[str, np.ndarray],
    extra: dict[str, np.ndarray] | None = None,
) -> ckpt.Captured:
    """Copy a collection's state (the writer is paused by the caller; ``arrays`` is its
    graph, captured just before under the collection's indexer lock; ``extra`` its named
    vectors' graphs, to which their fresh rows and sparse indexes are added here)."""
    with col._apply_lock:
        fresh = col._segs.capture_fresh()
        extra = {**(extra or {}), **col._spaces.capture_rest()}
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
            extra=extra,
        )


def _warm_scan() -> None:
    from vdb.index import flat

    flat.warm()


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


def _cumulative(buckets: dict[float, int]) -> dict[str, int]:
    out, total = {}, 0
    for bound, count in buckets.items():
        total += count
        out["+Inf" if bound == float("inf") else str(int(bound))] = total
    return out


def _trim(txn: lmdb.Transaction, db: Any, limit: int) -> None:
    """Keep at most ``limit`` entries in ``db`` (deleting the oldest keys)."""
    excess = txn.stat(db)["entries"] - limit
    if excess <= 0:
        return
    cursor = txn.cursor(db=db)
    cursor.first()
    for _ in range(excess):
        if not cursor.delete():
            break


def _letter_dict(letter: DeadLetter) -> dict[str, Any]:
    return {
        "source": letter.source,
        "topic": letter.topic,
        "partition": letter.partition,
        "offset": letter.offset,
        "key": letter.key,
        "value": letter.value,
        "reason": letter.reason,
        "timestamp_ms": letter.timestamp_ms,
        "extra": letter.extra,
    }
