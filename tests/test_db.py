"""Database: collections, durability, recovery, checkpoints, storage limits (real LMDB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading

import lmdb
import numpy as np
import pytest

import vdb
from tests.helpers import REPO
from vdb.errors import (
    AlreadyExists,
    CorruptData,
    DatabaseClosed,
    InvalidInput,
    StorageError,
    StorageFull,
)
from vdb.wal.store import u64, unpack


def ids_of(results):
    return [[h.id for h in hits] for hits in results]


def fill(col, n, seed=0, start=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, col.dim)).astype(np.float32)
    col.upsert(list(range(start, start + n)), x, [{"i": i} for i in range(start, start + n)])
    return x


def test_collections_lifecycle_and_names(tmp_path):
    with vdb.open(tmp_path / "d") as db:
        assert db.list_collections() == []
        db.create_collection(
            "b", dim=3, metric="l2", M=8, ef_construction=40, ef=20, metadata={"x": 1}
        )
        db.create_collection("a-1.x_y", dim=5)
        assert db.list_collections() == ["a-1.x_y", "b"]
        assert db.has_collection("b") and not db.has_collection("c")
        with pytest.raises(AlreadyExists):
            db.create_collection("b", dim=3)
        for bad in ["", "a/b", "..", ".hidden", "a\\b", "x" * 300, "a b", None, "é"]:
            with pytest.raises(InvalidInput):
                db.create_collection(bad, dim=3)
        for kwargs in [
            {"dim": 0},
            {"dim": 3, "metric": "hamming"},
            {"dim": 3, "M": 1},
            {"dim": True},
        ]:
            with pytest.raises(InvalidInput):
                db.create_collection("ok", **kwargs)
        info = db.collection("b").info()
        assert (info["dim"], info["metric"], info["M"], info["ef_construction"], info["ef"]) == (
            3,
            "l2",
            8,
            40,
            20,
        )
        assert info["extra"] == {"metadata": {"x": 1}}
        updated = db.collection("b").update(ef=99, metadata={"y": 2}, note="n")
        assert updated["ef"] == 99 and updated["extra"] == {"metadata": {"y": 2}, "note": "n"}
        db.collection("b").update(note=None)
        # merge_metadata merges key by key, None removes a key; metadata= replaces
        merged = db.collection("b").update(merge_metadata={"z": 3, "y": None, "w": [1]})
        assert merged["extra"]["metadata"] == {"z": 3, "w": [1]}
        assert db.collection("b").info()["metadata"] == {"z": 3, "w": [1]}
        db.collection("b").update(merge_metadata={"z": None, "w": None})
        assert "metadata" not in db.collection("b").info()["extra"]
        db.collection("b").update(merge_metadata={"y": 2})
        with pytest.raises(InvalidInput):
            db.collection("b").update(merge_metadata={"bad": object()})
        with pytest.raises(InvalidInput):
            db.collection("b").update(ef=0)
        assert db.drop_collection("a-1.x_y") is True
    with vdb.open(tmp_path / "d") as db:
        assert db.list_collections() == ["b"]
        info = db.collection("b").info()
        assert info["extra"] == {"metadata": {"y": 2}} and info["ef"] == 99
        col = db.create_collection("a-1.x_y", dim=2)  # the name is free again, the data is not back
        assert col.count() == 0


def test_reopen_after_clean_close_gives_identical_results(tmp_path):
    rng = np.random.default_rng(7)
    with vdb.open(tmp_path / "d") as db:
        col = db.create_collection("c", dim=16, metric="cosine")
        fill(col, 600, seed=1)
        col.delete(list(range(0, 600, 7)))
        fill(col, 50, seed=2, start=1000)
        q = rng.standard_normal((30, 16)).astype(np.float32)
        assert col.wait_indexed(timeout=60)  # the graph then is what the checkpoint holds
        before = col.search(q, k=10)
        scroll_before = col.scroll(limit=1000)[0]
    with vdb.open(tmp_path / "d") as db:
        assert db.stats()["recovered_records"] == 0  # close checkpointed everything
        col = db.collection("c")
        after = col.search(q, k=10)
        assert ids_of(after) == ids_of(before)
        assert [[h.score for h in r] for r in after] == [[h.score for h in r] for r in before]
        assert col.scroll(limit=1000)[0] == scroll_before


CRASH_CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np
    import vdb
    path, out, checkpoint_mid = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    # indexing paused: every point stays in the fresh segment, so the answers before the
    # kill and after the replay come from the same exact scan
    db = vdb.open(path, checkpoint_interval_s=None, checkpoint_wal_bytes=None, indexing=False)
    col = db.create_collection("c", dim=16, metric="l2")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((800, 16)).astype(np.float32)
    for lo in range(0, 400, 100):
        col.upsert(list(range(lo, lo + 100)), x[lo:lo + 100], [{"i": i} for i in range(lo, lo + 100)])
    if checkpoint_mid:
        db.checkpoint()
    for lo in range(400, 800, 100):
        col.upsert([f"s{i}" for i in range(lo, lo + 100)], x[lo:lo + 100])
    col.delete(list(range(0, 400, 3)))
    col.set_payload([1, 2], {"extra": True})
    q = np.random.default_rng(9).standard_normal((20, 16)).astype(np.float32)
    res = [[[h.id, h.score] for h in hits] for hits in col.search(q, k=10)]
    exact = [[h.id for h in hits] for hits in col.search(q, k=10, exact=True)]
    with open(out, "w") as f:
        json.dump({"res": res, "exact": exact, "count": col.count(), "seq": db.last_seq}, f)
        f.flush(); os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.mark.parametrize("checkpoint_mid", [False, True])
def test_reopen_after_kill_gives_identical_results(tmp_path, checkpoint_mid):
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD)
    out = tmp_path / "out.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "d"),
            str(out),
            "1" if checkpoint_mid else "0",
        ],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    expected = json.loads(out.read_text())
    with vdb.open(tmp_path / "d", indexing=False) as db:
        stats = db.stats()
        assert stats["recovered_records"] == (
            stats["last_seq"] - 4 if checkpoint_mid else stats["last_seq"]
        )
        assert db.last_seq == expected["seq"]
        col = db.collection("c")
        assert col.count() == expected["count"]
        q = np.random.default_rng(9).standard_normal((20, 16)).astype(np.float32)
        got = [[[h.id, h.score] for h in hits] for hits in col.search(q, k=10)]
        assert got == expected["res"]
        assert col.get([1])[0].payload == {"i": 1, "extra": True}
        assert col.get([0, 3]) == []
        db.resume_indexing()  # once indexed, the exact answers are still the same
        assert col.wait_indexed(timeout=60)
        exact = [[h.id for h in hits] for hits in col.search(q, k=10, exact=True)]
        assert exact == expected["exact"]


def test_checkpoint_truncates_wal_and_recovery_replays_the_rest(tmp_path):
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=8, metric="l2")
        other = db.create_collection("quiet", dim=4, metric="l2")
        other.upsert([1], np.ones((1, 4), np.float32))
        fill(col, 100, seed=1)
        assert db.stats()["wal_records_pending"] == 2
        result = db.checkpoint()
        assert result["collections"] == 2
        stats = db.stats()
        assert stats["wal_records_pending"] == 0 and stats["checkpoints"] == 1
        assert stats["last_checkpoint_pause_s"] is not None
        fill(col, 10, seed=2, start=100)
        db.checkpoint()  # "quiet" is unchanged: only its covered position moves
        assert db.stats()["wal_records_pending"] == 0
        fill(col, 10, seed=3, start=200)
        col.delete([5])
        seq = db.last_seq
        db.close(checkpoint=False)  # the WAL keeps the last two records
    with vdb.open(tmp_path / "d") as db:
        assert db.stats()["recovered_records"] == 2
        assert db.last_seq == seq
        col = db.collection("c")
        assert col.count() == 119 and col.get([5]) == []
        assert db.collection("quiet").count() == 1


def test_background_checkpoint_runs_on_wal_bytes(tmp_path):
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=10_000) as db:
        col = db.create_collection("c", dim=32, metric="l2")
        fill(col, 200, seed=1)  # ~26 KB of WAL
        for _ in range(600):  # the checkpointer looks every 0.5 s; allow a slow machine
            if db.stats()["checkpoints"]:
                break
            threading.Event().wait(0.1)
        assert db.stats()["checkpoints"] >= 1
        assert db.stats()["wal_records_pending"] == 0


def corrupt_checkpoint_chunk(path, mode):
    env = lmdb.open(str(path), max_dbs=10)
    ckpt = env.open_db(b"ckpt")
    man = env.open_db(b"ckptman")
    with env.begin(write=True) as txn:
        manifest = unpack(txn.get(u64(1), db=man))
        assert manifest["blobs"]
        cursor = txn.cursor(db=ckpt)
        # the first chunk that holds data (an empty fresh segment is an empty blob)
        key, value = next((k, v) for k, v in cursor if len(v) > 1)
        if mode == "flip":
            data = bytearray(value)
            data[len(data) // 2] ^= 0xFF
            txn.put(key, bytes(data), db=ckpt)
        else:
            txn.put(key, value[: len(value) // 2], db=ckpt)
    env.close()


@pytest.mark.parametrize("mode", ["flip", "truncate"])
def test_corrupt_checkpoint_is_refused(tmp_path, mode):
    with vdb.open(tmp_path / "d") as db:
        fill(db.create_collection("c", dim=8, metric="l2"), 50)
    corrupt_checkpoint_chunk(tmp_path / "d", mode)
    with pytest.raises(CorruptData, match="checkpoint"):
        vdb.open(tmp_path / "d")
    # the refusal released the directory
    with pytest.raises(CorruptData):
        vdb.open(tmp_path / "d")


def test_map_grows_by_itself(tmp_path):
    with vdb.open(tmp_path / "d", map_size=256 * 1024) as db:
        col = db.create_collection("c", dim=64, metric="l2")
        for i in range(8):
            fill(col, 250, seed=i, start=i * 250)
        assert db.stats()["map_size"] > 256 * 1024
        assert col.count() == 2000
    with vdb.open(tmp_path / "d", map_size=256 * 1024) as db:
        assert db.collection("c").count() == 2000


def test_storage_full_refuses_writes_and_corrupts_nothing(tmp_path):
    limit = 2 * 1024 * 1024
    with vdb.open(tmp_path / "d", map_size=limit, max_map_size=limit) as db:
        col = db.create_collection("c", dim=64, metric="l2")
        written = 0
        with pytest.raises(StorageFull):
            for i in range(100):
                fill(col, 200, seed=i, start=i * 200)
                written += 200
        assert col.count() == written  # the refused batch is not half-applied
        assert db.stats()["wal_txn_failures"] >= 1
        x = col.get([0], with_vectors=True)[0].vector
        assert col.search(x, k=1)[0].id == 0
        seq = db.last_seq
    with vdb.open(tmp_path / "d", map_size=limit) as db:  # without the limit: it grows again
        col = db.collection("c")
        assert col.count() == written and db.last_seq == seq
        fill(col, 200, seed=999, start=10**6)
        assert col.count() == written + 200


def test_second_open_and_closed_handle(tmp_path):
    db = vdb.open(tmp_path / "d")
    col = db.create_collection("c", dim=2)
    with pytest.raises(StorageError, match="already open"):
        vdb.open(tmp_path / "d")
    db.close()
    db.close()  # idempotent
    with pytest.raises(DatabaseClosed):
        col.upsert([1], [[1.0, 0.0]])
    with pytest.raises(DatabaseClosed):
        col.search([1.0, 0.0])
    with pytest.raises(DatabaseClosed):
        db.create_collection("d", dim=2)


def test_group_commit_many_writer_threads(tmp_path):
    with vdb.open(tmp_path / "d") as db:
        col = db.create_collection("c", dim=4, metric="l2")
        n_threads, per_thread = 8, 40

        def work(t):
            for i in range(per_thread):
                col.upsert([t * 1000 + i], np.full((1, 4), t + i, np.float32), [{"t": t}])

        threads = [threading.Thread(target=work, args=(t,)) for t in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = db.stats()
        assert col.count() == n_threads * per_thread
        assert stats["wal_records_written"] == n_threads * per_thread
        assert stats["group_commit_requests_total"] >= n_threads * per_thread
        assert stats["wal_txns_committed"] <= stats["group_commit_requests_total"]
        assert stats["collections"]["c"]["points"] == n_threads * per_thread
        buckets = stats["group_commit_requests"]
        assert buckets["+Inf"] == stats["wal_txns_committed"]
        assert list(buckets.values()) == sorted(buckets.values())
        for key in ("group_commit_max", "checkpoints", "max_checkpoint_pause_s", "recovery_s"):
            assert key in stats


def test_group_commit_merges_writes_to_shared_ids_in_seq_order(tmp_path):
    """Threads upsert and delete the same few ids (merged into group applies); the state,
    live and after a batched replay, is the last operation per id in WAL order."""
    path = tmp_path / "d"
    log_lock = threading.Lock()
    done: list[tuple[int, int, dict | None]] = []  # (seq, id, payload or None if deleted)
    with vdb.open(path, checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=4, metric="l2")

        def work(t):
            rng = np.random.default_rng(t)
            for i in range(60):
                pid = int(rng.integers(0, 12))
                if rng.random() < 0.3:
                    seq = col.apply([vdb.Delete(pid)])
                    payload = None
                else:
                    payload = {"t": t, "i": i}
                    seq = col.upsert([pid], np.full((1, 4), t * 100 + i, np.float32), [payload])
                with log_lock:
                    done.append((seq, pid, payload))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert db.stats()["group_commit_max"] > 1
        expected: dict[int, dict | None] = {}
        for _, pid, payload in sorted(done, key=lambda e: e[0]):
            expected[pid] = payload
        expected = {k: v for k, v in expected.items() if v is not None}
        live = {r.id: r.payload for r in col.scroll(limit=100)[0]}
        assert live == expected
        for r in col.get(list(expected), with_vectors=True):
            assert r.vector[0] == r.payload["t"] * 100 + r.payload["i"]
            assert col.search(r.vector, k=1)[0].id == r.id
        db.close(checkpoint=False)
    with vdb.open(path) as db:  # replays the WAL (no checkpoint was taken) in batches
        assert db.stats()["recovered_records"] == len(done)
        assert {r.id: r.payload for r in db.collection("c").scroll(limit=100)[0]} == expected


def test_merged_apply_equals_record_by_record(tmp_path):
    """One merged apply of many write records gives the same points and per-record
    results (delete counts included) as applying them one at a time."""
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        a = db.create_collection("a", dim=4, metric="l2")
        b = db.create_collection("b", dim=4, metric="l2")
        rng = np.random.default_rng(5)
        start = rng.standard_normal((20, 4)).astype(np.float32)
        for col in (a, b):
            col.upsert(list(range(20)), start, [{"s": i} for i in range(20)])
        records = []
        for r in range(30):
            ids = sorted({int(i) for i in rng.integers(0, 40, 5)})
            dels = sorted({int(i) for i in rng.integers(0, 40, 3)} - set(ids))
            vecs = rng.standard_normal((len(ids), 4)).astype(np.float32)
            records.append(
                {
                    "t": "w", "c": 0, "u": ids, "v": vecs.tobytes(),
                    "p": [{"r": r, "i": i} for i in ids], "pt": [r] * len(ids), "d": dels,
                }
            )  # fmt: skip
        seq0 = db.last_seq
        merged = a._apply_records([(rec, seq0 + 1 + i) for i, rec in enumerate(records)])
        single = [b._apply_record(rec, seq0 + 1 + i) for i, rec in enumerate(records)]
        assert merged == single
        assert sum(r["deleted"] for r in merged) > 0
        assert a.applied_seq == b.applied_seq == seq0 + len(records)
        pa = sorted(
            (r.id, r.payload, r.vector.tolist()) for r in a.scroll(limit=100, with_vectors=True)[0]
        )
        pb = sorted(
            (r.id, r.payload, r.vector.tolist()) for r in b.scroll(limit=100, with_vectors=True)[0]
        )
        assert pa == pb
        assert [a.source_partition(p[0]) for p in pa] == [b.source_partition(p[0]) for p in pb]
        for pid, _, vector in pa:
            assert a.search(np.array(vector, np.float32), k=1)[0].id == pid


@pytest.mark.parametrize("checkpoint", [True, False])
def test_explicit_payload_indexes_are_durable(tmp_path, checkpoint):
    db = vdb.open(tmp_path / "d")
    col = db.create_collection("c", dim=2, metric="l2")
    col.upsert([1, 2], [[0.0, 1.0], [1.0, 0.0]], [{"city": "Oslo"}, {"city": "Rome"}])
    col.create_payload_index("city", "keyword")
    col.create_payload_index("n", {"type": "integer"})
    col.delete_payload_index("n")
    with pytest.raises(InvalidInput):
        col.create_payload_index("x", "no-such-type")
    assert set(col.info()["payload_schema"]) == {"city"}
    db.close(checkpoint=checkpoint)
    with vdb.open(tmp_path / "d") as db:
        col = db.collection("c")
        assert col.info()["payload_schema"] == {"city": {"data_type": "keyword", "points": 2}}
        assert col.count({"must": [{"key": "city", "match": {"value": "Rome"}}]}) == 1


def test_dead_letters_are_kept_up_to_a_limit(tmp_path):
    from vdb.types import DeadLetter

    with vdb.open(tmp_path / "d", dead_letter_limit=5) as db:
        col = db.create_collection("c", dim=2)
        for i in range(8):
            letter = DeadLetter("src" if i % 2 else "other", "t", 0, i, None, b"x", f"bad {i}")
            col.apply([], source_offsets={("src", "t", 0): i}, dead_letters=[letter])
        assert [d.offset for d in db.dead_letters()] == [3, 4, 5, 6, 7]
        assert [d.offset for d in db.dead_letters(limit=2)] == [6, 7]
        assert [d.offset for d in db.dead_letters(source="src")] == [3, 5, 7]
        assert db.stats()["dead_letters"] == 5
        assert db.source_offsets("src") == {("t", 0): 7}


FIRST_QUERY_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import vdb
    after_import = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    db = vdb.open(sys.argv[1])
    hits = db.collection("c").search(np.ones(8, np.float32), k=3)
    from vdb.index import kernels
    loaded = {"search_batch": bool(kernels.search_batch.signatures)}
    after_search = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
    print(json.dumps({"hits": [h.id for h in hits], "after_import": after_import,
                      "after_search": after_search, "loaded": loaded}))
    db.close(checkpoint=False)
    """
).replace("HEAVY", repr({"numba", "starlette", "uvicorn", "kafka", "prometheus_client", "lmdb"}))


def test_first_query_in_a_new_process_loads_only_what_it_needs(tmp_path):
    with vdb.open(tmp_path / "d") as db:
        col = db.create_collection("c", dim=8, metric="l2")
        col.upsert([1, 2, 3], np.eye(8, dtype=np.float32)[:3] + 0.5)
    script = tmp_path / "child.py"
    script.write_text(FIRST_QUERY_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "d")],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert sorted(out["hits"]) == [1, 2, 3]
    assert out["after_import"] == []  # `import vdb` pulls in no engine, server or client
    # opening loads storage and the index, never the HTTP server, Kafka or metrics stacks
    assert {m.split(".")[0] for m in out["after_search"]} == {"numba", "lmdb"}
    assert out["loaded"]["search_batch"]
