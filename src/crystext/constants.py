"""Numbers from the paper (Gruver et al., ICLR 2024) and the CDVAE protocol it evaluates with.

Every threshold the pipeline uses is named here once, so a reader can check them against the papers.
"""

from __future__ import annotations

#: Structural validity: the smallest interatomic distance must be at least this (Angstrom).
MIN_INTERATOMIC_DISTANCE = 0.5
#: Structural validity: the cell volume must be at least this (Angstrom^3).
MIN_CELL_VOLUME = 0.1

#: Forced composition: the cell's volume over the volume its atoms' elements predict (the fitted table
#: src/crystext/element_volumes.json) that a number of formula units may give, so that number fits the cell the
#: model wrote. Not from the paper: the 0.5th and 99.5th percentiles of that ratio over MP-20 test (0.743, 1.610;
#: recipes/element_volumes.py prints them), rounded outward.
MIN_VOLUME_RATIO = 0.74
MAX_VOLUME_RATIO = 1.62
#: Forced composition, for an atom of an element the table lacks: the volume per atom (A^3) it may take. Not from
#: the paper: the 0.5th and 99.5th percentiles of MP-20 train (8.84, 56.78; the 1,847-row train.csv here), rounded
#: outward.
MIN_VOLUME_PER_ATOM = 8.8
MAX_VOLUME_PER_ATOM = 56.8

#: Metastable: energy above the convex hull below this (eV/atom), after relaxation.
METASTABLE_E_HULL = 0.1
#: Stable: energy above the convex hull below this (eV/atom).
STABLE_E_HULL = 0.0
#: A relaxed crystal with a formation energy below this (eV/atom) has left the potential's domain, not found a
#: record; it counts as an error, neither metastable nor stable. Not from the paper: every one of the 132,752
#: Materials Project formation energies in matbench's mp_e_form is above -4.61 (La2Th8O19).
MIN_FORMATION_ENERGY = -5.0

#: Space groups (reported, and matched against a requested one): spglib's tolerance (Angstrom), as CDVAE's
#: evaluation and the paper's space-group statistics use.
SPACEGROUP_SYMPREC = 0.1

#: COV-R / COV-P cut-offs per dataset: (structure fingerprint, composition fingerprint).
COVERAGE_CUTOFFS: dict[str, tuple[float, float]] = {
    "mp_20": (0.4, 10.0),
    "perov_5": (0.2, 4.0),
    "carbon_24": (0.2, 4.0),
}

#: Novelty in the paper's protocol: farther than these from every training structure.
NOVELTY_STRUCTURE_CUTOFF = 0.1
NOVELTY_COMPOSITION_CUTOFF = 2.0

#: Sampling settings the paper reports.
PAPER_TEMPERATURES = (0.7, 1.0)
PAPER_TOP_P = 0.9

#: LoRA defaults the paper used.
LORA_RANK = 8
LORA_ALPHA = 32
LORA_DROPOUT = 0.05
