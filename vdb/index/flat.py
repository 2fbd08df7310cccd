"""Top-k over a flat block of vectors: the scans of a collection's fresh segment.

Points that are durable but not yet linked into the HNSW graph live in flat
arrays (``vectors[cap, dim]`` float32, ``slots[cap]`` int32, ``-1`` for a
removed row). A search scans rows ``[start, stop)`` and merges the
result with the graph's. The kernels release the GIL and return the same
scores the graph search returns, with the graph's own distance function
(``kernels.distance``), so a point scores the same in either segment:
squared L2 distance (ascending) for ``l2``, ``1 - (1 - dot)`` (descending)
for ``ip`` and cosine on unit vectors.

Admission: a row counts when its slot is ``>= 0``, ``live[slot]`` is set
(the collection's id map: the point's write was applied) and, with a filter,
``allowed[slot]`` is set. Masks shorter than a slot mean "not admitted".

Two kernels:

* ``scan``: every admitted row scored exactly with the float rows.
* ``scan_codes``: the approximate scan of a large fresh segment. Every row
  also has int8 codes (``codes[cap, dim]``, ``terms[cap]``, coded by a
  ``vdb.index.quantizer.ScalarQuantizer``; ``consts`` is its ``constants()``)
  and, once the rows are partitioned (``vdb.index.coarse``), the list it
  belongs to (``lists[cap]``, ``-1``: not assigned). Per query it picks the
  ``n_probe`` lists whose centroids are nearest (all rows when there are no
  centroids), scores the admitted rows of those lists and every unassigned row
  on the codes (``qkernels.idot``: int8 x int16 products summed in int32, the
  query coded as the graph walk codes it), keeps the best ``n_cand`` by the
  quantized distance and rescores them with the float rows and ``distance``,
  so the scores it returns are the ones ``scan`` returns for those rows and
  a row the codes rank among the best ``n_cand`` is ranked exactly. When at
  most ``n_cand`` rows are admitted (a selective filter) every one of them is
  rescored: the result is ``scan``'s.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vdb.index.kernels import (
    _AHEAD,
    IP,
    L2,
    _prefetch_row,
    _push_max,
    _sift_down_max,
    _sort_pairs,
    distance,
)
from vdb.index.qkernels import encode_query, idot, query_levels

__all__ = ["IP", "L2", "query_levels", "scan", "scan_codes", "warm"]

_BLOCK = 256  # rows scored on the codes before any of them is checked and offered


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


@njit(fastmath=True, cache=True, nogil=True)
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
        _write_heap(metric, keys, vals, size, k, out_slots, out_scores, q)
    return admitted


@njit(inline="always", cache=True)
def _write_heap(metric, keys, vals, size, k, out_slots, out_scores, q):
    """Pop the max-heap of ``size`` entries into row ``q`` of the outputs, worst first from the
    back (scores: the l2 key itself, else ``1 - key``); the rest of the row is ``-1`` / NaN."""
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


@njit(inline="always", cache=True)
def _admitted(slot, live, n_live, allowed, n_allowed, use_allowed):
    """A fresh row's slot is a candidate: occupied, live, and allowed when a mask is used."""
    if slot < 0 or slot >= n_live or not live[slot]:
        return False
    return not use_allowed or (slot < n_allowed and allowed[slot])


@njit(inline="always", cache=True)
def _offer(keys, vals, size, cap, key, val):
    """Offer ``(key, val)`` to the max-heap of at most ``cap`` entries; returns its size."""
    if size < cap:
        keys[size] = key
        vals[size] = val
        _sift_up(keys, vals, size)
        return size + 1
    if key < keys[0] or (key == keys[0] and val < vals[0]):
        keys[0] = key
        vals[0] = val
        _sift_down(keys, vals, size)
    return size


