"""The stability run: relax every sample in worker processes, place it on the hull, write rows as they finish.

One CSV row per sample (including those that never parsed), appended and fsynced as each result
arrives, so an interrupted run loses nothing and `resume` picks up where it stopped. The summary
(metastable / stable / S.U.N. rates, counts, backend, hull reference, versions) is computed from the
whole CSV at the end and written next to it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import platform
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from crystext import __version__
from crystext.constants import METASTABLE_E_HULL, STABLE_E_HULL
from crystext.data import Dataset, read_structures
from crystext.files import atomic_path, write_atomic
from crystext.stability.errors import StabilityError
from crystext.stability.hull import HullError, HullReference
from crystext.stability.relax import ERROR_INVALID, Backend, Relaxation, RelaxConfig, load_backend

__all__ = [
    "OUTPUT_COLUMNS",
    "StabilityConfig",
    "read_samples",
    "relax_and_place",
    "summarize",
    "summary_path",
]

#: The columns of the per-structure CSV, in order.
OUTPUT_COLUMNS = (
    "id", "energy", "energy_per_atom", "e_form_per_atom", "e_above_hull", "decomposition",
    "relaxed_cif", "steps", "converged", "seconds", "error",
)
#: Error kinds added here (the relaxation's own are in `relax`): a row without a structure, or off the hull.
ERROR_UNPARSED = "unparsed"
ERROR_HULL = "hull"
#: Error kinds of samples that never were valid structures (left out of the rates "over valid").
NOT_VALID = (ERROR_UNPARSED, ERROR_INVALID)


@dataclass(frozen=True)
class StabilityConfig:
    """How a stability run is carried out."""

    backend: str = "chgnet"
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    resume: bool = False
    progress: bool = True


def summary_path(output: Path) -> Path:
    """Where the summary JSON of an output CSV goes: beside it, as NAME.summary.json."""
    return output.with_name(output.name.removesuffix(".csv") + ".summary.json")


def read_samples(path: str | Path) -> Dataset:
    """Read samples (the `crystext sample` CSV, or any structure file `read_structures` knows).

    A samples CSV is keyed by its `id` column, and a row whose text never became a structure is
    reported as skipped with the sampler's own error message.
    """
    path = Path(path)
    csv_like = path.name.lower().endswith((".csv", ".csv.gz")) and path.is_file()
    header = pd.read_csv(path, nrows=0).columns if csv_like else ()
    dataset = read_structures(path, id_column="id") if "id" in header else read_structures(path)
    if "error" in header:
        frame = pd.read_csv(path, usecols=["id", "error"], dtype=str, keep_default_na=False)
        why = dict(zip(frame["id"], frame["error"]))
        dataset.skipped = [(rid, why.get(rid) or reason) for rid, reason in dataset.skipped]
    return dataset


def relax_and_place(
    samples: Dataset,
    reference: HullReference,
    output: str | Path,
    config: StabilityConfig | None = None,
    training: Dataset | None = None,
) -> dict[str, Any]:
    """Relax every sample, measure it against the hull, append one CSV row each; return (and save) the summary."""
    config = config or StabilityConfig()
    output = Path(output)
    done = _prepare_output(output, config.resume)
    backend = load_backend(config.backend, config.relax)
    with _RowWriter(output) as writer:
        for rid, reason in samples.skipped:
            if rid not in done:
                writer.write({"id": rid, "error": f"{ERROR_UNPARSED}: {reason}"})
        todo = [(r.id, r.structure) for r in samples.records if r.id not in done]
        bar = tqdm(total=len(todo), desc=f"relaxing ({backend.name})", unit="structure", disable=not config.progress)
        tally: Counter[str] = Counter()
        for rid, relaxation in _relaxations(todo, backend, config):
            row = _row(rid, relaxation, reference)
            writer.write(row)
            _count(tally, row)
            bar.update()
            bar.set_postfix(metastable=f"{tally['metastable'] / tally['done']:.1%}", errors=tally["error"], refresh=False)
        bar.close()
    summary = summarize(_read_rows(output), backend, reference, config, training)
    write_atomic(summary_path(output), json.dumps(summary, indent=2, default=str))
    return summary


# --------------------------------------------------------------------------- workers


_WORKER_BACKEND: Backend | None = None


def _init_worker(name: str, relax: RelaxConfig) -> None:
    """Load the potential once per worker process, on one thread (the workers share the cores)."""
    import torch

    global _WORKER_BACKEND
    torch.set_num_threads(1)
    _WORKER_BACKEND = load_backend(name, relax)


def _relax_in_worker(rid: str, structure: Structure) -> tuple[str, Relaxation]:
    assert _WORKER_BACKEND is not None, "worker not initialised"
    return rid, _WORKER_BACKEND.relax(structure)


def _relaxations(
    items: Sequence[tuple[str, Structure]], backend: Backend, config: StabilityConfig
) -> Iterator[tuple[str, Relaxation]]:
    """(id, relaxation) in order of completion: in this process for one worker, else in a process pool."""
    workers = max(1, min(config.workers, len(items)))
    if workers == 1:
        for rid, structure in items:
            yield rid, backend.relax(structure)
        return
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(config.backend, config.relax)) as pool:
        futures = [pool.submit(_relax_in_worker, rid, structure) for rid, structure in items]
        for future in as_completed(futures):
            yield future.result()


# --------------------------------------------------------------------------- rows and the output file


def _row(rid: str, relaxation: Relaxation, reference: HullReference) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": rid, "steps": relaxation.steps, "converged": relaxation.converged,
        "seconds": round(relaxation.seconds, 3), "error": relaxation.error,
    }
    structure, energy = relaxation.structure, relaxation.energy
    if structure is None or energy is None:
        return row
    row.update(energy=energy, energy_per_atom=energy / len(structure), relaxed_cif=structure.to(fmt="cif"))
    try:
        point = reference.evaluate(structure.composition, energy)
    except (HullError, ValueError) as err:  # pymatgen's phase diagram raises ValueError on odd input
        row["error"] = f"{ERROR_HULL}: {err}"
        return row
    row.update(e_form_per_atom=point.e_form_per_atom, e_above_hull=point.e_above_hull,
               decomposition=point.decomposition_str())
    return row


def _count(tally: Counter[str], row: Mapping[str, Any]) -> None:
    e_hull = row.get("e_above_hull")
    tally["metastable"] += e_hull is not None and e_hull < METASTABLE_E_HULL
    tally["error"] += bool(row.get("error"))
    tally["done"] += 1


class _RowWriter:
    """Appends complete CSV rows, each flushed and fsynced, so a crash leaves only whole rows behind."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> _RowWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        self.handle = open(self.path, "a", newline="")
        if new:
            self._emit(dict(zip(OUTPUT_COLUMNS, OUTPUT_COLUMNS)))
        return self

    def write(self, row: Mapping[str, Any]) -> None:
        self._emit({c: "" if row.get(c) is None else row[c] for c in OUTPUT_COLUMNS})

    def _emit(self, row: Mapping[str, Any]) -> None:
        buffer = io.StringIO()
        csv.writer(buffer).writerow([row[c] for c in OUTPUT_COLUMNS])
        self.handle.write(buffer.getvalue())
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def __exit__(self, *exc: object) -> None:
        self.handle.close()


