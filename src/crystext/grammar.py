"""The crystal text grammar as a character-level automaton, and a logits processor that keeps sampling inside it.

Constrained decoding masks every token whose characters would leave the grammar: numbers in the
configured format, real element symbols, the right line structure, lattice lengths and angles in a
sane range that give a real cell, and the end token only after a complete atom. Optionally the
elements must come in the proportions of a requested formula, in a number of formula units that gives
the cell the model wrote about the volume its elements take in MP-20, and each new atom must keep a minimum
distance from the atoms before it (checked as its last coordinate is chosen, so the distance check
narrows the model's choice of that coordinate and never cuts a text short).

Reading order: the grammar's settings (`Grammar`), where a partial text stands (`Section`, `State`),
the automaton (`advance`, `can_end`, one step function per section), the rules those steps ask
(number format, ranges, cell, composition, distance), token-text recovery, and the processor.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from pathlib import Path

import numpy as np
import torch
from pymatgen.core import Composition, Lattice
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from crystext.constants import MAX_VOLUME_PER_ATOM, MAX_VOLUME_RATIO, MIN_VOLUME_PER_ATOM, MIN_VOLUME_RATIO
from crystext.geometry import (
    FIXED_ANGLES,
    ORBIT_GRID,
    ORBIT_MERGE_ANGSTROM,
    TIED_LENGTHS,
    copy_distances,
    crystal_system,
    lattice_points,
    orbit_copies,
    orbit_sizes,
    smallest_orbits,
    symmetric_lattice,
)
from crystext.textformat import ELEMENT_SYMBOLS, SPACEGROUPS, FormatOptions

# ---------------------------------------------------------------------------------------------------------------------
# Grammar settings

#: Sane lattice values for generated cells (Angstrom, degrees).
LENGTH_RANGE = (1.0, 100.0)
ANGLE_RANGE = (10.0, 170.0)
#: Largest cell constrained decoding lets the model write.
DEFAULT_MAX_ATOMS = 52
#: The volume per atom of each element (A^3) fitted on MP-20, with its provenance (recipes/element_volumes.py).
ELEMENT_VOLUMES = Path(__file__).parent / "element_volumes.json"

#: The most lattice points a conventional cell holds (face-centred): an asymmetric unit's counts are its conventional
#: cell's atoms, up to this many times the atom cap.
_MOST_LATTICE_POINTS = 4
#: Integer digits a number may have: up to 100 (lengths) or 170 (angles); a coordinate is "0.".
_LATTICE_INT_DIGITS = 3
_COORD_INT_DIGITS = 1
#: Every start of an element symbol ("C", "Cl", ...), for checking a symbol while it is written.
_ELEMENT_PREFIXES = frozenset(symbol[:i] for symbol in ELEMENT_SYMBOLS for i in range(1, len(symbol) + 1))
#: The element symbols each start of a symbol ("" included) begins.
_SYMBOLS_STARTING = {prefix: frozenset(e for e in ELEMENT_SYMBOLS if e.startswith(prefix))
                     for prefix in _ELEMENT_PREFIXES | {""}}


@dataclass(frozen=True)
class Grammar:
    """What the constrained text may contain: number formats, cell size, and optionally a composition
    and a minimum interatomic distance."""

    options: FormatOptions = field(default_factory=FormatOptions)
    max_atoms: int = DEFAULT_MAX_ATOMS
    composition: Mapping[str, int] | None = None  # element -> count in one formula unit; units: see _formula_units
    units: int | None = None  # formula units a cell holds: fixed (1 for a whole cell's formula), or None: its volume's
    min_volume: float | None = None  # A^3: the smallest cell the lattice may describe (`min_cell_volume`)
    min_distance: float | None = None  # Angstrom, nearest periodic image included; kept by the logits processor
    # The asymmetric-unit form: the space group already written before the text (a prompt's), or None for a text
    # that starts with its own group line. Ignored in the other forms.
    spacegroup: int | None = None

    def __post_init__(self) -> None:
        if self.composition is not None:
            atoms = sum(self.composition.values())
            if atoms < 1 or min(self.composition.values()) < 1:
                raise ValueError(f"composition {dict(self.composition)} needs at least one atom of each element")
            if atoms > self.cell_atoms:
                raise ValueError(f"composition {dict(self.composition)} has more than {self._cap} atoms in one formula "
                                 "unit")
            if self.units is not None and not 1 <= self.units * atoms <= self.cell_atoms:
                raise ValueError(f"{self.units} units of composition {dict(self.composition)} are not 1 to {self._cap} "
                                 "atoms")
            if self.options.asymmetric_unit and not (self.options.site_counts and self.units is not None):
                raise ValueError("a composition can be forced on an asymmetric unit only in the site-count form, with "
                                 "the formula units fixed: its sites are orbits, which the counts account for")

    @property
    def cell_atoms(self) -> int:
        """The most atoms the written cell may hold: `max_atoms`, or in an asymmetric unit's conventional cell (whose
        primitive cell `max_atoms` caps) as many times that as a conventional cell has lattice points at most."""
        return self.max_atoms * (_MOST_LATTICE_POINTS if self.options.asymmetric_unit else 1)

    @property
    def _cap(self) -> str:
        """`cell_atoms` as messages name it."""
        lattice_points = f"{_MOST_LATTICE_POINTS} x " if self.options.asymmetric_unit else ""
        return f"{lattice_points}max_atoms={self.max_atoms}"

    @property
    def start(self) -> State:
        """Where a text begins: at its space-group line in the asymmetric-unit form (unless a prompt wrote it),
        else at the lattice lengths."""
        if self.options.asymmetric_unit and self.spacegroup is None:
            return State(section=Section.GROUP)
        return State(group=self.spacegroup if self.options.asymmetric_unit else None)

    @classmethod
    def for_formula(
        cls, formula: str, options: FormatOptions | None = None, max_atoms: int = DEFAULT_MAX_ATOMS,
        units: int | None = None,
    ) -> Grammar:
        """A grammar whose cells hold a whole number of `formula` units (as written, e.g. NaCl or Na4Cl4), as many
        as the cell's volume holds (`_formula_units`), or exactly `units` of them.

        A formula with fractional amounts (Na0.5Cl) is refused rather than scaled: the prompt states the formula
        as written, so the whole-number formula (NaCl2) is for the user to write.
        """
        composition = Composition(formula)
        if any(count != round(count) for count in composition.values()):
            whole = composition.get_integer_formula_and_factor()[0]
            raise ValueError(f"formula {formula} has fractional amounts: a forced composition needs whole atoms "
                             f"per formula unit (write it as {whole}, or a multiple of it)")
        unit = {element.symbol: int(round(count)) for element, count in composition.items()}
        if not unit:
            raise ValueError(f"formula {formula!r} has no atoms")
        grammar = cls(options=options or FormatOptions(), max_atoms=max_atoms, units=units)
        if sum(unit.values()) > grammar.cell_atoms:
            raise ValueError(f"formula {formula} has more than {grammar._cap} atoms")
        return replace(grammar, composition=unit)


# ---------------------------------------------------------------------------------------------------------------------
# Where a partial text stands


class Section(enum.Enum):
    """The kind of line being written: the first two once, then element and coordinates once per atom."""

    GROUP = "group"  # asymmetric-unit form: the space-group number, 1 to 230
    LENGTHS = "lengths"  # "a b c"
    ANGLES = "angles"  # "alpha beta gamma"
    ELEMENT = "element"  # an element symbol
    COUNT = "count"  # site-count form: the count after the element symbol, "Fe 3" (or joined, "Fe3")
    COORDS = "coords"  # "x y z", fractional


ElementCounts = tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class State:
    """Where a partial crystal text stands. Frozen and hashable: the processor caches masks by `shape_key`."""

    section: Section = Section.LENGTHS
    column: int = 0  # which of the line's three numbers is being written (always 0 on an element line)
    partial: str = ""  # the characters of the number or symbol being written
    line_numbers: tuple[float, ...] = ()  # the finished numbers of the current lattice or coordinate line
    element_counts: ElementCounts = ()  # (element, atoms written), sorted by element
    lattice: tuple[float, ...] = ()  # the lattice parameters written so far: the lengths, then also the angles
    sites: tuple[tuple[float, float, float], ...] = ()  # fractional coordinates of the complete atoms
    # Site-count form: the element and count of the latest element line; while its count is open, (element, 0)
    # for a new element and (element, due) for one more of the same element
    countdown: tuple[str, int] | None = None
    # Site-count form: atoms of the latest element still to write after its complete sites (its count less one atom,
    # or in an asymmetric unit less its orbit's size; below 0 when an orbit was larger than its count)
    left: int = 0
    group: int | None = None  # asymmetric-unit form: the space group the text states
    stated: int = 0  # site-count asymmetric unit: the atoms the first count lines of its elements state together

    @property
    def atom_count(self) -> int:
        """Atoms whose element has been written (the current one included once its symbol line is done)."""
        return sum(count for _, count in self.element_counts)

    def shape_key(self) -> tuple:
        """The part of the state that decides which characters may follow, composition and atom cap aside."""
        return (self.section, self.column, self.partial, self.line_numbers if self.section is Section.ANGLES else ())


def _changed(state: State, **changes: object) -> State:
    """`state` with some fields changed: `dataclasses.replace` without its per-field checks, which cost a third of
    the grammar's time (the automaton makes one per character it tries)."""
    new = object.__new__(State)
    new.__dict__.update(state.__dict__)
    new.__dict__.update(changes)
    return new


