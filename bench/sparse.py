"""Sparse top-k: vdb's inverted index against a scipy.sparse CSR product + argpartition.

Documents are hashed-token sparse vectors of the debian-minilm texts (words
and the character 4-grams of each word, hashed into 2**20 dimensions, term
counts as values; ~32 non-zeros each). The texts are
repeated with a perturbation (one word dropped, one word of another text
added) until there are ``--n`` documents. Queries are the dataset's query
texts, vectorised the same way.

For each case one JSON line: the median and p99 time of a single-query
``SparseIndex.search`` (top ``--k``) and, as the anchor measured in the same
run over the same documents, of ``csr_matrix @ dense_query`` followed by
``np.argpartition`` (the query's dense form is built outside the timing). To
give the anchor its best case, the matrix's columns are relabelled to the
dimensions that occur, most frequent first, so its dense query vector is
small and its hot entries share cache lines.
``agree`` is the share of queries whose top-k scores equal the anchor's. The
anchor's idf weights are computed once, outside the timing; vdb counts
document frequencies at query time.

    PYTHONPATH=. python -m bench.sparse [--data DIR] [--n 100000] [--queries 200] [--quick]
"""

from __future__ import annotations

import argparse
import random
import re
import time
import zlib
from pathlib import Path

import numpy as np

from bench.common import dataset_dir, emit, host_info, log, percentiles
from vdb.index.sparse import SparseIndex

DIMS = 1 << 20
_WORD = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    out = list(words)
    for w in words:
        out += [f"#{w[i : i + 4]}" for i in range(max(0, len(w) - 3))]
    return out


def vectorize(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Hashed term counts of ``text`` (crc32, so stable across processes)."""
    counts: dict[int, float] = {}
    for t in tokens(text):
        h = zlib.crc32(t.encode()) & (DIMS - 1)
        counts[h] = counts.get(h, 0.0) + 1.0
    idx = np.fromiter(counts.keys(), np.int64, len(counts))
    val = np.fromiter(counts.values(), np.float32, len(counts))
    return idx, val


def documents(texts: list[str], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = list(texts[:n])
    vocab = [w for t in texts[:2000] for w in t.split()]
    while len(out) < n:
        words = texts[len(out) % len(texts)].split()
        if len(words) > 1:
            words.pop(rng.randrange(len(words)))
        words.insert(rng.randrange(len(words) + 1), rng.choice(vocab))
        out.append(" ".join(words))
    return out


def _time(fn, reps: int) -> list[float]:
    out = []
    for r in range(reps):
        t0 = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t0)
    return out


def measure(index, queries, anchor_q, allowed, matrix, args) -> tuple[list, list, float]:
    """Timed single-query searches of both systems, and the share of queries they agree on."""
    nq = len(queries)
    reps = max(nq, args.reps)
    k = args.k

    def anchor_scores(r: int) -> np.ndarray:
        scores = matrix @ anchor_q[r % nq]
        if allowed is not None:
            scores = np.where(allowed, scores, -np.inf)
        return scores

    def anchor(r: int) -> np.ndarray:
        scores = anchor_scores(r)
        top = np.argpartition(scores, -k)[-k:]
        return top[np.argsort(-scores[top])]

    mine = _time(lambda r: index.search([queries[r % nq]], k, allowed=allowed), reps)
    theirs = _time(anchor, reps)
    agree = 0
    for r in range(nq):
        _, s = index.search([queries[r]], k, allowed=allowed)
        ref = np.sort(anchor_scores(r))[::-1][:k]
        got = np.where(np.isfinite(s[0]), s[0], 0.0)
        ref = np.where(np.isfinite(ref), ref, 0.0)
        agree += bool(np.allclose(np.sort(got), np.sort(ref), rtol=1e-4, atol=1e-4))
    return mine, theirs, agree / nq


def run(args: argparse.Namespace) -> None:
    from scipy.sparse import csr_matrix

    data = Path(args.data) if args.data else dataset_dir("debian-minilm")
    texts = (data / "base.txt").read_text().splitlines()
    qtexts = (data / "queries.txt").read_text().splitlines()[: args.queries]
    log(f"vectorising {args.n} documents")
    docs = [vectorize(t) for t in documents(texts, args.n)]
    queries = [vectorize(t) for t in qtexts]
    nnz = np.array([d[0].shape[0] for d in docs])
    log(f"mean non-zeros {nnz.mean():.1f}; building")
    ptr = np.zeros(len(docs) + 1, np.int64)
    np.cumsum(nnz, out=ptr[1:])
    all_idx = np.concatenate([d[0] for d in docs])
    used, inverse, df = np.unique(all_idx, return_inverse=True, return_counts=True)
    rank = np.empty(used.shape[0], np.int64)
    rank[np.argsort(-df, kind="stable")] = np.arange(used.shape[0])
    columns = rank[inverse]
    matrix = csr_matrix(
        (np.concatenate([d[1] for d in docs]), columns.astype(np.int32), ptr),
        shape=(len(docs), used.shape[0]),
    )
    dense_q = []
    for idx, val in queries:
        q = np.zeros(used.shape[0], np.float32)
        pos = np.searchsorted(used, idx)
        hit = (pos < used.shape[0]) & (used[np.minimum(pos, used.shape[0] - 1)] == idx)
        q[rank[pos[hit]]] = val[hit]
        dense_q.append(q)
    base = {"bench": "sparse", "n": len(docs), "nnz_mean": float(nnz.mean()), "k": args.k}
    for modifier, allowed_share in ((None, None), ("idf", None), (None, 0.1)):
        index = SparseIndex(modifier)
        t0 = time.perf_counter()
        index.put(np.arange(len(docs)), docs)
        build_s = time.perf_counter() - t0
        index.search(queries[:2], args.k)  # load the kernels
        allowed = None
        if allowed_share is not None:
            allowed = np.random.default_rng(1).random(len(docs)) < allowed_share
        weights = np.ones(used.shape[0], np.float32)
        if modifier == "idf":
            n = len(docs)
            col_df = np.zeros(used.shape[0], np.float64)
            col_df[rank] = df
            weights = np.log((n - col_df + 0.5) / (col_df + 0.5) + 1.0).astype(np.float32)
        anchor_q = [q * weights for q in dense_q]
        mine, theirs, agree = measure(index, queries, anchor_q, allowed, matrix, args)
        mp = percentiles(mine, (50, 99))
        tp = percentiles(theirs, (50, 99))
        emit(
            {
                **base,
                "case": "idf"
                if modifier
                else ("filtered_10pct" if allowed is not None else "plain"),
                "build_s": build_s,
                "memory_mb": index.memory_bytes() / 1e6,
                "vdb_us_p50": mp["p50"] * 1e6,
                "vdb_us_p99": mp["p99"] * 1e6,
                "scipy_us_p50": tp["p50"] * 1e6,
                "scipy_us_p99": tp["p99"] * 1e6,
                "speedup_p50": tp["p50"] / mp["p50"],
                "agree": agree,
                "host": host_info(),
            }
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="the debian-minilm folder (base.txt, queries.txt)")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--reps", type=int, default=400, help="timed searches per system")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="100 queries, 200 timed searches")
    args = parser.parse_args(argv)
    if args.quick:
        args.queries = min(args.queries, 100)
        args.reps = min(args.reps, 200)
    return args


if __name__ == "__main__":
    run(parse_args())
