"""The mic command's one error type, and the one-line form of a foreign exception it wraps."""

from __future__ import annotations

from ..errors import F3StreamError


class MicError(F3StreamError):
    """No usable audio device / PortAudio, or the capture failed: one ``f3stream: error:``
    line and exit status 2, never a traceback."""


def one_line(e: BaseException) -> str:
    """``e``'s message on one line (PortAudio's span several), or its type when it has none."""
    return " ".join((str(e) or type(e).__name__).split())
