"""The two CDVAE fingerprints, computed as crystal-text-llm and CDVAE compute them, under a time limit.

- Structure: the mean over sites of matminer's `CrystalNNFingerprint.from_preset("ops")` (61 numbers).
- Composition: matminer's `ElementProperty.from_preset("magpie")` (132 numbers), raw here and
  standardised with CDVAE's published means and standard deviations by `standardise` (NaN -> 0).

matminer >= 0.9 fills missing element data with averages by default; the published protocol
predates that and left them NaN (then 0 after standardising), so imputation is switched off.
A fingerprint that raises or runs past its time limit is a fingerprint failure.
"""

from __future__ import annotations

import signal
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from pymatgen.core import Composition, Structure

from crystext.constants import SPACEGROUP_SYMPREC
from crystext.evaluate.cdvae_constants import COMPOSITION_MEANS, COMPOSITION_STDS

__all__ = [
    "FingerprintFailure",
    "FingerprintSettings",
    "composition_fingerprint",
    "describe",
    "standardise",
    "structure_fingerprint",
    "warm_up",
]

#: Length of the structure fingerprint (CrystalNN "ops" preset) and of the composition one (magpie).
STRUCTURE_FP_SIZE = 61
COMPOSITION_FP_SIZE = 132
#: The time limit the paper put on fingerprinting (seconds).
PAPER_FINGERPRINT_TIME_LIMIT = 5.0

_MEANS = np.asarray(COMPOSITION_MEANS, dtype=float)
_STDS = np.asarray(COMPOSITION_STDS, dtype=float)


@dataclass(frozen=True)
class FingerprintSettings:
    """What changes a structure's profile: the fingerprint time limit and the space-group tolerance.

    `time_limit` is CPU seconds per structure (None: no limit). CPU time rather than wall time, so
    that a busy machine does not turn slow structures into failures.
    """

    time_limit: float | None = PAPER_FINGERPRINT_TIME_LIMIT
    symprec: float = SPACEGROUP_SYMPREC

    def __post_init__(self) -> None:
        if self.time_limit is not None and not self.time_limit > 0:
            raise ValueError(f"time_limit must be positive or None, got {self.time_limit}")
        if not self.symprec > 0:
            raise ValueError(f"symprec must be positive, got {self.symprec}")


class FingerprintFailure(Exception):
    """A fingerprint that could not be computed (it raised, or ran past the time limit)."""


_FEATURIZERS: dict[str, Any] = {}


def _featurizer(name: str) -> Any:
    """The matminer featurizers, built once per process."""
    if not _FEATURIZERS:
        from matminer.featurizers.composition.composite import ElementProperty
        from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

        _FEATURIZERS["structure"] = CrystalNNFingerprint.from_preset("ops")
        _FEATURIZERS["composition"] = ElementProperty.from_preset("magpie", impute_nan=False)
    return _FEATURIZERS[name]


def warm_up() -> None:
    """Build the featurizers and fingerprint one small crystal, so that one-off loading is not timed later."""
    from pymatgen.core import Lattice

    rock_salt = Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    composition_fingerprint(rock_salt.composition)
    structure_fingerprint(rock_salt)


def composition_fingerprint(composition: Composition) -> np.ndarray:
    """The raw magpie fingerprint (132 numbers, NaN where matminer has no element data)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(_featurizer("composition").featurize(composition), dtype=float)


def _out_of_time(signum: int, frame: Any) -> None:
    raise TimeoutError


def structure_fingerprint(structure: Structure, time_limit: float | None = None) -> np.ndarray:
    """The mean CrystalNN "ops" site fingerprint; raises FingerprintFailure when it fails or runs out of time.

    The limit is enforced with a CPU-time timer (SIGPROF), so it applies only in a main thread.
    """
    use_timer = time_limit is not None and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGPROF, _out_of_time) if use_timer else None
    try:
        if use_timer:
            signal.setitimer(signal.ITIMER_PROF, time_limit)
        featurizer = _featurizer("structure")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sites = [featurizer.featurize(structure, i) for i in range(len(structure))]
        return np.asarray(sites, dtype=float).mean(axis=0)
    except TimeoutError:
        raise FingerprintFailure(f"structure fingerprint took more than {time_limit:g} s of CPU time") from None
    except Exception as err:  # matminer raises many kinds on odd environments
        raise FingerprintFailure(f"structure fingerprint failed ({describe(err)})") from None
    finally:
        if use_timer:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, previous)


def describe(err: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def standardise(composition_fps: np.ndarray) -> np.ndarray:
    """CDVAE's CompScaler: (x - mean) / std with the published constants, NaN -> 0."""
    scaled = (np.asarray(composition_fps, dtype=float) - _MEANS) / _STDS
    return np.where(np.isnan(scaled), 0.0, scaled)
