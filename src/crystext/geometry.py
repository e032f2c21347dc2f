"""Geometry shared by the sampler and the evaluator, kept free of their heavier imports."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import cache

import numpy as np
from pymatgen.core import Element, Lattice, Structure

from crystext.constants import SPACEGROUP_SYMPREC

__all__ = ["CRYSTAL_SYSTEMS", "FIXED_ANGLES", "TIED_LENGTHS", "asymmetric_unit", "closest_pair", "copy_distances",
           "crystal_system", "expand_orbits", "lattice_points", "operations", "orbit_copies", "orbit_sizes",
           "smallest_orbits", "spacegroup_number", "symmetric_lattice", "wyckoff_multiplicities"]

#: Crystal systems by the largest space-group number they hold.
CRYSTAL_SYSTEMS = (("triclinic", 2), ("monoclinic", 15), ("orthorhombic", 74), ("tetragonal", 142),
                   ("trigonal", 167), ("hexagonal", 194), ("cubic", 230))
#: Crystal systems whose standard conventional cell has b (then c) equal to a, and the angles (alpha, beta, gamma) each
#: fixes (None: free), as spglib's standard cells write them (trigonal groups on hexagonal axes); a system not named
#: (triclinic) ties and fixes nothing.
TIED_LENGTHS = {"tetragonal": (True, False), "trigonal": (True, False), "hexagonal": (True, False),
                "cubic": (True, True)}
FIXED_ANGLES = {"monoclinic": (90, None, 90), "orthorhombic": (90, 90, 90), "tetragonal": (90, 90, 90),
                "trigonal": (90, 90, 120), "hexagonal": (90, 90, 120), "cubic": (90, 90, 90)}
#: Fractional distance within which a group's copies of one written site are the same site, and the distance (A)
#: within which two sites left after that are merged (a coordinate rounded off a special position).
ORBIT_DUPLICATE_FRACTION = 0.02
ORBIT_MERGE_ANGSTROM = 0.3
#: Steps per cell edge of the grid on which `smallest_orbits` looks for special positions: the text's two decimals.
ORBIT_GRID = 100
#: Steps per cell edge of the grid on which `wyckoff_multiplicities` follows orbits exactly: every translation of a
#: conventional cell's operations, and every offset of a special position, is a multiple of 1/24.
WYCKOFF_GRID = 24


def closest_pair(structure: Structure) -> tuple[int, int, float] | None:
    """(i, j, distance in A) of the two closest sites, i < j, periodic images included; None with fewer than two."""
    if len(structure) < 2:
        return None
    distances = np.array(structure.distance_matrix, dtype=float)
    np.fill_diagonal(distances, np.inf)
    i, j = sorted(int(k) for k in np.unravel_index(int(np.argmin(distances)), distances.shape))
    return i, j, float(distances[i, j])


def spacegroup_number(structure: Structure, symprec: float = SPACEGROUP_SYMPREC) -> int:
    """The space-group number spglib finds at `symprec` (A), or 0 when it finds none."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return int(SpacegroupAnalyzer(structure, symprec=symprec).get_space_group_number())
    except Exception:  # spglib gives up on degenerate cells
        return 0


def crystal_system(spacegroup: int) -> str:
    """The crystal system of a space group number (1-230)."""
    if not 1 <= spacegroup <= CRYSTAL_SYSTEMS[-1][1]:
        raise ValueError(f"space group {spacegroup} is not in 1-{CRYSTAL_SYSTEMS[-1][1]}")
    return next(name for name, last in CRYSTAL_SYSTEMS if spacegroup <= last)


