"""SparseIndex against a brute-force numpy reference: exactness, filters, churn, idf,
persistence, concurrent readers during writes, bad input."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vdb.index import sparse as sparse_mod
from vdb.index.sparse import SparseIndex

DIMS = 60


def random_vectors(rng: np.random.Generator, n: int, dims: int = DIMS, nnz: int = 8):
    out = []
    for _ in range(n):
        m = int(rng.integers(0, nnz + 1))
        idx = rng.choice(dims, m, replace=False)  # unsorted on purpose
        out.append((idx, rng.standard_normal(m).astype(np.float32)))
    return out


def dense(vector, dims: int = DIMS) -> np.ndarray:
    d = np.zeros(dims, np.float64)
    d[np.asarray(vector[0], np.int64)] = vector[1]
    return d


class Reference:
    """The model: a dict slot -> vector, scored by brute force."""

    def __init__(self, modifier=None):
        self.modifier = modifier
        self.vectors: dict[int, tuple] = {}

    def put(self, slots, vectors):
        for s, v in zip(slots, vectors, strict=True):
            self.vectors[int(s)] = v

    def remove(self, slots):
        for s in slots:
            self.vectors.pop(int(s), None)

    def idf(self, dim: int) -> float:
        n = len(self.vectors)
        df = sum(1 for v in self.vectors.values() if dim in set(np.asarray(v[0]).tolist()))
        return math.log((n - df + 0.5) / (df + 0.5) + 1.0)

    def scores(self, query, allowed=None) -> dict[int, float]:
        """Candidates (sharing an index with the query, allowed) -> exact score."""
        q = dense(query)
        if self.modifier == "idf":
            for d in np.asarray(query[0]).tolist():
                q[d] *= self.idf(d)
        qset = set(np.asarray(query[0]).tolist())
        out = {}
        for s, v in self.vectors.items():
            if allowed is not None and (s >= len(allowed) or not allowed[s]):
                continue
            if qset & set(np.asarray(v[0]).tolist()):
                out[s] = float(dense(v) @ q)
        return out


def check_top(slots_row, scores_row, ref: dict[int, float], k: int) -> None:
    """Exactly the top-k of the reference: right count, exact scores, best first, and no
    left-out candidate scoring above the weakest returned one."""
    got = [int(s) for s in slots_row if s >= 0]
    assert len(got) == min(k, len(ref))
    assert all(s == -1 for s in slots_row[len(got) :])
    assert np.all(np.isneginf(scores_row[len(got) :]))
    assert len(set(got)) == len(got)
    for s, sc in zip(got, scores_row, strict=False):
        assert s in ref
        assert sc == pytest.approx(ref[s], rel=1e-5, abs=1e-5)
    assert all(scores_row[i] >= scores_row[i + 1] for i in range(len(got) - 1))
    if got:
        weakest = ref[got[-1]]
        left_out = [ref[s] for s in ref if s not in set(got)]
        assert all(x <= weakest + 1e-5 for x in left_out)


def test_exact_against_brute_force():
    rng = np.random.default_rng(1)
    vectors = random_vectors(rng, 400)
    h = SparseIndex()
    h.put(np.arange(400), vectors)
    ref = Reference()
    ref.put(range(400), vectors)
    queries = random_vectors(rng, 30)
    for k in (1, 10, 500):
        slots, scores = h.search(queries, k)
        assert slots.dtype == np.int64 and scores.dtype == np.float32
        assert slots.shape == (30, k)
        for i, q in enumerate(queries):
            check_top(slots[i], scores[i], ref.scores(q), k)


def test_tiny_known_answer_and_ties():
    h = SparseIndex()
    h.put([5, 2, 9], [([1, 3], [1.0, 2.0]), ([3], [2.0]), ([7], [1.0])])
    slots, scores = h.search([([3, 1], [1.0, 1.0])], 3)
    # slot 5: 1 + 2 = 3; slot 2: 2; slot 9 shares nothing with the query: not a candidate
    assert slots[0].tolist() == [5, 2, -1]
    assert scores[0][:2].tolist() == [3.0, 2.0]
    h.put([1], [([3], [2.0])])  # ties with slot 2: smaller slot first
    slots, _ = h.search([([3], [1.0])], 3)
    assert slots[0].tolist() == [1, 2, 5]


def test_unsorted_indices_are_sorted_on_write_and_get_returns_them():
    h = SparseIndex()
    h.put([0, 1], [([9, 2, 5], [0.9, 0.2, 0.5]), ([], [])])
    (idx, val), (e_idx, e_val) = h.get([0, 1])
    assert idx.tolist() == [2, 5, 9] and idx.dtype == np.uint32
    assert val.tolist() == pytest.approx([0.2, 0.5, 0.9]) and val.dtype == np.float32
    assert e_idx.size == 0 and e_val.size == 0
    assert h.get([7]) == [None]
    assert len(h) == 2  # the empty vector is a document
    slots, _ = h.search([([], [])], 2)
    assert slots.tolist() == [[-1, -1]]


def test_allowed_mask_inside_the_kernel():
    rng = np.random.default_rng(2)
    vectors = random_vectors(rng, 300, nnz=10)
    h = SparseIndex()
    h.put(np.arange(300), vectors)
    ref = Reference()
    ref.put(range(300), vectors)
    queries = random_vectors(rng, 20, nnz=10)
    for share in (0.02, 0.3, 1.0):
        allowed = rng.random(300) < share
        slots, scores = h.search(queries, 10, allowed=allowed)
        for i, q in enumerate(queries):
            check_top(slots[i], scores[i], ref.scores(q, allowed), 10)
    # a short mask means "not allowed" beyond its end; an int mask works too
    short = np.ones(50, np.int8)
    slots, scores = h.search(queries, 10, allowed=short)
    assert slots.max() < 50
    for i, q in enumerate(queries):
        check_top(slots[i], scores[i], ref.scores(q, np.ones(50, bool)), 10)


def test_deletes_and_replaces_never_leave_a_stale_posting(monkeypatch):
    # a small delta bound makes merges happen in the middle of the churn
    monkeypatch.setattr(sparse_mod, "_DELTA_MIN", 64)
    monkeypatch.setattr(sparse_mod, "_DELTA_SQRT", 1.0)
    rng = np.random.default_rng(3)
    h = SparseIndex()
    ref = Reference()
    queries = random_vectors(rng, 10)
    for step in range(60):
        slots = rng.choice(200, int(rng.integers(1, 20)), replace=False)
        if rng.random() < 0.35:
            h.remove(slots)
            ref.remove(slots)
        else:
            vectors = random_vectors(rng, slots.shape[0])
            h.put(slots, vectors)
            ref.put(slots, vectors)
        assert len(h) == len(ref.vectors)
        if step % 5 == 0:
            out_slots, out_scores = h.search(queries, 15)
            for i, q in enumerate(queries):
                check_top(out_slots[i], out_scores[i], ref.scores(q), 15)
    for s in range(200):
        got = h.get([s])[0]
        if s in ref.vectors:
            order = np.argsort(ref.vectors[s][0])
            assert got[0].tolist() == np.asarray(ref.vectors[s][0])[order].tolist()
            assert got[1].tolist() == pytest.approx(ref.vectors[s][1][order].tolist())
        else:
            assert got is None
    assert h.live_mask()[:200].tolist() == [s in ref.vectors for s in range(200)]


def test_replace_moves_the_score_and_remove_drops_it():
    h = SparseIndex()
    h.put([3], [([1], [5.0])])
    h.put([3], [([2], [1.0])])  # replace: the old posting on index 1 must not count
    slots, _ = h.search([([1], [1.0])], 5)
    assert slots[0].tolist() == [-1] * 5
    slots, scores = h.search([([2], [1.0])], 1)
    assert slots[0].tolist() == [3] and scores[0].tolist() == [1.0]
    h.remove([3, 3, 40])  # repeats and absent slots are ignored
    assert len(h) == 0
    slots, _ = h.search([([2], [1.0])], 1)
    assert slots[0].tolist() == [-1]


def test_repeated_slot_in_one_put_keeps_the_last_vector():
    h = SparseIndex()
    h.put([4, 4], [([1], [1.0]), ([2], [2.0])])
    assert len(h) == 1
    assert h.get([4])[0][0].tolist() == [2]


def test_idf_against_reference():
    rng = np.random.default_rng(4)
    vectors = random_vectors(rng, 250, dims=30, nnz=6)
    h = SparseIndex("idf")
    h.put(np.arange(250), vectors)
    ref = Reference("idf")
    ref.put(range(250), vectors)
    queries = random_vectors(rng, 15, dims=30, nnz=6)
    slots, scores = h.search(queries, 10)
    for i, q in enumerate(queries):
        check_top(slots[i], scores[i], ref.scores(q), 10)
    # live frequencies: after removing half the documents the weights follow
    gone = np.arange(0, 250, 2)
    h.remove(gone)
    ref.remove(gone)
    slots, scores = h.search(queries, 10)
    for i, q in enumerate(queries):
        check_top(slots[i], scores[i], ref.scores(q), 10)


def test_idf_formula_by_hand():
    # N = 4 documents, index 1 in 3 of them, index 2 in 1: weights ln(1.5/3.5 + 1), ln(3.5/1.5 + 1)
    h = SparseIndex("idf")
    h.put([0, 1, 2, 3], [([1], [1.0]), ([1], [1.0]), ([1, 2], [1.0, 1.0]), ([], [])])
    _, scores = h.search([([1, 2], [1.0, 1.0])], 4)
    w1 = math.log((4 - 3 + 0.5) / (3 + 0.5) + 1)
    w2 = math.log((4 - 1 + 0.5) / (1 + 0.5) + 1)
    assert scores[0][0] == pytest.approx(w1 + w2, rel=1e-6)
    assert scores[0][1:3].tolist() == pytest.approx([w1, w1], rel=1e-6)


def test_idf_over_several_indexes_by_the_caller():
    """Segments: the caller sums N and df over the indexes, scales the query with idf_weights
    and searches each with idf=False; the merged top-k equals one index holding everything."""
    rng = np.random.default_rng(8)
    vectors = random_vectors(rng, 200, dims=25, nnz=6)
    whole = SparseIndex("idf")
    whole.put(np.arange(200), vectors)
    parts = [SparseIndex("idf"), SparseIndex("idf")]
    parts[0].put(np.arange(0, 200, 2), vectors[0::2])
    parts[1].put(np.arange(1, 200, 2), vectors[1::2])
    for q in random_vectors(rng, 10, dims=25, nnz=6):
        idx = np.asarray(q[0], np.int64)
        df = sum(p.document_frequencies(idx) for p in parts)
        assert df.tolist() == whole.document_frequencies(idx).tolist()
        weights = sparse_mod.idf_weights(sum(len(p) for p in parts), df)
        scaled = [(idx, (np.asarray(q[1], np.float32) * weights).astype(np.float32))]
        hits = []
        for p in parts:
            slots, scores = p.search(scaled, 10, idf=False)
            hits += [
                (sc, s)
                for s, sc in zip(slots[0].tolist(), scores[0].tolist(), strict=True)
                if s >= 0
            ]
        hits.sort(key=lambda h: (-h[0], h[1]))
        w_slots, w_scores = whole.search([q], 10)
        got = hits[:10]
        assert [s for _, s in got] == [s for s in w_slots[0].tolist() if s >= 0]
        assert [sc for sc, _ in got] == pytest.approx(
            [x for x in w_scores[0].tolist() if x > -np.inf], rel=1e-6
        )
    with pytest.raises(ValueError, match="indices must be"):
        whole.document_frequencies([-1])


def test_persistence_round_trip_answers_identically(monkeypatch):
    monkeypatch.setattr(sparse_mod, "_DELTA_MIN", 64)
    monkeypatch.setattr(sparse_mod, "_DELTA_SQRT", 1.0)
    rng = np.random.default_rng(5)
    for modifier in (None, "idf"):
        h = SparseIndex(modifier)
        h.put(np.arange(300), random_vectors(rng, 300))
        h.remove(np.arange(0, 300, 7))
        h.put(np.arange(0, 300, 5), random_vectors(rng, 60))  # some in the delta
        arrays = h.to_arrays()
        assert {"params", "slots", "ptr", "indices", "values"} <= set(arrays)
        copy = SparseIndex.from_arrays({k: np.array(v) for k, v in arrays.items()})
        assert len(copy) == len(h) and copy.modifier == modifier
        queries = random_vectors(rng, 25)
        allowed = rng.random(300) < 0.5
        for mask in (None, allowed):
            a = h.search(queries, 12, allowed=mask)
            b = copy.search(queries, 12, allowed=mask)
            assert np.array_equal(a[0], b[0])
            assert np.array_equal(a[1], b[1])
        for s in range(300):
            x, y = h.get([s])[0], copy.get([s])[0]
            assert (x is None) == (y is None)
            if x is not None:
                assert np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1])


def test_from_arrays_refuses_broken_checkpoints():
    h = SparseIndex()
    h.put([0, 1], [([1], [1.0]), ([2], [2.0])])
    arrays = h.to_arrays()
    with pytest.raises(ValueError, match="checkpoint"):
        SparseIndex.from_arrays({k: v for k, v in arrays.items() if k != "ptr"})
    bad = dict(arrays)
    bad["params"] = arrays["params"].copy()
    bad["params"][0] = 99
    with pytest.raises(ValueError, match="version"):
        SparseIndex.from_arrays(bad)
    bad = dict(arrays)
    bad["values"] = arrays["values"][:1]
    with pytest.raises(ValueError, match="fit together"):
        SparseIndex.from_arrays(bad)


def test_warm_loads_every_kernel_and_leaves_the_index_alone():
    h = SparseIndex()
    h.put([1], [([2], [3.0])])
    h.warm()
    assert len(h) == 1 and sparse_mod._warmed[0] is True
    assert h.search([([2], [1.0])], 1)[1].tolist() == [[3.0]]


def test_memory_bytes_grows_with_data():
    h = SparseIndex()
    before = h.memory_bytes()
    rng = np.random.default_rng(6)
    h.put(np.arange(2000), random_vectors(rng, 2000, dims=5000, nnz=30))
    assert h.memory_bytes() > before + 2000 * 15 * 8


def test_concurrent_readers_see_only_live_allowed_slots_with_exact_scores(monkeypatch):
    """Slots 0..99 flip between vector A (indices 0-4) and vector B (indices 5-9); the query
    covers both halves, so a mix of an old and a new vector would give a score that is
    neither. Slots 100..199 come and go but are never allowed; slots 200..299 were removed
    before the readers started. Merges happen during the run (small delta bound)."""
    monkeypatch.setattr(sparse_mod, "_DELTA_MIN", 256)
    monkeypatch.setattr(sparse_mod, "_DELTA_SQRT", 1.0)
    rng = np.random.default_rng(7)
    a_vals = rng.uniform(0.5, 1.5, (100, 5)).astype(np.float32)
    b_vals = rng.uniform(2.0, 3.0, (100, 5)).astype(np.float32)

    def vec_a(s):
        return (np.arange(5), a_vals[s])

    def vec_b(s):
        return (np.arange(5, 10), b_vals[s])

    h = SparseIndex()
    h.put(np.arange(100), [vec_a(s) for s in range(100)])
    h.put(np.arange(200, 300), [vec_a(s - 200) for s in range(200, 300)])
    h.remove(np.arange(200, 300))
    allowed = np.zeros(300, bool)
    allowed[:100] = True
    allowed[200:] = True  # allowed but removed: must never appear
    query = [(np.arange(10), np.ones(10, np.float32))]
    score_a = {s: float(a_vals[s].astype(np.float32).sum()) for s in range(100)}
    score_b = {s: float(b_vals[s].astype(np.float32).sum()) for s in range(100)}
    stop = threading.Event()
    errors: list[str] = []
    searches = [0]

    def reader():
        while not stop.is_set():
            slots, scores = h.search(query, 100, allowed=allowed)
            searches[0] += 1
            for s, sc in zip(slots[0].tolist(), scores[0].tolist(), strict=True):
                if s < 0:
                    errors.append("fewer than 100 hits: a live allowed slot went missing")
                    return
                if s >= 100:
                    errors.append(f"slot {s} is not live and allowed")
                    return
                if not (
                    math.isclose(sc, score_a[s], rel_tol=1e-5)
                    or math.isclose(sc, score_b[s], rel_tol=1e-5)
                ):
                    errors.append(f"slot {s} scored {sc}, neither of its vectors")
                    return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for step in range(300):
            chosen = rng.choice(100, 10, replace=False)
            use_b = step % 2 == 0
            h.put(chosen, [vec_b(s) if use_b else vec_a(s) for s in chosen])
            noise = rng.choice(np.arange(100, 200), 10, replace=False)
            h.put(noise, [(np.arange(10), np.full(10, 9.0, np.float32))] * 10)
            h.remove(noise[:5])
            if errors:
                break
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert searches[0] > 10


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        (([1, 2, 1], [1.0, 2.0, 3.0]), r"vectors\[1\]\.indices: duplicate index 1"),
        (([1, 2], [1.0]), r"vectors\[1\]: indices and values must be the same length"),
        (([1, -3], [1.0, 2.0]), r"vectors\[1\]\.indices: negative index -3"),
        (([1, 2], [1.0, float("nan")]), r"vectors\[1\]\.values: NaN or infinity"),
        (([1, 2], [float("inf"), 1.0]), r"vectors\[1\]\.values: NaN or infinity"),
        (([1, 2], [1e39, 1.0]), r"vectors\[1\]\.values: .*float32 range"),
        (([1.5, 2], [1.0, 1.0]), r"vectors\[1\]\.indices must be integers"),
        (([1, 2**32], [1.0, 1.0]), r"vectors\[1\]\.indices: index 4294967296 exceeds"),
        ((["a"], [1.0]), r"vectors\[1\]\.indices must be integers"),
        (([1], ["x"]), r"vectors\[1\]\.values must be numbers"),
        ({"indices": [1]}, r"vectors\[1\]\.values: missing"),
        (7, r"vectors\[1\] must be a pair"),
    ],
)
def test_bad_vectors_are_refused_naming_vector_and_field(vector, message):
    h = SparseIndex()
    h.put([0], [([5], [1.0])])
    with pytest.raises(ValueError, match=message):
        h.put([1, 2], [([3], [1.0]), vector])
    # nothing of the bad batch was written
    assert len(h) == 1 and h.get([1, 2]) == [None, None]


def test_bad_queries_and_arguments():
    h = SparseIndex()
    h.put([0], [([5], [1.0])])
    with pytest.raises(ValueError, match=r"queries\[0\]\.indices: duplicate index 5"):
        h.search([([5, 5], [1.0, 1.0])], 3)
    with pytest.raises(ValueError, match=r"queries\[0\]\.values: NaN"):
        h.search([([5], [float("nan")])], 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        h.search([([5], [1.0])], 0)
    with pytest.raises(ValueError, match="k must be an integer"):
        h.search([([5], [1.0])], 2.5)
    with pytest.raises(ValueError, match="allowed must be a boolean mask"):
        h.search([([5], [1.0])], 3, allowed=np.ones(3, np.float32))
    with pytest.raises(ValueError, match="slot -1 out of range"):
        h.put([-1], [([1], [1.0])])
    with pytest.raises(ValueError, match="slots must be integers"):
        h.put([0.5], [([1], [1.0])])
    with pytest.raises(ValueError, match="got 2 slots but 1 vectors"):
        h.put([1, 2], [([1], [1.0])])
    with pytest.raises(ValueError, match="unknown modifier"):
        SparseIndex("bm25")
    # a dict form and numpy inputs are accepted
    h.put(np.array([3], np.int32), [{"indices": np.array([7], np.uint32), "values": [2.0]}])
    slots, scores = h.search([{"indices": [7], "values": [1.0]}], 1)
    assert slots[0].tolist() == [3] and scores[0].tolist() == [2.0]


_items = st.one_of(
    st.integers(min_value=-5, max_value=2**32 + 5),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=2),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.lists(_items, max_size=5), st.lists(_items, max_size=5)),
            st.tuples(
                st.lists(st.integers(0, 40), max_size=6, unique=True),
                st.lists(st.floats(-10, 10, width=32), min_size=6, max_size=6),
            ).map(lambda t: (t[0], t[1][: len(t[0])])),
            _items,
        ),
        max_size=4,
    )
)
def test_put_validates_or_refuses_and_never_half_writes(vectors):
    h = SparseIndex()
    h.put([100], [([1], [1.0])])
    try:
        h.put(np.arange(len(vectors)), vectors)
    except ValueError as e:
        assert "vectors[" in str(e) or "vectors must" in str(e)
        assert len(h) == 1 and h.get(np.arange(len(vectors))) == [None] * len(vectors)
        return
    assert len(h) == 1 + len(vectors)
    for s, (idx, val) in enumerate(vectors):
        got = h.get([s])[0]
        order = np.argsort(np.asarray(idx, np.int64), kind="stable")
        assert got[0].tolist() == np.asarray(idx, np.int64)[order].tolist()
        assert got[1].tolist() == pytest.approx(np.asarray(val, np.float64)[order].tolist())
