"""S.U.N.: one definition (crystext.evaluate.sun), pinned where the two former definitions disagreed.

The former `evaluate` judged uniqueness and novelty on the samples as generated and divided by the samples
the protocol counted; the former stability summary judged the relaxed structures over every relaxed row.
The kept definition: stable after relaxation, then unique among the stable relaxed structures, then novel;
over every sample sent to relaxation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystext.evaluate import EvaluateConfig, ProtocolSettings, evaluate
from crystext.evaluate.sun import KnownStructures, stability_rates, stability_table


def rock_salt(a: float = 5.64, cation: str = "Na") -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [cation, "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cesium_chloride(a: float = 3.4) -> Structure:
    """NaCl in the CsCl structure: as generated it matches no rock salt."""
    return Structure(Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


KCL = KnownStructures.from_structures([rock_salt(6.29, "K")])


def test_two_cells_that_relax_to_one_crystal_are_one_discovery() -> None:
    relaxed = [rock_salt(), rock_salt(5.70), None]  # the third sample never parsed
    table = stability_table(np.array([-0.01, -0.02, np.nan]), relaxed, KCL)
    assert table["sun"].tolist() == [True, False, False]
    rates = stability_rates(table)
    assert rates["sun_rate"] == pytest.approx(1 / 3)  # over every sample sent to relaxation
    assert rates["stable_rate"] == pytest.approx(2 / 3) and rates["stable_rate_of_relaxed"] == 1.0


def test_stability_comes_before_uniqueness() -> None:
    """An unstable copy listed first does not take the stable one's place as 'the first of its group'."""
    table = stability_table(np.array([0.5, -0.01]), [rock_salt(), rock_salt(5.7)], KCL)
    assert table["sun"].tolist() == [False, True]
    assert table["msun"].tolist() == [False, True]


def test_a_known_crystal_is_not_novel() -> None:
    known = KnownStructures.from_structures([rock_salt(5.5)])
    table = stability_table(np.array([-0.01]), [rock_salt()], known)
    assert table["sun"].tolist() == [False] and table["stable"].tolist() == [True]


def test_evaluate_judges_the_relaxed_structures(shared_data: Path, tmp_path: Path) -> None:
    """Rock salt and CsCl-type NaCl are two structures as generated, one after relaxation: S.U.N. 1 of 3."""
    samples = tmp_path / "samples.csv"
    pd.DataFrame({
        "id": ["s1", "s2", "s3"],
        "cif": [rock_salt().to(fmt="cif"), cesium_chloride().to(fmt="cif"), ""],
        "error": ["", "", "no crystal in the text"],
    }).to_csv(samples, index=False)
    stability = tmp_path / "stability.csv"
    pd.DataFrame({
        "id": ["s1", "s2", "s3"],
        "e_above_hull": [-0.01, -0.01, np.nan],
        "relaxed_cif": [rock_salt().to(fmt="cif"), rock_salt(5.66).to(fmt="cif"), ""],
        "error": ["", "", "unparsed: no crystal in the text"],
    }).to_csv(stability, index=False)
    train = tmp_path / "train.csv"
    pd.DataFrame({"material_id": ["kcl"], "cif": [rock_salt(6.29, "K").to(fmt="cif")]}).to_csv(train, index=False)
    reference = tmp_path / "reference.csv"
    pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=5).to_csv(reference, index=False)

    result = evaluate(samples, reference, train=train, stability=stability,
                      config=EvaluateConfig(protocol=ProtocolSettings("cdvae"), progress=False, cache=False))
    m, per = result.metrics, result.per_sample.set_index("id")
    assert m["uniqueness"] == 1.0  # as generated, the two samples are different structures
    assert m["sun_rate"] == pytest.approx(1 / 3) and m["n_sun"] == 1  # the former evaluate said 2 of 2 valid
    assert per["sun"].tolist() == [True, False, False]
    assert m["stable_rate"] == pytest.approx(2 / 3)
