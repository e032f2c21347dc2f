"""Models and tokenizers: the scratch tokenizer, digit-splitting checks, loading, and half-precision export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from crystext.model import (
    ModelError,
    ModelSpec,
    check_digit_tokenization,
    export_model,
    load_model,
    load_pretrained,
    train_scratch_tokenizer,
)
from crystext.prompts import Attributes
from crystext.train import TrainConfig, train

NACL_TEXT = "5.6 5.6 5.6\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50"


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


def test_quantization_needs_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelError, match="4bit loading needs a CUDA GPU"):
        load_pretrained(ModelSpec("any/model", quantization="4bit"))


def test_half_precision_export_loads_back_as_float32_on_cpu(shared_data, head_csv, tmp_path) -> None:
    """The shipped default is stored in float16 (half the size) and widened again where it runs on a CPU."""
    head_csv(shared_data / "mp_20" / "val.csv", 40, tmp_path / "train.csv")
    out = train(TrainConfig(
        out=tmp_path / "run", data_dir=tmp_path, model=ModelSpec("scratch-tiny"), splits=("train",), holdout=0.2,
        max_steps=2, batch_size=4, eval_every=3, save_every=1, learning_rate=3e-3, warmup_steps=0,
    ))
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
    if not torch.cuda.is_available():  # fine-tuning the export further (`crystext train --model DIR --no-lora`)
        again, _ = load_pretrained(ModelSpec(str(exported), lora=None))
        assert again.dtype == torch.float32


def test_without_a_model_directory_the_shipped_default_is_loaded(monkeypatch, tmp_path) -> None:
    import crystext.model

    monkeypatch.setattr(crystext.model, "DEFAULT_MODEL_DIR", tmp_path / "nothing")
    with pytest.raises(ModelError, match=r"^this crystext has no default model in .*nothing; name a model directory"):
        load_model()
