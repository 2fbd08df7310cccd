"""Segments: fresh points are durable and searchable at once, indexed in the background."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import vdb

DIM = 16


def brute(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Scores of every row of ``x`` against ``q`` as vdb defines them."""
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q)
    if metric == "l2":
        return ((x - q) ** 2).sum(1)
    return x @ q


def top_ids(scores: dict, k: int, metric: str) -> list:
    items = sorted(scores.items(), key=lambda kv: (kv[1] if metric == "l2" else -kv[1], kv[0]))
    return [i for i, _ in items[:k]]


class Model:
    """What the collection should hold: id -> (vector, payload)."""

    def __init__(self) -> None:
        self.points: dict[int, tuple[np.ndarray, dict]] = {}

    def upsert(self, col, ids, vectors, payloads) -> None:
        col.upsert(ids, vectors, payloads)
        for i, v, p in zip(ids, vectors, payloads, strict=True):
            self.points[i] = (np.asarray(v, np.float32), p)

    def delete(self, col, ids) -> None:
        col.delete(ids)
        for i in ids:
            self.points.pop(i, None)

    def scores(self, q, metric, flt=None) -> dict:
        ids = [i for i, (_, p) in self.points.items() if flt is None or flt(p)]
        if not ids:
            return {}
        x = np.stack([self.points[i][0] for i in ids])
        return dict(zip(ids, brute(x, q, metric).tolist(), strict=True))


def answers(col, queries) -> tuple[list, list]:
    """Approximate (ids, rounded scores) and exact ids of ``queries``: what a reopened or
    restored collection must answer again."""
    ann = [[(h.id, round(h.score, 5)) for h in hs] for hs in col.search(queries, k=10)]
    exact = [[h.id for h in hs] for hs in col.search(queries, k=10, exact=True)]
    return ann, exact


