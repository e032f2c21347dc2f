"""One structure reader for every generator's output: each format, the id rule, whole-file errors, and the same
structures scoring the same in `evaluate` whatever file they come in; `stability` and `encode` read them too."""

from __future__ import annotations

import argparse
import gzip
import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from crystext.cli import main
from crystext.data import Dataset, DatasetError, read_csv, read_structures, read_table, table_ids, training_set
from crystext.evaluate import EvaluateConfig, ProtocolSettings, evaluate
from crystext.evaluate.inputs import SampleColumns
from crystext.stability import read_samples

N = 4  # structures in every format
METRICS = ("struct_valid", "comp_valid", "cov_recall", "cov_precision", "wdist_density")


class Opaque:
    """An object a weights-only torch load must refuse to unpickle."""


@pytest.fixture(scope="module")
def rows(shared_data: Path) -> pd.DataFrame:
    """The first 20 rows of the MP-20 test split: the reference set, whose first N are the samples."""
    return pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=20)


@pytest.fixture(scope="module")
def structures(rows: pd.DataFrame) -> list[Structure]:
    return [Structure.from_str(cif, fmt="cif") for cif in rows["cif"].iloc[:N]]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readers")


@pytest.fixture(scope="module")
def reference(rows: pd.DataFrame, folder: Path) -> Path:
    path = folder / "reference.csv"
    rows.to_csv(path, index=False)
    return path


# --------------------------------------------------------------------------- the formats, as each tool writes them


def paper_csv(structures: list[Structure], path: Path) -> Path:
    """The paper's saved samples: `df.to_csv(path)` with the default index, a cif column and nothing else."""
    pd.DataFrame({"cif": [s.to(fmt="cif") for s in structures]}).to_csv(path)
    return path


def cdvae_pt(structures: list[Structure], path: Path) -> Path:
    """CDVAE's eval_gen.pt: float32 tensors with a leading axis of one evaluation, the run's argparse settings."""
    import torch

    torch.save({
        "eval_setting": argparse.Namespace(num_evals=1, label=""),
        "frac_coords": torch.tensor(np.concatenate([s.frac_coords for s in structures]), dtype=torch.float32)[None],
        "atom_types": torch.tensor(np.concatenate([s.atomic_numbers for s in structures]))[None],
        "lengths": torch.tensor([s.lattice.abc for s in structures], dtype=torch.float32)[None],
        "angles": torch.tensor([s.lattice.angles for s in structures], dtype=torch.float32)[None],
        "num_atoms": torch.tensor([len(s) for s in structures])[None],
        "spgs": torch.zeros(1, len(structures)), "all_frac_coords_stack": [], "all_atom_types_stack": [], "time": 1.5,
    }, path)
    return path


def mattergen_extxyz(structures: list[Structure], path: Path) -> Path:
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    write(path, [AseAtomsAdaptor.get_atoms(s) for s in structures], format="extxyz")
    return path


def cif_zip(structures: list[Structure], path: Path) -> Path:
    """MatterGen's generated_crystals_cif.zip: gen_0.cif, gen_1.cif, ... (here with an upper-case suffix too)."""
    with zipfile.ZipFile(path, "w") as archive:
        for i, s in enumerate(structures):
            archive.writestr(f"gen_{i}.cif" if i % 2 else f"gen_{i}.CIF", s.to(fmt="cif"))
        archive.writestr("__MACOSX/._gen_0.cif", b"\x00\x05\x16\x07")
        archive.writestr("README.txt", "not a CIF")
    return path


def cif_tar(structures: list[Structure], path: Path) -> Path:
    """CrystaLLM's archive of generated CIFs, in a folder inside a .tar.gz."""
    with tarfile.open(path, "w:gz") as archive:
        for i, s in enumerate(structures):
            data = s.to(fmt="cif").encode()
            member = tarfile.TarInfo(f"generated/sample_{i}.cif")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    return path


def pymatgen_json(structures: list[Structure], path: Path) -> Path:
    path.write_text(json.dumps([s.as_dict() for s in structures]))
    return path


