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

from pymatgen.core import Composition, Structure

from crystext.constants import MIN_CELL_VOLUME, MIN_INTERATOMIC_DISTANCE
from crystext.geometry import closest_pair

__all__ = ["compositional_validity", "is_valid", "smact_version", "structural_problem"]

#: The smact release whose oxidation-state table the published numbers used.
PAPER_SMACT_VERSION = "2.5.5"
#: A composition with an element that has no Pauling electronegativity is judged by the reference
#: code's own loop up to this many oxidation-state combinations, and by charge neutrality alone beyond.
MAX_REFERENCE_COMBINATIONS = 100_000


def structural_problem(structure: Structure) -> str | None:
    """Why a structure is structurally invalid (cell too small, two sites too close), or None when it is valid."""
    volume = float(structure.volume)
    if not volume >= MIN_CELL_VOLUME:  # also catches NaN
        return f"cell volume {volume:.3g} A^3 is below {MIN_CELL_VOLUME} A^3"
    pair = closest_pair(structure)
    if pair is not None and not pair[2] >= MIN_INTERATOMIC_DISTANCE:
        i, j, closest = pair
        return f"sites {i} and {j} are {closest:.3f} A apart, closer than {MIN_INTERATOMIC_DISTANCE} A"
    return None


def is_valid(structure: Structure) -> bool:
    """Valid as evaluate counts it: structurally and compositionally; a structure either check fails on (an element
    SMACT has no data for, distances that cannot be computed) is not."""
    try:
        return structural_problem(structure) is None and compositional_validity(structure.composition)
    except Exception:  # noqa: BLE001 - any failure of the checks means the crystal cannot be judged valid
        return False


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
    states = [states for states, _, _ in data]
    electronegativities = [eneg for _, eneg, _ in data]
    if None not in electronegativities:
        return _neutral_with_pauling(tuple(counts), tuple(states), tuple(electronegativities))
    if math.prod(len(s) for s in states) <= MAX_REFERENCE_COMBINATIONS:
        return _reference_loop(counts, states, electronegativities)
    return _neutral_with_pauling(tuple(counts), tuple(states), None)


def _reference_loop(counts: list[int], states: list[tuple[int, ...]], electronegativities: list[float | None]) -> bool:
    """The reference code's loop over every combination of oxidation states, for missing electronegativities.

    Whether its Pauling test raises (and so counts as passed) or fails depends on the order it meets
    the pairs in, so compositions with an element lacking an electronegativity take this exact path.
    """
    import smact
    from smact.screening import pauling_test

    for ox_states in itertools.product(*states):
        neutral, _ = smact.neutral_ratios(ox_states, stoichs=[(c,) for c in counts], threshold=max(counts))
        if not neutral:
            continue
        try:
            if pauling_test(ox_states, electronegativities):
                return True
        except TypeError:  # an electronegativity is missing: the reference code counts the test as passed
            return True
    return False


@functools.lru_cache(maxsize=65536)
def _neutral_with_pauling(
    counts: tuple[int, ...], states: tuple[tuple[int, ...], ...], electronegativities: tuple[float, ...] | None
) -> bool:
    """Whether some oxidation state per element is charge neutral with every cation less electronegative than
    every anion (without electronegativities: neutral alone).

    The same answer as trying every combination of oxidation states, as the reference code does, but by a
    depth-first search over the elements whose states (charge so far, most electronegative cation, least
    electronegative anion) are remembered: the combinations grow exponentially with the number of
    elements, and a garbled sample with a dozen elements would otherwise never finish.
    """
    if any(not s for s in states):
        return False
    # The least and most charge the elements from i on can still add.
    low, high = [0] * (len(counts) + 1), [0] * (len(counts) + 1)
    for i in reversed(range(len(counts))):
        low[i] = low[i + 1] + counts[i] * min(states[i])
        high[i] = high[i + 1] + counts[i] * max(states[i])

    @functools.cache
    def search(i: int, charge: int, top_cation: float, bottom_anion: float) -> bool:
        if i == len(counts):
            return charge == 0
        if not low[i] <= -charge <= high[i]:
            return False
        eneg = electronegativities[i] if electronegativities else 0.0
        for ox in set(states[i]):
            cation, anion = top_cation, bottom_anion
            if electronegativities and ox > 0:
                if eneg >= bottom_anion:
                    continue
                cation = max(top_cation, eneg)
            elif electronegativities and ox < 0:
                if eneg <= top_cation:
                    continue
                anion = min(bottom_anion, eneg)
            if search(i + 1, charge + counts[i] * ox, cation, anion):
                return True
        return False

    return search(0, 0, -math.inf, math.inf)


def smact_version() -> str:
    """The installed smact version (results depend on its oxidation-state table)."""
    try:
        return version("smact")
    except PackageNotFoundError:
        return "not installed"
