"""Write an evaluation: JSON (every metric), per-sample CSV, a Markdown table, a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crystext.evaluate.core import EvaluationResult
from crystext.evaluate.metrics import dumps

__all__ = ["PAPER_COLUMNS", "markdown_table", "write_report"]

#: The paper's Table 1 columns, in its order, then the extra ones this package measures.
PAPER_COLUMNS: list[tuple[str, str, str]] = [
    ("struct_valid", "Struct. valid", "{:.4f}"),
    ("comp_valid", "Comp. valid", "{:.4f}"),
    ("cov_recall", "COV-R", "{:.4f}"),
    ("cov_precision", "COV-P", "{:.4f}"),
    ("wdist_density", "wdist density", "{:.3f}"),
    ("wdist_num_elems", "wdist # elem", "{:.3f}"),
    ("metastable_rate", "Metastable (<0.1)", "{:.1%}"),
    ("stable_rate", "Stable (<0.0)", "{:.1%}"),
]
EXTRA_COLUMNS: list[tuple[str, str, str]] = [
    ("uniqueness", "Unique", "{:.4f}"),
    ("novelty", "Novel (fp)", "{:.4f}"),
    ("novelty_matcher", "Novel (matcher)", "{:.4f}"),
    ("sun_rate", "S.U.N.", "{:.1%}"),
    ("amsd_recall", "AMSD-R", "{:.4f}"),
    ("amsd_precision", "AMSD-P", "{:.4f}"),
    ("amcd_recall", "AMCD-R", "{:.3f}"),
    ("amcd_precision", "AMCD-P", "{:.3f}"),
    ("struct_diversity", "Struct. div.", "{:.4f}"),
    ("comp_diversity", "Comp. div.", "{:.3f}"),
    ("n_counted", "N counted", "{}"),
]


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Sequence[tuple[str, dict[str, Any]]], extra: bool = True) -> str:
    """A Markdown table, one row per (label, metrics), in the paper's column order (then the extra columns)."""
    columns = PAPER_COLUMNS + (EXTRA_COLUMNS if extra else [])
    present = [c for c in columns if c in PAPER_COLUMNS or any(c[0] in m for _, m in rows)]
    lines = ["| method | " + " | ".join(title for _, title, _ in present) + " |",
             "|---|" + "|".join("---:" for _ in present) + "|"]
    for label, m in rows:
        lines.append(f"| {label} | " + " | ".join(_fmt(m.get(key), spec) for key, _, spec in present) + " |")
    return "\n".join(lines) + "\n"


