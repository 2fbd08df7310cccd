"""The LMDB environment: named tables, durable write transactions, map growth.

One ``Store`` owns one LMDB environment (a data directory). Tables (LMDB
named databases):

``meta``         format version, the last WAL sequence number, counters
``collections``  collection name -> msgpack config (uid, dim, metric, ...)
``wal``          8-byte big-endian sequence number -> msgpack record
``offsets``      msgpack [source, topic, partition] -> 8-byte signed offset
``deadletters``  8-byte sequence -> msgpack dead letter
``ckptman``      8-byte collection uid -> msgpack checkpoint manifest
``ckpt``         uid + generation + blob name + chunk -> bytes of a checkpoint

Every write goes through :meth:`Store.write`, which runs a function in one
LMDB write transaction and commits it with LMDB's durable sync. When the map
is full the transaction is aborted, the map is grown and the function is run
again, so a caller never sees a half-applied transaction. When the disk (or
the configured ``max_map_size``) is really full the write is refused with
:class:`vdb.errors.StorageFull`.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import resource
import shutil
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import msgpack

from vdb.errors import CorruptData, StorageError, StorageFull, VdbError

log = logging.getLogger(__name__)

T = TypeVar("T")

FORMAT_VERSION = 1
TABLES = ("meta", "collections", "wal", "offsets", "deadletters", "ckptman", "ckpt")
DEFAULT_MAP_SIZE = 1 << 30
LOCK_FILE = "vdb.lock"

_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")


def u64(n: int) -> bytes:
    """Big-endian key bytes of an unsigned integer (sorts numerically in LMDB)."""
    return _U64.pack(n)


def from_u64(b: bytes) -> int:
    return _U64.unpack(b)[0]


def i64(n: int) -> bytes:
    return _I64.pack(n)


def from_i64(b: bytes) -> int:
    return _I64.unpack(b)[0]


def _default(obj: Any) -> Any:
    """numpy scalars and arrays become plain numbers and lists; anything else is refused."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store a value of type {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """msgpack with bin type for bytes (numpy scalars/arrays as plain values); raises
    TypeError/ValueError/OverflowError on what it cannot encode."""
    return msgpack.packb(obj, use_bin_type=True, default=_default)


def unpack(data: bytes) -> Any:
    """Inverse of :func:`pack`; raises :class:`CorruptData` when the bytes are not valid msgpack."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise CorruptData(f"undecodable record: {exc}") from exc


