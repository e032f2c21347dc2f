"""The stability run end to end: samples CSV in, one row per sample out, resume, rates, S.U.N., the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Lattice, Structure

from crystext.cli import main
from crystext.data import Dataset, Record
from crystext.errors import OutputExistsError
from crystext.stability import (
    OUTPUT_COLUMNS,
    RelaxConfig,
    StabilityConfig,
    from_formation_energies,
    read_samples,
    relax_and_place,
    summary_path,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ELEMENTAL_REFS = "mp_hull_ref/matbench_discovery/2023-02-07-mp-elemental-reference-entries.json.gz"
NO_TIMEOUT = RelaxConfig(timeout=None)  # the machine may be busy; timeouts are tested in test_stability_relax


@pytest.fixture(scope="module")
def rock_salt(shared_data: Path) -> Structure:
    frame = pd.read_csv(shared_data / "mp_20" / "val.csv")
    cif = frame.loc[frame["material_id"] == "mp-22862", "cif"].item()
    return Structure.from_str(cif, fmt="cif").get_primitive_structure()


@pytest.fixture()
def reference(shared_data: Path, tmp_path: Path):
    """The MP-20 Na-Cl phases (all splits) with the MP2020 elemental references."""
    frame = pd.concat(pd.read_csv(shared_data / "mp_20" / f"{s}.csv") for s in ("train", "val", "test"))
    keep = [set(Composition(f).chemical_system.split("-")) <= {"Na", "Cl"} for f in frame["pretty_formula"]]
    table = tmp_path / "na_cl.csv"
    frame.loc[keep, ["pretty_formula", "formation_energy_per_atom"]].to_csv(table, index=False)
    return from_formation_energies([table], shared_data / ELEMENTAL_REFS)


@pytest.fixture()
def samples_csv(tmp_path: Path, rock_salt: Structure) -> Path:
    """A `crystext sample` CSV: rock salt, the same atoms 8 A apart, overlapping atoms, and text that never parsed."""
    apart = Structure(Lattice.cubic(16.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    overlapping = Structure(Lattice.cubic(4.0), ["Na", "Cl"], [[0, 0, 0], [0.05, 0, 0]])
    rows = [
        ("s0", rock_salt.to(fmt="cif"), ""),
        ("s1", apart.to(fmt="cif"), ""),
        ("s2", overlapping.to(fmt="cif"), ""),
        ("s3", "", "CrystalTextError: line 3: expected three lattice angles"),
    ]
    frame = pd.DataFrame(
        [{"id": rid, "mode": "unconditional", "conditions": "{}", "raw_text": "...", "cif": cif, "error": err}
         for rid, cif, err in rows]
    )
    path = tmp_path / "samples.csv"
    frame.to_csv(path, index=False)
    return path


def test_rows_rates_and_resume(samples_csv: Path, reference, tmp_path: Path) -> None:
    samples = read_samples(samples_csv)
    assert [r.id for r in samples.records] == ["s0", "s1", "s2"]
    assert samples.skipped == [("s3", "CrystalTextError: line 3: expected three lattice angles")]
    output = tmp_path / "out.csv"
    config = StabilityConfig(relax=NO_TIMEOUT, workers=1, progress=False)
    summary = relax_and_place(samples, reference, output, config)

    rows = pd.read_csv(output, dtype={"id": str}, keep_default_na=False).set_index("id")
    assert tuple(rows.reset_index().columns) == OUTPUT_COLUMNS
    assert sorted(rows.index) == ["s0", "s1", "s2", "s3"]
    assert abs(float(rows.loc["s0", "e_above_hull"])) < 0.05  # rock salt: on the hull
    assert rows.loc["s0", "decomposition"] == "NaCl:1.000"
    assert float(rows.loc["s0", "e_form_per_atom"]) == pytest.approx(-2.11, abs=0.05)
    assert float(rows.loc["s1", "e_above_hull"]) > 1.0  # isolated ions: far above
    assert rows.loc["s2", "error"] == "invalid structure: atoms 0.200 A apart < 0.5 A"
    assert rows.loc["s3", "error"] == "unparsed: CrystalTextError: line 3: expected three lattice angles"
    relaxed = Structure.from_str(rows.loc["s0", "relaxed_cif"], fmt="cif")
    assert relaxed.composition.reduced_formula == "NaCl"

    assert summary["samples"] == 4 and summary["valid"] == 2 and summary["placed_on_hull"] == 2
    assert summary["metastable"]["count"] == 1
    assert summary["metastable"]["rate_all"] == 0.25 and summary["metastable"]["rate_valid"] == 0.5
    assert summary["errors"] == {"invalid structure": 1, "unparsed": 1}
    assert summary["backend"]["name"] == "chgnet" and not summary["backend"]["mp2020_corrections_applied"]
    assert json.loads(summary_path(output).read_text())["metastable"] == summary["metastable"]

    with pytest.raises(OutputExistsError, match=r"out\.csv exists: pass --resume"):
        relax_and_place(samples, reference, output, config)
    lines = output.read_text().splitlines(keepends=True)
    last_start = max(i for i, line in enumerate(lines) if line.startswith(("s0,", "s1,", "s2,", "s3,")))
    torn_id = lines[last_start].split(",")[0]
    output.write_text("".join(lines[:last_start]) + lines[last_start][:10])  # a row cut short by a crash
    resumed = relax_and_place(samples, reference, output, StabilityConfig(relax=NO_TIMEOUT, workers=1,
                                                                          resume=True, progress=False))
    again = pd.read_csv(output, dtype={"id": str}, keep_default_na=False)
    assert sorted(again["id"]) == ["s0", "s1", "s2", "s3"] and again["id"].iloc[-1] == torn_id
    assert resumed["metastable"] == summary["metastable"]


def test_sun_needs_novelty(rock_salt: Structure, reference, tmp_path: Path) -> None:
    """Rock salt is stable-ish but not novel against a training set holding it; against KCl it is novel."""
    samples = Dataset([Record("a", rock_salt), Record("b", rock_salt.copy())])
    config = StabilityConfig(relax=NO_TIMEOUT, workers=1, progress=False)
    known = relax_and_place(samples, reference, tmp_path / "known.csv", config, Dataset([Record("t", rock_salt)]))
    assert known["sun"]["metastable"]["count"] == 0
    kcl = rock_salt.copy()
    kcl.replace_species({"Na": "K"})
    novel = relax_and_place(samples, reference, tmp_path / "novel.csv", config, Dataset([Record("t", kcl)]))
    assert novel["sun"]["metastable"]["count"] == 1  # the two samples are one structure: unique once
    assert novel["sun"]["metastable"]["rate_all"] == 0.5


def test_cli_with_worker_processes(samples_csv: Path, shared_data: Path, tmp_path: Path, reference) -> None:
    """`crystext stability` through the real entry point, two worker processes, a tables reference."""
    table = Path(reference.details["tables"][0])
    output = tmp_path / "cli.csv"
    assert main([
        "stability", str(samples_csv), "-o", str(output), "--workers", "2", "--timeout", "600",
        "--formation-energies", str(table), "--elemental-refs", str(shared_data / ELEMENTAL_REFS),
    ]) == 0
    rows = pd.read_csv(output, dtype={"id": str}, keep_default_na=False).set_index("id")
    assert sorted(rows.index) == ["s0", "s1", "s2", "s3"]
    assert abs(float(rows.loc["s0", "e_above_hull"])) < 0.05
    summary = json.loads(summary_path(output).read_text())
    assert summary["workers"] == 2 and summary["metastable"]["count"] == 1


def test_cli_without_reference_or_shipped_hull_says_what_is_wrong(
    samples_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With no hull flag the shipped hull is used (tests/test_stability_hull.py); a damaged install says so."""
    from crystext.stability import hull

    monkeypatch.delenv("CRYSTEXT_HULL_DATA", raising=False)
    monkeypatch.setattr(hull, "SHIPPED_HULL", tmp_path / "missing.json.gz")
    assert main(["stability", str(samples_csv), "-o", str(tmp_path / "out.csv")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("crystext stability: error: ") and "the shipped hull is missing or damaged" in error
    assert error.count("\n") == 1


def _rattled(structure: Structure, seed: int) -> Structure:
    """`structure` strained by a few percent and its atoms moved by about 0.05 A: a few steps from relaxed."""
    rng = np.random.default_rng(seed)
    lattice = Lattice(structure.lattice.matrix @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))))
    cart = lattice.get_cartesian_coords(structure.frac_coords) + rng.normal(0, 0.05, (len(structure), 3))
    return Structure(lattice, structure.species, cart, coords_are_cartesian=True)


