"""Kafka ingest against a real broker: records, updates, tombstones, poison, back-pressure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest

import vdb
from tests.helpers import REPO
from tests.ingest.conftest import FAST_GROUP, create_topic, send_json, unique, wait_until
from vdb.ingest import KafkaSource

DIM = 8


def vec(i: int, version: int = 0) -> list[float]:
    rng = np.random.default_rng(i * 1000 + version)
    return rng.standard_normal(DIM).astype(np.float32).tolist()


@pytest.fixture
def db(tmp_path):
    with vdb.open(tmp_path / "data", warm=False) as database:
        database.create_collection("docs", dim=DIM, metric="l2")
        yield database


def _records_applied(handle, n):
    return lambda: handle.stats()["records"] >= n


def test_records_updates_tombstones_are_mirrored(broker, producer, db):
    topic = create_topic(broker.bootstrap, unique("docs"), partitions=2)
    n = 300
    for i in range(n):
        send_json(producer, topic, {"id": i, "vector": vec(i), "payload": {"i": i, "v": 0}})
    for i in range(0, 40):  # updates replace vector and payload
        send_json(producer, topic, {"id": i, "vector": vec(i, 1), "payload": {"i": i, "v": 1}})
    for i in range(100, 120):  # tombstones delete the key's point
        producer.send(topic, key=str(i).encode(), value=None)
    for i in range(120, 130):  # op: delete deletes too
        send_json(producer, topic, {"id": i, "op": "delete"})
    send_json(producer, topic, {"id": "doc-a", "vector": vec(9999), "payload": {"s": True}})
    producer.send(topic, key=b"never-existed", value=None)  # deleting a missing id is harmless
    producer.flush()
    total = n + 40 + 20 + 10 + 2

    source = KafkaSource(broker.bootstrap, topic, group_id=unique("g"), consumer_options=FAST_GROUP)
    handle = db.ingest(source, "docs")
    wait_until(_records_applied(handle, total), timeout=60)
    col = db.collection("docs")

    assert col.count() == n - 30 + 1
    got = {r.id: r for r in col.get(list(range(n)) + ["doc-a"], with_vectors=True)}
    for i in range(n):
        if 100 <= i < 130:
            assert i not in got
            continue
        version = 1 if i < 40 else 0
        assert got[i].payload == {"i": i, "v": version}
        np.testing.assert_allclose(got[i].vector, vec(i, version), rtol=1e-6)
    assert got["doc-a"].payload == {"s": True}
    hits = col.search(np.asarray(vec(7, 1), dtype=np.float32), k=1)
    assert hits[0].id == 7 and hits[0].payload == {"i": 7, "v": 1}

    stats = handle.stats()
    assert stats["dead_letters"] == 0 and stats["state"] == "running"
    assert stats["freshness_ms"]["count"] == total
    assert stats["lag"] == 0
    assert len(stats["partitions"]) == 2
    stored = db.source_offsets(source.name)
    ends = {(p["topic"], p["partition"]): p["end_offset"] for p in stats["partitions"].values()}
    assert {tp: off + 1 for tp, off in stored.items()} == ends
    assert sum(ends.values()) == total

    handle.stop()
    assert handle.stats()["state"] == "stopped" and not handle.running

    # Kafka's committed offsets follow the WAL (for lag tooling).
    from kafka import KafkaConsumer, TopicPartition

    probe = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=source.group_id)
    try:
        for (t, p), off in stored.items():
            assert probe.committed(TopicPartition(t, p)) == off + 1
    finally:
        probe.close()

    # A restarted pipeline resumes after the stored offsets: nothing applied twice.
    handle = db.ingest(
        KafkaSource(broker.bootstrap, topic, group_id=source.group_id, consumer_options=FAST_GROUP),
        "docs",
    )
    send_json(producer, topic, {"id": 5, "vector": vec(5, 2), "payload": {"i": 5, "v": 2}})
    producer.flush()
    wait_until(_records_applied(handle, 1), timeout=60)
    time.sleep(0.3)
    assert handle.stats()["records"] == 1
    assert col.get([5])[0].payload == {"i": 5, "v": 2}
    handle.stop()


def test_poison_messages_become_dead_letters(broker, producer, db, tmp_path):
    topic = create_topic(broker.bootstrap, unique("poison"))
    dlq = create_topic(broker.bootstrap, unique("dlq"))
    good = {"id": 1, "vector": vec(1)}
    nan_vector = vec(2)
    nan_vector[3] = math.nan
    poison = [
        (b"1", b"{not json", "undecodable json"),
        (b"x", json.dumps({"id": 3, "vector": vec(3)[:5]}).encode(), "wrong dimension"),
        (b"x", json.dumps({"id": 4, "vector": nan_vector}).encode(), "NaN"),
        (None, json.dumps({"vector": vec(5)}).encode(), "missing id"),
        (b"x", json.dumps({"id": -6, "vector": vec(6)}).encode(), "unsigned"),
        (b"x", json.dumps({"id": True, "vector": vec(7)}).encode(), "booleans"),
        (b"x", json.dumps({"id": 8}).encode(), "missing vector"),
        (b"x", json.dumps({"id": 9, "vector": ["a"] * DIM}).encode(), "only numbers"),
        (b"x", json.dumps({"id": 10, "vector": vec(10), "payload": [1]}).encode(), "payload"),
        (b"x", json.dumps({"id": 11, "op": "merge"}).encode(), "unknown op"),
        (b"x", json.dumps([1, 2]).encode(), "must be an object"),
        (b"x", json.dumps({"id": 12, "vector": [1e39] * DIM}).encode(), "NaN or infinity"),
    ]
    send_json(producer, topic, good)
    for key, value, _ in poison:
        producer.send(topic, key=key, value=value)
        send_json(producer, topic, {"id": 100 + len(key or b""), "vector": vec(100)})
    send_json(producer, topic, {"id": 2, "vector": vec(2)})
    producer.flush()
    total = 1 + 2 * len(poison) + 1

    source = KafkaSource(broker.bootstrap, topic, dead_letter_topic=dlq)  # no group: all partitions
    handle = db.ingest(source, "docs")
    wait_until(_records_applied(handle, total), timeout=60)
    handle.stop()

    letters = db.dead_letters(limit=100, source=source.name)
    assert len(letters) == len(poison)
    for letter, (key, value, reason) in zip(letters, poison, strict=True):
        assert reason in letter.reason, (reason, letter.reason)
        assert (letter.key, letter.value, letter.topic, letter.partition) == (key, value, topic, 0)
    assert [d.offset for d in letters] == [2 * i + 1 for i in range(len(poison))]
    col = db.collection("docs")
    assert {r.id for r in col.get([1, 2, 100, 101])} == {1, 2, 100, 101}
    assert handle.stats()["dead_letters"] == len(poison)

    # The dead-letter topic gets a copy with the reason in a header.
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest")
    consumer.assign([TopicPartition(dlq, 0)])
    copies = []
    deadline = time.monotonic() + 30
    while len(copies) < len(poison) and time.monotonic() < deadline:
        for records in consumer.poll(200).values():
            copies.extend(records)
    consumer.close()
    assert [c.value for c in copies] == [v for _, v, _ in poison]
    assert all(dict(c.headers)["vdb-reason"] for c in copies)

    # And the CLI lists them, reading the data directory while the db is open.
    out = subprocess.run(
        [sys.executable, "-m", "vdb", "dead-letters", "--data", str(db.path), "--json"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["reason"] for r in rows] == [d.reason for d in letters]


def test_msgpack_and_float32_formats(broker, producer, tmp_path):
    packed = create_topic(broker.bootstrap, unique("mp"))
    raw = create_topic(broker.bootstrap, unique("f32"))
    with vdb.open(tmp_path / "d", warm=False) as db:
        db.create_collection("a", dim=DIM, metric="l2")
        db.create_collection("b", dim=DIM, metric="l2")
        for i in range(20):
            v = np.asarray(vec(i), dtype="<f4")
            vector = v.tobytes() if i % 2 else v.tolist()  # bin or array
            producer.send(
                packed,
                key=str(i).encode(),
                value=msgpack.packb({"id": i, "vector": vector, "payload": {"i": i}}),
            )
            producer.send(raw, key=f"p{i}".encode(), value=v.tobytes())
        producer.send(packed, key=b"3", value=None)
        producer.send(raw, key=b"p4", value=None)
        producer.send(raw, key=b"p5", value=b"\x00\x01\x02")
        producer.flush()
        ha = db.ingest(KafkaSource(broker.bootstrap, packed, name="mp"), "a", format="msgpack")
        hb = db.ingest(KafkaSource(broker.bootstrap, raw, name="f32"), "b", format="float32")
        wait_until(lambda: ha.stats()["records"] >= 21 and hb.stats()["records"] >= 22)
        ha.stop()
        hb.stop()
        a, b = db.collection("a"), db.collection("b")
        assert a.count() == 19 and b.count() == 19
        assert a.get([7])[0].payload == {"i": 7}
        np.testing.assert_allclose(b.get(["p9"], with_vectors=True)[0].vector, vec(9), rtol=1e-6)
        assert [d.offset for d in db.dead_letters(source="f32")] == [21]


def test_backpressure_pauses_partitions_and_bounds_buffers(broker, producer, db):
    topic = create_topic(broker.bootstrap, unique("bp"), partitions=2)
    n = 1500
    for i in range(n):
        send_json(producer, topic, {"id": i, "vector": vec(i)})
    producer.flush()
    batch_max, queued = 32, 64
    # A deliberately slow writer: the pipeline's rate ceiling holds it at 500 records/s.
    handle = db.ingest(
        KafkaSource(broker.bootstrap, topic),
        "docs",
        batch_max=batch_max,
        max_queued_records=queued,
        max_rate=500,
    )
    seen_paused = False
    deadline = time.monotonic() + 60
    while handle.stats()["records"] < n and time.monotonic() < deadline:
        s = handle.stats()
        parts = s["partitions"].values()
        if s["paused"] and parts and all(p["paused"] for p in parts):
            seen_paused = True
        time.sleep(0.02)
    final = wait_until(lambda: (s := handle.stats())["records"] >= n and not s["paused"] and s)
    handle.stop()
    assert seen_paused
    assert final["pause_events"] >= 1 and final["resume_events"] >= 1
    assert 0 < final["buffered_records_max"] <= queued + 2 * batch_max
    assert final["batch_size_last"] <= batch_max
    assert db.collection("docs").count() == n


def test_read_committed_with_a_transactional_producer(broker, db):
    from kafka import KafkaProducer

    topic = create_topic(broker.bootstrap, unique("tx"))
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id=unique("txp"))
    try:
        producer.init_transactions()
        futures = []
        for t in range(3):
            producer.begin_transaction()
            for i in range(t * 10, t * 10 + 10):
                value = json.dumps({"id": i, "vector": vec(i)}).encode()
                futures.append(producer.send(topic, key=str(i).encode(), value=value))
            producer.commit_transaction()
        last = max(f.get(timeout=30).offset for f in futures)
    finally:
        producer.close(timeout=10)
    source = KafkaSource(broker.bootstrap, topic, isolation_level="read_committed")
    assert source.consumer_config()["isolation_level"] == "read_committed"
    handle = db.ingest(source, "docs")
    wait_until(_records_applied(handle, 30), timeout=60)
    # Transaction markers take offsets too; they are neither records nor lag.
    wait_until(lambda: handle.stats()["lag"] == 0, timeout=30)
    handle.stop()
    assert handle.stats()["records"] == 30 and handle.stats()["dead_letters"] == 0
    assert db.collection("docs").count() == 30
    assert db.source_offsets(source.name) == {(topic, 0): last}
    assert last > 29  # the markers really are in the log


def test_full_fresh_segment_pauses_partitions_until_the_indexer_drains_it(
    broker, producer, tmp_path
):
    topic = create_topic(broker.bootstrap, unique("fresh"), partitions=2)
    n, limit = 1200, 200
    for i in range(n):
        send_json(producer, topic, {"id": i, "vector": vec(i)})
    producer.flush()
    with vdb.open(tmp_path / "d", warm=False, indexing=False) as db:
        col = db.create_collection("docs", dim=DIM, metric="l2", fresh_limit=limit)
        handle = db.ingest(
            KafkaSource(broker.bootstrap, topic), "docs", batch_max=50, max_queued_records=100
        )
        # the indexer is paused: the writer holds the batch that would pass the bound, the
        # queue fills and the partitions pause; nothing grows past the bound
        wait_until(lambda: (s := handle.stats())["paused"] and s, timeout=60)
        held = col.count()
        assert 0 < held <= limit + 50
        assert col.info()["segments"]["fresh_rows"] <= limit + 50
        assert handle.stats()["buffered_records_max"] <= 100 + 2 * 50
        db.resume_indexing()
        final = wait_until(lambda: (s := handle.stats())["records"] >= n and s, timeout=120)
        handle.stop()
        assert final["pause_events"] >= 1 and final["resume_events"] >= 1
        assert col.count() == n
        assert col.wait_indexed(timeout=120)
        assert [h.id for h in col.search(vec(77), k=1)] == [77]
