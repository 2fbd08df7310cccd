"""Checkpoints: a collection's index arrays, id map and payloads in LMDB.

A checkpoint is a set of named blobs (each index array, the id map, the
payloads), each split into chunks in the ``ckpt`` table under the key
``uid | generation | name | chunk``, and a manifest in ``ckptman`` that
names the generation, the WAL position the blobs reflect, and for every
blob its dtype, shape, size and BLAKE2b digest. Chunks are written in
several transactions (so a big checkpoint does not hold LMDB's writer lock
for long); the checkpoint becomes current only when the manifest is written,
in the same transaction that removes the previous generation and the WAL
records it covers. A crash in between leaves unreferenced chunks, which
:func:`remove_orphans` deletes on the next open.

Loading verifies every digest and refuses a corrupt or truncated blob with
:class:`vdb.errors.CorruptData`.
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import lmdb
import msgpack
import numpy as np

from vdb.errors import CorruptData
from vdb.wal.store import Store, _default, from_u64, pack, u64, unpack

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20
TXN_BYTES = 32 << 20
PACK_CHUNK_ITEMS = 4096
_U32 = struct.Struct(">I")


@dataclass
class Captured:
    """An in-memory copy of one collection's state at WAL position ``seq``."""

    uid: int
    seq: int
    arrays: dict[str, np.ndarray]
    slots: np.ndarray
    ids: list[Any]
    partitions: np.ndarray
    payloads: list[tuple[int, Any]] | dict[int, Any]  # a dict: slot -> payload, any order
    count: int
    payload_indexes: dict[str, Any] = field(default_factory=dict)
    fresh: dict[str, np.ndarray] = field(default_factory=dict)  # the fresh segment's rows
    blobs: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)
    # more arrays of the collection (its named vectors), stored as blobs "x/<key>"
    extra: dict[str, np.ndarray] = field(default_factory=dict)


def digest(data: bytes | memoryview) -> str:
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def chunk_key(uid: int, gen: int, name: str, chunk: int) -> bytes:
    return u64(uid) + u64(gen) + name.encode() + b"\x00" + _U32.pack(chunk)


def _array_blob(arr: np.ndarray) -> tuple[memoryview, dict[str, Any]]:
    # a byte view, not a copy: only the chunks that changed are copied when written
    arr = np.ascontiguousarray(arr)
    view = memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else memoryview(b"")
    return view, {"kind": "array", "dtype": arr.dtype.str, "shape": list(arr.shape)}


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    if n < 1 << 16:
        return b"\xdc" + struct.pack(">H", n)
    return b"\xdd" + struct.pack(">I", n)


def pack_list(items: Any, n: int, chunk: int = PACK_CHUNK_ITEMS) -> bytes:
    """``pack(list(items))`` (the same bytes) for ``n`` items, built a slice at a time.

    ``items(start, stop)`` returns the slice as a list. One ``pack`` of a long
    list holds the GIL for its whole run and building every item at once
    wakes the garbage collector over all of them; slices keep both short,
    so searches in other threads run in between.
    """
    parts = [_array_header(n)]
    for start in range(0, n, chunk):
        part = items(start, min(n, start + chunk))
        parts.append(pack(part)[len(_array_header(len(part))) :])
    return b"".join(parts)


def _pack_payloads(payloads: list[tuple[int, Any]] | dict[int, Any]) -> bytes:
    """``pack([[slot, payload], ...])`` ascending by slot (stable chunks for incremental writes).

    Each pair is packed straight to bytes (``0x92`` + slot + payload): no
    list per pair, so a big collection does not wake the garbage collector
    (a full collection holds the GIL for a long time).
    """
    if isinstance(payloads, dict):
        slots = np.fromiter(payloads.keys(), np.int64, len(payloads))
        slots.sort()  # numpy sort: no long GIL hold for a Python sort of tuples
        order = slots.tolist()
        get = payloads.__getitem__
    else:
        pairs = dict(payloads)
        order = sorted(pairs)
        get = pairs.__getitem__
    packer = msgpack.Packer(use_bin_type=True, default=_default)
    pk = packer.pack
    parts = [_array_header(len(order))]
    parts.extend(b"\x92" + pk(slot) + pk(get(slot)) for slot in order)
    return b"".join(parts)


