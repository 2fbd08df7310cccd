"""``python -m vdb router``: serve the cluster router over HTTP (see ``vdb.cluster.router``)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any


def add_subcommands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "router",
        help="route Qdrant REST requests over a cluster of vdb nodes on Kafka",
        description="Read the cluster's heartbeats from Kafka and serve the Qdrant REST subset "
        "over its nodes: reads fan out to one replica per partition and are merged; writes are "
        "produced to the collection's topic.",
    )
    p.add_argument("--kafka-bootstrap", required=True, metavar="HOST:PORT", help="Kafka servers")
    p.add_argument("--cluster", required=True, metavar="NAME", help="cluster name (as on serve)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=6333, help="TCP port (default 6333)")
    p.add_argument(
        "--stale-ms", type=int, default=2000, help="heartbeat age after which a node is not used"
    )
    p.add_argument(
        "--timeout-ms", type=int, default=5000, help="deadline of one read, retries included"
    )
    p.add_argument("--retries", type=int, default=2, help="rounds of retry on other replicas")
    p.add_argument(
        "--wait-timeout-ms",
        type=int,
        default=30000,
        help="longest wait of a wait=true write for a replica to apply it",
    )
    p.add_argument(
        "--no-lean-path",
        dest="lean",
        action="store_false",
        help="serve query and search through Starlette like the other routes (the same "
        "answers, more CPU per query; for comparison)",
    )
    p.add_argument("--log-level", default="info", help="debug, info, warning or error")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from vdb.cluster.router import Router
    from vdb.errors import InvalidInput

    if not 0 <= args.port <= 65535:
        raise InvalidInput(f"port {args.port} is out of range")
    if min(args.stale_ms, args.timeout_ms, args.wait_timeout_ms) <= 0 or args.retries < 0:
        raise InvalidInput("--stale-ms, --timeout-ms and --wait-timeout-ms must be positive")
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    router = Router(
        args.kafka_bootstrap,
        args.cluster,
        stale_s=args.stale_ms / 1000.0,
        timeout_s=args.timeout_ms / 1000.0,
        retries=args.retries,
        wait_timeout_s=args.wait_timeout_ms / 1000.0,
        lean=args.lean,
    ).start()
    try:
        uvicorn.run(
            router.app,
            host=args.host,
            port=args.port,
            log_level=args.log_level.lower(),
            access_log=False,
            server_header=False,
            proxy_headers=False,  # no proxy in front: skip uvicorn's per-request middleware
            lifespan="on",
        )
    finally:
        router.close()
    return 0
