"""Crash-test writer for text: upserts documents in batches until it is killed.

Usage: ``python crash_text_writer.py DATA_DIR LOG_PATH``

Batch ``b`` upserts ids ``b*BATCH .. b*BATCH+BATCH-1`` with the fixture's
texts of those rows. After ``upsert`` returns, the batch number is appended
to LOG_PATH and fsynced: every logged batch was acknowledged. Checkpoints are
off, so the reopened database must replay every batch from the WAL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import vdb

BATCH = 16
FIXTURE = Path(__file__).resolve().parents[1] / "data" / "minilm-10k" / "base.txt"


def fixture_texts() -> list[str]:
    with open(FIXTURE, encoding="utf-8") as f:
        return [line.rstrip("\n").partition("\t")[2] for line in f]


def main(data_dir: str, log_path: str) -> None:
    texts = fixture_texts()
    db = vdb.open(data_dir, checkpoint_interval_s=None, checkpoint_wal_bytes=None, warm=False)
    col = db.create_collection("docs", embedder="minilm")
    with open(log_path, "a", encoding="utf-8") as log:
        batch = 0
        while (batch + 1) * BATCH <= len(texts):
            ids = list(range(batch * BATCH, (batch + 1) * BATCH))
            col.upsert(ids, documents=[texts[i] for i in ids], payloads=[{"b": batch}] * BATCH)
            log.write(f"{batch}\n")
            log.flush()
            os.fsync(log.fileno())
            batch += 1


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
