"""Training: pairs, labels and batches, scratch and LoRA paths end to end on tiny models, exact resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from pymatgen.core import Lattice, Structure
from tokenizers import Tokenizer, models
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from crystext.data import read_split
from crystext.geometry import spacegroup_number
from crystext.grammar import element_volumes
from crystext.model import (
    LoraSettings,
    ModelSpec,
    build_scratch_model,
    load_model,
    load_pretrained,
    train_scratch_tokenizer,
)
from crystext.prompts import Attributes, cell_formula
from crystext.textformat import CrystalText, FormatOptions, decode
from crystext.train import (
    IGNORE,
    Batches,
    Example,
    TrainConfig,
    build_model,
    collate,
    composition_weights,
    earlier_recipe,
    make_pair,
    relabel,
    replacing_dir,
    to_examples,
    tokenize_pair,
    train,
    weighted_loss,
)

NACL_TEXT = "5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, shared_data) -> Path:
    """A dataset folder with 40 real MP-20 structures as its train split."""
    folder = tmp_path_factory.mktemp("tiny_mp20")
    pd.read_csv(shared_data / "mp_20" / "val.csv", nrows=40).to_csv(folder / "train.csv", index=False)
    return folder


def tiny_config(out: Path, data: Path, **changes: Any) -> TrainConfig:
    """Six steps of scratch-tiny on `data`, evaluating every third step and checkpointing every step."""
    config = TrainConfig(
        out=out, data_dir=data, model=ModelSpec("scratch-tiny"), splits=("train",), holdout=0.2, max_steps=6,
        batch_size=4, eval_every=3, save_every=1, learning_rate=3e-3, warmup_steps=0,
    )
    return dataclasses.replace(config, **changes)


def test_training_pairs_translate_unless_told_not_to() -> None:
    example = Example("nacl", CrystalText.from_str(NACL_TEXT), Attributes())
    rng = np.random.default_rng(0)
    kept = {make_pair(example, rng, TrainConfig(Path("x"), Path("x"), infill_fraction=0.0, translate=False))[1]
            for _ in range(5)}
    moved = {make_pair(example, rng, TrainConfig(Path("x"), Path("x"), infill_fraction=0.0))[1] for _ in range(5)}
    assert kept == {NACL_TEXT}
    assert len(moved) == 5 and all(text.split("\n")[:3] == NACL_TEXT.split("\n")[:3] for text in moved)


def test_attribute_rates_decide_how_often_prompts_state_attributes() -> None:
    attributes = Attributes("NaCl", 225, 0.0, -2.1, 5.0)
    example = Example("nacl", CrystalText.from_str(NACL_TEXT), attributes)
    rng = np.random.default_rng(0)

    def prompts(**rates: float) -> list[str]:
        config = TrainConfig(Path("x"), Path("x"), infill_fraction=0.0, translate=False, **rates)
        return [make_pair(example, rng, config)[0] for _ in range(2000)]

    def share(texts: list[str], words: str) -> float:
        return sum(words in t for t in texts) / len(texts)

    unconditional = Attributes().to_prompt()
    paper = prompts()  # every number of attributes (0-5) equally likely: a formula in half, nothing in a sixth
    assert share(paper, "formula NaCl") == pytest.approx(0.5, abs=0.03)
    assert sum(t == unconditional for t in paper) / len(paper) == pytest.approx(1 / 6, abs=0.02)
    dense = prompts(attribute_rate=0.9, unconditional_rate=0.2)
    assert share(dense, "formula NaCl") == pytest.approx(0.8 * 0.9, abs=0.03)
    assert share(dense, "space group 225") == pytest.approx(0.72, abs=0.03)
    assert sum(t == unconditional for t in dense) / len(dense) == pytest.approx(0.2 + 0.8 * 0.1**5, abs=0.02)
    assert set(prompts(attribute_rate=1.0)) == {attributes.to_prompt()}


def test_relabelled_crystals_state_the_formula_of_their_new_elements() -> None:
    sites = "Sr Sr Ti O O O O O O".split()
    text = "5.0 5.0 5.0\n90 90 90\n" + "\n".join(f"{el}\n0.{i}0 0.00 0.00" for i, el in enumerate(sites))
    crystal = CrystalText.from_str(text)
    rng = np.random.default_rng(3)
    swapped, formula = relabel(crystal, rng)
    new = list(dict.fromkeys(swapped.species))
    assert len(new) == 3
    assert formula == f"{new[0]}2{new[1]}{new[2]}6"  # Sr2TiO6 reduced by the gcd 1, in the text's order
    assert swapped.species == (new[0],) * 2 + (new[1],) + (new[2],) * 6
    assert swapped.frac_coords == crystal.frac_coords and swapped.angles == crystal.angles
    volumes = element_volumes()  # the cell holds the new atoms as the old one held its own: 9 atoms' volumes
    old_volume, new_volume = (sum(volumes[e] for e in c.species) for c in (crystal, swapped))
    assert np.prod(swapped.lengths) / 125.0 == pytest.approx(new_volume / old_volume)
    assert swapped.lengths[0] == swapped.lengths[1] == swapped.lengths[2]
    na2cl2 = NACL_TEXT + "\nNa\n0.50 0.50 0.00\nCl\n0.00 0.00 0.50"  # Na Cl Na Cl: listed in first-seen order
    nacl, nacl_formula = relabel(CrystalText.from_str(na2cl2), rng)
    assert nacl_formula == "".join(dict.fromkeys(nacl.species))  # Na2Cl2 -> one unit of each
    config = TrainConfig(Path("x"), Path("x"), infill_fraction=0.0, translate=False, attribute_rate=0.0,
                         relabel_rate=0.5)
    example = Example("nacl", CrystalText.from_str(NACL_TEXT), Attributes("NaCl", 225))
    pairs = [make_pair(example, rng, config) for _ in range(1000)]
    relabelled = [pair for pair in pairs if pair.completion != NACL_TEXT]
    assert len(relabelled) / len(pairs) == pytest.approx(0.5, abs=0.05)
    for prompt, completion, generation in relabelled:
        species = CrystalText.from_str(completion).species
        assert prompt == Attributes(formula="".join(species)).to_prompt() and species[0] != species[1]
        assert generation


def test_cell_formula_prompts_state_every_atom_of_the_crystal_written() -> None:
    """With `cell_formula` a prompt that states a formula states the written crystal's whole cell (Na2Cl2 for two
    units), the relabelled crystals' too; other attributes and unprompted examples are untouched."""
    na2cl2 = CrystalText.from_str(NACL_TEXT + "\nNa\n0.50 0.50 0.00\nCl\n0.00 0.00 0.50")
    example = Example("nacl", na2cl2, Attributes("NaCl", 225))
    rng = np.random.default_rng(0)
    config = TrainConfig(Path("x"), Path("x"), infill_fraction=0.0, translate=False, attribute_rate=0.5,
                         relabel_rate=0.3, cell_formula=True)
    pairs = [make_pair(example, rng, config) for _ in range(400)]
    real = [p.prompt for p in pairs if p.completion == na2cl2.to_str()]
    assert {p for p in real if "formula" in p} == {Attributes("Na2Cl2", 225).to_prompt(),
                                                   Attributes("Na2Cl2").to_prompt()}
    assert Attributes(spacegroup=225).to_prompt() in real and Attributes().to_prompt() in real
    relabelled = [p for p in pairs if p.completion != na2cl2.to_str()]
    assert len(relabelled) > 50
    for prompt, completion, _ in relabelled:
        first, second = dict.fromkeys(CrystalText.from_str(completion).species)
        assert prompt == Attributes(formula=f"{first}2{second}2").to_prompt()


