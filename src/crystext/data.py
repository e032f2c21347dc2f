"""Crystal datasets: read them from CSV (CDVAE layout), CIF folders or extxyz; find or fetch the benchmark sets.

Every reader returns a `Dataset`: the structures that parsed, and a list of the rows that did not,
each with its id and the reason, so one bad record never costs the rest.
"""

from __future__ import annotations

import hashlib
import math
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from crystext.errors import CrystextError

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "DatasetSource",
    "Record",
    "dataset_dir",
    "fetch",
    "read_cif_dir",
    "read_csv",
    "read_extxyz",
    "read_split",
    "read_structures",
    "training_set",
]

DATA_DIR_ENV = "CRYSTEXT_DATA_DIR"
CACHE_DIR_ENV = "CRYSTEXT_CACHE_DIR"


class DatasetError(CrystextError):
    """A dataset that cannot be found, fetched or read as a whole (single bad rows are skipped instead)."""


@dataclass(frozen=True)
class Record:
    """One crystal of a dataset: its id, its structure, and the other columns of its row."""

    id: str
    structure: Structure
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Dataset:
    """The records read from one source, and (id, reason) for each record that was skipped."""

    records: list[Record]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def summary(self, show: int = 3) -> str:
        """One line: how many records were read and which were skipped (the first few, with reasons)."""
        line = f"{self.source}: {len(self.records)} structures"
        if self.skipped:
            first = "; ".join(f"{rid}: {why}" for rid, why in self.skipped[:show])
            more = f" (and {len(self.skipped) - show} more)" if len(self.skipped) > show else ""
            line += f", {len(self.skipped)} skipped: {first}{more}"
        return line

    @classmethod
    def concat(cls, parts: Sequence[Dataset], source: str) -> Dataset:
        """Join datasets, keeping the first record of every id."""
        seen: set[str] = set()
        records = []
        for part in parts:
            for record in part.records:
                if record.id not in seen:
                    seen.add(record.id)
                    records.append(record)
        return cls(records, [s for part in parts for s in part.skipped], source)


# --------------------------------------------------------------------------- readers


def read_csv(
    path: str | Path,
    *,
    cif_column: str = "cif",
    id_column: str | None = None,
    max_atoms: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Read a CSV (or .csv.gz) with one CIF per row, as CDVAE's datasets are laid out.

    The id is `id_column`, else `material_id` when present, else the row number. All other columns
    (formation energy, band gap, space group, ...) are kept as the record's properties.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file") from None
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        raise DatasetError(f"{path}: not a readable CSV ({_first_line(err)})") from None
    frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed:")])
    if cif_column not in frame.columns:
        raise DatasetError(f"{path}: no '{cif_column}' column (columns: {', '.join(map(str, frame.columns))})")
    id_column = id_column or ("material_id" if "material_id" in frame.columns else None)
    if id_column is not None and id_column not in frame.columns:
        raise DatasetError(f"{path}: no '{id_column}' id column")
    ids = frame[id_column].astype(str) if id_column else pd.Series([f"row{i}" for i in range(len(frame))])
    properties = frame.drop(columns=[cif_column]).to_dict("records")
    items = ((rid, cif, props) for rid, cif, props in zip(ids, frame[cif_column], properties))
    return _collect(
        ((rid, lambda cif=cif: _structure_from_cif(cif), props) for rid, cif, props in items),
        source=str(path),
        total=len(frame),
        max_atoms=max_atoms,
        progress=progress,
    )


def read_cif_dir(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read every `*.cif` file in a folder; the id is the file name without its suffix."""
    path = Path(path)
    files = sorted(path.glob("*.cif"))
    if not files:
        raise DatasetError(f"{path}: no .cif files in this folder")
    return _collect(
        ((f.stem, lambda f=f: _structure_from_cif(f.read_text()), {}) for f in files),
        source=str(path),
        total=len(files),
        max_atoms=max_atoms,
        progress=progress,
    )


def read_extxyz(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read an extended-XYZ file of periodic frames; the id is the frame's `id`/`material_id` info, else its index."""
    from ase.io import iread
    from pymatgen.io.ase import AseAtomsAdaptor

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    frames = iread(str(path), index=":", format="extxyz")
    index = 0
    while True:
        rid = f"frame{index}"
        try:
            atoms = next(frames)
        except StopIteration:
            break
        except Exception as err:  # ase raises many types on a broken frame; the rest of the file is unreadable
            skipped.append((rid, f"unreadable extxyz frame, stopped here ({_first_line(err)})"))
            break
        rid = str(atoms.info.get("material_id", atoms.info.get("id", rid)))
        props = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float))}
        if not atoms.pbc.all():
            skipped.append((rid, "frame is not periodic in all three directions"))
        else:
            _add(records, skipped, rid, lambda atoms=atoms: AseAtomsAdaptor.get_structure(atoms), props, max_atoms)
        index += 1
    if not records and not skipped:
        raise DatasetError(f"{path}: no frames in this file")
    return Dataset(records, skipped, str(path))


