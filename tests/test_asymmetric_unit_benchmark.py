"""benchmarks/asymmetric_unit.py: a crystal written as its group and one site per orbit, and expanded back."""

from __future__ import annotations

import sys
from pathlib import Path

from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import asymmetric_unit  # noqa: E402

from crystext.textformat import FormatOptions  # noqa: E402


def test_rock_salt_primitive_cell_is_two_orbits_of_fm3m_and_expands_back() -> None:
    conventional = Structure.from_spacegroup(225, Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    primitive = conventional.get_primitive_structure()
    group, lattice, species, coords = asymmetric_unit.asymmetric_unit(primitive, FormatOptions())
    assert group == 225
    assert lattice.abc == (5.6, 5.6, 5.6) and lattice.angles == (90.0, 90.0, 90.0)
    assert sorted(species) == ["Cl", "Na"] and len(coords) == 2
    back = asymmetric_unit.expanded(group, lattice, species, coords)
    assert len(back) == 2 and StructureMatcher().fit(primitive, back)


def test_a_general_position_is_written_once_for_its_whole_orbit() -> None:
    # Rutile TiO2 (P4_2/mnm): 6 sites in the cell, two orbits (Ti 2a, O 4f).
    rutile = Structure.from_spacegroup(136, Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    group, lattice, species, coords = asymmetric_unit.asymmetric_unit(rutile, FormatOptions())
    assert group == 136 and len(rutile) == 6 and sorted(species) == ["O", "Ti"]
    back = asymmetric_unit.expanded(group, lattice, species, coords)
    assert back.composition.reduced_formula == "TiO2" and len(back) == 6
    assert StructureMatcher().fit(rutile, back)
