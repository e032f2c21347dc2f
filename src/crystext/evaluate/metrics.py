"""The generation metrics, under the two protocols published numbers come from.

``paper`` (crystal-text-llm ``basic_eval.py``, adapted from CDVAE) and ``cdvae`` (CDVAE
``scripts/compute_metrics.py``) differ in which samples count where:

=====================  ==========================================  ==========================================
                       paper                                       cdvae
=====================  ==========================================  ==========================================
unparsable samples     dropped before anything is counted          counted as generated, invalid
fingerprints           valid samples, valid references only        every sample/reference that builds
validity denominators  parsed samples                              all generated samples
coverage samples       valid samples                               every sample with fingerprints
COV-P                  mean over valid samples                     (samples within cut-offs) / generated
Wasserstein, div.      all valid samples vs all references         ``n_valid`` (1,000) valid samples, seeded
more than 10,000       10,000 drawn with replacement (as the code)  all kept
=====================  ==========================================  ==========================================

In both, COV-R/COV-P take the structure and composition minima separately (a reference is recalled
when its nearest sample in structure space and its nearest sample in composition space are each
within their cut-off, possibly two different samples). ``coverage="joint"`` asks for one sample
within both cut-offs instead; it is stricter and never the default.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist, pdist
from scipy.stats import wasserstein_distance

from crystext.constants import (
    COVERAGE_CUTOFFS,
    METASTABLE_E_HULL,
    NOVELTY_COMPOSITION_CUTOFF,
    NOVELTY_STRUCTURE_CUTOFF,
    STABLE_E_HULL,
)
from crystext.evaluate.analysis import Analysed, standardise_composition

__all__ = ["PROTOCOLS", "ProtocolSettings", "compute_metrics", "coverage"]

PROTOCOLS = ("paper", "cdvae")


@dataclass(frozen=True)
class ProtocolSettings:
    protocol: str = "paper"
    dataset: str = "mp_20"
    struct_cutoff: float | None = None  # default: the dataset's
    comp_cutoff: float | None = None
    coverage: str = "separate"  # or "joint"
    n_valid: int = 1000  # cdvae: valid samples drawn for the Wasserstein distances and diversities
    max_samples: int | None = 10000  # paper: more parsed samples than this are subsampled (with replacement)
    seed: int = 0
    novelty_struct_cutoff: float = NOVELTY_STRUCTURE_CUTOFF
    novelty_comp_cutoff: float = NOVELTY_COMPOSITION_CUTOFF

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r} (known: {', '.join(PROTOCOLS)})")
        if self.coverage not in ("separate", "joint"):
            raise ValueError(f"coverage must be 'separate' or 'joint', got {self.coverage!r}")

    @property
    def cutoffs(self) -> tuple[float, float]:
        default = COVERAGE_CUTOFFS.get(self.dataset)
        if default is None and (self.struct_cutoff is None or self.comp_cutoff is None):
            raise ValueError(
                f"no published coverage cut-offs for dataset {self.dataset!r} "
                f"(known: {', '.join(COVERAGE_CUTOFFS)}); give both cut-offs"
            )
        struct = self.struct_cutoff if self.struct_cutoff is not None else default[0]
        comp = self.comp_cutoff if self.comp_cutoff is not None else default[1]
        return float(struct), float(comp)


# --------------------------------------------------------------------------- distances


@dataclass
class Coverage:
    cov_recall: float
    cov_precision: float
    amsd_recall: float
    amsd_precision: float
    amcd_recall: float
    amcd_precision: float
    sample_struct_dist: np.ndarray  # per sample: nearest reference (structure fingerprint)
    sample_comp_dist: np.ndarray
    sample_covered: np.ndarray  # per sample: within the cut-offs (the mode's rule)
    ref_recalled: np.ndarray


def _nearest(
    a_struct: np.ndarray, a_comp: np.ndarray, b_struct: np.ndarray, b_comp: np.ndarray,
    struct_cutoff: float, comp_cutoff: float, chunk: int = 2048,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row and column minima of the two distance matrices, and for the joint rule whether any pair is within both.

    Computed in chunks of rows so 10,000 x 10,000 matrices never sit in memory at once.
    """
    n, m = len(a_struct), len(b_struct)
    row_s, row_c = np.full(n, np.inf), np.full(n, np.inf)
    col_s, col_c = np.full(m, np.inf), np.full(m, np.inf)
    row_joint, col_joint = np.zeros(n, bool), np.zeros(m, bool)
    for start in range(0, n, chunk):
        ds = cdist(a_struct[start:start + chunk], b_struct)
        dc = cdist(a_comp[start:start + chunk], b_comp)
        if m:
            row_s[start:start + chunk] = ds.min(axis=1)
            row_c[start:start + chunk] = dc.min(axis=1)
            col_s = np.minimum(col_s, ds.min(axis=0))
            col_c = np.minimum(col_c, dc.min(axis=0))
            both = (ds <= struct_cutoff) & (dc <= comp_cutoff)
            row_joint[start:start + chunk] = both.any(axis=1)
            col_joint |= both.any(axis=0)
    return row_s, row_c, col_s, col_c, row_joint, col_joint


