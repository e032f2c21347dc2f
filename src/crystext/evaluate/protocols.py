"""The two published evaluation protocols, each difference between them a named switch.

- `paper`: the seed paper's `basic_eval.py` (crystal-text-llm, adapted from CDVAE).
- `cdvae`: CDVAE's `scripts/compute_metrics.py`.

=============================  =======================================  ======================================
                               paper                                    cdvae
=============================  =======================================  ======================================
samples whose CIF fails        dropped before anything is counted       counted as generated, invalid
sample fingerprints            valid samples only                       every sample that builds a structure
reference fingerprints         valid references only                    every reference
COV-P denominator              valid (fingerprinted) samples            all samples generated
Wasserstein and diversity      all valid samples                        `n_valid` valid samples, seeded draw
=============================  =======================================  ======================================

In both, a fingerprint failure makes a sample invalid, the Wasserstein distances compare against
every reference, and COV-R/COV-P take the structure and composition minima separately.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from crystext.constants import COVERAGE_CUTOFFS, NOVELTY_COMPOSITION_CUTOFF, NOVELTY_STRUCTURE_CUTOFF
from crystext.evaluate.coverage import coverage, mean_pairwise_distance
from crystext.evaluate.distributions import element_frequencies, total_variation, wasserstein
from crystext.evaluate.fingerprints import standardise
from crystext.evaluate.profiles import Profiles
from crystext.evaluate.sun import fingerprint_novelty

__all__ = ["PROTOCOLS", "Protocol", "ProtocolSettings", "Scores", "score"]

#: Valid samples CDVAE draws for the Wasserstein distances and diversities.
CDVAE_N_VALID = 1000


@dataclass(frozen=True)
class Protocol:
    """How one published evaluation counts: which samples and references enter which metric."""

    name: str
    description: str
    drop_unparsed: bool  # samples whose CIF fails are not counted at all
    fingerprint_invalid_samples: bool  # invalid samples get fingerprints and enter coverage
    valid_references_only: bool  # only valid references enter coverage
    precision_over_generated: bool  # COV-P divides by all samples generated
    draw_valid_samples: bool  # the Wasserstein distances and diversities use `n_valid` drawn valid samples


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "paper", "crystal-text-llm basic_eval.py (Gruver et al. 2024)",
            drop_unparsed=True, fingerprint_invalid_samples=False, valid_references_only=True,
            precision_over_generated=False, draw_valid_samples=False,
        ),
        Protocol(
            "cdvae", "CDVAE scripts/compute_metrics.py (Xie et al. 2022)",
            drop_unparsed=False, fingerprint_invalid_samples=True, valid_references_only=False,
            precision_over_generated=True, draw_valid_samples=True,
        ),
    )
}


@dataclass(frozen=True)
class ProtocolSettings:
    """The protocol and its numbers: coverage cut-offs (by dataset unless given), draws, novelty cut-offs."""

    protocol: str = "paper"
    dataset: str = "mp_20"
    struct_cutoff: float | None = None
    comp_cutoff: float | None = None
    joint_coverage: bool = False  # also report the stricter joint COV-R/COV-P
    n_valid: int = CDVAE_N_VALID
    seed: int = 0
    novelty_struct_cutoff: float = NOVELTY_STRUCTURE_CUTOFF
    novelty_comp_cutoff: float = NOVELTY_COMPOSITION_CUTOFF

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol '{self.protocol}' (known: {', '.join(PROTOCOLS)})")
        if self.n_valid < 1:
            raise ValueError(f"n_valid must be at least 1, got {self.n_valid}")
        for name in ("struct_cutoff", "comp_cutoff"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive distance, got {value}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.dataset not in COVERAGE_CUTOFFS and (self.struct_cutoff is None or self.comp_cutoff is None):
            raise ValueError(
                f"no published coverage cut-offs for dataset '{self.dataset}' (known: {', '.join(COVERAGE_CUTOFFS)}); "
                "give both cut-offs"
            )

    @property
    def rules(self) -> Protocol:
        return PROTOCOLS[self.protocol]

    @property
    def cutoffs(self) -> tuple[float, float]:
        """(structure, composition) coverage cut-offs."""
        default = COVERAGE_CUTOFFS.get(self.dataset, (math.nan, math.nan))
        struct = default[0] if self.struct_cutoff is None else self.struct_cutoff
        comp = default[1] if self.comp_cutoff is None else self.comp_cutoff
        return float(struct), float(comp)


@dataclass
class Scores:
    """What one protocol finds: the metrics, per-sample columns, the distributions behind them, and notes."""

    metrics: dict[str, Any]
    per_sample: pd.DataFrame
    distributions: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def valid_mask(profiles: Profiles) -> np.ndarray:
    """Valid as both reference codes define it: parsed, structurally and compositionally valid, fingerprinted."""
    t = profiles.table
    return (t["parsed"] & t["struct_valid"] & t["comp_valid"] & t["fp_ok"]).to_numpy(bool)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def score(samples: Profiles, reference: Profiles, settings: ProtocolSettings, train: Profiles | None = None) -> Scores:
    """Every fingerprint and distribution metric of one protocol, for profiled samples against profiled references."""
    rules = settings.rules
    notes: list[str] = []
    table = samples.table
    parsed = table["parsed"].to_numpy(bool)
    counted = parsed if rules.drop_unparsed else np.ones(len(table), bool)
    missing = counted & parsed & ~table["fingerprinted"].to_numpy(bool)
    if rules.fingerprint_invalid_samples and missing.any():
        raise ValueError(f"the {rules.name} protocol needs fingerprints of all samples; {missing.sum()} have none")
    valid = valid_mask(samples) & counted
    m: dict[str, Any] = {
        "n_samples": len(table), "n_unparsed": int((~parsed).sum()), "n_counted": int(counted.sum()),
        "n_valid": int(valid.sum()),
        "n_fingerprint_failures": int((counted & table["fingerprinted"].to_numpy(bool) & ~table["fp_ok"]).sum()),
        "struct_valid": _mean(table["struct_valid"].to_numpy(bool)[counted]),
        "comp_valid": _mean(table["comp_valid"].to_numpy(bool)[counted]),
        "valid": _mean(valid[counted]),
    }
    per_sample = pd.DataFrame({"counted": counted, "valid": valid})
    drawn = _distribution_samples(np.flatnonzero(valid), settings, notes)
    per_sample["in_distributions"] = np.isin(np.arange(len(table)), drawn)
    m["n_distribution_samples"] = len(drawn)
    in_coverage = counted & table["fp_ok"].to_numpy(bool) if rules.fingerprint_invalid_samples else valid
    found, columns, more = _coverage(samples, reference, in_coverage, int(counted.sum()), settings)
    m.update(found)
    per_sample = pd.concat([per_sample, columns], axis=1)
    notes += more
    distributions = _distributions(samples, drawn, reference, m)
    if train is not None:
        found, columns, more = fingerprint_novelty(
            samples, np.flatnonzero(valid), train, valid_mask(train),
            (settings.novelty_struct_cutoff, settings.novelty_comp_cutoff),
        )
        m.update(found)
        per_sample = pd.concat([per_sample, columns], axis=1)
        notes += more
    return Scores(m, per_sample, distributions, notes)


def _distribution_samples(valid_idx: np.ndarray, settings: ProtocolSettings, notes: list[str]) -> np.ndarray:
    """The valid samples the Wasserstein distances and diversities use: all, or (cdvae) `n_valid` drawn."""
    if not settings.rules.draw_valid_samples:
        return valid_idx
    if len(valid_idx) < settings.n_valid:
        notes.append(
            f"only {len(valid_idx)} valid samples, fewer than n_valid={settings.n_valid}: the distributions use "
            "all of them (CDVAE's script stops here)"
        )
        return valid_idx
    return np.sort(np.random.default_rng(settings.seed).choice(valid_idx, settings.n_valid, replace=False))


def _coverage(
    samples: Profiles, reference: Profiles, in_coverage: np.ndarray, n_generated: int, settings: ProtocolSettings
) -> tuple[dict[str, Any], pd.DataFrame, list[str]]:
    """COV-R/COV-P and AMSD/AMCD; each sample's nearest-reference distances and coverage; notes."""
    rules = settings.rules
    ref_parsed = reference.table["parsed"].to_numpy(bool)
    fingerprinted = ref_parsed & reference.table["fp_ok"].to_numpy(bool)
    ref_use = valid_mask(reference) if rules.valid_references_only else fingerprinted
    m: dict[str, Any] = {
        "n_reference": int(ref_parsed.sum()), "n_reference_unparsed": int((~ref_parsed).sum()),
        "n_reference_in_coverage": int(ref_use.sum()),
    }
    if rules.valid_references_only:
        m["reference_valid"] = _mean(ref_use[ref_parsed])
    struct_cut, comp_cut = settings.cutoffs
    m["struct_cutoff"], m["comp_cutoff"] = struct_cut, comp_cut
    n = len(in_coverage)
    columns = pd.DataFrame({
        "in_coverage": in_coverage, "nearest_ref_struct_dist": np.full(n, np.nan),
        "nearest_ref_comp_dist": np.full(n, np.nan), "covered": pd.array([pd.NA] * n, dtype="boolean"),
    })
    if settings.joint_coverage:
        columns["covered_joint"] = pd.array([pd.NA] * n, dtype="boolean")
    cov_idx = np.flatnonzero(in_coverage)
    if not len(cov_idx) or not ref_use.any():
        return m, columns, ["no fingerprinted samples or references: coverage is undefined"]
    cov = coverage(
        samples.struct_fp[cov_idx], standardise(samples.comp_fp[cov_idx]),
        reference.struct_fp[ref_use], standardise(reference.comp_fp[ref_use]),
        struct_cut, comp_cut, n_generated=n_generated if rules.precision_over_generated else None,
    )
    m.update(
        cov_recall=cov.cov_recall, cov_precision=cov.cov_precision, amsd_recall=cov.amsd_recall,
        amsd_precision=cov.amsd_precision, amcd_recall=cov.amcd_recall, amcd_precision=cov.amcd_precision,
    )
    columns.loc[cov_idx, "nearest_ref_struct_dist"] = cov.nearest.a_struct
    columns.loc[cov_idx, "nearest_ref_comp_dist"] = cov.nearest.a_comp
    columns.loc[cov_idx, "covered"] = cov.sample_covered
    if settings.joint_coverage:
        m.update(cov_recall_joint=cov.cov_recall_joint, cov_precision_joint=cov.cov_precision_joint)
        columns.loc[cov_idx, "covered_joint"] = cov.nearest.a_joint
    return m, columns, []


