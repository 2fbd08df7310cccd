"""Progress bars: drawn to the end on a terminal (a real pty), silent when stderr is not one.

The command-line tests run ``python -m vdb load|snapshot|restore`` as child
processes whose stderr is either a pipe or the slave side of a pty with a
window size, and read what they wrote. No timing is asserted.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import sys
import termios
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO
from vdb.progress import ProgressBar

N = 5000


def pty_pair(columns: int = 120) -> tuple[int, int]:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    return master, slave


def read_all(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the slave side is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def vdb_command(*args: str, tty: bool) -> tuple[int, str, str]:
    """Run ``python -m vdb ARGS``; stderr on a pty (``tty``) or a pipe. -> (code, out, err)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "vdb", *args]
    if not tty:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        return proc.returncode, proc.stdout, proc.stderr
    master, slave = pty_pair()
    try:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=slave, text=True)
        os.close(slave)
        slave = -1
        err = read_all(master)  # until the child exits and the slave side closes
        out = proc.stdout.read()
        proc.wait(timeout=300)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def vectors(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "v.npy"
    np.save(path, np.random.default_rng(3).standard_normal((N, 16)).astype(np.float32))
    return path


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_load_snapshot_restore_progress_only_on_a_terminal(tmp_path, vectors, tty):
    data, snap, restored = tmp_path / "d", tmp_path / "s.vdbsnap", tmp_path / "r"
    code, out, err = vdb_command(
        "load", "--data", str(data), "--collection", "c", "--vectors", str(vectors),
        "--metric", "l2", "--batch-size", "1000", tty=tty,
    )  # fmt: skip
    assert code == 0, err
    assert f"loaded {N} points" in out
    if tty:  # the bar reached the end, with a rate and a time left
        assert "load c: 100%" in err and f"{N}/{N}" in err, err[-500:]
        assert "pt/s" in err and "<" in err, err[-500:]
    else:
        assert "load c" not in err and "%|" not in err, err

    code, out, err = vdb_command("snapshot", "--data", str(data), str(snap), tty=tty)
    assert code == 0, err
    assert f"wrote {snap}" in out and f"c: {N}" in out
    if tty:
        assert "snapshot: 100%" in err and "B/s" in err, err[-500:]
    else:
        assert "snapshot" not in err and "%|" not in err, err

    code, out, err = vdb_command("restore", str(snap), "--data", str(restored), tty=tty)
    assert code == 0, err
    assert "checksums verified" in out
    if tty:
        assert "restore: 100%" in err and "B/s" in err, err[-500:]
    else:
        assert "restore" not in err and "%|" not in err, err


def test_progress_bar_writes_nothing_to_a_pipe():
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        with ProgressBar("work", 100, stream=stream) as bar:
            assert not bar.enabled
            for done in range(0, 101, 10):
                bar(done)
    with os.fdopen(read_end) as f:
        assert f.read() == ""


def test_progress_bar_on_a_terminal_follows_absolute_counts_and_a_total_found_late():
    master, slave = pty_pair()
    with os.fdopen(slave, "w") as stream:
        with ProgressBar("copy", unit="B", stream=stream) as bar:
            assert bar.enabled
            for done in (0, 1 << 20, 3 << 20, 4 << 20):
                bar(done, 4 << 20)  # the total is learnt with the first call
    text = read_all(master)
    os.close(master)
    assert "copy: 100%" in text and "4.00M/4.00M" in text, text


def test_progress_bar_on_a_terminal_without_a_width_still_draws():
    master, slave = os.openpty()  # a pty nobody gave a size: 0 columns
    with os.fdopen(slave, "w") as stream:
        with ProgressBar("rows", 10, stream=stream) as bar:
            bar(10)
    text = read_all(master)
    os.close(master)
    assert "rows: 100%" in text and "10/10" in text, text
