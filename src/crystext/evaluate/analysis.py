"""Per-structure work: parse, validity, density, space group and the two CDVAE fingerprints.

This is where the time goes (matminer's CrystalNN fingerprint costs about 0.1-0.2 s per structure),
so it runs in worker processes over all cores, shows progress, and a reference or training set is
analysed once and cached on disk, keyed by its content hash and every setting that changes the result.

Fingerprints (as CDVAE and crystal-text-llm compute them):
- structure: the mean over sites of ``CrystalNNFingerprint.from_preset("ops")`` (61 numbers);
- composition: ``ElementProperty.from_preset("magpie")`` (132 numbers), standardised later with
  CDVAE's published means and standard deviations (`standardise_composition`).
A fingerprint that raises, or runs past the time limit, is a fingerprint failure. crystal-text-llm
wraps each per-site call in a 5 s alarm; we do the same (`site_timeout`) and also cap the whole
structure (`structure_timeout`).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from crystext.evaluate._cdvae_constants import COMP_FP_MEANS, COMP_FP_STDS
from crystext.evaluate.validity import reduced_counts, smact_validity, smact_version, structure_validity_reason

__all__ = [
    "Analysed",
    "AnalysisSettings",
    "Item",
    "analyse",
    "analyse_file",
    "load_items",
    "standardise_composition",
]

STRUCT_FP_SIZE = 61
COMP_FP_SIZE = 132
CACHE_FORMAT = 1

_MEANS = np.array(COMP_FP_MEANS)
_STDS = np.array(COMP_FP_STDS)


def standardise_composition(comp_fps: np.ndarray) -> np.ndarray:
    """CDVAE's CompScaler: (x - mean) / std with the published constants, NaN -> 0."""
    scaled = (np.asarray(comp_fps, dtype=float) - _MEANS) / _STDS
    return np.where(np.isnan(scaled), 0.0, scaled)


