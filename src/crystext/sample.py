"""Sample crystals from a trained model: unconditional, text-conditional, and infill (element substitution).

Every attempt becomes one row of the output CSV (id, mode, conditions, raw_text, cif, error), appended
batch by batch with one write and an fsync, so a killed run keeps what it made and `resume` goes on
to the requested number of parseable structures.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from pymatgen.core import Element, Species, Structure
from tqdm.auto import tqdm
from transformers import LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from crystext.constants import MIN_INTERATOMIC_DISTANCE
from crystext.files import write_atomic
from crystext.grammar import DEFAULT_MAX_ATOMS, Grammar, GrammarLogitsProcessor
from crystext.model import device, load_model
from crystext.prompts import Attributes, infill_prompt
from crystext.textformat import CrystalText, CrystalTextError, FormatOptions

COLUMNS = ("id", "mode", "conditions", "raw_text", "cif", "error")
#: Relative ionic-radius difference under which two elements count as chemically similar (infill).
SIMILAR_RADIUS_TOLERANCE = 0.2
#: Head room over the token count of the widest crystal text, when no token limit is given.
TOKEN_MARGIN = 1.1
#: Largest batch chosen automatically: on 2 CPU cores 128/256/512 give 10.1/12.3/13.6 valid crystals
#: a second (benchmarks/results/sample_default_batch.md), so past 256 little is gained per extra row.
AUTO_BATCH_MAX = 256
#: Memory an automatic batch's KV cache may take: this many bytes on a CPU, this share of the GPU's memory
#: (its total, not what is free at the moment, so the same GPU always gets the same batch and the same samples).
AUTO_CACHE_CPU_BYTES = 2 * 1024**3
AUTO_CACHE_GPU_SHARE = 0.25
#: Spare attempts in the last batch over those the parse rate so far says the wanted structures need.
LAST_BATCH_SPARE = 0.1


@dataclass
class SampleConfig:
    """How to sample: how many parseable structures, batch size, temperature/top-p, constraints, seed."""

    n: int = 100
    batch_size: int | None = None  # None: as many as the KV cache fits in memory, up to AUTO_BATCH_MAX
    temperature: float = 0.7
    top_p: float = 0.9
    constrained: bool = True
    force_composition: bool = False
    max_atoms: int = DEFAULT_MAX_ATOMS
    # Constrained only: keep each new atom this far (A) from the earlier ones; None turns the check off.
    min_distance: float | None = MIN_INTERATOMIC_DISTANCE
    max_new_tokens: int | None = None
    max_attempts: int | None = None  # default 10 * n
    seed: int = 0
    text_format: FormatOptions = field(default_factory=FormatOptions)


@dataclass
class SampleSummary:
    """What a sampling run produced: parseable structures, attempts, and wall time."""

    valid: int
    attempts: int
    seconds: float

    @property
    def valid_per_second(self) -> float:
        return self.valid / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Substitution:
    """An infill answer: the element put in place of the masked one, its log-probability, the new structure."""

    element: str
    log_prob: float
    structure: Structure


class SampleWriter:
    """Appends sample rows to a CSV, one complete batch per write; reopens and repairs it on resume."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = Path(path)
        if self.path.exists() and not resume:
            raise FileExistsError(f"{self.path} exists; pass --resume to continue it or choose another output")
        self.rows = self._read_existing() if resume and self.path.exists() else []
        if not self.path.exists() or not self.rows:
            self._rewrite([])

    def _read_existing(self) -> list[dict[str, str]]:
        with open(self.path, newline="") as handle:
            try:
                rows = list(csv.DictReader(handle))
            except csv.Error:
                rows = []
        complete = [r for r in rows if None not in r and all(r.get(c) is not None for c in COLUMNS)]
        if len(complete) != len(rows):
            self._rewrite(complete)
        return complete

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        write_atomic(self.path, _csv_text(rows, header=True))

    def append(self, rows: list[dict[str, str]]) -> None:
        with open(self.path, "a", newline="") as handle:
            handle.write(_csv_text(rows, header=False))
            handle.flush()
            os.fsync(handle.fileno())
        self.rows.extend(rows)

    @property
    def valid(self) -> int:
        return sum(1 for r in self.rows if r["cif"])