class _SharedExclusiveLock:
    """Many holders in shared mode, or one in exclusive mode (used to resize the map)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting_exclusive = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting_exclusive:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting_exclusive += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting_exclusive -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


LOW_DISK_BYTES = 64 << 20


def _full_reason(exc: BaseException, path: Path) -> str | None:
    """Why a failed write means "no room" (``None`` if it does not).

    LMDB reports a short page write as EIO, so an I/O error is classified by
    looking at the free space of the disk and the process's file-size limit.
    """
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return os.strerror(exc.errno)
    text = str(exc).lower()
    for marker in ("no space left", "disk quota", "file too large"):
        if marker in text:
            return marker
    if "input/output error" in text:
        try:
            free = shutil.disk_usage(path).free
        except OSError:
            free = None
        if free is not None and free < LOW_DISK_BYTES:
            return f"disk full ({free} bytes free)"
        soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
        data = path / "data.mdb"
        if (
            soft != resource.RLIM_INFINITY
            and data.exists()
            and data.stat().st_size + (1 << 20) >= soft
        ):
            return f"file size limit of {soft} bytes reached"
    return None


def lock_directory(path: Path) -> int:
    """Take the data directory's exclusive lock (one writing process); returns its fd."""
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StorageError(
            f"{path} is already open by another vdb process or handle "
            "(open it once and share the handle, or use the running server's API)"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def unlock_directory(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class Store:
    """One LMDB environment with vdb's tables.

    ``map_size`` is the initial map (it grows by doubling when full, up to
    ``max_map_size`` if given). ``readonly=True`` opens an existing
    environment for reading while another process may be writing it (used by
    ``vdb info`` against a running server). A read-write store takes an
    exclusive lock file so two processes never write the same directory.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = DEFAULT_MAP_SIZE,
        max_map_size: int | None = None,
        readonly: bool = False,
    ) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.max_map_size = max_map_size
        self._resize = _SharedExclusiveLock()
        self._lock_fd: int | None = None
        if readonly:
            if not (self.path / "data.mdb").exists():
                raise StorageError(f"no vdb database in {self.path}")
        else:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot use {self.path} as a data directory: {exc}") from exc
            self._take_lock()
        if max_map_size is not None:
            map_size = min(map_size, max_map_size)
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=len(TABLES) + 2,
                readonly=readonly,
                lock=True,
                sync=True,
                metasync=True,
                readahead=True,  # a cold open reads checkpoints 27x faster than with it off
                max_readers=1024,
            )
        except lmdb.Error as exc:
            self._release_lock()
            raise StorageError(f"cannot open LMDB environment in {self.path}: {exc}") from exc
        if not readonly:
            # Keep the map at least as large as the file already is.
            info = self.env.info()
            used = (info["last_pgno"] + 1) * self.env.stat()["psize"]
            if info["map_size"] < used * 2:
                self.env.set_mapsize(max(used * 2, map_size))
        self.tables: dict[str, Any] = {}
        try:
            if readonly:
                for name in TABLES:
                    self.tables[name] = self.env.open_db(name.encode(), create=False)
            else:
                with self.env.begin(write=True) as txn:
                    for name in TABLES:
                        self.tables[name] = self.env.open_db(name.encode(), txn=txn, create=True)
                    fmt = txn.get(b"format", db=self.tables["meta"])
                    if fmt is None:
                        txn.put(b"format", u64(FORMAT_VERSION), db=self.tables["meta"])
                    elif from_u64(fmt) != FORMAT_VERSION:
                        raise StorageError(
                            f"{self.path} has storage format {from_u64(fmt)}, this vdb reads {FORMAT_VERSION}"
                        )
        except lmdb.NotFoundError as exc:
            self.close()
            raise StorageError(f"{self.path} is not a vdb database (missing table)") from exc
        except VdbError:
            self.close()
            raise
        except lmdb.Error as exc:
            self.close()
            raise StorageError(f"cannot initialise {self.path}: {exc}") from exc

    # -- process lock -------------------------------------------------------

    def _take_lock(self) -> None:
        self._lock_fd = lock_directory(self.path)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            unlock_directory(self._lock_fd)
            self._lock_fd = None

    # -- transactions -------------------------------------------------------

    def db(self, name: str) -> Any:
        return self.tables[name]

    @contextmanager
    def read(self, buffers: bool = False) -> Iterator[lmdb.Transaction]:
        """A read transaction (a consistent view) for the duration of the block.

        ``buffers=True``: values are memoryviews into the map (no copy), valid only
        inside the block (checkpoint loading copies them straight into arrays)."""
        with self._resize.shared():
            try:
                txn = self.env.begin(buffers=buffers)
            except lmdb.MapResizedError:
                # Another process grew the map: adopt its size (readers only).
                self.env.set_mapsize(0)
                txn = self.env.begin(buffers=buffers)
            try:
                yield txn
            finally:
                txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``fn(txn)`` in one durable write transaction and return its result.

        ``fn`` may run more than once (after map growth), so it must only
        write through ``txn`` and raise to abort. Errors other than
        :class:`VdbError` raised by ``fn`` propagate unchanged; LMDB failures
        become :class:`StorageFull` or :class:`StorageError`. Nothing is
        committed when anything raises.
        """
        if self.readonly:
            from vdb.errors import ReadOnly

            raise ReadOnly("the store is open read-only")
        while True:
            try:
                with self._resize.shared():
                    txn = self.env.begin(write=True)
                    try:
                        result = fn(txn)
                        txn.commit()
                    except BaseException:
                        txn.abort()
                        raise
                return result
            except lmdb.MapFullError:
                self._grow()
            except (lmdb.Error, OSError) as exc:
                reason = _full_reason(exc, self.path)
                if reason is not None:
                    raise StorageFull(
                        f"no room to write ({reason}); write refused, nothing was written: {exc}"
                    ) from exc
                if isinstance(exc, OSError):
                    raise
                raise StorageError(f"LMDB write failed (nothing was written): {exc}") from exc

    def _grow(self) -> None:
        with self._resize.exclusive():
            current = self.env.info()["map_size"]
            new = current * 2
            if self.max_map_size is not None:
                if current >= self.max_map_size:
                    raise StorageFull(
                        f"the database reached its size limit max_map_size={self.max_map_size} bytes; "
                        "write refused (nothing was written)"
                    )
                new = min(new, self.max_map_size)
            log.info("growing the LMDB map from %d to %d bytes", current, new)
            self.env.set_mapsize(new)

    # -- small helpers ------------------------------------------------------

    def last_seq(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"last_seq", db=self.tables["meta"])
        return from_u64(raw) if raw is not None else 0

    def next_counter(self, txn: lmdb.Transaction, name: bytes) -> int:
        """Increment and return a persistent counter in ``meta``."""
        raw = txn.get(name, db=self.tables["meta"])
        value = (from_u64(raw) if raw is not None else 0) + 1
        txn.put(name, u64(value), db=self.tables["meta"])
        return value

    def disk_bytes(self) -> int:
        total = 0
        for name in ("data.mdb", "lock.mdb"):
            p = self.path / name
            if p.exists():
                total += p.stat().st_size
        return total

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            try:
                with self._resize.exclusive():
                    env.close()
            finally:
                self.env = None
        self._release_lock()