FORMATS: dict[str, tuple[str, Callable[[list[Structure], Path], Path], list[str]]] = {
    "paper_csv": ("samples.csv", paper_csv, [str(i) for i in range(N)]),
    "cdvae_pt": ("eval_gen.pt", cdvae_pt, [f"row{i}" for i in range(N)]),
    "mattergen_extxyz": ("generated_crystals.extxyz", mattergen_extxyz, [f"frame{i}" for i in range(N)]),
    "cif_zip": ("generated_crystals_cif.zip", cif_zip, [f"gen_{i}" for i in range(N)]),
    "cif_tar_gz": ("crystallm.tar.gz", cif_tar, [f"sample_{i}" for i in range(N)]),
    "pymatgen_json": ("structures.json", pymatgen_json, [f"row{i}" for i in range(N)]),
}


@pytest.fixture(scope="module")
def quick() -> EvaluateConfig:
    # The reference is fingerprinted once and cached (in this session's cache folder); the samples never are.
    return EvaluateConfig(protocol=ProtocolSettings("cdvae"), progress=False, cache=True, cache_samples=False)


@pytest.fixture(scope="module")
def plain_metrics(structures: list[Structure], rows: pd.DataFrame, reference: Path, folder: Path,
                  quick: EvaluateConfig) -> dict:
    """The metrics of the same structures given as a plain CSV (material_id, cif)."""
    path = folder / "plain.csv"
    rows.iloc[:N][["material_id", "cif"]].to_csv(path, index=False)
    return evaluate(path, reference, config=quick).metrics


