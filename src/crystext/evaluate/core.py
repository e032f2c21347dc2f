"""`evaluate`: score generated crystals against a reference set, under one or both protocols."""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crystext.evaluate.analysis import (
    Analysed,
    AnalysisSettings,
    Item,
    _parse,
    analyse,
    analyse_file,
    load_items,
    package_versions,
)
from crystext.evaluate.metrics import (
    PROTOCOLS,
    MetricsResult,
    ProtocolSettings,
    compute_metrics,
    novel_flags,
    stability_rates,
    unique_flags,
)

__all__ = ["EvaluationResult", "evaluate", "guess_dataset", "read_stability"]

#: Where a condition may be found in a samples CSV: a ``conditions`` column holding JSON (or
#: ``key=value`` pairs separated by ``;``/``,``), or one column per condition named
#: ``cond_<key>``, ``condition_<key>`` or ``requested_<key>``. Keys and their accepted spellings:
CONDITION_KEYS = {
    "formula": ("formula", "pretty_formula", "reduced_formula"),
    "spacegroup": ("spacegroup", "spacegroup_number", "space_group", "spacegroup.number", "sg"),
    "e_above_hull": ("e_above_hull", "energy_above_hull", "e_hull"),
}
E_HULL_COLUMNS = ("e_above_hull", "energy_above_hull", "e_hull")


@dataclass
class EvaluationResult:
    """Everything `evaluate` measured: metrics per protocol, per-sample rows, and what produced them."""

    metrics: dict[str, dict[str, Any]]  # protocol -> metric -> value
    per_sample: pd.DataFrame
    settings: dict[str, Any]
    versions: dict[str, str]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    distributions: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def default(self) -> dict[str, Any]:
        return self.metrics[next(iter(self.metrics))]

    def to_json(self) -> dict[str, Any]:
        return {
            "protocols": self.metrics,
            "extra": self.extra,
            "settings": self.settings,
            "versions": self.versions,
            "timings_s": self.timings,
            "warnings": self.warnings,
        }


def guess_dataset(reference: str | Path) -> str:
    """The benchmark a reference file belongs to, from its path (for the coverage cut-offs); MP-20 otherwise."""
    text = str(Path(reference).resolve()).lower().replace("-", "_")
    for name in ("perov_5", "carbon_24", "mpts_52", "mp_20"):
        if name in text:
            return name
    return "mp_20"


