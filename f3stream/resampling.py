"""Streaming resampling: one ``soxr.ResampleStream`` per stream, the same resampler the file
reader uses (:mod:`f3stream.audiofile`), so a stream cut into any chunks gives exactly what
one-shot ``soxr.resample`` gives for the whole signal.

The price of libsoxr's steep filter is latency: output samples are held back until enough
later input has arrived. :func:`stream_latency_ms` measures it (docs/protocol.md lists it per
rate): the server reports it to clients, and callers can budget for it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import AudioInputError


class StreamResampler:
    """Resamples one mono float32 stream chunk by chunk (a pass-through when the rates agree).
    :meth:`flush` ends a stream (returning its held-back tail), :meth:`reset` drops one.

    ``quality`` is libsoxr's: ``"HQ"`` (the default, used for everything that is heard or
    tokenized) or e.g. ``"QQ"`` (cubic interpolation, no filter, so almost nothing is held
    back: the server's voice-activity input, where up to 37 ms of HQ's blockwise hold-back
    would delay every frame's speech probability and aliasing does not matter)."""

    def __init__(self, in_rate: int, out_rate: int, quality: str = "HQ"):
        if in_rate <= 0 or out_rate <= 0:
            raise AudioInputError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        self.quality = quality
        self.reset()

    def reset(self) -> None:
        self._stream = None
        if self.in_rate != self.out_rate:
            import soxr

            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="float32",
                                              quality=self.quality)

    def process(self, x: np.ndarray) -> np.ndarray:
        """Feeds a chunk (any length, even 0); returns the output samples it completed."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
        return x if self._stream is None else self._stream.resample_chunk(x)

    def flush(self) -> np.ndarray:
        """Ends the stream and returns its held-back output; the resampler is then fresh for
        the next stream (libsoxr takes no input after its last)."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, np.float32), last=True)
        self.reset()
        return tail


@lru_cache(maxsize=None)
def stream_latency_ms(in_rate: int, out_rate: int) -> float:
    """The algorithmic latency :class:`StreamResampler` adds, measured with an impulse: after a
    second of input, an impulse is fed one sample at a time followed by zeros; the latency is
    the input that must follow the impulse before its output sample is returned (chunking
    adds its own wait on top)."""
    r = StreamResampler(in_rate, out_rate)
    if in_rate == out_rate:
        return 0.0
    got = r.process(np.zeros(in_rate, np.float32)).size
    got += r.process(np.ones(1, np.float32)).size
    target = out_rate  # the output index of an impulse at input index in_rate (1 s)
    zero, after = np.zeros(1, np.float32), 0
    while got <= target:
        got += r.process(zero).size
        after += 1
    return round(after / in_rate * 1000.0, 2)