def read_structures(path: str | Path, **kwargs: Any) -> Dataset:
    """Read structures from whatever `path` is: a CSV, a .cif file, a folder of CIFs or an extxyz file."""
    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        return read_cif_dir(path, **kwargs)
    if name.endswith((".csv", ".csv.gz")):
        return read_csv(path, **kwargs)
    if name.endswith((".extxyz", ".xyz")):
        return read_extxyz(path, **kwargs)
    if name.endswith(".cif"):
        if not path.is_file():
            raise DatasetError(f"{path}: no such file")
        return _collect(
            [(path.stem, lambda: _structure_from_cif(path.read_text()), {})], source=str(path), total=1, **kwargs
        )
    raise DatasetError(f"{path}: unknown kind of file (expected .csv, .csv.gz, .cif, .extxyz or a folder of .cif)")


def read_split(data_dir: str | Path, split: str, **kwargs: Any) -> Dataset:
    """Read one split (`train`, `val`, `test`) of a dataset folder in the CDVAE layout."""
    data_dir = Path(data_dir)
    for candidate in (data_dir / f"{split}.csv", data_dir / f"{split}.csv.gz"):
        if candidate.is_file():
            return read_csv(candidate, **kwargs)
    raise DatasetError(f"{data_dir}: no {split}.csv or {split}.csv.gz")


def training_set(
    data_dir: str | Path,
    splits: Sequence[str] = ("train", "val"),
    holdout: float = 0.05,
    seed: int = 0,
    **kwargs: Any,
) -> tuple[Dataset, Dataset]:
    """Join several splits (one record per id) and hold out a random fraction for the validation loss.

    This is how to train on MP-20 train + val here, where the train split is partial, while the
    official test split stays untouched for evaluation.
    """
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    joined = Dataset.concat([read_split(data_dir, s, **kwargs) for s in splits], f"{data_dir} [{'+'.join(splits)}]")
    order = np.random.default_rng(seed).permutation(len(joined.records))
    n_holdout = int(round(holdout * len(order)))
    held = sorted(order[:n_holdout])
    kept = sorted(order[n_holdout:])
    return (
        Dataset([joined.records[i] for i in kept], joined.skipped, joined.source + " (train)"),
        Dataset([joined.records[i] for i in held], [], joined.source + " (holdout)"),
    )


def _structure_from_cif(text: object) -> Structure:
    if not isinstance(text, str) or not text.strip():  # an empty CSV cell arrives as NaN
        raise ValueError("empty CIF")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return Structure.from_str(text, fmt="cif")
        except ValueError as err:
            # pymatgen merges atoms on one position into a site, then rejects its occupancy > 1 with a
            # generic "no structures" error; a generated cell with stacked atoms should say so.
            if any("occupancies" in str(w.message) for w in caught):
                raise ValueError("atoms share a position (the CIF reader merges them into one site)") from err
            raise


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _add(
    records: list[Record],
    skipped: list[tuple[str, str]],
    rid: str,
    build: Any,
    props: Mapping[str, Any],
    max_atoms: int | None,
) -> None:
    try:
        structure = build()
    except Exception as err:  # parsers raise anything from ValueError to IndexError on broken input
        skipped.append((rid, f"unreadable structure ({_first_line(err)})"))
        return
    reason = _problem(structure, max_atoms)
    if reason:
        skipped.append((rid, reason))
    else:
        records.append(Record(rid, structure, props))


def _problem(structure: Structure, max_atoms: int | None) -> str | None:
    """Why a parsed structure is unusable, or None."""
    if len(structure) == 0:
        return "no atoms"
    if max_atoms is not None and len(structure) > max_atoms:
        return f"{len(structure)} atoms, more than max_atoms={max_atoms}"
    if not np.isfinite(structure.frac_coords).all() or not all(math.isfinite(x) for x in structure.lattice.abc):
        return "coordinates or lattice are not finite numbers"
    if not structure.is_ordered:
        return "disordered sites (partial occupancies)"
    return None


def _collect(
    items: Iterable[tuple[str, Any, Mapping[str, Any]]],
    *,
    source: str,
    total: int,
    max_atoms: int | None = None,
    progress: bool = False,
) -> Dataset:
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    for rid, build, props in tqdm(items, total=total, desc=f"reading {Path(source).name}", disable=not progress):
        _add(records, skipped, rid, build, props, max_atoms)
    return Dataset(records, skipped, source)


# --------------------------------------------------------------------------- registry and fetching

_CDVAE = "https://raw.githubusercontent.com/txie-93/cdvae/f857f598d6f6cca5dc1ea0582d228f12dcc2c2ea/data"
_WYCKOFF = (
    "https://raw.githubusercontent.com/SymmetryAdvantage/WyckoffTransformer/"
    "5f1c22418cd53d237f652e9a60056fe2eb1c8669/data"
)


