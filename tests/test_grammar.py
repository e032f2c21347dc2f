"""The constrained-decoding grammar, rule by rule: number formats, lattice ranges and cell, elements, composition,
where the text may end, the minimum distance, token-text recovery, and the processor's lifetime and dead ends."""

from __future__ import annotations

import functools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from crystext.constants import MAX_VOLUME_RATIO, MIN_VOLUME_RATIO
from crystext.grammar import (
    ELEMENT_VOLUMES,
    Grammar,
    GrammarLogitsProcessor,
    Section,
    State,
    _far_enough,
    _number_done,
    _number_prefix,
    _step,
    _unit_volumes,
    advance,
    can_end,
    element_volumes,
    min_cell_volume,
    token_texts,
)
from crystext.model import train_scratch_tokenizer
from crystext.textformat import ELEMENT_SYMBOLS, FormatOptions

CUBE = "4.0 4.0 4.0\n90 90 90\n"
#: 79.5 A^3: room for one or two NaCl, each 38.2 to 83.7 A^3 (test_nacl_units_by_hand), typically 51.66 A^3: it
#: holds two (1.54 is nearer 2 than 1 by ratio), as one Na2Cl2.
ROOMY = "4.3 4.3 4.3\n90 90 90\n"
LENGTHS = "4.0 4.0 4.0\n"
ATOM = "Na\n0.00 0.00 0.00"
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "src" / "crystext" / "default_model"


def accepts(text: str, grammar: Grammar | None = None) -> bool:
    return advance(State(), text, grammar or Grammar()) is not None


# ---------------------------------------------------------------------------------------------------------------------
# What the automaton tracks


def test_advance_tracks_lattice_and_sites() -> None:
    state = advance(State(), CUBE + "Na\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\nNa\n0.25 0.75 0.5", Grammar())
    assert state.lattice == (4.0, 4.0, 4.0, 90.0, 90.0, 90.0)
    assert state.sites == ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
    assert state.element_counts == (("Cl", 1), ("Na", 2))
    assert (state.section, state.column, state.line_numbers, state.partial) == (Section.COORDS, 2, (0.25, 0.75), "0.5")
    assert advance(State(), "4.0 4.0 4.0\n90 90 9", Grammar()).lattice == (4.0, 4.0, 4.0)


@pytest.mark.parametrize(
    ("text", "section", "column", "partial"),
    [
        ("", Section.LENGTHS, 0, ""),
        ("4.0 4.", Section.LENGTHS, 1, "4."),
        (LENGTHS + "90 ", Section.ANGLES, 1, ""),
        (CUBE, Section.ELEMENT, 0, ""),
        (CUBE + "N", Section.ELEMENT, 0, "N"),
        (CUBE + "Na\n0.00 0.", Section.COORDS, 1, "0."),
        (CUBE + ATOM + "\n", Section.ELEMENT, 0, ""),
    ],
)
def test_sections_follow_the_lines(text: str, section: Section, column: int, partial: str) -> None:
    state = advance(State(), text, Grammar())
    assert (state.section, state.column, state.partial) == (section, column, partial)


# ---------------------------------------------------------------------------------------------------------------------
# Number formats


@pytest.mark.parametrize(
    ("partial", "decimals", "max_int_digits", "expected"),
    [
        ("4", 1, 3, True),
        ("4.", 1, 3, True),
        ("4.0", 1, 3, True),
        ("0", 1, 3, True),  # a lone zero is not a leading zero
        ("100", 1, 3, True),
        ("4.05", 1, 3, False),  # more decimals than configured
        ("4.", 0, 3, False),  # no dot when there are no decimals
        ("04", 1, 3, False),  # leading zero
        ("1000", 1, 3, False),  # too many integer digits
        ("10", 2, 1, False),  # a coordinate has one integer digit
        (".5", 1, 3, False),  # no integer part
        ("4..", 2, 3, False),
    ],
)
def test_number_prefix(partial: str, decimals: int, max_int_digits: int, expected: bool) -> None:
    assert _number_prefix(partial, decimals, max_int_digits) is expected


@pytest.mark.parametrize(
    ("partial", "decimals", "expected"),
    [("4.0", 1, True), ("4", 0, True), ("0.25", 2, True), ("4.", 1, False), ("4", 1, False), ("4.", 0, False),
     ("0.2", 2, False), ("", 0, False)],
)  # fmt: skip
def test_number_done(partial: str, decimals: int, expected: bool) -> None:
    assert _number_done(partial, decimals) is expected


@pytest.mark.parametrize(
    ("options", "text", "expected"),
    [
        (FormatOptions(), "4.0 ", True),
        (FormatOptions(), "12.5 ", True),
        (FormatOptions(), "4 ", False),  # lengths need their decimal
        (FormatOptions(), "4.05", False),
        (FormatOptions(length_decimals=0), "4 ", True),
        (FormatOptions(length_decimals=0), "4.", False),
        (FormatOptions(length_decimals=2), "4.05 ", True),
        (FormatOptions(length_decimals=2), "4.0 ", False),
        (FormatOptions(), LENGTHS + "90 ", True),
        (FormatOptions(), LENGTHS + "90.", False),  # angles are whole degrees by default
        (FormatOptions(angle_decimals=1), LENGTHS + "90.5 ", True),
        (FormatOptions(), CUBE + "Na\n0.25 ", True),
        (FormatOptions(), CUBE + "Na\n0.2 ", False),
        (FormatOptions(), CUBE + "Na\n0.250", False),
        (FormatOptions(), CUBE + "Na\n1", False),  # coordinates are "0." and decimals
        (FormatOptions(), CUBE + "Na\n0.25\n", False),  # three numbers on a line
        (FormatOptions(), "4.0 4.0 4.0 ", False),
        (FormatOptions(coord_decimals=3), CUBE + "Na\n0.250 ", True),
        (FormatOptions(coord_decimals=3), CUBE + "Na\n0.25 ", False),
    ],
)
def test_number_formats(options: FormatOptions, text: str, expected: bool) -> None:
    assert accepts(text, Grammar(options)) is expected


# ---------------------------------------------------------------------------------------------------------------------
# Lattice: ranges and a real cell


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.0 ", True),
        ("100.0 ", True),
        ("99.9 ", True),
        ("0.", False),  # cannot reach 1.0 any more
        ("100.1", False),  # already above 100
        ("101", False),
        (LENGTHS + "10 ", True),
        (LENGTHS + "170 ", True),
        (LENGTHS + "9 ", False),  # could still have been 90, but ends below 10
        (LENGTHS + "171", False),
        (LENGTHS + "180", False),
    ],
)
def test_lattice_ranges(text: str, expected: bool) -> None:
    assert accepts(text) is expected


