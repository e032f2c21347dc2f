"""Nothing lost on a kill: real `crystext` processes are SIGKILLed at seeded random moments, then resumed.

After the resume: exactly the wanted rows, every id once, no torn row, the same rows as an uninterrupted run,
and no damaged cache entry ever used. The killed runs are subprocesses (`python -m crystext.cli`); the clean
runs and the resumes run in this process through `crystext.cli.main`, the same code path without the import
time. Every process computes on one thread (OMP_NUM_THREADS=1 and the `one_torch_thread` fixture): on a busy
machine more threads only fight over the cores, and one thread everywhere keeps the numbers identical.
The damaged cache entries are planted by hand: the cache is written through a rename, so a kill cannot tear one.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pymatgen.core import Composition, Structure

from crystext.cli import main
from crystext.evaluate.profiles import Profiles, profile_file

pytestmark = pytest.mark.usefixtures("one_torch_thread", "one_blas_thread")

SAMPLE_COLUMNS = ["id", "mode", "conditions", "raw_text", "cif", "error"]
STABILITY_COLUMNS = [
    "id", "energy", "energy_per_atom", "e_form_per_atom", "e_above_hull", "decomposition",
    "relaxed_cif", "steps", "converged", "seconds", "error",
]
ELEMENTAL_REFS = "mp_hull_ref/matbench_discovery/2023-02-07-mp-elemental-reference-entries.json.gz"
#: A sampler's error of two lines: in the stability CSV it ends up in the last column, newline and all.
TWO_LINE_ERROR = "CrystalTextError: line 3: expected three lattice angles\ngot 2"
#: Structures wanted, batch size, seed of the sampling runs: four batches, so a kill lands between two of them.
N, BATCH, SEED = 12, 3, 7
SAMPLE_ARGS = ["-n", str(N), "--batch-size", str(BATCH), "--max-atoms", "4", "--seed", str(SEED)]


# --------------------------------------------------------------------------- processes and files


@pytest.fixture(scope="module")
def one_blas_thread():
    """One BLAS/OpenMP thread in this process too: the relaxations' numpy work, two threads fighting a busy
    machine's cores, ran ten times slower."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn, which matminer needs

    with threadpool_limits(1):
        yield


def environment(cache: Path) -> dict[str, str]:
    """The environment of a killed subprocess: its own cache folder, one thread."""
    return dict(os.environ, CRYSTEXT_CACHE_DIR=str(cache), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                PYTHONUNBUFFERED="1")


def start(args: list[str], cache: Path, log: Path) -> subprocess.Popen:
    """`python -m crystext.cli ARGS` in the background, in a process group of its own (with any workers it
    starts), stdout and stderr to `log`."""
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, "-m", "crystext.cli", *args], stdout=handle,
                                stderr=subprocess.STDOUT, env=environment(cache), start_new_session=True)


class Killer(threading.Thread):
    """SIGKILLs a process as soon as `ready()` holds, polling every 5 ms in the background (so that this process
    can meanwhile run the clean run to compare with); `check()` then says it was killed, and at that moment."""

    def __init__(self, process: subprocess.Popen, ready: Callable[[], bool], log: Path, timeout: float = 300.0):
        super().__init__(daemon=True)
        self.process, self.ready, self.log, self.timeout = process, ready, log, timeout
        self.code: int | None = None
        self.reached = False
        self.failure: BaseException | None = None
        self.start()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while self.process.poll() is None and time.monotonic() < deadline and not self.reached:
                self.reached = self.ready()
                time.sleep(0.005)
        except BaseException as err:  # reported by check()
            self.failure = err
        finally:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.code = self.process.wait()
            with contextlib.suppress(ProcessLookupError):  # its workers (a Dask cluster's) die with it
                os.killpg(self.process.pid, signal.SIGKILL)

    def check(self, may_finish: bool = False) -> bool:
        """True if killed at the moment `ready()` named; False if it finished first (only when `may_finish`)."""
        self.join()
        if self.failure is not None:
            raise self.failure
        log = self.log.read_text(errors="replace")[-3000:]
        if may_finish and self.code == 0 and not self.reached:
            return False
        assert self.code == -signal.SIGKILL, f"ended with {self.code} before it could be killed:\n{log}"
        assert self.reached, f"killed after {self.timeout} s without reaching the moment to kill:\n{log}"
        return True


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]], str]:
    """(header, rows, raw text) of a CSV, read whole so a torn tail shows."""
    text = path.read_bytes().decode("utf-8") if path.is_file() else ""  # bytes: keep the \r\n row ends
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return list(reader.fieldnames or []), list(reader), text