def coverage(
    sample_struct: np.ndarray, sample_comp: np.ndarray, ref_struct: np.ndarray, ref_comp: np.ndarray,
    struct_cutoff: float, comp_cutoff: float, n_generated: int | None = None, mode: str = "separate",
) -> Coverage:
    """COV-R, COV-P and the mean minimum distances (AMSD, AMCD), from fingerprints (composition ones standardised).

    ``n_generated``: divide the precision count by this (CDVAE) instead of averaging over the samples
    given (crystal-text-llm).
    """
    s_s, s_c, r_s, r_c, s_joint, r_joint = _nearest(
        sample_struct, sample_comp, ref_struct, ref_comp, struct_cutoff, comp_cutoff
    )
    if mode == "joint":
        covered, recalled = s_joint, r_joint
    else:
        covered = (s_s <= struct_cutoff) & (s_c <= comp_cutoff)
        recalled = (r_s <= struct_cutoff) & (r_c <= comp_cutoff)
    denominator = n_generated if n_generated is not None else len(covered)
    return Coverage(
        cov_recall=_mean(recalled),
        cov_precision=float(covered.sum() / denominator) if denominator else math.nan,
        amsd_recall=_mean(r_s), amsd_precision=_mean(s_s), amcd_recall=_mean(r_c), amcd_precision=_mean(s_c),
        sample_struct_dist=s_s, sample_comp_dist=s_c, sample_covered=covered, ref_recalled=recalled,
    )


def _mean(values: Any) -> float:
    values = np.asarray(values, dtype=float)
    return float(values.mean()) if values.size else math.nan


def _mean_pdist(fps: np.ndarray) -> float:
    return float(pdist(fps).mean()) if len(fps) >= 2 else math.nan


def _wdist(a: Sequence[float], b: Sequence[float]) -> float:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else math.nan


def _histogram_distance(a: Sequence[Any], b: Sequence[Any]) -> float:
    """Total variation distance between two empirical distributions of labels (0: same, 1: disjoint)."""
    ca, cb = Counter(a), Counter(b)
    na, nb = sum(ca.values()), sum(cb.values())
    if not na or not nb:
        return math.nan
    return 0.5 * sum(abs(ca[k] / na - cb[k] / nb) for k in set(ca) | set(cb))


def element_frequencies(elements: Sequence[str]) -> dict[str, float]:
    """Fraction of structures that contain each element (elements: space-separated symbols per structure)."""
    counts: Counter[str] = Counter()
    for text in elements:
        counts.update(set(str(text).split()))
    n = len(elements)
    return {e: c / n for e, c in counts.most_common()} if n else {}


def _element_distance(a: Sequence[str], b: Sequence[str]) -> float:
    """Total variation distance between the element-occurrence distributions (each normalised to sum 1)."""
    fa, fb = element_frequencies(a), element_frequencies(b)
    sa, sb = sum(fa.values()), sum(fb.values())
    if not sa or not sb:
        return math.nan
    return 0.5 * sum(abs(fa.get(e, 0) / sa - fb.get(e, 0) / sb) for e in set(fa) | set(fb))


