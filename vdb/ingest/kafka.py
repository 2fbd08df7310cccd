"""``KafkaSource``: topics read with kafka-python, positioned by the WAL, never by Kafka.

With a ``group_id`` the partitions are split among the members of the
consumer group; a rebalance listener asks the pipeline to make everything
read so far durable before partitions are given away (``revoked``), and
seeks every newly assigned partition to the offset stored in the WAL + 1
(``assigned``). Without a group every partition of the topics is read.
Partitions with nothing in the WAL start at the beginning of the log
(``auto_offset_reset="earliest"``) or at its end (``"latest"``); Kafka's
committed offsets are written after each WAL commit for lag tooling and are
never read back.

If the broker loses its log (a topic re-created, a broker without durable
storage restarted) the log end falls behind our position; the source notices
it from the high-water mark, logs a warning and rewinds that partition to the
beginning of the new log (counted as ``offset_resets``).

Broker outages: kafka-python reconnects with exponential backoff
(``reconnect_backoff_ms`` .. ``reconnect_backoff_max_ms``); a small monitor
thread probes the bootstrap servers with the same kind of backoff so that
``health()`` (and the pipeline's metrics) says whether the broker is
reachable, and logs each transition once.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterable
from typing import Any

from kafka import ConsumerRebalanceListener

from vdb.errors import InvalidInput
from vdb.ingest.source import Assignment, Message, TopicPartition
from vdb.types import DeadLetter

log = logging.getLogger(__name__)

ISOLATION_LEVELS = ("read_uncommitted", "read_committed")
OFFSET_RESETS = ("earliest", "latest")


def probe_broker(address: str, timeout: float = 1.0) -> bool:
    """True when ``host:port`` answers a Kafka ApiVersions (v0) request without error."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "localhost"
    client_id = b"vdb-probe"
    body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            response = _recv_exact(sock, min(size, 6))
    except (OSError, ValueError, struct.error):
        return False
    correlation_id, error_code = struct.unpack(">ih", response)
    return correlation_id == 7 and error_code == 0


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return bytes(data)


def _split(value: str | Iterable[str]) -> list[str]:
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item and item.strip()]


