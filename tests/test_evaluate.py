"""crystext evaluate: validity by hand-checked cases, the two protocols, coverage rules, cache, report, CLI.

Fingerprints cost ~0.2 s per structure, so the real-data tests share one small evaluation (a few
dozen MP-20 structures) and the protocol arithmetic is checked on hand-made fingerprints.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Lattice, Structure

from crystext.cli import main
from crystext.evaluate import (
    Analysed,
    AnalysisSettings,
    ProtocolSettings,
    analyse,
    analyse_file,
    composition_validity,
    compute_metrics,
    coverage,
    evaluate,
    load_items,
    structure_validity,
    write_report,
)
from crystext.evaluate import analysis as analysis_module
from crystext.evaluate._cdvae_constants import COMP_FP_MEANS, COMP_FP_STDS
from crystext.evaluate.validity import structure_validity_reason

BROKEN_CIF = "data_broken\n_cell_length_a 3.0\nloop_\n_atom_site_label\n"


# --------------------------------------------------------------------------- validity, by hand


def test_two_atoms_0_3_angstrom_apart_are_structurally_invalid() -> None:
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.06, 0, 0]])  # 0.30 A
    assert not structure_validity(s)
    assert structure_validity_reason(s) == "sites 1 and 2 are 0.300 A apart (< 0.5)"
    far = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert structure_validity(far)


def test_periodic_images_count_for_distances() -> None:
    # 0.02 and 0.98 are 0.2 A apart through the cell boundary.
    s = Structure(Lattice.cubic(5.0), ["Na", "Cl"], [[0.02, 0, 0], [0.98, 0, 0]])
    assert not structure_validity(s)


def test_tiny_cell_is_structurally_invalid() -> None:
    s = Structure(Lattice.cubic(0.4), ["Fe"], [[0, 0, 0]])
    assert structure_validity_reason(s).startswith("cell volume")


@pytest.mark.parametrize(
    ("counts", "valid"),
    [
        ({"Na": 1, "Cl": 2}, False),  # NaCl2: no charge-neutral assignment
        ({"Na": 1, "Cl": 1}, True),
        ({"Na": 4, "Cl": 4}, True),  # reduced first
        ({"Fe": 1, "Ni": 3}, True),  # an alloy: all metals
        ({"Si": 8}, True),  # one element
        ({"Fe": 2, "O": 3}, True),
        ({"Li": 1, "Fe": 1, "P": 1, "O": 4}, True),
        ({"O": 1, "F": 5}, False),
    ],
)
def test_compositional_validity(counts: dict[str, int], valid: bool) -> None:
    assert composition_validity(counts) is valid


def test_oxidation_state_decorations_are_ignored() -> None:
    s = Structure(Lattice.cubic(5.6), ["Na+", "Cl-"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    assert composition_validity(s)
    row = analysis_module._analyse_one((0, "x", s, "", AnalysisSettings(fingerprint="valid")))
    assert row["formula"] == "NaCl" and row["comp_valid"] and row["fp_ok"]


def test_compositional_validity_of_the_mp20_test_split(shared_data: Path) -> None:
    """smact 2.5.5 gives the paper's data row (0.9113 there; 0.9116 here, on the same 9,046 structures)."""
    frame = pd.read_csv(shared_data / "mp_20" / "test.csv")
    flags = []
    for cif in frame["cif"]:
        s = Structure.from_str(cif, fmt="cif")
        flags.append(composition_validity(s))
    assert len(flags) == 9046
    assert round(float(np.mean(flags)), 4) == 0.9116


def test_constants_match_the_published_copy(shared_data: Path) -> None:
    published = json.loads((shared_data / "cdvae_metric_constants" / "constants.json").read_text())
    assert list(COMP_FP_MEANS) == published["comp_fingerprint_means"]
    assert list(COMP_FP_STDS) == published["comp_fingerprint_stds"]
    from crystext.constants import COVERAGE_CUTOFFS

    for name, cut in published["coverage_cutoffs"].items():
        assert COVERAGE_CUTOFFS[name] == (cut["struct"], cut["comp"])


# --------------------------------------------------------------------------- coverage rules on hand-made fingerprints


