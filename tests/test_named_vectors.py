"""Named dense vectors and sparse vectors in the embedded API (``vdb.vectors``).

Several vectors per point over the same slots: each name searched on its own and checked
against brute force, points that lack names, update/delete of single vectors, filters and
deletes shared by every name, and the durability paths (WAL replay, checkpoints, snapshot
and restore).
"""

from __future__ import annotations

import numpy as np
import pytest

import vdb
from vdb.errors import InvalidInput

N = 300


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((N, 16)).astype(np.float32)
    b = rng.standard_normal((N, 5)).astype(np.float32)
    sparse = []
    for _ in range(N):
        idx = rng.choice(60, size=int(rng.integers(1, 8)), replace=False)
        sparse.append({"indices": idx.tolist(), "values": rng.random(len(idx)).round(3).tolist()})
    return a, b, sparse


def _create(db, name="c"):
    return db.create_collection(
        name,
        vectors={"a": {"dim": 16, "metric": "cosine"}, "b": {"dim": 5, "metric": "l2", "M": 8}},
        sparse_vectors={"s": {}},
    )


def _fill(col, a, b, sparse):
    # every third point lacks "b", every fifth lacks "s"
    col.upsert(
        list(range(N)),
        vectors={
            "a": a,
            "b": [None if i % 3 == 0 else b[i] for i in range(N)],
            "s": [None if i % 5 == 0 else sparse[i] for i in range(N)],
        },
        payloads=[{"i": i, "even": i % 2 == 0} for i in range(N)],
    )


def _brute_dense(x, q, ids, metric, k):
    if metric == "cosine":
        xs = x[ids] / np.linalg.norm(x[ids], axis=1, keepdims=True)
        scores = xs @ (q / np.linalg.norm(q))
        order = np.argsort(-scores, kind="stable")
    else:
        scores = ((x[ids] - q) ** 2).sum(axis=1)
        order = np.argsort(scores, kind="stable")
    return [int(ids[j]) for j in order[:k]]


def _brute_sparse(sparse, q, ids, k):
    qd = dict(zip(q["indices"], q["values"], strict=True))
    scored = []
    for i in ids:
        v = sparse[i]
        s = sum(qd.get(j, 0.0) * w for j, w in zip(v["indices"], v["values"], strict=True))
        if any(j in qd for j in v["indices"]):
            scored.append((-np.float32(s), i))
    scored.sort()
    return [i for _, i in scored[:k]], [-float(s) for s, _ in scored[:k]]


def _check_all(col, a, b, sparse, deleted=()):
    alive = np.array([i for i in range(N) if i not in set(deleted)])
    rng = np.random.default_rng(7)
    for _ in range(5):
        q = rng.standard_normal(16).astype(np.float32)
        hits = col.search(q, k=10, using="a", exact=True)
        assert [h.id for h in hits] == _brute_dense(a, q, alive, "cosine", 10)
        qb = rng.standard_normal(5).astype(np.float32)
        with_b = np.array([i for i in alive if i % 3])
        hits = col.search(qb, k=10, using="b", exact=True)
        assert [h.id for h in hits] == _brute_dense(b, qb, with_b, "l2", 10)
        # filtered graph search of "b": only even points that have "b"
        hits = col.search(
            qb, k=10, using="b", filter={"must": [{"key": "even", "match": {"value": True}}]}
        )
        assert all(h.id % 2 == 0 and h.id % 3 for h in hits) and len(hits) == 10
        qs = sparse[int(rng.integers(N))]
        with_s = [int(i) for i in alive if i % 5]
        want_ids, want_scores = _brute_sparse(sparse, qs, with_s, 10)
        hits = col.search(qs, k=10, using="s")
        assert [h.score for h in hits] == pytest.approx(want_scores, rel=1e-5)
        assert {h.id for h in hits if h.score > want_scores[-1] + 1e-5} <= set(want_ids)


