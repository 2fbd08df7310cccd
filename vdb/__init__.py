"""vdb: a vector database in one Python process.

import vdb
with vdb.open("./data") as db:
    col = db.create_collection("docs", dim=384, metric="cosine")
    col.upsert(["a", "b"], vectors, payloads=[{"lang": "en"}, {"lang": "de"}])
    hits = col.search(query, k=10, filter={"must": [{"key": "lang", "match": {"value": "en"}}]})
"""

from __future__ import annotations

from vdb import errors
from vdb.errors import (
    AlreadyExists,
    CollectionNotFound,
    InvalidInput,
    NotFound,
    VdbError,
)
from vdb.types import Delete, Hit, Record, Upsert
from vdb.version import __version__ as __version__

__all__ = [
    "AlreadyExists",
    "CollectionNotFound",
    "Delete",
    "Hit",
    "InvalidInput",
    "NotFound",
    "Record",
    "Upsert",
    "VdbError",
    "errors",
    "open",
    "restore",
]


def open(path, **options):  # noqa: A001 - mirrors sqlite3.connect / lmdb.open
    """Open (or create) the database in directory ``path``."""
    from vdb.db import Database

    return Database(path, **options)


def restore(snapshot_path, data_dir, overwrite: bool = False):
    """Restore a snapshot file into ``data_dir`` (must be empty unless ``overwrite``)."""
    from vdb.wal.snapshot import restore as _restore

    return _restore(snapshot_path, data_dir, overwrite=overwrite)
