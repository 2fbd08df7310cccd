"""Helpers for tests: the real-embedding fixture and recall (import as ``tests.helpers``)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "data" / "minilm-10k"


@dataclass(frozen=True)
class MiniLM:
    """minilm-10k: 10,000 x 384 unit MiniLM vectors, 200 queries, exact top-100 (cosine).

    ``base`` and ``queries`` are float32 (cast from the stored float16);
    ``gt_ids[q]`` are base rows best first, ``gt_scores[q]`` their cosine
    similarities; ``names[i]`` / ``texts[i]`` are the package name (a natural
    string id) and description (a natural payload) of base row ``i``.
    """

    base: np.ndarray
    queries: np.ndarray
    gt_ids: np.ndarray
    gt_scores: np.ndarray
    names: list[str]
    texts: list[str]
    query_texts: list[str]


def _read_pairs(path: Path) -> tuple[list[str], list[str]]:
    names, texts = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, _, text = line.rstrip("\n").partition("\t")
            names.append(name)
            texts.append(text)
    return names, texts


@cache
def fixture() -> MiniLM:
    """The repository's real-embedding fixture ``tests/data/minilm-10k`` (loaded once per
    process; tests share the arrays, so copy before changing them)."""
    base = np.load(FIXTURE / "base.npy").astype(np.float32)
    queries = np.load(FIXTURE / "queries.npy").astype(np.float32)
    gt_ids = np.load(FIXTURE / "gt_ids.npy")
    gt_scores = np.load(FIXTURE / "gt_scores.npy")
    names, texts = _read_pairs(FIXTURE / "base.txt")
    _, query_texts = _read_pairs(FIXTURE / "queries.txt")
    assert base.shape == (10_000, 384) and queries.shape == (200, 384), "fixture damaged"
    assert gt_ids.shape == gt_scores.shape == (200, 100) and len(names) == len(base)
    assert len(query_texts) == len(queries), "fixture damaged"
    return MiniLM(base, queries, gt_ids, gt_scores, names, texts, query_texts)


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean fraction of the true top-k found in each row of ``found`` (row numbers)."""
    hits = [
        len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) / k
