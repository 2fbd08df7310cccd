"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from tests.helpers import MiniLM, dataset_dir


@pytest.fixture(scope="session")
def minilm() -> MiniLM:
    """The real debian-minilm embeddings (loaded once per session)."""
    return MiniLM(dataset_dir("debian-minilm"))
