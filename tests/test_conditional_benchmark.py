"""benchmarks/conditional.py: the seeded prompt draw and the per-crystal-system grouping, without a model."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import conditional  # noqa: E402

from crystext.geometry import crystal_system  # noqa: E402

#: Hand-made test rows in the MP-20 layout (only the columns prompts read).
FORMULAS = ("NaCl", "GaTe", "Fe2O3", "Rb(GePt)4", "Si", "LiFePO4", "MgO", "TiO2", "ZnS", "CsCl", "CaTiO3", "CuO",
            "Bi2Se3")
SPACEGROUPS = (225, 194, 167, 79, 227, 62, 225, 136, 216, 221, 62, 15, 166)


@pytest.fixture
def test_csv(tmp_path: Path) -> pd.DataFrame:
    """Thirteen rows written to a CSV and read back as the script reads the test split."""
    frame = pd.DataFrame({"material_id": [f"mp-{i}" for i in range(len(FORMULAS))], "pretty_formula": FORMULAS,
                          "spacegroup.number": SPACEGROUPS, "e_above_hull": [0.0, 0.01, 0.0, 0.05] * 3 + [0.0],
                          "band_gap": [1.0] * len(FORMULAS)})
    path = tmp_path / "test.csv"
    frame.to_csv(path)
    return pd.read_csv(path, keep_default_na=False)


def test_prompt_draw_is_seeded_disjoint_and_states_each_kinds_attributes(test_csv: pd.DataFrame) -> None:
    first = conditional.draw_prompts(test_csv, 2)
    assert first == conditional.draw_prompts(test_csv, 2)
    assert list(first) == ["formula", "spacegroup", "formula_spacegroup", "stability"]
    rows = [p.row for prompts in first.values() for p in prompts]
    assert len(rows) == len(set(rows)) == 8
    for kind, prompts in first.items():
        assert len(prompts) == 2
        for p in prompts:
            stated = p.attributes.to_dict()
            assert set(stated) == set(conditional.KINDS[kind])
            row = test_csv.iloc[p.row]
            assert stated.get("formula", row["pretty_formula"]) == row["pretty_formula"]
            assert stated.get("spacegroup", row["spacegroup.number"]) == row["spacegroup.number"]
            assert stated.get("e_above_hull", row["e_above_hull"]) == row["e_above_hull"]
    # A larger draw keeps the smaller one's prompts.
    larger = conditional.draw_prompts(test_csv, 3)
    assert all(larger[k][:2] == first[k] for k in first)
    with pytest.raises(ValueError, match="test rows"):
        conditional.draw_prompts(test_csv, 4)


def test_crystal_systems_of_hand_picked_space_groups() -> None:
    expected = {1: "triclinic", 2: "triclinic", 3: "monoclinic", 15: "monoclinic", 16: "orthorhombic",
                62: "orthorhombic", 75: "tetragonal", 142: "tetragonal", 143: "trigonal", 167: "trigonal",
                168: "hexagonal", 186: "hexagonal", 194: "hexagonal", 195: "cubic", 225: "cubic", 230: "cubic"}
    assert {g: crystal_system(g) for g in expected} == expected
    for bad in (0, 231):
        with pytest.raises(ValueError):
            crystal_system(bad)


def test_accuracy_and_base_rate_by_crystal_system() -> None:
    # Background attempts (no group asked): two wrote 225, one 2, one did not read (0).
    table = conditional.by_crystal_system([2, 62, 225, 225, 186], [True, False, True, False, False],
                                          background=[225, 225, 2, 0])
    assert list(table) == ["triclinic", "orthorhombic", "hexagonal", "cubic"]
    assert table["triclinic"] == {"n": 1, "accuracy": 1.0, "base_rate": 0.25}
    assert table["orthorhombic"] == {"n": 1, "accuracy": 0.0, "base_rate": 0.0}
    assert table["hexagonal"] == {"n": 1, "accuracy": 0.0, "base_rate": 0.0}
    assert table["cubic"] == {"n": 2, "accuracy": 0.5, "base_rate": 0.5}


def test_formula_outcome_says_how_a_formula_is_missed() -> None:
    assert conditional.formula_outcome("Fe2O3", "Fe4O6") == "formula"
    assert conditional.formula_outcome("Fe2O3", "FeO") == "counts"
    assert conditional.formula_outcome("LiFePO4", "LiFeO2") == "missing"
    assert conditional.formula_outcome("Fe2O3", "FeO2Li") == "foreign"
    assert conditional.formula_outcome("Fe2O3", "CoO") == "foreign"
    assert conditional.formula_outcome("Fe2O3", "") == "unreadable"


def test_volume_ratio_compares_each_attempt_with_its_prompts_crystal() -> None:
    """Two prompts, two attempts each: attempt j asks prompt j // 2; unreadable attempts are left out."""
    from pymatgen.core import Lattice, Structure

    cubes = [Structure(Lattice.cubic(a), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]) for a in (4.0, 5.0)]
    test = pd.DataFrame({"cif": [c.to(fmt="cif") for c in cubes]})  # 32 and 62.5 A^3 per atom
    prompts = [conditional.Prompt(row, conditional.Attributes(formula="CsCl")) for row in (1, 0)]
    per_sample = pd.DataFrame({"id": ["s0000000", "s0000001", "s0000002", "s0000003"],
                               "parsed": ["True", "False", "True", "True"],
                               "volume": ["125.0", "", "64.0", "128.0"], "n_atoms": ["2", "", "4", "2"]})
    # ratios: 62.5 / 62.5 = 1 (prompt 0, the 5 A cube); 16 / 32 = 0.5 and 64 / 32 = 2 (prompt 1, the 4 A cube)
    assert conditional.volume_ratio(per_sample, prompts, test, per_prompt=2) == pytest.approx(1.0)
    assert conditional.volume_ratio(per_sample.iloc[2:], prompts, test, per_prompt=2) == pytest.approx(1.25)
    assert conditional.volume_ratio(per_sample.iloc[1:2], prompts, test, per_prompt=2) is None  # none readable


def test_outcomes_by_units_groups_attempts_by_the_prompted_cell() -> None:
    """CsCl from a one-unit cell and from a two-unit supercell; Fe2O3 (counts not all 1) from a one-unit cell."""
    from pymatgen.core import Lattice, Structure

    one = Structure(Lattice.cubic(4.0), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    two = one.copy()
    two.make_supercell([2, 1, 1])
    oxide = Structure(Lattice.cubic(5.0), ["Fe", "Fe", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    test = pd.DataFrame({"cif": [s.to(fmt="cif") for s in (one, two, oxide)]})
    formula = [conditional.Prompt(0, conditional.Attributes(formula="CsCl")),
               conditional.Prompt(2, conditional.Attributes(formula="Fe2O3"))]
    both = [conditional.Prompt(1, conditional.Attributes(formula="CsCl", spacegroup=221))]
    per_formula = pd.DataFrame({"id": ["s0000000", "s0000001"], "parsed": ["True", "True"],
                                "formula": ["Cs2Cl2", "FeO"]})
    per_both = pd.DataFrame({"id": ["s0000000"], "parsed": ["False"], "formula": [""]})
    groups = conditional.outcomes_by_units([per_formula, per_both], [formula, both], test, per_prompt=1)
    assert groups["1 formula unit"] == {"n": 2, "formula": 0.5, "counts": 0.5, "missing": 0.0, "foreign": 0.0,
                                        "unreadable": 0.0}
    assert groups["2 formula units"]["n"] == 1 and groups["2 formula units"]["unreadable"] == 1.0
    assert "3 or more" not in groups
    assert groups["counts all 1"] == {"n": 2, "formula": 0.5, "counts": 0.0, "missing": 0.0, "foreign": 0.0,
                                      "unreadable": 0.5}


def test_formulas_stated_as_cells_count_the_prompted_crystals_atoms() -> None:
    """For a model trained with `--cell-formula` the benchmark states the prompted crystal's whole cell: rock salt's
    conventional cell asks for Na4Cl4; prompts without a formula are untouched."""
    from pymatgen.core import Lattice, Structure

    from crystext.prompts import Attributes

    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    test = pd.DataFrame({"pretty_formula": ["NaCl"], "cif": [rock_salt.to(fmt="cif")]})
    prompts = {"formula": [conditional.Prompt(0, Attributes(formula="NaCl", spacegroup=225))],
               "spacegroup": [conditional.Prompt(0, Attributes(spacegroup=225))]}
    cells = conditional.stated_as_cells(prompts, test)
    assert cells["formula"] == [conditional.Prompt(0, Attributes(formula="Na4Cl4", spacegroup=225))]
    assert cells["spacegroup"] == prompts["spacegroup"]


def test_a_model_of_both_forms_is_prompted_with_the_cell_it_will_write() -> None:
    """A model that answers a stated group with an asymmetric unit (`asymmetric_when_grouped`) is asked for the
    conventional cell there (Na4Cl4 with group 225), and for the cell as read where no group is stated (the 2-atom
    primitive rock salt: NaCl)."""
    from pymatgen.core import Lattice, Structure

    from crystext.prompts import Attributes
    from crystext.textformat import FormatOptions

    primitive = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"],
                                          [[0, 0, 0], [0.5, 0.5, 0.5]]).get_primitive_structure()
    test = pd.DataFrame({"pretty_formula": ["NaCl"], "cif": [primitive.to(fmt="cif")]})
    prompts = {"formula": [conditional.Prompt(0, Attributes(formula="NaCl"))],
               "formula_spacegroup": [conditional.Prompt(0, Attributes(formula="NaCl", spacegroup=225))]}
    both = FormatOptions(site_counts=True, asymmetric_when_grouped=True)
    cells = conditional.stated_as_cells(prompts, test, both)
    assert cells["formula"] == [conditional.Prompt(0, Attributes(formula="NaCl"))]
    assert cells["formula_spacegroup"] == [conditional.Prompt(0, Attributes(formula="Na4Cl4", spacegroup=225))]
