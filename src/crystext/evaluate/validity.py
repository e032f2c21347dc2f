"""Structural and compositional validity, as CDVAE defines them and crystal-text-llm uses them.

- Structural: the smallest periodic interatomic distance (pymatgen's ``distance_matrix``, the
  diagonal ignored) is at least 0.5 A, and the cell volume is at least 0.1 A^3.
- Compositional: over the reduced composition, some assignment of SMACT oxidation states is charge
  neutral and passes the Pauling electronegativity test; a single element, or a composition made of
  metals only (an alloy), is valid as it is.

The oxidation-state table is SMACT's, and its version moves the numbers: smact 2.5.5 (the version
the published tables used) scores the MP-20 test split 0.9116, smact 4.x about 0.9095. The project
pins smact 2.5.5; `smact_version()` is recorded with every result.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np
from pymatgen.core import Structure

from crystext.constants import MIN_CELL_VOLUME, MIN_INTERATOMIC_DISTANCE

__all__ = [
    "composition_validity",
    "reduced_counts",
    "smact_validity",
    "smact_version",
    "structure_validity",
    "structure_validity_reason",
]


def structure_validity_reason(
    structure: Structure,
    min_distance: float = MIN_INTERATOMIC_DISTANCE,
    min_volume: float = MIN_CELL_VOLUME,
) -> str | None:
    """Why a structure is structurally invalid (atoms too close, cell too small), or None when it is valid."""
    volume = float(structure.volume)
    if not math.isfinite(volume) or volume < min_volume:
        return f"cell volume {volume:.3g} A^3 < {min_volume}"
    if len(structure) > 1:
        distances = np.array(structure.distance_matrix, dtype=float)
        np.fill_diagonal(distances, np.inf)
        closest = float(distances.min())
        if not closest >= min_distance:  # also catches NaN
            i, j = np.unravel_index(int(np.argmin(distances)), distances.shape)
            return f"sites {i + 1} and {j + 1} are {closest:.3f} A apart (< {min_distance})"
    return None


def structure_validity(structure: Structure, **kwargs: float) -> bool:
    """True when no two sites are closer than 0.5 A and the cell volume is at least 0.1 A^3."""
    return structure_validity_reason(structure, **kwargs) is None


def reduced_counts(counts: Mapping[str, float]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Elements sorted by symbol and their counts divided by the greatest common divisor (as CDVAE does)."""
    elements = tuple(sorted(counts))
    values = np.array([int(round(counts[e])) for e in elements], dtype=int)
    if len(values) == 0 or (values <= 0).any():
        raise ValueError(f"composition needs positive integer counts, got {dict(counts)}")
    values = values // np.gcd.reduce(values)
    return elements, tuple(int(v) for v in values)


@functools.cache
def _smact_element(symbol: str) -> tuple[tuple[int, ...], float | None, bool]:
    """(oxidation states, Pauling electronegativity, is a metal) from SMACT's tables, cached per process."""
    import smact

    element = smact.Element(symbol)
    return tuple(element.oxidation_states or ()), element.pauling_eneg, symbol in smact.metals


def smact_validity(
    elements: Sequence[str],
    counts: Sequence[int],
    use_pauling_test: bool = True,
    include_alloys: bool = True,
) -> bool:
    """SMACT charge neutrality plus the Pauling test for one (reduced) composition.

    The logic of CDVAE's and crystal-text-llm's ``smact_validity``: valid when the composition is a
    single element, or (``include_alloys``) only metals, or when some combination of the elements'
    oxidation states is charge neutral at these counts (``smact.neutral_ratios`` with the counts as
    the only allowed stoichiometry) and passes ``smact.screening.pauling_test`` (taken as passed when
    an electronegativity is missing). It stops at the first combination that passes, which gives the
    same answer as enumerating all of them.
    """
    import smact
    from smact.screening import pauling_test

    symbols = tuple(elements)
    if len(set(symbols)) == 1:
        return True
    data = [_smact_element(s) for s in symbols]
    if include_alloys and all(is_metal for _, _, is_metal in data):
        return True
    electronegativities = [eneg for _, eneg, _ in data]
    stoichs = [(int(c),) for c in counts]
    threshold = int(np.max(counts))
    for ox_states in itertools.product(*(states for states, _, _ in data)):
        neutral, _ = smact.neutral_ratios(ox_states, stoichs=stoichs, threshold=threshold)
        if not neutral:
            continue
        if not use_pauling_test:
            return True
        try:
            if pauling_test(ox_states, electronegativities):
                return True
        except TypeError:  # no electronegativity for some element: the reference code counts it as passed
            return True
    return False


def composition_validity(structure_or_counts: Structure | Mapping[str, float]) -> bool:
    """Compositional validity of a structure (or an {element: count} mapping), over its reduced composition."""
    if isinstance(structure_or_counts, Structure):
        counts: dict[str, float] = {}
        for site in structure_or_counts:
            symbol = site.specie.symbol if hasattr(site.specie, "symbol") else str(site.specie)
            counts[symbol] = counts.get(symbol, 0) + 1
    else:
        counts = dict(structure_or_counts)
    elements, reduced = reduced_counts(counts)
    return smact_validity(elements, reduced)


def smact_version() -> str:
    try:
        from importlib.metadata import version

        return version("smact")
    except Exception:  # not installed under that name
        return "unknown"
