"""Hull references: formation-energy tables (with fill), MP entry files, the cache, hand-checked Na-Cl cases."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Composition
from pymatgen.entries.computed_entries import ComputedEntry, ConstantEnergyAdjustment

from crystext.stability import HullError, MPApiReference, from_entries, from_formation_energies
from crystext.stability.hull import hull_cache_dir

ELEMENTAL_REFS = "mp_hull_ref/matbench_discovery/2023-02-07-mp-elemental-reference-entries.json.gz"


def _table(path: Path, rows: list[tuple[str, float]]) -> Path:
    pd.DataFrame(rows, columns=["formula", "formation_energy_per_atom"]).to_csv(path, index=False)
    return path


@pytest.fixture()
def refs(shared_data: Path) -> Path:
    return shared_data / ELEMENTAL_REFS


@pytest.fixture()
def na_cl_table(shared_data: Path, tmp_path: Path) -> Path:
    """Every MP-20 row (all splits) in the Na-Cl system, as a formation-energy table."""
    frames = [pd.read_csv(shared_data / "mp_20" / f"{split}.csv") for split in ("train", "val", "test")]
    frame = pd.concat(frames)
    in_system = [set(Composition(f).chemical_system.split("-")) <= {"Na", "Cl"} for f in frame["pretty_formula"]]
    path = tmp_path / "na_cl.csv"
    frame.loc[in_system, ["material_id", "pretty_formula", "formation_energy_per_atom"]].to_csv(path, index=False)
    return path


def _energy(reference, formula: str, e_form_per_atom: float) -> float:
    """The total energy that has formation energy `e_form_per_atom` against the reference's elements."""
    composition = Composition(formula)
    mu = reference.elemental_energies
    return e_form_per_atom * composition.num_atoms + sum(mu[el.symbol] * n for el, n in composition.items())


def test_rock_salt_on_hull_and_above_it(na_cl_table: Path, refs: Path) -> None:
    reference = from_formation_energies([na_cl_table], refs)
    assert {f for f, _, _ in reference.stable} == {"NaCl", "NaCl3", "NaCl7"}  # MP-20's Na-Cl phases, all on the hull
    on = reference.evaluate(Composition("NaCl"), _energy(reference, "NaCl", -2.109608))
    assert on.e_above_hull == pytest.approx(0.0, abs=1e-6)
    assert on.e_form_per_atom == pytest.approx(-2.109608, abs=1e-6)
    assert on.decomposition == {"NaCl": pytest.approx(1.0)}
    above = reference.evaluate(Composition("Na2Cl2"), _energy(reference, "NaCl", -1.8) * 2)
    assert above.e_above_hull == pytest.approx(0.309608, abs=1e-6)
    below = reference.evaluate(Composition("NaCl"), _energy(reference, "NaCl", -2.2))
    assert below.e_above_hull == pytest.approx(-0.090392, abs=1e-6)  # negative: a new ground state


def test_off_stoichiometry_decomposes_into_neighbours(na_cl_table: Path, refs: Path) -> None:
    reference = from_formation_energies([na_cl_table], refs)
    point = reference.evaluate(Composition("Na3Cl"), _energy(reference, "Na3Cl", 0.0))
    # hull at x(Cl)=1/4 is the NaCl-Na tie line: half of -2.109608
    assert point.e_above_hull == pytest.approx(2.109608 / 2, abs=1e-6)
    assert point.decomposition == {"NaCl": pytest.approx(0.5), "Na": pytest.approx(0.5)}
    assert point.decomposition_str() == "Na:0.500 NaCl:0.500"


def test_fill_tables_only_for_missing_systems(na_cl_table: Path, refs: Path, tmp_path: Path) -> None:
    older = _table(tmp_path / "older.csv", [("NaCl", -3.0), ("KCl", -2.2), ("K", 0.0)])
    reference = from_formation_energies([na_cl_table], refs, fill=[older])
    stable = {f: e for f, e, _ in reference.stable}
    assert stable["NaCl"] == pytest.approx(-2.109608)  # the primary value; the older NaCl is ignored
    assert stable["KCl"] == pytest.approx(-2.2)  # a system the primary table lacks
    assert reference.details["fill_formulas_used"] == 1


def test_hull_is_cached_by_content(na_cl_table: Path, refs: Path, tmp_path: Path) -> None:
    first = from_formation_energies([na_cl_table], refs)
    cached = list(hull_cache_dir().glob("formation-*.json.gz"))
    assert Path(first.details["cache_file"]) in cached
    copy = tmp_path / "copy.csv"
    copy.write_bytes(na_cl_table.read_bytes())
    again = from_formation_energies([copy], refs)  # same bytes elsewhere: loaded, not rebuilt
    assert again.stable == first.stable and again.details["cache_file"] == first.details["cache_file"]
    changed = _table(tmp_path / "changed.csv", [("NaCl", -2.5)])
    assert from_formation_energies([changed], refs).details["cache_file"] != first.details["cache_file"]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],  # cut short by a kill
        lambda data: data[:-40] + bytes(b ^ 0xFF for b in data[-40:-20]) + data[-20:],  # flipped bits
        lambda data: gzip.compress(b"[1, 2, 3]"),  # JSON, but not a hull
        lambda data: b"",
    ],
)
def test_a_damaged_hull_cache_is_rebuilt(na_cl_table: Path, refs: Path, damage) -> None:
    first = from_formation_energies([na_cl_table], refs)
    cache = Path(first.details["cache_file"])
    cache.write_bytes(damage(cache.read_bytes()))
    again = from_formation_energies([na_cl_table], refs)
    assert again.details["cache"] == "built" and again.stable == first.stable
    assert from_formation_energies([na_cl_table], refs).details["cache"] == "loaded"


