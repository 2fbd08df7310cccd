"""Exactly-once under crashes: an ingest process is SIGKILLed at random moments while a producer writes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import vdb
from tests.helpers import REPO
from tests.ingest.conftest import create_topic, unique, wait_until

DIM = 4
KILLS = 10
IDS = 400


def vector(i: int, seq: int) -> list[float]:
    return [float(i), float(seq), 1.0, -1.0]


class Producer(threading.Thread):
    """Upserts (85%) and tombstones (15%) over a fixed id space, until stopped."""

    def __init__(self, bootstrap: str, topic: str, seed: int) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaProducer

        self.topic = topic
        self.rng = random.Random(seed)
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)
        self.sent: list[tuple[int, int | None, object]] = []  # (id, seq or None, future)
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            seq = 0
            while not self.stop.is_set():
                for _ in range(20):
                    i = self.rng.randrange(IDS)
                    seq += 1
                    if self.rng.random() < 0.15:
                        value, kept = None, None
                    else:
                        obj = {"id": i, "vector": vector(i, seq), "payload": {"seq": seq}}
                        value, kept = json.dumps(obj).encode(), seq
                    future = self.producer.send(self.topic, key=str(i).encode(), value=value)
                    self.sent.append((i, kept, future))
                time.sleep(0.03)
            self.producer.flush()
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def outcome(self) -> tuple[dict[int, int | None], dict[int, int]]:
        """Each id's final state (by log position) and each partition's last offset."""
        last: dict[int, tuple[int, int | None]] = {}
        ends: dict[int, int] = {}
        for i, seq, future in self.sent:
            meta = future.get(timeout=30)
            ends[meta.partition] = max(ends.get(meta.partition, -1), meta.offset)
            if i not in last or meta.offset > last[i][0]:
                last[i] = (meta.offset, seq)
        return {i: seq for i, (_, seq) in last.items()}, ends


def start(tmp: Path, bootstrap: str, topic: str, status: Path) -> subprocess.Popen:
    status.unlink(missing_ok=True)
    cmd = [
        sys.executable, "-m", "vdb", "ingest", "--data", str(tmp / "data"),
        "--status-file", str(status), "--ingest", "kafka", "--kafka-bootstrap", bootstrap,
        "--kafka-topic", topic, "--collection", "docs", "--create-dim", str(DIM),
        "--create-metric", "l2", "--batch-max", "64", "--max-wait-ms", "10",
    ]  # fmt: skip
    log = open(tmp / "ingest.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    finally:
        log.close()


def read_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())["pipelines"][0]
    except (OSError, ValueError, LookupError):
        return None


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_and_duplicates_nothing(broker, tmp_path):
    topic = create_topic(broker.bootstrap, unique("crash"), partitions=3)
    status = tmp_path / "status.json"
    rng = random.Random(20261125)
    producer = Producer(broker.bootstrap, topic, seed=7)
    producer.start()
    killed_while_applying = 0
    try:
        for _ in range(KILLS):
            proc = start(tmp_path, broker.bootstrap, topic, status)
            try:
                wait_until(lambda: (s := read_status(status)) and s["records"] > 0, timeout=60)
                time.sleep(rng.uniform(0.0, 1.5))
                s = read_status(status)
                killed_while_applying += bool(s and s["records"] > 0 and proc.poll() is None)
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(30)
            assert proc.returncode == -signal.SIGKILL
    finally:
        producer.stop.set()
        producer.join(60)
    assert producer.error is None, producer.error
    assert killed_while_applying == KILLS
    final, ends = producer.outcome()

    proc = start(tmp_path, broker.bootstrap, topic, status)
    try:

        def caught_up() -> bool:
            s = read_status(status)
            if not s:
                return False
            got = {p["partition"]: p["offset"] for p in s["partitions"].values()}
            return got == ends

        wait_until(caught_up, timeout=120)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(60)
    assert proc.returncode == 0, (tmp_path / "ingest.log").read_text()[-3000:]

    with vdb.open(tmp_path / "data", warm=False) as db:
        col = db.collection("docs")
        live = {i: seq for i, seq in final.items() if seq is not None}
        assert col.count() == len(live)
        records = {r.id: r for r in col.get(list(range(IDS)), with_vectors=True)}
        assert set(records) == set(live)
        for i, seq in live.items():
            assert records[i].payload == {"seq": seq}
            assert np.array_equal(records[i].vector, vector(i, seq))
        assert db.source_offsets("kafka") == {(topic, p): o for p, o in ends.items()}
