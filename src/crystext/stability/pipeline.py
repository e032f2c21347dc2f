"""The stability run: relax every sample in worker processes, place it on the hull, write rows as they finish.

One CSV row per sample (including those that never parsed), appended and fsynced as each result
arrives, so an interrupted run loses nothing and `resume` picks up where it stopped. The summary
(metastable / stable / S.U.N. rates, counts, backend, hull reference, versions) is computed from the
whole CSV at the end and written next to it.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pymatgen.core import Structure
from tqdm.auto import tqdm

from crystext.constants import METASTABLE_E_HULL, MIN_FORMATION_ENERGY, STABLE_E_HULL
from crystext.data import Dataset, read_structures
from crystext.evaluate.sun import KnownStructures, RelaxedStructures, stability_table
from crystext.files import CsvLog, write_atomic
from crystext.provenance import package_versions
from crystext.stability.hull import HullError, HullReference
from crystext.stability.relax import (
    BACKENDS,
    ERROR_INVALID,
    Backend,
    Relaxation,
    RelaxConfig,
    budget_name,
    load_backend,
)

__all__ = [
    "OUTPUT_COLUMNS",
    "StabilityConfig",
    "place",
    "read_rows",
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
ERROR_UNPHYSICAL = "unphysical energy"
#: Error kinds of samples that never were valid structures (left out of the rates "over valid").
NOT_VALID = (ERROR_UNPARSED, ERROR_INVALID)


#: Structures a Dask task relaxes: enough to spread the per-task overhead, few enough to balance the workers.
DASK_CHUNK = 8
#: Structures a batched backend relaxes together outside Dask (their rows are written when the batch ends).
BATCH_SIZE = 64


@dataclass(frozen=True)
class StabilityConfig:
    """How a stability run is carried out."""

    backend: str = "chgnet"
    relax: RelaxConfig = field(default_factory=RelaxConfig)
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)  # local processes (or LocalCluster workers)
    resume: bool = False
    progress: bool = True
    scheduler: str | None = None  # a Dask scheduler address, or "local" for a LocalCluster of `workers` processes
    chunk_size: int = DASK_CHUNK  # structures per Dask task (a batched backend relaxes each as one batch)
    batch_size: int = BATCH_SIZE  # structures per batch of a batched backend, without Dask

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {self.chunk_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.backend in BACKENDS:  # an unknown name is reported when the backend loads
            BACKENDS[self.backend].check(self.relax)


def summary_path(output: Path) -> Path:
    """Where the summary JSON of an output CSV goes: beside it, as NAME.summary.json."""
    return output.with_name(output.name.removesuffix(".csv") + ".summary.json")


def read_samples(path: str | Path, structure_column: str | None = None) -> Dataset:
    """Read samples: the `crystext sample` CSV, or any structure file `crystext.data.read_structures` knows.

    Ids follow the one rule of `crystext.data.tables` (a samples CSV's `id` column), and a row whose text
    never became a structure is reported as skipped with the sampler's own error message.
    """
    return read_structures(path, structure_column=structure_column)


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
    log = CsvLog(output, OUTPUT_COLUMNS, config.resume)
    done = log.ids()
    backend = load_backend(config.backend, config.relax)
    log.append([{"id": rid, "error": f"{ERROR_UNPARSED}: {reason}"}
                for rid, reason in samples.skipped if rid not in done])
    todo = [(r.id, r.structure) for r in samples.records if r.id not in done]
    bar = tqdm(total=len(todo), desc=f"relaxing ({backend.name})", unit="structure", disable=not config.progress)
    tally: Counter[str] = Counter()
    for rid, relaxation in _relaxations(todo, backend, config):
        row = place(rid, relaxation, reference)
        log.append([row])
        _count(tally, row)
        bar.update()
        bar.set_postfix(metastable=f"{tally['metastable'] / tally['done']:.1%}", errors=tally["error"], refresh=False)
    bar.close()
    summary = summarize(read_rows(output), backend, reference, config, training)
    write_atomic(summary_path(output), json.dumps(summary, indent=2, default=str))
    return summary


# --------------------------------------------------------------------------- workers


_WORKER_BACKEND: Backend | None = None


def _init_worker(name: str, relax: RelaxConfig) -> Backend:
    """Load the potential once per worker process, on one thread (the workers share the cores)."""
    global _WORKER_BACKEND
    if _WORKER_BACKEND is None or (_WORKER_BACKEND.name, _WORKER_BACKEND.config) != (name, relax):
        _single_threaded()
        _WORKER_BACKEND = load_backend(name, relax)
    return _WORKER_BACKEND


def _init_pool_worker(name: str, relax: RelaxConfig, parent: int) -> None:
    """A pool worker's start: watch for the end of the process that made the pool, then load the potential."""
    exit_with_parent(parent)
    _init_worker(name, relax)


def exit_with_parent(parent: int, every: float = 1.0) -> None:
    """From now on, end this process once `parent` is gone (it is then another's child), checking every `every`
    seconds in a daemon thread: a killed run leaves no worker relaxing on, taking the cores from whatever runs next."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _relax_chunk(name: str, relax: RelaxConfig, chunk: list[tuple[str, Structure]]) -> list[tuple[str, Relaxation]]:
    """Relax a chunk of structures in a worker process (or Dask worker), with the potential it keeps loaded."""
    return _relax_with(_init_worker(name, relax), chunk)


def _relax_with(backend: Backend, chunk: list[tuple[str, Structure]]) -> list[tuple[str, Relaxation]]:
    """(id, relaxation) of each structure in a chunk, relaxed by `relax_many` (one batch for a batched backend)."""
    ids = [rid for rid, _ in chunk]
    return list(zip(ids, backend.relax_many([structure for _, structure in chunk])))


def _single_threaded() -> Callable[[], None]:
    """Run torch and the BLAS libraries on one thread; returns what restores the previous settings.

    BLAS matters most: the cell filter solves many 3x3 systems per step (scipy's expm_frechet and logm), and
    a multi-threaded OpenBLAS spends milliseconds waking its threads for each one, far more than the work
    (benchmarks/results/stability_speed.md).
    """
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    limits = threadpool_limits(limits=1)

    def restore() -> None:
        torch.set_num_threads(threads)
        limits.restore_original_limits()

    return restore


def _relaxations(
    items: Sequence[tuple[str, Structure]], backend: Backend, config: StabilityConfig
) -> Iterator[tuple[str, Relaxation]]:
    """(id, relaxation) in order of completion: on a Dask cluster when given a scheduler, else in this process
    for one worker, else in a process pool; one structure at a time, or batches for a batched backend."""
    if config.scheduler is not None:
        yield from _dask_relaxations(items, config)
        return
    chunks = _chunks(items, config.batch_size if backend.batched else 1)
    workers = max(1, min(config.workers, len(chunks)))
    if workers == 1:
        restore = _single_threaded()  # as in a worker, so the rows do not depend on the number of workers
        try:
            for chunk in chunks:
                yield from _relax_with(backend, chunk)
        finally:
            restore()
        return
    context = multiprocessing.get_context("spawn")  # torch and fork do not mix
    with ProcessPoolExecutor(
        workers, context, initializer=_init_pool_worker, initargs=(config.backend, config.relax, os.getpid())
    ) as pool:
        futures = [pool.submit(_relax_chunk, config.backend, config.relax, chunk) for chunk in chunks]
        for future in as_completed(futures):
            yield from future.result()


def _chunks(items: Sequence[tuple[str, Structure]], size: int) -> list[list[tuple[str, Structure]]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# --------------------------------------------------------------------------- rows and the output file


def place(rid: str, relaxation: Relaxation, reference: HullReference) -> dict[str, Any]:
    """The output row of one relaxation: its energies and place on the hull, or why it has none."""
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
    if point.e_form_per_atom < MIN_FORMATION_ENERGY:
        row.update(e_form_per_atom=point.e_form_per_atom, error=_unphysical(point.e_form_per_atom))
        return row
    row.update(e_form_per_atom=point.e_form_per_atom, e_above_hull=point.e_above_hull,
               decomposition=point.decomposition_str())
    return row


def _unphysical(e_form_per_atom: float) -> str:
    return (f"{ERROR_UNPHYSICAL}: formation energy {e_form_per_atom:.2f} eV/atom, below any known compound's "
            f"({MIN_FORMATION_ENERGY:g})")


def _count(tally: Counter[str], row: Mapping[str, Any]) -> None:
    e_hull = row.get("e_above_hull")
    tally["metastable"] += e_hull is not None and e_hull < METASTABLE_E_HULL
    tally["error"] += bool(row.get("error"))
    tally["done"] += 1


def read_rows(output: Path) -> pd.DataFrame:
    """A stability CSV with numeric columns; a row written before unphysical energies were refused (formation energy
    below MIN_FORMATION_ENERGY, yet placed) is read as the error `place` now makes of it."""
    frame = pd.read_csv(output, dtype=str, keep_default_na=False)
    for column in ("energy", "energy_per_atom", "e_form_per_atom", "e_above_hull", "steps", "seconds"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["converged"] = frame["converged"] == "True"
    unphysical = (frame["e_form_per_atom"] < MIN_FORMATION_ENERGY) & (frame["error"] == "")
    frame.loc[unphysical, "error"] = [_unphysical(e) for e in frame.loc[unphysical, "e_form_per_atom"]]
    frame.loc[unphysical, ["e_above_hull", "decomposition"]] = [math.nan, ""]
    return frame


# --------------------------------------------------------------------------- summary and S.U.N.


def summarize(
    rows: pd.DataFrame,
    backend: Backend,
    reference: HullReference,
    config: StabilityConfig,
    training: Dataset | None = None,
) -> dict[str, Any]:
    """Rates and counts of a stability CSV, by `crystext.evaluate.sun`'s definitions: metastable (< 0.1 eV/atom),
    stable (< 0.0) and S.U.N. over all rows; the stability rates also over the valid ones, and over all rows
    counting a structure the step cap stopped (placed with its last energy) as neither; and the budget used."""
    kinds = rows["error"].str.split(":", n=1).str[0].where(rows["error"] != "", "")
    valid = ~kinds.isin(NOT_VALID)
    known = None if training is None else KnownStructures.from_structures([r.structure for r in training])
    table = stability_table(rows["e_above_hull"].to_numpy(float), RelaxedStructures(rows["relaxed_cif"]), known)
    n_all, n_valid = len(rows), int(valid.sum())

    converged = rows["converged"].to_numpy(bool)

    def counted(flag: str, threshold: float, over_valid: bool = True) -> dict[str, Any]:
        count = int(table[flag].sum())
        found = {"threshold_ev_per_atom": threshold, "count": count, "rate_all": _ratio(count, n_all)}
        if not over_valid:
            return found
        # Without the unconverged: a structure the step cap stopped counts as not (meta)stable.
        only_converged = int((table[flag].to_numpy(bool) & converged).sum())
        return {**found, "rate_valid": _ratio(count, n_valid), "rate_all_converged_only": _ratio(only_converged, n_all)}

    relaxed = rows[rows["e_above_hull"].notna()]
    return {
        "samples": n_all,
        "valid": n_valid,
        "placed_on_hull": len(relaxed),
        "placed_unconverged": int((~relaxed["converged"]).sum()),
        "budget": {"name": budget_name(config.relax), "max_steps": config.relax.max_steps,
                   "timeout_s": config.relax.timeout, "fmax": config.relax.fmax,
                   "optimizer": config.relax.optimizer},
        "errors": dict(Counter(k for k in kinds if k)),
        "metastable": counted("metastable", METASTABLE_E_HULL),
        "stable": counted("stable", STABLE_E_HULL),
        "e_above_hull_mean": _finite(relaxed["e_above_hull"].mean()),
        "e_above_hull_median": _finite(relaxed["e_above_hull"].median()),
        "converged_fraction": _ratio(int(relaxed["converged"].sum()), len(relaxed)),
        "seconds_per_relaxation_mean": _finite(rows.loc[valid, "seconds"].mean()),
        "sun": None if known is None else {
            "training_structures": len(known),
            "stable": counted("sun", STABLE_E_HULL, over_valid=False),
            "metastable": counted("msun", METASTABLE_E_HULL, over_valid=False),
        },
        "backend": {
            "name": backend.name,
            "version": backend.version,
            "mp2020_corrections_applied": not backend.mp2020_corrected,
            **asdict(config.relax),
        },
        "workers": config.workers,
        "hull_reference": reference.summary(),
        "versions": package_versions(),
    }


def _ratio(count: int, total: int) -> float | None:
    return round(count / total, 6) if total else None


def _finite(value: float) -> float | None:
    return round(float(value), 6) if math.isfinite(value) else None


def _dask_relaxations(
    items: Sequence[tuple[str, Structure]], config: StabilityConfig
) -> Iterator[tuple[str, Relaxation]]:
    """(id, relaxation) as chunks finish on a Dask cluster: the one at `config.scheduler`, or a LocalCluster."""
    from distributed import Client, LocalCluster, as_completed

    with contextlib.ExitStack() as stack:
        if config.scheduler == "local":
            cluster = stack.enter_context(LocalCluster(
                n_workers=config.workers, threads_per_worker=1, processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(config.scheduler))
        futures = [client.submit(_relax_chunk, config.backend, config.relax, chunk, pure=False)
                   for chunk in _chunks(items, config.chunk_size)]
        for future in as_completed(futures):
            yield from future.result()
