"""Plain value types shared by the core, the HTTP layer and ingest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

PointId = int | str
"""A user id: an unsigned 64-bit integer or a string (UUIDs included)."""

PART_SHIFT = 12
"""Checkpoints keep the id map and the payloads in parts of ``2**PART_SHIFT`` slots; the
parts touched since the last checkpoint are the only ones it copies and writes."""


@dataclass(slots=True)
class Record:
    """A stored point as returned by ``get`` and ``scroll``."""

    id: PointId
    payload: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(slots=True)
class Hit:
    """One search result.

    ``score`` is the natural score of the metric: squared distance for ``l2``
    (smaller is better), similarity for ``ip`` and ``cosine`` (larger is
    better). Hits are always ordered best first.
    """

    id: PointId
    score: float
    payload: dict[str, Any] | None = None
    vector: np.ndarray | None = None


@dataclass(slots=True)
class Upsert:
    """An upsert operation as handed to ``Collection.apply`` (ingest path)."""

    id: PointId
    vector: Any
    payload: dict[str, Any] | None = None
    partition: int | None = None
    timestamp_ms: int | None = None


@dataclass(slots=True)
class Delete:
    """A delete operation as handed to ``Collection.apply`` (ingest path)."""

    id: PointId
    partition: int | None = None
    timestamp_ms: int | None = None


@dataclass(slots=True)
class DeadLetter:
    """A message ingest could not apply, kept with the reason."""

    source: str
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    timestamp_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