@pytest.mark.parametrize("attribute_rate", [1.0, 0.0])
def test_element_and_end_tokens_of_generation_examples_weigh_more(attribute_rate: float) -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    examples = [Example("nacl", CrystalText.from_str(NACL_TEXT), Attributes("NaCl", 225))]
    config = TrainConfig(Path("x"), Path("x"), batch_size=1, infill_fraction=0.0, attribute_rate=attribute_rate,
                         translate=False, element_weight=5.0)
    batch = next(Batches(examples, tokenizer, config))
    labels, weights = batch["labels"][0], batch["loss_weights"][0]
    elements = (labels == tokenizer.convert_tokens_to_ids("Na")) | (labels == tokenizer.convert_tokens_to_ids("Cl"))
    decides = elements | (labels == tokenizer.eos_token_id) | torch.cat([elements[1:], torch.tensor([False])])
    assert int(elements.sum()) == 2  # the completion's Na and Cl; the prompt's formula is not in the loss
    assert [tokenizer.convert_ids_to_tokens(int(i)) for i in labels[decides]] == ["\n", "Na", "\n", "Cl", "</s>"]
    assert set(weights[decides].tolist()) == {5.0} and set(weights[~decides].tolist()) == {1.0}
    infill = dataclasses.replace(config, infill_fraction=1.0)  # the infill answer is one element: weighs 1
    assert set(next(Batches(examples, tokenizer, infill))["loss_weights"][0].tolist()) == {1.0}
    unweighted = dataclasses.replace(config, element_weight=1.0)
    assert "loss_weights" not in next(Batches(examples, tokenizer, unweighted))


