"""One connection's live state: its tokenizer session, its inbox of pending work and its bounded
outbox.

The handler (reading) and the batcher (model work) only meet here: the handler appends ops to
the inbox, the batcher takes them in order, and results go to the outbox that a sender task
drains to the socket. All methods run on the event-loop thread. What travels is typed: input
as :class:`Op`, results as the protocol's outgoing messages (:class:`~.protocol.FramesOut`,
:class:`~.protocol.TextOut`, :class:`~.protocol.CloseOut`), whose wire formats
:mod:`.protocol` owns.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..audio import clip_to_contract
from ..resampling import StreamResampler
from .protocol import (DTYPES, ERROR_CODES, CloseOut, FramesOut, Hello, Outgoing,
                       SessionError, TextOut, error_message)
from .vad import VadStream


def now_us() -> int:
    """Wall clock in microseconds: what frame headers carry (comparable across processes)."""
    return time.time_ns() // 1000


@dataclass
class Op:
    """One unit of client input, in arrival order."""

    kind: str                      # "data" | "flush" | "reset" | "close" | "shutdown"
    recv_us: int
    data: np.ndarray | None = None
    end_sample: int = 0            # stream position (samples or frames) after this op


@dataclass
class Work:
    """What the batcher takes from one session in one round, and what the model made of it."""

    session: "LiveSession"
    data: np.ndarray | None
    marks: list[tuple[int, int]]   # (stream end position, recv_us) of each merged data op
    control: Op | None
    out: list[Outgoing] = field(default_factory=list)   # in the order they are to be sent
    error: SessionError | None = None                    # the session must end with it

    def recv_us_for(self, end: int) -> int:
        """The receive time of the op that brought stream position ``end``."""
        for pos, us in self.marks:
            if pos >= end:
                return us
        return self.marks[-1][1] if self.marks else now_us()


class Stop:
    """The sender's cue to end (the connection's handler is done); never sent."""

    frames = 0


STOP = Stop()
OutboxItem = Outgoing | Stop


class Outbox:
    """A FIFO of outgoing messages bounded by the frames they hold (``item.frames``: a frame
    message's rows, 1 for a text message, 0 for a close): ``put`` refuses (returns False)
    when a message would exceed the limit, so a slow reader is detected instead of buffered
    without bound. A message is always accepted into an empty outbox (one big push must not
    deadlock), and control items can be forced in."""

    def __init__(self, limit_frames: int):
        self.limit = limit_frames
        self.items: deque[OutboxItem] = deque()
        self.frames = 0
        self.ready = asyncio.Event()

    def put(self, item: OutboxItem, force: bool = False) -> bool:
        frames = item.frames
        if not force and self.frames and self.frames + frames > self.limit:
            return False
        self.items.append(item)
        self.frames += frames
        self.ready.set()
        return True

    def clear(self) -> None:
        self.items.clear()
        self.frames = 0

    async def get(self) -> OutboxItem:
        while not self.items:
            self.ready.clear()
            await self.ready.wait()
        item = self.items.popleft()
        self.frames -= item.frames
        return item


class LiveSession:
    """A connected, handshaken client."""

    def __init__(self, sid: int, ws: Any, hello: Hello, coder: Any, outbox_limit: int,
                 frame_length: int, close_timeout: float, model_rate: int,
                 vad: VadStream | None = None):
        self.id = sid
        self.ws = ws                       # a BoundedConnection
        self.close_timeout = close_timeout
        self.hello = hello
        self.coder = coder                 # EncoderSession or DecoderSession
        self.encoder = hello.direction == "encode"
        self.dtype = DTYPES[hello.payload_dtype]
        # input per output frame (samples, or 1 latent frame); a queued control op counts as
        # one frame in `pending`, so a flood of them also meets backpressure
        self.frame_length = frame_length
        self.inbox: deque[Op] = deque()
        self.outbox = Outbox(outbox_limit)
        self.pending = 0                   # samples (or frames) queued, not yet processed
        self.position = 0                  # stream position after the last queued op
        self.frames_queued = 0             # whole frames (encoder) up to `position`
        self.needs_step = False            # queued input the model must see now
        self.total_in = 0                  # samples (or frames) received over the connection
        self.stream_open = True            # False after a queued flush, until a reset
        self.dead = False                  # failed or closing: ignore further input
        self.seq = 0
        self.last_input = 0.0              # event-loop time of the last message
        self.paused = False                # reading stopped by backpressure (not idle then)
        self.space = asyncio.Event()       # set when the inbox has room again
        self.space.set()
        # protocol version 2 at another rate: the client's audio to the model's rate (encode,
        # used by the handler) or the decoder's audio to the client's rate (decode, used by
        # the batcher); one stream's state, like the coder's
        self.resampler: StreamResampler | None = None
        if hello.sample_rate != model_rate:
            self.resampler = (StreamResampler(hello.sample_rate, model_rate) if self.encoder
                              else StreamResampler(model_rate, hello.sample_rate))
        # "vad": true: the stream's voice activity, used by the batcher (None: no VAD work)
        self.vad = vad

    # -- resampling (protocol version 2) ------------------------------------------------------
    def resample(self, x: np.ndarray) -> np.ndarray:
        """The output the resampler completes with ``x`` (``x`` itself without one)."""
        return x if self.resampler is None else self.resampler.process(x)

    def audio_in(self, x: np.ndarray) -> np.ndarray:
        """A validated audio message (:func:`~.protocol.decode_audio`) -> the model-rate audio
        it completes, within the audio contract: the resampler's slight overshoot of [-1, 1]
        is clipped here, so the model never sees it and the session need not check again."""
        if self.resampler is None:
            return x
        return clip_to_contract(self.resampler.process(x), "audio message")

    def resample_tail(self) -> np.ndarray:
        """Ends the resampler's stream: its held-back output (empty without one)."""
        return np.zeros(0, np.float32) if self.resampler is None else self.resampler.flush()

    # -- input side (handler) -----------------------------------------------------------------
    def enqueue(self, op: Op) -> bool:
        """Queues ``op``; True if the model has new work: a control op, decoder latents, or
        audio that completes a frame. Audio that completes none waits in the inbox (it is
        merged into the next step), so a 20 ms chunk does not cost a model round of its own."""
        if op.data is not None:
            n = int(op.data.shape[0])
            self.pending += n
            self.total_in += n
            self.position += n
            op.end_sample = self.position
            self.inbox.append(op)
            if self.encoder:
                frames = self.position // self.frame_length
                if frames == self.frames_queued:
                    return False
                self.frames_queued = frames
            self.needs_step = True
            return True
        if self.encoder and self.resampler is not None:  # its stream ends with the client's
            if op.kind == "reset":
                self.resampler.reset()
            elif self.stream_open:  # flush, close, shutdown: the held-back tail goes first
                tail = clip_to_contract(self.resampler.flush(), "audio message")
                if tail.size:
                    self.enqueue(Op("data", op.recv_us, tail))
        self.pending += self.frame_length
        if op.kind == "reset":
            self.position = 0
            self.frames_queued = 0
            self.stream_open = True
        else:
            self.stream_open = False
        self.inbox.append(op)
        self.needs_step = True
        return True

    def take_work(self) -> Work | None:
        """Leading data ops (merged into one chunk) plus the control op after them, if any."""
        if not self.inbox:
            return None
        parts, marks = [], []
        while self.inbox and self.inbox[0].kind == "data":
            op = self.inbox.popleft()
            parts.append(op.data)
            marks.append((op.end_sample, op.recv_us))
        control = self.inbox.popleft() if self.inbox else None
        if control is not None:
            self.pending -= self.frame_length
        data = None
        if parts:
            data = parts[0] if len(parts) == 1 else np.concatenate(parts)
            self.pending -= int(data.shape[0])
        self.space.set()
        self.needs_step = bool(self.inbox)  # ops after a control op wait for the next round
        return Work(self, data, marks, control)

    # -- output side --------------------------------------------------------------------------
    def send(self, msg: FramesOut | TextOut, force: bool = False) -> bool:
        """Queues a frame or text message (a frame message gets the connection's next
        ``seq``); False if the outbox is full (slow reader)."""
        if isinstance(msg, FramesOut):
            msg.seq = self.seq
        if not self.outbox.put(msg, force=force):
            return False
        if isinstance(msg, FramesOut):
            self.seq += 1
        return True

    def send_text(self, text: str, force: bool = False) -> bool:
        """Queues a text message (counted as one frame); False if the outbox is full."""
        return self.send(TextOut(text), force)

    def fail(self, code: str, message: str) -> None:
        """Sends an error and closes with the code's close code; further input is ignored."""
        if self.dead:
            return
        self.dead = True
        self.inbox.clear()
        self.pending = 0
        self.space.set()
        self.send_text(error_message(code, message), force=True)
        self.close(ERROR_CODES[code], code)

    def close(self, code: int, reason: str) -> None:
        """Queues the close after what is already queued. The connection is aborted if it is
        still open ``close_timeout`` s from now: a client that reads nothing would otherwise
        keep the send of the queue ahead of the close (and so the close) waiting forever."""
        self.dead = True
        self.space.set()
        self.outbox.put(CloseOut(code, reason[:120]), force=True)
        self.ws.abort_after(self.close_timeout)
