"""Exception types raised by f3stream.

Every bad input gets one of these with a message that says what was wrong and what to do,
so that callers (the CLI, the websocket server) can report it instead of crashing.
"""


class F3StreamError(Exception):
    """Base class of all f3stream errors."""


class AudioInputError(F3StreamError, ValueError):
    """Audio (or latents) passed to the tokenizer is unusable: wrong rate, shape, dtype, NaN..."""


class CheckpointError(F3StreamError):
    """A checkpoint is missing, corrupt, unsafe (pickle) or does not match its config."""


class ConfigError(F3StreamError, ValueError):
    """A configuration is inconsistent (e.g. frame rate does not divide the sample rate)."""


class SessionClosedError(F3StreamError, RuntimeError):
    """A streaming session was used after flush() without reset()."""
