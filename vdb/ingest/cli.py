"""Ingest on the command line: ``serve --ingest ...`` flags and ``python -m vdb dead-letters``.

One ingest spec per ``--ingest KIND``; the flags after it (until the next
``--ingest``) configure that spec, flags before the first ``--ingest`` are
defaults for every spec::

    python -m vdb serve --data DIR --kafka-bootstrap localhost:9092 --kafka-group vdb \\
        --ingest kafka --kafka-topic docs --collection docs --format json \\
        --ingest kafka --kafka-topic images --collection images --format float32

Or a config file (JSON, or TOML with ``[[ingest]]`` tables)::

    {"ingest": [{"kind": "kafka", "bootstrap": "localhost:9092", "topics": ["docs"],
                 "group": "vdb", "collection": "docs", "format": "json"}]}

Keys of a spec: ``kind``, ``collection``, ``format``, ``key_format``,
``bootstrap``, ``topics``, ``group``, ``name``, ``isolation``,
``offset_reset``, ``dead_letter_topic``, ``kafka_options`` (a table of
KafkaConsumer settings, or ``--kafka-option KEY=VALUE``) (kafka); ``path``, ``follow``
(file); ``batch_max``, ``max_wait_ms``, ``latency_target_ms``,
``max_queued_records``, ``max_rate`` (pipeline); ``dim``, ``metric`` and
``embedder`` to create the collection when it does not exist.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from vdb.errors import InvalidInput

_SPEC_KEYS = {
    "kind",
    "collection",
    "format",
    "key_format",
    "bootstrap",
    "topics",
    "group",
    "name",
    "isolation",
    "offset_reset",
    "dead_letter_topic",
    "path",
    "follow",
    "batch_max",
    "max_wait_ms",
    "latency_target_ms",
    "max_queued_records",
    "max_rate",
    "dim",
    "metric",
    "embedder",
    "kafka_options",
}
_PIPELINE_KEYS = (
    "format",
    "key_format",
    "batch_max",
    "max_wait_ms",
    "latency_target_ms",
    "max_queued_records",
    "max_rate",
)


class _NewSpec(argparse.Action):
    """``--ingest KIND``: start a new spec."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        specs = list(getattr(namespace, "ingest_specs", None) or [])
        specs.append({"kind": values})
        namespace.ingest_specs = specs


class _SpecValue(argparse.Action):
    """A per-spec flag: goes to the latest ``--ingest`` spec, or to the defaults before any."""

    def __init__(self, *args: Any, key: str, append: bool = False, **kwargs: Any) -> None:
        self.key = key
        self.append = append
        super().__init__(*args, **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: Any = None) -> None:
        specs = getattr(namespace, "ingest_specs", None) or []
        if specs:
            target = specs[-1]
        else:
            target = dict(getattr(namespace, "ingest_defaults", None) or {})
            namespace.ingest_defaults = target
        if self.append:
            items = [v.strip() for v in str(values).split(",") if v.strip()]
            target[self.key] = [*target.get(self.key, []), *items]
        else:
            target[self.key] = values


