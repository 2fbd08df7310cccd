"""The ingest pipeline: source -> decode -> batch -> ``Collection.apply`` (ops + offsets, one txn).

Two threads per pipeline:

* the **reader** polls the source, decodes each message on its own (bad ones
  become dead letters), and cuts a batch at once when the writer is idle
  (latency first), otherwise by size or by age, whichever comes first. The
  size target adapts: x0.8 when a batch took longer than the latency target,
  x1.1 when it took less than half of it, within bounds.
* the **writer** applies one batch at a time, in order: everything queued
  while it was busy, merged up to ``batch_max`` records (group commit), or,
  when nothing is queued, the reader's partial batch. It calls
  ``col.apply(ops, source_offsets=..., dead_letters=...)``: records, dead
  letters and each partition's last offset land in ONE durable transaction,
  and the call returns when they are searchable. Only then are the offsets
  committed upstream (Kafka, for lag tooling).

Between them is a queue bounded in records. When it is full the reader
pauses every partition (the source keeps its group membership alive) and
resumes them once the writer has drained it to half. Buffered records are
therefore bounded by ``max_queued_records + 2 * batch_max`` whatever the
producer does (``stats()["buffered_records_max"]`` shows the high-water mark).

Exactly-once: a partition always starts at the WAL's offset + 1 (the source
asks ``stored_offset`` on start and on every assignment); replays after a
crash re-apply whole batches, and upserts/deletes by id are idempotent.
On revoke the reader's partial batch and the queue are made durable before
the partitions are given away.

Text (format ``text``, a collection with an embedder): the writer embeds the
texts of a batch in one model call just before its ``apply``, so the WAL
transaction holds vectors (recovery never re-embeds) and the offsets commit
with them exactly once. A text the model cannot take becomes a dead letter;
``stats()["inference_ms"]`` shows the model's time per batch, apart from
``batch_latency_ms`` (the WAL transaction and apply).

Shutdown (``stop()``): the batch in flight and the queue are applied, the
last offsets committed upstream, and the source closed.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vdb import telemetry
from vdb.errors import DatabaseClosed, InvalidInput, NotFound
from vdb.ingest.formats import Decoder, PendingText
from vdb.ingest.source import Message, Source, TopicPartition
from vdb.types import DeadLetter, Delete, Upsert

log = logging.getLogger(__name__)

FRESHNESS_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)

_HANDLES: weakref.WeakSet[IngestHandle] = weakref.WeakSet()


def handles() -> list[IngestHandle]:
    """Every pipeline started in this process and not yet garbage (running or not)."""
    return sorted(_HANDLES, key=lambda h: h.started_at)


@dataclass(slots=True)
class _BatchTrace:
    """When a batch was polled and decoded (kept only while tracing is on), in epoch ns."""

    poll_start: int
    poll_end: int
    polls: int = 0
    decode_start: int = 0
    decode_ns: int = 0
    first_offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def merge(self, other: _BatchTrace) -> None:
        self.poll_start = min(self.poll_start, other.poll_start)
        self.poll_end = max(self.poll_end, other.poll_end)
        self.polls += other.polls
        self.decode_start = min(self.decode_start, other.decode_start)
        self.decode_ns += other.decode_ns
        for tp, offset in other.first_offsets.items():
            if offset < self.first_offsets.get(tp, offset + 1):
                self.first_offsets[tp] = offset


@dataclass(slots=True)
class _Batch:
    ops: list[Upsert | Delete] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)  # parallel to ops
    dead: list[DeadLetter] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    counts: dict[TopicPartition, int] = field(default_factory=dict)
    dead_counts: dict[TopicPartition, int] = field(default_factory=dict)
    started: float = 0.0
    trace: _BatchTrace | None = None

    def __len__(self) -> int:
        return len(self.ops) + len(self.dead)


class _Recent:
    """A ring of recent samples for percentiles."""

    def __init__(self, size: int) -> None:
        self.values = np.zeros(size, dtype=np.float64)
        self.n = 0

    def add(self, values: np.ndarray | float) -> None:
        values = np.atleast_1d(np.asarray(values, dtype=np.float64))
        size = len(self.values)
        if len(values) >= size:
            self.values[:] = values[-size:]
            self.n += len(values)
            return
        start = self.n % size
        end = start + len(values)
        if end <= size:
            self.values[start:end] = values
        else:
            cut = size - start
            self.values[start:] = values[:cut]
            self.values[: end - size] = values[cut:]
        self.n += len(values)

    def percentiles(self) -> dict[str, float | None]:
        k = min(self.n, len(self.values))
        if k == 0:
            return {"p50": None, "p90": None, "p99": None}
        p50, p90, p99 = np.percentile(self.values[:k], [50, 90, 99])
        return {
            "p50": round(float(p50), 3),
            "p90": round(float(p90), 3),
            "p99": round(float(p99), 3),
        }


class FreshnessHistogram:
    """Producer timestamp -> searchable, in milliseconds: buckets, count, sum, percentiles."""

    def __init__(self) -> None:
        self.edges = np.asarray(FRESHNESS_BUCKETS_MS, dtype=np.float64)
        self.counts = np.zeros(len(self.edges) + 1, dtype=np.int64)
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0
        self.recent = _Recent(4096)

    def observe(self, values_ms: np.ndarray) -> None:
        if len(values_ms) == 0:
            return
        values_ms = np.maximum(values_ms, 0.0)
        self.counts += np.bincount(
            np.searchsorted(self.edges, values_ms, side="left"), minlength=len(self.counts)
        )
        self.count += len(values_ms)
        self.sum_ms += float(values_ms.sum())
        self.max_ms = max(self.max_ms, float(values_ms.max()))
        self.recent.add(values_ms)

    def snapshot(self) -> dict[str, Any]:
        cumulative = np.cumsum(self.counts)
        buckets = {str(int(e)): int(c) for e, c in zip(self.edges, cumulative[:-1], strict=True)}
        buckets["+Inf"] = int(cumulative[-1])
        return {
            "buckets": buckets,
            "count": self.count,
            "sum_ms": round(self.sum_ms, 3),
            "max_ms": round(self.max_ms, 3),
            **{f"{k}_ms": v for k, v in self.recent.percentiles().items()},
        }


class _Rate:
    """Records per second over a sliding window."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.events: deque[tuple[float, int]] = deque()
        self.created = time.monotonic()

    def add(self, n: int, now: float) -> None:
        self.events.append((now, n))
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self.events and self.events[0][0] < now - self.window_s:
            self.events.popleft()

    def per_second(self, now: float) -> float:
        self._trim(now)
        span = min(self.window_s, max(now - self.created, 1e-3))
        return round(sum(n for _, n in self.events) / span, 3)


