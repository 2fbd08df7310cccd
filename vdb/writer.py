"""``Writer``: the narrow handle a collection holds on the database that owns it.

A collection validates its operations and hands them to the single writer;
it needs no more of the database than this, so ``vdb.collection`` imports
this protocol rather than ``vdb.db`` (the database imports the collection,
never the other way round). ``vdb.db.Database`` satisfies it.
"""

from __future__ import annotations

from typing import Any, Protocol


class Writer(Protocol):
    """What a collection asks of its database (the names are the database's own)."""

    @property
    def last_seq(self) -> int:
        """Sequence number of the last committed WAL record."""
        ...

    def _check_open(self) -> None:
        """Raise ``vdb.errors.DatabaseClosed`` once the database is closed."""
        ...

    def _submit(self, request: Any) -> Any:
        """Queue a ``vdb.collection.WriteRequest`` for the single writer; return its result
        once it is durable and visible (the writer's group commit decides the transaction)."""
        ...