def add_ingest_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ingest flags to ``serve``."""
    parser.set_defaults(ingest_specs=None, ingest_defaults=None)
    g = parser.add_argument_group(
        "ingest",
        "Tail streams into collections. Each --ingest KIND starts a spec; the flags after it "
        "configure that spec; flags before the first --ingest are defaults for all specs.",
    )
    g.add_argument(
        "--ingest", action=_NewSpec, metavar="KIND", help="start an ingest spec (kafka, file)"
    )
    g.add_argument("--ingest-config", metavar="FILE", help="ingest specs from a JSON or TOML file")

    def spec(flag: str, key: str, append: bool = False, **kw: Any) -> None:
        g.add_argument(
            flag,
            action=_SpecValue,
            key=key,
            append=append,
            dest=f"_spec_{key}",
            default=argparse.SUPPRESS,
            **kw,
        )

    spec("--collection", "collection", metavar="NAME", help="collection the spec writes into")
    spec(
        "--format",
        "format",
        metavar="F",
        help="message format: json, msgpack, float32, text (default json)",
    )
    spec(
        "--key-format",
        "key_format",
        metavar="K",
        help="message key -> id: auto, str, int, uint64be",
    )
    spec(
        "--kafka-bootstrap",
        "bootstrap",
        metavar="HOST:PORT",
        help="Kafka bootstrap servers (comma separated)",
    )
    spec(
        "--kafka-topic",
        "topics",
        append=True,
        metavar="TOPIC",
        help="topic to read (repeatable, or comma separated)",
    )
    spec(
        "--kafka-group",
        "group",
        metavar="GROUP",
        help="consumer group: members split the partitions",
    )
    spec(
        "--kafka-isolation",
        "isolation",
        metavar="LEVEL",
        help="read_uncommitted (default) or read_committed",
    )
    spec(
        "--kafka-offset-reset",
        "offset_reset",
        metavar="WHERE",
        help="where a partition with no stored offset starts: earliest (default) or latest",
    )
    spec(
        "--dead-letter-topic",
        "dead_letter_topic",
        metavar="TOPIC",
        help="also copy dead letters to this topic",
    )
    spec(
        "--kafka-option",
        "kafka_options",
        append=True,
        metavar="KEY=VALUE",
        help="a KafkaConsumer setting, e.g. session_timeout_ms=6000 (repeatable)",
    )
    spec(
        "--ingest-name",
        "name",
        metavar="NAME",
        help="name keying the stored offsets (default kafka:GROUP)",
    )
    spec(
        "--ingest-file", "path", metavar="PATH", help="file source: JSON-lines file, '-' for stdin"
    )
    spec(
        "--ingest-follow",
        "follow",
        nargs=0,
        metavar="",
        help="file source: keep reading appended lines",
    )
    spec("--batch-max", "batch_max", type=int, metavar="N", help="largest batch (default 1024)")
    spec(
        "--max-wait-ms",
        "max_wait_ms",
        type=float,
        metavar="MS",
        help="cut a batch this old (default 20)",
    )
    spec(
        "--latency-target-ms",
        "latency_target_ms",
        type=float,
        metavar="MS",
        help="batch apply time the size adapts to (default 100)",
    )
    spec(
        "--max-queued-records",
        "max_queued_records",
        type=int,
        metavar="N",
        help="queue bound before partitions pause (default 4 x batch max)",
    )
    spec("--max-rate", "max_rate", type=float, metavar="N", help="records/s ceiling for the spec")
    spec(
        "--create-dim",
        "dim",
        type=int,
        metavar="D",
        help="create the collection with this dimension if missing",
    )
    spec(
        "--create-metric",
        "metric",
        metavar="M",
        help="metric of a created collection (default cosine)",
    )
    spec(
        "--create-embedder",
        "embedder",
        metavar="MODEL",
        help="create the collection with this embedder if missing (e.g. minilm; for --format text)",
    )


def specs_from_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The ingest specs named by ``args`` (config file first, then flags), defaults merged."""
    defaults = dict(getattr(args, "ingest_defaults", None) or {})
    specs: list[dict[str, Any]] = []
    config = getattr(args, "ingest_config", None)
    if config:
        specs.extend(load_config(config))
    for raw in getattr(args, "ingest_specs", None) or []:
        merged = {**defaults, **raw}
        if "follow" in merged:
            merged["follow"] = True
        specs.append(merged)
    return [_check_spec(s, i) for i, s in enumerate(specs)]