# --------------------------------------------------------------------------- the protocols


@dataclass
class MetricsResult:
    metrics: dict[str, Any]
    per_sample: pd.DataFrame  # one row per input sample, input order
    warnings: list[str] = field(default_factory=list)
    distributions: dict[str, Any] = field(default_factory=dict)


def _valid(table: pd.DataFrame) -> np.ndarray:
    return (table["struct_valid"] & table["comp_valid"]).to_numpy(bool)


def compute_metrics(
    samples: Analysed,
    reference: Analysed,
    settings: ProtocolSettings = ProtocolSettings(),
    train: Analysed | None = None,
    matcher_novel: Callable[[np.ndarray], np.ndarray] | None = None,
) -> MetricsResult:
    """Every fingerprint metric of one protocol for analysed samples against an analysed reference set.

    ``samples`` must carry fingerprints for every structure the protocol fingerprints (all that build
    for ``cdvae``, at least the valid ones for ``paper``).
    """
    rng = np.random.default_rng(settings.seed)
    notes: list[str] = []
    table = samples.table
    n_input = len(table)
    parsed = table["parsed"].to_numpy(bool)
    struct_cut, comp_cut = settings.cutoffs

    # Which samples form the pool the protocol counts over, as indices into the input.
    if settings.protocol == "paper":
        pool = np.flatnonzero(parsed)
        if settings.max_samples is not None and len(pool) > settings.max_samples:
            notes.append(
                f"{len(pool)} parsed samples > {settings.max_samples}: drew {settings.max_samples} with replacement, "
                "as crystal-text-llm does"
            )
            pool = pool[rng.choice(len(pool), settings.max_samples)]
    else:
        pool = np.arange(n_input)
    n_pool = len(pool)

    valid_flags = _valid(table)
    fp_ok = table["fp_ok"].to_numpy(bool)
    if settings.protocol == "paper":
        missing = valid_flags & ~table["fp_attempted"].to_numpy(bool)
    else:
        missing = parsed & ~table["fp_attempted"].to_numpy(bool)
    if missing.any():
        raise ValueError(f"{int(missing.sum())} samples lack the fingerprints the {settings.protocol} protocol needs")
    valid_full = valid_flags & fp_ok  # the reference codes' "valid": a fingerprint failure makes a sample invalid

    m: dict[str, Any] = {"protocol": settings.protocol, "n_samples": n_input, "n_parsed": int(parsed.sum()),
                         "n_counted": n_pool}
    m["struct_valid"] = _mean(table["struct_valid"].to_numpy(bool)[pool])
    m["comp_valid"] = _mean(table["comp_valid"].to_numpy(bool)[pool])
    m["valid"] = _mean(valid_full[pool])
    m["n_valid"] = int(valid_full[pool].sum())
    m["n_fingerprint_failures"] = int((table["fp_attempted"] & ~table["fp_ok"]).to_numpy(bool)[pool].sum())

    valid_pool = pool[valid_full[pool]]
    # Samples for the Wasserstein distances and diversities.
    if settings.protocol == "cdvae":
        distinct_valid = np.unique(valid_pool)
        if len(distinct_valid) >= settings.n_valid:
            dist_idx = distinct_valid[rng.choice(len(distinct_valid), settings.n_valid, replace=False)]
        else:
            dist_idx = distinct_valid
            notes.append(
                f"only {len(distinct_valid)} valid samples, fewer than n_valid={settings.n_valid}: used them all "
                "(CDVAE's script refuses to run here)"
            )
    else:
        dist_idx = valid_pool
    m["n_distribution_samples"] = len(dist_idx)

    # References: every parsed one for the distributions; fingerprinted ones (valid only, for paper) for coverage.
    rt = reference.table
    ref_parsed = rt["parsed"].to_numpy(bool)
    ref_fp = rt["fp_ok"].to_numpy(bool) & ref_parsed
    if settings.protocol == "paper":
        ref_fp &= _valid(rt)
    if not ref_fp.any():
        raise ValueError("no reference structure has fingerprints: nothing to cover")
    m["n_reference"] = len(rt)
    m["n_reference_parsed"] = int(ref_parsed.sum())
    m["n_reference_fingerprinted"] = int(ref_fp.sum())
    ref_struct = reference.struct_fp[ref_fp]
    ref_comp = standardise_composition(reference.comp_fp[ref_fp])

    # Coverage.
    if settings.protocol == "paper":
        cov_idx = valid_pool
        n_generated = None
    else:
        cov_idx = pool[fp_ok[pool]]
        n_generated = n_pool
    per_sample = _per_sample_frame(table)
    if len(cov_idx):
        cov = coverage(
            samples.struct_fp[cov_idx], standardise_composition(samples.comp_fp[cov_idx]), ref_struct, ref_comp,
            struct_cut, comp_cut, n_generated=n_generated, mode=settings.coverage,
        )
        m.update(cov_recall=cov.cov_recall, cov_precision=cov.cov_precision, amsd_recall=cov.amsd_recall,
                 amsd_precision=cov.amsd_precision, amcd_recall=cov.amcd_recall, amcd_precision=cov.amcd_precision)
        # Per-sample nearest distances (a sample drawn twice gets the same values).
        rows, first = np.unique(cov_idx, return_index=True)
        per_sample.loc[rows, "nearest_ref_struct_dist"] = cov.sample_struct_dist[first]
        per_sample.loc[rows, "nearest_ref_comp_dist"] = cov.sample_comp_dist[first]
        per_sample.loc[rows, "covered"] = cov.sample_covered[first]
    else:
        m.update(cov_recall=0.0, cov_precision=0.0, amsd_recall=math.nan, amsd_precision=math.nan,
                 amcd_recall=math.nan, amcd_precision=math.nan)
        notes.append("no sample has fingerprints: coverage is 0")
    m["coverage_mode"] = settings.coverage
    m["struct_cutoff"], m["comp_cutoff"] = struct_cut, comp_cut

    # Distributions.
    ref_rows = rt[ref_parsed]
    dist_rows = table.iloc[dist_idx]
    m["wdist_density"] = _wdist(dist_rows["density"], ref_rows["density"])
    m["wdist_num_elems"] = _wdist(dist_rows["n_elements"], ref_rows["n_elements"])
    m["wdist_num_atoms"] = _wdist(dist_rows["n_atoms"], ref_rows["n_atoms"])
    m["spacegroup_tv_distance"] = _histogram_distance(dist_rows["spacegroup"], ref_rows["spacegroup"])
    m["element_tv_distance"] = _element_distance(dist_rows["elements"].tolist(), ref_rows["elements"].tolist())
    m["struct_diversity"] = _mean_pdist(samples.struct_fp[dist_idx])
    m["comp_diversity"] = _mean_pdist(standardise_composition(samples.comp_fp[dist_idx]))

    # Novelty against training structures, by fingerprints (crystal-text-llm's rule) over the valid samples.
    if train is not None:
        tt = train.table
        train_fp = tt["parsed"].to_numpy(bool) & tt["fp_ok"].to_numpy(bool) & _valid(tt)
        if len(valid_pool) and train_fp.any():
            ns, nc, *_ = _nearest(
                samples.struct_fp[valid_pool], standardise_composition(samples.comp_fp[valid_pool]),
                train.struct_fp[train_fp], standardise_composition(train.comp_fp[train_fp]), 0.0, 0.0,
            )
            s_novel = ns > settings.novelty_struct_cutoff
            c_novel = nc > settings.novelty_comp_cutoff
            m["struct_novelty"], m["comp_novelty"] = _mean(s_novel), _mean(c_novel)
            m["novelty"] = _mean(s_novel | c_novel)
            rows, first = np.unique(valid_pool, return_index=True)
            per_sample.loc[rows, "nearest_train_struct_dist"] = ns[first]
            per_sample.loc[rows, "nearest_train_comp_dist"] = nc[first]
            per_sample.loc[rows, "novel_fingerprint"] = (s_novel | c_novel)[first]
        m["n_train_fingerprinted"] = int(train_fp.sum())

    per_sample["counted"] = np.isin(np.arange(n_input), pool)
    per_sample["valid"] = valid_full
    per_sample["in_distribution_set"] = np.isin(np.arange(n_input), dist_idx)
    distributions = {
        "sample_density": dist_rows["density"].tolist(), "ref_density": ref_rows["density"].tolist(),
        "sample_n_elements": dist_rows["n_elements"].tolist(), "ref_n_elements": ref_rows["n_elements"].tolist(),
        "sample_n_atoms": dist_rows["n_atoms"].tolist(), "ref_n_atoms": ref_rows["n_atoms"].tolist(),
        "sample_spacegroup": dist_rows["spacegroup"].tolist(), "ref_spacegroup": ref_rows["spacegroup"].tolist(),
        "sample_elements": element_frequencies(dist_rows["elements"].tolist()),
        "ref_elements": element_frequencies(ref_rows["elements"].tolist()),
    }
    return MetricsResult(m, per_sample, notes, distributions)


