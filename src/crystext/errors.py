"""The one exception family of crystext: problems a user can fix, each a one-line message naming what is wrong.

Every step's error (`DatasetError`, `CrystalTextError`, `ModelError`, `StabilityError`, `EvaluateError`, ...)
derives from `CrystextError`, so the command line catches that one class and prints the message without a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["CrystextError", "OutputExistsError", "flag_message", "option_flags"]


class CrystextError(Exception):
    """A problem the user can fix; the command line prints it as one line."""


class OutputExistsError(CrystextError, FileExistsError):
    """An output that already holds results: continue it with resume, or choose another."""


def option_flags(names: Iterable[str], **flags: str) -> dict[str, str]:
    """Settings fields and the command-line flags that set them: `--field-name` for each of `names`, and the fields
    of `flags` by the flags given there."""
    return {**{name: "--" + name.replace("_", "-") for name in names}, **flags}


def flag_message(err: Exception, flags: Mapping[str, str]) -> str:
    """A settings object's error message ("batch_size must be at least 1, ..."), its leading field name written
    as the flag that sets it ("--batch-size must be at least 1, ...")."""
    name, space, rest = str(err).partition(" ")
    return f"{flags[name]}{space}{rest}" if name in flags else str(err)