# ---------------------------------------------------------------------------------------------------------------------
# The automaton


def advance(state: State, text: str, grammar: Grammar) -> State | None:
    """The state after `text`, or None if `text` leaves the grammar."""
    for char in text:
        state = _step(state, char, grammar)
        if state is None:
            return None
    return state


def can_end(state: State, grammar: Grammar) -> bool:
    """Whether the text may end here: right after the last coordinate of a complete atom (and, with a
    composition, when the elements are in its proportions, in the number of formula units the cell holds)."""
    if state.section is not Section.COORDS or state.column != 2:
        return False
    if not _number_done(state.partial, grammar.options.coord_decimals):
        return False
    if grammar.options.site_counts:  # atoms of the current element still due after this last site?
        site = (*state.line_numbers, float(state.partial))
        if state.countdown[1] - _site_size(state, site) > 0:
            return False
    unit = grammar.composition
    if unit is None:
        return True
    if grammar.options.asymmetric_unit:  # each element's count was the composition's, and its orbits have filled it
        return {element for element, _ in state.element_counts} == set(unit)
    counts = dict(state.element_counts)
    return _proportional(counts, unit) and _units(counts, unit) == _units_held(state, grammar)


def _step(state: State, char: str, grammar: Grammar) -> State | None:
    """The state after one more character, or None if it leaves the grammar."""
    if state.section is Section.GROUP:
        return _step_group(state, char, grammar)
    if state.section is Section.LENGTHS:
        return _step_lengths(state, char, grammar)
    if state.section is Section.ANGLES:
        return _step_angles(state, char, grammar)
    if state.section is Section.ELEMENT:
        return _step_element(state, char, grammar)
    if state.section is Section.COUNT:
        return _step_count(state, char, grammar)
    return _step_coords(state, char, grammar)


def _step_group(state: State, char: str, grammar: Grammar) -> State | None:
    """The space-group line of the asymmetric-unit form: a number of the International Tables without leading
    zeros (with a forced composition in the site-count form, a group whose lattice points divide its counts); its
    newline starts the lengths."""
    if char == "\n":
        return State(group=int(state.partial)) if state.partial and int(state.partial) in _groups(grammar) else None
    partial = state.partial + char
    if partial not in _numeral_prefixes(_groups(grammar)):
        return None
    return _changed(state, partial=partial)