@pytest.mark.parametrize(
    ("angles", "options", "expected"),
    [
        ("90 90 90\n", FormatOptions(), True),
        ("60 60 60\n", FormatOptions(), True),
        ("90 90 150\n", FormatOptions(), True),
        ("120 120 119\n", FormatOptions(), True),
        ("120 120 120", FormatOptions(), False),  # zero volume: refused as it is written
        ("170 170", FormatOptions(), False),  # no third angle would give a cell
        ("10 10 170", FormatOptions(), False),
        ("10 170", FormatOptions(), False),
        ("10 10 ", FormatOptions(), False),  # "10" could have become "100"; as written no third angle works
        ("10 100 ", FormatOptions(), True),
        ("60.0 150.0 149.8\n", FormatOptions(angle_decimals=1), True),
        ("60.0 150.0 149.9\n", FormatOptions(angle_decimals=1), False),  # 149 would do; 149.9 is refused at the end
    ],
)
def test_angles_must_give_a_real_cell(angles: str, options: FormatOptions, expected: bool) -> None:
    assert accepts(LENGTHS + angles, Grammar(options)) is expected


# ---------------------------------------------------------------------------------------------------------------------
# Elements and composition


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ("Na\n", True),
        ("N\n", True),
        ("Xe\n", True),
        ("X", True),  # could still become Xe
        ("X\n", False),
        ("Xx", False),
        ("Q", False),
        ("na", False),
        ("Na ", False),
        ("\n", False),
        ("0", False),
    ],
)
def test_element_symbols(element: str, expected: bool) -> None:
    assert accepts(CUBE + element) is expected


@pytest.mark.parametrize(
    ("max_atoms", "text", "expected"),
    [
        (0, CUBE + "N", False),
        (1, CUBE + "N", True),
        (1, CUBE + ATOM + "\n", False),  # a second atom would pass the cap
        (2, CUBE + ATOM + "\n", True),
    ],
)
def test_atom_cap(max_atoms: int, text: str, expected: bool) -> None:
    assert accepts(text, Grammar(max_atoms=max_atoms)) is expected


def test_a_text_at_the_atom_cap_may_end() -> None:
    assert can_end(advance(State(), CUBE + ATOM, Grammar(max_atoms=1)), Grammar(max_atoms=1))


@pytest.mark.parametrize(
    ("formula", "max_atoms", "text", "expected"),
    [
        ("NaCl", 52, "Na\n", True),
        ("NaCl", 52, "Cl\n", True),
        ("NaCl", 52, "C", True),  # could still become Cl
        ("NaCl", 52, "C\n", False),  # a real element, but not in the formula
        ("NaCl", 52, "K", False),
        ("NaCl", 52, "Na\n0.00 0.00 0.00\nNa\n", True),
        ("NaCl", 3, "Na\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\nNa", False),  # a second NaCl would make 4 atoms
        ("NaCl", 3, "Na\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\n", False),  # so no new line after the last atom
        ("NaCl", 4, "Na\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\nNa\n", True),
        ("LiFePO4", 52, "Fe\n", True),
        ("LiFePO4", 7, "O\n0.00 0.00 0.00\nO\n0.25 0.00 0.00\nO\n0.50 0.00 0.00\nO\n0.75 0.00 0.00\nO", False),
    ],
)
def test_forced_composition(formula: str, max_atoms: int, text: str, expected: bool) -> None:
    assert accepts(ROOMY + text, Grammar.for_formula(formula, max_atoms=max_atoms)) is expected


@pytest.mark.parametrize(
    ("formula", "elements", "expected"),
    [
        ("NaCl", ["Na"], False),
        ("NaCl", ["Na", "Cl"], False),  # in proportion, but the cell holds two
        ("NaCl", ["Na", "Cl", "Na"], False),
        ("NaCl", ["Na", "Cl", "Cl", "Na"], True),
        ("Na2Cl2", ["Na", "Cl"], False),  # in proportion, but half a formula unit
        ("Na2Cl2", ["Na", "Cl", "Cl", "Na"], True),
    ],
)
def test_forced_composition_ends_only_in_proportion(formula: str, elements: list[str], expected: bool) -> None:
    text = ROOMY + "\n".join(f"{e}\n0.{i}0 0.00 0.00" for i, e in enumerate(elements))
    grammar = Grammar.for_formula(formula)
    assert can_end(advance(State(), text, grammar), grammar) is expected


@pytest.mark.parametrize(
    ("formula", "unit"),
    [("NaCl", {"Na": 1, "Cl": 1}), ("Na4Cl4", {"Na": 4, "Cl": 4}), ("LiFePO4", {"Li": 1, "Fe": 1, "P": 1, "O": 4})],
)
def test_for_formula_takes_the_formula_as_written(formula: str, unit: dict[str, int]) -> None:
    assert dict(Grammar.for_formula(formula).composition) == unit


