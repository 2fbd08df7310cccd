"""Heartbeat records on the compacted topic ``NAME.vdb-nodes``: the format and the topic.

Key: the node id (UTF-8). Value: JSON::

    {"v": 1, "cluster": NAME, "node_id": ID, "url": URL, "state": "serving" | "stopping",
     "ts_ms": wall-clock ms when sent, "interval_ms": heartbeat period,
     "collections": {NAME: {"topic": T, "group": G, "source": "kafka:G",
                            "partitions_total": P, "distance": "Cosine" | "Euclid" | "Dot",
                            "dim": D, "metric": "cosine" | "l2" | "ip",
                            "named": bool, "vectors": {NAME: {"dim", "metric"}},
                            "sparse_vectors": {NAME: {"modifier": null | "idf"}},
                            "partitions": {"0": {"state": "serving" | "catching_up",
                                                 "offset": last applied or null,
                                                 "lag": records or null}}}}}

``distance``, ``dim`` and ``metric`` are the default vector's (a collection
without one has a placeholder of dimension 1); ``vectors`` holds every dense
vector by name (``""`` the default one, when it exists), ``sparse_vectors``
the sparse ones, ``named`` whether records carry their vectors as a map of
names. A router parses writes and queries against these.

A tombstone (null value) means the node left cleanly. Compaction keeps the
latest record per node, so a router that starts reads every live node's last
heartbeat from the beginning of the topic.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

log = logging.getLogger(__name__)

VERSION = 1
TOPIC_SUFFIX = ".vdb-nodes"
DISTANCES = {"cosine": "Cosine", "l2": "Euclid", "ip": "Dot"}


def vectors_of(info: dict[str, Any]) -> dict[str, Any]:
    """The ``named``, ``vectors`` and ``sparse_vectors`` of a heartbeat, from ``col.info()``."""
    return {
        "named": bool(info.get("named")),
        "vectors": {
            name: {"dim": int(spec["dim"]), "metric": str(spec["metric"])}
            for name, spec in (info.get("vectors") or {}).items()
        },
        "sparse_vectors": {
            name: {"modifier": (spec or {}).get("modifier")}
            for name, spec in (info.get("sparse_vectors") or {}).items()
        },
    }


def topic_name(cluster: str) -> str:
    """The heartbeat topic of ``cluster``."""
    return cluster + TOPIC_SUFFIX


def encode(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc)


def decode(value: bytes | None) -> dict[str, Any] | None:
    """The heartbeat document, ``None`` for a tombstone; ``ValueError`` when unreadable."""
    if value is None:
        return None
    doc = orjson.loads(value)
    if not isinstance(doc, dict) or doc.get("v") != VERSION or "node_id" not in doc:
        raise ValueError("not a vdb heartbeat")
    return doc


def ensure_topic(bootstrap: list[str] | str, topic: str, partitions: int = 1) -> None:
    """Create the compacted heartbeat topic if it does not exist (an existing one is kept)."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    try:
        if topic in set(admin.list_topics()):
            return
        try:
            admin.create_topics(
                [NewTopic(topic, partitions, 1, topic_configs={"cleanup.policy": "compact"})]
            )
        except TopicAlreadyExistsError:
            pass
    finally:
        admin.close()
