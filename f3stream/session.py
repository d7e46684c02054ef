"""Streaming sessions over an engine: feed PCM (or latents) of any length, get each frame as soon
as it is done.

Layering: sessions sit on an :class:`~f3stream.backends.Engine` (they never import the
:class:`~f3stream.tokenizer.Tokenizer`, which is the front built on top of them). A session's
stream state is one row of an :class:`EncoderStatePool` (a private one-row pool unless the
session was made from a shared pool). Sessions are independent: interleaving them changes
nothing, and :func:`step_encoder_sessions` runs many of them in one batched model step, in
place on their pool's rows when they share a pool (what a server does).

Input is validated where it enters (:mod:`f3stream.audio`); callers that validated it already
(the tokenizer's offline paths, the server's protocol layer) say so with ``validated=True`` and
it is not checked again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .alignment import DelayTrim, Regrouper, pad_to_frames
from .audio import as_latents, as_mono_float32, finite_output
from .errors import F3StreamError, SessionClosedError
from .frames import EncodedFrames
from .streaming import State

if TYPE_CHECKING:
    from .backends import Engine

#: the most frames one model call of a session takes: a long push is cut into blocks of this
#: many frames (~10 s), so memory stays bounded (the tokenizer's offline paths regroup their
#: input into blocks of the same size)
BLOCK_FRAMES = 256


def engine_of(owner: Any) -> "Engine":
    """The engine sessions run on: ``owner`` itself, or the engine of a front that holds one as
    ``.engine`` (a :class:`~f3stream.tokenizer.Tokenizer`)."""
    return getattr(owner, "engine", owner)


class PoolFullError(F3StreamError):
    """Every row of a state pool (:class:`EncoderStatePool`, :class:`DecoderStatePool`) is in
    use."""


class _StatePool:
    """Rows of one batched state, handed out to sessions (see :class:`EncoderStatePool`)."""

    def __init__(self, engine: "Engine", capacity: int, state: State):
        if capacity < 1:
            raise ValueError(f"pool capacity must be >= 1, got {capacity}")
        self.engine = engine
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
        self.engine.zero_rows(self.state, [row])
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

    def __init__(self, engine: "Engine", capacity: int, representations: bool = True):
        """``engine``: an :class:`~f3stream.backends.Engine` or a front holding one
        (:func:`engine_of`)."""
        engine = engine_of(engine)
        super().__init__(engine, capacity, engine.init_encode_state(capacity, representations))
        self.with_representations = representations

    def session(self) -> "EncoderSession":
        """A new session whose state lives in this pool; raises :class:`PoolFullError`. Call
        its ``release()`` when the stream is over, or the row stays taken."""
        return EncoderSession(self.engine, self.with_representations, pool=self)


class DecoderStatePool(_StatePool):
    """The decoder states of up to ``capacity`` streams (as :class:`EncoderStatePool`)."""

    def __init__(self, engine: "Engine", capacity: int):
        engine = engine_of(engine)
        super().__init__(engine, capacity, engine.init_decode_state(capacity))

    def session(self) -> "DecoderSession":
        return DecoderSession(self.engine, pool=self)


class _PooledStream:
    """What encoder and decoder sessions share: a stream whose state is one row of a pool."""

    engine: "Engine"

    def _attach(self, pool: _StatePool) -> None:
        self.pool = pool
        self.row = pool._acquire()
        self._released = False
        self._init_counters()

    def _init_counters(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Forget everything: the next input starts a new stream at frame 0."""
        self._check_live()
        self.engine.zero_rows(self.pool.state, [self.row])
        self._init_counters()

    def release(self) -> None:
        """Gives the state row back to its pool (idempotent); the session is unusable
        afterwards. Sessions with a private pool need not call it."""
        if not self._released:
            self._released = True
            self.closed = True
            self.pool._release(self.row)

    def _check_live(self) -> None:
        if self._released:
            raise SessionClosedError("session was released; make a new one")

    def _check_open(self) -> None:
        self._check_live()
        if self.closed:
            raise SessionClosedError("session was flushed; call reset() to start a new stream")

    @property
    def state(self) -> State:
        """This stream's state: batch-1 views of its pool row."""
        return self.pool.row_state(self.row)


