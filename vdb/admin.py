"""Administration subcommands: ``snapshot``, ``restore``, ``info``, ``load``.

``snapshot`` and ``info`` read the data directory through a read-only LMDB
transaction, so they also work while a server has the directory open.
``restore`` writes a new directory; ``load`` opens the database itself (it
refuses a directory that another process has open).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from vdb.progress import ProgressBar


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


# -- info --------------------------------------------------------------------------------


def directory_info(data_dir: str | Path) -> dict[str, Any]:
    """Collections (counts, dims, metric), WAL, checkpoints and disk use of a data directory.

    Reads one LMDB read transaction; the database need not be closed.
    """
    from vdb.wal import checkpoint as ckpt
    from vdb.wal.store import Store, unpack

    path = Path(data_dir)
    store = Store(path, readonly=True)
    try:
        with store.read() as txn:
            manifests = ckpt.read_manifests(store, txn)
            collections = {}
            for _, raw in txn.cursor(db=store.db("collections")):
                config = unpack(raw)
                uid = int(config["uid"])
                manifest = manifests.get(uid)
                collections[config["name"]] = {
                    "dim": config["dim"],
                    "metric": config["metric"],
                    "M": config["M"],
                    "ef_construction": config["ef_construction"],
                    "ef": config["ef"],
                    "count": len(ckpt.live_ids(store, txn, config, manifest)),
                    "last_checkpoint_at": manifest.get("created_at") if manifest else None,
                    "checkpoint_seq": manifest.get("covered_seq") if manifest else None,
                }
            wal_entries = txn.stat(store.db("wal"))["entries"]
            last_seq = store.last_seq(txn)
            offsets = txn.stat(store.db("offsets"))["entries"]
            dead = txn.stat(store.db("deadletters"))["entries"]
        checkpoints = [
            c["last_checkpoint_at"] for c in collections.values() if c["last_checkpoint_at"]
        ]
        disk = sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return {
            "path": str(path),
            "collections": dict(sorted(collections.items())),
            "last_seq": last_seq,
            "wal_records_pending": wal_entries,
            "source_offsets": offsets,
            "dead_letters": dead,
            "last_checkpoint_at": max(checkpoints) if checkpoints else None,
            "disk_bytes": disk,
        }
    finally:
        store.close()


def _fmt_time(ts: float | None) -> str:
    if not ts:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def cmd_info(args: argparse.Namespace) -> int:
    info = directory_info(args.data)
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(f"data directory   {info['path']}")
    print(f"disk use         {_human(info['disk_bytes'])}")
    print(f"last checkpoint  {_fmt_time(info['last_checkpoint_at'])}")
    print(
        f"WAL              {info['wal_records_pending']} records after checkpoints, last seq {info['last_seq']}"
    )
    print(f"dead letters     {info['dead_letters']}")
    cols = info["collections"]
    if not cols:
        print("collections      (none)")
        return 0
    print(f"collections      {len(cols)}")
    width = max(len(n) for n in cols)
    print(
        f"  {'name'.ljust(width)}  {'points':>10}  {'dim':>5}  metric  M    ef_c  ef    checkpoint"
    )
    for name, c in cols.items():
        print(
            f"  {name.ljust(width)}  {c['count']:>10}  {c['dim']:>5}  {c['metric']:<6}  "
            f"{c['M']:<4} {c['ef_construction']:<5} {c['ef']:<5} {_fmt_time(c['last_checkpoint_at'])}"
        )
    return 0


# -- snapshot / restore ------------------------------------------------------------------------


def cmd_snapshot(args: argparse.Namespace) -> int:
    from vdb.wal.snapshot import snapshot_directory

    with ProgressBar("snapshot", unit="B") as bar:
        manifest = snapshot_directory(args.data, args.out, progress=bar)
    counts = (
        ", ".join(f"{n}: {c['count']}" for n, c in manifest["collections"].items())
        or "no collections"
    )
    print(
        f"wrote {args.out} ({_human(manifest['data_bytes'])}; {counts}; sha256 {manifest['data_sha256'][:16]}...)"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from vdb.wal.snapshot import restore

    with ProgressBar("restore", unit="B") as bar:
        manifest = restore(args.snapshot, args.data, overwrite=args.force, progress=bar)
    counts = (
        ", ".join(f"{n}: {c['count']}" for n, c in manifest["collections"].items())
        or "no collections"
    )
    print(f"restored {args.snapshot} into {args.data} ({counts}); checksums verified")
    return 0


# -- load ----------------------------------------------------------------------------------------


def _read_ids(path: str | None, n: int, int_ids: bool, start: int) -> list[Any]:
    if path is None:
        return list(range(start, start + n))
    ids: list[Any] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(ids) == n:
                break
            value = line.rstrip("\n").split("\t", 1)[0]
            ids.append(int(value) if int_ids else value)
    if len(ids) < n:
        from vdb.errors import InvalidInput

        raise InvalidInput(f"{path} has {len(ids)} ids for {n} vectors")
    return ids


def _read_texts(path: str, n: int) -> list[str | None]:
    out: list[str | None] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(out) == n:
                break
            _, tab, text = line.rstrip("\n").partition("\t")
            out.append(text if tab else None)
    out.extend([None] * (n - len(out)))
    return out


def _read_payloads(path: str | None, n: int) -> list[Any] | None:
    if path is None:
        return None
    out: list[Any] = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if len(out) == n:
                break
            line = line.strip()
            try:
                out.append(json.loads(line) if line else None)
            except ValueError as exc:
                from vdb.errors import InvalidInput

                raise InvalidInput(f"{path}:{i + 1}: not JSON: {exc}") from None
    out.extend([None] * (n - len(out)))
    return out


def cmd_load(args: argparse.Namespace) -> int:
    import vdb

    vectors = np.load(args.vectors, mmap_mode="r")
    if vectors.ndim != 2:
        from vdb.errors import InvalidInput

        raise InvalidInput(f"{args.vectors}: expected a 2-D array, got shape {vectors.shape}")
    n = vectors.shape[0] if args.limit is None else min(args.limit, vectors.shape[0])
    ids = _read_ids(args.ids, n, args.int_ids, args.start_id)
    payloads = _read_payloads(args.payloads, n)
    if args.text_field:
        if args.ids is None:
            from vdb.errors import InvalidInput

            raise InvalidInput("--text-field needs --ids (the text after the TAB)")
        texts = _read_texts(args.ids, n)
        payloads = [
            {**(p or {}), args.text_field: t} if t is not None else p
            for p, t in zip(payloads or [None] * n, texts, strict=True)
        ]
    with vdb.open(args.data) as db:
        if db.has_collection(args.collection):
            col = db.collection(args.collection)
        else:
            col = db.create_collection(
                args.collection,
                dim=int(vectors.shape[1]),
                metric=args.metric,
                M=args.M,
                ef_construction=args.ef_construction,
                ef=args.ef,
            )
        with ProgressBar(f"load {args.collection}", n, unit="pt") as bar:
            for start in range(0, n, args.batch_size):
                stop = min(n, start + args.batch_size)
                col.upsert(
                    ids[start:stop],
                    np.asarray(vectors[start:stop], dtype=np.float32),
                    None if payloads is None else payloads[start:stop],
                )
                bar(stop)
        print(f"loaded {n} points into {args.collection!r} (now {col.count()} points)")
    return 0


# -- wiring ---------------------------------------------------------------------------------------


def add_subcommands(subparsers: Any) -> None:
    """Add ``snapshot``, ``restore``, ``info`` and ``load`` to the ``python -m vdb`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser(
        "snapshot",
        help="write a consistent snapshot of a data directory to one file (hot: writes may continue)",
        description=(
            "Copy the database in DIR into the single file OUT: a compacted copy of the LMDB\n"
            "environment taken from one read transaction (consistent even while a server is\n"
            "writing), with a manifest (format version, collections, point counts) and SHA-256\n"
            "checksums. Restore it with `python -m vdb restore OUT --data NEWDIR`."
        ),
        formatter_class=fmt,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="the data directory to snapshot")
    p.add_argument("out", metavar="OUT", help="the snapshot file to write (replaced atomically)")
    p.set_defaults(func=cmd_snapshot)

    p = subparsers.add_parser(
        "restore",
        help="restore a snapshot file into a new data directory (checksums verified first)",
        description=(
            "Verify SNAPSHOT (manifest and data checksums) and write it into DIR. DIR must be\n"
            "empty or missing unless --force is given. A corrupt or truncated snapshot is\n"
            "refused and DIR is left untouched. Open the result with vdb.open(DIR) or serve it."
        ),
        formatter_class=fmt,
    )
    p.add_argument("snapshot", metavar="SNAPSHOT", help="the snapshot file")
    p.add_argument("--data", required=True, metavar="DIR", help="the data directory to create")
    p.add_argument("--force", action="store_true", help="replace the database in a non-empty DIR")
    p.set_defaults(func=cmd_restore)

    p = subparsers.add_parser(
        "info",
        help="show collections, point counts, dimensions, disk use and the last checkpoint",
        description=(
            "Describe the database in DIR without modifying it (works while a server has it\n"
            "open): collections with their point counts, dimensions, metric and HNSW settings,\n"
            "WAL records not yet covered by a checkpoint, dead letters, disk use."
        ),
        formatter_class=fmt,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="the data directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = subparsers.add_parser(
        "load",
        help="bulk-load vectors from a .npy file (with optional ids and JSONL payloads)",
        description=(
            "Upsert the rows of VECTORS (a 2-D .npy array) into COLLECTION of the database in\n"
            "DIR, in durable batches, creating the collection if needed. Ids come from --ids (one\n"
            "per line; the text before a TAB is used, so `name<TAB>text` files work) or are\n"
            "row numbers from --start-id; payloads from --payloads (one JSON object per line).\n"
            "The directory must not be open in another process (stop the server, or use its API)."
        ),
        formatter_class=fmt,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="the data directory")
    p.add_argument("--collection", required=True, help="collection name (created if missing)")
    p.add_argument("--vectors", required=True, metavar="NPY", help="float vectors, shape [n, dim]")
    p.add_argument("--ids", metavar="FILE", help="ids, one per line (default: row numbers)")
    p.add_argument(
        "--int-ids", action="store_true", help="parse the ids in --ids as unsigned integers"
    )
    p.add_argument(
        "--start-id", type=int, default=0, help="first id when ids are row numbers (default 0)"
    )
    p.add_argument("--payloads", metavar="JSONL", help="payloads, one JSON object per line")
    p.add_argument(
        "--text-field",
        metavar="KEY",
        help="store the text after the TAB of each --ids line in the payload under KEY",
    )
    p.add_argument(
        "--metric",
        default="cosine",
        choices=["cosine", "ip", "l2"],
        help="metric of a new collection",
    )
    p.add_argument("--M", type=int, default=16, help="HNSW M of a new collection (default 16)")
    p.add_argument(
        "--ef-construction", type=int, default=128, help="HNSW ef_construction (default 128)"
    )
    p.add_argument(
        "--ef", type=int, default=64, help="default search ef of a new collection (default 64)"
    )
    p.add_argument(
        "--batch-size", type=int, default=2000, help="points per durable batch (default 2000)"
    )
    p.add_argument("--limit", type=int, help="load only the first N rows")
    p.set_defaults(func=cmd_load)
