"""Streaming sessions: feed PCM (or latents) of any length, get each frame as soon as it is done.

A session's stream state is one row of an :class:`EncoderStatePool` (a private one-row pool
unless the session was made from a shared pool). Sessions are independent: interleaving them
changes nothing, and :func:`step_encoder_sessions` runs many of them in one batched model step,
in place on their pool's rows when they share a pool (what a server does).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .audio import as_mono_float32
from .errors import F3StreamError, SessionClosedError
from .streaming import State

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


@dataclass
class EncodedFrames:
    """Frames ``start_frame .. start_frame + n_frames - 1`` of a stream."""

    start_frame: int
    latents: np.ndarray                    # [n, latent_dim] float32
    representations: np.ndarray | None     # [n, representation_dim] float32, or None

    @property
    def n_frames(self) -> int:
        return int(self.latents.shape[0])


class PoolFullError(F3StreamError):
    """Every row of a state pool (:class:`EncoderStatePool`, :class:`DecoderStatePool`) is in
    use."""


class _StatePool:
    """Rows of one batched state, handed out to sessions (see :class:`EncoderStatePool`)."""

    def __init__(self, tokenizer: "Tokenizer", capacity: int, state: State):
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.tokenizer = tokenizer
        self.capacity = int(capacity)
        self.state = state
        self._free = list(range(capacity - 1, -1, -1))
        self._lock = threading.Lock()

    @property
    def free_rows(self) -> int:
        return len(self._free)

    def _acquire(self) -> int:
        with self._lock:
            if not self._free:
                raise PoolFullError(f"all {self.capacity} rows of the state pool are in use")
            return self._free.pop()

    def _release(self, row: int) -> None:
        self.tokenizer.engine.zero_rows(self.state, [row])
        with self._lock:
            self._free.append(row)

    def row_state(self, row: int) -> State:
        """Row ``row`` as a batch-1 state of views (numpy/torch slices, no copy)."""
        return {k: v[row:row + 1] for k, v in self.state.items()}


class EncoderStatePool(_StatePool):
    """The encoder states of up to ``capacity`` streams, as rows of one batched state.

    Why: batching sessions that each own a state means concatenating their states before every
    model step and splitting them after (for a 100-stream server step that copying cost as
    much as a third of the model itself). Sessions made by :meth:`session` keep their state in
    a row here, and a batched step works on the rows in place. Rows are zero at a stream's
    start (every fresh state is zeros) and are zeroed again on reset or release.
    """

    def __init__(self, tokenizer: "Tokenizer", capacity: int, representations: bool = True):
        super().__init__(tokenizer, capacity,
                         tokenizer.engine.init_encode_state(capacity, representations))
        self.with_representations = representations

    def session(self) -> "EncoderSession":
        """A new session whose state lives in this pool; raises :class:`PoolFullError`. Call
        its ``release()`` when the stream is over, or the row stays taken."""
        return EncoderSession(self.tokenizer, self.with_representations, pool=self)


class DecoderStatePool(_StatePool):
    """The decoder states of up to ``capacity`` streams (as :class:`EncoderStatePool`)."""

    def __init__(self, tokenizer: "Tokenizer", capacity: int):
        super().__init__(tokenizer, capacity, tokenizer.engine.init_decode_state(capacity))

    def session(self) -> "DecoderSession":
        return DecoderSession(self.tokenizer, pool=self)


class EncoderSession:
    """Waveform in, latents (and representations) out, frame by frame.

    ``push`` accepts mono int16 or float chunks of any length (even 1 sample or 0); a frame is
    returned as soon as its last sample has arrived. ``flush`` zero-pads and emits the last
    partial frame, exactly as the offline :meth:`Tokenizer.encode` pads the end of a clip, and
    closes the stream until :meth:`reset`.
    """

    def __init__(self, tokenizer: "Tokenizer", representations: bool = True,
                 pool: EncoderStatePool | None = None):
        if pool is not None and (pool.tokenizer is not tokenizer
                                 or pool.with_representations != representations):
            raise ValueError("the pool belongs to another tokenizer or output choice")
        self.tokenizer = tokenizer
        self.with_representations = representations
        self.hop = tokenizer.hop_length
        self.pool = pool if pool is not None else EncoderStatePool(tokenizer, 1,
                                                                    representations)
        self.row = self.pool._acquire()
        self._released = False
        self._init_counters()

    def _init_counters(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)
        self.frames_emitted = 0
        self.samples_received = 0
        self.closed = False

    def reset(self) -> None:
        """Forget everything: the next sample starts a new stream at frame 0."""
        self._check_live()
        self.tokenizer.engine.zero_rows(self.pool.state, [self.row])
        self._init_counters()

    def release(self) -> None:
        """Gives the state row back to a shared pool (idempotent); the session is unusable
        afterwards. Sessions with a private pool need not call it."""
        if not self._released:
            self._released = True
            self.closed = True
            self.pool._release(self.row)

    def _check_live(self) -> None:
        if self._released:
            raise SessionClosedError("session was released; make a new one")

    @property
    def state(self) -> State:
        """This stream's state: batch-1 views of its pool row."""
        return self.pool.row_state(self.row)

    @property
    def pending_samples(self) -> int:
        """Samples received that do not yet complete a frame (always < hop_length)."""
        return int(self._pending.size)

    @property
    def state_nbytes(self) -> int:
        """Bytes of model state this session holds (constant for the stream's whole life)."""
        return self.tokenizer.engine.state_nbytes(self.state) + self._pending.nbytes

    def _check_chunk(self, pcm) -> np.ndarray:
        """Validates a chunk without changing the session."""
        self._check_live()
        if self.closed:
            raise SessionClosedError("session was flushed; call reset() to start a new stream")
        return as_mono_float32(pcm, name="audio chunk", allow_empty=True)

    def _take_ready(self, pcm) -> np.ndarray:
        return self._commit(self._check_chunk(pcm))

    def _commit(self, x: np.ndarray) -> np.ndarray:
        """Buffers a validated chunk; returns the whole frames now ready."""
        self.samples_received += x.size
        buf = np.concatenate([self._pending, x]) if self._pending.size else x
        n_ready = (buf.size // self.hop) * self.hop
        self._pending = buf[n_ready:].copy()
        return buf[:n_ready]

    def _run(self, ready: np.ndarray) -> EncodedFrames:
        lat, rep = self.tokenizer._encode_array(ready, self.pool.state, self.row)
        out = EncodedFrames(self.frames_emitted, lat, rep)
        self.frames_emitted += out.n_frames
        return out

    def push(self, pcm) -> EncodedFrames:
        """Adds samples; returns the frames they completed (possibly none)."""
        return self._run(self._take_ready(pcm))

    def flush(self) -> EncodedFrames:
        """Ends the stream: emits the zero-padded partial frame, if any samples are pending."""
        self._check_live()
        if self.closed:
            raise SessionClosedError("session was already flushed; call reset()")
        pad = (-self._pending.size) % self.hop
        last = np.concatenate([self._pending, np.zeros(pad, np.float32)])
        self._pending = np.zeros(0, dtype=np.float32)
        out = self._run(last)
        self.closed = True
        return out


class DecoderSession:
    """Latents in, waveform out. The output is aligned with the encoder's input: the decoder's
    overlap-add delay is absorbed (the first chunk is shorter) and returned by ``flush``.
    Its state is a row of a :class:`DecoderStatePool` (a private one-row pool by default)."""

    def __init__(self, tokenizer: "Tokenizer", pool: DecoderStatePool | None = None):
        if pool is not None and pool.tokenizer is not tokenizer:
            raise ValueError("the pool belongs to another tokenizer")
        self.tokenizer = tokenizer
        self.pool = pool if pool is not None else DecoderStatePool(tokenizer, 1)
        self.row = self.pool._acquire()
        self._released = False
        self._init_counters()

    def _init_counters(self) -> None:
        self._to_skip = self.tokenizer.config.autoencoder.decoder_delay
        self.frames_received = 0
        self.closed = False

    def reset(self) -> None:
        self._check_live()
        self.tokenizer.engine.zero_rows(self.pool.state, [self.row])
        self._init_counters()

    def release(self) -> None:
        """Gives the state row back to a shared pool (idempotent); see
        :meth:`EncoderSession.release`."""
        if not self._released:
            self._released = True
            self.closed = True
            self.pool._release(self.row)

    def _check_live(self) -> None:
        if self._released:
            raise SessionClosedError("session was released; make a new one")

    @property
    def state(self) -> State:
        return self.pool.row_state(self.row)

    @property
    def state_nbytes(self) -> int:
        return self.tokenizer.engine.state_nbytes(self.state)

    def _check(self, latents) -> np.ndarray:
        """Validates latents without changing the session."""
        self._check_live()
        if self.closed:
            raise SessionClosedError("session was flushed; call reset() to start a new stream")
        return self.tokenizer._check_latents(latents, allow_empty=True)

    def push(self, latents) -> np.ndarray:
        """``[n, latent_dim]`` latents (n may be 0) -> the samples they completed."""
        z = self._check(latents)
        self.frames_received += z.shape[0]
        return self._skip(self.tokenizer._decode_array(z, self.pool.state, self.row))

    def flush(self) -> np.ndarray:
        """Ends the stream: returns the last ``decoder_delay`` samples held back."""
        self._check_live()
        if self.closed:
            raise SessionClosedError("session was already flushed; call reset()")
        self.closed = True
        if self.frames_received == 0:
            return np.zeros(0, dtype=np.float32)
        tail = self.tokenizer.engine.decode_tail(self.state)[0]
        return self._skip(tail)

    def _skip(self, wav: np.ndarray) -> np.ndarray:
        if self._to_skip:
            n = min(self._to_skip, wav.size)
            self._to_skip -= n
            wav = wav[n:]
        return wav


def step_encoder_sessions(sessions: Sequence[EncoderSession], chunks: Sequence
                          ) -> list[EncodedFrames]:
    """Pushes ``chunks[i]`` into ``sessions[i]`` for all i, running their frames through the
    model in batched steps (one forward for all sessions that have a frame ready).

    Results equal separate ``push`` calls up to float rounding of the batched matmuls.
    """
    if len(sessions) != len(chunks):
        raise ValueError("need exactly one chunk per session")
    if not sessions:
        return []
    tok = sessions[0].tokenizer
    if any(s.tokenizer is not tok for s in sessions):
        raise ValueError("all sessions must share one Tokenizer")
    if len({s.with_representations for s in sessions}) > 1:
        raise ValueError("all sessions must agree on returning representations")
    if len({id(s) for s in sessions}) != len(sessions):
        raise ValueError("a session appears twice")
    checked = [s._check_chunk(c) for s, c in zip(sessions, chunks)]  # a bad chunk raises
    ready = [s._commit(x) for s, x in zip(sessions, checked)]        # before any state moves
    n_frames = [r.size // tok.hop_length for r in ready]
    lat: list[list[np.ndarray]] = [[] for _ in sessions]
    rep: list[list[np.ndarray]] = [[] for _ in sessions]
    starts = [s.frames_emitted for s in sessions]
    _step_batched(tok, sessions, ready, n_frames, lat, rep)
    out = []
    for i, s in enumerate(sessions):
        s.frames_emitted += n_frames[i]
        out.append(EncodedFrames(starts[i], _cat(lat[i], tok.latent_dim),
                                 _cat(rep[i], tok.representation_dim)
                                 if s.with_representations else None))
    return out


def _step_batched(tok, sessions, ready, n_frames, lat, rep) -> None:
    """Batched model steps: in place on the pool's rows when all sessions share one pool;
    otherwise their rows are gathered into one state and written back after each step."""
    hop = tok.hop_length
    engine = tok.engine
    shared = sessions[0].pool
    one_pool = all(s.pool is shared for s in sessions)
    done = [0] * len(sessions)
    while True:
        active = [i for i, n in enumerate(n_frames) if done[i] < n]
        if not active:
            break
        t = min(n_frames[i] - done[i] for i in active)
        wav = np.stack([ready[i][done[i] * hop:(done[i] + t) * hop] for i in active])
        if one_pool:
            rows = np.array([sessions[i].row for i in active], dtype=np.int64)
            z, r = engine.encode_rows(wav, shared.state, rows)
        else:
            state = engine.concat_states([sessions[i].state for i in active])
            z, r = engine.encode_rows(wav, state, np.arange(len(active)))
            for i, part in zip(active, engine.split_state(state, [1] * len(active))):
                pool_state = sessions[i].pool.state
                for k, v in part.items():
                    pool_state[k][sessions[i].row:sessions[i].row + 1] = v
        for j, i in enumerate(active):
            lat[i].append(z[j])
            if r is not None:
                rep[i].append(r[j])
            done[i] += t


def step_decoder_sessions(sessions: Sequence[DecoderSession], latents: Sequence
                          ) -> list[np.ndarray]:
    """Pushes ``latents[i]`` (``[n_i, latent_dim]``) into ``sessions[i]`` for all i, decoding
    the frames of all sessions in batched steps (in place on their pool's rows when they
    share a pool). Returns what separate ``push`` calls would, up to float rounding."""
    if len(sessions) != len(latents):
        raise ValueError("need exactly one latent chunk per session")
    if not sessions:
        return []
    tok = sessions[0].tokenizer
    if any(s.tokenizer is not tok for s in sessions):
        raise ValueError("all sessions must share one Tokenizer")
    if len({id(s) for s in sessions}) != len(sessions):
        raise ValueError("a session appears twice")
    zs = [s._check(z) for s, z in zip(sessions, latents)]  # a bad chunk raises before any
    for s, z in zip(sessions, zs):                          # session changes
        s.frames_received += z.shape[0]
    out: list[list[np.ndarray]] = [[] for _ in sessions]
    engine = tok.engine
    shared = sessions[0].pool
    one_pool = all(s.pool is shared for s in sessions)
    done = [0] * len(sessions)
    while True:
        active = [i for i, z in enumerate(zs) if done[i] < z.shape[0]]
        if not active:
            break
        t = min(zs[i].shape[0] - done[i] for i in active)
        z = np.stack([zs[i][done[i]:done[i] + t] for i in active])
        if one_pool:
            rows = np.array([sessions[i].row for i in active], dtype=np.int64)
            wav = engine.decode_rows(z, shared.state, rows)
        else:
            state = engine.concat_states([sessions[i].state for i in active])
            wav = engine.decode_rows(z, state, np.arange(len(active)))
            for i, part in zip(active, engine.split_state(state, [1] * len(active))):
                for k, v in part.items():
                    sessions[i].pool.state[k][sessions[i].row:sessions[i].row + 1] = v
        for j, i in enumerate(active):
            out[i].append(wav[j])
            done[i] += t
    return [s._skip(np.concatenate(o) if o else np.zeros(0, np.float32))
            for s, o in zip(sessions, out)]


def _cat(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
