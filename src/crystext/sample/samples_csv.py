"""The samples CSV: one row per attempt (id, mode, conditions, raw_text, cif, error), and reading it back."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from crystext.files import CsvLog
from crystext.textformat import CrystalText, CrystalTextError

__all__ = ["COLUMNS", "SampleWriter", "attempt_row", "parsed_structures"]

COLUMNS = ("id", "mode", "conditions", "raw_text", "cif", "error")


class SampleWriter(CsvLog):
    """The samples CSV, appended one batch of attempts at a time (see `CsvLog` for resuming and torn rows)."""

    def __init__(self, path: str | Path, resume: bool) -> None:
        super().__init__(path, COLUMNS, resume)

    @property
    def valid(self) -> int:
        """Attempts so far whose text became a structure."""
        return sum(1 for r in self.rows if r["cif"])


def attempt_row(sample_id: str, mode: str, conditions: Mapping[str, Any], text: str, error: str = "") -> dict[str, str]:
    """One output row: the raw text and its CIF, or why it has none (`error`: the sampler's own reason, if any)."""
    cif = ""
    if not error:
        try:
            cif = CrystalText.from_str(text).to_structure().to(fmt="cif")
        except CrystalTextError as err:
            error = str(err)
        except ValueError as err:  # pymatgen refusing a cell the grammar let through
            error = f"not a valid structure: {err}"
    return {"id": sample_id, "mode": mode, "conditions": json.dumps(dict(conditions)), "raw_text": text, "cif": cif,
            "error": error}


def parsed_structures(path: Path) -> Iterator[tuple[str, Structure]]:
    """(id, structure) for every parseable row of a samples CSV, decoded from the text the model wrote.

    The text rather than the CIF: a CIF with two atoms on one site does not read back (pymatgen
    merges them into one over-occupied site), yet such a sample is a structure, just an invalid one.
    """
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["cif"]:
                yield row["id"], CrystalText.from_str(row["raw_text"]).to_structure()