def _groups(grammar: Grammar) -> tuple[int, ...]:
    """The space groups an asymmetric unit may state: all, or with a forced composition in the site-count form those
    whose conventional cell can hold its counts (each orbit holds a multiple of the group's lattice points)."""
    if grammar.composition is None or not grammar.options.site_counts or grammar.units is None:
        return tuple(SPACEGROUPS)
    return _groups_dividing(math.gcd(*(n * grammar.units for n in grammar.composition.values())))


@cache
def _groups_dividing(counts_gcd: int) -> tuple[int, ...]:
    return tuple(g for g in SPACEGROUPS if counts_gcd % lattice_points(g) == 0)


def _step_lengths(state: State, char: str, grammar: Grammar) -> State | None:
    """The lengths line: three lengths in LENGTH_RANGE (whose product, with a `min_volume`, is at least that: the
    cell's volume is at most the product; in an asymmetric unit those its crystal system makes equal to the first
    written as it); its newline starts the angles."""
    decimals = grammar.options.length_decimals
    fixed = _fixed_lattice_text(state, decimals)
    bounds = LENGTH_RANGE
    if grammar.min_volume and fixed is None:  # the lengths still to come at their longest must reach the volume
        system = crystal_system(state.group) if state.group is not None else "triclinic"
        ties = TIED_LENGTHS.get(system, (False, False))  # b, c
        tied = sum(ties[column - 1] for column in range(max(1, state.column + 1), 3))  # later lengths equal to a
        least = grammar.min_volume / _fixed_volume_fraction(system)  # a hexagonal cell's is sin(120)
        longest = LENGTH_RANGE[1] ** (2 - state.column - tied)
        low = (least / (math.prod(state.line_numbers) * longest)) ** (1 / (1 + tied))
        bounds = (max(LENGTH_RANGE[0], low), bounds[1])
    if _is_number_char(char):
        return _extend_lattice_number(state, char, decimals, bounds, fixed=fixed)
    numbers = _close_number(state, char, decimals, bounds, fixed)
    if numbers is None:
        return None
    if len(numbers) < 3:
        return _next_column(state, numbers)
    return _changed(state, section=Section.ANGLES, column=0, partial="", line_numbers=(), lattice=numbers)


def _step_angles(state: State, char: str, grammar: Grammar) -> State | None:
    """The angles line: three angles in ANGLE_RANGE that give a real cell (of at least `min_volume`, when the
    grammar has one); its newline starts the first atom."""
    decimals = grammar.options.angle_decimals
    fixed = _fixed_lattice_text(state, decimals)
    least = _least_fraction(state, grammar)
    if _is_number_char(char):
        return _extend_lattice_number(state, char, decimals, ANGLE_RANGE, least, fixed)
    numbers = _close_number(state, char, decimals, ANGLE_RANGE, fixed)
    if numbers is None:
        return None
    if fixed is None and not _angles_possible(numbers, least):
        return None  # "10" could have become "100", but as written no third angle gives a real (large enough) cell
    if len(numbers) < 3:
        return _next_column(state, numbers)
    return State(section=Section.ELEMENT, element_counts=state.element_counts, lattice=state.lattice + numbers,
                 group=state.group)


def _fixed_volume_fraction(system: str) -> float:
    """A cell's volume over the product of its lengths where its crystal system fixes every angle; 1 (the most any
    angles give) where some are free."""
    angles = FIXED_ANGLES.get(system, (None, None, None))
    return 1.0 if None in angles else _volume_fraction(angles)


def _fixed_lattice_text(state: State, decimals: int) -> str | None:
    """In an asymmetric unit, the lattice number being written as its group's crystal system fixes it (a length
    equal to the first, a right or 120-degree angle), written with `decimals` places; None where it is free."""
    if state.group is None:
        return None
    system = crystal_system(state.group)
    if state.section is Section.LENGTHS:
        if state.column == 0 or not TIED_LENGTHS.get(system, (False, False))[state.column - 1]:
            return None
        value = state.line_numbers[0]
    else:
        value = FIXED_ANGLES.get(system, (None, None, None))[state.column]
        if value is None:
            return None
    return f"{value:.{decimals}f}"


def _step_element(state: State, char: str, grammar: Grammar) -> State | None:
    """An element line: a real symbol the composition and atom cap allow; its newline starts the coordinates (in
    the site-count form a space starts its count, or its first digit when the count is joined to the symbol)."""
    options = grammar.options
    ends_symbol = char.isdigit() if options.joined_counts else char == (" " if options.site_counts else "\n")
    if ends_symbol:
        symbol = state.partial
        if symbol not in ELEMENT_SYMBOLS or not _element_allowed(symbol, state, grammar, exact=True):
            return None
        counts = _with_one_more(state.element_counts, symbol)
        if options.site_counts:
            due = state.left if _continuing(state, grammar) else 0
            count = _changed(state, section=Section.COUNT, partial="", element_counts=counts, countdown=(symbol, due))
            return _step_count(count, char, grammar) if options.joined_counts else count
        return State(section=Section.COORDS, element_counts=counts, lattice=state.lattice, sites=state.sites,
                     group=state.group)
    partial = state.partial + char
    if partial not in _ELEMENT_PREFIXES or not _element_allowed(partial, state, grammar):
        return None
    return _changed(state, partial=partial)


def _step_count(state: State, char: str, grammar: Grammar) -> State | None:
    """The count of a site-count element line: the atoms left after the line before while an element's atoms last,
    else with a composition the element's atoms in the units the cell holds, else any count from 1 that the atom cap
    leaves room for; its newline starts the coordinates."""
    symbol = state.countdown[0]
    due = _count_due(state, grammar)
    counts = (due,) if due else _free_counts(state, grammar)
    if char == "\n":
        if not state.partial or int(state.partial) not in counts:
            return None
        count = int(state.partial)
        stated = state.stated + (count if not state.countdown[1] else 0)  # a new element's count adds its atoms
        return _changed(state, section=Section.COORDS, partial="", countdown=(symbol, count), stated=stated)
    partial = state.partial + char
    if partial not in _numeral_prefixes(counts):
        return None
    return _changed(state, partial=partial)


