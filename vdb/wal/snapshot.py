"""Snapshots: one file holding a consistent hot copy of the LMDB environment.

File layout (all integers big-endian)::

    b"VDBSNAP\\x01"                      8 bytes magic + container version
    manifest length                      8 bytes
    sha256 of the manifest               32 bytes
    manifest (JSON, UTF-8)               format version, collections, counts,
                                         data size and sha256 of the data
    data                                 a compacted LMDB ``data.mdb``

The copy is taken from ONE LMDB read transaction opened while the writer is
paused between two groups, so it holds exactly the committed state whose
counts the manifest reports, while writes go on during the (long) copy.
``restore`` verifies both checksums while it streams the data into a
temporary file and only then moves it into place: a corrupt or truncated
snapshot is refused with :class:`vdb.errors.CorruptData` and nothing is
written to the target directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

from vdb.errors import AlreadyExists, CorruptData, InvalidInput, NotFound, StorageError
from vdb.wal import checkpoint as ckpt
from vdb.wal.store import LOCK_FILE, Store, lock_directory, unlock_directory, unpack

log = logging.getLogger(__name__)

MAGIC = b"VDBSNAP\x01"
FORMAT_VERSION = 1
_LEN = struct.Struct(">Q")
BUFFER = 1 << 20

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called as a snapshot is written or restored."""

Describe = Callable[[Any], tuple[dict[str, dict[str, Any]], int]]
"""``describe(txn) -> (collections, last_seq)``: what the manifest says of the state ``txn``
reads; ``collections`` maps each name to ``{"uid", "dim", "metric", "count", "M",
"ef_construction", "ef"}``. Storage knows no database: its owner says what it holds."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_snapshot(
    store: Store,
    path: str | os.PathLike[str],
    describe: Describe,
    *,
    pause: AbstractContextManager[Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write a snapshot of the environment of the open ``store`` to ``path``.

    The copy comes from one read transaction begun while ``pause`` is held
    (the database passes its writer's lock, so no group is half applied);
    ``describe(txn)`` is called at the same moment and gives the manifest's
    ``(collections, last_seq)`` for exactly that state. Writes go on during
    the copy. The file appears atomically (a temporary file renamed at the end).
    """
    out = Path(path)
    if out.is_dir():
        raise InvalidInput(f"snapshot path {out} is a directory; give a file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".vdb-snap-", dir=out.parent) as tmp:
        copy_dir = Path(tmp) / "env"
        copy_dir.mkdir()
        with contextlib.ExitStack() as stack:
            # Lock order as the writer's: its lock first, then the map's shared lock.
            # The read transaction outlives the writer's lock: writes go on during the copy.
            with pause if pause is not None else contextlib.nullcontext():
                stack.enter_context(store._resize.shared())
                txn = store.env.begin(buffers=False)
                try:
                    collections, seq = describe(txn)
                except BaseException:
                    txn.abort()
                    raise
            try:
                store.env.copy(str(copy_dir), compact=True, txn=txn)
            finally:
                txn.abort()
        data_path = copy_dir / "data.mdb"
        size = data_path.stat().st_size
        sha = hashlib.sha256()
        with open(data_path, "rb") as f:
            while chunk := f.read(BUFFER):
                sha.update(chunk)
        manifest = {
            "format": "vdb-snapshot",
            "format_version": FORMAT_VERSION,
            "created_at": time.time(),
            "last_seq": seq,
            "collections": collections,
            "data_bytes": size,
            "data_sha256": sha.hexdigest(),
        }
        blob = json.dumps(manifest, sort_keys=True).encode()
        part = out.with_name(f".{out.name}.partial")
        done = 0
        with open(part, "wb") as f, open(data_path, "rb") as src:
            f.write(MAGIC)
            f.write(_LEN.pack(len(blob)))
            f.write(hashlib.sha256(blob).digest())
            f.write(blob)
            while chunk := src.read(BUFFER):
                f.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, size)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, out)
        _fsync_dir(out.parent)
    log.info(
        "snapshot %s: %d bytes, %d collections in %.3fs",
        out,
        size,
        len(collections),
        time.perf_counter() - started,
    )
    return manifest


def describe_stored(store: Store, txn: Any) -> tuple[dict[str, dict[str, Any]], int]:
    """The manifest's ``(collections, last_seq)`` read from the tables alone (checkpointed id
    map + WAL after it), for a directory no process here has open."""
    manifests = ckpt.read_manifests(store, txn)
    collections = {}
    for _, raw in txn.cursor(db=store.db("collections")):
        config = unpack(raw)
        uid = int(config["uid"])
        collections[config["name"]] = {
            "uid": uid,
            "dim": config["dim"],
            "metric": config["metric"],
            "count": len(ckpt.live_ids(store, txn, config, manifests.get(uid))),
            "M": config["M"],
            "ef_construction": config["ef_construction"],
            "ef": config["ef"],
        }
    return dict(sorted(collections.items())), store.last_seq(txn)