def test_the_step_cap_places_the_structure_and_flags_it(rock_salt: Structure, reference, tmp_path: Path) -> None:
    """The default budget counts steps: a structure still above fmax at the cap is placed with its last
    energy, flagged not converged, and the summary gives the rates with and without it."""
    samples = Dataset([Record("capped", _rattled(rock_salt, 1)), Record("free", _rattled(rock_salt, 2))])
    config = StabilityConfig(relax=RelaxConfig(max_steps=1, fmax=1e-4), workers=1, progress=False)
    summary = relax_and_place(samples, reference, tmp_path / "out.csv", config)
    rows = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False).set_index("id")
    assert rows.loc["capped", "converged"] == "False" and rows.loc["capped", "error"] == ""
    assert int(rows.loc["capped", "steps"]) == 1 and rows.loc["capped", "e_above_hull"] != ""
    assert summary["placed_on_hull"] == 2 and summary["placed_unconverged"] == 2
    assert summary["metastable"]["rate_all"] == 1.0  # rock salt, a step from its minimum
    assert summary["metastable"]["rate_all_converged_only"] == 0.0
    assert summary["budget"] == {"name": "custom", "max_steps": 1, "timeout_s": None, "fmax": 1e-4,
                                 "optimizer": "FIRE"}


def test_a_too_dense_crystal_is_a_valid_sample_that_failed(rock_salt: Structure, reference, tmp_path: Path) -> None:
    """A cell valid by the 0.5 A rule but denser than any known crystal is not relaxed (each step would take
    minutes): its row is an error, and it stays in the denominator of the rates over valid samples."""
    dense = Structure(Lattice.cubic(1.9), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])  # 1.65 A apart, 3.43 A^3/atom
    samples = Dataset([Record("dense", dense), Record("salt", rock_salt)])
    config = StabilityConfig(relax=NO_TIMEOUT, workers=1, progress=False)
    summary = relax_and_place(samples, reference, tmp_path / "out.csv", config)
    rows = pd.read_csv(tmp_path / "out.csv", dtype=str, keep_default_na=False).set_index("id")
    assert rows.loc["dense", "error"] == "too dense: 3.43 A^3 per atom < 4"
    assert rows.loc["dense", "steps"] == "0" and rows.loc["dense", "e_above_hull"] == ""
    assert summary["valid"] == 2 and summary["errors"] == {"too dense": 1}
    assert summary["metastable"]["rate_valid"] == 0.5


