"""HNSW index: recall on real and synthetic data, exactness, deletes, replace, filters,
growth, checkpoint round trip, concurrent readers and bad input."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

from tests.helpers import recall_at_k
from vdb.index import HNSW
from vdb.index import hnsw as hnsw_module

N_MINILM = 10_000  # the whole fixture: the graph, filtered and exact-scan paths all run on it


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Brute-force top-k row numbers (best first)."""
    if metric == "l2":
        d = (queries**2).sum(1)[:, None] - 2 * queries @ base.T + (base**2).sum(1)[None, :]
    elif metric == "ip":
        d = -(queries @ base.T)
    else:
        b = base / np.linalg.norm(base, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        d = -(q @ b.T)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def mixture(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    """Gaussian blobs around `centres` random centres (the same centres for the same count)."""
    c = np.random.default_rng(centres).standard_normal((centres, dim)).astype(np.float32) * 3
    rng = np.random.default_rng(seed)
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def minilm_small(minilm):
    base = minilm.base[:N_MINILM]
    queries = minilm.queries
    return base, queries, exact_topk(base, queries, 10, "cosine")


@pytest.fixture(scope="module")
def minilm_index(minilm_small):
    base, _, _ = minilm_small
    h = HNSW(384, "cosine", seed=7)
    h.add(base)
    return h


def test_recall_minilm(minilm_index, minilm_small):
    _, queries, truth = minilm_small
    slots, scores = minilm_index.search(queries, 10, ef=64)
    assert recall_at_k(slots, truth) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "cosine scores must be descending"


def test_recall_synthetic_mixture():
    data = mixture(20_000, 64, 1000, seed=3)
    queries = mixture(200, 64, 1000, seed=4)
    h = HNSW(64, "l2", seed=11)
    h.add(data)
    slots, scores = h.search(queries, 10, ef=64)
    assert recall_at_k(slots, exact_topk(data, queries, 10, "l2")) >= 0.95
    assert np.all(np.diff(scores, axis=1) >= -1e-4), "l2 distances must be ascending"


def test_parallel_build_recall_matches_serial(minilm, monkeypatch):
    base = minilm.base[:6000]
    queries = np.concatenate([minilm.queries, minilm.base[6000:]])  # 4,200 rows not in the index
    truth = exact_topk(base, queries, 10, "cosine")
    parallel = HNSW(384, "cosine", seed=5, n_threads=2)
    parallel.add(base)
    one_thread = HNSW(384, "cosine", seed=5, n_threads=1)
    one_thread.add(base)
    for name, arr in parallel.to_arrays().items():  # the thread count never changes the graph
        assert np.array_equal(arr, one_thread.to_arrays()[name]), name
    monkeypatch.setattr(hnsw_module, "_CHUNK_MIN", 1)
    monkeypatch.setattr(hnsw_module, "_CHUNK_MAX", 1)
    serial = HNSW(384, "cosine", seed=5, n_threads=1)  # classic one-point-at-a-time insertion
    serial.add(base)
    recall_parallel = recall_at_k(parallel.search(queries, 10, ef=32)[0], truth)
    recall_serial = recall_at_k(serial.search(queries, 10, ef=32)[0], truth)
    assert abs(recall_parallel - recall_serial) <= 0.005, (recall_parallel, recall_serial)


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_exact_at_large_ef(metric):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((600, 16)).astype(np.float32)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    h = HNSW(16, metric, M=8, capacity=64, seed=2)
    slots = h.add(data)
    assert slots.tolist() == list(range(600))
    found, scores = h.search(queries, 5, ef=600)
    truth = exact_topk(data, queries, 5, metric)
    assert np.array_equal(found, truth)
    if metric == "l2":
        expect = ((queries[:, None, :] - data[truth]) ** 2).sum(-1)
    elif metric == "ip":
        expect = np.einsum("qd,qkd->qk", queries, data[truth])
    else:
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        b = data / np.linalg.norm(data, axis=1, keepdims=True)
        expect = np.einsum("qd,qkd->qk", q, b[truth])
    np.testing.assert_allclose(scores, expect, rtol=1e-4, atol=1e-4)


def test_reproducible_with_seed():
    data = mixture(3000, 24, 30, seed=9)
    a, b = HNSW(24, seed=42), HNSW(24, seed=42)
    a.add(data)
    b.add(data)
    for name, arr in a.to_arrays().items():
        assert np.array_equal(arr, b.to_arrays()[name]), name


def test_fewer_points_than_k_pads():
    h = HNSW(4, "ip")
    empty_slots, empty_scores = h.search(np.ones((1, 4)), 3)
    assert empty_slots.tolist() == [[-1, -1, -1]]
    assert np.all(np.isneginf(empty_scores))
    h.add(np.eye(4)[:2])
    slots, scores = h.search(np.array([[1.0, 0.5, 0, 0]]), 3)
    assert slots.tolist() == [[0, 1, -1]]
    np.testing.assert_allclose(scores[0, :2], [1.0, 0.5])


def test_delete_skips_and_reuses_slots():
    data = mixture(2000, 16, 20, seed=5)
    h = HNSW(16, seed=3)
    h.add(data)
    gone = np.arange(0, 2000, 2)
    h.delete(gone)
    h.delete(gone[:10])  # deleting again changes nothing
    assert len(h) == 1000
    assert h.live_mask()[:2000].sum() == 1000
    found, _ = h.search(data[:50], 10, ef=200)
    assert not np.isin(found, gone).any()
    truth = exact_topk(data[1::2], data[:50], 10, "l2") * 2 + 1
    assert recall_at_k(found, truth) >= 0.98
    new = mixture(300, 16, 20, seed=6)
    slots = h.add(new)
    assert slots.tolist() == gone[:300].tolist()
    assert len(h) == 1300
    hit, _ = h.search(new[:20], 1, ef=100)
    assert hit[:, 0].tolist() == slots[:20].tolist()


def test_delete_everything_then_add():
    h = HNSW(8, seed=1)
    data = mixture(200, 8, 4, seed=1)
    h.add(data)
    h.delete(np.arange(200))
    assert len(h) == 0
    assert h.search(data[:3], 4)[0].tolist() == [[-1] * 4] * 3
    h.add(data[:5])
    found, _ = h.search(data[:5], 5)
    assert sorted(found[0].tolist()) == [0, 1, 2, 3, 4]


def test_replace_relinks_point():
    data = mixture(3000, 16, 30, seed=8)
    h = HNSW(16, seed=4)
    h.add(data)
    target = mixture(1, 16, 30, seed=99)[0] + 50.0  # far from everything
    h.replace(123, target)
    found, scores = h.search(target[None, :], 1)
    assert found[0, 0] == 123 and scores[0, 0] == pytest.approx(0.0, abs=1e-3)
    found, _ = h.search(data[123:124], 3, ef=200)
    assert 123 not in found[0].tolist()
    np.testing.assert_allclose(h.get_vectors([123])[0], target)
    assert len(h) == 3000


def test_churn_recall_close_to_fresh_build(minilm):
    """Half of 8,000 points churned, in two waves of replace + delete/add: the first brings in
    the 2,000 rows the index never held, the second the 2,000 vectors the first removed.
    Queried with the 200 queries and the 2,000 vectors the second wave removed (2,200 rows
    keep the comparison's noise well under the 0.01 allowed; they sit where the graph changed).
    """
    base = minilm.base[:8000]
    pool = minilm.base[8000:10_000]
    h = HNSW(384, "cosine", seed=1)
    h.add(base)
    rng = np.random.default_rng(0)
    slots = rng.permutation(8000)[:4000]
    final = base.copy()
    removed = base[slots[:2000]].copy()
    for wave, extra in enumerate((pool, removed)):
        replaced = slots[wave * 2000 : wave * 2000 + 1000]
        deleted = slots[wave * 2000 + 1000 : wave * 2000 + 2000]
        h.replace(replaced, extra[:1000])  # replace in place
        h.delete(deleted)  # delete + add reuses the freed slots
        reused = h.add(extra[1000:])
        assert sorted(reused.tolist()) == sorted(deleted.tolist())
        final[replaced] = extra[:1000]
        final[reused] = extra[1000:]
    assert len(h) == 8000 and np.unique(final, axis=0).shape[0] == 8000
    queries = np.concatenate([minilm.queries, base[slots[2000:]]])
    truth = exact_topk(final, queries, 10, "cosine")
    fresh = HNSW(384, "cosine", seed=1)
    fresh.add(final)
    churned = recall_at_k(h.search(queries, 10, ef=32)[0], truth)
    baseline = recall_at_k(fresh.search(queries, 10, ef=32)[0], truth)
    assert churned >= baseline - 0.01, (churned, baseline)


def churn(metric: str, M: int, n_ids: int, steps: int, seed: int) -> tuple[HNSW, dict]:
    """Random single-point writes as the core issues them: 60% upserts (a new id takes a freed
    slot or a new one, an existing id is replaced in place), 40% deletes (the slot is freed)."""
    dim = 16
    h = HNSW(dim, metric, M=M, ef_construction=128, seed=1)
    rng = np.random.default_rng(seed)
    slot_of: dict[int, int] = {}
    for _ in range(steps * 20):
        point_id = int(rng.integers(n_ids))
        if rng.random() < 0.6:
            vector = rng.standard_normal(dim).astype(np.float32)
            if point_id in slot_of:
                h.replace(slot_of[point_id], vector)
            else:
                slot_of[point_id] = int(h.add(vector[None, :])[0])
        elif point_id in slot_of:
            h.delete([slot_of.pop(point_id)])
    return h, slot_of


def layer0_reachable(h: HNSW) -> np.ndarray:
    """bool per used slot: reached on layer 0 from the entry point (read from the checkpoint)."""
    arrays = h.to_arrays()
    links, entry = arrays["links0"], int(arrays["params"][8])
    seen = np.zeros(links.shape[0], bool)
    seen[entry] = True
    stack = [entry]
    while stack:
        row = links[stack.pop()]
        for nb in row[1 : 1 + row[0]].tolist():
            if not seen[nb]:
                seen[nb] = True
                stack.append(nb)
    return seen


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("M, n_ids, steps, seed", [(8, 165, 1500, 0), (16, 3000, 500, 3)])
def test_every_live_point_reachable_after_churn(metric, M, n_ids, steps, seed):
    h, slot_of = churn(metric, M, n_ids, steps, seed)
    slots = np.array(sorted(slot_of.values()), np.int64)
    assert len(h) == slots.size and h.live_mask().sum() == slots.size
    n_used = int(h.to_arrays()["params"][10])
    unreached = slots[~layer0_reachable(h)[slots]]
    assert unreached.size == 0, f"{unreached.size} live points unreachable: {unreached[:10]}"
    found, _ = h.search(h.get_vectors(slots), 10, ef=n_used)
    lost = slots[~(found == slots[:, None]).any(axis=1)]
    assert lost.size == 0, f"{lost.size} of {slots.size} live points not found by their vector"


def test_reachability_check_reattaches_cut_off_points(monkeypatch):
    data = mixture(600, 16, 6, seed=13)
    h = HNSW(16, "l2", M=8, seed=13)
    h.add(data)
    arrays = h.to_arrays()
    entry = int(arrays["params"][8])
    cut = [s for s in np.flatnonzero(arrays["levels"] == 0)[:40:8].tolist() if s != entry]
    links = arrays["links0"]
    for row in links:  # remove every layer-0 link into the cut slots
        kept = [nb for nb in row[1 : 1 + row[0]].tolist() if nb not in cut]
        row[1:] = 0
        row[0] = len(kept)
        row[1 : 1 + len(kept)] = kept
    h = HNSW.from_arrays(arrays)
    assert not layer0_reachable(h)[cut].any()
    # as on a large index: the check waits until the writes since the last one reach a share
    monkeypatch.setattr(hnsw_module, "_CHECK_ALWAYS_MAX", 0)
    monkeypatch.setattr(hnsw_module, "_CHECK_SHARE", 4)
    extra = mixture(200, 16, 6, seed=14)
    h.add(extra[:1])
    assert not layer0_reachable(h)[cut].any()  # 1 of 601 written: not checked yet
    h.add(extra[1:])
    assert layer0_reachable(h)[: len(h)].all()
    found, _ = h.search(data[cut], 1, ef=800)
    assert found[:, 0].tolist() == cut


@pytest.mark.parametrize("walk_only", [False, True], ids=["auto", "walk-only"])
@pytest.mark.parametrize("fraction", [0.5, 0.05, 0.001])
def test_filtered_search_matches_brute_force(
    minilm_index, minilm_small, fraction, walk_only, monkeypatch
):
    if walk_only:  # never switch to the exact scan: the filtered graph walk must hold up alone
        monkeypatch.setattr(hnsw_module, "_EXACT_FACTOR", 0.0)
    base, queries, _ = minilm_small
    rng = np.random.default_rng(int(fraction * 1000))
    allowed = rng.random(N_MINILM) < fraction
    allowed[rng.integers(0, N_MINILM, 3)] = True
    ids = np.flatnonzero(allowed)
    found, _ = minilm_index.search(queries[:100], 10, ef=64, allowed=allowed)
    want = min(10, ids.size)
    assert np.all(found[:, :want] >= 0) and np.all(found[:, want:] == -1)
    assert allowed[found[found >= 0]].all()
    truth = ids[exact_topk(base[ids], queries[:100], want, "cosine")]
    assert recall_at_k(found, truth, k=want) >= 0.95


def test_filtered_search_returns_min_k_with_deletes():
    data = mixture(3000, 16, 30, seed=2)
    h = HNSW(16, seed=2)
    h.add(data)
    allowed = np.zeros(3000, bool)
    allowed[::100] = True  # 30 allowed
    h.delete(np.arange(0, 3000, 200))  # 15 of them deleted
    found, _ = h.search(data[:5], 20, allowed=allowed)
    assert (found >= 0).sum(axis=1).tolist() == [15] * 5
    assert set(found[0, :15].tolist()) == set(range(100, 3000, 200))
    short = np.zeros(10, bool)  # shorter than the index: the rest is not allowed
    short[[3, 7]] = True
    assert sorted(h.search(data[:1], 5, allowed=short)[0][0, :2].tolist()) == [3, 7]


def test_capacity_grows_by_doubling():
    h = HNSW(8, capacity=4, seed=0)
    data = mixture(1000, 8, 10, seed=0)
    for i in range(0, 1000, 37):
        h.add(data[i : i + 37])
    assert len(h) == 1000 and h.capacity == 1024
    found, _ = h.search(data, 1, ef=64)
    assert (found[:, 0] == np.arange(1000)).mean() >= 0.99


def test_round_trip_identical_results():
    data = mixture(4000, 32, 40, seed=4)
    h = HNSW(32, "cosine", M=12, seed=8)
    h.add(data)
    h.delete(np.arange(0, 4000, 7))
    h.replace(5, data[6] + 0.1)
    arrays = h.to_arrays()
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    g = HNSW.from_arrays({name: arr.copy() for name, arr in arrays.items()})
    assert (g.dim, g.metric, g.M, g.ef_construction, len(g)) == (32, "cosine", 12, 128, len(h))
    queries = mixture(100, 32, 40, seed=5)
    allowed = np.arange(4000) % 3 == 0
    for kwargs in ({}, {"allowed": allowed}):
        a, sa = h.search(queries, 10, **kwargs)
        b, sb = g.search(queries, 10, **kwargs)
        assert np.array_equal(a, b) and np.array_equal(sa, sb)
    more = mixture(600, 32, 40, seed=6)
    assert np.array_equal(h.add(more), g.add(more))
    for name, arr in h.to_arrays().items():
        assert np.array_equal(arr, g.to_arrays()[name]), name


def test_searches_during_writes_return_live_slots():
    data = mixture(12_000, 32, 50, seed=12)
    h = HNSW(32, seed=12)
    h.add(data[:2000])
    stop = threading.Event()
    errors: list[str] = []
    searches = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            live_before = h.live_mask()
            q = data[rng.integers(0, 12_000, 4)]
            found, scores = h.search(q, 10, ef=32)
            searches[0] += 1
            live_after = h.live_mask()
            if (found < 0).any():
                errors.append("padding with enough points")
            hits = found[found >= 0]
            # a hit must have been live when the search started or when it ended
            live = np.zeros(max(live_before.size, live_after.size, 1 + hits.max()), bool)
            live[: live_before.size] |= live_before
            live[: live_after.size] |= live_after
            if not live[hits].all():
                errors.append(f"dead or invalid slot in {found.tolist()}")
            if not np.isfinite(scores[found >= 0]).all():
                errors.append("non-finite score")

    def guarded(seed: int) -> None:
        try:
            reader(seed)
        except Exception as e:  # a crashed reader must fail the test, not vanish
            errors.append(repr(e))

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(2000, 12_000, 500):
            h.add(data[i : i + 500])
            h.delete(np.arange(i - 2000, i - 1900))
            h.replace(np.arange(i - 1900, i - 1850), data[i - 1850 : i - 1800])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert searches[0] > 0
    assert len(h) == 12_000 - 20 * 100


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda h: h.add(np.ones((2, 5))), "expected 4 dimensions, got 5"),
        (lambda h: h.add(np.ones(4)), "2-D"),
        (lambda h: h.add(np.ones((1, 2, 4))), "2-D"),
        (lambda h: h.add(np.array([[1.0, np.nan, 0, 0]])), "NaN or inf"),
        (lambda h: h.add(np.array([[1.0, np.inf, 0, 0]])), "NaN or inf"),
        (lambda h: h.add(np.array([[1e300, 0, 0, 0]])), "NaN or inf"),
        (lambda h: h.add([["a", "b", "c", "d"]]), "numbers"),
        (lambda h: h.add([[1, 2], [3]]), "array"),
        (lambda h: h.search(np.ones((1, 3)), 1), "expected 4 dimensions, got 3"),
        (lambda h: h.search(np.ones(4), 1), "2-D"),
        (lambda h: h.search(np.ones((1, 4)), 0), "k must be >= 1"),
        (lambda h: h.search(np.ones((1, 4)), 2.5), "k must be an integer"),
        (lambda h: h.search(np.ones((1, 4)), 1, ef=0), "ef must be >= 1"),
        (lambda h: h.search(np.full((1, 4), np.nan), 1), "NaN or inf"),
        (lambda h: h.search(np.array([[0, 1, np.inf, 0]], np.float32), 1), "NaN or inf"),
        (lambda h: h.search(np.vstack([np.ones((40, 4)), [[np.nan] * 4]]), 1), "NaN or inf"),
        (lambda h: h.search(np.ones((1, 4)), 1, allowed=np.ones((2, 2), bool)), "1-D"),
        (lambda h: h.search(np.ones((1, 4)), 1, allowed=np.ones(5000, bool)), "capacity"),
        (lambda h: h.delete([10]), "slot 10 out of range"),
        (lambda h: h.delete([-1]), "slot -1 out of range"),
        (lambda h: h.delete([True]), "integers"),
        (lambda h: h.replace(99, np.ones(4)), "slot 99 out of range"),
        (lambda h: h.replace(0, np.ones(3)), "expected 4 dimensions, got 3"),
        (lambda h: h.replace(0, [np.nan, 1, 1, 1]), "NaN or inf"),
        (lambda h: HNSW(4, metric="hamming"), "unknown metric"),
        (lambda h: HNSW(0), "dim must be >= 1"),
        (lambda h: HNSW(4, M=1), "M must be >= 2"),
        (lambda h: HNSW.from_arrays({"vectors": np.ones((1, 4))}), "not an index checkpoint"),
    ],
)
def test_bad_input_raises_value_error(call, message):
    h = HNSW(4, capacity=16, seed=0)
    h.add(np.eye(4) + 0.1)
    with pytest.raises(ValueError, match=message):
        call(h)
    assert len(h) == 4


