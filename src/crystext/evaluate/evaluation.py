"""One evaluation: samples scored against a reference set (and optionally a training set and stability results)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pymatgen.core import Structure

from crystext.evaluate.conditions import conditional_accuracy
from crystext.evaluate.fingerprints import FingerprintSettings
from crystext.evaluate.inputs import EvaluateError, SampleColumns, read_stability
from crystext.evaluate.profiles import VERSIONED_PACKAGES, Profiles, profile_file
from crystext.evaluate.protocols import ProtocolSettings, score
from crystext.evaluate.sun import (
    KnownStructures,
    RelaxedStructures,
    novel_flags,
    stability_rates,
    stability_table,
    unique_flags,
)
from crystext.evaluate.validity import PAPER_SMACT_VERSION
from crystext.files import write_atomic
from crystext.provenance import file_digest, package_versions

__all__ = ["EvaluateConfig", "Evaluation", "IptSettings", "evaluate"]

#: How many unreadable records a note names before it only counts them.
NAMED_IN_NOTES = 5
#: Profile columns copied into the per-sample CSV.
PER_SAMPLE_PROFILE_COLUMNS = (
    "id", "parsed", "parse_error", "n_atoms", "formula", "n_elements", "density", "volume", "spacegroup",
    "struct_valid", "struct_problem", "comp_valid", "comp_problem", "fp_ok", "fp_error",
)


@dataclass(frozen=True)
class IptSettings:
    """IPT (increase in perplexity under translation) of a `crystext train` model on reference structures."""

    model: Path
    n_structures: int = 100  # the first readable reference structures
    n_translations: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_structures < 1:
            raise ValueError(f"n_structures must be at least 1, got {self.n_structures}")
        if self.n_translations < 2:
            raise ValueError(f"n_translations must be at least 2 (the structure and one translation), "
                             f"got {self.n_translations}")


@dataclass(frozen=True)
class EvaluateConfig:
    """Everything that shapes an evaluation besides its inputs."""

    protocol: ProtocolSettings = ProtocolSettings()
    fingerprint: FingerprintSettings = FingerprintSettings()
    matcher: bool = True  # StructureMatcher uniqueness, and novelty when a training set is given
    max_atoms: int | None = None  # structures with more atoms are skipped as unreadable
    structure_column: str | None = None  # the samples CSV's structure column (default: cif, structure, cif_string)
    jobs: int | None = None  # worker processes (default: all cores)
    cache: bool = True  # cache reference and training profiles
    cache_samples: bool = False  # cache the samples' profiles too (all fingerprints are then computed)
    progress: bool = True
    ipt: IptSettings | None = None  # also measure IPT with a trained model

    def __post_init__(self) -> None:
        for name in ("max_atoms", "jobs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


@dataclass
class Evaluation:
    """The result: every metric, one row per sample, the distributions behind the plots, and provenance."""

    metrics: dict[str, Any]
    per_sample: pd.DataFrame
    distributions: dict[str, Any]
    info: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def protocol(self) -> str:
        return str(self.info["protocol"]["name"])

    def to_dict(self) -> dict[str, Any]:
        """The JSON document: metrics, protocol and settings, inputs, package versions, notes, histograms."""
        histograms = {k: self.distributions[k] for k in ("spacegroup", "elements", "n_structures")}
        return _plain_json({"metrics": self.metrics, **self.info, "notes": self.notes, "histograms": histograms})

    def write(self, out_dir: str | Path) -> list[Path]:
        """Write metrics.json and per_sample.csv into `out_dir`, each atomically."""
        out_dir = Path(out_dir)
        json_path, csv_path = out_dir / "metrics.json", out_dir / "per_sample.csv"
        write_atomic(json_path, json.dumps(self.to_dict(), indent=2) + "\n")
        write_atomic(csv_path, self.per_sample.to_csv(index=False))
        return [json_path, csv_path]


def _plain_json(value: Any) -> Any:
    """Plain JSON types; NaN and infinities become null."""
    if isinstance(value, dict):
        return {str(k): _plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def _unreadable_note(kind: str, profiles: Profiles) -> str | None:
    """One line naming the first records of a set that did not parse, with their reasons."""
    bad = profiles.table[~profiles.table["parsed"]]
    if bad.empty:
        return None
    named = "; ".join(f"{r.id}: {r.parse_error}" for r in bad.head(NAMED_IN_NOTES).itertuples())
    more = f" (and {len(bad) - NAMED_IN_NOTES} more)" if len(bad) > NAMED_IN_NOTES else ""
    return f"{len(bad)} {kind} did not parse: {named}{more}"


def evaluate(
    samples: str | Path,
    reference: str | Path,
    train: str | Path | Sequence[str | Path] | None = None,
    stability: str | Path | None = None,
    config: EvaluateConfig = EvaluateConfig(),
) -> Evaluation:
    """Score generated structures against a reference set under one protocol (see `crystext.evaluate.protocols`).

    `samples` and `reference` are anything `crystext.data.read_structures` reads (a CSV with a `cif` column,
    a folder of CIFs, a CIF archive, pymatgen JSON, a CDVAE .pt, extxyz, ...); `train` one or several such
    files (e.g. the train and val splits a model learnt from), for novelty; `stability` a `crystext stability`
    CSV joined by sample id. Per-sample rows keep the samples' ids (`crystext.data.tables`), in the file's order.
    """
    start = time.monotonic()
    samples, reference = Path(samples), Path(reference)
    rules = config.protocol.rules
    columns, notes = SampleColumns.from_file(samples, config.structure_column)
    timings: dict[str, float] = {}
    sample_profiles = _profile(
        samples, "samples", config, timings, notes, cache=config.cache_samples,
        fingerprint_invalid=rules.fingerprint_invalid_samples, missing_cif_reasons=columns.errors,
        structure_column=config.structure_column,
    )
    reference_profiles = _profile(reference, "reference", config, timings, notes, cache=config.cache)
    train_paths = [Path(train)] if isinstance(train, (str, Path)) else [Path(t) for t in train or ()]
    train_parts = [_profile(t, "train", config, timings, notes, cache=config.cache) for t in train_paths]
    train_profiles = Profiles.concat(train_parts) if train_parts else None

    began = time.monotonic()
    scores = score(sample_profiles, reference_profiles, config.protocol, train_profiles)
    timings["fingerprint_metrics_seconds"] = time.monotonic() - began
    metrics, notes = scores.metrics, notes + scores.notes
    table = sample_profiles.table
    parts = [table[list(PER_SAMPLE_PROFILE_COLUMNS)], scores.per_sample]
    valid = scores.per_sample["valid"].to_numpy(bool)

    unique = novel = None
    if config.matcher:
        began = time.monotonic()
        unique, novel = _matcher_flags(sample_profiles, valid, train_profiles, config.progress)
        timings["matcher_seconds"] = time.monotonic() - began
        found, flags = _matcher_metrics(valid, unique, novel)
        metrics.update(found)
        parts.append(flags)

    e_above_hull = in_stability = None
    if stability is not None:
        found, energy_columns, more = _stability(stability, sample_profiles, train_profiles if config.matcher else None)
        e_above_hull = energy_columns["e_above_hull"].to_numpy(float)
        in_stability = energy_columns["in_stability"].to_numpy(bool)
        metrics.update(found)
        notes += more
        parts.append(energy_columns)

    if columns.conditions:
        asked = [columns.conditions.get(rid) for rid in table["id"]]
        found, match_columns, condition_notes = conditional_accuracy(
            table["id"].tolist(), asked, table["formula"].tolist(), table["spacegroup"].tolist(),
            table["parsed"].to_numpy(bool), e_above_hull, in_stability,
        )
        metrics.update(found)
        notes += condition_notes
        parts.append(match_columns.assign(conditions=[json.dumps(a) if a else "" for a in asked]))
    if columns.mode:
        parts.append(pd.DataFrame({"mode": table["id"].map(columns.mode).fillna("")}))
    per_sample = _in_file_order(pd.concat(parts, axis=1), columns.order)

    if config.ipt is not None:
        began = time.monotonic()
        metrics["ipt"], info_ipt = _ipt(reference_profiles, config.ipt, config.progress)
        timings["ipt_seconds"] = time.monotonic() - began
    versions = package_versions(VERSIONED_PACKAGES)
    if versions["smact"] != PAPER_SMACT_VERSION:
        notes.append(
            f"smact {versions['smact']} is installed; the published compositional validity used smact "
            f"{PAPER_SMACT_VERSION}, whose oxidation-state table gives different numbers"
        )
    timings["total_seconds"] = time.monotonic() - start
    info = {
        "protocol": {"name": rules.name, "description": rules.description, **asdict(rules)},
        "settings": {"protocol": asdict(config.protocol), "fingerprint": asdict(config.fingerprint),
                     "matcher": config.matcher, "max_atoms": config.max_atoms,
                     "structure_column": config.structure_column},
        "inputs": {
            "samples": _describe(samples, sample_profiles),
            "reference": _describe(reference, reference_profiles),
            **({"train": [_describe(t, p) for t, p in zip(train_paths, train_parts)]} if train_parts else {}),
            **({"stability": str(stability)} if stability is not None else {}),
        },
        "versions": versions,
        "timings": timings,
        **({"ipt": info_ipt} if config.ipt is not None else {}),
    }
    return Evaluation(metrics, per_sample, scores.distributions, info, notes)


def _ipt(reference: Profiles, settings: IptSettings, progress: bool) -> tuple[float, dict[str, Any]]:
    """IPT of a model over the first readable reference structures, and its details."""
    from crystext.evaluate.ipt import ipt

    readable = np.flatnonzero(reference.table["parsed"].to_numpy(bool))[: settings.n_structures]
    found = ipt(
        settings.model, [reference.structure(int(i)) for i in readable], settings.n_translations, settings.seed,
        progress=progress,
    )
    return found["ipt"], {"model": str(settings.model), **{k: v for k, v in found.items() if k != "per_structure"}}


def _profile(
    path: Path,
    kind: str,
    config: EvaluateConfig,
    timings: dict[str, float],
    notes: list[str],
    missing_cif_reasons: dict[str, str] | None = None,
    **kwargs: Any,
) -> Profiles:
    """Profile one input (timed, unreadable records noted); a reference or training set must have readable ones.

    `missing_cif_reasons`: why the input file says a record has no CIF, reported instead of "empty CIF".
    """
    began = time.monotonic()
    profiles = profile_file(
        path, config.fingerprint, max_atoms=config.max_atoms, jobs=config.jobs, progress=config.progress, **kwargs
    )
    if missing_cif_reasons:
        reasons = profiles.table["id"].map(missing_cif_reasons)
        known = reasons.notna() & ~profiles.table["parsed"]
        profiles.table.loc[known, "parse_error"] = "no CIF (" + reasons[known] + ")"
    timings[f"{kind}_seconds"] = timings.get(f"{kind}_seconds", 0.0) + time.monotonic() - began
    if not len(profiles):
        raise EvaluateError(f"{path}: no {kind} records")
    if kind != "samples" and not profiles.table["parsed"].any():
        raise EvaluateError(f"{path}: none of its {len(profiles)} {kind} structures is readable")
    note = _unreadable_note(kind, profiles)
    if note:
        notes.append(note)
    return profiles


def _in_file_order(per_sample: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Rows in the samples file's order when known (readers list unreadable records last)."""
    if not order:
        return per_sample
    present = set(per_sample["id"])
    return per_sample.set_index("id").loc[[i for i in order if i in present]].reset_index()