def encode(captured: Captured) -> dict[str, tuple[bytes | memoryview, dict[str, Any]]]:
    """Serialise a captured state into named blobs (runs outside any lock)."""
    blobs: dict[str, tuple[bytes | memoryview, dict[str, Any]]] = {}
    for name, arr in captured.arrays.items():
        blobs[f"index/{name}"] = _array_blob(arr)
    for name, arr in captured.fresh.items():
        blobs[f"fresh/{name}"] = _array_blob(arr)
    for name, arr in captured.extra.items():
        blobs[f"x/{name}"] = _array_blob(arr)
    blobs["idmap/slots"] = _array_blob(captured.slots)
    blobs["idmap/partitions"] = _array_blob(captured.partitions)
    ids = captured.ids
    blobs["idmap/ids"] = (pack_list(lambda a, b: ids[a:b], len(ids)), {"kind": "msgpack"})
    blobs["payload_indexes"] = (pack(captured.payload_indexes), {"kind": "msgpack"})
    blobs["payloads"] = (_pack_payloads(captured.payloads), {"kind": "msgpack"})
    return blobs


def write_blobs(
    store: Store,
    uid: int,
    gen: int,
    blobs: dict[str, tuple[bytes, dict[str, Any]]],
    previous: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write every blob's chunks (several transactions); return the manifest's blob table.

    Incremental: a chunk whose digest equals the same chunk of the
    ``previous`` manifest is not written again; the new manifest points at
    the generation that holds it (``chunk_gens``). Appends to big arrays (the
    vectors) therefore rewrite only their tail.
    """
    table: dict[str, Any] = {}
    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0
    old_blobs = (previous or {}).get("blobs") or {}
    old_gen = int((previous or {}).get("gen", -1))

    def flush() -> None:
        nonlocal pending, pending_bytes
        items = pending

        def put(txn: lmdb.Transaction) -> None:
            db = store.db("ckpt")
            for key, value in items:
                txn.put(key, value, db=db)

        if items:
            store.write(put)
        pending, pending_bytes = [], 0

    written = reused = 0
    for name, (data, meta) in blobs.items():
        view = memoryview(data)
        n_chunks = max(1, -(-len(data) // CHUNK_BYTES))
        old = old_blobs.get(name) or {}
        old_digests = old.get("chunk_digests") or []
        old_gens = old.get("chunk_gens") or [old_gen] * len(old_digests)
        digests, gens = [], []
        blob_written = 0
        for i in range(n_chunks):
            part = view[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]
            d = digest(part)
            digests.append(d)
            if i < len(old_digests) and old_digests[i] == d:
                gens.append(int(old_gens[i]))
                reused += 1
                continue
            gens.append(gen)
            pending.append((chunk_key(uid, gen, name, i), bytes(part)))
            pending_bytes += len(part)
            blob_written += len(part)
            written += 1
            if pending_bytes >= TXN_BYTES:
                flush()
        table[name] = {
            **meta,
            "size": len(data),
            "chunks": n_chunks,
            "chunk_digests": digests,
            "chunk_gens": gens,
            "written_bytes": blob_written,
            "blake2b": digest("".join(digests).encode()),
        }
    flush()
    log.debug("checkpoint of uid %d: %d chunks written, %d reused", uid, written, reused)
    return table


def referenced_keys(uid: int, manifest: dict[str, Any] | None) -> set[bytes]:
    """Every chunk key a manifest points at."""
    keys: set[bytes] = set()
    if not manifest or not manifest.get("blobs"):
        return keys
    gen = int(manifest["gen"])
    for name, meta in manifest["blobs"].items():
        gens = meta.get("chunk_gens") or [gen] * int(meta["chunks"])
        for i, g in enumerate(gens):
            keys.add(chunk_key(uid, int(g), name, i))
    return keys


def delete_unreferenced(txn: lmdb.Transaction, store: Store, uid: int, keep: set[bytes]) -> int:
    """Delete the chunks of collection ``uid`` that are not in ``keep``."""
    db = store.db("ckpt")
    prefix = u64(uid)
    cursor = txn.cursor(db=db)
    doomed = []
    if cursor.set_range(prefix):
        for key in cursor.iternext(keys=True, values=False):
            if not key.startswith(prefix):
                break
            if key not in keep:
                doomed.append(key)
    for key in doomed:
        txn.delete(key, db=db)
    return len(doomed)


def read_blob(
    txn: lmdb.Transaction, store: Store, uid: int, gen: int, name: str, meta: dict[str, Any]
) -> bytearray:
    """Concatenate a blob's chunks, verifying each chunk's digest and the blob's size."""
    db = store.db("ckpt")
    n_chunks = int(meta["chunks"])
    gens = meta.get("chunk_gens") or [gen] * n_chunks
    digests = meta.get("chunk_digests")
    where = f"checkpoint of collection uid {uid}: blob {name!r}"
    if len(gens) != n_chunks or (digests is not None and len(digests) != n_chunks):
        raise CorruptData(f"{where} has an inconsistent chunk table")
    out = bytearray()
    for i in range(n_chunks):
        part = txn.get(chunk_key(uid, int(gens[i]), name, i), db=db)
        if part is None:
            raise CorruptData(f"{where} is missing chunk {i}")
        if digests is not None and digest(part) != digests[i]:
            raise CorruptData(f"{where} fails its checksum (chunk {i})")
        out += part
    if len(out) != int(meta["size"]):
        raise CorruptData(f"{where} is truncated ({len(out)} of {meta['size']} bytes)")
    expected = digest("".join(digests).encode()) if digests is not None else digest(out)
    if expected != meta["blake2b"]:
        raise CorruptData(f"{where} fails its checksum")
    return out


def _decode_array(data: bytearray, meta: dict[str, Any], name: str) -> np.ndarray:
    try:
        arr = np.frombuffer(data, dtype=np.dtype(meta["dtype"]))
        return arr.reshape(meta["shape"])
    except (TypeError, ValueError) as exc:
        raise CorruptData(f"checkpoint blob {name!r} cannot be decoded: {exc}") from exc


@dataclass
class Loaded:
    """A checkpoint read back: index arrays, id map parts and payloads."""

    arrays: dict[str, np.ndarray]
    slots: np.ndarray
    ids: list[Any]
    partitions: np.ndarray
    payloads: list[tuple[int, Any]]
    payload_indexes: dict[str, Any] = field(default_factory=dict)
    fresh: dict[str, np.ndarray] | None = None  # None: a checkpoint without a fresh segment
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # Captured.extra, as saved


def load(store: Store, txn: lmdb.Transaction, uid: int, manifest: dict[str, Any]) -> Loaded | None:
    """Read and verify the checkpoint named by ``manifest`` (``None`` if it holds no data)."""
    blobs = manifest.get("blobs")
    if not blobs:
        return None
    gen = int(manifest["gen"])
    arrays: dict[str, np.ndarray] = {}
    fresh: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    parts: dict[str, Any] = {}
    for name, meta in blobs.items():
        data = read_blob(txn, store, uid, gen, name, meta)
        if meta["kind"] == "array":
            value: Any = _decode_array(data, meta, name)
        else:
            value = unpack(bytes(data))
        if name.startswith("index/"):
            arrays[name[len("index/") :]] = value
        elif name.startswith("fresh/"):
            fresh[name[len("fresh/") :]] = value
        elif name.startswith("x/"):
            extra[name[len("x/") :]] = value
        else:
            parts[name] = value
    try:
        return Loaded(
            arrays=arrays,
            slots=parts["idmap/slots"],
            ids=parts["idmap/ids"],
            partitions=parts["idmap/partitions"],
            payloads=[(int(s), p) for s, p in parts["payloads"]],
            payload_indexes=dict(parts.get("payload_indexes") or {}),
            fresh=fresh or None,
            extra=extra,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptData(f"checkpoint of collection uid {uid} is incomplete: {exc}") from exc


def read_manifests(store: Store, txn: lmdb.Transaction) -> dict[int, dict[str, Any]]:
    out = {}
    for key, value in txn.cursor(db=store.db("ckptman")):
        out[from_u64(key)] = unpack(value)
    return out


def delete_prefix(txn: lmdb.Transaction, db: Any, prefix: bytes, keep: bytes | None = None) -> int:
    """Delete every key starting with ``prefix`` (except those starting with ``keep``)."""
    cursor = txn.cursor(db=db)
    removed = 0
    if not cursor.set_range(prefix):
        return 0
    while True:
        key = cursor.key()
        if not key or not key.startswith(prefix):
            break
        if keep is not None and key.startswith(keep):
            if not cursor.next():
                break
            continue
        if not cursor.delete():
            break
        removed += 1
    return removed


def truncate_wal(txn: lmdb.Transaction, store: Store, upto: int) -> int:
    """Delete WAL records with sequence number <= ``upto``."""
    cursor = txn.cursor(db=store.db("wal"))
    removed = 0
    if not cursor.first():
        return 0
    while True:
        key = cursor.key()
        if not key or from_u64(key) > upto:
            break
        if not cursor.delete():
            break
        removed += 1
    return removed


def remove_orphans(store: Store) -> int:
    """Delete checkpoint chunks that no manifest references (left by a crash mid-checkpoint)."""

    def clean(txn: lmdb.Transaction) -> int:
        manifests = read_manifests(store, txn)
        keep: set[bytes] = set()
        for uid, manifest in manifests.items():
            keep |= referenced_keys(uid, manifest)
        cursor = txn.cursor(db=store.db("ckpt"))
        doomed = [k for k in cursor.iternext(keys=True, values=False) if k not in keep]
        for key in doomed:
            txn.delete(key, db=store.db("ckpt"))
        return len(doomed)

    removed = store.write(clean)
    if removed:
        log.info("removed %d orphaned checkpoint chunks", removed)
    return removed


def new_manifest(
    gen: int, captured: Captured, blob_table: dict[str, Any], started: float
) -> dict[str, Any]:
    return {
        "gen": gen,
        "data_seq": captured.seq,
        "covered_seq": captured.seq,
        "count": captured.count,
        "created_at": time.time(),
        "duration_s": time.perf_counter() - started,
        "blobs": blob_table,
    }


def live_ids(
    store: Store, txn: lmdb.Transaction, config: dict[str, Any], manifest: dict[str, Any] | None
) -> set[Any]:
    """The ids of a collection as of ``txn``, from its checkpoint's id map plus the WAL after it.

    Cheap compared with opening the database (no index is built); used by
    ``vdb info`` and offline snapshots, also against a running server.
    """
    uid = int(config["uid"])
    covered = int(config["created_seq"])
    ids: set[Any] = set()
    if manifest:
        covered = int(manifest["covered_seq"])
        blobs = manifest.get("blobs")
        if blobs:
            raw = read_blob(txn, store, uid, int(manifest["gen"]), "idmap/ids", blobs["idmap/ids"])
            ids = set(unpack(bytes(raw)))
    cursor = txn.cursor(db=store.db("wal"))
    if cursor.set_range(u64(covered + 1)):
        for _, value in cursor:
            record = unpack(value)
            if record.get("c") != uid or record.get("t") != "w":
                continue
            ids.difference_update(record["d"])
            ids.update(record["u"])
    return ids
