"""The group commit under many writers: every acknowledged write survives a SIGKILL of
the process, the writes of one id keep their order, and a request that fails in a group
fails alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np

import vdb
from vdb.errors import CollectionNotFound

REPO = Path(__file__).resolve().parents[1]
THREADS = 16
IDS_PER_THREAD = 5

CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    import numpy as np
    import vdb
    path, acks = sys.argv[1], sys.argv[2]
    db = vdb.open(path, checkpoint_interval_s=None, checkpoint_wal_bytes=64_000)
    col = db.create_collection("c", dim=8, metric="l2")
    fd = os.open(acks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    total = [0]
    lock = threading.Lock()
    enough = threading.Event()

    def work(t):
        rng = np.random.default_rng(t)
        j = 0
        while True:
            # ids t-0 .. t-4 rewritten in turn: the stored j of each shows the order
            col.upsert([f"{t}-{j % 5}"], rng.standard_normal(8).astype(np.float32), {"t": t, "j": j})
            os.write(fd, f"{t} {j}\\n".encode())  # in the kernel at once: survives the kill
            with lock:
                total[0] += 1
                if total[0] >= 1200:
                    enough.set()
            j += 1

    for t in range(16):
        threading.Thread(target=work, args=(t,), daemon=True).start()
    enough.wait(240)
    os.kill(os.getpid(), signal.SIGKILL)  # with every thread's next write in flight
    """
)


def test_acknowledged_single_writes_from_16_threads_survive_sigkill(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    acks = tmp_path / "acks"
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "d"), str(acks)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    last = {}  # (thread, id) -> last acknowledged j
    top = {}  # thread -> last acknowledged j
    for line in acks.read_text().splitlines():
        t, j = map(int, line.split())
        last[(t, j % IDS_PER_THREAD)] = max(j, last.get((t, j % IDS_PER_THREAD), -1))
        top[t] = max(j, top.get(t, -1))
    assert sum(top.values()) + len(top) >= 1200
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.collection("c")
        stored = {r.id: r.payload for r in col.scroll(limit=10_000)[0]}
        for (t, k), j in last.items():
            payload = stored[f"{t}-{k}"]
            assert payload["t"] == t
            # never older than the last acknowledged write of the id; newer only by the
            # one write each thread had in flight at the kill (committed, not acknowledged)
            assert payload["j"] % IDS_PER_THREAD == k
            assert j <= payload["j"] <= top[t] + 1
        # no id of a thread beyond what it had written or had in flight
        for point_id, payload in stored.items():
            assert payload["j"] <= top.get(payload["t"], -1) + 1, point_id


def test_a_write_to_a_dropped_collection_fails_alone_in_its_group(tmp_path):
    rng = np.random.default_rng(0)
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        keep = db.create_collection("keep", dim=8, metric="l2")
        gone = db.create_collection("gone", dim=8, metric="l2")
        dropped = threading.Event()
        results: dict[str, list] = {"keep": [], "gone": []}
        errors = []

        def work(col, t):
            for j in range(60):
                if col is gone and j == 30 and t == 0:
                    db.drop_collection("gone")
                    dropped.set()
                try:
                    col.upsert([t * 1000 + j], rng.standard_normal(8).astype(np.float32), {"j": j})
                    results[col.name].append(t * 1000 + j)
                except CollectionNotFound:
                    results[col.name].append(None)
                except Exception as exc:  # anything else is a failure of the test
                    errors.append(exc)

        workers = [
            threading.Thread(target=work, args=(col, t)) for t in range(8) for col in (keep, gone)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert not errors
        assert dropped.is_set()
        assert None not in results["keep"] and len(results["keep"]) == 8 * 60
        assert keep.count() == 8 * 60
        assert sorted(r.id for r in keep.get(results["keep"])) == sorted(results["keep"])
        assert None in results["gone"]  # the writes after the drop were refused
        assert "gone" not in db.list_collections()


def test_threads_writing_one_id_each_see_their_own_order(tmp_path):
    rng = np.random.default_rng(1)
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=8, metric="l2")

        def work(t):
            for j in range(40):
                col.upsert([t], rng.standard_normal(8).astype(np.float32), {"j": j})
                assert col.get([t])[0].payload == {"j": j}  # acknowledged = visible

        workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert {r.id: r.payload["j"] for r in col.get(list(range(THREADS)))} == dict.fromkeys(
            range(THREADS), 39
        )
        assert db.stats()["group_commit_max"] > 1  # the threads did share commits
