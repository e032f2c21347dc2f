"""The `crystext tune` subcommand: post-train a model toward stable, new, valid crystals in rounds."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crystext.constants import COVERAGE_CUTOFFS
from crystext.errors import flag_message, option_flags
from crystext.sample import SampleConfig
from crystext.stability import cli as stability_cli
from crystext.tune.rounds import (
    INVALID_MARGIN,
    REPEAT_SCOPES,
    RewardConfig,
    StabilityScorer,
    TuneConfig,
    TuneError,
    tune,
)

__all__ = ["HELP", "add_arguments", "run"]

HELP = "post-train a model toward stable crystals: rounds of sample, relax and score, then DPO"
#: Settings fields and the flags that set them, to name the flag when a setting is refused.
_FLAGS = option_flags(("rounds", "attempts", "probe", "prompted", "min_margin", "pair_size_bin", "beta",
                       "learning_rate", "epochs", "sft_weight", "data_weight", "temperature", "top_p", "max_atoms",
                       "min_distance", "seed", "hull_cap", "repeat_penalty", "repeat_scope", "known_penalty",
                       "balance_weight", "crowding_weight", "crowding_cutoff", "invalid"),
                      batch_size="--update-batch", group="--prompt-group")

_CUTOFFS = ", ".join(f"{name} {cutoffs[0]:g}" for name, cutoffs in COVERAGE_CUTOFFS.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `crystext tune --train FILE... --out DIR`."""
    parser.add_argument("--model", type=Path, help="a `crystext train` directory to start from (default: the shipped "
                        "model)")
    parser.add_argument("--out", type=Path, required=True,
                        help="run folder: round_001/, round_002/, ... (samples, scores, pairs, model, metrics), "
                        "tune.json and report.html; the last round's model/ is the tuned model")
    parser.add_argument("--train", type=Path, nargs="+", required=True,
                        help="the structures the model learnt from (e.g. MP-20 train.csv val.csv): a crystal that "
                        "matches one is not new, and earns less")
    parser.add_argument("--resume", action="store_true", help="continue a killed run where it stopped")
    rounds = parser.add_argument_group("rounds")
    rounds.add_argument("--rounds", type=int, default=TuneConfig.rounds)
    rounds.add_argument("--attempts", type=int, default=TuneConfig.attempts, help="attempts sampled per round")
    rounds.add_argument("--probe", type=int, default=TuneConfig.probe,
                        help="further attempts sampled per round and never relaxed: a crystal one of them also writes "
                        "pays the repeat penalty, so repeats are seen as a large evaluation sees them (0: none)")
    rounds.add_argument("--prompted", type=float, default=TuneConfig.prompted,
                        help="share of each round's attempts whose prompt states the formula of a --train crystal "
                        "drawn for the round (an attempt that writes another earns what an invalid one does; 0: none)")
    rounds.add_argument("--prompt-group", type=int, default=TuneConfig.group,
                        help="attempts per stated formula, paired with each other")
    rounds.add_argument("--temperature", type=float, default=SampleConfig.temperature)
    rounds.add_argument("--top-p", type=float, default=SampleConfig.top_p)
    rounds.add_argument("--max-atoms", type=int, default=SampleConfig.max_atoms)
    rounds.add_argument("--sample-batch", type=int, help="sampling batch (default: what memory allows)")
    rounds.add_argument("--min-distance", type=float, default=SampleConfig.min_distance,
                        help="keep each new atom this far (A) from the others while sampling (0: off, so the model "
                        "itself is taught to keep atoms apart)")
    rounds.add_argument("--no-constraint", action="store_true",
                        help="sample without the grammar constraint (the model alone is tuned toward valid text)")
    rounds.add_argument("--seed", type=int, default=TuneConfig.seed)
    update = parser.add_argument_group("update (trl's DPO)")
    update.add_argument("--beta", type=float, default=TuneConfig.beta,
                        help="pull toward the round's starting model (higher: smaller steps)")
    update.add_argument("--learning-rate", type=float, default=TuneConfig.learning_rate)
    update.add_argument("--epochs", type=int, default=TuneConfig.epochs, help="passes over a round's pairs")
    update.add_argument("--update-batch", type=int, default=TuneConfig.batch_size,
                        help="pairs per optimizer step (and --train crystals, with --data-weight)")
    update.add_argument("--min-margin", type=float, default=TuneConfig.min_margin,
                        help="smallest reward gap of a pair (eV/atom scale)")
    update.add_argument("--pair-size-bin", type=int, default=TuneConfig.pair_size_bin,
                        help="pair only attempts whose cells list sites in one bin of this width, so pairs do not "
                        "teach that small cells are better (0: any two)")
    update.add_argument("--reference", choices=("round", "start"), default=TuneConfig.reference,
                        help="DPO's reference: each round's starting model (drift adds up over rounds), or the run's")
    update.add_argument("--sft-weight", type=float, default=TuneConfig.sft_weight,
                        help="weight of the chosen crystals' likelihood beside the DPO loss (0: DPO only)")
    update.add_argument("--data-weight", type=float, default=TuneConfig.data_weight,
                        help="weight of --train crystals' likelihood beside the DPO loss, as the model's training "
                        "wrote them: keeps the model writing the variety it learnt (0: DPO only)")
    reward = parser.add_argument_group("reward: minus the relaxed energy above hull, less penalties")
    reward.add_argument("--hull-cap", type=float, default=RewardConfig.hull_cap,
                        help="eV/atom above hull beyond which a crystal is no worse")
    reward.add_argument("--repeat-penalty", type=float, default=RewardConfig.repeat_penalty,
                        help="for a crystal that matches an earlier one of its round (or run: --repeat-scope)")
    reward.add_argument("--repeat-scope", choices=REPEAT_SCOPES, default=RewardConfig.repeat_scope,
                        help="what a repeat is: a match among its round's crystals, or among every round's so far "
                        "(so a crystal written round after round stops paying)")
    reward.add_argument("--known-penalty", type=float, default=RewardConfig.known_penalty,
                        help="for a crystal that matches a --train structure")
    reward.add_argument("--balance-weight", type=float, default=RewardConfig.balance_weight,
                        help="for a crystal whose cell size or elements the round over-represents against --train: "
                        "this times the log share ratio (0: off)")
    reward.add_argument("--crowding-weight", type=float, default=RewardConfig.crowding_weight,
                        help="for a crystal whose neighbourhood in structure-fingerprint space (COV-R's cut-off) the "
                        "round and probe crowd more than --train crystals do: this times the log density ratio "
                        "(0: off)")
    reward.add_argument("--crowding-cutoff", type=float, default=RewardConfig.crowding_cutoff,
                        help="the structure-fingerprint distance within which crystals crowd one another: COV-R's "
                        f"cut-off for the data set (default: mp_20's; {_CUTOFFS})")
    reward.add_argument("--invalid", type=float,
                        help="the reward of an attempt with no valid crystal, below every valid one (default: "
                        f"{INVALID_MARGIN:g} below the least a valid crystal can earn under the weights given)")
    stability_cli.add_relax_arguments(parser)
    stability_cli.add_hull_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run `crystext tune`: every setting checked first, then the rounds; prints where the tuned model is."""
    if args.sample_batch is not None and args.sample_batch < 1:
        raise TuneError(f"--sample-batch must be at least 1, got {args.sample_batch}")
    try:
        reward = RewardConfig(hull_cap=args.hull_cap, repeat_penalty=args.repeat_penalty,
                              repeat_scope=args.repeat_scope, known_penalty=args.known_penalty,
                              balance_weight=args.balance_weight, crowding_weight=args.crowding_weight,
                              crowding_cutoff=args.crowding_cutoff, invalid=args.invalid)
        sample = SampleConfig(temperature=args.temperature, top_p=args.top_p, max_atoms=args.max_atoms,
                              batch_size=args.sample_batch, min_distance=args.min_distance or None,
                              constrained=not args.no_constraint)
        config = TuneConfig(out=args.out, model=args.model, rounds=args.rounds, attempts=args.attempts,
                            probe=args.probe, prompted=args.prompted, group=args.prompt_group, sample=sample,
                            min_margin=args.min_margin, beta=args.beta, learning_rate=args.learning_rate,
                            epochs=args.epochs, batch_size=args.update_batch, sft_weight=args.sft_weight,
                            data_weight=args.data_weight,
                            pair_size_bin=args.pair_size_bin, reference=args.reference,
                            seed=args.seed)
    except ValueError as err:
        raise TuneError(flag_message(err, _FLAGS)) from None
    stability = stability_cli.stability_config(args, resume=False)
    stability_cli.check_paths(args, ("hull_data", "entries", "formation_energies", "elemental_refs", "fill", "train"))
    if args.model is not None and not args.model.is_dir():
        raise TuneError(f"--model {args.model}: no such model directory")
    training = stability_cli.training_structures(args.train)
    scorer = StabilityScorer(stability_cli.hull_reference(args), training, stability, reward)
    model = tune(config, scorer, resume=args.resume, training=training.records)
    print(f"tuned model: {model}; rounds' metrics in {args.out}/round_*/metrics.json, plots in "
          f"{args.out}/report.html", file=sys.stderr)
    return 0
