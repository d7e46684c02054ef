"""Counters and rolling latency figures for the /metrics endpoint.

Kept separate from the server so the numbers are cheap to update on the hot path (plain
deques and ints, no locks: everything runs on the event loop thread).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from typing import Any

from .protocol import percentile

WINDOW_S = 10.0


class Metrics:
    """What the server has done: sessions, frames, batches, errors, latency percentiles."""

    def __init__(self, latency_samples: int = 20000):
        self.started = time.monotonic()
        self.sessions_total = 0
        self.frames_total = 0
        self.messages_total = 0
        self.batches_total = 0
        self.batched_sessions_total = 0
        self.errors: Counter[str] = Counter()
        self.latency_ms: deque[float] = deque(maxlen=latency_samples)
        self.step_ms: deque[float] = deque(maxlen=latency_samples)
        self._sent: deque[tuple[float, int]] = deque()

    def record_send(self, n_frames: int, latency_ms: float) -> None:
        now = time.monotonic()
        self.frames_total += n_frames
        self.messages_total += 1
        self.latency_ms.append(latency_ms)
        self._sent.append((now, n_frames))
        self._trim(now)

    def record_batch(self, n_sessions: int, seconds: float) -> None:
        self.batches_total += 1
        self.batched_sessions_total += n_sessions
        self.step_ms.append(seconds * 1000.0)

    def _trim(self, now: float) -> None:
        while self._sent and self._sent[0][0] < now - WINDOW_S:
            self._sent.popleft()

    def frames_per_second(self) -> float:
        now = time.monotonic()
        self._trim(now)
        span = min(WINDOW_S, max(now - self.started, 1e-3))
        return sum(n for _, n in self._sent) / span

    def snapshot(self, active_sessions: int) -> dict[str, Any]:
        lat = list(self.latency_ms)
        return {
            "sessions": active_sessions,
            "sessions_total": self.sessions_total,
            "frames_total": self.frames_total,
            "messages_total": self.messages_total,
            "frames_per_second": round(self.frames_per_second(), 2),
            "batches_total": self.batches_total,
            "mean_batch_sessions": (round(self.batched_sessions_total / self.batches_total, 2)
                                    if self.batches_total else None),
            "latency_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99),
                           "max": max(lat) if lat else None, "samples": len(lat),
                           "what": "server receive of the input that completed a frame -> "
                                   "send of its message"},
            "model_step_ms": {"p50": percentile(list(self.step_ms), 50),
                              "p99": percentile(list(self.step_ms), 99)},
            "errors": dict(self.errors),
            "uptime_s": round(time.monotonic() - self.started, 1),
        }
