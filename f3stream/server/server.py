"""The websocket server: handshakes, per-connection reading and sending, limits, health and
metrics endpoints, graceful shutdown. Model work is delegated to :class:`Batcher`.

Every connection is isolated: whatever one client sends (or how it disconnects) ends at most
its own connection, with an error message and a documented close code (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import json
import logging
import signal
import sys
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..resampling import stream_latency_ms
from ..session import DecoderSession, DecoderStatePool, EncoderSession, EncoderStatePool
from ..threads import engine_info
from ..tokenizer import Tokenizer
from .batcher import Batcher
from .connection import BoundedConnection
from .live import STOP, LiveSession, Op, Work, now_us
from .metrics import PROMETHEUS_TEXT, Metrics
from .protocol import (CLOSE_GOING_AWAY, CLOSE_SLOW_READER, KIND_AUDIO, SUPPORTED_VERSIONS,
                       CloseOut, Hello, ModelInfo, ProtocolError, TextOut, decode_audio,
                       decode_latents, error_message, parse_control, parse_hello, parse_text,
                       ready_message)
from .vad import VadModel, VadParams, VadStream, VadUnavailable
from .web import static_response

log = logging.getLogger("f3stream.server")

POOL_ROWS = 256  # sessions per state pool (one batched step per pool)


@dataclass
class ServerConfig:
    """Limits and access control. Sizes in bytes, times in seconds."""

    max_sessions: int = 256
    max_message_bytes: int = 1 << 20
    idle_timeout: float = 30.0                 # also the time allowed for the hello
    max_session_seconds: float = 4 * 3600.0    # audio (or latent frames) per connection
    send_queue: int = 500                      # outgoing frames buffered per connection
    max_pending_seconds: float = 10.0          # input buffered before reading pauses
    token: str | None = None
    allowed_origins: list[str] | None = None
    shutdown_timeout: float = 10.0
    # Model rounds that may compute at once (each on its own thread, on disjoint sessions).
    # Two let input that arrives during a round start computing on the second core at once;
    # on 2 cores, 100 streams went from p99 9.8 ms (one worker) to 4.1-5.3 ms (docs/server.md).
    model_workers: int = 2
    # Once the server decides to close a connection, the peer has this long to read what is
    # queued and answer the close; then the TCP connection is aborted.
    close_timeout: float = 2.0
    # websockets' keepalive: a ping every ping_interval s, the connection closed if its pong
    # takes longer than ping_timeout s (then aborted at the close deadline if the peer reads
    # nothing)
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    # Pongs (websockets' automatic replies) queued for a peer that reads nothing, beyond the
    # websockets write buffer's high-water mark, before the connection is aborted.
    max_pong_backlog: int = 1 << 16
    # The model thread and the event loop share the GIL; with Python's default 5 ms switch
    # interval every torch op the model thread releases the GIL for can cost it up to 5 ms to
    # get it back (a convoy). A short interval keeps batched steps near their solo speed.
    # Process-wide, so only set by `f3stream serve` (None: leave it alone).
    gil_switch_interval: float | None = None


class F3Server:
    """``await F3Server(tok, cfg).start(host, port)``; ``await server.shutdown()`` flushes open
    sessions, then closes them with 1001."""

    def __init__(self, tok: Tokenizer, config: ServerConfig | None = None):
        self.tok = tok
        self.cfg = config or ServerConfig()
        self.sessions: dict[int, LiveSession] = {}
        self.metrics = Metrics(lambda: len(self.sessions))
        self.metrics.engine = functools.partial(engine_info, tok)
        self._ids = itertools.count(1)
        self._ws: Server | None = None
        self.batcher: Batcher | None = None
        # encoder pools by "returns representations", decoder pools under None
        self._pools: dict[bool | None, list[EncoderStatePool | DecoderStatePool]] = {
            False: [], True: [], None: []}
        self.shutting_down = False
        self._closed = asyncio.Event()
        # the VAD model, loaded (off the event loop) by the first hello with "vad": true;
        # without one no VAD code runs
        self._vad_model: asyncio.Future[VadModel] | None = None
        self.vad_params = VadParams()

    # -- lifecycle ----------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 8765) -> "F3Server":
        if self.cfg.gil_switch_interval is not None:
            sys.setswitchinterval(self.cfg.gil_switch_interval)
        self.batcher = Batcher(self.tok, lambda: self.sessions.values(), self._deliver,
                               self.metrics.record_batch, self.cfg.model_workers)
        self.batcher.start()
        self._reaper = asyncio.get_running_loop().create_task(self._reap_idle())
        origins = None
        if self.cfg.allowed_origins:
            # None admits clients that send no Origin header (non-browser clients)
            origins = [*self.cfg.allowed_origins, None]
        connection = functools.partial(BoundedConnection,
                                       max_pong_backlog=self.cfg.max_pong_backlog,
                                       on_overflow=self._pong_overflow)
        self._ws = await serve(self._handler, host, port, origins=origins,
                               process_request=self._http, compression=None,
                               max_size=self.cfg.max_message_bytes, max_queue=64,
                               close_timeout=self.cfg.close_timeout,
                               ping_interval=self.cfg.ping_interval,
                               ping_timeout=self.cfg.ping_timeout,
                               create_connection=connection)
        return self

    @property
    def port(self) -> int:
        assert self._ws is not None
        return self._ws.sockets[0].getsockname()[1]

    async def shutdown(self) -> None:
        """Stops accepting, flushes every open session (their last frames are sent), closes
        them with 1001, then stops the model worker."""
        if self.shutting_down:
            await self._closed.wait()
            return
        self.shutting_down = True
        assert self._ws is not None and self.batcher is not None
        self._ws.close(close_connections=False)  # stop listening; handlers keep running
        for s in list(self.sessions.values()):
            if not s.dead:
                s.enqueue(Op("shutdown", now_us()))
                s.dead = True  # no more input
        self.batcher.wake.set()
        in_session = {id(s.ws) for s in self.sessions.values()}
        for conn in list(self._ws.connections):  # still in the handshake: just close
            if id(conn) not in in_session:
                asyncio.get_running_loop().create_task(
                    conn.close(CLOSE_GOING_AWAY, "server shutting down"))
        try:
            await asyncio.wait_for(self._ws.wait_closed(), self.cfg.shutdown_timeout)
        except asyncio.TimeoutError:
            log.warning("shutdown: connections still open after %.1f s; closing them",
                        self.cfg.shutdown_timeout)
            for conn in list(self._ws.connections):
                conn.transport.abort()
        self._reaper.cancel()
        await self.batcher.stop()
        self._closed.set()

    async def serve_until_signal(self) -> None:
        """Runs until SIGINT/SIGTERM, then shuts down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("signal received: flushing %d sessions", len(self.sessions))
        await self.shutdown()

    # -- HTTP ---------------------------------------------------------------------------------
    def _http(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/health":
            body = {"status": "shutting_down" if self.shutting_down else "ok",
                    "sessions": len(self.sessions),
                    # version 1's field, kept for its monitors; every version is listed after it
                    "protocol_version": SUPPORTED_VERSIONS[0],
                    "protocol_versions": list(SUPPORTED_VERSIONS)}
            return _json_response(503 if self.shutting_down else 200, body)
        if path in ("/metrics", "/metrics.json"):
            if not self._may_read_metrics(request):
                return _json_response(401, {"error": "unauthorized", "message": f"{path} "
                                            "needs the header 'Authorization: Bearer TOKEN'"},
                                      (("WWW-Authenticate", "Bearer"),))
            if path == "/metrics.json":
                return _json_response(200, self.metrics.snapshot())
            return _response(200, self.metrics.expose(), PROMETHEUS_TEXT)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # the protocol, on any path
        return static_response(path)  # the browser demo: / and /demo/...; else 404

    def _may_read_metrics(self, request: Request) -> bool:
        """With a token, /metrics and /metrics.json (which tell who streams how much) need it
        too."""
        if self.cfg.token is None:
            return True
        given = request.headers.get_all("Authorization")
        return len(given) == 1 and hmac.compare_digest(given[0].encode(),
                                                       f"Bearer {self.cfg.token}".encode())

    # -- websocket ----------------------------------------------------------------------------
    async def _handler(self, ws: BoundedConnection) -> None:
        try:
            session = await self._handshake(ws)
        except ConnectionClosed:
            return
        if session is None:
            return
        sender = asyncio.get_running_loop().create_task(self._sender(session))
        try:
            await self._read(ws, session)
        except ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - never let one connection take the server down
            log.exception("session %s: unexpected error", session.id)
            self._fail(session, "internal", f"{type(e).__name__}: {e}")
        finally:
            if not session.dead:  # the client went away: drop its pending work
                session.dead = True
                session.inbox.clear()
            session.outbox.put(STOP, force=True)
            try:
                await asyncio.wait_for(asyncio.shield(sender), self.cfg.close_timeout + 1)
            except (asyncio.TimeoutError, ConnectionClosed):
                pass
            sender.cancel()
            self.sessions.pop(session.id, None)
            self.batcher.retire(session.coder)

    async def _reject(self, ws: BoundedConnection, code: str, message: str) -> None:
        self.metrics.errors[code] += 1
        ws.abort_after(self.cfg.close_timeout)
        try:
            await ws.send(error_message(code, message))
            await ws.close(ProtocolError(code, message).close_code, code)
        except ConnectionClosed:
            pass

    async def _handshake(self, ws: BoundedConnection) -> LiveSession | None:
        try:
            first = await asyncio.wait_for(ws.recv(), self.cfg.idle_timeout)
        except asyncio.TimeoutError:
            await self._reject(ws, "idle_timeout", f"no hello within {self.cfg.idle_timeout} s")
            return None
        try:
            if not isinstance(first, str):
                raise ProtocolError("not_ready", 'binary message before the handshake; send '
                                                 '{"type": "hello", ...} first')
            hello = parse_hello(parse_text(first), self.tok.sample_rate)
        except ProtocolError as e:
            await self._reject(ws, e.code, e.message)
            return None
        if self.cfg.token is not None and not hmac.compare_digest(
                (hello.token or "").encode(), self.cfg.token.encode()):
            await self._reject(ws, "unauthorized", "missing or wrong token")
            return None
        try:  # before the checks below: it may wait for the model to load
            vad = await self._vad_stream(hello)
        except VadUnavailable as e:
            await self._reject(ws, "bad_field", f'"vad" is not available here: {e}')
            return None
        if self.shutting_down:
            await self._reject(ws, "shutting_down", "the server is shutting down")
            return None
        if len(self.sessions) >= self.cfg.max_sessions:
            await self._reject(ws, "too_many_sessions", f"the server is at its limit of "
                                                        f"{self.cfg.max_sessions} sessions; "
                                                        "retry later")
            return None
        coder = (self._pooled_session(hello.wants_representations)
                 if hello.direction == "encode" else self._pooled_session(None))
        sid = next(self._ids)
        session = LiveSession(sid, ws, hello, coder, self.cfg.send_queue,
                              self.tok.hop_length if hello.direction == "encode" else 1,
                              self.cfg.close_timeout, self.tok.sample_rate, vad)
        self.sessions[sid] = session
        self.metrics.sessions_total += 1
        session.send_text(self._ready(session), force=True)
        return session

    async def _vad_stream(self, hello: Hello) -> VadStream | None:
        """The session's voice activity if its hello asks for it (else None: no VAD work at
        all). The model is loaded once, by the first such hello, in a thread."""
        if not hello.vad:
            return None
        if self._vad_model is None:
            self._vad_model = asyncio.get_running_loop().run_in_executor(None, VadModel)
        model = await asyncio.shield(self._vad_model)
        self.metrics.vad = model
        return VadStream(model, self.tok.sample_rate, self.tok.hop_length, self.vad_params)

    def _pooled_session(self, representations: bool | None
                        ) -> EncoderSession | DecoderSession:
        """An encoder session (``representations`` True/False) or a decoder session (None)
        whose state is a row of a shared pool, so the batcher steps all of a pool's sessions
        in place (no per-step state copies)."""
        pools = self._pools[representations]
        for pool in pools:
            if pool.free_rows:
                return pool.session()
        rows = min(self.cfg.max_sessions, POOL_ROWS)
        pool = (self.tok.decoder_pool(rows) if representations is None
                else self.tok.session_pool(rows, representations))
        pools.append(pool)
        return pool.session()

    def _ready(self, s: LiveSession) -> str:
        """The session's ready message (its format: protocol.ready_message)."""
        tok = self.tok
        model = ModelInfo(tok.sample_rate, tok.frame_rate, tok.hop_length, tok.latent_dim,
                          tok.representation_dim, tok.config.autoencoder.decoder_delay)
        # version 2: the latency the client rate's resampling adds, and the VAD settings
        rates = ((s.hello.sample_rate, tok.sample_rate) if s.encoder
                 else (tok.sample_rate, s.hello.sample_rate))
        vad = False if s.vad is None else s.vad.model.describe(self.vad_params,
                                                                1000.0 / tok.frame_rate)
        return ready_message(s.hello, s.id, model, self.cfg.max_message_bytes,
                             stream_latency_ms(*rates) if s.hello.version >= 2 else None, vad)

    async def _read(self, ws: BoundedConnection, s: LiveSession) -> None:
        """Reads the session's input until it is closing, then waits for the close: a closing
        connection's input is not read (after ``max_queue`` unread frames websockets stops
        reading the socket), and its close deadline bounds the wait."""
        loop = asyncio.get_running_loop()
        s.last_input = loop.time()
        limit = self.cfg.max_session_seconds * self.tok.sample_rate
        if not s.encoder:
            limit = self.cfg.max_session_seconds * self.tok.frame_rate
        max_pending = self.cfg.max_pending_seconds * (self.tok.sample_rate if s.encoder
                                                      else self.tok.frame_rate)
        while not s.dead:
            if s.pending > max_pending:
                s.paused = True  # not idle: the server, not the client, is the one waiting
                while s.pending > max_pending and not s.dead:  # backpressure: stop reading
                    s.space.clear()
                    await s.space.wait()
                s.paused = False
                s.last_input = loop.time()  # the idle clock restarts with reading
            if s.dead:
                break
            msg = await ws.recv()  # idle sessions are closed by _reap_idle (no timer per read)
            s.last_input = loop.time()
            if s.dead:
                break
            recv_us = now_us()
            try:
                if isinstance(msg, str):
                    kind = parse_control(parse_text(msg))
                    wake = s.enqueue(Op(kind, recv_us))
                    if kind == "close":
                        s.dead = True  # flush, say goodbye, close: ignore anything after
                else:
                    if not s.stream_open:
                        raise ProtocolError("session_closed", "the stream was flushed; send "
                                                              '{"type": "reset"} to start a '
                                                              "new one")
                    # validated here, once (the sessions take it as it is)
                    data = (s.audio_in(decode_audio(msg, s.hello.format)) if s.encoder
                            else decode_latents(msg, self.tok.latent_dim))
                    if s.total_in + data.shape[0] > limit:
                        raise ProtocolError("session_too_long", "the session exceeded "
                                            f"{self.cfg.max_session_seconds:g} s")
                    wake = bool(data.shape[0]) and s.enqueue(Op("data", recv_us, data))
            except ProtocolError as e:
                self._fail(s, e.code, e.message)
                continue
            if wake:
                self.batcher.wake.set()
        await ws.wait_closed()

    async def _reap_idle(self) -> None:
        """Closes sessions that sent nothing for idle_timeout (one timer for all sessions
        instead of one per read: reads are the hot path)."""
        loop = asyncio.get_running_loop()
        period = min(1.0, self.cfg.idle_timeout / 4, self.cfg.close_timeout / 2)
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for s in list(self.sessions.values()):
                if s.ws.state is not State.OPEN:
                    # websockets is closing it by itself (its keepalive ping timed out, or the
                    # peer broke the protocol): that close first waits for the peer to read
                    # what is queued, which a peer that reads nothing never does. Found by the
                    # soak: a non-reader stayed open until its idle timeout, 30 s later.
                    s.ws.abort_after(self.cfg.close_timeout)
                    continue
                if s.paused:
                    continue  # reading paused by backpressure: the model is behind, not it
                if not s.dead and now - s.last_input > self.cfg.idle_timeout:
                    self._fail(s, "idle_timeout", f"no message for {self.cfg.idle_timeout:g} s")

    def _fail(self, s: LiveSession, code: str, message: str) -> None:
        if not s.dead:
            self.metrics.errors[code] += 1
        s.fail(code, message)

    # -- output -------------------------------------------------------------------------------
    def _deliver(self, w: Work) -> None:
        """Batcher results -> the session's outbox (on the event loop)."""
        s = w.session
        if s.id not in self.sessions:
            return  # disconnected meanwhile
        for msg in w.out:
            if isinstance(msg, CloseOut):
                s.close(msg.code, msg.reason)
            elif not s.send(msg):
                self._slow_reader(s)
                return
        if w.error is not None:
            self._fail(s, w.error.code, w.error.message)

    def _slow_reader(self, s: LiveSession) -> None:
        """The client does not read: close now instead of buffering without bound. Its input
        would only be discarded, so it is not read any more either (reading and discarding a
        fast sender's audio cost whole cores for as long as it kept sending)."""
        self.metrics.errors["slow_reader"] += 1
        s.dead = True
        s.inbox.clear()
        s.outbox.clear()
        s.space.set()
        s.ws.stop_reading()
        s.ws.abort_after(self.cfg.close_timeout)
        asyncio.get_running_loop().create_task(
            s.ws.close(CLOSE_SLOW_READER, "slow_reader: send queue full"))

    def _pong_overflow(self) -> None:
        """A peer flooded pings without reading the pongs (its connection is aborted)."""
        self.metrics.errors["slow_reader"] += 1

    async def _sender(self, s: LiveSession) -> None:
        ws = s.ws
        try:
            while True:
                item = await s.outbox.get()
                if item is STOP:
                    return
                if isinstance(item, TextOut):
                    await ws.send(item.text)
                elif isinstance(item, CloseOut):
                    await ws.close(item.code, item.reason)
                    return
                else:  # FramesOut
                    send_us = now_us()
                    await ws.send(item.encode(s.dtype, send_us))
                    latency_ms = (send_us - item.recv_us) / 1000.0
                    if item.kind == KIND_AUDIO:  # one message of samples: one decoded frame
                        self.metrics.record_send(1, latency_ms, "decode")
                    else:
                        self.metrics.record_send(item.payload.shape[0], latency_ms, "encode")
        except ConnectionClosed:
            pass


def _json_response(status: int, body: dict[str, Any],
                   extra_headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return _response(status, json.dumps(body).encode(), "application/json", extra_headers)


def _response(status: int, data: bytes, ctype: str,
              extra_headers: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers([("Content-Type", ctype), ("Content-Length", str(len(data))),
                       ("Cache-Control", "no-store"), *extra_headers])
    return Response(status, HTTPStatus(status).phrase, headers, data)


async def run_server(tok: Tokenizer, host: str, port: int, config: ServerConfig | None = None,
                     ready: Any = None) -> None:
    """Serves until SIGINT/SIGTERM (the ``f3stream serve`` entry point)."""
    server = await F3Server(tok, config).start(host, port)
    if ready is not None:
        ready(server)
    await server.serve_until_signal()


__all__ = ["F3Server", "ServerConfig", "run_server"]