class EncoderSession(_PooledStream):
    """Waveform in, latents (and representations) out, frame by frame.

    ``push`` accepts mono int16 or float chunks of any length (even 1 sample or 0); a frame is
    returned as soon as its last sample has arrived. ``flush`` zero-pads and emits the last
    partial frame, exactly as the offline :meth:`Tokenizer.encode` pads the end of a clip, and
    closes the stream until :meth:`reset`.
    """

    def __init__(self, engine: "Engine", representations: bool = True,
                 pool: EncoderStatePool | None = None):
        """``engine``: an :class:`~f3stream.backends.Engine` or a front holding one
        (:func:`engine_of`)."""
        engine = engine_of(engine)
        if pool is not None and (pool.engine is not engine
                                 or pool.with_representations != representations):
            raise ValueError("the pool belongs to another tokenizer or output choice")
        self.engine = engine
        self.with_representations = representations
        ae = engine.cfg.autoencoder
        self.hop = ae.hop_length
        self.latent_dim = ae.latent_dim
        self.representation_dim = engine.cfg.representation.output_dim
        self._attach(pool if pool is not None
                     else EncoderStatePool(engine, 1, representations))

    def _init_counters(self) -> None:
        self._frames = Regrouper(self.hop, np.zeros(0, dtype=np.float32))
        self.frames_emitted = 0
        self.samples_received = 0
        self.closed = False

    @property
    def pending_samples(self) -> int:
        """Samples received that do not yet complete a frame (always < hop_length)."""
        return int(self._frames.pending.size)

    @property
    def state_nbytes(self) -> int:
        """Bytes of model state this session holds (constant for the stream's whole life)."""
        return self.engine.state_nbytes(self.state) + self._frames.pending.nbytes

    def _check_chunk(self, pcm, validated: bool = False) -> np.ndarray:
        """Validates a chunk (unless ``validated``) without changing the session."""
        self._check_open()
        if validated:
            return pcm
        return as_mono_float32(pcm, name="audio chunk", allow_empty=True)

    def _commit(self, x: np.ndarray) -> np.ndarray:
        """Buffers a validated chunk; returns the whole frames now ready."""
        self.samples_received += x.size
        return self._frames.push(x)

    def _run(self, ready: np.ndarray) -> EncodedFrames:
        lat, rep = self._encode(ready)
        out = EncodedFrames(self.frames_emitted, lat, rep)
        self.frames_emitted += out.n_frames
        return out

    def _encode(self, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Whole frames of samples -> (latents, representations or None), advancing this
        stream's row of the pool in place, at most :data:`BLOCK_FRAMES` frames per model
        call."""
        engine, hop = self.engine, self.hop
        n = wav.size // hop
        lat, rep = [], []
        rows = np.array([self.row], dtype=np.int64)
        for a in range(0, n, BLOCK_FRAMES):
            chunk = wav[a * hop:(a + BLOCK_FRAMES) * hop]
            z, r = engine.encode_rows(chunk[None], self.pool.state, rows)
            lat.append(finite_output(z[0]))
            if r is not None:
                rep.append(finite_output(r[0]))
        reps = (_cat(rep, self.representation_dim)
                if engine.has_representations(self.pool.state) else None)
        return _cat(lat, self.latent_dim), reps

    def push(self, pcm, *, validated: bool = False) -> EncodedFrames:
        """Adds samples; returns the frames they completed (possibly none).

        ``validated=True``: ``pcm`` already went through
        :func:`~f3stream.audio.as_mono_float32` (1-D float32 under the audio contract) and is
        not checked again."""
        return self._run(self._commit(self._check_chunk(pcm, validated)))

    def flush(self) -> EncodedFrames:
        """Ends the stream: emits the zero-padded partial frame, if any samples are pending."""
        self._check_live()
        if self.closed:
            raise SessionClosedError("session was already flushed; call reset()")
        out = self._run(pad_to_frames(self._frames.take_pending(), self.hop))
        self.closed = True
        return out


class DecoderSession(_PooledStream):
    """Latents in, waveform out. The output is aligned with the encoder's input: the decoder's
    overlap-add delay is absorbed (the first chunk is shorter) and returned by ``flush``.
    Its state is a row of a :class:`DecoderStatePool` (a private one-row pool by default)."""

    def __init__(self, engine: "Engine", pool: DecoderStatePool | None = None):
        """``engine``: an :class:`~f3stream.backends.Engine` or a front holding one
        (:func:`engine_of`)."""
        engine = engine_of(engine)
        if pool is not None and pool.engine is not engine:
            raise ValueError("the pool belongs to another tokenizer")
        self.engine = engine
        self.latent_dim = engine.cfg.autoencoder.latent_dim
        self._attach(pool if pool is not None else DecoderStatePool(engine, 1))

    def _init_counters(self) -> None:
        self._trim = DelayTrim(self.engine.cfg.autoencoder.decoder_delay)
        self.frames_received = 0
        self.closed = False

    @property
    def state_nbytes(self) -> int:
        return self.engine.state_nbytes(self.state)

    def _check(self, latents, validated: bool = False) -> np.ndarray:
        """Validates latents (unless ``validated``) without changing the session."""
        self._check_open()
        if validated:
            return latents
        return as_latents(latents, self.latent_dim, allow_empty=True)

    def push(self, latents, *, validated: bool = False) -> np.ndarray:
        """``[n, latent_dim]`` latents (n may be 0) -> the samples they completed.

        ``validated=True``: ``latents`` already went through :func:`~f3stream.audio.as_latents`
        and are not checked again."""
        z = self._check(latents, validated)
        self.frames_received += z.shape[0]
        return self._trim(self._decode(z))

    def _decode(self, z: np.ndarray) -> np.ndarray:
        """Latent frames -> samples, advancing this stream's row of the pool in place."""
        if z.shape[0] == 0:
            return np.zeros(0, np.float32)
        return finite_output(
            self.engine.decode_rows(z[None], self.pool.state,
                                    np.array([self.row], dtype=np.int64))[0])

    def flush(self) -> np.ndarray:
        """Ends the stream: returns the last ``decoder_delay`` samples held back."""
        self._check_live()
        if self.closed:
            raise SessionClosedError("session was already flushed; call reset()")
        self.closed = True
        if self.frames_received == 0:
            return np.zeros(0, dtype=np.float32)
        return self._trim(finite_output(self.engine.decode_tail(self.state)[0]))


def step_encoder_sessions(sessions: Sequence[EncoderSession], chunks: Sequence, *,
                          validated: bool = False) -> list[EncodedFrames]:
    """Pushes ``chunks[i]`` into ``sessions[i]`` for all i, running their frames through the
    model in batched steps (one forward for all sessions that have a frame ready).

    Results equal separate ``push`` calls up to float rounding of the batched matmuls.
    ``validated`` as in :meth:`EncoderSession.push`.
    """
    _check_batch(sessions, chunks)
    if not sessions:
        return []
    if len({s.with_representations for s in sessions}) > 1:
        raise ValueError("all sessions must agree on returning representations")
    checked = [s._check_chunk(c, validated)                      # a bad chunk raises
               for s, c in zip(sessions, chunks)]
    ready = [s._commit(x) for s, x in zip(sessions, checked)]    # before any state moves
    starts = [s.frames_emitted for s in sessions]
    first = sessions[0]
    steps = _step_in_batches(sessions, ready, first.hop, first.engine.encode_rows)
    out = []
    for s, start, parts in zip(sessions, starts, steps):
        lat = _cat([z for z, _ in parts], s.latent_dim)
        rep = (_cat([r for _, r in parts], s.representation_dim)
               if s.with_representations else None)
        s.frames_emitted += lat.shape[0]
        out.append(EncodedFrames(start, lat, rep))
    return out


def step_decoder_sessions(sessions: Sequence[DecoderSession], latents: Sequence, *,
                          validated: bool = False) -> list[np.ndarray]:
    """Pushes ``latents[i]`` (``[n_i, latent_dim]``) into ``sessions[i]`` for all i, decoding
    the frames of all sessions in batched steps (in place on their pool's rows when they
    share a pool). Returns what separate ``push`` calls would, up to float rounding.
    ``validated`` as in :meth:`DecoderSession.push`."""
    _check_batch(sessions, latents)
    if not sessions:
        return []
    zs = [s._check(z, validated)                            # a bad chunk raises before any
          for s, z in zip(sessions, latents)]               # session changes
    for s, z in zip(sessions, zs):
        s.frames_received += z.shape[0]
    engine = sessions[0].engine
    steps = _step_in_batches(sessions, zs, 1,
                             lambda z, state, rows: (engine.decode_rows(z, state, rows),))
    return [s._trim(np.concatenate([w for (w,) in parts]) if parts
                    else np.zeros(0, np.float32)) for s, parts in zip(sessions, steps)]


def _check_batch(sessions: Sequence[_PooledStream], inputs: Sequence) -> None:
    if len(sessions) != len(inputs):
        raise ValueError("need exactly one chunk per session")
    if any(s.engine is not sessions[0].engine for s in sessions):
        raise ValueError("all sessions must share one Tokenizer (one engine)")
    if len({id(s) for s in sessions}) != len(sessions):
        raise ValueError("a session appears twice")


def _step_in_batches(sessions: Sequence[_PooledStream], inputs: list[np.ndarray], unit: int,
                     step) -> list[list[tuple]]:
    """Runs every session's input (whole ``unit``-row frames along axis 0) through
    ``step(batch, state, rows) -> tuple of [B, ...] arrays (or None)`` in batched steps of
    equal length over the sessions that still have frames. In place on the pool's rows when
    all sessions share one pool; otherwise their rows are gathered into one state and written
    back after each step. Returns, per session, each step's outputs for it."""
    engine = sessions[0].engine
    shared = sessions[0].pool
    one_pool = all(s.pool is shared for s in sessions)
    n_frames = [x.shape[0] // unit for x in inputs]
    done = [0] * len(sessions)
    outs: list[list[tuple]] = [[] for _ in sessions]
    while True:
        active = [i for i, n in enumerate(n_frames) if done[i] < n]
        if not active:
            return outs
        t = min(n_frames[i] - done[i] for i in active)
        batch = np.stack([inputs[i][done[i] * unit:(done[i] + t) * unit] for i in active])
        if one_pool:
            rows = np.array([sessions[i].row for i in active], dtype=np.int64)
            res = step(batch, shared.state, rows)
        else:
            state = engine.concat_states([sessions[i].state for i in active])
            res = step(batch, state, np.arange(len(active)))
            for i, part in zip(active, engine.split_state(state, [1] * len(active))):
                row, pool_state = sessions[i].row, sessions[i].pool.state
                for k, v in part.items():
                    pool_state[k][row:row + 1] = v
        res = [None if a is None else finite_output(a) for a in res]
        for j, i in enumerate(active):
            outs[i].append(tuple(None if a is None else a[j] for a in res))
            done[i] += t


def _cat(parts: list[np.ndarray], dim: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