def whole_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a file another process may be appending to: those before a torn tail, if any."""
    _, rows, text = read_rows(path)
    if rows and not text.endswith("\n"):
        rows = rows[:-1]
    return [r for r in rows if None not in r and None not in r.values()]


def assert_whole(path: Path, columns: list[str]) -> list[dict[str, str]]:
    """The rows of a finished log, after checking the header and that every row is whole."""
    header, rows, text = read_rows(path)
    assert header == columns
    assert text.endswith("\r\n"), "torn last row"
    for row in rows:
        assert None not in row and None not in row.values(), f"row of the wrong width: {row}"
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)), f"duplicate ids: {ids}"
    return rows


# --------------------------------------------------------------------------- 1. crystext sample


@pytest.fixture(scope="module")
def clean_samples(model_dir: Path, tmp_path_factory) -> list[dict[str, str]]:
    """The rows of an uninterrupted run."""
    out = tmp_path_factory.mktemp("clean") / "samples.csv"
    assert main(["sample", "--model", str(model_dir), *SAMPLE_ARGS, "-o", str(out)]) == 0
    rows = assert_whole(out, SAMPLE_COLUMNS)
    assert [r["id"] for r in rows] == [f"s{i:07d}" for i in range(N)]
    assert all(r["cif"] and r["raw_text"] and not r["error"] for r in rows)  # constrained: every attempt parses
    return rows


def resume_samples(model_dir: Path, out: Path) -> list[dict[str, str]]:
    assert main(["sample", "--model", str(model_dir), *SAMPLE_ARGS, "-o", str(out), "--resume"]) == 0
    rows = assert_whole(out, SAMPLE_COLUMNS)
    assert [r["id"] for r in rows] == [f"s{i:07d}" for i in range(len(rows))]
    assert sum(1 for r in rows if r["cif"]) == N and rows[-1]["cif"]
    return rows


def test_sample_killed_twice_resumes_to_the_uninterrupted_rows(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    """Killed as soon as the file grows past its header (while batches are written); resumed and killed again at
    a seeded random moment after the resumed run's first batch; resumed to the end."""
    monkeypatch.setenv("CRYSTEXT_CACHE_DIR", str(tmp_path / "cache"))
    out, log = tmp_path / "samples.csv", tmp_path / "log.txt"
    command = ["sample", "--model", str(model_dir), *SAMPLE_ARGS, "-o", str(out)]
    header_size = len(",".join(SAMPLE_COLUMNS)) + 2
    grown = partial(lambda size: out.is_file() and out.stat().st_size > size, header_size)
    killer = Killer(start(command, tmp_path / "cache", log), grown, log)
    clean_samples = request.getfixturevalue("clean_samples")  # meanwhile
    killer.check()
    first = whole_rows(out)
    assert 1 <= len(first) < N
    assert first == clean_samples[: len(first)]  # what was written before the kill is the clean run's

    delay = random.Random(1).uniform(0.0, 1.0)
    grown = partial(grown.func, out.stat().st_size)
    killer = Killer(start([*command, "--resume"], tmp_path / "cache", log), partial(at_random_moment, grown, delay, []),
                    log)
    killer.check(may_finish=True)  # the random moment may fall after the end
    second = whole_rows(out)
    assert len(first) < len(second) and second == clean_samples[: len(second)]
    assert resume_samples(model_dir, out) == clean_samples


