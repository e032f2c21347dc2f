"""Infill: rank the elements that could replace a masked one, by the model's log-probability of naming them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from pymatgen.core import Element, Structure

from crystext.prompts import infill_prompt
from crystext.sample.samples_csv import attempt_row
from crystext.textformat import CrystalText

if TYPE_CHECKING:
    from crystext.sample.sampler import Sampler

__all__ = ["Substitution", "rank_substitutions", "substitution_row"]

#: Candidate answers scored in one forward pass.
CANDIDATES_PER_PASS = 64
#: Candidates when none are given: every element up to plutonium.
MAX_CANDIDATE_Z = 94


@dataclass(frozen=True)
class Substitution:
    """An infill answer: the element put in place of the masked one, its log-probability, the new structure."""

    element: str
    log_prob: float
    structure: Structure


@torch.no_grad()
def rank_substitutions(
    sampler: Sampler,
    structure: Structure,
    element: str,
    candidates: Sequence[str] | None = None,
) -> list[Substitution]:
    """Every candidate for the sites of `element`, most probable first (log-probability of the answer + end)."""
    tokenizer, model = sampler.tokenizer, sampler.model
    crystal = CrystalText.from_structure(structure, sampler.text_format.asymmetric_unit)
    prompt_ids = sampler.prompt_ids(infill_prompt(crystal, element, sampler.text_format))
    names = list(candidates) if candidates is not None else sorted(e.symbol for e in Element if e.Z <= MAX_CANDIDATE_Z)
    scores = []
    for start in range(0, len(names), CANDIDATES_PER_PASS):
        chunk = names[start : start + CANDIDATES_PER_PASS]
        answers = [tokenizer(" " + e, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for e in chunk]
        rows = [prompt_ids + a for a in answers]
        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in rows], device=sampler.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=sampler.device)
        logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
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
    row = attempt_row(sample_id, "infill", conditions, CrystalText.from_structure(substitution.structure).to_str())
    row["cif"] = substitution.structure.to(fmt="cif")
    return row
