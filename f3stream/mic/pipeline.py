"""The capture -> tokens pipeline: captured blocks go in from the audio callback without ever
blocking it, a worker thread resamples, quantises to 16 bits and tokenizes them one 40 ms frame
at a time, timing each frame (the package docstring, :mod:`f3stream.mic`, describes the threads
and defines the end-to-end latency measured here)."""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..alignment import Regrouper
from ..frames import EncodedFrames, join_frames
from ..resampling import StreamResampler
from .errors import MicError, one_line
from .playback import PlaybackBuffer
from .status import LiveStats

if TYPE_CHECKING:
    from ..tokenizer import Tokenizer

INT16_SCALE = 32768.0


def quantize_int16(x: np.ndarray) -> np.ndarray:
    """Rounds to the 16-bit PCM grid (k / 32768): what a 16-bit WAV stores exactly, so the
    saved capture reproduces the tokenizer's input bit for bit."""
    q = np.clip(np.round(x.astype(np.float64) * INT16_SCALE), -INT16_SCALE, INT16_SCALE - 1)
    return (q / INT16_SCALE).astype(np.float32)


class MicPipeline:
    """Captured blocks in (from any thread, never blocking), tokens out (in a worker thread).

    ``submit`` is what the audio callback calls. ``finish`` drains the queue, flushes the
    session (zero-padding the last partial frame exactly as offline tokenization does) and
    returns the complete result.
    """

    def __init__(self, tok: "Tokenizer", capture_rate: int, representations: bool = True,
                 decode: bool = False, playback: PlaybackBuffer | None = None,
                 max_queue_blocks: int = 200) -> None:
        self.tok = tok
        self.hop = tok.hop_length
        self.rate = tok.sample_rate
        self.capture_rate = capture_rate
        self.resampler = (StreamResampler(capture_rate, self.rate)
                          if capture_rate != self.rate else None)
        self._n_resampler_in = 0                  # captured samples given to the resampler
        self.session = tok.session(representations=representations)
        self.decoder = tok.decoder_session() if decode or playback is not None else None
        self.playback = playback
        self.stats = LiveStats()
        self.queue: queue.Queue = queue.Queue(maxsize=max_queue_blocks)
        self.captured: list[np.ndarray] = []
        self.parts: list[EncodedFrames] = []      # the frames so far, in order
        self.recon: list[np.ndarray] = []
        self._frames = Regrouper(self.hop, np.zeros(0, dtype=np.float32))  # whole frames
        self._n_fed = 0                           # model-rate samples fed so far
        self._times: deque = deque()              # (end position, capture time of end - 1)
        self.error: BaseException | None = None
        self.samples_in = 0                       # captured samples, dropped ones included
        self._thread = threading.Thread(target=self._run, name="f3stream-mic-worker",
                                        daemon=True)

    # called from the audio callback: must not block
    def submit(self, block: np.ndarray, t_last: float) -> None:
        self.samples_in += block.size
        try:
            self.queue.put_nowait((block, t_last))
        except queue.Full:
            self.stats.dropped_blocks += 1

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        try:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                self._process(*item)
        except BaseException as e:  # surfaced by the main thread as one error line
            self.error = e

    def _process(self, block: np.ndarray, t_last: float) -> None:
        if self.resampler is None:
            self._feed(quantize_int16(block), t_last, self._n_fed + block.size)
            return
        # the resampler holds output back (its latency), so the block's last captured sample
        # is at this model-rate position, beyond the output it returns now
        self._n_resampler_in += block.size
        end = self._n_resampler_in * self.rate // self.capture_rate
        self._feed(quantize_int16(self.resampler.process(block)), t_last, end)

    def _feed(self, x: np.ndarray, t_last: float, end: int) -> None:
        """``end``: the model-rate position just after the sample captured at ``t_last``."""
        self.stats.waiting = False
        if x.size == 0:
            return
        power = float(np.mean(np.square(x, dtype=np.float64)))
        alpha = min(1.0, x.size / (0.1 * self.rate))        # ~100 ms smoothing
        self.stats.level_power += alpha * (power - self.stats.level_power)
        self.captured.append(np.round(x * INT16_SCALE).astype(np.int16))  # exact, half size
        self._n_fed += x.size
        self._times.append((end, t_last))
        for frame in self._frames.units(x):
            self._frame(frame)

    def _capture_time(self, sample: int) -> float:
        """Capture time of model-rate sample ``sample`` (from the block that contained it)."""
        while len(self._times) > 1 and self._times[0][0] <= sample:
            self._times.popleft()
        end, t_last = self._times[0]
        return t_last - (end - 1 - sample) / self.rate

    def _frame(self, frame: np.ndarray) -> None:
        t0 = time.perf_counter()
        out = self.session.push(frame)
        t1 = time.perf_counter()
        ready = time.monotonic()
        last_sample = (out.start_frame + out.n_frames) * self.hop - 1
        self._keep(out)
        s = self.stats
        s.compute_ms.append(1000.0 * (t1 - t0))
        s.e2e_ms.append(1000.0 * (ready - self._capture_time(last_sample)))
        s.ready_times.append(ready)
        s.frames += out.n_frames
        if self.decoder is not None:
            t2 = time.perf_counter()
            pcm = self.decoder.push(out.latents)
            s.decode_ms.append(1000.0 * (time.perf_counter() - t2))
            self._emit(pcm)

    def _keep(self, out: EncodedFrames) -> None:
        if out.n_frames:
            self.parts.append(out)

    def _emit(self, pcm: np.ndarray) -> None:
        self.recon.append(pcm)
        if self.playback is not None:
            self.playback.write(pcm)

    def finish(self, timeout: float = 60.0) -> "MicResult":
        """Stops the worker after it has processed every queued block, then flushes."""
        if self._thread.is_alive():
            self.queue.put(None)
            self._thread.join(timeout)
        if self.error is not None:
            raise MicError(f"tokenizing the microphone stream failed: "
                           f"{type(self.error).__name__}: {one_line(self.error)}")
        if self._thread.is_alive():
            raise MicError(f"the tokenizer worker did not finish within {timeout:g} s")
        if self.resampler is not None:
            tail = quantize_int16(self.resampler.flush())
            if tail.size:
                self.captured.append(np.round(tail * INT16_SCALE).astype(np.int16))
                for frame in self._frames.units(tail):  # the held-back tail completes frames
                    out = self.session.push(frame)
                    self._keep(out)
                    self.stats.frames += out.n_frames
                    if self.decoder is not None:
                        self._emit(self.decoder.push(out.latents))
        self.session.push(self._frames.take_pending())  # < 1 frame: completes nothing
        last = self.session.flush()                     # (zero-padded to a whole frame)
        self._keep(last)
        self.stats.frames += last.n_frames
        if self.decoder is not None:
            self._emit(self.decoder.push(last.latents))
            self._emit(self.decoder.flush())
        frames = join_frames(self.parts, self.tok.latent_dim,
                             self.tok.representation_dim if self.session.with_representations
                             else None)
        audio = (np.concatenate(self.captured).astype(np.float32) / INT16_SCALE
                 if self.captured else np.zeros(0, np.float32))
        recon = np.concatenate(self.recon) if self.decoder is not None and self.recon else None
        return MicResult(frames, audio, recon, self.stats)


@dataclass
class MicResult:
    """What :meth:`MicPipeline.finish` returns: everything the command saves and reports."""

    frames: EncodedFrames             # the whole stream
    audio: np.ndarray                 # what the tokenizer saw, at the model's rate
    reconstruction: np.ndarray | None
    stats: LiveStats
