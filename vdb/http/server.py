"""``python -m vdb serve``: open the data directory, start ingest, serve HTTP with uvicorn.

Shutdown on SIGTERM or SIGINT is graceful: ingest handles are told to stop
at once (in a thread) while HTTP stops accepting connections and lets the
requests in flight finish (at most ``--graceful-timeout`` seconds); then the
database is closed (which checkpoints). A second signal exits
at once; nothing acknowledged is lost because every acknowledged write is
already durable in the WAL.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from vdb import config as config_mod
from vdb.config import ServerConfig

log = logging.getLogger(__name__)

HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` flags (one per ``ServerConfig`` field; ``VDB_*`` env vars fill the rest)."""
    config_mod.add_arguments(parser)


class VdbServer(uvicorn.Server):
    """uvicorn's server with vdb's signal rules: first signal graceful, second immediate."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Any = None):
        super().__init__(config)
        self.signals_seen = 0
        self.on_shutdown = on_shutdown

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.signals_seen += 1
        if self.signals_seen == 1:
            log.info("signal %d: shutting down gracefully (send again to exit at once)", sig)
            self.should_exit = True
            if self.on_shutdown is not None:
                self.on_shutdown()
        else:
            _exit_now(sig)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Unlike uvicorn's own, the signal is not re-raised afterwards: main() closes the db.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _exit_now(sig: int) -> None:
    log.warning("signal %d again: exiting at once (acknowledged writes are in the WAL)", sig)
    logging.shutdown()
    os._exit(128 + sig)


@contextlib.contextmanager
def _second_signal_exits() -> Iterator[None]:
    """While closing, any further signal exits at once instead of interrupting the close."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    original = {sig: signal.signal(sig, lambda s, f: _exit_now(s)) for sig in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in original.items():
            signal.signal(sig, handler)


def _setup_logging(level: str) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(
            level=level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    else:
        root.setLevel(level.upper())


def _start_ingest(db: Any, args: argparse.Namespace, config: ServerConfig) -> list[Any]:
    try:
        from vdb.ingest.cli import start_from_args
    except ImportError:
        log.info("ingest is not available; serving HTTP only")
        return []
    if not config.cluster:
        return list(start_from_args(db, args) or [])
    # a node's collection keeps each source partition in its own graphs, so a revoked
    # partition is freed in time proportional to its points (vdb.graphs)
    return list(
        start_from_args(db, args, {"drop_revoked": True}, {"partition_segments": True}) or []
    )


def _start_node(db: Any, handles: list[Any], config: ServerConfig) -> Any:
    """``--cluster``: start publishing this node's heartbeats (``vdb.cluster.node``)."""
    from vdb.cluster.node import ClusterNode
    from vdb.errors import InvalidInput

    address = f"{config.bind_host}:{config.port}"
    try:
        node = ClusterNode(
            db,
            handles,
            cluster=str(config.cluster),
            node_id=config.node_id or address,
            url=config.advertise_url or f"http{'s' if config.ssl_certfile else ''}://{address}",
        )
    except ValueError as exc:
        raise InvalidInput(f"--cluster: {exc}") from None
    node.start()
    log.info("cluster %s: node %s at %s", config.cluster, node.node_id, node.url)
    return node


class IngestStopper:
    """Stops the ingest handles once, first thing on shutdown, while HTTP drains."""

    def __init__(self, handles: list[Any]):
        self.handles = handles
        self.node: Any = None
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def start(self) -> None:
        with self.lock:
            if self.thread is None and (self.handles or self.node is not None):
                self.thread = threading.Thread(target=self._stop, name="vdb-ingest-stop")
                self.thread.start()

    def _stop(self) -> None:
        if self.node is not None:  # leave the cluster first: routers stop sending at once
            try:
                self.node.close()
            except Exception:
                log.exception("leaving the cluster failed")
        for handle in self.handles:
            try:
                handle.stop()
            except Exception:
                log.exception("stopping an ingest handle failed")

    def finish(self) -> None:
        """Make sure every handle is stopped (starting now if no signal came)."""
        self.start()
        if self.thread is not None:
            self.thread.join()


def main(args: argparse.Namespace) -> int:
    """Run the server until a signal; return the exit code."""
    import vdb
    from vdb import telemetry
    from vdb.http.app import build_app

    config = ServerConfig.from_sources(args)
    _setup_logging(config.log_level)
    telemetry.configure()  # OTEL_TRACES_EXPORTER etc.; off unless set
    if not config.auth_enabled:
        if config.host and config.host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "no --api-key configured and binding to %s: anyone who can reach this address "
                "can read and write",
                config.host,
            )
        else:
            log.warning(
                "no --api-key configured: binding to 127.0.0.1 only (set --api-key and --host "
                "to serve other machines)"
            )
    log.info("vdb serve settings: %s", json.dumps(config.describe(), sort_keys=True))

    db = vdb.open(config.data, **config.open_options())
    stopper = IngestStopper([])
    try:
        handles = _start_ingest(db, args, config)
        stopper.handles = handles
        if config.cluster:
            stopper.node = _start_node(db, handles, config)
        app = build_app(db, config, handles, cluster_node=stopper.node)
        uv_config = uvicorn.Config(
            app,
            host=config.bind_host,
            port=config.port,
            workers=1,
            lifespan="on",
            log_level=config.log_level.lower(),
            access_log=config.access_log,
            ssl_certfile=config.ssl_certfile,
            ssl_keyfile=config.ssl_keyfile,
            timeout_graceful_shutdown=config.graceful_timeout,
            server_header=False,
            limit_concurrency=None,
        )
        server = VdbServer(uv_config, on_shutdown=stopper.start)
        server.run()
    finally:
        with _second_signal_exits():
            stopper.finish()
            db.close()
            log.info("database closed")
            telemetry.shutdown()  # flush the spans still buffered
    return 0