def test_the_same_rows_with_one_or_two_workers(rock_salt: Structure, reference, tmp_path: Path) -> None:
    """With a budget in steps the rows depend on the crystals only, not on how the work is spread."""
    samples = Dataset([Record(f"r{i}", _rattled(rock_salt, i)) for i in range(3)])
    runs = {}
    for workers in (1, 2):
        output = tmp_path / f"w{workers}.csv"
        summary = relax_and_place(samples, reference, output, StabilityConfig(workers=workers, progress=False))
        assert summary["budget"]["name"] == "steps" and summary["budget"]["timeout_s"] is None
        runs[workers] = pd.read_csv(output, dtype={"id": str}, keep_default_na=False).set_index("id").sort_index()
    one, two = runs[1], runs[2]
    assert list(one.index) == list(two.index) == ["r0", "r1", "r2"]
    assert (one["steps"] == two["steps"]).all() and (one["converged"] == two["converged"]).all()
    np.testing.assert_allclose(one["energy_per_atom"].astype(float), two["energy_per_atom"].astype(float), atol=1e-6)
    np.testing.assert_allclose(one["e_above_hull"].astype(float), two["e_above_hull"].astype(float), atol=1e-6)


def test_a_dask_local_cluster_gives_the_local_rows(rock_salt: Structure, reference, tmp_path: Path) -> None:
    """Chunks of structures sent to a 2-worker Dask LocalCluster come back as the rows of a local run."""
    pytest.importorskip("distributed")
    samples = Dataset([Record(f"r{i}", _rattled(rock_salt, i)) for i in range(4)])
    local, cluster = tmp_path / "local.csv", tmp_path / "cluster.csv"
    relax_and_place(samples, reference, local, StabilityConfig(workers=1, progress=False))
    summary = relax_and_place(samples, reference, cluster,
                              StabilityConfig(workers=2, scheduler="local", chunk_size=3, progress=False))
    assert summary["placed_on_hull"] == 4
    one, two = (pd.read_csv(p, dtype={"id": str}, keep_default_na=False).set_index("id").sort_index()
                for p in (local, cluster))
    assert list(two.index) == ["r0", "r1", "r2", "r3"]
    assert (one["steps"] == two["steps"]).all() and (one["relaxed_cif"] == two["relaxed_cif"]).all()
    np.testing.assert_allclose(one["e_above_hull"].astype(float), two["e_above_hull"].astype(float), atol=1e-6)


