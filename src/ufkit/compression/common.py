"""What the compression modules share: the error type."""

from __future__ import annotations

from .. import UfkitError


class CompressionError(UfkitError, ValueError):
    """Bad input to a compression method: the message names the argument and what was expected."""