@njit(fastmath=True, cache=True, nogil=True)
def _centroid_distances(metric, centroids, query, out):
    """``distance`` of ``query`` to every centroid (its own fastmath function: the loop
    vectorises whatever the caller's flags)."""
    dim = query.shape[0]
    for c in range(centroids.shape[0]):
        acc = np.float32(0.0)
        if metric == L2:
            for i in range(dim):
                d = centroids[c, i] - query[i]
                acc += d * d
            out[c] = acc
        else:
            for i in range(dim):
                acc += centroids[c, i] * query[i]
            out[c] = np.float32(1.0) - acc


@njit(inline="always", cache=True)
def _nearest_lists(cdist, n_lists, n_probe, near_d, near):
    """The ``n_probe`` lists of smallest ``cdist[:n_lists]`` into ``near``, nearest first
    (their distances in ``near_d``): a max-heap of the nearest so far, then sorted. Not
    ``np.argsort``: its Numba implementation took 3.5 of the 17.6 s a cold start compiled."""
    size = 0
    for c in range(n_lists):
        d = cdist[c]
        if size < n_probe:
            size = _push_max(near_d, near, size, d, np.int64(c))
        elif d < near_d[0]:
            _sift_down_max(near_d, near, size, d, np.int64(c))
    _sort_pairs(near_d, near, size)


@njit(inline="always", cache=True)
def _score_block(codes, terms, lo, hi, cq, s, block):
    """``block[i]``: the code distance of row ``lo + i`` of ``codes`` / ``terms``, without the
    query's constant parts, for the rows ``[lo, hi)`` (a loop of nothing else: it vectorises)."""
    for p in range(lo, hi):
        block[p - lo] = terms[p] - s * np.float32(idot(codes[p], cq))


@njit(fastmath=True, cache=True, nogil=True)
def scan_codes(metric, vectors, codes, terms, consts, qlevels, lists, centroids, n_probe,
               pack_rows, pack_codes, pack_terms, pack_off, pack_hi, slots, start, stop,
               queries, k, n_cand, live, allowed, use_allowed, out_slots,
               out_scores):  # fmt: skip
    """Approximate top-``k`` of each query over rows ``[start, stop)`` (module docstring):
    the rows of the ``n_probe`` nearest lists (every row when ``centroids`` has no row or
    ``n_probe`` covers them all) and the unassigned ones, ranked on the codes, the best
    ``n_cand`` rescored with ``vectors``. Rows below ``pack_hi`` are read from the pack
    (``pack_rows[pack_off[l]:pack_off[l + 1]]`` are list ``l``'s rows, their codes and
    terms at the same positions of ``pack_codes`` / ``pack_terms``), rows from ``pack_hi``
    on from ``codes`` / ``terms`` by row. Writes ``out_slots`` / ``out_scores`` as ``scan``
    does. Returns the rows scored on the codes for the first query (admitted or not)."""
    nq = queries.shape[0]
    dim = queries.shape[1]
    n_lists = centroids.shape[0]
    use_lists = n_lists > 0 and n_probe < n_lists
    probe = np.zeros(max(n_lists, 1), np.bool_)
    cdist = np.empty(max(n_lists, 1), np.float32)
    order = np.empty(max(n_probe, 1), np.int64)  # the probed lists, nearest first
    near_d = np.empty(max(n_probe, 1), np.float32)
    cq = np.empty(dim, np.int16)
    n_cand = max(n_cand, k)
    cand_d = np.empty(n_cand, np.float32)
    cand_r = np.empty(n_cand, np.int64)
    keys = np.empty(k, np.float32)
    vals = np.empty(k, np.int64)
    block = np.empty(_BLOCK, np.float32)
    n_live = live.shape[0]
    n_allowed = allowed.shape[0]
    const = consts[0]
    tail = start
    if use_lists and pack_hi > start:
        tail = min(pack_hi, stop)
    scored = 0
    for qi in range(nq):
        query = queries[qi]
        if use_lists:
            _centroid_distances(metric, centroids, query, cdist)
            for c in range(n_lists):
                probe[c] = False
            _nearest_lists(cdist, n_lists, n_probe, near_d, order)
            for j in range(n_probe):
                probe[order[j]] = True
        tq, s = encode_query(metric, query, consts, qlevels, cq)
        size = 0
        m = 0
        # Each run of rows is scored in blocks: first every row's distance on the codes in a
        # loop of nothing else (it vectorises), then the rows that could enter the candidates
        # are checked and offered. Checking each row before scoring it measured 4-5x slower.
        if tail > start:  # the pack: each probed list's rows are contiguous
            for j in range(n_probe):
                lst = order[j]
                for lo in range(pack_off[lst], pack_off[lst + 1], _BLOCK):
                    hi = min(lo + _BLOCK, pack_off[lst + 1])
                    m += hi - lo
                    _score_block(pack_codes, pack_terms, lo, hi, cq, s, block)
                    for p in range(lo, hi):
                        d = const + block[p - lo] + tq
                        if size == n_cand and d > cand_d[0]:
                            continue  # _offer would refuse it
                        row = pack_rows[p]
                        if row < start or row >= stop:
                            continue
                        if not _admitted(slots[row], live, n_live, allowed, n_allowed, use_allowed):
                            continue
                        size = _offer(cand_d, cand_r, size, n_cand, d, np.int64(row))
        # rows after the pack, by row (codes read in order); another list's rows are scored
        # with the block but never offered
        for lo in range(tail, stop, _BLOCK):
            hi = min(lo + _BLOCK, stop)
            m += hi - lo
            _score_block(codes, terms, lo, hi, cq, s, block)
            for row in range(lo, hi):
                d = const + block[row - lo] + tq
                if size == n_cand and d > cand_d[0]:
                    continue
                if use_lists:
                    lst = lists[row]
                    if lst >= 0 and not probe[lst]:
                        continue
                if not _admitted(slots[row], live, n_live, allowed, n_allowed, use_allowed):
                    continue
                size = _offer(cand_d, cand_r, size, n_cand, d, np.int64(row))
        if qi == 0:
            scored = m
        # rescore the candidates with the float rows: scan's scores, ties by slot
        for j in range(min(size, _AHEAD)):
            _prefetch_row(vectors, cand_r[j])
        nk = 0
        for j in range(size):
            if j + _AHEAD < size:
                _prefetch_row(vectors, cand_r[j + _AHEAD])
            row = cand_r[j]
            key = distance(metric, vectors[row], query)  # as scan (and the graph) computes it
            nk = _offer(keys, vals, nk, k, key, np.int64(slots[row]))
        _write_heap(metric, keys, vals, nk, k, out_slots, out_scores, qi)
    return scored


