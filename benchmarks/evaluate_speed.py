"""Benchmark `crystext evaluate`: N samples against the 9,046-structure MP-20 test split, cold and warm.

    python benchmarks/evaluate_speed.py [--n 1000] [--cold] [--cache-dir DIR] [--out benchmarks/results]

The samples are N structures drawn (seed 0) from the MP-20 val split, written as a samples CSV, so the
run is also the "data vs data" row on N val structures. Both protocols are computed from one analysis.
"Warm" means the reference fingerprints are already in the cache; "--cold" empties the cache first,
so the reference analysis (CrystalNN over 9,046 structures) is measured too. Samples are never taken
from the cache here (``use_cache=False`` for them), so warm time = sample analysis + metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--cold", action="store_true", help="empty the evaluate cache first")
    parser.add_argument("--cache-dir", type=Path, help="CRYSTEXT_CACHE_DIR for this run")
    parser.add_argument("--jobs", type=int)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.cache_dir:
        os.environ["CRYSTEXT_CACHE_DIR"] = str(args.cache_dir)
    from crystext.evaluate import AnalysisSettings, evaluate, load_items, markdown_table, write_report
    from crystext.evaluate.analysis import cache_root, default_jobs

    if args.cold and cache_root().exists():
        shutil.rmtree(cache_root())
    reference = SHARED / "mp_20" / "test.csv"
    val = pd.read_csv(SHARED / "mp_20" / "val.csv").sample(n=args.n, random_state=0)
    args.out.mkdir(parents=True, exist_ok=True)
    samples_csv = args.out / f"evaluate_val{args.n}_samples.csv"
    val.to_csv(samples_csv, index=False)
    items = load_items(samples_csv)

    load = os.getloadavg()
    start = time.monotonic()
    result = evaluate(items, reference, protocols=("paper", "cdvae"), jobs=args.jobs, progress=True,
                      analysis=AnalysisSettings())
    wall = time.monotonic() - start
    samples_csv.unlink()
    label = f"MP-20 val ({args.n} random) vs test"
    paths = write_report(result, args.out / f"evaluate_val{args.n}_vs_test", label)
    record = {
        "what": f"{args.n} MP-20 val structures (random, seed 0) evaluated against the MP-20 test split (9,046)",
        "cold": args.cold,
        "reference_from_cache": bool(result.timings.get("reference_cached")),
        "wall_s": round(wall, 1),
        "timings_s": {k: round(v, 2) for k, v in result.timings.items()},
        "jobs": args.jobs or default_jobs(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "load_average_at_start": [round(x, 2) for x in load]},
        "metrics": result.metrics,
    }
    name = f"evaluate_speed_{'cold' if args.cold or not record['reference_from_cache'] else 'warm'}.json"
    (args.out / name).write_text(json.dumps(record, indent=2, default=float) + "\n")
    print(markdown_table([(f"{label} ({p})", m) for p, m in result.metrics.items()]))
    print(json.dumps({k: record[k] for k in ("wall_s", "timings_s", "jobs", "reference_from_cache")}, indent=2))
    print("wrote", args.out / name, *paths.values())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
