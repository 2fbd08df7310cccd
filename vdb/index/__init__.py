"""vdb's HNSW index: flat numpy arrays and Numba kernels (imports only numpy and numba).

``HNSW`` is the one public class; see ``vdb.index.hnsw`` for the contract
(scores, ordering, the one-writer-many-readers scheme).
"""

from __future__ import annotations

from vdb.index.hnsw import HNSW

__all__ = ["HNSW"]
