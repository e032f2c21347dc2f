"""The one exception family of crystext: problems a user can fix, each a one-line message naming what is wrong.

Every step's error (`DatasetError`, `CrystalTextError`, `ModelError`, `StabilityError`, `EvaluateError`, ...)
derives from `CrystextError`, so the command line catches that one class and prints the message without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["CrystextError", "OutputExistsError"]


class CrystextError(Exception):
    """A problem the user can fix; the command line prints it as one line."""


class OutputExistsError(CrystextError, FileExistsError):
    """An output that already holds results: continue it with resume, or choose another."""
