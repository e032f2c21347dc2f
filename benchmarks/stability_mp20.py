"""Run `crystext stability` on MP-20 test structures and compare with the dataset's e_above_hull.

    python benchmarks/stability_mp20.py [--n 500] [--backend chgnet] [--workers 2] [--perturb 0.0]
                                        [--timeout 30] [--cache-dir DIR] [--work DIR] [--compare primary fill all]

MP-20 test structures are DFT-relaxed and were selected with MP e_above_hull < 0.08 eV/atom, so the
pipeline should call nearly all of them metastable. N structures are drawn (seed 0), relaxed with the
backend on the default offline hull (`default_reference`), and the per-structure CSV is kept in
--work (resumable; not committed). The relaxed energies are then also placed on the other hull
variants of benchmarks/stability_hull.py (from the same cache), so the hull choice is compared on the
same energies. With --perturb S the structures are first rattled (Gaussian, S Angstrom) and their cell
strained (uniform +-S/2 per component), which makes timings representative of real relaxations.
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


def perturbed(structure, size: float, rng: np.random.Generator):
    """The structure with its cell strained and its atoms rattled by about `size` (Angstrom / fraction)."""
    from pymatgen.core import Lattice, Structure

    strain = np.eye(3) + rng.uniform(-size / 2, size / 2, (3, 3))
    lattice = Lattice(structure.lattice.matrix @ strain)
    cart = lattice.get_cartesian_coords(structure.frac_coords) + rng.normal(0, size, (len(structure), 3))
    return Structure(lattice, structure.species, cart, coords_are_cartesian=True)


def compare(rows: pd.DataFrame, test: pd.DataFrame, reference) -> dict[str, float]:
    """MAE and metastable fraction of the relaxed energies placed on `reference`, against the dataset."""
    from pymatgen.core import Structure

    e_hull = []
    for cif, energy in zip(rows["relaxed_cif"], rows["energy"]):
        e_hull.append(reference.evaluate(Structure.from_str(cif, fmt="cif").composition, energy).e_above_hull)
    e_hull = np.array(e_hull)
    diff = e_hull - test.loc[rows["id"], "e_above_hull"].to_numpy()
    return {"mae_vs_dataset": round(float(np.abs(diff).mean()), 4),
            "mean_signed_difference": round(float(diff.mean()), 4),
            "metastable_fraction_of_placed": round(float((e_hull < 0.1).mean()), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--backend", default="chgnet")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--perturb", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--cache-dir", type=Path, help="CRYSTEXT_CACHE_DIR for this run")
    parser.add_argument("--work", type=Path, default=Path("/tmp/crystext-bench"),
                        help="per-structure CSVs (not committed)")
    parser.add_argument("--compare", nargs="*", default=["primary", "fill", "all"], help="hull variants to re-place on")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.cache_dir:
        os.environ["CRYSTEXT_CACHE_DIR"] = str(args.cache_dir)
    from _machine import machine
    from stability_hull import build

    from crystext.data import Dataset, Record, read_split
    from crystext.stability import RelaxConfig, StabilityConfig, default_reference, relax_and_place

    test_set = read_split(SHARED / "mp_20", "test")
    rng = np.random.default_rng(0)
    chosen = [test_set.records[i] for i in sorted(rng.choice(len(test_set.records), args.n, replace=False))]
    if args.perturb:
        chosen = [Record(r.id, perturbed(r.structure, args.perturb, rng), r.properties) for r in chosen]
    name = f"mp20_test{args.n}_{args.backend}" + (f"_perturb{args.perturb:g}" if args.perturb else "")
    args.work.mkdir(parents=True, exist_ok=True)
    output = args.work / f"{name}.csv"
    reference = default_reference(SHARED)
    config = StabilityConfig(backend=args.backend, relax=RelaxConfig(timeout=args.timeout), workers=args.workers,
                             resume=output.exists())
    start = time.perf_counter()
    summary = relax_and_place(Dataset(chosen, source="MP-20 test"), reference, output, config)
    wall = time.perf_counter() - start

    test = pd.read_csv(SHARED / "mp_20" / "test.csv").set_index("material_id")
    rows = pd.read_csv(output, dtype={"id": str}, keep_default_na=False)
    for column in ("energy", "e_form_per_atom", "e_above_hull", "seconds", "steps"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    placed = rows[rows["e_above_hull"].notna()].copy()
    placed["dataset_e_hull"] = test.loc[placed["id"], "e_above_hull"].to_numpy()
    placed["dataset_e_form"] = test.loc[placed["id"], "formation_energy_per_atom"].to_numpy()
    placed["formula"] = test.loc[placed["id"], "pretty_formula"].to_numpy()
    placed["diff"] = placed["e_above_hull"] - placed["dataset_e_hull"]
    worst = placed.reindex(placed["e_above_hull"].sort_values(ascending=False).index).head(15)
    relaxed = rows[rows["error"] == ""]
    result = {
        "machine": machine(),
        "command": " ".join(sys.argv),
        "structures": args.n,
        "backend": summary["backend"],
        "workers": args.workers,
        "perturb": args.perturb,
        "wall_seconds_this_invocation": round(wall, 1),
        "placed_on_hull": len(placed),
        "errors": summary["errors"],
        "mae_e_above_hull_vs_dataset": round(float(placed["diff"].abs().mean()), 4),
        "mean_signed_difference": round(float(placed["diff"].mean()), 4),
        "mae_e_form_vs_dataset": round(float((placed["e_form_per_atom"] - placed["dataset_e_form"]).abs().mean()), 4),
        "metastable_fraction_of_all": summary["metastable"]["rate_all"],
        "stable_fraction_of_all": summary["stable"]["rate_all"],
        "seconds_per_relaxation": {"mean": round(float(relaxed["seconds"].mean()), 3),
                                   "median": round(float(relaxed["seconds"].median()), 3),
                                   "p90": round(float(relaxed["seconds"].quantile(0.9)), 3)},
        "steps": {"mean": round(float(relaxed["steps"].mean()), 1), "median": float(relaxed["steps"].median())},
        "seconds_per_step": round(float(relaxed["seconds"].sum() / max(relaxed["steps"].sum(), 1)), 4),
        "atoms_mean": round(float(np.mean([len(r.structure) for r in chosen])), 1),
        "hull_variants": {v: compare(placed, test, build(v)) for v in args.compare},
        "least_stable": worst[["id", "formula", "e_above_hull", "dataset_e_hull", "e_form_per_atom", "dataset_e_form",
                               "decomposition"]].round(4).to_dict("records"),
        "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"stability_{name}.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: v for k, v in result.items() if k not in ("least_stable", "summary", "machine")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
