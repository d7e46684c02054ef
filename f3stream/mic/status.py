"""What the user sees while capturing: the live figures (input level, frames/s, compute and
end-to-end latency percentiles, drop counters) and the status line that shows them (the final
summary in :mod:`.cli` reports the same figures). Percentiles are the package's one
:func:`f3stream.stats.percentile`, so they compare with the server's and the benchmarks'."""

from __future__ import annotations

import math
import shutil
import sys
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TextIO

from ..stats import percentile

STATUS_HZ = 10.0           # status-line refreshes per second on a terminal
PLAIN_STATUS_S = 1.0       # when stdout is not a terminal: one status line per second


def pct(values: Iterable[float], q: float) -> float:
    """The package's percentile (:func:`f3stream.stats.percentile`, nearest rank), NaN when
    there are no values."""
    p = percentile(values, q)
    return math.nan if p is None else float(p)


def _ms(x: float) -> str:
    return "--" if math.isnan(x) else f"{x:.1f}"


@dataclass
class LiveStats:
    """Numbers the status line and the final summary show; written by the worker and the audio
    callback, read by the main thread (small scalars and deques: the GIL suffices)."""

    window: int = 250                                   # frames in the live percentiles (10 s)
    frames: int = 0
    dropped_blocks: int = 0
    overflows: int = 0
    level_power: float = 0.0                            # smoothed mean square of the input
    compute_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    ready_times: deque = field(default_factory=lambda: deque(maxlen=200))
    waiting: bool = True                                # no audio has arrived yet

    def level_dbfs(self) -> float:
        return 10.0 * math.log10(self.level_power) if self.level_power > 1e-12 else -120.0

    def frames_per_second(self, now: float) -> float:
        recent = [t for t in list(self.ready_times) if now - t <= 1.0]
        return float(len(recent))

    def line(self, now: float, width: int = 10) -> str:
        """E.g. ``in -21.3 dBFS [#######---] | 25.0 frames/s | p50/p99 compute 10.4/24.7 ms,
        e2e 12.2/31.0 ms | 65 frames`` (+ drop counters when any)."""
        if self.waiting:
            return "waiting for the first audio block from the device ..."
        db = self.level_dbfs()
        filled = int(round(width * min(1.0, max(0.0, (db + 60.0) / 60.0))))
        meter = "#" * filled + "-" * (width - filled)
        c, e = self.compute_ms[-self.window:], self.e2e_ms[-self.window:]
        parts = [f"in {db:6.1f} dBFS [{meter}]",
                 f"{self.frames_per_second(now):4.1f} frames/s",
                 f"p50/p99 compute {_ms(pct(c, 50))}/{_ms(pct(c, 99))} ms, "
                 f"e2e {_ms(pct(e, 50))}/{_ms(pct(e, 99))} ms"]
        if self.dropped_blocks or self.overflows:
            parts.append(f"dropped {self.dropped_blocks} overflows {self.overflows}")
        parts.append(f"{self.frames} frames")
        return " | ".join(parts)


class StatusPrinter:
    """One in-place line on a terminal (carriage return + clear-to-end), plain lines once per
    second otherwise (logs, pipes, tests)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.period = 1.0 / STATUS_HZ if self.tty else PLAIN_STATUS_S
        self._next = 0.0
        self._drawn = False

    def maybe(self, stats: LiveStats, now: float) -> None:
        """Draws ``stats`` unless the last line is more recent than the period."""
        if now < self._next:
            return
        self._next = now + self.period
        line = stats.line(now)
        if self.tty:  # never wider than the terminal: a wrapped line cannot be redrawn
            cols = shutil.get_terminal_size((120, 24)).columns
            self.stream.write("\r" + line[:max(20, cols - 1)] + "\x1b[K")
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def done(self) -> None:
        """Ends the in-place line, so what is printed next starts on a line of its own."""
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()

