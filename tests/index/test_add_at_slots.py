"""HNSW.add(vectors, slots=...): the caller chooses the slots (the collection's segments do)."""

from __future__ import annotations

import numpy as np
import pytest

from vdb.index import HNSW


def _exact_top1(base: np.ndarray, slots: np.ndarray, queries: np.ndarray) -> np.ndarray:
    d = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    return slots[np.argmin(d, axis=1)]


def test_add_at_chosen_slots_with_holes_reuse_and_fill():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2400, 16)).astype(np.float32)
    h = HNSW(16, "l2", M=8, ef_construction=64, seed=3)
    assert (h.add(x[:800], slots=np.arange(800)) == np.arange(800)).all()
    # beyond the used range: 800..999 become free holes
    assert (h.add(x[800:1200], slots=np.arange(1000, 1400)) == np.arange(1000, 1400)).all()
    assert len(h) == 1200
    h.delete(np.arange(0, 50))
    h.add(x[1200:1250], slots=np.arange(0, 50))  # reuse deleted slots
    h.add(x[1250:1350], slots=np.arange(800, 900))  # fill part of the holes
    assert len(h) == 1300
    live = np.flatnonzero(h.live_mask())
    assert set(live.tolist()) == set(range(0, 800)) | set(range(800, 900)) | set(range(1000, 1400))
    stored = h.get_vectors(live)
    found, _ = h.search(stored, 1, ef=200)
    assert (found[:, 0] == live).mean() >= 0.99
    q = rng.standard_normal((50, 16)).astype(np.float32)
    got, _ = h.search(q, 1, ef=400)
    assert (got[:, 0] == _exact_top1(stored, live, q)).mean() >= 0.95
    # plain add takes the remaining holes first
    plain = h.add(x[1350:1360])
    assert plain.min() >= 900 and plain.max() < 1000


def test_add_at_slots_rejects_bad_slots():
    h = HNSW(4, "l2", seed=1)
    v = np.ones((2, 4), np.float32)
    h.add(v, slots=[0, 1])
    with pytest.raises(ValueError, match="live"):
        h.add(v[:1], slots=[1])
    with pytest.raises(ValueError, match="distinct"):
        h.add(v, slots=[5, 5])
    with pytest.raises(ValueError, match="2 slots for 1"):
        h.add(v[:1], slots=[5, 6])
    with pytest.raises(ValueError):
        h.add(v[:1], slots=[-1])
    assert len(h) == 2
