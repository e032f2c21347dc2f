"""The crystal text grammar as a character-level automaton, and a logits processor that keeps sampling inside it.

Constrained decoding masks every token whose characters would leave the grammar: numbers in the
configured format, real element symbols, the right line structure, lattice lengths and angles in a
sane range that give a real cell, and the end token only after a complete atom. Optionally the
elements must come in the proportions of a requested formula, and each new atom must keep a minimum
distance from the atoms before it (checked as its last coordinate is chosen, so the distance check
narrows the model's choice of that coordinate and never cuts a text short).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache

import numpy as np
import torch
from pymatgen.core import Composition, Lattice
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from crystext.textformat import ELEMENT_SYMBOLS, FormatOptions

#: Sane lattice values for generated cells (Angstrom, degrees).
LENGTH_RANGE = (1.0, 100.0)
ANGLE_RANGE = (10.0, 170.0)
#: Largest cell constrained decoding lets the model write.
DEFAULT_MAX_ATOMS = 52

_PREFIXES = frozenset(symbol[:i] for symbol in ELEMENT_SYMBOLS for i in range(1, len(symbol) + 1))
_SECTIONS = ("lengths", "angles", "element", "coords")


@dataclass(frozen=True)
class Grammar:
    """What the constrained text may contain: number formats, cell size, and optionally a composition
    and a minimum interatomic distance."""

    options: FormatOptions = field(default_factory=FormatOptions)
    max_atoms: int = DEFAULT_MAX_ATOMS
    composition: Mapping[str, int] | None = None  # element -> count in one formula unit
    min_distance: float | None = None  # Angstrom, nearest periodic image included; kept by the logits processor

    @classmethod
    def for_formula(cls, formula: str, options: FormatOptions | None = None, max_atoms: int = DEFAULT_MAX_ATOMS) -> Grammar:
        """A grammar whose cells hold a whole number of `formula` units (as written, e.g. NaCl or Na4Cl4)."""
        counts = {el.symbol: int(round(n)) for el, n in Composition(formula).items()}
        if sum(counts.values()) > max_atoms:
            raise ValueError(f"formula {formula} has more than max_atoms={max_atoms} atoms")
        return cls(options or FormatOptions(), max_atoms, counts)


@dataclass(frozen=True)
class State:
    """Where a partial crystal text stands: section, field within the line, the current field's characters."""

    section: str = "lengths"
    field: int = 0
    buf: str = ""
    values: tuple[float, ...] = ()  # finished numbers of the current lattice or coordinate line
    counts: tuple[tuple[str, int], ...] = ()  # elements written so far
    lattice: tuple[float, ...] = ()  # the six lattice parameters, once written
    sites: tuple[tuple[float, float, float], ...] = ()  # fractional coordinates written so far

    def shape_key(self) -> tuple:
        """The part of the state that decides which characters may follow, composition aside."""
        return (self.section, self.field, self.buf, self.values if self.section == "angles" else ())


def advance(state: State, text: str, grammar: Grammar) -> State | None:
    """The state after `text`, or None if `text` leaves the grammar."""
    for char in text:
        state = _step(state, char, grammar)
        if state is None:
            return None
    return state


def can_end(state: State, grammar: Grammar) -> bool:
    """Whether the text may end here: right after the last coordinate of a complete atom."""
    if not (state.section == "coords" and state.field == 2 and _number_done(state.buf, grammar.options.coord_decimals)):
        return False
    return grammar.composition is None or _proportional(dict(state.counts), grammar.composition)


def _step(s: State, char: str, g: Grammar) -> State | None:
    opts = g.options
    if s.section in ("lengths", "angles"):
        decimals = opts.length_decimals if s.section == "lengths" else opts.angle_decimals
        low, high = LENGTH_RANGE if s.section == "lengths" else ANGLE_RANGE
        if char.isdigit() or char == ".":
            buf = s.buf + char
            live = _number_prefix(buf, decimals, 3) and _reachable(buf, s, (low, high))
            return replace(s, buf=buf) if live else None
        if not _number_done(s.buf, decimals) or not low <= float(s.buf) <= high:
            return None
        values = s.values + (float(s.buf),)
        if s.field < 2:
            return replace(s, field=s.field + 1, buf="", values=values) if char == " " else None
        if char != "\n":
            return None
        if s.section == "lengths":
            return replace(s, section="angles", field=0, buf="", values=(), lattice=values)
        return State("element", 0, "", (), s.counts, s.lattice + values) if _valid_angles(values) else None
    if s.section == "element":
        if char == "\n":
            if s.buf not in ELEMENT_SYMBOLS or not _element_allowed(s.buf, s.counts, g, exact=True):
                return None
            return State("coords", 0, "", (), _add(s.counts, s.buf), s.lattice, s.sites)
        buf = s.buf + char
        return replace(s, buf=buf) if buf in _PREFIXES and _element_allowed(buf, s.counts, g) else None
    # coordinates: "0." followed by the configured number of digits
    if char.isdigit() or char == ".":
        buf = s.buf + char
        ok = _number_prefix(buf, opts.coord_decimals, 1) and buf[0] == "0"
        return replace(s, buf=buf) if ok else None
    if not _number_done(s.buf, opts.coord_decimals):
        return None
    if s.field < 2:
        return replace(s, field=s.field + 1, buf="", values=s.values + (float(s.buf),)) if char == " " else None
    if char != "\n" or sum(n for _, n in s.counts) >= g.max_atoms:
        return None
    site = (*s.values, float(s.buf))
    return State("element", 0, "", (), s.counts, s.lattice, s.sites + (site,))


