"""The LMDB store: a real write failure (no room for the file) refuses writes and corrupts nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import vdb
from tests.helpers import REPO
from vdb.errors import ReadOnly, StorageError
from vdb.wal.store import Store

# The child caps its own file size (RLIMIT_FSIZE), so LMDB's page writes really
# fail part-way, as they do when a disk fills up.
CHILD = textwrap.dedent(
    """
    import json, resource, signal, sys
    import numpy as np
    import vdb
    from vdb.errors import StorageFull
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    db = vdb.open(sys.argv[1], map_size=64 << 20, checkpoint_interval_s=None, checkpoint_wal_bytes=None)
    col = db.create_collection("c", dim=64, metric="l2")
    limit = 3 << 20
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    acked, refused = 0, []
    for i in range(200):
        x = np.random.default_rng(i).standard_normal((100, 64)).astype(np.float32)
        try:
            col.upsert(list(range(i * 100, i * 100 + 100)), x)
            acked += 100
        except StorageFull as exc:
            refused.append(str(exc))
            if len(refused) == 3:
                break
    probe = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    top = col.search(probe, k=1)[0].id
    print(json.dumps({"acked": acked, "refused": refused, "count": col.count(), "top": top}))
    db.close()  # its checkpoint fails too: logged, the WAL keeps every write
    """
)


def test_running_out_of_room_refuses_writes_and_loses_nothing(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "d")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(result["refused"]) == 3
    assert "no room to write" in result["refused"][0]
    assert result["acked"] > 0 and result["count"] == result["acked"]
    with vdb.open(tmp_path / "d") as db:
        col = db.collection("c")
        assert col.count() == result["acked"]
        probe = np.random.default_rng(0).standard_normal(64).astype(np.float32)
        assert col.search(probe, k=1)[0].id == result["top"]
        x = np.random.default_rng(0).standard_normal((100, 64)).astype(np.float32)
        rec = col.get([0], with_vectors=True)[0]
        np.testing.assert_array_equal(rec.vector, x[0])
        col.upsert([10**9], x[:1])  # with room again, writes work
        assert col.count() == result["acked"] + 1


def test_read_only_store_refuses_writes_and_missing_directory(tmp_path):
    with pytest.raises(StorageError, match="no vdb database"):
        Store(tmp_path / "missing", readonly=True)
    Store(tmp_path / "d").close()
    store = Store(tmp_path / "d", readonly=True)
    try:
        with pytest.raises(ReadOnly):
            store.write(lambda txn: None)
    finally:
        store.close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorageError):
        vdb.open(tmp_path / "file")
