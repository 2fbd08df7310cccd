"""Command line: ``python -m vdb {serve,router,snapshot,restore,info,load,dead-letters}``.

Each subcommand's flags and body live with the package that owns the work:
this module only wires them into one parser.
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from vdb import __version__, admin
    from vdb.http import server
    from vdb.ingest import cli as ingest_cli

    parser = argparse.ArgumentParser(
        prog="python -m vdb",
        description="vdb: a vector database in one process (HNSW + LMDB WAL + Kafka ingest + HTTP).",
    )
    parser.add_argument("--version", action="version", version=f"vdb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="run the HTTP API (Qdrant-compatible) and, when configured, Kafka ingest",
        description="Serve a data directory over HTTP; optionally tail Kafka topics into collections.",
    )
    server.add_arguments(p)
    ingest_cli.add_ingest_arguments(p)
    p.set_defaults(func=server.main)

    admin.add_subcommands(sub)
    ingest_cli.add_subcommands(sub)
    from vdb.cluster import cli as cluster_cli

    cluster_cli.add_subcommands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the CLI reports vdb errors as one line, not a traceback
        from vdb.errors import VdbError

        if isinstance(exc, VdbError):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        raise
