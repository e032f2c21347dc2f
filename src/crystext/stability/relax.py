"""Relaxation with machine-learned potentials: one interface, several backends, MP2020-compatible energies.

A backend supplies an ASE calculator; `Backend.relax` does the rest the same way for all of them:
a structural check, positions and cell relaxed together (FIRE or BFGS on a FrechetCellFilter) until
the largest force is below `fmax`, within a budget of optimizer steps (and, if asked, of wall-clock
time), and the final energy put on the Materials Project 2020 scale. Failures come back as a
`Relaxation` with an error, never raised. `Backend.relax_many` relaxes a list one by one, except in the
batched backend (`sevennet-batched`, `crystext.stability.torchsim`), which relaxes it as one batch.

Which backends already predict MP2020-corrected energies was measured (benchmarks/stability_mp2020.py,
results/stability_mp2020.json): single points on 120 DFT-relaxed MP-20 test structures, formation
energy from MP2020 elemental references, mean absolute difference to the dataset's formation energy
(eV/atom): CHGNet 0.025 as predicted, 0.195 with the corrections added again; SevenNet-0 0.197 as
predicted, 0.014 with them. CHGNet (trained on corrected MPtrj energies) is used as is; SevenNet and
M3GNet (trained on raw VASP energies) get `MaterialsProject2020Compatibility` applied.
"""

from __future__ import annotations

import contextlib
import io
import math
import signal
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pymatgen.core import Structure

from crystext.constants import MIN_CELL_VOLUME, MIN_INTERATOMIC_DISTANCE
from crystext.stability.errors import StabilityError

__all__ = [
    "BACKENDS",
    "BUDGETS",
    "Backend",
    "BackendError",
    "RelaxConfig",
    "Relaxation",
    "budget_name",
    "check_structure",
    "exploded",
    "too_dense",
    "load_backend",
    "mp2020_energy",
]

#: Relaxation stops once the largest force (and cell-filter stress component) is below this (eV/Angstrom).
DEFAULT_FMAX = 0.1
#: Optimizer steps allowed per structure; a structure still above fmax then is placed with its last energy
#: and flagged not converged (the step cap is measured in benchmarks/results/stability_budget.md).
DEFAULT_MAX_STEPS = 500
#: The paper's budget: wall-clock seconds per structure (its M3GNet relaxations); one still running is dropped.
PAPER_TIMEOUT_S = 30.0
#: Seconds past the timeout after which a step that never returns is interrupted by a signal.
HARD_TIMEOUT_GRACE_S = 10.0
#: A relaxation whose cell volume grows or shrinks by more than this factor has exploded or collapsed
#: (generous: a sample generated much too dense may legitimately expand several times).
MAX_VOLUME_CHANGE = 10.0
#: A structure denser than this (Angstrom^3 per atom) is not relaxed: every atom then has so many neighbours within
#: the potentials' cut-offs that one step takes minutes (a 3.2 A^3/atom Ba2Sr2Sn4O10 sample ran 25 min of CHGNet
#: without finishing). Not from the paper: about 30% below the densest crystal of MP-20 (5.77 A^3/atom in val,
#: 6.35 in test, 7.73 in the train.csv here).
MIN_RELAX_VOLUME_PER_ATOM = 4.0
#: M3GNet model name in matgl (downloaded from its hub on first use).
M3GNET_MODEL = "M3GNet-MP-2021.2.8-PES"
#: Error kinds: every failed row's error starts with one of these and a colon.
ERROR_INVALID = "invalid structure"
ERROR_TIMEOUT = "timeout"
ERROR_EXPLODED = "exploded"
ERROR_FAILED = "relaxation failed"
ERROR_MP2020 = "mp2020 correction"
ERROR_TOO_DENSE = "too dense"


class BackendError(StabilityError):
    """A potential that cannot be loaded (unknown name, missing package, weights unreachable offline)."""


@dataclass(frozen=True)
class RelaxConfig:
    """How each structure is relaxed."""

    fmax: float = DEFAULT_FMAX
    max_steps: int = DEFAULT_MAX_STEPS
    timeout: float | None = None  # wall-clock seconds; None: the budget is the step cap alone
    optimizer: Literal["FIRE", "BFGS"] = "FIRE"
    relax_cell: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fmax) and self.fmax > 0):
            raise ValueError(f"fmax must be a positive force, got {self.fmax}")
        if self.max_steps < 0:
            raise ValueError(f"max_steps must be >= 0 (0: a single point, no relaxation), got {self.max_steps}")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {self.timeout}")
        if self.optimizer not in ("FIRE", "BFGS"):
            raise ValueError(f"optimizer must be FIRE or BFGS, got {self.optimizer}")