def _describe(path: Path, profiles: Profiles) -> dict[str, Any]:
    return {
        "path": str(path), "sha256": file_digest(path), "records": len(profiles),
        "unparsed": int((~profiles.table["parsed"]).sum()), "profiles_from_cache": profiles.from_cache,
    }


def _flags_where(flags: np.ndarray, where: np.ndarray) -> pd.arrays.BooleanArray:
    """Boolean flags where `where` holds, missing elsewhere."""
    out = pd.array([pd.NA] * len(flags), dtype="boolean")
    out[where] = flags[where]
    return out


def _matcher_metrics(
    valid: np.ndarray, unique: np.ndarray, novel: np.ndarray | None
) -> tuple[dict[str, float], pd.DataFrame]:
    """Uniqueness (and novelty, and both) over the valid samples; the per-sample flags, missing where invalid."""
    def rate(flags: np.ndarray) -> float:
        return float(flags[valid].mean()) if valid.any() else math.nan

    metrics = {"uniqueness": rate(unique)}
    columns = pd.DataFrame({"unique": _flags_where(unique, valid)})
    if novel is not None:
        metrics.update(novelty_matcher=rate(novel), unique_novel_rate=rate(unique & novel))
        columns["novel_matcher"] = _flags_where(novel, valid)
    return metrics, columns


