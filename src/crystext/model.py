"""Models: small LLaMA-architecture decoders trained from scratch, or pretrained Hugging Face causal LMs with LoRA.

Either way the result is an ordinary Hugging Face model directory (`save_pretrained`, safetensors)
plus its tokenizer, so `from_pretrained` loads it back and other tools can read it.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from crystext import constants
from crystext.errors import CrystextError
from crystext.prompts import INFILL_HEADER, INFILL_REQUEST, MASK, Attributes
from crystext.textformat import ELEMENT_SYMBOLS, FormatOptions

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
#: Whole-number tokens for the numbers a default-format crystal text is made of: lengths 0.0-99.9,
#: coordinates 0.00-0.99, and integers 0-239 (angles, space groups, counts in formulas). Any other
#: number (a property value, another format's decimals) falls back to single digits.
NUMBER_PATTERN = r"(?<![\d.])(?:(?:[1-9]\d?|0)\.\d|0\.\d\d|1\d\d|2[0-3]\d|[1-9]?\d)(?!\d|\.\d)"
#: Pre-tokenizer pattern: [MASK], element-like capitalised symbols, lower-case words, whole numbers,
#: single digits, single whitespace characters, and any other single character.
TOKEN_PATTERN = rf"\[MASK\]|[A-Z][a-z]?|[a-z]+|{NUMBER_PATTERN}|\d|\s|[^\sA-Za-z\d]"
#: Every whole-number token NUMBER_PATTERN can produce.
WHOLE_NUMBERS = (
    [f"{i / 10:.1f}" for i in range(1000)] + [f"{i / 100:.2f}" for i in range(100)] + [str(i) for i in range(240)]
)
#: File in a model directory that records how crystext made it.
CRYSTEXT_CONFIG = "crystext.json"
#: The model shipped inside the package (its model card lists the recipe), used when no model is named.
DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


class ModelError(CrystextError):
    """A model that cannot be built or loaded as asked (e.g. 4-bit loading without CUDA)."""


@dataclass(frozen=True)
class ScratchPreset:
    """Sizes of a LLaMA-architecture decoder trained from scratch."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    max_position_embeddings: int = 1024