@lru_cache(maxsize=1024)
def _numeral_prefixes(counts: Sequence[int]) -> frozenset[str]:
    """Every leading part of the counts' numerals (for 1 to 12: "1" to "9", "10", "11", "12"): what a count being
    written may be so far."""
    return frozenset(numeral[:i] for numeral in map(str, counts) for i in range(1, len(numeral) + 1))


def _free_counts(state: State, grammar: Grammar) -> range:
    """Site-count form: the counts a new element's line may state: from 1 to what the atom cap leaves, in an
    asymmetric unit multiples of its group's lattice points (each orbit of a centred cell holds a multiple)."""
    step = lattice_points(state.group) if grammar.options.asymmetric_unit else 1
    return range(step, _count_room(state, grammar) + 1, step)


def _count_room(state: State, grammar: Grammar) -> int:
    """Site-count form: the largest count the element line being written may state when none is due: what the atom
    cap leaves for this atom and those to come, or in an asymmetric unit what it leaves of the conventional cell's
    atoms (the cap times the group's lattice points) after the counts of the elements before."""
    if grammar.options.asymmetric_unit:
        return lattice_points(state.group) * grammar.max_atoms - state.stated
    return grammar.max_atoms - state.atom_count + 1


def _count_due(state: State, grammar: Grammar) -> int:
    """Site-count form: the count the element line being written must state (0: any the atom cap allows)."""
    symbol, due = state.countdown
    if due or grammar.composition is None:
        return due
    return grammar.composition[symbol] * _units_held(state, grammar)


def _step_coords(state: State, char: str, grammar: Grammar) -> State | None:
    """A coordinates line: three numbers "0." and the configured digits; its newline (only if another atom may
    follow) completes the atom and starts the next element."""
    decimals = grammar.options.coord_decimals
    if _is_number_char(char):
        partial = state.partial + char
        ok = _number_prefix(partial, decimals, _COORD_INT_DIGITS) and partial[0] == "0"
        return _changed(state, partial=partial) if ok else None
    numbers = _close_number(state, char, decimals)
    if numbers is None:
        return None
    if len(numbers) < 3:
        return _next_column(state, numbers)
    site = (numbers[0], numbers[1], numbers[2])
    left = state.countdown[1] - _site_size(state, site) if grammar.options.site_counts else 0
    after = State(
        section=Section.ELEMENT, element_counts=state.element_counts, lattice=state.lattice,
        sites=state.sites + (site,), countdown=state.countdown, left=left, group=state.group, stated=state.stated,
    )
    if not _element_allowed("", after, grammar):
        return None  # no further atom fits (the atom cap, or no room for another whole formula unit)
    return after


def _site_size(state: State, site: tuple[float, float, float]) -> int:
    """The atoms of the cell a complete site stands for: its orbit's size in an asymmetric unit, else 1."""
    if state.group is None:
        return 1
    return _orbit_size(state.group, state.lattice, site)


@lru_cache(maxsize=65536)
def _orbit_size(group: int, lattice: tuple[float, ...], site: tuple[float, float, float]) -> int:
    return int(orbit_sizes(group, _symmetric(group, lattice), np.array([site]))[0])


@lru_cache(maxsize=4096)
def _symmetric(group: int, lattice: tuple[float, ...]) -> Lattice:
    """The lattice an asymmetric unit's orbits are expanded on (`geometry.symmetric_lattice`)."""
    return symmetric_lattice(group, lattice[:3], lattice[3:])


def _is_number_char(char: str) -> bool:
    return char.isdigit() or char == "."


def _extend_lattice_number(
    state: State, char: str, decimals: int, bounds: tuple[float, float], least: float = 0.0, fixed: str | None = None
) -> State | None:
    """`char` added to a length or angle, if the number can still end in `bounds` (and, for an angle, give a real
    cell whose volume is at least `least` times the product of its lengths), or where the crystal system fixes the
    number, if it is still a start of its `fixed` text."""
    partial = state.partial + char
    if fixed is not None:
        return _changed(state, partial=partial) if fixed.startswith(partial) else None
    live = _number_prefix(partial, decimals, _LATTICE_INT_DIGITS) and _reachable(partial, decimals, state, bounds,
                                                                                  least)
    return _changed(state, partial=partial) if live else None


def _close_number(
    state: State, char: str, decimals: int, bounds: tuple[float, float] | None = None, fixed: str | None = None
) -> tuple[float, ...] | None:
    """The line's numbers so far if `char` may end the number being written: it is complete and in `bounds` (all of
    its `fixed` text, where the crystal system fixes it), and `char` is a space after the first two numbers or a
    newline after the third. None otherwise."""
    if not _number_done(state.partial, decimals) or fixed not in (None, state.partial):
        return None
    value = float(state.partial)
    if bounds is not None and not bounds[0] <= value <= bounds[1]:
        return None
    if char != (" " if state.column < 2 else "\n"):
        return None
    return state.line_numbers + (value,)


def _next_column(state: State, numbers: tuple[float, ...]) -> State:
    """The state for the line's next number, after `numbers`."""
    return _changed(state, column=state.column + 1, partial="", line_numbers=numbers)


# ---------------------------------------------------------------------------------------------------------------------
# The rules the steps ask: number format, lattice ranges and cell, composition


def _number_prefix(partial: str, decimals: int, max_int_digits: int) -> bool:
    """Whether `partial` can start a number with up to `max_int_digits` integer digits (no leading zero)
    and `decimals` decimal places (no dot when 0)."""
    whole, dot, frac = partial.partition(".")
    if not whole.isdigit() or len(whole) > max_int_digits or (len(whole) > 1 and whole[0] == "0"):
        return False
    if dot and decimals == 0:
        return False
    return (frac == "" or frac.isdigit()) and len(frac) <= decimals


def _number_done(partial: str, decimals: int) -> bool:
    """Whether `partial` is a complete number with exactly `decimals` decimal places."""
    whole, dot, frac = partial.partition(".")
    return bool(whole) and whole.isdigit() and (len(frac) == decimals if decimals else not dot)


