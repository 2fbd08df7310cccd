"""Make the test fixture: 10,000 base + 200 query MiniLM embeddings with exact ground truth.

The rows are a seeded random sample of the debian-minilm benchmark set
(all-MiniLM-L6-v2 embeddings of Debian package descriptions, 384-d, unit
length; see that set's README for how the embeddings were made). Vectors are
stored as float16; the ground truth is computed here, exactly, on the float32
cast of the stored float16 vectors, so it matches what a test loads.

    python tests/data/minilm-10k/make.py SOURCE_DIR [OUT_DIR]

SOURCE_DIR holds base.npy, queries.npy, base.txt and queries.txt of
debian-minilm. OUT_DIR defaults to this script's directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

N_BASE, N_QUERY, GT_K, SEED = 10_000, 200, 100, 20261201


def read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def main(source: Path, out: Path) -> None:
    base = np.load(source / "base.npy")
    queries = np.load(source / "queries.npy")
    base_lines = read_lines(source / "base.txt")
    query_lines = read_lines(source / "queries.txt")
    rng = np.random.default_rng(SEED)
    rows = np.sort(rng.choice(len(base), N_BASE, replace=False))
    qrows = np.sort(rng.choice(len(queries), N_QUERY, replace=False))
    b16 = base[rows].astype(np.float16)
    q16 = queries[qrows].astype(np.float16)
    b32, q32 = b16.astype(np.float32), q16.astype(np.float32)
    scores = q32 @ b32.T
    gt_ids = np.argsort(-scores, axis=1, kind="stable")[:, :GT_K].astype(np.int32)
    gt_scores = np.take_along_axis(scores, gt_ids, axis=1).astype(np.float32)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "base.npy", b16)
    np.save(out / "queries.npy", q16)
    np.save(out / "gt_ids.npy", gt_ids)
    np.save(out / "gt_scores.npy", gt_scores)
    with open(out / "base.txt", "w", encoding="utf-8") as f:
        f.writelines(base_lines[i] + "\n" for i in rows)
    with open(out / "queries.txt", "w", encoding="utf-8") as f:
        f.writelines(query_lines[i] + "\n" for i in qrows)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) == 3 else Path(__file__).parent)
