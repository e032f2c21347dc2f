"""Uniqueness, novelty, stability rates and S.U.N.: the one definition of each, for every caller.

`crystext evaluate`, `crystext stability`'s summary, the HTML report and Table 1 all count through this module.
Which structure each metric is computed on, and why:

- **Unique, Novel** (evaluate's `uniqueness`, `novelty_matcher`; Table 1's Unique / Novel): the valid samples
  *as generated*, with pymatgen's StructureMatcher (default tolerances; only structures of one reduced formula
  can match). They describe what the model writes, as CDVAE and DiffCSP report them. Unique: the first of each
  group of matching samples. Novel: no training structure matches.
- **Novelty by fingerprints** (the paper's `novelty`): valid samples as generated, farther than the paper's
  cut-offs from every valid training structure in CrystalNN or composition-fingerprint distance.
- **Metastable / stable**: energy above hull below METASTABLE_E_HULL (0.1 eV/atom) / STABLE_E_HULL (0.0) after
  relaxation, over *every sample sent to relaxation* (one row of a stability CSV each, including those that did
  not parse or relax, which count as neither); `*_of_relaxed` rates divide by the samples placed on the hull.
- **S.U.N. / M.S.U.N.**: on the *relaxed* structures, over every sample sent to relaxation (MatterGen's and
  FlowMM's "fraction of generated samples"). A sample counts when, in this order (MatterGen, LeMat-GenBench):
  its relaxed structure is stable (metastable); it is the first of its group of matching structures among the
  stable (metastable) ones; and it matches no training structure. Relaxed, because stability belongs to the
  relaxed crystal and two generated cells that relax to the same crystal are one discovery, not two.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Structure
from tqdm.auto import tqdm

from crystext.constants import METASTABLE_E_HULL, STABLE_E_HULL
from crystext.evaluate.coverage import nearest
from crystext.evaluate.fingerprints import standardise
from crystext.evaluate.profiles import Profiles

__all__ = [
    "KnownStructures",
    "fingerprint_novelty",
    "novel_flags",
    "RelaxedStructures",
    "stability_flags",
    "stability_rates",
    "stability_table",
    "unique_flags",
]


@dataclass(frozen=True)
class KnownStructures:
    """Structures to be novel against (a training set): reduced formulas up front, structures built on demand."""

    formulas: Sequence[str]
    structure: Callable[[int], Structure]

    @classmethod
    def from_structures(cls, structures: Sequence[Structure]) -> KnownStructures:
        return cls([s.composition.reduced_formula for s in structures], structures.__getitem__)

    def __len__(self) -> int:
        return len(self.formulas)


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
    structures: Sequence[Structure], formulas: Sequence[str], known: KnownStructures, progress: bool = False
) -> np.ndarray:
    """True where no known structure of the same reduced formula matches."""
    matcher = StructureMatcher()
    by_formula: dict[str, list[int]] = defaultdict(list)
    for j, formula in enumerate(known.formulas):
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
                    cache[j] = known.structure(j)
                if matcher.fit(structure, cache[j]):
                    flags[i] = False
                    break
    return flags


def fingerprint_novelty(
    samples: Profiles,
    valid_idx: np.ndarray,
    train: Profiles,
    train_use: np.ndarray,
    cutoffs: tuple[float, float],
) -> tuple[dict[str, Any], pd.DataFrame, list[str]]:
    """The paper's novelty: a valid sample farther than the (structure, composition) `cutoffs` from every
    training structure in `train_use`. Returns metrics, per-sample columns (missing where not valid), notes."""
    n = len(samples)
    columns = pd.DataFrame({
        "nearest_train_struct_dist": np.full(n, np.nan), "nearest_train_comp_dist": np.full(n, np.nan),
        "novel_fingerprint": pd.array([pd.NA] * n, dtype="boolean"),
    })
    metrics: dict[str, Any] = {"n_train_in_novelty": int(train_use.sum())}
    if not len(valid_idx) or not train_use.any():
        return metrics, columns, ["no valid samples or training structures: fingerprint novelty is undefined"]
    struct_cut, comp_cut = cutoffs
    near = nearest(
        samples.struct_fp[valid_idx], standardise(samples.comp_fp[valid_idx]),
        train.struct_fp[train_use], standardise(train.comp_fp[train_use]), struct_cut, comp_cut,
    )
    struct_novel, comp_novel = near.a_struct > struct_cut, near.a_comp > comp_cut
    metrics.update(struct_novelty=float(struct_novel.mean()), comp_novelty=float(comp_novel.mean()),
                   novelty=float((struct_novel | comp_novel).mean()))
    columns.loc[valid_idx, "nearest_train_struct_dist"] = near.a_struct
    columns.loc[valid_idx, "nearest_train_comp_dist"] = near.a_comp
    columns.loc[valid_idx, "novel_fingerprint"] = struct_novel | comp_novel
    return metrics, columns, []


def stability_flags(e_above_hull: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(metastable, stable) per structure; False where the energy is unknown (NaN)."""
    e = np.nan_to_num(np.asarray(e_above_hull, dtype=float), nan=np.inf)
    return e < METASTABLE_E_HULL, e < STABLE_E_HULL


