"""The one error type of bulk tokenization."""

from __future__ import annotations

from ..errors import F3StreamError


class BulkError(F3StreamError):
    """A bulk tokenization cannot start or finish, or its output cannot be read."""