@dataclass(frozen=True)
class DatasetSource:
    """Where a benchmark set is published: one URL per split, and the SHA-256 of each file where pinned."""

    name: str
    description: str
    urls: Mapping[str, str]
    sha256: Mapping[str, str] = field(default_factory=dict)

    def filename(self, split: str) -> str:
        return self.urls[split].rsplit("/", 1)[-1]


def _splits(base: str, suffix: str) -> dict[str, str]:
    return {split: f"{base}/{split}{suffix}" for split in ("train", "val", "test")}


#: The standard benchmark sets. Checksums are pinned where the file's bytes could be verified
#: against the upstream git blob; the others are recorded on first download (see `fetch`).
DATASETS: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource("mp_20", "MP-20: 45,231 Materials Project crystals with at most 20 atoms (CDVAE)",
                      _splits(f"{_CDVAE}/mp_20", ".csv")),
        DatasetSource("perov_5", "Perov-5: 18,928 perovskites with 5 atoms per cell (CDVAE)",
                      _splits(f"{_CDVAE}/perov_5", ".csv")),
        DatasetSource("carbon_24", "Carbon-24: 10,153 carbon allotropes with 6-24 atoms (CDVAE)",
                      _splits(f"{_CDVAE}/carbon_24", ".csv")),
        DatasetSource(
            "mpts_52",
            "MPTS-52: Materials Project time split, up to 52 atoms (Baird & Sparks)",
            _splits(f"{_WYCKOFF}/mpts_52", ".csv.gz"),
            {
                "test": "5c082d8cd8b5398bb9971f076e2f459771e01b45b1a2d206f665bd99a1369feb",
                "val": "af56fcaa2ed7f36e9ec0ce95ae409c73f4c909644153c3d441c76f87a4d1c11d",
            },
        ),
    )
}


def cache_dir(kind: str = "datasets") -> Path:
    """crystext's cache folder for `kind` (fetched datasets, fingerprints, hulls): under $CRYSTEXT_CACHE_DIR,
    else ~/.cache/crystext."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "crystext") / kind


def _source(name: str) -> DatasetSource:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetError(f"unknown dataset '{name}' (known: {', '.join(DATASETS)})") from None


def _local_copy(name: str, root: Path) -> Path | None:
    """`root/name` if it holds split files, or `root` itself if it does."""
    for folder in (root / name, root):
        if any(folder.glob("*.csv")) or any(folder.glob("*.csv.gz")):
            return folder
    return None


def dataset_dir(name: str, data_dir: str | Path | None = None, download: bool = True) -> Path:
    """The folder holding a benchmark set's split files.

    Looks in `data_dir` (or $CRYSTEXT_DATA_DIR), as `data_dir/name/` or `data_dir` itself; then in the
    cache; and only then downloads it.
    """
    source = _source(name)
    root = data_dir or os.environ.get(DATA_DIR_ENV)
    if root:
        found = _local_copy(name, Path(root))
        if found is None:
            raise DatasetError(f"{root}: no {name} split files here or in {Path(root) / name}")
        return found
    cached = cache_dir() / name
    if all((cached / source.filename(s)).is_file() for s in source.urls):
        return cached
    if not download:
        raise DatasetError(f"{name} is not in the cache ({cached}); run `crystext data fetch {name}`")
    return fetch(name)


def fetch(name: str, splits: Sequence[str] | None = None, timeout: float = 60.0) -> Path:
    """Download a benchmark set's splits into the cache, verifying pinned checksums; return its folder.

    Each file lands under a temporary name and is renamed only once complete, so an interrupted
    download never leaves a truncated file behind. Unpinned files get their SHA-256 recorded in
    `SHA256SUMS` beside them.
    """
    source = _source(name)
    target = cache_dir() / name
    target.mkdir(parents=True, exist_ok=True)
    for split in splits or list(source.urls):
        url = source.urls[split]
        path = target / source.filename(split)
        if path.is_file():
            continue
        partial = path.with_name(path.name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
                digest = _copy_hashing(response, out)
        except (urllib.error.URLError, OSError) as err:
            partial.unlink(missing_ok=True)
            raise DatasetError(
                f"could not download {url} ({getattr(err, 'reason', err)}). Without internet, use a local copy: "
                f"pass --data-dir DIR or set {DATA_DIR_ENV}=DIR, where DIR/{name}/ holds "
                f"{', '.join(source.filename(s) for s in source.urls)}"
            ) from None
        expected = source.sha256.get(split)
        if expected and digest != expected:
            partial.unlink(missing_ok=True)
            raise DatasetError(f"{url}: checksum mismatch (sha256 {digest}, expected {expected})")
        partial.replace(path)
        if not expected:
            with open(target / "SHA256SUMS", "a") as sums:
                sums.write(f"{digest}  {path.name}\n")
    return target


def _copy_hashing(response: Any, out: Any, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    while block := response.read(chunk):
        digest.update(block)
        out.write(block)
    return digest.hexdigest()
