"""The sampler: a loaded model that writes crystals in batches, constrained by the crystal grammar.

`Sampler.sample` decodes batch after batch until the wanted number of parseable structures is in the
samples CSV (`crystext.sample.samples_csv`); every attempt is a row, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from pymatgen.core import Structure
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from crystext.constants import MIN_INTERATOMIC_DISTANCE
from crystext.grammar import DEFAULT_MAX_ATOMS, Grammar, GrammarLogitsProcessor, min_cell_volume
from crystext.model import device, load_model, model_cell_formula, model_format
from crystext.prompts import Attributes
from crystext.sample.decode import Decoding, decode
from crystext.sample.infill import Substitution, rank_substitutions
from crystext.sample.samples_csv import SampleWriter, attempt_row
from crystext.textformat import FormatOptions

#: Head room over the token count of the widest crystal text, when no token limit is given.
TOKEN_MARGIN = 1.1
#: Largest batch chosen automatically: rows leave the batch as they end, so a larger one keeps more rows busy; past it
#: a CPU gains nothing (benchmarks/results/sample_both3_decode.md: 7.5 valid/s at 256, 9.5 at 512; 1,000 ad hoc no
#: better).
AUTO_BATCH_MAX = 512
#: Memory an automatic batch's KV cache may take: this many bytes on a CPU, this share of the GPU's memory
#: (its total, not what is free at the moment, so the same GPU always gets the same batch and the same samples).
AUTO_CACHE_CPU_BYTES = 2 * 1024**3
AUTO_CACHE_GPU_SHARE = 0.25
#: Spare attempts in the last batch over those the parse rate so far says the wanted structures need.
LAST_BATCH_SPARE = 0.1
#: A batch's seed is seed * SEED_STRIDE + its first attempt's number: a prime larger than any run's attempt count,
#: so no two (seed, batch) pairs share a generator seed.
SEED_STRIDE = 1_000_003
#: How the error of a crystal refused by `only_matching` starts.
UNMET_PROMPT = "not what the prompt asked: "


@dataclass
class SampleConfig:
    """How to sample: how many parseable structures, batch size, temperature/top-p, constraints, seed."""

    n: int = 100
    batch_size: int | None = None  # None: as many as the KV cache fits in memory, up to AUTO_BATCH_MAX
    temperature: float = 0.7
    top_p: float = 0.9
    constrained: bool = True
    force_composition: bool = False
    # A model reading a stated formula as the whole cell's gets a lattice at least as large as MP-20 gives those
    # atoms (`crystext.grammar.min_cell_volume`): a cell too small for its formula is filled with fewer atoms.
    volume_floor: bool = True
    # Keep only the crystals that have the formula and space group their prompt states (`Attributes.unmet`); the
    # others are rows whose error says what they wrote instead. Rejection sampling: the model's own accuracy
    # decides how many attempts a wanted crystal costs.
    only_matching: bool = False
    max_atoms: int = DEFAULT_MAX_ATOMS
    # Constrained only: keep each new atom this far (A) from the earlier ones; None turns the check off.
    min_distance: float | None = MIN_INTERATOMIC_DISTANCE
    max_new_tokens: int | None = None
    max_attempts: int | None = None  # default 10 * n
    seed: int = 0
    # Classifier-free guidance for conditional prompts: next-token log-probabilities pushed this far from the
    # unconditional prompt's, log p(x|c) + (s - 1)(log p(x|c) - log p(x)); 1 is plain sampling.
    guidance_scale: float = 1.0

    def __post_init__(self) -> None:
        """Refuse settings that make no sense; the message starts with the field's name."""
        for name in ("n", "batch_size", "max_atoms", "max_new_tokens", "max_attempts"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be positive (0 would write the same crystal every time), "
                             f"got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.min_distance is not None and not (math.isfinite(self.min_distance) and self.min_distance >= 0):
            raise ValueError(f"min_distance must be a distance >= 0 in Angstrom, got {self.min_distance}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not (math.isfinite(self.guidance_scale) and self.guidance_scale > 0):
            raise ValueError(f"guidance_scale must be positive (1: no guidance), got {self.guidance_scale}")


@dataclass(frozen=True)
class Completion:
    """One decoded text, and why constrained decoding cut it short where it did (empty if it did not)."""

    text: str
    error: str = ""


@dataclass
class SampleSummary:
    """What a sampling run produced: valid structures (their CIF reads back: `attempt_row`), attempts, wall time,
    and the attempts `only_matching` refused (of the whole file, as valid and attempts are)."""

    valid: int
    attempts: int
    seconds: float
    refused: int = 0

    @property
    def valid_per_second(self) -> float:
        return self.valid / self.seconds if self.seconds else 0.0


class Sampler:
    """A loaded model ready to write crystals."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, text_format: FormatOptions | None = None,
        cell_formula: bool = False,
    ) -> None:
        self.device = device()
        self.text_format = text_format or FormatOptions()  # the text the model was trained on: it writes only that
        self.cell_formula = cell_formula  # it reads a stated formula as the whole cell's (`TrainConfig.cell_formula`)
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            # Decoding a token at a time, plain attention beats SDPA on a CPU
            # (benchmarks/results/sample_default.md); on a GPU the fused kernel stays.
            self.model.set_attn_implementation("eager")
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> Sampler:
        """Load a `crystext train` model directory; without one, the default model shipped with crystext."""
        model, tokenizer, info = load_model(path)
        return cls(model, tokenizer, model_format(info), model_cell_formula(info))

    def token_budget(self, max_atoms: int) -> int:
        """Tokens a crystal of `max_atoms` atoms may take: the count for the widest such text, with a margin.

        It bounds a completion's length, and so the KV cache the automatic batch is sized for.
        """
        options = self.text_format
        length = f"{88.8888:.{options.length_decimals}f}"
        angle = f"{118.888:.{options.angle_decimals}f}"
        coord = f"{0.8888:.{options.coord_decimals}f}"
        lattice = f"{length} {length} {length}\n{angle} {angle} {angle}\n"
        element = f"Og{options.count_separator}{max_atoms}" if options.site_counts else "Og"
        widest = lattice + f"{element}\n{coord} {coord} {coord}\n" * max_atoms
        return math.ceil(TOKEN_MARGIN * len(self.tokenizer(widest, add_special_tokens=False)["input_ids"])) + 1

    def auto_batch_size(self, tokens: int) -> int:
        """The batch whose KV cache of `tokens` positions per row fits the memory allowance (1 to AUTO_BATCH_MAX).

        A small model on a CPU gets AUTO_BATCH_MAX; a 7B model on a GPU what a quarter of the GPU's memory holds.
        """
        config = self.model.config
        layers = config.num_hidden_layers
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        per_sequence = 2 * layers * heads * head_dim * tokens * self.model.dtype.itemsize  # keys and values
        if self.device.type == "cuda":
            allowance = AUTO_CACHE_GPU_SHARE * torch.cuda.get_device_properties(self.device).total_memory
        else:
            allowance = AUTO_CACHE_CPU_BYTES
        return max(1, min(AUTO_BATCH_MAX, int(allowance // per_sequence)))

    def _new_tokens(self, config: SampleConfig) -> int:
        """Tokens a completion may add: --max-new-tokens, else enough for the widest allowed crystal."""
        return config.max_new_tokens or self.token_budget(config.max_atoms)

    def prompt_ids(self, prompt: str) -> list[int]:
        """The token ids the model reads for `prompt`, after its begin-of-sequence token if it has one."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def generate(
        self, prompts: Sequence[str], grammars: Sequence[Grammar] | None, config: SampleConfig, seed: int
    ) -> list[Completion]:
        """Complete each prompt once (batched, each row leaving the batch at its end: `decode`); constrained when
        `grammars` is given. A fresh grammar processor per call: it holds the state of each row of this batch."""
        encoded = [self.prompt_ids(p) for p in prompts]
        limit = self._new_tokens(config)
        width = max(len(ids) for ids in encoded)
        limit = min(limit, getattr(self.model.config, "max_position_embeddings", limit + width) - width)
        grammar = None
        if grammars is not None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            grammar = GrammarLogitsProcessor(self.tokenizer, list(grammars), vocab)
        unconditional = Attributes().to_prompt()
        guide = config.guidance_scale != 1 and any(p != unconditional for p in prompts)
        settings = Decoding(max_new_tokens=limit, eos=self.tokenizer.eos_token_id, pad=self.tokenizer.pad_token_id,
                            temperature=config.temperature, top_p=config.top_p,
                            guidance_scale=config.guidance_scale if guide else 1.0)
        torch.manual_seed(seed)
        output = decode(self.model, encoded, settings, grammar, self.prompt_ids(unconditional) if guide else None)
        texts = self.tokenizer.batch_decode(output, skip_special_tokens=True)
        dead_ends = grammar.dead_ends if grammar is not None else {}
        return [Completion(text, dead_ends.get(row, "")) for row, text in enumerate(texts)]

    def sample(
        self,
        config: SampleConfig,
        out: Path,
        conditions: Sequence[Attributes] | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> SampleSummary:
        """Sample until `config.n` valid structures are in `out` (or attempts run out); every attempt is a row.

        Valid: its CIF reads back and, constrained, no two atoms are closer than `config.min_distance`
        (`attempt_row`), and with `config.only_matching` it has the prompt's formula and space group; an attempt
        where the grammar found no room for an atom is an error row.
        """
        mode = "conditional" if conditions else "unconditional"
        conditions = [self.as_read(a, config.max_atoms) for a in conditions] if conditions else [Attributes()]
        if config.constrained:  # what the grammar cannot keep is refused before any output
            for attributes in set(conditions):
                self._grammar(attributes, config)
        writer = SampleWriter(out, resume)
        max_attempts = config.max_attempts or 10 * config.n
        batch_size = config.batch_size or self.auto_batch_size(
            max(len(self.prompt_ids(a.to_prompt())) for a in conditions)
            + self._new_tokens(config))
        started = time.perf_counter()
        bar = tqdm(total=config.n, initial=min(writer.valid, config.n), desc=f"sampling (batch {batch_size})",
                   disable=not progress)
        new_valid = 0
        min_distance = config.min_distance if config.constrained else None  # the distance the grammar kept
        while writer.valid < config.n and len(writer.rows) < max_attempts:
            first = len(writer.rows)
            # The last batch is cut to what the wanted structures need at the parse rate so far, plus a spare.
            parse_rate = max(writer.valid / first, 0.01) if first else 1.0
            needed = math.ceil((1 + LAST_BATCH_SPARE) * (config.n - writer.valid) / parse_rate)
            size = min(batch_size, max_attempts - first, needed)
            batch = [conditions[(first + i) % len(conditions)] for i in range(size)]
            grammars = [self._grammar(a, config) for a in batch] if config.constrained else None
            seed = config.seed * SEED_STRIDE + first
            heads = [self.text_head(a) for a in batch]
            completions = self.generate([a.to_prompt() + h for a, h in zip(batch, heads)], grammars, config, seed)
            rows = []
            for i, (attributes, head, done) in enumerate(zip(batch, heads, completions)):
                if writer.valid + sum(1 for r in rows if r["cif"]) >= config.n:
                    break
                rows.append(attempt_row(f"s{first + i:07d}", mode, attributes.to_dict(), head + done.text, done.error,
                                        min_distance, _requirement(attributes) if config.only_matching else None))
            writer.append(rows)
            added = sum(1 for r in rows if r["cif"])
            new_valid += added
            bar.update(added)
            speed = new_valid / (time.perf_counter() - started)
            bar.set_postfix(valid=f"{writer.valid}/{len(writer.rows)}", per_s=f"{speed:.2f}")
        bar.close()
        refused = sum(1 for r in writer.rows if r["error"].startswith(UNMET_PROMPT))
        return SampleSummary(writer.valid, len(writer.rows), time.perf_counter() - started, refused)

    def as_read(self, attributes: Attributes, max_atoms: int) -> Attributes:
        """The attributes as this model reads them: the formula's elements in the order it writes them, and where it
        reads a formula stated with a space group as that group's conventional cell's, scaled to one such a cell
        can hold (`Attributes.in_conventional_cell`: NaCl in 225 asks for 2 atoms no Fm-3m cell holds)."""
        if (self.cell_formula and attributes.spacegroup is not None
                and self.text_format.answering(attributes.spacegroup).asymmetric_unit):
            attributes = attributes.in_conventional_cell(max_atoms)
        return attributes.in_site_order()

    def text_head(self, attributes: Attributes) -> str:
        """The start of the crystal text that the prompt decides, written for the model: in the asymmetric-unit
        form the space group asked for (so the crystal read back has it), else nothing."""
        if self.text_format.answering(attributes.spacegroup).asymmetric_unit and attributes.spacegroup is not None:
            return f"{attributes.spacegroup}\n"
        return ""

    def _grammar(self, attributes: Attributes, config: SampleConfig) -> Grammar:
        floor = config.volume_floor and self.cell_formula and attributes.formula
        min_volume = min_cell_volume(attributes.formula) if floor else None
        options = self.text_format.answering(attributes.spacegroup)
        if config.force_composition and attributes.formula:
            units = 1 if self.cell_formula else None  # a cell formula is the whole cell
            grammar = Grammar.for_formula(attributes.formula, options, config.max_atoms, units)
            return replace(grammar, min_distance=config.min_distance, min_volume=min_volume,
                           spacegroup=attributes.spacegroup)
        return Grammar(options, config.max_atoms, min_distance=config.min_distance, min_volume=min_volume,
                       spacegroup=attributes.spacegroup)

    def infill(
        self,
        structure: Structure,
        element: str,
        candidates: Sequence[str] | None = None,
    ) -> list[Substitution]:
        """Rank replacements for every site of `element` (see `crystext.sample.infill.rank_substitutions`)."""
        return rank_substitutions(self, structure, element, candidates)


def _requirement(attributes: Attributes) -> Callable[[Structure], str]:
    """The check `only_matching` puts on each crystal: the message says what it wrote instead of what was asked."""

    def unmet(structure: Structure) -> str:
        miss = attributes.unmet(structure)
        return f"{UNMET_PROMPT}{miss}" if miss else ""

    return unmet