def test_composition_weights_weigh_the_end_as_much_as_its_alternative() -> None:
    # labels: prompt (ignored), "Na", "\n", x, "\n", "Cl", "\n", x, end; 11 and 17 are elements, 2 the end
    labels = [IGNORE, 11, 5, 7, 5, 17, 5, 7, 2]
    assert composition_weights(labels, frozenset({11, 17}), 2, 4.0) == [4.0, 4.0, 1.0, 1.0, 4.0, 4.0, 1.0, 1.0, 4.0]


def test_composition_weights_weigh_each_elements_count_in_the_site_count_format() -> None:
    # labels: prompt (ignored), "Na", " ", "2", "\n", x, "\n", "Na", " ", "1", "\n", x, end; 5 ends a line
    labels = [IGNORE, 11, 3, 9, 5, 7, 5, 11, 3, 8, 5, 7, 2]
    expected = [4.0, 4.0, 4.0, 4.0, 1.0, 1.0, 4.0, 4.0, 4.0, 4.0, 1.0, 1.0, 4.0]
    assert composition_weights(labels, frozenset({11}), 2, 4.0, line_end_id=5) == expected


def test_weighted_loss_is_the_weighted_mean_of_the_models_own_token_losses() -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    model = build_scratch_model("scratch-tiny", tokenizer, seed=0)
    ids, labels = tokenize_pair(tokenizer, Attributes("NaCl").to_prompt(), NACL_TEXT, True, 1024)
    element_ids = {tokenizer.convert_tokens_to_ids("Na"), tokenizer.convert_tokens_to_ids("Cl")}
    weights = [3.0 if label in element_ids else 1.0 for label in labels]

    def mean_loss(keep: Any) -> tuple[float, int]:
        kept = [label if keep(label) else IGNORE for label in labels]
        batch = collate([(ids, kept)], tokenizer.pad_token_id)
        return float(model(**batch).loss), sum(label != IGNORE for label in kept[1:])

    with torch.no_grad():
        (on_elements, n_elements), (on_rest, n_rest) = (
            mean_loss(lambda label: label in element_ids),
            mean_loss(lambda label: label != IGNORE and label not in element_ids),
        )
        plain = float(weighted_loss(model, collate([(ids, labels)], tokenizer.pad_token_id)))
        weighted = float(weighted_loss(model, collate([(ids, labels)], tokenizer.pad_token_id, [weights])))
    assert n_elements == 2
    assert plain == pytest.approx((on_elements * 2 + on_rest * n_rest) / (2 + n_rest), rel=1e-5)
    assert weighted == pytest.approx((3 * on_elements * 2 + on_rest * n_rest) / (3 * 2 + n_rest), rel=1e-5)
    assert abs(weighted - plain) > 1e-3


