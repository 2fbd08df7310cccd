"""Real servers for the HTTP tests: ``python -m vdb serve`` as a subprocess on a free port.

``ServerProcess`` starts the server, waits for ``/readyz``, and stops it by
its pid (SIGTERM, then SIGKILL if it does not exit). ``serve`` (function
scope) starts servers on demand and stops them at teardown; ``server``
(module scope) is one plain server shared by a test module.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 120.0  # the first start may compile the Numba kernels


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One ``python -m vdb serve`` process over ``data_dir``."""

    def __init__(
        self,
        data_dir: Path,
        *args: str,
        port: int | None = None,
        env: dict[str, str] | None = None,
        scheme: str = "http",
        verify: object = True,
    ):
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.port = port or free_port()
        self.env = dict(env or {})
        self.scheme = scheme
        self.verify = verify
        self.proc: subprocess.Popen | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server-{self.port}.log"
        self.exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, wait: bool = True) -> ServerProcess:
        env = os.environ.copy()
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env.update(self.env)
        cmd = [
            sys.executable,
            "-m",
            "vdb",
            "serve",
            "--data",
            str(self.data_dir),
            "--port",
            str(self.port),
            *self.args,
        ]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=self._log)
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop(timeout=10)  # never leave a half-started server behind
                raise
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.url + "/readyz", timeout=2.0, verify=self.verify)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        self.exit_code = self.proc.wait(timeout=timeout)
        self._log.close()
        return self.exit_code

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait; SIGKILL by pid if it will not go."""
        if self.proc is None:
            return None
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.wait(10)

    def kill9(self) -> int:
        os.kill(self.pid, signal.SIGKILL)
        return self.wait(10)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator:
    """``serve(*args, data_dir=None, **kw)`` starts a server; all are stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, wait: bool = True, **kw) -> ServerProcess:
        server = ServerProcess(data_dir or tmp_path / f"data{len(started)}", *args, **kw)
        started.append(server)
        return server.start(wait=wait)

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One plain server (no key, no limits) for a whole test module."""
    proc = ServerProcess(tmp_path_factory.mktemp("vdb-http") / "data").start()
    yield proc
    proc.stop()