def _csv_text(rows: list[dict[str, str]], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class Sampler:
    """A loaded model ready to write crystals."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        self.device = device()
        self.model = model.to(self.device).eval()
        if self.device.type == "cpu":
            # Decoding step by step with a preallocated cache, plain attention beats SDPA on a CPU by ~1.5x
            # (benchmarks/results/sample_default.md); on a GPU the fused kernel stays.
            self.model.set_attn_implementation("eager")
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> Sampler:
        """Load a `crystext train` model directory; without one, the default model shipped with crystext."""
        model, tokenizer, _ = load_model(path)
        return cls(model, tokenizer)

    def token_budget(self, options: FormatOptions, max_atoms: int) -> int:
        """Tokens a crystal of `max_atoms` atoms may take: the count for the widest such text, with a margin.

        It sizes the preallocated cache, whose length every decoding step pays for.
        """
        length = f"{88.8888:.{options.length_decimals}f}"
        angle = f"{118.888:.{options.angle_decimals}f}"
        coord = f"{0.8888:.{options.coord_decimals}f}"
        lattice = f"{length} {length} {length}\n{angle} {angle} {angle}\n"
        widest = lattice + f"Og\n{coord} {coord} {coord}\n" * max_atoms
        return math.ceil(TOKEN_MARGIN * len(self.tokenizer(widest, add_special_tokens=False)["input_ids"])) + 1

    def auto_batch_size(self, tokens: int) -> int:
        """The batch whose preallocated KV cache of `tokens` positions fits the memory allowance (1 to AUTO_BATCH_MAX).

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
        return config.max_new_tokens or self.token_budget(config.text_format, config.max_atoms)

    def _prompt_ids(self, prompt: str) -> list[int]:
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return bos + self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], grammars: Sequence[Grammar] | None, config: SampleConfig, seed: int) -> list[str]:
        """Complete each prompt once (batched, with KV cache); constrained when `grammars` is given."""
        encoded = [self._prompt_ids(p) for p in prompts]
        width = max(len(ids) for ids in encoded)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded], device=self.device)
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded], device=self.device)
        limit = self._new_tokens(config)
        limit = min(limit, getattr(self.model.config, "max_position_embeddings", limit + width) - width)
        processors = LogitsProcessorList()
        if grammars is not None:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            processors.append(GrammarLogitsProcessor(self.tokenizer, list(grammars), vocab))
        torch.manual_seed(seed)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=config.temperature,
            top_p=config.top_p,
            max_new_tokens=limit,
            logits_processor=processors,
            pad_token_id=pad,
            eos_token_id=self.tokenizer.eos_token_id,
            cache_implementation="static",  # preallocated: a growing cache is copied at every token
        )
        return self.tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)

    def sample(
        self,
        config: SampleConfig,
        out: Path,
        conditions: Sequence[Attributes] | None = None,
        resume: bool = False,
        progress: bool = True,
    ) -> SampleSummary:
        """Sample until `config.n` parseable structures are in `out` (or attempts run out); every attempt is a row."""
        writer = SampleWriter(out, resume)
        mode = "conditional" if conditions else "unconditional"
        conditions = list(conditions) if conditions else [Attributes()]
        max_attempts = config.max_attempts or 10 * config.n
        batch_size = config.batch_size or self.auto_batch_size(
            max(len(self._prompt_ids(a.to_prompt())) for a in conditions)
            + self._new_tokens(config))
        started = time.perf_counter()
        bar = tqdm(total=config.n, initial=min(writer.valid, config.n), desc=f"sampling (batch {batch_size})",
                   disable=not progress)
        new_valid = 0
        while writer.valid < config.n and len(writer.rows) < max_attempts:
            first = len(writer.rows)
            # The last batch is cut to what the wanted structures need at the parse rate so far, plus a spare.
            parse_rate = max(writer.valid / first, 0.01) if first else 1.0
            needed = math.ceil((1 + LAST_BATCH_SPARE) * (config.n - writer.valid) / parse_rate)
            size = min(batch_size, max_attempts - first, needed)
            batch = [conditions[(first + i) % len(conditions)] for i in range(size)]
            grammars = [self._grammar(a, config) for a in batch] if config.constrained else None
            texts = self.generate([a.to_prompt() for a in batch], grammars, config, seed=config.seed * 1_000_003 + first)
            rows = []
            for i, (attributes, text) in enumerate(zip(batch, texts)):
                if writer.valid + sum(1 for r in rows if r["cif"]) >= config.n:
                    break
                rows.append(_row(f"s{first + i:07d}", mode, attributes.to_dict(), text))
            writer.append(rows)
            added = sum(1 for r in rows if r["cif"])
            new_valid += added
            bar.update(added)
            bar.set_postfix(valid=f"{writer.valid}/{len(writer.rows)}", per_s=f"{new_valid / (time.perf_counter() - started):.2f}")
        bar.close()
        return SampleSummary(writer.valid, len(writer.rows), time.perf_counter() - started)

    def _grammar(self, attributes: Attributes, config: SampleConfig) -> Grammar:
        if config.force_composition and attributes.formula:
            grammar = Grammar.for_formula(attributes.formula, config.text_format, config.max_atoms)
            return replace(grammar, min_distance=config.min_distance)
        return Grammar(config.text_format, config.max_atoms, min_distance=config.min_distance)

    @torch.no_grad()
    def infill(
        self,
        structure: Structure,
        element: str,
        candidates: Sequence[str] | None = None,
        text_format: FormatOptions | None = None,
    ) -> list[Substitution]:
        """Rank replacements for every site of `element` by the model's log-probability of naming them."""
        crystal = CrystalText.from_structure(structure)
        prompt_ids = self._prompt_ids(infill_prompt(crystal, element, text_format or FormatOptions()))
        names = list(candidates) if candidates is not None else sorted(e.symbol for e in Element if e.Z <= 94)
        scores = []
        for start in range(0, len(names), 64):
            chunk = names[start : start + 64]
            answers = [self.tokenizer(" " + e, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id] for e in chunk]
            rows = [prompt_ids + a for a in answers]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [self.tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=self.device)
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
            for row, answer in enumerate(answers):
                positions = range(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(answer))
                scores.append(sum(float(logp[row, p, t]) for p, t in zip(positions, answer)))
        ranked = sorted(zip(names, scores), key=lambda pair: -pair[1])
        return [Substitution(e, s, _substitute(structure, element, e)) for e, s in ranked]


