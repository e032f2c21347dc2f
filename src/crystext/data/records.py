"""What every reader returns: `Record` (one crystal), `Dataset` (the records of one source and the ones skipped)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Structure

from crystext.errors import CrystextError

__all__ = ["Dataset", "DatasetError", "Record"]


class DatasetError(CrystextError):
    """A dataset that cannot be found, fetched or read as a whole (single bad rows are skipped instead)."""


@dataclass(frozen=True)
class Record:
    """One crystal of a dataset: its id, its structure, and the other columns of its row."""

    id: str
    structure: Structure
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """The records read from one source, and (id, reason) for each record that was skipped."""

    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def summary(self, show: int = 3) -> str:
        """One line: how many records were read and which were skipped (the first few, with reasons)."""
        line = f"{self.source}: {len(self.records)} structures"
        if self.skipped:
            first = "; ".join(f"{rid}: {why}" for rid, why in self.skipped[:show])
            more = f" (and {len(self.skipped) - show} more)" if len(self.skipped) > show else ""
            line += f", {len(self.skipped)} skipped: {first}{more}"
        return line

    @classmethod
    def concat(cls, parts: Sequence[Dataset], source: str) -> Dataset:
        """Join datasets without losing a record.

        An id names one crystal. A later record whose id is taken by the same crystal (same lattice, atoms
        and coordinates: one material listed in two splits) is a repeat: it is listed as skipped, with the
        part that has it first. A later record whose id is taken by a different crystal (the position ids
        `row3` of two files without an id column) is kept under `STEM:id`, STEM its part's file name
        (`val:row3`); so is a skipped id that collides.
        """
        records: list[Record] = []
        skipped: list[tuple[str, str]] = []
        first: dict[str, tuple[Record | None, str]] = {}  # id -> (its record, None if skipped; its part's source)
        for number, part in enumerate(parts):
            stem = _stem(part.source) or f"part{number + 1}"
            for record in part.records:
                taken = first.get(record.id)
                if taken is not None and taken[0] is not None and _same_crystal(taken[0].structure, record.structure):
                    skipped.append((record.id, f"repeats the record with this id in {taken[1]}"))
                    continue
                rid = record.id if taken is None else _free_id(stem, record.id, first)
                if rid != record.id:
                    record = Record(rid, record.structure, record.properties)
                first[rid] = (record, part.source)
                records.append(record)
            for rid, reason in part.skipped:
                if rid in first:
                    rid = _free_id(stem, rid, first)
                first[rid] = (None, part.source)
                skipped.append((rid, reason))
        return cls(records, skipped, source)


def _stem(source: str) -> str:
    """A part's file name without its suffixes: `val` for .../val.csv.gz."""
    return Path(source).name.split(".")[0] if source else ""


def _free_id(stem: str, rid: str, taken: Mapping[str, Any]) -> str:
    """`stem:rid`, or `stem2:rid`, ... the first that is not taken."""
    candidate, n = f"{stem}:{rid}", 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}{n}:{rid}"
    return candidate


def _same_crystal(a: Structure, b: Structure) -> bool:
    """The same lattice, atoms and fractional coordinates, in the same order (a record read twice)."""
    return (
        len(a) == len(b)
        and a.species == b.species
        and np.allclose(a.lattice.matrix, b.lattice.matrix, atol=1e-6)
        and np.allclose(a.frac_coords, b.frac_coords, atol=1e-6)
    )


def first_line(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__