def snapshot_directory(
    data_dir: str | os.PathLike[str], path: str | os.PathLike[str], progress: Progress | None = None
) -> dict[str, Any]:
    """Snapshot a data directory without opening the database (works while a server runs it).

    The counts in the manifest come from the same read transaction as the
    copy (checkpointed id map + WAL after it).
    """
    store = Store(data_dir, readonly=True)
    try:
        return create_snapshot(
            store, path, lambda txn: describe_stored(store, txn), progress=progress
        )
    finally:
        store.close()


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptData(f"snapshot is truncated (in the {what})")
    return data


def read_manifest(snapshot_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The verified manifest of a snapshot file (the data is not checked)."""
    with open(snapshot_path, "rb") as f:
        return _read_header(f)


def _read_header(f: BinaryIO) -> dict[str, Any]:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise CorruptData("not a vdb snapshot (bad magic bytes)")
    (length,) = _LEN.unpack(_read_exact(f, _LEN.size, "header"))
    if length > 64 << 20:
        raise CorruptData("snapshot manifest length is implausible (corrupt header)")
    digest = _read_exact(f, 32, "header")
    blob = _read_exact(f, length, "manifest")
    if hashlib.sha256(blob).digest() != digest:
        raise CorruptData("snapshot manifest fails its checksum")
    try:
        manifest = json.loads(blob)
    except ValueError as exc:
        raise CorruptData(f"snapshot manifest is not valid JSON: {exc}") from exc
    if manifest.get("format") != "vdb-snapshot" or manifest.get("format_version") != FORMAT_VERSION:
        raise CorruptData(
            f"unsupported snapshot format {manifest.get('format')!r} v{manifest.get('format_version')!r}"
        )
    return manifest


def verify(snapshot_path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a snapshot's manifest and data checksums without restoring it."""
    with open(snapshot_path, "rb") as f:
        manifest = _read_header(f)
        _copy_verified(f, None, manifest, None)
    return manifest


def _copy_verified(
    src: BinaryIO, dst: BinaryIO | None, manifest: dict[str, Any], progress: Progress | None
) -> None:
    size = int(manifest["data_bytes"])
    sha = hashlib.sha256()
    done = 0
    while done < size:
        chunk = src.read(min(BUFFER, size - done))
        if not chunk:
            raise CorruptData(f"snapshot is truncated: {done} of {size} data bytes")
        sha.update(chunk)
        if dst is not None:
            dst.write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(done, size)
    if src.read(1):
        raise CorruptData("snapshot has trailing bytes after its data")
    if sha.hexdigest() != manifest["data_sha256"]:
        raise CorruptData("snapshot data fails its checksum")


def restore(
    snapshot_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    overwrite: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Restore a snapshot into ``data_dir``; returns the snapshot's manifest.

    ``data_dir`` must not exist or be empty unless ``overwrite`` is true (then
    its database files are replaced). The snapshot is fully verified before
    anything in ``data_dir`` changes. Open the result with ``vdb.open``.
    """
    src_path = Path(snapshot_path)
    if not src_path.is_file():
        raise NotFound(f"snapshot {src_path} not found")
    target = Path(data_dir)
    if target.exists() and not target.is_dir():
        raise InvalidInput(f"{target} exists and is not a directory")
    if target.is_dir() and any(p.name != LOCK_FILE for p in target.iterdir()) and not overwrite:
        raise AlreadyExists(f"{target} is not empty; pass overwrite=True (--force) to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        with open(src_path, "rb") as f:
            manifest = _read_header(f)
            with open(staging / "data.mdb", "wb") as out:
                _copy_verified(f, out, manifest, progress)
                out.flush()
                os.fsync(out.fileno())
        target.mkdir(parents=True, exist_ok=True)
        # Hold the directory's lock: a live process must not have it open, and
        # none may open it while the files are replaced.
        fd = lock_directory(target)
        try:
            if any(p.name != LOCK_FILE for p in target.iterdir()) and not overwrite:
                raise AlreadyExists(
                    f"{target} is not empty; pass overwrite=True (--force) to replace it"
                )
            for name in ("data.mdb", "lock.mdb"):
                (target / name).unlink(missing_ok=True)
            os.replace(staging / "data.mdb", target / "data.mdb")
            _fsync_dir(target)
        finally:
            unlock_directory(fd)
    except OSError as exc:
        raise StorageError(f"restore into {target} failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("restored %s into %s", src_path, target)
    return manifest