def test_named_vectors_each_name_searches_its_own_points(tmp_path):
    a, b, sparse = _data()
    with vdb.open(tmp_path / "d") as db:
        col = _create(db)
        _fill(col, a, b, sparse)
        _check_all(col, a, b, sparse)
        col.wait_indexed(60)
        _check_all(col, a, b, sparse)
        # a graph search of "b" never returns a point without "b"
        hits = col.search(b[1], k=50, using="b")
        assert hits[0].id == 1 and all(h.id % 3 for h in hits)
        info = col.info()
        assert set(info["vectors"]) == {"a", "b"} and set(info["sparse_vectors"]) == {"s"}
        assert info["vector_counts"]["b"] == N - len(range(0, N, 3))


def test_with_vectors_lists_and_missing_names(tmp_path):
    a, b, sparse = _data()
    with vdb.open(tmp_path / "d") as db:
        col = _create(db)
        _fill(col, a, b, sparse)
        (r0,) = col.get([0], with_vectors=True)
        assert set(r0.vector) == {"a"}  # 0 lacks "b" and "s"
        (r1,) = col.get([1], with_vectors=["b", "s"])
        assert set(r1.vector) == {"b", "s"}
        np.testing.assert_allclose(r1.vector["b"], b[1], rtol=1e-6)
        order = np.argsort(sparse[1]["indices"])
        assert r1.vector["s"]["indices"].tolist() == np.array(sparse[1]["indices"])[order].tolist()
        page, _ = col.scroll(limit=3, with_vectors=["a"])
        assert [set(r.vector) for r in page] == [{"a"}] * 3
        with pytest.raises(InvalidInput, match="Not existing vector name"):
            col.search(a[0], using="nope")
        with pytest.raises(InvalidInput, match="dimension"):
            col.upsert([1], vectors={"b": [a[0]]})


def test_update_and_delete_vectors_keep_the_rest(tmp_path):
    a, b, sparse = _data()
    with vdb.open(tmp_path / "d") as db:
        col = _create(db)
        _fill(col, a, b, sparse)
        assert col.update_vectors([0, 3, 999], {"b": [b[0], b[3], b[0]]}) == 2
        (r,) = col.get([0], with_vectors=True)
        assert set(r.vector) == {"a", "b"} and r.payload == {"i": 0, "even": True}
        assert col.search(b[0], k=1, using="b", exact=True)[0].id == 0
        assert col.delete_vectors([1, 2], ["a", "s"]) == 2
        (r,) = col.get([1], with_vectors=True)
        assert set(r.vector) == {"b"}
        assert 1 not in {h.id for h in col.search(a[1], k=20, using="a", exact=True)}
        assert (
            col.delete_vectors(None, ["s"], filter={"must": [{"key": "i", "range": {"lt": 50}}]})
            == 50
        )
        assert all(h.id >= 50 for h in col.search(sparse[7], k=50, using="s"))
        assert len(col) == N  # the points and payloads stay


def test_deletes_and_filters_apply_to_every_name(tmp_path):
    a, b, sparse = _data()
    with vdb.open(tmp_path / "d") as db:
        col = _create(db)
        _fill(col, a, b, sparse)
        dead = list(range(0, N, 4))
        col.delete(dead)
        _check_all(col, a, b, sparse, deleted=dead)
        flt = {"must": [{"key": "even", "match": {"value": False}}]}
        hits = col.search(sparse[3], k=30, using="s", filter=flt)
        assert hits and all(h.id % 2 == 1 for h in hits)
        # slots are reused after deletes: the reused slots answer for their new points only
        col.upsert(list(range(1000, 1000 + len(dead))), vectors={"a": a[: len(dead)]})
        col.wait_indexed(60)
        assert col.search(a[0], k=1, using="a", exact=True)[0].id in (0, 1000)
        assert all(h.id < 1000 for h in col.search(b[1], k=100, using="b", exact=True))
        assert all(h.id < 1000 for h in col.search(b[1], k=100, using="b"))
        assert all(h.id < 1000 for h in col.search(sparse[1], k=100, using="s"))


