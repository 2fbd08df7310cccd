"""kill -9 while upserting documents: every acknowledged batch is back, and nothing is re-embedded.

The reopened process proves the second half: after opening (WAL replay),
reading every point with its vector and searching by vector, the model was
never loaded and onnxruntime was never even imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.embed.conftest import cosines
from tests.embed.crash_text_writer import BATCH
from tests.helpers import REPO

WRITER = Path(__file__).with_name("crash_text_writer.py")

CHECK = r"""
import json, sys
import numpy as np
import vdb, vdb.embed
db = vdb.open(sys.argv[1], warm=False)
col = db.collection("docs")
ids = list(range(int(sys.argv[3])))
records = col.get(ids, with_vectors=True)
hit = col.search(records[0].vector, k=1)[0] if records else None
np.save(sys.argv[2], np.stack([r.vector for r in records]) if records else np.zeros((0, 384)))
print(json.dumps({
    "ids": [r.id for r in records],
    "payloads": [r.payload for r in records],
    "first_hit": None if hit is None else hit.id,
    "embedder": col.info()["embedder"],
    "recovered_records": db.stats()["recovered_records"],
    "model_loads": vdb.embed.load_count(),
    "loaded": vdb.embed.loaded_embedders(),
    "onnxruntime_imported": "onnxruntime" in sys.modules,
    "tokenizers_imported": "tokenizers" in sys.modules,
}))
db.close(checkpoint=False)
"""


def _env() -> dict[str, str]:
    env = os.environ.copy()
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_kill9_during_text_upserts_loses_nothing_and_never_reembeds(tmp_path, model, texts):
    data, log = tmp_path / "data", tmp_path / "acks.log"
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data), str(log)], env=_env(), cwd=REPO
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if log.exists() and len(log.read_text().split()) >= 6:
                break
            assert proc.poll() is None, "the writer exited before it was killed"
            time.sleep(0.05)
        else:
            raise AssertionError("the writer acknowledged fewer than 6 batches in 180 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    acked = [int(b) for b in log.read_text().split()]
    assert acked == list(range(len(acked)))

    vectors_path = tmp_path / "vectors.npy"
    upper = (len(acked) + 2) * BATCH  # ask for a little more than acknowledged
    out = subprocess.run(
        [sys.executable, "-c", CHECK, str(data), str(vectors_path), str(upper)],
        env=_env(), cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])

    # nothing acknowledged is lost (a batch in flight may or may not be there, whole)
    ids = report["ids"]
    assert set(range(len(acked) * BATCH)) <= set(ids)
    assert len(ids) % BATCH == 0 and ids == list(range(len(ids)))
    assert report["payloads"][0] == {"b": 0, "document": texts.texts[0]}
    assert report["recovered_records"] >= len(acked)  # replayed from the WAL
    assert report["embedder"] == "minilm" and report["first_hit"] == 0
    # ... and nothing was re-embedded: the model was never loaded, its runtime never imported
    assert report["model_loads"] == 0 and report["loaded"] == []
    assert not report["onnxruntime_imported"] and not report["tokenizers_imported"]
    # the replayed vectors are the ones embedded before the crash
    stored = np.load(vectors_path)
    assert cosines(stored, model.embed([texts.texts[i] for i in ids])).min() >= 0.999
