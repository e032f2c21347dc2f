"""Prompt templates for the two tasks the model learns, shared by training and sampling.

Generation: a request for a bulk crystal, optionally stating attributes, then the crystal text.
Infill: a crystal text with one element replaced by [MASK], then the element that belongs there.
All template words are lower case so the scratch tokenizer can keep element symbols (capitalised)
apart from prose.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

from crystext.constants import SPACEGROUP_SYMPREC
from crystext.geometry import lattice_points, spacegroup_number, wyckoff_multiplicities
from crystext.textformat import ELEMENT_SYMBOLS, SPACEGROUPS, CrystalText, FormatOptions, element_line_symbol

MASK = "[MASK]"
GENERATION_HEADER = "bulk crystal."
GENERATION_REQUEST = " lattice lengths and angles, then each element and its fractional coordinates:\n"
INFILL_HEADER = f"bulk crystal with one element written as {MASK}:\n"
INFILL_REQUEST = f"\nelement for {MASK}:"
#: Significant decimals for property values in prompts (energies, band gaps).
PROPERTY_DECIMALS = 4


@dataclass(frozen=True)
class Attributes:
    """What a generation prompt may state about the crystal; None means not stated."""

    formula: str | None = None
    spacegroup: int | None = None
    e_above_hull: float | None = None
    formation_energy: float | None = None
    band_gap: float | None = None

    @classmethod
    def from_properties(cls, properties: Mapping[str, Any]) -> Attributes:
        """Read the attributes a CDVAE-layout dataset row carries (missing or NaN values stay None)."""
        return cls(
            formula=_clean(properties.get("pretty_formula"), str),
            spacegroup=_clean(properties.get("spacegroup.number"), int),
            e_above_hull=_clean(properties.get("e_above_hull"), float),
            formation_energy=_clean(properties.get("formation_energy_per_atom"), float),
            band_gap=_clean(properties.get("band_gap"), float),
        )

    def subset(self, rng: np.random.Generator, rate: float | None = None) -> Attributes:
        """A random subset of the known attributes: each stated independently with probability `rate`, or without
        a rate each subset size equally likely, then which ones, as the paper trains."""
        known = [f.name for f in fields(self) if getattr(self, f.name) is not None]
        if rate is None:
            count = int(rng.integers(0, len(known) + 1))
            keep = set(rng.choice(known, size=count, replace=False)) if count else set()
        else:
            keep = {name for name, draw in zip(known, rng.random(len(known))) if draw < rate}
        return Attributes(**{name: getattr(self, name) for name in keep})

    def to_prompt(self) -> str:
        """The generation prompt stating these attributes."""
        parts = [GENERATION_HEADER]
        if self.formula is not None:
            parts.append(f" formula {plain_formula(self.formula)}.")
        if self.spacegroup is not None:
            parts.append(f" space group {self.spacegroup}.")
        if self.e_above_hull is not None:
            parts.append(f" energy above hull {_number(self.e_above_hull)} ev/atom.")
        if self.formation_energy is not None:
            parts.append(f" formation energy {_number(self.formation_energy)} ev/atom.")
        if self.band_gap is not None:
            parts.append(f" band gap {_number(self.band_gap)} ev.")
        return "".join(parts) + GENERATION_REQUEST

    def in_site_order(self) -> Attributes:
        """These attributes with the formula's elements in the order a crystal text lists them (SiLiO2N ->
        LiSiNO2): by electronegativity, the order of the sites in MP-20's and Perov-5's CIFs and of pymatgen's
        formulas, so that a model can copy the stated elements in the order it writes them."""
        if self.formula is None:
            return self
        composition = Composition(self.formula)
        with warnings.catch_warnings():  # pymatgen warns of the noble gases' missing electronegativity (NaN): last
            warnings.simplefilter("ignore")
            order = sorted(composition, key=lambda el: (el.X if math.isfinite(el.X) else math.inf, el.symbol))
        return replace(self, formula=_written({el: composition[el] for el in order}))

    def in_conventional_cell(self, max_atoms: int) -> Attributes:
        """These attributes with the formula scaled to the fewest formula units a conventional cell of the stated
        space group can hold, each element's count a sum of the group's Wyckoff multiplicities (NaCl in 225 ->
        Na4Cl4, LiFePO4 in 62 -> Li4Fe4P4O16): for a model that reads a formula stated with a space group as that
        cell's atoms. Unchanged when it states no formula or no group, or the formula is already such a cell's.
        Raises ValueError when no cell of at most `max_atoms` atoms per lattice point holds it."""
        if self.formula is None or self.spacegroup is None:
            return self
        composition = Composition(self.formula)
        total = composition.num_atoms
        cap = max_atoms * lattice_points(self.spacegroup)
        fits = _orbit_sums(self.spacegroup, cap)
        for units in range(1, math.floor(cap / total) + 1):
            counts = [units * n for n in composition.values()]
            if all(abs(n - round(n)) < 1e-6 and round(n) in fits for n in counts):
                return self if units == 1 else replace(self, formula=_written({
                    el: units * n for el, n in composition.items()}))
        sizes = ", ".join(map(str, wyckoff_multiplicities(self.spacegroup)))
        raise ValueError(f"no cell of space group {self.spacegroup} with at most {cap} atoms holds formula "
                         f"{self.formula} (its orbits hold {sizes} atoms)")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def problem(self) -> str | None:
        """Why no crystal can meet these attributes (a formula of unknown elements, a space group that does not
        exist), or None."""
        if self.formula is not None and (problem := formula_problem(self.formula)):
            return problem
        if self.spacegroup is not None and self.spacegroup not in SPACEGROUPS:
            return f"space group {self.spacegroup} does not exist ({SPACEGROUPS[0]}-{SPACEGROUPS[-1]})"
        return None

    def unmet(self, structure: Structure, symprec: float = SPACEGROUP_SYMPREC) -> str:
        """How `structure` differs from the formula and space group stated here ("" if it has both), judged as
        conditional accuracy judges it: the same reduced formula, the space group spglib finds at `symprec`.
        Energies and band gaps are not checked: they need a relaxation or a calculation."""
        misses = []
        if self.formula is not None:
            wrote = structure.composition.reduced_formula
            if wrote != Composition(self.formula).reduced_formula:
                misses.append(f"formula {wrote}, asked {self.formula}")
        if self.spacegroup is not None:
            group = spacegroup_number(structure, symprec)
            if group != self.spacegroup:
                misses.append(f"space group {group or 'none found'}, asked {self.spacegroup}")
        return "; ".join(misses)


@cache
def _orbit_sums(group: int, cap: int) -> frozenset[int]:
    """The atom counts up to `cap` that orbits of `group` can add up to (a position without free parameters used
    twice counts too: a necessary condition, and the grammar places the sites)."""
    reachable = [True] + [False] * cap
    for total in range(1, cap + 1):
        reachable[total] = any(size <= total and reachable[total - size] for size in wyckoff_multiplicities(group))
    return frozenset(n for n in range(1, cap + 1) if reachable[n])


def formula_problem(formula: str) -> str | None:
    """Why `formula` is no chemical formula of real elements, or None."""
    try:
        composition = Composition(formula)
    except Exception:  # pymatgen raises several types on a formula it cannot read
        return f"{formula!r} is not a chemical formula (e.g. LiFePO4)"
    unknown = [getattr(e, "symbol", str(e)) for e in composition if getattr(e, "symbol", None) not in ELEMENT_SYMBOLS]
    if unknown:
        return f"formula {formula!r} has an unknown element {unknown[0]!r}"
    if not composition:
        return f"formula {formula!r} has no atoms"
    return None


def generation_example(crystal: CrystalText, attributes: Attributes, options: FormatOptions) -> tuple[str, str]:
    """(prompt, completion) for the generation task; the caller appends the end-of-sequence token."""
    return attributes.to_prompt(), crystal.to_str(options)


def infill_prompt(crystal: CrystalText, element: str, options: FormatOptions) -> str:
    """The infill prompt: the crystal text with every site of `element` written as [MASK] (its count, in the
    site-count form, kept)."""
    if element not in crystal.species:
        raise ValueError(f"element {element} is not in the crystal ({' '.join(sorted(set(crystal.species)))})")
    text = crystal.to_str(options).split("\n")
    head = 2 if crystal.spacegroup is None else 3  # the lattice lines, after the space group's
    masked = [
        MASK + line[len(element):] if i >= head and (i - head) % 2 == 0 and element_line_symbol(line) == element
        else line
        for i, line in enumerate(text)
    ]
    return INFILL_HEADER + "\n".join(masked) + INFILL_REQUEST


def infill_example(crystal: CrystalText, rng: np.random.Generator, options: FormatOptions) -> tuple[str, str]:
    """(prompt, completion) for the infill task with a random element of the crystal masked."""
    element = str(rng.choice(sorted(set(crystal.species))))
    return infill_prompt(crystal, element, options), " " + element


def plain_formula(formula: str) -> str:
    """The formula as element symbols and counts only, in its own order: RbAl(SO4)2 -> RbAlS2O8.

    Brackets are not in the crystal text a scratch tokenizer learns from (they became unknown tokens), and the
    plain form spells out every element the crystal lists, in the order it lists them.
    """
    return _written(Composition(formula))


def _written(amounts: Mapping[Any, float]) -> str:
    """Element symbols and their counts in the mapping's order, a count of 1 left out."""
    return "".join(f"{el}{'' if n == 1 else f'{n:g}'}" for el, n in amounts.items())


def cell_formula(crystal: CrystalText) -> str:
    """The formula of the whole cell, elements in the order the text lists them: Ti2Zn2O6 for a cell of two TiZnO3
    units. A prompt stating it asks for exactly the atoms to write (`TrainConfig.cell_formula`), where a reduced
    formula leaves the number of units to the model. An asymmetric unit's is its conventional cell's."""
    return "".join(f"{el}{'' if n == 1 else n}" for el, n in crystal.cell_counts().items())


def _number(value: float) -> str:
    return f"{round(value, PROPERTY_DECIMALS):g}"


def _clean(value: Any, kind: type) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return kind(value)
