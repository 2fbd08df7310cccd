"""Fixtures for the text tests: the minilm-10k texts and vectors, the loaded model, a broker.

Everything comes from the repository (``tests/data/minilm-10k``) and the
installed ``embed`` extra; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers import MiniLM, fixture
from tests.http.conftest import server  # noqa: F401 - a real `python -m vdb serve`
from tests.ingest.conftest import broker, producer  # noqa: F401 - the real Tansu fixtures


@pytest.fixture(scope="session")
def texts() -> MiniLM:
    """minilm-10k: texts with the model's vectors (float32 casts) and the exact top-100."""
    return fixture()


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