def test_labels_cover_only_the_completion_by_default() -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    prompt = Attributes().to_prompt()
    ids, labels = tokenize_pair(tokenizer, prompt, NACL_TEXT, True, 1024)
    n_prompt = 1 + len(tokenizer(prompt, add_special_tokens=False)["input_ids"])  # bos + prompt
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tokenizer.eos_token_id
    _, full = tokenize_pair(tokenizer, prompt, NACL_TEXT, False, 1024)
    assert full == ids
    batch = collate([(ids, labels), (ids[:5], labels[:5])], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == (2, len(ids))
    assert int(batch["attention_mask"][1].sum()) == 5 and (batch["labels"][1, 5:] == IGNORE).all()


def test_batches_continue_exactly_from_their_saved_state_across_epochs() -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    examples = [Example(f"x{i}", CrystalText.from_str(NACL_TEXT.replace("5.6", f"{5 + i}.6")), Attributes())
                for i in range(5)]
    config = TrainConfig(Path("x"), Path("x"), batch_size=3)
    straight = Batches(examples, tokenizer, config)
    expected = [next(straight) for _ in range(4)]  # 12 examples: two passes over the 5 and part of a third
    interrupted = Batches(examples, tokenizer, config)
    next(interrupted)
    resumed = Batches(examples, tokenizer, config)
    resumed.load_state_dict(interrupted.state_dict())
    for want in expected[1:]:
        got = next(resumed)
        assert all(torch.equal(got[key], want[key]) for key in want)
    assert (resumed.epoch, resumed.position) == (straight.epoch, straight.position) == (2, 2)
    assert len({tuple(batch["input_ids"][0].tolist()) for batch in expected}) > 1


def test_a_checkpoint_directory_is_replaced_whole_or_left_as_it_was(tmp_path) -> None:
    folder = tmp_path / "last"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"), replacing_dir(folder) as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert [p.name for p in tmp_path.iterdir()] == ["last"] and [p.name for p in folder.iterdir()] == ["old.txt"]
    with replacing_dir(folder) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["last"] and [p.name for p in folder.iterdir()] == ["new.txt"]


def test_a_few_steps_lower_the_loss_on_a_fixed_batch() -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    model = build_scratch_model("scratch-tiny", tokenizer)
    batch = collate([tokenize_pair(tokenizer, Attributes().to_prompt(), NACL_TEXT, True, 1024)] * 4,
                    tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach().item())
    assert losses[-1] < 0.5 * losses[0]


def test_scratch_training_writes_a_loadable_model_directory(tiny_data, tmp_path) -> None:
    out = train(tiny_config(tmp_path / "run", tiny_data))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6]
    assert log[2]["val_loss"] is not None and log[5]["val_loss"] is not None
    assert {"model.safetensors", "tokenizer.json", "crystext.json", "README.md"} <= {p.name for p in out.iterdir()}
    model, _, info = load_model(out)
    assert info["model"]["name"] == "scratch-tiny" and info["state"]["step"] in (3, 6)
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == model.config.vocab_size
    card = (out / "README.md").read_text()
    assert "32 training structures, 8 held out" in card
    assert f"best {min(r['val_loss'] for r in log if r.get('val_loss')):.4f}" in card


