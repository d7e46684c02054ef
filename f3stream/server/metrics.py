"""Counters and latency figures for ``/metrics`` (Prometheus text) and ``/metrics.json``.

Kept separate from the server so the numbers are cheap to update on the hot path (plain
deques and ints, no locks: everything runs on the event loop thread). The counters and gauges
of the Prometheus text are read from those same ints at scrape time (one count, two formats);
only the histograms are observed as values arrive (one small prometheus_client lock each),
since their buckets must see every value and the deques keep only the latest ones. Each server has its own registry, so several servers
in one process (the tests) do not share or collide on metric names.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..stats import percentile
from .protocol import ERROR_CODES

WINDOW_S = 10.0
# Frame latency is a few ms on an idle server and must stay under a frame (40 ms); a model
# step is ~1 ms for one stream and tens of ms for a full pool. Seconds, as Prometheus wants.
LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 1.0)
STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32)
DIRECTIONS = ("encode", "decode")
PROMETHEUS_TEXT = CONTENT_TYPE_LATEST  # the Content-Type of what expose() writes


class Metrics:
    """What the server has done: sessions, frames, batches, errors, latency percentiles."""

    def __init__(self, active_sessions: Callable[[], int], latency_samples: int = 20000):
        self.active_sessions = active_sessions
        self.started = time.monotonic()
        self.sessions_total = 0
        self.frames: Counter[str] = Counter()  # frames sent by direction (audio message: 1)
        self.messages_total = 0
        self.batches_total = 0
        self.batched_sessions_total = 0
        self.errors: Counter[str] = Counter()
        self.latency_ms: deque[float] = deque(maxlen=latency_samples)
        self.step_ms: deque[float] = deque(maxlen=latency_samples)
        self._sent: deque[tuple[float, int]] = deque()
        self.engine: Callable[[], dict[str, Any]] | None = None  # set by the server
        self.vad: Any = None  # the server's VadModel once a session asked for voice activity
        self.registry = CollectorRegistry(auto_describe=True)
        self._latency_s = Histogram(
            "f3stream_frame_latency_seconds", "Server receive of the input that completed a "
            "frame -> send of its message", buckets=LATENCY_BUCKETS, registry=self.registry)
        self._step_s = Histogram("f3stream_model_step_seconds", "One batched model round",
                                 buckets=STEP_BUCKETS, registry=self.registry)
        self.registry.register(_Counts(self))

    @property
    def frames_total(self) -> int:
        return sum(self.frames.values())

    def record_send(self, n_frames: int, latency_ms: float, direction: str) -> None:
        now = time.monotonic()
        self.frames[direction] += n_frames
        self.messages_total += 1
        self.latency_ms.append(latency_ms)
        self._latency_s.observe(latency_ms / 1000.0)
        self._sent.append((now, n_frames))
        self._trim(now)

    def record_batch(self, n_sessions: int, seconds: float) -> None:
        self.batches_total += 1
        self.batched_sessions_total += n_sessions
        self.step_ms.append(seconds * 1000.0)
        self._step_s.observe(seconds)

    def _trim(self, now: float) -> None:
        while self._sent and self._sent[0][0] < now - WINDOW_S:
            self._sent.popleft()

    def frames_per_second(self) -> float:
        now = time.monotonic()
        self._trim(now)
        span = min(WINDOW_S, max(now - self.started, 1e-3))
        return sum(n for _, n in self._sent) / span

    def snapshot(self) -> dict[str, Any]:
        """The ``/metrics.json`` body."""
        lat = list(self.latency_ms)
        return {
            "sessions": self.active_sessions(),
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
            # engine, matrix-product plan, BLAS kernels: what a model step's speed depends on
            "engine": self.engine() if self.engine is not None else None,
            "vad": self._vad_snapshot(),
        }

    def _vad_snapshot(self) -> dict[str, Any] | None:
        """The VAD model's work so far: calls, windows (32 ms of a session's audio each), the
        wall and CPU time they took (a stream needs 31.25 windows a second)."""
        v = self.vad
        if v is None:
            return None
        per = (lambda t: round(t / v.windows * 1e6, 1)) if v.windows else (lambda t: None)
        return {"calls_total": v.calls, "windows_total": v.windows,
                "seconds_total": round(v.seconds, 4), "cpu_seconds_total": round(v.cpu_seconds, 4),
                "mean_batch": round(v.windows / v.calls, 2) if v.calls else None,
                "us_per_window": per(v.seconds), "cpu_us_per_window": per(v.cpu_seconds)}

    def expose(self) -> bytes:
        """The ``/metrics`` body: the Prometheus text exposition of this server's registry."""
        return generate_latest(self.registry)


class _Counts(Collector):
    """Counters and gauges read from :class:`Metrics` when scraped (nothing on the hot path).
    Every direction and error code is exposed from 0, so rates and alerts see the series
    before its first event."""

    def __init__(self, m: Metrics):
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m = self.m
        frames = CounterMetricFamily("f3stream_frames", "Frames sent, by session direction "
                                     "(a decode session's audio message counts as one)",
                                     labels=["direction"])
        for d in DIRECTIONS:
            frames.add_metric([d], m.frames[d])
        yield frames
        errors = CounterMetricFamily("f3stream_errors", "Connections ended by an error, by code",
                                     labels=["code"])
        for code in sorted(set(ERROR_CODES) | set(m.errors)):
            errors.add_metric([code], m.errors[code])
        yield errors
        yield CounterMetricFamily("f3stream_sessions", "Sessions opened",
                                  value=m.sessions_total)
        yield CounterMetricFamily("f3stream_messages", "Frame messages sent",
                                  value=m.messages_total)
        yield CounterMetricFamily("f3stream_batches", "Batched model rounds",
                                  value=m.batches_total)
        yield GaugeMetricFamily("f3stream_open_sessions", "Sessions open now",
                                value=m.active_sessions())
        vad = m.vad  # from 0 before any session asked for voice activity
        yield CounterMetricFamily("f3stream_vad_windows", "Voice-activity windows (32 ms of "
                                  "a session's audio each) run", value=vad.windows if vad else 0)
        yield CounterMetricFamily("f3stream_vad_seconds", "Time spent in voice-activity model "
                                  "calls", value=vad.seconds if vad else 0.0)
        yield CounterMetricFamily("f3stream_vad_cpu_seconds", "CPU time of the voice-activity "
                                  "model calls (their thread's)",
                                  value=vad.cpu_seconds if vad else 0.0)
