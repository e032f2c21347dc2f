"""Per-structure work: validity, density, space group and fingerprints, in parallel, cached on disk.

Every metric is computed from these profiles. The CrystalNN fingerprint is the slow part
(benchmarks/results/evaluate_speed.md), so profiling runs in worker processes over all cores with a progress bar, and a
reference or training file is profiled once and cached under $CRYSTEXT_CACHE_DIR/fingerprints/,
keyed by the file's content hash and every setting that changes a profile (a set built in memory, when asked, by its
records). A cached set keeps its structures as arrays, so a warm run never parses the reference file again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Lattice, Structure
from tqdm.auto import tqdm

from crystext.data import READER_VERSION, Dataset, cache_dir, read_structures
from crystext.evaluate.fingerprints import (
    COMPOSITION_FP_SIZE,
    STRUCTURE_FP_SIZE,
    FingerprintFailure,
    FingerprintSettings,
    composition_fingerprint,
    describe,
    structure_fingerprint,
    warm_up,
)
from crystext.evaluate.validity import compositional_validity, structural_problem
from crystext.files import atomic_path
from crystext.geometry import spacegroup_number
from crystext.provenance import file_digest, package_versions

__all__ = ["VERSIONED_PACKAGES", "Profiles", "cache_path", "profile_dataset", "profile_file"]

#: Bump when the profile columns or their meaning change, so old cache files are not read.
PROFILE_FORMAT = 1
#: Packages whose versions change a profile (and so are part of the cache key and every result).
VERSIONED_PACKAGES = ("smact", "matminer", "pymatgen", "spglib")
#: The fingerprint settings profiles use unless told otherwise (the paper's).
DEFAULT_FINGERPRINT = FingerprintSettings()

#: The per-structure columns and their types ("str", "bool", "int", "float").
COLUMNS: dict[str, str] = {
    "id": "str",
    "parsed": "bool",
    "parse_error": "str",
    "n_atoms": "int",
    "formula": "str",
    "elements": "str",  # element symbols, space separated, sorted
    "n_elements": "int",
    "volume": "float",
    "density": "float",
    "spacegroup": "int",  # 0: not determined
    "struct_valid": "bool",
    "struct_problem": "str",
    "comp_valid": "bool",
    "comp_problem": "str",
    "fingerprinted": "bool",  # a fingerprint was attempted
    "fp_ok": "bool",
    "fp_error": "str",
    "fp_seconds": "float",
}
_EMPTY = {"str": "", "bool": False, "int": 0, "float": np.nan}
_DTYPES = {"str": str, "bool": bool, "int": np.int64, "float": float}
_EMPTY_ROW: dict[str, Any] = {name: _EMPTY[kind] for name, kind in COLUMNS.items()}
_COMPOSITION_INVALID = "no charge-neutral oxidation states that pass the Pauling test"


@dataclass
class Profiles:
    """The per-structure results for one set of structures, in input order, unparsed records included.

    `struct_fp` and `comp_fp` (raw magpie) hold a row per record, meaningful where `fp_ok`. The
    structures are kept as arrays (lattice, atomic numbers, fractional coordinates) for `structure(i)`.
    """

    table: pd.DataFrame
    struct_fp: np.ndarray
    comp_fp: np.ndarray
    lattices: np.ndarray  # (n, 3, 3), NaN for unparsed records
    offsets: np.ndarray  # (n + 1,): the sites of record i are offsets[i]:offsets[i + 1]
    numbers: np.ndarray  # atomic numbers of all sites
    frac_coords: np.ndarray  # (sites, 3)
    source: str = ""
    from_cache: bool = False

    def __len__(self) -> int:
        return len(self.table)

    def column(self, name: str) -> np.ndarray:
        """One column of the table as a numpy array."""
        return self.table[name].to_numpy()

    def structure(self, i: int) -> Structure | None:
        """The structure of record i (elements only), or None when it did not parse."""
        if not self.table["parsed"].iat[i]:
            return None
        sites = slice(self.offsets[i], self.offsets[i + 1])
        return Structure(Lattice(self.lattices[i]), self.numbers[sites].tolist(), self.frac_coords[sites])

    @classmethod
    def concat(cls, parts: Sequence[Profiles]) -> Profiles:
        """One set made of several (e.g. the train and val splits a model was trained on)."""
        sizes = [p.offsets[-1] for p in parts]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        return cls(
            pd.concat([p.table for p in parts], ignore_index=True),
            np.concatenate([p.struct_fp for p in parts]),
            np.concatenate([p.comp_fp for p in parts]),
            np.concatenate([p.lattices for p in parts]),
            np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(parts, starts)]).astype(np.int64),
            np.concatenate([p.numbers for p in parts]),
            np.concatenate([p.frac_coords for p in parts]),
            " + ".join(p.source for p in parts),
            all(p.from_cache for p in parts),
        )

    def to_npz(self, path: Path) -> None:
        """Write to `path` atomically (a temporary file in the same folder, then a rename)."""
        columns = {f"col_{name}": self.table[name].to_numpy(dtype=_DTYPES[kind]) for name, kind in COLUMNS.items()}
        with atomic_path(path) as partial:
            np.savez_compressed(
                partial, struct_fp=self.struct_fp, comp_fp=self.comp_fp, lattices=self.lattices, offsets=self.offsets,
                numbers=self.numbers, frac_coords=self.frac_coords, source=np.array(self.source), **columns,
            )

    @classmethod
    def from_npz(cls, path: Path) -> Profiles:
        """Read what `to_npz` wrote."""
        with np.load(path, allow_pickle=False) as data:
            table = pd.DataFrame({name: data[f"col_{name}"].astype(_DTYPES[kind]) for name, kind in COLUMNS.items()})
            return cls(
                table, data["struct_fp"], data["comp_fp"], data["lattices"], data["offsets"], data["numbers"],
                data["frac_coords"], str(data["source"]), from_cache=True,
            )


# --------------------------------------------------------------------------- one structure (in a worker)


@dataclass(frozen=True)
class _Task:
    lattice: np.ndarray
    numbers: np.ndarray
    frac_coords: np.ndarray
    fingerprint_invalid: bool
    settings: FingerprintSettings


def _profile_one(task: _Task) -> dict[str, Any]:
    """Everything the metrics need about one structure; never raises.

    A structure that breaks the analysis itself is reported as unreadable, so it cannot cost the rest.
    """
    try:
        return _analyse(task)
    except Exception as err:
        return {"parsed": False, "parse_error": f"could not be analysed ({describe(err)})"}


def _analyse(task: _Task) -> dict[str, Any]:
    structure = Structure(Lattice(task.lattice), task.numbers.tolist(), task.frac_coords)
    composition = structure.composition
    elements = sorted(e.symbol for e in composition.elements)
    row: dict[str, Any] = {
        "parsed": True, "n_atoms": len(structure), "formula": composition.reduced_formula,
        "elements": " ".join(elements), "n_elements": len(elements), "volume": float(structure.volume),
    }
    row["density"] = float(structure.density) if row["volume"] > 0 else np.nan
    try:
        problem = structural_problem(structure)
    except Exception as err:  # a degenerate lattice can break the distance computation
        problem = f"distances could not be computed ({describe(err)})"
    row["struct_valid"], row["struct_problem"] = problem is None, problem or ""
    try:
        row["comp_valid"] = compositional_validity(composition)
        row["comp_problem"] = "" if row["comp_valid"] else _COMPOSITION_INVALID
    except Exception as err:  # an element without SMACT data, or SMACT failing on it
        row["comp_valid"], row["comp_problem"] = False, str(err) if isinstance(err, ValueError) else describe(err)
    row["spacegroup"] = spacegroup_number(structure, task.settings.symprec)
    if task.fingerprint_invalid or (row["struct_valid"] and row["comp_valid"]):
        row["fingerprinted"] = True
        start = time.process_time()
        try:
            row["comp_fp"] = composition_fingerprint(composition)
            row["struct_fp"] = structure_fingerprint(structure, task.settings.time_limit)
            row["fp_ok"] = True
        except FingerprintFailure as err:
            row["fp_error"] = str(err)
        row["fp_seconds"] = time.process_time() - start
    return row


# --------------------------------------------------------------------------- a whole set


def default_jobs() -> int:
    """All cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _as_arrays(structure: Structure) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lattice matrix, atomic numbers, fractional coordinates); ValueError for a site that is not an element."""
    numbers = []
    for site in structure:
        if not site.is_ordered:
            raise ValueError(f"site {site.species} is disordered")
        z = getattr(site.specie, "Z", 0)
        if not z:
            raise ValueError(f"site species {site.specie} is not an element")
        numbers.append(z)
    return np.array(structure.lattice.matrix, dtype=float), np.array(numbers, dtype=np.int64), structure.frac_coords


def profile_dataset(
    dataset: Dataset,
    settings: FingerprintSettings = DEFAULT_FINGERPRINT,
    *,
    fingerprint_invalid: bool = True,
    jobs: int | None = None,
    progress: bool = True,
    desc: str = "profiling",
    cache: bool = False,
) -> Profiles:
    """Profile every record of a dataset in parallel; its skipped records become unparsed rows at the end.

    `fingerprint_invalid=False` skips the fingerprints of invalid structures (the paper never uses them).
    `cache=True` keeps the profiles on disk keyed by the records' ids and structures (for a set built in memory,
    such as a seeded draw of a training set, that is profiled again in every run); a cached set has the fingerprints
    of every structure, and the `source` of the dataset that first wrote it.
    """
    ids: list[str] = []
    errors: list[str] = []
    arrays: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = []
    for record in dataset.records:
        ids.append(record.id)
        try:
            arrays.append(_as_arrays(record.structure))
            errors.append("")
        except ValueError as err:
            arrays.append(None)
            errors.append(str(err))
    for rid, reason in dataset.skipped:
        ids.append(rid)
        arrays.append(None)
        errors.append(reason)
    target = _dataset_cache_path(ids, errors, arrays, settings) if cache else None
    cached = _read_cache(target)
    if cached is not None:
        return cached
    tasks = [_Task(*a, fingerprint_invalid or cache, settings) for a in arrays if a is not None]
    results = iter(_run(tasks, jobs or default_jobs(), progress, desc))
    rows = []
    struct_fp = np.full((len(ids), STRUCTURE_FP_SIZE), np.nan)
    comp_fp = np.full((len(ids), COMPOSITION_FP_SIZE), np.nan)
    for i, (rid, error, arr) in enumerate(zip(ids, errors, arrays)):
        row = dict(_EMPTY_ROW, id=rid, parse_error=error)
        if arr is not None:
            row.update(next(results))
            if row.get("fp_ok"):
                struct_fp[i], comp_fp[i] = row.pop("struct_fp"), row.pop("comp_fp")
        rows.append({name: row[name] for name in COLUMNS})
    profiles = _assemble(rows, struct_fp, comp_fp, arrays, dataset.source)
    if target is not None:
        profiles.to_npz(target)
    return profiles


def _run(tasks: Sequence[_Task], jobs: int, progress: bool, desc: str) -> list[dict[str, Any]]:
    """`_profile_one` over the tasks, in order, in `jobs` processes, with a progress bar."""
    bar = tqdm(total=len(tasks), desc=desc, unit="structure", disable=not progress, smoothing=0.05)
    warm_up()  # here too, so that forked workers start warm
    try:
        if jobs == 1 or len(tasks) < 2 * jobs:
            results = []
            for task in tasks:
                results.append(_profile_one(task))
                bar.update()
            return results
        # forked workers of a process that has run torch can hang in its thread pools: spawn them there
        context = multiprocessing.get_context("spawn" if "torch" in sys.modules else None)
        with context.Pool(jobs, initializer=warm_up) as pool:
            results = []
            for result in pool.imap(_profile_one, tasks, chunksize=4):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


def _assemble(
    rows: list[dict[str, Any]],
    struct_fp: np.ndarray,
    comp_fp: np.ndarray,
    arrays: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray] | None],
    source: str,
) -> Profiles:
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype({n: _DTYPES[k] for n, k in COLUMNS.items()})
    sizes = [0 if a is None else len(a[1]) for a in arrays]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    lattices = np.array([np.full((3, 3), np.nan) if a is None else a[0] for a in arrays], dtype=float).reshape(-1, 3, 3)
    present = [a for a in arrays if a is not None]
    numbers = np.concatenate([a[1] for a in present]) if present else np.zeros(0, np.int64)
    frac = np.concatenate([a[2] for a in present]) if present else np.zeros((0, 3))
    return Profiles(table, struct_fp, comp_fp, lattices, offsets, numbers, frac, source)


# --------------------------------------------------------------------------- files, with the cache


def cache_path(path: Path, settings: FingerprintSettings, read_options: dict[str, Any]) -> Path:
    """Where the profiles of `path` under these settings are cached."""
    return _cache_file({"content": file_digest(path), "read": read_options}, settings)


def _dataset_cache_path(ids: Sequence[str], errors: Sequence[str],
                        arrays: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray] | None],
                        settings: FingerprintSettings) -> Path:
    """Where the profiles of a set held in memory are cached: keyed by every record's id, structure or error."""
    content = hashlib.sha256()
    for rid, error, arr in zip(ids, errors, arrays):
        content.update(json.dumps([rid, error]).encode())
        for part in arr or ():
            content.update(f"{part.dtype}{part.shape}".encode() + np.ascontiguousarray(part).tobytes())
    return _cache_file({"records": content.hexdigest()}, settings)


