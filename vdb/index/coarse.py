"""A coarse partition of float rows (an IVF's lists): k-means centroids and list assignment.

The fresh segment of a collection (``vdb.segments``) partitions its rows once
there are a few thousand, so that a search scans only the lists nearest the
query (``flat.scan_codes``) instead of every row. Both functions are plain
numpy (the products go to BLAS), called off the search path: ``train`` by the
background indexer, ``assign`` by the writer for the rows it appends (a 1,000
row batch against 128 centroids of 384 dimensions is one 1000 x 384 x 128
matrix product).

Distances are the metric's own, as the graph's: squared L2 for ``l2``, the
largest inner product for ``ip`` and ``cosine`` (rows are unit length for
cosine; its centroids are scaled to unit length after every update:
spherical k-means). A row belongs to its nearest centroid; a query probes
the lists of its nearest centroids by the same distance, so a stored row's
own vector always probes that row's list first.
"""

from __future__ import annotations

import numpy as np

# debian-minilm 50k, 256 lists, 64 probes: recall 0.959 after 4 iterations, 0.960 after 8
KMEANS_ITERATIONS = 4
_ASSIGN_CHUNK = 8192  # rows per matrix product (bounds the [rows, lists] score block)


def _scores(x: np.ndarray, centroids: np.ndarray, metric: str, sq: np.ndarray) -> np.ndarray:
    """[rows, lists], smaller is nearer."""
    dots = x @ centroids.T
    if metric == "l2":
        return sq[None, :] - 2.0 * dots  # |x|^2 is the same for every list of a row
    return -dots


def assign(x: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """The nearest centroid of every row of ``x`` (float32 [n, dim]) as int32 [n]."""
    n = x.shape[0]
    out = np.empty(n, np.int32)
    if n == 0:
        return out
    sq = np.einsum("ij,ij->i", centroids, centroids) if metric == "l2" else centroids[:0, 0]
    for lo in range(0, n, _ASSIGN_CHUNK):
        block = _scores(x[lo : lo + _ASSIGN_CHUNK], centroids, metric, sq)
        out[lo : lo + block.shape[0]] = np.argmin(block, axis=1)
    return out


def train(
    x: np.ndarray,
    n_lists: int,
    metric: str,
    iterations: int = KMEANS_ITERATIONS,
    seed: int = 0,
) -> np.ndarray:
    """k-means centroids of the rows ``x`` (float32 [n, dim]): float32 [min(n_lists, n), dim].

    Starts from ``n_lists`` distinct rows drawn with ``seed``; each iteration assigns every
    row and moves each centroid to the mean of its rows (scaled to unit length for cosine).
    A list left empty is re-seeded with the row farthest from its own centroid, so no list
    stays empty while some rows are far from every centroid.
    """
    x = np.ascontiguousarray(x, np.float32)
    n, dim = x.shape
    n_lists = max(1, min(int(n_lists), n))
    rng = np.random.default_rng(seed)
    centroids = x[np.sort(rng.choice(n, n_lists, replace=False))].copy()
    for _ in range(max(1, int(iterations))):
        owner = assign(x, centroids, metric)
        counts = np.bincount(owner, minlength=n_lists)
        order = np.argsort(owner, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        filled = counts > 0
        sums = np.add.reduceat(x[order], starts[filled], axis=0, dtype=np.float64)
        centroids[filled] = (sums / counts[filled, None]).astype(np.float32)
        empty = np.flatnonzero(~filled)
        if empty.size:
            own = centroids[owner]
            if metric == "l2":
                far = np.einsum("ij,ij->i", x - own, x - own)
            else:
                far = -np.einsum("ij,ij->i", x, own)
            for c, row in zip(empty.tolist(), np.argsort(-far)[: empty.size].tolist(), strict=True):
                centroids[c] = x[row]
        if metric == "cosine":
            norms = np.linalg.norm(centroids, axis=1, keepdims=True)
            centroids /= np.where(norms > 0, norms, 1.0)
    return np.ascontiguousarray(centroids, np.float32)