def _substitute(structure: Structure, old: str, new: str) -> Structure:
    copy = structure.copy()
    if new != old:
        copy.replace_species({old: new})
    return copy


def substitution_row(sample_id: str, source: str, masked: str, substitution: Substitution) -> dict[str, str]:
    """An infill answer as a samples-CSV row (mode `infill`), with what was replaced and its log-probability."""
    conditions = {"source": source, "masked": masked, "replacement": substitution.element,
                  "log_prob": round(substitution.log_prob, 4)}
    text = CrystalText.from_structure(substitution.structure).to_str()
    return {"id": sample_id, "mode": "infill", "conditions": json.dumps(conditions), "raw_text": text,
            "cif": substitution.structure.to(fmt="cif"), "error": ""}


def similar_elements(element: str, tolerance: float = SIMILAR_RADIUS_TOLERANCE) -> list[str]:
    """Elements sharing a common oxidation state with `element` whose ionic radius there differs by at most `tolerance`."""
    target = Element(element)
    similar = set()
    for state in target.common_oxidation_states:
        radius = _radius(element, state)
        if radius is None:
            continue
        for other in Element:
            if other.symbol != element and state in other.common_oxidation_states:
                r = _radius(other.symbol, state)
                if r is not None and abs(r - radius) <= tolerance * radius:
                    similar.add(other.symbol)
    return sorted(similar)


def _radius(element: str, state: int) -> float | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns for every species without tabulated radius
        try:
            return float(Species(element, state).ionic_radius)
        except (TypeError, ValueError, KeyError):
            return None


def _row(sample_id: str, mode: str, conditions: dict, text: str) -> dict[str, str]:
    """One output row: the raw text and its CIF, or the reason it does not parse."""
    cif, error = "", ""
    try:
        cif = CrystalText.from_str(text).to_structure().to(fmt="cif")
    except CrystalTextError as err:
        error = str(err)
    except ValueError as err:  # pymatgen refusing a cell the grammar let through
        error = f"not a valid structure: {err}"
    return {"id": sample_id, "mode": mode, "conditions": json.dumps(conditions), "raw_text": text, "cif": cif, "error": error}


def read_conditions(path: Path) -> list[Attributes]:
    """Conditions, one per row, from a CSV in the dataset layout (pretty_formula, spacegroup.number, ...)."""
    import pandas as pd

    frame = pd.read_csv(path)
    if "formula" in frame.columns and "pretty_formula" not in frame.columns:
        frame = frame.rename(columns={"formula": "pretty_formula"})
    conditions = [Attributes.from_properties(row) for row in frame.to_dict("records")]
    if not conditions or not any(c.to_dict() for c in conditions):
        raise ValueError(f"{path}: no conditions (expected columns such as pretty_formula, spacegroup.number)")
    return conditions


def parsed_structures(path: Path) -> Iterator[tuple[str, Structure]]:
    """(id, structure) for every parseable row of a samples CSV, decoded from the text the model wrote.

    The text rather than the CIF: a CIF with two atoms on one site does not read back (pymatgen
    merges them into one over-occupied site), yet such a sample is a structure, just an invalid one.
    """
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["cif"]:
                yield row["id"], CrystalText.from_str(row["raw_text"]).to_structure()


def write_structures(path: Path, cif_dir: Path | None = None, extxyz: Path | None = None) -> int:
    """Also write the parseable samples as a folder of .cif files and/or one extxyz file; returns their count."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    count = 0
    if cif_dir:
        cif_dir.mkdir(parents=True, exist_ok=True)
    for sample_id, structure in parsed_structures(path):
        count += 1
        if cif_dir:
            structure.to(filename=str(cif_dir / f"{sample_id}.cif"))
        if extxyz:
            atoms = AseAtomsAdaptor.get_atoms(structure)
            atoms.info["id"] = sample_id
            frames.append(atoms)
    if extxyz:
        staging = extxyz.with_name(extxyz.name + ".tmp")
        write(str(staging), frames, format="extxyz")
        staging.replace(extxyz)
    return count

