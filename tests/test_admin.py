"""The admin CLI: load, info, snapshot, restore (in-process through ``vdb.cli.main``)."""

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
from vdb.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def loaded(tmp_path, capsys):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((300, 12)).astype(np.float32)
    np.save(tmp_path / "v.npy", vectors)
    (tmp_path / "ids.txt").write_text("".join(f"pkg-{i}\tdescription {i}\n" for i in range(300)))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"n": i}) + "\n" for i in range(300)))
    code, out, _ = run(
        capsys, "load", "--data", str(tmp_path / "d"), "--collection", "pk", "--vectors",
        str(tmp_path / "v.npy"), "--ids", str(tmp_path / "ids.txt"), "--payloads",
        str(tmp_path / "p.jsonl"), "--metric", "l2", "--batch-size", "64", "--text-field", "text",
    )  # fmt: skip
    assert code == 0 and "loaded 300 points" in out
    return tmp_path, vectors


def test_load_then_info(loaded, capsys):
    tmp_path, vectors = loaded
    code, out, _ = run(capsys, "info", "--data", str(tmp_path / "d"), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["collections"]["pk"]["count"] == 300
    assert info["collections"]["pk"]["dim"] == 12
    assert info["collections"]["pk"]["metric"] == "l2"
    assert info["disk_bytes"] > 0 and info["last_checkpoint_at"] is not None
    code, out, _ = run(capsys, "info", "--data", str(tmp_path / "d"))
    assert code == 0 and "pk" in out and "300" in out
    with vdb.open(tmp_path / "d") as db:
        col = db.collection("pk")
        rec = col.get(["pkg-7"], with_vectors=True)[0]
        assert rec.payload == {"n": 7, "text": "description 7"}
        np.testing.assert_allclose(rec.vector, vectors[7])


def test_snapshot_restore_roundtrip_and_refusals(loaded, capsys):
    tmp_path, vectors = loaded
    snap = tmp_path / "s.vdb"
    code, out, _ = run(capsys, "snapshot", "--data", str(tmp_path / "d"), str(snap))
    assert code == 0 and "pk: 300" in out
    code, out, _ = run(capsys, "restore", str(snap), "--data", str(tmp_path / "r"))
    assert code == 0 and "checksums verified" in out
    code, _, err = run(capsys, "restore", str(snap), "--data", str(tmp_path / "r"))
    assert code == 1 and "not empty" in err
    code, _, _ = run(capsys, "restore", str(snap), "--data", str(tmp_path / "r"), "--force")
    assert code == 0
    with vdb.open(tmp_path / "d") as a, vdb.open(tmp_path / "r") as b:
        q = vectors[:10]
        assert [[h.id for h in r] for r in a.collection("pk").search(q, k=5)] == [
            [h.id for h in r] for r in b.collection("pk").search(q, k=5)
        ]
    raw = bytearray(snap.read_bytes())
    raw[-100] ^= 1
    snap.write_bytes(bytes(raw))
    code, _, err = run(capsys, "restore", str(snap), "--data", str(tmp_path / "r2"))
    assert code == 1 and "checksum" in err
    assert not (tmp_path / "r2").exists() or not any((tmp_path / "r2").iterdir())


HOLDER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import vdb
    db = vdb.open(sys.argv[1], checkpoint_interval_s=None, checkpoint_wal_bytes=None)
    col = db.create_collection("live", dim=4, metric="l2")
    col.upsert(list(range(40)), np.ones((40, 4), np.float32))
    col.delete([0, 1])
    print("ready", flush=True)
    sys.stdin.readline()
    db.close()
    """
)


def test_info_and_snapshot_while_another_process_has_the_directory_open(tmp_path, capsys):
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "d")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        code, out, _ = run(capsys, "info", "--data", str(tmp_path / "d"), "--json")
        assert code == 0
        info = json.loads(out)
        assert info["collections"]["live"]["count"] == 38
        assert info["wal_records_pending"] == 2  # nothing checkpointed yet: counted from the WAL
        code, out, _ = run(
            capsys, "snapshot", "--data", str(tmp_path / "d"), str(tmp_path / "s.vdb")
        )
        assert code == 0 and "live: 38" in out
        np.save(tmp_path / "v.npy", np.ones((3, 4), np.float32))
        code, _, err = run(capsys, "load", "--data", str(tmp_path / "d"), "--collection", "x",
                           "--vectors", str(tmp_path / "v.npy"))  # fmt: skip
        assert code == 1 and "already open" in err  # load needs the directory to itself
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    vdb.restore(tmp_path / "s.vdb", tmp_path / "r")
    with vdb.open(tmp_path / "r") as db:
        assert db.collection("live").count() == 38
        assert db.collection("live").get([0, 1, 2]) == [vdb.Record(2, None, None)]


def test_help_explains_each_subcommand(capsys):
    for command, words in {
        "snapshot": ["consistent", "checksum"],
        "restore": ["--force", "corrupt"],
        "info": ["collections", "disk"],
        "load": ["--vectors", "--ids", "--payloads"],
    }.items():
        with pytest.raises(SystemExit) as exc:
            main([command, "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        for word in words:
            assert word in text, (command, word)
