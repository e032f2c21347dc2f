"""Structure files of every kind read into a `Dataset`; `read_structures` looks at what the path is.

Each kind, how it is recognised, and its ids:

- CSV with a CIF or pymatgen Structure-JSON column: .csv, .csv.gz; ids by the rule in `crystext.data.tables`.
- one CIF: .cif (any case); the file name without its suffix.
- a folder of CIFs: a folder, its *.cif files (any case); file names without the suffix.
- a CIF archive (CrystaLLM's .tar.gz, MatterGen's generated_crystals_cif.zip): .zip, .tar, .tar.gz, .tgz,
  .tar.bz2, .tar.xz; member file names without the suffix.
- pymatgen JSON, a list of Structure dicts or a dict id -> Structure dict: .json, .json.gz; `row{i}` or the keys.
- a CDVAE / DiffCSP / FlowMM evaluation file (eval_gen.pt, ...): .pt, .pth, tensors only; `row{i}`.
- extended XYZ (MatterGen's generated_crystals.extxyz): .extxyz, .xyz; the frame's info `id` or `material_id`,
  else `frame{i}`.
- any other file ASE reads: the suffixes and names ASE knows (POSCAR, CONTCAR, .vasp, .traj, .xsf, ...); as extxyz.

A record that cannot be read is skipped with a reason naming it, and the rest continue; a file that cannot
be read at all is one `DatasetError` line naming it and what was expected. Ids are unique within a source.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pymatgen.core import Lattice, Structure
from tqdm.auto import tqdm

from crystext.data.records import Dataset, DatasetError, Record, first_line
from crystext.data.tables import (
    ID_COLUMNS,
    INDEX_COLUMN,
    STRUCTURE_COLUMNS,
    find_structure_column,
    position_id,
    read_table,
    table_ids,
)

__all__ = [
    "EXPECTED",
    "READER_VERSION",
    "read_cif",
    "read_cif_archive",
    "read_cif_dir",
    "read_csv",
    "read_extxyz",
    "read_frames",
    "read_pymatgen_json",
    "read_structures",
    "read_torch_eval",
]

#: Bump when a reader returns other records or ids for the same bytes (part of cached profiles' key).
READER_VERSION = 2
#: What `read_structures` reads, for messages.
EXPECTED = (
    "a CSV (.csv, .csv.gz) with a cif, structure or cif_string column, a .cif, a folder of .cif files, "
    "a .zip/.tar/.tar.gz/.tgz of .cif files, pymatgen JSON (.json, .json.gz), a CDVAE/DiffCSP/FlowMM .pt, "
    ".extxyz/.xyz, or a file ASE reads (POSCAR, CONTCAR, .vasp, .traj, ...)"
)
#: The tensors of a CDVAE / DiffCSP / FlowMM evaluation file (eval_gen.pt, eval_recon.pt, eval_opt.pt).
TORCH_KEYS = ("frac_coords", "atom_types", "lengths", "angles", "num_atoms")
#: An archive member larger than this is skipped rather than read into memory.
MAX_MEMBER_BYTES = 64 << 20
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")

Build = Callable[[], Structure]
Item = tuple[str, Build, Mapping[str, Any]]


class _Skip(Exception):
    """Raised by a record's builder: skip the record with exactly this reason."""


