"""Post-training toward stable crystals: rounds of sample -> score -> pair -> DPO (see `crystext.tune.rounds`)."""

from __future__ import annotations

from crystext.tune.rounds import (
    BALANCE_FEATURES,
    MAX_EXCESS,
    ROUND_FILES,
    RewardConfig,
    Scorer,
    StabilityScorer,
    TuneConfig,
    TuneError,
    feature_shares,
    feature_values,
    over_representation,
    preference_pairs,
    read_rounds,
    round_line,
    run_round,
    tune,
    update_model,
    written_sites,
)

__all__ = [
    "BALANCE_FEATURES",
    "MAX_EXCESS",
    "ROUND_FILES",
    "RewardConfig",
    "Scorer",
    "StabilityScorer",
    "TuneConfig",
    "TuneError",
    "feature_shares",
    "feature_values",
    "over_representation",
    "preference_pairs",
    "read_rounds",
    "round_line",
    "run_round",
    "tune",
    "update_model",
    "written_sites",
]
