"""The accuracy of conditional samples: how often a sample has what its prompt asked for.

- Conditional accuracy, over every attempt that asked for the attribute (an attempt that did not
  parse misses): reduced formula equal to the requested one; space group (spglib, symprec 0.1)
  equal to the requested one; for requested energies above hull, the achieved ones, over the attempts the
  stability CSV covers (a CSV of a subset does not count the others as misses; a failed relaxation does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition

from crystext.evaluate.sun import stability_flags

__all__ = ["conditional_accuracy"]


def _rate(flags: np.ndarray, among: np.ndarray) -> float:
    return float(flags[among].mean()) if among.any() else math.nan


def conditional_accuracy(
    ids: Sequence[str],
    conditions: Sequence[Mapping[str, Any] | None],
    formulas: Sequence[str],
    spacegroups: Sequence[int],
    parsed: np.ndarray,
    e_above_hull: np.ndarray | None,
    in_stability: np.ndarray | None = None,
) -> tuple[dict[str, Any], pd.DataFrame, list[str]]:
    """How often conditional samples have what they asked for; per-sample match columns; notes on bad requests.

    `in_stability` marks the samples the stability CSV has a row for (default: all)."""
    n = len(conditions)
    formula_match = pd.array([pd.NA] * n, dtype="boolean")
    spacegroup_match = pd.array([pd.NA] * n, dtype="boolean")
    requested_e = np.full(n, np.nan)
    notes: list[str] = []
    for i, asked in enumerate(conditions):
        if not asked:
            continue
        if "formula" in asked:
            try:
                wanted = Composition(str(asked["formula"])).reduced_formula
                formula_match[i] = bool(parsed[i]) and formulas[i] == wanted
            except ValueError:
                notes.append(f"sample {ids[i]}: requested formula '{asked['formula']}' is not a formula, ignored")
        if "spacegroup" in asked:
            requested = str(asked["spacegroup"]).strip()
            if requested.isdigit():
                spacegroup_match[i] = bool(parsed[i]) and int(spacegroups[i]) == int(requested)
            else:
                notes.append(f"sample {ids[i]}: requested space group '{requested}' is not a number, ignored")
        if "e_above_hull" in asked:
            try:
                requested_e[i] = float(asked["e_above_hull"])
            except (TypeError, ValueError):
                notes.append(f"sample {ids[i]}: requested e_above_hull '{asked['e_above_hull']}' is not a number")
    m: dict[str, Any] = {}
    for name, match in (("formula", formula_match), ("spacegroup", spacegroup_match)):
        asked = ~match.isna()
        m[f"n_{name}_conditioned"] = int(asked.sum())
        m[f"{name}_accuracy"] = float(match[asked].astype(bool).mean()) if asked.any() else math.nan
    columns = pd.DataFrame({"formula_match": formula_match, "spacegroup_match": spacegroup_match})
    asked_e = np.isfinite(requested_e)
    m["n_stability_conditioned"] = int(asked_e.sum())
    if asked_e.any() and e_above_hull is not None:
        asked_e &= np.ones(n, bool) if in_stability is None else in_stability
        m["stability_conditioned_n_relaxed"] = int(asked_e.sum())
        achieved = asked_e & np.isfinite(e_above_hull)
        metastable, _ = stability_flags(e_above_hull)
        m["stability_conditioned_n_with_e_above_hull"] = int(achieved.sum())
        m["stability_conditioned_mean_e_above_hull"] = (
            float(np.mean(e_above_hull[achieved])) if achieved.any() else math.nan
        )
        m["stability_conditioned_e_above_hull_mae"] = (
            float(np.mean(np.abs(e_above_hull[achieved] - requested_e[achieved]))) if achieved.any() else math.nan
        )
        m["stability_conditioned_metastable_rate"] = _rate(metastable, asked_e)
    return m, columns, notes
