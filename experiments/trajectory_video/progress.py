"""A small progress printer for stderr: rate and ETA, log-friendly when not a terminal.

On a terminal the line is redrawn in place; otherwise (a worker log file) one full line
is printed at most every ``log_interval`` seconds, plus the final line.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Counts ``done`` out of ``total`` units and prints rate and ETA."""

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "samples",
        stream: TextIO | None = None,
        log_interval: float = 5.0,
        initial: int = 0,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.total = total
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.log_interval = log_interval
        self.done = initial
        self._start_done = initial
        self._start = time.perf_counter()
        self._last_print = -float("inf")

    def rate(self) -> float:
        elapsed = time.perf_counter() - self._start
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta_text = format_duration(eta) if eta == eta else "?"
        return (
            f"{self.label} {self.done}/{self.total} {self.unit} {pct:5.1f}% "
            f"{rate:,.0f} {self.unit}/s ETA {eta_text}"
        )

    def update(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        interval = 0.1 if self.tty else self.log_interval
        if self.done >= self.total or now - self._last_print >= interval:
            self._last_print = now
            self._emit(final=self.done >= self.total)

    def _emit(self, final: bool) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
