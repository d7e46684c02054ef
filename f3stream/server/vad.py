"""Voice activity for live sessions (hello ``"vad": true``, protocol version 2): a speech
probability per frame and ``speech_start`` / ``speech_end`` events, from the Silero VAD.

* **Model.** The ONNX file the PyPI package ``silero-vad`` ships (``silero_vad.onnx``, what its
  ``load_silero_vad(onnx=True)`` loads), run with onnxruntime on one thread. The package's
  Python code is not imported: it imports torch and sets torch's thread count process-wide.
  Its inputs: ``input`` [batch, 64 + 512] float32 (a 32 ms window at 16 kHz after the last 64
  samples of the window before it, zeros before the first), ``state`` [2, batch, 128] (the
  recurrent state, zeros at a stream's start), ``sr`` (16000); outputs the speech
  probability [batch, 1] and the next state. Both carry a batch dimension, so one call steps
  one window of every session in a round (:func:`run_windows`); the rows are independent
  (batched equals one by one, tested).
* **Input.** Each session's audio at the model's 24 kHz goes through its own
  :class:`~f3stream.resampling.StreamResampler` to 16 kHz at libsoxr's quick quality (cubic
  interpolation): it holds back about one sample, where the high quality holds back up to
  37 ms in blocks, which would delay each frame's probability by a frame. Aliasing does not
  matter to the VAD (the package itself feeds 32 and 48 kHz audio to it decimated without a
  filter).
* **Frames.** A frame (40 ms = 640 samples at 16 kHz) carries the highest probability of the
  windows that end inside it: window k (samples 512k .. 512(k+1)) belongs to frame i when
  640 i <= 512 (k + 1) < 640 (i + 1), so each frame has one or two windows, and all of them
  have been computed when the frame is (the last ends at least 8 ms before the frame does).
  The probabilities therefore depend on the audio only, not on how it was cut into messages.
* **Events** (:class:`SpeechSegmenter`): hysteresis on the frames' probabilities, the
  package's own defaults for the thresholds.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import F3StreamError
from ..resampling import StreamResampler

VAD_RATE = 16000      # Hz: the model's rate (it also takes 8000, which we do not need)
WINDOW = 512          # samples per model call at 16 kHz (32 ms): the only size it is trained on
CONTEXT = 64          # samples of the previous window the model sees before each window
STATE_SIZE = 128      # the recurrent state: [2, batch, 128]
MODEL_FILE = "silero_vad/data/silero_vad.onnx"   # inside the silero-vad distribution


class VadUnavailable(F3StreamError):
    """The server cannot run the VAD (silero-vad or onnxruntime is not installed)."""


@dataclass(frozen=True)
class VadParams:
    """When speech starts and ends. Speech starts at the first frame whose probability reaches
    ``start_threshold``; it ends once ``min_silence_frames`` frames in a row have passed since
    a frame below ``end_threshold`` without one reaching ``start_threshold`` again (the event
    names that first quiet frame). 0.5 and 0.35 are silero-vad's defaults (its
    ``threshold`` and ``threshold - 0.15``). 12 frames = 480 ms of silence end a segment: the
    pauses between the words of a sentence do not (280 ms between "Front" and "Center" in the
    alsa-utils prompt; the package's 100 ms default splits at most of them), and an agent can
    still wait longer before it takes its turn."""

    start_threshold: float = 0.5
    end_threshold: float = 0.35
    min_silence_frames: int = 12


def model_path() -> Path:
    """The ONNX file of the installed silero-vad distribution, located through its metadata:
    ``importlib.resources`` would import the package, and with it torch."""
    from importlib import metadata

    try:
        dist = metadata.distribution("silero-vad")
    except metadata.PackageNotFoundError:
        raise VadUnavailable("voice activity needs the 'silero-vad' package on the server: "
                             "pip install 'f3stream[server]'") from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise VadUnavailable(f"the silero-vad distribution has no {MODEL_FILE}")
    return path


class VadModel:
    """The Silero VAD ONNX model, shared by every session of a server (an onnxruntime session
    may be run from several threads at once). Counts the windows it steps and the time it
    takes, for ``/metrics``: wall time, and the calling thread's CPU time, which other
    processes on a busy machine do not inflate (with one intra-op thread, onnxruntime
    computes on the caller's thread)."""

    def __init__(self, path: str | Path | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise VadUnavailable("voice activity needs the 'onnxruntime' package on the "
                                 "server: pip install 'f3stream[server]'") from None
        path = Path(path) if path is not None else model_path()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1   # the model worker's own thread, like the tokenizer's
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3     # the graph optimiser's notes about unused initialisers
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - a broken install: say so to the client
            raise VadUnavailable(f"cannot load {path.name}: {type(e).__name__}: {e}") from e
        self.version = _silero_version()
        self._sr = np.array(VAD_RATE, np.int64)
        self._lock = threading.Lock()
        self.calls = self.windows = 0
        self.seconds = self.cpu_seconds = 0.0

    def step(self, x: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``x`` [B, CONTEXT + WINDOW], ``state`` [2, B, 128] -> probabilities [B], state."""
        t0, c0 = time.perf_counter(), time.thread_time()
        prob, state = self.session.run(None, {"input": x, "state": state, "sr": self._sr})
        dt, dc = time.perf_counter() - t0, time.thread_time() - c0
        with self._lock:
            self.calls += 1
            self.windows += x.shape[0]
            self.seconds += dt
            self.cpu_seconds += dc
        return prob[:, 0], state

    def describe(self, params: VadParams, frame_ms: float) -> dict[str, Any]:
        """What the ``ready`` message says about a session's VAD."""
        return {"model": f"silero-vad {self.version}", "sample_rate": VAD_RATE,
                "window_ms": WINDOW * 1000 // VAD_RATE,
                "start_threshold": params.start_threshold,
                "end_threshold": params.end_threshold,
                "min_silence_ms": round(params.min_silence_frames * frame_ms)}


def _silero_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("silero-vad")
    except metadata.PackageNotFoundError:
        return "unknown"


class SpeechSegmenter:
    """Frame-by-frame speech/silence decisions with hysteresis (:class:`VadParams`)."""

    def __init__(self, params: VadParams):
        self.params = params
        self.reset()

    def reset(self) -> None:
        self.speaking = False
        self._quiet_since: int | None = None   # first frame of the silence that may end it

    def update(self, frame: int, prob: float) -> list[tuple[str, int]]:
        """The events frame ``frame`` with probability ``prob`` decides: (type, frame)."""
        p = self.params
        if not self.speaking:
            if prob >= p.start_threshold:
                self.speaking = True
                return [("speech_start", frame)]
            return []
        if prob >= p.start_threshold:
            self._quiet_since = None
        elif prob < p.end_threshold and self._quiet_since is None:
            self._quiet_since = frame
        if self._quiet_since is not None and frame - self._quiet_since + 1 >= \
                p.min_silence_frames:
            end = self._quiet_since
            self.reset()
            return [("speech_end", end)]
        return []

    def finish(self, n_frames: int) -> list[tuple[str, int]]:
        """The stream ended (flush): speech still going ends where its silence began, or at
        the stream's end."""
        if not self.speaking:
            return []
        end = self._quiet_since if self._quiet_since is not None else n_frames
        self.reset()
        return [("speech_end", end)]


class VadStream:
    """One session's voice activity: its audio at 16 kHz, the model's state and context, the
    probabilities of windows not yet given to a frame, and its segmenter. Fed with the
    session's 24 kHz audio (:meth:`feed`); :func:`run_windows` steps the model over its
    complete windows; :meth:`label` then gives frames their probabilities and events."""

    def __init__(self, model: VadModel, model_rate: int, hop_length: int,
                 params: VadParams = VadParams()):
        frame = hop_length * VAD_RATE / model_rate
        if frame != int(frame) or frame < WINDOW:
            raise ValueError(f"a {hop_length}-sample frame at {model_rate} Hz is not a whole "
                             f"number of >= {WINDOW} samples at {VAD_RATE} Hz")
        self.model = model
        self.frame_length = int(frame)           # 640 at 24 kHz / 960-sample frames
        self.segmenter = SpeechSegmenter(params)
        self._resampler = StreamResampler(model_rate, VAD_RATE, quality="QQ")
        self.reset()

    def reset(self) -> None:
        """A new stream: fresh resampler, state, context and segmenter."""
        self._resampler.reset()
        self.segmenter.reset()
        self.state = np.zeros((2, STATE_SIZE), np.float32)
        self._x = np.zeros(CONTEXT, np.float32)  # the context, then samples not yet run
        self.windows = 0                          # windows run in this stream
        self._probs: deque[tuple[int, float]] = deque()  # (end sample, prob), not labelled
        self.frames = 0                           # frames labelled in this stream
        self._last = 0.0                          # the last frame's probability

    # -- input --------------------------------------------------------------------------------
    def feed(self, x: np.ndarray) -> None:
        """The session's next audio at the model's rate."""
        self._append(self._resampler.process(x))

    def finish(self, n_frames: int) -> None:
        """The stream ends after ``n_frames`` frames (the last zero-padded): the resampler's
        tail, then zeros up to the last window that ends inside the last frame."""
        self._append(self._resampler.flush())
        last_end = (n_frames * self.frame_length - 1) // WINDOW * WINDOW
        missing = last_end - (self.windows * WINDOW + self._x.size - CONTEXT)
        if missing > 0:
            self._append(np.zeros(missing, np.float32))

    def _append(self, y: np.ndarray) -> None:
        if y.size:
            self._x = np.concatenate([self._x, y])

    # -- the model (run_windows) --------------------------------------------------------------
    @property
    def has_window(self) -> bool:
        return self._x.size >= CONTEXT + WINDOW

    def window_input(self) -> np.ndarray:
        """The model's input for the next window: the context and the window's samples."""
        return self._x[:CONTEXT + WINDOW]

    def advance(self, prob: float, state: np.ndarray) -> None:
        """Records the next window's probability and the state after it."""
        self.windows += 1
        self._probs.append((self.windows * WINDOW, prob))
        self.state = state
        self._x = self._x[WINDOW:]

    # -- output -------------------------------------------------------------------------------
    def label(self, start: int, n: int) -> tuple[np.ndarray, list[tuple[str, int]]]:
        """Probabilities of frames ``start .. start + n - 1`` (the next ones, in order) and the
        events they decide."""
        if start != self.frames:
            raise RuntimeError(f"VAD frames out of order: frame {start} after {self.frames}")
        probs = np.empty(n, np.float32)
        events: list[tuple[str, int]] = []
        for j in range(n):
            end = (start + j + 1) * self.frame_length
            mine = []
            while self._probs and self._probs[0][0] < end:
                mine.append(self._probs.popleft()[1])
            if mine:  # always, unless the resampler held back more than 8 ms
                self._last = max(mine)
            probs[j] = self._last
            events += self.segmenter.update(start + j, self._last)
        self.frames = start + n
        return probs, events

    def end(self) -> list[tuple[str, int]]:
        """The stream ended: the segmenter's closing event, if speech was going on."""
        return self.segmenter.finish(self.frames)


def run_windows(streams: Sequence[VadStream]) -> int:
    """Steps the model over every complete window of every stream; returns the windows run.
    Each call takes the next window of every stream that has one, so a stream's windows pass
    through its recurrent state in order while one call serves all sessions of a round
    (usually one or two calls per round: a frame is 1.25 windows)."""
    total = 0
    by_model: dict[int, list[VadStream]] = {}
    for s in streams:
        by_model.setdefault(id(s.model), []).append(s)
    for group in by_model.values():
        model = group[0].model
        active = [s for s in group if s.has_window]
        while active:
            x = np.stack([s.window_input() for s in active])
            state = np.ascontiguousarray(np.stack([s.state for s in active], axis=1))
            probs, state = model.step(x, state)
            for j, s in enumerate(active):
                s.advance(float(probs[j]), state[:, j].copy())
            total += len(active)
            active = [s for s in active if s.has_window]
    return total