@pytest.mark.parametrize("kind", list(FORMATS))
def test_every_format_scores_as_the_plain_csv_and_reads_everywhere(
    kind: str, structures: list[Structure], reference: Path, folder: Path, plain_metrics: dict,
    quick: EvaluateConfig, capsys: pytest.CaptureFixture[str],
) -> None:
    name, write, ids = FORMATS[kind]
    (folder / kind).mkdir()
    path = write(structures, folder / kind / name)

    dataset = read_structures(path)
    assert [r.id for r in dataset] == ids and not dataset.skipped
    for record, original in zip(dataset, structures):
        assert record.structure.composition == original.composition
        assert record.structure.volume == pytest.approx(original.volume, rel=1e-5)

    result = evaluate(path, reference, config=quick)
    assert result.metrics["n_samples"] == N
    for key in METRICS:
        assert result.metrics[key] == pytest.approx(plain_metrics[key], abs=1e-6), key
    assert result.per_sample["id"].tolist() == ids  # per_sample.csv joins back to the file

    assert [r.id for r in read_samples(path)] == ids
    capsys.readouterr()
    assert main(["encode", str(path), "--jsonl"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == ids


# --------------------------------------------------------------------------- CSV: the bug, the id rule, columns


def test_a_csv_with_only_a_cif_column_reads_every_row(structures: list[Structure], tmp_path: Path) -> None:
    """The paper's samples (`,cif`) and a bare `cif` CSV once read as zero structures, silently."""
    paper = paper_csv(structures, tmp_path / "paper.csv")
    assert paper.read_text().startswith(",cif\n0,")
    dataset = read_csv(paper)
    assert [r.id for r in dataset] == ["0", "1", "2", "3"]
    assert all(r.properties == {} for r in dataset)  # the index column is no property
    bare = tmp_path / "bare.csv"
    pd.DataFrame({"cif": [s.to(fmt="cif") for s in structures]}).to_csv(bare, index=False)
    assert [r.id for r in read_csv(bare)] == ["row0", "row1", "row2", "row3"]


def test_ids_are_the_cells_text_and_one_rule_for_every_reader(structures: list[Structure], tmp_path: Path) -> None:
    cif = structures[0].to(fmt="cif")
    ids = ["007", "7", "7.0", "1e3", "nan", "", "NA"]
    path = tmp_path / "ids.csv"
    pd.DataFrame({"id": ids, "material_id": [f"mp-{i}" for i in range(7)], "cif": [cif] * 7}).to_csv(path)
    expected = ["007", "7", "7.0", "1e3", "nan", "row5", "NA"]  # `id` before material_id and the index
    assert [r.id for r in read_structures(path)] == expected
    assert table_ids(read_table(path), path) == expected
    assert SampleColumns.from_file(path)[0].order == expected
    assert [r.id for r in read_structures(path, id_column="material_id")] == [f"mp-{i}" for i in range(7)]

    repeated = tmp_path / "repeated.csv"
    pd.DataFrame({"material_id": ["mp-1", "mp-2", "mp-1"], "cif": [cif] * 3}).to_csv(repeated, index=False)
    with pytest.raises(DatasetError, match=rf"^{repeated}: id 'mp-1' appears 2 times; ids must be unique$"):
        read_structures(repeated)
    # A pandas index repeated by pd.concat is no identity: position ids instead.
    concatenated = tmp_path / "concatenated.csv"
    frame = pd.DataFrame({"cif": [cif, cif]})
    pd.concat([frame, frame]).to_csv(concatenated)
    assert [r.id for r in read_structures(concatenated)] == ["row0", "row1", "row2", "row3"]
    with pytest.raises(DatasetError, match=r"no 'sample' id column"):
        read_structures(path, id_column="sample")


def test_structure_column_names_and_structure_json_cells(structures: list[Structure], tmp_path: Path) -> None:
    s = structures[1]
    for column in ("structure", "cif_string"):
        path = tmp_path / f"{column}.csv"
        pd.DataFrame({column: [s.to(fmt="cif")]}).to_csv(path, index=False)
        assert read_structures(path).records[0].structure.composition == s.composition
    custom = tmp_path / "custom.csv"
    pd.DataFrame({"name": ["a", "b"], "gen_structure": [json.dumps(s.as_dict()), s.to(fmt="cif")],
                  "cif": ["", ""]}).to_csv(custom, index=False)
    dataset = read_structures(custom, structure_column="gen_structure")
    assert len(dataset) == 2 and dataset.records[0].structure == s
    assert read_structures(custom).skipped[0] == ("row0", "unreadable structure (ValueError: empty CIF)")
    with pytest.raises(DatasetError, match=r"custom\.csv: no 'cif_text' column \(columns: name, gen_structure, cif\)$"):
        read_structures(custom, structure_column="cif_text")
    with pytest.raises(DatasetError, match=r"can only be named for a CSV file$"):
        read_structures(tmp_path / "x.json", structure_column="cif")

    capsys_free = tmp_path / "texts.jsonl"
    assert main(["encode", str(custom), "--structure-column", "gen_structure", "-o", str(capsys_free)]) == 0
    assert len(capsys_free.read_text().splitlines()) == 2
    assert len(read_samples(custom, "gen_structure")) == 2


def test_a_samples_csv_reports_the_samplers_error(structures: list[Structure], tmp_path: Path) -> None:
    path = tmp_path / "samples.csv"
    pd.DataFrame({"id": ["s0", "s1"], "mode": "unconditional", "conditions": "{}", "raw_text": ["...", "Na"],
                  "cif": [structures[0].to(fmt="cif"), ""], "error": ["", "line 1: expected three lattice lengths"]}
                 ).to_csv(path, index=False)
    dataset = read_structures(path)
    assert [r.id for r in dataset] == ["s0"]
    assert dataset.skipped == [("s1", "line 1: expected three lattice lengths")]


# --------------------------------------------------------------------------- files, folders, archives, tensors


def test_cif_folders_and_archives(structures: list[Structure], tmp_path: Path) -> None:
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    structures[0].to(filename=str(cifs / "a.cif"))
    (cifs / "B.CIF").write_text(structures[1].to(fmt="cif"))
    (cifs / "c.Cif").write_text("not a CIF")
    (cifs / "notes.txt").write_text("ignored")
    dataset = read_structures(cifs)
    assert [r.id for r in dataset] == ["B", "a"] and [rid for rid, _ in dataset.skipped] == ["c"]
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match=r"none: no \.cif files in this folder$"):
        read_structures(tmp_path / "none")
    assert [r.id for r in read_structures(cifs / "B.CIF")] == ["B"]

    tgz = cif_tar(structures[:2], tmp_path / "two.tgz")
    assert [r.id for r in read_structures(tgz)] == ["sample_0", "sample_1"]
    plain_tar = tmp_path / "plain.tar"
    with tarfile.open(plain_tar, "w") as archive:
        for name in ("x/s.cif", "y/s.cif"):  # one file name in two folders: the member paths tell them apart
            info = tarfile.TarInfo(name)
            data = structures[2].to(fmt="cif").encode()
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    assert [r.id for r in read_structures(plain_tar)] == ["x/s", "y/s"]
    no_cifs = tmp_path / "texts.zip"
    with zipfile.ZipFile(no_cifs, "w") as archive:
        archive.writestr("a.txt", "x")
    with pytest.raises(DatasetError, match=r"texts\.zip: no \.cif files in this zip archive$"):
        read_structures(no_cifs)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(cif_zip(structures, tmp_path / "whole.zip").read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"truncated\.zip: not a readable zip archive \(BadZipFile"):
        read_structures(truncated)


def test_torch_evaluation_files(structures: list[Structure], tmp_path: Path) -> None:
    import torch

    flat = {
        "frac_coords": torch.tensor(np.concatenate([s.frac_coords for s in structures[:2]])),
        "atom_types": torch.tensor(np.concatenate([s.atomic_numbers for s in structures[:2]])),
        "lengths": torch.tensor([s.lattice.abc for s in structures[:2]]),
        "angles": torch.tensor([s.lattice.angles for s in structures[:2]]),
        "num_atoms": torch.tensor([len(s) for s in structures[:2]]),
    }
    flat["atom_types"][0] = 0  # padding, no element: that structure alone is skipped
    torch.save(flat, tmp_path / "flat.pt")
    dataset = read_structures(tmp_path / "flat.pt")
    assert [r.id for r in dataset] == ["row1"]
    assert dataset.skipped == [("row0", "unreadable structure (ValueError: atom type 0 is not an atomic number)")]

    two_evals = {k: torch.stack([v, v]) for k, v in flat.items()}
    torch.save(two_evals, tmp_path / "recon.pt")
    assert [r.id for r in read_structures(tmp_path / "recon.pt")] == ["eval0-row1", "eval1-row1"]

    torch.save({**flat, "input_data_batch": Opaque()}, tmp_path / "eval_recon.pt")
    with pytest.raises(DatasetError) as refused:
        read_structures(tmp_path / "eval_recon.pt")
    assert f"{tmp_path / 'eval_recon.pt'}: refused: loading it would unpickle test_readers.Opaque" in str(refused.value)

    torch.save({**flat, "num_atoms": torch.tensor([1, 1])}, tmp_path / "mismatch.pt")
    with pytest.raises(DatasetError, match=r"mismatch\.pt: tensors do not fit together \(frac_coords \["):
        read_structures(tmp_path / "mismatch.pt")
    torch.save(torch.zeros(3), tmp_path / "weights.pt")
    with pytest.raises(DatasetError, match=r"weights\.pt: found a Tensor; expected a CDVAE/DiffCSP/FlowMM"):
        read_structures(tmp_path / "weights.pt")


def test_pymatgen_json_and_ase_files(structures: list[Structure], tmp_path: Path) -> None:
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    by_id = tmp_path / "by_id.json.gz"
    with gzip.open(by_id, "wt") as handle:
        json.dump({"alpha": structures[0].as_dict(), "beta": {"not": "a structure"}}, handle)
    dataset = read_structures(by_id)
    assert [r.id for r in dataset] == ["alpha"] and [rid for rid, _ in dataset.skipped] == ["beta"]
    (tmp_path / "number.json").write_text("3")
    with pytest.raises(DatasetError, match=r"number\.json: found a int; expected a list of pymatgen Structure"):
        read_structures(tmp_path / "number.json")

    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures[:2]]
    write(tmp_path / "POSCAR", atoms[0], format="vasp")
    write(tmp_path / "relaxed.traj", atoms)
    assert [r.id for r in read_structures(tmp_path / "POSCAR")] == ["frame0"]
    traj = read_structures(tmp_path / "relaxed.traj")
    assert [r.structure.composition for r in traj] == [s.composition for s in structures[:2]]
    atoms[0].info["material_id"], atoms[1].info["id"] = "mp-1", "mine"
    write(tmp_path / "named.extxyz", atoms, format="extxyz")
    assert [r.id for r in read_structures(tmp_path / "named.extxyz")] == ["mp-1", "mine"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.cif", b"", "empty file (expected a CSV"),
        ("empty.pt", b"", "empty file (expected a CSV"),
        ("header.csv", b"id,cif\n", "no rows (only a header: id, cif)"),
        ("blank.csv", b"", "no rows (the file is empty)"),
        ("junk.pt", bytes(range(256)) * 4, "not a readable PyTorch file ("),
        ("junk.zip", b"PK\x03\x04" + bytes(range(256)), "not a readable zip archive ("),
        ("junk.tar.gz", b"\x1f\x8b junk", "not a readable tar archive ("),
        ("plain.csv.gz", b"id,cif\na,b\n", "not a readable CSV (BadGzipFile"),
        ("plain.json.gz", b"[]", "not a readable JSON file (BadGzipFile"),
        ("binary.cif", b"\x00\x01\x02", "not a readable CIF (ValueError: binary data, not a text file)"),
        ("junk.extxyz", bytes(range(128, 256)) * 4, "not a readable extxyz file ("),
        ("empty.json", b"[]", "found an empty list; expected a list of pymatgen Structure dicts"),
        ("samples.parquet", b"PAR1", "unknown kind of file (expected a CSV"),
    ],
)
def test_a_file_that_cannot_be_read_is_one_line_naming_it(name: str, content: bytes, message: str,
                                                          tmp_path: Path) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as caught:
        read_structures(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: {message}") and "\n" not in text


# --------------------------------------------------------------------------- joining files


def test_joined_files_keep_every_record(rows: pd.DataFrame, tmp_path: Path) -> None:
    """Two files without ids: 12 records, the later file's colliding ids prefixed with its name."""
    rows.iloc[:6][["cif"]].to_csv(tmp_path / "train.csv", index=False)
    rows.iloc[6:12][["cif"]].to_csv(tmp_path / "val.csv", index=False)
    kept, held = training_set(tmp_path, ("train", "val"), holdout=0.0)
    assert len(kept) + len(held) == 12 and not kept.skipped
    assert [r.id for r in kept][5:8] == ["row5", "val:row0", "val:row1"]

    train, val = read_structures(tmp_path / "train.csv"), read_structures(tmp_path / "val.csv")
    again = Dataset.concat([train, val, train], "three")  # the same file twice: its records once, the rest skipped
    assert len(again) == 12
    assert again.skipped[0] == ("row0", f"repeats the record with this id in {tmp_path / 'train.csv'}")

    (tmp_path / "train.csv").write_text("material_id,cif\n")  # a header-only split is no silent empty split
    with pytest.raises(DatasetError, match=r"train\.csv: no rows \(only a header: material_id, cif\)$"):
        training_set(tmp_path, ("train", "val"))


def test_evaluate_and_stability_take_the_structure_column_flag(structures: list[Structure], reference: Path,
                                                               tmp_path: Path) -> None:
    from crystext.stability.cli import add_arguments

    samples = tmp_path / "other_tool.csv"
    pd.DataFrame({"sample": ["x", "y"], "gen_cif": [s.to(fmt="cif") for s in structures[:2]]}).to_csv(
        samples, index=False)
    out = tmp_path / "eval"
    assert main(["evaluate", str(samples), "--reference", str(reference), "--structure-column", "gen_cif",
                 "--no-matcher", "--quiet", "-o", str(out)]) == 0
    assert pd.read_csv(out / "per_sample.csv")["id"].tolist() == ["row0", "row1"]
    assert json.loads((out / "metrics.json").read_text())["settings"]["structure_column"] == "gen_cif"
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([str(samples), "--structure-column", "gen_cif"]).structure_column == "gen_cif"
