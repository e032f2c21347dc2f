"""Reports of evaluations: a Markdown table in the paper's column order, and a self-contained HTML page.

The HTML page embeds its matplotlib plots as base64 PNG, so it is one file that opens anywhere:
density, number of elements, atoms per cell, space groups and element frequencies of the samples
against the reference, and the energy above hull when stability results were joined.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from crystext.constants import METASTABLE_E_HULL, STABLE_E_HULL
from crystext.evaluate.evaluation import Evaluation
from crystext.files import write_atomic

__all__ = ["html_report", "markdown_table", "tune_report", "write_report"]

#: The paper's table, in its order: (metric key, column header, decimals).
PAPER_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("struct_valid", "Struct. valid", 4),
    ("comp_valid", "Comp. valid", 4),
    ("cov_recall", "COV-R", 4),
    ("cov_precision", "COV-P", 4),
    ("wdist_density", "wdist density", 3),
    ("wdist_num_elems", "wdist #elem", 3),
)
#: Further columns, shown when some row has them.
EXTRA_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("valid", "Valid", 4),
    ("cov_recall_joint", "COV-R joint", 4),
    ("cov_precision_joint", "COV-P joint", 4),
    ("novelty", "Novelty (fp)", 4),
    ("uniqueness", "Unique", 4),
    ("novelty_matcher", "Novel (matcher)", 4),
    ("metastable_rate", "Metastable", 4),
    ("stable_rate", "Stable", 4),
    ("msun_rate", "M.S.U.N.", 4),
    ("sun_rate", "S.U.N.", 4),
    ("formula_accuracy", "Formula acc.", 4),
    ("spacegroup_accuracy", "Space-group acc.", 4),
    ("ipt", "IPT", 3),
)
#: Space groups and elements shown in the histograms (the most frequent ones).
TOP_SPACEGROUPS = 30
TOP_ELEMENTS = 40
SAMPLE_COLOR, REFERENCE_COLOR = "#d62728", "#1f77b4"


def _cell(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{decimals}f}"


def markdown_table(rows: Sequence[tuple[str, Evaluation]]) -> str:
    """One row per (label, evaluation): the paper's columns first, then the extras any row has."""
    extras = [c for c in EXTRA_COLUMNS if any(c[0] in e.metrics for _, e in rows)]
    columns = list(PAPER_COLUMNS) + extras
    lines = [
        "| " + " | ".join(["Samples", "Protocol"] + [header for _, header, _ in columns]) + " |",
        "|" + "---|" * 2 + "---:|" * len(columns),
    ]
    for label, result in rows:
        cells = [label, result.protocol] + [_cell(result.metrics.get(key), d) for key, _, d in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _png(draw: Callable[[Any], None], width: float = 6.4, height: float = 3.6) -> str:
    """Draw on a fresh axes and return the figure as a base64 PNG."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    draw(figure.add_subplot())
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode()


def _histogram(values: tuple[Sequence[float], Sequence[float]], label: str, integer: bool) -> Callable[[Any], None]:
    samples, reference = (np.asarray(v, dtype=float) for v in values)
    samples, reference = samples[np.isfinite(samples)], reference[np.isfinite(reference)]

    def draw(ax: Any) -> None:
        both = np.concatenate([samples, reference]) if len(samples) + len(reference) else np.zeros(1)
        if integer:
            bins = np.arange(both.min() - 0.5, both.max() + 1.5)
        else:
            bins = np.linspace(*np.percentile(both, [0.5, 99.5]), 50)
        for data, name, color in ((reference, "reference", REFERENCE_COLOR), (samples, "samples", SAMPLE_COLOR)):
            if len(data):
                ax.hist(data, bins=bins, density=True, alpha=0.5, color=color, label=f"{name} ({len(data)})")
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of structures" if integer else "probability density")
        ax.legend()

    return draw


def _bars(
    counts: tuple[Mapping[Any, int], Mapping[Any, int]], totals: tuple[int, int], label: str, top: int
) -> Callable[[Any], None]:
    """Side-by-side bars of the most frequent categories (by reference, then samples), as fractions of structures."""
    samples, reference = counts

    def draw(ax: Any) -> None:
        keys = sorted(set(samples) | set(reference), key=lambda k: (-reference.get(k, 0), -samples.get(k, 0), str(k)))
        keys = keys[:top]
        x = np.arange(len(keys))
        ax.bar(x - 0.2, [reference.get(k, 0) / max(totals[1], 1) for k in keys], 0.4,
               color=REFERENCE_COLOR, label="reference")
        ax.bar(x + 0.2, [samples.get(k, 0) / max(totals[0], 1) for k in keys], 0.4,
               color=SAMPLE_COLOR, label="samples")
        ax.set_xticks(x, [str(k) for k in keys], rotation=90, fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("fraction of structures")
        ax.legend()

    return draw


def _energy(e_above_hull: np.ndarray) -> Callable[[Any], None]:
    def draw(ax: Any) -> None:
        ax.hist(e_above_hull, bins=50, color=SAMPLE_COLOR, alpha=0.7, label=f"samples ({len(e_above_hull)})")
        ax.axvline(STABLE_E_HULL, color="black", linestyle="-", label=f"stable ({STABLE_E_HULL} eV/atom)")
        ax.axvline(METASTABLE_E_HULL, color="black", linestyle="--", label=f"metastable ({METASTABLE_E_HULL} eV/atom)")
        ax.set_xlabel("energy above hull (eV/atom)")
        ax.set_ylabel("samples")
        ax.legend()

    return draw


def _plots(result: Evaluation) -> list[tuple[str, str]]:
    """(title, base64 PNG) for every plot of the report."""
    d = result.distributions
    plots = [
        ("Density (g/cm³)", _png(_histogram(d["density"], "density (g/cm³)", integer=False))),
        ("Number of elements", _png(_histogram(d["n_elements"], "number of elements", integer=True))),
        ("Atoms per cell", _png(_histogram(d["n_atoms"], "atoms per cell", integer=True))),
        (f"Space groups (symprec {result.info['settings']['fingerprint']['symprec']:g}; 0 = not determined)",
         _png(_bars(d["spacegroup"], d["n_structures"], "space group", TOP_SPACEGROUPS), 9.6)),
        ("Element frequencies (structures containing the element)",
         _png(_bars(d["elements"], d["n_structures"], "element", TOP_ELEMENTS), 9.6)),
    ]
    if "e_above_hull" in result.per_sample:
        energies = result.per_sample["e_above_hull"].to_numpy(dtype=float)
        energies = energies[np.isfinite(energies)]
        if len(energies):
            plots.append(("Energy above hull", _png(_energy(energies))))
    return plots


# --------------------------------------------------------------------------- pages


def _markdown_to_html_table(table: str) -> str:
    lines = [line.strip("|").split("|") for line in table.splitlines()]
    head, body = lines[0], lines[2:]
    cells = "".join(f"<th>{html.escape(c.strip())}</th>" for c in head)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{rows}</tbody></table>"


def _definition_list(items: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>" for k, v in items.items()
    )
    return f"<table class='kv'>{rows}</table>"


#: What a tuning report plots per round, where the scorer gives it: (metric, label).
TUNE_RATES = (("metastable_rate", "metastable"), ("stable_rate", "stable"), ("sun_rate", "S.U.N."),
              ("uniqueness", "unique"), ("new_to_run", "new to the run"), ("probe_repeats", "written by the probe too"),
              ("novelty", "novel"), ("valid_rate", "valid"), ("prompt_met", "prompted: formula written"))


def tune_report(rounds: Sequence[Mapping[str, Any]], title: str = "crystext tune") -> str:
    """A self-contained HTML page of a tuning run: per round, the rates it trades against each other and the reward.

    `rounds` are the rounds' metrics.json (`crystext.tune.read_rounds`); each rate is drawn where the scorer gave it.
    """
    numbers = [r["round"] for r in rounds]

    def rates(ax: Any) -> None:
        for key, label in TUNE_RATES:
            values = [r.get(key) for r in rounds]
            if any(isinstance(v, float) and math.isfinite(v) for v in values):
                ax.plot(numbers, [math.nan if v is None else v for v in values], marker="o", label=label)
        ax.set(xlabel="round (samples of the model the earlier rounds tuned)",
               ylabel="rate (unique, novel: of the valid)")
        ax.set_xticks(numbers)
        if ax.lines:
            ax.legend(fontsize="small")

    def reward(ax: Any) -> None:
        ax.plot(numbers, [r["reward_mean"] for r in rounds], marker="o", color=SAMPLE_COLOR)
        ax.set(xlabel="round", ylabel="mean reward of its attempts")
        ax.set_xticks(numbers)

    header = ["round", "attempts", "pairs", "mean reward", *(label for _, label in TUNE_RATES)]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in (
            r["round"], r["attempts"], r["pairs"], r["reward_mean"], *(r.get(k, math.nan) for k, _ in TUNE_RATES)))
        + "</tr>" for r in rounds)
    figures = "".join(
        f"<figure><img alt='{t}' src='data:image/png;base64,{_png(draw)}'><figcaption>{t}</figcaption></figure>"
        for t, draw in (("rates per round", rates), ("reward per round", reward)))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Round k's rates are those of the samples of the model rounds 1 to k-1 "
        "tuned (round 1: the starting model).</p>"
        f"<table border='1'><tr>{''.join(f'<th>{h}</th>' for h in header)}</tr>{body}</table>{figures}</body></html>\n"
    )


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def html_report(result: Evaluation, title: str = "crystext evaluation") -> str:
    """A self-contained HTML page: the table, every metric, provenance, notes and plots."""
    info = result.info
    provenance = {
        "protocol": f"{result.protocol}: {info['protocol']['description']}",
        **{f"input {k}": (v["path"] if isinstance(v, dict) else v) for k, v in info["inputs"].items()},
        **{f"version {k}": v for k, v in info["versions"].items()},
        **{k: v for k, v in info["timings"].items()},
    }
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes) or "<li>none</li>"
    figures = "".join(
        f"<figure><img alt='{html.escape(t)}' src='data:image/png;base64,{png}'><figcaption>{html.escape(t)}"
        "</figcaption></figure>"
        for t, png in _plots(result)
    )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "table.kv th,table.kv td{text-align:left}figure{display:inline-block;margin:0.5em}img{max-width:100%}"
    )
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"{_markdown_to_html_table(markdown_table([(Path(info['inputs']['samples']['path']).name, result)]))}"
        f"<h2>Plots</h2>{figures}<h2>All metrics</h2>{_definition_list(result.metrics)}"
        f"<h2>Provenance</h2>{_definition_list(provenance)}<h2>Notes</h2><ul>{notes}</ul></body></html>\n"
    )


def write_report(result: Evaluation, out_dir: str | Path) -> list[Path]:
    """Write table.md (the table and notes) and report.html into `out_dir`, each atomically."""
    out_dir = Path(out_dir)
    md_path, html_path = out_dir / "table.md", out_dir / "report.html"
    label = Path(result.info["inputs"]["samples"]["path"]).name
    notes = "".join(f"- {n}\n" for n in result.notes)
    markdown = (
        f"# crystext evaluation ({result.protocol} protocol)\n\n{markdown_table([(label, result)])}\n\n"
        + (f"Notes:\n\n{notes}" if notes else "")
    )
    write_atomic(md_path, markdown)
    write_atomic(html_path, html_report(result))
    return [md_path, html_path]
