"""Live I/O: a websocket server and client that stream audio in and tokens out (protocol v1,
docs/protocol.md). Importing this package does not import ``websockets``; the modules that
need it (``server``, ``client``) do, so ``pip install f3stream[server]`` is only needed there.
"""

from .protocol import PROTOCOL_VERSION, ProtocolError

__all__ = ["PROTOCOL_VERSION", "ProtocolError"]
