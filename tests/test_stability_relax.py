"""Relaxation backends: energies on the MP2020 scale, structural checks, timeouts (real CHGNet and SevenNet)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystext.stability import BackendError, RelaxConfig, check_structure, load_backend, mp2020_energy
from crystext.stability.relax import BUDGETS, budget_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ELEMENTAL_REFS = "mp_hull_ref/matbench_discovery/2023-02-07-mp-elemental-reference-entries.json.gz"
#: MP-20 test structures whose MP2020 corrections are large (GGA+U oxyfluoride, plain oxide, GGA+U phosphate).
CORRECTED_IDS = ("mp-764379", "mp-1539317", "mp-754078")


@pytest.fixture(scope="module")
def chgnet():
    return load_backend("chgnet", RelaxConfig(timeout=None))  # no timeout: the machine may be busy


@pytest.fixture(scope="module")
def sevennet():
    return load_backend("sevennet", RelaxConfig(max_steps=0))


@pytest.fixture(scope="module")
def elemental_energies(shared_data: Path) -> dict[str, float]:
    with gzip.open(shared_data / ELEMENTAL_REFS, "rt") as handle:
        entries = json.load(handle)
    return {el: e["energy"] / sum(e["composition"].values()) for el, e in entries.items()}


@pytest.fixture(scope="module")
def corrected_rows(shared_data: Path) -> pd.DataFrame:
    frame = pd.read_csv(shared_data / "mp_20" / "test.csv")
    return frame[frame["material_id"].isin(CORRECTED_IDS)]


def _e_form(structure: Structure, energy: float, mu: dict[str, float]) -> float:
    return (energy - sum(mu[el.symbol] * n for el, n in structure.composition.items())) / len(structure)


def test_chgnet_energies_already_mp2020(chgnet, corrected_rows, elemental_energies) -> None:
    """CHGNet's single points match MP2020 formation energies as they come; correcting again double counts."""
    for row in corrected_rows.itertuples():
        structure = Structure.from_str(row.cif, fmt="cif")
        atoms = structure.to_ase_atoms()
        atoms.calc = chgnet.calculator
        energy = float(atoms.get_potential_energy())
        as_is = _e_form(structure, energy, elemental_energies)
        corrected_again = _e_form(structure, mp2020_energy(structure, energy), elemental_energies)
        assert abs(as_is - row.formation_energy_per_atom) < 0.06, row.material_id
        assert abs(corrected_again - row.formation_energy_per_atom) > 0.3, row.material_id


def test_sevennet_needs_mp2020(sevennet, corrected_rows, elemental_energies) -> None:
    """SevenNet-0 predicts raw GGA(+U) energies: only with the MP2020 corrections do they match MP's."""
    assert not sevennet.mp2020_corrected
    for row in corrected_rows.itertuples():
        structure = Structure.from_str(row.cif, fmt="cif")
        atoms = structure.to_ase_atoms()
        atoms.calc = sevennet.calculator
        raw = _e_form(structure, float(atoms.get_potential_energy()), elemental_energies)
        assert abs(raw - row.formation_energy_per_atom) > 0.3, row.material_id
        result = sevennet.relax(structure)  # max_steps=0: a single point, corrected by the backend
        assert result.ok and result.steps == 0
        corrected = _e_form(structure, result.energy, elemental_energies)
        assert abs(corrected - row.formation_energy_per_atom) < 0.03, row.material_id


def test_mp2020_uses_mp_u_values() -> None:
    """Fe2O3 gets the GGA+U mixing and oxide corrections; a plain intermetallic gets none."""
    fe2o3 = Structure(Lattice.cubic(4.0), ["Fe", "Fe", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]])
    # MP2020: Fe +U correction -2.256 eV/Fe, oxide correction -0.687 eV/O
    assert mp2020_energy(fe2o3, -40.0) == pytest.approx(-40.0 - 2 * 2.256 - 3 * 0.687, abs=1e-3)
    nial = Structure(Lattice.cubic(2.9), ["Ni", "Al"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert mp2020_energy(nial, -10.0) == pytest.approx(-10.0)


def test_relaxation_converges_on_rock_salt(chgnet, shared_data: Path, elemental_energies) -> None:
    """Rock salt NaCl strained by 15% relaxes back to MP's volume and formation energy (-2.11 eV/atom)."""
    frame = pd.read_csv(shared_data / "mp_20" / "val.csv")
    row = frame[frame["material_id"] == "mp-22862"].iloc[0]
    nacl = Structure.from_str(row["cif"], fmt="cif").get_primitive_structure()
    strained = nacl.copy()
    strained.scale_lattice(nacl.volume * 1.15)
    result = chgnet.relax(strained)
    assert result.ok and result.converged and result.steps > 0
    assert result.structure.volume == pytest.approx(nacl.volume, rel=0.05)  # back near the DFT volume
    e_form = _e_form(result.structure, result.energy, elemental_energies)
    assert e_form == pytest.approx(row["formation_energy_per_atom"], abs=0.05)


def test_invalid_structures_get_a_reason(chgnet) -> None:
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    assert check_structure(overlapping) == "invalid structure: atoms 0.200 A apart < 0.5 A"
    flat = Structure(Lattice([[3, 0, 0], [0, 3, 0], [0, 0, 0.005]]), ["Na"], [[0, 0, 0]])
    assert check_structure(flat) == "invalid structure: cell volume 0.045 A^3 < 0.1"
    result = chgnet.relax(overlapping)
    assert not result.ok and result.error == "invalid structure: atoms 0.200 A apart < 0.5 A"
    assert result.energy is None and result.steps == 0


def test_timeout_is_an_error_not_a_crash() -> None:
    backend = load_backend("chgnet", RelaxConfig(timeout=1e-3))
    rattled = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.45, 0.5, 0.5]])
    result = backend.relax(rattled)
    assert result.error == "timeout: not relaxed after 0.001 s"
    assert result.energy is None and not result.converged


def test_unknown_and_unavailable_backends() -> None:
    known = r"\(known: chgnet, sevennet, m3gnet, sevennet-batched\)"
    with pytest.raises(BackendError, match=rf"^unknown backend 'mace' {known}$"):
        load_backend("mace")


def test_m3gnet_without_matgl_says_so() -> None:
    try:
        import matgl  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match=r"^the m3gnet backend needs matgl: pip install 'crystext\[online\]'$"):
            load_backend("m3gnet")
    else:
        pytest.skip("matgl is installed here")


def test_budgets_are_named_and_the_default_counts_steps() -> None:
    assert RelaxConfig().timeout is None and budget_name(RelaxConfig()) == "steps"
    assert BUDGETS["paper"].timeout == 30.0 and budget_name(RelaxConfig(timeout=30.0)) == "paper"
    assert budget_name(RelaxConfig(max_steps=100)) == "custom"
