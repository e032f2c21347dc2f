"""The paper's Table 1 for one model directory, measured on this machine.

    python benchmarks/table1.py [MODEL] [--n 10000] [--stability-n 1000] [--work runs/table1] [--name default]

Four sampling runs (temperature 0.7 and 1.0 with the constraint, grammar and 0.5 A minimum distance,
as `crystext sample` does by default; 1.0 without any constraint; 0.7 with the grammar but no distance
check; top-p 0.9, at most --max-atoms atoms),
each scored with `crystext evaluate` (CDVAE protocol) against the MP-20 test split, with MP-20
train + val as the training set for novelty, and a seeded random `--stability-n` of its attempts
relaxed with CHGNet and placed on the offline hull (`--stability-n 0`: none, and the hull is not loaded;
`--no-novelty`: no novelty or S.U.N., and MP-20 train + val are neither read nor fingerprinted, which takes
about 45 minutes on 2 cores the first time). Every step writes into --work and resumes, so a
killed run is continued by running the same command. Writes benchmarks/results/table1_NAME.md/.json
(--runs does some of the runs, by folder name; the table keeps those an earlier invocation with the same
settings finished).
Without MODEL the model shipped with crystext is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from crystext.constants import MIN_INTERATOMIC_DISTANCE
from crystext.files import write_atomic
from crystext.stability.relax import BUDGETS

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))

#: What the model learnt from: novelty and S.U.N. are measured against it.
TRAIN_SPLITS = (SHARED / "mp_20" / "train.csv", SHARED / "mp_20" / "val.csv")
#: (label, temperature, constrained, minimum distance) of the sampling runs, the paper's temperatures first.
RUNS = (
    ("T=0.7", 0.7, True, MIN_INTERATOMIC_DISTANCE),
    ("T=1.0", 1.0, True, MIN_INTERATOMIC_DISTANCE),
    ("T=1.0, no constraint", 1.0, False, None),
    ("T=0.7, grammar only", 0.7, True, None),
)
#: The paper's rows (M3GNet metastable, DFT stable): struct, comp, COV-R, COV-P, wdist rho, wdist #elem, meta, stable.
PAPER_ROWS = {
    "CDVAE": (1.00, 0.867, 0.991, 0.995, 0.688, 1.43, 0.288, 0.054),
    "LLaMA-2 7B, T=1.0": (0.918, 0.879, 0.969, 0.960, 3.85, 0.96, 0.351, 0.067),
    "LLaMA-2 70B, T=0.7": (0.996, 0.954, 0.858, 0.989, 0.81, 0.44, 0.498, 0.106),
}
#: Per run folder: wall seconds of each step, summed over the invocations that finished it (see `timed`).
TIMINGS = "timings.json"
COLUMNS = ("Struct. valid", "Comp. valid", "COV-R", "COV-P", "wdist density", "wdist #elem", "Metastable (CHGNet)",
           "Stable", "Unique", "Novel", "S.U.N.", "valid/s")


def timed(step: str, folder: Path, work, redone_on: int | None = None) -> tuple[object, dict[str, float]]:
    """Run one step of a run; its wall seconds add to the run's timings.json, so a resumed run keeps its time.

    A step killed part-way records nothing, so a resumed sampling step has no known total (see `run_one`).
    A step redone whole on every invocation (evaluation, mostly from cached fingerprints) passes what it
    worked on as `redone_on`: its time is that of the first finish on that input, not a sum.
    """
    start = time.monotonic()
    result = work()
    elapsed = time.monotonic() - start
    timings = _timings(folder)
    if redone_on is None:
        timings[step] = round(timings.get(step, 0.0) + elapsed, 1)
    elif timings.get(f"{step}_input") != redone_on:
        timings[step], timings[f"{step}_input"] = round(elapsed, 1), redone_on
    write_atomic(folder / TIMINGS, json.dumps(timings) + "\n")
    print(f"{step}: {timings[step]} s in all", flush=True)
    return result, timings


def _timings(folder: Path) -> dict[str, float]:
    path = folder / TIMINGS
    return json.loads(path.read_text()) if path.exists() else {}


def run_one(label: str, temperature: float, constrained: bool, min_distance: float | None, args: argparse.Namespace,
            sampler, reference, training) -> dict:
    from crystext.evaluate import EvaluateConfig, ProtocolSettings, evaluate
    from crystext.sample import SampleConfig

    folder = args.work / folder_name(label)
    folder.mkdir(parents=True, exist_ok=True)
    samples = folder / "samples.csv"
    config = SampleConfig(n=args.n, batch_size=args.batch_size, temperature=temperature, top_p=0.9,
                          constrained=constrained, min_distance=min_distance, max_atoms=args.max_atoms, seed=0)
    # Sampling speed is known only if every invocation that wrote samples.csv finished and was timed.
    speed_known = not samples.exists() or "sampling" in _timings(folder)
    summary, timings = timed("sampling", folder, lambda: sampler.sample(config, samples, resume=samples.exists()))
    evaluation, timings = timed("evaluate", folder, lambda: evaluate(
        samples, SHARED / "mp_20" / "test.csv", TRAIN_SPLITS if args.novelty else None,
        # Samples' fingerprints cached too, so a resumed invocation does not redo a finished run's evaluation.
        config=EvaluateConfig(protocol=ProtocolSettings("cdvae"), cache_samples=True)), redone_on=summary.attempts)
    evaluation.write(folder / "eval")

    m = evaluation.metrics
    # Sampling speed: structures that are valid (structure and composition) per second of sampling.
    valid_per_s = m["valid"] * m["n_counted"] / timings["sampling"] if speed_known else None
    stability, timings = relax_some(samples, folder, args, reference, training) if args.stability_n else ({}, timings)
    # S.U.N. by crystext.evaluate.sun's one definition (stable after relaxation, unique among the stable relaxed
    # structures, novel against MP-20 train + val), over the relaxed subset; Unique and Novel as generated.
    sun = (stability.get("sun") or {}).get("stable", {}).get("rate_all")
    row = (m["struct_valid"], m["comp_valid"], m["cov_recall"], m["cov_precision"], m["wdist_density"],
           m["wdist_num_elems"], stability.get("metastable", {}).get("rate_all"),
           stability.get("stable", {}).get("rate_all"), m.get("uniqueness"), m.get("novelty_matcher"), sun, valid_per_s)
    return {"label": label, "temperature": temperature, "constrained": constrained, "min_distance": min_distance,
            "command": command(), "row": row,
            "attempts": summary.attempts, "parseable": summary.valid, "timings_seconds": timings,
            "relaxed": stability.get("samples", 0), "stability_errors": stability.get("errors", 0), "metrics": m}


def relax_some(samples: Path, folder: Path, args: argparse.Namespace, reference, training) -> tuple[dict, dict]:
    """Relax a seeded random `--stability-n` of a run's attempts and place them on the hull; the summary and timings."""
    from crystext.data import Dataset
    from crystext.stability import StabilityConfig, read_samples, relax_and_place

    everything = read_samples(samples)
    ids = [r.id for r in everything.records] + [rid for rid, _ in everything.skipped]
    # A prefix of one seeded order: a later, larger --stability-n extends the relaxations already done.
    chosen = set(np.random.default_rng(0).permutation(ids)[:args.stability_n].tolist())
    subset = Dataset([r for r in everything.records if r.id in chosen],
                     [(rid, why) for rid, why in everything.skipped if rid in chosen], everything.source)
    output = folder / "stability.csv"
    return timed("stability", folder, lambda: relax_and_place(
        subset, reference, output,
        StabilityConfig(backend="chgnet", relax=BUDGETS[args.budget], resume=output.exists()), training))