def _reachable(partial: str, decimals: int, state: State, bounds: tuple[float, float], least: float = 0.0) -> bool:
    """Whether the lattice number being written (`decimals` places) can still end in `bounds` (and, for an angle,
    leave a real cell of at least `least` times the product of its lengths in volume).

    Before the dot, whole numbers in `bounds` are tried as endings (an angle's cell judged at that whole value);
    after it, the decimals must be able to keep the value inside `bounds` (a bound need not be whole: a least
    volume makes the last length at least 4.88 A, say).
    """
    whole, dot, frac = partial.partition(".")
    if dot:
        largest = float(f"{whole}.{frac}{'9' * (decimals - len(frac))}0")
        fits = bounds[0] <= largest and float(f"{whole}.{frac}0") <= bounds[1]
        return fits and (state.section is not Section.ANGLES or _angles_possible(
            state.line_numbers + (float(whole),), least))
    for value in range(math.ceil(bounds[0]), math.floor(bounds[1]) + 1):
        if str(value).startswith(whole) and (
            state.section is not Section.ANGLES or _angles_possible(state.line_numbers + (float(value),), least)
        ):
            return True
    return False


def _angles_possible(angles: tuple[float, ...], least: float = 0.0) -> bool:
    """Whether the first one, two or three angles of a line can describe a real cell whose volume is at least `least`
    times the product of its lengths (with the remaining angles still to choose, whole degrees in ANGLE_RANGE).

    The volume over the product of lengths is sqrt(1 - ca^2 - cb^2 - cg^2 + 2 ca cb cg) (c: cosines), at most
    sin(alpha) whatever beta and gamma, and sin(alpha) sin(beta) whatever gamma (at cos(gamma) = ca cb); a whole
    degree of gamma off that takes at most 1e-4 from the square.
    """
    sines = [math.sin(math.radians(x)) for x in angles]
    if len(angles) == 1:
        return sines[0] >= least
    if len(angles) == 2:
        return _third_angle_exists(angles[0], angles[1]) and (sines[0] * sines[1]) ** 2 - 1e-4 >= least**2
    return _valid_angles(angles) and _volume_fraction(angles) >= least


@cache
def _third_angle_exists(alpha: float, beta: float) -> bool:
    """Whether some whole-degree gamma in ANGLE_RANGE makes a real cell with `alpha` and `beta`."""
    low, high = ANGLE_RANGE
    return any(_valid_angles((alpha, beta, float(gamma))) for gamma in range(int(low), int(high) + 1))


@cache
def _valid_angles(angles: tuple[float, ...]) -> bool:
    """Whether three angles (degrees) give a cell of real, not vanishing, volume."""
    return _volume_fraction(angles) ** 2 > 1e-3


def _volume_fraction(angles: tuple[float, ...]) -> float:
    """A cell's volume over the product of its lengths, from its three angles (degrees); 0 for no real cell."""
    ca, cb, cg = (math.cos(math.radians(x)) for x in angles)
    return math.sqrt(max(0.0, 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg))


def _least_fraction(state: State, grammar: Grammar) -> float:
    """The smallest volume over product of lengths the angles may give: `min_volume` over the lengths' product."""
    return grammar.min_volume / math.prod(state.lattice[:3]) if grammar.min_volume and state.lattice else 0.0


def _element_allowed(prefix: str, state: State, grammar: Grammar, *, exact: bool = False) -> bool:
    """Whether some element starting with `prefix` (or `prefix` itself, if `exact`) may come next after `state`:
    below the atom cap, and, with a composition, one of its elements whose whole formula units the cell holds."""
    if state.atom_count >= grammar.max_atoms:
        return False
    if grammar.options.site_counts:  # more of the current element while its atoms last, else an element not yet used
        if _continuing(state, grammar):
            return state.countdown[0] == prefix if exact else state.countdown[0].startswith(prefix)
        used = {element for element, _ in state.element_counts}
        candidates = ELEMENT_SYMBOLS if grammar.composition is None else grammar.composition
        if exact:
            return prefix in candidates and prefix not in used
        if grammar.composition is None:
            return not _SYMBOLS_STARTING.get(prefix, frozenset()) <= used
        return any(e.startswith(prefix) and e not in used for e in candidates)
    unit = grammar.composition
    if unit is None:
        return True
    written = dict(state.element_counts)
    held = _units_held(state, grammar)
    for element in unit:
        if not (element == prefix if exact else element.startswith(prefix)):
            continue
        if _units({**written, element: written.get(element, 0) + 1}, unit) <= held:
            return True
    return False


def _continuing(state: State, grammar: Grammar) -> bool:
    """Site-count form: whether the next element line must be more atoms (one, or an orbit) of the latest line's
    element."""
    return grammar.options.site_counts and state.left > 0


def _units(counts: Mapping[str, int], unit: Mapping[str, int]) -> int:
    """Whole formula `unit`s that `counts` needs: as many as its most needing element."""
    return max(math.ceil(counts.get(e, 0) / n) for e, n in unit.items())


def _units_held(state: State, grammar: Grammar) -> int:
    """The whole formula units of the grammar's composition that the cell written in `state` (all six parameters)
    holds, unless the grammar fixes them."""
    if grammar.units is not None:
        return grammar.units
    unit = tuple(grammar.composition.items())
    return _formula_units(state.lattice, _unit_volumes(unit), sum(n for _, n in unit), grammar.max_atoms)


@lru_cache(maxsize=4096)
def _formula_units(
    lattice: tuple[float, ...], unit_volumes: tuple[float, float, float], unit_atoms: int, max_atoms: int
) -> int:
    """The whole formula units of `unit_atoms` atoms a cell of these parameters holds: of the counts within the
    atom cap that give a volume per unit inside `unit_volumes`' range, the one nearest its typical volume
    (`_unit_volumes`), as a crystallographer takes Z from a cell's volume and a density.

    Nearest by ratio, not difference: 10 units in a cell for 7 are as wrong as 7 in a cell for 10 would be
    (1.43x). A cell too small (too large) for any count in the range gets the nearest count, one unit (as many
    as the cap allows): it is filled as well as it can be and judged afterwards, rather than cut short.
    """
    volume = abs(float(np.linalg.det(_matrix(lattice))))
    smallest, typical, largest = unit_volumes
    most = max_atoms // unit_atoms
    fewest = min(most, max(1, math.ceil(volume / largest)))
    counts = range(fewest, max(fewest, min(most, math.floor(volume / smallest))) + 1)
    return min(counts, key=lambda k: abs(math.log(volume / (k * typical))))


