"""The crystal text format: a crystal as plain text, the way the language model reads and writes it.

A crystal is written (Gruver et al. 2024) as the lattice lengths, the lattice angles, then one pair
of lines per site, its element and its fractional coordinates::

    4.1 4.1 18.4
    90 90 120
    Ga
    0.33 0.67 0.18
    Te
    0.67 0.33 0.89

With `FormatOptions(site_counts=True)` the sites are grouped by element and each element line also
counts down that element's atoms still to write, this one included (``Te 2``, ``Te 1``), so a model
states each element's count where it starts writing it, a copy of the prompt's formula rather than a
tally kept over many lines. With `joined_counts` too the count is written against the symbol (``Te2``), the
way a formula writes it, so the tokens after an element in the text are those after it in a prompt's formula
(``Bi2Te3``) and copying a count is the same look-up as copying the element.

With `FormatOptions(asymmetric_unit=True)` a first line states the space group, the lattice is the group's standard
conventional cell, and one site is written per orbit; reading expands the orbits with the group's operations, so a
crystal read back has the group it states (by construction, where a prompt asks for one); with
`asymmetric_when_grouped` a model writes that form only where its prompt states a space group, and whole cells
elsewhere::

    225
    5.6 5.6 5.6
    90 90 90
    Na
    0.00 0.00 0.00
    Cl
    0.00 0.00 0.50

Each orbit is written as its member with the smallest coordinates, so equal crystals are written alike. With
`site_counts` too, each element's orbits are written together and each element line counts down that element's atoms
in the conventional cell still to write, this orbit's included (``O 12`` for an orbit of 8, then ``O 4``): the first
line of an element copies its count from a prompt's cell formula, and the counts tell a model how large each orbit is
to be. The orbits decide the crystal read back; the counts are the writer's account of them. Reading accepts every
form.

This module is the one place that writes and reads that text. `CrystalText` is the plain data
object in between; `encode` and `decode` are the short way from and to a pymatgen `Structure`.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from crystext import geometry
from crystext.errors import CrystextError

__all__ = [
    "CrystalText",
    "CrystalTextError",
    "FormatOptions",
    "augment",
    "decode",
    "element_line_symbol",
    "encode",
]

ELEMENT_SYMBOLS: frozenset[str] = frozenset(e.symbol for e in Element)

#: The space-group numbers of the International Tables, and the first line of the asymmetric-unit form.
SPACEGROUPS = range(1, 231)
_GROUP_LINE = re.compile(r"[1-9]\d{0,2}")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
# A line that is meant as an element symbol: one capital and at most one lower-case letter, then in the site-count
# form the atoms of that element still to write, after a space or joined to the symbol.
_ELEMENT_LINE = re.compile(r"([A-Z][a-z]?)(?: ?([1-9]\d*))?")

Vector = tuple[float, float, float]


@dataclass(frozen=True)
class FormatOptions:
    """Decimal places written for each kind of number, whether element lines count their atoms down and whether
    that count is joined to the symbol (the module docstring); the defaults are the paper's."""

    length_decimals: int = 1
    angle_decimals: int = 0
    coord_decimals: int = 2
    site_counts: bool = False
    joined_counts: bool = False
    asymmetric_unit: bool = False
    # One model, both forms: a crystal whose prompt states a space group is written as its asymmetric unit (the group
    # it states is then the group it reads back with), any other as its whole cell (`answering`).
    asymmetric_when_grouped: bool = False

    def __post_init__(self) -> None:
        if self.joined_counts and not self.site_counts:
            raise ValueError("joined_counts needs site_counts: it is how the site counts are written")
        if self.asymmetric_when_grouped and self.asymmetric_unit:
            raise ValueError("asymmetric_when_grouped writes whole cells where no space group is stated: it cannot go "
                             "with asymmetric_unit, which writes every crystal as its asymmetric unit")
        for name in ("length_decimals", "angle_decimals", "coord_decimals"):
            if not 0 <= getattr(self, name) <= 8:
                raise ValueError(f"{name} must be between 0 and 8, got {getattr(self, name)}")

    def answering(self, spacegroup: int | None) -> FormatOptions:
        """The form a crystal is written in for a prompt that states `spacegroup` (None: states none)."""
        if not self.asymmetric_when_grouped:
            return self
        return replace(self, asymmetric_unit=spacegroup is not None, asymmetric_when_grouped=False)

    @property
    def count_separator(self) -> str:
        """What stands between an element symbol and its site count: a space, or nothing when joined."""
        return "" if self.joined_counts else " "


