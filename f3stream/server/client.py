"""Clients for the live protocol: :class:`AsyncClient` (asyncio) and :class:`Client` (a blocking
wrapper), plus :func:`stream_audio`, which streams a whole signal in real time (or as fast as
possible) and measures per-frame latency as the client sees it.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from .. import g711
from ..errors import F3StreamError
from ..frames import EncodedFrames
from .protocol import (FORMATS, KIND_AUDIO, KIND_BOTH, KIND_LATENTS, PROTOCOL_VERSION,
                       SPEECH_EVENTS, FrameMessage, Hello, ProtocolError, control_message,
                       parse_frame)


class ServerError(F3StreamError):
    """The server answered with an error message or closed the connection abnormally."""

    def __init__(self, code: str, message: str, close_code: int | None = None):
        super().__init__(f"{code}: {message}" + (f" (close code {close_code})"
                                                 if close_code is not None else ""))
        self.code = code
        self.message = message
        self.close_code = close_code


@dataclass
class StreamResult:
    """Everything a client received for one stream."""

    latents: np.ndarray | None = None
    representations: np.ndarray | None = None
    audio: np.ndarray | None = None
    messages: int = 0
    latency_ms: list[float] = field(default_factory=list)         # client send -> receive
    server_latency_ms: list[float] = field(default_factory=list)  # header send_us - recv_us
    sample_rate: int = 24000       # of ``audio``: the client's rate (protocol version 2)
    frame_rate: int = 25
    speech_prob: np.ndarray | None = None   # per frame, with "vad": true
    events: list[dict[str, Any]] = field(default_factory=list)  # speech_start / speech_end

    @property
    def n_frames(self) -> int:
        return 0 if self.latents is None and self.representations is None else int(
            (self.latents if self.latents is not None else self.representations).shape[0])

    def as_encoded_frames(self) -> EncodedFrames:
        lat = self.latents if self.latents is not None else np.zeros(
            (self.n_frames, 0), np.float32)
        return EncodedFrames(0, lat, self.representations)


class AsyncClient:
    """One streaming session. ``async with AsyncClient(url, ...) as c: await c.send_audio(x)``;
    frames are collected in the background; :meth:`flush` waits until the stream's last frame
    has arrived; :meth:`result` returns what was received.

    ``version`` None says the oldest protocol version the hello needs: 1 at 24 kHz in pcm16 or
    float32 (so the client also works with servers that only speak version 1), else 2.

    ``on_frame`` is called with each frame message as it arrives (in the receiving task), for
    callers that forward frames as they come (a long-lived voice-agent stream): the messages
    then go to it instead of being kept for :meth:`result`, so memory stays flat.

    ``vad`` asks for voice activity (protocol version 2): frame messages then carry
    ``speech_prob``, and the ``speech_start`` / ``speech_end`` messages are kept in
    :attr:`events`, or handed to ``on_event`` as they arrive when it is given."""

    def __init__(self, url: str, *, direction: str = "encode", returns: str = "both",
                 format: str = "float32", payload_dtype: str = "float32",
                 token: str | None = None, sample_rate: int = 24000,
                 open_timeout: float = 10.0, max_size: int | None = 1 << 24,
                 version: int | None = None,
                 on_frame: Callable[[FrameMessage], None] | None = None,
                 vad: bool = False,
                 on_event: Callable[[dict[str, Any]], None] | None = None):
        self.url = url
        self.on_frame = on_frame
        self.on_event = on_event
        if version is None:
            version = (1 if sample_rate == 24000 and format in FORMATS and not vad
                       else PROTOCOL_VERSION)
        self.hello = Hello(version=version, sample_rate=sample_rate, format=format,
                           returns=returns, direction=direction, payload_dtype=payload_dtype,
                           token=token, vad=vad)
        self.events: list[dict[str, Any]] = []  # speech_start / speech_end (without on_event)
        self.open_timeout = open_timeout
        self.max_size = max_size
        self.ws: ClientConnection | None = None
        self.ready: dict[str, Any] = {}
        self.messages: list[tuple[FrameMessage, float]] = []
        self.latency_ms: list[float] = []  # per frame message: completing chunk sent -> received
        self.error: ServerError | None = None
        self._flushed = asyncio.Event()
        self._closed = asyncio.Event()
        self._marks: list[int] = []     # stream positions at the end of each sent chunk
        self._times: list[float] = []   # perf_counter at those sends
        self._position = 0
        self._receiver: asyncio.Task | None = None

    async def __aenter__(self) -> "AsyncClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.disconnect()

    async def connect(self) -> dict[str, Any]:
        """Opens the connection and performs the handshake; returns the server's ready info."""
        self.ws = await connect(self.url, open_timeout=self.open_timeout, compression=None,
                                max_size=self.max_size)
        await self.ws.send(self.hello.to_json())
        first = await self.ws.recv()
        msg = json.loads(first) if isinstance(first, str) else {}
        if msg.get("type") != "ready":
            await self._closed_by_server(msg)
            raise self.error  # type: ignore[misc]
        self.ready = msg
        self._receiver = asyncio.get_running_loop().create_task(self._receive())
        return msg

    async def _closed_by_server(self, msg: dict[str, Any]) -> None:
        try:
            await asyncio.wait_for(self.ws.wait_closed(), 5)
        except asyncio.TimeoutError:
            pass
        code = self.ws.close_code
        if msg.get("type") == "error":
            self.error = ServerError(str(msg.get("code")), str(msg.get("message")), code)
        else:
            self.error = ServerError("closed", f"unexpected message {msg!r}", code)

    async def _receive(self) -> None:
        try:
            async for raw in self.ws:
                t = time.perf_counter()
                if isinstance(raw, bytes):
                    m = parse_frame(raw)
                    self._latency(m, t)
                    if self.on_frame is None:
                        self.messages.append((m, t))
                    else:
                        self.on_frame(m)
                    continue
                msg = json.loads(raw)
                if msg.get("type") in SPEECH_EVENTS:
                    if self.on_event is None:
                        self.events.append(msg)
                    else:
                        self.on_event(msg)
                elif msg.get("type") == "flushed":
                    self._flushed.set()
                elif msg.get("type") == "error":
                    self.error = ServerError(msg.get("code"), msg.get("message"))
        except (ConnectionClosed, ProtocolError):
            pass
        finally:
            code = self.ws.close_code
            if self.error is not None:
                self.error.close_code = code
            elif code is not None and code not in (1000, 1001):
                self.error = ServerError("closed", self.ws.close_reason or "connection closed",
                                         code)
            self._closed.set()
            self._flushed.set()

    @property
    def closed(self) -> bool:
        """True once the connection is gone (closed by either side, or lost)."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Returns when the connection is gone (see :attr:`closed`)."""
        await self._closed.wait()

    @property
    def sample_rate(self) -> int:
        """The rate of the audio this client sends or receives (the hello's)."""
        return self.hello.sample_rate

    def _latency(self, m: FrameMessage, t: float) -> None:
        """Time from sending the chunk that completed the message's last frame to now (for
        audio: the latent message that completed the audio's last frame)."""
        if m.final:
            return
        # a frame's samples at the client's rate (version 2 may resample)
        hop = (int(self.ready.get("hop_length", 1)) * self.sample_rate
               / int(self.ready.get("sample_rate", self.sample_rate)))
        if m.kind == KIND_AUDIO:  # frame_index = first latent frame; positions are frames
            end = m.frame_index + math.ceil(m.payload.shape[1] / hop)
        else:
            end = math.ceil((m.frame_index + m.n_rows) * hop)
        k = bisect.bisect_left(self._marks, end)
        if k < len(self._times):
            self.latency_ms.append((t - self._times[k]) * 1000.0)
            if self.on_frame is not None:  # frames come in order: earlier sends are done with
                del self._marks[:k], self._times[:k]
                del self.latency_ms[:-1000]

    def _mark(self, n: int) -> None:
        self._position += n
        self._marks.append(self._position)
        self._times.append(time.perf_counter())

    async def send_audio(self, pcm: np.ndarray) -> None:
        """Sends mono samples (float in [-1, 1] or int16) in the handshake's format."""
        x = np.asarray(pcm)
        if self.hello.format in g711.LAWS:
            data = g711.encode(x, self.hello.format)
        elif self.hello.format == "pcm16":
            if x.dtype != np.int16:
                x = np.clip(np.round(x * 32768.0), -32768, 32767).astype("<i2")
            data = x.astype("<i2").tobytes()
        else:
            if x.dtype == np.int16:
                x = x.astype(np.float32) / 32768.0
            data = x.astype("<f4").tobytes()
        await self.ws.send(data)
        self._mark(x.size)

    async def send_latents(self, latents: np.ndarray) -> None:
        z = np.ascontiguousarray(latents, dtype="<f4")
        await self.ws.send(z.tobytes())
        self._mark(z.shape[0])

    async def send_json(self, obj: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(obj))

    async def flush(self, timeout: float = 30.0) -> None:
        """Ends the stream and waits for its last frames (the server's "flushed" reply)."""
        self._flushed.clear()
        await self.ws.send(control_message("flush"))
        await asyncio.wait_for(self._flushed.wait(), timeout)
        if self.error is not None:
            raise self.error

    async def reset(self) -> None:
        await self.ws.send(control_message("reset"))
        self._position = 0
        self._marks.clear()
        self._times.clear()

    async def close(self, timeout: float = 30.0) -> None:
        """Flushes, then closes normally (close code 1000)."""
        await self.ws.send(control_message("close"))
        await asyncio.wait_for(self._closed.wait(), timeout)

    async def disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._receiver is not None:
            await self._receiver

    def result(self) -> StreamResult:
        """Reassembles the received frames (by frame index) and the latencies."""
        res = StreamResult(sample_rate=self.sample_rate,
                           frame_rate=int(self.ready.get("frame_rate", 25)))
        lat, rep, audio, speech = [], [], [], []
        ld = int(self.ready.get("latent_dim", 0))
        for m, _ in self.messages:
            res.messages += 1
            if m.speech_prob is not None:
                speech.append(m.speech_prob)
            res.server_latency_ms.append((m.send_us - m.recv_us) / 1000.0)
            if m.kind == KIND_AUDIO:
                audio.append(m.payload[0])
                continue
            if m.kind == KIND_LATENTS:
                lat.append(m.payload)
            elif m.kind == KIND_BOTH:
                lat.append(m.payload[:, :ld])
                rep.append(m.payload[:, ld:])
            else:
                rep.append(m.payload)
        res.latency_ms = list(self.latency_ms)
        if lat:
            res.latents = np.concatenate(lat)
        if rep:
            res.representations = np.concatenate(rep)
        if audio:
            res.audio = np.concatenate(audio)
        if speech:
            res.speech_prob = np.concatenate(speech)
        res.events = list(self.events)
        return res


