"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest

from tests.helpers import MiniLM, fixture


@pytest.fixture(scope="session", autouse=True)
def index_kernels_compiled() -> None:
    """Compile (or load from Numba's on-disk cache) every index kernel once, in this process,
    before the first test. A fresh clone has an empty cache: without this, the first server
    a test starts as a child process compiles them all within its start-up deadline, which
    a loaded 2-core machine misses; with it, child processes load them from the cache."""
    from vdb.index import flat, hnsw
    from vdb.index.sparse import SparseIndex

    hnsw.warm_all()  # every kernel group: float and int8 search and build, relink
    flat.warm()  # the fresh segments' exact scan
    SparseIndex().warm()


@pytest.fixture(scope="session")
def minilm() -> MiniLM:
    """The repository's real MiniLM embeddings, ``tests/data/minilm-10k`` (loaded once)."""
    return fixture()
