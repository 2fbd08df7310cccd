"""Which partition a point id goes to: Kafka's default partitioner, so every producer agrees.

A point is keyed by its id as UTF-8 text (an integer in decimal, a string as
it is) and placed by murmur2 of the key, exactly as the Java client and
kafka-python place a keyed record. The ingest decoder reads such a key back
as the id (``key_format="auto"``), so a tombstone with that key deletes it.
"""

from __future__ import annotations

from kafka.partitioner.default import murmur2

from vdb.types import PointId


def point_key(point_id: PointId) -> bytes:
    """The record key for ``point_id``."""
    return str(point_id).encode("utf-8")


def partition_for(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a keyed record among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