def asymmetric_unit(
    structure: Structure, symprec: float = SPACEGROUP_SYMPREC
) -> tuple[int, tuple[float, ...], list[str], list[list[float]], list[int]]:
    """(space group, conventional lattice parameters, elements, coordinates, multiplicities): the group spglib finds
    at `symprec`, its standard conventional cell (idealised), and one site per orbit, the member with the smallest
    coordinates (x, then y, then z), so that equal crystals are written alike, with the orbit's size in that cell."""
    import spglib

    numbers = [site.specie.Z for site in structure]
    cell = (structure.lattice.matrix, structure.frac_coords, numbers)
    found = spglib.get_symmetry_dataset(cell, symprec=symprec)
    if found is None:
        raise ValueError("spglib finds no space group for this structure")
    standard = (found.std_lattice, found.std_positions % 1.0, found.std_types)
    orbits = spglib.get_symmetry_dataset(standard, symprec=1e-3).equivalent_atoms  # idealised: exactly symmetric
    positions = np.round(standard[1], 6) % 1.0
    species, coords, sizes = [], [], []
    for orbit in dict.fromkeys(orbits.tolist()):
        members = np.flatnonzero(orbits == orbit)
        first = min(members, key=lambda i: tuple(positions[i]))
        species.append(Element.from_Z(int(standard[2][first])).symbol)
        coords.append(positions[first].tolist())
        sizes.append(len(members))
    parameters = Lattice(found.std_lattice).parameters
    return int(found.number), tuple(float(x) for x in parameters), species, coords, sizes


def symmetric_lattice(group: int, lengths: Sequence[float], angles: Sequence[float]) -> Lattice:
    """The lattice of `group`'s crystal system nearest to the written one: the lengths its symmetry makes equal
    averaged, the angles it fixes set (trigonal groups on hexagonal axes, as spglib's standard cells write them)."""
    system = crystal_system(group)
    tied = 1 + sum(TIED_LENGTHS.get(system, (False, False)))  # a and the lengths equal to it
    mean = sum(lengths[:tied]) / tied
    fixed = FIXED_ANGLES.get(system, (None, None, None))
    return Lattice.from_parameters(*([mean] * tied + list(lengths[tied:])),
                                   *(angle if value is None else value for angle, value in zip(angles, fixed)))


