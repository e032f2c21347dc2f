"""Prompts: attribute prompts stated exactly and sampled reproducibly, and infill of whole element lines."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure
from transformers import AutoTokenizer

from crystext.geometry import wyckoff_multiplicities
from crystext.model import DEFAULT_MODEL_DIR
from crystext.prompts import Attributes, cell_formula, infill_example, infill_prompt, plain_formula
from crystext.textformat import CrystalText, FormatOptions


def test_attribute_prompts_are_exact_and_sampled_reproducibly() -> None:
    row = {"pretty_formula": "GaTe", "spacegroup.number": 194, "e_above_hull": 0.0123456, "band_gap": float("nan"),
           "formation_energy_per_atom": -0.5750923}
    attributes = Attributes.from_properties(row)
    assert attributes == Attributes("GaTe", 194, 0.0123456, -0.5750923, None)
    assert attributes.to_prompt() == (
        "bulk crystal. formula GaTe. space group 194. energy above hull 0.0123 ev/atom. formation energy -0.5751 "
        "ev/atom. lattice lengths and angles, then each element and its fractional coordinates:\n"
    )
    assert Attributes().to_prompt() == (
        "bulk crystal. lattice lengths and angles, then each element and its fractional coordinates:\n"
    )
    subsets = [attributes.subset(np.random.default_rng(s)) for s in range(40)]
    assert subsets[:5] == [attributes.subset(np.random.default_rng(s)) for s in range(5)]
    assert {len(s.to_dict()) for s in subsets} == {0, 1, 2, 3, 4}
    assert all(s.band_gap is None for s in subsets)


def test_a_cell_formula_counts_every_atom_in_the_order_the_text_lists_elements() -> None:
    sites = "Zn Ti O Ti O O Zn O O O".split()  # two TiZnO3 units, Zn listed first
    crystal = CrystalText.from_str("5.0 5.0 5.0\n90 90 90\n" + "\n".join(f"{el}\n0.{i}0 0.00 0.00"
                                                                        for i, el in enumerate(sites)))
    assert cell_formula(crystal) == "Zn2Ti2O6"
    assert Attributes(formula=cell_formula(crystal)).to_prompt().startswith("bulk crystal. formula Zn2Ti2O6. lattice")
    assert cell_formula(CrystalText.from_str("5.0 5.0 5.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50")) \
        == "NaCl"


def test_a_typed_formula_is_put_in_the_order_crystal_texts_list_elements(shared_data) -> None:
    """By electronegativity, as MP-20's sites are listed (Li 0.98 < Si 1.90 < N 3.04 < O 3.44; He has none: last)."""
    assert Attributes(formula="SiLiO2N", spacegroup=62).in_site_order() == Attributes("LiSiNO2", 62)
    assert Attributes(formula="Zn2Ti2O6").in_site_order().formula == "Ti2Zn2O6"
    assert Attributes(formula="HeLi0.5").in_site_order().formula == "Li0.5He"
    assert Attributes(spacegroup=225).in_site_order() == Attributes(spacegroup=225)
    for cif in pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=200)["cif"]:
        formula = cell_formula(CrystalText.from_structure(Structure.from_str(cif, fmt="cif")))
        assert Attributes(formula=formula).in_site_order().formula == formula


@pytest.mark.parametrize("group, sizes", [
    (1, (1,)), (62, (4, 8)), (186, (2, 6, 12)), (199, (8, 12, 24)), (166, (3, 6, 9, 18, 36)),
    (225, (4, 8, 24, 32, 48, 96, 192)),
])
def test_a_groups_orbit_sizes_are_its_wyckoff_multiplicities(group: int, sizes: tuple[int, ...]) -> None:
    """As the International Tables list them for the conventional cell (R-3m on hexagonal axes; I2_13's 12b is no
    multiple of its smallest orbit, 8a)."""
    assert wyckoff_multiplicities(group) == sizes


def test_a_formula_stated_with_a_group_is_scaled_to_a_cell_the_group_holds(shared_data) -> None:
    """The fewest formula units whose counts the group's orbits can add up to; a formula already such a cell's, or
    stated without a group, is kept as typed; one no cell holds within the cap is refused, naming both."""
    for formula, group, cell in (("NaCl", 225, "Na4Cl4"), ("GaN", 186, "Ga2N2"), ("LiFePO4", 62, "Li4Fe4P4O16"),
                                 ("SiO2", 227, "Si8O16"), ("Li0.5FePO4", 62, "Li4Fe8P8O32"), ("CsCl", 221, "CsCl"),
                                 ("Na8Cl8", 225, "Na8Cl8"), ("NaCl", 1, "NaCl")):
        assert Attributes(formula, group).in_conventional_cell(52) == Attributes(cell, group)
    assert Attributes("NaCl").in_conventional_cell(52) == Attributes("NaCl")
    with pytest.raises(ValueError, match=r"^no cell of space group 225 with at most 20 atoms holds formula LiFePO4 "
                                         r"\(its orbits hold 4, 8, 24, 32, 48, 96, 192 atoms\)$"):
        Attributes("LiFePO4", 225).in_conventional_cell(5)
    for cif in pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=100)["cif"]:  # real cells are kept as they are
        crystal = CrystalText.from_structure(Structure.from_str(cif, fmt="cif"), asymmetric_unit=True)
        stated = Attributes(cell_formula(crystal), crystal.spacegroup)
        assert stated.in_conventional_cell(20) == stated


