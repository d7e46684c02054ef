"""The f3stream live protocol, versions 1 and 2: pure parsing and encoding, no I/O.

Kept free of sockets and asyncio so it can be unit-tested and fuzzed on its own; the server
and the client both build on it. See docs/protocol.md for the specification. Every malformed
input raises :class:`ProtocolError` (and nothing else) carrying a stable ``code``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import g711
from ..audio import as_mono_float32, check_latent_values
from ..errors import AudioInputError, F3StreamError

#: the newest version; a server also speaks every one in SUPPORTED_VERSIONS
PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
#: client rates version 2 accepts (the server resamples them to and from the model's rate)
SAMPLE_RATES = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
#: the binary frame layout's version (the header byte): unchanged by protocol version 2
FRAME_VERSION = 1
MAGIC = b"F3ST"

# -- binary frame header ----------------------------------------------------------------------
# magic, version, kind, dtype, flags, seq, frame_index, n_rows, row_width, recv_us, send_us
HEADER = struct.Struct("<4sBBBBIIIIqq")
HEADER_SIZE = HEADER.size  # 40 bytes

KIND_LATENTS = 1
KIND_REPRESENTATIONS = 2
KIND_BOTH = 3      # each row is latents followed by representations
KIND_AUDIO = 4     # decode direction: one row of samples
KINDS = {KIND_LATENTS: "latents", KIND_REPRESENTATIONS: "representations",
         KIND_BOTH: "both", KIND_AUDIO: "audio"}

DTYPE_FLOAT32 = 1
DTYPE_FLOAT16 = 2
DTYPES = {"float32": DTYPE_FLOAT32, "float16": DTYPE_FLOAT16}
NP_DTYPES = {DTYPE_FLOAT32: np.dtype("<f4"), DTYPE_FLOAT16: np.dtype("<f2")}

FLAG_FINAL = 1     # the last frames of a flushed stream
FLAG_SPEECH_PROB = 2   # n_rows float32 speech probabilities follow the payload ("vad": true)

# -- close codes (WebSocket close frames) -----------------------------------------------------
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001         # server shutdown (after flushing open sessions)
CLOSE_TOO_BIG = 1009            # a message exceeded max_message_bytes (sent by websockets)
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013          # too many sessions
CLOSE_PROTOCOL = 4000           # malformed or out-of-order message
CLOSE_UNAUTHORIZED = 4001       # missing or wrong token
CLOSE_BAD_INPUT = 4004          # audio / latents unusable (odd byte count, NaN/Inf, shape)
CLOSE_SLOW_READER = 4008        # the client does not read its frames fast enough
CLOSE_TOO_LONG = 4009           # the session exceeded max_session_seconds
CLOSE_IDLE = 4010               # no message for idle_timeout seconds

#: stable error codes -> the close code the server uses after sending the error message
ERROR_CODES: dict[str, int] = {
    "bad_json": CLOSE_PROTOCOL,            # a text message that is not a JSON object
    "bad_message": CLOSE_PROTOCOL,         # JSON without a valid "type"
    "unknown_type": CLOSE_PROTOCOL,        # "type" is not one this version knows
    "unknown_field": CLOSE_PROTOCOL,       # a field this version does not define
    "bad_field": CLOSE_PROTOCOL,           # a field with a wrong type or value
    "unsupported_version": CLOSE_PROTOCOL,
    "bad_sample_rate": CLOSE_PROTOCOL,     # v1: not the model's rate; v2: not in SAMPLE_RATES
    "not_ready": CLOSE_PROTOCOL,           # audio/control before the hello
    "duplicate_hello": CLOSE_PROTOCOL,
    "session_closed": CLOSE_PROTOCOL,      # audio after flush without reset
    "bad_audio": CLOSE_BAD_INPUT,
    "bad_latents": CLOSE_BAD_INPUT,
    "unauthorized": CLOSE_UNAUTHORIZED,
    "too_many_sessions": CLOSE_TRY_AGAIN,
    "session_too_long": CLOSE_TOO_LONG,
    "idle_timeout": CLOSE_IDLE,
    "slow_reader": CLOSE_SLOW_READER,
    "shutting_down": CLOSE_GOING_AWAY,
    "internal": CLOSE_INTERNAL,
}

MAX_TEXT_CHARS = 4096  # control messages are tiny; longer text is rejected before json.loads


class ProtocolError(F3StreamError, ValueError):
    """A message broke the protocol. ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str):
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def close_code(self) -> int:
        return ERROR_CODES[self.code]


