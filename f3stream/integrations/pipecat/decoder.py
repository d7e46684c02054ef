"""Latent frames back to audio inside a pipecat pipeline: the library's streaming decoder
session, resampled to the output rate by the library's streaming resampler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, InterruptionFrame,
                                   OutputAudioRawFrame, StartFrame)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor

from ...resampling import StreamResampler
from .frames import LatentFrame, pcm16_bytes

if TYPE_CHECKING:
    from ...session import DecoderSession
    from ...tokenizer import Tokenizer


class DecoderProcessor(FrameProcessor):
    """Decodes each :class:`LatentFrame` into an ``OutputAudioRawFrame`` (mono int16) and pushes
    it downstream, where an output transport plays it or a sink writes it.

    * ``sample_rate``: the output rate; ``None`` takes the pipeline's ``audio_out_sample_rate``
      (``PipelineParams``) when the pipeline starts.
    * The audio is aligned with the audio the latents were encoded from: the decoder's 10 ms
      overlap-add look-ahead is held back and pushed, with the resampler's tail, before the
      ``EndFrame`` goes on, so the stream's audio is ``Tokenizer.decode`` of its latents.
    * ``InterruptionFrame`` (the user barged in): the bot stops talking. Pipecat drops the
      latent frames still queued here, and the decoder starts afresh, so the next reply does
      not begin with the end of the interrupted one.
    * ``pass_latents`` also forwards the latent frames (e.g. to a recorder after this step).
    * ``frame_class`` picks the audio frame type (e.g. pipecat's ``TTSAudioRawFrame``).
    """

    def __init__(self, tokenizer: "Tokenizer | None" = None, *, sample_rate: int | None = None,
                 pass_latents: bool = False, offload: bool = True,
                 frame_class: type[OutputAudioRawFrame] = OutputAudioRawFrame, **kwargs: Any):
        super().__init__(**kwargs)
        if tokenizer is None:
            from ...tokenizer import Tokenizer
            tokenizer = Tokenizer.load()
        self.tokenizer = tokenizer
        self.sample_rate = sample_rate
        self.pass_latents = pass_latents
        self.offload = offload
        self.frame_class = frame_class
        self.frames_in = 0
        self._session: DecoderSession | None = None
        self._resampler: StreamResampler | None = None

    @property
    def output_rate(self) -> int:
        """The rate of the audio frames this processor pushes."""
        return self._resampler.out_rate if self._resampler is not None else (
            self.sample_rate or self.tokenizer.sample_rate)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            self._begin()
            await self.push_frame(frame, direction)
        elif isinstance(frame, LatentFrame) and direction == FrameDirection.DOWNSTREAM:
            if self.pass_latents:
                await self.push_frame(frame, direction)
            if self._session is not None:
                self.frames_in += frame.n_frames
                await self._push_audio(await self._call(
                    _decode, self._session, self._resampler, frame.latents))
        elif isinstance(frame, InterruptionFrame):
            if self._session is not None:
                self._begin(self._resampler.out_rate)
            await self.push_frame(frame, direction)
        elif isinstance(frame, EndFrame):
            if self._session is not None:
                session, self._session = self._session, None
                await self._push_audio(await self._call(_tail, session, self._resampler))
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            self._session = None
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _begin(self, rate: int | None = None) -> None:
        """A new stream: a fresh decoder session and resampler (at ``rate``, else the chosen
        or the pipeline's output rate)."""
        rate = rate or self.sample_rate
        if rate is None:
            try:
                rate = int(self.processor_setup.audio_out_sample_rate)
            except Exception:  # not run by a pipeline worker: the model's own rate
                rate = self.tokenizer.sample_rate
        self._session = self.tokenizer.decoder_session()
        self._resampler = StreamResampler(self.tokenizer.sample_rate, rate)
        self.frames_in = 0

    async def _call(self, fn: Callable, *args: Any):
        return await asyncio.to_thread(fn, *args) if self.offload else fn(*args)

    async def _push_audio(self, pcm: np.ndarray) -> None:
        if pcm.size:
            await self.push_frame(self.frame_class(audio=pcm16_bytes(pcm),
                                                   sample_rate=self.output_rate,
                                                   num_channels=1))


# Module functions with the session passed in: a worker thread still finishing a frame of an
# interrupted stream works on that stream's objects, never on the next stream's.
def _decode(session: "DecoderSession", resampler: StreamResampler, latents: np.ndarray
            ) -> np.ndarray:
    return resampler.process(session.push(latents))


def _tail(session: "DecoderSession", resampler: StreamResampler) -> np.ndarray:
    return np.concatenate([resampler.process(session.flush()), resampler.flush()])
