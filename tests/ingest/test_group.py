"""Two vdb processes in one consumer group split four partitions; stopping one hands over."""

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
from tests.helpers import REPO
from tests.ingest.conftest import FAST_GROUP, create_topic, send_json, unique, wait_until

DIM = 4


def vec(i: int, version: int) -> list[float]:
    return [float(i), float(version), 1.0, -1.0]


def start_member(tmp: Path, name: str, bootstrap: str, topic: str, group: str) -> dict:
    data, status, log = tmp / name, tmp / f"{name}.json", tmp / f"{name}.log"
    cmd = [
        sys.executable, "-m", "vdb", "ingest", "--data", str(data), "--status-file", str(status),
        "--ingest", "kafka", "--kafka-bootstrap", bootstrap, "--kafka-topic", topic,
        "--kafka-group", group, "--collection", "docs", "--create-dim", str(DIM),
        "--create-metric", "l2",
    ]  # fmt: skip
    for key, value in FAST_GROUP.items():
        cmd += ["--kafka-option", f"{key}={value}"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
    return {"proc": proc, "data": data, "status": status, "log": log}


def status(member: dict) -> dict | None:
    try:
        return json.loads(member["status"].read_text())["pipelines"][0]
    except (OSError, ValueError, LookupError):
        return None


def assigned(member: dict) -> set[int]:
    s = status(member)
    if not s:
        return set()
    return {p["partition"] for p in s["partitions"].values() if p["assigned"]}


def offsets(member: dict) -> dict[int, int]:
    s = status(member) or {"partitions": {}}
    return {
        p["partition"]: p["offset"] for p in s["partitions"].values() if p["offset"] is not None
    }


def stop(member: dict) -> None:
    proc = member["proc"]
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.mark.slow
def test_two_processes_split_partitions_and_hand_over(broker, producer, tmp_path):
    topic = create_topic(broker.bootstrap, unique("group"), partitions=4)
    group = unique("vdb")
    a = start_member(tmp_path, "a", broker.bootstrap, topic, group)
    b = start_member(tmp_path, "b", broker.bootstrap, topic, group)
    expected: dict[int, tuple[int, int] | None] = {}  # id -> (partition, version) or None
    last_offset: dict[int, int] = {}
    sent = {p: 0 for p in range(4)}

    def send(i: int, version: int | None) -> None:
        p = i % 4
        if version is None:
            producer.send(topic, key=str(i).encode(), value=None, partition=p)
            expected[i] = None
        else:
            send_json(producer, topic, {"id": i, "vector": vec(i, version)}, partition=p)
            expected[i] = (p, version)
        last_offset[p] = sent[p]
        sent[p] += 1

    try:
        # Both members hold two partitions each before anything is produced.
        wait_until(lambda: len(assigned(a)) == 2 and len(assigned(b)) == 2, timeout=90)
        part_a, part_b = assigned(a), assigned(b)
        assert part_a.isdisjoint(part_b) and part_a | part_b == {0, 1, 2, 3}

        for i in range(200):
            send(i, 0)
        for i in range(0, 200, 5):
            send(i, 1)
        producer.flush()
        phase1 = dict(expected)
        wait_until(
            lambda: (
                offsets(a) == {p: last_offset[p] for p in part_a}
                and offsets(b) == {p: last_offset[p] for p in part_b}
            ),
            timeout=60,
        )

        stop(a)
        assert a["proc"].returncode == 0, a["log"].read_text()[-3000:]
        wait_until(lambda: assigned(b) == {0, 1, 2, 3}, timeout=90)
        for i in range(150, 300):
            send(i, 2)
        for i in range(0, 40, 3):
            send(i, None)
        producer.flush()
        wait_until(lambda: offsets(b) == last_offset, timeout=90)
    finally:
        stop(a)
        stop(b)
    assert b["proc"].returncode == 0, b["log"].read_text()[-3000:]

    # A holds exactly its own partitions' phase-1 state: nothing from B's partitions.
    with vdb.open(a["data"], warm=False) as db:
        col = db.collection("docs")
        want = {i: v for i, v in phase1.items() if v[0] in part_a}
        assert col.count() == len(want)
        got = {r.id: r.vector for r in col.get(list(want), with_vectors=True)}
        assert all(np.array_equal(got[i], vec(i, v[1])) for i, v in want.items())
    # B took A's partitions over from the WAL's point of view (from their start) and
    # holds every id once with its last value.
    with vdb.open(b["data"], warm=False) as db:
        col = db.collection("docs")
        live = {i: v for i, v in expected.items() if v is not None}
        assert col.count() == len(live)
        got = {r.id: r.vector for r in col.get(list(expected), with_vectors=True)}
        assert set(got) == set(live)
        assert all(np.array_equal(got[i], vec(i, v[1])) for i, v in live.items())
        assert db.source_offsets(f"kafka:{group}") == {
            (topic, p): o for p, o in last_offset.items()
        }