def min_cell_volume(formula: str) -> float:
    """The smallest volume (A^3) of a cell holding the atoms of `formula` as written (Ti2Zn2O6: ten atoms) that
    MP-20's crystals give: the sum of their fitted volumes per atom times MIN_VOLUME_RATIO (`_unit_volumes`)."""
    return _unit_volumes(tuple((element.symbol, amount) for element, amount in Composition(formula).items()))[0]


@cache
def _unit_volumes(unit: tuple[tuple[str, int], ...]) -> tuple[float, float, float]:
    """The smallest, typical and largest volume (A^3) of one formula `unit` (element, count) as MP-20's crystals
    give it: its atoms' fitted volumes times MIN_VOLUME_RATIO, 1 and MAX_VOLUME_RATIO; for an element the table
    lacks, MIN_VOLUME_PER_ATOM and MAX_VOLUME_PER_ATOM (MP-20's overall range) per atom, typically their
    geometric mean."""
    volumes = element_volumes()
    untabled = math.sqrt(MIN_VOLUME_PER_ATOM * MAX_VOLUME_PER_ATOM)
    bounds = ((MIN_VOLUME_RATIO, MIN_VOLUME_PER_ATOM), (1.0, untabled), (MAX_VOLUME_RATIO, MAX_VOLUME_PER_ATOM))
    smallest, typical, largest = (
        sum(n * (ratio * volumes[e] if e in volumes else per_atom) for e, n in unit) for ratio, per_atom in bounds
    )
    return smallest, typical, largest


@cache
def element_volumes() -> dict[str, float]:
    """The shipped volume per atom of each element (A^3): a crystal's volume is about the sum over its atoms."""
    volumes = json.loads(ELEMENT_VOLUMES.read_text())["volumes"]
    if empty := [e for e, v in volumes.items() if not v > 0]:  # a unit needs a volume to divide a cell by
        raise ValueError(f"{ELEMENT_VOLUMES}: elements without a positive volume: {', '.join(empty)}")
    return volumes


def _with_one_more(counts: ElementCounts, element: str) -> ElementCounts:
    """`counts` with one more atom of `element`, still sorted by element."""
    table = dict(counts)
    table[element] = table.get(element, 0) + 1
    return tuple(sorted(table.items()))


def _proportional(counts: dict[str, int], unit: Mapping[str, int]) -> bool:
    """Whether `counts` is a whole number of formula `unit`s."""
    if set(counts) != set(unit):
        return False
    ratios = {counts[e] / n for e, n in unit.items()}
    return len(ratios) == 1 and next(iter(ratios)).is_integer()


def _countdown_key(state: State, grammar: Grammar) -> tuple | None:
    """What else decides an element or count line's tokens in the site-count form: the element whose atoms are due
    (or the elements already used), and the count due (or the room under the atom cap)."""
    if not grammar.options.site_counts:
        return None
    if state.section is Section.ELEMENT:
        if _continuing(state, grammar):
            return "due", state.countdown[0], state.left
        # A token may run on from the symbol into its count ("Fe2" joined; " 2" in a tokenizer with such tokens):
        # what decides the count decides here too.
        room = _free_counts(state, grammar) if grammar.options.asymmetric_unit else grammar.max_atoms - state.atom_count
        return tuple(e for e, _ in state.element_counts), room
    if state.section is Section.COUNT:
        due = _count_due(state, grammar)
        return ("due", due) if due else ("counts", _free_counts(state, grammar))
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The minimum distance (kept by the processor, as the last coordinate of an atom is chosen)

#: The 27 cell offsets of a site and its neighbouring periodic images.
_IMAGES = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)


def _orbit_counted(state: State, grammar: Grammar) -> bool:
    """Whether a site's count is taken off by its orbit: a site-count asymmetric unit, its group written."""
    return grammar.options.site_counts and state.group is not None


def _within_count(state: State, values: np.ndarray) -> np.ndarray:
    """For each candidate value of the coordinate an asymmetric unit's site is writing: whether its orbit can still
    hold no more atoms than its element line counts (the element's atoms still to write): for the last coordinate
    the orbit of the written lattice, for the first two the smallest the rest of the grid allows
    (`geometry.smallest_orbits`)."""
    count = state.countdown[1]
    if state.column == 2:
        x, y = state.line_numbers
        points = np.stack([np.full(len(values), x), np.full(len(values), y), values], axis=1)
        return orbit_sizes(state.group, _symmetric(state.group, state.lattice), points) <= count
    by_x, by_xy = smallest_orbits(state.group)
    cells = np.rint(np.asarray(values) * ORBIT_GRID).astype(int) % ORBIT_GRID
    if state.column == 0:
        return by_x[cells] <= count
    return by_xy[round(state.line_numbers[0] * ORBIT_GRID) % ORBIT_GRID, cells] <= count


