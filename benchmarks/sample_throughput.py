"""Sampling speed of a model directory at several batch sizes, with and without the grammar constraint.

    python benchmarks/sample_throughput.py runs/scratch-small --batch-sizes 1,8,32,128
    python benchmarks/sample_throughput.py runs/scratch-small --batch-sizes auto --n 1000

"auto" is what `crystext sample` does without --batch-size. Writes benchmarks/results/sample_<name>.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe, machine

from crystext.constants import MIN_INTERATOMIC_DISTANCE
from crystext.evaluate.validity import compositional_validity, structural_problem
from crystext.sample import SampleConfig, Sampler, parsed_structures

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch-sizes", default="1,8,32,128", help="comma-separated sizes or 'auto'")
    parser.add_argument("--n", type=int, help="attempts per setting (default: one batch, at least 16)")
    parser.add_argument("--name", default="scratch-small")
    parser.add_argument("--temperature", type=float, default=0.7)
    args = parser.parse_args()

    sampler = Sampler.from_pretrained(args.model)
    runs = []
    # (constrained, minimum distance): the default (grammar and 0.5 A), free sampling, the grammar alone
    for constrained, min_distance in ((True, MIN_INTERATOMIC_DISTANCE), (False, None), (True, None)):
        for batch in (None if b == "auto" else int(b) for b in args.batch_sizes.split(",")):
            n = args.n or max(batch or 16, 16)
            config = SampleConfig(n=n, batch_size=batch, temperature=args.temperature, constrained=constrained,
                                  min_distance=min_distance, max_attempts=n, max_atoms=20, seed=0)
            out = Path(tempfile.mkdtemp()) / "samples.csv"
            start = time.perf_counter()
            summary = sampler.sample(config, out, progress=False)
            seconds = time.perf_counter() - start
            # Valid as the paper counts it: interatomic distances >= 0.5 A and a charge-balanced composition.
            valid = sum(structural_problem(s) is None and compositional_validity(s.composition)
                        for _, s in parsed_structures(out))
            runs.append({"constrained": constrained, "min_distance": min_distance, "batch_size": batch or "auto",
                         "attempts": summary.attempts, "parseable": summary.valid, "valid": valid,
                         "seconds": round(seconds, 2),
                         "structures_per_s": round(summary.attempts / seconds, 2),
                         "parseable_per_s": round(summary.valid / seconds, 2),
                         "valid_per_s": round(valid / seconds, 2),
                         "parse_failure_rate": round(1 - summary.valid / summary.attempts, 3)})
            print(runs[-1])
    result = {"model": str(args.model), "temperature": args.temperature, "runs": runs, "machine": machine()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"sample_{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        f"# Sampling speed: {args.name}",
        "",
        describe(result["machine"], " ".join(["python", *sys.argv]))
        + f" Temperature {args.temperature}, top-p 0.9, max 20 atoms.",
        "",
        "Valid: smallest interatomic distance >= 0.5 A and SMACT charge balance (the paper's two validity checks).",
        "",
        "| constrained | min distance | batch | attempts | parseable | valid | structures/s | parseable/s | valid/s | "
        "parse failures |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    md += [f"| {r['constrained']} | {r['min_distance'] or '–'} | {r['batch_size']} | {r['attempts']} | "
           f"{r['parseable']} | {r['valid']} | "
           f"{r['structures_per_s']} | {r['parseable_per_s']} | {r['valid_per_s']} | {r['parse_failure_rate']:.1%} |"
           for r in runs]
    (RESULTS / f"sample_{args.name}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