@pytest.mark.parametrize("lora", [False, True])
def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tiny_data, tmp_path, lora: bool) -> None:
    changes = {"model": ModelSpec(str(tiny_pretrained(tmp_path / "hub")), LoraSettings(rank=2))} if lora else {}
    straight = train(tiny_config(tmp_path / "straight", tiny_data, **changes))

    def stop_at_three(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    config = tiny_config(tmp_path / "interrupted", tiny_data, **changes)
    with pytest.raises(KeyboardInterrupt):
        train(config, on_step=stop_at_three)
    with pytest.raises(FileExistsError, match="pass --resume"):
        train(config)
    train(config, resume=True)

    def losses(run: Path) -> list[tuple[int, float, float | None]]:
        rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r.get("val_loss")) for r in rows]

    assert losses(tmp_path / "interrupted") == losses(straight)
    assert len(losses(straight)) == 6


def tiny_pretrained(path: Path) -> Path:
    """A 'pretrained' LLaMA saved like a hub model, whose tokenizer has an eos but no pad token."""
    backend = train_scratch_tokenizer([NACL_TEXT])._tokenizer
    vocab = {token: i for token, i in backend.get_vocab().items() if token != "<pad>"}
    vocab = {token: i for i, token in enumerate(sorted(vocab, key=vocab.get))}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer, word_level.decoder = backend.pre_tokenizer, backend.decoder
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_lora_fine_tuning_changes_adapters_not_base_weights(tiny_data, tmp_path) -> None:
    base_dir = tiny_pretrained(tmp_path / "base")
    model, tokenizer = load_pretrained(ModelSpec(str(base_dir), LoraSettings(rank=4)))
    assert tokenizer.pad_token == "<pad>" and model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)

    out = train(tiny_config(tmp_path / "lora", tiny_data, model=ModelSpec(str(base_dir), LoraSettings(rank=4))))
    assert (out / "adapter_config.json").is_file()
    tuned, _, info = load_model(out)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    tuned_weights = dict(tuned.named_parameters())
    q_base = base.model.layers[0].self_attn.q_proj.weight
    q_tuned = next(p for n, p in tuned_weights.items() if n.endswith("layers.0.self_attn.q_proj.base_layer.weight"))
    assert torch.equal(q_base, q_tuned)
    lora_b = next(p for n, p in tuned_weights.items() if "layers.0.self_attn.q_proj.lora_B" in n)
    assert lora_b.abs().sum() > 0  # initialised at zero, so training moved it
    assert info["model"]["lora"]["rank"] == 4


