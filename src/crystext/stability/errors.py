"""The one exception family of the stability step: problems a user can fix, each a one-line message."""

from __future__ import annotations


class StabilityError(RuntimeError):
    """A stability run that cannot proceed: bad input, an unreadable or missing reference, a backend that won't load."""
