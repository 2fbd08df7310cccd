"""The node side of a cluster: publish this process's heartbeat, answer "is offset N applied?".

``serve --cluster NAME --node-id ID --advertise-url URL`` starts a
``ClusterNode`` next to the ingest pipelines. Once a second it sends one
heartbeat (``vdb.cluster.heartbeat``) describing, for every Kafka pipeline
in a consumer group, the partitions it holds with their last applied offset,
lag and state (``catching_up`` after an assignment until the lag is below the
pipeline's ``caught_up_lag``, then ``serving``). ``close()`` sends a
tombstone, so a router stops using the node at once on a clean shutdown; a
node that dies simply stops sending, and routers drop it when its last
heartbeat is older than their staleness bound (2 s).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from vdb.cluster import heartbeat

log = logging.getLogger(__name__)


class ClusterNode:
    """Heartbeats of one node; see the module docstring."""

    def __init__(
        self,
        db: Any,
        handles: list[Any],
        *,
        cluster: str,
        node_id: str,
        url: str,
        bootstrap: list[str] | str | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.db = db
        self.handles = [h for h in handles if _clustered(h)]
        _check_one_topic_each(self.handles)
        self.cluster = cluster
        self.node_id = node_id
        self.url = url.rstrip("/")
        if bootstrap is None:
            if not self.handles:
                raise ValueError("a cluster node needs a Kafka ingest pipeline with a group")
            bootstrap = self.handles[0].source.bootstrap_servers
        self.bootstrap = bootstrap
        self.interval_s = interval_s
        self.topic = heartbeat.topic_name(cluster)
        self.state = "serving"
        self.sent = 0
        self.errors = 0
        self._totals: dict[str, tuple[float, int | None]] = {}
        self._stop = threading.Event()
        self._producer: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> ClusterNode:
        from kafka import KafkaProducer

        heartbeat.ensure_topic(self.bootstrap, self.topic)
        self._producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks=1,
            linger_ms=0,
            client_id=f"vdb-node-{self.node_id}",
            reconnect_backoff_max_ms=1000,
        )
        self._thread = threading.Thread(
            target=self._loop, name="vdb-cluster-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def handle_for(self, collection: str) -> Any:
        """The clustered pipeline feeding ``collection`` (``None`` if there is none)."""
        for h in self.handles:
            if h.collection_name == collection:
                return h
        return None

    def document(self) -> dict[str, Any]:
        """The heartbeat this node would send now."""
        collections: dict[str, Any] = {}
        for h in self.handles:
            if not h.running:
                continue
            try:
                stats = h.stats()
                info = h.collection.info()
            except Exception as exc:  # a closing database; the next beat will tell
                log.debug("heartbeat: %s: %s", h.name, exc)
                continue
            topic = h.source.topics[0]
            parts = {}
            for p in stats["partitions"].values():
                if p["assigned"] and p["topic"] == topic:
                    parts[str(p["partition"])] = {
                        "state": p["state"],
                        "offset": p["offset"],
                        "lag": p["lag"],
                    }
            collections[h.collection_name] = {
                "topic": topic,
                "group": h.source.group_id,
                "source": h.source.name,
                "partitions_total": self._partitions_total(topic),
                "distance": heartbeat.DISTANCES.get(str(info["metric"]), str(info["metric"])),
                "dim": int(info["dim"]),
                "metric": str(info["metric"]),
                **heartbeat.vectors_of(info),
                "partitions": parts,
            }
        return {
            "v": heartbeat.VERSION,
            "cluster": self.cluster,
            "node_id": self.node_id,
            "url": self.url,
            "state": self.state,
            "ts_ms": int(time.time() * 1000),
            "interval_ms": int(self.interval_s * 1000),
            "collections": collections,
        }

    def _partitions_total(self, topic: str) -> int | None:
        cached = self._totals.get(topic)
        now = time.monotonic()
        if cached is not None and cached[1] is not None and now - cached[0] < 30.0:
            return cached[1]
        total = None
        try:
            found = self._producer.partitions_for(topic)
            total = len(found) if found else None
        except Exception as exc:
            log.debug("heartbeat: partitions of %s: %s", topic, exc)
        self._totals[topic] = (now, total)
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self._send(heartbeat.encode(self.document()))
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def _send(self, value: bytes | None) -> None:
        try:
            self._producer.send(self.topic, key=self.node_id.encode(), value=value)
            self._producer.flush(timeout=max(1.0, self.interval_s))
            self.sent += 1
        except Exception as exc:
            self.errors += 1
            log.warning("heartbeat to %s not sent: %s", self.topic, exc)

    def close(self) -> None:
        """Leave the cluster: stop the beats and send a tombstone (best effort)."""
        if self._producer is None:
            return
        self.state = "stopping"
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._send(None)
        try:
            self._producer.close(timeout=5)
        except Exception as exc:
            log.debug("closing the heartbeat producer: %s", exc)
        self._producer = None


def _check_one_topic_each(handles: list[Any]) -> None:
    """A clustered collection is fed by exactly one topic, through one pipeline.

    Partitions are the shards: a partition number names a share of ONE topic
    (``vdb_partitions``, the heartbeat's map, the router's writes keyed into
    it), so a collection fed by two topics, or by two pipelines, would have
    two partitions 0 that nothing tells apart. ``ValueError`` names the case.
    """
    fed: dict[str, str] = {}
    for h in handles:
        topics = list(h.source.topics)
        if len(topics) != 1:
            raise ValueError(
                f"collection {h.collection_name!r} is fed by {len(topics)} topics "
                f"({', '.join(topics)}); a clustered collection is fed by exactly one topic "
                "(its partitions are the shards): give each collection its own --ingest spec "
                "with one --kafka-topic"
            )
        if h.collection_name in fed:
            raise ValueError(
                f"collection {h.collection_name!r} is fed by two ingest specs (topics "
                f"{fed[h.collection_name]} and {topics[0]}); a clustered collection is fed by "
                "exactly one topic"
            )
        fed[h.collection_name] = topics[0]


def _clustered(handle: Any) -> bool:
    source = handle.source
    return getattr(source, "kind", None) == "kafka" and bool(getattr(source, "group_id", None))
