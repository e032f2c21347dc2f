"""Could a crystal be written as its space group and the atoms of its asymmetric unit? A round trip at text precision.

    python benchmarks/asymmetric_unit.py [--rows 1000] [--split val]

For seeded MP-20 rows: the conventional standard cell spglib refines (symprec 0.1), one site per orbit, the lattice
rounded as the text format writes it (lengths 1 decimal, integer angles) and the coordinates to 2 decimals; then
back: the group's operations expand the sites (duplicates within 0.02 merged, then sites within 0.3 A), and the
result is reduced to its standard primitive cell. Reported: how often pymatgen's StructureMatcher (defaults) finds
the MP-20 crystal again and spglib (symprec 0.1) its space group, and how many sites each text would write. A text
written this way states its group, so a model that writes the asked group meets it by construction; this measures
what the representation itself would lose. Writes benchmarks/results/asymmetric_unit_SPLIT.json/.md.
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
from pymatgen.core import Lattice, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CRYSTEXT_SHARED_DATA", ROOT.parent / "shared" / "data"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from crystext.geometry import SPACEGROUP_SYMPREC, spacegroup_number  # noqa: E402
from crystext.textformat import FormatOptions  # noqa: E402

#: Fractional distance within which the expanded copies of one site are the same site, and the distance (A) within
#: which two sites left after that are merged (a coordinate rounded off a special position).
DUPLICATE_FRACTION = 0.02
MERGE_ANGSTROM = 0.3


def asymmetric_unit(structure: Structure, options: FormatOptions) -> tuple[int, Lattice, list[str], list[list[float]]]:
    """The space group, rounded conventional lattice, and one rounded site per orbit, as a text would state them."""
    refined = SpacegroupAnalyzer(structure, symprec=SPACEGROUP_SYMPREC).get_refined_structure()
    analyzer = SpacegroupAnalyzer(refined, symprec=0.01)  # refined: exactly symmetric already
    orbits = analyzer.get_symmetrized_structure().equivalent_sites
    a, b, c, alpha, beta, gamma = refined.lattice.parameters
    lengths = [round(x, options.length_decimals) for x in (a, b, c)]
    angles = [round(x, options.angle_decimals) for x in (alpha, beta, gamma)]
    coords = [(np.round(orbit[0].frac_coords % 1.0, options.coord_decimals) % 1.0).tolist() for orbit in orbits]
    return (analyzer.get_space_group_number(), Lattice.from_parameters(*lengths, *angles),
            [orbit[0].specie.symbol for orbit in orbits], coords)


def expanded(group: int, lattice: Lattice, species: list[str], coords: list[list[float]]) -> Structure:
    """The crystal an asymmetric unit states, in its standard primitive cell."""
    cell = Structure.from_spacegroup(group, lattice, species, coords, tol=DUPLICATE_FRACTION)
    cell.merge_sites(tol=MERGE_ANGSTROM, mode="delete")
    return SpacegroupAnalyzer(cell, symprec=SPACEGROUP_SYMPREC).get_primitive_standard_structure()


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
                unit = asymmetric_unit(structure, FormatOptions())
                back = expanded(*unit)
        except Exception as error:  # a group pymatgen cannot expand from the rounded lattice counts as lost
            errors.append(f"{material}: {error}")
            matched.append(False)
            group_kept.append(False)
            continue
        matched.append(bool(matcher.fit(structure, back)))
        group_kept.append(spacegroup_number(back) == int(group))
        sites.append(len(structure))
        orbits.append(len(unit[2]))
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
