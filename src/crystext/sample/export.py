"""The parseable samples of a samples CSV as other formats: a folder of CIF files, one extxyz file."""

from __future__ import annotations

from pathlib import Path

from crystext.files import atomic_path
from crystext.sample.samples_csv import parsed_structures

__all__ = ["write_structures"]


def write_structures(path: Path, cif_dir: Path | None = None, extxyz: Path | None = None) -> int:
    """Write the parseable samples of `path` as a folder of .cif files and/or one extxyz file; returns their count."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    count = 0
    if cif_dir:
        cif_dir.mkdir(parents=True, exist_ok=True)
    for sample_id, structure in parsed_structures(path):
        count += 1
        if cif_dir:
            structure.to(filename=str(cif_dir / f"{sample_id}.cif"))
        if extxyz:
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.info["id"] = sample_id
            frames.append(atoms)
    if extxyz:
        with atomic_path(extxyz) as partial:
            write(str(partial), frames, format="extxyz")
    return count