def test_replay_checkpoint_snapshot_and_restore(tmp_path):
    a, b, sparse = _data()
    path = tmp_path / "d"
    with vdb.open(path, checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = _create(db)
        _fill(col, a, b, sparse)
        col.delete([5, 6])
        col.update_vectors([9], {"a": [a[10]]})
        db.close(checkpoint=False)  # the next open replays the WAL
    with vdb.open(path, checkpoint_interval_s=None, checkpoint_wal_bytes=None) as db:
        col = db.collection("c")
        assert len(col) == N - 2
        a2 = a.copy()
        a2[9] = a[10]
        _check_all(col, a2, b, sparse, deleted=[5, 6])
        col.wait_indexed(60)
        db.checkpoint()
        col.upsert([7000], vectors={"s": [sparse[0]]})
        manifest = db.snapshot(tmp_path / "snap.vdb")
        assert manifest["collections"]["c"]["count"] == N - 1
        expected = [h.id for h in col.search(b[2], k=10, using="b")]
    restored = tmp_path / "restored"
    vdb.restore(tmp_path / "snap.vdb", restored)
    with vdb.open(restored) as db:
        col = db.collection("c")
        assert [h.id for h in col.search(b[2], k=10, using="b")] == expected
        assert col.get([7000], with_vectors=True)[0].vector.keys() == {"s"}
        _check_all(col, a2, b, sparse, deleted=[5, 6])


def test_empty_name_equals_bare_parameters(tmp_path):
    a, _, _ = _data()
    with vdb.open(tmp_path / "d") as db:
        bare = db.create_collection("bare", dim=16, metric="l2", M=8)
        named = db.create_collection("named", vectors={"": {"dim": 16, "metric": "l2", "M": 8}})
        bare.upsert(list(range(N)), a)
        named.upsert(list(range(N)), vectors={"": a})
        for q in a[:5]:
            want = [(h.id, h.score) for h in bare.search(q, k=10, exact=True)]
            assert [(h.id, h.score) for h in named.search(q, k=10, exact=True)] == want
            assert [(h.id, h.score) for h in named.search(q, k=10, exact=True, using="")] == want
        assert bare.info()["vectors"][""] == named.info()["vectors"][""]


def test_malformed_sparse_vectors_are_refused_naming_the_field(tmp_path):
    with vdb.open(tmp_path / "d") as db:
        col = db.create_collection("s", sparse_vectors={"s": {"modifier": "idf"}})
        bad = [
            ({"indices": [1, 1], "values": [1.0, 2.0]}, "duplicate index 1"),
            ({"indices": [1, 2], "values": [1.0]}, "same length"),
            ({"indices": [-1], "values": [1.0]}, "negative index -1"),
            ({"indices": [3], "values": [float("nan")]}, "NaN"),
        ]
        for vector, message in bad:
            with pytest.raises(InvalidInput, match=message):
                col.upsert([1], vectors={"s": [vector]})
        assert len(col) == 0
        col.upsert(
            [1, 2],
            vectors={
                "s": [{"indices": [9, 2], "values": [1.0, 0.5]}, {"indices": [2], "values": [3.0]}]
            },
        )
        (r,) = col.get([1], with_vectors=True)
        assert r.vector["s"]["indices"].tolist() == [2, 9]  # sorted on write
        hits = col.search({"indices": [2], "values": [1.0]}, k=2, using="s")
        assert [h.id for h in hits] == [2, 1]


def test_churn_with_indexing_never_mixes_up_slots(tmp_path):
    """Points replaced and deleted over and over while the indexer moves every name's fresh
    rows into its graph: each name keeps exactly the last vector of each point, and a
    point without a name is never found by that name's graph."""
    rng = np.random.default_rng(3)
    with vdb.open(tmp_path / "d", fresh_limit=256) as db:
        col = db.create_collection(
            "churn",
            vectors={"": {"dim": 6, "metric": "l2"}, "b": {"dim": 3, "metric": "l2"}},
            sparse_vectors={"s": {}},
        )
        last: dict[int, dict] = {}
        for round_ in range(30):
            ids = rng.choice(400, size=120, replace=False).tolist()
            main = rng.standard_normal((120, 6)).astype(np.float32)
            bvec = rng.standard_normal((120, 3)).astype(np.float32)
            has_b = rng.random(120) < 0.5
            has_main = rng.random(120) < 0.8
            col.upsert(
                ids,
                vectors={
                    "": [main[j] if has_main[j] else None for j in range(120)],
                    "b": [bvec[j] if has_b[j] else None for j in range(120)],
                    "s": [{"indices": [int(i) % 50], "values": [1.0]} for i in ids],
                },
            )
            for j, i in enumerate(ids):
                last[i] = {"": main[j] if has_main[j] else None, "b": bvec[j] if has_b[j] else None}
            gone = rng.choice(400, size=20, replace=False).tolist()
            col.delete(gone)
            for i in gone:
                last.pop(i, None)
            if round_ % 10 == 9:
                col.delete_vectors(list(last)[:10], ["b"])
                for i in list(last)[:10]:
                    last[i]["b"] = None
        assert col.wait_indexed(120)
        assert len(col) == len(last)
        with_b = {i for i, v in last.items() if v["b"] is not None}
        hits = col.search(np.zeros(3, np.float32), k=len(last), using="b")
        assert {h.id for h in hits} == with_b
        for i, v in list(last.items())[:60]:
            (rec,) = col.get([i], with_vectors=True)
            for name in ("", "b"):
                if v[name] is None:
                    assert name not in rec.vector
                else:
                    np.testing.assert_array_equal(rec.vector[name], v[name])
                    hit = col.search(v[name], k=1, using=name)[0]
                    assert hit.score == pytest.approx(0.0, abs=1e-5)
        with_main = {i for i, v in last.items() if v[""] is not None}
        assert {h.id for h in col.search(np.zeros(6, np.float32), k=len(last))} == with_main
        assert {h.id for h in col.search({"indices": [7], "values": [1.0]}, k=400, using="s")} == {
            i for i in last if i % 50 == 7
        }


def test_has_vector_filters_name_the_vector(tmp_path):
    a, b, sparse = _data()
    with vdb.open(tmp_path / "d") as db:
        col = _create(db)
        _fill(col, a, b, sparse)
        assert col.count({"must": [{"has_vector": "b"}]}) == N - len(range(0, N, 3))
        assert col.count({"must_not": [{"has_vector": "s"}]}) == len(range(0, N, 5))
        hits = col.search(
            a[0], k=N, using="a", filter={"must": [{"has_vector": "b"}, {"has_vector": "s"}]}
        )
        assert {h.id for h in hits} == {i for i in range(N) if i % 3 and i % 5}
        with pytest.raises(InvalidInput, match="Not existing vector name"):
            col.count({"must": [{"has_vector": "zz"}]})


def test_fresh_limit_holds_writers_of_named_vectors(tmp_path):
    """A named vector's fresh segment has the same bound as the default one's (here the
    database's): with indexing paused, writers of a collection without a default vector
    wait at the bound instead of growing it, and go on once indexing resumes."""
    import threading

    rng = np.random.default_rng(5)
    limit, batch, total = 400, 100, 1500
    x = rng.standard_normal((total, 16)).astype(np.float32)
    with vdb.open(tmp_path / "d", indexing=False, fresh_limit=limit) as db:
        col = db.create_collection("c", vectors={"a": {"dim": 16, "metric": "l2"}})
        segs = col._spaces.extra["a"].segs
        assert segs.fresh_limit == limit
        written: list[int] = []

        def write() -> None:
            for start in range(0, total, batch):
                col.upsert(
                    list(range(start, start + batch)), vectors={"a": x[start : start + batch]}
                )
                written.append(start + batch)

        t = threading.Thread(target=write)
        t.start()
        t.join(timeout=5)  # it cannot finish: nothing is indexed
        assert t.is_alive()
        assert segs.fresh_rows <= limit + batch
        assert col.count() == written[-1] <= limit + batch
        db.resume_indexing()
        t.join(timeout=300)
        assert not t.is_alive() and col.count() == total
        assert col.wait_indexed(timeout=120)
        assert col.search(x[777], k=1, using="a")[0].id == 777