def _read_cache(target: Path | None) -> Profiles | None:
    """The cached profiles at `target`; None when there are none, or the file is damaged (cut short, empty,
    overwritten: it is then rebuilt)."""
    if target is None or not target.is_file():
        return None
    try:
        return Profiles.from_npz(target)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None


def _cache_file(content: dict[str, Any], settings: FingerprintSettings) -> Path:
    key = {**content, "settings": asdict(settings), "versions": package_versions(VERSIONED_PACKAGES),
           "format": PROFILE_FORMAT}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir("fingerprints") / f"{digest}.npz"


def profile_file(
    path: str | Path,
    settings: FingerprintSettings = DEFAULT_FINGERPRINT,
    *,
    cache: bool = True,
    fingerprint_invalid: bool = True,
    max_atoms: int | None = None,
    structure_column: str | None = None,
    jobs: int | None = None,
    progress: bool = True,
) -> Profiles:
    """Profile every structure of a file or folder (anything `crystext.data.read_structures` reads), from the
    cache when it holds this file under these settings and read options.

    A cached set always has the fingerprints of every structure, so any protocol can use it.
    """
    path = Path(path)
    read_options = {"max_atoms": max_atoms, "structure_column": structure_column, "reader": READER_VERSION}
    target = cache_path(path, settings, read_options) if cache else None
    cached = _read_cache(target)
    if cached is not None:
        return cached
    dataset = read_structures(path, structure_column=structure_column, max_atoms=max_atoms, progress=progress)
    profiles = profile_dataset(
        dataset, settings, fingerprint_invalid=fingerprint_invalid or cache, jobs=jobs, progress=progress,
        desc=f"fingerprinting {path.name}",
    )
    if target is not None:
        profiles.to_npz(target)
    return profiles
