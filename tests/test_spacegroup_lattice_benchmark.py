"""benchmarks/spacegroup_lattice.py: the lattice lines it writes first and the group it reads back, without a model."""

from __future__ import annotations

import sys
from pathlib import Path

from pymatgen.core import Lattice, Structure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import spacegroup_lattice  # noqa: E402

from crystext.textformat import FormatOptions  # noqa: E402


def rock_salt() -> Structure:
    return Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_lattice_lines_are_the_first_two_lines_in_the_models_format() -> None:
    cif = rock_salt().to(fmt="cif")
    assert spacegroup_lattice.lattice_lines(cif, FormatOptions()) == "5.6 5.6 5.6\n90 90 90\n"
    assert spacegroup_lattice.lattice_lines(cif, FormatOptions(length_decimals=2)) == "5.64 5.64 5.64\n90 90 90\n"


def test_group_written_reads_the_completed_text_and_misses_unreadable_text() -> None:
    head = "5.6 5.6 5.6\n90 90 90\n"
    atoms = [f"{el}\n{x:.2f} {y:.2f} {z:.2f}" for el, (x, y, z) in zip(
        ["Na"] * 4 + ["Cl"] * 4,
        [(0, 0, 0), (0, 0.5, 0.5), (0.5, 0, 0.5), (0.5, 0.5, 0),
         (0.5, 0.5, 0.5), (0.5, 0, 0), (0, 0.5, 0), (0, 0, 0.5)])]
    assert spacegroup_lattice.group_written(head + "\n".join(atoms)) == 225
    assert spacegroup_lattice.group_written(head + "\n".join(atoms[:1] + atoms[4:5])) == 221  # CsCl-like cell
    assert spacegroup_lattice.group_written(head + "Xx\n0 0 0") is None
