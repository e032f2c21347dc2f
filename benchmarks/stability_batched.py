"""Relaxations per second: the serial SevenNet backend against the batched one (torch-sim), on the same cells.

    python benchmarks/stability_batched.py [--n 20] [--perturb 0.1] [--batch-size N]

N MP-20 test structures (seed 0), rattled and strained by --perturb as benchmarks/stability_mp20.py does, are
relaxed with SevenNet-0 (FIRE on a Frechet cell filter, fmax 0.1 eV/A, the default 500-step budget) twice, in
this process: one at a time by the `sevennet` backend (ASE, always on the CPU), and in batches of --batch-size
(default: all N at once) by `sevennet-batched` (torch-sim, on CUDA when torch sees it, else the CPU). On the
CPU both run on one torch thread and one BLAS thread, as a `crystext stability` worker does. Model loading is
timed apart. Reports relaxations per second, steps, convergence, and how far the batched energies and step
counts are from the serial ones. Writes benchmarks/results/stability_batched.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def timed(backend_name: str, structures: list, batch_size: int) -> tuple[list, dict[str, float]]:
    """The relaxations of `structures` by one backend, in batches of `batch_size`, and their timings."""
    from threadpoolctl import threadpool_limits

    from crystext.stability import load_backend

    start = time.perf_counter()
    backend = load_backend(backend_name)
    loaded = time.perf_counter()
    threadpool_limits(limits=1)  # after loading: it reaches only libraries loaded (the backend loads scipy's BLAS)
    batches = [structures[i : i + batch_size] for i in range(0, len(structures), batch_size)]
    results = [r for batch in batches for r in backend.relax_many(batch)]
    wall = time.perf_counter() - loaded
    ok = [r for r in results if r.ok]
    steps = sum(r.steps for r in results)
    return results, {
        "version": backend.version,
        "load_seconds": round(loaded - start, 2),
        "wall_seconds": round(wall, 2),
        "relaxations_per_s": round(len(results) / wall, 3),
        "steps_per_relaxation": round(steps / len(results), 2),
        "seconds_per_step": round(wall / max(steps, 1), 4),
        "converged": sum(r.converged for r in ok),
        "errors": len(results) - len(ok),
    }


def device() -> str:
    import torch

    return f"CUDA ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "CPU"


def main() -> int:
    from stability_mp20 import perturbed

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--perturb", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, help="structures per batch (default: all N)")
    args = parser.parse_args()
    import torch
    from _machine import describe, machine

    from crystext.data import read_split

    torch.set_num_threads(1)
    test_set = read_split(SHARED / "mp_20", "test")
    rng = np.random.default_rng(0)
    chosen = [test_set.records[i].structure for i in sorted(rng.choice(len(test_set.records), args.n, replace=False))]
    chosen = [perturbed(s, args.perturb, rng) for s in chosen] if args.perturb else chosen
    batch_size = args.batch_size or args.n
    load = os.getloadavg()[0]  # other work on the machine slows both backends alike, and adds noise
    serial, serial_timing = timed("sevennet", chosen, 1)
    batched, batched_timing = timed("sevennet-batched", chosen, batch_size)
    both = [(s, b, len(c)) for s, b, c in zip(serial, batched, chosen) if s.ok and b.ok]
    differences = np.array([abs(b.energy - s.energy) / n for s, b, n in both])
    result = {
        "machine": {**machine(), "batched_device": device(), "torch": torch.__version__,
                    "load_average_at_start": round(load, 2)},
        "command": " ".join(["python", *sys.argv]),
        "structures": args.n, "perturb": args.perturb, "batch_size": batch_size,
        "serial": serial_timing, "batched": batched_timing,
        "speedup": round(batched_timing["relaxations_per_s"] / serial_timing["relaxations_per_s"], 2),
        "compared": len(both),
        "energy_difference_ev_per_atom": {"max": float(differences.max()), "mean": float(differences.mean())},
        "same_steps": sum(s.steps == b.steps for s, b, _ in both),
        "max_step_difference": max(abs(s.steps - b.steps) for s, b, _ in both),
        "same_converged": sum(s.converged == b.converged for s, b, _ in both),
    }
    out = ROOT / "benchmarks" / "results"
    (out / "stability_batched.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Serial against batched relaxation (SevenNet-0, FIRE + Frechet cell filter, fmax 0.1 eV/A, 500 steps)",
        "",
        describe(result["machine"], result["command"]),
        f"{args.n} MP-20 test structures (seed 0, perturbed by {args.perturb}); serial: `sevennet` (ASE, CPU); "
        f"batched: `sevennet-batched` (torch-sim) on {result['machine']['batched_device']}, {batch_size} per batch; "
        f"one torch thread and one BLAS thread. Load average at the start: {load:.1f}.",
        "",
        "| backend | relaxations/s | wall (s) | load (s) | steps per relaxation | s per step | converged | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {name} | {t['relaxations_per_s']} | {t['wall_seconds']} | {t['load_seconds']} | "
          f"{t['steps_per_relaxation']} | {t['seconds_per_step']} | {t['converged']} | {t['errors']} |"
          for name, t in (("sevennet (serial)", serial_timing), ("sevennet-batched", batched_timing))),
        "",
        f"Speed-up {result['speedup']}x. Over the {len(both)} structures both relaxed: energy difference "
        f"max {differences.max():.2e}, mean {differences.mean():.2e} eV/atom; the same step count for "
        f"{result['same_steps']} (at most {result['max_step_difference']} apart), the same convergence flag for "
        f"{result['same_converged']}.",
    ]
    (out / "stability_batched.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