def load_config(path: str | Path) -> list[dict[str, Any]]:
    """Read ``{"ingest": [spec, ...]}`` from a JSON or TOML file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"ingest config {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise InvalidInput(f"ingest config {path}: {exc}") from None
    specs = data.get("ingest") if isinstance(data, dict) else data
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise InvalidInput(f"ingest config {path}: expected {{'ingest': [ {{...}}, ... ]}}")
    out = []
    for s in specs:
        s = dict(s)
        if isinstance(s.get("topics"), str):
            s["topics"] = [t.strip() for t in s["topics"].split(",") if t.strip()]
        if "topic" in s:
            s["topics"] = [*s.get("topics", []), s.pop("topic")]
        out.append(s)
    return out


def _check_spec(spec: dict[str, Any], i: int) -> dict[str, Any]:
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise InvalidInput(f"ingest spec {i + 1}: unknown key(s) {', '.join(sorted(unknown))}")
    if not spec.get("kind"):
        raise InvalidInput(f"ingest spec {i + 1}: no kind (use --ingest kafka|file)")
    if not spec.get("collection"):
        raise InvalidInput(f"ingest spec {i + 1}: no --collection")
    if spec["kind"] == "kafka":
        if not spec.get("bootstrap"):
            raise InvalidInput(f"ingest spec {i + 1}: kafka needs --kafka-bootstrap")
        if not spec.get("topics"):
            raise InvalidInput(f"ingest spec {i + 1}: kafka needs --kafka-topic")
    return spec


def source_for(spec: dict[str, Any]) -> Any:
    """Build the source a spec names."""
    from vdb.ingest.source import create_source

    kind = spec["kind"]
    fmt = spec.get("format")
    if kind == "kafka":
        options: dict[str, Any] = {
            "bootstrap_servers": spec["bootstrap"],
            "topics": spec["topics"],
            "group_id": spec.get("group"),
            "name": spec.get("name"),
            "isolation_level": spec.get("isolation") or "read_uncommitted",
            "auto_offset_reset": spec.get("offset_reset") or "earliest",
            "dead_letter_topic": spec.get("dead_letter_topic"),
        }
        if fmt:
            options["format"] = fmt
        if spec.get("kafka_options"):
            options["consumer_options"] = _kafka_options(spec["kafka_options"])
        return create_source("kafka", **options)
    if kind == "file":
        return create_source(
            "file",
            path=spec.get("path") or "-",
            name=spec.get("name"),
            follow=bool(spec.get("follow")),
            format=fmt,
        )
    return create_source(
        kind,
        **{
            k: v
            for k, v in spec.items()
            if k not in ("kind", "collection", *_PIPELINE_KEYS, "dim", "metric", "embedder")
        },
    )


def _kafka_options(raw: Any) -> dict[str, Any]:
    """``["k=v", ...]`` (or a dict from a config file) -> consumer options; numbers parsed."""
    if isinstance(raw, dict):
        return dict(raw)
    out: dict[str, Any] = {}
    for item in raw:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise InvalidInput(f"--kafka-option {item!r}: expected KEY=VALUE")
        text = value.strip()
        parsed: Any = text
        for cast in (int, float):
            try:
                parsed = cast(text)
                break
            except ValueError:
                continue
        if text in ("true", "false"):
            parsed = text == "true"
        out[key.strip()] = parsed
    return out


def start_spec(
    db: Any,
    spec: dict[str, Any],
    pipeline_options: dict[str, Any] | None = None,
    create_options: dict[str, Any] | None = None,
) -> Any:
    """Create the collection if asked, build the source, start the pipeline.

    ``pipeline_options`` are added to every spec's pipeline options and
    ``create_options`` to the collection it creates (``serve --cluster``
    passes ``drop_revoked=True`` and ``partition_segments=True``: a node frees
    a revoked partition's points in time proportional to their number).
    """
    from vdb.ingest.pipeline import start_ingest

    name = spec["collection"]
    if not db.has_collection(name):
        if not spec.get("dim") and not spec.get("embedder"):
            raise InvalidInput(
                f"collection {name!r} does not exist (give --create-dim or --create-embedder "
                "to create it)"
            )
        db.create_collection(
            name,
            dim=int(spec["dim"]) if spec.get("dim") else None,
            metric=spec.get("metric"),
            embedder=spec.get("embedder"),
            **(create_options or {}),
        )
    options = {k: spec[k] for k in _PIPELINE_KEYS if spec.get(k) is not None}
    options.update(pipeline_options or {})
    if spec["kind"] == "file" and spec.get("follow"):
        options["stop_at_end"] = False
    return start_ingest(db, source_for(spec), name, **options)


def start_from_args(
    db: Any,
    args: argparse.Namespace,
    pipeline_options: dict[str, Any] | None = None,
    create_options: dict[str, Any] | None = None,
) -> list[Any]:
    """Start every ingest spec in ``args``; ``[]`` when there is none. All or nothing."""
    specs = specs_from_args(args)
    started: list[Any] = []
    try:
        for spec in specs:
            started.append(start_spec(db, spec, pipeline_options, create_options))
    except BaseException:
        for handle in started:
            handle.stop()
        raise
    return started


# -- python -m vdb dead-letters ---------------------------------------------------------------


def add_subcommands(subparsers: Any) -> None:
    """Add ``dead-letters`` (and ``ingest``, a standalone ingest runner) to ``python -m vdb``."""
    p = subparsers.add_parser(
        "dead-letters",
        help="list the messages ingest could not apply, with the reason",
        description="List dead letters (topic, partition, offset, key, raw value, reason), oldest "
        "first. Reads the data directory read-only: a server may be running on it.",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="the data directory")
    p.add_argument(
        "--limit", type=int, default=100, metavar="N", help="the N most recent (default 100)"
    )
    p.add_argument("--source", metavar="NAME", help="only this source (e.g. kafka:GROUP)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (bytes as base64)")
    p.set_defaults(func=cmd_dead_letters)

    p = subparsers.add_parser(
        "ingest",
        help="run ingest specs against a data directory without the HTTP server",
        description="Open DIR and run the --ingest specs until they end (a file) or a signal.",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="the data directory")
    p.add_argument(
        "--status-file",
        metavar="PATH",
        help="write every pipeline's stats() as JSON to PATH twice a second (replaced atomically)",
    )
    add_ingest_arguments(p)
    p.set_defaults(func=cmd_ingest)


def read_dead_letters(
    data_dir: str | Path, limit: int = 100, source: str | None = None
) -> list[Any]:
    """The most recent dead letters in ``data_dir`` (oldest first), read without opening the db."""
    from vdb.types import DeadLetter
    from vdb.wal.store import Store, unpack

    path = Path(data_dir)
    if not path.is_dir():
        raise InvalidInput(f"no data directory at {path}")
    store = Store(path, readonly=True)
    out: list[DeadLetter] = []
    try:
        with store.read() as txn:
            cursor = txn.cursor(db=store.db("deadletters"))
            if cursor.last():
                for _, value in cursor.iterprev():
                    d = unpack(value)
                    if source is not None and d.get("source") != source:
                        continue
                    out.append(DeadLetter(**d))
                    if len(out) >= limit:
                        break
    finally:
        store.close()
    out.reverse()
    return out


def _shown(data: bytes | None, width: int = 40) -> str:
    if data is None:
        return "null"
    text = data.decode("utf-8", "backslashreplace")
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_dead_letters(args: argparse.Namespace) -> int:
    letters = read_dead_letters(args.data, limit=args.limit, source=args.source)
    if args.json:
        for d in letters:
            print(
                json.dumps(
                    {
                        "source": d.source,
                        "topic": d.topic,
                        "partition": d.partition,
                        "offset": d.offset,
                        "key": None if d.key is None else base64.b64encode(d.key).decode(),
                        "value": None if d.value is None else base64.b64encode(d.value).decode(),
                        "reason": d.reason,
                        "timestamp_ms": d.timestamp_ms,
                    }
                )
            )
        return 0
    if not letters:
        print("no dead letters")
        return 0
    for d in letters:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.timestamp_ms / 1000))
            if d.timestamp_ms
            else "-"
        )
        print(
            f"{when}  {d.source}  {d.topic}[{d.partition}]@{d.offset}  key={_shown(d.key, 24)}  "
            f"value={_shown(d.value)}  reason: {d.reason}"
        )
    print(f"{len(letters)} dead letter(s)", file=sys.stderr)
    return 0


def _write_status(path: str, handles: list[Any]) -> None:
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"time": time.time(), "pipelines": [h.stats() for h in handles]}))
    tmp.replace(target)


def cmd_ingest(args: argparse.Namespace) -> int:
    """Run ingest specs in the foreground until they end or SIGTERM/SIGINT."""
    import logging
    import signal
    import threading

    import vdb

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with vdb.open(args.data) as db:
        handles = start_from_args(db, args)
        if not handles:
            raise InvalidInput("no ingest spec: give --ingest KIND ... or --ingest-config FILE")
        status = getattr(args, "status_file", None)
        try:
            while not stop.is_set() and any(h.running for h in handles):
                if status:
                    _write_status(status, handles)
                stop.wait(0.5 if status else 0.2)
        finally:
            for h in handles:
                h.stop()
            if status:
                _write_status(status, handles)
        failed = [h for h in handles if h.stats()["state"] == "failed"]
        for h in handles:
            s = h.stats()
            print(
                f"{h.name}: {s['records']} records, {s['dead_letters']} dead letters, state {s['state']}",
                file=sys.stderr,
            )
    return 1 if failed else 0