@pytest.mark.parametrize(
    ("cell", "formula", "max_atoms", "units"),
    [
        # 512 A^3 over NaCl's 38.2 to 83.7 A^3 (test_nacl_units_by_hand) allows 6.12 to 13.39 NaCl (7 to 13) and
        # its typical 51.66 A^3 gives 9.91: ten, where the range's top (13) made the cell 26% too dense
        ("8.0 8.0 8.0\n90 90 90\n", "NaCl", 52, 10),
        # 125 sqrt(1 - 3/4 + 2/8) = 88.39 A^3: 1.06 to 2.31 NaCl, where the model once wrote 26 (1.7 A^3 per atom)
        ("5.0 5.0 5.0\n60 60 60\n", "NaCl", 52, 2),
        ("10.0 10.0 10.0\n90 90 90\n", "NaCl", 52, 19),  # 1000 A^3: 11.95 to 26 (the cap) allowed, 19.36 typical
        ("2.0 2.0 2.0\n90 90 90\n", "LiFePO4", 52, 1),  # 8 A^3, too small for 7 atoms: one unit, judged later
        ("20.0 20.0 20.0\n90 90 90\n", "NaCl", 8, 4),  # 8000 A^3, too large for the cap's 8 atoms: the cap
        # Ar, missing from the table, takes MP-20's overall 8.8 to 56.8 A^3 per atom, typically their geometric mean
        # 22.36: 88.39 / 22.36 = 3.95 atoms
        ("5.0 5.0 5.0\n60 60 60\n", "Ar", 52, 4),
    ],
)
def test_forced_composition_holds_the_formula_units_its_cell_holds(
    cell: str, formula: str, max_atoms: int, units: int
) -> None:
    """The whole formula units nearest the cell's volume over their elements' in MP-20, within the range MP-20
    shows, and no other count."""
    grammar = Grammar.for_formula(formula, max_atoms=max_atoms)
    unit = [f"{e}\n0.00 0.00 0.00" for e, n in grammar.composition.items() for _ in range(n)]
    states = {k: advance(State(), cell + "\n".join(unit * k), grammar) for k in range(1, max_atoms // len(unit) + 1)}
    assert [k for k, state in states.items() if state is not None and can_end(state, grammar)] == [units]
    assert [k for k, state in states.items() if state is not None] == list(range(1, units + 1))  # fewer go on
    assert advance(State(), cell + "\n".join(unit * units) + "\n", grammar) is None  # no room for another


def test_fixed_units_hold_whatever_the_cell_volume_says() -> None:
    """A whole cell's formula (`units=1`, as a `--cell-formula` model reads it): Na2Cl2 in a 1000 A^3 cell, which
    would hold 19 NaCl by volume, ends after exactly its four atoms."""
    grammar = Grammar.for_formula("Na2Cl2", max_atoms=52, units=1)
    cell = "10.0 10.0 10.0\n90 90 90\n"
    atoms = ["Na\n0.00 0.00 0.00", "Cl\n0.50 0.50 0.50", "Na\n0.50 0.00 0.00", "Cl\n0.00 0.50 0.50"]
    assert not can_end(advance(State(), cell + "\n".join(atoms[:2]), grammar), grammar)
    assert can_end(advance(State(), cell + "\n".join(atoms), grammar), grammar)
    assert advance(State(), cell + "\n".join(atoms) + "\nNa", grammar) is None
    with pytest.raises(ValueError, match="3 units of composition"):
        Grammar.for_formula("Na2Cl2", max_atoms=8, units=3)


@pytest.mark.parametrize(
    ("composition", "max_atoms", "message"),
    [
        ({"Na": 4, "Cl": 4}, 6, r"\{'Na': 4, 'Cl': 4\} has more than max_atoms=6 atoms in one formula unit"),
        ({}, 52, r"composition \{\} needs at least one atom of each element"),
        ({"Na": 0, "Cl": 1}, 52, r"composition \{'Na': 0, 'Cl': 1\} needs at least one atom of each element"),
    ],
)
def test_a_composition_no_cell_can_hold_is_refused(composition: dict, max_atoms: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Grammar(max_atoms=max_atoms, composition=composition)


def test_nacl_units_by_hand() -> None:
    """The numbers the NaCl cases above are worked out from: the shipped Na and Cl volumes and the ratio bounds,
    a NaCl unit from 0.74 * (20.87 + 30.79) = 38.23 to 1.62 * 51.66 = 83.69 A^3."""
    volumes = element_volumes()
    assert (volumes["Na"], volumes["Cl"], MIN_VOLUME_RATIO, MAX_VOLUME_RATIO) == (20.87, 30.79, 0.74, 1.62)


def test_the_least_cell_of_a_formula_is_its_atoms_at_their_smallest() -> None:
    assert min_cell_volume("Na4Cl4") == pytest.approx(4 * 0.74 * (20.87 + 30.79))  # 152.91 A^3
    assert min_cell_volume("NaCl") == pytest.approx(38.23, abs=0.01)


#: Four NaCl, at least 152.91 A^3.
FLOORED = Grammar(min_volume=min_cell_volume("Na4Cl4"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5.6 5.6 4.9\n90 90 90\n", True),  # 153.7 A^3
        ("5.6 5.6 4.8\n", False),  # 150.5 A^3: no angles can make the cell larger than the lengths' product
        ("5.6 5.6 4", True),  # 4.9 is still to come
        ("3.0 3.0 1", True),  # 17 A and more: 17 to 19.9 A
        ("3.0 3.0 1.", False),  # 1.0 to 1.9 A
        ("5.6 5.6 5.6\n90 90 90\n", True),  # 175.6 A^3
        ("5.6 5.6 5.6\n60 60 60\n", False),  # 0.707 of the product: 124.2 A^3
        ("5.6 5.6 5.6\n90 90 6", True),  # 60 to 69 degrees: 152.1 to 164.0 A^3, 61 makes it
        ("5.6 5.6 5.6\n50 ", False),  # at most sin(50) = 0.766 of the product: 134.5 A^3, whatever beta and gamma
        ("5.6 5.6 5.6\n90 50 ", False),
        ("5.6 5.6 5.6\n90 70 ", True),  # sin(70) = 0.940: 165 A^3 with gamma 90
    ],
)
def test_a_least_volume_keeps_the_lattice_large_enough(text: str, expected: bool) -> None:
    assert accepts(text, FLOORED) is expected


def test_an_element_missing_from_the_table_takes_the_overall_range() -> None:
    """Per atom: the table's Cl by the ratio bounds (typically its own volume), the untabled Ar by MP-20's overall
    8.8 to 56.8 A^3 (typically their geometric mean, 22.36 A^3)."""
    assert "Ar" not in element_volumes()
    expected = (2 * 8.8 + 0.74 * 30.79, 2 * 22.357 + 30.79, 2 * 56.8 + 1.62 * 30.79)
    assert _unit_volumes((("Ar", 2), ("Cl", 1))) == pytest.approx(expected, abs=1e-3)


def test_the_shipped_volumes_predict_rock_salt() -> None:
    """Rock-salt NaCl (a = 5.64 A, 4 units in 179.4 A^3: 44.9 A^3 a unit) within 20% of the table's prediction."""
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    volumes = element_volumes()
    predicted = sum(volumes[site.specie.symbol] for site in rock_salt)
    assert len(rock_salt) == 8 and rock_salt.volume / 4 == pytest.approx(44.85, abs=0.01)
    assert rock_salt.volume / predicted == pytest.approx(1, abs=0.2)


def test_the_shipped_volumes_name_their_source() -> None:
    table = json.loads(ELEMENT_VOLUMES.read_text())
    assert {"source", "license", "method", "date", "volumes"} <= set(table)


def test_for_formula_refuses_more_atoms_than_the_cap() -> None:
    with pytest.raises(ValueError, match="max_atoms=6"):
        Grammar.for_formula("LiFePO4", max_atoms=6)
    assert Grammar.for_formula("LiFePO4", max_atoms=7).max_atoms == 7


# ---------------------------------------------------------------------------------------------------------------------
# Where the text may end


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        (CUBE, FormatOptions(), False),
        (CUBE + "Na\n", FormatOptions(), False),
        (CUBE + "Na\n0.00 0.00 ", FormatOptions(), False),
        (CUBE + "Na\n0.00 0.00 0.0", FormatOptions(), False),
        (CUBE + ATOM, FormatOptions(), True),
        (CUBE + ATOM + "\n", FormatOptions(), False),
        (CUBE + ATOM + "\nCl", FormatOptions(), False),
        (CUBE + ATOM + "\nCl\n0.50 0.50 0.50", FormatOptions(), True),
        (CUBE + "Na\n0.000 0.000 0.00", FormatOptions(coord_decimals=3), False),
        (CUBE + "Na\n0.000 0.000 0.000", FormatOptions(coord_decimals=3), True),
    ],
)
def test_can_end_only_after_a_complete_atom(text: str, options: FormatOptions, expected: bool) -> None:
    grammar = Grammar(options)
    assert can_end(advance(State(), text, grammar), grammar) is expected


COUNTED = Grammar(FormatOptions(site_counts=True), max_atoms=6)
O_SITES = "O 3\n0.00 0.00 0.00\nO 2\n0.50 0.00 0.00\nO 1\n0.00 0.00 0.50"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CUBE + O_SITES + "\nFe 2\n0.50 0.50 0.50\nFe 1\n0.00 0.50 0.50", True),
        (CUBE + "O 6", True),  # as many as the cap leaves room for
        (CUBE + "O 7", False),
        (CUBE + "O 3\n0.00 0.00 0.00\nFe 4", False),  # "Fe 4" would take the cell to 7 atoms
        (CUBE + "O 0", False),
        (CUBE + "O 03", False),
        (CUBE + "O\n", False),  # the count is part of the line
        (CUBE + "O 3\n0.00 0.00 0.00\nFe", False),  # two more O are due
        (CUBE + "O 3\n0.00 0.00 0.00\nO 1", False),  # the count goes down by one
        (CUBE + "O 3\n0.00 0.00 0.00\nO 2\n0.50 0.00 0.00\nO 1\n0.00 0.00 0.50\nO ", False),  # O is done (Os may come)
    ],
)
def test_site_counts_count_each_element_down_by_one(text: str, expected: bool) -> None:
    assert accepts(text, COUNTED) is expected


