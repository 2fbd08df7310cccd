"""Numba kernels of the int8 graph walk: integer dot products, query coding, layer search on codes,
and the batch search that rescores the walk's candidates with the float32 vectors.

Same conventions as ``kernels.py`` (flat arrays, no validation, smaller-is-closer distances,
readers clamp neighbour counts). The quantized distance of a stored point ``x`` to a coded query
is ``consts[0] + terms[x] + tq - consts[1] * idot(codes[x], cq)`` (see ``quantizer.py``), where
``consts = [const, s, scale, offset_0 .. offset_{dim-1}]``.

``idot`` is the one inner loop: int8 loads widened to int32 and summed. On AVX2 LLVM turns it
into ``vpmovsxbw`` (16 codes to 16 int16 lanes) followed by ``vpmaddwd`` (pairwise multiply-add
into 8 int32 lanes) and ``vpaddd``, unrolled over several accumulators; ``bench/ann.py``
``--asm`` prints the instruction counts of the compiled kernel.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from vdb.index.kernels import (
    _AHEAD,
    _LAYER0,
    ADMIT_NOT_MASK,
    L2,
    _admit,
    _claim,
    _heapify_min,
    _next_tag,
    _pop_min,
    _pop_to_tail,
    _prefetch,
    _prefetch_neighbours,
    _prefetch_row,
    _push_max,
    _push_min,
    _row,
    _sift_down_max,
    _sort_pairs,
    _top_up,
    distance,
    exact_scan,
    query_status,
    write_top,
)


@njit(fastmath=True, cache=True, nogil=True)
def idot(a, b):
    """sum(a[i] * b[i]) of two int8 vectors as int32 (exact for dim < 2**17)."""
    acc = np.int32(0)
    for i in range(a.shape[0]):
        # the explicit int32 truncation keeps the sum in 32 bits (Numba widens int32 sums to
        # int64, which LLVM vectorises as vpmovsxbq/vpmuldq at a quarter of the width)
        acc = np.int32(acc + np.int32(a[i]) * np.int32(b[i]))
    return acc


@njit(fastmath=True, inline="always", cache=True)
def _qdist(codes, terms, c, cq, tq, const, s):
    return const + terms[c] + tq - s * np.float32(idot(codes[c], cq))


def query_levels(dim: int) -> int:
    """Levels of a query's int16 code: as fine as int16 allows while ``idot`` of an int8 code
    with it cannot overflow int32 (``dim * 127 * levels < 2**31``)."""
    return int(min(32767, (2**31 - 1) // (127 * max(1, dim))))


@njit(fastmath=True, cache=True, nogil=True)
def encode_query(metric, q, consts, levels, cq):
    """Code the float query ``q`` into ``cq`` (int16, ``levels`` levels each side: 258 times
    finer than the stored int8 codes, so the walk's error is the stored codes' alone) with the
    index's offsets. Returns ``(t, s)``: the query's term and the multiplier of ``idot`` in the
    distance (see ``quantizer.py``; the query's scale is ``scale * 127 / levels``)."""
    scale = consts[2]
    qscale = scale * np.float32(127.0) / np.float32(levels)
    inv = np.float32(1.0) / qscale
    top = np.float32(levels)
    acc = np.float32(0.0)
    for i in range(q.shape[0]):
        off = consts[3 + i]
        r = (q[i] - off) * inv
        if r > top:
            r = top
        elif r < -top:
            r = -top
        c = np.int16(np.rint(r))
        cq[i] = c
        if metric == L2:
            acc += np.float32(c) * np.float32(c)
        else:
            acc += np.float32(c) * off
    s = consts[1] * (qscale / scale)
    if metric == L2:
        return qscale * qscale * acc, s
    return -qscale * acc, s


@njit(fastmath=True, cache=True, nogil=True)
def greedy_q(codes, terms, upper, upper_off, layer, cq, tq, const, s, cur, curd):
    """Greedy walk (ef = 1) on an upper layer over the codes."""
    maxc = upper.shape[1] - 1
    changed = True
    while changed:
        changed = False
        row = upper_off[cur] + layer - 1
        cnt = upper[row, 0]
        if cnt > maxc:
            cnt = maxc
        _prefetch_neighbours(codes, upper, row, cnt)  # codes fetched ahead, as in kernels.greedy
        for j in range(1, cnt + 1):
            if j + _AHEAD <= cnt:
                _prefetch_row(codes, upper[row, j + _AHEAD])
            c = upper[row, j]
            d = _qdist(codes, terms, c, cq, tq, const, s)
            if d < curd:
                curd = d
                cur = c
                changed = True
    return cur, curd


@njit(fastmath=True, cache=True, nogil=True)
def search_layer_q(
    codes, terms, links, upper_off, layer, deleted, mask, mode, cq, tq, const, s, ep, epd, ef,
    visited, tag, res_d, res_i,
):  # fmt: skip
    """``kernels.search_layer`` over the codes: best-first search of one layer from ``ep``;
    returns how many results sit in the max-heap ``res_d``/``res_i`` (size >= ef + 1)."""
    maxc = links.shape[1] - 1
    cap_c = 4 * ef + 64
    cand_d = np.empty(cap_c, np.float32)
    cand_i = np.empty(cap_c, np.int32)
    fresh = np.empty(maxc, np.int32)
    visited[ep] = tag
    nc = _push_min(cand_d, cand_i, 0, epd, ep)
    nr = 0
    if _admit(ep, deleted, mask, mode):
        nr = _push_max(res_d, res_i, 0, epd, ep)
    while nc > 0:
        d0 = cand_d[0]
        if nr == ef and d0 > res_d[0]:
            break
        c0 = cand_i[0]
        nc = _pop_min(cand_d, cand_i, nc)
        row = _row(layer, c0, upper_off)
        cnt = links[row, 0]
        if cnt > maxc:
            cnt = maxc
        nb = 0
        for j in range(1, cnt + 1):
            c = links[row, j]
            if visited[c] == tag:
                continue
            visited[c] = tag
            fresh[nb] = c
            nb += 1
            _prefetch(codes, c, 0)
        for j in range(min(nb, _AHEAD)):
            _prefetch_row(codes, fresh[j])
        for j in range(nb):
            c = fresh[j]
            if j + _AHEAD < nb:
                _prefetch_row(codes, fresh[j + _AHEAD])
            d = _qdist(codes, terms, c, cq, tq, const, s)
            if nr < ef or d < res_d[0]:
                if nc == cand_d.shape[0]:
                    grown_d = np.empty(2 * nc, np.float32)
                    grown_i = np.empty(2 * nc, np.int32)
                    for t in range(nc):  # a loop: slice assignment costs seconds to compile
                        grown_d[t] = cand_d[t]
                        grown_i[t] = cand_i[t]
                    cand_d = grown_d
                    cand_i = grown_i
                nc = _push_min(cand_d, cand_i, nc, d, c)
                rc = _row(layer, c, upper_off)
                _prefetch(links, rc, 0)
                if maxc > 16:
                    _prefetch(links, rc, 16)
                if _admit(c, deleted, mask, mode):
                    if nr < ef:
                        nr = _push_max(res_d, res_i, nr, d, c)
                    else:
                        _sift_down_max(res_d, res_i, nr, d, c)
    return nr


@njit(fastmath=True, cache=True, nogil=True)
def search_batch_q(
    metric, vectors, codes, terms, consts, links0, upper, upper_off, levels, deleted, state,
    queries, normalize, k, ef, mask, mode, need, exact, n_rescore, qlevels, visited, vgen,
    out_slots, out_scores,
):  # fmt: skip
    """``kernels.search_batch`` with the walk on the codes: each query is scaled to unit length
    (when ``normalize``) and coded, the upper layers and layer 0 are searched with quantized
    distances (breadth ``max(ef, k)``), then the best ``n_rescore`` candidates (all of them when
    ``n_rescore`` <= 0, none when < 0: quantized scores are returned) are rescored with the float
    vectors and the top ``k`` written out. The exact fallback scans the float vectors. Returns
    ``query_status(queries, normalize)``; nothing is searched unless it is 0."""
    status = query_status(queries, normalize)
    if status != 0:
        return status
    nq = queries.shape[0]
    dim = queries.shape[1]
    ef_eff = max(ef, k)
    res_d = np.empty(ef_eff + 1, np.float32)
    res_i = np.empty(ef_eff + 1, np.int32)
    unit = np.empty(dim, np.float32)
    cq = np.empty(dim, np.int16)
    const = consts[0]
    for qi in range(nq):
        q = queries[qi]
        if normalize:
            norm = 0.0
            for j in range(dim):
                norm += np.float64(q[j]) * q[j]
            scale = np.float32(1.0 / np.sqrt(norm))
            for j in range(dim):
                unit[j] = q[j] * scale
            q = unit
        ep = state[0]
        n_used = state[2]
        nr = 0
        scanned = False
        if not exact and ep >= 0:
            tq, s = encode_query(metric, q, consts, qlevels, cq)
            tag = _next_tag(visited, vgen)
            cur = ep
            curd = _qdist(codes, terms, ep, cq, tq, const, s)
            for layer in range(levels[ep], 0, -1):
                cur, curd = greedy_q(
                    codes, terms, upper, upper_off, layer, cq, tq, const, s, cur, curd
                )
            nr = search_layer_q(
                codes, terms, links0, upper_off, _LAYER0, deleted, mask, mode, cq, tq, const, s,
                cur, curd, ef_eff, visited, tag, res_d, res_i,
            )  # fmt: skip
        if nr < need:
            nr = exact_scan(metric, vectors, deleted, mask, mode, q, n_used, k, res_d, res_i)
            scanned = True
        if not scanned and n_rescore >= 0:
            limit = nr if n_rescore == 0 else max(n_rescore, k)
            if limit < nr:  # keep the best ``limit`` by quantized distance
                _sort_pairs(res_d, res_i, nr)
                nr = limit
            for t in range(min(nr, _AHEAD)):
                _prefetch_row(vectors, res_i[t])
            for t in range(nr):
                if t + _AHEAD < nr:
                    _prefetch_row(vectors, res_i[t + _AHEAD])  # float rows are cold: fetch ahead
                res_d[t] = distance(metric, vectors[res_i[t]], q)
        write_top(metric, res_d, res_i, nr, k, out_slots, out_scores, qi)
    return 0


@njit(fastmath=True, cache=True, nogil=True)
def idot_codes(a, b):
    """``idot`` of two stored int8 codes: the same loop as a function of its own, so that each
    kernel has one signature (``idot`` takes a query's int16 code; see the parallel cold
    compile in ``hnsw.py``: two signatures of one function must not be cached at once)."""
    acc = np.int32(0)
    for i in range(a.shape[0]):
        acc = np.int32(acc + np.int32(a[i]) * np.int32(b[i]))
    return acc


@njit(fastmath=True, inline="always", cache=True)
def _qpair(codes, terms, a, b, const, s):
    """Quantized distance between two stored points."""
    return const + terms[a] + terms[b] - s * np.float32(idot_codes(codes[a], codes[b]))


@njit(fastmath=True, cache=True, nogil=True)
def build_select_q(
    codes, terms, consts, links0, upper, upper_off, levels, deleted, pending, entry, chunk,
    counter, ef_construction, M, fill, visited, vgen, sel, sel_n,
):  # fmt: skip
    """``kernels.build_select`` with every distance taken on the codes (candidate search, the
    batch members before the point, and the selection heuristic). Same contract."""
    B = chunk.shape[0]
    const = consts[0]
    s = consts[1]
    res_d = np.empty(ef_construction + 1, np.float32)
    res_i = np.empty(ef_construction + 1, np.int32)
    merged_d = np.empty(ef_construction + B, np.float32)
    merged_i = np.empty(ef_construction + B, np.int32)
    flat = sel.reshape(-1)
    width = sel.shape[1] * sel.shape[2]
    # the point's code widened to int16, as a query's: one compiled copy of the layer search
    # and greedy walk serves both (same distances: the values are the same)
    cq = np.empty(codes.shape[1], np.int16)
    for _ in range(B):
        i = _claim(counter, np.int64(1))
        if i >= B:
            break
        p = chunk[i]
        for j in range(cq.shape[0]):
            cq[j] = codes[p, j]
        tq = terms[p]
        lp = levels[p]
        le = -1
        cur = entry
        curd = np.float32(0.0)
        if entry >= 0:
            le = levels[entry]
            curd = _qdist(codes, terms, entry, cq, tq, const, s)
            for layer in range(le, lp, -1):
                cur, curd = greedy_q(
                    codes, terms, upper, upper_off, layer, cq, tq, const, s, cur, curd
                )
        for layer in range(lp, -1, -1):
            nm = 0
            bound = np.float32(np.inf)
            if layer <= le:
                tag = _next_tag(visited, vgen)
                links = links0 if layer == 0 else upper
                nr = search_layer_q(
                    codes, terms, links, upper_off, layer, deleted, pending,
                    np.int64(ADMIT_NOT_MASK), cq, tq, const, s, cur, curd, ef_construction,
                    visited, tag, res_d, res_i,
                )  # fmt: skip
                if nr == ef_construction:
                    bound = res_d[0]
                for t in range(nr):
                    merged_d[nm] = res_d[t]
                    merged_i[nm] = res_i[t]
                    if res_d[t] < curd:
                        curd = res_d[t]
                        cur = res_i[t]
                    nm += 1
            for j in range(i):
                sj = chunk[j]
                if levels[sj] >= layer:
                    d = _qdist(codes, terms, sj, cq, tq, const, s)
                    if d < bound:
                        merged_d[nm] = d
                        merged_i[nm] = sj
                        nm += 1
            off = i * width + layer * sel.shape[2]
            _heapify_min(merged_d, merged_i, nm)  # as in kernels.build_select
            nh = nm
            ns = 0
            while nh > 0 and ns < M:
                nh = _pop_to_tail(merged_d, merged_i, nh)
                c = merged_i[nh]
                dc = merged_d[nh]
                good = True
                for r in range(ns):
                    if _qpair(codes, terms, c, flat[off + r], const, s) < dc:
                        good = False
                        break
                if good:
                    flat[off + ns] = c
                    ns += 1
            target = fill if layer == 0 else M
            if fill > 0 and ns < target:
                ns = _top_up(
                    merged_d, merged_i, np.int64(nh), np.int64(nm), flat, np.int64(off),
                    np.int64(ns), np.int64(target),
                )  # fmt: skip
            sel_n[i, layer] = ns
