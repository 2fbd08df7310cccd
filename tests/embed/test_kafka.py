"""Text from Kafka (real Tansu broker): the ``text`` format, dead letters, kill -9 recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import vdb
from tests.embed.conftest import cosines
from tests.helpers import REPO
from tests.ingest.conftest import FAST_GROUP, create_topic, send_json, unique, wait_until
from vdb.embed.base import EmbedderUnavailable
from vdb.ingest import KafkaSource

CONSUMER = Path(__file__).with_name("kafka_text_consumer.py")


@pytest.fixture
def db(tmp_path):
    with vdb.open(tmp_path / "data", warm=False) as database:
        yield database


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_text_messages_become_searchable_points(broker, producer, db, texts):
    col = db.create_collection("docs", embedder="minilm")
    topic = create_topic(broker.bootstrap, unique("text"), partitions=2)
    n = 150
    for i in range(n):
        send_json(producer, topic, {"id": texts.names[i], "text": texts.texts[i],
                                    "payload": {"row": i}})  # fmt: skip
    send_json(
        producer,
        topic,
        {"id": texts.names[0], "text": texts.texts[0], "payload": {"row": 0, "v": 2}},
    )  # fmt: skip  (an update)
    producer.send(topic, key=texts.names[1].encode(), value=None)  # a tombstone deletes
    send_json(producer, topic, {"id": texts.names[2], "op": "delete"})
    poison = [
        ({"id": "e", "text": ""}, "empty text"),
        ({"id": "w", "text": "   "}, "empty text"),
        ({"id": "n", "text": 12}, "text must be a string, not int"),
        ({"id": "l", "text": ["a", "b"]}, "text must be a string, not list"),
        ({"id": "m"}, "missing text"),
        ({"id": "p", "text": "fine", "payload": 3}, "payload must be an object"),
    ]
    for obj, _ in poison:
        send_json(producer, topic, obj)
    producer.send(topic, key=b"raw", value=b"{not json")
    producer.flush()
    total = n + 3 + len(poison) + 1

    source = KafkaSource(broker.bootstrap, topic, group_id=unique("g"), consumer_options=FAST_GROUP)
    handle = db.ingest(source, "docs", format="text")
    try:
        wait_until(lambda: handle.stats()["records"] >= total, timeout=120)
        stats = handle.stats()
    finally:
        handle.stop()
    assert col.count() == n - 2
    records = {r.id: r for r in col.get(texts.names[:n], with_vectors=True)}
    assert texts.names[1] not in records and texts.names[2] not in records
    assert records[texts.names[0]].payload == {"row": 0, "v": 2, "document": texts.texts[0]}
    rows = list(range(3, n))
    got = np.stack([records[texts.names[i]].vector for i in rows])
    assert cosines(got, texts.base[rows]).min() >= 0.999  # the fixture's vectors
    hit = col.search(text=texts.texts[40], k=1)[0]
    assert hit.id == texts.names[40] and hit.payload["row"] == 40

    letters = db.dead_letters(limit=50, source=source.name)
    reasons = sorted(letter.reason for letter in letters)
    assert len(letters) == len(poison) + 1
    for _, reason in poison:
        assert any(reason in r for r in reasons), (reason, reasons)
    assert any("undecodable json" in r for r in reasons)
    assert not col.get(["e", "w", "n", "l", "m", "p"])  # nothing of them applied
    # inference is measured apart from the WAL apply
    assert stats["texts_embedded"] == n + 1 and stats["dead_letters"] == len(poison) + 1
    assert stats["inference_ms"]["p50"] is not None and stats["inference_ms"]["last"] > 0
    assert stats["batch_latency_ms"]["p50"] is not None
    # exactly once: the stored offsets are the last message of each partition
    ends = {(p["topic"], p["partition"]): p["end_offset"] for p in stats["partitions"].values()}
    assert db.source_offsets(source.name) == {tp: end - 1 for tp, end in ends.items() if end}


def test_text_into_a_collection_without_an_embedder_is_dead_lettered(broker, producer, db):
    col = db.create_collection("vectors", dim=384)
    topic = create_topic(broker.bootstrap, unique("noemb"))
    for i in range(5):
        send_json(producer, topic, {"id": i, "text": f"text {i}"})
    producer.flush()
    source = KafkaSource(broker.bootstrap, topic, group_id=unique("g"), consumer_options=FAST_GROUP)
    handle = db.ingest(source, "vectors", format="text")
    try:
        wait_until(lambda: handle.stats()["records"] >= 5, timeout=60)
    finally:
        handle.stop()
    letters = db.dead_letters(source=source.name)
    assert len(letters) == 5 and col.count() == 0
    assert all("has no embedder" in letter.reason for letter in letters)
    assert db.source_offsets(source.name) == {(topic, 0): 4}  # consumed, not stuck


def test_text_pipeline_refuses_to_start_without_the_model_packages(db):
    """A text pipeline checks the model's packages up front (the error names the extra)."""
    from vdb.embed import EmbedderSpec, register_embedder, unregister_embedder

    register_embedder(EmbedderSpec("absent-model", 8, "cosine", 16, factory=lambda: None,
                                   requires=("vdb_no_such_package_for_tests",)))  # fmt: skip
    try:
        db.create_collection("plain", dim=8)
        with pytest.raises(EmbedderUnavailable, match="vdb\\[embed\\]"):
            db.create_collection("needs", embedder="absent-model")
        assert db.list_collections() == ["plain"]
    finally:
        unregister_embedder("absent-model")