def command() -> str:
    """This invocation's command line."""
    return " ".join(["python", *sys.argv])


def folder_name(label: str) -> str:
    """A run's folder under --work: its label without '=' and spaces
    ('T=1.0, no constraint' -> 'T1.0_no_constraint')."""
    return label.replace("=", "").replace(", ", "_").replace(" ", "_")


def earlier_runs(args: argparse.Namespace) -> dict[str, dict]:
    """Runs an earlier invocation wrote to table1_NAME.json with the same settings, by label (kept beside --runs)."""
    path = ROOT / "benchmarks" / "results" / f"table1_{args.name}.json"
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    differ = {key: earlier.get(key) for key, value in settings(args).items() if earlier.get(key) != value}
    if differ:
        print(f"{path.name}: its runs ({', '.join(r['label'] for r in earlier['runs'])}) were made with other "
              f"settings {differ} and are replaced", file=sys.stderr)
        return {}
    return {r["label"]: r for r in earlier["runs"]}


def settings(args: argparse.Namespace) -> dict:
    """What a table's numbers depend on, besides the code: runs made with other settings do not mix."""
    return {"model": str(args.model or "shipped"), "work": str(args.work), "n": args.n,
            "stability_n": args.stability_n, "max_atoms": args.max_atoms, "batch_size": args.batch_size,
            "budget": args.budget, "novelty": args.novelty}


