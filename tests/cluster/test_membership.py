"""Liveness by arrival time: nodes whose wall clocks disagree with the router's.

Heartbeats are produced straight to a real heartbeat topic (real Tansu
broker) with ``ts_ms`` an hour behind or ahead of this machine's clock, as a
node on a machine with a wrong clock would send them; ``Membership`` must
judge them by when they arrive.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cluster.conftest import unique, wait_until
from vdb.cluster import heartbeat
from vdb.cluster.membership import Membership

HOUR_MS = 3_600_000


def beat(cluster: str, node_id: str, ts_ms: int, partitions: list[int]) -> dict[str, Any]:
    parts = {str(p): {"state": "serving", "offset": 0, "lag": 0} for p in partitions}
    return {
        "v": heartbeat.VERSION,
        "cluster": cluster,
        "node_id": node_id,
        "url": f"http://127.0.0.1:1/{node_id}",
        "state": "serving",
        "ts_ms": ts_ms,
        "interval_ms": 1000,
        "collections": {
            "docs": {
                "topic": "t",
                "group": "g",
                "partitions_total": 2,
                "distance": "Cosine",
                "dim": 4,
                "partitions": parts,
            }
        },
    }


@pytest.fixture
def sender(broker: Any) -> Iterator[Any]:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)
    cluster = unique("clock")
    topic = heartbeat.topic_name(cluster)
    heartbeat.ensure_topic(broker.bootstrap, topic)

    def send(node_id: str, ts_ms: int, partitions: list[int]) -> None:
        value = heartbeat.encode(beat(cluster, node_id, ts_ms, partitions))
        producer.send(topic, key=node_id.encode(), value=value)
        producer.flush()

    send.cluster = cluster  # type: ignore[attr-defined]
    yield send
    producer.close()


def test_freshness_is_the_arrival_time_not_the_senders_clock(broker: Any, sender: Any) -> None:
    members = Membership(broker.bootstrap, sender.cluster, stale_s=2.0).start()
    try:
        assert members.ready.wait(30)
        now_ms = int(time.time() * 1000)
        sender("behind", now_ms - HOUR_MS, [0])  # a clock an hour slow
        sender("ahead", now_ms + HOUR_MS, [1])  # a clock an hour fast
        wait_until(lambda: {n.node_id for n in members.healthy_nodes()} == {"behind", "ahead"})
        assert sorted(members.replicas("docs")) == [0, 1]

        # "behind" keeps beating (with its slow clock), "ahead" stops: only "ahead" expires,
        # although its last timestamp is still an hour in this machine's future
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            sender("behind", int(time.time() * 1000) - HOUR_MS, [0])
            time.sleep(0.25)
        healthy = {n.node_id for n in members.healthy_nodes()}
        assert healthy == {"behind"}
        assert sorted(members.replicas("docs")) == [0]
        ahead = members.node("ahead")
        assert ahead is not None and ahead.age_s() >= 2.0

        # a node that restarts with its clock set back replaces its record (log order)
        sender("ahead", int(time.time() * 1000) - 2 * HOUR_MS, [1])
        wait_until(lambda: {n.node_id for n in members.healthy_nodes()} == {"behind", "ahead"})
    finally:
        members.close()


def test_a_failed_node_waits_for_its_next_heartbeat(broker: Any, sender: Any) -> None:
    members = Membership(broker.bootstrap, sender.cluster, stale_s=5.0).start()
    try:
        assert members.ready.wait(30)
        sender("n", int(time.time() * 1000) + HOUR_MS, [0, 1])
        wait_until(lambda: [n.node_id for n in members.healthy_nodes()] == ["n"])
        members.mark_failed("n")
        assert members.healthy_nodes() == [] and members.replicas("docs") == {}
        sender("n", int(time.time() * 1000) - HOUR_MS, [0, 1])  # the next beat, any clock
        wait_until(lambda: [n.node_id for n in members.healthy_nodes()] == ["n"])
        assert members.node("n").failures == 1
    finally:
        members.close()


def test_a_router_starting_late_does_not_revive_old_heartbeats(broker: Any, sender: Any) -> None:
    """Records written before the router read them are aged by the wall clocks, once."""
    sender("old", int(time.time() * 1000) - 600_000, [0])  # ten minutes old
    sender("fresh", int(time.time() * 1000), [1])
    members = Membership(broker.bootstrap, sender.cluster, stale_s=60.0).start()
    try:
        assert members.ready.wait(30)
        assert {n.node_id for n in members.nodes()} == {"old", "fresh"}
        assert {n.node_id for n in members.healthy_nodes()} == {"fresh"}
    finally:
        members.close()


def test_reading_the_topic_again_does_not_bring_back_older_records() -> None:
    """After an error the topic is read from its start again: older records are skipped."""
    members = Membership("127.0.0.1:1", "replay", stale_s=2.0)  # not started: records by hand
    now_ms = int(time.time() * 1000)
    first = heartbeat.encode(beat("replay", "n", now_ms - 5_000, [0]))
    last = heartbeat.encode(beat("replay", "n", now_ms, [0, 1]))
    members._apply(b"n", first, historic=True)
    members._apply(b"n", last, historic=False)  # the live beat
    assert sorted(members.replicas("docs")) == [0, 1]
    for record in (first, last):  # the re-read: neither replaces the live beat
        members._apply(b"n", record, historic=True)
        assert sorted(members.replicas("docs")) == [0, 1]
        assert [n.node_id for n in members.healthy_nodes()] == ["n"]
        assert members.node("n").age_s() < 1.0
