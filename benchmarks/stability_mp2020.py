"""Which potentials predict MP2020-compatible energies as they come: single points on DFT-relaxed MP-20 crystals.

    python benchmarks/stability_mp2020.py [--n 120] [--backends chgnet sevennet]

For N random MP-20 test structures (seed 0), each backend's single-point energy becomes a formation
energy with the MP2020 elemental references, once as predicted and once with
`MaterialsProject2020Compatibility` applied; the mean absolute difference to the dataset's
(MP2020-corrected DFT) formation energy says which of the two is the backend's scale.
Writes benchmarks/results/stability_mp2020.json.
"""

from __future__ import annotations

import argparse
import gzip
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--backends", nargs="+", default=["chgnet", "sevennet"])
    args = parser.parse_args()
    from _machine import machine
    from pymatgen.core import Structure

    from crystext.stability import RelaxConfig, load_backend, mp2020_energy
    from crystext.stability.hull import ELEMENTAL_REFERENCES

    with gzip.open(SHARED / ELEMENTAL_REFERENCES, "rt") as handle:
        mu = {el: e["energy"] / sum(e["composition"].values()) for el, e in json.load(handle).items()}
    test = pd.read_csv(SHARED / "mp_20" / "test.csv")
    rows = test.iloc[sorted(np.random.default_rng(0).choice(len(test), args.n, replace=False))]
    structures = [Structure.from_str(cif, fmt="cif") for cif in rows["cif"]]
    dft = rows["formation_energy_per_atom"].to_numpy()

    def e_form(structure: Structure, energy: float) -> float:
        return (energy - sum(mu[el.symbol] * n for el, n in structure.composition.items())) / len(structure)

    result = {"machine": machine(), "command": " ".join(["python", *sys.argv]), "structures": args.n, "backends": {}}
    for name in args.backends:
        backend = load_backend(name, RelaxConfig())
        as_is, corrected, skipped = [], [], 0
        start = time.perf_counter()
        for structure, reference in zip(structures, dft):
            atoms = structure.to_ase_atoms()
            atoms.calc = backend.calculator
            energy = float(atoms.get_potential_energy())
            try:
                again = mp2020_energy(structure, energy)
            except ValueError:  # a composition the MP2020 scheme does not cover
                skipped += 1
                continue
            as_is.append(e_form(structure, energy) - reference)
            corrected.append(e_form(structure, again) - reference)
        result["backends"][name] = {
            "version": backend.version,
            "used_as_mp2020_compatible": backend.mp2020_corrected,
            "mae_as_predicted": round(float(np.abs(as_is).mean()), 4),
            "mae_with_mp2020_applied": round(float(np.abs(corrected).mean()), 4),
            "structures_compared": len(as_is),
            "not_covered_by_mp2020": skipped,
            "seconds_per_single_point": round((time.perf_counter() - start) / args.n, 3),
        }
        print(name, result["backends"][name], flush=True)
    out = ROOT / "benchmarks" / "results" / "stability_mp2020.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
