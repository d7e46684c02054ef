"""Raw websocket client frames for the abuse benchmarks (standard library only, so the small
abuser processes that import it stay small)."""

from __future__ import annotations

import struct

PING, BINARY, TEXT = 0x9, 0x2, 0x1


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame with a zero masking key (the payload goes out as is)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload
