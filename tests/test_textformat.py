"""The crystal text format: exact text, round trips on real crystals, augmentation, and every kind of bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure

from crystext.data import read_csv, read_split
from crystext.prompts import cell_formula
from crystext.textformat import CrystalText, CrystalTextError, FormatOptions, augment, decode, encode

NACL = "5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"


def gate() -> Structure:
    """GaTe, mp-10009, the first row of the MP-20 test split (hexagonal, 8 sites)."""
    lattice = Lattice.from_parameters(4.13459945, 4.13459945, 18.42557, 90, 90, 119.99999121)
    coords = [
        [0.333333, 0.666667, 0.182959],
        [0.666667, 0.333333, 0.682959],
        [0.666667, 0.333333, 0.817041],
        [0.333333, 0.666667, 0.317041],
        [0.333333, 0.666667, 0.886204],
        [0.666667, 0.333333, 0.386204],
        [0.666667, 0.333333, 0.113796],
        [0.333333, 0.666667, 0.613796],
    ]
    return Structure(lattice, ["Ga"] * 4 + ["Te"] * 4, coords)


def test_encode_writes_the_papers_layout() -> None:
    text = encode(gate())
    lines = text.split("\n")
    assert lines[:4] == ["4.1 4.1 18.4", "90 90 120", "Ga", "0.33 0.67 0.18"]
    assert lines[-2:] == ["Te", "0.33 0.67 0.61"]
    assert len(lines) == 2 + 2 * 8


def test_precision_is_configurable() -> None:
    text = encode(gate(), FormatOptions(length_decimals=3, angle_decimals=1, coord_decimals=4))
    assert text.split("\n")[:4] == ["4.135 4.135 18.426", "90.0 90.0 120.0", "Ga", "0.3333 0.6667 0.1830"]


def test_site_counts_group_each_element_and_count_its_atoms_down() -> None:
    interleaved = Structure(Lattice.cubic(4.1), ["O", "Fe", "O", "Fe", "O"],
                            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5], [0, 0, 0.5]])
    lines = encode(interleaved, FormatOptions(site_counts=True)).split("\n")
    assert lines[2::2] == ["O 3", "O 2", "O 1", "Fe 2", "Fe 1"]
    assert lines[3::2] == ["0.00 0.00 0.00", "0.50 0.00 0.00", "0.00 0.00 0.50", "0.50 0.50 0.50", "0.00 0.50 0.50"]
    back = decode("\n".join(lines))
    assert [site.specie.symbol for site in back] == ["O", "O", "O", "Fe", "Fe"]
    assert StructureMatcher().fit(back, interleaved)


def test_joined_counts_write_each_count_against_its_symbol_as_a_formula_does() -> None:
    interleaved = Structure(Lattice.cubic(4.1), ["O", "Fe", "O", "Fe", "O"],
                            [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0.5], [0, 0, 0.5]])
    text = encode(interleaved, FormatOptions(site_counts=True, joined_counts=True))
    assert text.split("\n")[2::2] == ["O3", "O2", "O1", "Fe2", "Fe1"]
    assert [site.specie.symbol for site in decode(text)] == ["O", "O", "O", "Fe", "Fe"]
    with pytest.raises(ValueError, match="joined_counts needs site_counts"):
        FormatOptions(joined_counts=True)


def test_a_count_that_is_no_whole_number_is_an_error_naming_its_line() -> None:
    with pytest.raises(CrystalTextError, match="line 3: expected an element symbol, got 'Na x'"):
        CrystalText.from_str("5.6 5.6 5.6\n90 90 90\nNa x\n0.00 0.00 0.00")
    with pytest.raises(CrystalTextError, match="line 3: expected an element symbol, got 'Na 0'"):
        CrystalText.from_str("5.6 5.6 5.6\n90 90 90\nNa 0\n0.00 0.00 0.00")


def test_coordinates_are_wrapped_after_rounding() -> None:
    structure = Structure(Lattice.cubic(3.0), ["Fe", "Fe"], [[0.999, -0.25, 1.5], [0.004, 0.5, 0.996]])
    assert encode(structure).split("\n")[3::2] == ["0.00 0.75 0.50", "0.00 0.50 0.00"]


def test_decode_reads_values_back() -> None:
    structure = decode(NACL)
    assert structure.lattice.abc == pytest.approx((5.6, 5.6, 5.6))
    assert structure.lattice.angles == pytest.approx((90, 90, 90))
    assert [site.specie.symbol for site in structure] == ["Na", "Cl"]
    assert structure.frac_coords[1] == pytest.approx([0.5, 0.5, 0.5])


def test_decode_ignores_blank_lines_and_trailing_junk() -> None:
    messy = "\n\n" + NACL.replace("\nNa", "\n\n  Na  ") + "\n\nThe material is stable.\n1 2\n<eos>"
    assert CrystalText.from_str(messy) == CrystalText.from_str(NACL)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty text: expected the lattice lengths"),
        ("  \n\n ", "empty text: expected the lattice lengths"),
        ("4.1 4.1\n90 90 90\nNa\n0 0 0", "line 1: lattice lengths line has 2 values, expected 3: '4.1 4.1'"),
        ("4.1 4.1 x\n90 90 90\nNa\n0 0 0", "line 1: bad number 'x' in the lattice lengths"),
        ("4.1 4.1 4.1", "line 1: missing the lattice angles line after the lengths"),
        ("0.0 4.1 4.1\n90 90 90\nNa\n0 0 0", "line 1: non-positive lattice length 0"),
        ("-4 4 4\n90 90 90\nNa\n0 0 0", "line 1: non-positive lattice length -4"),
        ("4 4 4\n90 90 200\nNa\n0 0 0", "line 2: lattice angles 90 90 200 must each lie strictly between 0 and 180"),
        ("4 4 4\n120 120 120\nNa\n0 0 0",
         "line 2: lattice angles 120 120 120 give no valid lattice (zero or imaginary volume)"),
        ("4 4 4\n90 90 90", "no atoms: expected element and coordinates lines after the lattice angles"),
        ("4 4 4\n90 90 90\nXx\n0 0 0", 'line 3: unknown element "Xx"'),
        ("4 4 4\n90 90 90\nhello\n0 0 0", "line 3: expected an element symbol, got 'hello'"),
        ("4 4 4\n90 90 90\nNa\n0.1 0.2", "line 4: fractional coordinates line has 2 values, expected 3: '0.1 0.2'"),
        ("4 4 4\n90 90 90\nNa\n0.1 nan 0.2", "line 4: bad number 'nan' in the fractional coordinates"),
        ("4 4 4\n90 90 90\nNa\n0.1 inf 0.2", "line 4: bad number 'inf' in the fractional coordinates"),
        ("4 4 4\n90 90 90\nNa", "line 3: element Na has no coordinates line after it"),
        ("4 4 4\n90 90 90\nNa\n0 0 0\nCl", "line 5: element Cl has no coordinates line after it"),
        (
            "4 4 4\n90 90 90\nNa\n0 0 0\nCl 0.5 0.5 0.5\nK\n0 0 0.5",
            "line 5: expected an element symbol, got 'Cl 0.5 0.5 0.5'",
        ),
        ("\n\n4 4 4\n\n90 90 90\n\nNa\n\n1e-3 0 0", "line 9: bad number '1e-3' in the fractional coordinates"),
    ],
)
def test_malformed_text_raises_one_error_type_saying_what_and_where(text: str, message: str) -> None:
    with pytest.raises(CrystalTextError) as caught:
        decode(text)
    assert str(caught.value) == message


def test_random_corruptions_only_ever_raise_crystal_text_errors() -> None:
    rng = np.random.default_rng(0)
    base = encode(gate())
    alphabet = list("0123456789. \n-GaTeXx")
    for _ in range(3000):
        chars = list(base)
        for _ in range(rng.integers(1, 4)):
            position = int(rng.integers(len(chars) + 1))
            action = rng.integers(3)
            if action == 0:
                del chars[position : position + 1]
            elif action == 1:
                chars.insert(position, str(rng.choice(alphabet)))
            else:
                chars = chars[:position]
        try:
            decode("".join(chars))
        except CrystalTextError:
            pass


def test_encode_rejects_what_the_format_cannot_hold() -> None:
    disordered = Structure(Lattice.cubic(3.6), [{"Fe": 0.5, "Ni": 0.5}], [[0, 0, 0]])
    with pytest.raises(CrystalTextError, match=r"site 1 is disordered \(Fe0.5 Ni0.5\)"):
        encode(disordered)
    broken = Structure(Lattice.cubic(3.0), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    broken.replace(1, "Fe", [np.nan, 0.5, 0.5])
    with pytest.raises(CrystalTextError, match="site 2 has coordinates that are not finite numbers"):
        encode(broken)


def test_augment_is_seeded_and_keeps_the_crystal() -> None:
    crystal = CrystalText.from_structure(gate())
    first = augment(crystal, np.random.default_rng(7), translate=True, permute=True)
    again = augment(crystal, np.random.default_rng(7), translate=True, permute=True)
    other = augment(crystal, np.random.default_rng(8), translate=True, permute=True)
    assert first == again
    assert first != other
    assert sorted(first.species) == sorted(crystal.species)
    assert all(0 <= x < 1 for xyz in first.frac_coords for x in xyz)
    assert StructureMatcher().fit(first.to_structure(), gate())
    # Translation alone keeps the order of sites and shifts every site by the same vector.
    shifted = augment(crystal, np.random.default_rng(7))
    assert shifted.species == crystal.species
    delta = (np.array(shifted.frac_coords) - np.array(crystal.frac_coords)) % 1.0
    assert np.allclose(delta, delta[0])


@pytest.mark.parametrize(("dataset", "rows"), [("mp_20", 150), ("perov_5", 100), ("carbon_24", 100)])
def test_real_crystals_survive_the_round_trip(shared_data, head_csv, tmp_path, dataset: str, rows: int) -> None:
    records = read_csv(head_csv(shared_data / dataset / "test.csv", rows, tmp_path / "head.csv")).records
    assert len(records) == rows
    matcher = StructureMatcher()
    matched = sum(matcher.fit(r.structure, decode(encode(r.structure))) for r in records)
    assert matched / rows >= 0.95


def test_full_split_reads_and_every_text_decodes(shared_data) -> None:
    dataset = read_split(shared_data / "perov_5", "val")
    assert len(dataset) == 3787 and not dataset.skipped
    for record in dataset:
        assert decode(encode(record.structure)).composition == record.structure.composition


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"4 4 {'9' * 400}\n90 90 90\nNa\n0 0 0",
         f"line 1: number '{'9' * 40}...' in the lattice lengths is too large"),
        (f"4 4 4\n90 90 90\nNa\n0 {'9' * 400}.5 0",
         f"line 4: number '{'9' * 40}...' in the fractional coordinates is too large"),
        (f"{'1' + '0' * 200} 4 {'1' + '0' * 200}\n90 90 90\nNa\n0 0 0",
         "line 1: lattice lengths too large: the cell volume is not a finite number"),
    ],
)
def test_numbers_that_overflow_are_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(CrystalTextError) as caught:
        decode(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        ("c1\n0.5 0.5 0.5", "line 5: expected an element symbol, got 'c1'"),  # a garbled element
        ("CL\n0.5 0.5 0.5\n", "line 5: expected an element symbol, got 'CL'"),
        ("0.5 0.5 0.5", "line 5: expected an element symbol, got '0.5 0.5 0.5'"),  # the element line missing
        ("Cl 0.5 0.5 0.5", "line 5: expected an element symbol, got 'Cl 0.5 0.5 0.5'"),  # both on one line
    ],
)
def test_a_garbled_last_atom_is_an_error_not_trailing_junk(tail: str, message: str) -> None:
    with pytest.raises(CrystalTextError) as caught:
        decode("4 4 4\n90 90 90\nNa\n0 0 0\n" + tail)
    assert str(caught.value) == message


@pytest.mark.parametrize("junk", ["The material is stable.", "<eos>\n1 2", "0.5 0.", "note: 1 2 3 4"])
def test_text_after_the_last_atom_that_is_no_atom_is_still_ignored(junk: str) -> None:
    assert CrystalText.from_str(NACL + "\n" + junk) == CrystalText.from_str(NACL)


ASYMMETRIC = FormatOptions(asymmetric_unit=True)


def rocksalt() -> Structure:
    """NaCl in its 2-atom primitive cell (a = 5.64 A conventional)."""
    return Structure(Lattice.from_parameters(3.988, 3.988, 3.988, 60, 60, 60), ["Na", "Cl"],
                     [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_asymmetric_unit_writes_the_group_the_conventional_cell_and_one_site_per_orbit() -> None:
    assert encode(rocksalt(), ASYMMETRIC) == "225\n5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.00 0.00 0.50"
    text = encode(gate(), ASYMMETRIC)  # P6_3/mmc: two Ga orbit members and two Te give one site each
    assert text.split("\n")[:4] == ["194", "4.1 4.1 18.4", "90 90 120", "Ga"]
    assert CrystalText.from_str(text).species == ("Ga", "Te")


def test_asymmetric_unit_reads_back_as_the_whole_crystal() -> None:
    crystal = CrystalText.from_str("225\n5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50")
    assert crystal.spacegroup == 225
    structure = crystal.to_structure()  # the F-centred cube's 8 atoms, reduced to the primitive cell
    assert structure.composition.reduced_formula == "NaCl" and len(structure) == 2
    assert StructureMatcher().fit(structure, rocksalt())
    again = decode(encode(gate(), ASYMMETRIC))
    assert len(again) == 8 and StructureMatcher().fit(again, gate())


def test_asymmetric_unit_takes_the_lattice_its_group_allows() -> None:
    # a cubic group with unequal lengths: the lengths are averaged, the angles set, not the group lost
    structure = decode("221\n4.0 4.2 4.1\n90 91 90\nCs\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50")
    assert np.allclose(structure.lattice.abc, 4.1) and np.allclose(structure.lattice.angles, 90)


@pytest.mark.parametrize(
    ("text", "message"),
    [("231\n4 4 4\n90 90 90\nNa\n0 0 0", "line 1: space group 231 does not exist"),
     ("225", "expected the lattice lengths after the space group")],
)
def test_asymmetric_unit_bad_group_lines_are_named(text: str, message: str) -> None:
    with pytest.raises(CrystalTextError, match=message):
        CrystalText.from_str(text)


def test_asymmetric_unit_refuses_translation() -> None:
    crystal = CrystalText.from_structure(rocksalt(), asymmetric_unit=True)
    with pytest.raises(ValueError, match="cannot be translated"):
        augment(crystal, np.random.default_rng(0))
    shuffled = augment(crystal, np.random.default_rng(0), translate=False, permute=True)
    assert shuffled.spacegroup == 225 and sorted(shuffled.species) == ["Cl", "Na"]


COUNTED_ORBITS = FormatOptions(asymmetric_unit=True, site_counts=True, joined_counts=True)


def two_sodium_orbits() -> Structure:
    """Fm-3m with Na on 4a and 8c and Cl on 4b: 16 atoms in the conventional cell, Na in two orbits."""
    return Structure.from_spacegroup(225, Lattice.cubic(6.0), ["Na", "Na", "Cl"],
                                     [[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5]])


def test_counted_asymmetric_unit_counts_each_elements_atoms_down_orbit_by_orbit() -> None:
    crystal = CrystalText.from_structure(two_sodium_orbits(), asymmetric_unit=True)
    assert crystal.spacegroup == 225 and dict(crystal.cell_counts()) == {"Na": 12, "Cl": 4}
    text = crystal.to_str(COUNTED_ORBITS)
    # Na: 12 in the cell, 4 of them the orbit of 0 0 0, leaving the 8 of the second orbit; Cl after both
    assert text.split("\n")[3:] == ["Na12", "0.00 0.00 0.00", "Na8", "0.25 0.25 0.25", "Cl4", "0.00 0.00 0.50"]
    assert cell_formula(crystal) == "Na12Cl4"
    back = CrystalText.from_str(text)
    assert sorted(zip(back.species, back.multiplicities)) == [("Cl", 4), ("Na", 4), ("Na", 8)]
    assert back.to_str(COUNTED_ORBITS) == text
    assert decode(text).composition.reduced_formula == "Na3Cl"  # the orbits decide the crystal read back
    spaced = crystal.to_str(FormatOptions(asymmetric_unit=True, site_counts=True))
    assert spaced.split("\n")[3] == "Na 12"


def test_counted_asymmetric_unit_needs_its_orbit_sizes() -> None:
    plain = CrystalText.from_str("225\n5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.00 0.00 0.50")
    assert plain.multiplicities is None
    with pytest.raises(CrystalTextError, match="sizes of this asymmetric unit's orbits are not known"):
        plain.to_str(COUNTED_ORBITS)
    # counts that do not fall within an element state no orbit sizes (the orbits still read back)
    rising = CrystalText.from_str("225\n5.6 5.6 5.6\n90 90 90\nNa4\n0.00 0.00 0.00\nNa8\n0.25 0.25 0.25")
    assert rising.multiplicities is None and len(rising.to_structure()) == 3


def test_asymmetric_unit_writes_a_general_position_once_for_its_whole_orbit() -> None:
    # Rutile TiO2 (P4_2/mnm): 6 sites in the cell, two orbits (Ti 2a, O 4f)
    rutile = Structure.from_spacegroup(136, Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])
    crystal = CrystalText.from_structure(rutile, asymmetric_unit=True)
    assert crystal.spacegroup == 136 and sorted(crystal.species) == ["O", "Ti"]
    back = decode(crystal.to_str(ASYMMETRIC))
    assert back.composition.reduced_formula == "TiO2" and len(back) == 6
    assert StructureMatcher().fit(rutile, back)
