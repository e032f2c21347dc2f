"""Dataset readers, the benchmark registry and fetching, and training sets built from several splits."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure

from crystext import data
from crystext.data import (
    DATASETS,
    REFERENCES,
    DatasetError,
    DatasetSource,
    dataset_dir,
    fetch,
    read_cif_dir,
    read_csv,
    read_extxyz,
    read_split,
    read_structures,
    training_set,
)


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_read_csv_keeps_properties_and_reports_bad_rows(shared_data, tmp_path) -> None:
    frame = pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=20)
    good_cif = frame.loc[0, "cif"]
    big = Structure(Lattice.cubic(3.3), ["Po"], [[0, 0, 0]])
    big.make_supercell([5, 10, 10])
    extra = pd.DataFrame(
        {
            "material_id": ["bad-cif", "empty-cif", "nan-coords", "huge-cell", "stacked-atoms"],
            "cif": [
                "data_broken\n_cell_length_a 4\nloop_\n_atom_site_label\nNa1\n",
                "",
                good_cif.replace("0.33333300  0.66666700  0.18295900", "nan  0.66666700  0.18295900"),
                big.to(fmt="cif"),
                Structure(Lattice.cubic(4.0), ["Na", "Na"], [[0, 0, 0], [0, 0, 0]]).to(fmt="cif"),
            ],
        }
    )
    path = tmp_path / "mixed.csv"
    pd.concat([frame, extra]).to_csv(path)
    dataset = read_csv(path, max_atoms=100)

    assert len(dataset) == 20
    first = dataset.records[0]
    assert first.id == "mp-10009"
    assert first.properties["pretty_formula"] == "GaTe"
    assert first.properties["spacegroup.number"] == 194
    assert first.structure.composition.reduced_formula == "GaTe"
    reasons = dict(dataset.skipped)
    assert list(reasons) == ["bad-cif", "empty-cif", "nan-coords", "huge-cell", "stacked-atoms"]
    assert reasons["stacked-atoms"] == (
        "unreadable structure (ValueError: atoms share a position (the CIF reader merges them into one site))"
    )
    assert reasons["empty-cif"] == "unreadable structure (ValueError: empty CIF)"
    assert reasons["huge-cell"] == "500 atoms, more than max_atoms=100"
    assert reasons["bad-cif"].startswith("unreadable structure (")
    assert dataset.summary().startswith(f"{path}: 20 structures, 5 skipped: bad-cif: unreadable structure")


def test_whole_file_problems_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(DatasetError, match=r"nowhere\.csv: no such file"):
        read_csv(tmp_path / "nowhere.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    with pytest.raises(DatasetError, match=r"empty\.csv: no rows \(the file is empty\)$"):
        read_csv(empty)
    no_cif = tmp_path / "nocif.csv"
    no_cif.write_text("material_id,formula\nmp-1,NaCl\n")
    with pytest.raises(DatasetError) as caught:
        read_csv(no_cif)
    assert str(caught.value) == (
        f"{no_cif}: no 'cif', 'structure' or 'cif_string' column (columns: material_id, formula); "
        "name yours with --structure-column"
    )
    with pytest.raises(DatasetError, match=r"unknown kind of file"):
        read_structures(tmp_path / "structures.pdf")


def test_read_gzipped_split(shared_data, head_csv, tmp_path) -> None:
    head_csv(shared_data / "perov_5" / "test.csv", 5, tmp_path / "plain.csv")
    with open(tmp_path / "plain.csv", "rb") as src, gzip.open(tmp_path / "test.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (tmp_path / "plain.csv").unlink()
    dataset = read_split(tmp_path, "test")
    assert len(dataset) == 5
    assert dataset.records[0].id == "3961"  # perov_5 has an integer material_id column
    assert dataset.records[0].properties["formula"] == "TiOsOFN"
    assert dataset.records[0].structure.composition == Composition("TiOsOFN")
    with pytest.raises(DatasetError, match=r"no val\.csv or val\.csv\.gz"):
        read_split(tmp_path, "val")


def test_cif_folder_and_extxyz(tmp_path) -> None:
    folder = tmp_path / "cifs"
    folder.mkdir()
    nacl().to(filename=str(folder / "nacl.cif"))
    Structure(Lattice.cubic(2.87), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(folder / "fe.cif"))
    (folder / "junk.cif").write_text("this is not a CIF")
    dataset = read_structures(folder)
    assert [r.id for r in dataset] == ["fe", "nacl"]
    assert [rid for rid, _ in dataset.skipped] == ["junk"]
    with pytest.raises(DatasetError, match="no .cif files"):
        read_cif_dir(tmp_path)

    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = [AseAtomsAdaptor.get_atoms(r.structure) for r in dataset]
    frames[1].info["material_id"] = "my-nacl"
    write(tmp_path / "frames.extxyz", frames, format="extxyz")
    from_xyz = read_extxyz(tmp_path / "frames.extxyz")
    assert [r.id for r in from_xyz] == ["frame0", "my-nacl"]
    assert from_xyz.records[1].structure.lattice.abc == pytest.approx((5.64, 5.64, 5.64))
    assert from_xyz.records[1].structure.composition.reduced_formula == "NaCl"


def test_training_set_joins_splits_dedupes_and_holds_out(shared_data, head_csv, tmp_path) -> None:
    head_csv(shared_data / "mp_20" / "val.csv", 30, tmp_path / "val.csv")
    head_csv(shared_data / "mp_20" / "test.csv", 10, tmp_path / "train.csv")
    # Put one val row into train as well: it must appear once.
    train = pd.read_csv(tmp_path / "train.csv")
    pd.concat([train, pd.read_csv(tmp_path / "val.csv", nrows=1)]).to_csv(tmp_path / "train.csv", index=False)
    kept, held = training_set(tmp_path, ("train", "val"), holdout=0.1, seed=3)
    ids = [r.id for r in kept] + [r.id for r in held]
    assert len(ids) == len(set(ids)) == 40
    assert len(held) == 4
    again_kept, again_held = training_set(tmp_path, ("train", "val"), holdout=0.1, seed=3)
    assert [r.id for r in again_held] == [r.id for r in held]
    _, other_held = training_set(tmp_path, ("train", "val"), holdout=0.1, seed=4)
    assert [r.id for r in other_held] != [r.id for r in held]


def test_mp20_train_plus_val_gives_10894_structures(shared_data) -> None:
    kept, held = training_set(shared_data / "mp_20", ("train", "val"), holdout=0.05, seed=0)
    assert len(kept) + len(held) == 10894
    assert len(held) == 545
    assert not {r.id for r in kept} & {r.id for r in held}


def test_dataset_dir_prefers_a_local_copy(shared_data, monkeypatch) -> None:
    assert dataset_dir("mp_20", shared_data) == shared_data / "mp_20"
    assert dataset_dir("perov_5", shared_data / "perov_5") == shared_data / "perov_5"
    monkeypatch.setenv("CRYSTEXT_DATA_DIR", str(shared_data))
    assert dataset_dir("carbon_24") == shared_data / "carbon_24"
    with pytest.raises(DatasetError, match="unknown dataset 'mp_21'"):
        dataset_dir("mp_21")


def _served_source(tmp_path: Path, sha: str | None) -> DatasetSource:
    """A dataset source whose 'download' reads a local file through a file:// URL."""
    upstream = tmp_path / "upstream"
    upstream.mkdir(exist_ok=True)
    (upstream / "test.csv").write_text("material_id,cif\n")
    return DatasetSource("tiny", "test set", {"test": (upstream / "test.csv").as_uri()}, {"test": sha} if sha else {})


