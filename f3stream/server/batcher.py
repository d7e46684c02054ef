"""The batching loop: collects the work of every session that has input, runs it as one batched
model step in a worker thread, and hands the results back on the event loop.

Model work runs on worker threads (``workers`` of them, see :class:`Batcher`), so the event
loop never blocks on the model; while a round computes, new input accumulates and the next
round batches it all. A session is in at most one round at a time, so sessions never race
on their state rows and their frames stay in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..frames import EncodedFrames
from ..session import DecoderSession, EncoderSession
from ..tokenizer import Tokenizer
from .live import LiveSession, Work, now_us
from .protocol import (CLOSE_GOING_AWAY, CLOSE_NORMAL, KIND_AUDIO, KIND_LATENTS,
                       KIND_REPRESENTATIONS, CloseOut, FramesOut, SessionError, TextOut,
                       flushed_message, reset_message, speech_event)
from .vad import VadStream, run_windows

log = logging.getLogger("f3stream.server")


def compute(tok: Tokenizer, items: list[Work]) -> list[Work]:
    """Runs in the worker thread. Never raises: failures are recorded on the item."""
    encode: dict[int, list[Work]] = {}  # one batched step per state pool (an encoder pool
    decode: dict[int, list[Work]] = {}  # holds one output choice, so reps/latents split)
    for w in items:
        if w.data is not None:
            groups = encode if w.session.encoder else decode
            groups.setdefault(id(w.session.coder.pool), []).append(w)
    encoded = [wr for group in encode.values() for wr in _encode_group(tok, group)]
    for group in decode.values():
        _decode_group(tok, group)
    _vad([w for w in items if w.session.vad is not None and w.data is not None
          and w.error is None])
    for w, r in encoded:
        if w.error is not None:
            continue
        end = (r.start_frame + r.n_frames) * tok.hop_length
        _emit_frames(w, r, w.recv_us_for(end))
    for w in items:
        if w.error is not None or w.control is None:
            continue
        try:
            _control(w)
        except Exception as e:  # noqa: BLE001 - one session's failure must not stop others
            log.exception("session %s failed", w.session.id)
            w.error = SessionError("internal", f"{type(e).__name__}: {e}")
    return items


def _batched(group: list[Work], step, push, progress) -> list:
    """Runs ``step`` over the group; if it fails, isolates the failing session: when nothing
    was consumed, each session is retried alone (``push``); when input was consumed the
    streams' states are unknown, so those sessions end with an error. Returns one result per
    item (None for failed items)."""
    coders = [w.session.coder for w in group]
    before = [progress(c) for c in coders]
    try:
        return step(coders, [w.data for w in group])
    except Exception as e:  # noqa: BLE001
        log.exception("batched step failed")
        if [progress(c) for c in coders] != before:
            for w in group:
                w.error = SessionError("internal", f"batched model step failed: {type(e).__name__}: {e}")
            return [None] * len(group)
    results = []
    for w in group:
        try:
            results.append(push(w.session.coder, w.data))
        except Exception as e1:  # noqa: BLE001
            w.error = SessionError("internal", f"{type(e1).__name__}: {e1}")
            results.append(None)
    return results


# The sessions' input was validated where it entered (protocol.decode_audio / decode_latents,
# LiveSession.audio_in): the sessions take it as it is (validated=True).
def _decode_group(tok: Tokenizer, group: list[Work]) -> None:
    results = _batched(group,
                       lambda coders, zs: tok.step_decoder_sessions(coders, zs, validated=True),
                       lambda c, z: c.push(z, validated=True), lambda c: c.frames_received)
    for w, wav in zip(group, results):
        if wav is not None:
            start = w.session.coder.frames_received - w.data.shape[0]
            _emit_audio(w, start, w.session.resample(wav), w.marks[-1][1])


def _encode_group(tok: Tokenizer, group: list[Work]) -> list[tuple[Work, EncodedFrames]]:
    """The group's batched step: (work, frames) of the sessions that completed frames."""
    results = _batched(group, lambda coders, xs: tok.step_sessions(coders, xs, validated=True),
                       lambda c, x: c.push(x, validated=True), lambda c: c.samples_received)
    return [(w, r) for w, r in zip(group, results) if r is not None and r.n_frames]


def _vad(items: list[Work]) -> None:
    """Voice activity of the round's sessions that asked for it: their audio in, then every
    complete window of all of them through the model in one batched call per window
    position. A failure ends the sessions it may have left half-stepped."""
    if not items:
        return
    for w in items:
        w.session.vad.feed(w.data)
    try:
        run_windows([w.session.vad for w in items])
    except Exception as e:  # noqa: BLE001 - one round's VAD failure must not stop the server
        log.exception("VAD step failed")
        for w in items:
            w.error = SessionError("internal", f"voice activity step failed: {type(e).__name__}: {e}")


def _emit_frames(w: Work, r: EncodedFrames, recv_us: int, final: bool = False) -> None:
    kind = w.session.hello.output_kind
    if kind == KIND_LATENTS:
        payload = r.latents
    elif kind == KIND_REPRESENTATIONS:
        payload = r.representations
    else:
        payload = np.concatenate([r.latents, r.representations], axis=1)
    vad: VadStream | None = w.session.vad
    if vad is None:
        w.out.append(FramesOut(kind, r.start_frame, payload, recv_us, final))
        return
    probs, events = vad.label(r.start_frame, r.n_frames)
    w.out.append(FramesOut(kind, r.start_frame, payload, recv_us, final, probs))
    _emit_events(w, events)


