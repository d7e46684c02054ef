"""In-process tokenization inside a pipecat pipeline: input audio at any rate -> latent
frames, through the library's own streaming session and streaming resampler, so the frames are
those of ``Tokenizer.encode`` of the same audio (resampled by the same resampler)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ...frames import EncodedFrames
from ...resampling import StreamResampler
from .frames import LatentFrame
from .source import AudioToLatents

if TYPE_CHECKING:
    from ...session import EncoderSession
    from ...tokenizer import Tokenizer


class EncoderProcessor(AudioToLatents):
    """Tokenizes the pipeline's ``InputAudioRawFrame`` s and pushes a :class:`LatentFrame` as
    soon as audio completes 40 ms frames; the audio frames pass through (``pass_audio``).

    * Any input rate (and a rate change mid-stream): a :class:`~f3stream.resampling.
      StreamResampler` brings it to the model's 24 kHz; multichannel audio is averaged.
    * ``representations=True`` adds the 768-dim representations to each frame.
    * ``offload=True`` runs the model in a worker thread, so the event loop (transports,
      other processors) never waits for it; frames stay in order either way.
    * ``EndFrame``: the resampler's tail and the zero-padded last frame are pushed (``final``)
      before the ``EndFrame``, exactly as ``Tokenizer.encode`` pads the end of a clip.
    """

    def __init__(self, tokenizer: "Tokenizer | None" = None, *, representations: bool = False,
                 pass_audio: bool = True, offload: bool = True, **kwargs: Any):
        super().__init__(pass_audio=pass_audio, **kwargs)
        if tokenizer is None:
            from ...tokenizer import Tokenizer
            tokenizer = Tokenizer.load()
        self.tokenizer = tokenizer
        self.representations = representations
        self.offload = offload
        self._session: EncoderSession | None = None
        self._resampler: StreamResampler | None = None

    async def _begin(self) -> None:
        self._session = self.tokenizer.session(self.representations)
        self._resampler = None

    async def _feed(self, x: np.ndarray, sample_rate: int, arrived: float) -> None:
        y = np.zeros(0, np.float32)
        if self._resampler is None or self._resampler.in_rate != sample_rate:
            if self._resampler is not None:  # the rate changed: end the old rate's stream
                y = self._resampler.flush()
            self._resampler = StreamResampler(sample_rate, self.tokenizer.sample_rate)
        y = np.concatenate([y, self._resampler.process(x)])
        await self._push(await self._call(self._session.push, y), arrived)

    async def _finish(self) -> None:
        tail = self._resampler.flush() if self._resampler is not None else None

        def last() -> EncodedFrames:
            a = self._session.push(tail) if tail is not None and tail.size else None
            b = self._session.flush()
            if a is None or not a.n_frames:
                return b
            rep = (None if a.representations is None
                   else np.concatenate([a.representations, b.representations]))
            return EncodedFrames(a.start_frame, np.concatenate([a.latents, b.latents]), rep)

        await self._push(await self._call(last), None, final=True)
        self._session = None

    async def _abort(self) -> None:
        self._session = None
        self._resampler = None

    async def _call(self, fn: Callable, *args: Any):
        return await asyncio.to_thread(fn, *args) if self.offload else fn(*args)

    async def _push(self, out: EncodedFrames, arrived: float | None, final: bool = False
                    ) -> None:
        if not out.n_frames:
            return
        self.frames_out += out.n_frames
        frame = LatentFrame(latents=out.latents, representations=out.representations,
                            frame_index=out.start_frame,
                            frame_rate=float(self.tokenizer.frame_rate), final=final,
                            input_time=arrived)
        frame.interruptible = False  # the user's latents survive a barge-in (LatentFrame)
        await self.push_frame(frame)