JOINED = Grammar(FormatOptions(site_counts=True, joined_counts=True), max_atoms=6)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (CUBE + O_SITES.replace("O ", "O") + "\nFe2\n0.50 0.50 0.50\nFe1\n0.00 0.50 0.50", True),
        (CUBE + "O6", True),
        (CUBE + "O7", False),
        (CUBE + "O3\n0.00 0.00 0.00\nFe4", False),
        (CUBE + "O0", False),
        (CUBE + "O 3", False),  # the count joins the symbol
        (CUBE + "O3\n0.00 0.00 0.00\nO1", False),
        (CUBE + "Os2\n0.00 0.00 0.00\nOs1", True),
        (CUBE + "O01", False),
        ("9.0 9.0 9.0\n90 90 90\nAl12", False),  # over the cap of 6
    ],
)
def test_joined_site_counts_follow_the_symbol_and_count_down(text: str, expected: bool) -> None:
    assert accepts(text, JOINED) is expected


COUNTED_ORBITS = Grammar(FormatOptions(asymmetric_unit=True, site_counts=True, joined_counts=True), max_atoms=6,
                         spacegroup=225)


@pytest.mark.parametrize(
    ("sites", "grammatical", "complete"),
    [
        ("Na12\n0.00 0.00 0.00\nNa8\n0.25 0.25 0.25\nCl4\n0.00 0.00 0.50", True, True),
        ("Na12\n0.00 0.00 0.00", True, False),  # an orbit of 4 (Fm-3m's 4a): 8 Na still due
        ("Na12\n0.00 0.00 0.00\nCl4", False, False),
        ("Na12\n0.00 0.00 0.00\nNa12", False, False),  # the count after an orbit of 4 is 8
        ("Na4\n0.00 0.00 0.00", True, True),
        ("Na4\n0.10 0.20 0.30\nCl4", True, False),  # a general position's 192 atoms: Na is over, not due
        ("Na24", True, False),  # a conventional cell's atoms: Fm-3m's 4 lattice points times the cap of 6
        ("Na25", False, False),
        ("Na12\n0.00 0.00 0.00\nNa8\n0.25 0.25 0.25\nCl12", True, False),  # 12 of the 24 left for Cl
        ("Na12\n0.00 0.00 0.00\nNa8\n0.25 0.25 0.25\nCl13", False, False),
        ("Na13", False, False),  # an F-centred cell holds its atoms in fours
        ("Na12\n0.00 0.00 0.00\nNa 8", False, False),  # the count joins the symbol
    ],
)
def test_counted_asymmetric_unit_counts_each_element_down_by_its_orbits(
    sites: str, grammatical: bool, complete: bool
) -> None:
    """In the site-count asymmetric unit a site takes its orbit's size off its element's count (the group the
    prompt wrote, on the lattice written), so the counts the model copies from a formula are the atoms it writes."""
    state = advance(COUNTED_ORBITS.start, CUBE + sites, COUNTED_ORBITS)
    assert (state is not None) is grammatical
    assert (state is not None and can_end(state, COUNTED_ORBITS)) is complete


@pytest.mark.parametrize(
    ("group", "lattice", "accepted"),
    [
        (225, "4.0 4.0 4.0\n90 90 90\n", True),
        (225, "4.0 4.1", False),  # cubic: b and c are a
        (225, "4.0 4.0 4.0\n90 90 91", False),
        (194, "4.1 4.1 18.4\n90 90 120\n", True),
        (194, "4.1 4.1 18.4\n90 90 90", False),  # hexagonal axes: gamma 120
        (136, "4.6 4.6 3.0\n90 90 90\n", True),
        (136, "4.6 4.5", False),
        (14, "5.0 6.0 7.0\n90 101 90\n", True),  # monoclinic: beta free, alpha and gamma right angles
        (14, "5.0 6.0 7.0\n91", False),
        (2, "5.0 6.0 7.0\n81 101 95\n", True),
    ],
)
def test_an_asymmetric_units_lattice_is_its_crystal_systems(group: int, lattice: str, accepted: bool) -> None:
    """The group is written before the lattice, so the lattice takes the form its crystal system has in the standard
    cell that reading expands the orbits on: equal lengths and fixed angles are written as such."""
    grammar = Grammar(FormatOptions(asymmetric_unit=True), spacegroup=group)
    assert (advance(grammar.start, lattice, grammar) is not None) is accepted


