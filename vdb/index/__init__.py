"""vdb's indexes: flat numpy arrays and Numba kernels (imports only numpy and numba).

``HNSW`` (dense vectors) and ``SparseIndex`` (sparse vectors, exact) are the public
classes; see ``vdb.index.hnsw`` and ``vdb.index.sparse`` for their contracts (scores,
ordering, the one-writer-many-readers schemes).
"""

from __future__ import annotations

from vdb.index.hnsw import HNSW
from vdb.index.sparse import SparseIndex

__all__ = ["HNSW", "SparseIndex"]
