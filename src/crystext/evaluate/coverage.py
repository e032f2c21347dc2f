"""Fingerprint-space metrics: COV-R/COV-P with AMSD/AMCD, fingerprint novelty, and diversity.

COV-R is the fraction of reference structures with a sample nearby, COV-P the fraction of samples
with a reference nearby, "nearby" meaning within the structure cut-off in structure-fingerprint
space and within the composition cut-off in (standardised) composition-fingerprint space. Both
reference codes take the two nearest neighbours separately, so they may be two different
structures; the joint variant asks for one structure within both cut-offs.
All distances are Euclidean and computed in blocks, so 10,000 x 10,000 sets fit in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import cdist

__all__ = ["Coverage", "Nearest", "coverage", "mean_pairwise_distance", "nearest"]

#: Rows of the distance matrices computed at once (memory: BLOCK x other set x 8 bytes, twice).
BLOCK = 1024


@dataclass
class Nearest:
    """Nearest-neighbour distances between sets A and B in both fingerprint spaces.

    `a_*`: for each member of A, the distance to its nearest member of B; `b_*` the other way.
    `a_joint` / `b_joint`: whether one single member of the other set is within both cut-offs.
    """

    a_struct: np.ndarray
    a_comp: np.ndarray
    b_struct: np.ndarray
    b_comp: np.ndarray
    a_joint: np.ndarray
    b_joint: np.ndarray


def nearest(
    a_struct: np.ndarray,
    a_comp: np.ndarray,
    b_struct: np.ndarray,
    b_comp: np.ndarray,
    struct_cutoff: float,
    comp_cutoff: float,
) -> Nearest:
    """Nearest-neighbour distances both ways between two fingerprinted sets (composition fingerprints standardised)."""
    n, m = len(a_struct), len(b_struct)
    if n == 0 or m == 0:
        raise ValueError(f"nearest neighbours need two non-empty sets, got {n} and {m} fingerprints")
    found = Nearest(
        np.empty(n), np.empty(n), np.full(m, np.inf), np.full(m, np.inf), np.zeros(n, bool), np.zeros(m, bool)
    )
    for start in range(0, n, BLOCK):
        rows = slice(start, start + BLOCK)
        d_struct = cdist(a_struct[rows], b_struct)
        d_comp = cdist(a_comp[rows], b_comp)
        found.a_struct[rows] = d_struct.min(axis=1)
        found.a_comp[rows] = d_comp.min(axis=1)
        np.minimum(found.b_struct, d_struct.min(axis=0), out=found.b_struct)
        np.minimum(found.b_comp, d_comp.min(axis=0), out=found.b_comp)
        both = (d_struct <= struct_cutoff) & (d_comp <= comp_cutoff)
        found.a_joint[rows] = both.any(axis=1)
        found.b_joint |= both.any(axis=0)
    return found


@dataclass
class Coverage:
    """COV-R, COV-P and the mean minimum distances, plus the per-sample and per-reference details."""

    cov_recall: float
    cov_precision: float
    amsd_recall: float
    amsd_precision: float
    amcd_recall: float
    amcd_precision: float
    cov_recall_joint: float
    cov_precision_joint: float
    sample_covered: np.ndarray
    reference_recalled: np.ndarray
    nearest: Nearest


def coverage(
    sample_struct: np.ndarray,
    sample_comp: np.ndarray,
    ref_struct: np.ndarray,
    ref_comp: np.ndarray,
    struct_cutoff: float,
    comp_cutoff: float,
    n_generated: int | None = None,
) -> Coverage:
    """Coverage of a reference set by fingerprinted samples (composition fingerprints standardised).

    COV-P counts the covered samples and divides by `n_generated` when given (CDVAE divides by all
    samples generated), else by the number of samples passed (crystal-text-llm).
    """
    near = nearest(sample_struct, sample_comp, ref_struct, ref_comp, struct_cutoff, comp_cutoff)
    covered = (near.a_struct <= struct_cutoff) & (near.a_comp <= comp_cutoff)
    recalled = (near.b_struct <= struct_cutoff) & (near.b_comp <= comp_cutoff)
    denominator = len(covered) if n_generated is None else n_generated
    return Coverage(
        cov_recall=float(recalled.mean()),
        cov_precision=float(covered.sum() / denominator),
        amsd_recall=float(near.b_struct.mean()),
        amsd_precision=float(near.a_struct.mean()),
        amcd_recall=float(near.b_comp.mean()),
        amcd_precision=float(near.a_comp.mean()),
        cov_recall_joint=float(near.b_joint.mean()),
        cov_precision_joint=float(near.a_joint.sum() / denominator),
        sample_covered=covered,
        reference_recalled=recalled,
        nearest=near,
    )


def mean_pairwise_distance(fingerprints: np.ndarray) -> float:
    """Mean Euclidean distance over all distinct pairs (the reference codes' diversity); NaN below two."""
    n = len(fingerprints)
    if n < 2:
        return math.nan
    total = 0.0
    for start in range(0, n, BLOCK):
        block = cdist(fingerprints[start:start + BLOCK], fingerprints[start:])
        # Keep only pairs (i, j) with j > i: in row r of this block, i = start + r, so columns > r.
        total += float(np.triu(block, k=1).sum())
    return total / (n * (n - 1) / 2)
