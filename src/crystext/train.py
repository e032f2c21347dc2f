"""Fine-tune a causal LM on crystals as text (or train a small one from scratch), with exact resume.

One short loop in the spirit of nanoGPT: build a batch of fresh (augmented) examples, step, log,
evaluate on the held-out set now and then, checkpoint. `accelerate` runs it on one CPU, one GPU or
several GPUs (`accelerate launch -m crystext.cli train ...`), with bf16 on GPUs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from crystext.data import Dataset, Record, training_set
from crystext.files import atomic_path, write_atomic
from crystext.grammar import element_volumes
from crystext.model import (
    SCRATCH_PRESETS,
    ModelSpec,
    build_scratch_model,
    load_model,
    load_pretrained,
    model_cell_formula,
    model_format,
    model_info,
    save_model,
    train_scratch_tokenizer,
)
from crystext.prompts import Attributes, cell_formula, generation_example, infill_example
from crystext.textformat import ELEMENT_SYMBOLS, CrystalText, CrystalTextError, FormatOptions, augment

IGNORE = -100  # label value the loss skips
CHECKPOINT = Path("checkpoints") / "last"  # in the output directory: the latest checkpoint, which --resume continues
STATE_FILE = "trainer_state.pt"  # in a checkpoint: run state, optimizer, schedule, data position, random states
WARMUP_SHARE = 10  # warmup takes at most 1/WARMUP_SHARE of the steps, so a short run is not all warmup
VALIDATION_SEED_OFFSET = 1  # the held-out crystals' seeded shifts are drawn apart from the training stream's
LOSS_DECIMALS = 5  # digits of the training loss written to log.jsonl
RATE_DECIMALS = 1  # digits of tokens per second written to log.jsonl


@dataclass
class TrainConfig:
    """Everything that decides a training run; saved with the model so the run can be repeated."""

    out: Path
    data_dir: Path
    model: ModelSpec = field(default_factory=ModelSpec)
    splits: tuple[str, ...] = ("train", "val")
    holdout: float = 0.05
    max_atoms: int | None = None
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 16
    grad_accum: int = 1
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    infill_fraction: float = 1 / 3  # the paper mixes about 2/3 generation and 1/3 infill
    # Generation prompts: each attribute stated with this probability (None: the paper's uniform subset size),
    # after `unconditional_rate` of them state none (conditioning dropout, for classifier-free guidance).
    attribute_rate: float | None = None
    unconditional_rate: float = 0.0
    # Generation examples whose elements are swapped for random others and the new formula stated: a formula the
    # model can only meet by copying it from the prompt, not from the chemistry it has learnt.
    relabel_rate: float = 0.0
    # Loss weight of the places in a generation example where its composition is decided (every other token weighs
    # 1; see `composition_weights`): which elements, and how many of each, are decided at a few tokens, a small share
    # of an example's loss, so a formula in the prompt is slow to be copied. Unprompted examples weigh them too, or
    # their chemistry loses its share of the gradient to the prompted ones (measured: fewer elements per crystal,
    # lower Table 1).
    element_weight: float = 1.0
    # Prompts state the formula of the whole cell (Ti2Zn2O6), not the reduced one (TiZnO3): each element's count is
    # then copied, not a multiple of the prompt's that the model must choose (measured: of the crystals written with
    # the requested elements, 25% had the reduced formula's proportions).
    cell_formula: bool = False
    translate: bool = True  # the paper's augmentation; a small scratch model learns faster without it
    permute: bool = False
    completion_only: bool = True
    eval_every: int = 200
    eval_examples: int = 256
    save_every: int = 200
    max_length: int = 1024
    seed: int = 0
    text_format: FormatOptions = field(default_factory=FormatOptions)

    def __post_init__(self) -> None:
        """Refuse settings that make no sense (a run that trains nothing, a zero batch); the message starts with
        the field's name."""
        for name, least in (("batch_size", 1), ("grad_accum", 1), ("max_steps", 1), ("eval_every", 1),
                            ("save_every", 1), ("max_length", 2), ("max_atoms", 1), ("warmup_steps", 0),
                            ("eval_examples", 0), ("seed", 0)):
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, got {value}")
        for name in ("epochs", "learning_rate", "grad_clip", "element_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be positive, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        for name in ("infill_fraction", "attribute_rate", "unconditional_rate", "relabel_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.text_format.asymmetric_unit and self.translate:
            raise ValueError("asymmetric_unit cannot go with translate: an asymmetric unit's origin is its space "
                             "group's")
        # holdout is checked where it is used, by crystext.data.training_set


@dataclass
class Example:
    """A training crystal with the attributes its prompts may state."""

    id: str
    crystal: CrystalText
    attributes: Attributes
    unit: CrystalText | None = None  # its asymmetric unit too, for prompts stating a space group (`answering`)

    @classmethod
    def from_record(cls, record: Record, options: FormatOptions) -> Example:
        """The example for one dataset record in the form `options` writes (its asymmetric unit, or every site, or
        both); raises CrystalTextError if the text format cannot hold it."""
        crystal = CrystalText.from_structure(record.structure, options.asymmetric_unit)
        unit = CrystalText.from_structure(record.structure, True) if options.asymmetric_when_grouped else None
        return cls(record.id, crystal, Attributes.from_properties(record.properties), unit)


@dataclass
class TrainState:
    """Where a run is: step count, best validation loss, tokens seen (the position in the data is in `Batches`)."""

    step: int = 0
    best_val: float = math.inf
    tokens_seen: int = 0


def to_examples(
    dataset: Dataset, options: FormatOptions | None = None
) -> tuple[list[Example], list[tuple[str, str]]]:
    """Examples for every record the text format (`options`, default the paper's) can hold, and (id, reason) for the
    others. Finding each crystal's asymmetric unit takes about 10 ms, so that shows progress."""
    options = options or FormatOptions()
    examples, skipped = [], []
    units = options.asymmetric_unit or options.asymmetric_when_grouped
    for record in tqdm(dataset, desc="asymmetric units", disable=not units):
        try:
            examples.append(Example.from_record(record, options))
        except CrystalTextError as err:
            skipped.append((record.id, str(err)))
    return examples, skipped


class Pair(NamedTuple):
    """One training example as text, and whether it is a generation example (see `TrainConfig.element_weight`)."""

    prompt: str
    completion: str
    generation: bool = False


def make_pair(example: Example, rng: np.random.Generator, config: TrainConfig) -> Pair:
    """One fresh (prompt, completion): the augmentations asked for, then infill, or generation with random attributes
    (none, or only the formula of the crystal relabelled, at their rates)."""
    crystal = augment(example.crystal, rng, translate=config.translate, permute=config.permute)
    if rng.random() < config.infill_fraction:
        return Pair(*infill_example(crystal, rng, config.text_format))
    if config.unconditional_rate and rng.random() < config.unconditional_rate:
        attributes = Attributes()
    elif config.relabel_rate and rng.random() < config.relabel_rate:
        crystal, formula = relabel(crystal, rng)
        attributes = Attributes(formula=formula)
    else:
        attributes = example.attributes.subset(rng, config.attribute_rate)
    if example.unit is not None and attributes.spacegroup is not None:
        crystal = example.unit  # a stated group is answered with an asymmetric unit, which is never translated
    if config.cell_formula and attributes.formula is not None:
        attributes = replace(attributes, formula=cell_formula(crystal))
    options = config.text_format.answering(attributes.spacegroup)
    return Pair(*generation_example(crystal, attributes, options), generation=True)


def relabel(crystal: CrystalText, rng: np.random.Generator) -> tuple[CrystalText, str]:
    """The crystal with each element swapped for a distinct random one of MP-20's, and its reduced formula in the
    order the text lists the elements (as `plain_formula` writes a real crystal's).

    The cell is scaled to the new atoms' sizes (volume in proportion to the summed volumes per atom of MP-20's
    elements), so a stated formula still tells the model how large a cell to write.
    """
    volumes = element_volumes()
    cell = crystal.cell_counts()
    swap = dict(zip(cell, rng.choice(sorted(volumes), size=len(cell), replace=False).tolist()))
    unit = math.gcd(*cell.values())
    formula = "".join(f"{swap[e]}{'' if n == unit else n // unit}" for e, n in cell.items())
    species = tuple(swap[element] for element in crystal.species)
    volume = sum(volumes[e] * n for e, n in cell.items())
    scale = (sum(volumes[swap[e]] * n for e, n in cell.items()) / volume) ** (1 / 3)
    lengths = tuple(length * scale for length in crystal.lengths)
    return replace(crystal, lengths=lengths, species=species), formula


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completion: str, completion_only: bool, max_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels for prompt + completion + end-of-sequence; prompt labels masked if `completion_only`."""
    head = ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + tokenizer(
        prompt, add_special_tokens=False
    )["input_ids"]
    tail = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (head + tail)[:max_length]
    labels = ([IGNORE] * len(head) if completion_only else head) + tail
    return ids, labels[:max_length]


def collate(
    rows: Sequence[tuple[list[int], list[int]]], pad_id: int, weights: Sequence[list[float]] | None = None
) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is masked out of attention and loss. With per-token loss `weights` (one list per
    row, as long as its labels) the batch carries them as `loss_weights`, for `weighted_loss`."""
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if weights is not None:
        batch["loss_weights"] = torch.zeros((len(rows), width))
        for i, row in enumerate(weights):
            batch["loss_weights"][i, : len(row)] = torch.tensor(row)
    return batch


def element_token_ids(tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The ids of the tokens that are a whole element symbol (all of them in the scratch tokenizer; in a pretrained
    one, those it happens to have)."""
    vocab = tokenizer.get_vocab()
    return frozenset(vocab[symbol] for symbol in ELEMENT_SYMBOLS if symbol in vocab)


def line_end_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id of the token that ends a line of crystal text."""
    return tokenizer("\n", add_special_tokens=False)["input_ids"][-1]


def composition_weights(
    labels: list[int], element_ids: frozenset[int], end_id: int, weight: float, line_end_id: int | None = None
) -> list[float]:
    """Loss weights that give `weight` to every place where the composition is decided: the element tokens, the end
    token, and the token before each element, whose alternative is the end (weighing the end alone would make
    ending `weight` times likelier: crystals cut short of their formula); 1 elsewhere. With `line_end_id` (the
    site-count format), also the rest of each element line up to its line break: the element's count."""
    weights = [weight if label in element_ids or label == end_id else 1.0 for label in labels]
    for i, label in enumerate(labels[1:]):
        if label in element_ids:
            weights[i] = weight
    if line_end_id is not None:
        on_element_line = False
        for i, label in enumerate(labels):
            if label in element_ids or label == line_end_id:
                on_element_line = label != line_end_id
            elif on_element_line:
                weights[i] = weight
    return weights


def weighted_loss(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The next-token loss of the labelled tokens: their mean, or with `loss_weights` in the batch their weighted
    mean (each token's weight read at its label's position)."""
    if "loss_weights" not in batch:
        return model(**batch).loss
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.float().transpose(1, 2), labels, ignore_index=IGNORE, reduction="none")
    weights = batch["loss_weights"][:, 1:] * (labels != IGNORE)
    return (losses * weights).sum() / weights.sum()


def validation_batches(
    examples: list[Example], tokenizer: PreTrainedTokenizerBase, config: TrainConfig
) -> list[dict[str, torch.Tensor]]:
    """Fixed held-out batches: unconditional generation of each crystal (one seeded shift if training shifts).

    Fixed so that the validation loss is comparable across evaluations and runs; the loss is the
    mean per-token loss of the crystal text and end token.
    """
    rng = np.random.default_rng(config.seed + VALIDATION_SEED_OFFSET)
    rows = []
    for example in examples[: config.eval_examples]:
        crystal = augment(example.crystal, rng, translate=config.translate)
        prompt, completion = generation_example(crystal, Attributes(), config.text_format)
        rows.append(tokenize_pair(tokenizer, prompt, completion, True, config.max_length))
    return [collate(rows[i : i + config.batch_size], tokenizer.pad_token_id)
            for i in range(0, len(rows), config.batch_size)]


@torch.no_grad()
def validation_loss(model: PreTrainedModel, batches: list[dict[str, torch.Tensor]], device: torch.device) -> float:
    """Token-weighted mean loss over the fixed validation batches."""
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        n = int((batch["labels"][:, 1:] != IGNORE).sum())
        total += float(model(**{k: v.to(device) for k, v in batch.items()}).loss) * n
        count += n
    model.train()
    return total / max(count, 1)


class Stateful(Protocol):
    """Something a checkpoint saves and restores through torch's `state_dict` / `load_state_dict` pair."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


class Batches:
    """This process's share of each training batch: fresh pairs from a seeded permutation of the examples,
    epoch by epoch.

    Its `state_dict` (epoch, position, random state) goes into every checkpoint, so a resumed run sees the same batches.
    """

    def __init__(
        self,
        examples: list[Example],
        tokenizer: PreTrainedTokenizerBase,
        config: TrainConfig,
        rank: int = 0,
        processes: int = 1,
    ) -> None:
        self.examples, self.tokenizer, self.config = examples, tokenizer, config
        self.rank, self.processes = rank, processes
        self.epoch, self.position = 0, 0
        self.rng = np.random.default_rng(config.seed)  # draws each example's augmentation and prompt
        self.element_ids = element_token_ids(tokenizer) if config.element_weight != 1 else frozenset()
        self.line_end_id = line_end_token_id(tokenizer) if config.text_format.site_counts else None

    def __next__(self) -> dict[str, torch.Tensor]:
        """The next batch, right-padded, on the CPU; each process takes every `processes`-th example from `rank` on."""
        rows, weights = [], []
        order = self._order()
        for _ in range(self.config.batch_size):
            if self.position >= len(self.examples):
                self.epoch, self.position = self.epoch + 1, 0
                order = self._order()
            example = self.examples[int(order[(self.position + self.rank) % len(self.examples)])]
            self.position += self.processes
            pair = make_pair(example, self.rng, self.config)
            ids, labels = tokenize_pair(
                self.tokenizer, pair.prompt, pair.completion, self.config.completion_only, self.config.max_length
            )
            rows.append((ids, labels))
            if self.element_ids:
                weight = self.config.element_weight if pair.generation else 1.0
                weights.append(composition_weights(
                    labels, self.element_ids, self.tokenizer.eos_token_id, weight, self.line_end_id
                ))
        return collate(rows, self.tokenizer.pad_token_id, weights or None)

    def _order(self) -> np.ndarray:
        """This epoch's permutation of the examples: the same on every process and after a resume."""
        return np.random.default_rng([self.config.seed, self.epoch]).permutation(len(self.examples))

    def state_dict(self) -> dict[str, Any]:
        """Where the stream is: epoch, position in that epoch's order, and the augmentation generator's state."""
        return {"epoch": self.epoch, "position": self.position, "numpy_rng": self.rng.bit_generator.state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a `state_dict` saved earlier."""
        self.epoch, self.position = state_dict["epoch"], state_dict["position"]
        self.rng.bit_generator.state = state_dict["numpy_rng"]


@contextlib.contextmanager
def replacing_dir(path: Path) -> Iterator[Path]:
    """An empty directory beside `path` to fill; it replaces `path` when the block ends, and is removed if it fails.

    Built on `atomic_path`, so a kill while the new directory is being filled leaves the previous `path` whole.
    """
    with atomic_path(path) as staging:
        shutil.rmtree(staging, ignore_errors=True)  # left by a killed earlier process that had the same id
        staging.mkdir()
        try:
            yield staging
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(path, ignore_errors=True)  # a directory can only be renamed onto a missing or empty one


def save_checkpoint(
    folder: Path,
    config: TrainConfig,
    state: TrainState,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    optimizer: Stateful,
    scheduler: Stateful,
    batches: Batches,
) -> None:
    """Replace `folder` with the model and all `restore_checkpoint` needs to continue the run exactly."""
    with replacing_dir(folder) as staging:
        save_model(model, tokenizer, staging, run_info(config, state))
        progress = {
            "state": asdict(state),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "batches": batches.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "python_rng": random.getstate(),
        }
        torch.save(progress, staging / STATE_FILE)


def restore_checkpoint(folder: Path, optimizer: Stateful, scheduler: Stateful, batches: Batches) -> TrainState:
    """Load what `save_checkpoint` wrote into the optimizer, schedule, batches and global random generators.

    Returns where the run was; the model itself is loaded from `folder` with `load_model`.
    """
    saved = torch.load(folder / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    batches.load_state_dict(saved["batches"])
    torch.set_rng_state(saved["torch_rng"])
    random.setstate(saved["python_rng"])
    return TrainState(**saved["state"])


def earlier_recipe(model: str) -> dict[str, bool]:
    """Whether the run that wrote `model` trained LoRA adapters, translated coordinates, wrote site counts (joined to
    the symbol or not) and stated cell formulas, when `model` is a `crystext train` directory: continuing a run keeps
    its recipe unless told otherwise (a pretrained hub model's defaults, LoRA and translation, would silently change
    the task). Empty for a scratch preset or any other model.
    """
    info = {} if model in SCRATCH_PRESETS else model_info(model)
    if not info:
        return {}
    spec = info.get("model", {})
    return {"lora": spec.get("lora") is not None and spec.get("name") not in SCRATCH_PRESETS,
            "translate": bool(info.get("translate", True)),
            "site_counts": model_format(info).site_counts,
            "joined_counts": model_format(info).joined_counts,
            "cell_formula": model_cell_formula(info),
            "asymmetric_unit": model_format(info).asymmetric_unit,
            "asymmetric_when_grouped": model_format(info).asymmetric_when_grouped}


#: The settings that decide what a training example looks like (`make_pair`, `Batches`): a model's training mix.
RECIPE_FIELDS = ("infill_fraction", "attribute_rate", "unconditional_rate", "relabel_rate", "element_weight",
                 "cell_formula", "translate", "permute", "completion_only", "max_length")


def recipe_config(info: Mapping[str, Any], batch_size: int, seed: int) -> TrainConfig:
    """The example settings of the run that wrote a model (its recorded `run_info`), at another batch size and seed:
    what makes examples as that model's own training did (a setting it lacks keeps today's default)."""
    recipe = {name: info[name] for name in RECIPE_FIELDS if name in info}
    return TrainConfig(out=Path(), data_dir=Path(), batch_size=batch_size, seed=seed, text_format=model_format(info),
                       **recipe)


def load_examples(config: TrainConfig) -> tuple[list[Example], list[Example]]:
    """The training and held-out examples of `config`'s data, saying how many structures were skipped and why."""
    kept, held = training_set(config.data_dir, config.splits, config.holdout, config.seed, max_atoms=config.max_atoms)
    examples, skipped = to_examples(kept, config.text_format)
    held_examples, _ = to_examples(held, config.text_format)
    if not examples:
        raise ValueError(f"no usable training structures in {config.data_dir}")
    if kept.skipped or skipped:
        print(f"skipped {len(kept.skipped) + len(skipped)} structures: {kept.summary()}")
    return examples, held_examples


def build_model(
    config: TrainConfig, examples: list[Example], checkpoint: Path | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model to train: the checkpoint's when resuming, else a new scratch model (and tokenizer) or a
    pretrained one, whose new LoRA adapters are drawn from the run's seed."""
    if checkpoint is not None:
        model, tokenizer, _ = load_model(checkpoint, trainable=True)  # a LoRA checkpoint's adapters go on training
        return model, tokenizer
    if config.model.is_scratch:
        crystals = (c for e in examples for c in (e.crystal, e.unit) if c is not None)
        tokenizer = train_scratch_tokenizer(c.to_str(config.text_format) for c in crystals)
        return build_scratch_model(config.model.name, tokenizer, config.seed), tokenizer
    torch.manual_seed(config.seed)
    return load_pretrained(config.model)


def count_steps(config: TrainConfig, n_examples: int, processes: int) -> int:
    """Optimizer steps in the run: `max_steps` if set, else enough for `epochs` passes over the examples."""
    per_step = config.batch_size * config.grad_accum * processes
    return config.max_steps or max(1, math.ceil(config.epochs * n_examples / per_step))


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    """Warmup steps of the schedule: as configured, but at most 1/WARMUP_SHARE of the run."""
    return min(config.warmup_steps, total_steps // WARMUP_SHARE)


def train(config: TrainConfig, resume: bool = False, on_step: Callable[[int, float], None] | None = None) -> Path:
    """Train as `config` says and return the output directory (the best model by validation loss).

    With `resume`, continue exactly from the last checkpoint: weights, optimizer, schedule, data
    position and random states. `on_step(step, loss)` is called after each optimizer step.
    """
    from accelerate import Accelerator

    out = Path(config.out)
    last = out / CHECKPOINT
    if resume and not (last / STATE_FILE).is_file():
        raise FileNotFoundError(f"{last}: no checkpoint to resume from")
    if not resume and (last / STATE_FILE).is_file():
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")

    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    main = accelerator.is_main_process
    examples, held_examples = load_examples(config)
    model, tokenizer = build_model(config, examples, last if resume else None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    total_steps = count_steps(config, len(examples), accelerator.num_processes)
    scheduler = get_cosine_schedule_with_warmup(optimizer, warmup_steps(config, total_steps), total_steps)
    batches = Batches(examples, tokenizer, config, accelerator.process_index, accelerator.num_processes)
    if resume:
        state = restore_checkpoint(last, optimizer, scheduler, batches)
    else:
        state = TrainState()
        torch.manual_seed(config.seed)
        random.seed(config.seed)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    val_batches = validation_batches(held_examples, tokenizer, config)

    out.mkdir(parents=True, exist_ok=True)
    model.train()
    started, tokens_at_start = time.perf_counter(), state.tokens_seen
    with (
        open(out / "log.jsonl" if main else os.devnull, "a") as log,
        tqdm(total=total_steps, initial=state.step, desc="training", disable=not main) as bar,
    ):
        while state.step < total_steps:
            step_loss = 0.0
            for _ in range(config.grad_accum):
                batch = {k: v.to(accelerator.device) for k, v in next(batches).items()}
                state.tokens_seen += int(batch["attention_mask"].sum()) * accelerator.num_processes
                with accelerator.autocast():
                    loss = weighted_loss(model, batch) / config.grad_accum
                accelerator.backward(loss)
                step_loss += loss.detach().item()
            accelerator.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1

            tokens_per_s = (state.tokens_seen - tokens_at_start) / (time.perf_counter() - started)
            record: dict[str, Any] = {"step": state.step, "loss": round(step_loss, LOSS_DECIMALS),
                                      "lr": scheduler.get_last_lr()[0],
                                      "tokens_per_s": round(tokens_per_s, RATE_DECIMALS)}
            finished = state.step == total_steps
            if state.step % config.eval_every == 0 or finished:
                record["val_loss"] = validation_loss(model, val_batches, accelerator.device) if val_batches else None
                if record["val_loss"] is not None and record["val_loss"] < state.best_val:
                    state.best_val = record["val_loss"]
                    if main:
                        save_model(accelerator.unwrap_model(model), tokenizer, out, run_info(config, state))
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")
            bar.update(1)
            if main and (state.step % config.save_every == 0 or finished):
                save_checkpoint(last, config, state, accelerator.unwrap_model(model), tokenizer, optimizer, scheduler,
                                batches)
            if on_step:
                on_step(state.step, step_loss)
    if main:
        if not val_batches:
            save_model(accelerator.unwrap_model(model), tokenizer, out, run_info(config, state))
        write_model_card(out, config, state, len(examples), len(held_examples))
    return out


def run_info(config: TrainConfig, state: TrainState) -> dict[str, Any]:
    """What crystext records in a model directory: the full config and where training stood."""
    info = asdict(config)
    info.update(out=str(config.out), data_dir=str(config.data_dir), state=asdict(state))
    return info


def write_model_card(out: Path, config: TrainConfig, state: TrainState, n_train: int, n_holdout: int) -> None:
    """A README.md model card: data, settings, losses and tokens seen."""
    lines = [line.rstrip() for line in (out / "log.jsonl").read_text().splitlines()]
    records = [json.loads(line) for line in lines if line]
    final_val = next((r["val_loss"] for r in reversed(records) if r.get("val_loss") is not None), None)
    spec = config.model
    kind = (f"LLaMA-architecture `{spec.name}` trained from scratch" if spec.is_scratch
            else f"`{spec.name}` + LoRA {spec.lora}" if spec.lora else f"`{spec.name}`, every weight fine-tuned")
    stated = ("each subset size equally likely" if config.attribute_rate is None
              else f"each stated with probability {config.attribute_rate:g}")
    if config.unconditional_rate:
        stated += f", none in {config.unconditional_rate:.0%} of prompts"
    if config.relabel_rate:
        stated += (f"; {config.relabel_rate:.0%} of the others state only the formula of the crystal with its "
                   "elements swapped for random ones (to teach copying the formula)")
    if config.cell_formula:
        cell = ("conventional cell's" if config.text_format.asymmetric_unit
                else "conventional cell's with a space group, else the whole cell's"
                if config.text_format.asymmetric_when_grouped else "whole cell's")
        stated += f"; a stated formula is the {cell} (Ti2Zn2O6), not the reduced one"
    if config.element_weight != 1:
        counts = " and its count" if config.text_format.site_counts else ""
        stated += (f"; the tokens that decide the composition of generation examples (element{counts}, end, and the "
                   f"line break before an element) weigh {config.element_weight:g} in the loss")
    shuffles = [name for name, on in (("random translation", config.translate), ("random atom order", config.permute))
                if on]
    augmentations = (f"; {' and '.join(shuffles)} of every example" if shuffles
                     else "; coordinates as written (no augmentation)")
    sep = config.text_format.count_separator
    counted = ""
    if config.text_format.asymmetric_unit:
        counted += ("; asymmetric units: the space group on a first line, its standard conventional cell, one site "
                    "per orbit, expanded by the group when read")
    if config.text_format.asymmetric_when_grouped:
        counted += ("; a crystal whose prompt states a space group as its asymmetric unit (the group on a first line, "
                    "its standard conventional cell, one site per orbit, expanded by the group when read), any other "
                    "as its whole cell")
    if config.text_format.site_counts and config.text_format.asymmetric_unit:
        counted += f"; each element line counting down its atoms in the cell, orbit by orbit (`O{sep}12`, `O{sep}4`)"
    elif config.text_format.site_counts:
        counted += f"; each element line counting down its atoms, `Fe{sep}2`, `Fe{sep}1`"
        if config.text_format.asymmetric_when_grouped:
            counted += " (in an asymmetric unit its atoms in the conventional cell, orbit by orbit)"
    card = f"""---
library_name: transformers
tags: [crystext, crystal-generation, materials]
---
# crystext model

{kind}, on crystals written as text (crystext format: lengths 1 decimal, integer angles, fractional
coordinates {config.text_format.coord_decimals} decimals{counted}).

## Data
- source: `{config.data_dir}`, splits {', '.join(config.splits)}, {config.holdout:.0%} held out for validation loss
- {n_train} training structures, {n_holdout} held out
- tasks: generation with a random subset of attributes (formula, space group, energy above hull,
  formation energy, band gap; {stated}) and infill ({config.infill_fraction:.2f} of examples){augmentations}

## Training
- steps: {state.step}, batch {config.batch_size} x {config.grad_accum} accumulation, \
learning rate {config.learning_rate}
  (cosine, warmup {warmup_steps(config, state.step)}), weight decay {config.weight_decay}, \
gradient clip {config.grad_clip}, seed {config.seed}
- tokens seen: {state.tokens_seen:,}
- final training loss: {records[-1]['loss'] if records else 'n/a'}
- validation loss (unconditional generation, per token): best {state.best_val:.4f}, \
last {'n/a' if final_val is None else f'{final_val:.4f}'}

Load with `crystext sample --model {out}` or `transformers.AutoModelForCausalLM.from_pretrained("{out}")`.
"""
    write_atomic(out / "README.md", card)