def test_cosine_rejects_zero_vector_and_deleted_replace():
    h = HNSW(4, "cosine")
    with pytest.raises(ValueError, match="zero vector"):
        h.add(np.zeros((1, 4)))
    h.add(np.eye(4))
    with pytest.raises(ValueError, match="zero vector"):
        h.search(np.zeros((1, 4), np.float32), 1)
    with pytest.raises(ValueError, match="zero vector"):
        h.search(np.vstack([np.ones((40, 4)), np.zeros((1, 4))]).astype(np.float32), 1)
    h.delete([2])
    with pytest.raises(ValueError, match="slot 2 is deleted"):
        h.replace(2, np.ones(4))
    assert h.is_deleted(2) and not h.is_deleted(1)
    np.testing.assert_allclose(np.linalg.norm(h.get_vectors([0, 1]), axis=1), 1.0, rtol=1e-6)


def test_read_only_inputs_reuse_the_compiled_kernel():
    from vdb.index import kernels

    h = HNSW(8, "cosine", seed=1)
    data = mixture(300, 8, 5, seed=1)
    h.add(np.frombuffer(data.tobytes(), np.float32).reshape(300, 8))  # read-only input
    h.search(data[:2], 3)
    compiled = len(kernels.search_batch.signatures)
    queries = np.frombuffer(data[:40].tobytes(), np.float32).reshape(40, 8)
    mask = np.frombuffer(np.ones(300, bool).tobytes(), bool)
    found, _ = h.search(queries, 1, allowed=mask)
    assert found[:, 0].tolist() == list(range(40))
    assert len(kernels.search_batch.signatures) == compiled


