"""Judge a model as a tuning round judges its samples, on more of them: valid, metastable, stable, S.U.N., unique
and novel over N seeded attempts of the default sampler (T 0.7, top-p 0.9, grammar and 0.5 A distance), at most
20 atoms (MP-20's largest, as Table 1 samples).

    python benchmarks/tune_eval.py [MODEL] --n 1000 --name NAME [--backend chgnet|sevennet] [--budget steps|paper]

MODEL: a model directory (default: the shipped model). The attempts are seeded as Table 1's T=0.7 run
(seed 0, batch 128), so for the shipped model they are that run's first N. Relaxed with the steps budget
(or the paper's, --budget paper: also 30 s of wall-clock time a structure) on the shipped offline hull; novelty
against MP-20 train + val. A second --backend or --budget on the same --work relaxes the same attempts again (the
check that a gain is not one potential's artefact, nor the budget's; give each its own --name, as the result is
named by it). Resumable: samples and
relaxations continue where a killed run stopped. Writes benchmarks/results/tune_eval_NAME.json/.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: (metrics key, column header), in the order of the table.
COLUMNS = (("valid_rate", "valid"), ("metastable_rate", "metastable"), ("stable_rate", "stable"),
           ("sun_rate", "S.U.N."), ("msun_rate", "M.S.U.N."), ("uniqueness", "unique (of valid)"),
           ("novelty", "novel (of valid)"), ("mean_e_above_hull", "mean E_hull"))

#: How each --budget reads in a result's description.
BUDGET_WORDS = {"steps": "steps budget (500 FIRE steps, fmax 0.1 eV/A)",
                "paper": "the paper's budget (500 FIRE steps, fmax 0.1 eV/A, 30 s of wall-clock time a structure; "
                         "one still running is dropped)"}


def shape(structures: list) -> dict:
    """Cell sizes, the commonest element and the share of distinct formulas of a set of crystals."""
    from collections import Counter

    sites = Counter(len(s) for s in structures)
    elements = Counter(e.symbol for s in structures for e in s.composition.elements)
    top, count = elements.most_common(1)[0]
    n = len(structures)
    return {"n": n, "mean_sites": sum(k * v for k, v in sites.items()) / n, "four_site_share": sites[4] / n,
            "top_element": f"{top} ({count / n:.3f})",
            "distinct_formula_share": len({s.composition.reduced_formula for s in structures}) / n}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: the shipped model)")
    parser.add_argument("--n", type=int, default=1000, help="attempts sampled and judged")
    parser.add_argument("--backend", default="chgnet", help="potential for the relaxations")
    parser.add_argument("--budget", choices=("steps", "paper"), default="steps",
                        help="relaxation budget: 500 FIRE steps, or those and 30 s of wall-clock time (the paper's)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, help="folder for samples and relaxations (default: runs/tune_eval/NAME)")
    parser.add_argument("--name", required=True)
    parser.add_argument("--note", default="", help="a sentence on where the attempts came from, under the table")
    args = parser.parse_args()
    from _machine import cell, describe, machine, write_result

    from crystext.data import Dataset, read_structures
    from crystext.files import write_atomic
    from crystext.sample import SampleConfig, Sampler
    from crystext.sample.samples_csv import parsed_structures
    from crystext.stability import StabilityConfig, shipped_reference
    from crystext.stability.relax import BUDGETS
    from crystext.tune import StabilityScorer

    work = args.work or ROOT / "runs" / "tune_eval" / args.name
    relaxed = work / (args.backend if args.budget == "steps" else f"{args.backend}-{args.budget}")
    relaxed.mkdir(parents=True, exist_ok=True)
    samples = work / "samples.csv"
    config = SampleConfig(n=args.n, max_attempts=args.n, batch_size=128, temperature=0.7, top_p=0.9, max_atoms=20,
                          seed=0)
    Sampler.from_pretrained(args.model).sample(config, samples, resume=samples.exists())
    training = Dataset.concat([read_structures(SHARED / "mp_20" / f"{s}.csv") for s in ("train", "val")],
                              source="MP-20 train + val")
    scorer = StabilityScorer(shipped_reference(), training,
                             StabilityConfig(backend=args.backend, relax=BUDGETS[args.budget], workers=args.workers))
    table, metrics = scorer(samples, relaxed)
    write_atomic(relaxed / "scores.csv", table.to_csv(index=False))
    valid = set(table.loc[table["valid"], "id"])
    shapes = {"samples (valid)": shape([s for rid, s in parsed_structures(samples) if rid in valid]),
              "MP-20 train + val": shape([r.structure for r in training])}
    command = " ".join(["python", *sys.argv])
    record = {"machine": machine(), "command": command, "model": str(args.model or "shipped"),
              "backend": args.backend, "budget": args.budget, "attempts": len(table), "metrics": metrics,
              "shapes": shapes}

    lines = [f"# {args.name}: {len(table)} attempts of {record['model']}, judged as a tuning round judges", "",
             describe(record["machine"], command), "",
             "Default sampler (T 0.7, top-p 0.9, grammar, 0.5 A), at most 20 atoms, seed 0, batch 128; "
             f"{args.backend}, {BUDGET_WORDS[args.budget]}, shipped offline hull; novelty against "
             "MP-20 train + val (the train split here is partial). Rates over all attempts, unique and novel over "
             "the valid.", "",
             "| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---:|" * len(COLUMNS),
             "| " + " | ".join(cell(metrics.get(k)) for k, _ in COLUMNS) + " |", "",
             "What the crystals look like, against what the model learnt from (a model that wins stability by writing "
             "one kind of crystal shows here):", "",
             "| crystals | mean sites | 4-site cells | most common element (share of crystals) | distinct formulas |",
             "|---|---:|---:|---|---:|"]
    lines += [f"| {name} | {cell(v['mean_sites'], 2)} | {cell(v['four_site_share'])} | {v['top_element']} | "
              f"{cell(v['distinct_formula_share'])} |" for name, v in shapes.items()]
    if args.note:
        lines += ["", args.note]
    write_result(f"tune_eval_{args.name}", record, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
