"""The samples CSV: one row per attempt (id, mode, conditions, raw_text, cif, error), and reading it back."""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from crystext.files import CsvLog
from crystext.geometry import closest_pair
from crystext.textformat import CrystalText, CrystalTextError

__all__ = ["COLUMNS", "SampleWriter", "attempt_row", "parsed_structures"]

COLUMNS = ("id", "mode", "conditions", "raw_text", "cif", "error")


class SampleWriter(CsvLog):
    """The samples CSV, appended one batch of attempts at a time (see `CsvLog` for resuming and torn rows)."""

    def __init__(self, path: str | Path, resume: bool) -> None:
        super().__init__(path, COLUMNS, resume)

    @property
    def valid(self) -> int:
        """Attempts so far with a CIF: their text became a structure whose CIF reads back (see `attempt_row`)."""
        return sum(1 for r in self.rows if r["cif"])


def attempt_row(
    sample_id: str,
    mode: str,
    conditions: Mapping[str, Any],
    text: str,
    error: str = "",
    min_distance: float | None = None,
    requirement: Callable[[Structure], str] | None = None,
) -> dict[str, str]:
    """One output row: the raw text and its CIF, or why it has none (`error`: the sampler's own reason, if any).

    A CIF only where it reads back, and, with `min_distance` (A), where no two atoms are closer: atoms closer
    than that are where the grammar's distance constraint gave way, finding no room for an atom. A
    `requirement` is one more reason to refuse the structure (its message, or "" to keep it).
    """
    cif = ""
    if not error:
        try:
            crystal = CrystalText.from_str(text)
            structure = crystal.to_structure()
            error = _crowded(structure, min_distance, crystal.spacegroup) if min_distance else ""
            error = error or (requirement(structure) if requirement else "")
            cif = "" if error else structure.to(fmt="cif")
            error = error or _unreadable(cif)
        except CrystalTextError as err:
            error = str(err)
        except ValueError as err:  # pymatgen refusing a cell the grammar let through
            error = f"not a valid structure: {err}"
    return {"id": sample_id, "mode": mode, "conditions": json.dumps(dict(conditions)), "raw_text": text,
            "cif": "" if error else cif, "error": error}


def _crowded(structure: Structure, min_distance: float, spacegroup: int | None = None) -> str:
    """Why `structure` has two atoms closer than `min_distance` (A), the nearest pair in text order (of the expanded
    crystal, for an asymmetric unit of `spacegroup`); "" if none."""
    pair = closest_pair(structure)
    if pair is None or pair[2] >= min_distance:
        return ""
    first, second, closest = pair
    why = ("no room left in the cell" if spacegroup is None
           else f"the copies space group {spacegroup} makes of its sites land too close")
    return f"atoms {first} and {second} are {closest:.2f} A apart (< {min_distance} A): {why}"


def _unreadable(cif: str) -> str:
    """Why pymatgen cannot read `cif` back; "" if it can."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its parse warnings say again what the error says
        try:
            Structure.from_str(cif, fmt="cif")
        except ValueError as err:
            return f"its CIF does not read back: {err} (atoms on one site make one over-occupied site)"
    return ""


def parsed_structures(path: Path) -> Iterator[tuple[str, Structure]]:
    """(id, structure) for every row of a samples CSV with a CIF, decoded from the text the model wrote (the
    CIF's sites, read faster)."""
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["cif"]:
                yield row["id"], CrystalText.from_str(row["raw_text"]).to_structure()