def test_a_reference_recalled_through_two_different_samples() -> None:
    """Separate minima (the default, as both codes do) recall it; the joint variant does not."""
    ref_s, ref_c = np.zeros((1, 2)), np.zeros((1, 2))
    # Sample A is close in structure, far in composition; sample B the other way round.
    smp_s = np.array([[0.1, 0.0], [5.0, 0.0]])
    smp_c = np.array([[50.0, 0.0], [1.0, 0.0]])
    separate = coverage(smp_s, smp_c, ref_s, ref_c, 0.4, 10.0)
    joint = coverage(smp_s, smp_c, ref_s, ref_c, 0.4, 10.0, mode="joint")
    assert separate.cov_recall == 1.0 and joint.cov_recall == 0.0
    assert separate.cov_precision == 0.0 and joint.cov_precision == 0.0
    assert separate.amsd_recall == pytest.approx(0.1) and separate.amcd_recall == pytest.approx(1.0)
    assert separate.amsd_precision == pytest.approx((0.1 + 5.0) / 2)


def test_cdvae_precision_divides_by_samples_generated() -> None:
    ref = np.zeros((1, 2))
    smp = np.zeros((2, 2))
    assert coverage(smp, smp, ref, ref, 0.4, 10.0).cov_precision == 1.0
    assert coverage(smp, smp, ref, ref, 0.4, 10.0, n_generated=4).cov_precision == 0.5


def _fake(rows: list[dict], struct: list[list[float]], comp: list[list[float]]) -> Analysed:
    """An analysed set from hand-made per-structure values (fingerprints padded to the real sizes)."""
    base = {"parsed": True, "parse_error": "", "formula": "NaCl", "n_atoms": 2, "n_elements": 2, "density": 2.0,
            "volume": 40.0, "spacegroup": 225, "struct_valid": True, "struct_reason": "", "comp_valid": True,
            "comp_reason": "", "fp_attempted": True, "fp_ok": True, "fp_error": "", "elements": "Cl Na"}
    table = pd.DataFrame([{**base, "id": f"s{i}", **r} for i, r in enumerate(rows)])
    s = np.zeros((len(rows), 61))
    s[:, : len(struct[0])] = struct
    # Composition fingerprints are standardised: feed raw = mean + std * wanted.
    c = np.tile(np.array(COMP_FP_MEANS), (len(rows), 1))
    c[:, : len(comp[0])] += np.array(comp) * np.array(COMP_FP_STDS)[: len(comp[0])]
    for i, r in enumerate(rows):
        if not r.get("fp_ok", True):
            s[i], c[i] = np.nan, np.nan
    return Analysed(table, s, c)


def test_the_two_protocols_count_differently() -> None:
    samples = _fake(
        [
            {},  # valid, on the reference
            {"comp_valid": False},  # invalid composition, but fingerprinted (cdvae counts it for coverage)
            {"parsed": False, "struct_valid": False, "comp_valid": False, "fp_attempted": False, "fp_ok": False,
             "density": math.nan},  # did not parse
            {"fp_ok": False, "fp_error": "fingerprint time limit"},  # fingerprint failure: invalid in both
        ],
        struct=[[0.0], [0.05], [0.0], [0.0]],
        comp=[[0.0], [0.5], [0.0], [0.0]],
    )
    reference = _fake([{}, {"comp_valid": False}], struct=[[0.0], [0.1]], comp=[[0.0], [1.0]])
    paper = compute_metrics(samples, reference, ProtocolSettings("paper")).metrics
    cdvae = compute_metrics(samples, reference, ProtocolSettings("cdvae", n_valid=1)).metrics
    # paper: the unparsed sample is dropped; 3 counted; valid = 1 of 3; coverage among valid samples, valid refs.
    assert paper["n_counted"] == 3 and paper["comp_valid"] == pytest.approx(2 / 3)
    assert paper["valid"] == pytest.approx(1 / 3) and paper["n_reference_fingerprinted"] == 1
    assert paper["cov_recall"] == 1.0 and paper["cov_precision"] == 1.0
    # cdvae: 4 generated; both fingerprinted samples are within the cut-offs -> 2/4; both refs recalled.
    assert cdvae["n_counted"] == 4 and cdvae["comp_valid"] == pytest.approx(2 / 4)
    assert cdvae["valid"] == pytest.approx(1 / 4) and cdvae["n_reference_fingerprinted"] == 2
    assert cdvae["cov_precision"] == pytest.approx(2 / 4) and cdvae["cov_recall"] == 1.0
    assert cdvae["n_distribution_samples"] == 1 and cdvae["n_fingerprint_failures"] == 1