async def stream_audio(url: str, audio: np.ndarray, *, chunk_ms: float = 20.0,
                       realtime: bool = True, **client_kw: Any) -> StreamResult:
    """Streams ``audio`` (mono, at ``sample_rate``, default 24 kHz) in chunks of ``chunk_ms``,
    paced in real time unless ``realtime`` is False, flushes, closes, and returns the tokens
    and latencies."""
    async with AsyncClient(url, **client_kw) as c:
        step = max(1, int(round(c.sample_rate * chunk_ms / 1000.0)))
        t0 = time.perf_counter()
        for i, a in enumerate(range(0, len(audio), step)):
            if realtime:
                delay = t0 + i * chunk_ms / 1000.0 - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            await c.send_audio(audio[a:a + step])
        await c.close()
        if c.error is not None:
            raise c.error
        return c.result()


async def decode_latents_remote(url: str, latents: np.ndarray, frames_per_message: int = 1,
                                **client_kw: Any) -> np.ndarray:
    """Decodes latents on the server; returns the waveform (as Tokenizer.decode would)."""
    async with AsyncClient(url, direction="decode", **client_kw) as c:
        for a in range(0, latents.shape[0], frames_per_message):
            await c.send_latents(latents[a:a + frames_per_message])
        await c.close()
        if c.error is not None:
            raise c.error
        res = c.result()
    return res.audio if res.audio is not None else np.zeros(0, np.float32)


class Client:
    """A blocking wrapper around :class:`AsyncClient` (runs its own event loop)."""

    def __init__(self, url: str, **kw: Any):
        self._loop = asyncio.new_event_loop()
        self._client = self._run(self._make(url, kw))
        self.ready = self._run(self._client.connect())

    @staticmethod
    async def _make(url: str, kw: dict[str, Any]) -> AsyncClient:
        return AsyncClient(url, **kw)

    def _run(self, coro):
        return self._loop.run_until_complete(coro)

    def send_audio(self, pcm: np.ndarray) -> None:
        self._run(self._client.send_audio(pcm))

    def send_latents(self, latents: np.ndarray) -> None:
        self._run(self._client.send_latents(latents))

    def flush(self) -> StreamResult:
        self._run(self._client.flush())
        return self._client.result()

    def reset(self) -> None:
        self._run(self._client.reset())

    def close(self) -> StreamResult:
        try:
            self._run(self._client.close())
            self._run(self._client.disconnect())
        finally:
            self._loop.close()
        return self._client.result()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        if not self._loop.is_closed():
            self.close()
