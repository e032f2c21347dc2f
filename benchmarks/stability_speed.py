"""Relaxations per second on this machine's cores, with and without one BLAS thread per worker.

    python benchmarks/stability_speed.py [--n 100] [--perturb 0.0] [--workers 2]

N MP-20 test structures (seed 0; --perturb rattles them as benchmarks/stability_mp20.py does) are relaxed
with CHGNet (FIRE on a FrechetCellFilter, fmax 0.1 eV/A, the default 500-step budget) by --workers
processes, each on one torch thread, twice: with BLAS left to its own thread count (crystext before
2026-11-30) and limited to one thread (what `crystext stability` does now). Reports relaxations per
second, seconds per step, and the largest energy difference between the two. Writes
benchmarks/results/stability_speed.json and .md.
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


def relax_all(structures: list, one_blas_thread: bool) -> list[tuple[float | None, int, float]]:
    """(energy per atom, steps, seconds) of each structure, relaxed in this process on one torch thread."""
    import torch
    from threadpoolctl import threadpool_limits

    from crystext.stability import load_backend

    torch.set_num_threads(1)
    if one_blas_thread:
        threadpool_limits(limits=1)
    backend = load_backend("chgnet")
    results = []
    for structure in structures:
        r = backend.relax(structure)
        results.append((None if r.energy is None else r.energy / len(structure), r.steps, r.seconds))
    return results


def run(structures: list, workers: int, one_blas_thread: bool) -> tuple[list, float]:
    shares = [structures[k::workers] for k in range(workers)]
    start = time.perf_counter()
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(relax_all, shares, [one_blas_thread] * workers))
    wall = time.perf_counter() - start
    ordered = [parts[k][i] for i in range(len(shares[0])) for k in range(workers) if i < len(parts[k])]
    return ordered, wall


def main() -> int:
    from stability_mp20 import perturbed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--perturb", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    from _machine import describe, machine

    from crystext.data import read_split

    test_set = read_split(SHARED / "mp_20", "test")
    rng = np.random.default_rng(0)
    chosen = [test_set.records[i].structure for i in sorted(rng.choice(len(test_set.records), args.n, replace=False))]
    if args.perturb:
        chosen = [perturbed(s, args.perturb, rng) for s in chosen]
    settings = {}
    energies = {}
    for name, one in (("BLAS threads as they come (before)", False), ("one BLAS thread per worker (now)", True)):
        results, wall = run(chosen, args.workers, one)
        energies[name] = np.array([np.nan if e is None else e for e, _, _ in results])
        steps = sum(s for _, s, _ in results)
        settings[name] = {"relaxations_per_s": round(len(results) / wall, 3), "wall_seconds": round(wall, 1),
                          "steps_per_relaxation": round(steps / len(results), 2),
                          "seconds_per_step": round(sum(t for *_, t in results) / max(steps, 1), 4)}
    before, now = energies.values()
    result = {
        "machine": machine(), "command": " ".join(["python", *sys.argv]), "structures": args.n,
        "perturb": args.perturb, "workers": args.workers, "settings": settings,
        "speedup": round(settings[list(settings)[1]]["relaxations_per_s"]
                         / settings[list(settings)[0]]["relaxations_per_s"], 2),
        "max_energy_difference_ev_per_atom": float(np.nanmax(np.abs(before - now))),
    }
    out = ROOT / "benchmarks" / "results"
    (out / "stability_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Relaxation speed on this machine (CHGNet, FIRE + FrechetCellFilter, fmax 0.1 eV/A, 500-step budget)",
        "",
        describe(result["machine"], result["command"]),
        f"{args.n} MP-20 test structures (seed 0, perturbed by {args.perturb}), {args.workers} worker processes with "
        "one torch thread each.",
        "",
        "| setting | relaxations/s | wall (s) | steps per relaxation | s per step |",
        "|---|---:|---:|---:|---:|",
        *(f"| {name} | {s['relaxations_per_s']} | {s['wall_seconds']} | {s['steps_per_relaxation']} | "
          f"{s['seconds_per_step']} |" for name, s in settings.items()),
        "",
        f"Speed-up {result['speedup']}x; largest energy difference between the two "
        f"{result['max_energy_difference_ev_per_atom']:.2e} eV/atom.",
    ]
    (out / "stability_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