def test_add_and_replace_report_progress_to_the_end():
    data = mixture(3000, 16, 30, seed=21)
    h = HNSW(16, seed=21)
    calls: list[tuple[int, int]] = []
    h.add(data[:2000], progress=lambda done, total: calls.append((done, total)))
    assert len(calls) > 1 and calls[-1] == (2000, 2000)
    assert all(total == 2000 for _, total in calls)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})  # rising
    h.delete(np.arange(0, 2000, 4))  # 500 freed: the next add relinks them, then appends
    calls.clear()
    slots = h.add(data[2000:], progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (1000, 1000) and any(done < 500 for done, _ in calls)
    assert [done for done, _ in calls] == sorted({done for done, _ in calls})
    calls.clear()
    h.replace(slots[:600], data[:600] + 0.5, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (600, 600)
    found, _ = h.search(data[2600:2610], 1, ef=100)
    assert found[:, 0].tolist() == slots[600:610].tolist()


@pytest.mark.parametrize("n, grain, threads", [(1, 8, 2), (7, 8, 2), (100, 8, 2), (1000, 16, 3)])
def test_parallel_runs_every_item_once(n, grain, threads):
    seen = np.zeros(n, np.int64)
    lock = threading.Lock()

    def work(lo: int, hi: int) -> None:
        assert 0 <= lo < hi <= n and hi - lo <= grain
        with lock:
            seen[lo:hi] += 1

    hnsw_module._parallel(work, n, grain, threads)
    assert (seen == 1).all()


def test_parallel_reraises_a_failed_block():
    def work(lo: int, hi: int) -> None:
        if lo <= 50 < hi:
            raise RuntimeError("block 50 failed")

    with pytest.raises(RuntimeError, match="block 50 failed"):
        hnsw_module._parallel(work, 100, 8, 2)


def test_parallel_does_not_wait_for_pool_threads_that_never_start():
    pool = hnsw_module._executor()
    release = threading.Event()
    busy = [pool.submit(release.wait) for _ in range(pool._max_workers)]  # every worker taken
    done: list[int] = []
    caller = threading.Thread(
        target=lambda: hnsw_module._parallel(lambda lo, hi: done.append(hi - lo), 200, 8, 2)
    )
    try:
        caller.start()
        caller.join(timeout=60)  # the calling thread runs every block itself
        assert not caller.is_alive(), "the caller waited for a pool thread that could not start"
        assert sum(done) == 200
    finally:
        release.set()
        for f in busy:
            f.result()
        caller.join()


def test_pool_threads_run_at_the_callers_priority():
    """The background indexer lowers its own priority; the pool threads that share its blocks
    must run at that priority too, and a search's at its caller's."""
    seen: dict[str, int] = {}

    def own() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def call(name: str, nice: int | None) -> None:
        if nice is not None:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        seen[name] = hnsw_module._executor().submit(own).result()

    for name, nice in (("low", 7), ("normal", None)):
        t = threading.Thread(target=call, args=(name, nice))
        t.start()
        t.join()
    assert seen == {"low": 7, "normal": own()}
