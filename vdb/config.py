"""Server settings: one dataclass, filled from defaults, ``VDB_*`` environment
variables and command-line flags (flags win over the environment).

Every field maps to a flag ``--field-name`` and an environment variable
``VDB_FIELD_NAME``. ``ServerConfig.describe()`` renders the settings for the
start-up log with secrets masked.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vdb.errors import InvalidInput

SECRET_FIELDS = frozenset({"api_key", "read_only_api_key"})
DATABASE_FIELDS = ("fresh_limit", "graph_seal_size")
"""Settings passed to ``vdb.open`` when given (positive integers; unset keeps its default)."""

QDRANT_COMPAT_VERSION = "1.20.0"
"""The Qdrant server version ``GET /`` reports (the client checks major.minor)."""


@dataclass(slots=True)
class ServerConfig:
    """Everything ``python -m vdb serve`` can be told."""

    data: str = field(
        default="./vdb-data", metadata={"help": "data directory (created if missing)"}
    )
    host: str | None = field(
        default=None,
        metadata={"help": "bind address (default 127.0.0.1; 0.0.0.0 only with an --api-key)"},
    )
    port: int = field(default=6333, metadata={"help": "TCP port (0 = pick a free one)"})
    api_key: str | None = field(default=None, metadata={"help": "read-write API key"})
    read_only_api_key: str | None = field(default=None, metadata={"help": "read-only API key"})
    ssl_certfile: str | None = field(default=None, metadata={"help": "TLS certificate (PEM)"})
    ssl_keyfile: str | None = field(default=None, metadata={"help": "TLS private key (PEM)"})
    max_body_bytes: int = field(
        default=32 * 1024 * 1024, metadata={"help": "largest accepted request body (413 above)"}
    )
    rate_limit: float = field(
        default=0.0,
        metadata={"help": "requests per second allowed per API key or client (0 = no limit)"},
    )
    rate_burst: int = field(
        default=0, metadata={"help": "token bucket size for --rate-limit (default 2 x rate)"}
    )
    max_limit: int = field(
        default=10_000, metadata={"help": "largest limit/k a search or scroll may ask for"}
    )
    max_batch: int = field(
        default=1_000, metadata={"help": "most searches accepted in one batch request"}
    )
    search_threads: int = field(
        default=0, metadata={"help": "concurrent searches in the thread pool (0 = 2 x CPUs)"}
    )
    write_threads: int = field(
        default=64,
        metadata={"help": "concurrent writes handed to the group-commit writer"},
    )
    snapshots_dir: str | None = field(
        default=None, metadata={"help": "where snapshots are kept (default DATA/snapshots)"}
    )
    graceful_timeout: float = field(
        default=10.0, metadata={"help": "seconds to let requests in flight finish on shutdown"}
    )
    warm: bool = field(
        default=True, metadata={"help": "compile and warm the search kernels before /readyz"}
    )
    fresh_limit: int | None = field(
        default=None,
        metadata={
            "help": "default bound of a collection's fresh segment, in points (writes are "
            "searchable at once and indexed in the background; at the bound writers wait; "
            "None: vdb.open's default)"
        },
    )
    graph_seal_size: int | None = field(
        default=None,
        metadata={
            "help": "points linked into one graph of a collection before it is sealed "
            "(None: vdb.open's default)"
        },
    )
    qdrant_version: str = field(
        default=QDRANT_COMPAT_VERSION,
        metadata={"help": "Qdrant version reported by GET / (clients check major.minor)"},
    )
    cluster: str | None = field(
        default=None,
        metadata={
            "help": "join this cluster: publish heartbeats to the topic NAME.vdb-nodes and free "
            "partitions Kafka hands to other nodes (needs a Kafka ingest with --kafka-group)"
        },
    )
    node_id: str | None = field(
        default=None, metadata={"help": "this node's id in the cluster (default HOST:PORT)"}
    )
    advertise_url: str | None = field(
        default=None,
        metadata={"help": "the URL routers use to reach this node (default http://HOST:PORT)"},
    )
    log_level: str = field(default="info", metadata={"help": "debug, info, warning or error"})
    access_log: bool = field(default=False, metadata={"help": "log every request"})

    @property
    def bind_host(self) -> str:
        """The address to bind: the configured one, else loopback."""
        return self.host or "127.0.0.1"

    def open_options(self) -> dict[str, Any]:
        """Keyword arguments of ``vdb.open`` these settings give (the unset ones left out)."""
        options: dict[str, Any] = {"warm": self.warm}
        for name in DATABASE_FIELDS:
            value = getattr(self, name)
            if value is not None:
                options[name] = value
        return options

    @property
    def snapshot_path(self) -> Path:
        return Path(self.snapshots_dir) if self.snapshots_dir else Path(self.data) / "snapshots"

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_key or self.read_only_api_key)

    @property
    def search_concurrency(self) -> int:
        return self.search_threads or 2 * (os.cpu_count() or 1)

    def validate(self) -> ServerConfig:
        """Reject settings that cannot work; returns self."""
        if not 0 <= self.port <= 65535:
            raise InvalidInput(f"port {self.port} is out of range")
        if self.max_body_bytes <= 0:
            raise InvalidInput("max_body_bytes must be positive")
        if self.rate_limit < 0 or self.rate_burst < 0:
            raise InvalidInput("rate_limit and rate_burst must not be negative")
        if self.max_limit <= 0 or self.max_batch <= 0:
            raise InvalidInput("max_limit and max_batch must be positive")
        for name in DATABASE_FIELDS:
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidInput(f"{name} must be positive, got {value}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise InvalidInput("TLS needs both --ssl-certfile and --ssl-keyfile")
        if self.read_only_api_key and not self.api_key:
            raise InvalidInput("--read-only-api-key needs --api-key for writes")
        if (self.node_id or self.advertise_url) and not self.cluster:
            raise InvalidInput("--node-id and --advertise-url need --cluster")
        if self.cluster is not None and not self.cluster.strip():
            raise InvalidInput("--cluster must not be empty")
        if self.cluster and not self.advertise_url and self.port == 0:
            raise InvalidInput("--cluster with --port 0 needs --advertise-url")
        if self.api_key and self.api_key == self.read_only_api_key:
            raise InvalidInput("the read-only key must differ from the read-write key")
        return self

    def describe(self) -> dict[str, Any]:
        """The settings as a dict for logging, secrets masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in SECRET_FIELDS and value:
                value = "***"
            out[f.name] = value
        out["host"] = self.bind_host
        return out

    @classmethod
    def from_sources(
        cls, args: argparse.Namespace | None = None, env: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Defaults, overridden by ``VDB_*`` env vars, overridden by flags given on the command line."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("VDB_" + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _coerce(f, raw)
            if args is not None:
                given = getattr(args, f.name, None)
                if given is not None:
                    values[f.name] = given
        return cls(**values).validate()


def _kind(f: dataclasses.Field) -> str:
    return str(f.type).replace("| None", "").strip()


def _coerce(f: dataclasses.Field, raw: str) -> Any:
    kind = _kind(f)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise InvalidInput(f"VDB_{f.name.upper()}={raw!r} is not a valid {kind}") from None
    return raw


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per field; unset flags stay ``None`` so env vars and defaults apply."""
    for f in fields(ServerConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _kind(f)
        help_text = f"{f.metadata.get('help', '')} [env VDB_{f.name.upper()}; default {f.default}]"
        if kind == "bool":
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=help_text,
            )
        else:
            parser.add_argument(
                flag,
                dest=f.name,
                type={"int": int, "float": float}.get(kind, str),
                default=None,
                help=help_text,
            )
