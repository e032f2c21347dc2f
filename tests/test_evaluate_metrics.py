"""The metric definitions, each checked against hand-computed values (no fingerprinting of real sets here)."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from pymatgen.core import Composition, Lattice, Structure

from crystext.data import read_split
from crystext.evaluate.cdvae_constants import COMPOSITION_MEANS, COMPOSITION_STDS
from crystext.evaluate.coverage import coverage, mean_pairwise_distance
from crystext.evaluate.distributions import element_frequencies, total_variation, wasserstein
from crystext.evaluate.fingerprints import (
    FingerprintFailure,
    composition_fingerprint,
    standardise,
    structure_fingerprint,
)
from crystext.evaluate.sun import stability_flags
from crystext.evaluate.validity import compositional_validity, smact_version, structural_problem


def rock_salt() -> Structure:
    return Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


# --------------------------------------------------------------------------- validity


def test_two_atoms_0_3_angstrom_apart_are_structurally_invalid() -> None:
    structure = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])
    assert structural_problem(structure) == "sites 0 and 1 are 0.300 A apart, closer than 0.5 A"


def test_tiny_cell_is_structurally_invalid_and_rock_salt_is_valid() -> None:
    tiny = Structure(Lattice.cubic(0.4), ["Fe"], [[0, 0, 0]])
    assert structural_problem(tiny) == "cell volume 0.064 A^3 is below 0.1 A^3"
    assert structural_problem(rock_salt()) is None


def test_periodic_images_count_for_the_closest_distance() -> None:
    # 0.02 and 0.98 along a 10 A axis are 0.4 A apart through the cell boundary.
    structure = Structure(Lattice.cubic(10.0), ["Na", "Cl"], [[0.02, 0, 0], [0.98, 0, 0]])
    assert structural_problem(structure) == "sites 0 and 1 are 0.400 A apart, closer than 0.5 A"


@pytest.mark.parametrize(
    ("formula", "valid"),
    [
        ("NaCl", True),
        ("NaCl2", False),
        ("Na4Cl8", False),  # judged over the reduced composition, NaCl2
        ("FeNi", True),  # all metals: an alloy
        ("Fe3Ni", True),
        ("Si", True),  # one element
        ("LiFePO4", True),
        ("PmBr3", True),  # Pm has no Pauling electronegativity in smact 2.5.5: the test counts as passed
        ("NaO3", False),
    ],
)
def test_compositional_validity(formula: str, valid: bool) -> None:
    assert compositional_validity(Composition(formula)) is valid


def test_composition_of_an_element_smact_does_not_know_is_reported() -> None:
    with pytest.raises(ValueError, match="SMACT has no data for an element of NaOg"):
        compositional_validity(Composition("NaOg"))


def test_fast_search_agrees_with_the_reference_loop() -> None:
    """The memoised search gives the reference loop's answer on 300 random 2-4 element compositions."""
    from crystext.evaluate.validity import _neutral_with_pauling, _reference_loop, _smact_element

    rng = np.random.default_rng(0)
    pool = ["Li", "Na", "K", "Mg", "Ca", "Ba", "Al", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn", "Sn", "Pb",
            "Bi", "Sb", "B", "C", "N", "O", "F", "P", "S", "Cl", "Se", "Br", "Te", "I", "H", "Si", "As"]
    agreed = {True: 0, False: 0}
    for _ in range(300):
        symbols = sorted(rng.choice(pool, rng.integers(2, 5), replace=False),
                         key=lambda s: Composition(s).elements[0].Z)
        counts = [int(c) for c in rng.integers(1, 7, len(symbols))]
        counts = [c // math.gcd(*counts) for c in counts]  # a reduced composition, as the callers pass
        data = [_smact_element(s) for s in symbols]
        states, enegs = [d[0] for d in data], [d[1] for d in data]
        expected = _reference_loop(counts, states, enegs)
        assert _neutral_with_pauling(tuple(counts), tuple(states), tuple(enegs)) is expected, (symbols, counts)
        agreed[expected] += 1
    assert min(agreed.values()) > 50  # both answers were exercised


def test_a_dozen_elements_are_judged_at_once() -> None:
    """A garbled sample's composition: 12 elements, about 10^9 oxidation-state combinations for the reference loop."""
    assert compositional_validity(Composition("LiNaKMgCaTiVCrMnFeO7F3")) is True  # e.g. all +1/+2/+3, O-2, F-1
    assert compositional_validity(Composition("LiNaKMgCaBaSrCsRbAlGaF50")) is False  # the cations give at most +19


def test_smact_2_5_5_on_the_mp20_test_split(shared_data) -> None:
    """The paper's data row reads 0.9113; smact 2.5.5 gives 8245 of 9046 = 0.91145 here (smact 4.x: about 0.9095)."""
    assert smact_version() == "2.5.5"
    dataset = read_split(shared_data / "mp_20", "test")
    valid = [compositional_validity(r.structure.composition) for r in dataset.records]
    assert len(valid) == 9046
    assert sum(valid) == 8245
    assert round(sum(valid) / len(valid), 3) == 0.911


# --------------------------------------------------------------------------- fingerprints


def test_composition_scaler_is_cdvaes_published_one(shared_data) -> None:
    published = json.loads((shared_data / "cdvae_metric_constants" / "constants.json").read_text())
    assert list(COMPOSITION_MEANS) == published["comp_fingerprint_means"]
    assert list(COMPOSITION_STDS) == published["comp_fingerprint_stds"]


def test_standardise_uses_the_published_scaler_and_zeroes_nan() -> None:
    raw = np.array(COMPOSITION_MEANS) + 2 * np.array(COMPOSITION_STDS)
    raw[5] = np.nan
    scaled = standardise(raw[None, :])[0]
    assert scaled[5] == 0.0
    np.testing.assert_allclose(np.delete(scaled, 5), 2.0)


def test_composition_fingerprint_is_not_imputed() -> None:
    # matminer would fill helium's missing magpie data with averages; the published protocol leaves NaN.
    assert np.isnan(composition_fingerprint(Composition("He"))).sum() == 12
    assert composition_fingerprint(Composition("NaCl")).shape == (132,)


def test_structure_fingerprint_and_its_time_limit() -> None:
    fingerprint = structure_fingerprint(rock_salt())
    assert fingerprint.shape == (61,)
    big = rock_salt()
    big.make_supercell([5, 5, 10])  # 500 atoms
    with pytest.raises(FingerprintFailure, match=r"^structure fingerprint took more than 0.05 s of CPU time$"):
        structure_fingerprint(big, time_limit=0.05)


# --------------------------------------------------------------------------- coverage


def test_reference_recalled_through_two_samples_counts_by_default_not_jointly() -> None:
    """Sample A is near the reference in structure only, sample B in composition only."""
    ref_struct, ref_comp = np.zeros((1, 2)), np.zeros((1, 3))
    sample_struct = np.array([[0.1, 0.0], [1.0, 0.0]])
    sample_comp = np.array([[20.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    cov = coverage(sample_struct, sample_comp, ref_struct, ref_comp, struct_cutoff=0.4, comp_cutoff=10.0)
    assert cov.cov_recall == 1.0
    assert cov.cov_recall_joint == 0.0
    assert cov.cov_precision == 0.0 and cov.cov_precision_joint == 0.0  # neither sample is near in both
    assert cov.amsd_recall == pytest.approx(0.1)
    assert cov.amcd_recall == pytest.approx(1.0)
    assert cov.amsd_precision == pytest.approx((0.1 + 1.0) / 2)
    assert cov.amcd_precision == pytest.approx((20.0 + 1.0) / 2)


def test_coverage_precision_over_samples_given_or_over_all_generated() -> None:
    ref = np.zeros((2, 1))
    samples = np.array([[0.0], [0.3], [5.0]])  # two near, one far
    paper = coverage(samples, samples, ref, ref, 0.4, 0.4)
    cdvae = coverage(samples, samples, ref, ref, 0.4, 0.4, n_generated=4)
    assert paper.cov_precision == pytest.approx(2 / 3)
    assert cdvae.cov_precision == pytest.approx(2 / 4)
    assert paper.cov_recall == cdvae.cov_recall == 1.0


def test_coverage_in_blocks_equals_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    whole = coverage(a, a, b, b, 1.0, 1.5)
    monkeypatch.setattr("crystext.evaluate.coverage.BLOCK", 7)
    blocked = coverage(a, a, b, b, 1.0, 1.5)
    assert (whole.cov_recall, whole.cov_recall_joint, whole.amsd_precision) == (
        blocked.cov_recall, blocked.cov_recall_joint, blocked.amsd_precision
    )
    np.testing.assert_array_equal(whole.nearest.b_struct, blocked.nearest.b_struct)


def test_diversity_is_the_mean_pairwise_distance(monkeypatch: pytest.MonkeyPatch) -> None:
    points = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])  # pairs: 5, 10, 5
    assert mean_pairwise_distance(points) == pytest.approx(20 / 3)
    monkeypatch.setattr("crystext.evaluate.coverage.BLOCK", 2)
    assert mean_pairwise_distance(points) == pytest.approx(20 / 3)
    assert np.isnan(mean_pairwise_distance(points[:1]))


# --------------------------------------------------------------------------- distributions and stability


def test_distribution_distances() -> None:
    assert wasserstein([0, 1], [1, 2]) == pytest.approx(1.0)
    assert wasserstein([1, 2, 3], [3, 2, 1]) == 0.0
    assert total_variation(Counter({225: 1, 62: 1}), Counter({225: 2})) == pytest.approx(0.5)
    assert element_frequencies(["Na Cl", "Cl", "Fe Ni"]) == Counter({"Cl": 2, "Na": 1, "Fe": 1, "Ni": 1})


def test_stability_flags() -> None:
    metastable, stable = stability_flags(np.array([-0.01, 0.0, 0.05, 0.1, np.nan]))
    assert metastable.tolist() == [True, True, True, False, False]
    assert stable.tolist() == [True, False, False, False, False]
