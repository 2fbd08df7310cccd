"""Numba kernels of the sparse inverted index: row sorting, posting-list builds, top-k search.

Plain ``@njit`` functions over flat numpy arrays (no Python objects, no object
mode); they never validate their input: ``vdb.index.sparse.SparseIndex`` does.

Layouts (see ``sparse.py`` for how they fit together):

* A set of rows (vectors) is CSR by row: ``ptr[n + 1] int64`` and the
  concatenated ``idx uint32`` / ``val float32``; each row sorted by index.
* A posting set is CSR by dimension: ``dims[nd] uint32`` sorted ascending,
  ``dptr[nd + 1] int64``, and the postings ``pslots int32`` / ``pvals float32``.
  Postings of one dimension keep the order of the rows they came from
  (ascending slot), which keeps the accumulator walk cache-friendly.
* ``loc[cap] uint8`` says where a slot's current vector is indexed:
  ``ABSENT``, ``IN_BASE`` or ``IN_DELTA``. A posting counts only when the
  ``loc`` of its slot names the posting set it sits in, so postings of
  replaced or removed vectors are never scored.
"""

from __future__ import annotations

import numpy as np
from numba import njit

ABSENT = 0
IN_BASE = 1
IN_DELTA = 2

_INSERTION_MAX = 32  # rows up to this length are insertion-sorted; longer ones merge-sorted
_RADIX_MIN = 1 << 16  # posting builds of at least this many entries use the radix sort


@njit(cache=True, nogil=True)
def sort_rows(ptr, idx, val):
    """Sort every row of a CSR row set by index, in place (values follow their indices).

    Returns the first row holding a repeated index, or -1. Rows are short (tens of
    entries) in the common case, so they are insertion-sorted; long rows use a stable
    merge sort."""
    bad = -1
    for r in range(ptr.shape[0] - 1):
        lo = ptr[r]
        hi = ptr[r + 1]
        n = hi - lo
        if n <= _INSERTION_MAX:
            for i in range(lo + 1, hi):
                ki = idx[i]
                vi = val[i]
                j = i - 1
                while j >= lo and idx[j] > ki:
                    idx[j + 1] = idx[j]
                    val[j + 1] = val[j]
                    j -= 1
                idx[j + 1] = ki
                val[j + 1] = vi
        else:
            order = np.argsort(idx[lo:hi], kind="mergesort")
            si = idx[lo:hi][order]
            sv = val[lo:hi][order]
            idx[lo:hi] = si
            val[lo:hi] = sv
        if bad < 0:
            for i in range(lo + 1, hi):
                if idx[i] == idx[i - 1]:
                    bad = r
                    break
    return bad


@njit(cache=True, nogil=True)
def gather_rows(off, length, fwd_idx, fwd_val):
    """Copy rows ``fwd[off[i] : off[i] + length[i]]`` into one compact CSR row set."""
    n = off.shape[0]
    ptr = np.zeros(n + 1, np.int64)
    for i in range(n):
        ptr[i + 1] = ptr[i] + length[i]
    idx = np.empty(ptr[n], np.uint32)
    val = np.empty(ptr[n], np.float32)
    for i in range(n):
        o = off[i]
        p = ptr[i]
        for j in range(length[i]):
            idx[p + j] = fwd_idx[o + j]
            val[p + j] = fwd_val[o + j]
    return ptr, idx, val


@njit(cache=True, nogil=True)
def build_postings(row_slots, ptr, idx, val):
    """Invert a CSR row set (row ``r`` belongs to slot ``row_slots[r]``) into a posting set:
    ``(dims, dptr, pslots, pvals)``. The sort by dimension is stable, so postings of one
    dimension stay in row order. Large sets use a two-pass 16-bit LSD radix sort (linear);
    small ones a merge sort (no 65,536-bucket passes for a handful of postings)."""
    nnz = idx.shape[0]
    owner = np.empty(nnz, np.int32)
    for r in range(row_slots.shape[0]):
        for j in range(ptr[r], ptr[r + 1]):
            owner[j] = row_slots[r]
    if nnz < _RADIX_MIN:
        order = np.argsort(idx, kind="mergesort")
    else:
        order = np.arange(nnz)
        tmp = np.empty(nnz, np.int64)
        counts = np.empty(65537, np.int64)
        for shift in (0, 16):
            counts[:] = 0
            for j in range(nnz):
                counts[((idx[order[j]] >> shift) & 0xFFFF) + 1] += 1
            for b in range(65536):
                counts[b + 1] += counts[b]
            for j in range(nnz):
                o = order[j]
                b = (idx[o] >> shift) & 0xFFFF
                tmp[counts[b]] = o
                counts[b] += 1
            order, tmp = tmp, order
    pslots = np.empty(nnz, np.int32)
    pvals = np.empty(nnz, np.float32)
    nd = 0
    for j in range(nnz):
        o = order[j]
        pslots[j] = owner[o]
        pvals[j] = val[o]
        if j == 0 or idx[o] != idx[order[j - 1]]:
            nd += 1
    dims = np.empty(nd, np.uint32)
    dptr = np.empty(nd + 1, np.int64)
    d = -1
    for j in range(nnz):
        o = order[j]
        if j == 0 or idx[o] != idx[order[j - 1]]:
            d += 1
            dims[d] = idx[o]
            dptr[d] = j
    dptr[nd] = nnz
    return dims, dptr, pslots, pvals


