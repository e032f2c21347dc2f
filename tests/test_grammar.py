"""The constrained-decoding grammar: what it tracks of a partial crystal, and the minimum-distance check."""

from __future__ import annotations

import functools

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from crystext.grammar import Grammar, GrammarLogitsProcessor, State, _far_enough, advance
from crystext.model import train_scratch_tokenizer

CUBE = "4.0 4.0 4.0\n90 90 90\n"


def test_advance_tracks_lattice_and_sites() -> None:
    state = advance(State(), CUBE + "Na\n0.00 0.00 0.00\nCl\n0.50 0.50 0.50\nNa\n0.25 0.75 0.5", Grammar())
    assert state.lattice == (4.0, 4.0, 4.0, 90.0, 90.0, 90.0)
    assert state.sites == ((0.0, 0.0, 0.0), (0.5, 0.5, 0.5))
    assert (state.section, state.field, state.values, state.buf) == ("coords", 2, (0.25, 0.75), "0.5")
    assert advance(State(), "4.0 4.0 4.0\n90 90 9", Grammar()).lattice == (4.0, 4.0, 4.0)


def test_far_enough_uses_the_nearest_periodic_image() -> None:
    state = advance(State(), CUBE + "Na\n0.00 0.00 0.00\nCl\n0.00 0.00 ", Grammar())
    # z = 0.10 is 0.40 A above the first atom, 0.13 is 0.52 A, 0.95 is 0.20 A below its image at z = 1
    assert _far_enough(state, np.array([0.10, 0.13, 0.95]), 0.5).tolist() == [False, True, False]
    # in a 150 degree cell (0.45, 0.55, 0) is 1.105 A from the origin itself (a + b is short there);
    # the wrapped difference (0.45, -0.45, 0) alone would say 3.48 A
    oblique = advance(State(), "4.0 4.0 4.0\n90 90 150\nNa\n0.00 0.00 0.00\nCl\n0.45 0.55 ", Grammar())
    assert _far_enough(oblique, np.array([0.0]), 1.10).tolist() == [True]
    assert _far_enough(oblique, np.array([0.0]), 1.11).tolist() == [False]


@functools.cache
def scratch_tokenizer() -> PreTrainedTokenizerBase:
    return train_scratch_tokenizer([CUBE])


def allowed_after(text: str, grammar: Grammar) -> set[str]:
    """The token texts the processor allows after `text`, fed to it token by token as generate would."""
    tokenizer = scratch_tokenizer()
    vocab = len(tokenizer.get_vocab())
    processor = GrammarLogitsProcessor(tokenizer, [grammar], vocab)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    prompt = torch.tensor([[tokenizer.bos_token_id]])
    scores = torch.zeros(1, vocab)
    processor(prompt, scores)
    for i in range(len(ids)):
        out = processor(torch.cat([prompt, torch.tensor([ids[: i + 1]])], dim=1), scores)
    return {tokenizer.convert_ids_to_tokens(i) for i in torch.isfinite(out[0]).nonzero().flatten().tolist()}


def test_processor_masks_coordinates_that_would_crowd_an_atom() -> None:
    text = CUBE + "Na\n0.00 0.00 0.00\nCl\n0.00 0.00 "
    free = allowed_after(text, Grammar())
    spaced = allowed_after(text, Grammar(min_distance=0.5))
    assert {f"{i / 100:.2f}" for i in range(100)} <= free
    # under 0.5 A from z = 0 or z = 1 is 0.00-0.12 and 0.88-0.99: those 25 values go, and no other token
    assert free - spaced == {f"{i / 100:.2f}" for i in [*range(13), *range(88, 100)]}


def test_processor_lets_a_crowded_atom_be_written_rather_than_cut_off() -> None:
    text = "1.0 1.0 1.0\n90 90 90\nNa\n0.00 0.00 0.00\nCl\n0.00 0.00 "
    assert allowed_after(text, Grammar(min_distance=0.6)) == allowed_after(text, Grammar())


def test_digit_by_digit_coordinates_are_checked_as_they_complete() -> None:
    from crystext.textformat import FormatOptions

    options = FormatOptions(coord_decimals=3)
    text = CUBE + "Na\n0.000 0.000 0.000\nCl\n0.000 0.000 0.12"
    # z = 0.120 ... 0.124 is under 0.5 A from the first atom (4 A * 0.125 = 0.5 A)
    assert allowed_after(text, Grammar(options)) == set("0123456789")
    assert allowed_after(text, Grammar(options, min_distance=0.5)) == set("56789")
    # after "0.1" a single digit does not finish the number (kept), two digits do: 0.110-0.124 go
    before = text[:-1]
    removed = allowed_after(before, Grammar(options)) - allowed_after(before, Grammar(options, min_distance=0.5))
    assert removed == {str(i) for i in range(10, 25)}