# -- handshake --------------------------------------------------------------------------------
HELLO_FIELDS = {"type", "version", "sample_rate", "format", "return", "direction",
                "payload_dtype", "token", "vad"}   # "vad": version 2 only
FORMATS = ("pcm16", "float32")                 # version 1
FORMATS_V2 = (*FORMATS, *g711.LAWS)            # version 2 adds G.711 "mulaw" and "alaw"
RETURNS = ("latents", "representations", "both")
DIRECTIONS = ("encode", "decode")


@dataclass(frozen=True)
class Hello:
    """A parsed client handshake."""

    version: int = PROTOCOL_VERSION
    sample_rate: int = 24000
    format: str = "pcm16"
    returns: str = "latents"
    direction: str = "encode"
    payload_dtype: str = "float32"
    token: str | None = field(default=None, repr=False)
    vad: bool = False              # version 2: speech probabilities and speech events

    @property
    def wants_representations(self) -> bool:
        return self.direction == "encode" and self.returns in ("representations", "both")

    @property
    def output_kind(self) -> int:
        if self.direction == "decode":
            return KIND_AUDIO
        return {"latents": KIND_LATENTS, "representations": KIND_REPRESENTATIONS,
                "both": KIND_BOTH}[self.returns]

    def to_json(self) -> str:
        d: dict[str, Any] = {"type": "hello", "version": self.version,
                             "sample_rate": self.sample_rate, "format": self.format,
                             "return": self.returns, "direction": self.direction,
                             "payload_dtype": self.payload_dtype}
        if self.token is not None:
            d["token"] = self.token
        if self.vad:
            d["vad"] = True
        return json.dumps(d)


def parse_text(text: Any) -> dict[str, Any]:
    """A text message -> a JSON object with a string ``type``."""
    if not isinstance(text, str):
        raise ProtocolError("bad_message", "expected a text message")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError("bad_json", f"text messages are limited to {MAX_TEXT_CHARS} "
                                        "characters")
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"text message is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "a text message must be a JSON object, got "
                                        f"{type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_message", 'a JSON message needs a string "type" field')
    return obj


def _reject_constant(name: str) -> Any:
    raise ProtocolError("bad_json", f"{name} is not valid JSON")


