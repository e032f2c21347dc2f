"""Post-training toward stable crystals: rounds of sample -> score -> pair -> DPO (see `crystext.tune.rounds`)."""

from __future__ import annotations

from crystext.tune.rounds import (
    ROUND_FILES,
    RewardConfig,
    Scorer,
    StabilityScorer,
    TuneConfig,
    TuneError,
    preference_pairs,
    read_rounds,
    round_line,
    run_round,
    tune,
    update_model,
)

__all__ = [
    "ROUND_FILES",
    "RewardConfig",
    "Scorer",
    "StabilityScorer",
    "TuneConfig",
    "TuneError",
    "preference_pairs",
    "read_rounds",
    "round_line",
    "run_round",
    "tune",
    "update_model",
]
