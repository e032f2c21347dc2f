"""Benchmark the offline hull references: cold build, warm load, and how well each reproduces MP-20's e_above_hull.

    python benchmarks/stability_hull.py [--cache-dir DIR] [--variants primary fill all] [--out benchmarks/results]

Variants (all with the MP2020 elemental references from matbench-discovery):
  primary  MP-20 formation energies (train/val/test present here) + lemat-genbench MP-20 hull rows
  fill     primary + the ~2018 matbench mp_e_form table only for chemical systems primary lacks (the default)
  all      primary + the whole mp_e_form table as an equal source (lowest energy per formula wins)

Each variant is built cold (its cache file removed first), then loaded warm, then every MP-20 test
row's own DFT formation energy is placed on it: the mean absolute difference to the dataset's
e_above_hull isolates the error of the hull itself (no potential involved).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def build(variant: str):
    from crystext.stability import hull

    primary = [SHARED / "mp_20" / f"{s}.csv" for s in hull.MP20_SPLITS] + sorted(
        (SHARED / hull.LEMAT_HULLS).glob("*.parquet")
    )
    refs, older = SHARED / hull.ELEMENTAL_REFERENCES, SHARED / hull.MP_E_FORM_TABLE
    if variant == "primary":
        return hull.from_formation_energies(primary, refs)
    if variant == "fill":
        return hull.default_reference(SHARED)
    return hull.from_formation_energies([*primary, older], refs)


def dft_check(reference, test: pd.DataFrame) -> dict[str, float]:
    """Place each test row's DFT formation energy on the hull; compare with the dataset's e_above_hull."""
    from pymatgen.core import Composition

    mu = reference.elemental_energies
    start = time.perf_counter()
    e_hull = []
    for formula, e_form in zip(test["pretty_formula"], test["formation_energy_per_atom"]):
        composition = Composition(formula)
        energy = e_form * composition.num_atoms + sum(mu[el.symbol] * n for el, n in composition.items())
        e_hull.append(reference.evaluate(composition, energy).e_above_hull)
    seconds = time.perf_counter() - start
    diff = np.array(e_hull) - test["e_above_hull"].to_numpy()
    return {
        "rows": len(test),
        "mae_vs_dataset": round(float(np.abs(diff).mean()), 4),
        "mean_signed_difference": round(float(diff.mean()), 4),
        "metastable_fraction": round(float((np.array(e_hull) < 0.1).mean()), 4),
        "seconds_per_evaluation": round(seconds / len(test), 5),
    }


def older_vs_primary() -> dict[str, float]:
    """How the ~2018 mp_e_form values differ from the primary set's, per reduced formula both have (lowest each)."""
    from crystext.stability import hull

    primary = pd.concat(
        [hull.read_formation_table(SHARED / "mp_20" / f"{s}.csv") for s in hull.MP20_SPLITS]
        + [hull.read_formation_table(p) for p in sorted((SHARED / hull.LEMAT_HULLS).glob("*.parquet"))]
    ).groupby("formula")["e_form"].min()
    older = hull.read_formation_table(SHARED / hull.MP_E_FORM_TABLE).set_index("formula")["e_form"]
    diff = (older - primary).dropna()
    return {
        "formulas_in_both": len(diff),
        "older_formulas_not_in_primary": int((~older.index.isin(primary.index)).sum()),
        "mean_older_minus_primary": round(float(diff.mean()), 4),
        "median_older_minus_primary": round(float(diff.median()), 4),
        "std": round(float(diff.std()), 4),
        "fraction_older_lower_by_more_than_0.05": round(float((diff < -0.05).mean()), 4),
        "fraction_older_higher_by_more_than_0.05": round(float((diff > 0.05).mean()), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, help="CRYSTEXT_CACHE_DIR for this run")
    parser.add_argument("--variants", nargs="*", default=["primary", "fill", "all"])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.cache_dir:
        os.environ["CRYSTEXT_CACHE_DIR"] = str(args.cache_dir)
    from _machine import machine

    test = pd.read_csv(
        SHARED / "mp_20" / "test.csv", usecols=["pretty_formula", "formation_energy_per_atom", "e_above_hull"]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "stability_hull.json"
    results = json.loads(path.read_text()) if path.is_file() else {"variants": {}}  # variants run separately add up
    results["machine"] = machine()
    results["older_table_vs_primary"] = older_vs_primary()
    path.write_text(json.dumps(results, indent=2))
    for variant in args.variants:
        first = build(variant)
        if first.details["cache"] == "loaded":  # measure a real cold build
            Path(first.details["cache_file"]).unlink()
            first = build(variant)
        warm = build(variant)
        entry = {
            "description": first.description,
            "stable_phases": len(first.stable),
            "cold_build_seconds": first.details["build_seconds"],
            "warm_load_seconds": warm.details["load_seconds"],
            "details": {k: v for k, v in first.details.items() if k not in ("cache", "build_seconds")},
            "dft_formation_energies_vs_dataset": dft_check(warm, test),
        }
        results["variants"][variant] = entry
        print(variant, json.dumps(entry), flush=True)
        path.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