def _far_enough(s: State, z: np.ndarray, min_distance: float) -> np.ndarray:
    """For each candidate last coordinate `z` of the atom being written: whether it keeps `min_distance`
    from every atom before it (nearest of the 27 neighbouring images)."""
    if not s.sites:
        return np.ones(len(z), dtype=bool)
    x, y = s.values
    candidates = np.stack([np.full(len(z), x), np.full(len(z), y), z], axis=1)
    delta = candidates[:, None, :] - np.array(s.sites)[None, :, :]
    delta = delta - np.round(delta)
    shifted = delta[:, :, None, :] + _IMAGES[None, None, :, :]
    distances = np.linalg.norm(shifted @ _matrix(s.lattice), axis=-1)
    return distances.min(axis=(1, 2)) >= min_distance


_IMAGES = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


@lru_cache(maxsize=4096)
def _matrix(lattice: tuple[float, ...]) -> np.ndarray:
    return Lattice.from_parameters(*lattice).matrix


def _number_prefix(buf: str, decimals: int, max_int_digits: int) -> bool:
    whole, dot, frac = buf.partition(".")
    if not whole.isdigit() or len(whole) > max_int_digits or (len(whole) > 1 and whole[0] == "0"):
        return False
    if dot and decimals == 0:
        return False
    return (frac == "" or frac.isdigit()) and len(frac) <= decimals


def _reachable(buf: str, s: State, bounds: tuple[float, float]) -> bool:
    """Whether the number being written can still end in range (and, for the last angle, give a real cell)."""
    whole, dot, frac = buf.partition(".")
    if dot and not (bounds[0] <= float(f"{whole}.{frac}9999") and float(f"{whole}.{frac}0") <= bounds[1]):
        return False
    for value in range(math.ceil(bounds[0]), math.floor(bounds[1]) + 1):
        text = str(value)
        if (text == whole if dot else text.startswith(whole)) and _cell_possible(s, float(value), bounds):
            return True
    return False


def _cell_possible(s: State, value: float, bounds: tuple[float, float]) -> bool:
    """For the angles: whether the line can still describe a real cell once this angle is `value`."""
    if s.section != "angles" or s.field == 0:
        return True
    if s.field == 2:
        return _valid_angles(s.values + (value,))
    return _third_angle_exists(s.values[0], value, bounds)


@lru_cache(maxsize=None)
def _third_angle_exists(alpha: float, beta: float, bounds: tuple[float, float]) -> bool:
    return any(_valid_angles((alpha, beta, float(g))) for g in range(int(bounds[0]), int(bounds[1]) + 1))


def _number_done(buf: str, decimals: int) -> bool:
    whole, dot, frac = buf.partition(".")
    return bool(whole) and whole.isdigit() and (len(frac) == decimals if decimals else not dot)


@lru_cache(maxsize=None)
def _valid_angles(angles: tuple[float, ...]) -> bool:
    ca, cb, cg = (math.cos(math.radians(x)) for x in angles)
    return 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg > 1e-3


def _add(counts: tuple[tuple[str, int], ...], element: str) -> tuple[tuple[str, int], ...]:
    table = dict(counts)
    table[element] = table.get(element, 0) + 1
    return tuple(sorted(table.items()))


def _element_allowed(prefix: str, counts: tuple[tuple[str, int], ...], g: Grammar, exact: bool = False) -> bool:
    """Whether some element starting with `prefix` (or `prefix` itself, if `exact`) may come next, given the
    composition and the atom cap."""
    if sum(n for _, n in counts) >= g.max_atoms:
        return False
    if g.composition is None:
        return True
    unit = g.composition
    current = dict(counts)
    for element in unit:
        if not (element == prefix if exact else element.startswith(prefix)):
            continue
        after = {**current, element: current.get(element, 0) + 1}
        units = max(math.ceil(after.get(e, 0) / n) for e, n in unit.items())
        if units * sum(unit.values()) <= g.max_atoms:
            return True
    return False


