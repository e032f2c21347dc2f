"""Chemically similar elements: a shared common oxidation state and a close ionic radius there (infill candidates)."""

from __future__ import annotations

import warnings

from pymatgen.core import Element, Species

__all__ = ["SIMILAR_RADIUS_TOLERANCE", "similar_elements"]

#: Relative ionic-radius difference under which two elements count as chemically similar.
SIMILAR_RADIUS_TOLERANCE = 0.2


def similar_elements(element: str, tolerance: float = SIMILAR_RADIUS_TOLERANCE) -> list[str]:
    """Elements sharing a common oxidation state with `element` whose ionic radius there differs by at most
    `tolerance` (relative)."""
    target = Element(element)
    similar = set()
    for state in target.common_oxidation_states:
        radius = _radius(element, state)
        if radius is None:
            continue
        for other in Element:
            if other.symbol != element and state in other.common_oxidation_states:
                r = _radius(other.symbol, state)
                if r is not None and abs(r - radius) <= tolerance * radius:
                    similar.add(other.symbol)
    return sorted(similar)


def _radius(element: str, state: int) -> float | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every species without tabulated radius
        try:
            return float(Species(element, state).ionic_radius)
        except (TypeError, ValueError, KeyError):
            return None