@njit(cache=True, nogil=True)
def merge_postings(o_dims, o_ptr, o_slots, o_vals, keep, n_dims, n_ptr, n_slots, n_vals):
    """A new posting set: the postings of ``o_*`` whose slot has ``keep[slot] != 0``, merged
    with all of ``n_*``. Both inputs hold each dimension's postings in ascending slot order
    and so does the output (a linear merge, no sort); dimensions left empty are dropped."""
    nd_o = o_dims.shape[0]
    nd_n = n_dims.shape[0]
    nd = 0
    total = 0
    i = 0
    j = 0
    while i < nd_o or j < nd_n:
        if j >= nd_n or (i < nd_o and o_dims[i] < n_dims[j]):
            take_o, take_n = True, False
        elif i >= nd_o or n_dims[j] < o_dims[i]:
            take_o, take_n = False, True
        else:
            take_o, take_n = True, True
        count = 0
        if take_o:
            for p in range(o_ptr[i], o_ptr[i + 1]):
                if keep[o_slots[p]] != 0:
                    count += 1
            i += 1
        if take_n:
            count += n_ptr[j + 1] - n_ptr[j]
            j += 1
        if count:
            nd += 1
            total += count
    dims = np.empty(nd, np.uint32)
    dptr = np.empty(nd + 1, np.int64)
    slots = np.empty(total, np.int32)
    vals = np.empty(total, np.float32)
    i = 0
    j = 0
    d = 0
    out = 0
    while i < nd_o or j < nd_n:
        if j >= nd_n or (i < nd_o and o_dims[i] < n_dims[j]):
            dim = o_dims[i]
            a, a_end, b, b_end = o_ptr[i], o_ptr[i + 1], 0, 0
            i += 1
        elif i >= nd_o or n_dims[j] < o_dims[i]:
            dim = n_dims[j]
            a, a_end, b, b_end = 0, 0, n_ptr[j], n_ptr[j + 1]
            j += 1
        else:
            dim = o_dims[i]
            a, a_end, b, b_end = o_ptr[i], o_ptr[i + 1], n_ptr[j], n_ptr[j + 1]
            i += 1
            j += 1
        start = out
        while a < a_end or b < b_end:
            if a < a_end and keep[o_slots[a]] == 0:
                a += 1
                continue
            if b >= b_end or (a < a_end and o_slots[a] < n_slots[b]):
                slots[out] = o_slots[a]
                vals[out] = o_vals[a]
                a += 1
            else:
                slots[out] = n_slots[b]
                vals[out] = n_vals[b]
                b += 1
            out += 1
        if out > start:
            dims[d] = dim
            dptr[d] = start
            d += 1
    dptr[nd] = total
    return dims, dptr, slots, vals


@njit(inline="always", cache=True)
def _find(dims, dim):
    """Position of ``dim`` in the sorted ``dims``, or -1."""
    pos = np.searchsorted(dims, dim)
    if pos < dims.shape[0] and dims[pos] == dim:
        return pos
    return -1


@njit(inline="always", cache=True)
def _worse(sa, ia, sb, ib):
    """Whether hit (sa, ia) ranks below hit (sb, ib): lower score, or equal score and larger slot."""
    return sa < sb or (sa == sb and ia > ib)


@njit(inline="always", cache=True)
def _sift_down(hs, hi, size, pos):
    s = hs[pos]
    i = hi[pos]
    while True:
        c = 2 * pos + 1
        if c >= size:
            break
        if c + 1 < size and _worse(hs[c + 1], hi[c + 1], hs[c], hi[c]):
            c += 1
        if not _worse(hs[c], hi[c], s, i):
            break
        hs[pos] = hs[c]
        hi[pos] = hi[c]
        pos = c
    hs[pos] = s
    hi[pos] = i


