"""`crystext evaluate` on small subsets of real data: both protocols, bad input, joins, cache and the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition

from crystext.data import Dataset, DatasetError, Record, read_structures
from crystext.evaluate import (
    EvaluateConfig,
    EvaluateError,
    FingerprintSettings,
    ProtocolSettings,
    evaluate,
)
from crystext.evaluate.cli import add_arguments, run
from crystext.evaluate.profiles import profile_dataset, profile_file
from crystext.evaluate.validity import compositional_validity
from crystext.textformat import decode, encode

QUIET = EvaluateConfig(progress=False)
BROKEN_CIF = "data_broken\n_cell_length_a 4.0\nloop_\n_atom_site_label\nNa 0 0"


def config(protocol: str = "paper", **kwargs) -> EvaluateConfig:
    return EvaluateConfig(protocol=ProtocolSettings(protocol), progress=False, **kwargs)


@pytest.fixture(scope="module")
def test_rows(shared_data: Path) -> pd.DataFrame:
    """The first 30 rows of the MP-20 test split (27 compositionally valid)."""
    return pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=30)


@pytest.fixture(scope="module")
def reference(test_rows: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "reference.csv"
    test_rows.to_csv(path, index=False)
    return path


def sample_csv(path: Path, rows: list[dict]) -> Path:
    """A samples CSV as `crystext sample` writes it."""
    pd.DataFrame(rows, columns=["id", "mode", "conditions", "raw_text", "cif", "error"]).to_csv(path, index=False)
    return path


def as_samples(frame: pd.DataFrame, conditions: dict[str, dict] | None = None) -> list[dict]:
    return [
        {"id": f"s{i}", "mode": "unconditional", "conditions": json.dumps((conditions or {}).get(f"s{i}", {})),
         "raw_text": "", "cif": cif, "error": ""}
        for i, cif in enumerate(frame["cif"])
    ]


def test_a_set_against_itself_has_full_coverage_and_no_distance(test_rows: pd.DataFrame, tmp_path: Path) -> None:
    valid_rows = test_rows[[compositional_validity(Composition(f)) for f in test_rows["pretty_formula"]]]
    path = tmp_path / "valid.csv"
    valid_rows.to_csv(path, index=False)
    for protocol in ("paper", "cdvae"):
        m = evaluate(path, path, config=config(protocol, cache_samples=True)).metrics
        assert m["n_valid"] == len(valid_rows) == 27
        assert (m["cov_recall"], m["cov_precision"]) == (1.0, 1.0)
        assert (m["amsd_recall"], m["amsd_precision"], m["amcd_recall"], m["amcd_precision"]) == (0, 0, 0, 0)
        assert (m["wdist_density"], m["wdist_num_elems"], m["wdist_num_atoms"]) == (0, 0, 0)
        assert (m["tvd_spacegroup"], m["tvd_elements"]) == (0, 0)
        assert m["uniqueness"] == 1.0


def test_malformed_cifs_are_reported_by_id_and_counted_as_each_protocol_says(
    test_rows: pd.DataFrame, reference: Path, tmp_path: Path
) -> None:
    rows = as_samples(test_rows.iloc[:12])  # row 11 is compositionally invalid
    rows.insert(7, {"id": "broken", "mode": "unconditional", "conditions": "{}", "raw_text": "x", "cif": BROKEN_CIF,
                    "error": ""})
    rows.append({"id": "no-cif", "mode": "unconditional", "conditions": "{}", "raw_text": "Na", "cif": "",
                 "error": "line 1: expected three lattice lengths"})
    samples = sample_csv(tmp_path / "samples.csv", rows)

    paper = evaluate(samples, reference, config=config("paper", cache_samples=True))
    assert paper.metrics["n_samples"] == 14
    assert paper.metrics["n_unparsed"] == 2
    assert paper.metrics["n_counted"] == 12  # dropped before anything is counted
    assert paper.metrics["comp_valid"] == pytest.approx(11 / 12)
    assert paper.metrics["struct_valid"] == 1.0
    assert paper.metrics["cov_precision"] == 1.0  # over the 11 valid samples
    assert paper.notes[0] == (
        "2 samples did not parse: broken: unreadable structure (ValueError: Invalid CIF file with no structures!); "
        "no-cif: no CIF (line 1: expected three lattice lengths)"
    )

    cdvae = evaluate(samples, reference, config=config("cdvae", cache_samples=True))
    assert cdvae.metrics["n_counted"] == 14  # counted as generated, invalid
    assert cdvae.metrics["struct_valid"] == pytest.approx(12 / 14)
    assert cdvae.metrics["comp_valid"] == pytest.approx(11 / 14)
    assert cdvae.metrics["valid"] == pytest.approx(11 / 14)
    assert cdvae.metrics["cov_precision"] == pytest.approx(12 / 14)  # every parsed sample is a reference
    assert cdvae.metrics["n_reference_in_coverage"] == 30 and paper.metrics["n_reference_in_coverage"] == 27

    per_sample = paper.per_sample.set_index("id")
    assert per_sample.index.tolist()[7] == "broken"  # the file's order
    assert not per_sample.loc["broken", "parsed"] and not per_sample.loc["broken", "counted"]
    assert per_sample.loc["no-cif", "parse_error"] == "no CIF (line 1: expected three lattice lengths)"
    assert per_sample.loc["s0", "nearest_ref_struct_dist"] == 0.0


def test_paper_protocol_fingerprints_only_valid_samples_and_cdvae_all(test_rows: pd.DataFrame, reference: Path,
                                                                       tmp_path: Path) -> None:
    samples = sample_csv(tmp_path / "samples.csv", as_samples(test_rows.iloc[8:16]))
    paper = evaluate(samples, reference, config=config("paper", matcher=False)).per_sample
    cdvae = evaluate(samples, reference, config=config("cdvae", matcher=False)).per_sample
    invalid = ~paper["comp_valid"]
    assert invalid.sum() == 2
    assert not paper.loc[invalid, "fp_ok"].any() and cdvae.loc[invalid, "fp_ok"].all()
    assert paper.loc[invalid, "nearest_ref_struct_dist"].isna().all()
    assert (cdvae.loc[invalid, "nearest_ref_struct_dist"] == 0).all()


def test_cdvae_draws_n_valid_samples_for_the_distributions(reference: Path) -> None:
    drawn = evaluate(reference, reference, config=EvaluateConfig(
        protocol=ProtocolSettings("cdvae", n_valid=10, seed=3), progress=False, cache_samples=True))
    assert drawn.metrics["n_distribution_samples"] == 10
    assert drawn.per_sample["in_distributions"].sum() == 10
    assert drawn.per_sample.loc[drawn.per_sample["in_distributions"], "valid"].all()
    again = evaluate(reference, reference, config=EvaluateConfig(
        protocol=ProtocolSettings("cdvae", n_valid=10, seed=3), progress=False, cache_samples=True))
    assert again.metrics["wdist_density"] == drawn.metrics["wdist_density"] > 0


def test_reference_fingerprints_are_cached_by_content_and_settings(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYSTEXT_CACHE_DIR", str(tmp_path / "cache"))
    small = _head(reference, 3, tmp_path)
    first = profile_file(small, progress=False)
    assert not first.from_cache
    assert len(list((tmp_path / "cache" / "fingerprints").glob("*.npz"))) == 1
    copy = tmp_path / "copy.csv"
    copy.write_bytes(small.read_bytes())
    second = profile_file(copy, progress=False)
    assert second.from_cache  # the same bytes at another path
    pd.testing.assert_frame_equal(second.table, first.table)
    np.testing.assert_array_equal(second.struct_fp, first.struct_fp)
    assert second.structure(2) == first.structure(2)
    profile_file(small, FingerprintSettings(time_limit=30.0), progress=False)
    assert len(list((tmp_path / "cache" / "fingerprints").glob("*.npz"))) == 2  # the settings are part of the key
    assert not list((tmp_path / "cache" / "fingerprints").glob(".*"))  # no partial files left


def test_a_set_held_in_memory_is_cached_by_its_records_when_asked(
    reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CRYSTEXT_CACHE_DIR", str(tmp_path / "cache"))
    records = read_structures(_head(reference, 3, tmp_path)).records
    first = profile_dataset(Dataset(records), jobs=1, progress=False, cache=True)
    assert not first.from_cache and first.column("fp_ok").all()
    again = profile_dataset(Dataset(list(records)), jobs=1, progress=False, cache=True)
    assert again.from_cache
    np.testing.assert_array_equal(again.struct_fp, first.struct_fp)
    moved = records[0].structure.copy()
    moved.translate_sites([0], [0.01, 0.0, 0.0])
    changed = profile_dataset(Dataset([Record(records[0].id, moved), *records[1:]]), jobs=1,
                              progress=False, cache=True)
    assert not changed.from_cache  # a structure is part of the key, not only its id
    assert not profile_dataset(Dataset(records), jobs=1, progress=False).from_cache  # no cache unless asked
    assert len(list((tmp_path / "cache" / "fingerprints").glob("*.npz"))) == 2


def test_a_disordered_crystal_is_an_unparsed_row_that_names_its_site() -> None:
    from pymatgen.core import Lattice, Structure

    alloy = Structure(Lattice.cubic(3.0), [{"Fe": 0.5, "Co": 0.5}], [[0, 0, 0]])
    profiles = profile_dataset(Dataset([Record("alloy", alloy)]), jobs=1, progress=False)
    assert not profiles.column("parsed")[0]
    assert profiles.column("parse_error")[0] == "site Fe0.5 Co0.5 is disordered"


def test_novelty_uniqueness_stability_and_sun(test_rows: pd.DataFrame, reference: Path, tmp_path: Path) -> None:
    train = [tmp_path / "train.csv", tmp_path / "val.csv"]  # a model's training set in two files
    test_rows.iloc[:6].to_csv(train[0], index=False)
    test_rows.iloc[6:10].to_csv(train[1], index=False)
    # s0..s7 are rows 8-15 (rows 11 and 14, s3 and s6, are compositionally invalid); s8 repeats row 12 (s4).
    samples = sample_csv(tmp_path / "samples.csv", as_samples(pd.concat([test_rows.iloc[8:16], test_rows.iloc[[12]]])))
    stability = tmp_path / "stability.csv"
    pd.DataFrame({
        "id": ["s2", "s3", "s4", "s5", "s8", "ghost"],
        "e_above_hull": [-0.01, 0.05, -0.02, 0.3, -0.02, 0.0],
        "error": ["", "", "", "", "", ""],
    }).to_csv(stability, index=False)

    result = evaluate(samples, reference, train=train, stability=stability, config=config("paper"))
    m, per = result.metrics, result.per_sample.set_index("id")
    assert m["n_counted"] == 9 and m["n_valid"] == 7
    assert m["uniqueness"] == pytest.approx(6 / 7)  # s8 repeats s4
    assert bool(per.loc["s4", "unique"]) and not bool(per.loc["s8", "unique"])
    assert pd.isna(per.loc["s3", "unique"])  # invalid samples are not judged
    assert m["novelty_matcher"] == pytest.approx(5 / 7)  # s0 and s1 (rows 8, 9) are in the second training file
    assert not bool(per.loc["s0", "novel_matcher"]) and bool(per.loc["s2", "novel_matcher"])
    assert m["novelty"] == pytest.approx(5 / 7)  # the paper's fingerprint rule agrees here
    assert per.loc["s0", "nearest_train_struct_dist"] == 0.0
    # Stability rates and S.U.N. are over the 5 stability rows that name a sample ("ghost" names none).
    assert m["n_stability_rows"] == m["n_with_e_above_hull"] == 5
    assert m["metastable_rate"] == pytest.approx(4 / 5)  # s2, s3, s4, s8
    assert m["stable_rate"] == pytest.approx(3 / 5)  # s2, s4, s8
    assert m["sun_rate"] == pytest.approx(2 / 5)  # s2 and s4; s8 repeats s4
    assert m["msun_rate"] == pytest.approx(3 / 5)  # s2, s3 and s4: S.U.N. asks stability, not SMACT validity
    assert bool(per.loc["s4", "sun"]) and not bool(per.loc["s8", "sun"]) and pd.isna(per.loc["s0", "sun"])
    assert f"{stability}: 1 ids match no sample" in result.notes
    assert f"{stability}: 5 rows have no relaxed structure; S.U.N. judges them as generated" in result.notes


def test_conditional_accuracy(test_rows: pd.DataFrame, reference: Path, tmp_path: Path) -> None:
    rows = test_rows.iloc[:4]
    asked = {
        "s0": {"formula": "GaTe", "spacegroup": 194},  # mp-10009 is GaTe in P6_3/mmc
        "s1": {"formula": "NaCl"},
        "s2": {"spacegroup": 1, "e_above_hull": 0.0},
        "s3": {"e_above_hull": 0.0},  # not relaxed: not a miss
    }
    samples = sample_csv(tmp_path / "samples.csv", as_samples(rows, asked))
    stability = tmp_path / "stability.csv"
    pd.DataFrame({"id": ["s2"], "e_above_hull": [0.04]}).to_csv(stability, index=False)
    m = evaluate(samples, reference, stability=stability, config=config("paper", matcher=False)).metrics
    assert (m["n_formula_conditioned"], m["formula_accuracy"]) == (2, 0.5)
    assert (m["n_spacegroup_conditioned"], m["spacegroup_accuracy"]) == (2, 0.5)
    assert (m["n_stability_conditioned"], m["stability_conditioned_n_relaxed"]) == (2, 1)
    assert m["stability_conditioned_e_above_hull_mae"] == pytest.approx(0.04)
    assert m["stability_conditioned_metastable_rate"] == 1.0


def test_other_input_kinds_score_the_same(test_rows: pd.DataFrame, reference: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, cif in enumerate(test_rows["cif"].iloc[:5]):
        (folder / f"c{i}.cif").write_text(cif)
    from_folder = evaluate(folder, reference, config=config("paper", matcher=False))
    from_csv = evaluate(_head(reference, 5, tmp_path), reference, config=config("paper", matcher=False))
    for key in ("struct_valid", "comp_valid", "cov_precision", "wdist_density"):
        assert from_folder.metrics[key] == pytest.approx(from_csv.metrics[key])


def _head(path: Path, rows: int, tmp_path: Path) -> Path:
    target = tmp_path / "head.csv"
    pd.read_csv(path, nrows=rows).to_csv(target, index=False)
    return target


def test_text_format_round_trip_samples(test_rows: pd.DataFrame, reference: Path, tmp_path: Path) -> None:
    """Samples as the model writes them (rounded by the text format) are valid and near their originals."""
    rows = as_samples(test_rows.iloc[:6])
    for row, cif in zip(rows, test_rows["cif"].iloc[:6]):
        from pymatgen.core import Structure

        text = encode(Structure.from_str(cif, fmt="cif"))
        row["raw_text"], row["cif"] = text, decode(text).to(fmt="cif")
    result = evaluate(sample_csv(tmp_path / "s.csv", rows), reference, config=config("paper", matcher=False))
    assert result.metrics["struct_valid"] == 1.0
    assert np.nanmax(result.per_sample["nearest_ref_struct_dist"]) < 0.4


def test_bad_inputs_give_one_line_messages(reference: Path, tmp_path: Path) -> None:
    no_cif = tmp_path / "no_cif.csv"
    pd.DataFrame({"id": ["a"], "text": ["x"]}).to_csv(no_cif, index=False)
    with pytest.raises(DatasetError, match=r"no_cif.csv: no 'cif', 'structure' or 'cif_string' column "
                       r"\(columns: id, text\); name yours with --structure-column$"):
        evaluate(no_cif, reference, config=QUIET)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match=r"empty.csv: no rows \(the file is empty\)$"):
        evaluate(empty, reference, config=QUIET)
    header_only = tmp_path / "header.csv"
    header_only.write_text("id,cif\n")
    with pytest.raises(DatasetError, match=r"header.csv: no rows \(only a header: id, cif\)$"):
        evaluate(header_only, reference, config=QUIET)
    repeated = sample_csv(tmp_path / "repeated.csv", [{"id": "a", "cif": BROKEN_CIF}, {"id": "a", "cif": ""}])
    with pytest.raises(DatasetError, match=r"repeated.csv: id 'a' appears 2 times; ids must be unique$"):
        evaluate(repeated, reference, config=QUIET)
    bad_stability = tmp_path / "stability.csv"
    pd.DataFrame({"id": ["s0"], "energy": [1.0]}).to_csv(bad_stability, index=False)
    with pytest.raises(EvaluateError, match=r"stability.csv: no 'e_above_hull' column \(columns: id, energy\)$"):
        evaluate(reference, reference, stability=bad_stability, config=config(cache_samples=True, matcher=False))
    with pytest.raises(ValueError, match="unknown protocol 'diffcsp' \\(known: paper, cdvae\\)"):
        ProtocolSettings("diffcsp")


def test_nan_coordinates_and_huge_cells_are_reported_per_record(reference: Path, tmp_path: Path) -> None:
    from ase import Atoms
    from ase.io import write
    from pymatgen.core import Lattice, Structure

    salt = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    big = salt.copy()
    big.make_supercell([5, 5, 10])
    rows = [{"id": "salt", "cif": salt.to(fmt="cif")}, {"id": "big", "cif": big.to(fmt="cif")}]
    samples = sample_csv(tmp_path / "samples.csv", rows)
    limited = EvaluateConfig(
        protocol=ProtocolSettings("cdvae"), fingerprint=FingerprintSettings(time_limit=0.05), progress=False,
        matcher=False,
    )
    per = evaluate(samples, reference, config=limited).per_sample.set_index("id")
    assert per.loc["big", "n_atoms"] == 500
    assert per.loc["big", "fp_error"] == "structure fingerprint took more than 0.05 s of CPU time"
    assert not per.loc["big", "valid"] and per.loc["salt", "valid"]
    capped = evaluate(samples, reference, config=config("paper", matcher=False, max_atoms=100)).per_sample
    assert capped.set_index("id").loc["big", "parse_error"] == "500 atoms, more than max_atoms=100"

    frames = [Atoms("NaCl", scaled_positions=[[0, 0, 0], [0.5, 0.5, 0.5]], cell=[5.64] * 3, pbc=True) for _ in range(2)]
    frames[1].positions[1, 0] = np.nan
    frames[0].info["id"], frames[1].info["id"] = "good", "nan"
    write(tmp_path / "frames.extxyz", frames, format="extxyz")
    per = evaluate(tmp_path / "frames.extxyz", reference, config=config("paper", matcher=False)).per_sample
    assert per.set_index("id").loc["nan", "parse_error"] == "coordinates or lattice are not finite numbers"


def test_cli_writes_every_output(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args([str(reference), "--reference", str(reference), "--out", str(out), "--quiet",
                              "--protocol", "cdvae", "--joint-coverage", "--cache-samples"])
    assert run(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "per_sample.csv", "report.html", "table.md"]
    document = json.loads((out / "metrics.json").read_text())
    assert document["protocol"]["name"] == "cdvae"
    assert document["versions"]["smact"] == "2.5.5"
    assert {"matminer", "pymatgen", "spglib"} <= set(document["versions"])
    assert document["metrics"]["cov_recall_joint"] == 1.0
    assert len(pd.read_csv(out / "per_sample.csv")) == 30
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].startswith(
        "| Samples | Protocol | Struct. valid | Comp. valid | COV-R | COV-P | wdist density | wdist #elem |"
    )
    assert "| reference.csv | cdvae | 1.0000 | 0.9000 | 1.0000 | 1.0000 |" in printed


def test_crystext_evaluate_command(reference: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crystext.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", str(reference), "--reference", str(reference), "-o", str(out), "--quiet",
                 "--cache-samples", "--no-matcher"]) == 0
    assert json.loads((out / "metrics.json").read_text())["protocol"]["name"] == "paper"
    assert main(["evaluate", str(tmp_path / "missing.csv"), "--reference", str(reference)]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"crystext evaluate: error: {tmp_path / 'missing.csv'}: no such file or folder"
