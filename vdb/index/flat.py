"""Exact top-k over a flat block of vectors: the scan of a collection's fresh segment.

Points that are durable but not yet linked into the HNSW graph live in flat
arrays (``vectors[cap, dim]`` float32, ``slots[cap]`` int32, ``-1`` for a
removed row). A search scans rows ``[start, stop)`` exactly and merges the
result with the graph's. The kernel releases the GIL and computes the same
scores the graph search returns, with the graph's own distance function
(``kernels.distance``), so a point scores the same in either segment:
squared L2 distance (ascending) for ``l2``, ``1 - (1 - dot)`` (descending)
for ``ip`` and cosine on unit vectors.

Admission: a row counts when its slot is ``>= 0``, ``live[slot]`` is set
(the collection's id map: the point's write was applied) and, with a filter,
``allowed[slot]`` is set. Masks shorter than a slot mean "not admitted".
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vdb.index.kernels import IP, L2, distance

__all__ = ["IP", "L2", "scan", "warm"]


@njit(inline="always", cache=True)
def _sift_down(keys, vals, size):
    """Restore the max-heap (by key, then by slot) after the root was replaced."""
    i = 0
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        big = left
        right = left + 1
        if right < size and (
            keys[right] > keys[left] or (keys[right] == keys[left] and vals[right] > vals[left])
        ):
            big = right
        if keys[big] > keys[i] or (keys[big] == keys[i] and vals[big] > vals[i]):
            keys[i], keys[big] = keys[big], keys[i]
            vals[i], vals[big] = vals[big], vals[i]
            i = big
        else:
            return


@njit(inline="always", cache=True)
def _sift_up(keys, vals, i):
    while i > 0:
        parent = (i - 1) // 2
        if keys[i] > keys[parent] or (keys[i] == keys[parent] and vals[i] > vals[parent]):
            keys[i], keys[parent] = keys[parent], keys[i]
            vals[i], vals[parent] = vals[parent], vals[i]
            i = parent
        else:
            return


@njit(nogil=True, cache=True)
def scan(metric, vectors, slots, start, stop, queries, k, live, allowed, use_allowed,
         out_slots, out_scores):  # fmt: skip
    """Exact top-``k`` of each query over rows ``[start, stop)``; writes ``out_slots`` (int64,
    ``-1`` padding) and ``out_scores`` (float32) best first, ties by slot. Returns the number
    of admitted rows."""
    nq = queries.shape[0]
    keys = np.empty(k, np.float32)
    vals = np.empty(k, np.int64)
    n_live = live.shape[0]
    n_allowed = allowed.shape[0]
    admitted = 0
    for q in range(nq):
        size = 0
        query = queries[q]
        for row in range(start, stop):
            slot = slots[row]
            if slot < 0 or slot >= n_live or not live[slot]:
                continue
            if use_allowed and (slot >= n_allowed or not allowed[slot]):
                continue
            if q == 0:
                admitted += 1
            key = distance(metric, vectors[row], query)  # as the graph calls it
            if size < k:
                keys[size] = key
                vals[size] = slot
                _sift_up(keys, vals, size)
                size += 1
            elif key < keys[0] or (key == keys[0] and slot < vals[0]):
                keys[0] = key
                vals[0] = slot
                _sift_down(keys, vals, size)
        # pop the heap: worst first, written from the back
        for j in range(k):
            out_slots[q, j] = -1
            out_scores[q, j] = np.nan
        n = size
        while n > 0:
            out_slots[q, n - 1] = vals[0]
            out_scores[q, n - 1] = keys[0] if metric == L2 else np.float32(1.0) - keys[0]
            n -= 1
            keys[0] = keys[n]
            vals[0] = vals[n]
            _sift_down(keys, vals, n)
    return admitted


def warm() -> None:
    """Load (or compile) the scan kernel."""
    v = np.zeros((2, 4), np.float32)
    s = np.array([0, 1], np.int32)
    live = np.ones(2, np.bool_)
    out_s = np.empty((1, 1), np.int64)
    out_d = np.empty((1, 1), np.float32)
    for metric in (L2, IP):
        scan(metric, v, s, 0, 2, v[:1], 1, live, live, False, out_s, out_d)
