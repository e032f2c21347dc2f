"""The `crystext stability` subcommand: its arguments, and a run that relaxes, places on the hull and summarises."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from crystext.data import Dataset, read_structures
from crystext.errors import flag_message, option_flags
from crystext.files import CsvLog
from crystext.stability.errors import StabilityError
from crystext.stability.hull import (
    HullReference,
    MPApiReference,
    default_reference,
    from_entries,
    from_formation_energies,
    shipped_reference,
)
from crystext.stability.pipeline import (
    BATCH_SIZE,
    DASK_CHUNK,
    OUTPUT_COLUMNS,
    StabilityConfig,
    read_samples,
    relax_and_place,
    summary_path,
)
from crystext.stability.relax import BACKENDS, BUDGETS, PAPER_TIMEOUT_S, RelaxConfig

__all__ = [
    "HELP",
    "add_arguments",
    "add_hull_arguments",
    "add_relax_arguments",
    "check_paths",
    "hull_reference",
    "run",
    "stability_config",
    "training_structures",
]

HELP = "relax samples with a machine-learned potential and place them on the convex hull"

#: Environment variable naming the default offline hull folder (the shared-data layout: mp_20/, mp_hull_ref/).
HULL_DATA_ENV = "CRYSTEXT_HULL_DATA"
#: Settings fields and the flags that set them, to name the flag when a setting is refused.
_FLAGS = option_flags(("fmax", "max_steps", "timeout", "optimizer", "workers", "chunk_size", "batch_size"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `crystext stability SAMPLES`."""
    parser.add_argument("samples", type=Path, help="samples CSV from `crystext sample`, or any structure file/folder")
    parser.add_argument("-o", "--output", type=Path,
                        help="per-structure CSV (default: SAMPLES_stability.csv); the summary goes to *.summary.json")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run, skipping ids already done")
    parser.add_argument("--limit", type=int,
                        help="only the first N structures (rows that did not parse are always kept)")
    parser.add_argument("--structure-column", metavar="NAME",
                        help="the samples CSV's structure column (default: cif, structure, cif_string)")
    add_relax_arguments(parser)
    add_hull_arguments(parser)
    parser.add_argument("--train", type=Path, nargs="+", help="training structures, for S.U.N. (novelty)")


def add_relax_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the relaxations (read by `stability_config`); also `crystext tune`'s."""
    relax = parser.add_argument_group("relaxation")
    relax.add_argument("--backend", choices=sorted(BACKENDS), default="chgnet",
                       help="machine-learned potential (default chgnet; m3gnet needs matgl and internet; "
                       "sevennet-batched relaxes --batch-size structures at once in torch-sim, on the GPU if there "
                       "is one, with FIRE and the step budget only: pip install 'crystext[batched]')")
    relax.add_argument("--budget", choices=sorted(BUDGETS), default="steps",
                       help="steps (default): stop at fmax or the step cap, the same rows on any machine; "
                       f"paper: also {PAPER_TIMEOUT_S:g} s of wall-clock time per structure, a structure still "
                       "running is dropped (the paper's setting)")
    relax.add_argument("--fmax", type=float, default=RelaxConfig.fmax, help="force threshold, eV/A")
    relax.add_argument("--max-steps", type=int,
                       help=f"optimizer step cap (default {RelaxConfig.max_steps}; 0: a single point, no relaxation)")
    relax.add_argument("--timeout", type=float,
                       help="wall-clock seconds per structure (default: none, or the budget's)")
    relax.add_argument("--optimizer", choices=("FIRE", "BFGS"), default=RelaxConfig.optimizer)
    relax.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                       help="worker processes, one model each (default: all cores)")
    relax.add_argument("--scheduler", metavar="ADDRESS",
                       help="relax on a Dask cluster: its scheduler address (tcp://host:8786), or 'local' for a "
                       "LocalCluster of --workers processes (needs the `distributed` package: crystext[cluster])")
    relax.add_argument("--chunk-size", type=int, default=DASK_CHUNK,
                       help=f"with --scheduler: structures per task (default {DASK_CHUNK}); one batch each for a "
                       "batched backend")
    relax.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                       help=f"structures a batched backend relaxes together (default {BATCH_SIZE}; on a GPU, "
                       "hundreds fill it better); their rows are written when the batch ends")


