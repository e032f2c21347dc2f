"""Post-training toward stable crystals: rounds of sample -> score -> pair -> preference update.

A round: the current model samples a fixed number of attempts with the usual sampler (unprompted, or some of them
prompted with a training crystal's formula); a `Scorer` gives every
attempt a reward (`StabilityScorer`: validity, energy above hull after relaxation, uniqueness in the round,
novelty against the training set); attempts of one prompt are paired best with worst; trl's `DPOTrainer`
moves the model toward the better of each pair, against the round's starting model (or the run's) as its
reference. Every round keeps its folder: samples.csv, scores.csv, pairs.jsonl, model/ and metrics.json, the last
written when the round is done, so a killed run resumes at the first round without it.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from crystext.constants import COVERAGE_CUTOFFS, METASTABLE_E_HULL
from crystext.errors import CrystextError
from crystext.files import write_atomic
from crystext.prompts import Attributes, cell_formula
from crystext.report import TUNE_RATES, tune_report
from crystext.sample import SampleConfig, Sampler
from crystext.stability import HullReference, StabilityConfig, read_rows, relax_and_place
from crystext.textformat import ELEMENT_SYMBOLS, CrystalText, element_line_symbol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from crystext.data import Record
    from crystext.train import Batches

#: The heading of the part of a model card that `crystext tune` writes (an earlier one is replaced, not repeated).
TUNED_HEADING = "## Post-training (crystext tune)"
#: A round's sampling seed is seed * ROUND_SEED_STRIDE + its number (its probe's: ROUND_SEED_STRIDE // 2 more), so
#: rounds and probes never repeat each other's draws.
ROUND_SEED_STRIDE = 1000
#: The random stream (beside a round's seed) that draws the training crystals its update mixes in.
DATA_STREAM = 1


class TuneError(CrystextError):
    """A tuning run that cannot start or continue (settings, or an output folder from another run)."""


#: The crystal features whose over-representation in a round, against the training set, costs reward: the number of
#: sites in the cell, and the elements it holds (the most over-represented of them).
BALANCE_FEATURES = ("sites", "elements")
#: An over-represented value's log share ratio (round over training) counts up to this: about 7 times the share.
MAX_EXCESS = 2.0
#: What a crystal's repeat penalty compares it with: the earlier crystals of its round, or of its whole run.
REPEAT_SCOPES = ("round", "run")
#: Crowding (`RewardConfig.crowding_weight`) counts the crystals within COV-R's structure cut-off of a crystal (MP-20's
#: unless told otherwise), the coverage tuning must keep, among the training crystals of a seeded draw of this many
#: (CrystalNN takes about 0.1 s a crystal; the draw's fingerprints are cached on disk).
CROWDING_CUTOFF = COVERAGE_CUTOFFS["mp_20"][0]
CROWDING_REFERENCE = 1000
#: Unless told otherwise, an attempt with no valid crystal earns this much less than the least a valid one can.
INVALID_MARGIN = 0.5


@dataclass(frozen=True)
class RewardConfig:
    """How `StabilityScorer` turns an attempt into a reward (higher is better; eV/atom scale).

    A valid crystal earns minus its energy above hull (capped), less a penalty if it repeats an earlier crystal of
    its round (`repeat_scope` "run": of its run, earlier rounds included) or matches a training crystal, so the
    model cannot win by writing one stable crystal again and again; and less `balance_weight` times how
    over-represented its cell size and its elements are in the round against the training set
    (`over_representation`), so it cannot win by writing one kind of stable crystal either (left alone, it learns
    to write 4-atom gold intermetallics: benchmarks/results/tune_pilot.md). An attempt with no valid crystal, or
    whose relaxation failed, earns `invalid`, below any valid one.
    """

    hull_cap: float = 1.0  # eV/atom: an energy above hull beyond this counts as this
    repeat_penalty: float = 0.5
    # What a repeat is measured against: "round", the earlier crystals of its round; "run", those of every round so
    # far, so a crystal the model keeps writing round after round stops paying (a round of a few hundred attempts
    # sees few repeats, a 1,000-sample evaluation many)
    repeat_scope: str = "round"
    known_penalty: float = 0.5
    # Per feature of BALANCE_FEATURES, times its log share ratio (0 to MAX_EXCESS). Off by default: at 0.5 it kept
    # the crystals diverse but steered the model to kinds it writes badly (benchmarks/results/tune_balanced.md);
    # anchoring to the starting model and pairing like with like kept the diversity instead (tune_anchored.md).
    balance_weight: float = 0.0
    # Times the crystal's `crowding` (0 to MAX_EXCESS): how much more the model's crystals crowd its neighbourhood in
    # structure-fingerprint space than the training crystals do. Every tuned model lost COV-R with its local
    # environments narrowing (one prototype written with many compositions) while cell sizes and elements held
    # (benchmarks/results/tune_prompted.md); this charges exactly that. 0: off
    crowding_weight: float = 0.0
    crowding_cutoff: float = CROWDING_CUTOFF  # structure-fingerprint distance: COV-R's cut-off for the data set
    # None: INVALID_MARGIN below `lowest_valid` (-2.5 with the default weights), resolved when made, so
    # `dataclasses.replace` of other weights keeps this number: build a new RewardConfig instead
    invalid: float | None = None

    def __post_init__(self) -> None:
        if not min(self.hull_cap, self.repeat_penalty, self.known_penalty, self.balance_weight,
                   self.crowding_weight) >= 0:
            raise ValueError("hull_cap, repeat_penalty, known_penalty, balance_weight and crowding_weight must be "
                             ">= 0")
        if not self.crowding_cutoff > 0:
            raise ValueError(f"crowding_cutoff must be positive, got {self.crowding_cutoff}")
        if self.invalid is None:
            object.__setattr__(self, "invalid", self.lowest_valid - INVALID_MARGIN)
        if self.repeat_scope not in REPEAT_SCOPES:
            raise ValueError(f"repeat_scope must be one of {', '.join(REPEAT_SCOPES)}, got {self.repeat_scope!r}")
        if not self.invalid < self.lowest_valid:
            raise ValueError(f"invalid ({self.invalid}) must be below every valid crystal's reward "
                             f"({self.lowest_valid:g})")

    @property
    def lowest_valid(self) -> float:
        """The least a valid, relaxed crystal can earn."""
        return -(self.hull_cap + self.repeat_penalty + self.known_penalty
                 + (self.balance_weight * len(BALANCE_FEATURES) + self.crowding_weight) * MAX_EXCESS)

    def reward(self, e_above_hull: float, unique: bool, novel: bool, excess: float = 0.0,
               crowded: float = 0.0) -> float:
        """The reward of a valid crystal (`excess`: its features' summed `over_representation`; `crowded`: its
        `crowding`); NaN energy (no relaxation) earns `invalid`."""
        if not math.isfinite(e_above_hull):
            return self.invalid
        return (-min(max(e_above_hull, 0.0), self.hull_cap) - (0 if unique else self.repeat_penalty)
                - (0 if novel else self.known_penalty) - self.balance_weight * excess
                - self.crowding_weight * crowded)


def crowding(model: np.ndarray, training: np.ndarray, cutoff: float) -> np.ndarray:
    """Per row of `model` (structure fingerprints of the model's crystals): the log ratio of the share of `model`'s
    rows within `cutoff` of it (itself included) to the share of `training`'s (at least one row's share), from 0 (no
    more crowded than the training set there) to MAX_EXCESS."""
    from scipy.spatial.distance import cdist

    near_model = (cdist(model, model) <= cutoff).mean(axis=1)
    near_training = np.maximum((cdist(model, training) <= cutoff).mean(axis=1), 1 / len(training))
    return np.clip(np.log(near_model / near_training), 0.0, MAX_EXCESS)


def structure_fingerprints(structures: Sequence[Structure], desc: str = "fingerprints", *, jobs: int = 1,
                           progress: bool = False, cache: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The structure fingerprints (COV-R's, profiled as `crystext evaluate` profiles) of the crystals it could compute,
    and whether it could, per crystal; `cache`: keep them on disk (for a set that every run profiles again)."""
    from crystext.data import Dataset, Record
    from crystext.evaluate.profiles import profile_dataset

    profiles = profile_dataset(Dataset([Record(str(i), s) for i, s in enumerate(structures)]), jobs=jobs,
                               progress=progress, desc=desc, cache=cache)
    found = profiles.column("fp_ok")
    return profiles.struct_fp[found], found


