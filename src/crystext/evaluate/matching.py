"""Uniqueness and novelty by pymatgen's StructureMatcher (pymatgen's default tolerances).

Only structures of the same reduced formula can match, so both compare within formula groups.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

__all__ = ["novel_flags", "unique_flags"]


def unique_flags(structures: Sequence[Structure], formulas: Sequence[str], progress: bool = False) -> np.ndarray:
    """True for the first structure of each group of matching structures, so the mean is the fraction unique."""
    matcher = StructureMatcher()
    flags = np.zeros(len(structures), bool)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, formula in enumerate(formulas):
        groups[formula].append(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for members in tqdm(groups.values(), desc="uniqueness", unit="formula", disable=not progress):
            firsts: list[int] = []
            for i in members:
                if not any(matcher.fit(structures[i], structures[j]) for j in firsts):
                    firsts.append(i)
                    flags[i] = True
    return flags


def novel_flags(
    structures: Sequence[Structure],
    formulas: Sequence[str],
    known_formulas: Sequence[str],
    known_structure: Callable[[int], Structure],
    progress: bool = False,
) -> np.ndarray:
    """True where no known structure (e.g. the training set) of the same reduced formula matches."""
    matcher = StructureMatcher()
    by_formula: dict[str, list[int]] = defaultdict(list)
    for j, formula in enumerate(known_formulas):
        by_formula[formula].append(j)
    cache: dict[int, Structure] = {}
    flags = np.ones(len(structures), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (structure, formula) in enumerate(
            tqdm(list(zip(structures, formulas)), desc="novelty", unit="structure", disable=not progress)
        ):
            for j in by_formula.get(formula, ()):
                if j not in cache:
                    cache[j] = known_structure(j)
                if matcher.fit(structure, cache[j]):
                    flags[i] = False
                    break
    return flags