@dataclass(slots=True)
class _PartitionStats:
    offset: int | None = None
    records: int = 0
    dead_letters: int = 0
    batch_size_last: int = 0
    batch_latency_ms_last: float | None = None
    rate: _Rate = field(default_factory=_Rate)


class IngestHandle:
    """A running pipeline from one source into one collection.

    Also the ``Assignment`` the source calls back (``stored_offset``,
    ``revoked``, ``assigned``). Options (all keyword):

    ``format``            message format (default: the source's ``default_format``)
    ``key_format``        how keys become ids (``auto``, ``str``, ``int``, ``uint64be``)
    ``batch_max``         largest batch (1024); ``batch_min`` smallest target (16);
    ``batch_start``       initial size target (256)
    ``max_wait_ms``       a batch is cut when its oldest record is this old (20)
    ``eager``             cut a batch at once when the writer is idle (True: latency first;
                          False: only by size or age)
    ``latency_target_ms`` smoothed batch apply time the size target adapts to (100)
    ``max_queued_records`` queue bound before partitions are paused (4 x batch_max)
    ``max_rate``          records/s ceiling for this pipeline (None: unlimited)
    ``commit_interval_ms`` how often durable offsets are committed upstream (500)
    ``stop_at_end``       stop by itself when a bounded source is exhausted (True)
    ``store_documents``   text format: keep each text in its payload under ``"document"`` (True)
    ``drop_revoked``      scale-out (``serve --cluster``): a partition given away is freed
                          (points and stored offset, one WAL transaction, see
                          ``_drop_unassigned``) so a later assignment rebuilds it from the
                          topic's earliest offset (False)
    ``caught_up_lag``     an assigned partition reports ``catching_up`` until its lag is at
                          most this many records, then ``serving`` (100)
    """

    def __init__(self, db: Any, source: Source, collection: str, **options: Any) -> None:
        unknown = set(options) - _OPTIONS
        if unknown:
            raise InvalidInput(f"unknown ingest option(s): {', '.join(sorted(unknown))}")
        self.db = db
        self.source = source
        self.collection_name = collection
        self.collection = db.collection(collection)
        info = self.collection.info()
        self.format = options.get("format") or getattr(source, "default_format", "json")
        self.decoder = Decoder(
            self.format,
            dim=int(info["dim"]),
            metric=str(info.get("metric", "l2")),
            source=source.name,
            key_format=options.get("key_format") or "auto",
            embedder=info.get("embedder"),
            store_documents=bool(options.get("store_documents", True)),
        )
        if self.format == "text" and self.decoder.embedder:
            from vdb.embed import embedder_spec

            embedder_spec(self.decoder.embedder).check_available()  # fail now, not per message
        self.batch_max = int(options.get("batch_max") or 1024)
        self.batch_min = max(1, min(int(options.get("batch_min") or 16), self.batch_max))
        start = int(options.get("batch_start") or min(256, self.batch_max))
        self.batch_target = float(min(max(start, self.batch_min), self.batch_max))
        self.max_wait_s = float(options.get("max_wait_ms") or 20) / 1000.0
        self.latency_target_s = float(options.get("latency_target_ms") or 100) / 1000.0
        self.max_queued_records = int(options.get("max_queued_records") or 4 * self.batch_max)
        max_rate = options.get("max_rate")
        self.max_rate = float(max_rate) if max_rate else None
        self.commit_interval_s = float(options.get("commit_interval_ms") or 500) / 1000.0
        self.stop_at_end = bool(options.get("stop_at_end", True))
        self.eager = bool(options.get("eager", True))
        self.drop_revoked = bool(options.get("drop_revoked", False))
        self.caught_up_lag = int(options.get("caught_up_lag") or 100)
        self.name = f"{source.name}->{collection}"
        self.started_at = time.time()

        self._stop = threading.Event()
        self._done = threading.Event()
        self._reader_done = threading.Event()
        self._cond = threading.Condition()
        self._queue: deque[_Batch] = deque()
        self._queued_records = 0
        self._writer_busy = False
        self._pending = _Batch()
        self._pending_lock = threading.RLock()
        self._durable: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._paused = False
        self._assigned: list[TopicPartition] = []
        self._state = "starting"
        self._error: str | None = None
        self._serving: set[TopicPartition] = set()
        self._revoked_pending: set[TopicPartition] = set()
        self._dropped_partitions = 0

        self._records = 0
        self._upserts = 0
        self._deletes = 0
        self._dead_letters = 0
        self._batches = 0
        self._apply_errors = 0
        self._poll_errors = 0
        self._pause_events = 0
        self._resume_events = 0
        self._buffered_max = 0
        self._batch_size_last = 0
        self._batch_latency = _Recent(512)
        self._batch_latency_last: float | None = None
        self._last_dead_letters = 0
        self._latency_smooth: float | None = None
        self._rate = _Rate()
        self._freshness = FreshnessHistogram()
        self._inference = _Recent(512)
        self._inference_last: float | None = None
        self._texts_embedded = 0
        self._partitions: dict[TopicPartition, _PartitionStats] = {}
        self._stats_lock = threading.Lock()

        self._reader = threading.Thread(
            target=self._read_loop, name=f"vdb-ingest-read-{self.name}", daemon=True
        )
        self._writer = threading.Thread(
            target=self._write_loop, name=f"vdb-ingest-write-{self.name}", daemon=True
        )
        _HANDLES.add(self)
        self._writer.start()
        self._reader.start()

    # -- public ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    @property
    def error(self) -> str | None:
        """Why the pipeline failed (``None`` while healthy or after a clean stop)."""
        return self._error

    def stop(self, timeout: float | None = 60.0) -> None:
        """Drain the batch in flight and the queue, commit, close the source; wait for it."""
        if self._state in ("starting", "running"):
            self._state = "stopping"
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until the pipeline has stopped (by ``stop()``, end of input, or failure)."""
        return self._done.wait(timeout)

    def stats(self) -> dict[str, Any]:
        """A JSON-ready snapshot of the pipeline's figures (see the module docstring)."""
        now = time.monotonic()
        health = {}
        try:
            health = dict(self.source.health())
        except Exception as exc:  # a source must not break metrics
            health = {"connected": False, "errors": None, "last_error": str(exc)}
        try:
            ends = self.source.end_offsets()
        except Exception:
            ends = {}
        paused_now = set()
        paused_fn = getattr(self.source, "paused", None)
        if callable(paused_fn):
            try:
                paused_now = set(paused_fn())
            except Exception:
                paused_now = set()
        elif self._paused:
            paused_now = set(self._assigned)
        positions: dict[TopicPartition, int] = {}
        positions_fn = getattr(self.source, "positions", None)
        if callable(positions_fn):
            try:
                positions = dict(positions_fn())
            except Exception:
                positions = {}
        idle = not self._queued_records and not self._pending
        with self._stats_lock:
            assigned = set(self._assigned)
            partitions: dict[str, dict[str, Any]] = {}
            total_lag = 0
            lag_known = False
            for tp in sorted(set(self._partitions) | assigned):
                ps = self._partitions.get(tp) or _PartitionStats()
                end = ends.get(tp)
                lag = None
                if end is not None and tp in assigned:
                    lag = max(0, end - (ps.offset + 1 if ps.offset is not None else 0))
                    if idle and tp in positions:  # everything read is applied
                        lag = min(lag, max(0, end - positions[tp]))
                    total_lag += lag
                    lag_known = True
                if (
                    tp in assigned
                    and tp not in self._serving
                    and lag is not None
                    and lag <= self.caught_up_lag
                ):
                    self._serving.add(tp)
                if tp in assigned:
                    state = "serving" if tp in self._serving else "catching_up"
                else:
                    state = "unassigned"
                partitions[f"{tp[0]}/{tp[1]}"] = {
                    "topic": tp[0],
                    "partition": tp[1],
                    "assigned": tp in assigned,
                    "state": state,
                    "offset": ps.offset,
                    "end_offset": end,
                    "lag": lag,
                    "records": ps.records,
                    "records_per_s": ps.rate.per_second(now),
                    "dead_letters": ps.dead_letters,
                    "batch_size_last": ps.batch_size_last,
                    "batch_latency_ms_last": ps.batch_latency_ms_last,
                    "paused": tp in paused_now,
                }
            latency = self._batch_latency.percentiles()
            return {
                "name": self.name,
                "source": self.source.name,
                "kind": getattr(self.source, "kind", type(self.source).__name__),
                "collection": self.collection_name,
                "format": self.format,
                "state": self._state,
                "error": self._error,
                "connected": bool(health.get("connected", True)),
                "source_errors": (health.get("errors") or 0) + self._poll_errors,
                "last_source_error": health.get("last_error"),
                "offset_resets": health.get("offset_resets", 0),
                "apply_errors": self._apply_errors,
                "records": self._records,
                "upserts": self._upserts,
                "deletes": self._deletes,
                "dead_letters": self._dead_letters,
                "batches": self._batches,
                "records_per_s": self._rate.per_second(now),
                "batch_target": int(self.batch_target),
                "batch_size_last": self._batch_size_last,
                "batch_latency_ms": {
                    "last": self._batch_latency_last,
                    **{f"{k}": v for k, v in latency.items()},
                },
                "freshness_ms": self._freshness.snapshot(),
                "inference_ms": {"last": self._inference_last, **self._inference.percentiles()},
                "texts_embedded": self._texts_embedded,
                "paused": bool(paused_now) or self._paused,
                "pause_events": self._pause_events,
                "resume_events": self._resume_events,
                "pending_records": len(self._pending),
                "queued_records": self._queued_records,
                "max_queued_records": self.max_queued_records,
                "buffered_records_max": self._buffered_max,
                "lag": total_lag if lag_known else None,
                "dropped_partitions": self._dropped_partitions,
                "partitions": partitions,
            }

    def applied_offsets(self) -> dict[TopicPartition, int]:
        """Per assigned partition, the last offset durable and searchable (in memory, cheap)."""
        with self._stats_lock:
            return {
                tp: ps.offset
                for tp in self._assigned
                if (ps := self._partitions.get(tp)) is not None and ps.offset is not None
            }

    # -- Assignment (called by the source) ------------------------------------------

    def stored_offset(self, topic: str, partition: int) -> int | None:
        """The last offset the WAL holds for this partition of this source."""
        return self.db.source_offsets(self.source.name).get((topic, partition))

    def assigned(self, partitions: list[TopicPartition]) -> None:
        if self.drop_revoked:
            self._drop_unassigned(set(partitions))
        stored = self.db.source_offsets(self.source.name)
        with self._stats_lock:
            self._assigned = sorted(partitions)
            for tp in partitions:
                ps = self._partitions.setdefault(tp, _PartitionStats())
                ps.offset = stored.get(tp)

    def _drop_unassigned(self, keep: set[TopicPartition]) -> None:
        """Free every partition held (in the WAL or just revoked) that is not in ``keep``.

        Called on each assignment, so a partition that a rebalance revokes and
        hands straight back (kafka-python's eager protocol revokes everything
        first) keeps its points. For each partition given away, its points are
        deleted and its stored offset forgotten in ONE durable transaction
        (``Collection.drop_partition``). Partitions are told apart by number:
        a clustered collection is fed by one topic.
        """
        held = set(self.db.source_offsets(self.source.name)) | self._revoked_pending
        self._revoked_pending = set()
        for topic, partition in sorted(held - keep):
            try:
                deleted = self.collection.drop_partition(
                    partition, source_offsets_to_forget=[(self.source.name, topic, partition)]
                )
            except Exception as exc:  # closing; the next assignment tries again
                log.warning("%s: freeing %s[%d] failed: %s", self.name, topic, partition, exc)
                self._revoked_pending.add((topic, partition))
                continue
            self._dropped_partitions += 1
            with self._stats_lock:
                self._partitions.pop((topic, partition), None)
                self._durable.pop((topic, partition), None)
                self._serving.discard((topic, partition))
            self._committed.pop((topic, partition), None)
            log.info(
                "%s: %s[%d] is not ours any more: %d points and its offset freed",
                self.name,
                topic,
                partition,
                deleted,
            )

    def revoked(self, partitions: list[TopicPartition]) -> None:
        """Make everything read so far durable, then commit those partitions upstream."""
        with self._pending_lock:
            self._flush_pending()
        self._wait_drained(timeout=60.0)
        gone = set(partitions)
        with self._stats_lock:
            self._assigned = [tp for tp in self._assigned if tp not in gone]
            self._serving -= gone
        if self.drop_revoked:
            self._revoked_pending |= gone
        offsets = {tp: off for tp, off in self._durable_offsets().items() if tp in gone}
        if offsets:
            try:
                self.source.commit(offsets)
                self._committed.update(offsets)
            except Exception as exc:
                log.warning("%s: commit on revoke failed: %s", self.name, exc)

    # -- reader ----------------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            self.source.start(self)
            if self._state == "starting":
                self._state = "running"
            last_commit = time.monotonic()
            backoff = 0.1
            finished = getattr(self.source, "finished", None)
            while not self._stop.is_set():
                self._backpressure()
                with self._pending_lock:
                    pending = len(self._pending)
                    room = max(1, int(self.batch_target) - pending)
                    timeout = 0.1  # short enough for stop() to be prompt
                    if pending:
                        age_left = self._pending.started + self.max_wait_s - time.monotonic()
                        timeout = min(timeout, max(0.001, age_left))
                try:
                    poll_start = time.time_ns() if telemetry.enabled() else 0
                    messages = self.source.poll(room, timeout)
                    poll_end = time.time_ns() if poll_start else 0
                    backoff = 0.1
                except Exception as exc:
                    self._poll_errors += 1
                    log.warning("%s: poll failed (%s); retrying in %.1fs", self.name, exc, backoff)
                    self._stop.wait(backoff)
                    backoff = min(5.0, backoff * 2)
                    continue
                with self._pending_lock:
                    if messages:
                        self._add(messages, poll_start, poll_end)
                    batch = self._pending
                    # Latency first: an idle writer gets what there is now; while it is
                    # busy records accumulate (group commit) up to the size target or age.
                    if batch and (
                        (self.eager and not self._writer_busy)
                        or len(batch) >= int(self.batch_target)
                        or time.monotonic() - batch.started >= self.max_wait_s
                    ):
                        self._flush_pending()
                now = time.monotonic()
                if now - last_commit >= self.commit_interval_s:
                    last_commit = now
                    self._commit_upstream()
                if (
                    self.stop_at_end
                    and callable(finished)
                    and finished()
                    and not messages
                    and not self._pending
                ):
                    self._wait_drained(timeout=None)
                    break
            with self._pending_lock:
                self._flush_pending()
            self._wait_drained(timeout=None)
            self._commit_upstream()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            self._state = "failed"
            log.exception("%s: ingest reader failed", self.name)
        finally:
            try:
                self.source.close()
            except Exception as exc:
                log.warning("%s: closing the source: %s", self.name, exc)
            self._reader_done.set()
            with self._cond:
                self._cond.notify_all()
            self._writer.join()
            if self._state not in ("failed",):
                self._state = "stopped"
            self._done.set()

    def _add(self, messages: list[Message], poll_start: int = 0, poll_end: int = 0) -> None:
        batch = self._pending
        if not batch:
            batch.started = time.monotonic()
        decode_start = time.time_ns() if poll_start else 0
        decode = self.decoder
        for message in messages:
            op = decode(message)
            tp = (message.topic, message.partition)
            if isinstance(op, DeadLetter):
                batch.dead.append(op)
                batch.dead_counts[tp] = batch.dead_counts.get(tp, 0) + 1
            else:
                batch.ops.append(op)
                batch.messages.append(message)
            batch.counts[tp] = batch.counts.get(tp, 0) + 1
            if message.offset > batch.offsets.get(tp, -1):
                batch.offsets[tp] = message.offset
        if decode_start:
            self._note_trace(batch, messages, poll_start, poll_end, decode_start)
        self._note_buffered()

    @staticmethod
    def _note_trace(
        batch: _Batch, messages: list[Message], poll_start: int, poll_end: int, decode_start: int
    ) -> None:
        """Keep when this poll and its decoding happened, for the batch's span."""
        now = time.time_ns()
        trace = _BatchTrace(poll_start, poll_end, 1, decode_start, now - decode_start)
        for message in messages:
            tp = (message.topic, message.partition)
            if message.offset < trace.first_offsets.get(tp, message.offset + 1):
                trace.first_offsets[tp] = message.offset
        if batch.trace is None:
            batch.trace = trace
        else:
            batch.trace.merge(trace)

    def _flush_pending(self) -> None:
        """Move the partial batch to the queue (caller holds ``_pending_lock``)."""
        batch = self._pending
        if not batch:
            return
        self._pending = _Batch()
        with self._cond:
            self._queue.append(batch)
            self._queued_records += len(batch)
            self._cond.notify_all()
        self._note_buffered()

    def _note_buffered(self) -> None:
        buffered = self._queued_records + len(self._pending)
        if buffered > self._buffered_max:
            self._buffered_max = buffered

    def _backpressure(self) -> None:
        queued = self._queued_records
        if not self._paused and queued >= self.max_queued_records:
            self._paused = True
            self._pause_events += 1
            log.info("%s: writer behind (%d records queued): pausing partitions", self.name, queued)
        elif self._paused and queued <= self.max_queued_records // 2:
            self._paused = False
            self._resume_events += 1
            self.source.resume(self.source.assignment())
            log.info("%s: queue drained to %d records: resuming partitions", self.name, queued)
        if self._paused:
            # Re-applied every round: a rebalance hands over partitions unpaused.
            self.source.pause(self.source.assignment())

    def _wait_drained(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._writer_busy:
                if not self._writer.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    log.warning("%s: queue not drained within %.0fs", self.name, timeout)
                    return False
                self._cond.wait(0.1 if remaining is None else min(0.1, remaining))
        return True

    def _durable_offsets(self) -> dict[TopicPartition, int]:
        with self._stats_lock:
            return dict(self._durable)

    def _commit_upstream(self) -> None:
        durable = self._durable_offsets()
        changed = {tp: off for tp, off in durable.items() if self._committed.get(tp) != off}
        if not changed:
            return
        try:
            self.source.commit(changed)
            self._committed.update(changed)
        except Exception as exc:
            log.debug("%s: upstream commit failed (advisory): %s", self.name, exc)

    # -- writer ----------------------------------------------------------------------

    def _write_loop(self) -> None:
        if self.format == "text" and self.decoder.embedder:
            self._warm_embedder()
        while True:
            batch = self._take()
            if batch is None:
                return
            try:
                ok = self._apply(batch)
            except Exception as exc:
                ok = False
                self._error = f"{type(exc).__name__}: {exc}"
                self._state = "failed"
                log.exception("%s: ingest writer failed", self.name)
            with self._cond:
                self._queued_records -= len(batch)
                self._writer_busy = False
                self._cond.notify_all()
            if not ok:
                # Nothing of this batch is durable; drop the queue (a restart replays
                # from the WAL's offsets) and stop the reader.
                with self._cond:
                    self._queue.clear()
                    self._queued_records = 0
                    self._cond.notify_all()
                self._stop.set()
                return

    def _take(self) -> _Batch | None:
        """The next batch to apply: every queued batch up to ``batch_max`` records, merged.

        When nothing is queued the writer takes the reader's partial batch itself
        rather than waiting for its age. ``None`` once the reader is done and
        nothing is left. Marks the writer busy; the records stay counted in
        ``_queued_records`` until applied (back-pressure sees them).
        """
        while True:
            with self._cond:
                while not self._queue and not (self.eager and self._pending):
                    if self._reader_done.is_set():
                        return None
                    self._cond.wait(0.1)
                if self._queue:
                    self._writer_busy = True
                    return self._merge_queued()
            with self._pending_lock:  # lock order: _pending_lock, then _cond
                self._flush_pending()

    def _merge_queued(self) -> _Batch:
        """Pop queued batches, in order, up to ``batch_max`` records (caller holds ``_cond``)."""
        batch = self._queue.popleft()
        if not self._queue or len(batch) + len(self._queue[0]) > self.batch_max:
            return batch
        merged = _Batch(started=batch.started)
        while True:
            if batch.trace is not None:
                if merged.trace is None:
                    merged.trace = batch.trace
                else:
                    merged.trace.merge(batch.trace)
            merged.ops.extend(batch.ops)
            merged.messages.extend(batch.messages)
            merged.dead.extend(batch.dead)
            for tp, off in batch.offsets.items():
                if off > merged.offsets.get(tp, -1):
                    merged.offsets[tp] = off
            for tp, n in batch.counts.items():
                merged.counts[tp] = merged.counts.get(tp, 0) + n
            for tp, n in batch.dead_counts.items():
                merged.dead_counts[tp] = merged.dead_counts.get(tp, 0) + n
            if not self._queue or len(merged) + len(self._queue[0]) > self.batch_max:
                return merged
            batch = self._queue.popleft()

    def _warm_embedder(self) -> None:
        """Load the model before the first batch (its load is not that batch's latency)."""
        from vdb.embed import get_embedder

        try:
            get_embedder(self.decoder.embedder).embed(["warm up"])
        except Exception as exc:  # the batches will say what is wrong, as dead letters
            log.warning("%s: loading the embedder failed: %s", self.name, exc)

    def _embed(self, batch: _Batch) -> None:
        """Replace each ``PendingText`` of the batch by its vector: one model call for all.

        Runs before the batch's WAL transaction. If the batch call fails, the
        texts are embedded one by one and the ones that fail become dead
        letters (with the reason), so one bad text never stops the rest.
        """
        rows = [
            i
            for i, op in enumerate(batch.ops)
            if isinstance(op, Upsert) and isinstance(op.vector, PendingText)
        ]
        if not rows:
            return
        from vdb.embed.documents import embed_texts

        name = self.decoder.embedder
        started = time.monotonic()
        try:
            vectors = embed_texts(name, [batch.ops[i].vector.text for i in rows], "text")
            for i, vector in zip(rows, vectors, strict=True):
                batch.ops[i].vector = vector
        except Exception as exc:
            log.warning("%s: embedding a batch failed (%s); one text at a time", self.name, exc)
            failed: set[int] = set()
            for i in rows:
                try:
                    batch.ops[i].vector = embed_texts(name, [batch.ops[i].vector.text], "text")[0]
                except Exception as one:
                    failed.add(i)
                    message = batch.messages[i]
                    reason = f"cannot embed the text: {type(one).__name__}: {one}"
                    batch.dead.append(self.decoder.dead_letter(message, reason))
                    tp = (message.topic, message.partition)
                    batch.dead_counts[tp] = batch.dead_counts.get(tp, 0) + 1
            if failed:
                keep = [i for i in range(len(batch.ops)) if i not in failed]
                batch.ops = [batch.ops[i] for i in keep]
                batch.messages = [batch.messages[i] for i in keep]
        elapsed_ms = (time.monotonic() - started) * 1000.0
        with self._stats_lock:
            self._inference_last = round(elapsed_ms, 3)
            self._inference.add(elapsed_ms)
            self._texts_embedded += len(rows)

    def _apply(self, batch: _Batch) -> bool:
        """Apply one batch; while tracing, as a ``process <topic>`` span (see ``_traced_apply``)."""
        if not telemetry.enabled():
            return self._apply_batch(batch)
        return self._traced_apply(batch)

    def _traced_apply(self, batch: _Batch) -> bool:
        """The batch span: poll and decode children, the write under it, producer links.

        The span starts when the first poll of the batch started. Each applied
        message whose headers carry a ``traceparent`` adds a link to its
        producer's span (one per producer span, at most ``telemetry.MAX_LINKS``).
        The group commit the write causes becomes a child, through the context
        the write request carries.
        """
        trace = batch.trace
        topics = sorted({t for t, _ in batch.counts})
        links = []
        seen = set()
        for message in batch.messages:
            if not message.headers or len(links) >= telemetry.MAX_LINKS:
                continue
            link = telemetry.message_link(
                message.headers,
                {
                    "messaging.destination.name": message.topic,
                    "messaging.destination.partition.id": str(message.partition),
                    "messaging.kafka.offset": message.offset,
                },
            )
            if link is not None and link.context.span_id not in seen:
                seen.add(link.context.span_id)
                links.append(link)
        kind = str(getattr(self.source, "kind", "") or "ingest")
        attrs: dict[str, Any] = {
            "messaging.system": kind,
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.batch.message_count": len(batch),
            "db.system.name": "vdb",
            "db.collection.name": self.collection_name,
            "vdb.ingest.source": self.source.name,
            "vdb.ingest.records": len(batch.ops),
            "vdb.ingest.linked_producer_spans": len(links),
        }
        if len(topics) == 1:
            attrs["messaging.destination.name"] = topics[0]
        group = getattr(self.source, "group_id", None)
        if group:
            attrs["messaging.consumer.group.name"] = str(group)
        if len(batch.offsets) == 1:
            ((_, partition),) = batch.offsets
            attrs["messaging.destination.partition.id"] = str(partition)
        first = trace.first_offsets if trace is not None else {}
        attrs["vdb.ingest.offsets"] = [
            f"{t}/{p}:{first.get((t, p), last)}-{last}"
            for (t, p), last in sorted(batch.offsets.items())
        ]
        name = "process " + (topics[0] if len(topics) == 1 else self.source.name)
        start = trace.poll_start if trace is not None else None
        with telemetry.span(name, attrs, kind="consumer", links=links, start_time=start) as span:
            if trace is not None:
                telemetry.record_span(
                    "vdb.ingest.poll",
                    trace.poll_start,
                    trace.poll_end,
                    {"vdb.ingest.polls": trace.polls},
                )
                telemetry.record_span(
                    "vdb.ingest.decode",
                    trace.decode_start,
                    trace.decode_start + trace.decode_ns,
                    {"vdb.ingest.format": self.format, "messaging.batch.message_count": len(batch)},
                )
            ok = self._apply_batch(batch)
            span.set_attribute("vdb.ingest.dead_letters", self._last_dead_letters)
            span.set_attribute("vdb.ingest.applied", ok)
            return ok

    def _apply_batch(self, batch: _Batch) -> bool:
        offsets = {(self.source.name, t, p): off for (t, p), off in batch.offsets.items()}
        self._embed(batch)
        backoff = 0.1
        while True:
            started = time.monotonic()
            try:
                self.collection.apply(batch.ops, source_offsets=offsets, dead_letters=batch.dead)
                dead = batch.dead
                break
            except InvalidInput as exc:
                log.warning("%s: batch refused (%s); applying it record by record", self.name, exc)
                dead = self._apply_one_by_one(batch, offsets)
                break
            except DatabaseClosed:
                self._error = "database closed"
                return False
            except NotFound as exc:  # the collection was dropped
                self._error = f"{type(exc).__name__}: {exc}"
                self._state = "failed"
                log.error("%s: %s; ingest stops", self.name, exc)
                return False
            except Exception as exc:
                self._apply_errors += 1
                if self._stop.is_set() and self._apply_errors > 3:
                    raise
                log.warning("%s: apply failed (%s); retrying in %.1fs", self.name, exc, backoff)
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)
        elapsed = time.monotonic() - started
        self._last_dead_letters = len(dead)
        self._after_apply(batch, dead, elapsed)
        send = getattr(self.source, "send_dead_letters", None)
        if dead and callable(send):
            try:
                send(dead)
            except Exception as exc:
                log.warning("%s: dead-letter topic: %s", self.name, exc)
        if self.max_rate:
            pause = len(batch) / self.max_rate - (time.monotonic() - started)
            if pause > 0:
                time.sleep(pause)
        return True

    def _apply_one_by_one(
        self, batch: _Batch, offsets: dict[tuple[str, str, int], int]
    ) -> list[DeadLetter]:
        """The batch was refused whole (nothing written): find the bad records one by one."""
        dead = list(batch.dead)
        for op, message in zip(batch.ops, batch.messages, strict=True):
            try:
                self.collection.apply([op], source_offsets={}, dead_letters=[])
            except InvalidInput as exc:
                dead.append(self.decoder.dead_letter(message, str(exc)))
                tp = (message.topic, message.partition)
                batch.dead_counts[tp] = batch.dead_counts.get(tp, 0) + 1
        self.collection.apply([], source_offsets=offsets, dead_letters=dead)
        return dead

    def _after_apply(self, batch: _Batch, dead: list[DeadLetter], elapsed: float) -> None:
        now = time.monotonic()
        now_ms = time.time() * 1000.0
        stamps = [op.timestamp_ms for op in batch.ops if op.timestamp_ms is not None]
        upserts = sum(1 for op in batch.ops if isinstance(op, Upsert))
        applied_dead = len(dead) - len(batch.dead)
        with self._stats_lock:
            self._batches += 1
            self._records += len(batch)
            self._upserts += upserts - applied_dead
            self._deletes += len(batch.ops) - upserts
            self._dead_letters += len(dead)
            self._batch_size_last = len(batch)
            self._batch_latency_last = round(elapsed * 1000.0, 3)
            self._batch_latency.add(elapsed * 1000.0)
            self._rate.add(len(batch), now)
            if stamps:
                self._freshness.observe(now_ms - np.asarray(stamps, dtype=np.float64))
            for tp, n in batch.counts.items():
                ps = self._partitions.setdefault(tp, _PartitionStats())
                ps.records += n
                ps.dead_letters += batch.dead_counts.get(tp, 0)
                ps.batch_size_last = n
                ps.batch_latency_ms_last = round(elapsed * 1000.0, 3)
                ps.rate.add(n, now)
                ps.offset = batch.offsets[tp]
        with self._stats_lock:
            self._durable.update(batch.offsets)
        # Adapt on a smoothed latency so that one slow batch (a checkpoint, a busy
        # core) does not ratchet the target down; grow only on full batches.
        smooth = self._latency_smooth
        smooth = elapsed if smooth is None else 0.7 * smooth + 0.3 * elapsed
        self._latency_smooth = smooth
        if smooth > self.latency_target_s:
            self.batch_target = max(float(self.batch_min), self.batch_target * 0.8)
        elif smooth < self.latency_target_s / 2 and len(batch) >= int(self.batch_target) * 0.9:
            self.batch_target = min(float(self.batch_max), self.batch_target * 1.1)


_OPTIONS = {
    "format",
    "key_format",
    "batch_max",
    "batch_min",
    "batch_start",
    "max_wait_ms",
    "latency_target_ms",
    "max_queued_records",
    "max_rate",
    "commit_interval_ms",
    "stop_at_end",
    "eager",
    "store_documents",
    "drop_revoked",
    "caught_up_lag",
}


def start_ingest(db: Any, source: Source | str, collection: str, **options: Any) -> IngestHandle:
    """Start a pipeline from ``source`` into ``collection``; returns its handle at once.

    ``source`` is a ``Source`` or a registered kind name (then
    ``source_options={...}`` builds it). See ``IngestHandle`` for the options.
    """
    if isinstance(source, str):
        from vdb.ingest.source import create_source

        source = create_source(source, **(options.pop("source_options", None) or {}))
    return IngestHandle(db, source, collection, **options)
