"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from tests.helpers import MiniLM, fixture


@pytest.fixture(scope="session")
def minilm() -> MiniLM:
    """The repository's real MiniLM embeddings, ``tests/data/minilm-10k`` (loaded once)."""
    return fixture()
