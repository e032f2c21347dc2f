"""Geometry shared by the sampler and the evaluator, kept free of their heavier imports."""

from __future__ import annotations

import numpy as np
from pymatgen.core import Structure

__all__ = ["closest_pair"]


def closest_pair(structure: Structure) -> tuple[int, int, float] | None:
    """(i, j, distance in A) of the two closest sites, i < j, periodic images included; None with fewer than two."""
    if len(structure) < 2:
        return None
    distances = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(distances, np.inf)
    i, j = sorted(int(k) for k in np.unravel_index(int(np.argmin(distances)), distances.shape))
    return i, j, float(distances[i, j])