def warm(codes: bool = True) -> None:
    """Load (or compile) the scan kernels: the exact scan, and the scan on codes when
    ``codes`` (``warm_codes``)."""
    v = np.zeros((2, 4), np.float32)
    s = np.array([0, 1], np.int32)
    live = np.ones(2, np.bool_)
    out_s = np.empty((1, 1), np.int64)
    out_d = np.empty((1, 1), np.float32)
    for metric in (L2, IP):
        scan(metric, v, s, 0, 2, v[:1], 1, live, live, False, out_s, out_d)
    if codes:
        warm_codes()


def warm_codes() -> None:
    """Load (or compile) ``scan_codes``: about 7 of the 17 s a cold start compiles before a
    first search, and used only once fresh rows have codes (thousands of them)."""
    v = np.zeros((2, 4), np.float32)
    s = np.array([0, 1], np.int32)
    live = np.ones(2, np.bool_)
    out_s = np.empty((1, 1), np.int64)
    out_d = np.empty((1, 1), np.float32)
    codes = np.zeros((2, 4), np.int8)
    terms = np.zeros(2, np.float32)
    consts = np.zeros(3 + 4, np.float32)
    consts[2] = 1.0
    lists = np.zeros(2, np.int32)
    off = np.array([0, 2], np.int64)
    for metric in (L2, IP):
        scan_codes(
            metric, v, codes, terms, consts, query_levels(4), lists, v[:1], 1, s, codes,
            terms, off, 2, s, 0, 2, v[:1], 1, 4, live, live, False, out_s, out_d,
        )  # fmt: skip
