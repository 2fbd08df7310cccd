"""A JSON-lines source: a file (or stdin) of one message object per line.

Useful for bulk loads and for running the whole pipeline without a broker.
The topic is the path as given (``"-"`` for stdin), the partition is 0 and
the offset is the 0-based line number, so a restarted load skips every line
the WAL already holds (stdin cannot be re-read, so it starts where it is).
Blank lines are skipped but keep their numbers. Lines are handed to the
pipeline as message values; the default format is ``json``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from vdb.ingest.source import Assignment, Message, TopicPartition

STDIN = "-"


class FileSource:
    """Reads ``path`` (``"-"`` = stdin) line by line; ``follow=True`` waits for appended lines."""

    kind = "file"
    default_format = "json"

    def __init__(
        self,
        path: str | Path = STDIN,
        *,
        name: str | None = None,
        follow: bool = False,
        topic: str | None = None,
        format: str | None = None,  # noqa: A002 - the option's user-facing name
    ) -> None:
        self.path = str(path)
        self.topic = topic or self.path
        self.name = name or f"file:{self.topic}"
        self.follow = follow
        if format:
            self.default_format = format
        self._file: IO[bytes] | None = None
        self._next_line = 0
        self._paused = False
        self._eof = False
        self._closed = False

    def start(self, assignment: Assignment) -> None:
        if self.path == STDIN:
            self._file = sys.stdin.buffer
        else:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        stored = assignment.stored_offset(self.topic, 0)
        if stored is not None and self.path != STDIN:
            for _ in range(stored + 1):
                if not self._file.readline():
                    break
            self._next_line = stored + 1
        assignment.assigned([(self.topic, 0)])

    def poll(self, max_records: int, timeout_s: float) -> list[Message]:
        if self._paused or self._file is None:
            time.sleep(min(timeout_s, 0.01))
            return []
        out: list[Message] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < max_records:
            position = self._file.tell() if self.follow and self._file.seekable() else None
            line = self._file.readline()
            if not line or (self.follow and not line.endswith(b"\n")):
                if position is not None and line:
                    self._file.seek(position)  # a partial line: wait for the rest
                if not self.follow:
                    self._eof = True
                    break
                if out or time.monotonic() >= deadline:
                    break
                time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))
                continue
            offset = self._next_line
            self._next_line += 1
            value = line.strip()
            if value:
                out.append(Message(self.topic, 0, offset, None, value, None))
        return out

    def finished(self) -> bool:
        """True once a non-following source has read its last line."""
        return self._eof and not self.follow

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        if any(tp == (self.topic, 0) for tp in partitions):
            self._paused = True

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        if any(tp == (self.topic, 0) for tp in partitions):
            self._paused = False

    def assignment(self) -> list[TopicPartition]:
        return [(self.topic, 0)]

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Nothing upstream to tell: the WAL holds the position."""

    def end_offsets(self) -> dict[TopicPartition, int | None]:
        return {(self.topic, 0): None}

    def health(self) -> dict[str, Any]:
        return {"connected": not self._closed, "errors": 0, "last_error": None}

    def close(self) -> None:
        self._closed = True
        if self._file is not None and self._file is not sys.stdin.buffer:
            self._file.close()
        self._file = None