def _far_enough(state: State, z: np.ndarray, min_distance: float) -> np.ndarray:
    """For each candidate last coordinate `z` of the atom being written: whether it keeps `min_distance` from every
    atom before it (nearest of the 27 neighbouring images). In an asymmetric unit the atoms are the copies the group
    makes of each site (nearest image by rounding, so an oblique cell may hide a contact that reading back finds),
    the candidate's own among them: those within ORBIT_MERGE_ANGSTROM are one atom with it, the others must keep
    the distance too."""
    x, y = state.line_numbers
    candidates = np.stack([np.full(len(z), x), np.full(len(z), y), z], axis=1)
    if state.group is not None:
        lattice = _symmetric(state.group, state.lattice)
        own = copy_distances(state.group, lattice, candidates)
        ok = ~((own >= ORBIT_MERGE_ANGSTROM) & (own < min_distance)).any(axis=1)
        if state.sites:
            delta = candidates[:, None, :] - _copies(state.group, state.sites)[None, :, :]
            ok &= np.linalg.norm((delta - np.round(delta)) @ lattice.matrix, axis=-1).min(axis=1) >= min_distance
        return ok
    if not state.sites:
        return np.ones(len(z), dtype=bool)
    delta = candidates[:, None, :] - np.array(state.sites)[None, :, :]
    delta = delta - np.round(delta)
    shifted = delta[:, :, None, :] + _IMAGES[None, None, :, :]
    distances = np.linalg.norm(shifted @ _matrix(state.lattice), axis=-1)
    return distances.min(axis=(1, 2)) >= min_distance


@lru_cache(maxsize=4096)
def _copies(group: int, sites: tuple[tuple[float, float, float], ...]) -> np.ndarray:
    """Every copy `group` makes of the complete sites of an asymmetric unit, once each (fractional, in [0, 1))."""
    copies = orbit_copies(group, np.array(sites)).reshape(-1, 3)
    return np.unique(np.round(copies % 1.0, 4) % 1.0, axis=0)


@lru_cache(maxsize=4096)
def _matrix(lattice: tuple[float, ...]) -> np.ndarray:
    """The lattice vectors (rows, Angstrom) of the six lattice parameters."""
    return Lattice.from_parameters(*lattice).matrix


@dataclass
class _TokenTrie:
    """The token texts as a prefix tree: each node one more character, with the tokens whose text ends there."""

    children: dict[str, _TokenTrie] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, texts: Sequence[str | None]) -> _TokenTrie:
        root = cls()
        for token, text in enumerate(texts):
            if not text:  # special tokens, and any that add no text, never keep the grammar
                continue
            node = root
            for char in text:
                node = node.children.setdefault(char, cls())
            node.tokens.append(token)
        return root

    def walk(self, state: State, grammar: Grammar, any_token: bool = False) -> Iterator[tuple[State, _TokenTrie]]:
        """(state after, node) for every node below this one whose text keeps the grammar from `state` (with
        `any_token`, only those where a token ends)."""
        for char, child in self.children.items():
            after = _step(state, char, grammar)
            if after is None:
                continue
            if child.tokens or not any_token:
                yield after, child
            yield from child.walk(after, grammar, any_token)


# ---------------------------------------------------------------------------------------------------------------------
# Token-text recovery