def test_an_asymmetric_units_least_volume_counts_the_lengths_its_system_ties() -> None:
    """A cube of at least 125 A^3 needs a >= 5.0 A (b and c will equal it), a hexagonal cell of at least 86.6 A^3
    with c at most 100 A needs a**2 * 100 * sin(120) >= 86.6: a >= 1.0."""
    cubic = Grammar(FormatOptions(asymmetric_unit=True), spacegroup=225, min_volume=125.0)
    assert advance(cubic.start, "4.9 ", cubic) is None and advance(cubic.start, "5.0 5.0 5.0\n90 90 90\n", cubic)
    hexagonal = Grammar(FormatOptions(asymmetric_unit=True), spacegroup=194, min_volume=86.6)
    assert advance(hexagonal.start, "0.9 ", hexagonal) is None and advance(hexagonal.start, "1.0 ", hexagonal)
    assert advance(hexagonal.start, "1.0 1.0 99.9", hexagonal) is None  # 86.5 A^3


def test_a_forced_composition_on_a_counted_asymmetric_unit_fixes_each_elements_count() -> None:
    forced = replace(COUNTED_ORBITS, composition={"Na": 3, "Cl": 1}, units=4)  # Na12Cl4, a cell formula
    whole = "Na12\n0.00 0.00 0.00\nNa8\n0.25 0.25 0.25\nCl4\n0.00 0.00 0.50"
    assert can_end(advance(forced.start, CUBE + whole, forced), forced)
    assert not can_end(advance(forced.start, CUBE + whole.split("\nCl")[0], forced), forced)  # Cl still to come
    for bad in ("Na4", "Cl5", "K4"):
        assert advance(forced.start, CUBE + bad + "\n", forced) is None, bad
    # unprompted, the group line offers only groups whose orbits can hold the counts: Na12Cl4 fits an F cell (4
    # lattice points), NaCl (1 unit) no centred cell
    free = replace(forced, spacegroup=None)
    assert advance(free.start, "225\n", free) is not None
    single = replace(free, units=1)
    assert advance(single.start, "225\n", single) is None and advance(single.start, "221\n", single) is not None
    with pytest.raises(ValueError, match="only in the site-count form, with the formula units fixed"):
        Grammar.for_formula("NaCl", FormatOptions(asymmetric_unit=True, site_counts=True))


def test_processor_keeps_an_asymmetric_units_orbit_within_its_count() -> None:
    """After "Na4" and (0, 0) in Fm-3m's 4 A cube only z near 0 or 1/2 gives an orbit of 4 (4a, 4b; z within
    0.3 A of its mirror image merges with it); every other z is a 24-atom orbit, more Na than the line counts."""
    text = "225\n" + CUBE + "Na4\n0.00 0.00 "
    options = FormatOptions(asymmetric_unit=True, site_counts=True, joined_counts=True)
    finished = {f"{i / 100:.2f}" for i in range(100)}  # tokens that end the number (others start it: "0.2")
    assert allowed_after(text, Grammar(options)) & finished == {
        f"{i / 100:.2f}" for i in [0, 1, 2, 3, *range(47, 54), 97, 98, 99]}
    assert finished <= allowed_after(text.replace("Na4", "Na24"), Grammar(options))


def test_processor_keeps_an_asymmetric_units_first_coordinates_where_its_count_can_be_met() -> None:
    """Fm-3m's only orbits of 4 are 4a (0, 0, 0) and 4b (1/2, 1/2, 1/2): after "Na4" the first coordinate is 0 or
    1/2 or within a grid step of them (x = 1/4 leaves orbits of 8 at best), and after x = 0 so is the second; an
    orbit of 8 (8c, 1/4 1/4 1/4) may also start at 1/4."""
    options = FormatOptions(asymmetric_unit=True, site_counts=True, joined_counts=True)
    finished = {f"{i / 100:.2f}" for i in range(100)}
    near_special = {"0.00", "0.01", "0.49", "0.50", "0.51", "0.99"}
    for text in ("Na4\n", "Na4\n0.00 "):
        allowed = allowed_after("225\n" + CUBE + text, Grammar(options)) & finished
        assert {"0.00", "0.50"} <= allowed <= near_special, text
    assert {"0.25", "0.75"} <= allowed_after("225\n" + CUBE + "Na8\n", Grammar(options))


@pytest.mark.parametrize(("sites", "expected"), [(O_SITES, True), ("O 3\n0.00 0.00 0.00", False)])
def test_a_site_count_text_ends_only_when_its_last_element_is_done(sites: str, expected: bool) -> None:
    assert can_end(advance(State(), CUBE + sites, COUNTED), COUNTED) is expected


@pytest.mark.parametrize("joined", [False, True])
@pytest.mark.parametrize(
    ("sites", "grammatical", "complete"),
    [
        ("Cl 2\n0.50 0.50 0.50\nCl 1\n0.00 0.50 0.50\nNa 2\n0.00 0.00 0.00\nNa 1\n0.50 0.00 0.00", True, True),
        ("Cl 2\n0.50 0.50 0.50\nCl 1\n0.00 0.50 0.50", True, False),  # Na still due
        ("Cl 1", False, False),  # the cell holds two units: each element's count is 2
        ("Cl 3", False, False),
        ("O 2", False, False),  # not in the formula
        ("Cl 2\n0.50 0.50 0.50\nCl 1\n0.00 0.50 0.50\nCl", False, False),  # Cl is done
    ],
)
def test_a_forced_composition_fixes_each_new_elements_site_count(
    sites: str, grammatical: bool, complete: bool, joined: bool
) -> None:
    """In the site-count form a forced formula decides the elements and each one's count: the formula's count times
    the units the cell holds (two NaCl in the ROOMY cell), counted down as ever."""
    grammar = Grammar.for_formula("NaCl", FormatOptions(site_counts=True, joined_counts=joined), max_atoms=6)
    text = ROOMY + (sites.replace("l ", "l").replace("a ", "a").replace("O ", "O") if joined else sites)
    state = advance(State(), text, grammar)
    assert (state is not None) is grammatical
    assert grammatical is False or can_end(state, grammar) is complete


