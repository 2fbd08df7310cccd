"""The single writer: one thread, one bounded queue, one LMDB transaction per group.

Writes from any thread are queued as ``vdb.collection.WriteRequest`` objects.
``GroupCommit.run`` (the writer thread) drains whatever is queued (up to
``max_group_ops`` operations), writes it as ONE LMDB transaction (WAL records
+ source offsets + dead letters + collection configs), commits it with LMDB's
durable sync, applies it to the in-memory collections and only then resolves
the callers' futures: a write that returned is durable and searchable.

It holds ``State.write_lock`` for a whole group: whoever takes that lock
(the checkpointer's capture, a snapshot) pauses the writer between groups.
Creating a collection calls back ``new_collection(config)``, so this module
needs nothing of ``vdb.db``.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any

import lmdb

from vdb import telemetry
from vdb.collection import Collection, WriteRequest
from vdb.errors import AlreadyExists, CollectionNotFound, StorageError, VdbError
from vdb.segments import Indexer
from vdb.state import GROUP_BUCKETS, State
from vdb.types import DeadLetter
from vdb.wal import checkpoint as ckpt
from vdb.wal.store import i64, pack, u64, unpack

log = logging.getLogger(__name__)

STOP = object()  # queued by ``close``: the writer finishes what is before it and ends


class GroupCommit:
    """The writer thread's work (``run``); ``Database`` starts it and queues to ``queue``."""

    def __init__(
        self,
        state: State,
        requests: queue.Queue[Any],
        indexer: Indexer,
        new_collection: Callable[[dict[str, Any]], Collection],
        *,
        max_group_ops: int,
        dead_letter_limit: int,
    ) -> None:
        self._state = state
        self._store = state.store
        self._write_lock = state.write_lock
        self._stats = state.stats
        self._collections = state.collections
        self._by_uid = state.by_uid
        self._covered = state.covered
        self._manifests = state.manifests
        self._queue = requests
        self._indexer = indexer
        self.max_group_ops = max_group_ops
        self.dead_letter_limit = dead_letter_limit

        self._new_collection = new_collection

    def run(self) -> None:
        self._writer_loop()

    def _writer_loop(self) -> None:
        stop = False
        while not stop:
            request = self._queue.get()
            if request is STOP:
                break
            group, stop = self._gather(request)
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

    def _gather(self, first: Any) -> tuple[list[WriteRequest], bool]:
        """The next group, starting with ``first``: whatever is queued, up to
        ``max_group_ops`` operations; returns it and whether ``STOP`` came.

        A group never waits for writers that are not queued yet: concurrent writers
        queue while the previous group commits, so they share the next commit.
        """
        group = [first]
        ops = first.n_ops
        while ops < self.max_group_ops:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is STOP:
                return group, True
            group.append(nxt)
            ops += nxt.n_ops
        return group, False

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
            for segs in col._all_segments():  # the default vector's, then each named one's
                while (
                    segs.fresh_rows >= segs.fresh_limit
                    and not col._dropped
                    and not self._state.closed
                ):
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
                                    txn.put(u64(n), pack(letter_dict(letter)), db=dl_db)
                                trim(txn, dl_db, self.dead_letter_limit)
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
                            {"seq": self._state.last_seq, "deleted": 0, "upserted": 0, "updated": 0}
                        )
                    elif r.kind == "create":
                        col = self._new_collection(value)
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
                    self._state.poisoned = f"applying a committed write in memory failed: {exc}"
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
            self._state.poisoned = f"applying a committed write in memory failed: {exc}"
            error = StorageError(
                f"the write is durable but applying it in memory failed: {exc}; reopen to recover"
            )
            for r, _ in run:
                r.future.set_exception(error)
            return
        self._state.last_seq = max(self._state.last_seq, run[-1][1])
        self._indexer.wake()
        for (r, _), result in zip(run, results, strict=True):
            r.future.set_result(result)


def trim(txn: lmdb.Transaction, db: Any, limit: int) -> None:
    """Keep at most ``limit`` entries in ``db`` (deleting the oldest keys)."""
    excess = txn.stat(db)["entries"] - limit
    if excess <= 0:
        return
    cursor = txn.cursor(db=db)
    cursor.first()
    for _ in range(excess):
        if not cursor.delete():
            break


def letter_dict(letter: DeadLetter) -> dict[str, Any]:
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