def test_paper_protocol_subsamples_with_replacement_above_max_samples() -> None:
    samples = _fake([{} for _ in range(30)], struct=[[0.0]] * 30, comp=[[0.0]] * 30)
    result = compute_metrics(samples, samples, ProtocolSettings("paper", max_samples=10, seed=1))
    assert result.metrics["n_counted"] == 10
    assert any("with replacement" in w for w in result.warnings)


def test_unknown_dataset_needs_cutoffs() -> None:
    with pytest.raises(ValueError, match="no published coverage cut-offs"):
        ProtocolSettings(dataset="mpts_52").cutoffs
    assert ProtocolSettings(dataset="mpts_52", struct_cutoff=0.4, comp_cutoff=10).cutoffs == (0.4, 10.0)


# --------------------------------------------------------------------------- real structures, end to end


@pytest.fixture(scope="module")
def small_files(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("eval")
    test = pd.read_csv(shared_data / "mp_20" / "test.csv").head(12)
    train = pd.read_csv(shared_data / "mp_20" / "train.csv").head(10)
    samples = pd.concat([pd.read_csv(shared_data / "mp_20" / "val.csv").head(6), train.head(2)], ignore_index=True)
    samples = samples[["material_id", "cif"]].rename(columns={"material_id": "id"})
    samples.loc[len(samples)] = {"id": "broken-cif", "cif": BROKEN_CIF}
    samples["error"] = ""
    samples.loc[len(samples)] = {"id": "never-parsed", "cif": "", "error": "line 7: unknown element 'Xx'"}
    # Conditions as `crystext sample` writes them (a JSON column), and as a plain column.
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    first = Structure.from_str(samples.loc[0, "cif"], fmt="cif")
    wanted = {"formula": first.composition.reduced_formula,
              "spacegroup": SpacegroupAnalyzer(first, symprec=0.1).get_space_group_number()}
    samples["conditions"] = [json.dumps(wanted)] + ["{}"] * (len(samples) - 1)
    samples["cond_formula"] = ""
    samples.loc[1, "cond_formula"] = "NaCl"
    paths = {"test": folder / "test.csv", "train": folder / "train.csv", "samples": folder / "samples.csv"}
    test.to_csv(paths["test"], index=False)
    train.to_csv(paths["train"], index=False)
    samples.to_csv(paths["samples"], index=False)
    stability = pd.DataFrame({"id": samples["id"], "e_above_hull": [0.0 - 0.01, 0.05, 0.3] + [0.5] * (len(samples) - 3)})
    stability.to_csv(folder / "stability.csv", index=False)
    paths["stability"] = folder / "stability.csv"
    return paths


@pytest.fixture(scope="module")
def small_result(small_files: dict[str, Path]):
    return evaluate(small_files["samples"], small_files["test"], small_files["train"], protocols=("paper", "cdvae"),
                    stability=small_files["stability"], jobs=2, progress=False)


def test_malformed_samples_are_reported_and_handled_per_protocol(small_result) -> None:
    table = small_result.per_sample
    broken = table.set_index("id").loc[["broken-cif", "never-parsed"]]
    assert not broken["parsed"].any()
    assert "unreadable structure" in broken.loc["broken-cif", "parse_error"]
    assert broken.loc["never-parsed", "parse_error"] == "line 7: unknown element 'Xx'"
    paper, cdvae = small_result.metrics["paper"], small_result.metrics["cdvae"]
    assert paper["n_samples"] == cdvae["n_samples"] == 10
    assert paper["n_counted"] == 8 and cdvae["n_counted"] == 10
    assert paper["struct_valid"] == 1.0 and cdvae["struct_valid"] == pytest.approx(0.8)
    assert any("2 samples did not parse (broken-cif" in w for w in small_result.warnings)


def test_uniqueness_novelty_stability_conditions(small_result) -> None:
    m = small_result.metrics["paper"]
    table = small_result.per_sample.set_index("id")
    # The two training structures among the samples are not novel, by both rules.
    train_ids = list(table.index[6:8])
    assert not table.loc[train_ids, "novel"].any()
    assert not table.loc[train_ids, "novel_fingerprint"].any()
    assert m["uniqueness"] == 1.0
    assert m["stable_rate"] == pytest.approx(1 / 8) and m["metastable_rate"] == pytest.approx(2 / 8)
    assert m["formula_accuracy"] == pytest.approx(1 / 2) and m["n_formula_conditioned"] == 2
    assert m["spacegroup_accuracy"] == 1.0 and m["n_spacegroup_conditioned"] == 1
    assert "sun_rate" in m and "msun_rate" in m


def test_versions_and_protocol_are_recorded(small_result, tmp_path: Path) -> None:
    paths = write_report(small_result, tmp_path / "report", "tiny")
    data = json.loads(paths["json"].read_text())
    assert data["settings"]["default_protocol"] == "paper"
    assert set(data["protocols"]) == {"paper", "cdvae"}
    assert data["versions"]["smact"] == "2.5.5" and "matminer" in data["versions"] and "pymatgen" in data["versions"]
    assert data["protocols"]["paper"]["protocol"] == "paper"
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") >= 5 and "broken-cif" in html
    table = paths["markdown"].read_text().splitlines()
    assert table[0].startswith("| method | Struct. valid | Comp. valid | COV-R | COV-P | wdist density | wdist # elem")
    per_sample = pd.read_csv(paths["csv"])
    assert {"parsed", "struct_valid", "comp_valid", "nearest_ref_struct_dist", "density", "spacegroup", "unique",
            "novel"} <= set(per_sample.columns)


def test_reference_against_itself(small_files: dict[str, Path]) -> None:
    """Scored against itself a set covers itself fully; with every structure valid the distances are 0."""
    result = evaluate(small_files["test"], small_files["test"], protocols=("paper", "cdvae"), jobs=2, progress=False,
                      structure_matcher=False)
    for name in ("paper", "cdvae"):
        assert result.metrics[name]["cov_recall"] == 1.0 and result.metrics[name]["cov_precision"] == 1.0
    valid = result.per_sample["valid"].to_numpy(bool)
    if valid.all():
        assert result.metrics["paper"]["wdist_density"] == 0.0
    only_valid = pd.read_csv(small_files["test"])[valid]
    path = small_files["test"].with_name("valid_test.csv")
    only_valid.to_csv(path, index=False)
    # One analysis serves both roles: the samples file is cached under the reference's key.
    again = evaluate(path, path, protocols=("cdvae", "paper"), jobs=2, progress=False, structure_matcher=False)
    assert again.timings["reference_cached"] == 1.0
    again = again.metrics["paper"]
    assert again["wdist_density"] == 0.0 and again["wdist_num_elems"] == 0.0 and again["cov_recall"] == 1.0


def test_reference_fingerprints_are_cached(small_files: dict[str, Path]) -> None:
    first = analyse_file(small_files["test"], jobs=2, progress=False)
    second = analyse_file(small_files["test"], jobs=2, progress=False)
    assert second.cached
    np.testing.assert_array_equal(first.struct_fp, second.struct_fp)
    np.testing.assert_array_equal(first.comp_fp, second.comp_fp)
    pd.testing.assert_frame_equal(first.table, second.table, check_dtype=False)
    other = analyse_file(small_files["test"], AnalysisSettings(site_timeout=7.0), jobs=2, progress=False)
    assert not other.cached


def test_a_fingerprint_time_limit_is_a_fingerprint_failure() -> None:
    s = Structure(Lattice.cubic(5.6), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    row = analysis_module._analyse_one((0, "x", s, "", AnalysisSettings(site_timeout=1e-6)))
    assert row["fp_attempted"] and not row["fp_ok"] and row["fp_error"] == "fingerprint time limit"


def test_one_malformed_cif_among_a_thousand(shared_data: Path, tmp_path: Path, monkeypatch) -> None:
    """1,000 good MP-20 rows and a broken one: reported by id, dropped (paper) or counted invalid (cdvae).

    The CrystalNN fingerprint is replaced by a cheap stand-in here so this runs in seconds; the real
    one is exercised by the other tests.
    """
    monkeypatch.setattr(analysis_module, "_structure_fingerprint", lambda s, settings: np.full(61, len(s) / 20))
    frame = pd.read_csv(shared_data / "mp_20" / "val.csv").head(1000)[["material_id", "cif"]]
    frame = pd.concat([frame.iloc[:500], pd.DataFrame([{"material_id": "bad-one", "cif": BROKEN_CIF}]),
                       frame.iloc[500:]], ignore_index=True)
    frame.to_csv(tmp_path / "samples.csv", index=False)
    frame.iloc[:50].drop(index=500, errors="ignore").to_csv(tmp_path / "ref.csv", index=False)
    result = evaluate(tmp_path / "samples.csv", tmp_path / "ref.csv", protocols=("paper", "cdvae"), jobs=2,
                      progress=False, use_cache=False, structure_matcher=False)
    row = result.per_sample.iloc[500]
    assert row["id"] == "bad-one" and not row["parsed"]
    assert result.metrics["paper"]["n_counted"] == 1000 and result.metrics["cdvae"]["n_counted"] == 1001
    assert result.metrics["cdvae"]["struct_valid"] == pytest.approx(1000 / 1001)


def test_inputs_folder_and_extxyz(small_files: dict[str, Path], tmp_path: Path) -> None:
    items = load_items(small_files["test"])[:3]
    folder = tmp_path / "cifs"
    folder.mkdir()
    structures = [Structure.from_str(it.payload, fmt="cif") for it in items]
    for it, s in zip(items, structures):
        s.to(filename=str(folder / f"{it.id}.cif"))
    (folder / "zz-broken.cif").write_text(BROKEN_CIF)
    from_folder = analyse(load_items(folder), AnalysisSettings(fingerprint="valid"), jobs=1, progress=False)
    assert from_folder.table["parsed"].tolist() == [True, True, True, False]
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    write(tmp_path / "s.extxyz", [AseAtomsAdaptor.get_atoms(s) for s in structures], format="extxyz")
    from_xyz = analyse(load_items(tmp_path / "s.extxyz"), AnalysisSettings(fingerprint="valid"), jobs=1,
                       progress=False)
    assert from_xyz.table["parsed"].all()
    np.testing.assert_allclose(from_xyz.table["density"], from_folder.table["density"][:3], rtol=1e-6)


def test_cli(small_files: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli"
    code = main(["evaluate", str(small_files["samples"]), "--reference", str(small_files["test"]), "--train",
                 str(small_files["train"]), "-o", str(out), "--protocol", "cdvae,paper", "--quiet", "--jobs", "2"])
    assert code == 0
    printed = capsys.readouterr()
    assert "| samples.csv (cdvae) |" in printed.out and "broken-cif" in printed.err
    data = json.loads((out / "metrics.json").read_text())
    assert data["settings"]["default_protocol"] == "cdvae"
    assert main(["evaluate", str(small_files["samples"]), "--reference", str(small_files["test"]),
                 "--protocol", "nonsense"]) == 1
    assert main(["evaluate", str(tmp_path / "missing.csv"), "--reference", str(small_files["test"])]) == 1


def test_ipt_with_a_tiny_model(small_files: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from crystext.evaluate.ipt import ipt
    from crystext.model import build_scratch_model, train_scratch_tokenizer
    from crystext.textformat import CrystalText

    structures = [Structure.from_str(it.payload, fmt="cif") for it in load_items(small_files["test"])[:2]]
    tokenizer = train_scratch_tokenizer(CrystalText.from_structure(s).to_str() for s in structures)
    model = build_scratch_model("scratch-tiny", tokenizer, seed=0)
    result = ipt((model, tokenizer), structures, n_translations=4, seed=0)
    assert result["n_structures"] == 2 and len(result["per_structure"]) == 2
    assert result["ipt"] >= 0 and math.isfinite(result["mean_min_perplexity"])
    # The same through a saved model directory, as `crystext evaluate --ipt-model DIR` loads it.
    from crystext.model import save_model

    save_model(model, tokenizer, tmp_path / "model", {"text_format": {"length_decimals": 1, "angle_decimals": 0,
                                                                      "coord_decimals": 2}})
    again = ipt(tmp_path / "model", structures, n_translations=4, seed=0)
    assert again["ipt"] == pytest.approx(result["ipt"], rel=1e-4)