def feature_values(structure: Structure) -> dict[str, list[object]]:
    """The values of each of BALANCE_FEATURES a crystal has: its site count, its elements."""
    return {"sites": [len(structure)], "elements": sorted(e.symbol for e in structure.composition.elements)}


def feature_shares(values: Sequence[Sequence[object]]) -> dict[object, float]:
    """The fraction of crystals that have each value (one list of values per crystal)."""
    counts = Counter(v for crystal in values for v in set(crystal))
    return {v: n / len(values) for v, n in counts.items()} if values else {}


def over_representation(values: Sequence[Sequence[object]], training: Mapping[object, float],
                        n_training: int) -> list[float]:
    """Per crystal: the largest log ratio, over its values, of the value's share in `values` (the round's crystals)
    to its share in training (`feature_shares`; a value training lacks counts as one crystal's share), from 0 (not
    over-represented) to MAX_EXCESS."""
    shares, floor = feature_shares(values), 1 / max(n_training, 1)
    return [min(MAX_EXCESS, max([0.0, *(math.log(shares[v] / max(training.get(v, 0.0), floor)) for v in crystal)]))
            for crystal in values]


@dataclass
class TuneConfig:
    """A tuning run: where it starts and writes, how each round samples, pairs and updates."""

    out: Path
    model: Path | None = None  # a `crystext train` directory; None: the shipped default model
    rounds: int = 4
    attempts: int = 256  # attempts sampled per round, valid or not
    # Attempts sampled per round beside `attempts`, never relaxed: a crystal one of them also writes counts as a
    # repeat, so the reward sees the repeats a 1,000-sample evaluation would (a round of a few hundred sees few)
    probe: int = 0
    # Share of each round's attempts prompted with the formula of a training crystal drawn for the round, `group`
    # attempts a formula (the rest unprompted): pairs then compare crystals written for one composition, so an update
    # teaches how to build a crystal rather than which compositions are easy to make stable
    prompted: float = 0.0
    group: int = 4
    sample: SampleConfig = field(default_factory=SampleConfig)  # n and max_attempts are set from `attempts`
    min_margin: float = 0.1  # reward gap below which a pair teaches nothing and is left out
    # Pair only attempts whose cells list a number of sites in one bin of this width (0: any two), so that pairs
    # teach which of two cells of about one size is better, not that small cells are
    pair_size_bin: int = 4
    beta: float = 0.1  # DPO's strength of the pull toward the reference model (higher: stay closer)
    learning_rate: float = 2e-5
    epochs: int = 1
    batch_size: int = 8
    sft_weight: float = 0.0  # weight of the chosen crystals' own likelihood beside the DPO loss (RPO); 0: DPO only
    # Weight of real training crystals' likelihood beside the DPO loss (RLHF's "pretraining mix"): each update step
    # also reads `batch_size` crystals drawn from the training set for the round, made into examples as the model's
    # own training made them, so DPO moves it toward stable crystals without narrowing what it writes; 0: none
    data_weight: float = 0.0
    # DPO's reference: "round", the round's starting model (iterative DPO: drift adds up over rounds), or "start",
    # the run's starting model (every round stays within DPO's pull of it)
    reference: str = "start"
    seed: int = 0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.reference not in ("round", "start"):
            raise ValueError(f"reference must be 'round' or 'start', got {self.reference!r}")
        if self.pair_size_bin < 0:
            raise ValueError(f"pair_size_bin must be >= 0 (0: pairs across cell sizes), got {self.pair_size_bin}")
        if self.probe < 0:
            raise ValueError(f"probe must be >= 0 (0: no probe), got {self.probe}")
        if not 0 <= self.prompted <= 1:
            raise ValueError(f"prompted must be a share of the attempts, in [0, 1], got {self.prompted}")
        for name in ("rounds", "attempts", "group", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("min_margin", "beta", "learning_rate", "sft_weight", "data_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name in ("beta", "learning_rate") and value == 0):
                raise ValueError(f"{name} must be {'positive' if name in ('beta', 'learning_rate') else '>= 0'}, "
                                 f"got {value}")
        if self.prompted and not self.prompted_formulas:
            raise ValueError(f"prompted {self.prompted} of {self.attempts} attempts is not one group of {self.group}")

    @property
    def prompted_formulas(self) -> int:
        """How many training formulas a round prompts with, `group` attempts each."""
        return int(round(self.attempts * self.prompted)) // self.group

    def round_sample_config(self, number: int) -> SampleConfig:
        """The sampling settings of round `number`: exactly `attempts` attempts, a seed of its own."""
        return replace(self.sample, n=self.attempts, max_attempts=self.attempts,
                       seed=self.seed * ROUND_SEED_STRIDE + number)

    def probe_sample_config(self, number: int) -> SampleConfig:
        """The sampling settings of round `number`'s probe: `probe` attempts, seeded apart from every round's."""
        return replace(self.sample, n=self.probe, max_attempts=self.probe,
                       seed=self.seed * ROUND_SEED_STRIDE + ROUND_SEED_STRIDE // 2 + number)

    def settings(self) -> dict[str, Any]:
        """What decides the run's results, as JSON (a resumed run must have the same)."""
        return json.loads(json.dumps(asdict(self), default=str))


class Scorer(Protocol):
    """Scores a round's samples: a table with one row per attempt (`id`, `reward`, any other columns) and metrics.

    `folder` is the round's folder, for anything the scorer wants to keep and resume (a stability CSV); `earlier`
    the samples CSVs of the run's earlier rounds, oldest first (what a crystal may repeat); `probe` the CSV of the
    round model's further attempts (`TuneConfig.probe`), or None.
    """

    def __call__(self, samples: Path, folder: Path, earlier: Sequence[Path] = (),
                 probe: Path | None = None) -> tuple[pd.DataFrame, dict[str, Any]]: ...


class StabilityScorer:
    """The reward a materials scientist wants: valid, stable after relaxation, new to the round and to the training set.

    Valid (structurally and compositionally) crystals are relaxed through `relax_and_place` (the round's
    stability.csv, resumable); uniqueness and novelty are `crystext.evaluate.sun`'s, on the crystals as
    generated; the metrics are its rates (metastable, stable and S.U.N. over every attempt), `new_to_run`, the
    share of valid crystals that no earlier round of the run wrote, and with a probe `probe_repeats`, the share that
    one of the probe's attempts also wrote (each such crystal pays the repeat penalty).
    """

    def __init__(self, reference: HullReference, training: Sequence, stability: StabilityConfig | None = None,
                 reward: RewardConfig | None = None) -> None:
        from crystext.evaluate.sun import KnownStructures

        self.reference = reference
        structures = [r.structure for r in training]
        self.known = KnownStructures.from_structures(structures)
        values = [feature_values(s) for s in structures]
        self.training_shares = {f: feature_shares([v[f] for v in values]) for f in BALANCE_FEATURES}
        self.n_training = len(structures)
        self.training_structures = structures
        self._training_fingerprints: np.ndarray | None = None
        self.stability = stability or StabilityConfig(progress=False)
        self.reward = reward or RewardConfig()

    @property
    def training_fingerprints(self) -> np.ndarray:
        """Structure fingerprints of CROWDING_REFERENCE training crystals (a seeded draw), computed when first asked."""
        if self._training_fingerprints is None:
            rng = np.random.default_rng(0)
            count = min(CROWDING_REFERENCE, self.n_training)
            drawn = rng.choice(self.n_training, size=count, replace=False)
            self._training_fingerprints = structure_fingerprints(
                [self.training_structures[i] for i in drawn], "training fingerprints", jobs=self.stability.workers,
                progress=self.stability.progress, cache=True)[0]
        return self._training_fingerprints

    def settings(self) -> dict[str, Any]:
        """What decides its rewards, as JSON: the reward, the potential and budget, the hull, the training set size."""
        return json.loads(json.dumps({
            "reward": asdict(self.reward), "backend": self.stability.backend, "relax": asdict(self.stability.relax),
            "hull": self.reference.summary(), "training_structures": self.n_training}, default=str))

    def __call__(self, samples: Path, folder: Path, earlier: Sequence[Path] = (),
                 probe: Path | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
        from crystext.data import Dataset, Record
        from crystext.evaluate.sun import (
            KnownStructures,
            RelaxedStructures,
            novel_flags,
            stability_rates,
            stability_table,
            unique_flags,
        )
        from crystext.evaluate.validity import is_valid
        from crystext.sample.samples_csv import parsed_structures

        attempts = pd.read_csv(samples, usecols=["id", "conditions"], dtype=str, keep_default_na=False)
        ids = attempts["id"].tolist()
        stated = {rid: Attributes(**json.loads(c or "{}")) for rid, c in zip(ids, attempts["conditions"])}
        structures = {rid: s for rid, s in parsed_structures(samples) if is_valid(s)}
        valid = [rid for rid in ids if rid in structures]
        output = folder / "stability.csv"
        relax_and_place(Dataset([Record(rid, structures[rid]) for rid in valid], source=str(samples)),
                        self.reference, output, replace(self.stability, resume=output.exists()))
        relaxed = read_rows(output).set_index("id")
        generated = [structures[rid] for rid in valid]
        formulas = [s.composition.reduced_formula for s in generated]
        table = pd.DataFrame({"id": ids, "valid": [rid in structures for rid in ids],
                              "prompted": [stated[rid] != Attributes() for rid in ids]})
        # A prompted attempt meets its prompt if its crystal has the stated formula (and space group)
        table["prompt_met"] = [rid in structures and not stated[rid].unmet(structures[rid]) if prompted else True
                               for rid, prompted in zip(ids, table["prompted"])]
        table["e_above_hull"] = [float(relaxed.at[rid, "e_above_hull"]) if rid in structures else math.nan
                                 for rid in ids]

        def written(paths: Sequence[Path]) -> list[Structure]:
            return [s for path in paths for _, s in parsed_structures(path) if is_valid(s)]

        def per_attempt(flags: Sequence[bool]) -> pd.Series:  # one flag per valid crystal -> per attempt
            return table["id"].map(dict(zip(valid, flags))).eq(True)

        table["unique"] = per_attempt(unique_flags(generated, formulas))
        table["novel"] = per_attempt(novel_flags(generated, formulas, self.known))
        table["new_to_run"] = per_attempt(novel_flags(generated, formulas,
                                                      KnownStructures.from_structures(written(earlier))))
        # The reward's "unique": not a repeat within the scope the reward asks for, nor of a probe attempt
        fresh = table["unique"] & (table["new_to_run"] if self.reward.repeat_scope == "run" else True)
        probed = written([probe]) if probe else []
        if probe:
            table["off_probe"] = per_attempt(novel_flags(generated, formulas, KnownStructures.from_structures(probed)))
            fresh &= table["off_probe"]
        values = [feature_values(s) for s in generated]
        for feature in BALANCE_FEATURES:
            excess = over_representation([v[feature] for v in values], self.training_shares[feature], self.n_training)
            table[f"excess_{feature}"] = table["id"].map(dict(zip(valid, excess))).fillna(0.0)
        table["excess"] = table[[f"excess_{f}" for f in BALANCE_FEATURES]].sum(axis=1)
        table["crowding"] = 0.0
        if self.reward.crowding_weight and generated:
            # the model's neighbourhoods are counted among the round's crystals and its probe's
            fingerprints, found = structure_fingerprints(generated + probed, "crowding", jobs=self.stability.workers,
                                                         progress=self.stability.progress)
            crowded = iter(crowding(fingerprints, self.training_fingerprints, self.reward.crowding_cutoff))
            by_id = {rid: next(crowded) for rid, ok in zip(valid, found) if ok}
            table["crowding"] = table["id"].map(by_id).fillna(0.0)
        cifs = [relaxed.at[rid, "relaxed_cif"] if rid in structures else "" for rid in ids]
        stability = stability_table(table["e_above_hull"].to_numpy(float), RelaxedStructures(cifs), self.known)
        table[["metastable", "stable", "sun"]] = stability[["metastable", "stable", "sun"]].to_numpy()
        # A crystal that ignores its prompt earns what an invalid one does (tuning must not teach the model to write
        # an easier composition than the one asked for); one written for a stated formula is not charged for being
        # known: asked for a composition, the known stable crystal of it is the right answer.
        table["reward"] = [
            self.reward.reward(e, u, n or p, x, c) if v and m else self.reward.invalid
            for v, m, p, e, u, n, x, c in zip(table["valid"], table["prompt_met"], table["prompted"],
                                              table["e_above_hull"], fresh, table["novel"], table["excess"],
                                              table["crowding"])]
        rates = stability_rates(stability)
        n_valid = len(valid)
        metrics = {"valid_rate": n_valid / len(ids) if ids else math.nan,
                   "uniqueness": float(table["unique"].sum() / n_valid) if n_valid else math.nan,
                   "novelty": float(table["novel"].sum() / n_valid) if n_valid else math.nan,
                   "new_to_run": float(table["new_to_run"].sum() / n_valid) if n_valid else math.nan,
                   **({"probe_repeats": float((table["valid"] & ~table["off_probe"]).sum() / n_valid)
                       if n_valid else math.nan} if probe else {}),
                   **({"prompt_met": float(table.loc[table["prompted"], "prompt_met"].mean())}
                      if table["prompted"].any() else {}),
                   **{k: rates[k] for k in ("metastable_rate", "stable_rate", "sun_rate", "msun_rate",
                                             "mean_e_above_hull")},
                   "mean_excess": float(table.loc[table["valid"], "excess"].mean()) if n_valid else math.nan,
                   **({"mean_crowding": float(table.loc[table["valid"], "crowding"].mean()) if n_valid else math.nan}
                      if self.reward.crowding_weight else {}),
                   "mean_sites": float(np.mean([len(s) for s in generated])) if n_valid else math.nan,
                   "metastable_threshold_ev_per_atom": METASTABLE_E_HULL}
        return table, metrics


def written_sites(text: str) -> int:
    """How many sites a crystal text lists, read or not: its lines after the lattice that are element lines ("Fe";
    "Fe3" or "Fe 3" in the site-count forms)."""
    return sum(1 for line in text.splitlines()[2:] if element_line_symbol(line.strip()) in ELEMENT_SYMBOLS)


def preference_pairs(
    samples: pd.DataFrame, min_margin: float, within: Sequence[str] = ("prompt",)
) -> list[dict[str, Any]]:
    """Pairs of attempts that agree on the `within` columns (one prompt; and, if asked, one cell-size bin), the best
    with the worst, the second best with the second worst, ...

    `samples` has one row per attempt: id, prompt, text, reward (and the `within` columns). A pair whose rewards
    differ by less than `min_margin` is left out. Ties are broken by id, so the pairs are the same on every run.
    """
    pairs = []
    for _, group in samples.groupby(list(within), sort=True):
        prompt = group["prompt"].iloc[0]
        ranked = group.sort_values(["reward", "id"], ascending=[False, True]).to_dict("records")
        for best, worst in zip(ranked[: len(ranked) // 2], reversed(ranked[len(ranked) - len(ranked) // 2:])):
            margin = best["reward"] - worst["reward"]
            if margin >= min_margin:
                pairs.append({"prompt": prompt, "chosen": best["text"], "rejected": worst["text"],
                              "chosen_id": best["id"], "rejected_id": worst["id"], "margin": margin})
    return pairs


def tune(config: TuneConfig, scorer: Scorer, resume: bool = False, progress: bool = True,
         training: Sequence[Record] = ()) -> Path:
    """Run the rounds `config` asks for, each resumed where a killed run left it; returns the last model directory.

    Without `resume`, the output folder must be new or empty. `training`: the crystals whose formulas prompted
    attempts state (`TuneConfig.prompted`) and that updates mix in (`TuneConfig.data_weight`).
    """
    if config.prompted and len(training) < config.prompted_formulas:
        raise TuneError(f"prompted rounds draw {config.prompted_formulas} training crystals' formulas a round; "
                        f"{len(training)} given")
    if config.data_weight and not training:
        raise TuneError(f"data weight {config.data_weight} mixes training crystals into each update; none given")
    settings_file = config.out / "tune.json"
    # The scorer's own settings (a StabilityScorer's reward and relaxations) decide the results too.
    settings = {**config.settings(), "scorer": getattr(scorer, "settings", dict)()}
    if settings_file.exists():
        if not resume:
            raise TuneError(f"{config.out} holds a tuning run: pass --resume to continue it, or choose another --out")
        earlier = json.loads(settings_file.read_text())
        # a setting its tune.json lacks came with a later crystext and ran as that setting's default
        defaults = {**TuneConfig(out=config.out).settings(), "scorer": {"reward": asdict(RewardConfig())}}
        changed = changed_settings(earlier, {k: v for k, v in settings.items() if k != "rounds"}, defaults)
        if changed:
            raise TuneError(f"{config.out} was started with other settings ({', '.join(changed)}); "
                            "resume it with the same ones, or choose another --out")
    elif config.out.exists() and any(config.out.iterdir()):
        raise TuneError(f"{config.out} is not empty and holds no tuning run: choose another --out")
    config.out.mkdir(parents=True, exist_ok=True)
    write_atomic(settings_file, json.dumps(settings, indent=2) + "\n")
    model = config.model
    for number in range(1, config.rounds + 1):
        folder = round_folder(config.out, number)
        if not (folder / "metrics.json").is_file():
            run_round(config, number, model, folder, scorer, progress, training)
            write_atomic(config.out / "report.html", tune_report(read_rounds(config.out)))
        model = folder / "model"
    return folder / "model"


def round_folder(out: Path, number: int) -> Path:
    """Where round `number` of the run in `out` keeps its files."""
    return out / f"round_{number:03d}"


def changed_settings(earlier: Mapping[str, Any], now: Mapping[str, Any], defaults: Mapping[str, Any] | None = None,
                     prefix: str = "") -> list[str]:
    """The settings (dotted names, at any depth) whose values differ between a run's tune.json and now; a setting the
    tune.json lacks came with a later crystext, whose default keeps the old behaviour, so it is compared with its
    default in `defaults` (the same nesting), and is no change where `defaults` lacks it too."""
    defaults = defaults if isinstance(defaults, Mapping) else {}
    changed = []
    for key, value in now.items():
        old = earlier.get(key, defaults.get(key, value))
        if isinstance(old, Mapping) and isinstance(value, Mapping):
            changed += changed_settings(old, value, defaults.get(key), f"{prefix}{key}.")
        elif old != value:
            changed.append(f"{prefix}{key}")
    return sorted(changed)


def round_prompts(config: TuneConfig, number: int, training: Sequence[Record], sampler: Sampler
                  ) -> list[Attributes] | None:
    """What each of round `number`'s attempts states: `config.group` attempts for each formula of
    `config.prompted_formulas` training crystals drawn for the round (seeded), as the sampler's model reads a
    formula (the whole cell's, or reduced), then the unprompted rest; None when no attempt is prompted."""
    if not config.prompted:
        return None
    rng = np.random.default_rng(config.seed * ROUND_SEED_STRIDE + number)
    drawn = [training[i].structure for i in rng.choice(len(training), size=config.prompted_formulas, replace=False)]
    asymmetric = sampler.text_format.answering(None).asymmetric_unit
    formulas = [cell_formula(CrystalText.from_structure(s, asymmetric)) if sampler.cell_formula
                else s.composition.reduced_formula for s in drawn]
    prompted = [Attributes(formula=f) for f in formulas for _ in range(config.group)]
    return prompted + [Attributes()] * (config.attempts - len(prompted))


def run_round(config: TuneConfig, number: int, model: Path | None, folder: Path, scorer: Scorer,
              progress: bool, training: Sequence[Record] = ()) -> dict[str, Any]:
    """One round in `folder`, each step skipped if a killed earlier run finished it; returns its metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = folder / "samples.csv"
    sampler = Sampler.from_pretrained(model)
    sampler.sample(config.round_sample_config(number), samples, round_prompts(config, number, training, sampler),
                   resume=samples.exists(), progress=progress)
    probe = folder / "probe.csv" if config.probe else None
    if probe:
        sampler.sample(config.probe_sample_config(number), probe, resume=probe.exists(), progress=progress)
    del sampler
    earlier = [round_folder(config.out, n) / "samples.csv" for n in range(1, number)]
    table, scored = scorer(samples, folder, earlier, probe)
    attempts = pd.read_csv(samples, dtype=str, keep_default_na=False)
    table = attempts[["id", "conditions", "raw_text"]].merge(table, on="id", how="left", validate="one_to_one")
    write_atomic(folder / "scores.csv", table.to_csv(index=False))
    prompts = [Attributes(**json.loads(c)).to_prompt() for c in table["conditions"]]
    rewarded = pd.DataFrame({"id": table["id"], "prompt": prompts, "text": table["raw_text"],
                             "reward": table["reward"]})
    within = ["prompt"]
    if config.pair_size_bin:  # like with like: a pair says which of two cells of about one size is better
        rewarded["size_bin"] = [written_sites(text) // config.pair_size_bin for text in rewarded["text"]]
        within.append("size_bin")
    pairs = preference_pairs(rewarded, config.min_margin, within)
    write_atomic(folder / "pairs.jsonl", "".join(json.dumps(p) + "\n" for p in pairs))
    update = update_model(config, number, model, pairs, folder / "model", training)
    metrics = {"round": number, "attempts": len(table), "pairs": len(pairs),
               "reward_mean": float(table["reward"].mean()), **scored, "update": update}
    write_atomic(folder / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    print(round_line(metrics), file=sys.stderr, flush=True)
    return metrics


def update_model(config: TuneConfig, number: int, model: Path | None, pairs: Sequence[dict[str, Any]],
                 out: Path, training: Sequence[Record] = ()) -> dict[str, Any]:
    """trl's DPO on the round's pairs, from the model at the round's start and against the `config.reference`
    model (the round's start, or the run's), with `training` crystals mixed in at `config.data_weight`; the result
    goes to `out`.

    The prompt is read after the model's begin-of-sequence token and the crystal ends with its end token, as in
    `crystext train`. No pairs (every reward within `min_margin`): the model is saved unchanged.
    """
    import datasets
    from datasets import Dataset as HFDataset
    from transformers import PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import DPOConfig

    from crystext.model import load_model, save_model
    from crystext.train import replacing_dir
    from crystext.tune.mix import MixedDPOTrainer

    policy, tokenizer, info = load_model(model, trainable=True)
    summary: dict[str, Any] = {"pairs": len(pairs)}
    if pairs:
        reference = load_model(model if config.reference == "round" else config.model)[0]
        if hasattr(reference, "merge_and_unload"):  # a LoRA adapter: the reference needs no adapter of its own
            reference = reference.merge_and_unload()
        bos = tokenizer.bos_token or ""
        data = HFDataset.from_list([{"prompt": bos + p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                                    for p in pairs])
        loss = ["sigmoid", "sft"] if config.sft_weight else ["sigmoid"]
        mix = data_batches(config, number, training, tokenizer, info, len(pairs)) if config.data_weight else None
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        datasets.disable_progress_bars()  # the trainer's dataset preparation: instant, and not what a round is about
        scratch = tempfile.mkdtemp(prefix="crystext-dpo-")  # the trainer's output folder; it saves nothing there
        try:
            with warnings.catch_warnings():
                # trl asks transformers about gradient checkpointing by names transformers now calls deprecated
                warnings.filterwarnings("ignore", ".*checkpointing.*deprecated", FutureWarning)
                args = DPOConfig(
                    output_dir=scratch, per_device_train_batch_size=config.batch_size,
                    num_train_epochs=config.epochs, learning_rate=config.learning_rate, beta=config.beta,
                    loss_type=loss, loss_weights=[1.0, config.sft_weight] if config.sft_weight else None,
                    seed=config.seed * ROUND_SEED_STRIDE + number, report_to="none", save_strategy="no",
                    logging_steps=1, disable_tqdm=True, use_cpu=not _cuda(), dataset_num_proc=None,
                    # bf16 on a GPU only, as `crystext train` (trl's default is bf16 everywhere: autocast on a CPU,
                    # and an accelerate state that a later `train` in the same process cannot change)
                    bf16=_cuda(),
                )
                trainer = MixedDPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data,
                                          processing_class=tokenizer, data=mix, data_weight=config.data_weight)
                trainer.remove_callback(PrinterCallback)  # its per-step dicts; the round's line says what matters
                trainer.train()
        finally:
            hf_logging.set_verbosity(verbosity)
            datasets.enable_progress_bars()
            shutil.rmtree(scratch, ignore_errors=True)
        logs = [entry for entry in trainer.state.log_history if "loss" in entry]
        # The DPO loss alone (the logged loss holds the data term too), and the data term's own loss
        dpo = [entry["loss"] - config.data_weight * entry.get("data_loss", 0.0) for entry in logs]
        summary.update(steps=trainer.state.global_step, loss_first=dpo[0], loss_last=dpo[-1],
                       reward_accuracy_last=logs[-1].get("rewards/accuracies"),
                       reward_margin_last=logs[-1].get("rewards/margins"))
        if config.data_weight:
            summary.update(data_loss_first=logs[0]["data_loss"], data_loss_last=logs[-1]["data_loss"])
        policy = trainer.model
    info = {**info, "tuned": {**info.get("tuned", {}), f"round_{number}": summary}}
    with replacing_dir(out) as staging:
        save_model(policy, tokenizer, staging, info)
        (staging / "README.md").write_text(model_card(model, config, info["tuned"]))
    return summary


def data_batches(config: TuneConfig, number: int, training: Sequence[Record], tokenizer: PreTrainedTokenizerBase,
                 info: Mapping[str, Any], pairs: int) -> Batches:
    """The training crystals mixed into round `number`'s update (`TuneConfig.data_weight`): `batch_size` a step,
    drawn for the round (seeded; each once while the set lasts) and made into examples by the recipe of the run that
    trained the model (its prompts, infill share and loss weights), so the mix is the model's own training data."""
    from crystext.data import Dataset
    from crystext.train import Batches, recipe_config, to_examples

    steps = math.ceil(pairs / config.batch_size) * config.epochs
    rng = np.random.default_rng([config.seed * ROUND_SEED_STRIDE + number, DATA_STREAM])
    count = min(len(training), steps * config.batch_size)
    drawn = Dataset([training[i] for i in rng.choice(len(training), size=count, replace=False)])
    recipe = recipe_config(info, config.batch_size, config.seed * ROUND_SEED_STRIDE + number)
    return Batches(to_examples(drawn, recipe.text_format)[0], tokenizer, recipe)


def model_card(model: Path | None, config: TuneConfig, rounds: Mapping[str, Any]) -> str:
    """The card of the run's starting model (read from `model`, the round's, which carries it) with what
    post-training did to it: the run's settings and every round's update."""
    from crystext.model import DEFAULT_MODEL_DIR

    card = (model or DEFAULT_MODEL_DIR) / "README.md"
    text = card.read_text().split(TUNED_HEADING)[0].rstrip() if card.is_file() else "# crystext model"
    lines = [f"{TUNED_HEADING}\n", f"Post-trained by `crystext tune` from `{config.model or 'the shipped model'}` "
             f"(run folder `{config.out}`; its tune.json holds every setting, each round folder its samples, "
             f"scores, pairs and metrics): trl's DPO, beta {config.beta}, learning rate {config.learning_rate}, "
             f"{config.epochs} epoch(s) a round over {config.attempts} attempts' pairs"
             + (f" ({config.prompted:.0%} of them prompted with training formulas, {config.group} a formula)"
                if config.prompted else "")
             + (f", training crystals mixed in at weight {config.data_weight}" if config.data_weight else "")
             + f", reference: {config.reference} model.\n",
             "| round | pairs | steps | DPO loss first -> last |", "|---:|---:|---:|---|"]
    for name, r in rounds.items():
        loss = f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" if r.get("steps") else "no update"
        lines.append(f"| {name.removeprefix('round_')} | {r['pairs']} | {r.get('steps', 0)} | {loss} |")
    return text + "\n\n" + "\n".join(lines) + "\n"


def round_line(metrics: dict[str, Any]) -> str:
    """The log line of a finished round: its reward, and the rates the report plots (`report.TUNE_RATES`) where its
    scorer gives them: stability against uniqueness, novelty and validity."""
    rates = [f"{label} {100 * metrics[name]:.1f}%" for name, label in TUNE_RATES
             if isinstance(metrics.get(name), float) and math.isfinite(metrics[name])]
    return (f"round {metrics['round']}: {metrics['attempts']} attempts, {metrics['pairs']} pairs, mean reward "
            f"{metrics['reward_mean']:.3f}" + (f"; {', '.join(rates)}" if rates else ""))


def read_rounds(out: Path) -> list[dict[str, Any]]:
    """The metrics of every finished round of a tuning run, in order."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("round_*/metrics.json"))]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
