"""Crash safety: SIGKILL a multi-threaded writer at random moments, reopen, check every ack.

After each kill the database must hold, for every id, exactly the result of
the last acknowledged operation on it, or of the one operation that was in
flight on it when the writer died (it may have committed without its
acknowledgement reaching the log). Nothing that was never attempted may
appear, and every id is stored once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import vdb
from tests.helpers import REPO
from tests.wal.crash_writer import SOURCE, THREADS, owned_ids, vector_for

KILLS = 20
WRITER = Path(__file__).with_name("crash_writer.py")


def thread_of(entry: dict) -> int:
    """The writer thread that owns an op's ids."""
    first = entry["ids"][0]
    return next(t for t in range(THREADS) if first in owned_ids(t))


def read_log(path: Path) -> tuple[list[dict], set[int]]:
    attempts, acks = [], set()
    if not path.exists():
        return attempts, acks
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line torn by the kill was never fsynced as a whole
            continue
        if "a" in entry:
            attempts.append(entry)
        else:
            acks.add(entry["k"])
    return attempts, acks


def wait_for_acks(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        _, acks = read_log(path)
        if len(acks) >= n:
            return
        time.sleep(0.05)
    raise AssertionError("the writer did not acknowledge anything in time")


def check(db_path: Path, log_path: Path, model: dict, offsets: dict) -> tuple[dict, dict]:
    """Verify the reopened database against the log; return the new model (id -> op or None)
    and the stored source offsets (thread -> op)."""
    attempts, acks = read_log(log_path)
    per_id: dict = {}
    for entry in attempts:
        for point_id in entry["ids"]:
            per_id.setdefault(point_id, []).append(entry)
    with vdb.open(db_path, warm=False) as db:
        col = db.collection("c")
        records = col.scroll(limit=100_000, with_vectors=True)[0]
        seen = [r.id for r in records]
        assert len(seen) == len(set(seen)), "an id is stored twice"
        stored = {r.id: r for r in records}
        assert col.count() == len(stored)
        for point_id in stored:
            assert point_id in per_id or model.get(point_id) is not None, (
                f"{point_id!r} was never written"
            )
        new_model = dict(model)
        prior: dict = {}
        for point_id in set(per_id) | set(model):
            ops = per_id.get(point_id, [])
            acked = [e for e in ops if e["a"] in acks]
            unacked = [e for e in ops if e["a"] not in acks]
            # one owner thread per id: acknowledged ops form a prefix, at most one is in flight
            assert len(unacked) <= 1 and (
                not unacked or not acked or unacked[0]["a"] > acked[-1]["a"]
            )
            after_acked = (
                (acked[-1]["a"] if acked[-1]["kind"] == "up" else None)
                if acked
                else model.get(point_id)
            )
            prior[point_id] = after_acked
            allowed = {after_acked}
            if unacked:
                allowed.add(unacked[0]["a"] if unacked[0]["kind"] == "up" else None)
            record = stored.get(point_id)
            actual = None if record is None else record.payload["op"]
            assert actual in allowed, f"{point_id!r}: stored op {actual}, expected one of {allowed}"
            if record is not None:
                assert record.payload["id"] == point_id
                np.testing.assert_array_equal(record.vector, vector_for(actual, point_id))
                # and it is live in the index with that vector
                hits = col.search(record.vector, k=1, filter={"must": [{"has_id": [point_id]}]})
                assert hits[0].id == point_id
                assert hits[0].score == pytest.approx(0.0, abs=1e-4)
            new_model[point_id] = actual
        if stored:
            # and plain search finds every point by its own vector (the graph walk, no filter:
            # after recovery the graph must reach every live point)
            ids = list(stored)
            queries = np.stack([stored[i].vector for i in ids])
            results = col.search(queries, k=10, ef=max(len(ids), 10), with_payload=False)
            for point_id, hits in zip(ids, results, strict=True):
                assert point_id in [h.id for h in hits], f"{point_id!r} not found by its vector"
        # Exactly-once: a thread's stored offset is that of its last acknowledged
        # offset-carrying op, or of the one in flight, and the records of an op
        # are present exactly when its offset is.
        stored_offsets = {part: op for (topic, part), op in db.source_offsets(SOURCE).items()}
        by_thread: dict[int, list[dict]] = {}
        for entry in attempts:
            if entry.get("offset"):
                by_thread.setdefault(thread_of(entry), []).append(entry)
        for thread, entries in by_thread.items():
            acked = [e for e in entries if e["a"] in acks]
            unacked = [e for e in entries if e["a"] not in acks]
            last = acked[-1]["a"] if acked else offsets.get(thread)
            stored = stored_offsets.get(thread)
            assert stored in {last} | {e["a"] for e in unacked}, (thread, stored, last)
            for e in unacked:
                effect = e["a"] if e["kind"] == "up" else None
                if stored == e["a"]:
                    assert all(new_model.get(i) == effect for i in e["ids"]), (
                        f"offset {stored} stored without its records"
                    )
                else:
                    assert all(new_model.get(i) == prior[i] for i in e["ids"]), (
                        f"records of op {e['a']} stored without its offset"
                    )
        return new_model, {**offsets, **stored_offsets}


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_no_acknowledged_write(tmp_path):
    rnd = random.Random(1234)
    db_path = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    model: dict = {}
    offsets: dict = {}
    total_acks = 0
    for i in range(KILLS):
        log_path = tmp_path / f"log-{i}.jsonl"
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(db_path), str(log_path), str(i + 1)],
            env=env,
            stderr=subprocess.PIPE,
        )
        try:
            wait_for_acks(log_path, rnd.randint(1, 10), proc)
            time.sleep(rnd.uniform(0.0, 0.6))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        model, offsets = check(db_path, log_path, model, offsets)
        total_acks += len(read_log(log_path)[1])
    assert total_acks >= KILLS
    assert any(v is not None for v in model.values())
    assert offsets  # the ingest path was exercised
