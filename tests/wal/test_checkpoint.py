"""Checkpoints: chunks + checksums in LMDB, orphan clean-up, searches during a checkpoint."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import vdb
from vdb.wal import checkpoint as ckpt
from vdb.wal.store import Store


def test_blobs_roundtrip_in_chunks_with_checksums(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHUNK_BYTES", 1000)
    monkeypatch.setattr(ckpt, "TXN_BYTES", 3000)
    store = Store(tmp_path / "s")
    try:
        arr = np.arange(5000, dtype=np.int32).reshape(1000, 5)
        blobs = {"index/a": ckpt._array_blob(arr), "payloads": (b"x" * 2500, {"kind": "msgpack"})}
        table = ckpt.write_blobs(store, 7, 3, blobs)
        assert table["index/a"]["chunks"] == 20 and table["payloads"]["chunks"] == 3
        with store.read() as txn:
            got = ckpt.read_array(txn, store, 7, 3, "index/a", table["index/a"])
            np.testing.assert_array_equal(got, arr)
        # chunks nobody references are orphans
        assert ckpt.remove_orphans(store) == 23
        with store.read() as txn:
            assert txn.stat(store.db("ckpt"))["entries"] == 0
    finally:
        store.close()


def test_partial_arrays_copy_and_write_only_the_chunks_of_changed_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHUNK_BYTES", 1000)  # 50 rows of 5 int32 per chunk
    store = Store(tmp_path / "s")
    try:
        arr = np.arange(5000, dtype=np.int32).reshape(1000, 5)
        first = {
            "gen": 3,
            "blobs": ckpt.write_blobs(store, 7, 3, {"index/a": ckpt._array_blob(arr)}),
        }
        grown = np.concatenate([arr, np.full((30, 5), -7, np.int32)])
        grown[[10, 620]] = 99
        partial = ckpt.partial_array(grown, np.array([10, 620, *range(1000, 1030)]), 20)
        assert sorted(partial.chunks) == [0, 12, 19, 20]  # rows 10, 620, the old tail, appends
        table = ckpt.write_blobs(store, 7, 4, {"index/a": partial}, previous=first)
        meta = table["index/a"]
        # the old tail was given but had not changed: its digest keeps the old chunk
        assert meta["chunk_gens"].count(4) == 3 and meta["written_bytes"] == 1000 + 1000 + 600
        with store.read() as txn:
            np.testing.assert_array_equal(ckpt.read_array(txn, store, 7, 4, "index/a", meta), grown)
        with pytest.raises(ValueError, match="neither given nor stored"):  # no previous chunks
            ckpt.write_blobs(store, 7, 5, {"index/a": partial}, previous=None)
    finally:
        store.close()


def test_crash_between_chunks_and_manifest_leaves_the_old_checkpoint(tmp_path):
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=8, metric="l2")
        x = np.random.default_rng(0).standard_normal((300, 8)).astype(np.float32)
        col.upsert(list(range(300)), x)
        db.checkpoint()
        col.delete(list(range(100)))
        # a checkpoint that died after writing its chunks, before its manifest
        from vdb.checkpointer import capture

        with col._segs.index_lock, db._write_lock:
            captured = capture(col, db.last_seq, col._index.to_arrays())
        ckpt.write_blobs(db._store, col.uid, 999, ckpt.encode(captured))
        db.close(checkpoint=False)
    with vdb.open(tmp_path / "d") as db:
        assert db.collection("c").count() == 200  # old checkpoint + WAL replay
        assert db.stats()["recovered_records"] == 1
        with db._store.read() as txn:
            gens = {bytes(k[8:16]) for k, _ in txn.cursor(db=db._store.db("ckpt"))}
        assert len(gens) == 1  # the orphaned generation was removed


def test_orphans_are_found_by_count_without_a_scan_of_the_chunks(tmp_path):
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=8, metric="l2")
        col.upsert(list(range(50)), np.ones((50, 8), np.float32))
        db.checkpoint()
        store = db._store
        assert not ckpt.may_have_orphans(store)  # every chunk is referenced
        assert ckpt.remove_orphans(store) == 0
        store.write(lambda txn: txn.put(ckpt.chunk_key(col.uid, 77, "index/x", 0), b"z",
                                        db=store.db("ckpt")))  # fmt: skip
        assert ckpt.may_have_orphans(store)
        assert ckpt.remove_orphans(store) == 1
        assert not ckpt.may_have_orphans(store)


def test_searches_continue_during_checkpoints(tmp_path):
    rng = np.random.default_rng(1)
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=32, metric="cosine")
        x = rng.standard_normal((3000, 32)).astype(np.float32)
        col.upsert(list(range(3000)), x)
        stop = threading.Event()
        searched = [0]
        errors = []

        def reader():
            while not stop.is_set():
                try:
                    hits = col.search(x[searched[0] % 3000], k=3)
                    assert len(hits) == 3 and all(0 <= h.id < 3000 or h.id >= 10_000 for h in hits)
                    searched[0] += 1
                except Exception as exc:
                    errors.append(exc)
                    return

        t = threading.Thread(target=reader)
        t.start()
        for i in range(3):
            col.upsert([10_000 + i], x[:1])
            db.checkpoint()
        stop.set()
        t.join()
        assert not errors, errors[0]
        stats = db.stats()
        assert stats["checkpoints"] == 3
        assert 0 <= stats["last_checkpoint_pause_s"] <= stats["last_checkpoint_duration_s"]
        assert stats["max_checkpoint_pause_s"] >= stats["last_checkpoint_pause_s"]
        assert searched[0] > 0


def test_checkpoints_are_incremental_and_reopen_identically(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt, "CHUNK_BYTES", 16 * 1024)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 32)).astype(np.float32)
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=32, metric="l2")
        col.upsert(list(range(2000)), x, [{"i": i} for i in range(2000)])
        assert col.wait_indexed(timeout=60)  # the vectors are then in the graph's arrays
        db.checkpoint()
        first = db._manifests[col.uid]
        col.upsert([5000], x[:1], [{"i": 5000}])
        db.checkpoint()
        second = db._manifests[col.uid]
        vectors_old = first["blobs"]["index/vectors"]
        vectors_new = second["blobs"]["index/vectors"]
        assert vectors_new["chunks"] >= vectors_old["chunks"] > 10
        reused = sum(g == first["gen"] for g in vectors_new["chunk_gens"])
        assert reused >= vectors_old["chunks"] - 1  # only the tail of the vectors was rewritten
        stats = db.stats()
        assert 0 < stats["last_checkpoint_bytes_written"] < stats["last_checkpoint_bytes"] / 2
        with db._store.read() as txn:
            stored = {k for k, _ in txn.cursor(db=db._store.db("ckpt"))}
        assert stored == ckpt.referenced_keys(col.uid, second)  # nothing stale is left
        q = rng.standard_normal((10, 32)).astype(np.float32)
        assert col.wait_indexed(timeout=60)  # the closing checkpoint holds this graph
        before = [[(h.id, h.score, h.payload) for h in r] for r in col.search(q, k=5)]
    with vdb.open(tmp_path / "d") as db:
        assert db.stats()["recovered_records"] == 0
        col = db.collection("c")
        assert [[(h.id, h.score, h.payload) for h in r] for r in col.search(q, k=5)] == before
        assert col.count() == 2001


def test_payload_parts_keep_the_slots_that_hold_a_payload():
    """A payload part keeps its slots as int32 bytes and their payloads in one list; slots
    without a payload (``MISSING``) are left out, ``None`` payloads are kept."""
    from vdb.wal.store import unpack

    rng = np.random.default_rng(3)
    for n in (0, 5, 4096):
        lo = 8192
        values = [
            ckpt.MISSING if rng.random() < 0.3 else ({"i": i, "t": [1.5, "x"]} if i % 4 else None)
            for i in range(n)
        ]
        slot_bytes, payloads = unpack(ckpt._encode_payload_part(lo, values))
        kept = [(lo + i, v) for i, v in enumerate(values) if v is not ckpt.MISSING]
        assert (
            list(zip(np.frombuffer(slot_bytes, np.int32).tolist(), payloads, strict=True)) == kept
        )


def test_a_checkpoint_writes_only_the_parts_touched_and_a_failed_one_gives_them_back(
    tmp_path, monkeypatch
):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20_000, 8)).astype(np.float32)
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=8, metric="l2")
        col.upsert(list(range(20_000)), x, [{"i": i} for i in range(20_000)])
        assert col.wait_indexed(timeout=120)
        db.checkpoint()
        first = db._manifests[col.uid]
        parts = sorted(n for n in first["blobs"] if n.startswith("idmap/part/"))
        assert len(parts) >= 5  # 20,000 slots (and the map's spare room) in parts of 4,096
        col.set_payload([3], {"z": 1})  # slot 3: part 0 of the payloads only
        col.delete([19_999])  # the last part of the id map
        real = ckpt.write_blobs

        def failing(*args, **kwargs):
            raise ckpt.CorruptData("disk trouble")

        monkeypatch.setattr(ckpt, "write_blobs", failing)
        with pytest.raises(ckpt.CorruptData):
            db.checkpoint()
        monkeypatch.setattr(ckpt, "write_blobs", real)
        db.checkpoint()  # writes what the failed one had taken
        second = db._manifests[col.uid]
        new = {n for n, m in second["blobs"].items() if second["gen"] in m["chunk_gens"]}
        assert {"payloads/part/00000000", "idmap/part/00000004"} <= new
        assert not new & {f"idmap/part/0000000{i}" for i in range(4)}  # carried over
        assert not new & {f"payloads/part/0000000{i}" for i in range(1, 4)}
        q = x[:20]
        before = [[(h.id, h.score, h.payload) for h in r] for r in col.search(q, k=5)]
    with vdb.open(tmp_path / "d") as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0
        assert col.count() == 19_999 and col.get([3])[0].payload == {"i": 3, "z": 1}
        assert [[(h.id, h.score, h.payload) for h in r] for r in col.search(q, k=5)] == before


def test_id_parts_of_integer_and_string_ids_round_trip(tmp_path):
    """A part of integer ids is stored as uint64 bytes, a part with a string id as a list."""
    from vdb.wal.snapshot import describe_stored

    x = np.random.default_rng(5).standard_normal((9000, 4)).astype(np.float32)
    ids = [2**64 - 1 - i for i in range(4096)] + [f"s{i}" if i % 2 else i for i in range(4904)]
    with vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.create_collection("c", dim=4, metric="l2")
        col.upsert(ids, x, [{"n": i} for i in range(9000)])
        col.delete([2**64 - 1, "s1"])
    with vdb.open(tmp_path / "d") as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0
        got = col.get(ids, with_payload=True)
        assert [r.id for r in got] == [i for i in ids if i not in (2**64 - 1, "s1")]
        assert all(r.payload == {"n": ids.index(r.id)} for r in got)
        with db._store.read() as txn:
            stored, _ = describe_stored(db._store, txn)
        assert stored["c"]["count"] == 8998