def _distributions(samples: Profiles, drawn: np.ndarray, reference: Profiles, m: dict[str, Any]) -> dict[str, Any]:
    """Distribution distances and diversities into `m`; the distributions themselves returned for the plots.

    The samples are the drawn valid ones; the references all that parsed (as both reference codes do).
    """
    rows = samples.table.iloc[drawn]
    ref_rows = reference.table[reference.table["parsed"]]
    m["wdist_density"] = wasserstein(rows["density"], ref_rows["density"])
    m["wdist_num_elems"] = wasserstein(rows["n_elements"], ref_rows["n_elements"])
    m["wdist_num_atoms"] = wasserstein(rows["n_atoms"], ref_rows["n_atoms"])
    sample_groups, ref_groups = Counter(rows["spacegroup"].tolist()), Counter(ref_rows["spacegroup"].tolist())
    sample_elements, ref_elements = element_frequencies(rows["elements"]), element_frequencies(ref_rows["elements"])
    m["tvd_spacegroup"] = total_variation(sample_groups, ref_groups)
    m["tvd_elements"] = total_variation(sample_elements, ref_elements)
    m["struct_div"] = mean_pairwise_distance(samples.struct_fp[drawn])
    m["comp_div"] = mean_pairwise_distance(standardise(samples.comp_fp[drawn]))
    return {
        "density": (rows["density"].tolist(), ref_rows["density"].tolist()),
        "n_elements": (rows["n_elements"].tolist(), ref_rows["n_elements"].tolist()),
        "n_atoms": (rows["n_atoms"].tolist(), ref_rows["n_atoms"].tolist()),
        "spacegroup": (dict(sample_groups), dict(ref_groups)),
        "elements": (dict(sample_elements), dict(ref_elements)),
        "n_structures": (len(rows), len(ref_rows)),
    }
