"""Tuning progress: a live one-line bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass
class ProgressState:
    trials: int  # measured
    submitted: int  # sent to the builder (measured in batches later)
    trial_budget: int | None  # None: a time budget alone (the bar shows the time spent)
    tasks_done: int
    tasks_total: int
    estimated_ms: float | None  # best estimated end-to-end latency so far
    elapsed_s: float
    remaining_s: float | None


class Progress:
    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 0.2):
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._last_line = ""

    def message(self, text: str) -> None:
        if self.live:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, state: ProgressState, final: bool = False) -> None:
        now = time.monotonic()
        if not final and self.live and now - self._last < self.min_interval_s:
            return
        self._last = now
        line = self.format(state)
        if line == self._last_line and not (final and self.live):
            return
        self._last_line = line
        if self.live:
            self.stream.write("\r\033[K" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @staticmethod
    def format(s: ProgressState) -> str:
        width = 24
        if s.trial_budget is None:
            total = s.elapsed_s + (s.remaining_s or 0.0)
            done = sent = int(width * min(1.0, s.elapsed_s / total)) if total > 0 else 0
            measured = f"{s.trials} trials measured"
        else:
            done = int(width * min(1.0, s.trials / max(1, s.trial_budget)))
            sent = max(done, int(width * min(1.0, s.submitted / max(1, s.trial_budget))))
            measured = f"{s.trials}/{s.trial_budget} trials measured"
        bar = "#" * done + "+" * (sent - done) + "-" * (width - sent)
        est = f"{s.estimated_ms:.3f} ms" if s.estimated_ms is not None else "n/a"
        remaining = f", ~{_clock(s.remaining_s)} left" if s.remaining_s is not None else ""
        return (
            f"tuning [{bar}] {measured} ({s.submitted} sent), "
            f"kernels {s.tasks_done}/{s.tasks_total}, "
            f"best est. {est}, {_clock(s.elapsed_s)} elapsed{remaining}"
        )


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}"