def _prepare_output(output: Path, resume: bool) -> set[str]:
    """The ids already in `output` when resuming (a torn last row is dropped); refuse to overwrite otherwise."""
    if not output.is_file() or output.stat().st_size == 0:
        return set()
    if not resume:
        raise StabilityError(f"{output} exists: pass --resume to continue it, or remove it to start over")
    with open(output, newline="") as handle:
        try:
            rows = list(csv.reader(handle))
        except csv.Error:
            rows = []
    if not rows or tuple(rows[0]) != OUTPUT_COLUMNS:
        raise StabilityError(f"{output}: not a stability CSV (its header differs), cannot resume it")
    complete = [r for r in rows[1:] if len(r) == len(OUTPUT_COLUMNS)]
    if len(complete) != len(rows) - 1:
        with atomic_path(output) as partial, open(partial, "w", newline="") as handle:
            csv.writer(handle).writerows([rows[0], *complete])
    return {r[0] for r in complete}


def _read_rows(output: Path) -> pd.DataFrame:
    frame = pd.read_csv(output, dtype=str, keep_default_na=False)
    for column in ("energy", "energy_per_atom", "e_form_per_atom", "e_above_hull", "steps", "seconds"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["converged"] = frame["converged"] == "True"
    return frame


# --------------------------------------------------------------------------- summary and S.U.N.


def summarize(
    rows: pd.DataFrame,
    backend: Backend,
    reference: HullReference,
    config: StabilityConfig,
    training: Dataset | None = None,
) -> dict[str, Any]:
    """Rates and counts of a stability CSV: metastable (< 0.1 eV/atom) and stable (< 0.0) over all and over valid."""
    kinds = rows["error"].str.split(":", n=1).str[0].where(rows["error"] != "", "")
    valid = ~kinds.isin(NOT_VALID)
    e_hull = rows["e_above_hull"]
    n_all, n_valid = len(rows), int(valid.sum())

    def rate(threshold: float) -> dict[str, Any]:
        count = int((e_hull < threshold).sum())
        return {"threshold_ev_per_atom": threshold, "count": count,
                "rate_all": _ratio(count, n_all), "rate_valid": _ratio(count, n_valid)}

    relaxed = rows[e_hull.notna()]
    summary: dict[str, Any] = {
        "samples": n_all,
        "valid": n_valid,
        "placed_on_hull": len(relaxed),
        "errors": dict(Counter(k for k in kinds if k)),
        "metastable": rate(METASTABLE_E_HULL),
        "stable": rate(STABLE_E_HULL),
        "e_above_hull_mean": _finite(relaxed["e_above_hull"].mean()),
        "e_above_hull_median": _finite(relaxed["e_above_hull"].median()),
        "converged_fraction": _ratio(int(relaxed["converged"].sum()), len(relaxed)),
        "seconds_per_relaxation_mean": _finite(rows.loc[valid, "seconds"].mean()),
        "sun": None if training is None else sun(rows, training),
        "backend": {
            "name": backend.name,
            "version": backend.version,
            "mp2020_corrections_applied": not backend.mp2020_corrected,
            **asdict(config.relax),
        },
        "workers": config.workers,
        "hull_reference": reference.summary(),
        "versions": _versions(),
    }
    return summary


def sun(rows: pd.DataFrame, training: Dataset) -> dict[str, Any]:
    """Stable (and metastable), unique among the samples and novel against `training`, as counts and rates.

    Uniqueness groups the qualifying relaxed structures with pymatgen's StructureMatcher (default
    tolerances); each group counts once, if its first member matches no training structure.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    known: dict[str, list[Structure]] = defaultdict(list)
    for record in training:
        known[record.structure.composition.reduced_formula].append(record.structure)
    result: dict[str, Any] = {"training_structures": len(training)}
    for name, threshold in (("stable", STABLE_E_HULL), ("metastable", METASTABLE_E_HULL)):
        cifs = rows.loc[rows["e_above_hull"] < threshold, "relaxed_cif"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            candidates = [Structure.from_str(cif, fmt="cif") for cif in cifs]
        count = _unique_novel(candidates, known, matcher)
        result[name] = {"threshold_ev_per_atom": threshold, "count": count, "rate_all": _ratio(count, len(rows))}
    return result


def _unique_novel(structures: Sequence[Structure], known: Mapping[str, list[Structure]], matcher: Any) -> int:
    by_formula: dict[str, list[Structure]] = defaultdict(list)
    for structure in structures:
        by_formula[structure.composition.reduced_formula].append(structure)
    count = 0
    for formula, group in by_formula.items():
        for duplicates in matcher.group_structures(group):
            count += not any(matcher.fit(duplicates[0], seen) for seen in known.get(formula, ()))
    return count


def _ratio(count: int, total: int) -> float | None:
    return round(count / total, 6) if total else None


def _finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"crystext": __version__, "python": platform.python_version()}
    for package in ("pymatgen", "ase", "torch", "chgnet", "sevenn", "matgl", "mp-api"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
