"""The one error type of the evaluation tool, and the hint for missing optional packages."""

from __future__ import annotations

from ..errors import F3StreamError

EXTRA = "eval"
MISSING_EXTRA_HINT = f"pip install 'f3stream[{EXTRA}]'"


class EvalError(F3StreamError):
    """A problem with the evaluation's inputs (missing manifest, no clips, missing package).

    A subclass of :class:`F3StreamError` so the CLI reports it as one ``f3stream: error:`` line.
    """


def require(module: str, what: str):
    """Imports an optional dependency or fails with a message naming the pip extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise EvalError(f"{what} needs the '{module}' package, which is not installed ({e}); "
                        f"install the evaluation extra: {MISSING_EXTRA_HINT}") from None
