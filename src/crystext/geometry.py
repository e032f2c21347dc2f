"""Geometry shared by the sampler and the evaluator, kept free of their heavier imports."""

from __future__ import annotations

import warnings

import numpy as np
from pymatgen.core import Structure

from crystext.constants import SPACEGROUP_SYMPREC

__all__ = ["closest_pair", "spacegroup_number"]


def closest_pair(structure: Structure) -> tuple[int, int, float] | None:
    """(i, j, distance in A) of the two closest sites, i < j, periodic images included; None with fewer than two."""
    if len(structure) < 2:
        return None
    distances = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(distances, np.inf)
    i, j = sorted(int(k) for k in np.unravel_index(int(np.argmin(distances)), distances.shape))
    return i, j, float(distances[i, j])


def spacegroup_number(structure: Structure, symprec: float = SPACEGROUP_SYMPREC) -> int:
    """The space-group number spglib finds at `symprec` (A), or 0 when it finds none."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:  # spglib gives up on degenerate cells
        return 0