class RelaxedStructures(Sequence):
    """The relaxed structures of a stability CSV's `relaxed_cif` column, each parsed the first time it is asked
    for: S.U.N. needs only the (meta)stable rows', and rates without a training set need none.

    A row without a CIF is `fallback(row)` (None without a fallback).
    """

    def __init__(self, cifs: Sequence[str], fallback: Callable[[int], Structure | None] | None = None) -> None:
        self._cifs = [cif if isinstance(cif, str) else "" for cif in cifs]
        self._fallback = fallback
        self._parsed: dict[int, Structure | None] = {}

    def __len__(self) -> int:
        return len(self._cifs)

    def __getitem__(self, row: int) -> Structure | None:  # type: ignore[override]
        if row not in self._parsed:
            cif = self._cifs[row]
            if cif.strip():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._parsed[row] = Structure.from_str(cif, fmt="cif")
            else:
                self._parsed[row] = self._fallback(row) if self._fallback else None
        return self._parsed[row]


def stability_table(
    e_above_hull: np.ndarray, relaxed: Sequence[Structure | None], known: KnownStructures | None
) -> pd.DataFrame:
    """Per sample sent to relaxation: e_above_hull, metastable, stable, and (with a training set) sun, msun.

    S.U.N. follows the module's definition: stable, then unique among the stable relaxed structures (first of
    each matching group), then novel against `known`; M.S.U.N. the same with metastable.
    """
    e_above_hull = np.asarray(e_above_hull, dtype=float)
    metastable, stable = stability_flags(e_above_hull)
    table = pd.DataFrame({"e_above_hull": e_above_hull, "metastable": metastable, "stable": stable})
    if known is None:
        return table
    for name, qualifies in (("sun", stable), ("msun", metastable)):
        index = [i for i in np.flatnonzero(qualifies) if relaxed[i] is not None]
        structures = [relaxed[i] for i in index]
        formulas = [s.composition.reduced_formula for s in structures]
        unique = unique_flags(structures, formulas)
        novel = novel_flags(structures, formulas, known)
        flags = np.zeros(len(table), bool)
        flags[index] = unique & novel
        table[name] = flags
    return table


def stability_rates(table: pd.DataFrame) -> dict[str, Any]:
    """Counts and rates of a `stability_table`: over every row, and (`*_of_relaxed`) over rows with an energy."""
    relaxed = np.isfinite(table["e_above_hull"].to_numpy(float))
    n = len(table)

    def rate(flags: pd.Series, among: np.ndarray) -> float:
        return float(flags.to_numpy(bool)[among].mean()) if among.any() else math.nan

    everyone = np.ones(n, bool)
    rates: dict[str, Any] = {
        "n_stability_rows": n,
        "n_with_e_above_hull": int(relaxed.sum()),
        "n_metastable": int(table["metastable"].sum()),
        "n_stable": int(table["stable"].sum()),
        "metastable_rate": rate(table["metastable"], everyone),
        "stable_rate": rate(table["stable"], everyone),
        "metastable_rate_of_relaxed": rate(table["metastable"], relaxed),
        "stable_rate_of_relaxed": rate(table["stable"], relaxed),
        "mean_e_above_hull": float(table["e_above_hull"][relaxed].mean()) if relaxed.any() else math.nan,
    }
    if "sun" in table.columns:
        rates.update(n_sun=int(table["sun"].sum()), n_msun=int(table["msun"].sum()),
                     sun_rate=rate(table["sun"], everyone), msun_rate=rate(table["msun"], everyone))
    return rates
