"""How many optimizer steps relaxations need: the measurement behind the default step cap.

    python benchmarks/stability_budget.py [--n 200] [--perturb 0.1] [--cap 3000] [--workers 2]

N MP-20 test structures (seed 0) are strained and rattled by --perturb (as benchmarks/stability_mp20.py
does, so they start off their minimum like generated crystals), then relaxed with CHGNet (FIRE on a
FrechetCellFilter, fmax 0.1 eV/A) with a generous step cap and no wall-clock limit. Reports the share
that converges within each candidate cap, and the steps' quantiles. Writes
benchmarks/results/stability_budget.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))
#: Caps whose converged share the table reports.
CANDIDATE_CAPS = (100, 200, 300, 500, 1000)


def relax_all(structures: list, cap: int) -> list[tuple[int, bool, float, str | None]]:
    """(steps, converged, seconds, error) of each structure, relaxed in this process on one torch and BLAS thread."""
    import torch
    from threadpoolctl import threadpool_limits

    from crystext.stability import RelaxConfig, load_backend

    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    backend = load_backend("chgnet", RelaxConfig(max_steps=cap, timeout=None))
    results = []
    for structure in structures:
        r = backend.relax(structure)
        results.append((r.steps, r.converged, r.seconds, r.error))
    return results


def main() -> int:
    from stability_mp20 import perturbed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--perturb", type=float, default=0.1)
    parser.add_argument("--cap", type=int, default=3000, help="step cap of the measurement itself")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    from _machine import describe, machine

    from crystext.data import read_split

    test_set = read_split(SHARED / "mp_20", "test")
    rng = np.random.default_rng(0)
    chosen = [test_set.records[i] for i in sorted(rng.choice(len(test_set.records), args.n, replace=False))]
    structures = [perturbed(r.structure, args.perturb, rng) for r in chosen]
    start = time.perf_counter()
    shares = [structures[k :: args.workers] for k in range(args.workers)]
    with ProcessPoolExecutor(args.workers) as pool:
        parts = list(pool.map(relax_all, shares, [args.cap] * args.workers))
    wall = time.perf_counter() - start
    results = [parts[k][i] for i in range(len(shares[0])) for k in range(args.workers) if i < len(parts[k])]
    done = [(steps, converged) for steps, converged, _, error in results if error is None]
    steps = np.array([s for s, c in done if c])
    result = {
        "machine": machine(),
        "command": " ".join(["python", *sys.argv]),
        "structures": args.n,
        "perturb": args.perturb,
        "measurement_cap": args.cap,
        "relaxed": len(done),
        "errors": [error for *_, error in results if error is not None],
        "converged_within": {
            cap: round(float(np.mean([c and s <= cap for s, c in done])), 4) for cap in CANDIDATE_CAPS
        },
        "steps_quantiles": {q: round(float(np.quantile(steps, q)), 1) for q in (0.5, 0.9, 0.99)} if len(steps) else {},
        "steps_max": int(steps.max()) if len(steps) else None,
        "seconds_per_step": round(sum(r[2] for r in results) / max(sum(r[0] for r in results), 1), 4),
        "wall_seconds": round(wall, 1),
    }
    out = ROOT / "benchmarks" / "results"
    (out / "stability_budget.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Steps to relax perturbed MP-20 test cells (CHGNet, FIRE, fmax 0.1 eV/A)",
        "",
        describe(result["machine"], result["command"]),
        (f"{args.n} MP-20 test structures (seed 0) strained and rattled by {args.perturb} (A / fraction), relaxed with "
         f"a cap of {args.cap} steps and no wall-clock limit; {len(done)} relaxed, {len(result['errors'])} errors."),
        "",
        "| step cap | converged within it |",
        "|---:|---:|",
        *(f"| {cap} | {share:.1%} |" for cap, share in result["converged_within"].items()),
        "",
        f"Steps of the converged ones: median {result['steps_quantiles'].get(0.5)}, 90% "
        f"{result['steps_quantiles'].get(0.9)}, 99% {result['steps_quantiles'].get(0.99)}, most {result['steps_max']}; "
        f"{result['seconds_per_step']} s per step with {args.workers} workers; {result['wall_seconds']} s in all.",
    ]
    (out / "stability_budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