def test_kill9_during_text_ingest_loses_nothing_and_does_not_reembed(broker, producer, tmp_path, model, texts):  # fmt: skip
    topic = create_topic(broker.bootstrap, unique("textcrash"))
    group, n = unique("g"), 300
    for i in range(n):
        send_json(producer, topic, {"id": i, "text": texts.texts[i]})
    producer.flush()
    data, status = tmp_path / "data", tmp_path / "status.json"
    proc = subprocess.Popen(
        [sys.executable, str(CONSUMER), str(data), broker.bootstrap, topic, group, str(status)],
        env=_env(), cwd=REPO,
        stdout=open(tmp_path / "consumer.log", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
    )  # fmt: skip

    def records() -> int:
        try:
            return json.loads(status.read_text())["records"]
        except (OSError, ValueError, KeyError):
            return 0

    try:
        wait_until(lambda: records() >= 60 or proc.poll() is not None, timeout=180)
        assert proc.poll() is None, (tmp_path / "consumer.log").read_text()[-3000:]
        seen = records()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert 0 < seen < n  # killed mid-stream

    # reopen: the WAL replays vectors; the model is never loaded for it
    check = (
        "import json, sys, vdb, vdb.embed\n"
        "db = vdb.open(sys.argv[1], warm=False)\n"
        "col = db.collection('docs')\n"
        "print(json.dumps({'ids': sorted(r.id for r in col.get(list(range(300)))),"
        " 'offsets': [[t, p, o] for (t, p), o in db.source_offsets('kafka:' + sys.argv[2]).items()],"
        " 'loads': vdb.embed.load_count(), 'ort': 'onnxruntime' in sys.modules}))\n"
        "db.close(checkpoint=False)\n"
    )
    out = subprocess.run([sys.executable, "-c", check, str(data), group], env=_env(), cwd=REPO,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["loads"] == 0 and not report["ort"]
    stored = {(t, p): o for t, p, o in report["offsets"]}
    last = stored[(topic, 0)]
    assert report["ids"] == list(range(last + 1))  # exactly the messages up to the offset
    assert last + 1 >= seen

    # resume in this process: only the messages after the stored offset are embedded
    with vdb.open(data, warm=False) as db:
        source = KafkaSource(broker.bootstrap, topic, group_id=group, consumer_options=FAST_GROUP)
        assert source.name == "kafka:" + group
        handle = db.ingest(source, "docs", format="text")
        try:
            wait_until(lambda: db.collection("docs").count() >= n, timeout=180)
            wait_until(lambda: handle.stats()["records"] >= n - (last + 1), timeout=60)
            stats = handle.stats()
        finally:
            handle.stop()
        col = db.collection("docs")
        assert col.count() == n
        assert stats["texts_embedded"] == n - (last + 1)
        got = col.get(list(range(n)), with_vectors=True)
        vectors = np.stack([r.vector for r in got])
        assert cosines(vectors, texts.base[:n]).min() >= 0.999
        assert db.source_offsets(source.name) == {(topic, 0): n - 1}


def test_serve_with_text_ingest_answers_text_queries(broker, producer, tmp_path, texts):
    """``vdb serve --ingest kafka --format text --create-embedder minilm`` end to end."""
    import httpx
    from qdrant_client import QdrantClient, models

    from tests.http.conftest import ServerProcess

    topic, n = create_topic(broker.bootstrap, unique("srvtext")), 40
    for i in range(n):
        send_json(producer, topic, {"id": i, "text": texts.texts[i], "payload": {"row": i}})
    send_json(producer, topic, {"id": n, "text": ""})  # a dead letter
    producer.flush()
    server = ServerProcess(
        tmp_path / "data", "--ingest", "kafka", "--kafka-bootstrap", broker.bootstrap,
        "--kafka-topic", topic, "--kafka-group", unique("g"), "--collection", "docs",
        "--format", "text", "--create-embedder", "minilm",
    ).start()  # fmt: skip
    try:
        client = QdrantClient(url=server.url, cloud_inference=True, timeout=120)
        wait_until(lambda: client.count("docs").count >= n, timeout=180)
        res = client.query_points(
            "docs", query=models.Document(text=texts.texts[11], model="minilm"), limit=1
        )
        assert res.points[0].id == 11
        assert res.points[0].payload == {"row": 11, "document": texts.texts[11]}
        wait_until(lambda: httpx.get(server.url + "/dead-letters").json()["result"], timeout=60)
        letters = httpx.get(server.url + "/dead-letters").json()["result"]
        assert any("empty text" in str(letter) for letter in letters)
        metrics = httpx.get(server.url + "/metrics").text
        assert "inference_ms" in metrics and "texts_embedded" in metrics
        client.close()
    finally:
        server.stop()