def read_structures(
    path: str | Path,
    *,
    structure_column: str | None = None,
    id_column: str | None = None,
    max_atoms: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Read the structures of whatever `path` is (see the module's table).

    `structure_column` and `id_column` name a CSV's columns (default: `crystext.data.tables`' rules).
    Structures with more than `max_atoms` atoms are skipped.
    """
    path = Path(path)
    name = path.name.lower()
    options: dict[str, Any] = {"max_atoms": max_atoms, "progress": progress}
    if name.endswith((".csv", ".csv.gz")) and not path.is_dir():
        return read_csv(path, structure_column=structure_column, id_column=id_column, **options)
    if structure_column is not None or id_column is not None:
        raise DatasetError(f"{path}: a structure or id column can only be named for a CSV file")
    if path.is_dir():
        return read_cif_dir(path, **options)
    reader = _reader_for(path)
    if reader is None:
        raise DatasetError(f"{path}: unknown kind of file (expected {EXPECTED})")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: empty file (expected {EXPECTED})")
    return reader(path, **options)


def _reader_for(path: Path) -> Callable[..., Dataset] | None:
    name = path.name.lower()
    if name.endswith(".cif"):
        return read_cif
    if name.endswith(".zip") or name.endswith(_TAR_SUFFIXES):
        return read_cif_archive
    if name.endswith((".json", ".json.gz")):
        return read_pymatgen_json
    if name.endswith((".pt", ".pth")):
        return read_torch_eval
    if name.endswith((".extxyz", ".xyz")):
        return read_extxyz
    ase_format = _ase_format(path)
    if ase_format is not None:
        return lambda p, **options: read_frames(p, ase_format, **options)
    return None


# --------------------------------------------------------------------------- CSV


def read_csv(
    path: str | Path,
    *,
    structure_column: str | None = None,
    id_column: str | None = None,
    max_atoms: int | None = None,
    progress: bool = False,
) -> Dataset:
    """Read a CSV (or .csv.gz) with one structure per row, as CDVAE's datasets and `crystext sample` lay it out.

    A cell holds a CIF, or a pymatgen Structure as JSON (starting with "{"). Ids follow `crystext.data.tables`.
    A row without a structure whose `error` column says why (a `crystext sample` CSV) is skipped with that
    text. The other columns (formation energy, band gap, space group, ...) are the record's properties.
    """
    path = Path(path)
    wanted = (*STRUCTURE_COLUMNS, *ID_COLUMNS, INDEX_COLUMN, "error", structure_column, id_column)
    frame = read_table(path, text_columns=[c for c in wanted if c is not None])
    column = find_structure_column(list(frame.columns), path, structure_column)
    ids = table_ids(frame, path, id_column)
    errors = frame["error"] if "error" in frame.columns and column != "error" else [""] * len(frame)
    unnamed = [c for c in frame.columns if str(c).startswith("Unnamed:") and c != id_column]
    properties = _row_dicts(frame.drop(columns=[column, *unnamed]))

    def items() -> Iterator[Item]:
        for rid, cell, error, props in zip(ids, frame[column], errors, properties, strict=True):
            if not cell.strip() and str(error).strip():
                yield rid, _skip(str(error).strip()), props
            else:
                yield rid, lambda cell=cell: _structure_from_cell(cell), props

    return _collect(items(), source=str(path), total=len(frame), max_atoms=max_atoms, progress=progress)


def _row_dicts(frame: Any) -> list[dict[str, Any]]:
    """One dict per row, also when no column is left (`to_dict("records")` is then empty, whatever the rows)."""
    if frame.shape[1] == 0:
        return [{} for _ in range(len(frame))]
    return frame.to_dict("records")


def _structure_from_cell(text: str) -> Structure:
    if text.lstrip().startswith("{"):
        return _structure_from_dict(json.loads(text))
    return _structure_from_cif(text)


# --------------------------------------------------------------------------- CIF files, folders, archives


def read_cif(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read one CIF file; the id is its name without the suffix."""
    path = Path(path)
    try:
        text = _text(path.read_bytes())
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable CIF ({first_line(err)})") from None
    return _collect([(path.stem, lambda: _structure_from_cif(text), {})], source=str(path), total=1,
                    max_atoms=max_atoms, progress=progress)


def read_cif_dir(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read every `*.cif` file (any case) in a folder, in name order; the id is the file name without its suffix."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder")
    files = sorted(f for f in path.iterdir() if f.suffix.lower() == ".cif" and f.is_file())
    if not files:
        raise DatasetError(f"{path}: no .cif files in this folder")
    ids = _member_ids([f.name for f in files])
    return _collect(
        ((rid, lambda f=f: _structure_from_cif(_text(f.read_bytes())), {}) for rid, f in zip(ids, files)),
        source=str(path), total=len(files), max_atoms=max_atoms, progress=progress,
    )


def read_cif_archive(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read every member ending in .cif (any case) of a .zip or tar archive, in name order.

    The id is the member's file name without its suffix (its path inside the archive where two share a name).
    Nothing is extracted to disk.
    """
    path = Path(path)
    is_zip = path.name.lower().endswith(".zip")
    kind = "zip" if is_zip else "tar"
    try:
        if is_zip:
            with zipfile.ZipFile(path) as archive:
                sizes = {i.filename: i.file_size for i in archive.infolist() if not i.is_dir()}
                return _read_members(path, kind, sizes, archive.read, max_atoms, progress)
        with tarfile.open(path, "r:*") as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile()}

            def read(name: str) -> bytes:
                handle = tar.extractfile(members[name])
                if handle is None:
                    raise ValueError("not a regular file")
                return handle.read()

            return _read_members(path, kind, {n: m.size for n, m in members.items()}, read, max_atoms, progress)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError, RuntimeError) as err:
        raise DatasetError(f"{path}: not a readable {kind} archive ({first_line(err)})") from None


def _read_members(
    path: Path, kind: str, sizes: Mapping[str, int], read: Callable[[str], bytes], max_atoms: int | None,
    progress: bool,
) -> Dataset:
    names = sorted(n for n in sizes if _is_cif_member(n))
    if not names:
        raise DatasetError(f"{path}: no .cif files in this {kind} archive")

    def build(name: str) -> Structure:
        if sizes[name] > MAX_MEMBER_BYTES:
            raise _Skip(f"{sizes[name]} bytes, more than the {MAX_MEMBER_BYTES} a CIF member may have")
        return _structure_from_cif(_text(read(name)))

    return _collect(
        ((rid, lambda n=name: build(n), {}) for rid, name in zip(_member_ids(names), names)),
        source=str(path), total=len(names), max_atoms=max_atoms, progress=progress,
    )


def _is_cif_member(name: str) -> bool:
    """A .cif member, not macOS's resource-fork copies (__MACOSX/, ._name.cif)."""
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(".cif") and not base.startswith("._") and not name.startswith("__MACOSX/")


def _member_ids(names: Sequence[str]) -> list[str]:
    """Each name's file name without its suffix; the whole path without the suffix where two would be equal."""
    stems = [n.rsplit("/", 1)[-1].rsplit(".", 1)[0] for n in names]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [n.rsplit(".", 1)[0] if s in repeated else s for n, s in zip(names, stems)]


def _text(data: bytes) -> str:
    """A text file's content (UTF-8, else Latin-1); ValueError for binary data."""
    if b"\x00" in data:
        raise ValueError("binary data, not a text file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


# --------------------------------------------------------------------------- pymatgen JSON


def read_pymatgen_json(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read pymatgen JSON (.json or .json.gz): a list of `Structure.as_dict()` dicts (ids `row{i}`), a dict
    id -> such a dict, or one Structure dict (id: the file name)."""
    path = Path(path)
    opener: Callable[..., Any] = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            content = json.load(handle)
    except (OSError, EOFError, zlib.error, UnicodeDecodeError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable JSON file ({first_line(err)})") from None
    if isinstance(content, list):
        entries = [(position_id(i), d) for i, d in enumerate(content)]
    elif isinstance(content, dict) and ("lattice" in content or "@class" in content):
        entries = [(path.name.split(".")[0], content)]
    elif isinstance(content, dict):
        entries = [(str(k), v) for k, v in content.items()]
    else:
        entries = None
    if not entries:
        found = f"an empty {type(content).__name__}" if entries == [] else f"a {type(content).__name__}"
        raise DatasetError(
            f"{path}: found {found}; expected a list of pymatgen Structure dicts or a dict id -> Structure dict"
        )
    return _collect(((rid, lambda d=d: _structure_from_dict(d), {}) for rid, d in entries),
                    source=str(path), total=len(entries), max_atoms=max_atoms, progress=progress)


def _structure_from_dict(value: Any) -> Structure:
    if isinstance(value, dict) and "structure" in value and "lattice" not in value:  # a ComputedStructureEntry
        value = value["structure"]
    if not isinstance(value, dict):
        raise ValueError(f"a {type(value).__name__}, not a pymatgen Structure dict")
    return Structure.from_dict(value)


# --------------------------------------------------------------------------- CDVAE / DiffCSP / FlowMM tensors


def read_torch_eval(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read a CDVAE / DiffCSP / FlowMM evaluation file (eval_gen.pt, eval_recon.pt, eval_opt.pt).

    The file is a dict with `frac_coords` (atoms x 3), `atom_types` (atomic numbers), `lengths` and
    `angles` (structures x 3, degrees) and `num_atoms` (structures), each possibly with a leading axis of
    evaluations, as CDVAE writes them ([1, atoms, 3]). Ids are `row{i}`, or `eval{k}-row{i}` for several
    evaluations. It is loaded with `torch.load(weights_only=True)`: tensors, numbers, strings, containers
    and argparse.Namespace (CDVAE's `eval_setting`, plain attributes) only. A file holding any other object
    (CDVAE's `input_data_batch`, a torch_geometric Batch) is refused, never unpickled.
    """
    import argparse
    import pickle

    import torch

    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found is None:
            stop = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(err))
            why = f"the weights-only loader stops at: {stop.group(1)[:200]}" if stop else first_line(err)
            raise DatasetError(f"{path}: not a readable PyTorch file ({why})") from None
        raise DatasetError(
            f"{path}: refused: loading it would unpickle {found.group(1)}, which can run code; only tensors, numbers "
            f"and containers are loaded. Save the tensors alone: torch.save({{k: d[k] for k in {list(TORCH_KEYS)}}}, F)"
        ) from None
    except Exception as err:  # torch raises RuntimeError, EOFError, ... on a file that is no torch archive
        raise DatasetError(f"{path}: not a readable PyTorch file ({first_line(err)})") from None
    arrays = _torch_arrays(path, content)
    return _collect(_torch_items(arrays), source=str(path), total=int(arrays["num_atoms"].size),
                    max_atoms=max_atoms, progress=progress)


def _torch_arrays(path: Path, content: Any) -> dict[str, np.ndarray]:
    """The five arrays, each with a leading axis of evaluations; a one-line error where the layout is off."""
    expected = f"a CDVAE/DiffCSP/FlowMM evaluation file (a dict of tensors {', '.join(TORCH_KEYS)})"
    if not isinstance(content, dict):
        raise DatasetError(f"{path}: found a {type(content).__name__}; expected {expected}")
    missing = [k for k in TORCH_KEYS if k not in content]
    if missing:
        keys = ", ".join(map(str, content))
        raise DatasetError(f"{path}: no {', '.join(missing)} (keys: {keys}); expected {expected}")
    try:
        arrays = {k: _array(content[k]) for k in TORCH_KEYS}
    except (TypeError, ValueError, RuntimeError) as err:
        raise DatasetError(f"{path}: {first_line(err)}; expected {expected}") from None
    if arrays["num_atoms"].ndim == 1:
        arrays = {k: a[None] for k, a in arrays.items()}
    evals, n = arrays["num_atoms"].shape if arrays["num_atoms"].ndim == 2 else (0, 0)
    shapes = {k: a.shape for k, a in arrays.items()}
    total = arrays["frac_coords"].shape[1] if arrays["frac_coords"].ndim == 3 else -1
    good = (
        evals > 0 and shapes["frac_coords"] == (evals, total, 3) and shapes["atom_types"] == (evals, total)
        and shapes["lengths"] == (evals, n, 3) and shapes["angles"] == (evals, n, 3)
        and all(int(arrays["num_atoms"][e].sum()) == total for e in range(evals))
    )
    if not good:
        described = ", ".join(f"{k} {list(s)}" for k, s in shapes.items())
        raise DatasetError(
            f"{path}: tensors do not fit together ({described}); expected frac_coords [atoms, 3], atom_types "
            "[atoms], lengths and angles [structures, 3], num_atoms [structures] summing to atoms, each possibly "
            "with a leading axis of evaluations"
        )
    return arrays


def _array(value: Any) -> np.ndarray:
    """A tensor (or nested list) as a numpy array."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _torch_items(arrays: Mapping[str, np.ndarray]) -> Iterator[Item]:
    evals = arrays["num_atoms"].shape[0]
    for e in range(evals):
        offsets = np.concatenate([[0], np.cumsum(arrays["num_atoms"][e])]).astype(np.int64)
        for i in range(len(offsets) - 1):
            rid = position_id(i) if evals == 1 else f"eval{e}-{position_id(i)}"
            sites = slice(offsets[i], offsets[i + 1])
            yield rid, lambda e=e, i=i, sites=sites: _structure_from_arrays(
                arrays["lengths"][e, i], arrays["angles"][e, i], arrays["atom_types"][e, sites],
                arrays["frac_coords"][e, sites],
            ), {}


def _structure_from_arrays(
    lengths: np.ndarray, angles: np.ndarray, atom_types: np.ndarray, frac_coords: np.ndarray
) -> Structure:
    numbers = []
    for z in atom_types.tolist():
        if not float(z).is_integer() or not 1 <= z <= 118:
            raise ValueError(f"atom type {z} is not an atomic number")
        numbers.append(int(z))
    lattice = Lattice.from_parameters(*map(float, lengths), *map(float, angles))
    return Structure(lattice, numbers, frac_coords.astype(float))


# --------------------------------------------------------------------------- extxyz and other ASE files


def read_extxyz(path: str | Path, *, max_atoms: int | None = None, progress: bool = False) -> Dataset:
    """Read an extended-XYZ file of periodic frames (MatterGen's generated_crystals.extxyz)."""
    return read_frames(path, "extxyz", max_atoms=max_atoms, progress=progress)


def read_frames(
    path: str | Path, format: str | None = None, *, max_atoms: int | None = None, progress: bool = False
) -> Dataset:
    """Read the periodic frames of any file ASE reads; the id is the frame's info `id` or `material_id`, else
    `frame{i}`. A frame that breaks the file stops the reading there (recorded as skipped)."""
    from ase.io import iread

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    kind = format or "ASE"
    dataset = _collect(_frames(iread(str(path), index=":", format=format), path, kind), source=str(path),
                       total=None, max_atoms=max_atoms, progress=progress)
    if not dataset.records and not dataset.skipped:
        raise DatasetError(f"{path}: no frames in this file")
    return dataset


def _frames(frames: Iterator[Any], path: Path, kind: str) -> Iterator[Item]:
    from pymatgen.io.ase import AseAtomsAdaptor

    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except Exception as err:  # ase raises many types on a broken frame; the rest of the file is unreadable
            if index == 0:
                raise DatasetError(f"{path}: not a readable {kind} file ({first_line(err)})") from None
            yield f"frame{index}", _skip(f"unreadable {kind} frame, stopped here ({first_line(err)})"), {}
            return
        rid = next((str(atoms.info[k]) for k in ID_COLUMNS if str(atoms.info.get(k, "")).strip()), f"frame{index}")
        props = {k: v for k, v in atoms.info.items() if isinstance(v, (str, int, float))}
        if not atoms.pbc.all():
            yield rid, _skip("frame is not periodic in all three directions"), props
        else:
            yield rid, lambda atoms=atoms: AseAtomsAdaptor.get_structure(atoms), props
        index += 1


def _ase_format(path: Path) -> str | None:
    """The ASE format a file's name says (POSCAR, CONTCAR, .vasp, .traj, .xsf, ...), or None."""
    from fnmatch import fnmatch

    from ase.io.formats import extension2format, ioformats

    for candidate in ioformats.values():
        if candidate.can_read and any(fnmatch(path.name, glob) for glob in candidate.globs):
            return candidate.name
    suffix = path.name.rsplit(".", 1)[-1].lower() if "." in path.name else ""
    found = extension2format.get(suffix) or ioformats.get(suffix)
    if found is None or not found.can_read or found.name in ("cif", "json", "extxyz"):
        return None
    return found.name


# --------------------------------------------------------------------------- records, one at a time


def _skip(reason: str) -> Build:
    def build() -> Structure:
        raise _Skip(reason)

    return build


def _structure_from_cif(text: object) -> Structure:
    if not isinstance(text, str) or not text.strip():  # an empty CSV cell
        raise ValueError("empty CIF")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return Structure.from_str(text, fmt="cif")
        except ValueError as err:
            # pymatgen merges atoms on one position into a site, then rejects its occupancy > 1 with a
            # generic "no structures" error; a generated cell with stacked atoms should say so.
            if any("occupancies" in str(w.message) for w in caught):
                raise ValueError("atoms share a position (the CIF reader merges them into one site)") from err
            raise


def _add(
    records: list[Record],
    skipped: list[tuple[str, str]],
    rid: str,
    build: Build,
    props: Mapping[str, Any],
    max_atoms: int | None,
) -> None:
    try:
        structure = build()
    except _Skip as reason:
        skipped.append((rid, str(reason)))
        return
    except Exception as err:  # parsers raise anything from ValueError to IndexError on broken input
        skipped.append((rid, f"unreadable structure ({first_line(err)})"))
        return
    reason = _problem(structure, max_atoms)
    if reason:
        skipped.append((rid, reason))
    else:
        records.append(Record(rid, structure, props))


def _problem(structure: Structure, max_atoms: int | None) -> str | None:
    """Why a parsed structure is unusable, or None."""
    if len(structure) == 0:
        return "no atoms"
    if max_atoms is not None and len(structure) > max_atoms:
        return f"{len(structure)} atoms, more than max_atoms={max_atoms}"
    if not np.isfinite(structure.frac_coords).all() or not all(math.isfinite(x) for x in structure.lattice.abc):
        return "coordinates or lattice are not finite numbers"
    if not structure.is_ordered:
        return "disordered sites (partial occupancies)"
    return None


def _collect(
    items: Iterable[Item],
    *,
    source: str,
    total: int | None,
    max_atoms: int | None = None,
    progress: bool = False,
) -> Dataset:
    records: list[Record] = []
    skipped: list[tuple[str, str]] = []
    seen: set[str] = set()
    for rid, build, props in tqdm(items, total=total, desc=f"reading {Path(source).name}", disable=not progress):
        if rid in seen:
            raise DatasetError(f"{source}: id '{rid}' appears more than once; ids must be unique")
        seen.add(rid)
        _add(records, skipped, rid, build, props, max_atoms)
    return Dataset(records, skipped, source)
