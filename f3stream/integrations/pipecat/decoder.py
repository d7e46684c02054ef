"""Latent frames back to audio inside a pipecat pipeline: the library's streaming decoder
session, resampled to the output rate by the library's streaming resampler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from pipecat.frames.frames import (CancelFrame, EndFrame, Frame, OutputAudioRawFrame,
                                   StartFrame)
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
                await self._push_audio(await self._call(self._decode, frame.latents))
        elif isinstance(frame, EndFrame):
            if self._session is not None:
                await self._push_audio(await self._call(self._tail))
                self._session = None
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            self._session = None
            await self.push_frame(frame, direction)
        else:
            await self.push_frame(frame, direction)

    def _begin(self) -> None:
        rate = self.sample_rate
        if rate is None:
            try:
                rate = int(self.processor_setup.audio_out_sample_rate)
            except Exception:  # not run by a pipeline worker: the model's own rate
                rate = self.tokenizer.sample_rate
        self._session = self.tokenizer.decoder_session()
        self._resampler = StreamResampler(self.tokenizer.sample_rate, rate)
        self.frames_in = 0

    def _decode(self, latents: np.ndarray) -> np.ndarray:
        return self._resampler.process(self._session.push(latents))

    def _tail(self) -> np.ndarray:
        last = self._resampler.process(self._session.flush())
        return np.concatenate([last, self._resampler.flush()])

    async def _call(self, fn: Callable, *args: Any):
        return await asyncio.to_thread(fn, *args) if self.offload else fn(*args)

    async def _push_audio(self, pcm: np.ndarray) -> None:
        if pcm.size:
            await self.push_frame(self.frame_class(audio=pcm16_bytes(pcm),
                                                   sample_rate=self.output_rate,
                                                   num_channels=1))
