"""Helpers for tests: dataset loading and recall (import as ``tests.helpers``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def dataset_dir(name: str) -> Path:
    """Where the shared real datasets live: ``$VDB_DATASETS`` or ``../shared/data`` beside the repo."""
    root = Path(os.environ.get("VDB_DATASETS", REPO.parent / "shared" / "data"))
    path = root / name
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {name!r} not found at {path} (set VDB_DATASETS)")
    return path


class MiniLM:
    """debian-minilm: 50,000 x 384 unit vectors, 1,000 queries, exact top-100 ground truth."""

    def __init__(self, path: Path):
        self.path = path
        self.base = np.load(path / "base.npy").astype(np.float32)
        self.queries = np.load(path / "queries.npy").astype(np.float32)
        self.gt_ids = np.load(path / "gt_ids.npy")
        self.gt_scores = np.load(path / "gt_scores.npy")
        names, texts = [], []
        with open(path / "base.txt", encoding="utf-8") as f:
            for line in f:
                name, _, text = line.rstrip("\n").partition("\t")
                names.append(name)
                texts.append(text)
        self.names = names
        self.texts = texts


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top-k found in each row of ``found`` (row numbers)."""
    hits = [
        len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) / k
