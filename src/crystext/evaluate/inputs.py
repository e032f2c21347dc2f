"""Reading what evaluation joins to the structures: the samples' own columns and stability results."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crystext.constants import MIN_FORMATION_ENERGY
from crystext.data import find_structure_column, is_csv, read_table, table_ids
from crystext.errors import CrystextError

__all__ = ["EvaluateError", "SampleColumns", "read_stability"]


class EvaluateError(CrystextError):
    """An input that evaluation cannot use, with a one-line message naming the file or record."""


@dataclass
class SampleColumns:
    """The columns `crystext sample` writes beside each CIF (mode, conditions, error), by sample id.

    `order` is the file's order of ids: the ids `crystext.data.read_structures` gives its records (one rule,
    `crystext.data.tables.table_ids`).
    """

    order: list[str] = field(default_factory=list)
    mode: dict[str, str] = field(default_factory=dict)
    conditions: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # why a sample has no CIF, where the file says

    @classmethod
    def from_file(cls, path: Path, structure_column: str | None = None) -> tuple[SampleColumns, list[str]]:
        """Read the side columns of a samples CSV (none for other inputs), and notes on bad conditions."""
        if not is_csv(path):
            return cls(), []
        frame = read_table(path)
        ids = table_ids(frame, path)
        notes = []
        conditions: dict[str, dict[str, Any]] = {}
        for rid, text in zip(ids, frame.get("conditions", pd.Series([""] * len(frame)))):
            if not text.strip():
                continue
            try:
                parsed = json.loads(text)
                if not isinstance(parsed, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                notes.append(f"{path}: sample {rid}: conditions are not a JSON object, ignored: {text[:80]}")
                continue
            conditions[rid] = {k: v for k, v in parsed.items() if v is not None}
        mode = dict(zip(ids, frame["mode"])) if "mode" in frame.columns else {}
        errors = {}
        cells = frame[find_structure_column(list(frame.columns), path, structure_column)]
        if "error" in frame.columns:
            errors = {r: e.strip() for r, e, c in zip(ids, frame["error"], cells) if e.strip() and not c.strip()}
        return cls(ids, mode, conditions, errors), notes


def read_stability(path: str | Path) -> pd.DataFrame:
    """A `crystext stability` CSV by id: energy above hull (eV/atom; NaN where the row reports an error or a
    formation energy below MIN_FORMATION_ENERGY) and the relaxed structure's CIF (empty where there is none)."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype={"id": str, "relaxed_cif": str}, keep_default_na=False, na_values={
            "e_above_hull": ["", "nan", "NaN"]})
    except FileNotFoundError:
        raise EvaluateError(f"{path}: no such file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise EvaluateError(f"{path}: not a readable CSV ({type(err).__name__})") from None
    for column in ("id", "e_above_hull"):
        if column not in frame.columns:
            raise EvaluateError(f"{path}: no '{column}' column (columns: {', '.join(map(str, frame.columns))})")
    repeated = frame["id"].value_counts()
    if len(repeated) and repeated.iloc[0] > 1:
        raise EvaluateError(f"{path}: id '{repeated.index[0]}' appears {repeated.iloc[0]} times")
    energy = pd.to_numeric(frame["e_above_hull"], errors="coerce").astype(float)
    if "error" in frame.columns:
        energy = energy.where(~frame["error"].map(_present).to_numpy(bool), np.nan)
    if "e_form_per_atom" in frame.columns:  # a relaxation that left the potential's domain is no record
        e_form = pd.to_numeric(frame["e_form_per_atom"], errors="coerce").astype(float)
        energy = energy.where(~(e_form < MIN_FORMATION_ENERGY).to_numpy(bool), np.nan)
    cifs = frame["relaxed_cif"] if "relaxed_cif" in frame.columns else pd.Series([""] * len(frame))
    return pd.DataFrame({"e_above_hull": energy.to_numpy(), "relaxed_cif": cifs.to_numpy()},
                        index=pd.Index(frame["id"].astype(str), name="id"))


def _present(value: Any) -> bool:
    """Whether a CSV cell holds something (not empty, not NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return bool(str(value).strip())