# ---------------------------------------------------------------------------------------------------------------------
# The minimum distance


def test_far_enough_uses_the_nearest_periodic_image() -> None:
    state = advance(State(), CUBE + "Na\n0.00 0.00 0.00\nCl\n0.00 0.00 ", Grammar())
    # z = 0.10 is 0.40 A above the first atom, 0.13 is 0.52 A, 0.95 is 0.20 A below its image at z = 1
    assert _far_enough(state, np.array([0.10, 0.13, 0.95]), 0.5).tolist() == [False, True, False]
    # in a 150 degree cell (0.45, 0.55, 0) is 1.105 A from the origin itself (a + b is short there);
    # the wrapped difference (0.45, -0.45, 0) alone would say 3.48 A
    oblique = advance(State(), "4.0 4.0 4.0\n90 90 150\nNa\n0.00 0.00 0.00\nCl\n0.45 0.55 ", Grammar())
    assert _far_enough(oblique, np.array([0.0]), 1.10).tolist() == [True]
    assert _far_enough(oblique, np.array([0.0]), 1.11).tolist() == [False]


@functools.cache
def scratch_tokenizer() -> PreTrainedTokenizerBase:
    return train_scratch_tokenizer([CUBE])


@functools.cache
def shipped_tokenizer() -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(DEFAULT_MODEL)


@functools.cache
def tiny_tokenizer() -> PreTrainedTokenizerBase:
    """A tokenizer that can write a lattice, Na and 0.00, and nothing else (X starts Xe, but no token ends it)."""
    tokens = ["<pad>", "<s>", "</s>", "<unk>", "0", "4.0", "14.0", "90", "0.00", "Na", "X", " ", "\n"]
    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\d+(?:\.\d+)?|[A-Z][a-z]?|\s"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def feed(processor: GrammarLogitsProcessor, rows: list[list[int]], bos: int = 1) -> torch.Tensor:
    """Call `processor` as generate would: on the prompt (a BOS), then once per token of `rows`; the last scores."""
    vocab = len(processor.texts)
    ids = torch.full((len(rows), 1), bos)
    out = processor(ids, torch.zeros(len(rows), vocab))
    for step in range(max((len(r) for r in rows), default=0)):
        ids = torch.cat([ids, torch.tensor([[r[step]] for r in rows])], dim=1)
        out = processor(ids, torch.zeros(len(rows), vocab))
    return out


def allowed_after(text: str, grammar: Grammar, tokenizer: PreTrainedTokenizerBase | None = None) -> set[str]:
    """The token texts the processor allows after `text`, fed to it token by token as generate would."""
    tokenizer = tokenizer or scratch_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [grammar], len(tokenizer.get_vocab()))
    out = feed(processor, [tokenizer(text, add_special_tokens=False)["input_ids"]], tokenizer.bos_token_id)
    return {tokenizer.convert_ids_to_tokens(i) for i in torch.isfinite(out[0]).nonzero().flatten().tolist()}


def test_processor_masks_coordinates_that_would_crowd_an_atom() -> None:
    text = CUBE + "Na\n0.00 0.00 0.00\nCl\n0.00 0.00 "
    free = allowed_after(text, Grammar())
    spaced = allowed_after(text, Grammar(min_distance=0.5))
    assert {f"{i / 100:.2f}" for i in range(100)} <= free
    # under 0.5 A from z = 0 or z = 1 is 0.00-0.12 and 0.88-0.99: those 25 values go, and no other token
    assert free - spaced == {f"{i / 100:.2f}" for i in [*range(13), *range(88, 100)]}


def test_processor_counts_a_forced_joined_element_by_the_units_its_own_cell_holds() -> None:
    """Two rows, one processor, one cached mask per case: after "Cl" the count is 2 in the 79.5 A^3 cell (two NaCl)
    and 4 in a 216 A^3 one (216 / 51.66 is 4.2 units), never the other row's."""
    tokenizer = scratch_tokenizer()
    grammar = Grammar.for_formula("NaCl", FormatOptions(site_counts=True, joined_counts=True), max_atoms=10)
    processor = GrammarLogitsProcessor(tokenizer, [grammar, grammar], len(tokenizer.get_vocab()))
    texts = [ROOMY + "Cl", "6.0 6.0 6.0\n90 90 90\nCl"]
    out = feed(processor, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], tokenizer.bos_token_id)
    allowed = [{tokenizer.convert_ids_to_tokens(i) for i in torch.isfinite(row).nonzero().flatten().tolist()}
               for row in out]
    assert allowed == [{"2"}, {"4"}]


def test_processor_counts_a_joined_element_down_from_its_own_rows_last_count() -> None:
    """One processor, two rows at the same place in the same cell: the count after "O" is the one each row's own
    countdown has due, never the other row's cached mask."""
    tokenizer = scratch_tokenizer()
    grammar = Grammar(FormatOptions(site_counts=True, joined_counts=True), max_atoms=6)
    processor = GrammarLogitsProcessor(tokenizer, [grammar, grammar], len(tokenizer.get_vocab()))
    texts = [CUBE + "O3\n0.00 0.00 0.00\nO", CUBE + "O2\n0.00 0.00 0.00\nO"]
    out = feed(processor, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], tokenizer.bos_token_id)
    allowed = [{tokenizer.convert_ids_to_tokens(i) for i in torch.isfinite(row).nonzero().flatten().tolist()}
               for row in out]
    assert allowed == [{"2"}, {"1"}]


def test_processor_bounds_each_rows_last_length_by_its_own_first_two() -> None:
    """Two rows, one processor, a least volume of 152.91 A^3: after 5.6 x 5.6 the third length is at least 4.9 A,
    after 9.0 x 9.0 at least 1.9 A; neither row gets the other's cached mask."""
    tokenizer = scratch_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [FLOORED, FLOORED], len(tokenizer.get_vocab()))
    texts = ["5.6 5.6 ", "9.0 9.0 "]
    out = feed(processor, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts], tokenizer.bos_token_id)
    allowed = [{tokenizer.convert_ids_to_tokens(i) for i in torch.isfinite(row).nonzero().flatten().tolist()}
               for row in out]
    assert "4.9" in allowed[0] and "4.8" not in allowed[0]
    assert "1.9" in allowed[1] and "1.8" not in allowed[1]


def test_processor_lets_a_crowded_atom_be_written_rather_than_cut_off() -> None:
    text = "1.0 1.0 1.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.00 0.00 "
    assert allowed_after(text, Grammar(min_distance=0.6)) == allowed_after(text, Grammar())


