"""Post-training toward stable crystals: rounds of sample -> score -> pair -> DPO (see `crystext.tune.rounds`).

The names here are what a user drives a run with; the round's parts (rewards' features, pairing helpers) stay in
`crystext.tune.rounds`.
"""

from __future__ import annotations

from crystext.tune.rounds import (
    RewardConfig,
    Scorer,
    StabilityScorer,
    TuneConfig,
    TuneError,
    preference_pairs,
    read_rounds,
    tune,
    update_model,
)

__all__ = [
    "RewardConfig",
    "Scorer",
    "StabilityScorer",
    "TuneConfig",
    "TuneError",
    "preference_pairs",
    "read_rounds",
    "tune",
    "update_model",
]
