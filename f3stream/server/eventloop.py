"""Which asyncio event loop runs the server and the load benchmark's clients.

uvloop (libuv, written in Cython) does the same socket work as the standard selector loop
with much less Python per read and write; on a 2-core machine that leaves more of the CPU
to the model thread (measured figures in docs/server.md). It is optional: ``auto`` uses it
when the ``uvloop`` package is installed and the standard loop otherwise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from ..errors import F3StreamError

T = TypeVar("T")
LOOPS = ("auto", "uvloop", "asyncio")


def loop_factory(kind: str = "auto") -> tuple[str, Callable[[], asyncio.AbstractEventLoop]]:
    """``(name, factory)`` for ``kind``: "auto", "uvloop" or "asyncio"."""
    if kind not in LOOPS:
        raise F3StreamError(f"unknown event loop {kind!r}; choose one of {', '.join(LOOPS)}")
    if kind != "asyncio":
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise F3StreamError("--loop uvloop needs the uvloop package: pip install "
                                    "'f3stream[server]'") from None
        else:
            return "uvloop", uvloop.new_event_loop
    return "asyncio", asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T], kind: str = "auto") -> T:
    """``asyncio.run(main)`` on the event loop ``kind`` names."""
    _, factory = loop_factory(kind)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