def test_digit_by_digit_coordinates_are_checked_as_they_complete() -> None:
    options = FormatOptions(coord_decimals=3)
    text = CUBE + "Na\n0.000 0.000 0.000\nCl\n0.000 0.000 0.12"
    # z = 0.120 ... 0.124 is under 0.5 A from the first atom (4 A * 0.125 = 0.5 A)
    assert allowed_after(text, Grammar(options)) == set("0123456789")
    assert allowed_after(text, Grammar(options, min_distance=0.5)) == set("56789")
    # after "0.1" a single digit does not finish the number (kept), two digits do: 0.110-0.124 go
    before = text[:-1]
    removed = allowed_after(before, Grammar(options)) - allowed_after(before, Grammar(options, min_distance=0.5))
    assert removed == {str(i) for i in range(10, 25)}


# ---------------------------------------------------------------------------------------------------------------------
# The processor's masks


@pytest.mark.parametrize(
    ("text", "grammar", "expected"),
    [
        (CUBE, Grammar(), ELEMENT_SYMBOLS),
        (CUBE, Grammar.for_formula("NaCl"), {"Na", "Cl"}),
        (CUBE + ATOM, Grammar(), {"\n", "</s>"}),
        (CUBE + ATOM, Grammar(max_atoms=1), {"</s>"}),
        (CUBE + ATOM + "\n" + ATOM, Grammar(max_atoms=2), {"</s>"}),  # the same place as after the first atom
        (CUBE + ATOM, Grammar.for_formula("NaCl"), {"\n"}),
        (CUBE + "Na\n0.00 0.00", Grammar(), {" "}),
        (CUBE + "Na 2\n" + ATOM[3:] + "\n", COUNTED, {"Na"}),
        (CUBE + "Na 2\n" + ATOM[3:] + "\nNa ", COUNTED, {"1"}),
        (CUBE + "Na 1\n" + ATOM[3:] + "\nCl ", COUNTED, {str(n) for n in range(1, 6)}),
        (CUBE + "Na 1\n" + ATOM[3:], COUNTED, {"\n", "</s>"}),
    ],
)
def test_processor_allows_what_the_grammar_allows(text: str, grammar: Grammar, expected: set[str]) -> None:
    assert allowed_after(text, grammar, shipped_tokenizer()) == set(expected)


def test_processor_masks_by_the_formula_units_each_rows_cell_may_hold() -> None:
    """Two rows at the same atoms in cells of other sizes: two NaCl fill the small one, the large needs more."""
    tokenizer = shipped_tokenizer()
    grammar = Grammar.for_formula("NaCl")
    atoms = "\n".join(["Na\n0.00 0.00 0.00", "Cl\n0.50 0.50 0.50"] * 2)
    rows = [tokenizer(cell + atoms, add_special_tokens=False)["input_ids"]
            for cell in ("5.0 5.0 5.0\n60 60 60\n", "10.0 10.0 10.0\n90 90 90\n")]
    assert len(rows[0]) == len(rows[1])
    processor = GrammarLogitsProcessor(tokenizer, [grammar, grammar], len(tokenizer.get_vocab()))
    out = feed(processor, rows, tokenizer.bos_token_id)
    allowed = [{tokenizer.convert_ids_to_tokens(i) for i in torch.isfinite(row).nonzero().flatten().tolist()}
               for row in out]
    assert allowed == [{"</s>"}, {"\n"}]


def test_processor_refuses_a_symbol_start_no_token_can_finish() -> None:
    assert allowed_after(CUBE, Grammar(), tiny_tokenizer()) == {"Na"}


# ---------------------------------------------------------------------------------------------------------------------
# Token-text recovery


@pytest.mark.parametrize("token", ["0.25", "0.00", "5.7", "99.9", "90", "120", "0", "7", "Na", "O", " ", "\n"])
def test_token_texts_recovers_what_each_token_writes(token: str) -> None:
    tokenizer = shipped_tokenizer()
    assert token_texts(tokenizer)[tokenizer.get_vocab()[token]] == token


@pytest.mark.parametrize("token", ["<pad>", "<s>", "</s>", "<unk>", "[MASK]"])
def test_token_texts_gives_special_tokens_none(token: str) -> None:
    tokenizer = shipped_tokenizer()
    texts = token_texts(tokenizer)
    assert len(texts) == max(tokenizer.get_vocab().values()) + 1
    assert texts[tokenizer.get_vocab()[token]] is None


# ---------------------------------------------------------------------------------------------------------------------
# The processor's lifetime: one generate call


@pytest.mark.parametrize(
    ("lengths", "batch", "message"),
    [
        ([1, 2, 1], 2, "build a fresh one"),  # reused for a second generation
        ([1, 2, 2], 2, "build a fresh one"),  # called twice on one step
        ([1, 3], 2, "build a fresh one"),  # a step skipped
        ([1], 3, "built for 2 rows was called with 3"),  # beams or several sequences per prompt
    ],
)
def test_processor_is_for_one_generation(lengths: list[int], batch: int, message: str) -> None:
    tokenizer = scratch_tokenizer()
    vocab = len(tokenizer.get_vocab())
    processor = GrammarLogitsProcessor(tokenizer, [Grammar(), Grammar()], vocab)
    token = tokenizer.convert_tokens_to_ids("4.0")
    with pytest.raises(RuntimeError, match=message):
        for length in lengths:
            ids = torch.tensor([[tokenizer.bos_token_id] + [token] * (length - 1)] * batch)
            processor(ids, torch.zeros(batch, vocab))


# ---------------------------------------------------------------------------------------------------------------------
# Dead ends and rows that leave the grammar


# With only Na and at most 2 atoms, NaCl's second atom must be Cl: the tiny tokenizer has no token for it.
NACL_IN_TWO = Grammar.for_formula("NaCl", max_atoms=2)
STUCK = CUBE + ATOM + "\n"


def test_a_dead_end_allows_only_the_end_and_says_why() -> None:
    tokenizer = tiny_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [NACL_IN_TWO, Grammar()], len(tokenizer.get_vocab()))
    ids = tokenizer(STUCK, add_special_tokens=False)["input_ids"]
    out = feed(processor, [ids, ids])
    assert processor.dead_ends == {
        0: "constrained decoding reached a dead end after '4.0 4.0 4.0\\n90 90 90\\nNa\\n0.00 0.00 0.00\\n'"
        " (no token continues the grammar)"
    }
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [tokenizer.eos_token_id]
    assert torch.isfinite(out[1]).nonzero().flatten().tolist() == [tokenizer.convert_tokens_to_ids("Na")]