def _conditions(properties: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    raw = properties.get("conditions")
    parsed: dict[str, Any] = {}
    if isinstance(raw, str) and raw.strip():
        try:
            value = json.loads(raw)
            parsed = value if isinstance(value, dict) else {}
        except json.JSONDecodeError:
            for part in raw.replace(";", ",").split(","):
                if "=" in part:
                    key, _, val = part.partition("=")
                    parsed[key.strip()] = val.strip()
    for key, spellings in CONDITION_KEYS.items():
        candidates = [parsed.get(s) for s in spellings]
        for prefix in ("cond_", "condition_", "requested_"):
            candidates += [properties.get(prefix + s) for s in spellings]
        for value in candidates:
            if value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip():
                found[key] = value
                break
    return found


def read_stability(path: str | Path) -> dict[str, float]:
    """{id: energy above hull} from a `crystext stability` CSV (an id column and an energy-above-hull column)."""
    frame = pd.read_csv(path)
    id_col = next((c for c in ("id", "material_id") if c in frame.columns), None)
    e_col = next((c for c in E_HULL_COLUMNS if c in frame.columns), None)
    if id_col is None or e_col is None:
        raise ValueError(f"{path}: needs an id column and one of {', '.join(E_HULL_COLUMNS)}")
    values = pd.to_numeric(frame[e_col], errors="coerce")
    return {str(i): float(v) for i, v in zip(frame[id_col], values)}


def _concat(parts: Sequence[Analysed]) -> Analysed:
    if len(parts) == 1:
        return parts[0]
    table = pd.concat([p.table for p in parts], ignore_index=True)
    return Analysed(table, np.vstack([p.struct_fp for p in parts]), np.vstack([p.comp_fp for p in parts]),
                    " + ".join(p.source for p in parts))


def evaluate(
    samples: str | Path | Sequence[Item],
    reference: str | Path,
    train: str | Path | Sequence[str | Path] | None = None,
    protocols: Sequence[str] = ("paper",),
    dataset: str | None = None,
    struct_cutoff: float | None = None,
    comp_cutoff: float | None = None,
    coverage: str = "separate",
    n_valid: int = 1000,
    max_samples: int | None = 10000,
    seed: int = 0,
    stability: str | Path | dict[str, float] | None = None,
    analysis: AnalysisSettings | None = None,
    jobs: int | None = None,
    progress: bool = True,
    use_cache: bool = True,
    structure_matcher: bool = True,
) -> EvaluationResult:
    """Score samples against a reference set (and a training set for novelty) under the named protocols.

    ``samples``: a CSV with a ``cif`` column (as ``crystext sample`` writes), a folder of CIFs, an
    extxyz file, or a list of `Item`. The first protocol is the default one reported.
    """
    protocols = list(dict.fromkeys(protocols))
    for name in protocols:
        if name not in PROTOCOLS:
            raise ValueError(f"unknown protocol {name!r} (known: {', '.join(PROTOCOLS)})")
    timings: dict[str, float] = {}
    start = time.monotonic()
    dataset = dataset or guess_dataset(reference)
    settings_for = {
        name: ProtocolSettings(name, dataset, struct_cutoff, comp_cutoff, coverage, n_valid, max_samples, seed)
        for name in protocols
    }
    for s in settings_for.values():
        s.cutoffs  # noqa: B018 - fail early on an unknown dataset without cut-offs

    base = analysis or AnalysisSettings()
    sample_settings = AnalysisSettings(
        base.site_timeout, base.structure_timeout, base.symprec, "all" if "cdvae" in protocols else "valid"
    )
    ref_settings = AnalysisSettings(base.site_timeout, base.structure_timeout, base.symprec, "all")

    t = time.monotonic()
    items = list(samples) if not isinstance(samples, (str, Path)) else load_items(samples)
    if not items:
        raise ValueError("no samples to evaluate")
    if isinstance(samples, (str, Path)) and use_cache:
        # A samples file is cached like a reference (same key when it is the same file with the same settings).
        analysed = analyse_file(samples, sample_settings, jobs, progress, True, "samples")
    else:
        analysed = analyse(items, sample_settings, jobs, progress, "samples")
    timings["samples_s"] = time.monotonic() - t

    t = time.monotonic()
    ref = analyse_file(reference, ref_settings, jobs, progress, use_cache, "reference")
    timings["reference_s"] = time.monotonic() - t
    timings["reference_cached"] = float(ref.cached)

    train_paths = [] if train is None else [train] if isinstance(train, (str, Path)) else list(train)
    train_analysed = None
    if train_paths:
        t = time.monotonic()
        train_analysed = _concat([analyse_file(p, ref_settings, jobs, progress, use_cache, "training") for p in train_paths])
        timings["train_s"] = time.monotonic() - t

    results: dict[str, MetricsResult] = {}
    t = time.monotonic()
    for name, ps in settings_for.items():
        results[name] = compute_metrics(analysed, ref, ps, train_analysed)
    timings["metrics_s"] = time.monotonic() - t

    # Per-sample table: the default protocol's, with the other protocols' flags beside it.
    first = protocols[0]
    per_sample = results[first].per_sample
    for name in protocols[1:]:
        other = results[name].per_sample
        for col in ("counted", "valid", "covered"):
            per_sample[f"{col}_{name}"] = other[col]
    per_sample.insert(1, "protocol", first)

    # StructureMatcher uniqueness and novelty over the structurally and compositionally valid samples.
    table = analysed.table
    sv = (table["struct_valid"] & table["comp_valid"]).to_numpy(bool)
    per_sample["unique"] = pd.Series([pd.NA] * len(table), dtype="boolean")
    per_sample["novel"] = pd.Series([pd.NA] * len(table), dtype="boolean")
    if structure_matcher and sv.any():
        t = time.monotonic()
        idx = np.flatnonzero(sv)
        structures = [_parse(items[i].payload) for i in idx]
        formulas = table["formula"].to_numpy()[idx]
        per_sample.loc[idx, "unique"] = unique_flags(structures, formulas)
        timings["uniqueness_s"] = time.monotonic() - t
        if train_paths:
            t = time.monotonic()
            lookup = _train_lookup(train_paths, train_analysed)
            per_sample.loc[idx, "novel"] = novel_flags(structures, formulas, lookup)
            timings["novelty_matcher_s"] = time.monotonic() - t

    # Stability, conditions.
    e_hull = np.full(len(table), np.nan)
    if stability is not None:
        values = stability if isinstance(stability, dict) else read_stability(stability)
        e_hull = np.array([values.get(str(rid), np.nan) for rid in table["id"]], dtype=float)
        per_sample["e_above_hull"] = e_hull
    conditions = [_conditions(item.properties or {}) for item in items]
    if any(conditions):
        per_sample["requested_formula"] = [c.get("formula") for c in conditions]
        per_sample["requested_spacegroup"] = [c.get("spacegroup") for c in conditions]
        per_sample["requested_e_above_hull"] = [c.get("e_above_hull") for c in conditions]

    for name, result in results.items():
        m = result.metrics
        counted_mask = per_sample[f"counted_{name}" if name != first else "counted"].to_numpy(bool)
        valid_mask = per_sample[f"valid_{name}" if name != first else "valid"].to_numpy(bool) & counted_mask
        unique = per_sample["unique"].fillna(False).to_numpy(bool)
        novel = per_sample["novel"].fillna(False).to_numpy(bool)
        if structure_matcher and valid_mask.any():
            m["uniqueness"] = float(unique[valid_mask].mean())
            if train_paths:
                m["novelty_matcher"] = float(novel[valid_mask].mean())
                m["unique_novel_rate"] = float((unique & novel & valid_mask).sum() / max(1, m["n_counted"]))
        if stability is not None:
            counted_idx = _counted_indices(name, table, settings_for[name], counted_mask)
            m.update(stability_rates(e_hull[counted_idx], len(counted_idx)))
            if structure_matcher and train_paths:
                for label, cut in (("sun_rate", 0.0), ("msun_rate", 0.1)):
                    good = valid_mask & unique & novel & (np.nan_to_num(e_hull, nan=np.inf) < cut)
                    m[label] = float(good.sum() / max(1, m["n_counted"]))
        if any(conditions):
            m.update(_conditional_accuracy(conditions, table, e_hull, counted_mask))

    timings["total_s"] = time.monotonic() - start
    warnings_out = [f"[{name}] {w}" for name, r in results.items() for w in r.warnings]
    if ref.table["parsed"].sum() < len(ref.table):
        warnings_out.append(f"{len(ref.table) - int(ref.table['parsed'].sum())} reference structures did not parse")
    failed = table[~table["parsed"]]
    if len(failed):
        first_ids = "; ".join(f"{r.id}: {r.parse_error}" for r in failed.head(5).itertuples())
        warnings_out.append(f"{len(failed)} samples did not parse ({first_ids})")
    settings = {
        "protocols": protocols,
        "default_protocol": first,
        "dataset": dataset,
        "samples": str(samples) if isinstance(samples, (str, Path)) else f"{len(items)} items",
        "reference": str(reference),
        "train": [str(p) for p in train_paths],
        "stability": str(stability) if isinstance(stability, (str, Path)) else (None if stability is None else "given"),
        "protocol_settings": {name: asdict(s) for name, s in settings_for.items()},
        "analysis": asdict(sample_settings),
    }
    return EvaluationResult(
        metrics={name: r.metrics for name, r in results.items()},
        per_sample=per_sample,
        settings=settings,
        versions=package_versions(),
        timings=timings,
        warnings=warnings_out,
        distributions={name: r.distributions for name, r in results.items()},
        extra={"e_above_hull": [v for v in e_hull.tolist() if math.isfinite(v)]},
    )


def _counted_indices(name: str, table: pd.DataFrame, ps: ProtocolSettings, counted_mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(counted_mask)


def _train_lookup(paths: Sequence[str | Path], analysed: Analysed | None) -> Any:
    items: list[Item] = []
    for p in paths:
        items.extend(load_items(p))
    by_formula: dict[str, list[int]] = {}
    if analysed is not None and len(analysed.table) == len(items):
        for i, formula in enumerate(analysed.table["formula"]):
            if formula:
                by_formula.setdefault(str(formula), []).append(i)

    @functools.cache
    def structure(i: int) -> Any:
        try:
            return _parse(items[i].payload)
        except Exception:  # unreadable training rows never match
            return None

    def lookup(formula: str) -> list[Any]:
        return [s for s in (structure(i) for i in by_formula.get(str(formula), [])) if s is not None]

    return lookup


def _conditional_accuracy(
    conditions: list[dict[str, Any]], table: pd.DataFrame, e_hull: np.ndarray, counted: np.ndarray
) -> dict[str, Any]:
    from pymatgen.core import Composition

    out: dict[str, Any] = {}
    formula_hits, sg_hits, e_requested, e_obtained = [], [], [], []
    for i, cond in enumerate(conditions):
        if not counted[i]:
            continue
        parsed = bool(table["parsed"].iat[i])
        if "formula" in cond:
            try:
                wanted = Composition(str(cond["formula"])).reduced_formula
            except Exception:  # an unreadable requested formula never matches
                wanted = None
            formula_hits.append(parsed and wanted is not None and table["formula"].iat[i] == wanted)
        if "spacegroup" in cond:
            try:
                wanted_sg = int(float(cond["spacegroup"]))
            except (TypeError, ValueError):
                wanted_sg = -1
            sg_hits.append(parsed and int(table["spacegroup"].iat[i]) == wanted_sg)
        if "e_above_hull" in cond and math.isfinite(e_hull[i]):
            try:
                e_requested.append(float(cond["e_above_hull"]))
                e_obtained.append(float(e_hull[i]))
            except (TypeError, ValueError):
                pass
    if formula_hits:
        out["formula_accuracy"] = float(np.mean(formula_hits))
        out["n_formula_conditioned"] = len(formula_hits)
    if sg_hits:
        out["spacegroup_accuracy"] = float(np.mean(sg_hits))
        out["n_spacegroup_conditioned"] = len(sg_hits)
    if e_requested:
        req, got = np.array(e_requested), np.array(e_obtained)
        out["e_hull_conditioned_mae"] = float(np.abs(req - got).mean())
        out["e_hull_conditioned_mean"] = float(got.mean())
        out["n_e_hull_conditioned"] = len(req)
    return out
