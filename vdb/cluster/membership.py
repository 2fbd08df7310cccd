"""The partition map: who serves what, read from the heartbeat topic.

``Membership`` tails ``NAME.vdb-nodes`` from its beginning (compaction keeps
each node's last heartbeat) in a daemon thread and holds, per node, its last
heartbeat. A node is *healthy* when its last heartbeat arrived less than
``stale_s`` (2 s) ago, it is not stopping (a tombstone removes it at once),
and no request to it failed since that heartbeat arrived (``mark_failed``).
``replicas(collection)`` gives, per partition, the healthy nodes serving it.

Freshness is judged by this process' own monotonic clock: the time a
heartbeat *arrived*, not the ``ts_ms`` its sender wrote, so nodes and routers
on machines whose wall clocks disagree (by seconds or hours) still agree on
who is alive, and a wall clock that steps does not expire or revive anyone.
Which of two heartbeats of a node is newer is the log's order (one node's
records share a key, hence a partition), not their timestamps, so a node that
restarts with its clock set back replaces its old record. The one use of the
sender's clock is for the records a router reads while catching up with the
topic at start: those arrived long ago, so their age is taken as the wall
clock difference (``ts_ms`` against this machine's clock), until the node's
next heartbeat (within its interval, 1 s) gives an arrival time; and when
the topic is read again from its beginning after an error, such a record
replaces a node's current one only if its ``ts_ms`` is later (one node's
timestamps compared with each other, never with this clock). A wrong
guess costs little: a node taken for alive fails its first request and is
retried elsewhere; one taken for stale is used again at its next beat.

The map is computed once per change: every heartbeat and ``mark_failed``
bumps a version, and the healthy set is cached until the version changes or
the first cached node's heartbeat expires, so a request reads it without
rebuilding it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from vdb.cluster import heartbeat

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Replica:
    """One node serving one partition of a collection."""

    node: NodeView
    group: str
    partition: int
    offset: int | None
    lag: int | None


@dataclass(slots=True)
class NodeView:
    """A node as the router knows it: its last heartbeat and what the router saw of it.

    ``seen`` is this process' ``time.monotonic()`` when that heartbeat
    arrived (see the module docstring); ``ts_ms`` is the sender's wall clock,
    kept for people reading ``/cluster``, never compared with this clock.
    """

    node_id: str
    url: str
    ts_ms: int
    state: str
    collections: dict[str, Any]
    seen: float = 0.0
    failed_at: float | None = None
    failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat arrived (``now``: a ``time.monotonic()``)."""
        now = time.monotonic() if now is None else now
        return max(0.0, now - self.seen)

    def healthy(self, stale_s: float, now: float | None = None) -> bool:
        if self.state != "serving" or self.age_s(now) >= stale_s:
            return False
        return self.failed_at is None or self.failed_at < self.seen


