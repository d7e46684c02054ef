"""The frame that carries latents through a pipecat pipeline, and the conversions between
pipecat's int16 audio bytes and the float32 samples the tokenizer takes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pipecat.frames.frames import AudioRawFrame, DataFrame

from ...audio import INT16_SCALE


@dataclass
class LatentFrame(DataFrame):
    """Consecutive 40 ms frames of one stream: rows ``frame_index .. frame_index + n - 1``.

    A data frame, so it travels in order with the pipeline's other data and control frames
    (an ``EndFrame`` never overtakes it). The encoders push theirs with ``interruptible``
    False: an ``InterruptionFrame`` (the user barging in) must not drop the user's own
    latents from a queue; a reply an agent makes is interruptible, as pipecat's data frames
    are, so barging in silences the bot. Times are stream times (the audio the frames were
    encoded from), not wall-clock times, and ``pts`` is left unset: an output transport holds
    frames with a ``pts`` back until their time comes.
    """

    latents: np.ndarray                     # [n, latent_dim] float32
    representations: np.ndarray | None      # [n, representation_dim] float32, or None
    frame_index: int                        # index of the first row in its stream
    frame_rate: float = 25.0                # frames per second of stream time
    final: bool = False                     # made by the end-of-stream flush (zero-padded end)
    restarted: bool = False                 # first frame after a reconnect: fresh model state
    input_time: float | None = None         # time.monotonic() when the audio that completed
    #                                         the last row reached the encoder

    @property
    def n_frames(self) -> int:
        return int(self.latents.shape[0])

    @property
    def start_s(self) -> float:
        """Stream time at which the first row's audio starts."""
        return self.frame_index / self.frame_rate

    @property
    def end_s(self) -> float:
        """Stream time at which the last row's audio ends."""
        return (self.frame_index + self.n_frames) / self.frame_rate

    def __str__(self) -> str:
        reps = "" if self.representations is None else f", reps {self.representations.shape}"
        return (f"{self.name}(frames {self.frame_index}..{self.frame_index + self.n_frames - 1}, "
                f"{self.start_s:.2f}-{self.end_s:.2f} s, latents {self.latents.shape}{reps}"
                f"{', final' if self.final else ''}{', restarted' if self.restarted else ''})")


def audio_frame_samples(frame: AudioRawFrame) -> np.ndarray:
    """An audio frame's int16 bytes -> mono float32 in [-1, 1] (channels averaged), scaled as
    ``Tokenizer.encode`` scales int16 PCM."""
    pcm = np.frombuffer(frame.audio, dtype="<i2")
    channels = max(1, int(frame.num_channels))
    if pcm.size % channels:
        raise ValueError(f"{frame}: {pcm.size} samples do not divide into {channels} channels")
    x = pcm.astype(np.float32) / INT16_SCALE
    return x if channels == 1 else x.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def pcm16_bytes(x: np.ndarray) -> bytes:
    """Float samples -> little-endian int16 bytes (rounded, clipped), pipecat's audio format."""
    return np.clip(np.round(np.asarray(x, np.float32) * INT16_SCALE), -32768, 32767
                   ).astype("<i2").tobytes()