def test_new_lora_adapters_follow_the_runs_seed(tiny_data, tmp_path) -> None:
    """peft draws lora_A at random: the same seed gives the same adapters whatever ran before, another seed others."""
    spec = ModelSpec(str(tiny_pretrained(tmp_path / "base")), LoraSettings(rank=4))

    def lora_a(seed: int) -> torch.Tensor:
        torch.rand(7)  # the global generator moved on between runs
        model, _ = build_model(tiny_config(tmp_path / "out", tiny_data, model=spec, seed=seed), [], None)
        return next(p for n, p in model.named_parameters() if "layers.0.self_attn.q_proj.lora_A" in n).detach()

    first = lora_a(3)
    assert torch.equal(first, lora_a(3))
    assert not torch.equal(first, lora_a(4))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"max_steps": -1}, "max_steps must be at least 1, got -1"),
        ({"grad_accum": 0}, "grad_accum must be at least 1, got 0"),
        ({"save_every": 0}, "save_every must be at least 1, got 0"),
        ({"warmup_steps": -1}, "warmup_steps must be at least 0, got -1"),
        ({"epochs": float("nan")}, "epochs must be positive, got nan"),
        ({"grad_clip": 0.0}, "grad_clip must be positive, got 0.0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
        ({"infill_fraction": -0.5}, "infill_fraction must be between 0 and 1, got -0.5"),
        ({"attribute_rate": 1.5}, "attribute_rate must be between 0 and 1, got 1.5"),
        ({"unconditional_rate": -0.1}, "unconditional_rate must be between 0 and 1, got -0.1"),
        ({"relabel_rate": 1.5}, "relabel_rate must be between 0 and 1, got 1.5"),
        ({"element_weight": 0.0}, "element_weight must be positive, got 0.0"),
        ({"max_atoms": 0}, "max_atoms must be at least 1, got 0"),
    ],
)
def test_train_config_refuses_settings_that_make_no_sense(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        TrainConfig(Path("x"), Path("x"), **changes)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rank": 0}, "rank must be at least 1, got 0"),
        ({"alpha": 0}, "alpha must be positive, got 0"),
        ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
        ({"target_modules": ("q_proj", "")}, "target_modules must be module names, got 'q_proj,'"),
    ],
)
def test_lora_settings_refuse_settings_that_make_no_sense(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        LoraSettings(**changes)
    assert str(caught.value) == message


def test_continuing_a_crystext_run_keeps_its_recipe_unless_told_otherwise(tiny_data, tmp_path, capsys) -> None:
    """`crystext train --model DIR` on a directory crystext wrote: all weights and untranslated coordinates, as
    DIR's own run trained (a pretrained model's defaults, LoRA and translation, would change the task unasked)."""
    from crystext.cli import main

    first = train(tiny_config(tmp_path / "first", tiny_data, max_steps=1, translate=False))
    assert earlier_recipe(str(first)) == {"lora": False, "translate": False, "site_counts": False,
                                          "joined_counts": False, "cell_formula": False, "asymmetric_unit": False,
                                          "asymmetric_when_grouped": False}
    assert earlier_recipe("scratch-tiny") == {} and earlier_recipe(str(tiny_pretrained(tmp_path / "hub"))) == {}
    common = ["train", "--model", str(first), "--data-dir", str(tiny_data), "--splits", "train", "--max-steps", "1",
              "--batch-size", "4", "--eval-every", "1"]
    capsys.readouterr()

    assert main([*common, "--out", str(tmp_path / "kept")]) == 0
    assert (f"continuing the recipe of {first}: all weights, coordinates as written (--[no-]lora, --[no-]translate to "
            "change)") in capsys.readouterr().err.splitlines()
    kept = json.loads((tmp_path / "kept" / "crystext.json").read_text())
    assert kept["model"]["lora"] is None and kept["translate"] is False
    assert not (tmp_path / "kept" / "adapter_config.json").exists()

    assert main([*common, "--out", str(tmp_path / "changed"), "--lora", "--lora-rank", "2", "--translate",
                 "--joined-counts", "--cell-formula"]) == 0
    assert "continuing the recipe" not in capsys.readouterr().err
    changed = json.loads((tmp_path / "changed" / "crystext.json").read_text())
    assert changed["model"]["lora"]["rank"] == 2 and changed["translate"] is True
    assert changed["text_format"]["site_counts"] is True and kept["text_format"]["site_counts"] is False
    assert changed["text_format"]["joined_counts"] is True  # joined counts are site counts, written "Fe2"
    assert changed["cell_formula"] is True and kept["cell_formula"] is False
    assert earlier_recipe(str(tmp_path / "changed")) == {"lora": True, "translate": True, "site_counts": True,
                                                         "joined_counts": True, "cell_formula": True,
                                                         "asymmetric_unit": False, "asymmetric_when_grouped": False}
    # The LoRA run continued: its own adapters, or every weight with them merged in.
    for lora, out in (("--lora", "adapters"), ("--no-lora", "merged")):
        assert main([*common[:2], str(tmp_path / "changed"), *common[3:], "--out", str(tmp_path / out), lora]) == 0
        assert json.loads((tmp_path / out / "crystext.json").read_text())["cell_formula"] is True
    assert (f"continuing the recipe of {tmp_path / 'changed'}: all weights, coordinates translated, site counts, "
            "joined counts, cell formulas (--[no-]lora, --[no-]translate, --[no-]site-counts, --[no-]joined-counts, "
            "--[no-]cell-formula to change)") in capsys.readouterr().err.splitlines()
    adapter = json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())
    assert adapter["r"] == 2 and not (tmp_path / "merged" / "adapter_config.json").exists()
    assert json.loads((tmp_path / "adapters" / "crystext.json").read_text())["model"]["lora"]["rank"] == 2
    # Without site counts the joined form goes too; asking for both at once is refused.
    again = [*common[:2], str(tmp_path / "changed"), *common[3:], "--no-lora"]
    assert main([*again, "--out", str(tmp_path / "plain"), "--no-site-counts"]) == 0
    plain = json.loads((tmp_path / "plain" / "crystext.json").read_text())["text_format"]
    assert plain["site_counts"] is False and plain["joined_counts"] is False
    capsys.readouterr()
    assert main([*again, "--out", str(tmp_path / "both"), "--joined-counts", "--no-site-counts"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == ("crystext train: error: --joined-counts is a way of writing "
                                                        "site counts: it cannot go with --no-site-counts")


def test_asymmetric_unit_training_keeps_the_recipes_counts_and_cell_formulas(tiny_data, tmp_path, capsys) -> None:
    """`--asymmetric-unit` continuing a site-count, cell-formula, translated run: its examples are orbits (the group
    first) counted down orbit by orbit, its prompts state the conventional cell's formula, and the translation is
    dropped unasked (an asymmetric unit's origin is its group's)."""
    from crystext.cli import main

    first = train(tiny_config(tmp_path / "first", tiny_data, max_steps=1, cell_formula=True,
                              text_format=FormatOptions(site_counts=True)))
    common = ["train", "--model", str(first), "--data-dir", str(tiny_data), "--splits", "train", "--max-steps", "1",
              "--batch-size", "4", "--eval-every", "1"]
    assert main([*common, "--out", str(tmp_path / "orbits"), "--asymmetric-unit"]) == 0
    info = json.loads((tmp_path / "orbits" / "crystext.json").read_text())
    assert info["text_format"]["asymmetric_unit"] is True and info["text_format"]["site_counts"] is True
    assert info["translate"] is False and info["cell_formula"] is True
    assert earlier_recipe(str(tmp_path / "orbits"))["asymmetric_unit"] is True
    assert "asymmetric units: the space group on a first line" in (tmp_path / "orbits" / "README.md").read_text()
    with pytest.raises(ValueError, match="asymmetric_unit cannot go with translate"):
        tiny_config(tmp_path / "x", tiny_data, text_format=FormatOptions(asymmetric_unit=True))

    examples, _ = to_examples(read_split(tiny_data, "train"), FormatOptions(asymmetric_unit=True))
    pair = make_pair(examples[0], np.random.default_rng(0), TrainConfig(
        out=tmp_path, data_dir=tiny_data, translate=False, infill_fraction=0.0,
        text_format=FormatOptions(asymmetric_unit=True)))
    group = int(pair.completion.split("\n")[0])
    assert group == examples[0].crystal.spacegroup and 1 <= group <= 230
    assert spacegroup_number(decode(pair.completion)) == group


def test_a_relabelled_asymmetric_unit_states_its_conventional_cells_formula(tiny_data, tmp_path) -> None:
    """Relabelling an asymmetric unit swaps the elements of every orbit and states the formula of the atoms the
    orbits make, not of the sites written (Fm-3m Na12Cl4 written as three sites: Na3Cl, not Na2Cl)."""
    crystal = CrystalText.from_structure(Structure.from_spacegroup(
        225, Lattice.cubic(6.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0.25, 0.25, 0.25], [0.5, 0.5, 0.5]]), True)
    swapped, formula = relabel(crystal, np.random.default_rng(3))
    new_na, new_cl = (swapped.species[crystal.species.index(e)] for e in ("Na", "Cl"))
    assert formula == f"{new_na}3{new_cl}" and swapped.multiplicities == crystal.multiplicities
    assert cell_formula(swapped) == f"{new_na}12{new_cl}4"


def test_one_model_answers_a_stated_group_with_its_asymmetric_unit_and_anything_else_with_its_cell(
        tiny_data, tmp_path, capsys) -> None:
    """`--asymmetric-when-grouped` continuing an asymmetric-unit run: a generation example whose prompt states a space
    group is that group's asymmetric unit (group line first, the conventional cell's formula stated), every other
    example the whole cell as read (the first line a lattice, the cell's own formula); the recipe's asymmetric-only
    form is replaced, and the flag carries over to a continued run."""
    from crystext.cli import main

    options = FormatOptions(site_counts=True, joined_counts=True, asymmetric_when_grouped=True)
    with pytest.raises(ValueError, match="asymmetric_when_grouped writes whole cells"):
        FormatOptions(asymmetric_unit=True, asymmetric_when_grouped=True)
    assert options.answering(225).asymmetric_unit and not options.answering(None).asymmetric_unit
    assert FormatOptions(asymmetric_unit=True).answering(None).asymmetric_unit  # one form only: unchanged

    examples, _ = to_examples(read_split(tiny_data, "train"), options)
    config = TrainConfig(out=tmp_path, data_dir=tiny_data, translate=True, infill_fraction=0.0, attribute_rate=1.0,
                         cell_formula=True, text_format=options)
    rng = np.random.default_rng(0)
    for example in examples[:10]:
        grouped = make_pair(example, rng, config)
        group = example.attributes.spacegroup
        assert grouped.prompt.startswith(f"bulk crystal. formula {cell_formula(example.unit)}. space group {group}.")
        assert int(grouped.completion.split("\n")[0]) == group == example.unit.spacegroup
        expanded = decode(grouped.completion).composition
        assert expanded.reduced_formula == example.crystal.to_structure().composition.reduced_formula
        plain = make_pair(example, rng, dataclasses.replace(config, attribute_rate=0.0))
        assert "space group" not in plain.prompt and len(plain.completion.split("\n")[0].split()) == 3  # lengths
        assert decode(plain.completion).composition == example.crystal.to_structure().composition

    first = train(tiny_config(tmp_path / "first", tiny_data, max_steps=1, cell_formula=True, translate=False,
                              text_format=FormatOptions(site_counts=True, asymmetric_unit=True)))
    common = ["train", "--data-dir", str(tiny_data), "--splits", "train", "--max-steps", "1", "--batch-size", "4",
              "--eval-every", "1"]
    assert main([*common, "--model", str(first), "--out", str(tmp_path / "both"), "--asymmetric-when-grouped"]) == 0
    assert "asymmetric units for stated space groups" in capsys.readouterr().err
    info = json.loads((tmp_path / "both" / "crystext.json").read_text())["text_format"]
    assert info["asymmetric_when_grouped"] is True and info["asymmetric_unit"] is False
    assert "a crystal whose prompt states a space group as its asymmetric unit" in (
        tmp_path / "both" / "README.md").read_text()
    assert earlier_recipe(str(tmp_path / "both"))["asymmetric_when_grouped"] is True
    # Every older flag given, the form carried over all the same: the run says so.
    assert main([*common, "--model", str(tmp_path / "both"), "--out", str(tmp_path / "on"), "--no-lora",
                 "--no-translate", "--site-counts", "--no-joined-counts", "--cell-formula"]) == 0
    assert (f"continuing the recipe of {tmp_path / 'both'}: all weights, coordinates as written, site counts, cell "
            "formulas, asymmetric units for stated space groups") in capsys.readouterr().err
    kept = json.loads((tmp_path / "on" / "crystext.json").read_text())["text_format"]
    assert kept["asymmetric_when_grouped"] is True and kept["asymmetric_unit"] is False