def parse_hello(obj: dict[str, Any], expected_sample_rate: int) -> Hello:
    """Validates a ``{"type": "hello", ...}`` object (see docs/protocol.md)."""
    if obj.get("type") != "hello":
        raise ProtocolError("not_ready", 'the first message must be {"type": "hello", ...}; got '
                                         f"type {str(obj.get('type'))[:40]!r}")
    unknown = sorted(str(k)[:40] for k in obj if k not in HELLO_FIELDS)
    if unknown:
        raise ProtocolError("unknown_field", f"unknown hello field(s) {unknown}; version "
                                             f"{PROTOCOL_VERSION} defines {sorted(HELLO_FIELDS)}")
    version = obj.get("version")
    if not _is_int(version):
        raise ProtocolError("bad_field", '"version" must be an integer')
    if version not in SUPPORTED_VERSIONS:
        raise ProtocolError("unsupported_version", f"protocol version {version} is not "
                                                   f"supported; this server speaks "
                                                   f"{list(SUPPORTED_VERSIONS)}")
    if version == 1 and "vad" in obj:  # version 1 clients get exactly version 1
        raise ProtocolError("unknown_field", 'version 1 does not define "vad"; say version 2 '
                                             "for voice activity")
    sr = obj.get("sample_rate")
    if not _is_int(sr):
        raise ProtocolError("bad_field", '"sample_rate" must be an integer (Hz)')
    if version == 1 and sr != expected_sample_rate:
        raise ProtocolError("bad_sample_rate", f"sample_rate {sr} Hz is not supported: the model "
                                               f"runs at {expected_sample_rate} Hz and protocol "
                                               "version 1 does not resample; resample on the "
                                               "client, or say version 2 to use one of "
                                               f"{list(SAMPLE_RATES)}")
    if version >= 2 and sr not in SAMPLE_RATES and sr != expected_sample_rate:
        raise ProtocolError("bad_sample_rate", f"sample_rate {sr} Hz is not supported; version "
                                               f"{version} takes {list(SAMPLE_RATES)}")
    token = obj.get("token")
    if token is not None and not isinstance(token, str):
        raise ProtocolError("bad_field", '"token" must be a string')
    vad = obj.get("vad", False)
    if not isinstance(vad, bool):
        raise ProtocolError("bad_field", '"vad" must be true or false')
    direction = _choice(obj, "direction", DIRECTIONS)
    if vad and direction != "encode":
        raise ProtocolError("bad_field", '"vad" needs the encode direction (it listens to the '
                                         "client's audio)")
    return Hello(version=version, sample_rate=sr,
                 format=_choice(obj, "format", FORMATS if version == 1 else FORMATS_V2),
                 returns=_choice(obj, "return", RETURNS), direction=direction,
                 payload_dtype=_choice(obj, "payload_dtype", tuple(DTYPES)),
                 token=token, vad=vad)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _choice(obj: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str:
    value = obj.get(name, allowed[0])
    if value not in allowed:
        raise ProtocolError("bad_field", f'"{name}" must be one of {list(allowed)}, got '
                                         f"{str(value)[:40]!r}")
    return value


# -- control messages -------------------------------------------------------------------------
CONTROL_TYPES = ("flush", "reset", "close")


def parse_control(obj: dict[str, Any]) -> str:
    """``{"type": "flush" | "reset" | "close"}`` -> the type. ``hello`` again is an error."""
    kind = obj.get("type")
    if kind == "hello":
        raise ProtocolError("duplicate_hello", "the session already started; send "
                                               '{"type": "reset"} to start a new stream')
    if kind not in CONTROL_TYPES:
        raise ProtocolError("unknown_type", f"unknown message type {str(kind)[:40]!r}; expected "
                                            f"one of {list(CONTROL_TYPES)}")
    extra = sorted(str(k)[:40] for k in obj if k != "type")
    if extra:
        raise ProtocolError("unknown_field", f"{kind!r} takes no fields, got {extra}")
    return kind


# -- text messages from the server -----------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """What a ready message says about the model (the server fills it from its tokenizer)."""

    sample_rate: int
    frame_rate: int
    hop_length: int
    latent_dim: int
    representation_dim: int
    decoder_delay: int

    def row_width(self, kind: int) -> int:
        """Values per row of a frame message of ``kind`` (audio messages: 0, one row of any
        length)."""
        return {KIND_LATENTS: self.latent_dim, KIND_REPRESENTATIONS: self.representation_dim,
                KIND_BOTH: self.latent_dim + self.representation_dim, KIND_AUDIO: 0}[kind]


def ready_message(hello: Hello, session: int, model: ModelInfo, max_message_bytes: int,
                  resampler_latency_ms: float | None = None,
                  vad: dict[str, Any] | bool = False) -> str:
    """The server's answer to a valid hello (docs/protocol.md). Version 2 adds the client's
    rate, the latency its resampling adds (``resampler_latency_ms``) and the voice-activity
    settings (``vad``: a description, or False without voice activity)."""
    ready: dict[str, Any] = {
        "type": "ready", "version": hello.version, "session": session,
        "sample_rate": model.sample_rate, "frame_rate": model.frame_rate,
        "hop_length": model.hop_length, "latent_dim": model.latent_dim,
        "representation_dim": model.representation_dim, "direction": hello.direction,
        "format": hello.format, "return": hello.returns,
        "payload_dtype": hello.payload_dtype, "frame_kind": hello.output_kind,
        "row_width": model.row_width(hello.output_kind), "header_bytes": HEADER_SIZE,
        "max_message_bytes": max_message_bytes, "decoder_delay": model.decoder_delay}
    if hello.version >= 2:
        ready.update(client_sample_rate=hello.sample_rate,
                     resampler_latency_ms=resampler_latency_ms, vad=vad)
    return json.dumps(ready)


def control_message(kind: str) -> str:
    """A client's ``{"type": "flush" | "reset" | "close"}``."""
    assert kind in CONTROL_TYPES, kind
    return json.dumps({"type": kind})


def error_message(code: str, message: str) -> str:
    return json.dumps({"type": "error", "code": code, "message": message})


def reset_message() -> str:
    """The answer to ``{"type": "reset"}``: the next input starts a new stream at frame 0."""
    return json.dumps({"type": "reset"})


def flushed_message(frames: int) -> str:
    """Sent after the last frames of a flushed stream: ``frames`` frames in all."""
    return json.dumps({"type": "flushed", "frames": int(frames)})


SPEECH_EVENTS = ("speech_start", "speech_end")   # voice activity ("vad": true)


def speech_event(kind: str, frame_index: int, time_us: int) -> str:
    """``speech_start`` / ``speech_end`` at frame ``frame_index`` (decided at ``time_us``)."""
    assert kind in SPEECH_EVENTS, kind
    return json.dumps({"type": kind, "frame_index": frame_index, "time_us": time_us})


# -- binary payloads from the client ----------------------------------------------------------
def decode_audio(data: Any, fmt: str) -> np.ndarray:
    """A binary audio message -> float32 samples, under the library's audio contract
    (:func:`f3stream.audio.as_mono_float32`: pcm16 is scaled by 1/32768; float32 beyond
    [-1, 1] is clipped up to ±4 and rejected beyond, as NaN/Inf is; G.711 bytes decode to
    16-bit values, scaled the same way)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_audio", "audio must be sent as a binary message")
    n = memoryview(data).nbytes
    if fmt == "pcm16":
        if n % 2:
            raise ProtocolError("bad_audio", f"pcm16 audio needs an even number of bytes, got "
                                             f"{n}")
        x = np.frombuffer(data, dtype="<i2")
    elif fmt == "float32":
        if n % 4:
            raise ProtocolError("bad_audio", f"float32 audio needs a multiple of 4 bytes, got "
                                             f"{n}")
        x = np.frombuffer(data, dtype="<f4").copy()  # writable, like every array we hand on
    elif fmt in g711.LAWS:
        return g711.decode(data, fmt)  # every byte is a valid sample
    else:
        raise ProtocolError("bad_field", f"unknown audio format {fmt!r}")
    try:
        return as_mono_float32(x, name="audio message", allow_empty=True)
    except AudioInputError as e:
        raise ProtocolError("bad_audio", str(e)) from None


def decode_latents(data: Any, latent_dim: int) -> np.ndarray:
    """A binary latent message (float32 little-endian ``[n, latent_dim]``) -> array."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_latents", "latents must be sent as a binary message")
    data = bytes(data)
    row = 4 * latent_dim
    if len(data) % row:
        raise ProtocolError("bad_latents", f"latents are float32 [n, {latent_dim}]: the byte "
                                           f"count must be a multiple of {row}, got {len(data)}")
    z = np.frombuffer(data, dtype="<f4").astype(np.float32).reshape(-1, latent_dim)
    try:
        check_latent_values(z)  # the library's bound (f3stream.audio.MAX_LATENT)
    except AudioInputError as e:
        raise ProtocolError("bad_latents", str(e)) from None
    return z