def write_report(result: EvaluationResult, out_dir: str | Path, label: str = "samples") -> dict[str, Path]:
    """Write metrics.json, per_sample.csv, table.md and report.html into ``out_dir``; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "csv": out / "per_sample.csv", "markdown": out / "table.md",
             "html": out / "report.html"}
    paths["json"].write_text(dumps(result.to_json()) + "\n")
    result.per_sample.to_csv(paths["csv"], index=False)
    rows = [(f"{label} ({name})", m) for name, m in result.metrics.items()]
    note = (f"\nProtocols: {', '.join(result.metrics)} (default: {result.settings['default_protocol']}). "
            f"Reference: {result.settings['reference']}. smact {result.versions.get('smact')}, "
            f"matminer {result.versions.get('matminer')}, pymatgen {result.versions.get('pymatgen')}.\n")
    paths["markdown"].write_text(markdown_table(rows) + note)
    paths["html"].write_text(_html(result, rows, label))
    return paths


# --------------------------------------------------------------------------- HTML


def _png(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _plots(result: EvaluationResult) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = result.distributions[result.settings["default_protocol"]]
    figures: list[tuple[str, str]] = []

    fig, ax = plt.subplots(figsize=(6, 3.5))
    s = np.array([x for x in d["sample_density"] if math.isfinite(x)])
    r = np.array([x for x in d["ref_density"] if math.isfinite(x)])
    hi = float(np.percentile(np.concatenate([s, r]), 99.5)) if len(s) + len(r) else 1.0
    bins = np.linspace(0, max(hi, 1e-6), 50)
    ax.hist(r, bins=bins, density=True, alpha=0.5, label=f"reference (n={len(r)})")
    ax.hist(s, bins=bins, density=True, alpha=0.5, label=f"samples (n={len(s)})")
    ax.set_xlabel("density (g/cm$^3$)"), ax.set_ylabel("probability density"), ax.legend()
    figures.append(("Density", _png(fig)))

    for key, title, xlabel in (("n_elements", "Number of elements", "distinct elements"),
                               ("n_atoms", "Atoms per cell", "atoms in the cell")):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        s, r = np.array(d[f"sample_{key}"], int), np.array(d[f"ref_{key}"], int)
        top = int(max(s.max(initial=1), r.max(initial=1)))
        bins = np.arange(0.5, top + 1.5)
        ax.hist([r, s], bins=bins, density=True, label=["reference", "samples"])
        ax.set_xlabel(xlabel), ax.set_ylabel("fraction"), ax.legend()
        figures.append((title, _png(fig)))

    fig, ax = plt.subplots(figsize=(9, 3.5))
    bins = np.arange(0.5, 231.5)
    ax.hist([d["ref_spacegroup"], d["sample_spacegroup"]], bins=bins, density=True, histtype="step",
            label=["reference", "samples"])
    ax.set_xlabel("space group number (spglib, symprec 0.1; 0 = not found)"), ax.set_ylabel("fraction"), ax.legend()
    figures.append(("Space groups", _png(fig)))

    ref_el, smp_el = d["ref_elements"], d["sample_elements"]
    names = sorted(set(ref_el) | set(smp_el), key=lambda e: -(ref_el.get(e, 0) + smp_el.get(e, 0)))[:40]
    fig, ax = plt.subplots(figsize=(11, 3.5))
    x = np.arange(len(names))
    ax.bar(x - 0.2, [ref_el.get(e, 0) for e in names], 0.4, label="reference")
    ax.bar(x + 0.2, [smp_el.get(e, 0) for e in names], 0.4, label="samples")
    ax.set_xticks(x, names, fontsize=8), ax.set_ylabel("fraction of structures containing it"), ax.legend()
    figures.append(("Element frequencies (40 most common)", _png(fig)))

    e_hull = [v for v in result.extra.get("e_above_hull", []) if math.isfinite(v)]
    if e_hull:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(np.clip(e_hull, -0.5, 2.0), bins=50)
        ax.axvline(0.1, color="k", ls="--", lw=1, label="metastable 0.1 eV/atom")
        ax.set_xlabel("energy above hull (eV/atom, clipped to [-0.5, 2])"), ax.set_ylabel("samples"), ax.legend()
        figures.append(("Energy above hull", _png(fig)))
    return figures


def _html(result: EvaluationResult, rows: Sequence[tuple[str, dict[str, Any]]], label: str) -> str:
    esc = html.escape
    table_rows = []
    keys = sorted({k for _, m in rows for k in m})
    header = "".join(f"<th>{esc(name)}</th>" for name, _ in rows)
    for key in keys:
        cells = "".join(f"<td>{esc(_fmt(m.get(key), '{:.4g}') if not isinstance(m.get(key), str) else m[key])}</td>"
                        for _, m in rows)
        table_rows.append(f"<tr><th>{esc(key)}</th>{cells}</tr>")
    paper = markdown_table(rows, extra=False)
    plots = "".join(f"<h3>{esc(t)}</h3><img alt='{esc(t)}' src='{src}'>" for t, src in _plots(result))
    failures = result.per_sample[~result.per_sample["parsed"]].head(50)
    fail_rows = "".join(f"<tr><td>{esc(str(r.id))}</td><td>{esc(str(r.parse_error))}</td></tr>"
                        for r in failures.itertuples())
    warn = "".join(f"<li>{esc(w)}</li>" for w in result.warnings) or "<li>none</li>"
    versions = ", ".join(f"{esc(k)} {esc(v)}" for k, v in result.versions.items())
    timings = ", ".join(f"{esc(k)} {v:.1f}" for k, v in result.timings.items())
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>crystext evaluation: {esc(label)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
th{{background:#f3f3f3}}img{{max-width:100%}}pre{{background:#f7f7f7;padding:1em;overflow-x:auto}}</style></head>
<body><h1>crystext evaluation: {esc(label)}</h1>
<p>Samples: {esc(str(result.settings['samples']))}<br>Reference: {esc(result.settings['reference'])}<br>
Training set: {esc(', '.join(result.settings['train']) or 'none given')}<br>
Dataset cut-offs: {esc(result.settings['dataset'])}; default protocol: <b>{esc(result.settings['default_protocol'])}</b></p>
<h2>The paper's table</h2><pre>{esc(paper)}</pre>
<h2>All metrics</h2><table><tr><th>metric</th>{header}</tr>{''.join(table_rows)}</table>
<h2>Distributions (default protocol's sample set vs reference)</h2>{plots}
<h2>Samples that did not parse (first 50)</h2><table><tr><th>id</th><th>reason</th></tr>{fail_rows}</table>
<h2>Warnings</h2><ul>{warn}</ul>
<h2>Provenance</h2><p>Versions: {versions}<br>Timings (s): {timings}</p>
</body></html>
"""
