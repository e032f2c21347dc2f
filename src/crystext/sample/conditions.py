"""Conditions for text-conditional sampling, one per row of a CSV in the dataset layout."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crystext.prompts import Attributes

__all__ = ["read_conditions"]


def read_conditions(path: Path) -> list[Attributes]:
    """Conditions, one per row, from a CSV in the dataset layout (pretty_formula, spacegroup.number, ...); a row no
    crystal can meet (`Attributes.problem`) is refused, naming its line."""
    frame = pd.read_csv(path)
    if "formula" in frame.columns and "pretty_formula" not in frame.columns:
        frame = frame.rename(columns={"formula": "pretty_formula"})
    conditions = [Attributes.from_properties(row) for row in frame.to_dict("records")]
    if not conditions or not any(c.to_dict() for c in conditions):
        raise ValueError(f"{path}: no conditions (expected columns such as pretty_formula, spacegroup.number)")
    for line, attributes in enumerate(conditions, start=2):  # line 1 is the header
        if problem := attributes.problem():
            raise ValueError(f"{path} line {line}: {problem}")
    return conditions
