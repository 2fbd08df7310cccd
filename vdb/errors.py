"""One exception hierarchy for every layer of vdb.

Problems are raised where they are found, as one of these types; the HTTP
layer maps each type to a status code in one place and the ingest layer turns
``InvalidInput`` into a dead letter with the message as its reason.
"""

from __future__ import annotations


class VdbError(Exception):
    """Base of every error vdb raises on purpose."""

    status_code = 500


class InvalidInput(VdbError, ValueError):
    """The caller sent something vdb cannot accept (shape, type, value)."""

    status_code = 400


class DimensionMismatch(InvalidInput):
    """A vector's length differs from the collection's dimension."""


class InvalidFilter(InvalidInput):
    """A payload filter does not follow the filter grammar."""


class NotFound(VdbError, LookupError):
    """A named thing (collection, point, snapshot) does not exist."""

    status_code = 404

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class CollectionNotFound(NotFound):
    pass


class PointNotFound(NotFound):
    pass


class AlreadyExists(VdbError):
    """Creating something that is already there."""

    status_code = 409


class StorageError(VdbError):
    """The storage layer could not complete a write; nothing was applied."""

    status_code = 500


class StorageFull(StorageError):
    """The disk (or the LMDB map's hard limit) is full; writes are refused."""

    status_code = 507


class CorruptData(StorageError):
    """A checkpoint, snapshot or record failed its checksum or could not be decoded."""


class DatabaseClosed(VdbError):
    """The database was closed; open it again to use it."""

    status_code = 503


class ReadOnly(VdbError):
    """A write was attempted through a read-only handle or key."""

    status_code = 403


class Unavailable(VdbError):
    """Some of the data cannot be reached now (a cluster partition without a live replica)."""

    status_code = 503