#: Named relaxation budgets. `steps` (the default) counts optimizer steps, so the same input gives the same rows
#: on any machine, idle or busy; `paper` is the paper's 30 s of wall-clock time per structure.
BUDGETS: dict[str, RelaxConfig] = {"steps": RelaxConfig(), "paper": RelaxConfig(timeout=PAPER_TIMEOUT_S)}


def budget_name(config: RelaxConfig) -> str:
    """The name of the budget `config` is (`steps`, `paper`), or `custom`."""
    return next((name for name, budget in BUDGETS.items() if budget == config), "custom")


@dataclass(frozen=True)
class Relaxation:
    """The outcome for one structure: relaxed structure and MP2020-compatible total energy (eV), or an error."""

    structure: Structure | None
    energy: float | None
    steps: int
    converged: bool
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def check_structure(structure: Structure) -> str | None:
    """Why a structure is not physically valid (atoms closer than 0.5 A, cell under 0.1 A^3), or None."""
    volume = structure.volume
    if not math.isfinite(volume) or volume < MIN_CELL_VOLUME:
        return f"{ERROR_INVALID}: cell volume {volume:.3g} A^3 < {MIN_CELL_VOLUME}"
    if not np.isfinite(structure.cart_coords).all():
        return f"{ERROR_INVALID}: coordinates are not finite"
    centers, neighbors, images, distances = structure.get_neighbor_list(MIN_INTERATOMIC_DISTANCE, exclude_self=False)
    other = (centers != neighbors) | (images != 0).any(axis=1)  # drop each site paired with itself
    if other.any():
        return f"{ERROR_INVALID}: atoms {distances[other].min():.3f} A apart < {MIN_INTERATOMIC_DISTANCE} A"
    return None


def too_dense(structure: Structure) -> str | None:
    """Why a (valid) structure is not relaxed: denser than MIN_RELAX_VOLUME_PER_ATOM, or None. Such a row is a
    failed relaxation, so it counts against the metastable rate rather than leaving it."""
    per_atom = structure.volume / len(structure)
    if per_atom < MIN_RELAX_VOLUME_PER_ATOM:
        return f"{ERROR_TOO_DENSE}: {per_atom:.3g} A^3 per atom < {MIN_RELAX_VOLUME_PER_ATOM:g}"
    return None


def exploded(volume_ratio: float, energy: float, steps: int) -> str | None:
    """Why a relaxation has blown up after `steps` steps (cell volume off by 10x, energy not finite), or None."""
    if not 1 / MAX_VOLUME_CHANGE < volume_ratio < MAX_VOLUME_CHANGE:
        return f"cell volume changed by a factor {volume_ratio:.3g} after {steps} steps"
    if not math.isfinite(energy):
        return f"energy is not finite after {steps} steps"
    return None


