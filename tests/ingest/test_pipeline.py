"""The pipeline without a broker: JSON-lines source, resume, adaptive batches, drain, CLI, config."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vdb
from tests.helpers import REPO
from tests.ingest.conftest import wait_until
from vdb.errors import InvalidInput
from vdb.ingest import FileSource
from vdb.ingest.cli import load_config, specs_from_args, start_from_args

DIM = 3


def line(i: int, version: int = 0, **extra) -> str:
    return json.dumps({"id": i, "vector": [i, version, 1.0], "payload": {"v": version}, **extra})


@pytest.fixture
def db(tmp_path):
    with vdb.open(tmp_path / "data", warm=False) as database:
        database.create_collection("c", dim=DIM, metric="l2")
        yield database


def test_file_load_resumes_after_the_stored_line(db, tmp_path):
    path = tmp_path / "in.jsonl"
    rows = [line(i) for i in range(500)] + ["", "{broken", line(3, op="delete")]
    path.write_text("\n".join(rows) + "\n")
    handle = db.ingest(FileSource(path), "c")
    assert handle.join(60)
    s = handle.stats()
    assert s["state"] == "stopped" and s["error"] is None
    assert (s["records"], s["upserts"], s["deletes"], s["dead_letters"]) == (502, 500, 1, 1)
    col = db.collection("c")
    assert col.count() == 499
    assert db.source_offsets(f"file:{path}") == {(str(path), 0): 502}
    [letter] = db.dead_letters(source=f"file:{path}")
    assert (letter.offset, letter.value) == (501, b"{broken")

    with path.open("a") as f:  # appended lines: a second run applies only those
        f.write(line(3, 1) + "\n" + line(600, 1) + "\n")
    handle = db.ingest(FileSource(path), "c")
    assert handle.join(60)
    assert handle.stats()["records"] == 2
    assert col.count() == 501
    got = col.get([3, 600], with_vectors=True)
    assert [r.payload for r in got] == [{"v": 1}, {"v": 1}]
    np.testing.assert_array_equal(got[0].vector, [3, 1, 1])


def test_batch_target_adapts_to_the_latency_target(db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(line(i) for i in range(3000)) + "\n")
    slow = db.ingest(
        FileSource(path, name="a"),
        "c",
        latency_target_ms=1e-6,
        batch_start=256,
        batch_min=8,
        max_queued_records=64,
    )
    assert slow.join(60)
    assert slow.stats()["batch_target"] == 8  # every batch over target: x0.8 down to the floor
    path.write_text("\n".join(line(i) for i in range(6000)) + "\n")
    fast = db.ingest(
        FileSource(path, name="b"),
        "c",
        latency_target_ms=1e6,
        batch_start=64,
        batch_max=512,
        max_queued_records=64,
    )
    assert fast.join(60)
    s = fast.stats()
    assert s["batch_target"] == 512  # every full batch well under target: x1.1 up to the ceiling
    assert s["batch_latency_ms"]["p50"] is not None and s["records"] == 6000


def test_stop_applies_the_batch_in_flight(db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(line(i) for i in range(50)) + "\n")
    # A batch that would wait a minute to be cut: stop() must apply it anyway.
    handle = db.ingest(
        FileSource(path, follow=True),
        "c",
        max_wait_ms=60_000,
        batch_start=1000,
        batch_max=1000,
        eager=False,
    )
    s = wait_until(lambda: (s := handle.stats())["pending_records"] == 50 and s)
    assert s["records"] == 0 and db.collection("c").count() == 0
    handle.stop()
    assert not handle.running and handle.stats()["state"] == "stopped"
    assert db.collection("c").count() == 50
    assert db.source_offsets(f"file:{path}") == {(str(path), 0): 49}


def test_idle_writer_applies_a_partial_batch_without_waiting_for_its_age(db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(line(i) for i in range(50)) + "\n")
    # Neither size (1000) nor age (10 minutes) would cut this batch: the idle writer takes it.
    handle = db.ingest(
        FileSource(path, follow=True), "c", max_wait_ms=600_000, batch_start=1000, batch_max=1000
    )
    try:
        wait_until(lambda: db.collection("c").count() == 50)
        s = wait_until(lambda: (s := handle.stats())["records"] == 50 and s)
        assert s["pending_records"] == 0 and s["queued_records"] == 0
        assert db.source_offsets(f"file:{path}") == {(str(path), 0): 49}
    finally:
        handle.stop()


def test_bad_collection_and_options_are_refused(db, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("")
    with pytest.raises(vdb.CollectionNotFound):
        db.ingest(FileSource(path), "missing")
    with pytest.raises(InvalidInput):
        db.ingest(FileSource(path), "c", batch_size=3)
    with pytest.raises(InvalidInput):
        db.ingest(FileSource(path), "c", format="avro")


def test_cli_ingest_from_stdin_then_list_dead_letters(tmp_path):
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rows = [line(i) for i in range(20)] + ['{"id": 1, "vector": [1, 2]}', line(5, op="delete")]
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "vdb",
            "ingest",
            "--data",
            str(data),
            "--ingest",
            "file",
            "--ingest-file",
            "-",
            "--collection",
            "c",
            "--create-dim",
            str(DIM),
            "--create-metric",
            "l2",
        ],  # fmt: skip
        input="\n".join(rows) + "\n",
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    listed = subprocess.run(
        [sys.executable, "-m", "vdb", "dead-letters", "--data", str(data)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert "-[0]@20" in listed.stdout and "wrong dimension: expected 3, got 2" in listed.stdout
    with vdb.open(data, warm=False) as db:
        assert db.collection("c").count() == 19
        assert len(db.dead_letters()) == 1


def test_specs_from_flags_and_config_files(tmp_path, db):
    from vdb.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(
        [
            "serve", "--data", str(tmp_path), "--kafka-bootstrap", "h:1", "--kafka-group", "g",
            "--ingest", "kafka", "--kafka-topic", "a,b", "--collection", "A",
            "--kafka-option", "session_timeout_ms=6000",
            "--ingest", "kafka", "--kafka-topic", "c", "--collection", "B", "--format", "float32",
            "--kafka-isolation", "read_committed",
        ]
    )  # fmt: skip
    a, b = specs_from_args(args)
    assert (a["bootstrap"], a["group"], a["topics"], a["collection"]) == (
        "h:1",
        "g",
        ["a", "b"],
        "A",
    )
    assert a["kafka_options"] == ["session_timeout_ms=6000"]
    assert (b["topics"], b["format"], b["isolation"], b["group"]) == (
        ["c"],
        "float32",
        "read_committed",
        "g",
    )
    assert specs_from_args(parser.parse_args(["serve", "--data", str(tmp_path)])) == []
    assert start_from_args(db, parser.parse_args(["serve", "--data", str(tmp_path)])) == []

    toml = tmp_path / "ingest.toml"
    toml.write_text(
        '[[ingest]]\nkind = "kafka"\nbootstrap = "h:1"\ntopic = "t"\ncollection = "c"\n'
        '[[ingest]]\nkind = "file"\npath = "x.jsonl"\ncollection = "c"\n'
    )
    specs = load_config(toml)
    assert specs[0]["topics"] == ["t"] and specs[1]["path"] == "x.jsonl"
    jsonfile = tmp_path / "ingest.json"
    jsonfile.write_text(json.dumps({"ingest": [{"kind": "kafka", "collection": "c"}]}))
    with pytest.raises(InvalidInput, match="kafka needs --kafka-bootstrap"):
        specs_from_args(
            parser.parse_args(["serve", "--data", str(tmp_path), "--ingest-config", str(jsonfile)])
        )
    with pytest.raises(InvalidInput, match="unknown ingest source"):
        start_from_args(
            db,
            parser.parse_args(["serve", "--data", "x", "--ingest", "nosuch", "--collection", "c"]),
        )