# -- binary frames from the server ------------------------------------------------------------
@dataclass
class FrameMessage:
    """One binary server message: ``n_rows`` rows of ``row_width`` values."""

    kind: int
    seq: int
    frame_index: int
    payload: np.ndarray            # float32 [n_rows, row_width]
    recv_us: int = 0               # server wall clock (µs) when the completing input arrived
    send_us: int = 0               # server wall clock (µs) when this message was sent
    final: bool = False
    dtype: int = DTYPE_FLOAT32
    speech_prob: np.ndarray | None = None   # float32 [n_rows]: with "vad": true

    @property
    def n_rows(self) -> int:
        return int(self.payload.shape[0])


def encode_frame(kind: int, seq: int, frame_index: int, payload: np.ndarray, dtype: int,
                 recv_us: int, send_us: int, final: bool = False,
                 speech_prob: np.ndarray | None = None) -> bytes:
    """Header + little-endian payload (+ one float32 speech probability per row, flagged,
    for sessions with voice activity). ``payload`` is 2-D ``[n_rows, row_width]``."""
    if payload.ndim != 2:
        raise ValueError("payload must be 2-D")
    n, w = payload.shape
    flags = FLAG_FINAL if final else 0
    tail = b""
    if speech_prob is not None:
        if speech_prob.shape != (n,):
            raise ValueError(f"speech_prob must have one value per row ({n})")
        flags |= FLAG_SPEECH_PROB
        tail = np.ascontiguousarray(speech_prob, dtype="<f4").tobytes()
    head = HEADER.pack(MAGIC, FRAME_VERSION, kind, dtype, flags, seq & 0xFFFFFFFF,
                       frame_index, n, w, recv_us, send_us)
    return head + np.ascontiguousarray(payload, dtype=NP_DTYPES[dtype]).tobytes() + tail


