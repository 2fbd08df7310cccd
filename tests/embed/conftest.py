"""Fixtures for the text tests: the minilm-10k texts and vectors, the loaded model, a broker.

Everything comes from the repository (``tests/data/minilm-10k``) and the
installed ``embed`` extra; nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.http.conftest import server  # noqa: F401 - a real `python -m vdb serve`
from tests.ingest.conftest import broker, producer  # noqa: F401 - the real Tansu fixtures

FIXTURE = Path(__file__).resolve().parents[1] / "data" / "minilm-10k"


@dataclass
class TextFixture:
    """minilm-10k: texts with the model's vectors (float32 casts) and the exact top-100."""

    names: list[str]
    texts: list[str]
    base: np.ndarray
    query_texts: list[str]
    queries: np.ndarray
    gt_ids: np.ndarray


def _read(path: Path) -> tuple[list[str], list[str]]:
    names, texts = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, _, text = line.rstrip("\n").partition("\t")
            names.append(name)
            texts.append(text)
    return names, texts


@pytest.fixture(scope="session")
def texts() -> TextFixture:
    names, base_texts = _read(FIXTURE / "base.txt")
    _, query_texts = _read(FIXTURE / "queries.txt")
    return TextFixture(
        names=names,
        texts=base_texts,
        base=np.load(FIXTURE / "base.npy").astype(np.float32),
        query_texts=query_texts,
        queries=np.load(FIXTURE / "queries.npy").astype(np.float32),
        gt_ids=np.load(FIXTURE / "gt_ids.npy"),
    )


@pytest.fixture(scope="session")
def model():
    """The built-in model, loaded once for the session (it is shared process-wide anyway)."""
    from vdb.embed import get_embedder

    return get_embedder("minilm")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.einsum("ij,ij->i", a, b)