def add_hull_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that choose the hull reference (read by `hull_reference`); also `crystext tune`'s."""
    hull = parser.add_argument_group("hull reference (one of)")
    source = hull.add_mutually_exclusive_group()
    source.add_argument("--hull-data", type=Path,
                        help=f"folder laid out like the shared data (mp_20/, mp_hull_ref/); default ${HULL_DATA_ENV}, "
                        "else the offline hull shipped with crystext (built from that data)")
    source.add_argument("--entries", type=Path,
                        help="JSON(.gz) of MP ComputedStructureEntries, e.g. matbench-discovery's")
    source.add_argument("--formation-energies", type=Path, nargs="+", metavar="TABLE",
                        help="CSV/parquet tables of formula + formation energy per atom (needs --elemental-refs)")
    source.add_argument("--mp-api", action="store_true", help="live Materials Project (needs mp-api and $MP_API_KEY)")
    hull.add_argument("--elemental-refs", type=Path, help="JSON(.gz) of MP2020 elemental reference entries")
    hull.add_argument("--fill", type=Path, nargs="+", default=[], metavar="TABLE",
                      help="older tables used only for chemical systems the main tables lack")
    hull.add_argument("--no-fill", action="store_true", help="with --hull-data: leave out the older mp_e_form table")


def run(args: argparse.Namespace) -> int:
    """Run `crystext stability`: relax, place on the hull, write the CSV and summary, print the rates."""
    # Every setting is checked before the slow work (reading the hull, loading the potential) starts.
    if args.limit is not None and args.limit < 1:
        raise StabilityError(f"--limit must be at least 1, got {args.limit}")
    config = stability_config(args, resume=args.resume)
    output = args.output or args.samples.with_name(args.samples.name.split(".")[0] + "_stability.csv")
    CsvLog.check_output(output, OUTPUT_COLUMNS, args.resume)
    check_paths(args, ("hull_data", "entries", "formation_energies", "elemental_refs", "fill", "train"))
    samples = read_samples(args.samples, args.structure_column)
    if args.limit is not None:
        samples = Dataset(samples.records[: args.limit], samples.skipped, samples.source)
    reference = hull_reference(args)
    training = training_structures(args.train) if args.train else None
    summary = relax_and_place(samples, reference, output, config, training)
    meta, stable = summary["metastable"], summary["stable"]
    print(
        f"{summary['samples']} samples ({summary['valid']} valid): metastable {_pct(meta['rate_all'])} of all, "
        f"{_pct(meta['rate_valid'])} of valid; stable {_pct(stable['rate_all'])} / {_pct(stable['rate_valid'])}. "
        f"Rows in {output}, summary in {summary_path(output)}",
        file=sys.stderr,
    )
    return 0


def stability_config(args: argparse.Namespace, resume: bool) -> StabilityConfig:
    """The settings the `add_relax_arguments` options give; a refused setting is an error naming its flag."""
    try:
        return StabilityConfig(
            backend=args.backend,
            relax=replace(
                BUDGETS[args.budget], fmax=args.fmax, optimizer=args.optimizer,
                **{name: value for name, value in (("max_steps", args.max_steps), ("timeout", args.timeout))
                   if value is not None},
            ),
            workers=args.workers,
            resume=resume,
            scheduler=args.scheduler,
            chunk_size=args.chunk_size,
            batch_size=args.batch_size,
        )
    except ValueError as err:
        raise StabilityError(flag_message(err, _FLAGS)) from None

def check_paths(args: argparse.Namespace, flags: tuple[str, ...]) -> None:
    """Refuse a path option naming nothing, before any slow work starts."""
    for flag in flags:
        value = getattr(args, flag)
        for path in value if isinstance(value, list) else [value]:
            if path is not None and not path.exists():
                raise StabilityError(f"--{flag.replace('_', '-')} {path}: no such file or folder")


def hull_reference(args: argparse.Namespace) -> HullReference:
    """The hull reference the `add_hull_arguments` options name (the shipped offline hull without any)."""
    if args.entries:
        return from_entries(args.entries)
    if args.formation_energies:
        if not args.elemental_refs:
            raise StabilityError("--formation-energies needs --elemental-refs (MP2020 elemental reference entries)")
        return from_formation_energies(args.formation_energies, args.elemental_refs, fill=args.fill)
    if args.mp_api:
        return MPApiReference()
    folder = args.hull_data or os.environ.get(HULL_DATA_ENV)
    if not folder:
        return shipped_reference()  # the same hull as --hull-data on the shared data, shipped with the package
    return default_reference(folder, fill_with_mp_e_form=not args.no_fill)


def training_structures(paths: list[Path]) -> Dataset:
    """The structures of every file named, as one dataset (the reference for novelty)."""
    return Dataset.concat([read_structures(p) for p in paths], source=" + ".join(map(str, paths)))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"
