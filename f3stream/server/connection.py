"""The server side of one websocket connection: websockets' ``ServerConnection`` plus the
bounds a hostile peer needs and the library leaves open (docs/server.md, "Limits and what
happens at them").

* **Automatic replies.** websockets answers each ping with a pong from ``data_received``,
  outside the flow control that ``send()`` applies, so a client that sent pings as fast as it
  could and never read made the server queue ~30 MB/s of pongs. Here, once writes to a peer
  are paused (more than ``write_limit`` bytes it has not read), the replies its input causes
  may queue at most ``max_pong_backlog`` bytes above that mark; beyond, the connection is
  aborted.
* **Close deadline.** ``close()`` starts its ``close_timeout`` only after the data queued
  before the close frame has drained, so a closing connection whose peer reads nothing stayed
  open (and was read from) for as long as the peer liked. :meth:`abort_after` bounds it.
* **Methods.** A request that is not a GET cannot be a websocket upgrade or a request for
  /health, /metrics(.json) or the demo: it is answered 405 here (websockets' parser would drop a
  request with a body without any status line).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

GET = b"GET "


class BoundedConnection(ServerConnection):
    """A ``ServerConnection`` with a bounded pong backlog, a close deadline and 405 for
    non-GET requests. ``on_overflow`` is called when the pong backlog aborts it."""

    def __init__(self, *args: Any, max_pong_backlog: int,
                 on_overflow: Callable[[], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.max_pong_backlog = max_pong_backlog
        self.on_overflow = on_overflow
        self._replies_while_paused = 0
        self._abort_timer: asyncio.TimerHandle | None = None
        self._head: bytes | None = b""   # the connection's first bytes, until "GET " is seen

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            data, self._head = self._head + data, None
            if len(data) < len(GET) and GET.startswith(data):
                self._head = data  # wait for the rest of the method
                return
            if not data.startswith(GET):
                self._refuse_method()
                return
        before = self.transport.get_write_buffer_size()
        super().data_received(data)
        if self.paused and not self.transport.is_closing():  # count what lies above the mark
            after = self.transport.get_write_buffer_size()
            self._replies_while_paused += max(0, after - max(before, self.write_limit_high))
            if self._replies_while_paused > self.max_pong_backlog:
                self.logger.warning("aborting a connection that queued %d bytes of pongs "
                                    "without reading them", self._replies_while_paused)
                self.on_overflow()
                self.transport.abort()

    def resume_writing(self) -> None:
        super().resume_writing()
        self._replies_while_paused = 0  # the peer read its backlog down to the low-water mark

    def abort_after(self, timeout: float) -> None:
        """Aborts the TCP connection once ``timeout`` s pass in which data waits for the
        peer and it reads none of it. A peer that reads, however slowly, gets what was queued
        (a bounded amount); once all of it is with the kernel, websockets' own close
        handshake and its close_timeout end the connection."""
        if self._abort_timer is None and self.state is not State.CLOSED:
            self._check_after(timeout, self.transport.get_write_buffer_size())

    def _check_after(self, timeout: float, queued_before: int) -> None:
        self._abort_timer = self.loop.call_later(timeout, self._abort_if_stuck, timeout,
                                                 queued_before)

    def _abort_if_stuck(self, timeout: float, queued_before: int) -> None:
        queued = self.transport.get_write_buffer_size()
        if queued and queued >= queued_before:
            self.transport.abort()
        else:
            self._check_after(timeout, queued)

    def stop_reading(self) -> None:
        """Reads nothing more from the peer (its input would only be discarded)."""
        if not self.transport.is_closing():
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._abort_timer is not None:
            self._abort_timer.cancel()
        super().connection_lost(exc)

    def _refuse_method(self) -> None:
        response = self.protocol.reject(HTTPStatus.METHOD_NOT_ALLOWED,
                                        "only GET is supported\n")
        response.headers["Allow"] = "GET"
        self.transport.write(response.serialize())
        self.transport.close()
