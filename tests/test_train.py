"""Prompts, tokenizer and training: scratch and LoRA paths end to end on tiny models, exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from crystext.model import (
    LoraSettings,
    ModelError,
    ModelSpec,
    build_scratch_model,
    check_digit_tokenization,
    export_model,
    load_model,
    load_pretrained,
    train_scratch_tokenizer,
)
from crystext.prompts import Attributes, infill_example, infill_prompt
from crystext.textformat import CrystalText, FormatOptions
from crystext.train import IGNORE, Example, TrainConfig, collate, make_pair, tokenize_pair, train

NACL_TEXT = "5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, shared_data) -> Path:
    """A dataset folder with 40 real MP-20 structures as its train split."""
    folder = tmp_path_factory.mktemp("tiny_mp20")
    pd.read_csv(shared_data / "mp_20" / "val.csv", nrows=40).to_csv(folder / "train.csv", index=False)
    return folder


def tiny_config(out: Path, data: Path, **changes) -> TrainConfig:
    settings = dict(
        out=out, data_dir=data, model=ModelSpec("scratch-tiny"), splits=("train",), holdout=0.2, max_steps=6,
        batch_size=4, eval_every=3, save_every=1, learning_rate=3e-3, warmup_steps=0,
    )
    settings.update(changes)
    return TrainConfig(**settings)


def test_attribute_prompts_are_exact_and_sampled_reproducibly() -> None:
    row = {"pretty_formula": "GaTe", "spacegroup.number": 194, "e_above_hull": 0.0123456, "band_gap": float("nan"),
           "formation_energy_per_atom": -0.5750923}
    attributes = Attributes.from_properties(row)
    assert attributes == Attributes("GaTe", 194, 0.0123456, -0.5750923, None)
    assert attributes.to_prompt() == (
        "bulk crystal. formula GaTe. space group 194. energy above hull 0.0123 ev/atom. formation energy -0.5751 "
        "ev/atom. lattice lengths and angles, then each element and its fractional coordinates:\n"
    )
    assert Attributes().to_prompt() == (
        "bulk crystal. lattice lengths and angles, then each element and its fractional coordinates:\n"
    )
    subsets = [attributes.subset(np.random.default_rng(s)) for s in range(40)]
    assert subsets[:5] == [attributes.subset(np.random.default_rng(s)) for s in range(5)]
    assert {len(s.to_dict()) for s in subsets} == {0, 1, 2, 3, 4}
    assert all(s.band_gap is None for s in subsets)


def test_infill_masks_whole_element_lines_only() -> None:
    crystal = CrystalText.from_str("5.6 5.6 5.6\n90 90 90\nC\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\nC\n0.25 0.25 0.25")
    prompt = infill_prompt(crystal, "C", FormatOptions())
    assert prompt == (
        "bulk crystal with one element written as [MASK]:\n5.6 5.6 5.6\n90 90 90\n[MASK]\n0.00 0.00 0.00\nCl\n"
        "0.50 0.50 0.50\n[MASK]\n0.25 0.25 0.25\nelement for [MASK]:"
    )
    _, answer = infill_example(crystal, np.random.default_rng(0), FormatOptions())
    assert answer in (" C", " Cl")
    with pytest.raises(ValueError, match="element Fe is not in the crystal"):
        infill_prompt(crystal, "Fe", FormatOptions())


def test_training_pairs_translate_unless_told_not_to() -> None:
    example = Example("nacl", CrystalText.from_str(NACL_TEXT), Attributes())
    rng = np.random.default_rng(0)
    kept = {make_pair(example, rng, TrainConfig(Path("x"), Path("x"), infill_fraction=0.0, translate=False))[1] for _ in range(5)}
    moved = {make_pair(example, rng, TrainConfig(Path("x"), Path("x"), infill_fraction=0.0))[1] for _ in range(5)}
    assert kept == {NACL_TEXT}
    assert len(moved) == 5 and all(text.split("\n")[:3] == NACL_TEXT.split("\n")[:3] for text in moved)


def test_scratch_tokenizer_has_single_tokens_for_elements_crystal_numbers_and_words() -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    text = Attributes("LiFePO4", 62, band_gap=-1.2345).to_prompt() + "4.1 4.1 18.4\n90 90 120\n[MASK]\n0.33 0.67 0.18"
    tokens = tokenizer.tokenize(text)
    assert tokens[:11] == ["bulk", " ", "crystal", ".", " ", "formula", " ", "Li", "Fe", "P", "O"]
    assert "[MASK]" in tokens and "Og" in tokenizer.get_vocab() and "Xe" in tokenizer.get_vocab()
    assert tokens[-19:] == [
        "4.1", " ", "4.1", " ", "18.4", "\n", "90", " ", "90", " ", "120", "\n",
        "[MASK]", "\n", "0.33", " ", "0.67", " ", "0.18",
    ]
    # a number outside the crystal format (a property value with four decimals) is written digit by digit
    assert ["-", "1", ".", "2", "3", "4", "5"] == tokens[tokens.index("gap") + 2 : tokens.index("gap") + 9]
    assert tokens[tokens.index("group") + 2 : tokens.index("group") + 4] == ["62", "."]
    assert tokenizer.decode(tokenizer(NACL_TEXT)["input_ids"]) == NACL_TEXT


def test_scratch_tokenizer_writes_any_number_without_unknown_tokens() -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    rng = np.random.default_rng(0)
    for _ in range(2000):
        text = "".join(rng.choice(list("0123456789. -\nH"), size=int(rng.integers(1, 14))))
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert tokenizer.decode(ids) == text


def test_warns_when_numbers_are_not_split_into_digits() -> None:
    backend = Tokenizer(models.WordLevel({"<unk>": 0, "12.345": 1, "0.678": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    with pytest.warns(UserWarning, match="does not split numbers into single digits"):
        assert not check_digit_tokenization(PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>"))


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


def test_a_few_steps_lower_the_loss_on_a_fixed_batch() -> None:
    tokenizer = train_scratch_tokenizer([NACL_TEXT])
    model = build_scratch_model("scratch-tiny", tokenizer)
    batch = collate([tokenize_pair(tokenizer, Attributes().to_prompt(), NACL_TEXT, True, 1024)] * 4, tokenizer.pad_token_id)
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
    model, tokenizer, info = load_model(out)
    assert info["model"]["name"] == "scratch-tiny" and info["state"]["step"] in (3, 6)
    assert AutoModelForCausalLM.from_pretrained(out).config.vocab_size == model.config.vocab_size
    card = (out / "README.md").read_text()
    assert "32 training structures, 8 held out" in card
    assert f"best {min(r['val_loss'] for r in log if r.get('val_loss')):.4f}" in card


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(tiny_data, tmp_path) -> None:
    straight = train(tiny_config(tmp_path / "straight", tiny_data))

    def stop_at_three(step: int, loss: float) -> None:
        if step == 3:
            raise KeyboardInterrupt

    config = tiny_config(tmp_path / "interrupted", tiny_data)
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
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
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


def test_quantization_needs_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelError, match="4bit loading needs a CUDA GPU"):
        load_pretrained(ModelSpec("any/model", quantization="4bit"))



def test_half_precision_export_loads_back_as_float32_on_cpu(tiny_data, tmp_path) -> None:
    """The shipped default is stored in float16 (half the size) and widened again where it runs on a CPU."""
    out = train(tiny_config(tmp_path / "run", tiny_data, max_steps=2))
    exported = export_model(out, tmp_path / "fp16")
    assert (exported / "README.md").read_text() == (out / "README.md").read_text()
    size = {d: (d / "model.safetensors").stat().st_size for d in (out, exported)}
    assert size[exported] < 0.6 * size[out]
    full, tokenizer, info = load_model(out)
    half, _, half_info = load_model(exported)
    assert half.dtype == torch.float32 and half_info == info
    ids = torch.tensor([tokenizer(NACL_TEXT)["input_ids"]])
    with torch.no_grad():
        difference = (full(ids).logits - half(ids).logits).abs().max().item()
    assert 0 < difference < 0.05  # float16 rounding of the weights, nothing more


def test_without_a_model_directory_the_shipped_default_is_loaded(monkeypatch, tmp_path) -> None:
    import crystext.model

    monkeypatch.setattr(crystext.model, "DEFAULT_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(ModelError, match=r"^this crystext has no default model in .*nothing; name a model directory"):
        load_model()
