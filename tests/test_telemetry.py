"""vdb.telemetry: setup from OTEL_* variables, the no-op path, and the writer's span tree."""

from __future__ import annotations

import numpy as np
import pytest

import vdb
from tests.tracing import attrs, tracing
from vdb import telemetry
from vdb.errors import InvalidInput


@pytest.fixture
def db(tmp_path):
    with vdb.open(tmp_path / "data", warm=False, checkpoint_interval_s=None) as database:
        yield database


def test_off_by_default_and_when_none():
    assert not telemetry.enabled()
    assert telemetry.configure({}) is False
    assert telemetry.configure({"OTEL_TRACES_EXPORTER": "none"}) is False
    assert not telemetry.enabled()
    assert telemetry.span("x") is telemetry.NOOP_SPAN
    assert telemetry.kafka_headers() == []


def test_sdk_disabled_wins():
    env = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SDK_DISABLED": "true"}
    assert telemetry.configure(env) is False
    assert not telemetry.enabled()


def test_console_and_otlp_exporters_configure(monkeypatch):
    try:
        assert telemetry.configure({"OTEL_TRACES_EXPORTER": "console,otlp"}) is True
        assert telemetry.enabled()
        with telemetry.span("configured") as span:
            assert span.is_recording()
            assert span.resource.attributes["service.name"] == "vdb"
    finally:
        telemetry.shutdown()
    assert not telemetry.enabled()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "search-east")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    try:
        assert telemetry.configure()
        with telemetry.span("named") as span:
            assert span.resource.attributes["service.name"] == "search-east"
    finally:
        telemetry.shutdown()


def test_unknown_exporter_is_a_clear_error():
    with pytest.raises(InvalidInput, match="jaeger"):
        telemetry.configure({"OTEL_TRACES_EXPORTER": "jaeger"})
    with pytest.raises(InvalidInput, match="http/protobuf or grpc"):
        telemetry.configure(
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        )
    assert not telemetry.enabled()


def test_nothing_is_recorded_when_off(db):
    col = db.create_collection("c", dim=4, metric="l2")
    with tracing() as spans:
        telemetry.disable()
        col.upsert([1], np.ones((1, 4)))
        db.checkpoint()
    assert spans.all() == []


def test_group_commit_is_a_child_of_the_caller_with_wal_and_apply(db):
    col = db.create_collection("docs", dim=4, metric="l2")
    with tracing() as spans:
        with spans.tracer.start_as_current_span("caller"):
            col.upsert([1, 2, 3], np.random.default_rng(0).random((3, 4)))
    caller = spans.one("caller")
    commit = spans.child(caller, "vdb.group_commit")
    assert commit.context.trace_id == caller.context.trace_id
    a = attrs(commit)
    assert a["db.collection.name"] == "docs"
    assert a["db.operation.batch.size"] == 1
    assert a["vdb.writes.ops"] == 3
    wal = spans.child(commit, "vdb.wal.commit")
    apply = spans.child(commit, "vdb.apply")
    assert wal.end_time <= apply.start_time
    assert attrs(apply)["db.collection.name"] == "docs"
    assert attrs(apply)["vdb.apply.ops"] == 3
    assert attrs(apply)["vdb.apply.last_seq"] == db.last_seq


def test_a_group_of_many_callers_links_the_others(db):
    import threading

    col = db.create_collection("docs", dim=4, metric="l2")
    barrier = threading.Barrier(8)
    with tracing() as spans:

        def write(i: int) -> None:
            with spans.tracer.start_as_current_span(f"caller-{i}"):
                barrier.wait()
                col.upsert([i], np.full((1, 4), float(i)))

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    callers = {s.context.span_id for s in spans.all() if s.name.startswith("caller-")}
    commits = spans.named("vdb.group_commit")
    reached = set()
    for commit in commits:
        reached.add(commit.parent.span_id)
        reached.update(link.context.span_id for link in commit.links)
        assert attrs(commit)["db.operation.batch.size"] == 1 + len(commit.links)
    assert reached == callers  # every caller is the parent or a link of its group commit
    assert len(spans.named("vdb.wal.commit")) == len(commits)


def test_checkpoint_and_snapshot_spans(db, tmp_path):
    col = db.create_collection("docs", dim=4, metric="l2")
    col.upsert([1], np.ones((1, 4)))
    with tracing() as spans:
        result = db.checkpoint()
        col.upsert([2], np.ones((1, 4)))
        db.snapshot(tmp_path / "s.vdbsnap")
    first = spans.named("vdb.checkpoint")[0]
    assert first.parent is None
    assert attrs(first)["vdb.result.seq"] == result["seq"]
    assert attrs(first)["vdb.result.collections"] == 1
    snapshot = spans.one("vdb.snapshot")
    assert attrs(snapshot)["vdb.snapshot.path"].endswith("s.vdbsnap")
    assert attrs(snapshot)["vdb.result.last_seq"] == db.last_seq
    inner = spans.child(snapshot, "vdb.checkpoint")  # a snapshot checkpoints first
    assert attrs(inner)["vdb.result.collections"] == 1


def test_a_failing_span_records_the_error(db):
    with tracing() as spans:
        with pytest.raises(InvalidInput):
            with telemetry.span("outer"):
                db.create_collection("bad name!", dim=4)
    outer = spans.one("outer")
    assert not outer.status.is_ok
    assert any(e.name == "exception" for e in outer.events)


def test_kafka_headers_round_trip_to_a_link():
    with tracing() as spans:
        with spans.tracer.start_as_current_span("send docs") as producer:
            headers = telemetry.kafka_headers()
        assert [k for k, _ in headers] == ["traceparent"]
        link = telemetry.message_link(headers, {"messaging.kafka.offset": 7})
    assert link.context.trace_id == producer.get_span_context().trace_id
    assert link.context.span_id == producer.get_span_context().span_id
    assert link.attributes["messaging.kafka.offset"] == 7
    assert telemetry.message_link([("traceparent", b"garbage")]) is None
    assert telemetry.message_link([("other", b"x")]) is None
    assert telemetry.message_link(None) is None


OFF_CHILD = """
import sys
import numpy as np
import vdb
from vdb.http.app import build_app
with vdb.open(sys.argv[1], warm=False) as db:
    col = db.create_collection("c", dim=4, metric="l2")
    col.upsert([1, 2], np.eye(4, dtype=np.float32)[:2])
    col.search(np.ones(4, np.float32), k=1)
    db.checkpoint()
    build_app(db, warm_in_background=False)
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""


def test_tracing_off_imports_nothing_of_opentelemetry(tmp_path):
    import os
    import subprocess
    import sys

    from tests.helpers import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", OFF_CHILD, str(tmp_path / "d")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
