"""Distances between property distributions of samples and references.

- The paper's two: the Wasserstein distance of density (g/cm^3) and of the number of elements.
- Beyond it, with the same Wasserstein distance: atoms per cell; and the total variation distance
  (half the L1 distance between normalised histograms: 0 same, 1 disjoint) of space groups and of
  element frequencies.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy.stats import wasserstein_distance

__all__ = ["element_frequencies", "total_variation", "wasserstein"]


def wasserstein(samples: Sequence[float], reference: Sequence[float]) -> float:
    """The 1-D Wasserstein (earth mover's) distance of two empirical distributions; NaN when either is empty."""
    a = np.asarray(samples, dtype=float)
    b = np.asarray(reference, dtype=float)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return float(wasserstein_distance(a, b)) if len(a) and len(b) else math.nan


def total_variation(samples: Counter[Any], reference: Counter[Any]) -> float:
    """Total variation distance between two histograms (each normalised to sum 1); NaN when either is empty."""
    n_a, n_b = sum(samples.values()), sum(reference.values())
    if not n_a or not n_b:
        return math.nan
    return 0.5 * sum(abs(samples[k] / n_a - reference[k] / n_b) for k in set(samples) | set(reference))


def element_frequencies(element_lists: Iterable[str]) -> Counter[str]:
    """How many structures contain each element (input: space-separated element symbols per structure)."""
    counts: Counter[str] = Counter()
    for elements in element_lists:
        counts.update(set(elements.split()))
    return counts
