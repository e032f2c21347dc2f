"""Batched relaxation through torch-sim: a list of structures optimised together, on the GPU when there is one.

torch-sim (PyPI `torch-sim-atomistic`, installed by `crystext[batched]`) advances many structures with one
model call per FIRE step, each structure keeping its own FIRE state and cell filter. Its 0.3.0 release (the
last for Python 3.11) wraps SevenNet but not CHGNet, so the batched backend is SevenNet-0, the model of the
serial `sevennet` backend. The optimiser (`frechet_cell_fire`: ASE's FIRE parameters on a Frechet cell filter)
and the in-flight batcher that takes each finished structure out of the batch are torch-sim's; this module
stops each structure where `Backend.relax` would (forces and cell forces below fmax, checked before each step,
or the step cap), counts its steps, and flags the ones that blow up.
"""

from __future__ import annotations

import time
from importlib.metadata import version
from typing import Any

from pymatgen.core import Structure

from crystext.stability.relax import ERROR_EXPLODED, ERROR_FAILED, BackendError, Relaxation, RelaxConfig, exploded

__all__ = ["INSTALL", "load_sevennet", "relax_batch", "unknown_elements", "versions"]

#: What installs torch-sim, for the error raised when it is missing.
INSTALL = "pip install 'crystext[batched]'"


def load_sevennet(name: str) -> Any:
    """torch-sim's wrapper around the SevenNet checkpoint `name`, on CUDA if torch sees it, else on the CPU."""
    try:
        import torch_sim  # noqa: F401
    except ImportError:
        raise BackendError(f"the batched backend needs torch-sim: {INSTALL}") from None
    import torch
    from sevenn.util import load_checkpoint
    from torch_geometric.loader.dataloader import Collater
    from torch_sim.models import sevennet as wrapper

    # torch-sim 0.3.0 imports `torch_script_type` from sevenn.calculator, which sevenn 0.13 no longer has, and so
    # also misses the `Collater` imported after it; its SevenNetModel only needs both as names in its module.
    wrapper.__dict__.setdefault("Collater", Collater)
    wrapper.__dict__.setdefault("torch_script_type", torch.jit.ScriptModule)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return wrapper.SevenNetModel(model=load_checkpoint(name).build_model(), device=device)


def unknown_elements(model: Any, structure: Structure) -> str | None:
    """Which elements of `structure` the potential was not trained on (it would fail the whole batch), or None."""
    unknown = sorted({el.symbol for el in structure.composition if el.Z not in model.model.type_map})
    return f"{ERROR_FAILED}: the potential does not know {', '.join(unknown)}" if unknown else None


def versions() -> str:
    """The torch-sim and sevenn versions, for the run summary."""
    import sevenn

    return f"torch-sim-atomistic {version('torch-sim-atomistic')}, sevenn {sevenn.__version__}"


def relax_batch(model: Any, structures: list[Structure], config: RelaxConfig) -> list[Relaxation]:
    """Relax `structures` as one batch: the potential's own (raw) energies, errors only for explosions.

    Every row's `seconds` is the batch's wall time divided among its structures.
    """
    import torch
    import torch_sim as ts

    start = time.perf_counter()
    optimizer = ts.optimizers.frechet_cell_fire if config.relax_cell else ts.optimizers.fire
    init, step = optimizer(model=model)
    is_converged = ts.generate_force_convergence_fn(config.fmax, include_cell_forces=config.relax_cell)
    state = init(ts.io.structures_to_state(structures, model.device, model.dtype))
    volume0 = torch.linalg.det(state.cell).abs().tolist()
    # All in one batch (the caller sizes it); a structure leaves when it stops, after at most max_steps steps.
    batcher = ts.InFlightAutoBatcher(model, memory_scales_with="n_atoms", max_memory_scaler=state.n_atoms,
                                     max_iterations=config.max_steps + 1, return_indices=True)
    batcher.load_states(state)
    n = len(structures)
    steps, converged = [0] * n, [False] * n
    errors: list[str | None] = [None] * n
    finished: list[Any] = []
    batch, _, indices = batcher.next_batch(None, None)
    while batch is not None:
        done = is_converged(batch)
        volumes, energies = torch.linalg.det(batch.cell).abs().tolist(), batch.energy.tolist()
        for i, ok, volume, energy in zip(indices, done.tolist(), volumes, energies):
            steps[i] = batcher.swap_attempts[i]  # the steps taken: one fewer than the convergence checks
            converged[i] = ok
            errors[i] = exploded(volume / volume0[i], energy, steps[i])
        stop = done | torch.tensor([errors[i] is not None for i in indices], device=done.device)
        batch, stopped, indices = batcher.next_batch(batch, stop)
        finished.extend(stopped)
        if batch is not None:
            batch = step(batch)
    seconds = (time.perf_counter() - start) / n
    return [
        Relaxation(None, None, steps[i], False, seconds, f"{ERROR_EXPLODED}: {errors[i]}") if errors[i]
        else Relaxation(ts.io.state_to_structures(final)[0], final.energy.item(), steps[i], converged[i], seconds)
        for i, final in enumerate(batcher.restore_original_order(finished))
    ]