def _matcher_flags(
    samples: Profiles, valid: np.ndarray, train: Profiles | None, progress: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """StructureMatcher uniqueness among the valid samples, and novelty against the training set when given."""
    index = np.flatnonzero(valid)
    structures = [samples.structure(i) for i in index]
    formulas = samples.table["formula"].to_numpy()[index].tolist()
    unique = np.zeros(len(samples), bool)
    unique[index] = unique_flags(structures, formulas, progress)
    if train is None:
        return unique, None
    novel = np.zeros(len(samples), bool)
    novel[index] = novel_flags(structures, formulas, _known(train), progress)
    return unique, novel


def _known(train: Profiles) -> KnownStructures:
    """The readable training structures, built from their profiles on demand."""
    parsed = np.flatnonzero(train.table["parsed"].to_numpy(bool))
    formulas = train.table["formula"].to_numpy()[parsed].tolist()
    return KnownStructures(formulas, lambda j: train.structure(int(parsed[j])))


def _stability(
    path: Path, samples: Profiles, train: Profiles | None
) -> tuple[dict[str, Any], pd.DataFrame, list[str]]:
    """Stability rates and S.U.N. over the rows of a stability CSV that name a sample (see `crystext.evaluate.sun`),
    and each sample's columns (missing for samples the CSV does not list).

    S.U.N. is judged on the relaxed structures; a row without one (a CSV from another tool may hold only
    energies) falls back to the sample as generated, and a note says how many did.
    """
    ids = samples.table["id"]
    rows = read_stability(path)
    notes = []
    unmatched = ~rows.index.isin(ids)
    if unmatched.any():
        notes.append(f"{path}: {int(unmatched.sum())} ids match no sample")
        rows = rows[~unmatched]
    position = [{rid: i for i, rid in enumerate(ids)}[rid] for rid in rows.index]  # each row's sample
    parsed = samples.table["parsed"].to_numpy(bool)[position]

    def as_generated_structure(row: int) -> Structure | None:
        return samples.structure(position[row]) if parsed[row] else None

    relaxed = RelaxedStructures(rows["relaxed_cif"], fallback=as_generated_structure)
    as_generated = int((~rows["relaxed_cif"].str.strip().astype(bool).to_numpy() & parsed).sum())
    if as_generated:
        notes.append(f"{path}: {as_generated} rows have no relaxed structure; S.U.N. judges them as generated")
    known = None if train is None else _known(train)
    if known is None:
        notes.append("S.U.N. needs a training set (--train) and the structure matcher")
    table = stability_table(rows["e_above_hull"].to_numpy(float), relaxed, known)
    table.index = rows.index
    columns = pd.DataFrame({"e_above_hull": ids.map(table["e_above_hull"]).to_numpy(float),
                            "in_stability": ids.isin(rows.index).to_numpy(bool)})
    for name in table.columns.drop("e_above_hull"):
        columns[name] = pd.array(ids.map(table[name]).tolist(), dtype="boolean")
    return stability_rates(table), columns, notes
