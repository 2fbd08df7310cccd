"""Numba kernels of the HNSW index: distances, heaps, layer search, neighbour selection, linking.

Every kernel is a plain ``@njit`` function over flat numpy arrays (no Python
objects, no object mode) and never validates its input: the owner class
``vdb.index.hnsw.HNSW`` does that. Layout of the graph arrays (see ``hnsw.py``):

* ``vectors[cap, dim] float32`` - stored vectors (unit length for cosine).
* ``links0[cap, 1 + 2M] int32`` - layer 0: column 0 is the neighbour count,
  columns 1.. the neighbour slots.
* ``upper[rows, 1 + M] int32`` - layers >= 1, same row format; the row of
  slot ``s`` at layer ``l`` is ``upper_off[s] + l - 1``.
* ``levels[cap] int8``, ``deleted[cap] uint8``.
* ``state[4] int64`` - entry point slot, max level, slots in use, upper rows in use.

Distances are smaller-is-closer: ``l2`` is the squared Euclidean distance,
``ip`` (and ``cosine`` on unit vectors) is ``1 - dot``. The metric is an int
code chosen once per index and passed to every kernel; the branch sits
outside the inner loop of each distance.

Readers (search kernels) read a neighbour count once and clamp it to the row
width, so a row being rewritten by the writer yields a mix of old and new
neighbours, all of them valid slots.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from vdb.index.numba_start import skip_blas_probe

skip_blas_probe()

L2 = 0
IP = 1

# Admission modes of a layer search: which visited slots may enter the result set.
ADMIT_ALL = 0  # every live slot
ADMIT_MASK = 1  # live slots with mask[slot] != 0 (filtered search)
ADMIT_NOT_MASK = 2  # live slots with mask[slot] == 0 (build: mask marks the batch being linked)

_VISIT_MAX = 65535
# Kernels calling kernels pass int64 values, never constants: a constant argument is typed as a
# literal (``Literal[int](0)``), and each distinct literal compiles one more copy of the callee.
_LAYER0 = np.int64(0)
# How many neighbours ahead the layer search fetches whole vectors. Measured on debian-minilm
# (10k, ef=32, one query per call): 3 ahead was ~10% faster than fetching all of them up front,
# and no slower on 128-d data that fits in cache.
_AHEAD = 3


@intrinsic
def _prefetch(typingctx, arr, row, col):
    """Hint the CPU to fetch the cache line holding ``arr[row, col]`` (2-D C array)."""
    sig = types.void(arr, row, col)

    def codegen(context, builder, signature, args):
        aryty, rowty, colty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        r = context.cast(builder, args[1], rowty, types.intp)
        c = context.cast(builder, args[2], colty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [r, c], wraparound=False)
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        # read access, high temporal locality, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _claim(typingctx, counter, step):
    """Atomically add ``step`` to ``counter[0]`` (int64 1-D array); returns the value before. The
    build threads take their work from one such counter inside the kernels, so a batch phase
    costs one kernel call (and one GIL round trip) per thread, not one per block."""
    sig = types.int64(counter, step)

    def codegen(context, builder, signature, args):
        aryty, stepty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(
            context, builder, aryty, ary, [context.get_constant(types.intp, 0)], wraparound=False
        )
        inc = context.cast(builder, args[1], stepty, types.int64)
        return builder.atomic_rmw("add", ptr, inc, "monotonic")

    return sig, codegen


@njit(inline="always", cache=True)
def _prefetch_row(arr, row):
    """Hint the CPU to fetch every cache line of row ``row`` (float vectors or int8 codes)."""
    for col in range(0, arr.shape[1], 64 // arr.itemsize):
        _prefetch(arr, row, col)


@njit(inline="always", cache=True)
def _prefetch_neighbours(arr, links, row, cnt):
    """Before scoring the ``cnt`` neighbours in ``links[row, 1:]``: touch the first line of
    each one's row of ``arr`` and fetch the first ``_AHEAD`` rows whole (the scoring loop then
    fetches row ``j + _AHEAD`` as it scores row ``j``)."""
    for j in range(1, cnt + 1):
        _prefetch(arr, links[row, j], 0)
    for j in range(1, min(cnt, _AHEAD) + 1):
        _prefetch_row(arr, links[row, j])


@njit(fastmath=True, inline="always", cache=True)
def distance(metric, a, b):
    """Distance between two vectors: squared L2 (metric 0) or ``1 - dot`` (metric 1)."""
    s = np.float32(0.0)
    if metric == L2:
        for i in range(a.shape[0]):
            d = a[i] - b[i]
            s += d * d
        return s
    for i in range(a.shape[0]):
        s += a[i] * b[i]
    return np.float32(1.0) - s


@njit(inline="always", cache=True)
def _next_tag(visited, vgen):
    """Start a new visit: bump the generation tag, clearing the array only when it wraps."""
    g = vgen[0] + 1
    if g >= _VISIT_MAX:
        for s in range(visited.shape[0]):
            visited[s] = 0
        g = 1
    vgen[0] = g
    return np.uint16(g)


@njit(inline="always", cache=True)
def _push_min(hd, hi, size, d, i):
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if hd[parent] <= d:
            break
        hd[pos] = hd[parent]
        hi[pos] = hi[parent]
        pos = parent
    hd[pos] = d
    hi[pos] = i
    return size + 1


@njit(inline="always", cache=True)
def _sift_down_min(hd, hi, size, pos, d, i):
    """Put (d, i) at ``pos`` of a min-heap of ``size`` items and sift it down."""
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and hd[c + 1] < hd[c]:
            c += 1
        if hd[c] >= d:
            break
        hd[pos] = hd[c]
        hi[pos] = hi[c]
        pos = c
    hd[pos] = d
    hi[pos] = i


@njit(inline="always", cache=True)
def _pop_min(hd, hi, size):
    size -= 1
    if size > 0:
        _sift_down_min(hd, hi, size, 0, hd[size], hi[size])
    return size


@njit(inline="always", cache=True)
def _push_max(hd, hi, size, d, i):
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if hd[parent] >= d:
            break
        hd[pos] = hd[parent]
        hi[pos] = hi[parent]
        pos = parent
    hd[pos] = d
    hi[pos] = i
    return size + 1


@njit(inline="always", cache=True)
def _sift_down_max(hd, hi, size, d, i):
    """Put (d, i) at the root of a max-heap of ``size`` items and restore the heap."""
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and hd[c + 1] > hd[c]:
            c += 1
        if hd[c] <= d:
            break
        hd[pos] = hd[c]
        hi[pos] = hi[c]
        pos = c
    hd[pos] = d
    hi[pos] = i


@njit(inline="always", cache=True)
def _pop_max(hd, hi, size):
    size -= 1
    if size > 0:
        _sift_down_max(hd, hi, size, hd[size], hi[size])
    return size


@njit(cache=True)
def _sort_pairs(hd, hi, n):
    """Sort ``hd[:n]`` ascending in place (heapsort), ``hi`` along (not stable). The kernels sort
    with this rather than ``np.argsort``, whose Numba implementation takes seconds to compile."""
    for start in range(n // 2 - 1, -1, -1):
        d = hd[start]
        i = hi[start]
        pos = start
        while True:
            c = 2 * pos + 1
            if c >= n:
                break
            if c + 1 < n and hd[c + 1] > hd[c]:
                c += 1
            if hd[c] <= d:
                break
            hd[pos] = hd[c]
            hi[pos] = hi[c]
            pos = c
        hd[pos] = d
        hi[pos] = i
    for end in range(n - 1, 0, -1):
        d = hd[end]
        i = hi[end]
        hd[end] = hd[0]
        hi[end] = hi[0]
        _sift_down_max(hd, hi, end, d, i)


@njit(cache=True)
def _insertion_sort(hd, hi, n):
    """Sort ``hd[:n]`` ascending in place, ``hi`` along; stable (equal distances keep their
    order). For the short lists of ``_add_link``."""
    for t in range(1, n):
        d = hd[t]
        i = hi[t]
        pos = t
        while pos > 0 and hd[pos - 1] > d:
            hd[pos] = hd[pos - 1]
            hi[pos] = hi[pos - 1]
            pos -= 1
        hd[pos] = d
        hi[pos] = i


@njit(inline="always", cache=True)
def _heapify_min(hd, hi, n):
    for start in range(n // 2 - 1, -1, -1):
        _sift_down_min(hd, hi, n, start, hd[start], hi[start])


@njit(inline="always", cache=True)
def _pop_to_tail(hd, hi, nh):
    """Pop the nearest of the min-heap ``hd[:nh]`` into position ``nh - 1`` (just past the
    shrunk heap); returns the new heap size. Successive pops leave the popped items at the
    end of the array, nearest last: the neighbour selection reads candidates in order this
    way and stops once it has chosen enough, without sorting the rest."""
    d = hd[0]
    i = hi[0]
    nh -= 1
    if nh > 0:
        _sift_down_min(hd, hi, nh, 0, hd[nh], hi[nh])
    hd[nh] = d
    hi[nh] = i
    return nh


@njit(cache=True)
def _top_up(hd, hi, nh, n, out, off, ns, target):
    """After a selection that popped ``hd[nh:n]`` (nearest last) from the min-heap
    ``hd[:nh]``: append the nearest candidates not chosen yet to ``out[off:off + ns]`` until
    it holds ``target``; returns the new count."""
    t = n - 1
    while ns < target and (t >= nh or nh > 0):
        if t >= nh:
            c = hi[t]
            t -= 1
        else:
            nh = _pop_to_tail(hd, hi, nh)
            c = hi[nh]
            t = nh - 1
        taken = False
        for r in range(ns):
            if out[off + r] == c:
                taken = True
                break
        if not taken:
            out[off + ns] = c
            ns += 1
    return ns


@njit(inline="always", cache=True)
def _admit(slot, deleted, mask, mode):
    if deleted[slot] != 0:
        return False
    if mode == ADMIT_MASK:
        return mask[slot] != 0
    if mode == ADMIT_NOT_MASK:
        return mask[slot] == 0
    return True


@njit(inline="always", cache=True)
def _row(layer, slot, upper_off):
    if layer == 0:
        return slot
    return upper_off[slot] + layer - 1


@njit(fastmath=True, cache=True, nogil=True)
def greedy(metric, vectors, upper, upper_off, layer, q, cur, curd):
    """Greedy walk (ef = 1) on an upper layer; returns the closest slot found and its distance.
    Vectors are fetched ahead as in ``search_layer``: without it the descent was ~20% of a
    query at ef=16 on 384-d vectors (each neighbour's vector a cache miss)."""
    maxc = upper.shape[1] - 1
    changed = True
    while changed:
        changed = False
        row = upper_off[cur] + layer - 1
        cnt = upper[row, 0]
        if cnt > maxc:
            cnt = maxc
        _prefetch_neighbours(vectors, upper, row, cnt)
        for j in range(1, cnt + 1):
            if j + _AHEAD <= cnt:
                _prefetch_row(vectors, upper[row, j + _AHEAD])
            c = upper[row, j]
            d = distance(metric, vectors[c], q)
            if d < curd:
                curd = d
                cur = c
                changed = True
    return cur, curd


@njit(fastmath=True, cache=True, nogil=True)
def search_layer(
    metric, vectors, links, upper_off, layer, deleted, mask, mode, q, ep, epd, ef, visited, tag,
    res_d, res_i,
):  # fmt: skip
    """Best-first search of one layer from ``ep``; returns how many results sit in the max-heap
    ``res_d``/``res_i`` (size >= ef + 1). Every slot is walked through; only admitted ones
    (live, and passing the mask mode) enter the results."""
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
        # first pass: mark the unvisited neighbours and touch the first line of each vector;
        # second pass: score them, fetching whole vectors _AHEAD neighbours in advance
        nb = 0
        for j in range(1, cnt + 1):
            c = links[row, j]
            if visited[c] == tag:
                continue
            visited[c] = tag
            fresh[nb] = c
            nb += 1
            _prefetch(vectors, c, 0)
        for j in range(min(nb, _AHEAD)):
            _prefetch_row(vectors, fresh[j])
        for j in range(nb):
            c = fresh[j]
            if j + _AHEAD < nb:
                _prefetch_row(vectors, fresh[j + _AHEAD])
            d = distance(metric, vectors[c], q)
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
                # its neighbour row is read if it gets expanded: start fetching it now
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
def exact_scan(metric, vectors, deleted, mask, mode, q, n_used, k, res_d, res_i):
    """Brute-force top-k over admitted slots in ``[0, n_used)``; returns the heap size."""
    nr = 0
    for s in range(n_used):
        if not _admit(s, deleted, mask, mode):
            continue
        d = distance(metric, vectors[s], q)
        if nr < k:
            nr = _push_max(res_d, res_i, nr, d, s)
        elif d < res_d[0]:
            _sift_down_max(res_d, res_i, nr, d, s)
    return nr


@njit(cache=True, nogil=True)
def write_top(metric, res_d, res_i, nr, k, out_slots, out_scores, qi):
    """Sort the ``nr`` results (any order) and write the best ``k`` to row ``qi`` of
    ``out_slots``/``out_scores`` (score = distance for l2, similarity ``1 - distance`` for
    ip/cosine), padded with slot -1 and the worst score."""
    _sort_pairs(res_d, res_i, nr)
    m = min(nr, k)
    for pos in range(m):
        out_slots[qi, pos] = res_i[pos]
        d = res_d[pos]
        out_scores[qi, pos] = d if metric == L2 else np.float32(1.0) - d
    pad = np.float32(np.inf) if metric == L2 else np.float32(-np.inf)
    for pos in range(m, k):
        out_slots[qi, pos] = -1
        out_scores[qi, pos] = pad


BAD_VALUE = 1  # a query holds NaN or inf
BAD_ZERO = 2  # a cosine query has no direction (all zeros)


_FLOAT32_MAX = np.float32(3.4028235e38)


@njit(cache=True, nogil=True, fastmath=False)
def query_status(queries, normalize):
    """0 when every query row is finite (and non-zero when ``normalize``), else BAD_VALUE or
    BAD_ZERO. ``fastmath=False`` is explicit: a callee without the option inherits the fastmath
    of the kernel that calls it, and fastmath assumes no NaN/inf (the comparison below would be
    folded away). The caller (Python) turns a non-zero status into ValueError."""
    nq, dim = queries.shape
    for qi in range(nq):
        nonzero = False
        for j in range(dim):
            x = queries[qi, j]
            if not abs(x) <= _FLOAT32_MAX:
                return BAD_VALUE
            if x != 0:
                nonzero = True
        if normalize and not nonzero:
            return BAD_ZERO
    return 0


@njit(fastmath=True, cache=True, nogil=True)
def search_batch(
    metric, vectors, links0, upper, upper_off, levels, deleted, state, queries, normalize, k, ef,
    mask, mode, need, exact, visited, vgen, out_slots, out_scores,
):  # fmt: skip
    """Top-k search of every query row (scaled to unit length first when ``normalize``):
    upper-layer descent, layer-0 search with
    ``max(ef, k)``, exact fallback when the walk found fewer than ``need`` hits (or when
    ``exact``), then the sorted top-k written to ``out_slots``/``out_scores``
    (score = distance for l2, similarity ``1 - distance`` for ip/cosine; -1 padding).
    Returns ``query_status(queries, normalize)``; nothing is searched unless it is 0."""
    status = query_status(queries, normalize)
    if status != 0:
        return status
    nq = queries.shape[0]
    ef_eff = max(ef, k)
    res_d = np.empty(max(ef_eff, k) + 1, np.float32)
    res_i = np.empty(max(ef_eff, k) + 1, np.int32)
    unit = np.empty(queries.shape[1], np.float32)
    for qi in range(nq):
        q = queries[qi]
        if normalize:
            norm = 0.0
            for j in range(q.shape[0]):
                norm += np.float64(q[j]) * q[j]
            scale = np.float32(1.0 / np.sqrt(norm))
            for j in range(q.shape[0]):
                unit[j] = q[j] * scale
            q = unit
        ep = state[0]
        n_used = state[2]
        nr = 0
        if not exact and ep >= 0:
            tag = _next_tag(visited, vgen)
            cur = ep
            curd = distance(metric, vectors[ep], q)
            for layer in range(levels[ep], 0, -1):
                cur, curd = greedy(metric, vectors, upper, upper_off, layer, q, cur, curd)
            nr = search_layer(
                metric, vectors, links0, upper_off, _LAYER0, deleted, mask, mode, q, cur, curd,
                ef_eff, visited, tag, res_d, res_i,
            )  # fmt: skip
        if nr < need:
            nr = exact_scan(metric, vectors, deleted, mask, mode, q, n_used, k, res_d, res_i)
        write_top(metric, res_d, res_i, nr, k, out_slots, out_scores, qi)
    return 0


@njit(fastmath=True, cache=True, nogil=True)
def _heuristic(metric, vectors, cand_d, cand_i, n, limit, out, out_off):
    """HNSW neighbour-selection heuristic over candidates sorted by distance to the base point:
    keep a candidate only if it is closer to the base point than to every one already kept.
    Writes up to ``limit`` slots to ``out[out_off:]``; returns how many."""
    ns = 0
    for t in range(n):
        c = cand_i[t]
        dc = cand_d[t]
        good = True
        vc = vectors[c]
        for r in range(ns):
            if distance(metric, vc, vectors[out[out_off + r]]) < dc:
                good = False
                break
        if good:
            out[out_off + ns] = c
            ns += 1
            if ns == limit:
                break
    return ns


@njit(fastmath=True, cache=True, nogil=True)
def build_select(
    metric, vectors, links0, upper, upper_off, levels, deleted, pending, entry, chunk, counter,
    ef_construction, M, fill, visited, vgen, sel, sel_n,
):  # fmt: skip
    """Phase 1 of linking a batch (parallel-safe: reads the graph, writes only its own rows of
    ``sel``/``sel_n``). Every calling thread takes chunk positions one at a time from
    ``counter`` (int64[1], zero at the start) until none is left; for each: search the current graph
    (batch members in ``pending`` excluded) on every layer of the point, add the batch members
    before it (exactly), and select up to ``M`` neighbours per layer with the heuristic. When
    ``fill`` > 0 (re-linked points), the lists are topped up with the nearest pruned candidates to
    ``fill`` links on layer 0 and ``M`` above: a re-linked point misses the in-links that later
    inserts give a point in a fresh build, and this keeps its degree (and recall) at par."""
    B = chunk.shape[0]
    res_d = np.empty(ef_construction + 1, np.float32)
    res_i = np.empty(ef_construction + 1, np.int32)
    merged_d = np.empty(ef_construction + B, np.float32)
    merged_i = np.empty(ef_construction + B, np.int32)
    flat = sel.reshape(-1)
    width = sel.shape[1] * sel.shape[2]
    for _ in range(B):
        i = _claim(counter, np.int64(1))
        if i >= B:
            break
        p = chunk[i]
        q = vectors[p]
        lp = levels[p]
        le = -1
        cur = entry
        curd = np.float32(0.0)
        if entry >= 0:
            le = levels[entry]
            curd = distance(metric, vectors[entry], q)
            for layer in range(le, lp, -1):
                cur, curd = greedy(metric, vectors, upper, upper_off, layer, q, cur, curd)
        for layer in range(lp, -1, -1):
            nm = 0
            bound = np.float32(np.inf)
            if layer <= le:
                tag = _next_tag(visited, vgen)
                links = links0 if layer == 0 else upper
                nr = search_layer(
                    metric, vectors, links, upper_off, layer, deleted, pending,
                    np.int64(ADMIT_NOT_MASK), q, cur, curd, ef_construction, visited, tag, res_d,
                    res_i,
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
                s = chunk[j]
                if levels[s] >= layer:
                    d = distance(metric, vectors[s], q)
                    if d < bound:
                        merged_d[nm] = d
                        merged_i[nm] = s
                        nm += 1
            # the heuristic (see _heuristic) over the candidates nearest first, popped from a
            # min-heap: it stops at M chosen without sorting the rest (measured: the sort was
            # ~4% and the heuristic ~6% of the selection, the search ~90%)
            off = i * width + layer * sel.shape[2]
            _heapify_min(merged_d, merged_i, nm)
            nh = nm
            ns = 0
            while nh > 0 and ns < M:
                nh = _pop_to_tail(merged_d, merged_i, nh)
                c = merged_i[nh]
                dc = merged_d[nh]
                vc = vectors[c]
                good = True
                for r in range(ns):
                    if distance(metric, vc, vectors[flat[off + r]]) < dc:
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


@njit(fastmath=True, cache=True, nogil=True)
def _add_link(metric, vectors, links, upper_off, layer, s, p, limit):
    """Add the link s -> p on ``layer``; an overflowing list is pruned with the heuristic.
    The row is rewritten before its count is published."""
    row = _row(layer, s, upper_off)
    cnt = links[row, 0]
    for t in range(1, cnt + 1):
        if links[row, t] == p:
            return
    if cnt < limit:
        links[row, cnt + 1] = p
        links[row, 0] = cnt + 1
        return
    cd = np.empty(cnt + 1, np.float32)
    ci = np.empty(cnt + 1, np.int32)
    vs = vectors[s]
    for t in range(cnt):
        c = links[row, t + 1]
        ci[t] = c
        cd[t] = distance(metric, vectors[c], vs)
    ci[cnt] = p
    cd[cnt] = distance(metric, vectors[p], vs)
    n = np.int64(cnt + 1)
    _insertion_sort(cd, ci, n)
    kept = np.empty(limit, np.int32)
    nk = _heuristic(metric, vectors, cd, ci, n, limit, kept, _LAYER0)
    for t in range(nk):
        links[row, t + 1] = kept[t]
    links[row, 0] = nk


# A reverse link of a batch (``build_forward``/``build_reverse``) as one int64 key: target slot,
# layer, chunk position of the linked point. Sorting the keys groups the links by target row, in
# batch order within a row.
_KEY_POS_BITS = 16  # chunk positions (batches of up to 65,536 points)
_KEY_LAYER_BITS = 5  # layers (levels up to 31)
_KEY_SLOT_SHIFT = _KEY_POS_BITS + _KEY_LAYER_BITS


@njit(cache=True)
def _sift_down_keys(keys, size, pos):
    k = keys[pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and keys[c + 1] > keys[c]:
            c += 1
        if keys[c] <= k:
            break
        keys[pos] = keys[c]
        pos = c
    keys[pos] = k


@njit(cache=True)
def _sort_keys(keys, n):
    """Sort ``keys[:n]`` (int64) ascending in place (heapsort)."""
    for start in range(n // 2 - 1, -1, -1):
        _sift_down_keys(keys, n, start)
    for end in range(n - 1, 0, -1):
        k = keys[end]
        keys[end] = keys[0]
        keys[0] = k
        _sift_down_keys(keys, end, 0)


@njit(cache=True, nogil=True)
def build_forward(links0, upper, upper_off, levels, chunk, sel, sel_n, keys, starts):
    """Phase 2a of linking a batch (one thread): write every point's selected neighbours as its
    rows (neighbours first, count last), and list the reverse links ``s -> p`` as keys sorted
    by target slot, then layer, then batch position. ``starts[g]`` is where target ``g``'s keys
    begin (``starts[ng]`` = the number of keys); returns ``ng``, the number of targets.

    A point selects only graph points and batch members before it, so a member's row receives
    its reverse links after its own row is written whether the rows are written first (here) or
    point by point: ``build_reverse`` gives the same rows as the classic one-point-at-a-time
    order, however the targets are split among threads."""
    n = 0
    for i in range(chunk.shape[0]):
        p = chunk[i]
        for layer in range(levels[p] + 1):
            links = links0 if layer == 0 else upper
            row = _row(layer, p, upper_off)
            ns = sel_n[i, layer]
            for t in range(ns):
                links[row, t + 1] = sel[i, layer, t]
            links[row, 0] = ns
            for t in range(ns):
                keys[n] = (
                    (np.int64(sel[i, layer, t]) << _KEY_SLOT_SHIFT)
                    | (np.int64(layer) << _KEY_POS_BITS)
                    | np.int64(i)
                )
                n += 1
    _sort_keys(keys, n)
    ng = 0
    prev = np.int64(-1)
    for k in range(n):
        s = keys[k] >> _KEY_SLOT_SHIFT
        if s != prev:
            starts[ng] = k
            ng += 1
            prev = s
    starts[ng] = n
    return ng


@njit(fastmath=True, cache=True, nogil=True)
def build_reverse(
    metric, vectors, links0, upper, upper_off, chunk, keys, starts, targets, counter, step, M
):
    """Phase 2b of linking a batch (parallel-safe: each of the ``targets`` targets of
    ``build_forward``'s list is taken by one thread, ``step`` at a time from ``counter``, and only
    that thread writes its rows): add each target's reverse links in batch order, pruning an
    overflowing row (``_add_link``)."""
    m0 = links0.shape[1] - 1
    pos_mask = (np.int64(1) << _KEY_POS_BITS) - 1
    layer_mask = (np.int64(1) << _KEY_LAYER_BITS) - 1
    while True:
        lo = _claim(counter, step)
        if lo >= targets:
            break
        for k in range(starts[lo], starts[min(lo + step, targets)]):
            key = keys[k]
            s = key >> _KEY_SLOT_SHIFT
            layer = (key >> _KEY_POS_BITS) & layer_mask
            p = np.int64(chunk[key & pos_mask])
            if layer == 0:
                _add_link(metric, vectors, links0, upper_off, layer, s, p, np.int64(m0))
            else:
                _add_link(metric, vectors, upper, upper_off, layer, s, p, np.int64(M))


@njit(cache=True, nogil=True)
def build_publish(levels, deleted, state, chunk):
    """Phase 2c of linking a batch, once all its links are written: make its points visible
    (clear their deleted flags) and raise the entry point to the first one of a higher level."""
    for i in range(chunk.shape[0]):
        p = chunk[i]
        lp = levels[p]
        deleted[p] = 0
        if state[0] < 0 or lp > state[1]:
            state[1] = lp
            state[0] = p


@njit(fastmath=True, cache=True, nogil=True)
def unlink(metric, vectors, links0, upper, upper_off, levels, slots):
    """Before slots get new vectors: in every out-neighbour's list that points back to a slot,
    replace that link with the slot's neighbour closest to the out-neighbour (keeps the path
    that went through the slot), or drop it when there is none. Uses the old vectors."""
    maxc0 = links0.shape[1] - 1
    maxc1 = upper.shape[1] - 1
    for idx in range(slots.shape[0]):
        p = slots[idx]
        for layer in range(levels[p] + 1):
            links = links0 if layer == 0 else upper
            maxc = maxc0 if layer == 0 else maxc1
            row_p = _row(layer, p, upper_off)
            cnt_p = min(links[row_p, 0], maxc)
            old = links[row_p, 1 : cnt_p + 1].copy()
            for a in range(cnt_p):
                n = old[a]
                if n == p:
                    continue
                row_n = _row(layer, n, upper_off)
                cnt_n = min(links[row_n, 0], maxc)
                pos = -1
                for t in range(1, cnt_n + 1):
                    if links[row_n, t] == p:
                        pos = t
                        break
                if pos < 0:
                    continue
                best = -1
                bestd = np.float32(np.inf)
                vn = vectors[n]
                for b in range(cnt_p):
                    c = old[b]
                    if c == n or c == p:
                        continue
                    present = False
                    for t in range(1, cnt_n + 1):
                        if links[row_n, t] == c:
                            present = True
                            break
                    if present:
                        continue
                    d = distance(metric, vectors[c], vn)
                    if d < bestd:
                        bestd = d
                        best = c
                if best >= 0:
                    links[row_n, pos] = best
                else:
                    links[row_n, pos] = links[row_n, cnt_n]
                    links[row_n, 0] = cnt_n - 1


@njit(cache=True, nogil=True)
def _mark_from(links0, start, seen, stack):
    """Mark every slot reachable from ``start`` on layer 0 (``start`` itself included)."""
    maxc = links0.shape[1] - 1
    seen[start] = 1
    stack[0] = start
    top = 1
    while top > 0:
        top -= 1
        x = stack[top]
        cnt = min(links0[x, 0], maxc)
        for j in range(1, cnt + 1):
            y = links0[x, j]
            if seen[y] == 0:
                seen[y] = 1
                stack[top] = y
                top += 1


@njit(cache=True, nogil=True)
def reach(links0, deleted, state, seen, stack):
    """Mark in ``seen`` (zeroed first; uint8, >= the used slots) every slot the entry point
    reaches on layer 0; returns how many live slots are left unmarked (0 when empty)."""
    n = state[2]
    ep = state[0]
    for s in range(n):
        seen[s] = 0
    if ep < 0 or n == 0:
        return 0
    _mark_from(links0, ep, seen, stack)
    left = 0
    for s in range(n):
        if seen[s] == 0 and deleted[s] == 0:
            left += 1
    return left


ATTACH_NONE = 0  # no reached slot to attach to
ATTACH_LINKED = 1  # linked from a reached slot with room; what it reaches is marked
ATTACH_PRUNED = 2  # linked from the nearest reached slot with pruning: marking must be redone


@njit(fastmath=True, cache=True, nogil=True)
def attach(metric, vectors, links0, upper_off, u, hosts, seen, stack):
    """Re-attach unreached slot ``u`` given ``hosts``: reached live slots nearest first (-1
    ends the list; found by a layer-0 search admitting ``seen`` slots only). Adds a link to
    ``u`` from the first host whose row has room (adding a link never cuts a path) and marks
    what ``u`` reaches, or, when every row is full, from the nearest host with the usual
    heuristic pruning. Returns an ``ATTACH_*`` code."""
    m0 = links0.shape[1] - 1
    first = -1
    for t in range(hosts.shape[0]):
        c = hosts[t]
        if c < 0:
            break
        if c == u:
            continue
        if first < 0:
            first = c
        if links0[c, 0] < m0:
            cnt = links0[c, 0]
            links0[c, cnt + 1] = u
            links0[c, 0] = cnt + 1
            _mark_from(links0, u, seen, stack)
            return ATTACH_LINKED
    if first < 0:
        return ATTACH_NONE
    _add_link(metric, vectors, links0, upper_off, _LAYER0, np.int64(first), u, np.int64(m0))
    return ATTACH_PRUNED


@njit(fastmath=True, cache=True, nogil=True)
def hand_over(metric, vectors, links0, upper_off, slots, skip):
    """Before slots get new vectors: each layer-0 out-neighbour ``n`` of a slot is about to lose
    the link slot -> n, so it gets a link from the slot's other neighbour closest to it (not
    one in ``skip``, the slots being re-linked), added with the usual pruning. This keeps most
    paths that went through the slot; ``HNSW._reattach`` catches the rest."""
    maxc = links0.shape[1] - 1
    for idx in range(slots.shape[0]):
        p = slots[idx]
        cnt_p = min(links0[p, 0], maxc)
        old = links0[p, 1 : cnt_p + 1].copy()
        for a in range(cnt_p):
            n = old[a]
            if n == p or skip[n] != 0:
                continue
            best = -1
            bestd = np.float32(np.inf)
            vn = vectors[n]
            for b in range(cnt_p):
                c = old[b]
                if c == n or c == p or skip[c] != 0:
                    continue
                d = distance(metric, vectors[c], vn)
                if d < bestd:
                    bestd = d
                    best = c
            if best >= 0:
                _add_link(
                    metric, vectors, links0, upper_off, _LAYER0, np.int64(best), np.int64(n),
                    np.int64(maxc),
                )  # fmt: skip