def parse_frame(data: Any) -> FrameMessage:
    """Parses a binary server message; payload is returned as float32."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError("bad_message", "a frame message must be binary")
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise ProtocolError("bad_message", f"frame message shorter than its {HEADER_SIZE}-byte "
                                           "header")
    magic, version, kind, dtype, flags, seq, index, n, w, recv_us, send_us = \
        HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError("bad_message", f"bad magic {magic!r}")
    if version != FRAME_VERSION:
        raise ProtocolError("unsupported_version", f"frame version {version}")
    if kind not in KINDS:
        raise ProtocolError("bad_message", f"unknown frame kind {kind}")
    if dtype not in NP_DTYPES:
        raise ProtocolError("bad_message", f"unknown payload dtype {dtype}")
    size = NP_DTYPES[dtype].itemsize
    probs = 4 * n if flags & FLAG_SPEECH_PROB else 0
    if len(data) - HEADER_SIZE != n * w * size + probs:
        raise ProtocolError("bad_message", f"payload of {len(data) - HEADER_SIZE} bytes does not "
                                           f"match [{n}, {w}] x {size}"
                                           + (f" + {n} speech probabilities" if probs else ""))
    payload = np.frombuffer(data, NP_DTYPES[dtype], count=n * w,
                            offset=HEADER_SIZE).astype(np.float32)
    speech_prob = None
    if probs:
        speech_prob = np.frombuffer(data, "<f4", count=n,
                                    offset=HEADER_SIZE + n * w * size).astype(np.float32)
    return FrameMessage(kind, seq, index, payload.reshape(n, w), recv_us, send_us,
                        bool(flags & FLAG_FINAL), dtype, speech_prob)


# -- what the server hands its connections to send --------------------------------------------
@dataclass(slots=True)
class FramesOut:
    """A binary frame message on its way to a client; encoded (:func:`encode_frame`) when it
    is sent, with the connection's ``seq`` and payload dtype and the send time."""

    kind: int
    frame_index: int
    payload: np.ndarray                       # float32 [n_rows, row_width]
    recv_us: int                              # when the input that completed it arrived
    final: bool = False
    speech_prob: np.ndarray | None = None     # float32 [n_rows], with "vad": true
    seq: int = 0                              # set when queued on its connection

    @property
    def frames(self) -> int:
        """Frames it counts for the send queue's bound (an audio message counts as one)."""
        return 1 if self.kind == KIND_AUDIO else int(self.payload.shape[0])

    def encode(self, dtype: int, send_us: int) -> bytes:
        return encode_frame(self.kind, self.seq, self.frame_index, self.payload, dtype,
                            self.recv_us, send_us, self.final, self.speech_prob)


@dataclass(frozen=True, slots=True)
class TextOut:
    """A text (JSON) message: one of the builders above."""

    text: str
    frames: int = 1          # a queued text message counts as one frame (so floods are bound)


@dataclass(frozen=True, slots=True)
class CloseOut:
    """The websocket close the server sends after what is queued before it."""

    code: int
    reason: str
    frames: int = 0


@dataclass(frozen=True, slots=True)
class SessionError:
    """Why a session must end: an error ``code`` of this protocol (docs/protocol.md) and a
    message for the client. The server sends it (:func:`error_message`) and closes with the
    code's close code."""

    code: str
    message: str


Outgoing = FramesOut | TextOut | CloseOut
