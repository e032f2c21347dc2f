"""The Markdown table and the self-contained HTML report."""

from __future__ import annotations

import base64
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from crystext.evaluate import EvaluateConfig, Evaluation, ProtocolSettings, evaluate
from crystext.report import html_report, markdown_table, write_report


@pytest.fixture(scope="module")
def result(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Evaluation:
    """The first 12 MP-20 test structures against themselves, with three energies above hull."""
    folder = tmp_path_factory.mktemp("report")
    reference = folder / "reference.csv"
    pd.read_csv(shared_data / "mp_20" / "test.csv", nrows=12).to_csv(reference, index=False)
    stability = folder / "stability.csv"
    pd.DataFrame({"id": ["mp-10009", "mp-1218989", "mp-1225695"], "e_above_hull": [0.0, 0.05, 0.3]}).to_csv(
        stability, index=False
    )
    config = EvaluateConfig(protocol=ProtocolSettings("paper"), progress=False, cache_samples=True)
    return evaluate(reference, reference, stability=stability, config=config)


def test_markdown_table_in_the_papers_column_order(result: Evaluation) -> None:
    lines = markdown_table([("mp20-test", result), ("again", result)]).splitlines()
    assert lines[0] == (
        "| Samples | Protocol | Struct. valid | Comp. valid | COV-R | COV-P | wdist density | wdist #elem | Valid "
        "| Unique | Metastable | Stable |"
    )
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    # 12 structures, the twelfth (Sm(CoB)2, 3 elements) compositionally invalid; 2 of the 3 relaxed metastable
    # (< 0.1 eV/atom: rates are over the samples in the stability CSV), none stable (< 0.0).
    # Number of elements: references 3x2, 7x3, 2x4 of 12; valid samples 3x2, 6x3, 2x4 of 11, so the
    # Wasserstein distance is |3/12 - 3/11| + |10/12 - 9/11| = 0.038.
    assert lines[2] == (
        "| mp20-test | paper | 1.0000 | 0.9167 | 1.0000 | 1.0000 | 0.226 | 0.038 | 0.9167 | 1.0000 | 0.6667 | 0.0000 |"
    )
    assert len(lines) == 4


def test_html_report_is_self_contained_with_every_plot(result: Evaluation) -> None:
    page = html_report(result)
    assert page.startswith("<!DOCTYPE html>")
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    assert len(images) == 6  # density, elements count, atoms, space groups, element frequencies, energy above hull
    assert all(base64.b64decode(image).startswith(b"\x89PNG\r\n\x1a\n") for image in images)
    assert "http" not in page.replace("http-equiv", "")
    assert "paper: crystal-text-llm basic_eval.py" in page
    assert "Energy above hull" in page
    assert "Space groups (symprec 0.1; 0 = not determined)" in page


def test_html_report_names_the_space_group_tolerance_used(result: Evaluation) -> None:
    settings = {**result.info["settings"], "fingerprint": {**result.info["settings"]["fingerprint"], "symprec": 0.01}}
    page = html_report(replace(result, info={**result.info, "settings": settings}))
    assert "Space groups (symprec 0.01; 0 = not determined)" in page


def test_write_report_writes_both_files_atomically(result: Evaluation, tmp_path: Path) -> None:
    written = write_report(result, tmp_path / "out")
    assert [p.name for p in written] == ["table.md", "report.html"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "table.md"]  # no partial files
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert markdown.startswith("# crystext evaluation (paper protocol)\n\n| Samples")
