"""The approximate scan of a large fresh segment: int8 codes, coarse lists, exact rescoring."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import vdb
from tests.helpers import recall_at_k
from vdb import segments
from vdb.index import coarse

DIM = 24
# The lists are sized for sets like MiniLM's (tens of thousands of fresh rows, 0.95 on the
# fixture below); on these small synthetic sets a list holds some 35 rows.
SYNTHETIC_RECALL = 0.9


def settle(col, want: str = "int8_lists", timeout: float = 60.0) -> None:
    """Run the fresh rows' upkeep (as the indexer does) until the scan is ``want``."""
    segs = col._segs
    deadline = time.monotonic() + timeout
    while segs.fresh_scan() != want:
        segs._upkeep_after = 0.0
        col._fresh_upkeep(segs)
        assert time.monotonic() < deadline, segs.fresh_scan()
    assert col.info()["segments"]["fresh_scan"] == want


def brute(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """Scores of every row of ``x`` against each query as vdb defines them: [nq, n]."""
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        return np.stack([((x - row) ** 2).sum(1) for row in q])
    return q @ x.T


def brute_top(x, ids, q, metric, k) -> list[list[int]]:
    s = brute(x, q, metric)
    keys = s if metric == "l2" else -s
    return [[ids[j] for j in np.lexsort((ids, row))[:k]] for row in keys]


CENTERS = np.random.default_rng(0).standard_normal((40, DIM)).astype(np.float32) * 3


def mixture(rng, n: int) -> np.ndarray:
    """``n`` points of one fixed Gaussian mixture (every call draws from the same one: the
    lists are trained on the first rows and serve the later ones)."""
    c = CENTERS[rng.integers(0, len(CENTERS), n)]
    return (c + rng.standard_normal((n, DIM))).astype(np.float32)


def found_ids(col, queries, k=10, **kw) -> list[list]:
    return [[h.id for h in hs] for hs in col.search(queries, k=k, with_payload=False, **kw)]


def test_fixture_recall_of_the_fresh_path_against_brute_force(tmp_path, minilm):
    """10,000 MiniLM rows, all fresh: the lists and codes find >= 0.95 of the true top-10,
    with exact scores; exact=True stays exact."""
    base, queries = minilm.base, minilm.queries
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.create_collection("c", dim=384, metric="cosine")
        for lo in range(0, len(base), 1000):
            col.upsert(list(range(lo, lo + 1000)), base[lo : lo + 1000])
        settle(col)
        buf = col._segs.view.buffer
        assert buf.part is not None and buf.part.centroids.shape == (segments.FIRST_LISTS, 384)
        assert buf.part.probes == segments.FIRST_PROBES and not buf.part.large
        assert (buf.part.lists[: buf.n] >= 0).all()
        hits = col.search(queries, k=10, with_payload=False)
        found = np.array([[h.id for h in hs] for hs in hits])
        assert recall_at_k(found, minilm.gt_ids, 10) >= 0.95
        unit = base / np.linalg.norm(base, axis=1, keepdims=True)
        qunit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        for row, hs in enumerate(hits):
            for h in hs:  # rescored: the float rows' cosine, not the codes' estimate
                assert h.score == pytest.approx(float(unit[h.id] @ qunit[row]), abs=1e-5)
        exact = np.array(found_ids(col, queries[:50], exact=True))
        assert recall_at_k(exact, minilm.gt_ids[:50], 10) == 1.0
        # a point just written is found first by its own vector
        fresh = np.random.default_rng(0).standard_normal((20, 384)).astype(np.float32)
        col.upsert(list(range(20_000, 20_020)), fresh)
        assert [ids[0] for ids in found_ids(col, fresh, k=3)] == list(range(20_000, 20_020))
        assert [ids[0] for ids in found_ids(col, base[:500:5], k=1)] == list(range(0, 500, 5))


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_synthetic_recall_own_vectors_deletes_updates_and_filters(tmp_path, metric):
    rng = np.random.default_rng(7)
    n = 9000
    x = mixture(rng, n)
    queries = mixture(rng, 100)
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.create_collection("c", dim=DIM, metric=metric)
        ids = list(range(n))
        for lo in range(0, n, 1500):
            part = ids[lo : lo + 1500]
            col.upsert(part, x[lo : lo + 1500], [{"g": i % 50, "h": i % 300} for i in part])
        settle(col)
        truth = brute_top(x, ids, queries, metric, 10)
        got = found_ids(col, queries)
        assert recall_at_k(np.array(got), np.array(truth), 10) >= SYNTHETIC_RECALL
        # own vectors (for ip the top-1 is whatever brute force puts first)
        sample = rng.choice(n, 200, replace=False)
        firsts = [ids[0] for ids in found_ids(col, x[sample], k=1)]
        expect = (
            [row[0] for row in brute_top(x, ids, x[sample], metric, 1)]
            if metric == "ip"
            else sample.tolist()
        )
        assert firsts == expect

        # deletes and updates: the model is brute force over what is left
        model = {i: x[i] for i in ids}
        gone = list(range(0, n, 3))
        col.delete(gone)
        for i in gone:
            model.pop(i)
        moved = list(range(1, 3000, 3))
        y = mixture(rng, len(moved))
        col.upsert(moved, y, [{"g": i % 50, "h": i % 300} for i in moved])
        for i, v in zip(moved, y, strict=True):
            model[i] = v
        new_ids = list(range(n, n + 500))
        z = mixture(rng, 500)
        col.upsert(new_ids, z, [{"g": i % 50, "h": i % 300} for i in new_ids])
        model.update(zip(new_ids, z, strict=True))
        left = sorted(model)
        xs = np.stack([model[i] for i in left])
        assert col._segs.fresh_scan() == "int8_lists"
        truth = brute_top(xs, left, queries, metric, 10)
        got = found_ids(col, queries)
        assert recall_at_k(np.array(got), np.array(truth), 10) >= SYNTHETIC_RECALL
        dead = set(gone)
        assert not any(i in dead for row in got for i in row)
        assert all(len(row) == len(set(row)) == 10 for row in got)
        # an updated point is found by its new vector, never by its old one alone
        firsts = [ids[0] for ids in found_ids(col, y[:100], k=1)]
        if metric != "ip":
            assert firsts == moved[:100]
            assert [ids[0] for ids in found_ids(col, z[:50], k=1)] == new_ids[:50]
        # exact: identical to brute force
        assert found_ids(col, queries[:20], exact=True) == truth[:20]
        # a selective filter (fewer admitted rows than candidates): identical to brute force
        flt = {"must": [{"key": "h", "match": {"value": 7}}]}
        keep = [i for i in left if i % 300 == 7]
        assert 10 < len(keep) <= segments.MIN_CANDIDATES
        xk = np.stack([model[i] for i in keep])
        want = brute_top(xk, keep, queries[:20], metric, 10)
        assert found_ids(col, queries[:20], filter=flt) == want
        # a broad filter: every point of half the groups (all lists scanned, codes rescored)
        broad = {"must": [{"key": "g", "range": {"lt": 25}}]}
        keep = [i for i in left if i % 50 < 25]
        xk = np.stack([model[i] for i in keep])
        got = found_ids(col, queries, filter=broad)
        assert all(i % 50 < 25 for row in got for i in row)
        want = brute_top(xk, keep, queries, metric, 10)
        assert recall_at_k(np.array(got), np.array(want), 10) >= 0.97
        # scores are exact, so a threshold keeps exactly the better ones; offsets page
        q = queries[0]
        scores = dict(zip(left, brute(xs, q[None], metric)[0].tolist(), strict=True))
        hits = col.search(q, k=10, with_payload=False)
        for h in hits:
            assert h.score == pytest.approx(scores[h.id], rel=1e-4, abs=1e-4)
        cut = (hits[3].score + hits[4].score) / 2
        assert [h.id for h in col.search(q, k=10, score_threshold=cut)] == [h.id for h in hits[:4]]
        # the exact float scan when asked to ignore quantization
        assert found_ids(col, queries[:10], quantization={"ignore": True}) == truth[:10]


def test_small_fresh_segments_are_scanned_exactly(tmp_path):
    rng = np.random.default_rng(3)
    n = segments.EXACT_BELOW - 1
    x = mixture(rng, n)
    queries = mixture(rng, 30)
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.upsert(list(range(n)), x)
        col._fresh_upkeep(col._segs)
        assert col._segs.fresh_scan() == "exact" and col._segs.view.buffer.coding is None
        assert found_ids(col, queries) == brute_top(x, list(range(n)), queries, "l2", 10)


def test_codes_follow_the_int8_graphs_quantizer(tmp_path):
    rng = np.random.default_rng(11)
    x = mixture(rng, 8000)
    with vdb.open(tmp_path / "d") as db:
        col = db.create_collection("c", dim=DIM, metric="cosine", quantization="int8")
        col.upsert(list(range(2000)), x[:2000])
        assert col.wait_indexed(timeout=120)
        db.pause_indexing()
        col.upsert(list(range(2000, 8000)), x[2000:])
        settle(col)
        coding = col._segs.view.buffer.coding
        graph_q = col._segs.index.template.quantizer
        assert coding.borrowed
        assert coding.quantizer.scale == graph_q.scale
        np.testing.assert_array_equal(coding.quantizer.offset, graph_q.offset)
        queries = mixture(rng, 50)
        truth = brute_top(x, list(range(8000)), queries, "cosine", 10)
        assert (
            recall_at_k(np.array(found_ids(col, queries)), np.array(truth), 10) >= SYNTHETIC_RECALL
        )


def test_codes_and_lists_are_rebuilt_after_reopen(tmp_path):
    rng = np.random.default_rng(5)
    x = mixture(rng, 6000)
    queries = mixture(rng, 40)
    truth = brute_top(x, list(range(6000)), queries, "l2", 10)
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.upsert(list(range(6000)), x)
        settle(col)
        before = found_ids(col, queries)
        db.checkpoint()
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.collection("c")
        assert col.info()["segments"]["fresh_points"] == 6000
        settle(col)
        after = found_ids(col, queries)
        assert recall_at_k(np.array(after), np.array(truth), 10) >= SYNTHETIC_RECALL
        assert recall_at_k(np.array(before), np.array(truth), 10) >= SYNTHETIC_RECALL


def test_lists_are_trained_again_as_the_fresh_rows_grow(tmp_path):
    rng = np.random.default_rng(2)
    n = segments.LISTS_FROM * segments.RETRAIN_GROWTH + 1000
    x = mixture(rng, n)
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.create_collection("c", dim=DIM, metric="ip")
        col.upsert(list(range(segments.LISTS_FROM)), x[: segments.LISTS_FROM])
        settle(col)
        first = col._segs.view.buffer.part
        assert first.trained_rows == segments.LISTS_FROM
        for lo in range(segments.LISTS_FROM, n, 2000):
            col.upsert(list(range(lo, min(n, lo + 2000))), x[lo : lo + 2000])
        segs = col._segs
        deadline = time.monotonic() + 60
        while segs.view.buffer.part.trained_rows < n - 1000:
            segs._upkeep_after = 0.0
            col._fresh_upkeep(segs)
            assert time.monotonic() < deadline
        assert segs.view.buffer.part is not first
        buf = segs.view.buffer
        # the first partition is the small one, the second (from LARGE_LISTS_FROM rows) large
        assert not first.large and first.centroids.shape[0] == segments.FIRST_LISTS
        assert buf.part.large and buf.part.centroids.shape[0] == segments.FRESH_LISTS
        assert buf.part.probes == segments.FRESH_PROBES
        assert (buf.part.lists[: buf.n] >= 0).all()  # trained again: every row assigned
        queries = mixture(rng, 50)
        truth = brute_top(x, list(range(n)), queries, "ip", 10)
        assert (
            recall_at_k(np.array(found_ids(col, queries)), np.array(truth), 10) >= SYNTHETIC_RECALL
        )


def test_rows_not_assigned_yet_are_scanned_by_every_query(tmp_path):
    rng = np.random.default_rng(8)
    base = segments.LISTS_FROM + 2000
    tail = segments.ASSIGN_BATCH - 500
    x = np.concatenate([mixture(rng, base), mixture(rng, tail) + 8.0])  # the tail lies apart
    ids = list(range(len(x)))
    with vdb.open(tmp_path / "d", indexing=False) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.upsert(ids[:base], x[:base])
        settle(col)
        segs = col._segs
        part = segs.view.buffer.part
        assert part.unassigned(segs.view.buffer.n) == 0
        with segs._upkeep_lock:  # the upkeep thread waits: nothing assigns the tail
            col.upsert(ids[base:], x[base:])
            buf = segs.view.buffer
            assert buf.part is part and part.unassigned(buf.n) == tail
            assert (part.lists[base : buf.n] == -1).all()  # the writer assigns nothing
            own = x[base:][:: tail // 40]
            assert [r[0] for r in found_ids(col, own, k=1)] == ids[base:][:: tail // 40]
            queries = np.concatenate([mixture(rng, 20), mixture(rng, 20) + 8.0])
            truth = brute_top(x, ids, queries, "l2", 10)
            got = found_ids(col, queries)
            assert recall_at_k(np.array(got), np.array(truth), 10) >= SYNTHETIC_RECALL
        segs._upkeep_after = 0.0
        assert not segs.upkeep_due()  # fewer than ASSIGN_BATCH waiting, the pack not due
        more = mixture(rng, 1000) + 8.0
        col.upsert(list(range(len(x), len(x) + 1000)), more)
        deadline = time.monotonic() + 60
        while segs.view.buffer.part.unassigned(segs.view.buffer.n) > 0:
            segs._upkeep_after = 0.0
            col._fresh_upkeep(segs)
            assert time.monotonic() < deadline
        buf = segs.view.buffer
        assert (buf.part.lists[: buf.n] >= 0).all()
        lists = coarse.assign(buf.vectors[base : buf.n], buf.part.centroids, "l2")
        np.testing.assert_array_equal(buf.part.lists[base : buf.n], lists)
        assert [r[0] for r in found_ids(col, more[::50], k=1)] == list(
            range(len(x), len(x) + 1000)
        )[::50]


def test_coarse_assignment_is_the_nearest_centroid():
    rng = np.random.default_rng(1)
    x = mixture(rng, 3000)
    for metric in ("l2", "ip", "cosine"):
        data = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
        c = coarse.train(data, 64, metric, seed=3)
        assert c.shape == (64, DIM) and np.isfinite(c).all()
        got = coarse.assign(data, c, metric)
        scores = brute(c, data, metric)
        want = scores.argmin(1) if metric == "l2" else scores.argmax(1)
        assert (got == want).mean() > 0.999  # float ties aside
        if metric != "ip":  # a row is nearest its own centroid (with ip a longer one may win)
            assert np.bincount(got, minlength=64).min() > 0  # no list left empty


def test_concurrent_readers_while_appending_and_indexing(tmp_path):
    """Readers search a fresh segment scanned by codes and lists while the writer appends,
    replaces and deletes and the indexer codes, partitions and moves rows: only live points,
    each once, and the stable points first by their own vectors."""
    rng = np.random.default_rng(9)
    stable = 3000
    base = mixture(rng, stable)
    with vdb.open(tmp_path / "d", fresh_limit=20_000) as db:
        col = db.create_collection("c", dim=DIM, metric="l2", ef=64)
        db.pause_indexing()
        col.upsert(list(range(stable)), base, [{"v": -1}] * stable)
        settle(col, "int8")  # codes, no lists yet: the lists appear while readers run
        errors: list[str] = []
        dead: set[int] = set()
        lock = threading.Lock()
        done = threading.Event()
        modes: set[str] = set()

        def write() -> None:
            try:
                wrng = np.random.default_rng(1)
                for round_ in range(30):
                    if round_ == 6:  # the paused indexer partitions the rows by itself
                        deadline = time.monotonic() + 60
                        while col._segs.fresh_scan() != "int8_lists":
                            assert time.monotonic() < deadline, "no lists"
                            time.sleep(0.01)
                        modes.add(col._segs.fresh_scan())
                        db.resume_indexing()  # from now on rows also move into the graph
                    ids = list(range(10_000, 11_500))
                    vecs = mixture(wrng, len(ids))
                    vecs[:, 0] = 100.0 + round_
                    col.upsert(ids, vecs, [{"v": round_}] * len(ids))
                    gone = list(range(50_000 + round_ * 50, 50_050 + round_ * 50))
                    col.upsert(gone, vecs[:50], [{"v": round_}] * 50)
                    col.delete(gone)
                    with lock:
                        dead.update(gone)
                    modes.add(col._segs.fresh_scan())
            except Exception as exc:
                errors.append(repr(exc))
            finally:
                done.set()

        def read(seed: int) -> None:
            rrng = np.random.default_rng(seed)
            try:
                while not done.is_set():
                    picks = rrng.choice(stable, 3, replace=False).tolist()
                    for i in picks:
                        ids = [h.id for h in col.search(base[i], k=5, with_payload=False)]
                        if not ids or ids[0] != i or len(ids) != len(set(ids)):
                            errors.append(f"stable {i}: {ids}")
                    q = mixture(rrng, 1)[0]
                    q[0] = 100.0 + rrng.integers(0, 30)
                    hits = col.search(q, k=20, with_vectors=True)
                    ids = [h.id for h in hits]
                    with lock:
                        gone = dead & set(ids)
                    if len(ids) != len(set(ids)) or gone:
                        errors.append(f"duplicates or deleted ids: {ids}")
                    for h in hits:
                        if h.id >= 10_000 and h.vector[0] != 100.0 + h.payload["v"]:
                            errors.append(f"id {h.id}: payload and vector of different versions")
            except Exception as exc:
                errors.append(repr(exc))

        threads = [threading.Thread(target=write)] + [
            threading.Thread(target=read, args=(s,)) for s in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert "int8_lists" in modes
        assert col.count() == stable + 1500
        assert col.wait_indexed(timeout=180)
        assert [ids[0] for ids in found_ids(col, base[:300:10], k=1)] == list(range(0, 300, 10))
