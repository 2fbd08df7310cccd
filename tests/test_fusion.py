"""RRF and DBSF against references computed here from the same lists, and Qdrant's own values."""

from __future__ import annotations

import numpy as np
import pytest

from vdb.fusion import DEFAULT_RRF_K, dbsf, rrf


def random_lists(rng: np.random.Generator, n_lists: int = 3, pool: int = 40, size: int = 15):
    lists = []
    for _ in range(n_lists):
        ids = rng.choice(pool, size, replace=False)
        scores = np.sort(rng.normal(0.5, 0.2, size))[::-1]
        lists.append([(int(i), float(s)) for i, s in zip(ids, scores, strict=True)])
    return lists


def rank_reference(fused: dict, order_of_first: list) -> list:
    """Best first; equal scores in order of first appearance."""
    return sorted(fused, key=lambda i: (-fused[i], order_of_first.index(i)))


def first_appearance(lists) -> list:
    seen: list = []
    for hits in lists:
        for point_id, _ in hits:
            if point_id not in seen:
                seen.append(point_id)
    return seen


def test_rrf_matches_qdrants_own_example():
    # Qdrant's unit test (lib/segment/src/common/reciprocal_rank_fusion.rs, test_rrf_scoring)
    lists = [
        [(2, 0.9), (1, 0.8)],
        [(1, 0.7), (2, 0.6), (3, 0.5)],
        [(5, 0.9), (3, 0.5), (1, 0.4)],
    ]
    fused = rrf(lists)
    assert [i for i, _ in fused] == [1, 2, 3, 5]
    assert [s for _, s in fused] == pytest.approx([1.0833334, 0.8333334, 0.5833334, 0.5], abs=1e-6)
    assert rrf([[(1, 0.9)]]) == [(1, 0.5)]  # 1 / (0 + 2)
    assert rrf([]) == []
    assert DEFAULT_RRF_K == 2


def test_rrf_against_reference():
    rng = np.random.default_rng(0)
    for k in (1, 2, 60):
        lists = random_lists(rng)
        fused_ref: dict = {}
        for hits in lists:
            for pos, (i, _) in enumerate(hits):
                fused_ref[i] = fused_ref.get(i, 0.0) + 1.0 / (pos + k)
        got = rrf(lists, k=k, limit=10)
        order = rank_reference(fused_ref, first_appearance(lists))[:10]
        assert [i for i, _ in got] == order
        assert [s for _, s in got] == pytest.approx([fused_ref[i] for i in order])


def test_rrf_weights_as_qdrant_defines_them():
    lists = [[(1, 0.9), (2, 0.8)], [(2, 0.9), (1, 0.8)]]
    even = rrf(lists)
    assert even[0][1] == even[1][1]
    weighted = rrf(lists, weights=[3.0, 1.0])
    # 1: 1/(1/3 + 1) + 1/(2 + 1); 2: 1/(2/3 + 1) + 1/(1 + 1)
    assert weighted[0][0] == 2
    assert dict(weighted) == pytest.approx({1: 1 / (1 / 3 + 1) + 1 / 3, 2: 1 / (2 / 3 + 1) + 0.5})
    assert dict(rrf([[(1, 0.9)], [(2, 0.9)]], weights=[1.0, 0.0])) == {1: 0.5, 2: 0.0}
    with pytest.raises(ValueError, match="should match number of pre-fetches"):
        rrf(lists, weights=[1.0])


def test_ties_keep_first_appearance():
    # 7 and 3 both score 1/2 + 1/3; 7 appears first
    lists = [[(7, 1.0), (3, 0.5)], [(3, 1.0), (7, 0.5)]]
    assert [i for i, _ in rrf(lists)] == [7, 3]
    assert [i for i, _ in rrf(list(reversed(lists)))] == [3, 7]


def test_duplicates_within_a_list_add_up():
    assert dict(rrf([[(1, 0.9), (1, 0.8)]])) == pytest.approx({1: 1 / 2 + 1 / 3})


def test_dbsf_against_reference():
    rng = np.random.default_rng(1)
    for _ in range(5):
        lists = random_lists(rng, n_lists=int(rng.integers(1, 4)))
        fused_ref: dict = {}
        for hits in lists:
            scores = np.array([s for _, s in hits])
            mean, std = scores.mean(), scores.std(ddof=1)
            low, high = mean - 3 * std, mean + 3 * std
            for (i, _), s in zip(hits, scores, strict=True):
                fused_ref[i] = fused_ref.get(i, 0.0) + (s - low) / (high - low)
        got = dbsf(lists, limit=12)
        order = rank_reference(fused_ref, first_appearance(lists))[:12]
        assert [i for i, _ in got] == order
        assert [s for _, s in got] == pytest.approx([fused_ref[i] for i in order])


def test_dbsf_edge_cases_as_qdrant():
    assert dbsf([[(4, 12.0)]]) == [(4, 0.5)]  # one hit: 0.5
    assert dbsf([[(1, 2.0), (2, 2.0)]]) == [(1, 0.5), (2, 0.5)]  # no spread: 0.5 each
    assert dbsf([[], [(1, 1.0)]]) == [(1, 0.5)]
    # not clipped: an outlier may leave [0, 1]
    lists = [[(i, 1.0) for i in range(20)] + [(99, 100.0)]]
    fused = dict(dbsf(lists))
    assert fused[99] > 1.0
    # scale-free: multiplying a list's scores by a constant changes nothing
    a = [(1, 0.9), (2, 0.5), (3, 0.1)]
    b = [(i, s * 1000.0) for i, s in a]
    assert dict(dbsf([a])) == pytest.approx(dict(dbsf([b])))
    # a point found by both lists beats one found by a single list at the same place
    assert dbsf([a, [(2, 0.7), (4, 0.6)]])[0][0] == 2


def test_limit_and_bad_input():
    lists = [[(i, 1.0 / (i + 1)) for i in range(10)]]
    assert len(rrf(lists, limit=3)) == 3
    assert rrf(lists, limit=0) == []
    assert len(dbsf(lists)) == 10
    with pytest.raises(ValueError, match="limit"):
        rrf(lists, limit=-1)
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        rrf(lists, k=0)
    with pytest.raises(ValueError, match="finite scores"):
        dbsf([[(1, float("nan"))]])
    with pytest.raises(ValueError, match=r"result_lists\[0\]\[0\] must be an \(id, score\) pair"):
        rrf([[1, 2]])
    with pytest.raises(ValueError, match="sequence of hit lists"):
        dbsf({"a": []})
    # string and UUID-like ids work as keys
    assert [i for i, _ in rrf([[("a", 1.0)], [("b", 1.0), ("a", 0.5)]])] == ["a", "b"]