def _per_sample_frame(table: pd.DataFrame) -> pd.DataFrame:
    columns = ["id", "parsed", "parse_error", "formula", "n_atoms", "n_elements", "density", "volume", "spacegroup",
               "struct_valid", "struct_reason", "comp_valid", "comp_reason", "fp_ok", "fp_error"]
    frame = table[columns].copy()
    for name in ("nearest_ref_struct_dist", "nearest_ref_comp_dist", "nearest_train_struct_dist",
                 "nearest_train_comp_dist"):
        frame[name] = np.nan
    frame["covered"] = pd.Series([pd.NA] * len(frame), dtype="boolean")
    frame["novel_fingerprint"] = pd.Series([pd.NA] * len(frame), dtype="boolean")
    return frame


# --------------------------------------------------------------------------- StructureMatcher: uniqueness, novelty


def _matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher()  # pymatgen's defaults: ltol 0.2, stol 0.3, angle_tol 5


def unique_flags(structures: Sequence[Any], formulas: Sequence[str]) -> np.ndarray:
    """True for the first structure of each StructureMatcher group (so the mean is the fraction of distinct ones)."""
    matcher = _matcher()
    flags = np.zeros(len(structures), bool)
    by_formula: dict[str, list[int]] = {}
    for i, formula in enumerate(formulas):
        by_formula.setdefault(formula, []).append(i)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for members in by_formula.values():
            representatives: list[int] = []
            for i in members:
                if not any(matcher.fit(structures[i], structures[r]) for r in representatives):
                    representatives.append(i)
                    flags[i] = True
    return flags