def write_table(args: argparse.Namespace, runs: list[dict]) -> str:
    """Write table1_NAME.json/.md for the runs finished so far; return the Markdown."""
    from _machine import describe, machine

    result = {"machine": machine(), "command": command(), **settings(args), "runs": runs}
    out = ROOT / "benchmarks" / "results"
    write_atomic(out / f"table1_{args.name}.json", json.dumps(result, indent=2, default=str) + "\n")
    earlier: dict[str | None, list[str]] = {}
    for r in runs:
        if r.get("command") != result["command"]:
            earlier.setdefault(r.get("command"), []).append(r["label"])

    def cells(values) -> str:
        return " | ".join("–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)

    lines = [
        f"# Table 1 on this machine: {result['model']}",
        "",
        describe(result["machine"], result["command"]),
        *(" and ".join(f"'{label}'" for label in labels) + " kept from an earlier invocation: "
          + (f"`{c}`." if c else "its command was not recorded.") for c, labels in earlier.items()),
        (f"{args.n} parseable samples per run (at most {args.max_atoms} atoms), CDVAE protocol against the MP-20 "
         f"test split; stability on a seeded random {args.stability_n} attempts per run (CHGNet, '{args.budget}' "
         "relaxation budget, offline hull from "
         "MP-20 + lemat + mp_e_form fill). Trained on MP-20 train (partial here) + val, 10,349 structures, not the "
         "paper's 27,136; CHGNet, not M3GNet; stable rate against the offline hull, not DFT. Nothing was tuned on "
         "the test split. Unique and Novel: StructureMatcher, among the valid samples as generated (novel against "
         "MP-20 train + val); S.U.N.: stable after relaxation, unique among the stable relaxed structures and novel, "
         "over the relaxed attempts (crystext.evaluate.sun). The constrained runs (T=0.7, T=1.0) mask, as each atom's "
         "last coordinate is chosen, the "
         "values within 0.5 A of an earlier atom, so their structural validity measures that constraint as much as "
         "the model; 'grammar only' and 'no constraint' show the model's own."
         + ("" if args.stability_n else " No relaxations here (--stability-n 0).")
         + ("" if args.novelty else " Novelty and S.U.N. not measured (--no-novelty).")),
        "",
        "| Run | " + " | ".join(COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    lines += [f"| {r['label']} | {cells(r['row'])} |" for r in runs]
    lines += [f"| paper: {name} | {cells((*row, None, None, None, None))} |" for name, row in PAPER_ROWS.items()]
    lines += ["", ("Wall seconds of each step, summed over the invocations that finished it (evaluation: its first "
                   "finish on the run's samples):"), "",
              "| Run | attempts | relaxed | sampling (s) | evaluate (s) | stability (s) |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['label']} | {r['attempts']} | {r['relaxed']} | {r['timings_seconds']['sampling']} | "
              f"{r['timings_seconds']['evaluate']} | {r['timings_seconds'].get('stability', '–')} |" for r in runs]
    markdown = "\n".join(lines) + "\n"
    write_atomic(out / f"table1_{args.name}.md", markdown)
    return markdown


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", type=Path, help="model directory (default: the shipped model)")
    parser.add_argument("--n", type=int, default=10_000, help="parseable samples per run")
    parser.add_argument("--stability-n", type=int, default=1000, help="attempts relaxed per run")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="steps",
                        help="relaxation budget: steps (crystext's default) or paper (30 s per structure)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-atoms", type=int, default=20, help="largest cell sampled (MP-20's largest is 20)")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "table1")
    parser.add_argument("--name", default="default")
    parser.add_argument("--no-novelty", dest="novelty", action="store_false",
                        help="skip novelty and S.U.N. (MP-20 train + val are not fingerprinted)")
    parser.add_argument("--runs", nargs="+", choices=[folder_name(r[0]) for r in RUNS],
                        help="only these runs, by folder name (default: all, in the paper's order)")
    args = parser.parse_args()
    from crystext.data import Dataset, read_structures
    from crystext.sample import Sampler
    from crystext.stability import default_reference

    # Loaded once for all the runs: the model, the hull, and the training structures for S.U.N. (each only if used).
    sampler = Sampler.from_pretrained(args.model)
    reference = default_reference(SHARED) if args.stability_n else None
    training = (Dataset.concat([read_structures(p) for p in TRAIN_SPLITS], source="MP-20 train + val")
                if args.novelty and args.stability_n else None)
    done = earlier_runs(args)
    for label, temperature, constrained, min_distance in RUNS:
        if args.runs and folder_name(label) not in args.runs:
            continue
        done[label] = run_one(label, temperature, constrained, min_distance, args, sampler, reference, training)
        # After every run, so a long table shows what is done; in the paper's order whatever order they ran in.
        markdown = write_table(args, [done[r[0]] for r in RUNS if r[0] in done])
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