def test_a_batched_backend_writes_rows_by_batch_and_resumes(rock_salt: Structure, reference, tmp_path: Path) -> None:
    """Batches of two go to the batched backend's `relax_many`; every row is written, and a resumed run relaxes
    only the structures whose rows are missing."""
    pytest.importorskip("torch_sim")
    samples = Dataset([Record(f"r{i}", _rattled(rock_salt, i)) for i in range(3)])
    output = tmp_path / "out.csv"
    config = StabilityConfig(backend="sevennet-batched", workers=1, batch_size=2, progress=False)
    summary = relax_and_place(samples, reference, output, config)
    assert summary["placed_on_hull"] == 3 and summary["backend"]["name"] == "sevennet-batched"
    rows = pd.read_csv(output, dtype={"id": str}, keep_default_na=False)
    assert list(rows["id"]) == ["r0", "r1", "r2"] and rows["converged"].all()
    assert (rows["e_above_hull"].astype(float).abs() < 0.05).all()  # rock salt: on the hull
    rows.iloc[:1].to_csv(output, index=False)  # a run stopped after its first row
    relax_and_place(samples, reference, output, replace(config, resume=True))
    again = pd.read_csv(output, dtype={"id": str}, keep_default_na=False)
    assert list(again["id"]) == ["r0", "r1", "r2"]
    np.testing.assert_allclose(again["energy"].astype(float), rows["energy"].astype(float), atol=1e-4)


def test_an_energy_below_any_known_compound_is_an_error_not_a_record(rock_salt: Structure, reference) -> None:
    """A relaxation that left the potential's domain (seen: a Gd-O cell at -109 eV/atom below the hull in a tuning
    round) is an error row, neither metastable nor stable; a real rock-salt energy is placed as usual."""
    from crystext.stability.pipeline import place
    from crystext.stability.relax import Relaxation

    real = place("real", Relaxation(rock_salt, -7.39, 20, True, 1.0), reference)  # NaCl on the hull (MP2020)
    assert abs(real["e_above_hull"]) < 0.01 and real["e_form_per_atom"] == pytest.approx(-2.11, abs=0.05)
    assert not real["error"]
    blown = place("blown", Relaxation(rock_salt, -218.0, 20, True, 1.0), reference)
    assert "e_above_hull" not in blown and blown["e_form_per_atom"] < -100
    assert blown["error"].startswith("unphysical energy: formation energy -10") and blown["error"].endswith(
        "eV/atom, below any known compound's (-5)")


def test_rows_written_before_the_floor_are_read_as_errors(tmp_path: Path) -> None:
    """Old CSVs (resumed runs, evaluate --stability) get the same treatment: below -5 eV/atom is an error, -5 itself
    is not."""
    from crystext.evaluate.inputs import read_stability
    from crystext.stability import read_rows

    path = tmp_path / "old.csv"
    rows = [{"id": "blown", "e_form_per_atom": -112.3, "e_above_hull": -109.1, "decomposition": "GdO2:1.000"},
            {"id": "edge", "e_form_per_atom": -5.0, "e_above_hull": 0.02, "decomposition": "X:1.000"}]
    pd.DataFrame(rows).reindex(columns=OUTPUT_COLUMNS).assign(converged=True, steps=3, seconds=1.0,
                                                               error="").to_csv(path, index=False)
    frame = read_rows(path).set_index("id")
    assert frame.loc["blown", "error"] == ("unphysical energy: formation energy -112.30 eV/atom, below any known "
                                           "compound's (-5)")
    assert np.isnan(frame.loc["blown", "e_above_hull"]) and frame.loc["blown", "decomposition"] == ""
    assert frame.loc["edge", "error"] == "" and frame.loc["edge", "e_above_hull"] == 0.02
    energies = read_stability(path)["e_above_hull"]
    assert np.isnan(energies["blown"]) and energies["edge"] == 0.02


def test_a_worker_ends_when_the_run_that_made_it_is_killed(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    # A run that starts one worker (watching it, or not), learns its pid, gives it a long task and dies at once.
    (tmp_path / "run.py").write_text(
        "import multiprocessing, os, sys, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from crystext.stability.pipeline import exit_with_parent\n"
        "def start(parent, watch):\n"
        "    if watch:\n"
        "        exit_with_parent(parent, 0.1)\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, multiprocessing.get_context('spawn'), initializer=start,\n"
        "                               initargs=(os.getpid(), sys.argv[1] == 'watch'))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 60)\n"
        "    os._exit(0)\n")

    def alive(pid: int) -> bool:
        try:
            return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False

    def worker_after_its_run(watch: str, wait: float) -> bool:
        out = tmp_path / f"{watch}.out"  # a file, not a pipe: an orphan holding a pipe would keep run() waiting
        with out.open("w") as stdout:
            subprocess.run([sys.executable, str(tmp_path / "run.py"), watch], stdout=stdout, stderr=subprocess.STDOUT,
                           timeout=120, check=True)
        worker = int(out.read_text().split()[0])
        deadline = time.monotonic() + wait
        while alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        if still := alive(worker):
            os.kill(worker, signal.SIGKILL)
        return still

    assert not worker_after_its_run("watch", wait=20)
    assert worker_after_its_run("none", wait=2)  # unwatched, the worker sleeps on: the failure the watch prevents