@dataclass(frozen=True)
class AnalysisSettings:
    """What changes the per-structure results (and so is part of a cache key)."""

    site_timeout: float | None = 5.0
    structure_timeout: float | None = 120.0
    symprec: float = 0.1
    #: "all": fingerprint every structure that builds; "valid": only structurally and compositionally valid ones.
    fingerprint: str = "all"

    def key(self) -> dict[str, Any]:
        return {**asdict(self), "versions": package_versions(), "format": CACHE_FORMAT}


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("smact", "matminer", "pymatgen", "spglib", "numpy", "scipy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    out["smact"] = smact_version()
    return out


@dataclass
class Item:
    """One structure to analyse: an id, a CIF text or a Structure (or None with the reason it is missing)."""

    id: str
    payload: str | Structure | None
    error: str = ""
    properties: dict[str, Any] | None = None


@dataclass
class Analysed:
    """The per-structure results for a set of structures: a table of scalars and two fingerprint arrays."""

    table: pd.DataFrame
    struct_fp: np.ndarray  # (n, 61), NaN rows where not computed
    comp_fp: np.ndarray  # (n, 132) raw magpie features, NaN rows where not computed
    source: str = ""
    seconds: float = 0.0
    cached: bool = False

    def __len__(self) -> int:
        return len(self.table)

    def subset(self, mask: np.ndarray) -> Analysed:
        mask = np.asarray(mask, dtype=bool)
        return Analysed(self.table[mask].reset_index(drop=True), self.struct_fp[mask], self.comp_fp[mask], self.source)


# --------------------------------------------------------------------------- reading inputs


def load_items(path: str | Path) -> list[Item]:
    """Every record of a samples/reference file, in order, failures included.

    A CSV needs a ``cif`` column (an ``error`` column, as ``crystext sample`` writes, explains empty
    CIFs); a folder holds ``*.cif`` files; an ``.extxyz`` file holds periodic frames; a single ``.cif``
    is one structure.
    """
    from crystext.data import DatasetError, read_extxyz

    path = Path(path)
    name = path.name.lower()
    if path.is_dir():
        files = sorted(path.glob("*.cif"))
        if not files:
            raise DatasetError(f"{path}: no .cif files in this folder")
        return [Item(f.stem, f.read_text(errors="replace"), properties={}) for f in files]
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if name.endswith(".cif"):
        return [Item(path.stem, path.read_text(errors="replace"), properties={})]
    if name.endswith((".extxyz", ".xyz")):
        dataset = read_extxyz(path)
        items = [Item(r.id, r.structure, properties=dict(r.properties)) for r in dataset.records]
        items += [Item(rid, None, f"unreadable: {why}", properties={}) for rid, why in dataset.skipped]
        return items
    if name.endswith((".csv", ".csv.gz")):
        try:
            frame = pd.read_csv(path, keep_default_na=True)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
            raise DatasetError(f"{path}: not a readable CSV ({type(err).__name__}: {err})") from None
        frame = frame.drop(columns=[c for c in frame.columns if str(c).startswith("Unnamed:")])
        if "cif" not in frame.columns:
            raise DatasetError(f"{path}: no 'cif' column (columns: {', '.join(map(str, frame.columns))})")
        id_col = next((c for c in ("id", "material_id") if c in frame.columns), None)
        ids = frame[id_col].astype(str).tolist() if id_col else [f"row{i}" for i in range(len(frame))]
        errors = frame["error"].tolist() if "error" in frame.columns else [None] * len(frame)
        props = frame.drop(columns=["cif"]).to_dict("records")
        items = []
        for rid, cif, err, prop in zip(ids, frame["cif"].tolist(), errors, props):
            if isinstance(cif, str) and cif.strip():
                items.append(Item(rid, cif, properties=prop))
            else:
                why = str(err) if isinstance(err, str) and err.strip() else "empty CIF"
                items.append(Item(rid, None, why, properties=prop))
        return items
    raise DatasetError(f"{path}: unknown kind of file (expected .csv, .csv.gz, .cif, .extxyz or a folder of .cif)")


def content_hash(path: str | Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's *.cif names and bytes."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(path.glob("*.cif")) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            digest.update(f.name.encode() + b"\0")
        with open(f, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the per-structure work

_CNN = None
_MAGPIE = None


def _featurizers() -> tuple[Any, Any]:
    global _CNN, _MAGPIE
    if _CNN is None:
        from matminer.featurizers.composition.composite import ElementProperty
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

        _CNN = CrystalNNFingerprint.from_preset("ops")
        _MAGPIE = ElementProperty.from_preset("magpie")
    return _CNN, _MAGPIE


class FingerprintTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: Any) -> None:
    raise FingerprintTimeout()


def _structure_fingerprint(structure: Structure, settings: AnalysisSettings) -> np.ndarray:
    cnn, _ = _featurizers()
    use_alarm = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    deadline = time.monotonic() + settings.structure_timeout if settings.structure_timeout else math.inf
    previous = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    try:
        sites = []
        for index in range(len(structure)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise FingerprintTimeout()
            limit = min(settings.site_timeout or math.inf, left)
            if use_alarm and math.isfinite(limit):
                signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                sites.append(cnn.featurize(structure, index))
            finally:
                if use_alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        return np.array(sites, dtype=float).mean(axis=0)
    finally:
        if use_alarm:
            signal.signal(signal.SIGALRM, previous)


def _parse(payload: str | Structure) -> Structure:
    if isinstance(payload, Structure):
        structure = payload.copy()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(payload, fmt="cif")
    if len(structure) == 0:
        raise ValueError("no atoms")
    if not structure.is_ordered:
        raise ValueError("disordered sites (partial occupancies)")
    if not np.isfinite(structure.frac_coords).all() or not all(math.isfinite(x) for x in structure.lattice.abc):
        raise ValueError("coordinates or lattice are not finite numbers")
    structure.remove_oxidation_states()  # the metrics are defined on elements; "Fe2+" is Fe
    return structure


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def _analyse_one(args: tuple[int, str, str | Structure | None, str, AnalysisSettings]) -> dict[str, Any]:
    index, rid, payload, error, settings = args
    row: dict[str, Any] = {
        "index": index, "id": rid, "parsed": False, "parse_error": error or "", "n_atoms": 0, "formula": "",
        "elements": "", "n_elements": 0, "volume": math.nan, "density": math.nan, "spacegroup": 0,
        "struct_valid": False, "struct_reason": "", "comp_valid": False, "comp_reason": "",
        "fp_attempted": False, "fp_ok": False, "fp_error": "", "fp_seconds": 0.0,
        "struct_fp": None, "comp_fp": None,
    }
    if payload is None:
        row["parse_error"] = error or "no structure"
        row["struct_reason"] = row["comp_reason"] = "not parsed"
        return row
    try:
        structure = _parse(payload)
    except Exception as err:  # CIF parsers raise anything on broken input
        row["parse_error"] = f"unreadable structure ({_first_line(err)})"
        row["struct_reason"] = row["comp_reason"] = "not parsed"
        return row
    row["parsed"] = True
    counts = structure.composition.get_el_amt_dict()
    row["n_atoms"] = len(structure)
    row["formula"] = structure.composition.reduced_formula
    row["elements"] = " ".join(sorted(counts))
    row["n_elements"] = len(counts)
    try:
        row["volume"] = float(structure.volume)
        row["density"] = float(structure.density)
    except Exception:  # a degenerate lattice
        pass
    try:
        reason = structure_validity_reason(structure)
    except Exception as err:
        reason = f"distance check failed ({_first_line(err)})"
    row["struct_valid"] = reason is None
    row["struct_reason"] = reason or ""
    try:
        elements, reduced = reduced_counts(counts)
        row["comp_valid"] = bool(smact_validity(elements, reduced))
        row["comp_reason"] = "" if row["comp_valid"] else "no charge-neutral, electronegativity-ordered oxidation states"
    except Exception as err:  # an element SMACT has no data for
        row["comp_reason"] = f"SMACT could not check it ({_first_line(err)})"
    try:
        from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row["spacegroup"] = int(SpacegroupAnalyzer(structure, symprec=settings.symprec).get_space_group_number())
    except Exception:  # spglib finds no symmetry for a degenerate cell
        row["spacegroup"] = 0
    if settings.fingerprint == "all" or (row["struct_valid"] and row["comp_valid"]):
        row["fp_attempted"] = True
        start = time.monotonic()
        try:
            _, magpie = _featurizers()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                comp_fp = np.array(magpie.featurize(structure.composition), dtype=float)
                struct_fp = _structure_fingerprint(structure, settings)
            row["comp_fp"], row["struct_fp"], row["fp_ok"] = comp_fp, struct_fp, True
        except FingerprintTimeout:
            row["fp_error"] = "fingerprint time limit"
        except Exception as err:  # matminer raises on odd environments
            row["fp_error"] = f"fingerprint failed ({_first_line(err)})"
        row["fp_seconds"] = time.monotonic() - start
    return row


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def analyse(
    items: Sequence[Item],
    settings: AnalysisSettings = AnalysisSettings(),
    jobs: int | None = None,
    progress: bool = True,
    desc: str = "analysing",
) -> Analysed:
    """Analyse structures in parallel (``jobs`` processes, default all cores), in their input order."""
    start = time.monotonic()
    jobs = jobs or default_jobs()
    tasks = [(i, it.id, it.payload, it.error, settings) for i, it in enumerate(items)]
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, unit="structure", smoothing=0.05)
    rows: list[dict[str, Any]] = []
    if jobs == 1 or len(tasks) < 4:
        for task in tasks:
            rows.append(_analyse_one(task))
            bar.update()
    else:
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with context.Pool(jobs, initializer=_featurizers) as pool:
            for row in pool.imap(_analyse_one, tasks, chunksize=2):
                rows.append(row)
                bar.update()
    bar.close()
    struct_fp = np.full((len(rows), STRUCT_FP_SIZE), np.nan)
    comp_fp = np.full((len(rows), COMP_FP_SIZE), np.nan)
    for i, row in enumerate(rows):
        if row["fp_ok"]:
            struct_fp[i] = row["struct_fp"]
            comp_fp[i] = row["comp_fp"]
        del row["struct_fp"], row["comp_fp"]
    table = pd.DataFrame(rows)
    return Analysed(table, struct_fp, comp_fp, seconds=time.monotonic() - start)


# --------------------------------------------------------------------------- cached analysis of whole files


def cache_root() -> Path:
    return Path(os.environ.get("CRYSTEXT_CACHE_DIR") or Path.home() / ".cache" / "crystext") / "evaluate"


def cache_path(path: str | Path, settings: AnalysisSettings) -> Path:
    key = json.dumps({"content": content_hash(path), "settings": settings.key()}, sort_keys=True)
    return cache_root() / f"{Path(path).name}.{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def _column_array(column: pd.Series) -> np.ndarray:
    """A column as a plain numpy array (exact numbers; text as unicode), for a pickle-free cache file."""
    if column.dtype == object:
        return np.array([str(v) for v in column], dtype=str)
    return column.to_numpy()


def analyse_file(
    path: str | Path,
    settings: AnalysisSettings = AnalysisSettings(),
    jobs: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
    desc: str | None = None,
) -> Analysed:
    """Analyse every structure of a reference/training file, reusing the on-disk cache when it matches."""
    cached = cache_path(path, settings) if use_cache else None
    if cached is not None and cached.is_file():
        start = time.monotonic()
        try:
            with np.load(cached, allow_pickle=False) as data:
                if "columns" in data:
                    columns = [str(c) for c in data["columns"]]
                    table = pd.DataFrame({c: data[f"col_{i}"] for i, c in enumerate(columns)})
                else:  # the first layout: the table as JSON (numbers to 10 decimals)
                    from io import StringIO

                    table = pd.read_json(StringIO(str(data["table"])), orient="split", dtype=False)
                result = Analysed(table, data["struct_fp"], data["comp_fp"], str(path), cached=True)
            result.seconds = time.monotonic() - start
            return result
        except (OSError, ValueError, KeyError):  # a damaged cache file is rebuilt
            pass
    result = analyse(load_items(path), settings, jobs, progress, desc or f"analysing {Path(path).name}")
    result.source = str(path)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_name(cached.name + f".{os.getpid()}.part.npz")
        columns = {f"col_{i}": _column_array(result.table[c]) for i, c in enumerate(result.table.columns)}
        np.savez_compressed(
            partial, columns=np.array([str(c) for c in result.table.columns]), struct_fp=result.struct_fp,
            comp_fp=result.comp_fp, **columns,
        )
        partial.replace(cached)
    return result