def test_fetch_downloads_verifies_and_records_checksums(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(DATASETS, "tiny", _served_source(tmp_path, None))
    folder = fetch("tiny")
    assert folder == data.cache_dir() / "tiny"
    digest = hashlib.sha256(b"material_id,cif\n").hexdigest()
    assert (folder / "SHA256SUMS").read_text() == f"{digest}  test.csv\n"
    assert dataset_dir("tiny") == folder  # now served from the cache

    monkeypatch.setitem(DATASETS, "tiny2", DatasetSource("tiny2", "", DATASETS["tiny"].urls, {"test": "0" * 64}))
    with pytest.raises(DatasetError, match="checksum mismatch"):
        fetch("tiny2")
    assert not list((data.cache_dir() / "tiny2").iterdir())


def test_fetch_checks_a_pinned_md5_too(tmp_path, monkeypatch) -> None:
    served = _served_source(tmp_path, None)
    good = hashlib.md5(b"material_id,cif\n").hexdigest()
    monkeypatch.setitem(DATASETS, "md5ok", DatasetSource("md5ok", "", served.urls, md5={"test": good}))
    assert (fetch("md5ok") / "test.csv").read_text() == "material_id,cif\n"
    monkeypatch.setitem(DATASETS, "md5bad", DatasetSource("md5bad", "", served.urls, md5={"test": "0" * 32}))
    with pytest.raises(DatasetError, match=f"checksum mismatch \\(md5 {good}, expected 0{{32}}\\)"):
        fetch("md5bad")
    assert not list((data.cache_dir() / "md5bad").iterdir())


def test_fetch_offline_names_the_url_and_the_way_out(monkeypatch) -> None:
    url = "http://127.0.0.1:9/mp_20/test.csv"
    monkeypatch.setitem(DATASETS, "offline", DatasetSource("offline", "", {"test": url}))
    with pytest.raises(DatasetError) as caught:
        fetch("offline", timeout=5)
    message = str(caught.value)
    assert message.startswith(f"could not download {url} (")
    assert "--data-dir DIR or set CRYSTEXT_DATA_DIR=DIR, where DIR/offline/ holds test.csv" in message
    assert not list((data.cache_dir() / "offline").iterdir())


def test_registry_points_at_pinned_public_files() -> None:
    assert set(DATASETS) >= {"mp_20", "perov_5", "carbon_24", "mpts_52"}
    for source in DATASETS.values():
        assert set(source.urls) == {"train", "val", "test"}
        assert all(url.startswith("https://") for url in source.urls.values())
        assert all(len(sha) == 64 for sha in source.sha256.values())


def test_the_mp_snapshot_is_pinned_by_both_checksums() -> None:
    source = REFERENCES["mp_2023_02_07"]
    assert source.filename("entries") == "2023-02-07-mp-computed-structure-entries.json.gz"
    assert source.urls["entries"].startswith("https://") and source.urls["entries"].endswith("/40344436")
    assert len(source.sha256["entries"]) == 64 and source.md5["entries"] == "76fc748db6b175bb80de4c276d27c235"


def test_pinned_checksums_match_the_local_copies(shared_data) -> None:
    for name, source in DATASETS.items():
        for split, sha in source.sha256.items():
            local = shared_data / name / source.filename(split)
            assert hashlib.sha256(local.read_bytes()).hexdigest() == sha, local
