"""Progress bars for long operations: tqdm on a terminal, nothing otherwise.

``snapshot``, ``restore`` and ``load`` on the command line, and any caller of
a long ``HNSW.add``/``replace``, hand a :class:`ProgressBar` to the code doing
the work as a ``progress(done, total)`` callback. The bar shows the rate and
the time left, is drawn on stderr only when stderr is a TTY (a pipe, a log
file or a CI run stay clean), and with ``delay`` appears only once the work
has taken that long, so short operations print nothing.
"""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TextIO

from tqdm import tqdm


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _width(stream: TextIO) -> int | None:
    """None (follow the terminal as it resizes) unless it reports no width (a bare pty)."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    return None if columns > 0 else 80


class ProgressBar:
    """A ``progress(done, total)`` callback drawn by tqdm when ``stream`` (stderr) is a TTY.

    ``done`` is absolute (the count so far, not an increment); ``total`` may
    change between calls (a snapshot learns its size as it starts). ``unit="B"``
    scales to KiB/MiB. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        label: str,
        total: int | None = None,
        unit: str = "it",
        stream: TextIO | None = None,
        delay: float = 0.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = is_terminal(self.stream)
        scaled = unit == "B"
        width = _width(self.stream) if self.enabled else None
        self._bar = tqdm(
            desc=label,
            total=total,
            unit=unit,
            unit_scale=scaled,
            unit_divisor=1024 if scaled else 1000,
            file=self.stream,
            disable=not self.enabled,
            delay=delay,
            ncols=width,
            dynamic_ncols=width is None,
            leave=True,
        )
        self.done = 0

    def __call__(self, done: int, total: int | None = None) -> None:
        if total is not None and total != self._bar.total:
            self._bar.total = total
        self._bar.update(done - self.done)
        self.done = done

    update = __call__

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
