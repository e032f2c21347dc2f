"""Post-training: rewards and pairs by hand, rounds on a tiny model toward a synthetic reward, exact resume."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Composition
from safetensors.torch import load_file

from crystext.data import read_structures
from crystext.prompts import Attributes
from crystext.sample import SampleConfig
from crystext.sample.samples_csv import SampleWriter, attempt_row
from crystext.stability import RelaxConfig, StabilityConfig, shipped_reference
from crystext.textformat import CrystalText, CrystalTextError
from crystext.tune import RewardConfig, StabilityScorer, TuneConfig, TuneError, preference_pairs, read_rounds, tune
from crystext.tune.rounds import changed_settings, feature_shares, over_representation, round_line, written_sites

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_reward_of_a_valid_crystal_is_minus_its_capped_energy_less_its_penalties() -> None:
    reward = RewardConfig(hull_cap=1.0, repeat_penalty=0.5, known_penalty=0.25, balance_weight=0.1, invalid=-3.0)
    assert reward.reward(0.05, unique=True, novel=True) == pytest.approx(-0.05)
    assert reward.reward(-0.2, unique=True, novel=True) == 0.0  # below the hull counts as on it
    assert reward.reward(4.0, unique=False, novel=False) == pytest.approx(-1.75)
    assert reward.reward(0.05, unique=True, novel=True, excess=1.5) == pytest.approx(-0.2)
    assert reward.reward(math.nan, unique=True, novel=True) == -3.0
    assert reward.lowest_valid == pytest.approx(-(1.0 + 0.5 + 0.25 + 0.1 * 2 * 2))
    with pytest.raises(ValueError, match=r"invalid \(-2.0\) must be below every valid crystal's reward \(-2.4\)"):
        RewardConfig(hull_cap=1.0, repeat_penalty=0.5, known_penalty=0.5, balance_weight=0.1, invalid=-2.0)


def test_crowding_is_the_log_ratio_of_neighbour_shares_among_the_models_crystals_and_the_training_ones() -> None:
    from crystext.tune.rounds import MAX_EXCESS, crowding

    model = np.array([[0.0], [0.1], [0.2], [1.0], [5.0], [5.1]])
    training = np.array([[0.0], [1.0], [1.1], [1.2]])
    # near 0.0: 3 of 6 model rows within 0.4 against 1 of 4 training rows; 1.0: 1 of 6 against 3 of 4 (less crowded
    # than training: 0); 5.0: 2 of 6, no training row near, counted as one of 4
    assert crowding(model, training, cutoff=0.4) == pytest.approx([math.log(2)] * 3 + [0.0] + [math.log(4 / 3)] * 2)
    many = np.zeros((50, 1))
    assert crowding(many, np.array([[3.0]] * 100), cutoff=0.4) == pytest.approx([MAX_EXCESS] * 50)
    reward = RewardConfig(crowding_weight=0.5)
    assert reward.reward(0.05, unique=True, novel=True, crowded=1.0) == pytest.approx(-0.55)
    assert reward.lowest_valid == pytest.approx(-(1.0 + 0.5 + 0.5 + 0.5 * MAX_EXCESS))
    # unless given, an invalid attempt earns half an eV/atom less than the least a valid crystal can
    assert reward.invalid == pytest.approx(reward.lowest_valid - 0.5) and RewardConfig().invalid == -2.5
    with pytest.raises(ValueError, match="crowding_cutoff must be positive, got 0"):
        RewardConfig(crowding_cutoff=0)


def test_over_representation_is_the_log_share_ratio_of_a_crystals_most_overrepresented_value() -> None:
    sites = over_representation([[4], [4], [4], [10]], {4: 0.15, 10: 0.09}, n_training=100)
    assert sites == pytest.approx([math.log(0.75 / 0.15)] * 3 + [math.log(0.25 / 0.09)])
    training = {"Au": 0.02, "Mg": 0.1, "O": 0.5, "Si": 0.1, "Zn": 0.05}
    elements = over_representation([["Au", "Mg"], ["Au", "Zn"], ["O", "Si"], ["O", "Xx"]], training, n_training=100)
    # Au: log(0.5 / 0.02) = 3.2, capped at 2; O at 0.5 against 0.5 costs nothing, Si log(0.25 / 0.1); Xx, which
    # training lacks, counts as 1 of its 100: log(0.25 / 0.01), capped
    assert elements == pytest.approx([2.0, 2.0, math.log(0.25 / 0.1), 2.0])
    assert over_representation([[4], [10]], {4: 0.5, 10: 0.5}, n_training=2) == [0.0, 0.0]
    assert feature_shares([["O", "Si"], ["O"]]) == {"O": 1.0, "Si": 0.5}


def test_pairs_join_best_with_worst_within_a_prompt_and_skip_small_margins() -> None:
    samples = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f", "g"],
        "prompt": ["p", "p", "p", "p", "p", "q", "q"],
        "text": ["A", "B", "C", "D", "E", "F", "G"],
        "reward": [0.0, -1.0, -0.5, -0.45, -3.0, -0.1, -0.15],
    })
    pairs = preference_pairs(samples, min_margin=0.1)
    # p ranked a, d, c, b, e: (a, e) and (d, b); the middle one, c, is left over. q's one pair is 0.05 apart.
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("a", "e"), ("d", "b")]
    assert [p["margin"] for p in pairs] == pytest.approx([3.0, 0.55])
    assert pairs[0]["prompt"] == "p" and pairs[0]["chosen"] == "A" and pairs[0]["rejected"] == "E"


def test_pairs_within_a_size_bin_compare_like_with_like() -> None:
    samples = pd.DataFrame({"id": list("abcd"), "prompt": ["p"] * 4, "text": list("ABCD"),
                            "reward": [0.0, -0.2, -1.0, -3.0], "size_bin": [1, 2, 1, 2]})
    assert [(p["chosen_id"], p["rejected_id"]) for p in preference_pairs(samples, 0.1)] == [("a", "d"), ("b", "c")]
    within = preference_pairs(samples, 0.1, within=("prompt", "size_bin"))
    assert [(p["chosen_id"], p["rejected_id"]) for p in within] == [("a", "c"), ("b", "d")]
    assert written_sites("5.0 5.0 5.0\n90 90 90\nNa\n0.0 0.0 0.0\nCl\n0.5 0.5 0.5\nCl\n0.5") == 3
    assert written_sites("5.0 5.0 5.0\n90 90 90\nXx\n0.0 0.0 0.0\n") == 0
    # The site-count forms the shipped model writes ("Au2" then "Au1"): each labelled line is one site, so the
    # size bins pair a 4-site cell only with cells of about its size (this once counted 0 sites, one bin for all).
    heusler = "6.0 6.0 6.0\n60 60 60\nY1\n0.50 0.50 0.50\nCd1\n0.00 0.00 0.00\nAu2\n0.75 0.75 0.75\nAu1\n0.25 0.25 0.25"
    assert written_sites(heusler) == 4
    assert written_sites(heusler.replace("Au2", "Au 2").replace("Au1", "Au 1")) == 4


def sites(text: str) -> int | None:
    try:
        return len(CrystalText.from_str(text).species)
    except CrystalTextError:
        return None


class FewerSites:
    """A synthetic reward the test controls: minus the number of sites (an unreadable attempt: -30).

    With `stop_on_call`, the scorer raises KeyboardInterrupt on that call, as a kill in the middle of a round.
    """

    def __init__(self, stop_on_call: int | None = None) -> None:
        self.calls, self.stop_on_call = 0, stop_on_call
        self.probes: list[Path | None] = []

    def __call__(self, samples: Path, folder: Path, earlier: Sequence[Path] = (),
                 probe: Path | None = None) -> tuple[pd.DataFrame, dict]:
        self.calls += 1
        self.probes.append(probe)
        assert [p.parent.name for p in earlier] == [f"round_{n:03d}" for n in range(1, len(earlier) + 1)]
        if self.calls == self.stop_on_call:
            raise KeyboardInterrupt
        rows = pd.read_csv(samples, dtype=str, keep_default_na=False)
        counts = [sites(text) if cif else None for text, cif in zip(rows["raw_text"], rows["cif"])]
        reward = [-float(n) if n else -30.0 for n in counts]
        return pd.DataFrame({"id": rows["id"], "reward": reward}), {
            "mean_sites": float(pd.Series([n for n in counts if n]).mean())}


def tiny_tune(out: Path, model: Path, rounds: int) -> TuneConfig:
    # Pairs across cell sizes: the synthetic reward is about size, which pairs within one size bin would hide.
    return TuneConfig(out=out, model=model, rounds=rounds, attempts=64, learning_rate=1e-3, epochs=3, batch_size=8,
                      sample=SampleConfig(batch_size=32, max_atoms=8, temperature=1.0), pair_size_bin=0)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_rounds_move_a_tiny_model_toward_a_synthetic_reward_and_keep_every_round(model_dir, tmp_path) -> None:
    last = tune(tiny_tune(tmp_path / "run", model_dir, rounds=2), FewerSites(), progress=False)
    rounds = read_rounds(tmp_path / "run")
    assert [r["round"] for r in rounds] == [1, 2] and last == tmp_path / "run" / "round_002" / "model"
    for number in (1, 2):
        folder = tmp_path / "run" / f"round_{number:03d}"
        assert sorted(p.name for p in folder.iterdir()) == sorted(
            ["samples.csv", "scores.csv", "pairs.jsonl", "model", "metrics.json"])
    first, second = rounds
    assert first["attempts"] == 64 and first["pairs"] >= 20 and first["update"]["steps"] > 0
    # The model the first round trained writes smaller cells: the reward it was tuned on went up.
    assert second["mean_sites"] < first["mean_sites"] - 0.3
    assert second["reward_mean"] > first["reward_mean"]
    pairs = [json.loads(line) for line in (tmp_path / "run" / "round_001" / "pairs.jsonl").read_text().splitlines()]
    assert all(sites(p["chosen"]) is not None for p in pairs)
    assert all(p["prompt"] == Attributes().to_prompt() and p["margin"] >= 0.1 for p in pairs)
    info = json.loads((last / "crystext.json").read_text())
    assert set(info["tuned"]) == {"round_1", "round_2"}
    card = (last / "README.md").read_text()
    assert card.count("## Post-training (crystext tune)") == 1 and "| 2 | " in card and "reference: start" in card
    assert f"from `{model_dir}`" in card  # the run's starting model, not the round's


def test_a_run_killed_mid_round_resumes_to_the_uninterrupted_state(model_dir, tmp_path) -> None:
    whole = tune(tiny_tune(tmp_path / "whole", model_dir, rounds=2), FewerSites(), progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed while scoring round 2, its samples already written
        tune(tiny_tune(tmp_path / "killed", model_dir, rounds=2), FewerSites(stop_on_call=2), progress=False)
    assert (tmp_path / "killed" / "round_002" / "samples.csv").is_file()
    assert not (tmp_path / "killed" / "round_002" / "metrics.json").exists()
    with pytest.raises(TuneError, match="pass --resume"):
        tune(tiny_tune(tmp_path / "killed", model_dir, rounds=2), FewerSites(), progress=False)
    resumed = tune(tiny_tune(tmp_path / "killed", model_dir, rounds=2), FewerSites(), resume=True, progress=False)
    a, b = weights(whole), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("samples.csv", "pairs.jsonl"):
        assert (tmp_path / "whole" / "round_002" / name).read_text() == (
            tmp_path / "killed" / "round_002" / name).read_text()


def test_a_probe_is_sampled_apart_from_the_rounds_attempts_and_handed_to_the_scorer(model_dir, tmp_path) -> None:
    scorer = FewerSites()
    tune(replace(tiny_tune(tmp_path / "run", model_dir, rounds=1), probe=24), scorer, progress=False)
    folder = tmp_path / "run" / "round_001"
    assert scorer.probes == [folder / "probe.csv"]
    probe = pd.read_csv(folder / "probe.csv", dtype=str, keep_default_na=False)
    attempts = pd.read_csv(folder / "samples.csv", dtype=str, keep_default_na=False)
    assert len(probe) == 24 and len(attempts) == 64
    assert probe["raw_text"].tolist() != attempts["raw_text"].tolist()[:24]  # its own seed, not the round's draws


def test_prompted_attempts_state_training_formulas_in_groups_and_pair_within_them(model_dir, shared_data,
                                                                                    tmp_path) -> None:
    from crystext.sample import Sampler
    from crystext.tune.rounds import round_prompts

    training = read_structures(shared_data / "mp_20" / "val.csv").records[:30]
    config = replace(tiny_tune(tmp_path / "run", model_dir, rounds=1), prompted=0.5, group=4)
    sampler = Sampler.from_pretrained(model_dir)
    first = round_prompts(config, 1, training, sampler)
    assert len(first) == 64 and first[32:] == [Attributes()] * 32
    formulas = [a.formula for a in first[:32:4]]
    assert all(first[i].formula == formulas[i // 4] for i in range(32)) and len(set(formulas)) >= 6
    reduced = {r.structure.composition.reduced_formula for r in training}
    assert set(formulas) <= reduced  # this model reads a formula as reduced
    assert round_prompts(config, 2, training, sampler) != first  # each round draws its own crystals
    sampler.cell_formula = True  # one that reads it as the whole cell's: Ti2Zn2O6 for two TiZnO3 units
    cells = [a.formula for a in round_prompts(config, 1, training, sampler)[:32:4]]
    assert [Composition(f).reduced_formula for f in cells] == [Composition(f).reduced_formula for f in formulas]
    sizes: dict[str, set[int]] = {}
    for r in training:
        sizes.setdefault(r.structure.composition.reduced_formula, set()).add(len(r.structure))
    assert all(Composition(f).num_atoms in sizes[Composition(f).reduced_formula] for f in cells)
    assert any(Composition(f).num_atoms > Composition(Composition(f).reduced_formula).num_atoms for f in cells)
    assert round_prompts(replace(config, prompted=0.0), 1, training, sampler) is None

    with pytest.raises(TuneError, match="draw 8 training crystals' formulas a round; 3 given"):
        tune(config, FewerSites(), progress=False, training=training[:3])
    tune(config, FewerSites(), progress=False, training=training)
    folder = tmp_path / "run" / "round_001"
    attempts = pd.read_csv(folder / "samples.csv", dtype=str, keep_default_na=False)
    stated = [json.loads(c).get("formula") for c in attempts["conditions"]]
    assert [f and Composition(f) for f in stated] == [a.formula and Composition(a.formula) for a in first]
    pairs = [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]
    prompts = {Attributes(formula=f).in_site_order().to_prompt() for f in formulas}
    assert {p["prompt"] for p in pairs} <= prompts | {Attributes().to_prompt()}
    assert any(p["prompt"] in prompts for p in pairs)  # pairs within a formula's group, not across
    card = (tmp_path / "run" / "round_001" / "model" / "README.md").read_text()
    assert "64 attempts' pairs (50% of them prompted with training formulas, 4 a formula)" in card


def test_updates_mix_in_training_crystals_drawn_per_round_and_made_by_the_models_recipe(model_dir,
                                                                                        shared_data) -> None:
    from crystext.model import DEFAULT_MODEL_DIR, load_model, model_info
    from crystext.train import recipe_config
    from crystext.tune.rounds import data_batches

    shipped_info = model_info(DEFAULT_MODEL_DIR)
    recipe = recipe_config(shipped_info, batch_size=8, seed=3)  # the shipped model's training, read off its folder
    assert recipe.cell_formula and recipe.element_weight == 20.0 and recipe.infill_fraction == pytest.approx(1 / 3)
    assert recipe.text_format.asymmetric_when_grouped and not recipe.translate and recipe.batch_size == 8
    training = read_structures(shared_data / "mp_20" / "val.csv").records[:40]
    ids = {r.id for r in training}
    config = replace(tiny_tune(Path("unused"), model_dir, rounds=1), data_weight=1.0)  # 8 a step, 3 epochs
    tokenizer, info = load_model(model_dir)[1:]
    first = data_batches(config, 1, training, tokenizer, info, pairs=5)  # one step an epoch: 24 crystals
    drawn = [e.id for e in first.examples]
    assert len(drawn) == len(set(drawn)) == 24 and set(drawn) <= ids
    assert [e.id for e in data_batches(config, 1, training, tokenizer, info, pairs=5).examples] == drawn
    assert [e.id for e in data_batches(config, 2, training, tokenizer, info, pairs=5).examples] != drawn
    assert len(data_batches(config, 1, training, tokenizer, info, pairs=40).examples) == 40  # no more than given
    assert next(first)["input_ids"].shape[0] == 8 and "loss_weights" not in next(first)  # its recipe: weights 1
    shipped = data_batches(config, 1, training, load_model(DEFAULT_MODEL_DIR)[1], shipped_info, pairs=5)
    weights = next(shipped)["loss_weights"]  # the shipped recipe weighs the tokens that decide the composition
    assert weights.max() == 20.0 and set(weights.unique().tolist()) == {0.0, 1.0, 20.0}


def test_mixing_in_training_crystals_keeps_the_tuned_model_closer_to_them(model_dir, shared_data, tmp_path) -> None:
    from crystext.model import load_model
    from crystext.train import recipe_config, to_examples, validation_batches, validation_loss

    training = read_structures(shared_data / "mp_20" / "val.csv").records[:40]
    with pytest.raises(TuneError, match="data weight 2.0 mixes training crystals into each update; none given"):
        tune(replace(tiny_tune(tmp_path / "none", model_dir, rounds=1), data_weight=2.0), FewerSites(),
             progress=False)
    losses = {}
    for weight in (0.0, 2.0):
        out = tune(replace(tiny_tune(tmp_path / f"w{weight}", model_dir, rounds=1), data_weight=weight),
                   FewerSites(), progress=False, training=training)
        model, tokenizer, info = load_model(out)
        recipe = recipe_config(info, batch_size=8, seed=0)
        batches = validation_batches(to_examples(read_structures(shared_data / "mp_20" / "val.csv"))[0][:40],
                                     tokenizer, recipe)
        losses[weight] = validation_loss(model, batches, torch.device("cpu"))
        update = read_rounds(tmp_path / f"w{weight}")[0]["update"]
        assert ("data_loss_last" in update) == bool(weight)
        # the DPO loss alone: log 2 at the first step, where the model is still its reference, data term or not
        assert update["loss_first"] == pytest.approx(math.log(2), abs=1e-4)
    # The same pairs and seed: the update that also read training crystals left them likelier.
    assert losses[2.0] < losses[0.0] - 0.05
    card = (tmp_path / "w2.0" / "round_001" / "model" / "README.md").read_text()
    assert "training crystals mixed in at weight 2.0" in card


def test_a_rounds_log_line_shows_the_rates_its_scorer_gave() -> None:
    metrics = {"round": 2, "attempts": 192, "pairs": 80, "reward_mean": -0.4871, "metastable_rate": 0.5573,
               "probe_repeats": 0.125, "uniqueness": math.nan}
    assert round_line(metrics) == ("round 2: 192 attempts, 80 pairs, mean reward -0.487; metastable 55.7%, "
                                   "written by the probe too 12.5%")


def test_tune_settings_refuse_what_makes_no_sense(tmp_path) -> None:
    with pytest.raises(ValueError, match="reference must be 'round' or 'start', got 'base'"):
        TuneConfig(out=tmp_path, reference="base")
    with pytest.raises(ValueError, match="pair_size_bin must be >= 0"):
        TuneConfig(out=tmp_path, pair_size_bin=-1)
    with pytest.raises(ValueError, match="probe must be >= 0"):
        TuneConfig(out=tmp_path, probe=-1)
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        TuneConfig(out=tmp_path, attempts=0)
    with pytest.raises(ValueError, match=r"prompted must be a share of the attempts, in \[0, 1\], got 1.5"):
        TuneConfig(out=tmp_path, prompted=1.5)
    with pytest.raises(ValueError, match="prompted 0.01 of 256 attempts is not one group of 4"):
        TuneConfig(out=tmp_path, prompted=0.01)
    with pytest.raises(ValueError, match="repeat_scope must be one of round, run, got 'epoch'"):
        RewardConfig(repeat_scope="epoch")


def test_resuming_with_other_settings_is_refused(model_dir, tmp_path) -> None:
    config = tiny_tune(tmp_path / "run", model_dir, rounds=1)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tune.json").write_text(json.dumps({**config.settings(), "beta": 0.5}))
    with pytest.raises(TuneError, match=r"other settings \(beta\)"):
        tune(config, FewerSites(), resume=True, progress=False)


def test_settings_compare_at_any_depth_and_a_setting_an_older_run_lacks_is_no_change() -> None:
    now = {"beta": 0.1, "scorer": {"reward": {"repeat_penalty": 0.5, "repeat_scope": "round"}, "backend": "chgnet"}}
    older = {"beta": 0.1, "scorer": {"reward": {"repeat_penalty": 0.5}, "backend": "chgnet"}}
    assert changed_settings(older, now) == []
    older["scorer"]["reward"]["repeat_penalty"] = 1.0
    older["scorer"]["backend"] = "sevennet"
    assert changed_settings(older, now) == ["scorer.backend", "scorer.reward.repeat_penalty"]
    # a setting the older run lacks ran as its default: now set otherwise, it is a change
    now["scorer"]["reward"]["repeat_scope"] = "run"
    defaults = {"scorer": {"reward": {"repeat_scope": "round"}}}
    assert changed_settings(older, now, defaults) == ["scorer.backend", "scorer.reward.repeat_penalty",
                                                      "scorer.reward.repeat_scope"]


def test_stability_scorer_rewards_stable_new_crystals_over_repeats_known_and_invalid(shared_data, tmp_path) -> None:
    test = read_structures(shared_data / "mp_20" / "test.csv")
    first, second = test.records[0].structure, test.records[1].structure
    texts = [CrystalText.from_structure(s).to_str() for s in (first, second, first)]
    samples = tmp_path / "samples.csv"
    SampleWriter(samples, resume=False).append(
        [attempt_row(f"s{i}", "unconditional", {}, text) for i, text in enumerate(texts)]
        + [attempt_row("s3", "unconditional", {}, "4.0 4.0 4.0\n90 90 90\nNa\n0.0 0.0 0.0\nNa\n0.0 0.0 0.01\n")])
    scorer = StabilityScorer(shipped_reference(), [test.records[1]],  # the training set holds the second crystal
                             StabilityConfig(relax=RelaxConfig(max_steps=0), workers=1, progress=False))
    table, metrics = scorer(samples, tmp_path)
    table = table.set_index("id")
    assert table["valid"].tolist() == [True, True, True, False]
    assert table["unique"].tolist() == [True, True, False, False]
    assert table["novel"].tolist() == [True, False, True, False]
    e = table["e_above_hull"]
    assert e["s0"] == pytest.approx(e["s2"], abs=1e-6) and math.isnan(e["s3"])
    rewards = RewardConfig()
    assert table.at["s0", "reward"] == pytest.approx(-min(max(e["s0"], 0), 1.0))
    assert table.at["s1", "reward"] == pytest.approx(-min(max(e["s1"], 0), 1.0) - rewards.known_penalty)
    assert table.at["s2", "reward"] == pytest.approx(table.at["s0", "reward"] - rewards.repeat_penalty)
    assert table.at["s3", "reward"] == rewards.invalid
    assert metrics["valid_rate"] == 0.75 and metrics["uniqueness"] == pytest.approx(2 / 3)
    assert metrics["novelty"] == pytest.approx(2 / 3)
    assert metrics["metastable_rate"] == pytest.approx(float((e < 0.1).sum()) / 4)
    assert len(pd.read_csv(tmp_path / "stability.csv")) == 3  # only the valid attempts were relaxed
    assert table["new_to_run"].tolist() == [True, True, True, False] and metrics["new_to_run"] == 1.0

    # The same round as the run's second, after a round that wrote the first crystal (and one that cannot be read):
    # with repeats counted over the run, the first crystal is a repeat there too.
    earlier = tmp_path / "round_001" / "samples.csv"
    earlier.parent.mkdir()
    SampleWriter(earlier, resume=False).append([attempt_row("s0", "unconditional", {}, texts[0]),
                                                attempt_row("s1", "unconditional", {}, "garbled")])
    for scope, s0_penalised in (("round", False), ("run", True)):
        scorer.reward = RewardConfig(repeat_scope=scope)
        table, metrics = scorer(samples, tmp_path, [earlier])
        table = table.set_index("id")
        assert table["new_to_run"].tolist() == [False, True, False, False]
        assert metrics["new_to_run"] == pytest.approx(1 / 3) and metrics["uniqueness"] == pytest.approx(2 / 3)
        penalty = rewards.repeat_penalty if s0_penalised else 0.0
        assert table.at["s0", "reward"] == pytest.approx(-min(max(e["s0"], 0), 1.0) - penalty)
        assert table.at["s2", "reward"] == pytest.approx(-min(max(e["s0"], 0), 1.0) - rewards.repeat_penalty)

    # A probe (the round model's further attempts, not relaxed) that also wrote the second crystal: the second now
    # pays the repeat penalty beside its known penalty, and probe_repeats counts it (1 of 3 valid).
    probe = tmp_path / "probe.csv"
    SampleWriter(probe, resume=False).append([attempt_row("p0", "unconditional", {}, texts[1])])
    scorer.reward = RewardConfig()
    table, metrics = scorer(samples, tmp_path, [], probe)
    table = table.set_index("id")
    assert table["off_probe"].tolist() == [True, False, True, False]
    assert metrics["probe_repeats"] == pytest.approx(1 / 3)
    assert table.at["s1", "reward"] == pytest.approx(
        -min(max(e["s1"], 0), 1.0) - rewards.known_penalty - rewards.repeat_penalty)
    assert table.at["s0", "reward"] == pytest.approx(-min(max(e["s0"], 0), 1.0))

    # Crowding: the round's and the probe's crystals (first, second, first, and second again) against a training set
    # of 40 test crystals, in structure-fingerprint space; each valid crystal pays crowding_weight times its own.
    from crystext.tune.rounds import CROWDING_CUTOFF, crowding, structure_fingerprints

    training = test.records[1:41]
    crowded = StabilityScorer(shipped_reference(), training, scorer.stability,
                              RewardConfig(crowding_weight=0.5))
    table, metrics = crowded(samples, tmp_path, [], probe)  # the relaxations are resumed from stability.csv
    table = table.set_index("id")
    expected = crowding(structure_fingerprints([first, second, first, second])[0],
                        structure_fingerprints([r.structure for r in training])[0], CROWDING_CUTOFF)
    assert table["crowding"].tolist() == pytest.approx([*expected[:3], 0.0])
    assert expected[0] == expected[2] > 0.5  # two of four crystals one structure: crowded beyond the training set
    assert table.at["s0", "reward"] == pytest.approx(-min(max(e["s0"], 0), 1.0) - 0.5 * expected[0])
    assert metrics["mean_crowding"] == pytest.approx(expected[:3].mean())


def test_a_prompted_crystal_must_have_its_formula_and_is_not_charged_for_being_known(shared_data, tmp_path) -> None:
    test = read_structures(shared_data / "mp_20" / "test.csv")
    first, second = test.records[0].structure, test.records[1].structure
    asked = {"formula": second.composition.reduced_formula}
    samples = tmp_path / "samples.csv"
    SampleWriter(samples, resume=False).append([
        attempt_row("u0", "unconditional", {}, CrystalText.from_structure(first).to_str()),
        attempt_row("p0", "conditional", asked, CrystalText.from_structure(second).to_str()),  # as asked, known
        attempt_row("p1", "conditional", asked, CrystalText.from_structure(first).to_str())])  # another formula
    scorer = StabilityScorer(shipped_reference(), [test.records[1]],  # the training set holds the second crystal
                             StabilityConfig(relax=RelaxConfig(max_steps=0), workers=1, progress=False))
    table, metrics = scorer(samples, tmp_path)
    table = table.set_index("id")
    assert table["prompted"].tolist() == [False, True, True]
    assert table["prompt_met"].tolist() == [True, True, False] and metrics["prompt_met"] == 0.5
    assert table["novel"].tolist() == [True, False, True] and table["valid"].all()
    e = table["e_above_hull"]
    assert table.at["u0", "reward"] == pytest.approx(-min(max(e["u0"], 0), 1.0))
    assert table.at["p0", "reward"] == pytest.approx(-min(max(e["p0"], 0), 1.0))  # no known penalty
    assert table.at["p1", "reward"] == RewardConfig().invalid


def test_tune_command_runs_rounds_writes_a_report_and_names_bad_settings(model_dir, shared_data, tmp_path,
                                                                         capsys) -> None:
    from crystext.cli import main

    train = shared_data / "mp_20" / "val.csv"
    base = ["tune", "--model", str(model_dir), "--out", str(tmp_path / "run"), "--train", str(train)]
    assert main([*base, "--attempts", "0"]) == 1
    assert "crystext tune: error: --attempts must be at least 1, got 0" in capsys.readouterr().err
    assert main([*base, "--prompt-group", "0"]) == 1
    assert "crystext tune: error: --prompt-group must be at least 1, got 0" in capsys.readouterr().err
    assert main([*base, "--update-batch", "0"]) == 1
    assert "crystext tune: error: --update-batch must be at least 1, got 0" in capsys.readouterr().err
    assert main([*base, "--data-weight", "-0.5"]) == 1
    assert "crystext tune: error: --data-weight must be >= 0, got -0.5" in capsys.readouterr().err
    assert main([*base, "--crowding-cutoff", "0"]) == 1
    assert "crystext tune: error: --crowding-cutoff must be positive, got 0.0" in capsys.readouterr().err
    assert main([*base, "--invalid", "-1"]) == 1
    assert "--invalid (-1.0) must be below every valid crystal's reward (-2)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written
    fast = ["--rounds", "1", "--attempts", "12", "--max-atoms", "6", "--max-steps", "0", "--workers", "1"]
    assert main([*base, *fast]) == 0
    assert "tuned model: " + str(tmp_path / "run" / "round_001" / "model") in capsys.readouterr().err
    metrics = read_rounds(tmp_path / "run")[0]
    scores = pd.read_csv(tmp_path / "run" / "round_001" / "scores.csv")
    assert metrics["attempts"] == len(scores) == 12
    assert metrics["valid_rate"] == pytest.approx(scores["valid"].mean())
    assert metrics["reward_mean"] == pytest.approx(scores["reward"].mean())
    settings = json.loads((tmp_path / "run" / "tune.json").read_text())
    assert settings["attempts"] == 12 and settings["scorer"]["reward"]["balance_weight"] == 0.0
    assert settings["reference"] == "start" and settings["pair_size_bin"] == 4
    assert settings["scorer"]["relax"]["max_steps"] == 0 and settings["scorer"]["backend"] == "chgnet"
    report = (tmp_path / "run" / "report.html").read_text()
    assert "<td>12</td>" in report and report.count("data:image/png;base64,") == 2
    assert main(base + fast) == 1
    assert "pass --resume" in capsys.readouterr().err


def test_a_lora_model_is_tuned_in_its_adapters_against_the_merged_start(shared_data, tmp_path) -> None:
    """A LoRA model: its adapters load trainable and move, its base weights stay, and the reference (the adapter
    merged into its base) runs through trl's fused forward."""
    from test_train import tiny_config, tiny_pretrained

    from crystext.model import LoraSettings, ModelSpec, load_model
    from crystext.train import train
    from crystext.tune import update_model

    data = tmp_path / "data"
    data.mkdir()
    pd.read_csv(shared_data / "mp_20" / "val.csv", nrows=40).to_csv(data / "train.csv", index=False)
    base = tiny_pretrained(tmp_path / "base")
    start = train(tiny_config(tmp_path / "lora", data, model=ModelSpec(str(base), LoraSettings(rank=4))))
    good = "4.1 4.1 4.1\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\n"
    bad = "3.0 3.0 3.0\n90 90 90\nNa\n0.00 0.00 0.00\nNa\n0.01 0.00 0.00\n"
    pairs = [{"prompt": Attributes().to_prompt(), "chosen": good, "rejected": bad}] * 4
    summary = update_model(TuneConfig(out=tmp_path / "run", model=start, learning_rate=1e-2), 1, start, pairs,
                           tmp_path / "tuned")
    assert summary["steps"] == 1 and (tmp_path / "tuned" / "adapter_config.json").is_file()
    before = dict(load_model(start)[0].named_parameters())
    after = dict(load_model(tmp_path / "tuned")[0].named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and all("lora_" in n for n in moved)
