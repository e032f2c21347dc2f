"""Stability of generated crystals: relax with a machine-learned potential, then energy above the MP hull.

The paper's headline number is the metastable rate, the fraction of samples less than 0.1 eV/atom
above the Materials Project convex hull after relaxation (stable: below 0.0). `relax` holds the
potentials, `hull` the references, `pipeline` the run over many samples, `cli` the `crystext stability`
command line (not imported by the library).
"""

from __future__ import annotations

from crystext.stability.errors import StabilityError
from crystext.stability.hull import (
    HullError,
    HullPoint,
    HullReference,
    MPApiReference,
    PhaseTable,
    default_reference,
    from_entries,
    from_formation_energies,
    shipped_reference,
)
from crystext.stability.pipeline import (
    OUTPUT_COLUMNS,
    StabilityConfig,
    place,
    read_rows,
    read_samples,
    relax_and_place,
    summary_path,
)
from crystext.stability.relax import (
    BACKENDS,
    Backend,
    BackendError,
    Relaxation,
    RelaxConfig,
    check_structure,
    load_backend,
    mp2020_energy,
    too_dense,
)

__all__ = [
    "BACKENDS",
    "OUTPUT_COLUMNS",
    "Backend",
    "BackendError",
    "HullError",
    "HullPoint",
    "HullReference",
    "MPApiReference",
    "PhaseTable",
    "RelaxConfig",
    "Relaxation",
    "StabilityConfig",
    "StabilityError",
    "check_structure",
    "default_reference",
    "from_entries",
    "from_formation_energies",
    "load_backend",
    "mp2020_energy",
    "place",
    "read_rows",
    "read_samples",
    "relax_and_place",
    "shipped_reference",
    "summary_path",
    "too_dense",
]
