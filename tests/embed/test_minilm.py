"""The built-in embedder and the registry: vectors match the fixture, truncation, errors."""

from __future__ import annotations

import numpy as np
import pytest

from tests.embed.conftest import cosines
from vdb.embed import (
    EmbedderSpec,
    EmbedderUnavailable,
    embedder_names,
    embedder_spec,
    get_embedder,
    register_embedder,
    resolve_name,
    unregister_embedder,
)
from vdb.embed.minilm import MAX_TOKENS, MiniLM
from vdb.errors import InvalidInput


def test_fixture_texts_give_the_fixture_vectors(model, texts):
    """The fixture was made with the same model and recipe: cosine >= 0.999 per text."""
    rows = np.random.default_rng(7).choice(len(texts.texts), 800, replace=False)
    got = model.embed([texts.texts[i] for i in rows])
    assert got.dtype == np.float32 and got.shape == (800, 384)
    assert cosines(got, texts.base[rows]).min() >= 0.999
    queries = model.embed(texts.query_texts)
    assert cosines(queries, texts.queries).min() >= 0.999


def test_rows_are_unit_length_and_in_input_order(model, texts):
    batch = texts.texts[:100]
    together = model.embed(batch)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    alone = np.stack([model.embed([t])[0] for t in batch[:10]])
    assert cosines(together[:10], alone).min() >= 0.9999
    assert model.embed([]).shape == (0, 384)


def test_long_texts_are_truncated_at_256_tokens(model):
    """A text longer than the limit is embedded from its first 256 tokens, not refused."""
    assert model.max_tokens == MAX_TOKENS == 256
    assert len(model.tokenize(["word " * 1000])[0]) == 256  # [CLS] + 254 words + [SEP]
    long = model.embed(["word " * 1000, "word " * 254])
    assert cosines(long[:1], long[1:]).min() >= 0.99999
    shorter = model.embed(["word " * 100])
    assert cosines(long[:1], shorter).min() < 0.99999  # the limit is not lower than 256


def test_batches_group_texts_by_length(model):
    small = MiniLM(threads=1, batch_size=4)
    texts_ = ["a", "a much longer text than the others " * 3, "b c", "d", "e f g", "h"]
    batches = small.batches(small.tokenize(texts_))
    widths = [ids.shape[1] for _, ids, _ in batches]
    assert widths == sorted(widths) and len(batches) == 2
    assert sorted(np.concatenate([rows for rows, _, _ in batches]).tolist()) == list(range(6))
    assert small.threads == 1
    assert cosines(small.embed(texts_), model.embed(texts_)).min() >= 0.9999


def test_registry_names_aliases_and_unknown_models():
    assert "minilm" in embedder_names()
    assert resolve_name("sentence-transformers/all-MiniLM-L6-v2") == "minilm"
    assert resolve_name("minilm") == "minilm"
    spec = embedder_spec("minilm")
    assert (spec.dimension, spec.metric, spec.max_tokens) == (384, "cosine", 256)
    assert get_embedder("sentence-transformers/all-MiniLM-L6-v2") is get_embedder("minilm")
    with pytest.raises(InvalidInput) as err:
        get_embedder("bert-huge")
    assert "bert-huge" in str(err.value) and "minilm" in str(err.value)
    assert "sentence-transformers/all-MiniLM-L6-v2" in str(err.value)


def test_missing_packages_name_the_extra():
    """A model whose packages are not installed says which extra brings them."""

    def never() -> MiniLM:
        raise AssertionError("the factory must not run without its packages")

    register_embedder(
        EmbedderSpec(
            name="needs-missing",
            dimension=8,
            metric="cosine",
            max_tokens=16,
            factory=never,
            requires=("vdb_no_such_package_for_tests",),
        )
    )
    try:
        with pytest.raises(EmbedderUnavailable) as err:
            get_embedder("needs-missing")
    finally:
        assert unregister_embedder("needs-missing")
    assert "vdb[embed]" in str(err.value) and "vdb_no_such_package_for_tests" in str(err.value)
    assert err.value.status_code == 501


def test_a_registered_model_plugs_in(texts):
    """A further model registers like an ingest source and is used by name."""

    class Hashing:
        name, dimension, metric, max_tokens = "hashing-test", 16, "cosine", 64

        def embed(self, texts_):
            out = np.zeros((len(texts_), 16), dtype=np.float32)
            for i, t in enumerate(texts_):
                for word in t.split():
                    out[i, hash(word) % 16] += 1.0
            return out

    register_embedder(EmbedderSpec("hashing-test", 16, "cosine", 64, factory=Hashing))
    try:
        got = get_embedder("hashing-test").embed(["a b", "c"])
    finally:
        assert unregister_embedder("hashing-test")
    assert got.shape == (2, 16) and got[0].sum() == 2.0
    with pytest.raises(InvalidInput):
        get_embedder("hashing-test")
