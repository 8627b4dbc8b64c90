"""Progress of the corpus cache build: one bar per step, or plain log lines.

Building the cache of a large corpus takes hours (reading and training the tokenizer, encoding,
the unigram baseline), so each step shows documents and bytes done, the rate, and an estimate of
the time left when the total is known (encoding knows it from the first pass). On a terminal
these are rich progress bars, as in the retrieval database build; when the output is not a
terminal (a log file, a batch job) or `XLAB_PROGRESS=0`, a plain line every `interval` seconds
and one when the step ends. `XLAB_PROGRESS=1` forces bars.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
                           TransferSpeedColumn)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class BuildProgress:
    """Steps of one build. `bars`: None decides from XLAB_PROGRESS and whether `stream` is a terminal."""

    def __init__(self, bars: bool | None = None, stream: TextIO | None = None, interval: float = 30.0):
        self.stream = stream or sys.stderr
        if bars is None:
            setting = os.environ.get("XLAB_PROGRESS", "").lower()
            bars = setting in ("1", "true", "on") or (setting not in ("0", "false", "off") and _is_terminal(self.stream))
        self.interval = interval
        self._rich = None
        if bars:
            self._rich = Progress(TextColumn("[bold]{task.description:<18}"), BarColumn(bar_width=24),
                                  TextColumn("{task.fields[items]:>10,} {task.fields[unit]}"), DownloadColumn(),
                                  TransferSpeedColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                                  console=Console(file=self.stream))

    @property
    def bars(self) -> bool:
        return self._rich is not None

    def __enter__(self) -> BuildProgress:
        if self._rich is not None:
            self._rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def step(self, name: str, unit: str = "documents", total_items: int | None = None,
             total_bytes: int | None = None) -> Step:
        return Step(self, name, unit, total_items, total_bytes)


class Step:
    """One step's counters; `update` after each piece of work, `finish` at the end."""

    def __init__(self, owner: BuildProgress, name: str, unit: str, total_items: int | None, total_bytes: int | None):
        self.owner, self.title, self.name, self.unit = owner, name, name, unit
        self.total_items, self.total_bytes = total_items, total_bytes
        self.items = self.bytes = 0
        self.started = self.last_line = time.monotonic()
        self._task = None
        if owner._rich is not None:
            self._task = owner._rich.add_task(name, total=total_bytes, items=0, unit=unit)

    def update(self, items: int = 0, nbytes: int = 0) -> None:
        self.items += items
        self.bytes += nbytes
        if self._task is not None:
            self.owner._rich.update(self._task, advance=nbytes, items=self.items)
        elif time.monotonic() - self.last_line >= self.owner.interval:
            self._line(self._status())

    def describe(self, name: str) -> None:
        """A new name for what the step is doing now (e.g. training the tokenizer once read)."""
        self.name = name
        if self._task is not None:
            self.owner._rich.update(self._task, description=name)
        else:
            self._line(f"{self._status()}")

    def finish(self) -> None:
        elapsed = time.monotonic() - self.started
        if self._task is not None:
            self.owner._rich.update(self._task, total=self.bytes, completed=self.bytes, items=self.items)
        else:
            rate = self.bytes / elapsed if elapsed > 0 else 0.0
            self._line(f"{self.title}: done, {self.items:,} {self.unit}, {human_bytes(self.bytes)} in {clock(elapsed)} "
                       f"({human_bytes(rate)}/s)")

    def _status(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.bytes / elapsed if elapsed > 0 else 0.0
        items = f"{self.items:,}" + (f"/{self.total_items:,}" if self.total_items else "")
        done = human_bytes(self.bytes) + (f"/{human_bytes(self.total_bytes)}" if self.total_bytes else "")
        text = f"{self.name}: {items} {self.unit}, {done}, {human_bytes(rate)}/s, {clock(elapsed)} elapsed"
        if self.total_bytes and rate > 0:
            text += f", about {clock(max(0.0, self.total_bytes - self.bytes) / rate)} left"
        return text

    def _line(self, text: str) -> None:
        print(f"xlab: {text}", file=self.owner.stream, flush=True)
        self.last_line = time.monotonic()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
