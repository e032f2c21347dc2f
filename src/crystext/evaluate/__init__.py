"""Evaluate generated crystals: the paper's generation metrics under its two protocols, and a report.

The short way::

    from crystext.evaluate import evaluate, write_report
    result = evaluate("samples.csv", reference="mp_20/test.csv", train=["mp_20/train.csv"])
    write_report(result, "eval/")

Modules: `validity` (structural and SMACT compositional validity), `analysis` (per-structure work in
parallel, fingerprints, the on-disk reference cache), `metrics` (the ``paper`` and ``cdvae``
protocols), `core` (`evaluate`), `report` (JSON, CSV, Markdown, HTML), `ipt` (translation invariance).
"""

from crystext.evaluate.analysis import Analysed, AnalysisSettings, Item, analyse, analyse_file, load_items
from crystext.evaluate.core import EvaluationResult, evaluate, guess_dataset, read_stability
from crystext.evaluate.metrics import PROTOCOLS, ProtocolSettings, compute_metrics, coverage
from crystext.evaluate.report import markdown_table, write_report
from crystext.evaluate.validity import composition_validity, smact_validity, structure_validity

__all__ = [
    "PROTOCOLS",
    "Analysed",
    "AnalysisSettings",
    "EvaluationResult",
    "Item",
    "ProtocolSettings",
    "analyse",
    "analyse_file",
    "composition_validity",
    "compute_metrics",
    "coverage",
    "evaluate",
    "guess_dataset",
    "load_items",
    "markdown_table",
    "read_stability",
    "smact_validity",
    "structure_validity",
    "write_report",
]
