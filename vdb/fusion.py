"""Fusion of ranked result lists, as Qdrant's Query API defines it: RRF and DBSF.

Both take the result lists of the prefetches, each a sequence of ``(id, score)``
hits best first, and return one fused list of ``(id, score)``, best first.
Scores of the input lists must be "bigger is better" (pass distances negated).
The definitions follow Qdrant's own code (``lib/segment/src/common/
reciprocal_rank_fusion.rs`` and ``score_fusion.rs``):

* **RRF** (reciprocal rank fusion): a hit at 0-based position ``pos`` of a list
  contributes ``1 / (pos + k)``; with a list weight ``w`` it contributes
  ``1 / ((pos + 1) / w + k - 1)`` (``w <= 0``: nothing). ``k`` defaults to
  Qdrant's constant 2. Input scores are ignored, only positions count.
* **DBSF** (distribution-based score fusion): each list's scores are
  normalised with ``(s - (mean - 3 std)) / (6 std)`` (sample standard
  deviation, ``n - 1``), not clipped; a list of one hit, or whose scores are
  all equal, gives 0.5 to each hit. The normalised scores are summed per id.

An id appearing in several lists (or twice in one) gets the sum of its
contributions, as in Qdrant. Equal fused scores: Qdrant leaves their order
unspecified (an unstable sort over a hash map); here they keep the order of
first appearance (list by list, position by position), one of the orders
Qdrant may return, so the output is deterministic. Scores are computed in
float64 (Qdrant uses float32; values agree to float32 precision).

Pure Python; imports nothing from the rest of vdb.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

DEFAULT_RRF_K = 2
"""Qdrant's ``DEFAULT_RRF_K``: "mitigates the impact of high rankings by outlier systems"."""

Hit = tuple[Hashable, float]


def rrf(
    result_lists: Sequence[Sequence[Hit]],
    k: int = DEFAULT_RRF_K,
    limit: int | None = None,
    weights: Sequence[float] | None = None,
) -> list[tuple[Any, float]]:
    """Reciprocal rank fusion of ``result_lists``; the best ``limit`` (all when ``None``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"rrf k must be an integer >= 1, got {k!r}")
    lists = _lists(result_lists)
    if weights is None:
        weights = [1.0] * len(lists)
    elif len(weights) != len(lists):
        raise ValueError(
            "Number of weights in RRF should match number of pre-fetches: "
            f"got {len(weights)}, expected {len(lists)}"
        )
    fused: dict[Any, float] = {}
    for hits, weight in zip(lists, weights, strict=True):
        w = float(weight)
        if not math.isfinite(w):
            raise ValueError(f"rrf weights must be finite, got {weight!r}")
        for pos, (point_id, _score) in enumerate(hits):
            contribution = 0.0 if w <= 0.0 else 1.0 / ((pos + 1) / w + k - 1)
            fused[point_id] = fused.get(point_id, 0.0) + contribution
    return _best(fused, limit)


def dbsf(
    result_lists: Sequence[Sequence[Hit]], limit: int | None = None
) -> list[tuple[Any, float]]:
    """Distribution-based score fusion of ``result_lists``; the best ``limit`` (all when
    ``None``). Scores must be finite."""
    fused: dict[Any, float] = {}
    for hits in _lists(result_lists):
        for point_id, score in zip((h[0] for h in hits), _normalised(hits), strict=True):
            fused[point_id] = fused.get(point_id, 0.0) + score
    return _best(fused, limit)


def _normalised(hits: Sequence[Hit]) -> list[float]:
    scores = []
    for point_id, score in hits:
        s = float(score)
        if not math.isfinite(s):
            raise ValueError(f"dbsf needs finite scores; hit {point_id!r} has {score!r}")
        scores.append(s)
    n = len(scores)
    if n < 2:
        return [0.5] * n
    mean = 0.0
    aggregate = 0.0
    for i, s in enumerate(scores, start=1):  # Welford, as Qdrant computes it
        old_delta = s - mean
        mean += old_delta / i
        aggregate += old_delta * (s - mean)
    std = math.sqrt(aggregate / (n - 1))
    low = mean - 3.0 * std
    high = mean + 3.0 * std
    if low == high:
        return [0.5] * n
    return [(s - low) / (high - low) for s in scores]


def _lists(result_lists: Sequence[Sequence[Hit]]) -> list[list[Hit]]:
    if isinstance(result_lists, dict | str) or not isinstance(result_lists, Sequence):
        raise ValueError("result_lists must be a sequence of hit lists")
    out = []
    for i, hits in enumerate(result_lists):
        if isinstance(hits, dict | str) or not isinstance(hits, Sequence):
            raise ValueError(f"result_lists[{i}] must be a sequence of (id, score) hits")
        for j, hit in enumerate(hits):
            if type(hit) is tuple and len(hit) == 2:  # the common case, without an ABC check
                continue
            if not isinstance(hit, Sequence) or len(hit) != 2:
                raise ValueError(f"result_lists[{i}][{j}] must be an (id, score) pair")
        out.append(list(hits))
    return out


def _best(fused: dict[Any, float], limit: int | None) -> list[tuple[Any, float]]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
    ranked = sorted(fused.items(), key=lambda item: -item[1])  # stable: first appearance wins ties
    return ranked if limit is None else ranked[:limit]