def expand_orbits(
    group: int, lengths: Sequence[float], angles: Sequence[float], species: Sequence[str],
    coords: Sequence[Sequence[float]],
) -> Structure:
    """The crystal an asymmetric unit states, in a primitive cell: `group`'s operations copy each site over the
    cell of `symmetric_lattice`, copies of one site within ORBIT_DUPLICATE_FRACTION are one, and sites left within
    ORBIT_MERGE_ANGSTROM of each other merge (the first kept)."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    lattice = symmetric_lattice(group, lengths, angles)
    cell = Structure.from_spacegroup(group, lattice, list(species), [list(x) for x in coords],
                                     tol=ORBIT_DUPLICATE_FRACTION)
    cell.merge_sites(tol=ORBIT_MERGE_ANGSTROM, mode="delete")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            primitive = SpacegroupAnalyzer(cell, symprec=SPACEGROUP_SYMPREC).find_primitive()
    except Exception:  # spglib gives up on degenerate cells: the conventional cell is the same crystal
        primitive = None
    return primitive or cell


def orbit_sizes(group: int, lattice: Lattice, points: np.ndarray) -> np.ndarray:
    """How many sites each fractional point (rows of `points`) becomes in `group`'s conventional cell on `lattice`:
    the group's operations over those that leave it within ORBIT_MERGE_ANGSTROM of itself, so that a point just off a
    special position has that position's orbit, as `expand_orbits` merges copies (it also merges chains of near
    copies, so a point near a special position, not on it, can read back smaller). Vectorised for the grammar."""
    kept = (copy_distances(group, lattice, points) < ORBIT_MERGE_ANGSTROM).sum(axis=1)  # the identity at least
    return np.rint(len(operations(group)[0]) / kept).astype(int)


def copy_distances(group: int, lattice: Lattice, points: np.ndarray) -> np.ndarray:
    """(points, operations): the distance (A) from each fractional point to its copy under each of `group`'s
    operations, nearest image by rounding the fractional difference."""
    points = np.atleast_2d(points)
    delta = orbit_copies(group, points) - points[:, None, :]
    return np.linalg.norm((delta - np.round(delta)) @ lattice.matrix, axis=-1)


def orbit_copies(group: int, points: np.ndarray) -> np.ndarray:
    """(points, operations, 3): each fractional point moved by each of `group`'s operations (not wrapped into the
    cell)."""
    rotations, translations = operations(group)
    return np.einsum("oij,nj->noi", rotations, np.atleast_2d(points)) + translations


@cache
def smallest_orbits(group: int) -> tuple[np.ndarray, np.ndarray]:
    """(ORBIT_GRID,) and (ORBIT_GRID, ORBIT_GRID): the smallest orbit in `group`'s conventional cell of a point on the
    grid with a given first coordinate (over every second and third), and with given first two (over every third).
    An operation leaves a point where it is when each coordinate of the copy is within 1.5 grid steps of the point's
    (so 0.33 0.67 sits on a threefold axis), and the orbit is the operations over those that do. For steering a
    site's first coordinates to where an orbit of its size is left; about a second for Fm-3m's 192 operations, once."""
    rotations, translations = operations(group)
    steps = np.arange(ORBIT_GRID) / ORBIT_GRID
    axes = (steps[:, None, None], steps[None, :, None], steps[None, None, :])
    shape = (ORBIT_GRID,) * 3

    @cache
    def on(row: tuple[int, int, int], shift: float) -> np.ndarray:
        """Where one coordinate of the copy, row . p + shift (row of W - 1), is within tolerance of p's."""
        value = sum(c * axis for c, axis in zip(row, axes) if c) + shift
        return np.broadcast_to(np.abs(value - np.round(value)) < 1.5 / ORBIT_GRID, shape)

    kept = np.zeros(shape, dtype=np.int16)  # operations that leave each grid point where it is
    for moved, shift in zip(np.rint(rotations - np.eye(3)).astype(int), translations):
        kept += on(tuple(moved[0]), round(shift[0] % 1.0, 6)) & on(tuple(moved[1]), round(shift[1] % 1.0, 6)) & on(
            tuple(moved[2]), round(shift[2] % 1.0, 6))
    by_xy = np.rint(len(rotations) / kept).astype(int).min(axis=2)
    return by_xy.min(axis=1), by_xy


@cache
def wyckoff_multiplicities(group: int) -> tuple[int, ...]:
    """The sizes an orbit of `group` can have in its conventional cell, smallest first: its Wyckoff positions'
    multiplicities (Fm-3m: 4, 8, 24, 32, 48, 96, 192), as the orbits of the points of a 1/24 grid, counted in exact
    integer arithmetic. About two seconds for Fm-3m's 192 operations, once."""
    steps = np.arange(WYCKOFF_GRID)
    grid = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    copies = np.rint(orbit_copies(group, grid / WYCKOFF_GRID) * WYCKOFF_GRID).astype(np.int64) % WYCKOFF_GRID
    codes = np.sort((copies[..., 0] * WYCKOFF_GRID + copies[..., 1]) * WYCKOFF_GRID + copies[..., 2], axis=1)
    return tuple(sorted(set((1 + (np.diff(codes, axis=1) != 0).sum(axis=1)).tolist())))


def lattice_points(group: int) -> int:
    """The lattice points of `group`'s conventional cell (1 primitive, 2 body- or base-centred, 3 rhombohedral on
    hexagonal axes, 4 face-centred): its operations that are pure translations."""
    rotations, _ = operations(group)
    return int(np.all(rotations == np.eye(3), axis=(1, 2)).sum())


@cache
def operations(group: int) -> tuple[np.ndarray, np.ndarray]:
    """The rotations (n, 3, 3) and translations (n, 3) of `group`'s operations on its conventional cell, as
    `Structure.from_spacegroup` applies them."""
    from pymatgen.symmetry.groups import SpaceGroup

    operations = SpaceGroup.from_int_number(group).symmetry_ops
    return (np.array([op.rotation_matrix for op in operations]), np.array([op.translation_vector for op in operations]))
