"""The benchmarks' real-set loading: a missing set is one line naming it, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import REPO


def test_bench_ann_without_its_dataset_says_what_is_missing_in_one_line(tmp_path):
    for how in (["--data", str(tmp_path)], []):  # the option, then the environment variable
        env = {**os.environ, "PYTHONPATH": str(REPO), "VDB_DATASETS": str(tmp_path / "env")}
        proc = subprocess.run(
            [sys.executable, "-m", "bench.ann", "--dataset", "all", "--quick", *how],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 1 and proc.stdout == ""  # before any work or JSON line
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        where = tmp_path / "debian-minilm" if how else tmp_path / "env" / "debian-minilm"
        assert "'debian-minilm' not found" in lines[0] and str(where) in lines[0], lines[0]
        assert "bench/make_minilm.py" in lines[0] and "VDB_DATASETS" in lines[0], lines[0]
