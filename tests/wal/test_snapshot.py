"""Snapshots: hot and consistent under concurrent writes, verified on restore."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import vdb
from vdb.errors import AlreadyExists, CorruptData, InvalidInput, StorageError
from vdb.wal.snapshot import read_manifest, verify

DIM = 16
BATCH = 50


def batch(i: int) -> tuple[list, np.ndarray, list]:
    rng = np.random.default_rng(i)
    ids = [f"b{i}-{j}" for j in range(BATCH)]
    return ids, rng.standard_normal((BATCH, DIM)).astype(np.float32), [{"batch": i}] * BATCH


def results(col, queries):
    """Exact answers: they depend on the points only, not on how the graph was built
    (the indexer batches by timing, so two databases of the same points differ in graph)."""
    return [[(h.id, h.score) for h in hits] for hits in col.search(queries, k=10, exact=True)]


def test_snapshot_under_concurrent_writes_restores_identical_answers(tmp_path):
    queries = np.random.default_rng(99).standard_normal((25, DIM)).astype(np.float32)
    written: list[int] = []
    with vdb.open(tmp_path / "src", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        for i in range(10):
            col.upsert(*batch(i))
            written.append(i)
        db.checkpoint()  # the snapshot holds a checkpoint AND WAL records after it
        stop = threading.Event()

        def writer():
            i = 10
            while not stop.is_set() and i < 400:
                col.upsert(*batch(i))
                written.append(i)
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        while len(written) < 20:
            threading.Event().wait(0.01)
        manifest = db.snapshot(tmp_path / "snap.vdb")
        after_snapshot = len(written)
        stop.set()
        t.join()
    assert manifest["collections"]["c"]["count"] % BATCH == 0
    n_batches = manifest["collections"]["c"]["count"] // BATCH
    assert 20 <= n_batches <= after_snapshot
    assert read_manifest(tmp_path / "snap.vdb") == manifest
    assert verify(tmp_path / "snap.vdb")["data_sha256"] == manifest["data_sha256"]

    restored = vdb.restore(tmp_path / "snap.vdb", tmp_path / "restored")
    assert restored == manifest
    # The reference: the same batches applied in the same order to a fresh database.
    with vdb.open(tmp_path / "ref") as ref:
        rcol = ref.create_collection("c", dim=DIM, metric="l2")
        for i in range(n_batches):
            rcol.upsert(*batch(i))
        expected = results(rcol, queries)
        expected_ids = {r.id for r in rcol.scroll(limit=100_000)[0]}
    with vdb.open(tmp_path / "restored") as db:
        col = db.collection("c")
        assert col.count() == n_batches * BATCH
        assert {r.id for r in col.scroll(limit=100_000)[0]} == expected_ids
        assert results(col, queries) == expected


def make_snapshot(tmp_path):
    with vdb.open(tmp_path / "src") as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        for i in range(5):
            col.upsert(*batch(i))
        return db.snapshot(tmp_path / "snap.vdb")


@pytest.mark.parametrize("where", ["magic", "manifest", "data", "end", "truncate", "trailing"])
def test_corrupt_or_truncated_snapshot_is_refused_and_writes_nothing(tmp_path, where):
    make_snapshot(tmp_path)
    path = tmp_path / "snap.vdb"
    raw = bytearray(path.read_bytes())
    if where == "magic":
        raw[0] ^= 0xFF
    elif where == "manifest":
        raw[60] ^= 0x01
    elif where == "data":
        raw[len(raw) // 2] ^= 0x01
    elif where == "end":
        raw[-1] ^= 0x80
    elif where == "truncate":
        del raw[len(raw) - 4096 :]
    else:
        raw += b"extra"
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptData):
        vdb.restore(path, tmp_path / "target")
    assert not (tmp_path / "target").exists() or not any((tmp_path / "target").iterdir())
    with pytest.raises(CorruptData):
        verify(path)


def test_restore_refuses_non_empty_directory_unless_told(tmp_path):
    manifest = make_snapshot(tmp_path)
    target = tmp_path / "target"
    with vdb.open(target) as db:
        db.create_collection("other", dim=3)
    with pytest.raises(AlreadyExists):
        vdb.restore(tmp_path / "snap.vdb", target)
    with vdb.open(target) as db:
        assert db.list_collections() == ["other"]
    with vdb.open(target) as db:
        with pytest.raises(StorageError, match="already open"):
            vdb.restore(tmp_path / "snap.vdb", target, overwrite=True)
        assert db.list_collections() == ["other"]
    vdb.restore(tmp_path / "snap.vdb", target, overwrite=True)
    with vdb.open(target) as db:
        assert db.list_collections() == ["c"]
        assert db.collection("c").count() == manifest["collections"]["c"]["count"] == 5 * BATCH
    with pytest.raises(InvalidInput):
        with vdb.open(tmp_path / "x") as db:
            db.snapshot(tmp_path)  # a directory is not a snapshot file name


def test_restored_snapshot_opens_from_a_checkpoint(tmp_path):
    queries = np.random.default_rng(7).standard_normal((10, DIM)).astype(np.float32)
    with vdb.open(tmp_path / "src", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        for i in range(6):
            col.upsert(*batch(i))
        assert db.stats()["wal_records_pending"] == 6  # no checkpoint yet
        db.snapshot(tmp_path / "snap.vdb")
        expected = results(col, queries)
    vdb.restore(tmp_path / "snap.vdb", tmp_path / "restored")
    with vdb.open(tmp_path / "restored") as db:
        assert db.stats()["recovered_records"] == 0  # nothing to replay
        assert db.collection("c").count() == 6 * BATCH
        assert results(db.collection("c"), queries) == expected
