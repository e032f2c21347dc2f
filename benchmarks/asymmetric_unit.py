"""Could a crystal be written as its space group and the atoms of its asymmetric unit? A round trip at text precision.

    python benchmarks/asymmetric_unit.py [--rows 1000] [--split val]

For seeded MP-20 rows: the text of the asymmetric-unit form (`FormatOptions(asymmetric_unit=True)`, crystext's
textformat: the group spglib finds at symprec 0.1, its standard conventional cell, one site per orbit, rounded as the
text writes them), read back (the group's operations expand the sites; `crystext.geometry.expand_orbits`). Reported:
how often pymatgen's StructureMatcher (defaults) finds the MP-20 crystal again and spglib (symprec 0.1) its space
group, and how many sites each text writes. A text written this way states its group, so a model that is given the
asked group writes it by construction; this measures what the representation itself loses. Writes
benchmarks/results/asymmetric_unit_SPLIT.json/.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from crystext.geometry import spacegroup_number  # noqa: E402
from crystext.textformat import CrystalText, FormatOptions  # noqa: E402

ASYMMETRIC = FormatOptions(asymmetric_unit=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--split", default="val")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    from _machine import cell, describe, machine, write_result

    rows = pd.read_csv(SHARED / "mp_20" / f"{args.split}.csv").sample(args.rows, random_state=args.seed)
    matcher = StructureMatcher()
    matched, group_kept, sites, orbits, errors = [], [], [], [], []
    for material, cif, group in zip(rows["material_id"], rows["cif"], rows["spacegroup.number"]):
        with warnings.catch_warnings():  # pymatgen's notes on rounded CIF coordinates, spglib's on its tolerances
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                text = CrystalText.from_structure(structure, asymmetric_unit=True).to_str(ASYMMETRIC)
                unit = CrystalText.from_str(text)
                back = unit.to_structure()
        except Exception as error:  # a group pymatgen cannot expand from the rounded lattice counts as lost
            errors.append(f"{material}: {error}")
            matched.append(False)
            group_kept.append(False)
            continue
        matched.append(bool(matcher.fit(structure, back)))
        group_kept.append(spacegroup_number(back) == int(group))
        sites.append(len(structure))
        orbits.append(unit.num_sites)
    record = {"rows": args.rows, "split": args.split, "seed": args.seed, "matched": float(np.mean(matched)),
              "space_group_kept": float(np.mean(group_kept)), "sites_per_crystal": float(np.mean(sites)),
              "orbits_per_crystal": float(np.mean(orbits)), "errors": errors}
    command = "python benchmarks/asymmetric_unit.py " + " ".join(sys.argv[1:])
    m = machine()
    lines = [f"# Crystals as their space group and asymmetric unit: MP-20 {args.split}", "", describe(m, command),
             f"{args.rows} seeded rows; the round trip of the module docstring (lengths 1 decimal, integer angles, "
             "coordinates 2 decimals).", "",
             "| rows | StructureMatcher finds the crystal | space group kept | sites per crystal (text now) | "
             "sites per crystal (asymmetric unit) | not expandable |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {args.rows} | {cell(record['matched'])} | {cell(record['space_group_kept'])} | "
             f"{cell(record['sites_per_crystal'], 2)} | {cell(record['orbits_per_crystal'], 2)} | {len(errors)} |"]
    record.update(machine=m, command=command)
    write_result(f"asymmetric_unit_{args.split}", record, lines)


if __name__ == "__main__":
    main()
