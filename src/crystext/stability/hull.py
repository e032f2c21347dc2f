"""Convex-hull references: the competing Materials Project phases a sample's energy is measured against.

Every reference answers the same question through `HullReference.evaluate`: given a composition and
an MP2020-compatible total energy, what are its formation energy, its energy above the hull and the
phases it would decompose into. The hull is held in formation-energy space (elements at zero), and
a phase diagram is built per chemical system, on demand, from the phases whose elements lie within
it, so a composition no reference phase spans still gets an exact answer.

Three kinds of source:

1. `from_entries`: a file of MP ComputedEntries / ComputedStructureEntries (e.g. matbench-discovery's
   ``2023-02-07-mp-computed-structure-entries.json.gz``).
2. `from_formation_energies`: tables of (formula, formation energy per atom) plus MP2020-compatible
   elemental reference entries, with optional older "fill" tables used only for chemical systems the
   primary tables lack (`default_reference` picks the offline default this way).
3. `MPApiReference`: live Materials Project through ``mp-api`` (entries per chemical system, cached).

The first two are reduced once to the phases on the hull (the same set pymatgen's
`PatchedPhaseDiagram` finds, tested, but built system by system, which scales to 100k+ phases);
those are saved under ``$CRYSTEXT_CACHE_DIR/hulls/`` keyed by the SHA-256 of the source files, so
later runs load a small JSON file instead of rebuilding.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
import time
import warnings
import zlib
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
from pymatgen.core import Composition

from crystext.data import cache_dir
from crystext.files import atomic_path
from crystext.provenance import file_digest
from crystext.stability.errors import StabilityError

__all__ = [
    "HullError",
    "HullPoint",
    "HullReference",
    "MPApiReference",
    "PhaseTable",
    "default_reference",
    "from_entries",
    "from_formation_energies",
    "hull_cache_dir",
]

#: Bump when the layout of cached hull files changes, so stale caches are rebuilt, not misread.
HULL_CACHE_VERSION = 1
#: Column names recognised in formation-energy tables (first match wins).
FORMULA_COLUMNS = ("pretty_formula", "formula", "reduced_formula", "composition")
FORMATION_ENERGY_COLUMNS = ("formation_energy_per_atom", "e_form_per_atom", "e_form", "target")
#: Materials Project run types whose energies the MP2020 scheme makes mutually compatible.
COMPATIBLE_RUN_TYPES = ("GGA", "GGA+U")
#: Environment variable holding a Materials Project API key (the one mp-api itself reads).
MP_API_KEY_ENV = "MP_API_KEY"
#: Paths of the offline references inside a shared-data folder (see `default_reference`).
MP20_SPLITS = ("train", "val", "test")
LEMAT_HULLS = "mp_hull_ref/lemat_genbench_mp20_hulls"
MP_E_FORM_TABLE = "mp_hull_ref/crabnet_matbench/mp_e_form.csv"
ELEMENTAL_REFERENCES = "mp_hull_ref/matbench_discovery/2023-02-07-mp-elemental-reference-entries.json.gz"


class HullError(StabilityError):
    """A reference that cannot be read or built, or a composition it cannot place on its hull."""


@dataclass(frozen=True)
class HullPoint:
    """Where one energy lies relative to the hull: eV/atom, and the hull phases at that composition."""

    e_form_per_atom: float
    e_above_hull: float
    decomposition: Mapping[str, float]

    def decomposition_str(self) -> str:
        """The decomposition as 'Formula:fraction' pairs joined by spaces, largest first."""
        parts = sorted(self.decomposition.items(), key=lambda kv: (-round(kv[1], 6), kv[0]))
        return " ".join(f"{formula}:{amount:.3f}" for formula, amount in parts)


class HullReference(ABC):
    """Competing phases and elemental energies per chemical system; evaluates energies against their hull."""

    description: str

    def __init__(self) -> None:
        self._diagrams: dict[frozenset[str], tuple[PhaseDiagram, Mapping[str, float]]] = {}

    @abstractmethod
    def phases(self, elements: frozenset[str]) -> tuple[list[PDEntry], Mapping[str, float]]:
        """Formation-energy entries whose elements lie within `elements`, and each element's energy (eV/atom)."""

    @abstractmethod
    def summary(self) -> dict[str, Any]:
        """What this reference is made of, for the run's summary file."""

    def evaluate(self, composition: Composition, energy: float) -> HullPoint:
        """Formation energy, energy above hull and decomposition of a total energy (eV, MP2020-compatible)."""
        composition = Composition(composition)
        elements = frozenset(el.symbol for el in composition.elements)
        diagram, mu = self._diagram(elements)
        missing = sorted(elements - set(mu))
        if missing:
            raise HullError(f"no elemental reference energy for {', '.join(missing)} in {self.description}")
        n_atoms = composition.num_atoms
        e_form = (energy - sum(mu[el.symbol] * n for el, n in composition.items())) / n_atoms
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns about noble gases' missing electronegativity
            decomposition, e_hull = diagram.get_decomp_and_e_above_hull(
                PDEntry(composition, e_form * n_atoms), allow_negative=True
            )
            phases = {entry.composition.reduced_formula: float(amount) for entry, amount in decomposition.items()}
        return HullPoint(e_form_per_atom=float(e_form), e_above_hull=float(e_hull), decomposition=phases)

    def _diagram(self, elements: frozenset[str]) -> tuple[PhaseDiagram, Mapping[str, float]]:
        if elements not in self._diagrams:
            entries, mu = self.phases(elements)
            terminals = [PDEntry(Composition(el), 0.0, name=el) for el in sorted(elements)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._diagrams[elements] = (PhaseDiagram(entries + terminals), mu)
        return self._diagrams[elements]


# --------------------------------------------------------------------------- hull vertices from tables or entries


@dataclass
class PhaseTable(HullReference):
    """A reference reduced to its hull: stable phases (reduced formula, formation energy/atom) and elemental
    energies."""

    stable: list[tuple[str, float, str]] = field(repr=False)
    elemental_energies: dict[str, float] = field(repr=False)
    description: str
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__()
        self._by_system: dict[frozenset[str], list[PDEntry]] = defaultdict(list)
        for formula, e_form, label in self.stable:
            composition = Composition(formula)
            entry = PDEntry(composition, e_form * composition.num_atoms, name=formula, attribute=label)
            self._by_system[frozenset(el.symbol for el in composition.elements)].append(entry)

    def phases(self, elements: frozenset[str]) -> tuple[list[PDEntry], Mapping[str, float]]:
        entries = [entry for system in _within(elements, self._by_system) for entry in self._by_system[system]]
        return entries, self.elemental_energies

    def summary(self) -> dict[str, Any]:
        return {"description": self.description, "stable_phases": len(self.stable), **self.details}

    def to_json(self) -> dict[str, Any]:
        return {
            "version": HULL_CACHE_VERSION,
            "description": self.description,
            "details": self.details,
            "elemental_energies": self.elemental_energies,
            "stable": self.stable,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PhaseTable:
        return cls(
            stable=[(str(f), float(e), str(label)) for f, e, label in data["stable"]],
            elemental_energies={k: float(v) for k, v in data["elemental_energies"].items()},
            description=data["description"],
            details=dict(data.get("details", {})),
        )


def hull_cache_dir() -> Path:
    """Where built hulls are kept: $CRYSTEXT_CACHE_DIR/hulls, else ~/.cache/crystext/hulls."""
    return cache_dir("hulls")


def _hull_vertices(phases: pd.DataFrame) -> list[tuple[str, float, str]]:
    """The rows of (formula, e_form, label) on the convex hull of formation energies (elements at zero).

    A phase is on the hull exactly when it is on the hull of its own chemical system, which only that
    system and its subsystems shape. So systems are visited smallest first, each against the phases
    already found stable below it: the same vertices as `PatchedPhaseDiagram(...).stable_entries`, in
    time linear in the number of systems (PatchedPhaseDiagram scans every entry for every space, which
    takes hours on the 130k-row tables here).
    """
    candidates: dict[frozenset[str], list[PDEntry]] = defaultdict(list)
    for formula, e_form, label in phases[["formula", "e_form", "label"]].itertuples(index=False):
        if e_form < 0:  # at or above the elements' line a phase cannot be a vertex
            composition = Composition(formula)
            entry = PDEntry(composition, e_form * composition.num_atoms, name=formula, attribute=label)
            candidates[frozenset(el.symbol for el in composition.elements)].append(entry)
    stable: dict[frozenset[str], list[PDEntry]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for system in sorted(candidates, key=len):
            below = [entry for sub in _within(system, stable) for entry in stable[sub]]
            terminals = [PDEntry(Composition(el), 0.0) for el in system]
            diagram = PhaseDiagram(candidates[system] + below + terminals)
            stable[system] = [entry for entry in candidates[system] if entry in diagram.stable_entries]
    return sorted((e.name, e.energy_per_atom, e.attribute) for entries in stable.values() for e in entries)


def _within(elements: frozenset[str], index: Mapping[frozenset[str], Any]) -> Iterator[frozenset[str]]:
    """The chemical systems of `index` (two elements or more) that lie within `elements`."""
    if 2 ** len(elements) < len(index):
        for size in range(2, len(elements) + 1):
            for subset in itertools.combinations(sorted(elements), size):
                if frozenset(subset) in index:
                    yield frozenset(subset)
    else:
        yield from (system for system in index if len(system) > 1 and system <= elements)


def _cached(key_parts: Sequence[Any], build: Callable[[], PhaseTable], name: str, **details: Any) -> PhaseTable:
    """Load a hull from the cache under a key of `key_parts`, or build, save (atomically) and return it.

    `details` (file paths and the like) describe this call, not the content, so they are not cached.
    """
    digest = hashlib.sha256(json.dumps([HULL_CACHE_VERSION, *key_parts], sort_keys=True).encode()).hexdigest()
    path = hull_cache_dir() / f"{name}-{digest[:20]}.json.gz"
    start = time.perf_counter()
    table = _load_cached(path)
    if table is None:
        table = build()
        table.details["build_seconds"] = round(time.perf_counter() - start, 2)
        with atomic_path(path) as partial, gzip.open(partial, "wt") as handle:
            json.dump(table.to_json(), handle)
        table.details["cache"] = "built"
    else:
        table.details["cache"] = "loaded"
        table.details["load_seconds"] = round(time.perf_counter() - start, 2)
    table.details.update(details, cache_file=str(path))
    return table


def _load_cached(path: Path) -> PhaseTable | None:
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt") as handle:
            data = json.load(handle)
        if not isinstance(data, dict) or data.get("version") != HULL_CACHE_VERSION:
            return None
        return PhaseTable.from_json(data)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error):
        return None  # a damaged cache file is rebuilt


def _require(path: Path) -> Path:
    if not path.is_file():
        raise HullError(f"{path}: no such file")
    return path


# --------------------------------------------------------------------------- source 2: formation-energy tables


def read_formation_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV/parquet of formulas and formation energies (eV/atom) as columns formula, e_form, label.

    Formulas are reduced and only the lowest energy per reduced formula is kept (polymorphs repeat);
    rows of pure elements are dropped, since elements sit at zero by definition.
    """
    path = _require(Path(path))
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as err:  # pandas raises many kinds on a broken file
        raise HullError(f"{path}: not a readable table ({type(err).__name__}: {err})") from None
    formula_col = next((c for c in FORMULA_COLUMNS if c in frame.columns), None)
    energy_col = next((c for c in FORMATION_ENERGY_COLUMNS if c in frame.columns), None)
    if formula_col is None or energy_col is None:
        raise HullError(
            f"{path}: needs a formula column ({', '.join(FORMULA_COLUMNS)}) and a formation energy column "
            f"({', '.join(FORMATION_ENERGY_COLUMNS)}); found {', '.join(map(str, frame.columns))}"
        )
    labels = frame["material_id"].astype(str) if "material_id" in frame.columns else path.name
    table = pd.DataFrame({"formula": frame[formula_col], "e_form": frame[energy_col], "label": labels}).dropna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compositions = [Composition(f) for f in table["formula"]]
    table["formula"] = [c.reduced_formula for c in compositions]
    return _dedup(table[[not c.is_element for c in compositions]])


def read_elemental_references(path: str | Path) -> dict[str, float]:
    """Energy per atom of each element's ground state from a JSON(.gz) of MP ComputedEntries keyed by element."""
    entries = _load_entries(_require(Path(path)))
    energies = _elemental_minima(entries)
    if not energies:
        raise HullError(f"{path}: no elemental entries")
    return energies


def _chemsys(formula: str) -> frozenset[str]:
    return frozenset(el.symbol for el in Composition(formula).elements)


def from_formation_energies(
    tables: Sequence[str | Path],
    elemental_references: str | Path,
    fill: Sequence[str | Path] = (),
) -> PhaseTable:
    """The hull of formation-energy tables, with `fill` tables used only for chemical systems `tables` lack.

    Entries of `fill` (e.g. an older table from a different correction scheme) are added only where no
    primary row shares their exact chemical system, so they complete the hull without shifting it.
    """
    paths = [_require(Path(p)) for p in tables]
    fill_paths = [_require(Path(p)) for p in fill]
    refs_path = _require(Path(elemental_references))
    key = [
        "formation",
        [file_digest(p) for p in paths],
        [file_digest(p) for p in fill_paths],
        file_digest(refs_path),
    ]

    def build() -> PhaseTable:
        mu = read_elemental_references(refs_path)
        primary = _dedup(pd.concat([read_formation_table(p) for p in paths]))
        rows = [primary]
        n_fill = 0
        if fill_paths:
            covered = {_chemsys(f) for f in primary["formula"]}
            extra = _dedup(pd.concat([read_formation_table(p) for p in fill_paths]))
            extra = extra[[_chemsys(f) not in covered for f in extra["formula"]]]
            n_fill = len(extra)
            rows.append(extra)
        stable = _hull_vertices(_dedup(pd.concat(rows)))
        names = [p.name for p in paths] + [f"{p.name} (fill)" for p in fill_paths]
        return PhaseTable(
            stable=stable,
            elemental_energies=mu,
            description=f"formation energies from {', '.join(names)}; elements from {refs_path.name}",
            details={"kind": "formation-energy tables", "primary_formulas": len(primary), "fill_formulas_used": n_fill},
        )

    return _cached(
        key, build, "formation",
        tables=[str(p) for p in paths], fill_tables=[str(p) for p in fill_paths], elemental_references=str(refs_path),
    )


def _dedup(table: pd.DataFrame) -> pd.DataFrame:
    return table.sort_values("e_form").drop_duplicates("formula").reset_index(drop=True)


#: The offline hull shipped inside the package (recipes/offline_hull.py builds it; provenance and licenses in
#: the README.md beside it): the default reference when no other is given.
SHIPPED_HULL = Path(__file__).parent / "offline_hull" / "mp20_lemat_mp_e_form_hull.json.gz"


def shipped_reference() -> PhaseTable:
    """The hull shipped with crystext: `default_reference` of the shared data, reduced to its vertices."""
    table = _load_cached(SHIPPED_HULL)
    if table is None:
        raise HullError(f"{SHIPPED_HULL}: the shipped hull is missing or damaged; reinstall crystext")
    table.details.update(source="shipped with crystext", file=SHIPPED_HULL.name)
    return table


def default_reference(shared_data: str | Path, *, fill_with_mp_e_form: bool = True) -> PhaseTable:
    """The offline default hull from a folder laid out like the project's shared data.

    Primary: the MP-20 formation energies (all splits present) and the lemat-genbench MP-20 hull rows,
    one consistent MP2020-era set. Fill: the ~2018 matbench ``mp_e_form`` table, only for chemical
    systems the primary set lacks (see benchmarks/results/stability.md for the measurements behind this).
    """
    root = Path(shared_data)
    tables = [root / "mp_20" / f"{split}.csv" for split in MP20_SPLITS if (root / "mp_20" / f"{split}.csv").is_file()]
    tables += sorted((root / LEMAT_HULLS).glob("*.parquet"))
    if not tables:
        raise HullError(f"{root}: no mp_20/*.csv or {LEMAT_HULLS}/*.parquet (expected the shared-data layout)")
    fill = [root / MP_E_FORM_TABLE] if fill_with_mp_e_form else []
    return from_formation_energies(tables, root / ELEMENTAL_REFERENCES, fill=fill)


# --------------------------------------------------------------------------- source 1: MP computed entries


def _load_entries(path: Path) -> list[Any]:
    """ComputedEntry/ComputedStructureEntry objects from JSON(.gz): a list, a dict of them, or a pandas frame
    with 'entry'."""
    from pymatgen.entries.computed_entries import ComputedEntry, ComputedStructureEntry

    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as handle:
            data = json.load(handle)
    except (OSError, ValueError, EOFError) as err:
        raise HullError(f"{path}: not a readable JSON file of entries ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("entry"), dict):
        data = list(data["entry"].values())
    elif isinstance(data, dict):
        data = list(data.values())
    if not isinstance(data, list) or not all(isinstance(d, dict) and "energy" in d for d in data):
        raise HullError(f"{path}: expected ComputedEntry dicts (a list, a dict, or a frame with an 'entry' column)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns about noble gases' missing electronegativity
        return [(ComputedStructureEntry if "structure" in d else ComputedEntry).from_dict(d) for d in data]


def _elemental_minima(entries: Iterable[Any]) -> dict[str, float]:
    minima: dict[str, float] = {}
    for entry in entries:
        if entry.composition.is_element:
            symbol = entry.composition.elements[0].symbol
            minima[symbol] = min(minima.get(symbol, float("inf")), entry.energy_per_atom)
    return minima


def _compatible(entries: Iterable[Any]) -> list[Any]:
    """GGA/GGA+U entries only, without r2SCAN adjustments: the MP2020-compatible ones."""
    return [
        e
        for e in entries
        if e.parameters.get("run_type", "GGA") in COMPATIBLE_RUN_TYPES
        and not any("R2SCAN" in adjustment.name.upper() for adjustment in e.energy_adjustments)
    ]


def _formation_rows(entries: Sequence[Any], mu: Mapping[str, float]) -> pd.DataFrame:
    """Formation energies per atom of entries whose elements all have a reference energy."""
    rows = []
    for entry in entries:
        composition = entry.composition
        if all(el.symbol in mu for el in composition.elements) and not composition.is_element:
            e_form = (entry.energy - sum(mu[el.symbol] * n for el, n in composition.items())) / composition.num_atoms
            rows.append((composition.reduced_formula, e_form, str(entry.entry_id)))
    return pd.DataFrame(rows, columns=["formula", "e_form", "label"])


def from_entries(path: str | Path) -> PhaseTable:
    """The hull of a file of MP entries (energies as stored, i.e. with their MP2020 corrections)."""
    path = _require(Path(path))

    def build() -> PhaseTable:
        entries = _compatible(_load_entries(path))
        mu = _elemental_minima(entries)
        phases = _dedup(_formation_rows(entries, mu))
        return PhaseTable(
            stable=_hull_vertices(phases),
            elemental_energies=mu,
            description=f"MP entries from {path.name}",
            details={"kind": "computed entries", "compatible_entries": len(entries)},
        )

    return _cached(["entries", file_digest(path)], build, "entries", entries_file=str(path))


# --------------------------------------------------------------------------- source 3: live Materials Project


class MPApiReference(HullReference):
    """Live Materials Project entries (GGA/GGA+U, MP2020-corrected) per chemical system, cached on disk."""

    def __init__(self, api_key: str | None = None) -> None:
        super().__init__()
        self.api_key = api_key or os.environ.get(MP_API_KEY_ENV)
        if not self.api_key:
            raise HullError(f"the Materials Project reference needs an API key: set {MP_API_KEY_ENV}")
        try:
            import mp_api.client  # noqa: F401  (checked here so the error comes before any relaxation)
        except ImportError:
            raise HullError("the Materials Project reference needs mp-api: pip install 'crystext[online]'") from None
        self.description = "Materials Project (live, mp-api)"
        self._fetched: set[str] = set()

    def phases(self, elements: frozenset[str]) -> tuple[list[PDEntry], Mapping[str, float]]:
        entries = self._entries(elements)
        mu = _elemental_minima(entries)
        rows = _dedup(_formation_rows(entries, mu))
        pd_entries = [PDEntry(Composition(f), e * Composition(f).num_atoms, name=f, attribute=label)
                      for f, e, label in rows.itertuples(index=False)]
        return pd_entries, mu

    def summary(self) -> dict[str, Any]:
        return {"description": self.description, "chemical_systems_fetched": len(self._fetched)}

    def _entries(self, elements: frozenset[str]) -> list[Any]:
        chemsys = "-".join(sorted(elements))
        path = hull_cache_dir() / "mp-api" / f"{chemsys}.json.gz"
        if not path.is_file():
            from mp_api.client import MPRester

            try:
                with MPRester(self.api_key) as rester:
                    entries = rester.get_entries_in_chemsys(sorted(elements), compatible_only=True)
            except Exception as err:  # mp-api raises its own and requests' errors when offline
                raise HullError(f"Materials Project query for {chemsys} failed ({type(err).__name__}: {err})") from None
            with atomic_path(path) as partial, gzip.open(partial, "wt") as handle:
                json.dump([e.as_dict() for e in _compatible(entries)], handle, default=str)
        self._fetched.add(chemsys)
        return _compatible(_load_entries(path))
