"""Structural and compositional validity, as CDVAE defines them and crystal-text-llm reuses them.

- Structural: no two sites closer than 0.5 A (pymatgen's `distance_matrix`, the diagonal ignored)
  and a cell volume of at least 0.1 A^3.
- Compositional: over the reduced composition, some combination of SMACT oxidation states is
  charge neutral and passes the Pauling electronegativity test; a single element, or a composition
  of metals only, is valid as it is.

The oxidation-state table moves the numbers, so the project pins smact 2.5.5 (the table the
published results used) and records the installed version with every result.
"""

from __future__ import annotations

import functools
import itertools
import math
from importlib.metadata import PackageNotFoundError, version

import numpy as np
from pymatgen.core import Composition, Structure

from crystext.constants import MIN_CELL_VOLUME, MIN_INTERATOMIC_DISTANCE

__all__ = ["compositional_validity", "smact_version", "structural_problem"]

#: The smact release whose oxidation-state table the published numbers used.
PAPER_SMACT_VERSION = "2.5.5"


def structural_problem(structure: Structure) -> str | None:
    """Why a structure is structurally invalid (cell too small, two sites too close), or None when it is valid."""
    volume = float(structure.volume)
    if not volume >= MIN_CELL_VOLUME:  # also catches NaN
        return f"cell volume {volume:.3g} A^3 is below {MIN_CELL_VOLUME} A^3"
    if len(structure) < 2:
        return None
    distances = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(distances, np.inf)
    i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
    closest = float(distances[i, j])
    if not closest >= MIN_INTERATOMIC_DISTANCE:
        return f"sites {min(i, j)} and {max(i, j)} are {closest:.3f} A apart, closer than {MIN_INTERATOMIC_DISTANCE} A"
    return None


@functools.cache
def _smact_element(symbol: str) -> tuple[tuple[int, ...], float | None, bool]:
    """(oxidation states, Pauling electronegativity, is a metal) from SMACT's tables, read once per process."""
    import smact

    element = smact.Element(symbol)
    return tuple(element.oxidation_states or ()), element.pauling_eneg, symbol in smact.metals


def compositional_validity(composition: Composition) -> bool:
    """SMACT charge neutrality plus the Pauling test over the reduced composition (CDVAE's `smact_validity`).

    Valid when the composition is one element or only metals, or when some combination of the elements'
    oxidation states is neutral at exactly the reduced counts and puts anions above cations in
    electronegativity (a missing electronegativity passes, as in the reference code). Raises
    ValueError for an element SMACT has no data for.
    """
    import smact
    from smact.screening import pauling_test

    reduced = composition.element_composition.reduced_composition
    symbols = [element.symbol for element in sorted(reduced.elements, key=lambda e: e.Z)]
    counts = [int(round(reduced[s])) for s in symbols]
    if any(not math.isclose(reduced[s], c) for s, c in zip(symbols, counts)):
        raise ValueError(f"composition {composition.formula} has non-integer amounts")
    if len(symbols) == 1:
        return True
    try:
        data = [_smact_element(s) for s in symbols]
    except (NameError, KeyError) as err:
        raise ValueError(f"SMACT has no data for an element of {reduced.reduced_formula} ({err})") from None
    if all(is_metal for _, _, is_metal in data):
        return True
    electronegativities = [eneg for _, eneg, _ in data]
    stoichs = [(c,) for c in counts]
    for ox_states in itertools.product(*(states for states, _, _ in data)):
        neutral, _ = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=max(counts))
        if not neutral:
            continue
        try:
            if pauling_test(ox_states, electronegativities):
                return True
        except TypeError:  # an electronegativity is missing: the reference code counts the test as passed
            return True
    return False


def smact_version() -> str:
    """The installed smact version (results depend on its oxidation-state table)."""
    try:
        return version("smact")
    except PackageNotFoundError:
        return "not installed"
