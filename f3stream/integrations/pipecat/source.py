"""What the in-process and the remote encoder processors share: the pipeline side of turning
input audio into :class:`~.frames.LatentFrame` s (pass the audio through, start a stream on
``StartFrame``, flush it before ``EndFrame`` goes on, drop it on ``CancelFrame``)."""

from __future__ import annotations

import time

import numpy as np
from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, InputAudioRawFrame,
                                   StartFrame)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from .frames import audio_frame_samples


class AudioToLatents(FrameProcessor):
    """Base of the encoder processors. Subclasses implement :meth:`_begin`, :meth:`_feed`,
    :meth:`_finish` and :meth:`_abort`; this class calls them in the pipeline's order.

    Why a flush on ``EndFrame``: the last partial 40 ms frame (and the resampler's held-back
    tail) only exist once the stream is known to be over; they are pushed before the
    ``EndFrame`` so nothing is lost at the end of a file or a call.
    """

    def __init__(self, *, pass_audio: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.pass_audio = pass_audio
        self.frames_out = 0          # latent frames pushed in this stream
        self._streaming = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self._restart()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InputAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            if self.pass_audio:
                await self.push_frame(frame, direction)
            await self._on_audio(frame)
        elif isinstance(frame, EndFrame):
            if self._streaming:
                self._streaming = False
                await self._finish()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            self._streaming = False
            await self._abort()
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    async def cleanup(self) -> None:
        await super().cleanup()
        await self._abort()

    async def _restart(self) -> None:
        if self._streaming:
            await self._abort()
        self.frames_out = 0
        self._streaming = True
        await self._begin()

    async def _on_audio(self, frame: InputAudioRawFrame) -> None:
        if not self._streaming:
            return
        try:
            x = audio_frame_samples(frame)
        except ValueError as e:
            await self.push_error(f"f3stream: unusable audio frame: {e}", exception=e)
            return
        await self._feed(x, int(frame.sample_rate), time.monotonic())

    # -- for subclasses ------------------------------------------------------------------
    async def _begin(self) -> None:
        """A stream starts (the pipeline's StartFrame)."""

    async def _feed(self, x: np.ndarray, sample_rate: int, arrived: float) -> None:
        """Mono float32 samples at ``sample_rate`` that reached the processor at ``arrived``."""
        raise NotImplementedError

    async def _finish(self) -> None:
        """The stream ended: push its last frames (called before the EndFrame goes on)."""

    async def _abort(self) -> None:
        """Drop the stream without pushing anything (cancel, cleanup)."""