class CrystalTextError(CrystextError, ValueError):
    """A crystal (or its text) that the format cannot represent, saying what is wrong and where."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


@dataclass(frozen=True)
class CrystalText:
    """A crystal as the text format sees it: lattice parameters, and an element and coordinates per site; with a
    space group, the group's conventional cell and one site per orbit, with the orbits' sizes in that cell when known
    (read from a structure, or from the counts of a site-count text)."""

    lengths: Vector
    angles: Vector
    species: tuple[str, ...]
    frac_coords: tuple[Vector, ...]
    spacegroup: int | None = None
    multiplicities: tuple[int, ...] | None = None

    @classmethod
    def from_structure(cls, structure: Structure, asymmetric_unit: bool = False) -> CrystalText:
        """Read the lattice parameters and sites of an ordered structure (exact values, not yet rounded), or with
        `asymmetric_unit` its space group, conventional cell and one site per orbit (`geometry.asymmetric_unit`)."""
        a, b, c, alpha, beta, gamma = (float(x) for x in structure.lattice.parameters)
        if not all(math.isfinite(x) for x in (a, b, c, alpha, beta, gamma)):
            raise CrystalTextError("lattice parameters are not all finite numbers")
        species = []
        for index, site in enumerate(structure, start=1):
            if not site.is_ordered:
                raise CrystalTextError(
                    f"site {index} is disordered ({site.species.formula}): the format needs one element per site"
                )
            symbol = getattr(site.specie, "symbol", str(site.specie))
            if symbol not in ELEMENT_SYMBOLS:
                raise CrystalTextError(f'site {index} has no real element ("{site.specie}")')
            species.append(symbol)
        coords = np.asarray(structure.frac_coords, dtype=float).reshape(-1, 3)
        if not np.isfinite(coords).all():
            bad = int(np.flatnonzero(~np.isfinite(coords).all(axis=1))[0]) + 1
            raise CrystalTextError(f"site {bad} has coordinates that are not finite numbers")
        if not species:
            raise CrystalTextError("the structure has no sites")
        if asymmetric_unit:
            try:
                group, parameters, species, coords, sizes = geometry.asymmetric_unit(structure)
            except ValueError as err:
                raise CrystalTextError(str(err)) from None
            return cls(_vector(parameters[:3]), _vector(parameters[3:]), tuple(species),
                       tuple(_vector(row) for row in coords), group, tuple(sizes))
        return cls((a, b, c), (alpha, beta, gamma), tuple(species), tuple(_vector(row) for row in coords))

    @classmethod
    def from_str(cls, text: str) -> CrystalText:
        """Parse crystal text: strict, except that blank lines and junk after the last complete atom are ignored.

        Junk is text that is not part of an atom: a line where an element belongs that is followed by a
        coordinates line (a garbled element), or is one itself (a missing element), is an error, not junk.
        """
        lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
        if not lines:
            raise CrystalTextError("empty text: expected the lattice lengths")
        group = None
        if _GROUP_LINE.fullmatch(lines[0][1]):  # the asymmetric-unit form
            group = int(lines[0][1])
            if group not in SPACEGROUPS:
                raise CrystalTextError(f"space group {group} does not exist (1-230)", lines[0][0])
            lines = lines[1:]
            if not lines:
                raise CrystalTextError("expected the lattice lengths after the space group")
        lengths = _parse_numbers(lines[0], "lattice lengths")
        if len(lines) < 2:
            raise CrystalTextError("missing the lattice angles line after the lengths", lines[0][0])
        angles = _parse_numbers(lines[1], "lattice angles")
        _check_lattice(lengths, angles, lines[0][0], lines[1][0])

        species: list[str] = []
        coords: list[Vector] = []
        counts: list[int | None] = []
        index = 2
        while index < len(lines):
            number, line = lines[index]
            token = element_line_symbol(line)
            if token is None:
                if species and not _is_atom_part(lines, index) and not _has_atom_from(lines, index + 1):
                    break  # trailing junk after the last complete atom (prose, an unfinished line)
                raise CrystalTextError(f"expected an element symbol, got {_quote(line)}", number)
            if token not in ELEMENT_SYMBOLS:
                raise CrystalTextError(f'unknown element "{token}"', number)
            if index + 1 >= len(lines):
                raise CrystalTextError(f"element {token} has no coordinates line after it", number)
            species.append(token)
            counts.append(_element_line_count(line))
            coords.append(_parse_numbers(lines[index + 1], "fractional coordinates"))
            index += 2
        if not species:
            raise CrystalTextError("no atoms: expected element and coordinates lines after the lattice angles")
        sizes = _orbit_sizes(species, counts) if group is not None else None
        return cls(lengths, angles, tuple(species), tuple(coords), group, sizes)

    def to_str(self, options: FormatOptions | None = None) -> str:
        """Write the text, rounding to `options`; coordinates are wrapped so they print inside [0, 1)."""
        opts = options or FormatOptions()
        cell = [
            " ".join(f"{x:.{opts.length_decimals}f}" for x in self.lengths),
            " ".join(f"{x:.{opts.angle_decimals}f}" for x in self.angles),
        ]
        sizes = self._sizes() if opts.site_counts else (1,) * self.num_sites
        triples = list(zip(self.species, self.frac_coords, sizes))
        if opts.site_counts:  # each element's sites together, the elements in the order they first appear
            first = {symbol: i for i, symbol in reversed(list(enumerate(self.species)))}
            triples.sort(key=lambda triple: first[triple[0]])
        left = self.cell_counts() if opts.site_counts else Counter()  # atoms of each element still to write
        sites = []
        for symbol, xyz, size in triples:
            label = f"{symbol}{opts.count_separator}{left[symbol]}" if opts.site_counts else symbol
            left[symbol] -= size
            wrapped = (round(x % 1.0, opts.coord_decimals) % 1.0 for x in xyz)
            sites.append(label + "\n" + " ".join(f"{x:.{opts.coord_decimals}f}" for x in wrapped))
        group = [str(self.spacegroup)] if self.spacegroup is not None else []
        return "\n".join(group + cell + sites)

    def to_structure(self) -> Structure:
        """Build the pymatgen structure these parameters and sites describe (with a space group, its orbits
        expanded: `geometry.expand_orbits`)."""
        _check_lattice(self.lengths, self.angles)
        if self.spacegroup is not None:
            return geometry.expand_orbits(self.spacegroup, self.lengths, self.angles, self.species, self.frac_coords)
        lattice = Lattice.from_parameters(*self.lengths, *self.angles)
        return Structure(lattice, list(self.species), [list(xyz) for xyz in self.frac_coords])

    @property
    def num_sites(self) -> int:
        return len(self.species)

    def cell_counts(self) -> Counter[str]:
        """The atoms of each element in the cell the text describes (an asymmetric unit's conventional cell), in the
        order the text first lists them."""
        counts: Counter[str] = Counter()
        for symbol, size in zip(self.species, self._sizes()):
            counts[symbol] += size
        return counts

    def _sizes(self) -> tuple[int, ...]:
        """How many atoms of the cell each written site stands for: its orbit's size in an asymmetric unit, else 1."""
        if self.spacegroup is None:
            return (1,) * self.num_sites
        if self.multiplicities is None:
            raise CrystalTextError("the sizes of this asymmetric unit's orbits are not known (read it from a "
                                   "structure, or from a text that counts its atoms)")
        return self.multiplicities


def encode(structure: Structure, options: FormatOptions | None = None) -> str:
    """Write a structure as crystal text."""
    asymmetric = options is not None and options.asymmetric_unit
    return CrystalText.from_structure(structure, asymmetric).to_str(options)


def decode(text: str) -> Structure:
    """Read crystal text back into a structure; raises `CrystalTextError` saying what is wrong and where."""
    return CrystalText.from_str(text).to_structure()


def augment(
    crystal: CrystalText, rng: np.random.Generator, *, translate: bool = True, permute: bool = False
) -> CrystalText:
    """A random copy for training: all sites shifted by one random vector (wrapped), and optionally reordered.

    Both leave the crystal physically the same; they teach the model that neither the origin nor
    the order of sites carries meaning. Deterministic for a seeded `rng`. An asymmetric unit is not translated: its
    origin is the one its space group's standard setting fixes.
    """
    if translate and crystal.spacegroup is not None:
        raise ValueError("an asymmetric unit cannot be translated: its origin is its space group's")
    coords = np.array(crystal.frac_coords, dtype=float)
    species = list(crystal.species)
    sizes = crystal.multiplicities
    if translate:
        coords = (coords + rng.uniform(size=3)) % 1.0
    if permute:
        order = rng.permutation(len(species))
        coords, species = coords[order], [species[i] for i in order]
        sizes = tuple(sizes[i] for i in order) if sizes is not None else None
    return replace(crystal, species=tuple(species), frac_coords=tuple(_vector(row) for row in coords),
                   multiplicities=sizes)


def _vector(values: Sequence[float]) -> Vector:
    return (float(values[0]), float(values[1]), float(values[2]))


def _quote(token: str, limit: int = 40) -> str:
    return repr(token if len(token) <= limit else token[:limit] + "...")


def _parse_numbers(line: tuple[int, str], what: str) -> Vector:
    number, content = line
    fields = content.split()
    if len(fields) != 3:
        raise CrystalTextError(f"{what} line has {len(fields)} values, expected 3: {_quote(content)}", number)
    for field in fields:
        if not _NUMBER.fullmatch(field):
            raise CrystalTextError(f"bad number {_quote(field)} in the {what}", number)
        if not math.isfinite(float(field)):
            raise CrystalTextError(f"number {_quote(field)} in the {what} is too large", number)
    return _vector([float(f) for f in fields])


def element_line_symbol(content: str) -> str | None:
    """The symbol of a line meant as an element line ("Fe"; "Fe 3" or "Fe3" in the site-count forms), else None."""
    match = _ELEMENT_LINE.fullmatch(content)
    return match.group(1) if match else None


def _element_line_count(content: str) -> int | None:
    """The count of a site-count element line ("Fe 3" or "Fe3": 3), else None."""
    match = _ELEMENT_LINE.fullmatch(content)
    return int(match.group(2)) if match and match.group(2) else None


def _orbit_sizes(species: Sequence[str], counts: Sequence[int | None]) -> tuple[int, ...] | None:
    """The orbit sizes a site-count asymmetric unit states: each line's count less the next count of its element (the
    whole count on an element's last line); None when a line has no count or an element's counts do not fall."""
    if any(count is None for count in counts):
        return None
    sizes = []
    for index, (symbol, count) in enumerate(zip(species, counts)):
        after = next((c for s, c in zip(species[index + 1:], counts[index + 1:]) if s == symbol), 0)
        sizes.append(count - after)
    return tuple(sizes) if min(sizes) > 0 else None


def _is_numbers_line(content: str) -> bool:
    fields = content.split()
    return len(fields) == 3 and all(_NUMBER.fullmatch(f) for f in fields)


def _is_atom_part(lines: list[tuple[int, str]], index: int) -> bool:
    """Whether the line at `index`, where an element belongs, is part of an atom all the same: a garbled element
    followed by a coordinates line, a coordinates line itself (its element line missing), or both on one line."""
    content = lines[index][1]
    following = lines[index + 1][1] if index + 1 < len(lines) else ""
    symbol, _, rest = content.partition(" ")
    return _is_numbers_line(content) or _is_numbers_line(following) or (
        symbol in ELEMENT_SYMBOLS and _is_numbers_line(rest)
    )


def _has_atom_from(lines: list[tuple[int, str]], start: int) -> bool:
    """Whether an element line followed by a coordinates line appears anywhere from `start` on."""
    return any(
        element_line_symbol(lines[i][1]) in ELEMENT_SYMBOLS and _is_numbers_line(lines[i + 1][1])
        for i in range(start, len(lines) - 1)
    )


def _check_lattice(
    lengths: Vector, angles: Vector, length_line: int | None = None, angle_line: int | None = None
) -> None:
    for value in lengths:
        if value <= 0:
            raise CrystalTextError(f"non-positive lattice length {value:g}", length_line)
    shown = " ".join(f"{x:g}" for x in angles)
    if not all(0 < x < 180 for x in angles):
        raise CrystalTextError(f"lattice angles {shown} must each lie strictly between 0 and 180", angle_line)
    ca, cb, cg = (math.cos(math.radians(x)) for x in angles)
    shape = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
    if shape <= 1e-8:
        raise CrystalTextError(f"lattice angles {shown} give no valid lattice (zero or imaginary volume)", angle_line)
    if not math.isfinite(lengths[0] * lengths[1] * lengths[2] * math.sqrt(shape)):
        raise CrystalTextError("lattice lengths too large: the cell volume is not a finite number", length_line)