class KafkaSource:
    """Read ``topics`` from ``bootstrap_servers``; see the module docstring for the contract.

    ``name`` keys this stream's offsets in the WAL (default ``kafka:<group>``,
    or ``kafka`` without a group): keep it stable across restarts.
    ``consumer_options`` are passed to ``KafkaConsumer`` as they are and win
    over the defaults chosen here (tuned for low latency and fast group
    joins: ``fetch_max_wait_ms=5``, ``max_poll_interval_ms=10000``,
    ``session_timeout_ms=10000``).
    """

    kind = "kafka"

    def __init__(
        self,
        bootstrap_servers: str | Iterable[str],
        topics: str | Iterable[str],
        group_id: str | None = None,
        *,
        name: str | None = None,
        format: str = "json",  # noqa: A002 - the option's user-facing name
        isolation_level: str = "read_uncommitted",
        auto_offset_reset: str = "earliest",
        dead_letter_topic: str | None = None,
        client_id: str | None = None,
        consumer_options: dict[str, Any] | None = None,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = _split(bootstrap_servers)
        self.topics = _split(topics)
        if not self.bootstrap_servers:
            raise InvalidInput("kafka source: no bootstrap servers")
        if not self.topics:
            raise InvalidInput("kafka source: no topics")
        if isolation_level not in ISOLATION_LEVELS:
            raise InvalidInput(f"isolation_level must be one of {ISOLATION_LEVELS}")
        if auto_offset_reset not in OFFSET_RESETS:
            raise InvalidInput(f"auto_offset_reset must be one of {OFFSET_RESETS}")
        self.group_id = group_id or None
        self.name = name or (f"kafka:{self.group_id}" if self.group_id else "kafka")
        self.default_format = format
        self.isolation_level = isolation_level
        self.auto_offset_reset = auto_offset_reset
        self.dead_letter_topic = dead_letter_topic or None
        self.client_id = client_id or f"vdb-{self.name}"
        self.consumer_options = dict(consumer_options or {})
        self.producer_options = dict(producer_options or {})

        self._consumer: Any = None
        self._producer: Any = None
        self._assignment: Assignment | None = None
        self._lock = threading.RLock()
        self._next: dict[TopicPartition, int] = {}
        self._positions: dict[TopicPartition, int] = {}
        self._recreated: set[TopicPartition] = set()
        self._reconnect = False
        self._assigned: list[TopicPartition] = []
        self._paused: set[TopicPartition] = set()
        self._errors = 0
        self._offset_resets = 0
        self._last_error: str | None = None
        self._connected = False
        self._probed = False
        self._closed = threading.Event()
        self._monitor: threading.Thread | None = None
        self._connect_at = 0.0
        self._connect_backoff = 0.5
        self._last_truncation_check = 0.0

    # -- lifecycle ---------------------------------------------------------

    def consumer_config(self) -> dict[str, Any]:
        """The ``KafkaConsumer`` configuration this source uses."""
        config: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": self.client_id,
            "group_id": self.group_id,
            "enable_auto_commit": False,
            "allow_auto_create_topics": False,
            "auto_offset_reset": self.auto_offset_reset,
            "isolation_level": self.isolation_level,
            "fetch_max_wait_ms": 5,
            "max_poll_interval_ms": 10_000,
            "session_timeout_ms": 10_000,
            "heartbeat_interval_ms": 1_000,
            "reconnect_backoff_ms": 50,
            "reconnect_backoff_max_ms": 2_000,
            "retry_backoff_ms": 100,
            "request_timeout_ms": 15_000,
            "bootstrap_timeout_ms": 3_000,
            "max_partition_fetch_bytes": 1 << 20,
            "fetch_max_bytes": 16 << 20,
        }
        config.update(self.consumer_options)
        return config

    def start(self, assignment: Assignment) -> None:
        """Start probing the broker; the consumer itself connects on the first ``poll``."""
        if self._assignment is not None:
            raise RuntimeError(f"source {self.name} already started")
        self._assignment = assignment
        self._monitor = threading.Thread(
            target=self._watch_broker, name=f"vdb-ingest-probe-{self.name}", daemon=True
        )
        self._monitor.start()

    def _connect(self) -> bool:
        """Create the consumer (and join the group); on failure back off, never raise."""
        from kafka import KafkaConsumer

        _warn_without_crc32c()

        now = time.monotonic()
        if now < self._connect_at:
            return False
        try:
            consumer = KafkaConsumer(**self.consumer_config())
            if self.group_id:
                consumer.subscribe(self.topics, listener=_Rebalance(self))
        except Exception as exc:
            self._record_error(exc)
            self._connect_backoff = min(10.0, self._connect_backoff * 2)
            self._connect_at = time.monotonic() + self._connect_backoff
            log.warning(
                "%s: cannot connect yet; next try in %.1fs", self.name, self._connect_backoff
            )
            return False
        self._connect_backoff = 0.5
        self._consumer = consumer
        return True

    def close(self) -> None:
        self._closed.set()
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("closing the kafka consumer of %s: %s", self.name, exc)
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                producer.close(timeout=5)
            except Exception as exc:
                log.warning("closing the dead-letter producer of %s: %s", self.name, exc)
        if self._monitor is not None:
            self._monitor.join(timeout=5)

    def _drop_consumer(self) -> None:
        """Close the consumer (the pipeline makes what it read durable on revoke); reconnect later."""
        consumer, self._consumer = self._consumer, None
        with self._lock:
            self._assigned = []
            self._paused.clear()
            self._positions.clear()
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:
                log.warning("%s: closing the consumer: %s", self.name, exc)
        log.warning("%s: reconnecting with a fresh consumer", self.name)

    # -- reading -----------------------------------------------------------

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        from kafka.errors import KafkaError

        if self._closed.is_set() or self._assignment is None:
            raise RuntimeError("KafkaSource.poll before start() or after close()")
        if self._reconnect:
            self._reconnect = False
            self._drop_consumer()
        if self._consumer is None and not self._connect():
            time.sleep(min(timeout_s, max(0.0, self._connect_at - time.monotonic())))
            return []
        consumer = self._consumer
        if not self.group_id and not self._assigned:
            self._assign_all()
            if not self._assigned:
                time.sleep(min(timeout_s, 0.2))
                return []
        try:
            batches = consumer.poll(
                timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records
            )
        except KafkaError as exc:
            self._record_error(exc)
            time.sleep(min(1.0, max(timeout_s, 0.1)))
            return []
        messages: list[Message] = []
        if batches and not self._connected:
            self._connected = True  # records are the best proof; the probe may be backing off
            log.warning("%s: broker reachable again (records arrive)", self.name)
        with self._lock:
            for tp, records in batches.items():
                if not records:
                    continue
                topic, partition = tp.topic, tp.partition
                for r in records:
                    ts = r.timestamp if r.timestamp is not None and r.timestamp >= 0 else None
                    messages.append(
                        Message(topic, partition, r.offset, r.key, r.value, ts, r.headers or None)
                    )
                self._next[(topic, partition)] = records[-1].offset + 1
                self._recreated.discard((topic, partition))
        now = time.monotonic()
        if now - self._last_truncation_check >= 0.5:
            self._last_truncation_check = now
            self._check_truncation()
        return messages

    def _assign_all(self) -> None:
        from kafka import TopicPartition as KafkaTP

        partitions: list[TopicPartition] = []
        for topic in self.topics:
            try:
                found = self._consumer.partitions_for_topic(topic)
            except Exception as exc:
                self._record_error(exc)
                return
            if not found:
                return
            partitions.extend((topic, p) for p in sorted(found))
        self._consumer.assign([KafkaTP(t, p) for t, p in partitions])
        self._position(partitions)
        self._assigned = partitions
        if self._assignment is not None:
            self._assignment.assigned(partitions)

    def _position(self, partitions: list[TopicPartition]) -> None:
        """Seek each partition to its stored offset + 1 (or the reset policy when none)."""
        from kafka import TopicPartition as KafkaTP

        assert self._assignment is not None
        with self._lock:
            for topic, partition in partitions:
                tp = KafkaTP(topic, partition)
                stored = self._assignment.stored_offset(topic, partition)
                if (topic, partition) in self._recreated:
                    stored = None  # the stored offset belongs to the lost log
                if stored is not None:
                    self._consumer.seek(tp, stored + 1)
                    self._next[(topic, partition)] = stored + 1
                elif self.auto_offset_reset == "latest":
                    self._consumer.seek_to_end(tp)
                    self._next.pop((topic, partition), None)
                else:
                    self._consumer.seek(tp, 0)
                    self._next[(topic, partition)] = 0
                log.info(
                    "%s: %s[%d] starts at %s",
                    self.name,
                    topic,
                    partition,
                    "the end"
                    if stored is None and self.auto_offset_reset == "latest"
                    else (stored + 1 if stored is not None else 0),
                )

    def _check_truncation(self) -> None:
        """Rewind partitions whose log end fell behind our position (log lost or re-created).

        Never holds ``_lock`` while calling into the consumer: ``position`` may wait
        for kafka-python's IO thread, which may be running our rebalance listener.
        """
        from kafka import TopicPartition as KafkaTP

        consumer = self._consumer
        with self._lock:
            items = list(self._next.items())
        for (topic, partition), position in items:
            tp = KafkaTP(topic, partition)
            try:
                highwater = consumer.highwater(tp)
            except Exception:
                continue
            if highwater is not None and highwater < position:
                log.warning(
                    "%s: %s[%d] log ends at %d, before our position %d: the log was "
                    "truncated or re-created; reading it again from the beginning",
                    self.name,
                    topic,
                    partition,
                    highwater,
                    position,
                )
                with self._lock:
                    self._recreated.add((topic, partition))
                    self._next[(topic, partition)] = 0
                    self._offset_resets += 1
                # A fresh consumer: kafka-python can keep fetching a re-created topic
                # with stale state and never see its new records.
                self._reconnect = True
                continue
            try:  # past transaction markers too, unlike the last delivered offset
                fetch_position = consumer.position(tp, timeout_ms=0)
            except Exception:
                fetch_position = None
            with self._lock:
                if fetch_position is None:
                    self._positions.pop((topic, partition), None)
                else:
                    self._positions[(topic, partition)] = fetch_position

    def positions(self) -> dict[TopicPartition, int]:
        """The next offset to read per partition, as last seen by the reader."""
        with self._lock:
            return {tp: pos for tp, pos in self._positions.items() if pos is not None}

    # -- partitions ----------------------------------------------------------

    def assignment(self) -> list[TopicPartition]:
        with self._lock:
            return list(self._assigned)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self._set_paused(partitions, True)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self._set_paused(partitions, False)

    def _set_paused(self, partitions: Iterable[TopicPartition], paused: bool) -> None:
        from kafka import TopicPartition as KafkaTP

        consumer = self._consumer
        if consumer is None:
            return
        with self._lock:
            current = set(self._assigned)
            tps = [KafkaTP(t, p) for t, p in partitions if (t, p) in current]
            if not tps:
                return
            try:
                if paused:
                    consumer.pause(*tps)
                    self._paused.update((tp.topic, tp.partition) for tp in tps)
                else:
                    consumer.resume(*tps)
                    self._paused.difference_update((tp.topic, tp.partition) for tp in tps)
            except Exception as exc:  # a partition revoked meanwhile
                log.debug("%s: pause/resume %s: %s", self.name, tps, exc)

    def _on_assigned(self, partitions: list[TopicPartition]) -> None:
        with self._lock:
            self._assigned = sorted(partitions)
            self._paused.clear()
        self._position(partitions)
        log.info("%s: assigned %s", self.name, sorted(partitions))
        if self._assignment is not None:
            self._assignment.assigned(sorted(partitions))

    def _on_revoked(self, partitions: list[TopicPartition], lost: bool = False) -> None:
        log.info("%s: %s %s", self.name, "lost" if lost else "revoked", sorted(partitions))
        if self._assignment is not None:
            self._assignment.revoked(sorted(partitions))
        with self._lock:
            gone = set(partitions)
            self._assigned = [tp for tp in self._assigned if tp not in gone]
            for tp in gone:
                self._next.pop(tp, None)
                self._positions.pop(tp, None)
                self._paused.discard(tp)

    # -- upstream bookkeeping -------------------------------------------------

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit ``offset + 1`` to the group (asynchronously); advisory, errors only logged."""
        if not self.group_id or not offsets or self._consumer is None:
            return
        from kafka import TopicPartition as KafkaTP
        from kafka.structs import OffsetAndMetadata

        payload = {
            KafkaTP(t, p): OffsetAndMetadata(offset + 1, "", -1)
            for (t, p), offset in offsets.items()
        }
        try:
            self._consumer.commit_async(payload, callback=self._committed)
        except Exception as exc:
            log.debug("%s: kafka commit not sent: %s", self.name, exc)

    def _committed(self, offsets: Any, response: Any) -> None:
        if isinstance(response, Exception):
            log.debug("%s: kafka commit failed (advisory): %s", self.name, response)

    def send_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Copy dead letters to ``dead_letter_topic`` (after the WAL holds them), when configured."""
        if not self.dead_letter_topic or not letters:
            return
        from kafka import KafkaProducer

        if self._producer is None:
            options = {"bootstrap_servers": self.bootstrap_servers, "acks": "all", "linger_ms": 5}
            options.update(self.producer_options)
            self._producer = KafkaProducer(**options)
        for letter in letters:
            headers = [
                ("vdb-reason", letter.reason.encode("utf-8", "replace")),
                ("vdb-source", letter.source.encode()),
                ("vdb-topic", letter.topic.encode()),
                ("vdb-partition", str(letter.partition).encode()),
                ("vdb-offset", str(letter.offset).encode()),
            ]
            try:
                self._producer.send(
                    self.dead_letter_topic, key=letter.key, value=letter.value, headers=headers
                )
            except Exception as exc:
                self._record_error(exc)
        try:
            self._producer.flush(timeout=10)
        except Exception as exc:
            self._record_error(exc)

    def end_offsets(self) -> dict[TopicPartition, int | None]:
        consumer = self._consumer
        out: dict[TopicPartition, int | None] = {}
        if consumer is None:
            return out
        from kafka import TopicPartition as KafkaTP

        for topic, partition in self.assignment():
            try:
                out[(topic, partition)] = consumer.highwater(KafkaTP(topic, partition))
            except Exception:
                out[(topic, partition)] = None
        return out

    def paused(self) -> list[TopicPartition]:
        with self._lock:
            return sorted(self._paused)

    def health(self) -> dict[str, Any]:
        return {
            "connected": self._connected,
            "errors": self._errors,
            "last_error": self._last_error,
            "offset_resets": self._offset_resets,
        }

    def _record_error(self, exc: BaseException) -> None:
        self._errors += 1
        self._last_error = f"{type(exc).__name__}: {exc}"
        log.warning("%s: kafka error: %s", self.name, self._last_error)

    def _watch_broker(self) -> None:
        """Probe the bootstrap servers: every second when up, with backoff (to 5 s) when down."""
        delay = 1.0
        while not self._closed.is_set():
            reachable = any(probe_broker(server) for server in self.bootstrap_servers)
            if reachable and not self._connected and self._probed:
                log.warning("%s: broker reachable again at %s", self.name, self.bootstrap_servers)
            elif not reachable:
                self._errors += 1
                self._last_error = f"broker unreachable at {','.join(self.bootstrap_servers)}"
                if self._connected or not self._probed:
                    log.warning("%s: %s; retrying with backoff", self.name, self._last_error)
            if reachable:
                delay = 1.0
            else:
                delay = 0.25 if self._connected else min(5.0, delay * 2)
            self._connected = reachable
            self._probed = True
            self._closed.wait(delay)


_crc_warned = False


def _warn_without_crc32c() -> None:
    """kafka-python checks record CRCs in pure Python unless ``crc32c`` is installed (~100x slower)."""
    global _crc_warned
    if _crc_warned:
        return
    _crc_warned = True
    import importlib.util

    if importlib.util.find_spec("crc32c") is None:
        log.warning(
            "the crc32c package is not installed: kafka-python verifies record checksums in pure "
            "Python, which limits ingest to a few hundred large records per second "
            "(pip install crc32c)"
        )


class _Rebalance(ConsumerRebalanceListener):
    """kafka-python rebalance listener: durable on revoke, seek on assign."""

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.source._on_revoked([(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.source._on_assigned([(tp.topic, tp.partition) for tp in assigned])

    def on_partitions_lost(self, lost: Any) -> None:
        self.source._on_revoked([(tp.topic, tp.partition) for tp in lost], lost=True)