def test_formulas_are_stated_without_brackets_in_the_crystal_order() -> None:
    assert Attributes(formula="RbAl(SO4)2").to_prompt().startswith("bulk crystal. formula RbAlS2O8. lattice")
    assert plain_formula("Li3(NiO2)4") == "Li3Ni4O8" and plain_formula("LiFePO4") == "LiFePO4"
    assert plain_formula("Li0.5CoO2") == "Li0.5CoO2"
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    tokens = tokenizer.tokenize(Attributes(formula="Y(GaCo)6").to_prompt())
    assert tokens[tokens.index("formula") + 2:][:5] == ["Y", "Ga", "6", "Co", "6"]
    assert tokenizer.unk_token not in tokens


def test_infill_masks_whole_element_lines_only() -> None:
    crystal = CrystalText.from_str("5.6 5.6 5.6\n90 90 90\nC\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\nC\n0.25 0.25 0.25")
    prompt = infill_prompt(crystal, "C", FormatOptions())
    assert prompt == (
        "bulk crystal with one element written as [MASK]:\n5.6 5.6 5.6\n90 90 90\n[MASK]\n0.00 0.00 0.00\nCl\n"
        "0.50 0.50 0.50\n[MASK]\n0.25 0.25 0.25\nelement for [MASK]:"
    )
    _, answer = infill_example(crystal, np.random.default_rng(0), FormatOptions())
    assert answer in (" C", " Cl")
    with pytest.raises(ValueError, match="element Fe is not in the crystal"):
        infill_prompt(crystal, "Fe", FormatOptions())
    counted = infill_prompt(crystal, "C", FormatOptions(site_counts=True))
    assert "\n[MASK] 2\n0.00 0.00 0.00\n[MASK] 1\n0.25 0.25 0.25\nCl 1\n0.50 0.50 0.50\n" in counted
    joined = infill_prompt(crystal, "C", FormatOptions(site_counts=True, joined_counts=True))
    assert "\n[MASK]2\n0.00 0.00 0.00\n[MASK]1\n0.25 0.25 0.25\nCl1\n0.50 0.50 0.50\n" in joined


@pytest.mark.parametrize(
    ("attributes", "problem"),
    [
        (Attributes(formula="LiFePO4", spacegroup=62), None),
        (Attributes(formula="Li(FePO4)2"), None),
        (Attributes(formula="Zz3O"), "formula 'Zz3O' has an unknown element 'Zz'"),
        (Attributes(formula="lifepo4"), "'lifepo4' is not a chemical formula (e.g. LiFePO4)"),
        (Attributes(spacegroup=230), None),
        (Attributes(spacegroup=231), "space group 231 does not exist (1-230)"),
        (Attributes(spacegroup=0), "space group 0 does not exist (1-230)"),
    ],
)
def test_attributes_no_crystal_can_meet_say_why(attributes: Attributes, problem: str | None) -> None:
    assert attributes.problem() == problem


def test_a_structure_meets_the_formula_and_space_group_it_has_and_says_what_it_wrote_otherwise() -> None:
    """Rock salt (conventional cell, 4 NaCl) is NaCl in Fm-3m (225); the CsCl arrangement of NaCl is Pm-3m (221)."""
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    cesium_chloride = Structure(Lattice.cubic(3.3), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert len(rock_salt) == 8
    assert Attributes(formula="NaCl", spacegroup=225, band_gap=9.9).unmet(rock_salt) == ""
    assert Attributes(formula="Na4Cl4").unmet(rock_salt) == ""  # the reduced formula is what counts
    assert Attributes(formula="NaCl", spacegroup=225).unmet(cesium_chloride) == "space group 221, asked 225"
    assert Attributes(formula="NaCl3", spacegroup=221).unmet(rock_salt) == (
        "formula NaCl, asked NaCl3; space group 225, asked 221")


def test_infill_masks_element_lines_after_an_asymmetric_units_space_group() -> None:
    crystal = CrystalText.from_str("225\n5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.00 0.00 0.50")
    prompt = infill_prompt(crystal, "Cl", FormatOptions(asymmetric_unit=True))
    assert prompt.split("\n")[1:8] == ["225", "5.6 5.6 5.6", "90 90 90", "Na", "0.00 0.00 0.00", "[MASK]",
                                       "0.00 0.00 0.50"]