def mp2020_energy(structure: Structure, energy: float) -> float:
    """A raw GGA(+U) total energy with the MP2020 corrections an MP relaxation of `structure` would get.

    The +U values are those MPRelaxSet assigns (keyed by the most electronegative element), so the
    entry is labelled GGA+U exactly when MP would have run it with U.
    """
    from pymatgen.entries.compatibility import CompatibilityError, MaterialsProject2020Compatibility
    from pymatgen.entries.computed_entries import ComputedStructureEntry
    from pymatgen.io.vasp.sets import MPRelaxSet

    elements = sorted(structure.composition.elements, key=lambda el: el.X)
    u_values = MPRelaxSet.CONFIG["INCAR"]["LDAUU"].get(elements[-1].symbol, {})
    hubbards = {el.symbol: float(u_values[el.symbol]) for el in elements if u_values.get(el.symbol, 0)}
    entry = ComputedStructureEntry(
        structure, energy, parameters={"run_type": "GGA+U" if hubbards else "GGA", "hubbards": hubbards}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            processed = MaterialsProject2020Compatibility(check_potcar=False).process_entry(entry, clean=True)
        except CompatibilityError as err:
            raise ValueError(str(err)) from None
    if processed is None:
        raise ValueError(f"{structure.composition.reduced_formula} is not covered by the MP2020 scheme")
    return float(processed.energy)


class _Timeout(Exception):
    pass


class _Exploded(Exception):
    pass


@dataclass
class _Progress:
    steps: int = 0


def _describe(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


@contextlib.contextmanager
def _hard_deadline(seconds: float | None) -> Iterator[None]:
    """Interrupt a step that overruns `seconds` by far (SIGALRM; only in a main thread on Unix)."""
    usable = (seconds is not None and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread())
    if not usable:
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class Backend(ABC):
    """A machine-learned potential that relaxes structures; serial subclasses only supply the ASE calculator."""

    name: ClassVar[str]
    #: Whether the potential predicts energies that already include the MP2020 corrections.
    mp2020_corrected: ClassVar[bool]
    #: Whether `relax_many` relaxes its structures together (then the pipeline hands it batches, not singles).
    batched: ClassVar[bool] = False

    def __init__(self, config: RelaxConfig | None = None) -> None:
        self.config = config or RelaxConfig()
        self.check(self.config)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.calculator = self._load()

    @abstractmethod
    def _load(self) -> Any:
        """Load the model once and return an ASE calculator."""

    @property
    @abstractmethod
    def version(self) -> str:
        """Package and model version, for the run summary."""

    @classmethod
    def check(cls, config: RelaxConfig) -> None:
        """Refuse (ValueError) settings this backend cannot honour, before a run starts or its model loads."""
        return None

    def relax_many(self, structures: list[Structure]) -> list[Relaxation]:
        """Relax each structure, in order; a batched backend relaxes them together."""
        return [self.relax(structure) for structure in structures]

    def relax(self, structure: Structure) -> Relaxation:
        """Relax positions and cell together; the energy comes back MP2020-compatible, or the row carries an error."""
        start = time.perf_counter()
        problem = check_structure(structure) or too_dense(structure)
        if problem:
            return Relaxation(None, None, 0, False, time.perf_counter() - start, problem)
        progress = _Progress()
        try:
            with warnings.catch_warnings(), _hard_deadline(self._hard_limit()):
                warnings.simplefilter("ignore")
                atoms, converged = self._optimize(structure, start, progress)
                energy = float(atoms.get_potential_energy())
        except _Timeout:
            error = f"{ERROR_TIMEOUT}: not relaxed after {self.config.timeout:g} s"
        except _Exploded as err:
            error = f"{ERROR_EXPLODED}: {err}"
        except Exception as err:  # a potential can fail in many ways on a strange structure
            error = f"{ERROR_FAILED}: {_describe(err)}"
        else:
            error = None
        steps = progress.steps
        if error:
            return Relaxation(None, None, steps, False, time.perf_counter() - start, error)
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms.calc = None
        return self._placed(AseAtomsAdaptor.get_structure(atoms), energy, steps, converged,
                            time.perf_counter() - start)

    def _placed(self, relaxed: Structure, energy: float, steps: int, converged: bool, seconds: float) -> Relaxation:
        """The row of a finished relaxation: checked once more, its raw energy put on the MP2020 scale."""
        problem = check_structure(relaxed) if math.isfinite(energy) else "energy is not finite"
        if problem:
            return Relaxation(None, None, steps, False, seconds, f"{ERROR_EXPLODED}: {problem}")
        if not self.mp2020_corrected:
            try:
                energy = mp2020_energy(relaxed, energy)
            except ValueError as err:
                return Relaxation(relaxed, None, steps, converged, seconds, f"{ERROR_MP2020}: {err}")
        return Relaxation(relaxed, energy, steps, converged, seconds)

    def _hard_limit(self) -> float | None:
        return None if self.config.timeout is None else self.config.timeout + HARD_TIMEOUT_GRACE_S

    def _optimize(self, structure: Structure, start: float, progress: _Progress) -> tuple[Any, bool]:
        """Run the optimizer step by step, stopping on convergence, the step cap, the deadline or an explosion."""
        from ase.filters import FrechetCellFilter
        from ase.optimize import BFGS, FIRE
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = AseAtomsAdaptor.get_atoms(structure)
        atoms.calc = self.calculator
        volume0 = atoms.get_volume()
        target = FrechetCellFilter(atoms) if self.config.relax_cell else atoms
        optimizer = (FIRE if self.config.optimizer == "FIRE" else BFGS)(target, logfile=None)
        converged = False
        for converged in optimizer.irun(fmax=self.config.fmax, steps=self.config.max_steps):  # noqa: B007 (last value)
            steps = progress.steps = optimizer.nsteps
            problem = exploded(atoms.get_volume() / volume0, atoms.get_potential_energy(), steps)
            if problem:
                raise _Exploded(problem)
            if self.config.timeout is not None and time.perf_counter() - start > self.config.timeout:
                raise _Timeout
        return atoms, bool(converged)


class CHGNetBackend(Backend):
    """CHGNet 0.3.0 (weights inside the chgnet package); its energies include the MP2020 corrections."""

    name = "chgnet"
    mp2020_corrected = True

    def _load(self) -> Any:
        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        return CHGNetCalculator(CHGNet.load(verbose=False, use_device="cpu"), use_device="cpu")

    @property
    def version(self) -> str:
        import chgnet

        return f"chgnet {chgnet.__version__}, model {self.calculator.model.version}"


class SevenNetBackend(Backend):
    """SevenNet-0 (weights inside the sevenn package); trained on raw energies, so MP2020 is applied."""

    name = "sevennet"
    mp2020_corrected = False
    model = "7net-0"

    def _load(self) -> Any:
        from sevenn.calculator import SevenNetCalculator

        return SevenNetCalculator(self.model, device="cpu")

    @property
    def version(self) -> str:
        import sevenn

        return f"sevenn {sevenn.__version__}, model {self.model}"


class M3GNetBackend(Backend):
    """M3GNet through matgl (the paper's potential); its weights download from a hub, so it needs internet."""

    name = "m3gnet"
    mp2020_corrected = False

    def _load(self) -> Any:
        try:
            import matgl
            from matgl.ext.ase import PESCalculator
        except ImportError:
            raise BackendError("the m3gnet backend needs matgl: pip install 'crystext[online]'") from None
        try:
            return PESCalculator(matgl.load_model(M3GNET_MODEL))
        except Exception as err:  # offline, the hub download fails with assorted network errors
            raise BackendError(
                f"could not load {M3GNET_MODEL} (matgl downloads it on first use; no internet?): {err}"
            ) from None

    @property
    def version(self) -> str:
        import matgl

        return f"matgl {matgl.__version__}, model {M3GNET_MODEL}"


class SevenNetBatchedBackend(Backend):
    """SevenNet-0 relaxing whole batches in torch-sim (crystext[batched]), on the GPU when there is one."""

    name = "sevennet-batched"
    mp2020_corrected = False
    batched = True
    model = SevenNetBackend.model

    @classmethod
    def check(cls, config: RelaxConfig) -> None:
        if config.timeout is not None:
            raise ValueError(f"timeout is not supported by the {cls.name} backend, which relaxes a batch as one: "
                             "use the step budget (no --timeout, no --budget paper)")
        if config.optimizer != "FIRE":
            raise ValueError(f"optimizer {config.optimizer} is not available in the {cls.name} backend: use FIRE")

    def _load(self) -> Any:
        from crystext.stability import torchsim

        return torchsim.load_sevennet(self.model)

    @property
    def version(self) -> str:
        from crystext.stability import torchsim

        return f"{torchsim.versions()}, model {self.model} on {self.calculator.device}"

    def relax(self, structure: Structure) -> Relaxation:
        return self.relax_many([structure])[0]

    def relax_many(self, structures: list[Structure]) -> list[Relaxation]:
        """Relax the valid structures as one batch; one that breaks the batch is found by relaxing them singly."""
        from crystext.stability import torchsim

        problems = [check_structure(s) or too_dense(s) or torchsim.unknown_elements(self.calculator, s)
                    for s in structures]
        valid = [structure for structure, problem in zip(structures, problems) if problem is None]
        relaxed = iter(self._relax_batch(valid))
        return [Relaxation(None, None, 0, False, 0.0, problem) if problem else next(relaxed) for problem in problems]

    def _relax_batch(self, structures: list[Structure]) -> list[Relaxation]:
        from crystext.stability import torchsim

        if not structures:
            return []
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = torchsim.relax_batch(self.calculator, structures, self.config)
        except Exception as err:  # a potential can fail in many ways on a strange structure
            if len(structures) > 1:
                return [relaxation for structure in structures for relaxation in self._relax_batch([structure])]
            return [Relaxation(None, None, 0, False, time.perf_counter() - start, f"{ERROR_FAILED}: {_describe(err)}")]
        return [self._placed(r.structure, r.energy, r.steps, r.converged, r.seconds) if r.ok else r for r in raw]


#: Backends by name; the first is the default.
BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls for cls in (CHGNetBackend, SevenNetBackend, M3GNetBackend, SevenNetBatchedBackend)
}


def load_backend(name: str, config: RelaxConfig | None = None) -> Backend:
    """Load a backend by name (chgnet, sevennet, m3gnet, sevennet-batched), with its model, ready to relax."""
    try:
        cls = BACKENDS[name]
    except KeyError:
        raise BackendError(f"unknown backend '{name}' (known: {', '.join(BACKENDS)})") from None
    return cls(config)
