"""The batched backend (torch-sim, SevenNet-0): the serial backend's results for a whole batch at once, on the CPU."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from crystext.cli import main
from crystext.stability import BackendError, RelaxConfig, load_backend
from crystext.stability import torchsim as batched_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")
#: Batched minus serial energy allowed, eV/atom. Measured on these three crystals and seeds 0-2: at most
#: 0.005 meV/atom, the same step counts, relaxed volumes within 1e-4 (both run SevenNet-0 in float32).
ENERGY_TOLERANCE = 1e-3


def _fcc(a: float) -> Lattice:
    return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])


def _rattled(structure: Structure, seed: int) -> Structure:
    """`structure` strained by up to 5% and its atoms moved by about 0.05 A: some steps from relaxed."""
    rng = np.random.default_rng(seed)
    lattice = Lattice(structure.lattice.matrix @ (np.eye(3) + rng.uniform(-0.05, 0.05, (3, 3))))
    cart = lattice.get_cartesian_coords(structure.frac_coords) + rng.normal(0, 0.05, (len(structure), 3))
    return Structure(lattice, structure.species, cart, coords_are_cartesian=True)


#: Rock salt NaCl, diamond Si, zinc blende GaAs (primitive cells), each rattled.
CRYSTALS = [
    _rattled(Structure(_fcc(5.69), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]), 0),
    _rattled(Structure(_fcc(5.47), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]]), 0),
    _rattled(Structure(_fcc(5.75), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]]), 0),
]


@pytest.fixture(scope="module")
def batched():
    pytest.importorskip("torch_sim")
    return load_backend("sevennet-batched")


@pytest.fixture(scope="module")
def serial_results() -> list:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):  # as in the pipeline: BLAS threads only slow the cell filter's 3x3 algebra
        return load_backend("sevennet").relax_many(CRYSTALS)


def test_a_batch_relaxes_like_the_serial_backend(batched, serial_results) -> None:
    """Same fmax, same FIRE, same cell filter: the same minima, steps and MP2020-corrected energies."""
    assert batched.batched and not batched.mp2020_corrected
    results = batched.relax_many(CRYSTALS)
    for crystal, one, alone in zip(CRYSTALS, results, serial_results):
        assert one.ok and alone.ok and one.converged and alone.converged
        assert abs(one.steps - alone.steps) <= 2 and one.steps > 0
        assert one.energy / len(crystal) == pytest.approx(alone.energy / len(crystal), abs=ENERGY_TOLERANCE)
        assert one.structure.volume == pytest.approx(alone.structure.volume, rel=1e-3)
        assert one.structure.composition == crystal.composition


def test_broken_structures_leave_the_rest_of_the_batch(batched, serial_results, monkeypatch) -> None:
    """Invalid, unknown to the potential, or failing inside the batch: an error row each, the others relaxed."""
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    unknown = Structure(Lattice.cubic(5.0), ["Og", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    failing = Structure(Lattice.cubic(5.0), ["Xe"], [[0, 0, 0]])
    relax_batch = batched_module.relax_batch

    def failing_on_xenon(model, structures, config):
        if any("Xe" in s.composition for s in structures):
            raise RuntimeError("the neighbour list failed\nmore lines")
        return relax_batch(model, structures, config)

    monkeypatch.setattr(batched_module, "relax_batch", failing_on_xenon)
    results = batched.relax_many([CRYSTALS[0], overlapping, unknown, CRYSTALS[1], failing, CRYSTALS[2]])
    errors = [r.error for r in results]
    assert errors[1] == "invalid structure: atoms 0.200 A apart < 0.5 A"
    assert errors[2] == "relaxation failed: the potential does not know Og"
    assert errors[4] == "relaxation failed: RuntimeError: the neighbour list failed"
    for result in (results[1], results[2], results[4]):
        assert result.energy is None and result.structure is None and not result.converged
    for crystal, result, alone in zip(CRYSTALS, (results[0], results[3], results[5]), serial_results):
        assert result.ok and result.converged
        assert result.energy / len(crystal) == pytest.approx(alone.energy / len(crystal), abs=ENERGY_TOLERANCE)


def test_the_step_cap_is_per_structure() -> None:
    """Each structure stops at the cap with its own count and flag; max_steps 0 is a single point."""
    pytest.importorskip("torch_sim")
    capped = load_backend("sevennet-batched", RelaxConfig(max_steps=3, fmax=0.1))
    results = capped.relax_many(CRYSTALS)
    assert [r.steps for r in results] == [3, 3, 3] and not any(r.converged for r in results)
    single = load_backend("sevennet-batched", RelaxConfig(max_steps=0)).relax(CRYSTALS[0])
    assert single.ok and single.steps == 0 and single.structure.volume == pytest.approx(CRYSTALS[0].volume)


def test_settings_it_cannot_honour_are_refused_before_loading(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=r"^timeout is not supported by the sevennet-batched backend"):
        load_backend("sevennet-batched", RelaxConfig(timeout=30))
    with pytest.raises(ValueError, match=r"^optimizer BFGS is not available in the sevennet-batched backend"):
        load_backend("sevennet-batched", RelaxConfig(optimizer="BFGS"))
    assert main(["stability", "samples.csv", "--backend", "sevennet-batched", "--budget", "paper"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("crystext stability: error: --timeout is not supported by the sevennet-batched")
    assert error.count("\n") == 1


def test_without_torch_sim_it_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_sim", None)  # an import of it now fails
    with pytest.raises(BackendError, match=r"^the batched backend needs torch-sim: pip install 'crystext\[batched\]'$"):
        load_backend("sevennet-batched")
