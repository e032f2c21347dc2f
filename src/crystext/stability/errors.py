"""The stability step's exception: problems a user can fix, each a one-line message."""

from __future__ import annotations

from crystext.errors import CrystextError


class StabilityError(CrystextError):
    """A stability run that cannot proceed: bad input, an unreadable or missing reference, a backend that won't load."""
