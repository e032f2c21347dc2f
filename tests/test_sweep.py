"""A sweep of randomly corrupted crystal texts and CIFs: each ends in crystext's own error or a usable structure.

1,000 texts go through `decode` (and the `crystext decode` command), 1,000 CIFs through the reader that
`evaluate` and `stability` share; whole files of corrupted bytes go through the same reader. Nothing may
end in any other exception, and every structure that comes out must be one the pipeline can use.
"""

from __future__ import annotations

import json
import math
import string
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Structure

from crystext.cli import main
from crystext.data import DatasetError, read_structures
from crystext.stability import read_samples
from crystext.textformat import CrystalText, CrystalTextError

SEED = 20261130
N_EACH = 1000
#: Characters a corruption inserts: digits, letters, punctuation, whitespace, and a few non-ASCII ones.
ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n\t" + "é−∞\u00a0"
#: What a corruption may put in place of a number.
ODD_NUMBERS = ("nan", "inf", "-inf", "1e400", "9" * 400, "-0.5", "1e-30", "", "0x10", "1,5")


def _corrupt(text: str, rng: np.random.Generator) -> str:
    """One to three random edits: delete, insert, duplicate or swap lines, replace a number, truncate."""
    for _ in range(int(rng.integers(1, 4))):
        kind = int(rng.integers(0, 7))
        if not text:
            return text
        i = int(rng.integers(0, len(text)))
        if kind == 0:
            text = text[:i] + text[i + int(rng.integers(1, 6)):]
        elif kind == 1:
            text = text[:i] + "".join(rng.choice(list(ALPHABET), int(rng.integers(1, 4)))) + text[i:]
        elif kind == 2:
            text = text[:i]
        else:
            lines = text.split("\n")
            j, k = (int(x) for x in rng.integers(0, len(lines), 2))
            if kind == 3:
                lines.insert(j, lines[k])
            elif kind == 4:
                lines[j], lines[k] = lines[k], lines[j]
            elif kind == 5:
                words = lines[j].split(" ")
                words[int(rng.integers(0, len(words)))] = str(rng.choice(ODD_NUMBERS))
                lines[j] = " ".join(words)
            else:
                del lines[j]
            text = "\n".join(lines)
    return text


def _usable(structure: Structure) -> bool:
    """A structure the rest of the pipeline can take: atoms, a finite cell with volume, finite coordinates."""
    lattice = structure.lattice
    return (
        len(structure) > 0
        and all(math.isfinite(x) for x in (*lattice.abc, *lattice.angles))
        and math.isfinite(lattice.volume)
        and lattice.volume > 0
        and bool(np.isfinite(structure.frac_coords).all())
    )


@pytest.fixture(scope="module")
def originals(shared_data: Path) -> list[Structure]:
    cifs = pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=25)["cif"]
    return [Structure.from_str(cif, fmt="cif") for cif in cifs]


def _sweep(originals: list[Structure], to_text: Callable[[Structure], str], salt: int) -> list[str]:
    rng = np.random.default_rng([SEED, salt])
    texts = [to_text(s) for s in originals]
    return [_corrupt(texts[i % len(texts)], rng) for i in range(N_EACH)]


def test_corrupted_crystal_texts_decode_or_say_why(originals: list[Structure], tmp_path: Path, capsys) -> None:
    texts = _sweep(originals, lambda s: CrystalText.from_structure(s).to_str(), salt=1)
    outcomes = {"structure": 0, "error": 0}
    for text in texts:
        try:
            structure = CrystalText.from_str(text).to_structure()
        except CrystalTextError as err:
            assert str(err).strip() and "\n" not in str(err).strip()
            outcomes["error"] += 1
        else:
            assert _usable(structure), text
            outcomes["structure"] += 1
    assert outcomes["structure"] > 50 and outcomes["error"] > 50  # the sweep reaches both ends

    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    assert main(["decode", str(jsonl), "-o", str(tmp_path / "cifs")]) == 1  # some were skipped
    err = capsys.readouterr().err
    assert "Traceback" not in err
    written = len(list((tmp_path / "cifs").glob("*.cif")))
    assert f"decoded {written} of {N_EACH} crystals" in err and written == outcomes["structure"]