def at_random_moment(started: Callable[[], bool], delay: float, since: list[float]) -> bool:
    """Whether `delay` seconds have passed since `started()` first held."""
    if not since and started():
        since.append(time.monotonic())
    return bool(since) and time.monotonic() >= since[0] + delay


@pytest.mark.parametrize("row", [BATCH, BATCH + 1])
def test_sample_torn_row_is_dropped_and_resampled(
    model_dir: Path, clean_samples: list[dict[str, str]], tmp_path: Path, row: int
) -> None:
    """A write cut off mid-row (at a seeded random byte: often inside the multi-line raw_text or cif) is dropped
    and that attempt redone.

    Torn in the first row of a batch, the resume redoes the batch: the clean run's rows. Torn in a later row,
    the rows before it are kept, and the rest are sampled afresh from there: a batch's seed is that of its first
    attempt, so they need not be the clean run's (one write per batch makes such a tear unlikely from a kill).
    """
    out = tmp_path / "samples.csv"
    lines = [",".join(SAMPLE_COLUMNS) + "\r\n", *(_row_text(r) for r in clean_samples)]
    cut = random.Random(row).randrange(1, len(lines[row + 1]) - 1)
    out.write_text("".join(lines[: row + 1]) + lines[row + 1][:cut], encoding="utf-8", newline="")
    rows = resume_samples(model_dir, out)
    assert len(rows) == N
    if row % BATCH == 0:
        assert rows == clean_samples
    else:
        assert rows[:row] == clean_samples[:row]


def _row_text(row: dict[str, str], columns: list[str] = SAMPLE_COLUMNS) -> str:
    """One row as `CsvLog` writes it."""
    buffer = io.StringIO()
    csv.DictWriter(buffer, columns).writerow(row)
    return buffer.getvalue()


# --------------------------------------------------------------------------- 2. crystext stability


@pytest.fixture(scope="module")
def stability_inputs(shared_data: Path, tmp_path_factory) -> tuple[Path, list[str]]:
    """Six rattled 2- and 4-atom MP-20 cells (0 to 15 optimizer steps each) and a row that never parsed, as a
    samples CSV; and the hull arguments: the MP-20 formation energies of their chemical systems."""
    folder = tmp_path_factory.mktemp("stability")
    frame = pd.concat(
        pd.read_csv(shared_data / "mp_20" / f"{split}.csv",
                    usecols=["material_id", "pretty_formula", "formation_energy_per_atom", "cif"])
        for split in ("test", "val")
    ).set_index("material_id")
    picked = frame.loc[["mp-110", "mp-10760", "mp-127", "mp-1094982", "mp-51", "mp-23703"]]
    rng = np.random.default_rng(0)
    rows = []
    for i, cif in enumerate(picked["cif"]):
        structure = Structure.from_str(cif, fmt="cif").get_primitive_structure()
        structure.make_supercell([2, 1, 1])
        coords = structure.cart_coords + rng.normal(0, 0.1, (len(structure), 3))
        rattled = Structure(structure.lattice, structure.species, coords, coords_are_cartesian=True)
        rows.append({"id": f"s{i}", "cif": rattled.to(fmt="cif"), "error": ""})
    rows.append({"id": "s6", "cif": "", "error": TWO_LINE_ERROR})
    samples = folder / "samples.csv"
    pd.DataFrame(rows).assign(mode="unconditional", conditions="{}", raw_text="")[SAMPLE_COLUMNS].to_csv(
        samples, index=False)
    systems = [frozenset(Composition(f).chemical_system.split("-")) for f in picked["pretty_formula"]]
    keep = [any(frozenset(Composition(f).chemical_system.split("-")) <= s for s in systems)
            for f in frame["pretty_formula"]]
    table = folder / "formation_energies.csv"
    frame.loc[keep, ["pretty_formula", "formation_energy_per_atom"]].to_csv(table, index=False)
    hull = ["--formation-energies", str(table), "--elemental-refs", str(shared_data / ELEMENTAL_REFS)]
    return samples, ["--workers", "1", "--timeout", "600", *hull]


