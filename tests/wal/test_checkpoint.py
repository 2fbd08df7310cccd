"""Checkpoints: chunks + checksums in LMDB, orphan clean-up, searches during a checkpoint."""

from __future__ import annotations

import threading

import numpy as np

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
            data = ckpt.read_blob(txn, store, 7, 3, "index/a", table["index/a"])
            np.testing.assert_array_equal(ckpt._decode_array(data, table["index/a"], "a"), arr)
        # chunks nobody references are orphans
        assert ckpt.remove_orphans(store) == 23
        with store.read() as txn:
            assert txn.stat(store.db("ckpt"))["entries"] == 0
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


def test_sliced_encoding_equals_one_pack():
    """The payload and id blobs are built a slice / a pair at a time; the bytes are
    those of one msgpack of the whole list (what ``load`` unpacks)."""
    from vdb.wal.store import pack, unpack

    rng = np.random.default_rng(3)
    for n in (0, 5, 15, 16, 4095, 4096, 4097, 70_000):
        ids = [f"p{i}" if i % 3 else i for i in range(n)]
        assert ckpt.pack_list(lambda a, b, ids=ids: ids[a:b], n) == pack(ids)
        slots = rng.permutation(n).tolist()
        payloads = {s: ({"i": s, "t": [1.5, "x"]} if s % 4 else None) for s in slots}
        expected = pack([[s, payloads[s]] for s in sorted(payloads)])
        assert ckpt._pack_payloads(payloads) == expected
        assert ckpt._pack_payloads(list(payloads.items())) == expected
        assert unpack(expected) == [[s, payloads[s]] for s in sorted(payloads)]
