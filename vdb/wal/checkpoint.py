"""Checkpoints: a collection's index arrays, id map and payloads in LMDB.

A checkpoint is a set of named blobs (each index array, the fresh rows, the
id map and the payloads in parts of ``2**part_shift`` slots, the explicit
payload indexes), each split into chunks in the ``ckpt`` table under the key
``uid | generation | name | chunk``, and a manifest in ``ckptman`` that
names the generation, the WAL position the blobs reflect, and for every
blob its dtype, shape, size and chunk digests (xxh3-128; older checkpoints
carry BLAKE2b and still load).

A checkpoint costs what changed: a chunk equal to the previous one is not
written again (the manifest points at the generation that holds it), an
array's chunks that the caller knows unchanged are not even copied or
hashed (:class:`PartialArray`), and id-map and payload parts that were not
touched are carried over from the previous manifest as they are. Chunks are written in
several transactions (so a big checkpoint does not hold LMDB's writer lock
for long); the checkpoint becomes current only when the manifest is written,
in the same transaction that removes the previous generation and the WAL
records it covers. A crash in between leaves unreferenced chunks, which
:func:`remove_orphans` deletes on the next open (an open that finds as many chunks as
the manifests reference, e.g. after a clean close, only counts them).

Loading verifies every digest and refuses a corrupt or truncated blob with
:class:`vdb.errors.CorruptData`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import lmdb
import numpy as np
import xxhash

from vdb.errors import CorruptData
from vdb.wal.store import Store, from_u64, pack, u64, unpack

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20
TXN_BYTES = 32 << 20
_PARALLEL_COPY_BYTES = 64 << 20  # array blobs at least this large are copied by two threads
HASH = "xxh3_128"  # chunk digests: xxh3 reads GB/s (BLAKE2b ran at 0.1-0.2 GB/s here)
_U32 = struct.Struct(">I")
MISSING = object()  # a payload part's slot without a payload
# blobs kept in parts: a checkpoint writes the parts that changed and carries the others
PART_PREFIXES = ("idmap/part/", "payloads/part/", "x/pi/part/", "x/pi/words/")


@dataclass
class PartialArray:
    """An array blob of which only some ``CHUNK_BYTES`` chunks changed since the previous
    checkpoint: ``chunks`` holds copies of those; every other chunk is the previous one."""

    dtype: str
    shape: list[int]
    nbytes: int
    chunks: dict[int, bytes | memoryview]


@dataclass
class Captured:
    """An in-memory copy of one collection's state at WAL position ``seq``.

    Only what changed since the previous checkpoint is copied: ``id_parts`` and
    ``payload_parts`` hold the parts of ``2**PART_SHIFT`` slots that were touched (the
    others are carried from the previous manifest), graph arrays may be
    :class:`PartialArray`.
    """

    uid: int
    seq: int
    arrays: dict[str, np.ndarray | PartialArray]
    count: int
    # part -> (ids per slot, None when free; live flags; partitions)
    id_parts: dict[int, tuple[list[Any], np.ndarray, np.ndarray]] = field(default_factory=dict)
    # part -> payload per slot of the part (MISSING: none)
    payload_parts: dict[int, list[Any]] = field(default_factory=dict)
    payload_indexes: dict[str, Any] = field(default_factory=dict)
    # the fresh segment's rows, or an object whose ``arrays()`` gathers them (outside locks)
    fresh: Any = field(default_factory=dict)
    part_shift: int = 12
    # more arrays of the collection (its named vectors), stored as blobs "x/<key>"; may be
    # :class:`PartialArray` (a named vector's graph)
    extra: dict[str, np.ndarray | PartialArray] = field(default_factory=dict)


def digest(data: bytes | memoryview, kind: str = HASH) -> str:
    if kind == HASH:
        return xxhash.xxh3_128_hexdigest(data)
    if kind == "blake2b":  # checkpoints written before xxh3
        return hashlib.blake2b(data, digest_size=20).hexdigest()
    raise CorruptData(f"unknown checkpoint digest {kind!r}")


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


def partial_array(arr: np.ndarray, rows: np.ndarray, old_chunks: int) -> PartialArray:
    """The chunks of ``arr`` that hold one of ``rows`` or lie at or past chunk
    ``old_chunks - 1`` (the previous checkpoint's last chunk, and appends), copied."""
    arr = np.ascontiguousarray(arr)
    row_bytes = arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64))
    nbytes = arr.nbytes
    n_chunks = max(1, -(-nbytes // CHUNK_BYTES))
    rows = np.asarray(rows, np.int64)
    rows = rows[(rows >= 0) & (rows < arr.shape[0])]
    touched = np.concatenate(
        [rows * row_bytes // CHUNK_BYTES, ((rows + 1) * row_bytes - 1) // CHUNK_BYTES]
    )
    dirty = set(np.unique(touched).tolist()) | set(range(max(0, old_chunks - 1), n_chunks))
    flat = arr.reshape(-1).view(np.uint8) if nbytes else np.zeros(0, np.uint8)
    chunks = {  # numpy copies (the GIL is released while copying), handed on as views
        i: memoryview(flat[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES].copy())
        for i in sorted(dirty)
        if i < n_chunks
    }
    return PartialArray(arr.dtype.str, list(arr.shape), nbytes, chunks)


def part_name(family: str, part: int) -> str:
    return f"{family}/part/{part:08d}"


def _encode_id_part(ids: list[Any], live: np.ndarray, partitions: np.ndarray) -> bytes:
    """``pack([live bytes, partitions int32 bytes, ids])`` of one part: the ids of its live
    slots in slot order, as uint64 bytes when all are integers (decoded with numpy, no
    object per id until the map is built), else as a list."""
    live = np.ascontiguousarray(live, np.bool_)
    held = list(itertools.compress(ids, live))
    if all(type(i) is int for i in held):
        encoded: Any = np.array(held, np.uint64).tobytes()
    else:
        encoded = held
    return pack([live.tobytes(), np.ascontiguousarray(partitions, np.int32).tobytes(), encoded])


def decode_id_part(value: Any) -> tuple[np.ndarray, np.ndarray | list[Any], np.ndarray]:
    """``(live slot offsets in the part, their ids, their partitions)`` of an id part."""
    live_bytes, partition_bytes, encoded = value
    where = np.flatnonzero(np.frombuffer(live_bytes, np.bool_))
    held = np.frombuffer(encoded, np.uint64) if isinstance(encoded, bytes) else list(encoded)
    if len(held) != len(where):
        raise ValueError(f"an id part holds {len(held)} ids for {len(where)} live slots")
    return where, held, np.frombuffer(partition_bytes, np.int32)[where]


def _encode_payload_part(lo: int, values: list[Any]) -> bytes:
    """``pack([slots int32 bytes, [payload, ...]])`` of the part's slots that hold a payload
    (ascending): the slots decode with ``np.frombuffer``, the payloads in one ``unpack``."""
    present = np.flatnonzero(np.fromiter((v is not MISSING for v in values), bool, len(values)))
    slots = (present + lo).astype(np.int32)
    return pack([slots.tobytes(), [values[i] for i in present.tolist()]])


Blob = tuple[bytes | memoryview, dict[str, Any]] | PartialArray


def encode(captured: Captured) -> dict[str, Blob]:
    """Serialise a captured state into named blobs (runs outside any lock).

    Parts that were not captured are not named: ``write_blobs`` carries them over
    from the previous manifest (``carry=PART_PREFIXES``).
    """
    blobs: dict[str, Blob] = {}
    for name, arr in captured.arrays.items():
        blobs[f"index/{name}"] = arr if isinstance(arr, PartialArray) else _array_blob(arr)
    fresh = captured.fresh
    if not isinstance(fresh, dict):  # rows referenced at the capture, gathered now
        fresh = fresh.arrays()
    for name, arr in fresh.items():
        blobs[f"fresh/{name}"] = _array_blob(arr)
    for name, arr in captured.extra.items():
        blobs[f"x/{name}"] = arr if isinstance(arr, PartialArray) else _array_blob(arr)
    size = 1 << captured.part_shift
    for part, (ids, live, partitions) in sorted(captured.id_parts.items()):
        data = _encode_id_part(ids, live, partitions)
        blobs[part_name("idmap", part)] = (data, {"kind": "idpart", "first": part * size})
    for part, values in sorted(captured.payload_parts.items()):
        data = _encode_payload_part(part * size, values)
        blobs[part_name("payloads", part)] = (data, {"kind": "msgpack"})
    blobs["payload_indexes"] = (pack(captured.payload_indexes), {"kind": "msgpack"})
    return blobs


def write_blobs(
    store: Store,
    uid: int,
    gen: int,
    blobs: dict[str, Blob],
    previous: dict[str, Any] | None = None,
    carry: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Write every blob's chunks (several transactions); return the manifest's blob table.

    Incremental: a chunk whose digest equals the same chunk of the
    ``previous`` manifest is not written again; the new manifest points at
    the generation that holds it (``chunk_gens``). A :class:`PartialArray`
    gives only its changed chunks (the rest must be in ``previous``), so an
    append to a big array is neither copied, hashed nor written beyond its
    tail. Blobs of ``previous`` whose names start with one of ``carry`` and
    that ``blobs`` does not name are kept as they are (unchanged parts).
    """
    table: dict[str, Any] = {}
    pending: list[tuple[bytes, bytes | memoryview]] = []
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
    for name, blob in blobs.items():
        old = old_blobs.get(name) or {}
        same_hash = old.get("hash", "blake2b") == HASH
        old_digests = (old.get("chunk_digests") or []) if same_hash else []
        old_gens = old.get("chunk_gens") or [old_gen] * len(old_digests)
        if isinstance(blob, PartialArray):
            size = blob.nbytes
            meta: dict[str, Any] = {"kind": "array", "dtype": blob.dtype, "shape": blob.shape}
            n_chunks = max(1, -(-size // CHUNK_BYTES))

            def chunk(i: int, blob: PartialArray = blob) -> bytes | memoryview | None:
                return blob.chunks.get(i)
        else:
            data, meta = blob
            view = memoryview(data)
            size = len(data)
            n_chunks = max(1, -(-size // CHUNK_BYTES))

            def chunk(i: int, view: memoryview = view) -> bytes | memoryview | None:
                return view[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]

        digests, gens = [], []
        blob_written = 0
        for i in range(n_chunks):
            part = chunk(i)
            if part is None:  # unchanged since the previous checkpoint
                if i >= len(old_digests):
                    raise ValueError(f"blob {name!r}: chunk {i} is neither given nor stored")
                digests.append(old_digests[i])
                gens.append(int(old_gens[i]))
                reused += 1
                continue
            d = digest(part)
            digests.append(d)
            if i < len(old_digests) and old_digests[i] == d:
                gens.append(int(old_gens[i]))
                reused += 1
                continue
            gens.append(gen)
            # no copy: the parts are views of captured copies (LMDB copies them into the map)
            pending.append((chunk_key(uid, gen, name, i), part))
            pending_bytes += len(part)
            blob_written += len(part)
            written += 1
            if pending_bytes >= TXN_BYTES:
                flush()
        table[name] = {
            **meta,
            "size": size,
            "chunks": n_chunks,
            "chunk_digests": digests,
            "chunk_gens": gens,
            "written_bytes": blob_written,
            "hash": HASH,
            "digest": digest("".join(digests).encode()),
        }
    for name, meta in old_blobs.items():
        if name not in table and name.startswith(carry) and carry:
            gens = meta.get("chunk_gens") or [old_gen] * int(meta["chunks"])
            table[name] = {**meta, "chunk_gens": [int(g) for g in gens], "written_bytes": 0}
            reused += len(gens)
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


def _chunks(
    txn: lmdb.Transaction, store: Store, uid: int, gen: int, name: str, meta: dict[str, Any]
) -> Iterator[bytes | memoryview]:
    """A blob's chunks in order, each verified against its digest, then the blob's size
    and digest."""
    db = store.db("ckpt")
    n_chunks = int(meta["chunks"])
    gens = meta.get("chunk_gens") or [gen] * n_chunks
    digests = meta.get("chunk_digests")
    kind = meta.get("hash", "blake2b")
    where = f"checkpoint of collection uid {uid}: blob {name!r}"
    if len(gens) != n_chunks or (digests is not None and len(digests) != n_chunks):
        raise CorruptData(f"{where} has an inconsistent chunk table")
    whole = None if digests is not None else hashlib.blake2b(digest_size=20)
    total = 0
    for i in range(n_chunks):
        part = txn.get(chunk_key(uid, int(gens[i]), name, i), db=db)
        if part is None:
            raise CorruptData(f"{where} is missing chunk {i}")
        if digests is not None and digest(part, kind) != digests[i]:
            raise CorruptData(f"{where} fails its checksum (chunk {i})")
        if whole is not None:
            whole.update(part)
        total += len(part)
        yield part
    if total != int(meta["size"]):
        raise CorruptData(f"{where} is truncated ({total} of {meta['size']} bytes)")
    expected = digest("".join(digests).encode(), kind) if digests is not None else whole.hexdigest()
    if expected != meta.get("digest", meta.get("blake2b")):
        raise CorruptData(f"{where} fails its checksum")


def read_blob(
    txn: lmdb.Transaction, store: Store, uid: int, gen: int, name: str, meta: dict[str, Any]
) -> bytearray:
    """Concatenate a blob's chunks, verifying each chunk's digest and the blob's size."""
    out = bytearray()
    for part in _chunks(txn, store, uid, gen, name, meta):
        out += part
    return out


def read_array(
    txn: lmdb.Transaction, store: Store, uid: int, gen: int, name: str, meta: dict[str, Any]
) -> np.ndarray:
    """An array blob read straight into one new array (one copy, no per-element decoding).

    The chunks are verified first (``txn`` must hand out buffers into the map or bytes),
    then copied; a large blob is copied by two threads (numpy's copy releases the GIL, and
    first touching the new pages is most of the cost)."""
    try:
        dtype = np.dtype(meta["dtype"])
        shape = [int(s) for s in meta["shape"]]
        out = np.empty(shape, dtype)
    except (TypeError, ValueError, KeyError) as exc:
        raise CorruptData(f"checkpoint blob {name!r} cannot be decoded: {exc}") from exc
    flat = out.reshape(-1).view(np.uint8)
    pieces: list[tuple[int, bytes | memoryview]] = []
    pos = 0
    for part in _chunks(txn, store, uid, gen, name, meta):
        if pos + len(part) > flat.size:
            raise CorruptData(f"checkpoint blob {name!r} is longer than its shape")
        pieces.append((pos, part))
        pos += len(part)
    if pos != flat.size:
        raise CorruptData(f"checkpoint blob {name!r} does not fill its shape {shape}")

    def copy(share: list[tuple[int, bytes | memoryview]]) -> None:
        for at, part in share:
            flat[at : at + len(part)] = np.frombuffer(part, np.uint8)

    if pos >= _PARALLEL_COPY_BYTES:
        helper = threading.Thread(target=copy, args=(pieces[1::2],), name="vdb-load-copy")
        helper.start()
        try:
            copy(pieces[0::2])
        finally:
            helper.join()
    else:
        copy(pieces)
    return out


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
    slots: list[np.ndarray] = []
    ids: list[np.ndarray | list[Any]] = []
    partitions: list[np.ndarray] = []
    payloads: list[tuple[int, Any]] = []
    try:
        for name in sorted(blobs):
            meta = blobs[name]
            if meta["kind"] == "array":
                value: Any = read_array(txn, store, uid, gen, name, meta)
            else:
                value = unpack(bytes(read_blob(txn, store, uid, gen, name, meta)))
            if name.startswith("index/"):
                arrays[name[len("index/") :]] = value
            elif name.startswith("fresh/"):
                fresh[name[len("fresh/") :]] = value
            elif name.startswith("x/"):
                extra[name[len("x/") :]] = value
            elif name.startswith("idmap/part/"):
                where, held, part_partitions = decode_id_part(value)
                slots.append(where + int(meta["first"]))
                ids.append(held)
                partitions.append(part_partitions)
            elif name.startswith("payloads/part/"):
                slot_bytes, values = value
                payloads.extend(
                    zip(np.frombuffer(slot_bytes, np.int32).tolist(), values, strict=True)
                )
            else:
                parts[name] = value
        if all(isinstance(held, np.ndarray) for held in ids):
            all_ids: np.ndarray | list[Any] = np.concatenate(ids) if ids else np.zeros(0, np.uint64)
        else:
            all_ids = [
                i for held in ids for i in (held.tolist() if isinstance(held, np.ndarray) else held)
            ]
        if "idmap/slots" in parts:  # a checkpoint written before the id map had parts
            slots = [np.asarray(parts["idmap/slots"], np.int64)]
            all_ids = list(parts["idmap/ids"])
            partitions = [np.asarray(parts["idmap/partitions"], np.int32)]
            payloads = [(int(s), p) for s, p in parts["payloads"]]
        return Loaded(
            arrays=arrays,
            slots=np.concatenate(slots).astype(np.int64) if slots else np.zeros(0, np.int64),
            ids=all_ids,
            partitions=np.concatenate(partitions) if partitions else np.zeros(0, np.int32),
            payloads=payloads,
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


def _all_referenced(store: Store, txn: lmdb.Transaction) -> set[bytes]:
    keep: set[bytes] = set()
    for uid, manifest in read_manifests(store, txn).items():
        keep |= referenced_keys(uid, manifest)
    return keep


def may_have_orphans(store: Store) -> bool:
    """Whether the ``ckpt`` table holds more chunks than the manifests reference: the table's
    entry count (LMDB keeps it) against the keys the manifests name, no scan of the
    chunks. Equal counts mean no
    orphan, unless a referenced chunk is missing too, which loading that checkpoint
    refuses anyway (``CorruptData``)."""
    with store.read() as txn:
        return txn.stat(store.db("ckpt"))["entries"] != len(_all_referenced(store, txn))


def remove_orphans(store: Store) -> int:
    """Delete checkpoint chunks that no manifest references (left by a crash mid-checkpoint).

    Costs a count when there are none (:func:`may_have_orphans`), so an open after a clean
    close does not scan the chunks."""
    if not may_have_orphans(store):
        return 0

    def clean(txn: lmdb.Transaction) -> int:
        keep = _all_referenced(store, txn)
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
        "parts": captured.part_shift,
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
        blobs = manifest.get("blobs") or {}
        gen = int(manifest["gen"])
        for name in sorted(blobs):
            if name.startswith("idmap/part/"):
                value = unpack(bytes(read_blob(txn, store, uid, gen, name, blobs[name])))
                held = decode_id_part(value)[1]
                ids.update(held.tolist() if isinstance(held, np.ndarray) else held)
            elif name == "idmap/ids":  # a checkpoint written before the id map had parts
                ids = set(unpack(bytes(read_blob(txn, store, uid, gen, name, blobs[name]))))
    cursor = txn.cursor(db=store.db("wal"))
    if cursor.set_range(u64(covered + 1)):
        for _, value in cursor:
            record = unpack(value)
            if record.get("c") != uid or record.get("t") != "w":
                continue
            ids.difference_update(record["d"])
            ids.update(record["u"])
    return ids
