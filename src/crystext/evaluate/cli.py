"""The `crystext evaluate` subcommand: its arguments, and a run that writes metrics, per-sample CSV and report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crystext.constants import COVERAGE_CUTOFFS, SPACEGROUP_SYMPREC
from crystext.errors import flag_message, option_flags
from crystext.evaluate.evaluation import EvaluateConfig, IptSettings, evaluate
from crystext.evaluate.fingerprints import PAPER_FINGERPRINT_TIME_LIMIT, FingerprintSettings
from crystext.evaluate.inputs import EvaluateError
from crystext.evaluate.protocols import CDVAE_N_VALID, PROTOCOLS, ProtocolSettings
from crystext.report import markdown_table, write_report

__all__ = ["HELP", "add_arguments", "run"]

HELP = "score generated crystals against a reference set (the paper's metrics) and write a report"

#: Settings fields and the flags that set them, to name the flag when a setting is refused.
_FLAGS = option_flags(("n_valid", "seed", "struct_cutoff", "comp_cutoff", "symprec", "max_atoms", "jobs", "time_limit",
                       "n_structures", "n_translations"),
                      time_limit="--fingerprint-time-limit", n_structures="--ipt-structures",
                      n_translations="--ipt-translations")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `crystext evaluate` arguments to a (sub)parser."""
    parser.add_argument("samples", type=Path, help="samples CSV from `crystext sample`, any CSV with a cif column, "
                        "a folder, .zip or .tar.gz of .cif files, a .cif, pymatgen .json, a CDVAE .pt, an .extxyz "
                        "or another file ASE reads")
    parser.add_argument("--reference", type=Path, required=True, help="reference set, e.g. MP-20 test.csv")
    parser.add_argument("--train", type=Path, action="append", default=[],
                        help="training set, for novelty and S.U.N. (repeat for several files: train.csv, val.csv)")
    parser.add_argument("--stability", type=Path, help="`crystext stability` CSV, joined by id")
    parser.add_argument("-o", "--out", type=Path, default=Path("eval"), help="output folder (default: eval)")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="paper",
                        help="paper: crystal-text-llm basic_eval.py (default); cdvae: CDVAE compute_metrics.py")
    parser.add_argument("--dataset", choices=sorted(COVERAGE_CUTOFFS), default="mp_20",
                        help="whose coverage cut-offs to use (default: mp_20)")
    parser.add_argument("--struct-cutoff", type=float, help="structure-fingerprint cut-off (overrides --dataset)")
    parser.add_argument("--comp-cutoff", type=float, help="composition-fingerprint cut-off (overrides --dataset)")
    parser.add_argument("--joint-coverage", action="store_true",
                        help="also report the stricter joint COV-R/COV-P (one structure within both cut-offs)")
    parser.add_argument("--n-valid", type=int, default=CDVAE_N_VALID,
                        help=f"cdvae protocol: valid samples drawn for the distributions (default {CDVAE_N_VALID})")
    parser.add_argument("--seed", type=int, default=0, help="seed of that draw and of IPT (default 0)")
    parser.add_argument("--fingerprint-time-limit", type=float, default=PAPER_FINGERPRINT_TIME_LIMIT,
                        help="CPU seconds per structure fingerprint, 0 for none "
                        f"(default {PAPER_FINGERPRINT_TIME_LIMIT:g}, as the paper)")
    parser.add_argument("--symprec", type=float, default=SPACEGROUP_SYMPREC,
                        help=f"space-group tolerance (default {SPACEGROUP_SYMPREC})")
    parser.add_argument("--max-atoms", type=int, help="treat structures with more atoms as unreadable")
    parser.add_argument("--structure-column", metavar="NAME",
                        help="the samples CSV's structure column (CIF or pymatgen JSON; default: cif, structure, "
                        "cif_string)")
    parser.add_argument("--no-matcher", action="store_true", help="skip StructureMatcher uniqueness and novelty")
    parser.add_argument("--ipt-model", type=Path, help="a `crystext train` model directory: also measure IPT")
    parser.add_argument("--ipt-structures", type=int, default=100, help="reference structures for IPT (default 100)")
    parser.add_argument("--ipt-translations", type=int, default=20, help="translations per structure (default 20)")
    parser.add_argument("--jobs", type=int, help="worker processes (default: all cores)")
    parser.add_argument("--no-cache", action="store_true", help="do not read or write cached reference fingerprints")
    parser.add_argument("--cache-samples", action="store_true", help="cache the samples' fingerprints too")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    """Evaluate, write metrics.json, per_sample.csv, table.md and report.html into --out, print the table."""
    try:
        config = EvaluateConfig(
            protocol=ProtocolSettings(
                protocol=args.protocol, dataset=args.dataset, struct_cutoff=args.struct_cutoff,
                comp_cutoff=args.comp_cutoff, joint_coverage=args.joint_coverage, n_valid=args.n_valid, seed=args.seed,
            ),
            fingerprint=FingerprintSettings(time_limit=args.fingerprint_time_limit or None, symprec=args.symprec),
            matcher=not args.no_matcher, max_atoms=args.max_atoms, structure_column=args.structure_column,
            jobs=args.jobs, cache=not args.no_cache,
            cache_samples=args.cache_samples, progress=not args.quiet,
            ipt=IptSettings(args.ipt_model, args.ipt_structures, args.ipt_translations, args.seed)
            if args.ipt_model else None,
        )
    except ValueError as err:
        raise EvaluateError(flag_message(err, _FLAGS)) from None
    if args.out.exists() and not args.out.is_dir():
        raise EvaluateError(f"-o {args.out} is a file: give the folder to write the results into")
    inputs = [("", args.samples), ("--reference ", args.reference), *(("--train ", t) for t in args.train),
              ("--stability ", args.stability)]
    for flag, path in inputs:  # checked before the samples' slow profiling, not after it
        if path is not None and not path.exists():
            raise EvaluateError(f"{flag}{path}: no such file or folder")
    result = evaluate(args.samples, args.reference, args.train, args.stability, config)
    written = result.write(args.out) + write_report(result, args.out)
    for note in result.notes:
        print(f"crystext evaluate: {note}", file=sys.stderr)
    print(markdown_table([(args.samples.name, result)]))
    print(f"wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
