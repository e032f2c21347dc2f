"""The decoding loop: a row leaves the batch at its end and writes what it would have written alone, as
transformers' `generate` would; guidance mixes the two branches' log-probabilities."""

from __future__ import annotations

import pytest
import torch

from crystext.grammar import Grammar, GrammarLogitsProcessor
from crystext.prompts import Attributes
from crystext.sample import Sampler
from crystext.sample.decode import Decoding, decode

#: A temperature this low makes every draw the most likely token, so batched and single decodes can be compared.
GREEDY = 1e-6


@pytest.fixture(scope="module")
def sampler(model_dir) -> Sampler:
    return Sampler.from_pretrained(model_dir)


def settings(sampler: Sampler, **changes) -> Decoding:
    tokens = sampler.tokenizer
    return Decoding(**{"max_new_tokens": 60, "eos": tokens.eos_token_id, "pad": tokens.pad_token_id,
                       "temperature": GREEDY, **changes})


def vocab(sampler: Sampler) -> int:
    return sampler.model.get_output_embeddings().weight.shape[0]


def batch_sizes(sampler: Sampler, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The batch size of every forward pass the model makes from now on."""
    sizes: list[int] = []
    forward = sampler.model.forward
    monkeypatch.setattr(sampler.model, "forward", lambda *a, **k: sizes.append(len(k["input_ids"])) or forward(*a, **k))
    return sizes


def test_rows_leave_the_batch_at_their_end_and_write_what_they_would_alone(sampler, monkeypatch) -> None:
    # Prompts of different lengths (left padding) and grammars that end the rows after 1, 2 and 3 atoms.
    prompts = [sampler.prompt_ids(a.to_prompt()) for a in (Attributes(), Attributes(formula="NaCl"), Attributes())]
    grammars = [Grammar(max_atoms=k) for k in (1, 2, 3)]
    sizes = batch_sizes(sampler, monkeypatch)
    together = decode(sampler.model, prompts, settings(sampler),
                      GrammarLogitsProcessor(sampler.tokenizer, grammars, vocab(sampler)))
    assert sizes[0] == 3 and sizes[-1] == 1 and sorted(sizes, reverse=True) == sizes  # rows left as they ended
    eos, pad = sampler.tokenizer.eos_token_id, sampler.tokenizer.pad_token_id
    for row, (prompt, grammar) in enumerate(zip(prompts, grammars)):
        alone = decode(sampler.model, [prompt], settings(sampler),
                       GrammarLogitsProcessor(sampler.tokenizer, [grammar], vocab(sampler)))[0]
        end = (alone == eos).nonzero()[0, 0].item()
        assert torch.equal(together[row, : end + 1], alone[: end + 1])
        assert (together[row, end + 1 :] == pad).all()
    atoms = [sampler.tokenizer.decode(row, skip_special_tokens=True).count("\n") - 1 for row in together]
    assert atoms == [2, 4, 6]  # the lattice lines, then an element and a coordinates line per atom: 1, 2, 3 atoms


def test_the_loop_writes_what_transformers_generate_writes(sampler) -> None:
    prompt = sampler.prompt_ids(Attributes(formula="NaCl").to_prompt())
    ours = decode(sampler.model, [prompt], settings(sampler, max_new_tokens=12))[0]
    ids = torch.tensor([prompt])
    theirs = sampler.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=12, pad_token_id=sampler.tokenizer.pad_token_id)[0, len(prompt):]
    assert torch.equal(ours[: len(theirs)], theirs)


def test_guidance_draws_from_the_guided_log_probabilities(sampler, monkeypatch) -> None:
    prompt, negative = (sampler.prompt_ids(a.to_prompt()) for a in (Attributes(formula="NaCl"), Attributes()))
    with torch.no_grad():
        conditional, unconditional = (sampler.model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
                                      for ids in (prompt, negative))
    expected = 3.0 * (conditional - unconditional) + unconditional  # log p(x|c) + 2 (log p(x|c) - log p(x))
    sizes = batch_sizes(sampler, monkeypatch)
    first = decode(sampler.model, [prompt, prompt], settings(sampler, max_new_tokens=1, guidance_scale=3.0),
                   negative=negative)
    assert sizes == [4]  # two rows and their two unconditional branches
    assert first[:, 0].tolist() == [expected.argmax().item()] * 2
    # Several steps, rows leaving: each guided row writes what it would alone.
    grammars = [Grammar(max_atoms=1), Grammar(max_atoms=2)]
    guided = settings(sampler, guidance_scale=3.0)
    together = decode(sampler.model, [prompt, prompt], guided,
                      GrammarLogitsProcessor(sampler.tokenizer, grammars, vocab(sampler)), negative)
    for row, grammar in enumerate(grammars):
        alone = decode(sampler.model, [prompt], guided,
                       GrammarLogitsProcessor(sampler.tokenizer, [grammar], vocab(sampler)), negative)[0]
        assert torch.equal(together[row], alone)


def test_the_growing_cache_holds_what_a_dynamic_cache_holds_through_steps_and_dropped_rows(sampler) -> None:
    from transformers import DynamicLayer

    from crystext.sample.decode import _growing_cache, _GrowingLayer

    assert all(isinstance(layer, _GrowingLayer) for layer in _growing_cache(sampler.model).layers)
    generator = torch.Generator().manual_seed(0)
    grown, plain = _GrowingLayer(), DynamicLayer()
    rows = 6
    for step, length in enumerate([5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]):  # a prompt, then a token a step
        keys, values = (torch.randn(rows, 2, length, 4, generator=generator) for _ in range(2))
        got, want = grown.update(keys, values), plain.update(keys, values)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        if step in (3, 7):  # rows end and leave the batch
            rows -= 2
            keep = torch.arange(rows) + (step == 7)  # the first rows, then the middle two
            grown.batch_select_indices(keep)
            plain.batch_select_indices(keep)
    assert grown.get_seq_length() == plain.get_seq_length() == 16
    assert grown._room_keys.shape[-2] > 16  # written into reserved room, not concatenated
