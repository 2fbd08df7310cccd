"""The ``Source`` protocol that every ingest source implements, and the registry of kinds.

A source delivers raw messages with their positions; it knows nothing of
collections, formats or the WAL. The pipeline (``vdb.ingest.pipeline``)
decodes, batches and applies them, then tells the source which positions are
durable so it can record them upstream (for lag tooling only: the WAL's
source-offsets table is the truth).

Positions are ``(topic, partition) -> offset`` where ``offset`` is the offset
of a message (not the next one). A source that has no topics or partitions
(a file, stdin) uses its path as the topic and partition 0.

Adding a kind: implement the protocol and call ``register_source("name",
factory)``; ``create_source("name", **options)`` then builds it, and the CLI
can name it in ``--ingest name``. The built-in kinds (``kafka``, ``file``)
are registered by ``vdb/ingest/__init__.py``, where the package is
assembled, so this module imports none of its sources.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from vdb.errors import InvalidInput

TopicPartition = tuple[str, int]
"""``(topic, partition)``: where a message came from."""


@dataclass(slots=True)
class Message:
    """One raw message as a source delivers it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes | None]] | None = None
    """Kafka record headers as ``(name, value)`` pairs (``traceparent`` links traces)."""


@runtime_checkable
class Assignment(Protocol):
    """What the pipeline gives a source so it can react to partition changes.

    ``stored_offset(topic, partition)`` is the last offset applied to the WAL
    for that partition (``None`` when nothing was applied yet): the source
    resumes at ``stored_offset + 1``. ``revoked(partitions)`` is called before
    partitions are given away: it returns only when everything read from them
    so far is durable. ``assigned(partitions)`` is informational.
    """

    def stored_offset(self, topic: str, partition: int) -> int | None: ...

    def revoked(self, partitions: list[TopicPartition]) -> None: ...

    def assigned(self, partitions: list[TopicPartition]) -> None: ...


@runtime_checkable
class Source(Protocol):
    """A stream of messages with positions; pausable; closable.

    ``name`` identifies the stream in the WAL's source-offsets table: two
    sources with the same name share positions, so it must be stable across
    restarts (for Kafka: ``kafka:<group>`` or the configured name).
    ``poll`` is only ever called from one thread (the pipeline's reader).
    """

    name: str
    kind: str
    default_format: str

    def start(self, assignment: Assignment) -> None:
        """Connect and position every partition at its stored offset + 1."""

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        """Up to ``max_records`` messages, waiting at most ``timeout_s`` for the first."""

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        """Stop delivering messages from these partitions until resumed."""

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        """Deliver messages from these partitions again."""

    def assignment(self) -> list[TopicPartition]:
        """Partitions this source currently reads."""

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Record upstream that these offsets (last applied) are durable; advisory."""

    def end_offsets(self) -> dict[TopicPartition, int | None]:
        """Per partition, the offset the next produced message will get (``None``: unknown).

        The pipeline's lag is ``end - (last applied + 1)``.
        """

    def health(self) -> dict[str, Any]:
        """``{"connected": bool, "errors": int, "last_error": str | None}``."""

    def close(self) -> None:
        """Release connections; the pipeline has committed before calling this."""

    # Optional: ``finished() -> bool``; True when a bounded source (a file) has
    # delivered everything, so the pipeline can drain and stop by itself.


_REGISTRY: dict[str, Callable[..., Source]] = {}


def register_source(kind: str, factory: Callable[..., Source]) -> None:
    """Make ``kind`` available to ``create_source`` and the CLI's ``--ingest``."""
    _REGISTRY[kind] = factory


def source_kinds() -> list[str]:
    """Registered kinds, sorted."""
    return sorted(_REGISTRY)


def create_source(kind: str, **options: Any) -> Source:
    """Build a source of a registered kind; ``InvalidInput`` for an unknown kind."""
    try:
        factory = _REGISTRY[kind]
    except KeyError:
        raise InvalidInput(
            f"unknown ingest source {kind!r}; known: {', '.join(sorted(_REGISTRY))}"
        ) from None
    return factory(**options)
