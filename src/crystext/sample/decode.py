"""Batched sampling that drops each sequence from the batch as soon as it ends.

transformers' `generate` runs every row of a batch until the longest has ended: a 4-atom crystal (about 47
tokens) waits, and is computed on, while a 20-atom one in the same batch takes 200. Here a row leaves the batch,
and its keys and values the cache, at its end token, so a batch costs about the tokens its rows write
(benchmarks/results/sample_both3_decode.md against sample_both3_generate.md). Working out the grammar's mask in
a thread while the model computes the logits was tried and gained nothing on 2 cores, where the model's own two
threads fill them.

The sampling itself is `generate`'s: the grammar's mask first, then temperature, top-k and top-p,
and one multinomial draw per row; classifier-free guidance mixes log-probabilities as transformers'
`UnbatchedClassifierFreeGuidanceLogitsProcessor` does, with the unconditional prompts decoded in the same batch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from transformers import (
    DynamicCache,
    DynamicLayer,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from crystext.grammar import GrammarLogitsProcessor

__all__ = ["TOP_K", "Decoding", "decode", "guided"]

#: Tokens kept before top-p: transformers' default, which every crystext sample before its own loop was drawn with.
TOP_K = 50


@dataclass(frozen=True)
class Decoding:
    """What a decode needs besides the model and prompts: the sampling settings and the special tokens."""

    max_new_tokens: int
    eos: int
    pad: int
    temperature: float = 1.0
    top_p: float = 1.0
    guidance_scale: float = 1.0


def guided(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: log p(x|c) + (scale - 1) (log p(x|c) - log p(x)), from the two branches' logits."""
    conditional, unconditional = conditional.log_softmax(-1), unconditional.log_softmax(-1)
    return scale * (conditional - unconditional) + unconditional


@torch.no_grad()
def decode(
    model: PreTrainedModel,
    prompts: list[list[int]],
    settings: Decoding,
    grammar: GrammarLogitsProcessor | None = None,
    negative: list[int] | None = None,
) -> torch.Tensor:
    """Sample one completion of each prompt (token ids, left-padded together); returns the new tokens per row,
    `pad` after a row's end token. `grammar` (one grammar per prompt) masks each live row's next token and follows
    the rows that stay; with `negative` (the unconditional prompt) each row is guided away from it by the scale."""
    device = model.device
    batch = len(prompts)
    branches = [*prompts, *([negative] * batch)] if negative is not None and settings.guidance_scale != 1 else prompts
    width = max(len(ids) for ids in branches)
    input_ids = torch.tensor([[settings.pad] * (width - len(ids)) + ids for ids in branches], device=device)
    attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in branches], device=device)
    warpers = LogitsProcessorList([*([grammar] if grammar else []), TemperatureLogitsWarper(settings.temperature),
                                   TopKLogitsWarper(TOP_K), TopPLogitsWarper(settings.top_p)])
    sequences = torch.full((batch, width + settings.max_new_tokens), settings.pad, dtype=torch.long, device=device)
    sequences[:, :width] = input_ids[:batch]
    rows = torch.arange(batch, device=device)  # the batch row of each live sequence
    cache = _growing_cache(model)
    cache_name = _cache_argument(model)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    step_ids = input_ids
    for step in range(settings.max_new_tokens):
        logits = model(input_ids=step_ids, attention_mask=attention, position_ids=positions,
                       use_cache=True, **{cache_name: cache}).logits[:, -1].float()
        live = len(rows)
        scores = guided(logits[:live], logits[live:], settings.guidance_scale) if len(logits) > live else logits
        scores = warpers(sequences[rows, : width + step], scores)
        token = torch.multinomial(scores.softmax(-1), 1).squeeze(1)
        sequences[rows, width + step] = token
        going = token != settings.eos
        if not going.all():
            if not going.any():
                break
            keep = going.nonzero().squeeze(1)
            if grammar is not None:
                grammar.keep(keep.tolist())
            rows, token = rows[keep], token[keep]
            branch = torch.cat([keep, keep + live]) if len(logits) > live else keep
            cache.batch_select_indices(branch)
            attention, positions = attention[branch], positions[branch]
        step_ids = token.repeat(len(attention) // len(token))[:, None]  # the unconditional branch follows too
        positions = positions[:, -1:] + 1
        attention = torch.cat([attention, attention.new_ones(len(attention), 1)], 1)
    return sequences[:, width:]


class _GrowingLayer(DynamicLayer):
    """A `DynamicLayer` that writes each step's keys and values into room reserved ahead (doubling it when full)
    instead of concatenating the whole cache every step: sampling at batch 512 takes 7% less time
    (benchmarks/results/decode_cache_default_512.md).
    `keys` and `values` are views of the written part, as `DynamicLayer` would hold them. Only what `decode` asks of
    a cache layer is kept in step with the reserved room: `update` and `batch_select_indices`."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._room_keys = self._room_values = None
        self._length = 0

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self._length + key_states.shape[-2]
        if self._room_keys is None or end > self._room_keys.shape[-2]:
            self._room_keys = self._reserve(key_states, self._room_keys, end)
            self._room_values = self._reserve(value_states, self._room_values, end)
        self._room_keys[..., self._length:end, :] = key_states
        self._room_values[..., self._length:end, :] = value_states
        self._length = end
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self._length:
            self._room_keys, self._room_values = self._room_keys[indices], self._room_values[indices]
            self._view()

    def _reserve(self, states: torch.Tensor, room: torch.Tensor | None, end: int) -> torch.Tensor:
        """Room for twice the `end` tokens written after this step, holding the `room` written so far."""
        bigger = states.new_empty(*states.shape[:-2], 2 * end, states.shape[-1])
        if room is not None:
            bigger[..., : self._length, :] = room[..., : self._length, :]
        return bigger

    def _view(self) -> None:
        self.keys = self._room_keys[..., : self._length, :]
        self.values = self._room_values[..., : self._length, :]


def _growing_cache(model: PreTrainedModel) -> DynamicCache:
    """The model's DynamicCache, its plain layers made `_GrowingLayer`s (a sliding-window or other layer stays)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def _cache_argument(model: PreTrainedModel) -> str:
    """The name the model's forward takes its cache by: `cache` in transformers from 5.24 (`past_key_values`, which
    older models take, is deprecated there and goes in 5.40); a LoRA model is asked of the model it wraps."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
