"""Stream ingest: pluggable sources (Kafka, JSON-lines files) -> batches -> ``Collection.apply``.

Embedded use::

    from vdb.ingest import KafkaSource
    handle = db.ingest(KafkaSource("localhost:9092", "vectors", group_id="vdb"), "docs")
    handle.stats(); handle.stop()

Each batch's records and the per-partition offsets land in one durable WAL
transaction, so a restarted consumer resumes exactly where the WAL says.
"""

from __future__ import annotations

from vdb.ingest.file import FileSource
from vdb.ingest.formats import FORMATS, Decoder
from vdb.ingest.kafka import KafkaSource
from vdb.ingest.pipeline import IngestHandle, handles, start_ingest
from vdb.ingest.source import Message, Source, create_source, register_source, source_kinds

# The built-in kinds, registered where the package is assembled (the registry imports no source).
register_source("kafka", KafkaSource)
register_source("file", FileSource)

__all__ = [
    "FORMATS",
    "Decoder",
    "FileSource",
    "IngestHandle",
    "KafkaSource",
    "Message",
    "Source",
    "create_source",
    "handles",
    "register_source",
    "source_kinds",
    "start_ingest",
]
