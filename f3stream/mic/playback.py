"""Playing the live reconstruction: a FIFO between the worker thread (writes decoded PCM) and
the output device's callback (reads), a reader that resamples it to the device's rate, and the
drain that lets the queued audio finish before the stream closes."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

import numpy as np

from ..resampling import StreamResampler


class PlaybackBuffer:
    """A lock-protected sample FIFO between the worker (writes decoded PCM) and the output
    callback (reads). Reading starts once ``prefill`` samples are queued, so playback does not
    stutter from the first frame; afterwards a short read is padded with silence and counted."""

    def __init__(self, prefill: int) -> None:
        self._lock = threading.Lock()
        self._chunks: deque[np.ndarray] = deque()
        self._size = 0
        self._prefill = prefill
        self._started = False
        self.underruns = 0
        self.played = 0      # samples handed to the device (padding not counted)
        self.abandoned = 0   # samples still queued when the stream was closed

    def write(self, pcm: np.ndarray) -> None:
        if pcm.size:
            with self._lock:
                self._chunks.append(pcm.astype(np.float32, copy=False))
                self._size += pcm.size

    def read(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=np.float32)
        with self._lock:
            if not self._started:
                if self._size < self._prefill:
                    return out
                self._started = True
            got = 0
            while got < n and self._chunks:
                c = self._chunks[0]
                take = min(n - got, c.size)
                out[got:got + take] = c[:take]
                got += take
                if take == c.size:
                    self._chunks.popleft()
                else:
                    self._chunks[0] = c[take:]
            self._size -= got
            self.played += got
            if got < n:
                self.underruns += 1
        return out


class ResamplingReader:
    """Pulls model-rate PCM from a :class:`PlaybackBuffer` and resamples it to the output
    device's rate, keeping the surplus for the next callback."""

    def __init__(self, source: PlaybackBuffer, resampler: StreamResampler, in_rate: int,
                 out_rate: int) -> None:
        self.source, self.resampler = source, resampler
        self.ratio = in_rate / out_rate
        self._left = np.zeros(0, dtype=np.float32)

    def read(self, n: int) -> np.ndarray:
        while self._left.size < n:
            need = max(1, int(math.ceil((n - self._left.size) * self.ratio)) + 1)
            self._left = np.concatenate([self._left, self.resampler.process(
                self.source.read(need))])
        out, self._left = self._left[:n], self._left[n:]
        return out


def drain_playback(playback: PlaybackBuffer | None, stream: Any, rate: int) -> None:
    """Lets the queued reconstruction finish playing (at most 2 s), then closes the stream.

    It aborts rather than stops the stream: stopping waits until the device has played every
    buffered sample (ALSA's drain), which never returns when the device has stalled; after the
    wait here only the device's own latency is left in its buffers, so it is waited for too."""
    if playback is None:
        return
    deadline = time.monotonic() + 2.0
    while playback._size > 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    with playback._lock:
        playback.abandoned = playback._size
    try:
        time.sleep(min(0.5, float(getattr(stream, "latency", 0.0) or 0.0)))
        stream.abort()
        stream.close()
    except Exception:  # noqa: BLE001 - closing a broken device must not lose the saved files
        pass
