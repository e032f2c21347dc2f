"""`crystext evaluate`: the command line over `crystext.evaluate`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crystext.constants import COVERAGE_CUTOFFS
from crystext.evaluate.metrics import PROTOCOLS

HELP = "score generated crystals against a reference set (the paper's metrics) and write a report"


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = commands.add_parser("evaluate", help=HELP, description=HELP)
    p.set_defaults(command="evaluate", handler=run)
    p.add_argument("samples", type=Path, help="samples CSV (a cif column), a folder of .cif, or an .extxyz file")
    p.add_argument("--reference", required=True, type=Path, help="reference set, e.g. mp_20/test.csv")
    p.add_argument("--train", type=Path, action="append", default=[],
                   help="training set for novelty (repeat for several files, e.g. train.csv and val.csv)")
    p.add_argument("-o", "--out", type=Path, default=Path("eval"), help="output folder (default: eval/)")
    p.add_argument("--protocol", default="paper",
                   help=f"one of {', '.join(PROTOCOLS)}, or several comma-separated (the first is the default); "
                        "default: paper")
    p.add_argument("--dataset", choices=sorted(COVERAGE_CUTOFFS),
                   help="whose coverage cut-offs to use (default: guessed from the reference path, else mp_20)")
    p.add_argument("--struct-cutoff", type=float, help="override the structure-fingerprint cut-off")
    p.add_argument("--comp-cutoff", type=float, help="override the composition-fingerprint cut-off")
    p.add_argument("--joint-coverage", action="store_true",
                   help="stricter COV-R/COV-P: one sample within both cut-offs (not what the papers report)")
    p.add_argument("--n-valid", type=int, default=1000, help="cdvae: valid samples for Wasserstein/diversity")
    p.add_argument("--max-samples", type=int, default=10000,
                   help="paper: more parsed samples than this are subsampled as crystal-text-llm does (0: never)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stability", type=Path, help="a `crystext stability` CSV (id, e_above_hull) to join")
    p.add_argument("--fingerprint-timeout", type=float, default=5.0,
                   help="seconds per site of the CrystalNN fingerprint (the paper: 5); 0 for none")
    p.add_argument("--structure-timeout", type=float, default=120.0,
                   help="seconds for a whole structure's fingerprint; 0 for none")
    p.add_argument("--jobs", type=int, help="worker processes (default: all cores)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the reference fingerprint cache")
    p.add_argument("--no-matcher", action="store_true", help="skip StructureMatcher uniqueness and novelty")
    p.add_argument("--ipt-model", type=Path, help="model directory: also measure IPT (translation invariance)")
    p.add_argument("--ipt-structures", type=int, default=100, help="reference structures for IPT")
    p.add_argument("--ipt-translations", type=int, default=20)
    p.add_argument("--label", default=None, help="row label in the tables (default: the samples file name)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from crystext.evaluate.analysis import AnalysisSettings, load_items
    from crystext.evaluate.core import evaluate
    from crystext.evaluate.report import markdown_table, write_report

    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        print(f"crystext evaluate: error: unknown protocol {', '.join(bad) or '(none)'} "
              f"(known: {', '.join(PROTOCOLS)})", file=sys.stderr)
        return 1
    try:
        result = evaluate(
            args.samples, args.reference, args.train or None, protocols, args.dataset, args.struct_cutoff,
            args.comp_cutoff, "joint" if args.joint_coverage else "separate", args.n_valid,
            args.max_samples or None, args.seed, args.stability,
            AnalysisSettings(args.fingerprint_timeout or None, args.structure_timeout or None),
            args.jobs, not args.quiet, not args.no_cache, not args.no_matcher,
        )
    except ValueError as err:
        print(f"crystext evaluate: error: {err}", file=sys.stderr)
        return 1
    if args.ipt_model is not None:
        from crystext.evaluate.analysis import _parse
        from crystext.evaluate.ipt import ipt

        refs = [it for it in load_items(args.reference) if it.payload is not None][: args.ipt_structures]
        result.extra["ipt"] = ipt(args.ipt_model, [_parse(it.payload) for it in refs], args.ipt_translations,
                                  args.seed, progress=not args.quiet)
        for m in result.metrics.values():
            m["ipt"] = result.extra["ipt"]["ipt"]
    label = args.label or args.samples.name
    paths = write_report(result, args.out, label)
    for warning in result.warnings:
        print(f"crystext evaluate: {warning}", file=sys.stderr)
    print(markdown_table([(f"{label} ({name})", m) for name, m in result.metrics.items()], extra=False))
    print("wrote " + ", ".join(str(p) for p in paths.values()), file=sys.stderr)
    return 0