@njit(inline="always", cache=True)
def _push(hs, hi, size, s, i):
    """Push onto a heap whose root is the worst hit; returns the new size."""
    pos = size
    while pos > 0:
        parent = (pos - 1) >> 1
        if not _worse(s, i, hs[parent], hi[parent]):
            break
        hs[pos] = hs[parent]
        hi[pos] = hi[parent]
        pos = parent
    hs[pos] = s
    hi[pos] = i
    return size + 1


@njit(cache=True, nogil=True)
def _df(dptr, pslots, pos, loc, where):
    """Live documents of one posting list: postings whose slot is indexed in this set."""
    n = 0
    for j in range(dptr[pos], dptr[pos + 1]):
        if loc[pslots[j]] == where:
            n += 1
    return n


@njit(cache=True, nogil=True)
def doc_freq(idx, b_dims, b_ptr, b_slots, d_dims, d_ptr, d_slots, loc):
    """Live documents holding each index of ``idx`` (base and delta postings of indexed slots)."""
    out = np.zeros(idx.shape[0], np.int64)
    for j in range(idx.shape[0]):
        bp = _find(b_dims, idx[j])
        if bp >= 0:
            out[j] += _df(b_ptr, b_slots, bp, loc, IN_BASE)
        dp = _find(d_dims, idx[j])
        if dp >= 0:
            out[j] += _df(d_ptr, d_slots, dp, loc, IN_DELTA)
    return out


@njit(cache=True, nogil=True)
def search_batch(
    q_ptr, q_idx, q_val, k, b_dims, b_ptr, b_slots, b_vals, d_dims, d_ptr, d_slots, d_vals,
    loc, mask, use_mask, idf, n_docs, acc, seen, touched, out_slots, out_scores,
):  # fmt: skip
    """Exact dot-product top-``k`` of every query row against the base and delta posting sets.

    A slot is a candidate when it is indexed (``loc``), allowed (``mask[slot] != 0`` when
    ``use_mask``) and shares at least one index with the query. Scores accumulate in
    float32, query index by query index (ascending), so a slot's score does not depend on
    which posting set holds it. With ``idf`` each query weight is first multiplied by
    ``ln((N - df + 0.5) / (df + 0.5) + 1)``, ``N = n_docs`` and ``df`` the live documents
    holding that index (mask not applied). Rows of ``out_slots``/``out_scores`` get the hits
    best first (ties: smaller slot first), then slot -1 / score -inf.
    ``acc``/``seen`` (one entry per slot) must be zero on entry and are zero again on exit."""
    hs = np.empty(max(k, 1), np.float32)
    hi = np.empty(max(k, 1), np.int64)
    for qi in range(q_ptr.shape[0] - 1):
        nt = 0
        for j in range(q_ptr[qi], q_ptr[qi + 1]):
            dim = q_idx[j]
            w = q_val[j]
            bp = _find(b_dims, dim)
            dp = _find(d_dims, dim)
            if idf:
                df = 0
                if bp >= 0:
                    df += _df(b_ptr, b_slots, bp, loc, IN_BASE)
                if dp >= 0:
                    df += _df(d_ptr, d_slots, dp, loc, IN_DELTA)
                weight = np.log((n_docs - df + 0.5) / (df + 0.5) + 1.0)
                w = np.float32(w * weight)
            if bp >= 0:
                for p in range(b_ptr[bp], b_ptr[bp + 1]):
                    s = b_slots[p]
                    if loc[s] != IN_BASE or (use_mask and mask[s] == 0):
                        continue
                    if seen[s] == 0:
                        seen[s] = 1
                        touched[nt] = s
                        nt += 1
                    acc[s] += w * b_vals[p]
            if dp >= 0:
                for p in range(d_ptr[dp], d_ptr[dp + 1]):
                    s = d_slots[p]
                    if loc[s] != IN_DELTA or (use_mask and mask[s] == 0):
                        continue
                    if seen[s] == 0:
                        seen[s] = 1
                        touched[nt] = s
                        nt += 1
                    acc[s] += w * d_vals[p]
        size = 0
        for t in range(nt):
            s = touched[t]
            sc = acc[s]
            acc[s] = 0.0
            seen[s] = 0
            if size < k:
                size = _push(hs, hi, size, sc, s)
            elif _worse(hs[0], hi[0], sc, s):
                hs[0] = sc
                hi[0] = s
                _sift_down(hs, hi, size, 0)
        m = size
        for pos in range(m - 1, -1, -1):
            out_slots[qi, pos] = hi[0]
            out_scores[qi, pos] = hs[0]
            size -= 1
            if size > 0:
                hs[0] = hs[size]
                hi[0] = hi[size]
                _sift_down(hs, hi, size, 0)
        for pos in range(m, k):
            out_slots[qi, pos] = -1
            out_scores[qi, pos] = -np.inf
    return 0
