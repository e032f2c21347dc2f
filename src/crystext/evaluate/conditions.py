"""Metrics that need more than structures: stability (S.U.N.) and the accuracy of conditional samples.

- Stable: energy above hull below STABLE_E_HULL (0.0 eV/atom); metastable: below METASTABLE_E_HULL (0.1).
- S.U.N.: valid, stable, unique among the samples and novel against the training set (StructureMatcher),
  as a fraction of the samples the protocol counts; M.S.U.N. the same with metastable.
- Conditional accuracy, over every attempt that asked for the attribute (an attempt that did not
  parse misses): reduced formula equal to the requested one; space group (spglib, symprec 0.1)
  equal to the requested one; for requested energies above hull, the achieved ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Composition

from crystext.constants import METASTABLE_E_HULL, STABLE_E_HULL

__all__ = ["conditional_accuracy", "stability_flags", "stability_metrics"]


def stability_flags(e_above_hull: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(metastable, stable) per structure; False where the energy is unknown (NaN)."""
    e = np.asarray(e_above_hull, dtype=float)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(e, nan=np.inf) < METASTABLE_E_HULL, np.nan_to_num(e, nan=np.inf) < STABLE_E_HULL


def _rate(flags: np.ndarray, among: np.ndarray) -> float:
    return float(flags[among].mean()) if among.any() else math.nan


def stability_metrics(
    e_above_hull: np.ndarray,
    counted: np.ndarray,
    valid: np.ndarray,
    unique: np.ndarray | None,
    novel: np.ndarray | None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Stability rates over the counted samples (and over those with an energy), and S.U.N. when possible."""
    metastable, stable = stability_flags(e_above_hull)
    known = counted & np.isfinite(e_above_hull)
    m: dict[str, Any] = {
        "n_with_e_above_hull": int(known.sum()),
        "metastable_rate": _rate(metastable, counted),
        "stable_rate": _rate(stable, counted),
        "metastable_rate_of_relaxed": _rate(metastable, known),
        "stable_rate_of_relaxed": _rate(stable, known),
        "mean_e_above_hull": float(np.mean(e_above_hull[known])) if known.any() else math.nan,
    }
    columns = pd.DataFrame({"e_above_hull": e_above_hull, "metastable": metastable, "stable": stable})
    if unique is not None and novel is not None:
        unique_novel = valid & unique & novel
        m["sun_rate"] = _rate(unique_novel & stable, counted)
        m["msun_rate"] = _rate(unique_novel & metastable, counted)
        columns["sun"] = unique_novel & stable
        columns["msun"] = unique_novel & metastable
    return m, columns


def conditional_accuracy(
    ids: Sequence[str],
    conditions: Sequence[Mapping[str, Any] | None],
    formulas: Sequence[str],
    spacegroups: Sequence[int],
    parsed: np.ndarray,
    e_above_hull: np.ndarray | None,
) -> tuple[dict[str, Any], pd.DataFrame, list[str]]:
    """How often conditional samples have what they asked for; per-sample match columns; notes on bad requests."""
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