def test_corrupted_cifs_are_read_or_skipped_with_a_reason(originals: list[Structure], tmp_path: Path) -> None:
    cifs = _sweep(originals, lambda s: s.to(fmt="cif"), salt=2)
    samples = tmp_path / "samples.csv"
    pd.DataFrame({"id": [f"c{i}" for i in range(N_EACH)], "cif": cifs}).to_csv(samples, index=False)
    for read in (read_structures, read_samples):  # evaluate's reader, and stability's
        dataset = read(samples)
        assert len(dataset.records) + len(dataset.skipped) == N_EACH
        assert sorted(r.id for r in dataset.records) + sorted(rid for rid, _ in dataset.skipped) != []
        assert {r.id for r in dataset.records}.isdisjoint(rid for rid, _ in dataset.skipped)
        assert all(_usable(r.structure) for r in dataset.records)
        assert all(reason.strip() and "\n" not in reason for _, reason in dataset.skipped)
        assert len(dataset.records) > 50 and len(dataset.skipped) > 50


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".cif", ".json", ".zip", ".tar.gz", ".extxyz", ".pt"])
def test_corrupted_files_are_read_or_refused_in_one_line(
    originals: list[Structure], tmp_path: Path, suffix: str
) -> None:
    good = tmp_path / f"good{suffix}"
    _write(good, originals[:5])
    data = good.read_bytes()
    rng = np.random.default_rng([SEED, len(suffix)])
    for trial in range(25):
        bad = tmp_path / f"bad{trial}{suffix}"
        edits = rng.integers(0, max(len(data), 1), int(rng.integers(1, 20)))
        damaged = bytearray(data[: int(rng.integers(0, len(data) + 1))] if trial % 3 == 0 else data)
        for position in edits:
            if position < len(damaged):
                damaged[int(position)] = int(rng.integers(0, 256))
        bad.write_bytes(bytes(damaged))
        try:
            dataset = read_structures(bad)
        except DatasetError as err:
            assert str(err).startswith(str(bad)) and "\n" not in str(err)
        else:
            assert all(_usable(r.structure) for r in dataset.records)


def _write(path: Path, structures: list[Structure]) -> None:
    """`structures` in the format `path`'s suffix names."""
    import tarfile
    import zipfile

    import torch

    name = path.name
    cifs = [s.to(fmt="cif") for s in structures]
    if name.endswith((".csv", ".csv.gz")):
        pd.DataFrame({"id": [f"s{i}" for i in range(len(cifs))], "cif": cifs}).to_csv(path, index=False)
    elif name.endswith(".cif"):
        path.write_text(cifs[0])
    elif name.endswith(".json"):
        path.write_text(json.dumps([s.as_dict() for s in structures]))
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            for i, cif in enumerate(cifs):
                archive.writestr(f"s{i}.cif", cif)
    elif name.endswith(".tar.gz"):
        folder = path.parent / "members"
        folder.mkdir(exist_ok=True)
        with tarfile.open(path, "w:gz") as archive:
            for i, cif in enumerate(cifs):
                (folder / f"s{i}.cif").write_text(cif)
                archive.add(folder / f"s{i}.cif", arcname=f"s{i}.cif")
    elif name.endswith(".extxyz"):
        from ase.io import write
        from pymatgen.io.ase import AseAtomsAdaptor

        write(str(path), [AseAtomsAdaptor.get_atoms(s) for s in structures], format="extxyz")
    else:  # a CDVAE-style evaluation file
        torch.save({
            "frac_coords": torch.tensor(np.concatenate([s.frac_coords for s in structures]))[None],
            "atom_types": torch.tensor([site.specie.Z for s in structures for site in s])[None],
            "lengths": torch.tensor([s.lattice.abc for s in structures])[None],
            "angles": torch.tensor([s.lattice.angles for s in structures])[None],
            "num_atoms": torch.tensor([len(s) for s in structures])[None],
        }, path)