SCRATCH_PRESETS: dict[str, ScratchPreset] = {
    "scratch-tiny": ScratchPreset(32, 64, 2, 2, 512),  # for tests: builds and steps in milliseconds
    "scratch-small": ScratchPreset(256, 704, 8, 8, 1024),  # ~6.5M parameters: trains on a CPU
    "scratch-base": ScratchPreset(512, 1408, 12, 8, 1024),  # ~38M parameters: for a GPU
}


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings; the defaults are the paper's (rank 8, alpha 32, dropout 0.05)."""

    rank: int = constants.LORA_RANK
    alpha: int = constants.LORA_ALPHA
    dropout: float = constants.LORA_DROPOUT
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        """Refuse settings that make no sense; the message starts with the field's name."""
        if self.rank < 1:
            raise ValueError(f"rank must be at least 1, got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules or not all(self.target_modules):
            raise ValueError(f"target_modules must be module names, got {','.join(self.target_modules)!r}")


@dataclass(frozen=True)
class ModelSpec:
    """Which model to train: a scratch preset name, or a hub id / local directory of a pretrained causal LM."""

    name: str = "scratch-small"
    lora: LoraSettings | None = field(default_factory=LoraSettings)
    quantization: str | None = None  # None, "4bit" or "8bit" (CUDA only)

    @property
    def is_scratch(self) -> bool:
        return self.name in SCRATCH_PRESETS


def device() -> torch.device:
    """CUDA when present, else the CPU (with all its cores)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def train_scratch_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained on `texts`: one token per element, crystal number, digit, template
    word and symbol.

    A coordinate or lattice value is one token rather than four digits, so a crystal costs about half
    the tokens to train on and sample. Every element symbol, whole number and digit is in the
    vocabulary even if the training text lacks it, so any crystal and prompt can be written.
    """
    backend = Tokenizer(models.WordLevel(unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")
    backend.decoder = decoders.Fuse()
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD, BOS, EOS, UNK, MASK], min_frequency=1)
    always = " ".join([*sorted(ELEMENT_SYMBOLS), *WHOLE_NUMBERS]) + " 0 1 2 3 4 5 6 7 8 9 .-:,\n"
    every_attribute = Attributes(formula="H", spacegroup=1, e_above_hull=0.1, formation_energy=-1.0, band_gap=1.0)
    templates = every_attribute.to_prompt() + INFILL_HEADER + INFILL_REQUEST
    backend.train_from_iterator([always, templates, *texts], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK, mask_token=MASK
    )


def build_scratch_model(preset: str, tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForCausalLM:
    """A freshly initialised LLaMA-architecture decoder of the preset's size, for `tokenizer`'s vocabulary."""
    sizes = SCRATCH_PRESETS[preset]
    config = LlamaConfig(
        vocab_size=max(tokenizer.get_vocab().values()) + 1,
        hidden_size=sizes.hidden_size,
        intermediate_size=sizes.intermediate_size,
        num_hidden_layers=sizes.num_hidden_layers,
        num_attention_heads=sizes.num_attention_heads,
        num_key_value_heads=sizes.num_attention_heads,
        max_position_embeddings=sizes.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def load_pretrained(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A pretrained causal LM and its tokenizer, with pad/eos tokens ensured and LoRA adapters attached.

    A LoRA run crystext wrote goes on training its own adapters, or, without `spec.lora`, every weight of the model
    with them merged in (not a second set of adapters, nor a frozen model with nothing to train)."""
    load_kwargs = _quantization_kwargs(spec.quantization)  # fail before any download
    if (Path(spec.name) / "adapter_config.json").is_file() and model_info(spec.name):
        from peft import AutoPeftModelForCausalLM

        if spec.lora is None and spec.quantization:
            raise ModelError("every weight of a quantized model cannot be trained: keep the LoRA adapters (--lora)")
        model = AutoPeftModelForCausalLM.from_pretrained(spec.name, is_trainable=spec.lora is not None, **load_kwargs)
        if spec.lora is None:
            model = model.merge_and_unload().requires_grad_(True)
        return model, AutoTokenizer.from_pretrained(spec.name)
    tokenizer = AutoTokenizer.from_pretrained(spec.name)
    added = {}
    if tokenizer.eos_token is None:
        added["eos_token"] = EOS
    if tokenizer.pad_token is None:
        added["pad_token"] = PAD
    if added:
        tokenizer.add_special_tokens(added)
    check_digit_tokenization(tokenizer)
    model = AutoModelForCausalLM.from_pretrained(spec.name, **load_kwargs)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if spec.lora is not None:
        model = add_lora(model, spec.lora, quantized=spec.quantization is not None)
    return model, tokenizer


def add_lora(model: PreTrainedModel, settings: LoraSettings, quantized: bool = False) -> PreTrainedModel:
    """Wrap `model` with trainable LoRA adapters; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(model)
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def check_digit_tokenization(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Warn (and return False) when numbers do not tokenize digit by digit, which the paper found matters."""
    pieces = [t for t in tokenizer.tokenize("12.345 0.678") if t.strip("▁Ġ ")]
    ok = all(len(t.strip("▁Ġ ")) == 1 for t in pieces)
    if not ok:
        warnings.warn(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} does not split numbers into single digits "
            f"({pieces}); crystal coordinates will be learned less well",
            stacklevel=2,
        )
    return ok


def _quantization_kwargs(quantization: str | None) -> dict[str, Any]:
    if quantization is None:  # float32 on a CPU, where half precision (a half-precision export) trains badly
        return {} if torch.cuda.is_available() else {"dtype": torch.float32}
    if quantization not in ("4bit", "8bit"):
        raise ModelError(f"quantization must be 4bit or 8bit, got {quantization!r}")
    if not torch.cuda.is_available():
        raise ModelError(f"{quantization} loading needs a CUDA GPU (bitsandbytes); none is available here")
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        config = BitsAndBytesConfig(load_in_8bit=True)
    return {"quantization_config": config, "device_map": "auto"}


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path, info: dict[str, Any]) -> None:
    """Write model (or LoRA adapter), tokenizer and crystext's own settings into one directory."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / CRYSTEXT_CONFIG).write_text(json.dumps(info, indent=2, default=_json_default) + "\n")


def load_model(
    path: str | Path | None = None, trainable: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a directory `crystext train` wrote (full model or LoRA adapter) with its tokenizer and settings.

    Without a path, the default model shipped inside the package. Weights stored in half precision
    are widened to float32 on a CPU, where half-precision arithmetic is slow or missing. A LoRA adapter
    loads frozen unless `trainable` (for training it further).
    """
    if path is None:
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").is_file():
            raise ModelError(f"this crystext has no default model in {path}; name a model directory instead")
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: no such model directory")
    info = model_info(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = "auto" if torch.cuda.is_available() else torch.float32
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype, is_trainable=trainable)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer, info


def model_info(path: str | Path) -> dict[str, Any]:
    """The settings `crystext train` recorded in a model directory (its crystext.json); empty for any other model."""
    info_file = Path(path) / CRYSTEXT_CONFIG
    return json.loads(info_file.read_text()) if info_file.is_file() else {}


def model_format(info: dict[str, Any]) -> FormatOptions:
    """The text format a model was trained on, from its recorded settings (`model_info`); the paper's by default."""
    return FormatOptions(**info.get("text_format", {}))


def model_cell_formula(info: dict[str, Any]) -> bool:
    """Whether a model reads a stated formula as the whole cell's (`TrainConfig.cell_formula`), from its settings."""
    return bool(info.get("cell_formula", False))


def export_model(source: str | Path, target: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Copy a trained model directory in `dtype` (half the size in float16), with its settings and model card."""
    model, tokenizer, info = load_model(source)
    target = Path(target)
    save_model(model.to(dtype), tokenizer, target, info)
    card = Path(source) / "README.md"
    if card.is_file():
        (target / "README.md").write_text(card.read_text())
    return target


def _json_default(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if isinstance(value, (Path, torch.device)):
        return str(value)
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")
