"""An int8 collection through the core: config, search options, checkpoint, snapshot/restore."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import vdb
from vdb.errors import InvalidInput

FIXTURE = Path(__file__).resolve().parent / "data" / "minilm-10k"


def _data() -> tuple[np.ndarray, np.ndarray]:
    base = np.load(FIXTURE / "base.npy")[:3000].astype(np.float32)
    queries = np.load(FIXTURE / "queries.npy")[:50].astype(np.float32)
    return base, queries


def _answers(col, queries, **kw) -> list[list[tuple]]:
    return [[(h.id, round(h.score, 5)) for h in row] for row in col.search(queries, k=10, **kw)]


def test_int8_collection_round_trips_checkpoint_and_snapshot(tmp_path):
    base, queries = _data()
    with vdb.open(tmp_path / "db") as db:
        col = db.create_collection("docs", 384, "cosine", quantization="int8", on_disk=True)
        info = col.info()
        assert info["quantization"] == {"type": "int8", "quantile": None, "always_ram": True}
        assert info["on_disk"] is True
        col.upsert(list(range(3000)), base)
        assert col.wait_indexed(timeout=120)  # quantization is the graph's: index them first
        assert col._index.quantization == "int8" and col._index.on_disk
        before = _answers(col, queries)
        exact = col.search(queries, k=10, exact=True)
        truth = [[h.id for h in row] for row in exact]
        found = [[i for i, _ in row] for row in before]
        hit = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)])
        assert hit >= 0.9
        # scores are the float scores: the exact scan agrees on every shared id
        exact_scores = {(r, h.id): h.score for r, row in enumerate(exact) for h in row}
        for r, row in enumerate(before):
            for pid, score in row:
                if (r, pid) in exact_scores:
                    assert abs(exact_scores[(r, pid)] - score) < 1e-4
        quantized = _answers(col, queries, quantization={"rescore": False})
        assert quantized != before
        ignored = _answers(col, queries, quantization={"ignore": True})
        assert len(ignored) == len(before)
        with pytest.raises(InvalidInput, match="oversampling"):
            col.search(queries[0], k=3, quantization={"oversampling": 0})
        db.checkpoint()
        col.upsert(list(range(3000, 3050)), base[:50] * 0.5 + base[50:100] * 0.5)  # WAL after it
        assert col.wait_indexed(timeout=120)  # the snapshot's checkpoint then holds this graph
        after_writes = _answers(col, queries)
        db.snapshot(tmp_path / "s.vdb")
    with vdb.open(tmp_path / "db") as db:
        col = db.collection("docs")
        assert col._index.quantization == "int8" and col._index.on_disk
        assert col.info()["quantization"]["type"] == "int8"
        assert _answers(col, queries) == after_writes
    vdb.restore(tmp_path / "s.vdb", tmp_path / "restored")
    with vdb.open(tmp_path / "restored") as db:
        assert _answers(db.collection("docs"), queries) == after_writes


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"quantization": "binary"}, "quantization.type"),
        ({"quantization": {"type": "int8", "quantile": 0.1}}, "quantization.quantile"),
        ({"quantization": {"type": "int8", "always_ram": "yes"}}, "quantization.always_ram"),
        ({"on_disk": "yes"}, "on_disk"),
    ],
)
def test_bad_storage_options_are_refused(tmp_path, kwargs, message):
    with vdb.open(tmp_path / "db") as db:
        with pytest.raises(InvalidInput, match=message):
            db.create_collection("c", 8, "l2", **kwargs)
        assert not db.has_collection("c")