def test_a_dead_end_keeps_its_reason_through_the_end_token() -> None:
    tokenizer = tiny_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [NACL_IN_TWO], len(tokenizer.get_vocab()))
    ids = tokenizer(STUCK, add_special_tokens=False)["input_ids"]
    feed(processor, [ids + [tokenizer.eos_token_id, tokenizer.pad_token_id]])
    assert processor.states == [None]
    assert list(processor.dead_ends) == [0] and "dead end after" in processor.dead_ends[0]


def test_a_dead_end_quotes_the_last_40_characters() -> None:
    tokenizer = tiny_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [NACL_IN_TWO], len(tokenizer.get_vocab()))
    text = "14.0 14.0 4.0\n90 90 90\n" + ATOM + "\n"  # 41 characters
    feed(processor, [tokenizer(text, add_special_tokens=False)["input_ids"]])
    assert processor.dead_ends[0] == (
        "constrained decoding reached a dead end after '4.0 14.0 4.0\\n90 90 90\\nNa\\n0.00 0.00 0.00\\n'"
        " (no token continues the grammar)"
    )


def test_a_legitimate_end_is_no_dead_end() -> None:
    tokenizer = scratch_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [Grammar()], len(tokenizer.get_vocab()))
    ids = tokenizer(CUBE + ATOM, add_special_tokens=False)["input_ids"]
    feed(processor, [ids + [tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.pad_token_id]])
    assert processor.states == [None]
    assert processor.dead_ends == {}


@pytest.mark.parametrize(
    ("last", "reason"),
    [
        ("90", "sampled '90', which leaves the grammar, after '4.0 4.0 4.0\\n90 90 90\\n'"),
        ("</s>", "sampled special token 2, which leaves the grammar, after '4.0 4.0 4.0\\n90 90 90\\n'"),
    ],
)
def test_a_token_that_leaves_the_grammar_is_recorded(last: str, reason: str) -> None:
    tokenizer = scratch_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [Grammar(), Grammar()], len(tokenizer.get_vocab()))
    ids = tokenizer(CUBE, add_special_tokens=False)["input_ids"]
    out = feed(
        processor, [ids + [tokenizer.convert_tokens_to_ids(last)], ids + [tokenizer.convert_tokens_to_ids("Na")]]
    )
    assert processor.dead_ends == {0: reason}
    assert processor.states[0] is None and processor.states[1] is not None
    assert torch.isfinite(out[0]).nonzero().flatten().tolist() == [tokenizer.eos_token_id]


@pytest.mark.parametrize(
    ("formula", "message"),
    [
        ("Na0.5Cl", r"formula Na0.5Cl has fractional amounts: .* \(write it as NaCl2, or a multiple of it\)"),
        ("Fe1.5O2", r"formula Fe1.5O2 has fractional amounts: .* \(write it as Fe3O4, or a multiple of it\)"),
        ("Na0", "formula 'Na0' has no atoms"),
    ],
)
def test_for_formula_refuses_what_no_whole_cell_can_hold(formula: str, message: str) -> None:
    """A fractional formula is refused, not rounded (Na0.5Cl rounded to a Cl-only unit once divided by zero)."""
    with pytest.raises(ValueError, match=message):
        Grammar.for_formula(formula)


def test_an_asymmetric_unit_starts_with_its_space_group_unless_the_prompt_wrote_it() -> None:
    grammar = Grammar(FormatOptions(asymmetric_unit=True))
    body = CUBE + "Na\n0.00 0.00 0.00\nCl\n0.00 0.00 0.50"
    assert can_end(advance(grammar.start, "225\n" + body, grammar), grammar)
    for bad in ("0", "07", "231", "2250", "\n", "22 5"):  # no group 0, no leading zero, none past 230
        assert advance(grammar.start, bad, grammar) is None, bad
    assert advance(grammar.start, body, grammar) is None  # a lengths line where the group belongs
    prompted = Grammar(FormatOptions(asymmetric_unit=True), spacegroup=225)  # the sampler wrote "225\n" already
    assert prompted.start == State(group=225) and can_end(advance(prompted.start, body, prompted), prompted)
    assert Grammar(spacegroup=225).start == State()  # the other forms have no group line
    with pytest.raises(ValueError, match="only in the site-count form"):
        Grammar.for_formula("NaCl", FormatOptions(asymmetric_unit=True))


def test_the_prefix_tree_walk_allows_exactly_the_tokens_a_token_by_token_check_allows() -> None:
    """The processor's masks (the token texts walked as a prefix tree) equal a check of every token's text from each
    state of a real crystal's text, in the site-count cell form and the counted asymmetric-unit form, through
    lattice, element, count and coordinate lines; X (a start of Xe that no token ends) is refused."""
    tokenizer = shipped_tokenizer()
    processor = GrammarLogitsProcessor(tokenizer, [], len(tokenizer.get_vocab()))

    def every_token(state: State, grammar: Grammar) -> list[int]:
        allowed = []
        for token, text in enumerate(processor.texts):
            after = advance(state, text, grammar) if text else None
            if after is not None and not (after.section is Section.ELEMENT and after.partial and not any(
                    other and advance(after, other, grammar) is not None for other in processor.texts)):
                allowed.append(token)
        return allowed

    cell = FormatOptions(site_counts=True, joined_counts=True)
    counted = FormatOptions(asymmetric_unit=True, site_counts=True, joined_counts=True)
    cases = [(Grammar(cell, 8, min_volume=40.0), "5.6 5.6 5.6\n90 90 90\nNa4\n0.00 0.00 0.00\nNa3\n0.50 0.50 0.0"),
             (Grammar(counted, 8, spacegroup=225), "5.6 5.6 5.6\n90 90 90\nNa12\n0.00 0.00 0.00\nNa8\n0.25 0.2")]
    for grammar, text in cases:
        state, steps = grammar.start, 0
        for char in text:
            assert sorted(processor._allowed_tokens(state, grammar)) == every_token(state, grammar), (text, state)
            state, steps = _step(state, char, grammar), steps + 1
        assert state is not None and steps == len(text)
    tiny = GrammarLogitsProcessor(tiny_tokenizer(), [], 13)
    assert 10 not in set(tiny._allowed_tokens(advance(State(), "4.0 4.0 4.0\n90 90 90\n", Grammar()), Grammar()))