def test_missing_element_is_a_clear_error(na_cl_table: Path, refs: Path) -> None:
    reference = from_formation_energies([na_cl_table], refs)
    with pytest.raises(HullError, match=r"^no elemental reference energy for Po in formation energies from na_cl\.csv"):
        reference.evaluate(Composition("NaPo"), -1.0)


def test_unreadable_table_names_the_file(tmp_path: Path, refs: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,value\nNaCl,1\n")
    with pytest.raises(HullError, match=r"bad\.csv: needs a formula column"):
        from_formation_energies([bad], refs)


def test_entries_file(tmp_path: Path) -> None:
    """MP entries: elemental minima as references, non-GGA and r2SCAN-adjusted entries left out."""
    entries = [
        ComputedEntry("Na", -1.3, parameters={"run_type": "GGA"}, entry_id="na"),
        ComputedEntry("Na", -1.2, parameters={"run_type": "GGA"}, entry_id="na-b"),
        ComputedEntry("Cl2", -3.6, parameters={"run_type": "GGA"}, entry_id="cl"),
        ComputedEntry("NaCl", -7.4, parameters={"run_type": "GGA"}, entry_id="nacl"),
        ComputedEntry("NaCl3", -100.0, parameters={"run_type": "R2SCAN"}, entry_id="scan"),
        ComputedEntry("Na3Cl", -100.0, parameters={"run_type": "GGA"}, entry_id="mixed",
                      energy_adjustments=[ConstantEnergyAdjustment(-1.0, name="MP GGA(+U)/R2SCAN mixing adjustment")]),
    ]
    path = tmp_path / "entries.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump({"entry": {str(i): e.as_dict() for i, e in enumerate(entries)}}, handle)  # pandas-frame layout
    reference = from_entries(path)
    assert reference.elemental_energies == {"Na": pytest.approx(-1.3), "Cl": pytest.approx(-1.8)}
    assert [(f, label) for f, _, label in reference.stable] == [("NaCl", "nacl")]
    assert reference.stable[0][1] == pytest.approx((-7.4 + 1.3 + 1.8) / 2)
    point = reference.evaluate(Composition("NaCl"), -7.4 + 0.2)
    assert point.e_above_hull == pytest.approx(0.1)


def test_mp_api_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(HullError, match=r"^the Materials Project reference needs an API key: set MP_API_KEY$"):
        MPApiReference()


def test_default_reference_needs_the_shared_layout(tmp_path: Path) -> None:
    from crystext.stability import default_reference

    with pytest.raises(HullError, match=r"no mp_20/\*\.csv or mp_hull_ref/lemat_genbench_mp20_hulls/\*\.parquet"):
        default_reference(tmp_path)


def test_hull_vertices_match_patched_phase_diagram(shared_data: Path, refs: Path, tmp_path: Path) -> None:
    """The per-system sweep finds exactly PatchedPhaseDiagram's stable phases (Li-Mn-Fe-Co-P-O-F, older table)."""
    from pymatgen.analysis.phase_diagram import PatchedPhaseDiagram, PDEntry

    frame = pd.read_csv(shared_data / "mp_hull_ref" / "crabnet_matbench" / "mp_e_form.csv")
    keep = [set(Composition(f).chemical_system.split("-")) <= {"Li", "Mn", "Fe", "Co", "P", "O", "F"}
            for f in frame["formula"]]
    table = frame[keep]
    assert len(table) > 300
    path = tmp_path / "subset.csv"
    table.to_csv(path, index=False)
    mine = {(f, round(e, 6)) for f, e, _ in from_formation_energies([path], refs).stable}
    entries = [PDEntry(Composition(f), e * Composition(f).num_atoms) for f, e in zip(table["formula"], table["target"])]
    entries += [PDEntry(Composition(el), 0.0) for el in ("Li", "Mn", "Fe", "Co", "P", "O", "F")]
    patched = PatchedPhaseDiagram(entries)
    theirs = {(e.composition.reduced_formula, round(e.energy_per_atom, 6))
              for e in patched.stable_entries if not e.composition.is_element}
    assert len(theirs) > 30 and mine == theirs


def test_the_shipped_hull_places_a_structure_with_no_data_at_hand() -> None:
    """The hull inside the package is the default offline one: rock salt's MP formation energy sits on it."""
    from crystext.stability import shipped_reference

    reference = shipped_reference()
    assert reference.summary()["stable_phases"] > 30_000 and reference.details["source"] == "shipped with crystext"
    nacl = Composition("NaCl")
    mu = reference.elemental_energies
    point = reference.evaluate(nacl, -2.1 * 2 + mu["Na"] + mu["Cl"])  # MP-20: NaCl at -2.1 eV/atom
    assert point.e_form_per_atom == pytest.approx(-2.1) and point.e_above_hull < 0.05


def test_stability_without_a_hull_flag_uses_the_shipped_hull(tmp_path: Path, monkeypatch) -> None:
    from pymatgen.core import Lattice, Structure

    from crystext.cli import main

    monkeypatch.delenv("CRYSTEXT_HULL_DATA", raising=False)
    samples = tmp_path / "samples.csv"
    rock_salt = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    pd.DataFrame({"id": ["nacl"], "cif": [rock_salt.to(fmt="cif")]}).to_csv(samples, index=False)
    output = tmp_path / "out.csv"
    assert main(["stability", str(samples), "-o", str(output), "--workers", "1", "--max-steps", "0"]) == 0
    summary = json.loads(output.with_name("out.summary.json").read_text())
    assert summary["hull_reference"]["source"] == "shipped with crystext"
    assert summary["placed_on_hull"] == 1 and summary["metastable"]["count"] == 1
