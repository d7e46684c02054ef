"""Tokenization by a remote ``f3stream serve`` inside a pipecat pipeline (protocol version 2):
the server resamples the pipeline's audio and returns its latent frames, which are pushed on
as they arrive. When the server goes away, the processor reconnects a bounded number of times,
then reports a clear error instead of silently losing the stream."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException

from ...errors import F3StreamError
from ...resampling import StreamResampler
from ...server.client import AsyncClient, ServerError
from ...server.protocol import KIND_BOTH, KIND_LATENTS, SAMPLE_RATES, FrameMessage
from .frames import LatentFrame
from .source import AudioToLatents

# Errors about the request itself: connecting again would get the same answer.
PERMANENT_CODES = frozenset({"unauthorized", "bad_sample_rate", "bad_field", "unknown_field",
                             "unsupported_version", "bad_json", "bad_message"})
MODEL_RATE = 24000  # what a rate the server does not take is resampled to, locally


class RemoteUnavailableError(F3StreamError):
    """The server could not be reached (again) within the processor's reconnection budget, or
    refused the session for a reason that reconnecting cannot fix."""


class RemoteEncoderProcessor(AudioToLatents):
    """Sends the pipeline's ``InputAudioRawFrame`` s to an ``f3stream serve`` server and pushes
    the :class:`LatentFrame` s it returns; the audio frames pass through (``pass_audio``).

    * Rates the protocol takes (8, 16, 22.05, 24, 32, 44.1, 48 kHz) are sent as they are, in
      pcm16 (pipecat's own format, so nothing is re-quantized) and resampled by the server;
      other rates are resampled here to 24 kHz and sent as float32. Either way the frames are
      ``Tokenizer.encode`` of the audio resampled by the library's streaming resampler.
    * ``EndFrame``: the server's flush (last zero-padded frame, ``final``) arrives and is
      pushed before the ``EndFrame`` goes on.
    * The server going away (shutdown, restart, network loss, its idle timeout): the next
      audio reconnects, up to ``reconnect_attempts`` more tries ``reconnect_delay`` x 1, 2, 4...
      seconds apart; meanwhile the pipeline queues the audio, so none is skipped. A new
      connection is a new stream on the server (fresh model state): its first frame has
      ``restarted`` set, and frame indices continue on the audio's timeline. When every try
      fails, a :class:`RemoteUnavailableError` goes upstream as an ``ErrorFrame`` (the
      processor marks itself unusable, so the worker's ``processor_unusable_policy`` applies)
      and later audio only passes through, until the next ``StartFrame``.
    """

    def __init__(self, url: str, *, representations: bool = False, token: str | None = None,
                 pass_audio: bool = True, reconnect_attempts: int = 3,
                 reconnect_delay: float = 0.25, open_timeout: float = 5.0,
                 flush_timeout: float = 30.0, **kwargs: Any):
        super().__init__(pass_audio=pass_audio, **kwargs)
        self.url = url
        self.representations = representations
        self.token = token
        self.reconnect_attempts = max(0, int(reconnect_attempts))
        self.reconnect_delay = reconnect_delay
        self.open_timeout = open_timeout
        self.flush_timeout = flush_timeout
        self.connections = 0            # connections opened in this stream
        self.frames_lost = 0            # frames of audio sent on lost connections, not returned
        self._client: AsyncClient | None = None
        self._resampler: StreamResampler | None = None
        self._queue: asyncio.Queue[LatentFrame] = asyncio.Queue()
        self._forwarder: asyncio.Task | None = None
        self._failed = False
        self._broken = False
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._last: AsyncClient | None = None  # the latest connection (open or not)
        self._offset = 0           # stream frame index of the current connection's frame 0
        self._seen = 0             # stream frames received so far
        self._sent = 0             # samples sent on the current connection (its rate)
        self._marks: deque[tuple[int, float]] = deque()  # (frames completable, arrival)

    # -- stream lifecycle (AudioToLatents) -------------------------------------------------
    async def _begin(self) -> None:
        self._failed = False
        self.connections = self.frames_lost = 0
        self._resampler = None
        self._reset_counters()
        self._queue = asyncio.Queue()
        self._forwarder = self.create_task(self._forward(), "f3stream-remote-forward")

    async def _feed(self, x: np.ndarray, sample_rate: int, arrived: float) -> None:
        if self._failed:
            return
        rate, fmt = sample_rate, "pcm16"
        if rate not in SAMPLE_RATES:  # resampled here; float32 keeps the resampler's output
            if self._resampler is None or self._resampler.in_rate != rate:
                tail = self._resampler.flush() if self._resampler is not None else None
                if tail is not None and tail.size:
                    await self._send_or_fail(tail, MODEL_RATE, "float32", arrived)
                self._resampler = StreamResampler(rate, MODEL_RATE)
            x, rate, fmt = self._resampler.process(x), MODEL_RATE, "float32"
        await self._send_or_fail(x, rate, fmt, arrived)

    async def _finish(self) -> None:
        c = self._client
        if c is not None and not c.closed and not self._failed:
            try:
                if self._resampler is not None:
                    tail = self._resampler.flush()
                    if tail.size:
                        await c.send_audio(tail)
                await c.flush(self.flush_timeout)
            except (ServerError, ConnectionClosed, OSError, asyncio.TimeoutError) as e:
                await self.push_error(f"f3stream server {self.url} went away before the "
                                      f"stream's last frames arrived: {e}", exception=e)
        elif c is not None and not self._failed:  # lost, and no audio came to reconnect
            await self._disconnect()
            self._count_lost()
            if self.frames_lost:
                await self.push_error(f"f3stream server {self.url} went away: the frames of "
                                      f"{self.frames_lost / 25:.2f} s of audio never came back")
        await self._disconnect()
        await self._queue.join()  # every frame received is pushed before the EndFrame
        await self._stop_forwarder()

    async def _abort(self) -> None:
        await self._disconnect()
        await self._stop_forwarder()

    # -- connection ------------------------------------------------------------------------
    async def _send_or_fail(self, x: np.ndarray, rate: int, fmt: str, arrived: float) -> None:
        try:
            await self._send(x, rate, fmt, arrived)
        except RemoteUnavailableError as e:
            self._failed = True
            await self.push_error(str(e), exception=e, force_treat_as_permanent=True)

    async def _send(self, x: np.ndarray, rate: int, fmt: str, arrived: float) -> None:
        for _ in range(2):  # a send that finds the connection gone reconnects and resends once
            c = self._client
            if c is None or c.closed or (c.sample_rate, c.hello.format) != (rate, fmt):
                c = await self._connect(rate, fmt)
            try:
                await c.send_audio(x)
            except (ConnectionClosed, OSError):
                self._broken = True  # _connect treats it as lost
                continue
            self._sent += x.size
            self._marks.append((int(self._sent // self._hop(c)), arrived))
            return
        raise RemoteUnavailableError(f"f3stream server {self.url} dropped the connection "
                                     "again right after a reconnection")

    @staticmethod
    def _hop(c: AsyncClient) -> float:
        """Samples per frame at the connection's rate."""
        return (int(c.ready.get("hop_length", 960)) * c.sample_rate
                / int(c.ready.get("sample_rate", MODEL_RATE)))

    def _expected(self, whole: bool = False) -> int:
        """Stream frames the audio sent so far makes (its last frame zero-padded), or with
        ``whole`` only those it surely completes."""
        if self._last is None:
            return self._offset
        n = self._sent / self._hop(self._last)
        return self._offset + (math.floor(n + 1e-9) if whole else math.ceil(n - 1e-9))

    def _count_lost(self) -> None:
        """Adds the frames the audio sent on a lost connection completed but that never came."""
        self.frames_lost += max(0, self._expected(whole=True) - self._seen)

    async def _connect(self, rate: int, fmt: str) -> AsyncClient:
        """A new connection (a new stream on the server), after at most
        ``1 + reconnect_attempts`` tries; raises :class:`RemoteUnavailableError`."""
        lost = self._client is not None and (self._client.closed or self._broken)
        self._broken = False
        if self._client is not None and not lost:  # a new rate or format: end the old stream
            try:
                await self._client.flush(self.flush_timeout)
            except (ServerError, ConnectionClosed, OSError, asyncio.TimeoutError):
                lost = True
        await self._disconnect()  # every frame of the old connection has arrived after this
        if lost:
            self._count_lost()
        # frames continue on the audio's timeline: the next is the one after the audio sent
        self._offset = max(self._seen, self._expected())
        self._sent = 0
        self._marks.clear()
        tries, last, t0 = 1 + self.reconnect_attempts, None, time.monotonic()
        for i in range(tries):
            if i:
                await asyncio.sleep(self.reconnect_delay * 2 ** (i - 1))
            c = AsyncClient(self.url, returns="both" if self.representations else "latents",
                            format=fmt, sample_rate=rate, token=self.token, version=2,
                            open_timeout=self.open_timeout)
            c.on_frame = self._receiver(c, self._offset, restarted=self.connections > 0)
            try:
                await c.connect()
                self._client = self._last = c
                self.connections += 1
                return c
            except ServerError as e:
                if e.code in PERMANENT_CODES:
                    raise RemoteUnavailableError(
                        f"f3stream server {self.url} refused the session: {e}") from e
                last = e
            except InvalidURI as e:
                raise RemoteUnavailableError(f"bad f3stream server URL {self.url!r}: {e}") from e
            except (OSError, asyncio.TimeoutError, WebSocketException) as e:
                last = e
            with contextlib.suppress(Exception):  # what a failed attempt may have left open
                await c.disconnect()
        what = "went away" if lost or self.connections else "is unreachable"
        raise RemoteUnavailableError(
            f"f3stream server {self.url} {what}: {tries} attempt(s) to connect failed over "
            f"{time.monotonic() - t0:.1f} s (last error: {type(last).__name__}: {last}); is "
            "`f3stream serve` running there?") from last

    async def _disconnect(self) -> None:
        c, self._client = self._client, None
        if c is not None:
            try:
                await c.disconnect()
            except (ConnectionClosed, OSError):
                pass

    # -- frames from the server -> the pipeline --------------------------------------------
    def _receiver(self, c: AsyncClient, offset: int, restarted: bool):
        """The ``on_frame`` hook of connection ``c``, whose frame 0 is stream frame ``offset``."""
        first = [restarted]

        def on_frame(m: FrameMessage) -> None:
            if m.kind not in (KIND_LATENTS, KIND_BOTH):
                return
            ld = int(c.ready.get("latent_dim", m.payload.shape[1]))
            end = m.frame_index + m.n_rows
            while self._marks and self._marks[0][0] < end:
                self._marks.popleft()
            frame = LatentFrame(
                latents=np.ascontiguousarray(m.payload[:, :ld], np.float32),
                representations=(np.ascontiguousarray(m.payload[:, ld:], np.float32)
                                 if m.kind == KIND_BOTH else None),
                frame_index=offset + m.frame_index,
                frame_rate=float(c.ready.get("frame_rate", 25)), final=m.final,
                restarted=first[0],
                input_time=None if m.final or not self._marks else self._marks[0][1])
            frame.metadata["server_latency_ms"] = (m.send_us - m.recv_us) / 1000.0
            frame.interruptible = False  # the user's latents survive a barge-in (LatentFrame)
            first[0] = False
            self._seen = max(self._seen, frame.frame_index + frame.n_frames)
            self._queue.put_nowait(frame)

        return on_frame

    async def _forward(self) -> None:
        while True:
            frame = await self._queue.get()
            try:
                self.frames_out += frame.n_frames
                await self.push_frame(frame)
            finally:
                self._queue.task_done()

    async def _stop_forwarder(self) -> None:
        task, self._forwarder = self._forwarder, None
        if task is not None:
            await self.cancel_task(task)