def novel_flags(
    structures: Sequence[Any], formulas: Sequence[str], train_lookup: Callable[[str], Sequence[Any]]
) -> np.ndarray:
    """True where no training structure of the same reduced formula matches (StructureMatcher)."""
    matcher = _matcher()
    flags = np.ones(len(structures), bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, (structure, formula) in enumerate(zip(structures, formulas)):
            for candidate in train_lookup(formula):
                if matcher.fit(structure, candidate):
                    flags[i] = False
                    break
    return flags


def stability_rates(e_hull: np.ndarray, counted: int) -> dict[str, Any]:
    e_hull = np.asarray(e_hull, dtype=float)
    known = np.isfinite(e_hull)
    return {
        "n_with_e_hull": int(known.sum()),
        "metastable_rate": float((e_hull[known] < METASTABLE_E_HULL).sum() / counted) if counted else math.nan,
        "stable_rate": float((e_hull[known] < STABLE_E_HULL).sum() / counted) if counted else math.nan,
        "metastable_rate_of_known": _mean(e_hull[known] < METASTABLE_E_HULL),
        "stable_rate_of_known": _mean(e_hull[known] < STABLE_E_HULL),
        "mean_e_hull": _mean(e_hull[known]),
    }


def to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else float(value)
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    return value


def dumps(value: Any) -> str:
    return json.dumps(to_jsonable(value), indent=2)