class Membership:
    """Tail the heartbeat topic of ``cluster``; see the module docstring."""

    def __init__(
        self,
        bootstrap: str | list[str],
        cluster: str,
        *,
        stale_s: float = 2.0,
        consumer_options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.cluster = cluster
        self.topic = heartbeat.topic_name(cluster)
        self.stale_s = stale_s
        self.consumer_options = dict(consumer_options or {})
        self.ready = threading.Event()
        self.records = 0
        self.bad_records = 0
        self._nodes: dict[str, NodeView] = {}
        self._version = 0
        self._cache: dict[Any, Any] = {}
        self._cache_version = -1
        self._cache_until = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition(self._lock)

    # -- reading -----------------------------------------------------------

    def start(self) -> Membership:
        heartbeat.ensure_topic(self.bootstrap, self.topic)
        self._thread = threading.Thread(target=self._run, name="vdb-cluster-members", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tail()
            except Exception as exc:
                log.warning("reading %s failed (%s); retrying", self.topic, exc)
                self._stop.wait(1.0)

    def _tail(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        options = {
            "bootstrap_servers": self.bootstrap,
            "group_id": None,
            "enable_auto_commit": False,
            "fetch_max_wait_ms": 50,
            "reconnect_backoff_max_ms": 1000,
            "client_id": f"vdb-router-{self.cluster}",
        }
        options.update(self.consumer_options)
        consumer = KafkaConsumer(**options)
        try:
            found = None
            while not found and not self._stop.is_set():
                found = consumer.partitions_for_topic(self.topic)
                if not found:
                    self._stop.wait(0.2)
            if self._stop.is_set():
                return
            tps = [TopicPartition(self.topic, p) for p in sorted(found)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            while not self._stop.is_set():
                batches = consumer.poll(timeout_ms=100, max_records=1000)
                for tp, records in batches.items():
                    end = ends.get(tp, 0)
                    for r in records:
                        self._apply(r.key, r.value, historic=r.offset < end)
                if not self.ready.is_set() and all(
                    consumer.position(tp) >= ends.get(tp, 0) for tp in tps
                ):
                    self.ready.set()
        finally:
            consumer.close(autocommit=False)

    def _apply(self, key: bytes | None, value: bytes | None, *, historic: bool = False) -> None:
        """One heartbeat record. ``historic``: written before this process started reading."""
        self.records += 1
        if key is None:
            self.bad_records += 1
            return
        node_id = key.decode("utf-8", "replace")
        try:
            doc = heartbeat.decode(value)
        except ValueError:
            self.bad_records += 1
            return
        with self._changed:
            if doc is None:
                if self._nodes.pop(node_id, None) is not None:
                    log.info("node %s left the cluster", node_id)
            else:
                old = self._nodes.get(node_id)
                now = time.monotonic()
                ts_ms = int(doc.get("ts_ms", 0) or 0)
                if historic and old is not None and old.ts_ms >= ts_ms:
                    # reading the topic again after an error: an older record of the node
                    # (by its own clock) must not replace what arrived since
                    return
                if historic:
                    # arrived before this process read it: its age by the wall clocks
                    now -= max(0.0, time.time() - ts_ms / 1000.0)
                view = NodeView(
                    node_id=node_id,
                    url=str(doc.get("url", "")).rstrip("/"),
                    ts_ms=ts_ms,
                    state=str(doc.get("state", "serving")),
                    collections=dict(doc.get("collections") or {}),
                    seen=now,
                )
                if old is not None:
                    view.failed_at, view.failures = old.failed_at, old.failures
                else:
                    log.info("node %s at %s joined the cluster", node_id, view.url)
                self._nodes[node_id] = view
            self._version += 1
            self._changed.notify_all()

    # -- the map -------------------------------------------------------------

    def wait_changed(self, timeout: float) -> None:
        """Block until the next heartbeat arrives (or ``timeout``)."""
        with self._changed:
            self._changed.wait(timeout)

    def nodes(self) -> list[NodeView]:
        with self._lock:
            return list(self._nodes.values())

    def node(self, node_id: str) -> NodeView | None:
        with self._lock:
            return self._nodes.get(node_id)

    def mark_failed(self, node_id: str) -> None:
        """A request to the node failed: do not use it until its next heartbeat arrives."""
        with self._lock:
            view = self._nodes.get(node_id)
            if view is not None:
                view.failed_at = time.monotonic()
                view.failures += 1
                self._version += 1

    def _cached(self, key: Any, compute: Any) -> Any:
        """``compute()`` once per version of the map (see the module docstring)."""
        now = time.monotonic()
        with self._lock:
            if self._cache_version != self._version or now >= self._cache_until:
                self._cache.clear()
                healthy = [n for n in self._nodes.values() if n.healthy(self.stale_s, now)]
                self._cache["healthy"] = healthy
                self._cache_version = self._version
                self._cache_until = min(
                    (n.seen + self.stale_s for n in healthy), default=float("inf")
                )
            if key not in self._cache:
                self._cache[key] = compute(self._cache["healthy"])
            return self._cache[key]

    def healthy_nodes(self) -> list[NodeView]:
        """The healthy nodes (a shared list: do not change it)."""
        return self._cached("healthy", lambda healthy: healthy)

    def collections(self) -> list[str]:
        """Collections some healthy node serves."""
        return sorted({c for n in self.healthy_nodes() for c in n.collections})

    def collection_meta(self, name: str) -> dict[str, Any] | None:
        """Topic, ``partitions_total``, ``distance``, ``dim`` of ``name``.

        From a healthy node when there is one, else from the last heartbeat of
        any node (so a collection whose nodes are all down is still known, and
        reads name its missing partitions instead of calling it unknown).
        """
        return self._cached(("meta", name), lambda healthy: self._meta(name, healthy))

    def _meta(self, name: str, healthy: list[NodeView]) -> dict[str, Any] | None:
        best = None
        for n in healthy or list(self._nodes.values()):
            meta = n.collections.get(name)
            if meta is None:
                continue
            if best is None or (meta.get("partitions_total") or 0) > (
                best.get("partitions_total") or 0
            ):
                best = meta
        return best

    def replicas(self, name: str, *, include_catching_up: bool = False) -> dict[int, list[Replica]]:
        """Per partition of ``name``, the healthy nodes serving it (any group).

        A shared map: do not change it.
        """
        return self._cached(
            ("replicas", name, include_catching_up),
            lambda healthy: self._replicas(name, include_catching_up, healthy),
        )

    def groups(self, name: str) -> list[str]:
        """The replica groups with a healthy node serving some partition of ``name``, sorted."""
        return self._cached(
            ("groups", name),
            lambda healthy: sorted(
                {r.group for rs in self._replicas(name, False, healthy).values() for r in rs}
            ),
        )

    def _replicas(
        self, name: str, include_catching_up: bool, healthy: list[NodeView]
    ) -> dict[int, list[Replica]]:
        out: dict[int, list[Replica]] = {}
        for n in healthy:
            meta = n.collections.get(name)
            if meta is None:
                continue
            for key, part in (meta.get("partitions") or {}).items():
                if part.get("state") != "serving" and not include_catching_up:
                    continue
                p = int(key)
                out.setdefault(p, []).append(
                    Replica(n, str(meta.get("group")), p, part.get("offset"), part.get("lag"))
                )
        return out