def token_texts(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    """The text each token id adds when decoded after other text (None for special tokens).

    Decoded after an anchor token, so that tokenizers that drop or add a leading space at the start of a
    text report what the token adds in the middle of one, as the grammar sees it.
    """
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
        texts.append(full[len(base) :] if full.startswith(base) else None)
    return texts


# ---------------------------------------------------------------------------------------------------------------------
# The logits processor

#: Characters of a row's text quoted in a dead-end reason.
_REASON_TAIL = 40


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks tokens that would take each sequence out of the crystal grammar (one grammar per batch row).

    Lifetime: it holds the grammar state of each row, so build a fresh one for every generation (a
    `crystext.sample.decode` or a transformers `generate` call). It reads the token appended since its previous
    call, so it must see every step of one generation in turn; it raises RuntimeError when called with another
    batch size than `len(grammars)` (beams or several sequences per prompt) or with an input that is not one token
    longer than on its previous call (reused for another generation). A decoder that drops ended rows from its
    batch says which stay with `keep`.

    `dead_ends` maps a batch row to a one-line reason why its text stopped short of a legitimate end:
    no token continues the grammar (the row may then only emit end of sequence, so its text ends there), or
    a token outside the grammar was sampled (only if the mask was bypassed). A row that ends with the end
    token where `can_end` allows it has no entry; neither does a row cut off by the token limit.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, grammars: list[Grammar], vocab_size: int) -> None:
        self.texts = token_texts(tokenizer)[:vocab_size]  # token id -> the text it adds, None if special
        self.texts += [None] * (vocab_size - len(self.texts))
        self.eos = tokenizer.eos_token_id
        self.grammars = grammars
        self.states: list[State | None] = [g.start for g in grammars]  # None once a row has ended
        self.rows = list(range(len(grammars)))  # the batch row each state belongs to (fewer, once `keep` drops some)
        self.dead_ends: dict[int, str] = {}
        self._prompt_length: int | None = None  # input length at the first call
        self._length: int | None = None  # input length at the latest call
        self._masks: dict[tuple, tuple[torch.Tensor, bool]] = {}  # (mask, whether it allows any token)
        self._trie = _TokenTrie.of(self.texts)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._check_lifetime(input_ids)
        if self._length is None:
            self._prompt_length = input_ids.shape[1]
        else:
            self._advance_rows(input_ids)
        self._length = input_ids.shape[1]
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        for row, state in enumerate(self.states):
            if state is None:  # ended: let it emit end tokens
                allowed[row, self.eos] = True
                continue
            grammar = self.grammars[row]
            mask, any_allowed = self._mask(state, grammar, scores.shape[1], scores.device)
            allowed[row] = mask
            if can_end(state, grammar):
                allowed[row, self.eos] = True
            elif not any_allowed:  # a dead end: end the text here, and say why it stopped
                allowed[row, self.eos] = True
                text = self._row_text(input_ids, row)
                self.dead_ends[self.rows[row]] = (
                    f"constrained decoding reached a dead end after {text[-_REASON_TAIL:]!r}"
                    " (no token continues the grammar)"
                )
        return scores.masked_fill(~allowed, -math.inf)

    def keep(self, positions: Sequence[int]) -> None:
        """Follow only the rows at these positions of the current batch, in this order (the others have ended)."""
        self.states = [self.states[i] for i in positions]
        self.grammars = [self.grammars[i] for i in positions]
        self.rows = [self.rows[i] for i in positions]

    def _check_lifetime(self, input_ids: torch.LongTensor) -> None:
        """Refuse a call that does not continue this processor's generation by one token."""
        rows, length = input_ids.shape
        if rows != len(self.grammars):
            raise RuntimeError(
                f"GrammarLogitsProcessor built for {len(self.grammars)} rows was called with {rows}: it keeps one "
                "state per row, so give one grammar per sequence (no beam search or several sequences per prompt)"
            )
        if self._length is not None and length != self._length + 1:
            raise RuntimeError(
                f"GrammarLogitsProcessor called with {length} tokens after {self._length}: it follows one "
                "generation a token at a time; build a fresh one for every generate call"
            )

    def _advance_rows(self, input_ids: torch.LongTensor) -> None:
        """Move each live row's state past the token appended since the last call; a row ends on a token the grammar
        cannot take, recorded in `dead_ends` unless it is the end token where the text may end."""
        for row, token in enumerate(input_ids[:, -1].tolist()):
            state = self.states[row]
            if state is None:
                continue
            grammar = self.grammars[row]
            text = self.texts[token] if token < len(self.texts) else None
            after = advance(state, text, grammar) if text is not None else None
            finished = after is None and token == self.eos and can_end(state, grammar)
            if after is None and not finished and self.rows[row] not in self.dead_ends:
                written = self._row_text(input_ids[:, :-1], row)
                shown = repr(text) if text is not None else f"special token {token}"
                self.dead_ends[self.rows[row]] = (
                    f"sampled {shown}, which leaves the grammar, after {written[-_REASON_TAIL:]!r}")
            self.states[row] = after

    def _row_text(self, input_ids: torch.LongTensor, row: int) -> str:
        """The text a row has generated so far (read back from the device only when a row goes wrong)."""
        tokens = input_ids[row, self._prompt_length :].tolist()
        return "".join((self.texts[t] or "") if t < len(self.texts) else "" for t in tokens)

    def _mask(self, state: State, grammar: Grammar, width: int, device: torch.device) -> tuple[torch.Tensor, bool]:
        """The tokens allowed after `state` (cached by what decides them), and whether there are any."""
        unit = tuple(sorted(grammar.composition.items())) if grammar.composition else None
        at_cap = state.atom_count >= grammar.max_atoms
        if unit is None:
            counted: tuple | bool = at_cap
        else:  # what may follow depends on the atoms written and, once the cell is, on the units it holds
            lattice_done = state.section in (Section.ELEMENT, Section.COORDS)
            counted = (state.element_counts, _units_held(state, grammar) if lattice_done else None)
        # With a least volume, which lattice numbers may follow depends on those already written.
        sized = grammar.min_volume is not None and state.section in (Section.LENGTHS, Section.ANGLES)
        volume = (grammar.min_volume, state.line_numbers, state.lattice) if sized else None
        # In an asymmetric unit its group's crystal system fixes some lattice numbers (and the least of the others).
        lattice_rule = state.section in (Section.LENGTHS, Section.ANGLES) and state.group is not None
        system = (state.group and crystal_system(state.group), _fixed_lattice_text(state, 8)) if lattice_rule else None
        # In a site-count asymmetric unit whether the last coordinate may end its site depends on the site's orbit.
        orbit = state.section is Section.COORDS and state.column == 2 and _orbit_counted(state, grammar)
        site = (state.group, state.lattice, state.line_numbers, state.countdown) if orbit else None
        key = (grammar.options, grammar.max_atoms, unit, grammar.units, state.shape_key(), counted,
               _countdown_key(state, grammar), volume, site, system)
        cached = self._masks.get(key)
        if cached is None:
            mask = torch.zeros(max(width, len(self.texts)), dtype=torch.bool)
            mask[list(self._allowed_tokens(state, grammar))] = True
            mask = mask[:width]
            cached = self._masks[key] = (mask.to(device), bool(mask.any()))
        mask, any_allowed = cached
        # Only while a coordinate is still open: once written, the distance (the last one) and the orbit are settled.
        writing = state.section is Section.COORDS and not _number_done(state.partial, grammar.options.coord_decimals)
        if writing and state.column == 2 and grammar.min_distance:
            mask = self._prefer(state, grammar, mask, lambda z: _far_enough(state, z, grammar.min_distance))
        if writing and _orbit_counted(state, grammar):
            mask = self._prefer(state, grammar, mask, lambda value: _within_count(state, value))
        return mask, any_allowed

    def _allowed_tokens(self, state: State, grammar: Grammar) -> Iterator[int]:
        """The tokens whose text keeps the grammar after `state` and, if it stops inside an element symbol, that some
        token can finish. Walked over the tokens' prefix tree, so a prefix the grammar refuses is stepped once, not once
        per token it starts (a lattice number refuses every element and coordinate token at their first character)."""
        for after, node in self._trie.walk(state, grammar):
            if after.section is Section.ELEMENT and after.partial and not any(self._trie.walk(after, grammar, True)):
                continue
            yield from node.tokens

    def _prefer(
        self, state: State, grammar: Grammar, mask: torch.Tensor, keep: Callable[[np.ndarray], np.ndarray]
    ) -> torch.Tensor:
        """`mask` less the tokens that finish the coordinate being written at a value `keep` refuses: too close to an
        earlier atom (`_far_enough`), or an orbit larger than its count (`_within_count`). Unless every one is
        refused: then the atom is written anyway rather than steered astray, and reading it back judges it
        (`attempt_row` in `crystext.sample.samples_csv` makes two atoms too close an error row with their distance)."""
        ids, values = [], []
        for token_id in mask.nonzero().flatten().tolist():
            number = state.partial + (self.texts[token_id] or "").split(" ")[0].split("\n")[0]
            if _number_done(number, grammar.options.coord_decimals):
                ids.append(token_id)
                values.append(float(number))
        if not ids:
            return mask
        refused = ~keep(np.array(values))
        if not refused.any() or refused.all():
            return mask
        mask = mask.clone()
        mask[torch.tensor(ids, device=mask.device)[torch.from_numpy(refused).to(mask.device)]] = False
        return mask