def _proportional(counts: dict[str, int], unit: Mapping[str, int]) -> bool:
    if set(counts) != set(unit):
        return False
    ratios = {counts[e] / n for e, n in unit.items()}
    return len(ratios) == 1 and next(iter(ratios)).is_integer()


def token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    """The text each token id adds when decoded after other text (None for special tokens)."""
    anchor = tokenizer("0", add_special_tokens=False)["input_ids"][-1]
    base = tokenizer.decode([anchor])
    special = set(tokenizer.all_special_ids)
    size = max(tokenizer.get_vocab().values()) + 1
    texts: list[str | None] = []
    for token_id in range(size):
        if token_id in special:
            texts.append(None)
            continue
        full = tokenizer.decode([anchor, token_id], clean_up_tokenization_spaces=False)
        texts.append(full[len(base):] if full.startswith(base) else None)
    return texts


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks tokens that would take each sequence out of the crystal grammar (one grammar per batch row)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, grammars: list[Grammar], vocab_size: int) -> None:
        self.texts = token_texts(tokenizer)[:vocab_size]
        self.texts += [None] * (vocab_size - len(self.texts))
        self.eos = tokenizer.eos_token_id
        self.grammars = grammars
        self.states: list[State | None] = [State() for _ in grammars]
        self.start: int | None = None
        self._masks: dict[tuple, torch.Tensor] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.start is None:
            self.start = input_ids.shape[1]
        elif input_ids.shape[1] > self.start:
            for row, token in enumerate(input_ids[:, -1].tolist()):
                state = self.states[row]
                if state is not None:
                    text = self.texts[token] if token < len(self.texts) else None
                    self.states[row] = advance(state, text, self.grammars[row]) if text is not None else None
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for row, state in enumerate(self.states):
            if state is None:  # finished (or, never, broken): let it emit end tokens
                allowed[row, self.eos] = True
                continue
            allowed[row] = self._mask(state, self.grammars[row], scores.shape[1], scores.device)
            if can_end(state, self.grammars[row]) or not allowed[row].any():
                allowed[row, self.eos] = True  # a dead end (never expected) ends the text; it is kept as a failure
        return scores.masked_fill(~allowed, -math.inf)

    def _leads_on(self, state: State, text: str | None, grammar: Grammar) -> bool:
        """Whether `text` keeps the grammar and, if it stops inside an element symbol, some token can finish it."""
        after = advance(state, text, grammar) if text else None
        if after is None:
            return False
        if after.section == "element" and after.buf:
            return any(t and advance(after, t, grammar) is not None for t in self.texts)
        return True

    def _mask(self, state: State, grammar: Grammar, width: int, device: torch.device) -> torch.Tensor:
        full = sum(n for _, n in state.counts) >= grammar.max_atoms
        unit = tuple(sorted(grammar.composition.items())) if grammar.composition else None
        key = (grammar.options, grammar.max_atoms, unit, state.shape_key(), state.counts if unit else full)
        mask = self._masks.get(key)
        if mask is None:
            mask = torch.tensor([self._leads_on(state, text, grammar) for text in self.texts], dtype=torch.bool)
            mask = torch.nn.functional.pad(mask, (0, max(0, width - len(mask))))[:width].to(device)
            self._masks[key] = mask
        # Only while the last coordinate is still open: once written, the distance is settled.
        writing_z = state.section == "coords" and state.field == 2
        if grammar.min_distance and writing_z and not _number_done(state.buf, grammar.options.coord_decimals):
            mask = self._keep_distance(state, grammar, mask)
        return mask

    def _keep_distance(self, state: State, grammar: Grammar, mask: torch.Tensor) -> torch.Tensor:
        """`mask` less the tokens that finish the last coordinate too close to an earlier atom (unless every
        one does: then the atom is written anyway, and judged invalid later, rather than steered astray)."""
        ids, values = [], []
        for token_id in mask.nonzero().flatten().tolist():
            number = state.buf + (self.texts[token_id] or "").split(" ")[0].split("\n")[0]
            if _number_done(number, grammar.options.coord_decimals):
                ids.append(token_id)
                values.append(float(number))
        if not ids:
            return mask
        too_close = ~_far_enough(state, np.array(values), grammar.min_distance)
        if not too_close.any() or too_close.all():
            return mask
        mask = mask.clone()
        mask[torch.tensor(ids, device=mask.device)[torch.from_numpy(too_close).to(mask.device)]] = False
        return mask
