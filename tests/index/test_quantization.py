"""int8 scalar quantization of the HNSW index: recall against float32, stability, round trips."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from vdb.index import HNSW
from vdb.index import quantizer as qz
from vdb.index.quantizer import ScalarQuantizer

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "minilm-10k"
EFS = (16, 32, 64)
_built: dict[tuple, HNSW] = {}


def minilm() -> tuple[np.ndarray, np.ndarray]:
    """The in-repo real-embedding fixture: 6,000 base rows and 200 queries (float32)."""
    base = np.load(FIXTURE / "base.npy")[:6000].astype(np.float32)
    queries = np.load(FIXTURE / "queries.npy").astype(np.float32)
    return base, queries


def mixture(n: int, dim: int, centres: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, dim)).astype(np.float32) * 3.0
    return (c[rng.integers(0, centres, n)] + rng.standard_normal((n, dim))).astype(np.float32)


def brute(base: np.ndarray, queries: np.ndarray, metric: str, k: int = 10) -> np.ndarray:
    if metric == "l2":
        d = (queries**2).sum(1)[:, None] - 2 * queries @ base.T + (base**2).sum(1)[None, :]
    elif metric == "ip":
        d = -(queries @ base.T)
    else:
        b = base / np.linalg.norm(base, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        d = -(q @ b.T)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(t)) / truth.shape[1] for f, t in zip(found, truth, strict=True)])
    )


def data(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "minilm":
        return minilm()
    x = mixture(6200, 48, 60, seed=3)
    return x[:6000], x[6000:]


def built(name: str, metric: str, quantization: str | None) -> HNSW:
    key = (name, metric, quantization)
    if key not in _built:
        base, _ = data(name)
        h = HNSW(base.shape[1], metric, M=12, ef_construction=64, seed=5, quantization=quantization)
        h.add(base)
        _built[key] = h
    return _built[key]


@pytest.mark.parametrize("name", ["minilm", "synthetic"])
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_int8_recall_within_001_of_float32_at_every_ef(name, metric):
    base, queries = data(name)
    truth = brute(base, queries, metric)
    f32 = built(name, metric, None)
    i8 = built(name, metric, "int8")
    for ef in EFS:
        r_f = recall(f32.search(queries, 10, ef=ef)[0], truth)
        r_q = recall(i8.search(queries, 10, ef=ef)[0], truth)
        assert r_q >= r_f - 0.01, (name, metric, ef, r_q, r_f)
    assert recall(i8.search(queries, 10, ef=64)[0], truth) >= 0.9


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_rescored_scores_are_the_float_scores(metric):
    base, queries = data("synthetic")
    h = built("synthetic", metric, "int8")
    slots, scores = h.search(queries, 10, ef=32)
    stored = h.get_vectors(slots.reshape(-1)).reshape(slots.shape + (-1,))
    q = queries
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    if metric == "l2":
        want = ((stored - q[:, None, :]) ** 2).sum(-1)
        assert (np.diff(scores, axis=1) >= -1e-4).all()
    else:
        want = np.einsum("qkd,qd->qk", stored, q)
        assert (np.diff(scores, axis=1) <= 1e-4).all()
    assert np.allclose(scores, want, rtol=1e-4, atol=1e-3)
    # without rescoring the scores are the quantized estimates: close, not equal
    _, approx = h.search(queries, 10, ef=32, rescore=False)
    assert not np.array_equal(approx, scores)
    assert np.allclose(approx[:, 0], scores[:, 0], rtol=0.1, atol=0.1 * np.abs(scores).max())


def test_oversampling_ignore_and_exact_paths():
    base, queries = data("minilm")
    truth = brute(base, queries, "cosine")
    h = built("minilm", "cosine", "int8")
    full = recall(h.search(queries, 10, ef=64)[0], truth)
    over1 = recall(h.search(queries, 10, ef=64, oversampling=1.0)[0], truth)
    over2 = recall(h.search(queries, 10, ef=64, oversampling=2)[0], truth)
    assert over1 <= over2 <= full + 1e-9
    # ignore: the walk on the float vectors, the same answers as a float index of the same graph
    f32 = built("minilm", "cosine", None)
    a = h.search(queries, 10, ef=64, ignore_quantization=True)[0]
    assert abs(recall(a, truth) - recall(f32.search(queries, 10, ef=64)[0], truth)) <= 0.01
    # a selective mask is scanned exactly over the float vectors: the true top-k
    allowed = np.zeros(h.capacity, bool)
    allowed[::97] = True
    slots, scores = h.search(queries[:20], 5, ef=64, allowed=allowed)
    rows = np.flatnonzero(allowed[: base.shape[0]])
    want = rows[brute(base[rows], queries[:20], "cosine", 5)]
    assert np.array_equal(slots, want)
    with pytest.raises(ValueError, match="oversampling"):
        h.search(queries[:1], 10, oversampling=0.5)
    with pytest.raises(ValueError, match="quantization"):
        HNSW(8, quantization="binary")


def test_walk_keeps_a_pool_of_k_times_oversampling():
    """The int8 walk's breadth is max(ef, pool): pool = ceil(k * oversampling) (rescored), or
    2k when no oversampling is given (every candidate rescored), so a small ef walks as far as
    the pool, and at an ef above the pool nothing changes."""
    base, queries = data("minilm")
    h = built("minilm", "cosine", "int8")
    truth = brute(base, queries, "cosine")
    for ef in (1, 5, 10):
        assert np.array_equal(h.search(queries, 10, ef=ef)[0], h.search(queries, 10, ef=20)[0])
        got = h.search(queries, 10, ef=ef, oversampling=3.0)
        want = h.search(queries, 10, ef=30, oversampling=3.0)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    # a pool above ef walks further: never fewer true neighbours than the plain walk of ef
    wide = recall(h.search(queries, 10, ef=10, oversampling=4.0)[0], truth)
    assert wide >= recall(h.search(queries, 10, ef=10)[0], truth) - 1e-9
    # above the pool the walk is ef wide, as on a float index
    assert not np.array_equal(h.search(queries, 10, ef=64)[0], h.search(queries, 10, ef=20)[0])


def test_one_query_lean_path_matches_the_batch_path():
    """One [1, dim] float32 query on an int8 index (default options) takes the lean path: the
    same answers as the same query in a batch, and the same checks of its values."""
    _base, queries = data("minilm")
    h = built("minilm", "cosine", "int8")
    for ef in (4, 24, 64):
        slots, scores = h.search(queries[:40], 10, ef=ef)
        for i in range(40):
            s1, d1 = h.search(queries[i : i + 1], 10, ef=ef)
            assert np.array_equal(s1[0], slots[i])
            np.testing.assert_allclose(d1[0], scores[i], rtol=1e-6)
    with pytest.raises(ValueError, match="NaN or inf"):
        h.search(np.full((1, h.dim), np.nan, np.float32), 10)


def _codes_match_floats(h: HNSW) -> None:
    """Every live slot's codes are the quantizer's codes of its stored float vector."""
    live = np.flatnonzero(h.live_mask())
    arrays = h.to_arrays()
    c = np.empty((live.size, h.dim), np.int8)
    t = np.empty(live.size, np.float32)
    q = ScalarQuantizer.from_array(h.dim, h.metric, arrays["quantizer"])
    q.encode(h.get_vectors(live), c, t, count=False)
    assert np.array_equal(arrays["codes"][live], c)
    assert np.allclose(arrays["terms"][live], t)


def test_quantizer_is_stable_under_growth_outliers_deletes_and_replaces():
    x = mixture(9000, 24, 30, seed=8)
    h = HNSW(24, "l2", M=8, ef_construction=48, capacity=64, seed=1, quantization="int8")
    h.add(x[:2000])
    fitted = h.to_arrays()["quantizer"].copy()
    h.add(x[2000:4000])  # same distribution, fewer than GROWTH_REFIT * n_fit new points: kept
    assert np.array_equal(h.to_arrays()["quantizer"][8:], fitted[8:])
    assert h.capacity >= 4000  # grew by doubling, codes carried over
    _codes_match_floats(h)
    # points far outside the learned range: codes saturate, the floats rank them
    far = x[4000:4020] * 50.0
    far_slots = h.add(far)
    assert np.array_equal(h.to_arrays()["quantizer"][8:], fitted[8:])
    found, scores = h.search(far, 1, ef=64)
    assert np.array_equal(found[:, 0], far_slots)
    assert np.allclose(scores[:, 0], 0.0, atol=1e-2)
    # deletes and replaces keep codes and floats in step
    h.delete(np.arange(0, 300))
    h.replace(np.arange(300, 400), x[4100:4200])
    _codes_match_floats(h)
    found, _ = h.search(x[4100:4200], 1, ef=64)
    assert (found[:, 0] == np.arange(300, 400)).mean() >= 0.95
    assert not (np.isin(found, np.arange(0, 300))).any()
    # growth past the rule's bound refits once on the live vectors, and re-codes every slot
    h.add(x[4200:9000])
    q = ScalarQuantizer.from_array(24, "l2", h.to_arrays()["quantizer"])
    assert q.n_fit > 2000
    _codes_match_floats(h)
    truth = brute(h.get_vectors(np.flatnonzero(h.live_mask())), x[:200], "l2")
    live = np.flatnonzero(h.live_mask())
    assert recall(h.search(x[:200], 10, ef=64)[0], live[truth]) >= 0.9


def test_first_tiny_fit_is_refitted_as_the_index_grows():
    x = mixture(3000, 16, 10, seed=2)
    h = HNSW(16, "cosine", M=8, ef_construction=32, seed=2, quantization="int8")
    h.add(x[:1])  # a degenerate first fit (one point)
    h.add(x[1:3000])
    q = ScalarQuantizer.from_array(16, "cosine", h.to_arrays()["quantizer"])
    assert q.n_fit >= 1000
    _codes_match_floats(h)
    truth = brute(x, x[:100], "cosine")
    assert recall(h.search(x[:100], 10, ef=64)[0], truth) >= 0.9


def test_clip_rule_refits_when_the_data_moves():
    q = ScalarQuantizer(8, "l2")
    rng = np.random.default_rng(0)
    q.fit(rng.standard_normal((20000, 8)).astype(np.float32))
    codes = np.empty((10000, 8), np.int8)
    terms = np.empty(10000, np.float32)
    q.encode(rng.standard_normal((10000, 8)).astype(np.float32), codes, terms)
    assert not q.needs_refit()
    q.encode(10 + rng.standard_normal((10000, 8)).astype(np.float32), codes, terms)
    assert q.needs_refit()
    assert (codes == 127).mean() > 0.9


@pytest.mark.parametrize("on_disk", [False, True])
def test_round_trip_and_memory_mapped_floats_answer_identically(tmp_path, on_disk):
    base, queries = data("minilm")
    base = base[:3000]
    a = HNSW(384, "cosine", M=12, ef_construction=64, seed=9, quantization="int8")
    a.add(base)
    b = HNSW(
        384, "cosine", M=12, ef_construction=64, seed=9, quantization="int8",
        on_disk=str(tmp_path) if on_disk else False,
    )  # fmt: skip
    b.add(base)
    assert b.on_disk is on_disk
    mem = b.memory_bytes()
    if on_disk:
        assert mem["mapped"] >= 3000 * 384 * 4 and mem["ram"] < mem["mapped"] / 2
        assert not list(tmp_path.iterdir())  # the mapping's file is unlinked
    c = HNSW.from_arrays({k: v.copy() for k, v in b.to_arrays().items()})
    assert c.quantization == "int8" and c.on_disk is on_disk
    d = HNSW.from_arrays(a.to_arrays(), on_disk=True)
    allowed = np.arange(a.capacity) % 4 == 0
    for kwargs in ({}, {"allowed": allowed}, {"rescore": False}, {"oversampling": 2.0}):
        ra = a.search(queries, 10, ef=32, **kwargs)
        for other in (b, c, d):
            ro = other.search(queries, 10, ef=32, **kwargs)
            assert np.array_equal(ra[0], ro[0]) and np.array_equal(ra[1], ro[1]), kwargs
    assert np.array_equal(a.get_vectors(np.arange(50)), d.get_vectors(np.arange(50)))
    # the restored index keeps growing the same way
    more = base[:200] * 0.5 + base[200:400] * 0.5
    assert np.array_equal(a.add(more), c.add(more))
    for name, arr in a.to_arrays().items():
        if name != "params":
            assert np.array_equal(arr, c.to_arrays()[name]), name


def test_float_checkpoints_are_unchanged():
    x = mixture(500, 8, 5, seed=1)
    h = HNSW(8, seed=1)
    h.add(x)
    arrays = h.to_arrays()
    assert arrays["params"].shape == (14,) and "codes" not in arrays
    assert HNSW.from_arrays(arrays).quantization is None


def test_searches_during_writes_on_a_quantized_index_return_live_slots():
    data_ = mixture(8000, 32, 50, seed=12)
    h = HNSW(32, "cosine", seed=12, quantization="int8")
    h.add(data_[:1000])
    stop = threading.Event()
    errors: list[str] = []
    searches = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            live_before = h.live_mask()
            q = data_[rng.integers(0, 8000, 4)]
            found, scores = h.search(q, 10, ef=32, oversampling=2.0 if seed else None)
            searches[0] += 1
            live_after = h.live_mask()
            hits = found[found >= 0]
            if hits.size < found.size:
                errors.append("padding with enough points")
            live = np.zeros(max(live_before.size, live_after.size, 1 + hits.max()), bool)
            live[: live_before.size] |= live_before
            live[: live_after.size] |= live_after
            if not live[hits].all():
                errors.append(f"dead or invalid slot in {found.tolist()}")
            if not np.isfinite(scores).all():
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
        # 1000 first points, then 7000 more: crosses the growth refit (and capacity doubling)
        for i in range(1000, 8000, 500):
            h.add(data_[i : i + 500])
            h.delete(np.arange(i - 1000, i - 950))
            h.replace(np.arange(i - 950, i - 920), data_[i - 920 : i - 890])
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert searches[0] > 0
    assert len(h) == 8000 - 14 * 50
    assert ScalarQuantizer.from_array(32, "cosine", h.to_arrays()["quantizer"]).n_fit > 1000


@pytest.mark.parametrize(
    "value, message",
    [
        ("pq", "quantization.type"),
        ({"type": "int4"}, "quantization.type"),
        ({"type": "int8", "quantile": 2}, "quantization.quantile"),
        ({"type": "int8", "quantile": "high"}, "quantization.quantile"),
        ({"type": "int8", "always_ram": 1}, "quantization.always_ram"),
        ({"type": "int8", "bits": 4}, "bits"),
        (3, "quantization must be"),
    ],
)
def test_bad_quantization_configs_name_the_field(value, message):
    with pytest.raises(ValueError, match=message):
        qz.parse_config(value)


def test_search_options_map_to_index_arguments():
    assert qz.search_options({"ignore": True, "rescore": False, "oversampling": 3}) == {
        "ignore_quantization": True,
        "rescore": False,
        "oversampling": 3.0,
    }
    for bad, message in (
        ({"oversampling": 0.5}, "oversampling"),
        ({"rescore": "yes"}, "rescore"),
        ({"ignore": 1}, "ignore"),
        ({"fast": True}, "fast"),
    ):
        with pytest.raises(ValueError, match=message):
            qz.search_options(bad)


def test_ram_per_slot_with_floats_on_disk(tmp_path):
    """What stays in RAM per slot (M=16, 128-d): links 132 + codes 128 + term 4 + upper offset
    4 + level 1 + deleted flag 1 bytes, plus the upper rows (~68 / 15 bytes: sized to the
    expected count, not doubled); the re-link mask only once a slot was re-linked."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4000, 128)).astype(np.float32)
    h = HNSW(128, "l2", M=16, ef_construction=32, capacity=4000, seed=1, quantization="int8",
             on_disk=str(tmp_path))  # fmt: skip
    h.add(x)
    ram = h.memory_bytes()["ram"]
    per_slot = 132 + 128 + 4 + 4 + 1 + 1
    upper = ram - 4000 * per_slot - h._g.consts.nbytes - h._g.state.nbytes
    assert 0 < upper <= 4000 * 68 * 1.3 / 15  # rows used ~4000/15, allocated within 30%
    assert int(h._g.state[3]) * 68 <= upper
    h.replace(3, x[4] + 0.5)
    assert h.memory_bytes()["ram"] == ram + 4000  # the re-link mask, 1 byte per slot
    assert h.search(x[4:5] + 0.5, 1)[0][0, 0] == 3