def _emit_events(w: Work, events: list[tuple[str, int]]) -> None:
    """speech_start / speech_end, after the frame message whose frame decided them."""
    for kind, frame in events:
        w.out.append(TextOut(speech_event(kind, frame, now_us())))


def _emit_audio(w: Work, start: int, wav: np.ndarray, recv_us: int, final: bool = False
                ) -> None:
    if wav.size or final:
        w.out.append(FramesOut(KIND_AUDIO, start, wav[None, :], recv_us, final))


def _control(w: Work) -> None:
    op, coder = w.control, w.session.coder
    vad: VadStream | None = w.session.vad
    if op.kind == "reset":
        coder.reset()
        if not w.session.encoder and w.session.resampler is not None:
            w.session.resampler.reset()  # (an encoder's is reset as the reset arrives)
        if vad is not None:
            vad.reset()
        w.out.append(TextOut(reset_message()))
        return
    # flush, close and shutdown all end the stream first (flush is idempotent)
    if not coder.closed:
        if w.session.encoder:
            r = coder.flush()
            if vad is not None:  # the last frame's windows, alone (flushes are rare)
                vad.finish(coder.frames_emitted)
                run_windows([vad])
            if r.n_frames:
                _emit_frames(w, r, op.recv_us, final=True)
            if vad is not None:
                _emit_events(w, vad.end())
        else:
            tail = w.session.resample(coder.flush())
            _emit_audio(w, coder.frames_received, np.concatenate([tail, w.session.resample_tail()]),
                        op.recv_us, final=True)
    frames = coder.frames_emitted if w.session.encoder else coder.frames_received
    w.out.append(TextOut(flushed_message(frames)))
    if op.kind == "close":
        w.out.append(CloseOut(CLOSE_NORMAL, "closed by client"))
    elif op.kind == "shutdown":
        w.out.append(CloseOut(CLOSE_GOING_AWAY, "server shutting down"))


class Batcher:
    """Runs rounds of model work whenever sessions have input; see the module docstring.

    With ``workers`` > 1, rounds overlap: input that arrives while a round computes starts
    the next round on another thread at once instead of waiting for the first to finish. A
    session is in at most one round at a time (its input waits for its round to end), so
    its frames stay in order and no two threads touch its state row."""

    def __init__(self, tok: Tokenizer, sessions: Callable[[], Iterable[LiveSession]],
                 deliver: Callable[[Work], None], on_batch: Callable[[int, float], None],
                 workers: int = 1):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.tok = tok
        self.sessions = sessions
        self.deliver = deliver
        self.on_batch = on_batch
        self.workers = workers
        self.wake = asyncio.Event()
        self.executor = ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="f3stream-model")
        self.task: asyncio.Task | None = None
        self.stopping = False
        self._rounds: set[asyncio.Task] = set()     # round tasks not yet finished
        self._computing = 0                         # rounds holding a worker thread
        self._in_round: set[int] = set()            # id() of the coders in those rounds
        self._retired: list[EncoderSession | DecoderSession] = []

    def retire(self, coder: EncoderSession | DecoderSession) -> None:
        """Gives a finished session's pool row back, once no running round uses it."""
        self._retired.append(coder)
        self._release_retired()

    def _release_retired(self) -> None:
        still_in_round = []
        for coder in self._retired:
            if id(coder) in self._in_round:
                still_in_round.append(coder)
            else:
                coder.release()
        self._retired = still_in_round

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            await self.wake.wait()
            self.wake.clear()
            if self._computing >= self.workers:
                continue  # a round that ends wakes us again if work is waiting
            items = [w for s in list(self.sessions())
                     if (not s.dead or s.inbox) and id(s.coder) not in self._in_round
                     for w in [s.take_work()] if w is not None]
            if not items:
                continue
            self._in_round.update(id(w.session.coder) for w in items)
            self._computing += 1
            task = loop.create_task(self._round(items))
            self._rounds.add(task)
            task.add_done_callback(self._rounds.discard)

    async def _round(self, items: list[Work]) -> None:
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            done = await loop.run_in_executor(self.executor, compute, self.tok, items)
        except RuntimeError:  # executor shut down under us: the server is stopping
            return
        finally:
            self._computing -= 1
            self._in_round.difference_update(id(w.session.coder) for w in items)
            self._release_retired()
        self.on_batch(sum(1 for w in items if w.data is not None), time.perf_counter() - t0)
        for w in done:
            try:
                self.deliver(w)
            except Exception as e:  # noqa: BLE001 - the loop must survive any one session
                log.exception("delivering to session %s failed", w.session.id)
                w.session.fail("internal", f"delivering results failed: {type(e).__name__}")
        if any(s.needs_step for s in self.sessions()):
            self.wake.set()

    async def stop(self) -> None:
        self.stopping = True
        self.wake.set()
        if self.task is not None:
            try:
                await asyncio.wait_for(self.task, 30)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                self.task.cancel()
        if self._rounds:
            await asyncio.wait(list(self._rounds), timeout=30)
        self.executor.shutdown(wait=True)