class Race:
    """One writer thread and reader threads over a collection; what they saw goes to
    ``errors`` (asserted empty by the test). ``dead``: ids deleted and never written again."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.errors: list[str] = []
        self.dead: set[int] = set()

    def deleted(self, ids) -> None:
        with self.lock:
            self.dead.update(ids)

    def hits(self, hits, first=None) -> None:
        """No id twice, none deleted, ``first`` (if given) first."""
        ids = [h.id for h in hits]
        if len(ids) != len(set(ids)):
            self.errors.append(f"duplicate ids in {ids}")
        if first is not None and (not ids or ids[0] != first):
            self.errors.append(f"stable id {first} not found first by its vector: {ids}")
        with self.lock:
            dead = set(self.dead)
        self.errors.extend(f"deleted id {h.id} returned" for h in hits if h.id in dead)

    def run(self, write, read, readers: int) -> None:
        """``write()`` once, ``read(rng)`` in each reader until the writer is done."""

        def writer() -> None:
            try:
                write()
            except Exception as exc:  # reported by the main thread
                self.errors.append(repr(exc))
            finally:
                self.done.set()

        def reader(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                while not self.done.is_set():
                    read(rng)
            except Exception as exc:
                self.errors.append(repr(exc))

        threads = [threading.Thread(target=writer)] + [
            threading.Thread(target=reader, args=(s,)) for s in range(readers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def check_against_model(col, model: Model, metric: str, rng) -> None:
    assert col.count() == len(model.points)
    assert col.count({"must": [{"key": "g", "match": {"value": 1}}]}) == sum(
        1 for _, p in model.points.values() if p["g"] == 1
    )
    some = rng.choice(list(model.points), size=min(50, len(model.points)), replace=False).tolist()
    got = {r.id: r for r in col.get(some, with_vectors=True)}
    assert set(got) == set(some)
    for i in some:
        vector, payload = model.points[i]
        assert got[i].payload == payload
        expect = vector / np.linalg.norm(vector) if metric == "cosine" else vector
        np.testing.assert_allclose(got[i].vector, expect, rtol=1e-5, atol=1e-6)
    flt = {"must": [{"key": "g", "match": {"value": 2}}]}
    for q in rng.standard_normal((5, DIM)).astype(np.float32):
        for exact in (True, False):
            truth = model.scores(q, metric)
            hits = col.search(q, k=10, exact=exact, ef=256)
            ids = [h.id for h in hits]
            assert len(ids) == len(set(ids)) == min(10, len(truth))
            if exact:
                assert ids == top_ids(truth, 10, metric)
            else:
                assert len(set(ids) & set(top_ids(truth, 10, metric))) >= 8
            for h in hits:
                assert h.score == pytest.approx(truth[h.id], rel=1e-4, abs=1e-4)
            ftruth = model.scores(q, metric, lambda p: p["g"] == 2)
            fhits = col.search(q, k=10, filter=flt, exact=exact, ef=256)
            assert all(h.payload["g"] == 2 for h in fhits)
            assert len(fhits) == min(10, len(ftruth))
            if exact:
                assert [h.id for h in fhits] == top_ids(ftruth, 10, metric)
        # a score threshold halfway down the true top-10 keeps exactly the better ones
        truth = model.scores(q, metric)
        best = top_ids(truth, 10, metric)
        threshold = (truth[best[4]] + truth[best[5]]) / 2
        kept = col.search(q, k=10, exact=True, score_threshold=threshold)
        assert [h.id for h in kept] == best[:5]


@pytest.mark.parametrize("seal", [1 << 20, 300], ids=["one_graph", "sealed_graphs"])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_fresh_indexed_and_mixed_collections_answer_like_brute_force(tmp_path, metric, seal):
    """With a seal size of 300 the indexed points are in several graphs (vdb.graphs), the
    mixed phase deletes and replaces points of sealed graphs."""
    rng = np.random.default_rng(5)
    model = Model()
    with vdb.open(tmp_path / "d", indexing=False, graph_seal_size=seal) as db:
        col = db.create_collection("c", dim=DIM, metric=metric)
        n = 1500
        x = rng.standard_normal((n, DIM)).astype(np.float32)
        model.upsert(col, list(range(n)), x, [{"g": i % 4, "v": 0} for i in range(n)])
        model.delete(col, list(range(0, n, 7)))
        model.upsert(
            col, list(range(1, 300, 3)), x[1:300:3] + 1, [{"g": 2, "v": 1}] * len(range(1, 300, 3))
        )
        # all fresh: nothing is in the graph yet
        info = col.info()["segments"]
        assert info["indexed_points"] == 0 and info["fresh_points"] == len(model.points)
        assert col.info()["status"] == "yellow"
        check_against_model(col, model, metric, rng)

        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        info = col.info()["segments"]
        assert info["fresh_points"] == 0 and info["indexed_points"] == len(model.points)
        assert sum(g["sealed"] for g in info["graphs"]) == len(model.points) // seal
        assert all(g["points"] == seal for g in info["graphs"] if g["sealed"])
        assert col.info()["status"] == "green"
        check_against_model(col, model, metric, rng)

        # mixed: replaces and deletes of indexed points, new fresh points, nothing indexed
        db.pause_indexing()
        y = rng.standard_normal((600, DIM)).astype(np.float32)
        model.upsert(col, list(range(n, n + 600)), y, [{"g": i % 3, "v": 2} for i in range(600)])
        model.upsert(col, list(range(2, 900, 5)), x[2:900:5] * 2, [{"g": 1, "v": 3}] * 180)
        model.delete(col, list(range(3, 1500, 11)) + list(range(n, n + 600, 13)))
        info = col.info()["segments"]
        assert 0 < info["fresh_points"] < len(model.points)
        check_against_model(col, model, metric, rng)

        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        assert sum(g["live"] for g in col.info()["segments"]["graphs"]) == len(model.points)
        check_against_model(col, model, metric, rng)


def test_concurrent_readers_see_every_live_point_once_and_never_a_stale_one(tmp_path):
    """Searches and gets while the writer appends and the indexer moves points."""
    rng = np.random.default_rng(9)
    stable = 400  # ids 0..399 never change: always found, by id and by their own vector
    base = rng.standard_normal((stable, DIM)).astype(np.float32)
    with vdb.open(tmp_path / "d", fresh_limit=700) as db:
        col = db.create_collection("c", dim=DIM, metric="l2", ef=64)
        col.upsert(list(range(stable)), base, [{"v": -1}] * stable)
        race = Race()

        def write() -> None:
            wrng = np.random.default_rng(1)
            for round_ in range(40):
                ids = list(range(1000, 1300))
                version = round_
                # the vector encodes the version in its first coordinate
                vecs = wrng.standard_normal((len(ids), DIM)).astype(np.float32)
                vecs[:, 0] = 100.0 + version
                col.upsert(ids, vecs, [{"v": version}] * len(ids))
                gone = list(range(5000 + round_ * 20, 5020 + round_ * 20))
                col.upsert(gone, vecs[:20], [{"v": version}] * 20)
                col.delete(gone)
                race.deleted(gone)

        def read(rrng) -> None:
            picks = rrng.choice(stable, 8, replace=False)
            got = col.get(picks.tolist())
            if sorted(r.id for r in got) != sorted(picks.tolist()):
                race.errors.append(f"get missed stable ids {picks.tolist()}")
            for i in picks[:3].tolist():
                race.hits(col.search(base[i], k=5, ef=128, with_vectors=True), first=i)
            q = rrng.standard_normal(DIM).astype(np.float32)
            q[0] = 100.0 + rrng.integers(0, 40)
            hits = col.search(q, k=20, with_vectors=True)
            race.hits(hits)
            for h in hits:
                if h.id >= 1000 and h.vector[0] != 100.0 + h.payload["v"]:
                    race.errors.append(f"id {h.id}: payload and vector of different versions")

        race.run(write, read, readers=3)
        assert race.errors == []
        assert col.count() == stable + 300
        assert col.wait_indexed(timeout=120)
        assert col.count() == stable + 300
        stats = db.stats()["collections"]["c"]
        assert stats["indexed_total"] > 0 and stats["fresh_points"] == 0


def test_fresh_limit_makes_writers_wait_instead_of_growing(tmp_path):
    rng = np.random.default_rng(2)
    limit, batch, total = 500, 100, 2000
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.create_collection("c", dim=DIM, metric="l2", fresh_limit=limit)
        x = rng.standard_normal((total, DIM)).astype(np.float32)
        written: list[int] = []

        def write() -> None:
            for start in range(0, total, batch):
                col.upsert(list(range(start, start + batch)), x[start : start + batch])
                written.append(start + batch)

        t = threading.Thread(target=write)
        t.start()
        t.join(timeout=5)  # it cannot finish: the indexer is paused
        assert t.is_alive()
        segs = col.info()["segments"]
        assert segs["fresh_rows"] <= limit + batch
        assert col.count() == written[-1] <= limit + batch
        db.resume_indexing()
        t.join(timeout=300)
        assert not t.is_alive()
        assert col.count() == total
        assert col.wait_indexed(timeout=120)
        hits = col.search(x[1234], k=1)
        assert hits[0].id == 1234


def test_backlog_round_trips_through_checkpoint_reopen_and_snapshot(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, DIM)).astype(np.float32)
    queries = rng.standard_normal((20, DIM)).astype(np.float32)

    with vdb.open(tmp_path / "d") as db:
        col = db.create_collection("c", dim=DIM, metric="cosine")
        col.upsert(list(range(2000)), x[:2000], [{"i": i} for i in range(2000)])
        assert col.wait_indexed(timeout=120)
        db.pause_indexing()
        col.upsert(list(range(1500, 3000)), x[1500:3000], [{"i": -i} for i in range(1500)])
        col.delete(list(range(0, 3000, 10)))
        before = answers(col, queries)
        segs = col.info()["segments"]
        assert segs["fresh_points"] > 0 and segs["indexed_points"] > 0
        db.checkpoint()
        db.snapshot(tmp_path / "s.vdbsnap")
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 0  # from the checkpoint alone
        assert col.info()["segments"]["fresh_points"] == segs["fresh_points"]
        assert answers(col, queries) == before
    vdb.restore(tmp_path / "s.vdbsnap", tmp_path / "r")
    with vdb.open(tmp_path / "r", indexing=False) as db:
        col = db.collection("c")
        assert answers(col, queries) == before
        assert col.get([1601])[0].payload == {"i": -101}
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        assert answers(col, queries)[1] == before[1]  # exact answers do not depend on the graph


def test_replay_after_a_crash_refills_the_fresh_segment(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((4000, DIM)).astype(np.float32)
    db = vdb.open(tmp_path / "d", checkpoint_interval_s=None, checkpoint_wal_bytes=None)
    col = db.create_collection("c", dim=DIM, metric="l2")
    for start in range(0, 4000, 500):
        col.upsert(list(range(start, start + 500)), x[start : start + 500])
    col.delete([5, 6, 7])
    db.close(checkpoint=False)  # as after kill -9: only the WAL holds the points
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.collection("c")
        assert db.stats()["recovered_records"] == 9
        segs = col.info()["segments"]
        assert segs["fresh_points"] == 3997 and segs["indexed_points"] == 0
        assert col.count() == 3997
        assert [h.id for h in col.search(x[1234], k=1)] == [1234]
        assert col.get([6]) == []
        db.resume_indexing()
        assert col.wait_indexed(timeout=120)
        assert col.info()["segments"]["indexed_points"] == 3997
        assert [h.id for h in col.search(x[3999], k=1)] == [3999]
