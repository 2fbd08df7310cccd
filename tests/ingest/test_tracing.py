"""Ingest tracing against a real broker: a producer's traceparent header links the batch span.

The trace of one Kafka message: the producer's span (in the producer's own
trace) <- linked from the vdb batch span ``process <topic>``, whose children
are the poll, the decode and the group commit with its WAL commit and apply.
"""

from __future__ import annotations

import numpy as np
import pytest
from opentelemetry.trace import SpanKind

import vdb
from tests.ingest.conftest import FAST_GROUP, create_topic, send_json, unique, wait_until
from tests.tracing import attrs, tracing
from vdb import telemetry
from vdb.ingest import KafkaSource

DIM = 4


@pytest.fixture
def db(tmp_path):
    with vdb.open(tmp_path / "data", warm=False, checkpoint_interval_s=None) as database:
        database.create_collection("docs", dim=DIM, metric="l2")
        yield database


def test_producer_span_links_to_batch_span_with_wal_and_apply_children(broker, producer, db):
    topic = create_topic(broker.bootstrap, unique("traced"))
    group = unique("g")
    with tracing() as spans:
        with spans.tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER) as sending:
            headers = telemetry.kafka_headers()
            send_json(producer, topic, {"id": 7, "vector": [1, 0, 0, 0]}, headers=headers)
        send_json(producer, topic, {"id": 8, "vector": [0, 1, 0, 0]})  # no trace context
        send_json(producer, topic, {"id": 9, "vector": "not a vector"})  # a dead letter
        producer.flush()
        handle = db.ingest(
            KafkaSource(broker.bootstrap, topic, group_id=group, consumer_options=FAST_GROUP),
            "docs",
            batch_start=16,
            max_wait_ms=500,
            eager=False,
        )
        try:
            wait_until(lambda: handle.stats()["records"] >= 3, timeout=60)
        finally:
            handle.stop()
    assert len(db.collection("docs")) == 2
    produced = sending.get_span_context()
    batches = [s for s in spans.all() if s.name == f"process {topic}"]
    linked = [
        b for b in batches if any(link.context.span_id == produced.span_id for link in b.links)
    ]
    assert len(linked) == 1, [(b.name, b.links) for b in batches]
    batch = linked[0]
    assert batch.kind.name == "CONSUMER"
    assert batch.context.trace_id != produced.trace_id  # a link, not a parent
    (link,) = [lk for lk in batch.links if lk.context.span_id == produced.span_id]
    assert link.context.trace_id == produced.trace_id
    assert link.attributes["messaging.destination.name"] == topic
    assert link.attributes["messaging.destination.partition.id"] == "0"
    assert link.attributes["messaging.kafka.offset"] == 0
    a = attrs(batch)
    assert a["messaging.system"] == "kafka"
    assert a["messaging.destination.name"] == topic
    assert a["messaging.consumer.group.name"] == group
    assert a["db.collection.name"] == "docs"
    assert a["messaging.batch.message_count"] == 3
    assert a["vdb.ingest.dead_letters"] == 1
    assert a["vdb.ingest.offsets"] == (f"{topic}/0:0-2",)
    poll = spans.child(batch, "vdb.ingest.poll")
    decode = spans.child(batch, "vdb.ingest.decode")
    assert batch.start_time <= poll.start_time <= poll.end_time <= decode.end_time
    commit = spans.child(batch, "vdb.group_commit")
    wal = spans.child(commit, "vdb.wal.commit")
    apply = spans.child(commit, "vdb.apply")
    assert wal.end_time <= apply.start_time <= apply.end_time <= batch.end_time
    assert attrs(apply)["db.collection.name"] == "docs"


def test_untraced_messages_and_tracing_off_still_ingest(broker, producer, db):
    topic = create_topic(broker.bootstrap, unique("plain"))
    for i in range(5):
        send_json(producer, topic, {"id": i, "vector": np.eye(DIM)[i % DIM].tolist()})
    producer.flush()
    handle = db.ingest(
        KafkaSource(broker.bootstrap, topic, group_id=unique("g"), consumer_options=FAST_GROUP),
        "docs",
    )
    try:
        wait_until(lambda: handle.stats()["records"] >= 5, timeout=60)
    finally:
        handle.stop()
    assert not telemetry.enabled()
    assert len(db.collection("docs")) == 5
