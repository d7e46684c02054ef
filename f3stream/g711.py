"""G.711 μ-law and A-law, as telephony media streams (e.g. 8 kHz SIP/RTP, Twilio/Vonage media
websockets) carry audio: one byte per sample.

Table-driven with numpy (256 entries to decode, 65536 to encode), so a chunk converts in one
fancy-indexing pass. Written out here because Python's ``audioop`` is gone in 3.13. The tables
follow the reference coder (Sun's g711.c, which ``audioop`` also used): 16-bit PCM in, 16-bit
PCM out, μ-law peaking at ±32124 and A-law at ±32256.
"""

from __future__ import annotations

import numpy as np

_INT16_SCALE = 32768.0


def _ulaw_to_linear(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def _alaw_to_linear(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


_SEG_ULAW = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_ALAW = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _linear_to_ulaw(pcm: np.ndarray) -> np.ndarray:
    v = pcm.astype(np.int64) >> 2                       # 14-bit magnitude scale
    mask = np.where(v < 0, 0x7F, 0xFF)
    v = np.minimum(np.abs(v), 8159) + 33                # clip, add the bias (0x84 >> 2)
    seg = np.searchsorted(_SEG_ULAW, v)                 # first segment end >= v
    code = (seg << 4) | ((v >> (seg + 1)) & 0x0F)
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


def _linear_to_alaw(pcm: np.ndarray) -> np.ndarray:
    v = pcm.astype(np.int64) >> 3                       # 13-bit scale
    mask = np.where(v >= 0, 0xD5, 0x55)
    v = np.where(v >= 0, v, -v - 1)
    seg = np.searchsorted(_SEG_ALAW, v)
    shift = np.where(seg < 2, 1, seg)
    code = (np.minimum(seg, 7) << 4) | ((v >> shift) & 0x0F)
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


_ALL_INT16 = np.arange(-32768, 32768, dtype=np.int64)
#: byte -> 16-bit PCM value
ULAW_DECODE = np.array([_ulaw_to_linear(c) for c in range(256)], dtype=np.int16)
ALAW_DECODE = np.array([_alaw_to_linear(c) for c in range(256)], dtype=np.int16)
#: 16-bit PCM value + 32768 -> byte
ULAW_ENCODE = _linear_to_ulaw(_ALL_INT16)
ALAW_ENCODE = _linear_to_alaw(_ALL_INT16)

_DECODE = {"mulaw": ULAW_DECODE, "alaw": ALAW_DECODE}
_ENCODE = {"mulaw": ULAW_ENCODE, "alaw": ALAW_ENCODE}
LAWS = tuple(_DECODE)


def decode(data: bytes | bytearray | memoryview | np.ndarray, law: str) -> np.ndarray:
    """G.711 bytes (``law`` "mulaw" or "alaw") -> float32 samples in [-1, 1) (PCM / 32768)."""
    codes = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
    return _DECODE[law][codes].astype(np.float32) / _INT16_SCALE


def encode(audio: np.ndarray, law: str) -> bytes:
    """Float samples in [-1, 1] (or int16 PCM) -> G.711 bytes; floats are rounded to the
    16-bit grid first and clipped to it."""
    x = np.asarray(audio)
    if x.dtype != np.int16:
        x = np.clip(np.round(x.astype(np.float64) * _INT16_SCALE), -32768, 32767)
    return _ENCODE[law][x.astype(np.int64) + 32768].tobytes()