@pytest.mark.parametrize("where", [[], ["--scheduler", "local", "--chunk-size", "2"]], ids=["local", "dask"])
def test_stability_killed_after_its_first_relaxation_resumes_to_the_uninterrupted_rows(
    stability_inputs: tuple[Path, list[str]], where: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed as soon as a relaxed row is in the file (on Dask: the first chunk's, the next chunk in flight);
    the resume relaxes the rest, each id once, with the energies of an uninterrupted run."""
    samples, options = stability_inputs
    options = [*options, *where]
    cache = tmp_path / "cache"
    monkeypatch.setenv("CRYSTEXT_CACHE_DIR", str(cache))
    out, log = tmp_path / "out.csv", tmp_path / "log.txt"
    process = start(["stability", str(samples), "-o", str(out), *options], cache, log)
    killer = Killer(process, lambda: out.is_file() and any(r["energy"] for r in whole_rows(out)), log)

    clean = tmp_path / "clean.csv"  # meanwhile, the uninterrupted run (the same hull cache: built by both at once)
    assert main(["stability", str(samples), "-o", str(clean), *options]) == 0
    expected = {r["id"]: r for r in assert_whole(clean, STABILITY_COLUMNS)}
    ids = sorted(f"s{i}" for i in range(7))
    assert sorted(expected) == ids
    assert all(expected[f"s{i}"]["e_above_hull"] for i in range(6))
    assert expected["s6"]["error"] == f"unparsed: {TWO_LINE_ERROR}"

    killer.check()
    before = whole_rows(out)
    assert 1 <= sum(1 for r in before if r["energy"]) < 6  # killed with relaxations still to do
    assert not (tmp_path / "out.summary.json").exists()

    assert main(["stability", str(samples), "-o", str(out), "--resume", *options]) == 0
    rows = assert_whole(out, STABILITY_COLUMNS)
    assert sorted(r["id"] for r in rows) == ids  # every id exactly once
    assert rows[: len(before)] == before  # the rows written before the kill are kept as they were
    for row in rows:
        want = expected[row["id"]]
        assert row["error"] == want["error"] and row["decomposition"] == want["decomposition"]
        for column in ("energy", "e_form_per_atom", "e_above_hull"):
            if want[column]:
                assert float(row[column]) == pytest.approx(float(want[column]), abs=1e-6), (row["id"], column)
            else:
                assert row[column] == ""
    summary = json.loads((tmp_path / "out.summary.json").read_text())
    assert summary["samples"] == 7 and summary["valid"] == 6
    assert summary["metastable"] == json.loads((tmp_path / "clean.summary.json").read_text())["metastable"]

    # a write torn just after the newline inside the last column of the unparsed row: a row of the right width,
    # cut short all the same; the resume must redo it, not keep it
    lines = [",".join(STABILITY_COLUMNS) + "\r\n", *(_row_text(r, STABILITY_COLUMNS) for r in rows)]
    unparsed = next(line for line in lines if line.startswith("s6,"))
    assert unparsed.endswith('\ngot 2"\r\n')  # written whole, quoted, by the runs above
    torn = tmp_path / "torn.csv"
    others = [line for line in lines if line is not unparsed]
    torn.write_text("".join(others) + unparsed[: unparsed.index("\n") + 1], encoding="utf-8", newline="")
    assert main(["stability", str(samples), "-o", str(torn), "--resume", *options]) == 0
    redone = {r["id"]: r for r in assert_whole(torn, STABILITY_COLUMNS)}
    assert sorted(redone) == ids and redone["s6"]["error"] == expected["s6"]["error"]


# --------------------------------------------------------------------------- 3. evaluate's fingerprint cache


def damaged(good: bytes) -> dict[str, bytes]:
    """What a cache file can hold after a crash or a disk fault: cut short, empty, overwritten, not an npz."""
    flipped = bytearray(good)
    for i in range(len(good) // 3, len(good) // 3 + 64):
        flipped[i] ^= 0xFF
    return {"truncated": good[: len(good) // 2], "empty": b"", "flipped": bytes(flipped), "text": b"not a cache\n"}


def test_evaluate_killed_mid_profiling_never_uses_a_damaged_cache(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed `crystext evaluate` leaves no entry or a whole one; a damaged entry (planted: a kill cannot tear
    one, it is written through a rename) is never used but recomputed, and the metrics are the clean run's."""
    reference = tmp_path / "reference.csv"
    pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=4).to_csv(reference, index=False)
    val = pd.read_csv(shared_data / "mp_20" / "val.csv", nrows=3)
    samples = tmp_path / "samples.csv"
    pd.DataFrame({"id": [f"s{i}" for i in range(3)], "mode": "unconditional", "conditions": "{}", "raw_text": "",
                  "cif": val["cif"], "error": ""})[SAMPLE_COLUMNS].to_csv(samples, index=False)
    args = ["evaluate", str(samples), "--reference", str(reference), "--jobs", "1", "--no-matcher"]

    # killed at a seeded random moment after it starts fingerprinting the reference
    cache, log = tmp_path / "cache", tmp_path / "log.txt"
    killer = Killer(start([*args, "-o", str(tmp_path / "killed")], cache, log),
                    partial(at_random_moment, lambda: "fingerprinting reference.csv" in log.read_text(errors="replace"),
                            random.Random(3).uniform(0.0, 0.8), []), log)

    monkeypatch.setenv("CRYSTEXT_CACHE_DIR", str(tmp_path / "clean_cache"))  # meanwhile, the clean run
    assert main([*args, "-o", str(tmp_path / "clean"), "--quiet"]) == 0
    clean = json.loads((tmp_path / "clean" / "metrics.json").read_text())
    [entry] = (tmp_path / "clean_cache" / "fingerprints").iterdir()  # the reference's (samples are not cached)
    assert entry.suffix == ".npz" and len(entry.stem) == 32  # a content and settings digest, as cache_path names it
    good, good_bytes = Profiles.from_npz(entry), entry.read_bytes()
    assert len(good) == 4 and good.table["fp_ok"].all()

    killer.check()
    monkeypatch.setenv("CRYSTEXT_CACHE_DIR", str(cache))
    key = cache / "fingerprints" / entry.name  # the name depends on the file's content, not on where it is
    for path in (cache / "fingerprints").glob("[!.]*"):  # whatever it left under a cache name is whole
        assert path == key
        np.testing.assert_array_equal(Profiles.from_npz(path).struct_fp, good.struct_fp)

    # then a damaged entry where the cache looks: never used, recomputed, replaced by a whole one
    for kind, content in damaged(good_bytes).items():
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_bytes(content)
        if kind == "truncated":  # the whole command: the clean run's metrics
            out = tmp_path / f"after_{kind}"
            assert main([*args, "-o", str(out), "--quiet"]) == 0, kind
            document = json.loads((out / "metrics.json").read_text())
            assert document["inputs"]["reference"]["profiles_from_cache"] is False
            assert document["metrics"] == clean["metrics"], kind
            assert document["histograms"] == clean["histograms"], kind
        else:
            profiles = profile_file(reference, jobs=1, progress=False)
            assert not profiles.from_cache, kind
            pd.testing.assert_frame_equal(profiles.table.drop(columns="fp_seconds"),
                                          good.table.drop(columns="fp_seconds"))
        rebuilt = Profiles.from_npz(key)
        np.testing.assert_array_equal(rebuilt.struct_fp, good.struct_fp)
        np.testing.assert_array_equal(rebuilt.comp_fp, good.comp_fp)
    assert profile_file(reference, jobs=1, progress=False).from_cache  # and the rebuilt entry is used
